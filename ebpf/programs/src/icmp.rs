//! ICMP and ICMPv6 errors (destination unreachable, packet too big, time
//! exceeded, parameter problem), for both families (`quoted` reads and
//! rewrites what they quote). An error is accepted only when the header it quotes belongs
//! to a tracked flow, and then it is translated like that flow: the outer
//! addresses and the quoted inner header are reverse-NATed, with the inner
//! IP checksum and the ICMP checksum fixed, so that path-MTU discovery and
//! port unreachables work through service addresses, and through the
//! masquerade of pod egress (an error about a masqueraded flow reaches
//! the pod quoting the pod's own packet; IPv4 only, as is the masquerade
//! of pod egress). Under no policy,
//! errors of untracked flows pass as before; under a policy they are
//! dropped (`icmp_unrelated`).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use weir_common::{
    ct::{CT_F_HAIRPIN, CT_F_MASQ, CT_SNAT_IN, CT_SVC_FWD, CT_SVC_REV},
    drop::DropReason,
    lb::{PROTO_TCP, PROTO_UDP},
};
use weir_logic::ct::{is_alive, source_translated};

use crate::{
    conntrack::{self, key},
    hdr::{PROTO_ICMP, PROTO_ICMPV6},
    maps::scratch,
    policy,
    quoted::{set_quoted_port, Quoting},
};

