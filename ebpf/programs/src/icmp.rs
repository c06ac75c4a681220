//! ICMP errors (destination unreachable, time exceeded, parameter
//! problem). An error is accepted only when the header it quotes belongs
//! to a tracked flow, and then it is translated like that flow: the outer
//! addresses and the quoted inner header are reverse-NATed, with the inner
//! IP checksum and the ICMP checksum fixed, so that path-MTU discovery and
//! port unreachables work through service addresses, and through the
//! masquerade of pod egress (an error about a masqueraded flow reaches
//! the pod quoting the pod's own packet). Under no policy,
//! errors of untracked flows pass as before; under a policy they are
//! dropped (`icmp_unrelated`).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use weir_common::{
    addr::Addr,
    ct::{CtEntry, CT_F_HAIRPIN, CT_F_MASQ, CT_SNAT_IN, CT_SVC_FWD, CT_SVC_REV},
    drop::DropReason,
    lb::{PROTO_TCP, PROTO_UDP},
};
use weir_logic::ct::{is_alive, source_translated};

use crate::{
    conntrack::{self, key},
    events,
    fwd::redirect_v4,
    hdr::{Ipv4Pkt, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IP_CSUM_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, PROTO_ICMP},
    maps::scratch,
    policy::{self, Tuple},
};

/// The header an ICMP error quotes: the packet that caused it.
#[derive(Clone, Copy)]
pub struct Inner {
    pub t: Tuple,
    /// Offset of the quoted IP header.
    pub ip_off: u32,
    /// Offset of the quoted L4 header.
    pub l4_off: u32,
}

/// Reads the quoted header into scratch space; false when it cannot be
/// read whole (IPv4 header and 8 bytes of L4, within the packet).
#[inline(never)]
fn parse_inner(ctx: &TcContext, pkt: &Ipv4Pkt) -> bool {
    let Some(s) = scratch() else { return false };
    let off = pkt.l4() + 8;
    let Ok(vihl) = ctx.load::<u8>(off) else { return false };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return false;
    }
    let l4 = off + ihl;
    if l4 + 8 > IP_OFF + pkt.tot_len as usize {
        return false;
    }
    let (Ok(proto), Ok(saddr), Ok(daddr)) = (ctx.load::<u8>(off + 9), ctx.load::<u32>(off + 12), ctx.load::<u32>(off + 16)) else {
        return false;
    };
    let (sport, dport) = if proto == PROTO_TCP || proto == PROTO_UDP {
        let (Ok(a), Ok(b)) = (ctx.load::<u16>(l4), ctx.load::<u16>(l4 + 2)) else { return false };
        (a, b)
    } else if proto == PROTO_ICMP {
        let (Ok(ty), Ok(id)) = (ctx.load::<u8>(l4), ctx.load::<u16>(l4 + 4)) else { return false };
        if ty != ICMP_ECHO_REQUEST && ty != ICMP_ECHO_REPLY {
            return false; // an error about an error does not exist (RFC 1122)
        }
        (id, id)
    } else {
        (0, 0)
    };
    s.icmp_inner = Inner {
        t: Tuple { saddr: Addr::from_v4_raw(saddr), daddr: Addr::from_v4_raw(daddr), sport, dport, proto, tcp_flags: 0 },
        ip_off: off as u32,
        l4_off: l4 as u32,
    };
    true
}

/// An ICMP error sent by a pod (tc ingress of its veth).
/// - It quotes a packet the pod received as a service backend (client →
///   backend): the client must see it come from the service.
/// - It quotes a reply the pod received as a service client (VIP →
///   client): the backend must see it about its own packet.
/// - Otherwise it must relate to a flow the policy allowed, when either
///   end is under a policy.
#[inline(never)]
pub fn error_from_pod(ctx: &TcContext, pkt: &mut Ipv4Pkt, now: u64) -> i32 {
    if !parse_inner(ctx, pkt) {
        return events::dropped(ctx, pkt, DropReason::Malformed);
    }
    // A pod's error is about a packet it received, and goes back to that
    // packet's sender.
    if !answers_quoted(pkt, true) {
        return unrelated(ctx, pkt);
    }
    if service_entry(CT_SVC_REV, now) {
        let r = to_client(ctx, pkt);
        return outcome(ctx, pkt, r, true);
    }
    if service_entry(CT_SVC_FWD, now) {
        let r = to_backend(ctx, pkt);
        return outcome(ctx, pkt, r, true);
    }
    related_or_drop(ctx, pkt, now)
}

