//! The pod object: attached at tc ingress ("from pod") and tc egress ("to
//! pod") of every host-side pod veth (`weir*`).
//!
//! from_pod: count, reverse-NAT replies of service flows, load-balance
//! packets to service frontends (DNAT + redirect), reject what a service
//! cannot take. to_pod: count (the pod's ingress policy comes here).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use weir_common::stats::Direction;
use weir_ebpf::{conntrack, hdr, lb, reject, stats};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    count(&ctx, Direction::FromPod);
    let Some(mut pkt) = hdr::parse_v4(&ctx) else {
        return TC_ACT_OK as i32;
    };
    if !pkt.is_tcp_udp() {
        return TC_ACT_OK as i32;
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
    if let Some(reason) = lb::rejected(verdict) {
        return reject::reject(&ctx, &pkt, reason);
    }
    if verdict != lb::NOT_HANDLED {
        return verdict;
    }
    lb::forget_stale_reverse(&pkt);
    TC_ACT_OK as i32
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    count(&ctx, Direction::ToPod);
    TC_ACT_OK as i32
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
