//! The pod object: attached at tc ingress ("from pod") and tc egress ("to
//! pod") of every host-side pod veth (`weir*`).
//!
//! from_pod: count, reverse-NAT replies of service flows, load-balance
//! packets to service frontends (DNAT + redirect), reject what a service
//! cannot take, and judge new flows by network policy (egress of the
//! sender, ingress of a local receiver). to_pod: count, and judge the
//! pod's ingress for flows no local from_pod judged.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::{TC_ACT_OK, TC_ACT_SHOT}, macros::classifier, programs::TcContext};
use weir_common::stats::Direction;
use weir_ebpf::{conntrack, events, hdr, lb, policy, reject, stats};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    count(&ctx, Direction::FromPod);
    let Some(mut pkt) = hdr::parse_v4(&ctx) else {
        return TC_ACT_OK as i32;
    };
    if !pkt.is_tcp_udp() {
        return policy::other(&ctx, &pkt, false);
    }
    let Some(cfg) = conntrack::config() else {
        return TC_ACT_OK as i32;
    };
    let now = conntrack::now_ns();
    let verdict = lb::reverse(&ctx, &mut pkt, cfg, now);
    if verdict != lb::NOT_HANDLED {
        return verdict;
    }
    let verdict = lb::forward(&ctx, &mut pkt, cfg, now);
    if verdict == lb::NEW_FLOW {
        // Policy sees the real backend: the client's egress and the
        // backend's ingress are judged on the translated tuple, before any
        // state exists.
        let Some(t) = lb::new_flow_tuple(&pkt) else {
            return TC_ACT_SHOT as i32;
        };
        if !policy::allow_new(&ctx, &t, policy::CHECK_EGRESS | policy::CHECK_INGRESS) {
            return TC_ACT_SHOT as i32;
        }
        events::trace(&ctx, &pkt, &t);
        return lb::commit(&ctx, &mut pkt, cfg);
    }
    if let Some(reason) = lb::rejected(verdict) {
        events::drop(&ctx, &pkt, reason as u32);
        return reject::reject(&ctx, &pkt, reason);
    }
    if verdict != lb::NOT_HANDLED {
        return verdict;
    }
    lb::forget_stale_reverse(&pkt);
    policy::from_pod(&ctx, &pkt, now)
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    count(&ctx, Direction::ToPod);
    let Some(pkt) = hdr::parse_v4(&ctx) else {
        return TC_ACT_OK as i32;
    };
    if !pkt.is_tcp_udp() {
        return policy::other(&ctx, &pkt, true);
    }
    policy::to_pod(&ctx, &pkt, conntrack::now_ns())
}

#[inline(always)]
fn count(ctx: &TcContext, dir: Direction) {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count(ifindex, dir, ctx.len());
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