/// An ICMP error on its way to a pod (tc egress of its veth): from the
/// node (a router on the path: fragmentation needed, TTL exceeded), or
/// already translated by [`error_from_pod`].
#[inline(never)]
pub fn error_to_pod(ctx: &TcContext, pkt: &mut Ipv4Pkt, now: u64) -> i32 {
    if !parse_inner(ctx, pkt) {
        return events::dropped(ctx, pkt, DropReason::Malformed);
    }
    // It goes to the pod, which sent the quoted packet.
    if !answers_quoted(pkt, false) {
        return unrelated(ctx, pkt);
    }
    // It quotes the pod's own packet after DNAT (client → backend).
    if service_entry(CT_SVC_REV, now) {
        let r = to_client(ctx, pkt);
        return outcome(ctx, pkt, r, false);
    }
    // It quotes the pod's packet to a service, already translated (by
    // this datapath: marked).
    let Some(s) = scratch() else { return TC_ACT_OK as i32 };
    let i = s.icmp_inner;
    if i.t.proto == PROTO_TCP || i.t.proto == PROTO_UDP {
        s.pkey = key(i.t.saddr, i.t.daddr, i.t.sport, i.t.dport, i.t.proto, CT_SVC_FWD);
        if crate::nat::take_translated(ctx) && conntrack::alive(&s.pkey, now) {
            return TC_ACT_OK as i32;
        }
    }
    related_or_drop(ctx, pkt, now)
}

/// An ICMP error arriving from the network (the node's uplink): about a
/// local pod's masqueraded flow (quoting node → remote), a local client's
/// service flow whose backend is on another node (quoting client →
/// backend), or the reply of a flow opened from outside (quoting frontend
/// → client: the client, or a router on its path, answers the backend's
/// packet), it is translated and delivered; anything else goes up the
/// stack and meets the pod's own to_pod checks.
#[inline(never)]
pub fn error_from_net(ctx: &TcContext, pkt: &mut Ipv4Pkt, now: u64) -> i32 {
    if !parse_inner(ctx, pkt) {
        return events::dropped(ctx, pkt, DropReason::Malformed);
    }
    if !answers_quoted(pkt, false) {
        return TC_ACT_OK as i32;
    }
    if masqueraded(now) {
        let r = to_masqueraded_pod(ctx, pkt);
        return outcome(ctx, pkt, r, false);
    }
    if service_entry(CT_SVC_REV, now) {
        let r = to_client(ctx, pkt);
        return outcome(ctx, pkt, r, true);
    }
    if service_entry(CT_SVC_FWD, now) {
        let r = to_backend(ctx, pkt);
        return outcome(ctx, pkt, r, true);
    }
    TC_ACT_OK as i32
}

/// Whether the quoted TCP/UDP header, reversed, names a live service
/// entry of `kind` (copied to `scratch().other`): the quoted packet is
/// the reply-side view of a service flow.
#[inline(always)]
fn service_entry(kind: u8, now: u64) -> bool {
    let Some(s) = scratch() else { return false };
    let i = s.icmp_inner;
    if i.t.proto != PROTO_TCP && i.t.proto != PROTO_UDP {
        return false;
    }
    s.pkey = key(i.t.daddr, i.t.saddr, i.t.dport, i.t.sport, i.t.proto, kind);
    live(now)
}

/// Whether the quoted packet, reversed, names a live masquerade in entry
/// (copied to `scratch().other`): it is a pod's packet as it left the node.
#[inline(always)]
fn masqueraded(now: u64) -> bool {
    let Some(s) = scratch() else { return false };
    let i = s.icmp_inner;
    s.pkey = key(i.t.daddr, i.t.saddr, i.t.dport, i.t.sport, i.t.proto, CT_SNAT_IN);
    let Some(e) = crate::masq::lookup(&s.pkey) else { return false };
    conntrack::copy_entry(&mut s.other, e);
    is_alive(&s.other, now)
}

