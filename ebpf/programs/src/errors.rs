//! Datapath error counters: anything the kernel could not do (a full map, ...)
//! is counted here so userspace can report it instead of losing it silently.

use weir_common::stats::DpError;

use crate::maps::DP_ERRORS;

#[inline(always)]
pub fn record(err: DpError) {
    if let Some(p) = DP_ERRORS.get_ptr_mut(err as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}
