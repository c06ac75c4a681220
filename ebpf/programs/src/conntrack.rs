//! Service conntrack: lookups, state updates and entry creation. The state
//! machine and timeouts are `weir_logic::ct`, shared with userspace GC.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CT_STATE_CLOSED, CT_STATE_CLOSING},
};
use weir_logic::ct::{expiry, is_alive, next_state};

use crate::maps::{CONFIG, CT};

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// The runtime configuration. If the agent has not written it yet, the
/// defaults are written in place first.
#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    let p = CONFIG.get_ptr_mut(0)?;
    // SAFETY: array map value, valid for the program run.
    let c = unsafe { &mut *p };
    if c.ct_udp_timeout_s == 0 {
        *c = DatapathConfig::DEFAULT;
    }
    Some(c)
}

#[inline(always)]
pub fn key(saddr: Addr, daddr: Addr, sport: u16, dport: u16, proto: u8, kind: u8) -> CtKey {
    CtKey { saddr, daddr, sport, dport, proto, kind, _pad: 0 }
}

#[inline(always)]
pub fn lookup(k: &CtKey) -> Option<*mut CtEntry> {
    CT.get_ptr_mut(k)
}

/// Whether the entry behind `k` exists and is alive at `now`.
#[inline(always)]
pub fn alive(k: &CtKey, now: u64) -> bool {
    // SAFETY: read-only access to a map value.
    CT.get_ptr(k).is_some_and(|e| is_alive(unsafe { &*e }, now))
}

/// Advances the entry's state for one packet and pushes its expiry.
/// Returns true when the flow entered closing or closed.
#[inline(always)]
pub fn touch(e: *mut CtEntry, cfg: &DatapathConfig, proto: u8, tcp_flags: u8, now: u64) -> bool {
    // SAFETY: `e` points into the CT map; entries are only written here and
    // by userspace GC (which deletes, never writes).
    let entry = unsafe { &mut *e };
    let old = entry.state;
    let new = next_state(proto, old, tcp_flags);
    entry.state = new;
    entry.expires_ns = expiry(cfg, new, now);
    new != old && (new == CT_STATE_CLOSING || new == CT_STATE_CLOSED)
}

/// Sets the state of the entry behind `k` (the other direction of a flow
/// that is closing), if it exists.
#[inline(always)]
pub fn close_twin(k: &CtKey, cfg: &DatapathConfig, state: u8, now: u64) {
    if let Some(e) = CT.get_ptr_mut(k) {
        // SAFETY: as in `touch`.
        let entry = unsafe { &mut *e };
        entry.state = state;
        entry.expires_ns = expiry(cfg, state, now);
    }
}

#[inline(always)]
pub fn insert(k: &CtKey, e: &CtEntry) -> Result<(), i32> {
    CT.insert(k, e, BPF_ANY as u64).map_err(|e| e as i32)
}
