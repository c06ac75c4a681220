//! IPv6 at the pod hooks: the same rules as IPv4, on the same maps.
//!
//! - A pod sends from the addresses the node routes to its link, or from
//!   link-local scope (`source`); a packet into a pod goes to one of its
//!   addresses.
//! - Neighbour discovery and MLD between the pod and its host veth pass
//!   (as ARP does), but only as RFC 4861 and RFC 3810 allow them on the
//!   link: hop limit 255 (MLD: 1), never fragmented (RFC 6980), and never
//!   a router advertisement, redirect or MLD query from the pod.
//! - Any other link-scope traffic (to the node's `fe80::` addresses, to
//!   link multicast groups) passes for a pod under no policy and is
//!   dropped for an isolated one: no rule can name a link-local peer.
//!   Traffic of an address routed to an isolated pod's link that no
//!   endpoint names (missing from the pod's `podIPs`) is dropped too, as
//!   for IPv4 (`policy`, `icmp`).
//! - Every other flow is judged by network policy exactly as IPv4 is
//!   (`policy::flow_from_pod`, `policy::flow_to_pod`), tracked in the
//!   same conntrack table; ICMPv6 echo is a flow keyed by its identifier;
//!   fragments ride their first fragment's ports (`frag`).
//! - ICMPv6 errors go through `icmp`, as ICMP errors do: an error about a
//!   service flow is translated like its flow (so that packet too big
//!   and port unreachable reach a client through an IPv6 VIP), and under
//!   a policy any other error must quote a flow the policy allowed.
//!
//! A pod's TCP and UDP go through the service step first (`service`,
//! shared with IPv4): replies of service flows are reverse-NATed, packets
//! to an IPv6 frontend are load-balanced, and what a service cannot take
//! is refused (a TCP RST or ICMPv6 port unreachable).

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use weir_common::drop::DropReason;
use weir_logic::ipv6::{link_scope, link_scope_source};

use crate::{
    conntrack, events,
    family::{self, Packet},
    fwd,
    frag::{self, Fragment},
    icmp, lb, service,
    hdr::{Ipv6Pkt, Tuple, FRAG_NONE, PROTO_ICMPV6},
    policy, source,
};

const MLD_QUERY: u8 = 130;
const MLD_REPORT: u8 = 131;
const MLD_DONE: u8 = 132;
const MLD2_REPORT: u8 = 143;
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;

/// Not link control: judged as a flow.
const CTL_NONE: u8 = 0;
/// Link control the link may carry: passes.
const CTL_PASS: u8 = 1;
/// Link control the link may not carry: dropped.
const CTL_FORBIDDEN: u8 = 2;

/// Whether `p` is neighbour discovery or MLD, and whether the pod's link
/// may carry it in this direction.
#[inline(always)]
fn link_control(p: &Ipv6Pkt, from_pod: bool) -> u8 {
    if p.t.proto != PROTO_ICMPV6 || p.later_fragment() {
        return CTL_NONE;
    }
    let ok = match p.icmp_type {
        ND_ROUTER_SOLICIT | ND_NEIGHBOUR_SOLICIT | ND_NEIGHBOUR_ADVERT => p.hop_limit == 255,
        // Only the node is the pod's router.
        ND_ROUTER_ADVERT | ND_REDIRECT => !from_pod && p.hop_limit == 255,
        MLD_REPORT | MLD_DONE | MLD2_REPORT => p.hop_limit == 1 && link_scope_source(&p.t.saddr),
        MLD_QUERY => !from_pod && p.hop_limit == 1 && link_scope_source(&p.t.saddr),
        _ => return CTL_NONE,
    };
    if ok && p.frag == FRAG_NONE {
        CTL_PASS
    } else {
        CTL_FORBIDDEN
    }
}

/// IPv6 from a pod (tc ingress of its host veth).
#[inline(never)]
pub fn from_pod(ctx: &TcContext, ifindex: u32) -> i32 {
    let p = match family::v6_packet(ctx) {
        Ok(p) => p,
        Err(reason) => return events::dropped_frame(ctx, reason),
    };
    let link_src = link_scope_source(&p.t.saddr);
    if !link_src && !source::owns(ifindex, &p.t.saddr) {
        return events::dropped_flow(ctx, &p.t, DropReason::SpoofedSource);
    }
    if let Some(verdict) = control(ctx, p, true) {
        return verdict;
    }
    if link_src || link_scope(&p.t.daddr) {
        return link_local(ctx, &p.t, ifindex);
    }
    judged(ctx, p, false)
}

