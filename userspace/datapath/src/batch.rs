//! Reading a whole hash map with `BPF_MAP_LOOKUP_BATCH`: one syscall per
//! few thousand entries, where aya's iterator makes two per entry (next
//! key, then lookup). The conntrack collector reads the whole table on
//! every pass, on the agent's one loop, so at 200,000 entries this is the
//! difference between a pass that holds every reconcile back for most of
//! a second and one that does not (docs/performance.md). aya 0.14 has no
//! batch operations; the call is made here, as `ct` makes
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM`.

use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn zeroed<T: aya::Pod>(n: usize) -> Vec<T> {
    // SAFETY: `aya::Pod` types are plain data, valid as all zeroes.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// Every (key, value) of the hash map behind `fd`, read in batches, or
/// `None` when the kernel cannot batch this map, or its key and value
/// are not `K` and `V` (read it another way).
/// Entries the kernel adds or removes meanwhile may or may not be seen,
/// as with any walk of a live map.
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> Option<Vec<(K, V)>> {
    // The kernel writes the map's own sizes: buffers of other types would
    // be read as garbage, or overrun.
    let info = aya::maps::MapData::from_fd(fd.try_clone_to_owned().ok()?).ok()?.info().ok()?;
    if (info.key_size() as usize, info.value_size() as usize) != (std::mem::size_of::<K>(), std::mem::size_of::<V>()) {
        return None;
    }
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    // The kernel's cursor: a bucket index (u32) for hash maps; 8 bytes of room.
    let mut cursor = [0u64; 1];
    let mut next = [0u64; 1];
    let mut first = true;
    loop {
        let mut keys: Vec<K> = zeroed(chunk);
        let mut values: Vec<V> = zeroed(chunk);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attribute points at a cursor, and at key and value
        // buffers of `chunk` elements of the map's key and value sizes
        // (the caller's types), all alive for the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr, std::mem::size_of::<BatchAttr>()) };
        let errno = if rc == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) };
        match errno {
            0 | libc::ENOENT => {
                let n = (attr.count as usize).min(chunk);
                out.extend(keys.into_iter().zip(values).take(n));
                if errno == libc::ENOENT {
                    return Some(out);
                }
                cursor = next;
                first = false;
            }
            // One bucket holds more than `chunk` entries: ask again, from
            // the same cursor, with room for them.
            libc::ENOSPC if chunk < 1 << 20 => chunk *= 2,
            _ => return None,
        }
    }
}
