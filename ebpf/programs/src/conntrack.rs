//! Conntrack: lookups, state updates, and entry creation with the
//! per-endpoint quota and the counters that make a full table visible.
//! The state machine and timeouts are `weir_logic::ct`, shared with the
//! userspace collector.
//!
//! Every key that enters the table through [`create`] counts in
//! `CtStat::Created`, every key the kernel deletes in `CtStat::Deleted`
//! (the agent counts its own deletes in the same slots), so userspace
//! reads the LRU's evictions as `created - deleted - entries`.

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CtStat, CARRY_OVER_OFF, CT_F_STATE_BITS},
    drop::DropReason,
};
use weir_logic::ct::{advance, expiry, is_alive, State};

use crate::{
    errors,
    maps::{CONFIG, CT, CT_OWNERS, CT_PREV, CT_PREV_V1, CT_STATS},
};

/// CLOCK_MONOTONIC at the resolution of the kernel's tick (a few ms),
/// which is all the datapath's clocks need: conntrack keeps its expiry in
/// whole seconds, affinity and the monitor's lease their timeouts in
/// seconds. Reading the clock source instead (`bpf_ktime_get_ns`: rdtsc,
/// which a VM makes costly) took about 5 % of `from_pod`'s time under a
/// flood of new UDP flows (perf, docs/performance.md).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// CLOCK_MONOTONIC to the nanosecond, for the timestamps of events.
#[inline(always)]
pub fn precise_ns() -> u64 {
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

/// Copies a conntrack entry as eight 64-bit words. A plain struct copy
/// becomes a call to compiler-builtins' byte-wise `memcpy` in BPF (some
/// 450 instructions for 64 bytes), paid on every packet of a flow.
#[inline(always)]
pub fn copy_entry(dst: &mut CtEntry, src: *const CtEntry) {
    const WORDS: usize = core::mem::size_of::<CtEntry>() / 8;
    let (d, s) = (dst as *mut CtEntry as *mut u64, src as *const u64);
    let mut i = 0;
    while i < WORDS {
        // SAFETY: both point at a whole, 8-aligned CtEntry of WORDS words;
        // volatile keeps LLVM from folding the loop back into memcpy.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Zeroes a conntrack entry (see [`copy_entry`]).
#[inline(always)]
pub fn clear_entry(dst: &mut CtEntry) {
    const WORDS: usize = core::mem::size_of::<CtEntry>() / 8;
    let d = dst as *mut CtEntry as *mut u64;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: as in `copy_entry`.
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
        i += 1;
    }
}

const _: () = assert!(core::mem::size_of::<CtEntry>() % 8 == 0 && core::mem::align_of::<CtEntry>() == 8);

#[inline(always)]
pub fn key(saddr: Addr, daddr: Addr, sport: u16, dport: u16, proto: u8, kind: u8) -> CtKey {
    CtKey { saddr, daddr, sport, dport, proto, kind, _pad: 0 }
}

/// Where conntrack takes over an entry it misses, in the programs the
/// agent loads for a migration that rebuilds `WEIR_CT`
/// (`weir_datapath::migrate`): `CARRY_OVER_SAME` from `WEIR_CT_PREV` (the
/// same layout, another capacity), `CARRY_OVER_V1` from `WEIR_CT_PREV_V1`
/// (the previous layout), `CARRY_OVER_OFF` otherwise. A load-time
/// constant (.rodata), so the verifier removes [`carry_over`] from every
/// other load and it costs nothing per packet.
#[no_mangle]
static WEIR_CT_PREV_ON: u8 = CARRY_OVER_OFF;

#[inline(always)]
fn carry_from() -> u8 {
    // SAFETY: reading a constant the loader may have overridden.
    unsafe { core::ptr::read_volatile(&WEIR_CT_PREV_ON) }
}

#[inline(always)]
pub fn lookup(k: &CtKey) -> Option<*mut CtEntry> {
    match CT.get_ptr_mut(k) {
        Some(e) => Some(e),
        None if carry_from() != CARRY_OVER_OFF => carry_over(k),
        None => None,
    }
}

/// An entry missing from `WEIR_CT` that the map a migration replaces
/// still holds (see `weir_common::maps::CT_PREV`): it moves over, so a
/// flow the old programs opened during the migration keeps its
/// translation. From the previous layout, it is converted by the same
/// function as the agent's copy (`weir_common::ct_v1::to_v2`). Outside a
/// migration the maps are empty. (Inlined: a frame of its own would take
/// the deepest call chains past the 512-byte stack.)
#[inline(always)]
fn carry_over(k: &CtKey) -> Option<*mut CtEntry> {
    let same = |k: &CtKey| CT_PREV.get_ptr(k);
    let v1 = |k: &CtKey| CT_PREV_V1.get_ptr(k);
    if crate::carry::take_over(carry_from(), k, same, v1, |k, e| CT.insert(k, e, BPF_NOEXIST as u64).is_ok()) {
        stat(CtStat::Created);
        stat(CtStat::CarriedOver);
    }
    CT.get_ptr_mut(k)
}

/// Whether the entry behind `k` exists and is alive at `now`.
#[inline(always)]
pub fn alive(k: &CtKey, now: u64) -> bool {
    // SAFETY: read-only access to a map value.
    lookup(k).is_some_and(|e| is_alive(unsafe { &*e }, now))
}

#[inline(always)]
pub fn stat(s: CtStat) {
    if let Some(p) = CT_STATS.get_ptr_mut(s as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

/// Advances the entry's state for one packet travelling in `dir` and
/// pushes its expiry. Returns whether the state (or its bits) changed, so
/// the caller copies it to the flow's other entry.
#[inline(always)]
pub fn touch(e: *mut CtEntry, cfg: &DatapathConfig, proto: u8, tcp_flags: u8, dir: u8, now: u64) -> bool {
    // SAFETY: `e` points into the CT map; the kernel writes entries only
    // here and at creation, userspace only deletes.
    let entry = unsafe { &mut *e };
    let cur = State { state: entry.state, flags: entry.flags & CT_F_STATE_BITS };
    let next = advance(proto, cur, tcp_flags, dir);
    entry.state = next.state;
    entry.flags = (entry.flags & !CT_F_STATE_BITS) | next.flags;
    entry.expires_s = expiry(cfg, next.state, now);
    next != cur
}

/// Copies the state of `from` to the entry behind `k` (the flow's other
/// half), if it exists.
#[inline(always)]
pub fn sync_twin(k: &CtKey, from: *const CtEntry) {
    if let Some(t) = CT.get_ptr_mut(k) {
        // SAFETY: map value pointers, valid for the program run.
        let (t, f) = unsafe { (&mut *t, &*from) };
        t.state = f.state;
        t.flags = (t.flags & !CT_F_STATE_BITS) | (f.flags & CT_F_STATE_BITS);
        t.expires_s = f.expires_s;
    }
}

/// Whether the link `owner` may create `n` more entries.
#[inline(always)]
pub fn within_quota(cfg: &DatapathConfig, owner: u32) -> bool {
    if cfg.ct_max_per_endpoint == 0 || owner == 0 {
        return true;
    }
    // SAFETY: map value reference, read only.
    let used = unsafe { CT_OWNERS.get(&owner) }.copied().unwrap_or(0);
    if used < cfg.ct_max_per_endpoint as u64 {
        return true;
    }
    stat(CtStat::QuotaRefused);
    errors::drop_reason(DropReason::CtQuota);
    false
}

/// Charges one new entry to `owner`. The count is a quota, not a ledger:
/// two CPUs adding at once may lose one increment (the bpfel target has
/// no atomic fetch-add in Rust), and the agent's collector rewrites every
/// count from its scan of the table.
#[inline(always)]
fn charge(owner: u32) {
    if owner == 0 {
        return;
    }
    if let Some(p) = CT_OWNERS.get_ptr_mut(&owner) {
        // SAFETY: map value pointer, valid for the program run.
        unsafe { *p = (*p).wrapping_add(1) };
        return;
    }
    let _ = CT_OWNERS.insert(&owner, &1, BPF_NOEXIST as u64);
}

/// Inserts a new key. `Err` when the key exists (the caller decides) or
/// the table refused it (counted).
#[inline(always)]
pub fn create(k: &CtKey, e: &CtEntry) -> Result<(), Exists> {
    match CT.insert(k, e, BPF_NOEXIST as u64) {
        Ok(()) => {
            stat(CtStat::Created);
            charge(e.owner);
            Ok(())
        }
        Err(rc) if rc == -17 => Err(Exists::Yes), // -EEXIST
        Err(_) => {
            stat(CtStat::InsertFailed);
            Err(Exists::No)
        }
    }
}

/// Why [`create`] did not insert.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Exists {
    /// The key is taken.
    Yes,
    /// The table refused the insert (full).
    No,
}

/// Overwrites an existing key (a stale entry of the same tuple); creates
/// it if it vanished meanwhile.
#[inline(always)]
pub fn replace(k: &CtKey, e: &CtEntry) -> Result<(), Exists> {
    if CT.insert(k, e, BPF_EXIST as u64).is_ok() {
        return Ok(());
    }
    create(k, e)
}

/// Deletes a key the kernel decided is stale.
#[inline(always)]
pub fn remove(k: &CtKey) {
    if CT.remove(k).is_ok() {
        stat(CtStat::Deleted);
    }
}