/// IPv6 to a pod (tc egress of its host veth).
#[inline(never)]
pub fn to_pod(ctx: &TcContext, ifindex: u32) -> i32 {
    let p = match family::v6_packet(ctx) {
        Ok(p) => p,
        Err(reason) => return events::dropped_frame(ctx, reason),
    };
    if let Some(verdict) = control(ctx, p, false) {
        return verdict;
    }
    if !source::owns(ifindex, &p.t.daddr) {
        if link_scope(&p.t.daddr) {
            return link_local(ctx, &p.t, ifindex);
        }
        return events::dropped_flow(ctx, &p.t, DropReason::NotForPod);
    }
    judged(ctx, p, true)
}

/// Neighbour discovery and MLD: the verdict, or `None` for any other
/// packet.
#[inline(always)]
fn control(ctx: &TcContext, p: &Ipv6Pkt, from_pod: bool) -> Option<i32> {
    match link_control(p, from_pod) {
        CTL_PASS => Some(TC_ACT_OK as i32),
        CTL_FORBIDDEN => Some(events::dropped_flow(ctx, &p.t, DropReason::Ipv6LinkControl)),
        _ => None,
    }
}

/// Either hook once the pod's own address (the source from the pod, the
/// destination into it) is known to be routed to its link: the packet is
/// judged as an ICMPv6 error or as a flow (where an address no endpoint
/// names is dropped on an isolated pod's link, as for IPv4).
#[inline(always)]
fn judged(ctx: &TcContext, p: &mut Ipv6Pkt, to_pod_side: bool) -> i32 {
    if p.is_icmp_error() {
        let now = conntrack::now_ns();
        return if to_pod_side { icmp::error_to_pod(ctx, p, now) } else { icmp::error_from_pod(ctx, p, now) };
    }
    flow(ctx, p, to_pod_side)
}

/// Link-scope traffic other than link control: no rule names it, so an
/// isolated pod neither sends nor receives it.
#[inline(always)]
fn link_local(ctx: &TcContext, t: &Tuple, ifindex: u32) -> i32 {
    if source::link_isolated(ifindex) {
        return events::dropped_flow(ctx, t, DropReason::Ipv6Isolated);
    }
    TC_ACT_OK as i32
}

/// A flow's packet, judged by policy; a later fragment takes its first
/// fragment's ports, and a first fragment that passes records them.
#[inline(always)]
fn flow(ctx: &TcContext, p: &mut Ipv6Pkt, to_pod_side: bool) -> i32 {
    let later = p.later_fragment();
    if later && !p.recover_ports() {
        return events::dropped_flow(ctx, &p.t, DropReason::FragmentUnknown);
    }
    let first = p.first_fragment();
    if first {
        p.prepare_ports();
    }
    let now = conntrack::now_ns();
    let verdict = if to_pod_side { received(ctx, p, later, now) } else { sent(ctx, p, later, now) };
    if first && verdict != TC_ACT_SHOT as i32 {
        frag::commit();
    }
    verdict
}

/// A flow's packet into the pod: a reply of a host-network backend is
/// reverse-NATed first (`service::to_pod`), then the pod's policy.
#[inline(always)]
fn received(ctx: &TcContext, p: &mut Ipv6Pkt, later: bool, now: u64) -> i32 {
    if p.is_tcp_udp() {
        if let Some(verdict) = service::to_pod(ctx, p, now) {
            return verdict;
        }
    }
    policy::flow_to_pod(ctx, &p.t, later, now)
}

/// A flow's packet from the pod: the service step, then (for a packet
/// that is no service's) the pod's policy.
#[inline(always)]
fn sent(ctx: &TcContext, p: &mut Ipv6Pkt, later: bool, now: u64) -> i32 {
    if p.is_tcp_udp() {
        let Some(cfg) = conntrack::config() else { return TC_ACT_SHOT as i32 };
        let verdict = service::from_pod(ctx, p, cfg, now);
        if verdict != lb::NOT_HANDLED {
            return verdict;
        }
    } else if let Some(verdict) = service::unsupported_to_vip(ctx, p) {
        return verdict;
    }
    let verdict = policy::flow_from_pod(ctx, &p.t, later, now);
    // Passed by the policy, to another pod: straight into it when it is
    // this node's.
    if verdict != TC_ACT_OK as i32 || !p.is_tcp_udp() || conntrack::migrating() {
        return verdict;
    }
    fwd::between_pods_v6(ctx, p)
}
