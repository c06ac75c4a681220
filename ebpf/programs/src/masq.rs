//! Masquerade of pod egress (see `weir_common::masq`): a pod's TCP, UDP or
//! ICMP echo (ICMPv6 echo) leaving an uplink towards an address outside
//! the cluster (`WEIR_NO_MASQ` holds what is inside) leaves from the
//! device's address of its family and a port of its range; replies
//! arriving on the device are restored to the pod's address and port
//! before the stack routes them to the pod. Written once for IPv4 and
//! IPv6 (`family::Packet`).
//!
//! Ports are allocated per remote (address, port, protocol): a random
//! start and a bounded number of tries, each an insert of the in key with
//! BPF_NOEXIST, so two CPUs never take the same port. A full table and a
//! range with no free port found are drops with their own reasons.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK},
    helpers::bpf_get_prandom_u32,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use weir_common::{
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CtStat, CARRY_OVER_OFF, CT_F_STATE_BITS, CT_SNAT_IN, CT_SNAT_OUT, DIR_ORIG, DIR_REPLY},
    drop::DropReason,
    masq::{device_key, MasqDevice},
};
use weir_logic::{
    ct::{advance, expiry, touched, State},
    masq::twin,
};

use crate::{
    debug::{self, debug_on},
    conntrack::{self, clear_entry, now_ns},
    family::Packet,
    hdr::{ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_ICMPV6},
    maps::{scratch, MASQ, NO_MASQ, SNAT, SNAT_PREV, SNAT_PREV_V1, SNAT_STATS},
    source,
};

/// Ports tried before a new flow is refused (`masquerade_ports_exhausted`).
const TRIES: u32 = 16;

