//! `WEIR_LB_TABLE` through memory mappings (BPF_F_MMAPABLE): writing a
//! service's selection slots costs memory stores, not a syscall per slot.
//!
//! Only the pages of the range being read or written are mapped, and only
//! while they are used: the kernel maps a BPF array's pages in at mmap
//! time, so a permanent mapping of a large table would show up as agent
//! RSS although the memory belongs to the map.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, Ordering},
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
        Ok(Self { entries: info.max_entries(), map, page, name, path })
    }

    pub fn len(&self) -> u32 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Maps slots `[start, start + len)` (clamped to the table).
    pub fn window(&self, start: u32, len: u32) -> Result<Window, DatapathError> {
        let end = start.saturating_add(len).min(self.entries);
        let start = start.min(end);
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
        Ok(Window { ptr: ptr.cast(), len_bytes, base_slot: (offset / ELEM_STRIDE_BYTES) as u32, start, end })
    }
}

/// A mapped range of slots, addressed by absolute slot index. Each slot is
/// read and written with one aligned 32-bit atomic access, so the kernel
/// always sees either the old or the new value.
pub struct Window {
    ptr: *mut u8,
    len_bytes: usize,
    /// Slot index at `ptr`.
    base_slot: u32,
    start: u32,
    end: u32,
}

impl Window {
    fn slot(&self, i: u32) -> Option<&AtomicU32> {
        if i < self.start || i >= self.end {
            return None;
        }
        let off = (i - self.base_slot) as usize * ELEM_STRIDE_BYTES;
        // SAFETY: in bounds of the mapping (checked above), 8-byte aligned,
        // and only accessed atomically.
        Some(unsafe { &*self.ptr.add(off).cast::<AtomicU32>() })
    }

    pub fn get(&self, i: u32) -> Option<u32> {
        self.slot(i).map(|s| s.load(Ordering::Acquire))
    }

    /// Writes slot `i`; returns false when it is outside the window.
    pub fn set(&self, i: u32, v: u32) -> bool {
        self.slot(i).map(|s| s.store(v, Ordering::Release)).is_some()
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `window` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len_bytes) };
    }
}
