//! Per-interface packet and byte counters.

use aya_ebpf::bindings::BPF_NOEXIST;
use weir_common::stats::{Direction, DpError, IfStats, IfStatsKey};
use weir_logic::counters::account;

use crate::{errors, maps::IF_STATS};

/// Counts one packet of `len` bytes on `ifindex` in direction `dir`.
#[inline(always)]
pub fn count(ifindex: u32, dir: Direction, len: u32) {
    let key = IfStatsKey { ifindex, direction: dir as u32 };
    if let Some(p) = IF_STATS.get_ptr_mut(&key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { account(&mut *p, len) };
        return;
    }
    let mut first = IfStats::default();
    account(&mut first, len);
    if IF_STATS.insert(&key, &first, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // Another CPU created the entry first, or the map is full.
    match IF_STATS.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(p) => unsafe { account(&mut *p, len) },
        None => errors::record(DpError::IfStatsFull),
    }
}