/// An ICMP error sent by a pod (tc ingress of its veth).
/// - It quotes a packet the pod received as a service backend (client →
///   backend): the client must see it come from the service.
/// - It quotes a reply the pod received as a service client (VIP →
///   client): the backend must see it about its own packet.
/// - Otherwise it must relate to a flow the policy allowed, when either
///   end is under a policy.
#[inline(never)]
pub fn error_from_pod<P: Quoting>(ctx: &TcContext, pkt: &mut P, now: u64) -> i32 {
    if policy::unlisted_addr(ctx, &P::wide(pkt.saddr())) {
        return pkt.dropped(ctx, DropReason::UnlistedAddress);
    }
    if !pkt.read_quoted(ctx) {
        return pkt.dropped(ctx, DropReason::Malformed);
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
/// node (a router on the path: fragmentation needed, packet too big, TTL
/// exceeded), or already translated by [`error_from_pod`].
#[inline(never)]
pub fn error_to_pod<P: Quoting>(ctx: &TcContext, pkt: &mut P, now: u64) -> i32 {
    if policy::unlisted_addr(ctx, &P::wide(pkt.daddr())) {
        return pkt.dropped(ctx, DropReason::UnlistedAddress);
    }
    if !pkt.read_quoted(ctx) {
        return pkt.dropped(ctx, DropReason::Malformed);
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
    let t = &s.icmp_inner.t;
    if t.proto == PROTO_TCP || t.proto == PROTO_UDP {
        s.pkey = key(t.saddr, t.daddr, t.sport, t.dport, t.proto, CT_SVC_FWD);
        if crate::nat::take_translated(ctx) && conntrack::alive_any(&s.pkey, now) {
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
pub fn error_from_net<P: Quoting>(ctx: &TcContext, pkt: &mut P, now: u64) -> i32 {
    if !pkt.read_quoted(ctx) {
        return pkt.dropped(ctx, DropReason::Malformed);
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
    let t = &s.icmp_inner.t;
    if t.proto != PROTO_TCP && t.proto != PROTO_UDP {
        return false;
    }
    s.pkey = key(t.daddr, t.saddr, t.dport, t.sport, t.proto, kind);
    live(now)
}

/// Whether the quoted packet, reversed, names a live masquerade in entry
/// (copied to `scratch().other`): it is a pod's packet as it left the node.
#[inline(always)]
fn masqueraded(now: u64) -> bool {
    let Some(s) = scratch() else { return false };
    let t = &s.icmp_inner.t;
    s.pkey = key(t.daddr, t.saddr, t.dport, t.sport, t.proto, CT_SNAT_IN);
    let Some(e) = crate::masq::lookup(&s.pkey) else { return false };
    conntrack::copy_entry(&mut s.other, e);
    is_alive(&s.other, now)
}

/// The error quotes node:port → remote (the in entry in `scratch().other`):
/// make it quote the pod's own address and port, addressed to the pod.
#[inline(never)]
fn to_masqueraded_pod<P: Quoting>(ctx: &TcContext, pkt: &mut P) -> Result<(), ()> {
    let s = scratch().ok_or(())?;
    let (i, e) = (&s.icmp_inner, &s.other);
    pkt.set_error_addr(ctx, true, &e.nat_addr)?;
    pkt.set_quoted_addr(ctx, false, &e.nat_addr)?;
    // An echo's identifier is at +4; a port at +0.
    let l4 = i.l4_off as usize;
    let port_off = if i.t.proto == PROTO_ICMP || i.t.proto == PROTO_ICMPV6 { l4 + 4 } else { l4 };
    set_quoted_port(ctx, pkt, port_off, i.t.sport, e.nat_port)
}

/// The verdict for a translated error: sent on (redirected, when it left
/// a pod) or dropped when the rewrite failed.
#[inline(always)]
fn outcome<P: Quoting>(ctx: &TcContext, pkt: &P, rewritten: Result<(), ()>, redirect: bool) -> i32 {
    match rewritten {
        Ok(()) if redirect => translated(ctx, pkt),
        Ok(()) => TC_ACT_OK as i32,
        Err(()) => pkt.dropped(ctx, DropReason::Malformed),
    }
}

/// Whether the error goes to the quoted packet's sender (and, with
/// `from_receiver`, comes from its receiver).
#[inline(always)]
fn answers_quoted<P: Quoting>(pkt: &P, from_receiver: bool) -> bool {
    let Some(s) = scratch() else { return false };
    let t = &s.icmp_inner.t;
    pkt.daddr() == P::narrow(&t.saddr) && (!from_receiver || pkt.saddr() == P::narrow(&t.daddr))
}

/// An error that answers nothing its ends did: dropped under a policy.
#[inline(always)]
fn unrelated<P: Quoting>(ctx: &TcContext, pkt: &P) -> i32 {
    if pkt.error_enforced() {
        return pkt.dropped(ctx, DropReason::IcmpUnrelated);
    }
    TC_ACT_OK as i32
}

/// Under a policy an error must relate to an allowed flow of its
/// destination; without one it passes.
#[inline(always)]
fn related_or_drop<P: Quoting>(ctx: &TcContext, pkt: &P, now: u64) -> i32 {
    let Some(s) = scratch() else { return TC_ACT_OK as i32 };
    if pkt.error_enforced() && !policy::related(&P::wide(pkt.daddr()), &s.icmp_inner.t, now) {
        return pkt.dropped(ctx, DropReason::IcmpUnrelated);
    }
    TC_ACT_OK as i32
}

/// A translated error leaving a pod: marked, and forwarded.
#[inline(always)]
fn translated<P: Quoting>(ctx: &TcContext, pkt: &P) -> i32 {
    crate::nat::mark_translated(ctx);
    // Through the receiver's to_pod, which judges errors towards a pod.
    pkt.redirect(ctx, false)
}

/// Whether the entry behind `scratch().pkey` is alive; copies it to
/// `scratch().other`.
#[inline(always)]
fn live(now: u64) -> bool {
    let Some(s) = scratch() else { return false };
    conntrack::read_any(&s.pkey, &mut s.other) && is_alive(&s.other, now)
}

/// The error quotes client → backend (the reverse entry in
/// `scratch().other`): make it quote client → VIP, from the VIP when the
/// backend sent it, to the client's own address and port (for hairpin
/// and masqueraded flows the backend saw another source).
#[inline(never)]
fn to_client<P: Quoting>(ctx: &TcContext, pkt: &mut P) -> Result<(), ()> {
    let s = scratch().ok_or(())?;
    let (i, rev) = (&s.icmp_inner, &s.other);
    let hairpin = source_translated(rev.flags);
    if pkt.saddr() == P::narrow(&i.t.daddr) {
        pkt.set_error_addr(ctx, false, &rev.nat_addr)?;
    }
    if hairpin && pkt.daddr() == P::narrow(&i.t.saddr) {
        pkt.set_error_addr(ctx, true, &rev.orig_addr)?;
    }
    let l4 = i.l4_off as usize;
    pkt.set_quoted_addr(ctx, true, &rev.nat_addr)?;
    set_quoted_port(ctx, pkt, l4 + 2, i.t.dport, rev.nat_port)?;
    if hairpin {
        pkt.set_quoted_addr(ctx, false, &rev.orig_addr)?;
    }
    set_quoted_port(ctx, pkt, l4, i.t.sport, rev.orig_port)
}

/// The error quotes VIP → client (the forward entry in
/// `scratch().other`): make it quote backend → client (at the address
/// and port the backend sees), addressed to the backend. For a
/// masqueraded flow it also comes from the node address, as the flow's
/// packets do (netfilter's NAT does the same; the tunnel accepts only
/// node and pod sources).
#[inline(never)]
fn to_backend<P: Quoting>(ctx: &TcContext, pkt: &mut P) -> Result<(), ()> {
    let s = scratch().ok_or(())?;
    let (i, fwd) = (&s.icmp_inner, &s.other);
    if fwd.flags & CT_F_HAIRPIN != 0 {
        return Ok(()); // the pod is both ends; nothing to hide
    }
    if pkt.daddr() == P::narrow(&i.t.saddr) {
        pkt.set_error_addr(ctx, true, &fwd.nat_addr)?;
    }
    let l4 = i.l4_off as usize;
    pkt.set_quoted_addr(ctx, false, &fwd.nat_addr)?;
    set_quoted_port(ctx, pkt, l4, i.t.sport, fwd.nat_port)?;
    if fwd.flags & CT_F_MASQ != 0 {
        // Masquerade keeps to the flow's family (`masquerades`).
        let node = conntrack::config().ok_or(())?.node_addr_for(&i.t.daddr);
        pkt.set_quoted_addr(ctx, true, node)?;
        pkt.set_error_addr(ctx, false, node)?;
    }
    set_quoted_port(ctx, pkt, l4 + 2, i.t.dport, fwd.orig_port)
}
