//! The service step of a packet from a pod, for either address family:
//! reverse NAT of a backend's reply, load balancing of a packet to a
//! frontend (a new flow is judged by policy on its translated tuple, the
//! client's egress and the backend's ingress, before any state exists),
//! and the refusal of what a service cannot take. What is not a service
//! packet is left to the policy path ([`lb::NOT_HANDLED`]). And, towards a
//! pod, the reverse NAT of replies its from_pod never saw (backends in
//! the node's own network namespace).

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use weir_common::{config::DatapathConfig, drop::DropReason};
use weir_logic::frontend::Origin;

use crate::{family::Packet, lb, policy, reject::BACK_TO_POD};

/// A TCP or UDP packet from a pod: its service verdict, or
/// [`lb::NOT_HANDLED`].
#[inline(always)]
pub fn from_pod<P: Packet>(ctx: &TcContext, pkt: &mut P, cfg: &DatapathConfig, now: u64) -> i32 {
    if lb::frontend(pkt, Origin::Pod) != lb::FRONT_CLUSTER_IP {
        let verdict = lb::reverse(ctx, pkt, cfg, now, lb::REVERSE_FROM_POD);
        if verdict != lb::NOT_HANDLED {
            return lb::settle(ctx, pkt, verdict, BACK_TO_POD);
        }
    }
    let mut verdict = lb::forward(pkt, cfg, now);
    if verdict == lb::OPEN {
        verdict = lb::open(ctx, pkt, cfg, now, Origin::Pod);
    }
    if verdict == lb::NEW_FLOW {
        if !lb::stage_new_flow(pkt) || !policy::allow_staged(ctx, policy::CHECK_EGRESS | policy::CHECK_INGRESS) {
            return TC_ACT_SHOT as i32;
        }
        pkt.trace(ctx);
        verdict = lb::commit(pkt, cfg);
    }
    if verdict == lb::TRANSLATE {
        verdict = lb::translate(ctx, pkt, cfg, Origin::Pod);
    }
    if let Some(reason) = lb::rejected(verdict) {
        return pkt.refuse(ctx, reason, BACK_TO_POD);
    }
    if verdict != lb::NOT_HANDLED {
        return lb::settle(ctx, pkt, verdict, BACK_TO_POD);
    }
    lb::NOT_HANDLED
}

/// A packet from a pod of a protocol services do not carry (anything but
/// TCP and UDP): refused when it is sent to a service address.
#[inline(always)]
pub fn unsupported_to_vip<P: Packet>(ctx: &TcContext, pkt: &P) -> Option<i32> {
    if lb::is_vip(&P::wide(pkt.daddr())) {
        return Some(pkt.refuse(ctx, DropReason::UnsupportedProtoToVip, BACK_TO_POD));
    }
    None
}

/// A TCP or UDP packet on its way into a pod: a reply from a backend in
/// the node's own network namespace (host-network endpoints, sent by the
/// node's stack: no from_pod saw it) is reverse-NATed in place. `Some`
/// verdict when it must be dropped.
#[inline(always)]
pub fn to_pod<P: Packet>(ctx: &TcContext, pkt: &mut P, now: u64) -> Option<i32> {
    if !from_host(ctx) {
        return None;
    }
    let cfg = crate::conntrack::config()?;
    let verdict = lb::reverse(ctx, pkt, cfg, now, lb::REVERSE_IN_PLACE);
    lb::dropped(verdict).map(|reason| pkt.dropped(ctx, reason))
}

/// The node's own stack sent the packet (no ingress device).
#[inline(always)]
fn from_host(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).ingress_ifindex == 0 }
}