/// The error quotes node:port → remote (the in entry in `scratch().other`):
/// make it quote the pod's own address and port, addressed to the pod.
#[inline(never)]
fn to_masqueraded_pod(ctx: &TcContext, pkt: &mut Ipv4Pkt) -> Result<(), ()> {
    let s = scratch().ok_or(())?;
    let (i, e) = (s.icmp_inner, s.other);
    let pod = e.nat_addr.v4_raw();
    outer_addr(ctx, IP_DADDR_OFF, pkt.daddr, pod)?;
    pkt.daddr = pod;
    let icmp_csum = pkt.l4() + 2;
    let (ip, l4) = (i.ip_off as usize, i.l4_off as usize);
    inner_addr(ctx, ip + 12, ip + 10, icmp_csum, i.t.saddr.v4_raw(), pod)?;
    // An echo's identifier is at +4; a port at +0.
    let port_off = if i.t.proto == PROTO_ICMP { l4 + 4 } else { l4 };
    inner_port(ctx, port_off, icmp_csum, i.t.sport, e.nat_port)
}

/// The verdict for a translated error: sent on (redirected, when it left
/// a pod) or dropped when the rewrite failed.
#[inline(always)]
fn outcome(ctx: &TcContext, pkt: &Ipv4Pkt, rewritten: Result<(), ()>, redirect: bool) -> i32 {
    match rewritten {
        Ok(()) if redirect => translated(ctx, pkt),
        Ok(()) => TC_ACT_OK as i32,
        Err(()) => events::dropped(ctx, pkt, DropReason::Malformed),
    }
}

/// Whether the error goes to the quoted packet's sender (and, with
/// `from_receiver`, comes from its receiver).
#[inline(always)]
fn answers_quoted(pkt: &Ipv4Pkt, from_receiver: bool) -> bool {
    let Some(s) = scratch() else { return false };
    let t = s.icmp_inner.t;
    pkt.daddr == t.saddr.v4_raw() && (!from_receiver || pkt.saddr == t.daddr.v4_raw())
}

/// An error that answers nothing its ends did: dropped under a policy.
#[inline(always)]
fn unrelated(ctx: &TcContext, pkt: &Ipv4Pkt) -> i32 {
    if policy::error_enforced(pkt) {
        return events::dropped(ctx, pkt, DropReason::IcmpUnrelated);
    }
    TC_ACT_OK as i32
}

/// Under a policy an error must relate to an allowed flow of its
/// destination; without one it passes.
#[inline(always)]
fn related_or_drop(ctx: &TcContext, pkt: &Ipv4Pkt, now: u64) -> i32 {
    let Some(s) = scratch() else { return TC_ACT_OK as i32 };
    let t = s.icmp_inner.t;
    if policy::error_enforced(pkt) && !policy::related(&Addr::from_v4_raw(pkt.daddr), &t, now) {
        return events::dropped(ctx, pkt, DropReason::IcmpUnrelated);
    }
    TC_ACT_OK as i32
}

/// A translated error leaving a pod: marked, and forwarded.
#[inline(always)]
fn translated(ctx: &TcContext, pkt: &Ipv4Pkt) -> i32 {
    crate::nat::mark_translated(ctx);
    redirect_v4(ctx, pkt)
}

/// Whether the entry behind `scratch().pkey` is alive; copies it to
/// `scratch().other`.
#[inline(always)]
fn live(now: u64) -> bool {
    let Some(s) = scratch() else { return false };
    let Some(e) = conntrack::lookup(&s.pkey) else { return false };
    conntrack::copy_entry(&mut s.other, e);
    is_alive(&s.other, now)
}

