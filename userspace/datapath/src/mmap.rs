//! `WEIR_LB_TABLE` through memory mappings (BPF_F_MMAPABLE): writing a
//! service's selection slots costs memory stores, not a syscall per slot.
//!
//! Only the pages of the range being read or written are mapped, and only
//! while they are used: the kernel maps a BPF array's pages in at mmap
//! time, so a permanent mapping of a large table would show up as agent
//! RSS although the memory belongs to the map.
//!
//! A bulk write (a cold sync programs services into consecutive slots)
//! maps ahead instead ([`MmapU32Array::map_ahead`]): one mapping of a few
//! MiB serves the windows that fall inside it, so 100,000 services cost
//! about a hundred mmap/munmap pairs instead of 100,000 (each munmap also
//! flushes the other CPUs' TLBs). The mapping goes when bulk mode ends.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use aya::maps::MapData;

use crate::{pins::PinLayout, DatapathError};

/// BPF array elements are `round_up(value_size, 8)` bytes apart.
const ELEM_STRIDE_BYTES: usize = 8;

/// A pinned array of u32 that can be mapped window by window.
pub struct MmapU32Array {
    map: MapData,
    entries: u32,
    page: usize,
    name: &'static str,
    path: std::path::PathBuf,
    /// Slots to map ahead of a window in bulk mode (0: off).
    ahead: AtomicU32,
    /// The mapping bulk mode keeps for the next windows.
    held: Mutex<Option<Arc<Mapping>>>,
}

/// One mmap of a page-aligned range of the array; unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len_bytes: usize,
    /// Slot index at `ptr`, and the first slot past the mapping.
    base_slot: u32,
    end_slot: u32,
}

// SAFETY: the pointer is to shared memory that stays mapped until the
// Mapping drops, and every slot is accessed with atomics only.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `MmapU32Array::map_range` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len_bytes) };
    }
}

impl MmapU32Array {
    pub fn open(layout: &PinLayout, name: &'static str) -> Result<Self, DatapathError> {
        layout.require_existing()?;
        let path = layout.map(name);
        let map = MapData::from_pin(&path).map_err(|source| DatapathError::Map { name, source })?;
        let info = map.info().map_err(|source| DatapathError::Map { name, source })?;
        if info.value_size() != 4 {
            return Err(DatapathError::Map {
                name,
                source: aya::maps::MapError::InvalidValueSize { size: 4, expected: info.value_size() as usize },
            });
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        Ok(Self { entries: info.max_entries(), map, page, name, path, ahead: AtomicU32::new(0), held: Mutex::new(None) })
    }

    pub fn len(&self) -> u32 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bulk mode: from now on a window that the last mapping does not
    /// cover maps `slots` slots from its start (or more, if it is
    /// longer), kept for the windows after it. `0` ends bulk mode and
    /// lets the kept mapping go (once no window uses it).
    pub fn map_ahead(&self, slots: u32) {
        self.ahead.store(slots, Ordering::Relaxed);
        if slots == 0 {
            *self.held.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// The slots bulk mode maps ahead (0: off).
    pub fn ahead(&self) -> u32 {
        self.ahead.load(Ordering::Relaxed)
    }

    /// Maps slots `[start, start + len)` (clamped to the table).
    pub fn window(&self, start: u32, len: u32) -> Result<Window, DatapathError> {
        let end = start.saturating_add(len).min(self.entries);
        let start = start.min(end);
        let ahead = self.ahead.load(Ordering::Relaxed);
        if ahead == 0 {
            return Ok(Window { map: Arc::new(self.map_range(start, end)?), start, end });
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = held.as_ref().filter(|m| m.base_slot <= start && end <= m.end_slot) {
            return Ok(Window { map: Arc::clone(m), start, end });
        }
        let m = Arc::new(self.map_range(start, end.max(start.saturating_add(ahead).min(self.entries)))?);
        *held = Some(Arc::clone(&m));
        Ok(Window { map: m, start, end })
    }

    /// One mapping of the pages holding slots `[start, end)`.
    fn map_range(&self, start: u32, end: u32) -> Result<Mapping, DatapathError> {
        let first_byte = start as usize * ELEM_STRIDE_BYTES;
        let offset = first_byte / self.page * self.page;
        let end_byte = (end as usize * ELEM_STRIDE_BYTES).max(offset + 1);
        let len_bytes = (end_byte - offset).div_ceil(self.page) * self.page;
        let fd = self.map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array fd created with BPF_F_MMAPABLE, at a
        // page-aligned offset inside the array; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Io { op: "mmap", path: self.path.clone(), source: std::io::Error::last_os_error() });
        }
        let _ = self.name;
        let base_slot = (offset / ELEM_STRIDE_BYTES) as u32;
        let end_slot = ((offset + len_bytes) / ELEM_STRIDE_BYTES).min(self.entries as usize) as u32;
        Ok(Mapping { ptr: ptr.cast(), len_bytes, base_slot, end_slot })
    }
}

/// A mapped range of slots, addressed by absolute slot index. Each slot is
/// read and written with one aligned 32-bit atomic access, so the kernel
/// always sees either the old or the new value.
pub struct Window {
    map: Arc<Mapping>,
    start: u32,
    end: u32,
}

impl Window {
    fn slot(&self, i: u32) -> Option<&AtomicU32> {
        if i < self.start || i >= self.end {
            return None;
        }
        let off = (i - self.map.base_slot) as usize * ELEM_STRIDE_BYTES;
        // SAFETY: in bounds of the mapping (the window lies inside it),
        // 8-byte aligned, and only accessed atomically.
        Some(unsafe { &*self.map.ptr.add(off).cast::<AtomicU32>() })
    }

    pub fn get(&self, i: u32) -> Option<u32> {
        self.slot(i).map(|s| s.load(Ordering::Acquire))
    }

    /// Writes slot `i`; returns false when it is outside the window.
    pub fn set(&self, i: u32, v: u32) -> bool {
        self.slot(i).map(|s| s.store(v, Ordering::Release)).is_some()
    }
}


