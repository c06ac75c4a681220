//! Per-interface packet and byte counters, and north-south flow counters.

use aya_ebpf::bindings::BPF_NOEXIST;
use weir_common::{
    lb::svc_kind,
    stats::{Direction, DpError, IfStats, IfStatsKey, NS_VERDICTS},
};
use weir_logic::counters::account;

use crate::{
    errors,
    maps::{scratch, IF_STATS, NS_FLOWS},
};

/// Counts a new north-south flow's `verdict` (`stats::NS_*`) under the
/// kind of the frontend `lb::forward` matched.
#[inline(always)]
pub fn north_south(verdict: u32) {
    let Some(s) = scratch() else { return };
    let i = svc_kind(s.svc_flags) * NS_VERDICTS + verdict;
    if let Some(p) = NS_FLOWS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

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
