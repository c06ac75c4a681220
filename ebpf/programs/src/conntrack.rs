//! Conntrack: lookups, state updates, and entry creation with the
//! per-endpoint quota and the counters that make a full table visible.
//! The state machine and timeouts are `weir_logic::ct`, shared with the
//! userspace collector.
//!
//! Every key that enters the table through [`create`] counts in
//! `CtStat::Created`, every key the kernel deletes in `CtStat::Deleted`
//! (the agent counts its own deletes in the same slots), so userspace
//! reads the LRU's evictions as `created - deleted - entries`.

use core::marker::PhantomData;

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtEntry4, CtKey, CtKey4, CtMasq6, CtMasqKey6, CtStat, CtTail, CARRY_OVER_OFF, CARRY_OVER_SAME, CARRY_OVER_V1, CARRY_OVER_V3, CARRY_OVER_WIDE, CT_F_STATE_BITS, CT_SVC_REV, OWNER_COUNTS_FRESH_UNTIL, TAIL, TAIL4},
    drop::DropReason,
};
use weir_logic::{
    ct::{alive_until, touched, State},
    ct6::{self, Nat},
};

use crate::{
    errors,
    maps::{scratch, BACKENDS, CONFIG, CT, CT4, CT4_PREV, CT6_MASQ, CT_OWNERS, CT_PREV, CT_PREV_V1, CT_PREV_V3, CT_STATS, SVC_ADDRS},
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

/// An address family's conntrack table, chosen by the compiler: IPv4
/// (`u32`, the word as on the wire) in `WEIR_CT4`, IPv6 (`Addr`) in
/// `WEIR_CT` and `WEIR_CT6_MASQ` (`family::Packet::A`,
/// `xdp::FrameAddr`). Code above the tables passes wide keys and
/// entries; they are narrowed here, in per-CPU scratch space, and
/// widened on the way out (see `weir_common::ct`, `weir_logic::ct6`).
pub trait Family: Copy {
    const V4: bool;
}

impl Family for u32 {
    const V4: bool = true;
}

impl Family for Addr {
    const V4: bool = false;
}

/// A conntrack entry in its family's table: a map value pointer, valid
/// for the program run, and for IPv6 whether it is a `CtMasq6`
/// (`WEIR_CT6_MASQ`) or a `CtTail` (`WEIR_CT`).
pub struct Ct<F> {
    p: *mut u8,
    masq: bool,
    f: PhantomData<F>,
}

impl<F> Clone for Ct<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F> Copy for Ct<F> {}

impl<F: Family> Ct<F> {
    #[inline(always)]
    fn new(p: *mut u8, masq: bool) -> Self {
        Self { p, masq, f: PhantomData }
    }

    /// The fields after the addresses, updated in place.
    #[inline(always)]
    pub fn tail(self) -> &'static mut CtTail {
        // Both IPv6 tables' values start with their CtTail.
        let off = if F::V4 { TAIL4 } else { 0 };
        // SAFETY: a map value of the table's entry type, whose bytes from
        // `off` are a CtTail (asserted in weir_common::ct).
        unsafe { &mut *(self.p.add(off) as *mut CtTail) }
    }

    /// The entry behind `k` (the key it was looked up by), widened, into
    /// `out`. False when an IPv6 entry names a backend or service id that
    /// is gone, so that the address it left out is unknown (`out` holds
    /// the zero address for it): the flow is over.
    #[inline(always)]
    pub fn read(self, k: &CtKey, out: &mut CtEntry) -> bool {
        if F::V4 {
            widen_into(out, self.p as *const CtEntry4);
            return true;
        }
        let known = widen6_into(out, k, self.p as *const CtTail);
        if self.masq {
            // SAFETY: a whole CtMasq6 (`weir_logic::ct6::widen_masq`).
            out.orig_addr = unsafe { (*(self.p as *const CtMasq6)).client };
        }
        known
    }

    #[inline(always)]
    pub fn alive(self, now: u64) -> bool {
        alive_until(self.tail().expires_s, now)
    }
}