#[inline(always)]
fn stat(s: CtStat) {
    if let Some(p) = SNAT_STATS.get_ptr_mut(s as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

/// Where a masquerade missing from `WEIR_SNAT` is taken over from
/// (`conntrack::snat_carry_from`, the constant `WEIR_SNAT_PREV_ON`).
#[inline(always)]
fn carry_from() -> u8 {
    conntrack::snat_carry_from()
}

/// The masquerade entry behind `k`; during a migration, one the old
/// programs created after the agent's copy is taken over from the old map
/// on first use, so a flow masqueraded then keeps its port and its replies.
#[inline(always)]
pub fn lookup(k: &CtKey) -> Option<*mut CtEntry> {
    match SNAT.get_ptr_mut(k) {
        Some(e) => Some(e),
        None if carry_from() != CARRY_OVER_OFF => carry_over(k),
        None => None,
    }
}

#[inline(always)]
fn carry_over(k: &CtKey) -> Option<*mut CtEntry> {
    // SAFETY (both): map value references, valid for this program run.
    let same = |k: &CtKey| unsafe { SNAT_PREV.get(k) }.map(|e| e as *const CtEntry);
    let v1 = |k: &CtKey| unsafe { SNAT_PREV_V1.get(k) }.map(|e| e as *const weir_common::ct_v1::CtEntryV1);
    if crate::carry::take_over(carry_from(), k, same, v1, |k, e| SNAT.insert(k, e, BPF_NOEXIST as u64).is_ok()) {
        stat(CtStat::Created);
        stat(CtStat::CarriedOver);
    }
    SNAT.get_ptr_mut(k)
}

/// How this device masquerades the family of `P`.
#[inline(always)]
fn device<P: Packet>(ctx: &TcContext) -> Option<&'static MasqDevice> {
    // SAFETY: the context pointer is valid for the program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: map value reference, valid for the program run; read only.
    unsafe { MASQ.get(&device_key(ifindex, P::V4)) }
}

/// Whether `pkt` is of a kind masquerade translates, as sent by the pod
/// (`reply` false) or as its reply arrives.
#[inline(always)]
fn translatable<P: Packet>(pkt: &P, reply: bool) -> bool {
    if pkt.later_fragment() {
        return false;
    }
    let (proto, request, answer) = if P::V4 { (PROTO_ICMP, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) } else { (PROTO_ICMPV6, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY) };
    if pkt.proto() == proto {
        return pkt.icmp_type() == if reply { answer } else { request };
    }
    pkt.is_tcp_udp()
}

/// Advances the entry's state for one packet and copies it to its twin.
#[inline(always)]
fn touch<P: Packet>(k: &CtKey, e: *mut CtEntry, cfg: &DatapathConfig, pkt: &P, dir: u8, now: u64) {
    // SAFETY: `e` points into the SNAT map for this program run.
    let entry = unsafe { &mut *e };
    let cur = State { state: entry.state, flags: entry.flags & CT_F_STATE_BITS };
    let (next, expires_s) = touched(cfg, pkt.proto(), cur, entry.expires_s, pkt.tcp_flags(), dir, now);
    entry.state = next.state;
    entry.flags = (entry.flags & !CT_F_STATE_BITS) | next.flags;
    entry.expires_s = expires_s;
    let Some(tk) = twin(k, entry) else { return };
    if let Some(t) = lookup(&tk) {
        // SAFETY: map value pointer, valid for the program run.
        let t = unsafe { &mut *t };
        t.state = entry.state;
        t.flags = entry.flags;
        t.expires_s = entry.expires_s;
    }
}

/// tc egress of an uplink: masquerades a pod's packet leaving the cluster.
#[inline(always)]
pub fn egress<P: Packet>(ctx: &TcContext, pkt: &mut P) -> i32 {
    let ok = TC_ACT_OK as i32;
    if !translatable(pkt, false) {
        return ok;
    }
    let Some(dev) = device::<P>(ctx) else { return ok };
    let src = P::wide(pkt.saddr());
    if !source::is_local_pod(&src) {
        return ok;
    }
    let dst = P::wide(pkt.daddr());
    if NO_MASQ.get(&Key::new(128, dst)).is_some() {
        return ok;
    }
    let (Some(cfg), Some(s)) = (conntrack::config(), scratch()) else { return ok };
    let now = now_ns();
    s.fkey = conntrack::key(src, dst, pkt.sport(), pkt.dport(), pkt.proto(), CT_SNAT_OUT);
    let port = match existing(&s.fkey, dev, cfg, pkt, now) {
        Some(port) => port,
        None => match allocate(s, dev, cfg, pkt, now) {
            Ok(port) => port,
            Err(reason) => return pkt.dropped(ctx, reason),
        },
    };
    let (from, from_port) = (pkt.saddr(), pkt.sport());
    if pkt.snat(ctx, &dev.addr, port).is_err() {
        return pkt.dropped(ctx, DropReason::Malformed);
    }
    if debug_on() {
        debug::weir_log_masq_out(P::log_ep(0, from, from_port), P::log_ep(1, pkt.daddr(), pkt.dport()), P::log_ep(2, pkt.saddr(), pkt.sport()));
    }
    ok
}

/// The port of the flow's live mapping: its out entry exists, leaves from
/// this device's address, and its in entry still points back at it.
#[inline(always)]
fn existing<P: Packet>(k: &CtKey, dev: &MasqDevice, cfg: &DatapathConfig, pkt: &P, now: u64) -> Option<u16> {
    let e = lookup(k)?;
    // SAFETY: map value pointer, valid for the program run.
    let entry = unsafe { &*e };
    if entry.nat_addr != dev.addr {
        return None;
    }
    let tk = twin(k, entry)?;
    // SAFETY: map value pointer, valid for the program run; read only.
    let back = unsafe { &*lookup(&tk)? };
    if back.nat_addr != k.saddr || back.nat_port != k.sport {
        return None;
    }
    let port = entry.nat_port;
    touch(k, e, cfg, pkt, DIR_ORIG, now);
    Some(port)
}

/// Creates the flow's two entries on a free port; returns it (wire order).
#[inline(always)]
fn allocate<P: Packet>(s: &mut crate::maps::Scratch, dev: &MasqDevice, cfg: &DatapathConfig, pkt: &P, now: u64) -> Result<u16, DropReason> {
    let first = advance(pkt.proto(), State { state: 0, flags: 0 }, pkt.tcp_flags(), DIR_ORIG);
    clear_entry(&mut s.fwd);
    s.fwd.nat_addr = dev.addr;
    s.fwd.orig_addr = s.fkey.saddr;
    s.fwd.orig_port = s.fkey.sport;
    s.fwd.state = first.state;
    s.fwd.flags = first.flags;
    s.fwd.expires_s = expiry(cfg, first.state, now);
    clear_entry(&mut s.rev);
    s.rev.nat_addr = s.fkey.saddr;
    s.rev.nat_port = s.fkey.sport;
    s.rev.orig_addr = s.fkey.daddr;
    s.rev.orig_port = s.fkey.dport;
    s.rev.state = first.state;
    s.rev.flags = first.flags;
    s.rev.expires_s = s.fwd.expires_s;
    let (lo, hi) = (dev.port_min as u32, dev.port_max as u32);
    let span = if hi >= lo { hi - lo + 1 } else { 1 };
    // SAFETY: plain helper call.
    let start = unsafe { bpf_get_prandom_u32() } % span;
    let mut i = 0;
    while i < TRIES {
        let port = ((lo + (start + i * 7919) % span) as u16).to_be();
        s.fwd.nat_port = port;
        let Some(rk) = twin(&s.fkey, &s.fwd) else { return Err(DropReason::MasqueradeFull) };
        match SNAT.insert(&rk, &s.rev, BPF_NOEXIST as u64) {
            Ok(()) => {
                stat(CtStat::Created);
                // The out key may hold a stale mapping (its in half gone):
                // this one replaces it.
                if SNAT.insert(&s.fkey, &s.fwd, BPF_ANY as u64).is_err() {
                    stat(CtStat::InsertFailed);
                    if SNAT.remove(&rk).is_ok() {
                        stat(CtStat::Deleted);
                    }
                    return Err(DropReason::MasqueradeFull);
                }
                stat(CtStat::Created);
                return Ok(port);
            }
            Err(rc) if rc == -17 => {} // -EEXIST: the port is taken towards this remote
            Err(_) => {
                stat(CtStat::InsertFailed);
                return Err(DropReason::MasqueradeFull);
            }
        }
        i += 1;
    }
    Err(DropReason::MasqueradePortsExhausted)
}

/// tc ingress of an uplink, before anything else: restores the pod's
/// address and port on a reply to a masqueraded flow. Anything else is
/// left as it is.
#[inline(never)]
pub fn ingress<P: Packet>(ctx: &TcContext, pkt: &mut P) -> Result<(), ()> {
    if !translatable(pkt, true) {
        return Ok(());
    }
    let Some(dev) = device::<P>(ctx) else { return Ok(()) };
    // Only an unprivileged port can be a masqueraded flow's (of this
    // range, or of the range an earlier configuration had: a flow keeps
    // its port across a reconfiguration); the table decides.
    let port = u16::from_be(pkt.dport());
    if pkt.daddr() != P::narrow(&dev.addr) || port < weir_common::masq::PORT_FLOOR {
        return Ok(());
    }
    let (Some(cfg), Some(s)) = (conntrack::config(), scratch()) else { return Ok(()) };
    s.rkey = conntrack::key(P::wide(pkt.saddr()), dev.addr, pkt.sport(), pkt.dport(), pkt.proto(), CT_SNAT_IN);
    let Some(e) = lookup(&s.rkey) else { return Ok(()) };
    touch(&s.rkey, e, cfg, pkt, DIR_REPLY, now_ns());
    // SAFETY: map value pointer, valid for the program run; copied out
    // before the rewrite (the pod's address and port).
    let (to, port) = unsafe { ((*e).nat_addr, (*e).nat_port) };
    pkt.dnat(ctx, &to, port)
}
