//! Byte-level access to any map and link, for copying a map whose types
//! this build does not have (an older layout) and for swapping the
//! program of any kind of pinned link. aya's typed maps need the key and
//! value types at compile time and keep these syscalls private, so the
//! four commands used here are issued directly.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `BPF_NOEXIST`: insert only if the key is absent.
pub const NOEXIST: u64 = 1;
/// `BPF_ANY`.
pub const ANY: u64 = 0;

#[repr(C, align(8))]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

#[repr(C, align(8))]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Issues `cmd` with `attr`; returns the syscall's non-negative result.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly aligned bpf_attr prefix for `cmd`,
    // and its pointers point into buffers the caller keeps alive.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as libc::c_uint) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A read that fills `out` for `key` (0: none); `Ok(false)` on ENOENT.
fn read_elem(cmd: libc::c_long, map: BorrowedFd<'_>, key: u64, out: &mut [u8]) -> io::Result<bool> {
    let mut attr = ElemAttr { map_fd: map.as_raw_fd() as u32, key, value_or_next: out.as_mut_ptr() as u64, ..Default::default() };
    match bpf(cmd, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key after `key` (the first key for `None`); `Ok(false)` at the end.
pub fn next_key(map: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    read_elem(BPF_MAP_GET_NEXT_KEY, map, key.map_or(0, |k| k.as_ptr() as u64), next)
}

/// Reads `key`'s value; `Ok(false)` when the key is gone.
pub fn lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    read_elem(BPF_MAP_LOOKUP_ELEM, map, key.as_ptr() as u64, value)
}

/// What an update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    Written,
    /// `NOEXIST` and the key was there already.
    Exists,
    /// The map is full.
    Full,
}

pub fn update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<Update> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value_or_next: value.as_ptr() as u64,
        flags,
        ..Default::default()
    };
    match bpf(BPF_MAP_UPDATE_ELEM, &mut attr) {
        Ok(_) => Ok(Update::Written),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(Update::Exists),
        Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM)) => Ok(Update::Full),
        Err(e) => Err(e),
    }
}

/// Replaces the program of a link (TCX, XDP or cgroup) atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr { link_fd: link.as_raw_fd() as u32, new_prog_fd: prog.as_raw_fd() as u32, ..Default::default() };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

const BPF_OBJ_GET: libc::c_long = 7;

#[repr(C, align(8))]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned object (map or link).
pub fn obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjGetAttr { pathname: c.as_ptr() as u64, ..Default::default() };
    let rc = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as i32) })
}

/// `BPF_F_MMAPABLE`: an array whose values can be mapped into memory.
pub const F_MMAPABLE: u32 = 1 << 10;

/// A whole memory-mappable BPF array, mapped while this lives.
pub struct ArrayMapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl ArrayMapping {
    /// Maps the array behind `fd`: `entries` values `round_up(value_size,
    /// 8)` bytes apart.
    pub fn new(fd: BorrowedFd<'_>, entries: u32, value_size: u32, writable: bool) -> io::Result<Self> {
        let stride = (value_size as usize).div_ceil(8) * 8;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (entries as usize * stride).div_ceil(page) * page;
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // the length against the array.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; mapped writable by the caller's choice (a write
        // to a read-only mapping faults, never corrupts).
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.len) }
    }
}

impl Drop for ArrayMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}
