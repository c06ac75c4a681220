//! `WEIR_LB_TABLE` mapped into memory (BPF_F_MMAPABLE): writing 10 million
//! selection slots costs memory stores, not 10 million syscalls.

use std::{
    os::fd::AsFd as _,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapData;

use crate::{pins::PinLayout, DatapathError};

/// BPF array elements are `round_up(value_size, 8)` bytes apart.
const ELEM_STRIDE_BYTES: usize = 8;

/// A mapped array of u32. Each slot is written with one aligned 32-bit
/// store, so the kernel always reads either the old or the new value.
pub struct MmapU32Array {
    ptr: *mut AtomicU32,
    entries: u32,
    len_bytes: usize,
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and accessed through atomics.
unsafe impl Send for MmapU32Array {}

impl MmapU32Array {
    pub fn open(layout: &PinLayout, name: &'static str) -> Result<Self, DatapathError> {
        layout.require_existing()?;
        let map = MapData::from_pin(layout.map(name)).map_err(|source| DatapathError::Map { name, source })?;
        let info = map.info().map_err(|source| DatapathError::Map { name, source })?;
        if info.value_size() != 4 {
            return Err(DatapathError::Map { name, source: aya::maps::MapError::InvalidValueSize { size: 4, expected: info.value_size() as usize } });
        }
        let entries = info.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        // The kernel rounds array elements up to 8 bytes.
        let len_bytes = (entries as usize * ELEM_STRIDE_BYTES).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array fd created with BPF_F_MMAPABLE; length
        // rounded to pages as the kernel requires; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len_bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Io {
                op: "mmap",
                path: layout.map(name),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self { ptr: ptr.cast(), entries, len_bytes, _map: map })
    }

    pub fn len(&self) -> u32 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn slot(&self, i: u32) -> Option<&AtomicU32> {
        // SAFETY: in bounds of the mapping, aligned, and only accessed atomically.
        (i < self.entries).then(|| unsafe { &*self.ptr.add(i as usize * (ELEM_STRIDE_BYTES / 4)) })
    }

    pub fn get(&self, i: u32) -> Option<u32> {
        self.slot(i).map(|s| s.load(Ordering::Acquire))
    }

    /// Writes slot `i`; returns false when out of range.
    pub fn set(&self, i: u32, v: u32) -> bool {
        match self.slot(i) {
            Some(s) => {
                s.store(v, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

impl Drop for MmapU32Array {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len_bytes) };
    }
}