/// The three 8-byte words of a [`CtTail`] from `src` to `dst` (see
/// [`copy_entry`]).
#[inline(always)]
fn copy_tail(dst: *mut u8, src: *const u8) {
    let (d, s) = (dst as *mut u64, src as *const u64);
    let mut i = 0;
    while i < core::mem::size_of::<CtTail>() / 8 {
        // SAFETY: both point at an 8-aligned CtTail inside an entry.
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// An IPv4 entry of `WEIR_CT4`, widened (`CtEntry4::widen`, by words).
#[inline(always)]
pub fn widen_into(dst: &mut CtEntry, src: *const CtEntry4) {
    // SAFETY: a whole CtEntry4.
    let (nat, orig) = unsafe { ((*src).nat_addr, (*src).orig_addr) };
    dst.nat_addr = Addr::from_v4_raw(nat);
    dst.orig_addr = Addr::from_v4_raw(orig);
    // SAFETY: within both entries (weir_common::ct asserts the offsets).
    copy_tail(unsafe { (dst as *mut CtEntry as *mut u8).add(TAIL) }, unsafe { (src as *const u8).add(TAIL4) });
}

/// An IPv6 entry of `WEIR_CT` (`k` → `t`), widened
/// (`weir_logic::ct6::widen`, in place): the address it left out read
/// from the id it names. False if that id is gone.
#[inline(always)]
fn widen6_into(dst: &mut CtEntry, k: &CtKey, t: *const CtTail) -> bool {
    // SAFETY: a whole CtTail, a map value valid for the program run.
    let tail = unsafe { &*t };
    let nat = match ct6::nat_of(k.kind, tail) {
        // SAFETY: map value pointers, valid for the program run.
        Nat::Backend(id) => BACKENDS.get_ptr(&id).map(|b| unsafe { (*b).addr }),
        Nat::Service(id) => SVC_ADDRS.get_ptr(&id).map(|f| unsafe { (*f).addr }),
        Nat::None => Some(Addr::ZERO),
    };
    dst.nat_addr = nat.unwrap_or(Addr::ZERO);
    dst.orig_addr = ct6::orig_addr(k, tail.flags);
    // SAFETY: within the entry (weir_common::ct asserts the offsets).
    copy_tail(unsafe { (dst as *mut CtEntry as *mut u8).add(TAIL) }, t as *const u8);
    nat.is_some()
}

/// An IPv4 flow's entry as `WEIR_CT4` holds it (`CtEntry4::narrow`, by words).
#[inline(always)]
pub fn narrow_into(dst: &mut CtEntry4, src: *const CtEntry) {
    // SAFETY: a whole CtEntry.
    let (nat, orig) = unsafe { ((*src).nat_addr.v4_raw(), (*src).orig_addr.v4_raw()) };
    dst.nat_addr = nat;
    dst.orig_addr = orig;
    // SAFETY: as in `widen_into`.
    copy_tail(unsafe { (dst as *mut CtEntry4 as *mut u8).add(TAIL4) }, unsafe { (src as *const u8).add(TAIL) });
}

/// Where conntrack takes over an entry it misses, in the programs the
/// agent loads for a migration that rebuilds `WEIR_CT`
/// (`weir_datapath::migrate`): `CARRY_OVER_SAME` from `WEIR_CT_PREV` (the
/// same layout, another capacity), `CARRY_OVER_V3` from `WEIR_CT_PREV_V3`
/// (layouts v2 and v3), `CARRY_OVER_V1` from `WEIR_CT_PREV_V1` (layout
/// v1), `CARRY_OVER_OFF` otherwise. A load-time
/// constant (.rodata), so the verifier removes [`carry_over`] from every
/// other load and it costs nothing per packet.
#[no_mangle]
static WEIR_CT_PREV_ON: u8 = CARRY_OVER_OFF;

/// The same for `WEIR_CT4`: `CARRY_OVER_SAME` from `WEIR_CT4_PREV` (a new
/// capacity), `CARRY_OVER_WIDE` from it and then from the one-table
/// conntrack a migration splits (where `WEIR_CT_PREV_ON` says),
/// `CARRY_OVER_OFF` otherwise.
#[no_mangle]
static WEIR_CT4_PREV_ON: u8 = CARRY_OVER_OFF;

#[inline(always)]
fn carry_from() -> u8 {
    // SAFETY: reading a constant the loader may have overridden.
    unsafe { core::ptr::read_volatile(&WEIR_CT_PREV_ON) }
}

/// Whether these programs were loaded for a migration that rebuilds
/// conntrack or the masquerade table (a constant to the verifier, as
/// [`carry_from`]): they leave out `fwd::into_pod`, whose paths beside
/// the carry-over's would take the verifier past its budget; for the
/// migration's while, packets between local pods take their old way (a
/// translated one to the link's egress, an untranslated one up the
/// node's stack). Read by `fwd::into_pod`'s callers' callers
/// (`lb`, the pod object, `pod_v6`): a volatile read in the `fwd`
/// functions that take the context would keep LLVM from passing them the
/// socket buffer instead (argument promotion), and from_pod's frame, on
/// the deepest chains of calls, would hold the context.
#[inline(always)]
pub fn migrating() -> bool {
    carry_from() != CARRY_OVER_OFF || carry4_from() != CARRY_OVER_OFF || snat_carry_from() != CARRY_OVER_OFF
}

/// Where a masquerade missing from `WEIR_SNAT` is taken over from, in the
/// programs the agent loads for a migration that rebuilds it: as
/// `WEIR_CT_PREV_ON` (`CARRY_OVER_*`), from `WEIR_SNAT_PREV` or
/// `WEIR_SNAT_PREV_V1`. A load-time constant: the verifier drops the
/// fallback from every other load. Kept here, beside conntrack's, for
/// [`migrating`]; `masq` reads it.
#[no_mangle]
static WEIR_SNAT_PREV_ON: u8 = CARRY_OVER_OFF;

/// The value of `WEIR_SNAT_PREV_ON`.
#[inline(always)]
pub fn snat_carry_from() -> u8 {
    // SAFETY: reading a constant the loader may have overridden.
    unsafe { core::ptr::read_volatile(&WEIR_SNAT_PREV_ON) }
}

#[inline(always)]
fn carry4_from() -> u8 {
    // SAFETY: as in `carry_from`.
    unsafe { core::ptr::read_volatile(&WEIR_CT4_PREV_ON) }
}

/// `k` narrowed into scratch space, for `WEIR_CT4`.
#[inline(always)]
fn key4(k: &CtKey) -> Option<&'static mut CtKey4> {
    let s = scratch()?;
    s.key4 = k.narrow();
    Some(&mut s.key4)
}

#[inline(always)]
pub fn lookup<F: Family>(k: &CtKey) -> Option<Ct<F>> {
    if F::V4 {
        let k4 = key4(k)?;
        let e = match CT4.get_ptr_mut(k4) {
            Some(e) => Some(e),
            None if carry4_from() != CARRY_OVER_OFF => carry_over4(k),
            None => None,
        };
        return e.map(|e| Ct::new(e as *mut u8, false));
    }
    if let Some(e) = found6(k) {
        return Some(e);
    }
    if carry_from() != CARRY_OVER_OFF {
        return carry_over(k);
    }
    None
}

/// An IPv6 key's entry in `WEIR_CT`, or in `WEIR_CT6_MASQ` if it may be
/// there (`weir_logic::ct6::may_keep_addrs`).
#[inline(always)]
fn found6<F: Family>(k: &CtKey) -> Option<Ct<F>> {
    if let Some(e) = CT.get_ptr_mut(k) {
        return Some(Ct::new(e as *mut u8, false));
    }
    if may_keep_addrs(k) {
        let mk = masq_key(k)?;
        return CT6_MASQ.get_ptr_mut(mk).map(|e| Ct::new(e as *mut u8, true));
    }
    None
}

/// `k` as `WEIR_CT6_MASQ` keys it (`CtKey::masq6`), in scratch space.
#[inline(always)]
fn masq_key(k: &CtKey) -> Option<&'static mut CtMasqKey6> {
    let s = scratch()?;
    masq_key_into(&mut s.masq_key, k);
    Some(&mut s.masq_key)
}

