//! Datapath error and drop counters: anything the kernel could not do (a
//! full map, ...) or refused (a service without endpoints, ...) is counted
//! so userspace can report it instead of losing it silently.

use weir_common::{drop::DropReason, stats::DpError};

use crate::maps::{DP_ERRORS, DROPS};

#[inline(always)]
pub fn record(err: DpError) {
    if let Some(p) = DP_ERRORS.get_ptr_mut(err as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

#[inline(always)]
pub fn drop_reason(reason: DropReason) {
    if let Some(p) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}
