//! The pod object: attached at tc ingress ("from pod") and tc egress ("to
//! pod") of every host-side pod veth (`weir*`).
//!
//! from_pod: count; drop what a pod may not send (a source address the
//! node does not route to its link, an unreadable header, an EtherType
//! other than IPv4, IPv6 and ARP); IPv6 goes to `pod_v6`;
//! take back the ports of later fragments; translate ICMP errors of
//! tracked flows; reverse-NAT replies of service flows (looked for unless
//! the packet goes to a ClusterIP, which no reply does); load-balance
//! packets to service frontends (DNAT + redirect); reject what a service
//! cannot take; and judge new flows by network policy (egress of the
//! sender, ingress of a local receiver; on an isolated pod's link, an
//! address no endpoint names carries nothing, `policy::unlisted`); deliver
//! what passes to a local pod straight into it (`fwd::into_pod`, which
//! does to_pod's part). to_pod: count, drop what is not
//! addressed to the pod, and judge the pod's ingress for flows no local
//! from_pod judged (and ICMP errors towards it); learn the link's frame
//! header when from_pod asks (`fwd::learn_link_macs`).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::{TC_ACT_OK, TC_ACT_SHOT}, macros::classifier, programs::TcContext};
use weir_common::{addr::Addr, drop::DropReason, stats::Direction};
use weir_ebpf::{
    conntrack, events, frag, fwd,
    hdr::{self, Ipv4Pkt, FRAG_FIRST, FRAME_ARP, FRAME_MALFORMED, FRAME_V4, FRAME_V6},
    icmp, lb, pod_v6, policy, service, source, stats,
};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    let ifindex = ifindex(&ctx);
    stats::count(ifindex, Direction::FromPod, ctx.len());
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = Ipv4Pkt::zero_in(&mut slot);
    match hdr::parse(&ctx, pkt) {
        FRAME_V4 => {}
        FRAME_V6 => return pod_v6::from_pod(&ctx, ifindex),
        FRAME_ARP => return TC_ACT_OK as i32,
        FRAME_MALFORMED => return events::dropped_frame(&ctx, DropReason::Malformed),
        _ => return events::dropped_frame(&ctx, DropReason::UnsupportedEthertype),
    }
    if !source::owns(ifindex, &Addr::from_v4_raw(pkt.saddr)) {
        return events::dropped(&ctx, pkt, DropReason::SpoofedSource);
    }
    if pkt.later_fragment() && !frag::recover(pkt) {
        return events::dropped(&ctx, pkt, DropReason::FragmentUnknown);
    }
    let first = pkt.frag == FRAG_FIRST;
    if first {
        frag::prepare(pkt);
    }
    let verdict = v4_from_pod(&ctx, pkt);
    if first && verdict != TC_ACT_SHOT as i32 {
        frag::commit();
    }
    verdict
}

#[inline(always)]
fn v4_from_pod(ctx: &TcContext, pkt: &mut hdr::Ipv4Pkt) -> i32 {
    if pkt.is_icmp_error() {
        return icmp::error_from_pod(ctx, pkt, conntrack::now_ns());
    }
    if !pkt.is_tcp_udp() {
        if let Some(verdict) = service::unsupported_to_vip(ctx, pkt) {
            return verdict;
        }
        return policy::other(ctx, pkt, false);
    }
    let Some(cfg) = conntrack::config() else {
        return TC_ACT_SHOT as i32;
    };
    let now = conntrack::now_ns();
    let verdict = service::from_pod(ctx, pkt, cfg, now);
    if verdict != lb::NOT_HANDLED {
        return verdict;
    }
    // Passed by the policy, to another pod: straight into it when it is
    // this node's.
    let verdict = policy::from_pod(ctx, pkt, now);
    if verdict != TC_ACT_OK as i32 || conntrack::migrating() {
        return verdict;
    }
    fwd::between_pods_v4(ctx, pkt)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    let ifindex = ifindex(&ctx);
    stats::count(ifindex, Direction::ToPod, ctx.len());
    fwd::learn_link_macs(&ctx, ifindex);
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = Ipv4Pkt::zero_in(&mut slot);
    match hdr::parse(&ctx, pkt) {
        FRAME_V4 => {}
        FRAME_V6 => return pod_v6::to_pod(&ctx, ifindex),
        FRAME_MALFORMED => return events::dropped_frame(&ctx, DropReason::Malformed),
        FRAME_ARP => return TC_ACT_OK as i32,
        _ => {
            // Anything else (VLAN tags, ...) would carry IP past policy.
            if source::link_isolated(ifindex) {
                return events::dropped_frame(&ctx, DropReason::UnsupportedEthertype);
            }
            return TC_ACT_OK as i32;
        }
    }
    if !source::owns(ifindex, &Addr::from_v4_raw(pkt.daddr)) {
        return events::dropped(&ctx, pkt, DropReason::NotForPod);
    }
    if pkt.later_fragment() && !frag::recover(pkt) {
        return events::dropped(&ctx, pkt, DropReason::FragmentUnknown);
    }
    let first = pkt.frag == FRAG_FIRST;
    if first {
        frag::prepare(pkt);
    }
    let now = conntrack::now_ns();
    let verdict = if pkt.is_icmp_error() {
        icmp::error_to_pod(&ctx, pkt, now)
    } else if pkt.is_tcp_udp() {
        if let Some(verdict) = service::to_pod(&ctx, pkt, now) {
            return verdict;
        }
        policy::to_pod(&ctx, pkt, now)
    } else {
        policy::other(&ctx, pkt, true)
    };
    if first && verdict != TC_ACT_SHOT as i32 {
        frag::commit();
    }
    verdict
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