/// `CtKey::masq6` field by field, in place: a whole key built on the
/// stack would take the deepest call chains (a migration's carry-over)
/// past the 512-byte stack.
#[inline(always)]
fn masq_key_into(dst: &mut CtMasqKey6, k: &CtKey) {
    dst.saddr = k.saddr;
    dst.sport = k.sport;
    dst.dport = k.dport;
    dst.proto = k.proto;
    dst._pad = [0; 3];
}

/// Whether `k` may be in `WEIR_CT6_MASQ`: a reverse key addressed to the
/// node's IPv6 address.
#[inline(always)]
fn may_keep_addrs(k: &CtKey) -> bool {
    k.kind == CT_SVC_REV && config().is_some_and(|c| ct6::may_keep_addrs(k, &c.node_addr6))
}

/// An entry missing from `WEIR_CT` that the map a migration replaces
/// still holds (see `weir_common::maps::CT_PREV`): it moves over, so a
/// flow the old programs opened during the migration keeps its
/// translation. From an older layout, it is converted by the same
/// functions as the agent's copy (`weir_common::ct_v1::to_v2`, then
/// narrowed or set aside by `weir_logic::ct6::keeps_addrs`). Outside a
/// migration the maps are empty. (Inlined: a frame of its own would take
/// the deepest call chains past the 512-byte stack.)
#[inline(always)]
fn carry_over<F: Family>(k: &CtKey) -> Option<Ct<F>> {
    let taken = if carry_from() == CARRY_OVER_SAME {
        // SAFETY: a map value pointer, valid for this program run.
        CT_PREV.get_ptr(k).is_some_and(|old| CT.insert(k, unsafe { &*old }, BPF_NOEXIST as u64).is_ok())
    } else {
        take_over_whole(k, #[inline(always)] |k, e| insert::<Addr>(k, e, BPF_NOEXIST as u64).is_ok())
    };
    if taken {
        stat(CtStat::Created);
        stat(CtStat::CarriedOver);
    }
    found6(k)
}

/// Takes over `k`'s entry from a `WEIR_CT` of layout v3 or older (whole
/// `CtEntry`s: `WEIR_CT_PREV_V3`, or `WEIR_CT_PREV_V1` converted), where
/// `WEIR_CT_PREV_ON` says; `insert` writes it.
#[inline(always)]
fn take_over_whole(k: &CtKey, insert: impl FnOnce(&CtKey, &CtEntry) -> bool) -> bool {
    let mode = match carry_from() {
        CARRY_OVER_V3 => CARRY_OVER_SAME,
        CARRY_OVER_V1 => CARRY_OVER_V1,
        _ => return false,
    };
    let same = |k: &CtKey| CT_PREV_V3.get_ptr(k);
    let v1 = |k: &CtKey| CT_PREV_V1.get_ptr(k);
    crate::carry::take_over(mode, k, same, v1, insert)
}

/// [`carry_over`] for `WEIR_CT4` (its key narrowed in `scratch().key4`):
/// from `WEIR_CT4_PREV` (a `WEIR_CT4` being rebuilt; an empty map
/// otherwise), then, when a migration splits the one-table map, from that
/// map (narrowed).
#[inline(always)]
fn carry_over4(k: &CtKey) -> Option<*mut CtEntry4> {
    let s = scratch()?;
    // SAFETY: a map value pointer, valid for this program run.
    let mut taken = CT4_PREV.get_ptr(&s.key4).is_some_and(|old| CT4.insert(&s.key4, unsafe { &*old }, BPF_NOEXIST as u64).is_ok());
    if !taken && carry4_from() == CARRY_OVER_WIDE {
        taken = take_over_whole(k, |_, e| {
            narrow_into(&mut s.entry4, e);
            CT4.insert(&s.key4, &s.entry4, BPF_NOEXIST as u64).is_ok()
        });
    }
    if taken {
        stat(CtStat::Created);
        stat(CtStat::CarriedOver);
    }
    CT4.get_ptr_mut(&s.key4)
}

/// Whether the entry behind `k` exists and is alive at `now`.
#[inline(always)]
pub fn alive<F: Family>(k: &CtKey, now: u64) -> bool {
    lookup::<F>(k).is_some_and(|e| e.alive(now))
}

/// [`alive`] for a key of either family (paths not written per family:
/// policy, ICMP errors).
#[inline(always)]
pub fn alive_any(k: &CtKey, now: u64) -> bool {
    if k.is_v4() {
        alive::<u32>(k, now)
    } else {
        alive::<Addr>(k, now)
    }
}

/// The state of the entry behind a key of either family (see [`alive_any`]).
#[inline(always)]
pub fn tail_any(k: &CtKey) -> Option<&'static mut CtTail> {
    if k.is_v4() {
        lookup::<u32>(k).map(|e| e.tail())
    } else {
        lookup::<Addr>(k).map(|e| e.tail())
    }
}

