//! What the node does with a packet arriving from outside it (on an
//! uplink device, or decapsulated from the tunnel), IPv4 or IPv6: refuse
//! one that
//! claims a local pod's address or the node's own, reverse-NAT replies
//! from backends on other nodes (and translate ICMP errors about those
//! flows),
//! load-balance new and established flows to service frontends
//! (NodePorts, LB IPs, externalIPs, and ClusterIPs routed to the node),
//! with the backend's ingress policy judged on the client's own address
//! before any state exists, and leave everything else to the stack, where
//! the pods' own to_pod checks run.

use aya_ebpf::{bindings::{TC_ACT_OK, TC_ACT_SHOT}, programs::TcContext};
use weir_logic::frontend::Origin;
use weir_common::{
    addr::Addr,
    drop::DropReason,
    stats::{NS_DROPPED, NS_NEW, NS_REJECTED},
};

use crate::{
    conntrack, events,
    family,
    frag::{self, Fragment},
    icmp, lb, masq, nat, policy,
    quoted::Quoting,
    reject, source, stats, tunnel,
};

/// An IPv6 packet from outside the node (one whose header chain cannot
/// be walked is dropped and counted, as on a pod's link).
#[inline(never)]
pub fn from_outside_v6(ctx: &TcContext) -> i32 {
    let p = match family::v6_packet(ctx) {
        Ok(p) => p,
        Err(reason) => return events::dropped_frame(ctx, reason),
    };
    if masq::ingress(ctx, p).is_err() {
        return events::dropped_flow(ctx, &p.t, DropReason::Malformed);
    }
    from_outside(ctx, p)
}

/// An IPv6 packet decapsulated from the tunnel: from a node, carrying
/// one of that node's addresses or pods (`tunnel::from_peer`), then as
/// any packet from outside.
#[inline(never)]
pub fn from_tunnel_v6(ctx: &TcContext) -> i32 {
    let p = match family::v6_packet(ctx) {
        Ok(p) => p,
        Err(reason) => return events::dropped_frame(ctx, reason),
    };
    if !tunnel::from_peer(ctx, &p.t.saddr) {
        return events::dropped_flow(ctx, &p.t, DropReason::TunnelSpoofed);
    }
    from_outside(ctx, p)
}

/// A packet from outside the node.
#[inline(always)]
pub fn from_outside<P: Quoting + Fragment>(ctx: &TcContext, pkt: &mut P) -> i32 {
    let saddr = P::wide(pkt.saddr());
    if source::is_local_pod(&saddr) || claims_node_addr(&saddr) {
        return pkt.dropped(ctx, DropReason::SpoofedSource);
    }
    if pkt.later_fragment() && !pkt.recover_ports() {
        return TC_ACT_OK as i32; // not a flow of ours: the stack reassembles or drops it
    }
    let first = pkt.first_fragment();
    if first {
        pkt.prepare_ports();
    }
    let verdict = translate(ctx, pkt);
    // A first fragment handed to the stack untranslated is none of ours;
    // a translated one the stack is to fragment further is.
    if first && verdict != TC_ACT_SHOT as i32 && (verdict != TC_ACT_OK as i32 || nat::translated(ctx)) {
        frag::commit();
    }
    verdict
}

/// Whether `saddr` is the node address masqueraded flows come from. No
/// packet from outside carries it; the agent sets `accept_local` on the
/// uplinks so that the stack forwards (and fragments) the masqueraded
/// packets `fwd` hands it, and this keeps forged ones from using that.
#[inline(always)]
fn claims_node_addr(saddr: &Addr) -> bool {
    conntrack::config().is_some_and(|c| c.is_node_addr(saddr))
}

#[inline(always)]
fn translate<P: Quoting>(ctx: &TcContext, pkt: &mut P) -> i32 {
    let now = conntrack::now_ns();
    if pkt.is_error() {
        return icmp::error_from_net(ctx, pkt, now);
    }
    if !pkt.is_tcp_udp() {
        return TC_ACT_OK as i32;
    }
    let Some(cfg) = conntrack::config() else { return TC_ACT_OK as i32 };
    if lb::frontend(pkt, Origin::Outside) != lb::FRONT_CLUSTER_IP {
        let verdict = lb::reverse(ctx, pkt, cfg, now, lb::REVERSE_REDIRECT);
        if verdict != lb::NOT_HANDLED {
            return lb::settle(ctx, pkt, verdict, reject::BACK_OUT);
        }
    }
    let mut verdict = lb::forward(pkt, cfg, now);
    if verdict == lb::OPEN {
        verdict = lb::open(ctx, pkt, cfg, now, Origin::Outside);
    }
    if verdict == lb::NEW_FLOW {
        if !lb::stage_new_flow(pkt) {
            return TC_ACT_SHOT as i32;
        }
        if !policy::allow_staged(ctx, policy::CHECK_INGRESS) {
            stats::north_south(NS_DROPPED);
            return TC_ACT_SHOT as i32;
        }
        pkt.trace(ctx);
        let mut verdict = lb::commit(pkt, cfg);
        if verdict == lb::TRANSLATE {
            verdict = lb::translate(ctx, pkt, cfg, Origin::Outside);
        }
        stats::north_south(if lb::dropped(verdict).is_some() { NS_DROPPED } else { NS_NEW });
        return lb::settle(ctx, pkt, verdict, reject::BACK_OUT);
    }
    if verdict == lb::TRANSLATE {
        verdict = lb::translate(ctx, pkt, cfg, Origin::Outside);
    }
    if let Some(reason) = lb::rejected(verdict) {
        stats::north_south(NS_REJECTED);
        return pkt.refuse(ctx, reason, reject::BACK_OUT);
    }
    if verdict == lb::NOT_HANDLED {
        return TC_ACT_OK as i32;
    }
    if lb::dropped(verdict).is_some() {
        stats::north_south(NS_DROPPED);
    }
    lb::settle(ctx, pkt, verdict, reject::BACK_OUT)
}