/// The error quotes client → backend (the reverse entry in
/// `scratch().other`): make it quote client → VIP, from the VIP when the
/// backend sent it, to the client's own address and port (for hairpin
/// and masqueraded flows the backend saw another source).
#[inline(never)]
fn to_client(ctx: &TcContext, pkt: &mut Ipv4Pkt) -> Result<(), ()> {
    let s = scratch().ok_or(())?;
    let (i, rev) = (s.icmp_inner, s.other);
    let vip = rev.nat_addr.v4_raw();
    let hairpin = source_translated(rev.flags);
    if pkt.saddr == i.t.daddr.v4_raw() {
        outer_addr(ctx, IP_SADDR_OFF, pkt.saddr, vip)?;
        pkt.saddr = vip;
    }
    if hairpin && pkt.daddr == i.t.saddr.v4_raw() {
        let client = rev.orig_addr.v4_raw();
        outer_addr(ctx, IP_DADDR_OFF, pkt.daddr, client)?;
        pkt.daddr = client;
    }
    let icmp_csum = pkt.l4() + 2;
    let (ip, l4) = (i.ip_off as usize, i.l4_off as usize);
    inner_addr(ctx, ip + 16, ip + 10, icmp_csum, i.t.daddr.v4_raw(), vip)?;
    inner_port(ctx, l4 + 2, icmp_csum, i.t.dport, rev.nat_port)?;
    if hairpin {
        inner_addr(ctx, ip + 12, ip + 10, icmp_csum, i.t.saddr.v4_raw(), rev.orig_addr.v4_raw())?;
    }
    inner_port(ctx, l4, icmp_csum, i.t.sport, rev.orig_port)
}

/// The error quotes VIP → client (the forward entry in
/// `scratch().other`): make it quote backend → client (at the address
/// and port the backend sees), addressed to the backend. For a
/// masqueraded flow it also comes from the node address, as the flow's
/// packets do (netfilter's NAT does the same; the tunnel accepts only
/// node and pod sources).
#[inline(never)]
fn to_backend(ctx: &TcContext, pkt: &mut Ipv4Pkt) -> Result<(), ()> {
    let s = scratch().ok_or(())?;
    let (i, fwd): (Inner, CtEntry) = (s.icmp_inner, s.other);
    if fwd.flags & CT_F_HAIRPIN != 0 {
        return Ok(()); // the pod is both ends; nothing to hide
    }
    let backend = fwd.nat_addr.v4_raw();
    if pkt.daddr == i.t.saddr.v4_raw() {
        outer_addr(ctx, IP_DADDR_OFF, pkt.daddr, backend)?;
        pkt.daddr = backend;
    }
    let icmp_csum = pkt.l4() + 2;
    let (ip, l4) = (i.ip_off as usize, i.l4_off as usize);
    inner_addr(ctx, ip + 12, ip + 10, icmp_csum, i.t.saddr.v4_raw(), backend)?;
    inner_port(ctx, l4, icmp_csum, i.t.sport, fwd.nat_port)?;
    if fwd.flags & CT_F_MASQ != 0 {
        let node = conntrack::config().ok_or(())?.node_addr.v4_raw();
        inner_addr(ctx, ip + 16, ip + 10, icmp_csum, i.t.daddr.v4_raw(), node)?;
        outer_addr(ctx, IP_SADDR_OFF, pkt.saddr, node)?;
        pkt.saddr = node;
    }
    inner_port(ctx, l4 + 2, icmp_csum, i.t.dport, fwd.orig_port)
}

/// Rewrites an address of the outer IP header (ICMP has no pseudo-header).
#[inline(always)]
fn outer_addr(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4).map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())
}

/// Rewrites an address of the quoted IP header at `off`: its header
/// checksum at `csum_off`, and the ICMP checksum over both changes.
#[inline(always)]
fn inner_addr(ctx: &TcContext, off: usize, csum_off: usize, icmp_csum: usize, old: u32, new: u32) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    let old_sum: u16 = ctx.load(csum_off).map_err(|_| ())?;
    ctx.l3_csum_replace(csum_off, old as u64, new as u64, 4).map_err(|_| ())?;
    let new_sum: u16 = ctx.load(csum_off).map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 4).map_err(|_| ())?;
    ctx.l4_csum_replace(icmp_csum, old_sum as u64, new_sum as u64, 2).map_err(|_| ())
}

/// Rewrites a port of the quoted L4 header (its own checksum is left as
/// it is: it covers a datagram nobody has, and no receiver checks it).
#[inline(always)]
fn inner_port(ctx: &TcContext, off: usize, icmp_csum: usize, old: u16, new: u16) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2).map_err(|_| ())
}