/// Copies the entry behind a key of either family into `out`, widened;
/// false if there is none (or it names an id that is gone, see
/// [`Ct::read`]).
#[inline(always)]
pub fn read_any(k: &CtKey, out: &mut CtEntry) -> bool {
    if k.is_v4() {
        lookup::<u32>(k).is_some_and(|e| e.read(k, out))
    } else {
        lookup::<Addr>(k).is_some_and(|e| e.read(k, out))
    }
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
pub fn touch(entry: &mut CtTail, cfg: &DatapathConfig, proto: u8, tcp_flags: u8, dir: u8, now: u64) -> bool {
    // The kernel writes entries only here and at creation, userspace only
    // deletes.
    let cur = State { state: entry.state, flags: entry.flags & CT_F_STATE_BITS };
    let (next, expires_s) = touched(cfg, proto, cur, entry.expires_s, tcp_flags, dir, now);
    entry.state = next.state;
    entry.flags = (entry.flags & !CT_F_STATE_BITS) | next.flags;
    entry.expires_s = expires_s;
    next != cur
}

/// Copies the state of `from` to the entry behind `k` (the flow's other
/// half), if it exists.
#[inline(always)]
pub fn sync_twin<F: Family>(k: &CtKey, from: &CtTail) {
    let t = if F::V4 {
        let Some(k4) = key4(k) else { return };
        // SAFETY: a map value pointer, valid for the program run.
        CT4.get_ptr_mut(k4).map(|e| unsafe { &mut *((e as *mut u8).add(TAIL4) as *mut CtTail) })
    } else {
        found6::<Addr>(k).map(|e| e.tail())
    };
    if let Some(t) = t {
        t.state = from.state;
        t.flags = (t.flags & !CT_F_STATE_BITS) | (from.flags & CT_F_STATE_BITS);
        t.expires_s = from.expires_s;
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
    // A count no collector has rewritten lately says more than the pod
    // holds: the pod is not refused on it (see `OWNER_COUNTS_FRESH_UNTIL`).
    // SAFETY: map value reference, read only.
    let fresh_until = unsafe { CT_OWNERS.get(&OWNER_COUNTS_FRESH_UNTIL) }.copied().unwrap_or(0);
    if now_ns() > fresh_until {
        stat(CtStat::QuotaLifted);
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
pub fn create<F: Family>(k: &CtKey, e: &CtEntry) -> Result<(), Exists> {
    match insert::<F>(k, e, BPF_NOEXIST as u64) {
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

/// [`create`] for a key of either family (see [`alive_any`]).
#[inline(always)]
pub fn create_any(k: &CtKey, e: &CtEntry) -> Result<(), Exists> {
    if k.is_v4() {
        create::<u32>(k, e)
    } else {
        create::<Addr>(k, e)
    }
}

/// Writes `k` → `e` into the family's table, narrowed for `WEIR_CT4`.
#[inline(always)]
fn insert<F: Family>(k: &CtKey, e: &CtEntry, flags: u64) -> Result<(), i64> {
    if F::V4 {
        let s = scratch().ok_or(-12i64)?;
        s.key4 = k.narrow();
        narrow_into(&mut s.entry4, e);
        return CT4.insert(&s.key4, &s.entry4, flags).map_err(|rc| rc as i64);
    }
    let s = scratch().ok_or(-12i64)?;
    if ct6::keeps_addrs(k.kind, e.flags) {
        // Keyed without the node's address: a key naming another (none
        // the datapath writes) could never be found.
        if !may_keep_addrs(k) {
            return Err(-22); // -EINVAL
        }
        // `CtMasq6::of`, in place (see `masq_key_into`).
        masq_key_into(&mut s.masq_key, k);
        // SAFETY: the tail of a whole CtEntry, into a whole CtTail.
        copy_tail(&mut s.masq.tail as *mut CtTail as *mut u8, unsafe { (e as *const CtEntry as *const u8).add(TAIL) });
        s.masq.client = e.orig_addr;
        return CT6_MASQ.insert(&s.masq_key, &s.masq, flags).map_err(|rc| rc as i64);
    }
    // SAFETY: the tail of a whole CtEntry, into a whole CtTail.
    copy_tail(&mut s.tail as *mut CtTail as *mut u8, unsafe { (e as *const CtEntry as *const u8).add(TAIL) });
    CT.insert(k, &s.tail, flags).map_err(|rc| rc as i64)
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
pub fn replace<F: Family>(k: &CtKey, e: &CtEntry) -> Result<(), Exists> {
    if insert::<F>(k, e, BPF_EXIST as u64).is_ok() {
        return Ok(());
    }
    create::<F>(k, e)
}

/// [`replace`] for a key of either family (see [`alive_any`]).
#[inline(always)]
pub fn replace_any(k: &CtKey, e: &CtEntry) -> Result<(), Exists> {
    if k.is_v4() {
        replace::<u32>(k, e)
    } else {
        replace::<Addr>(k, e)
    }
}

/// Deletes a key the kernel decided is stale.
#[inline(always)]
pub fn remove<F: Family>(k: &CtKey) {
    let removed = if F::V4 {
        key4(k).is_some_and(|k4| CT4.remove(k4).is_ok())
    } else {
        CT.remove(k).is_ok() || (may_keep_addrs(k) && masq_key(k).is_some_and(|mk| CT6_MASQ.remove(mk).is_ok()))
    };
    if removed {
        stat(CtStat::Deleted);
    }
}
