//! The pod object: attached at tc ingress ("from pod") and tc egress ("to pod")
//! of every host-side pod veth (`weir*`).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use weir_common::stats::Direction;
use weir_ebpf::stats;

/// tc ingress on the host-side veth: packets the pod sends.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::FromPod)
}

/// tc egress on the host-side veth: packets delivered to the pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::ToPod)
}

#[inline(always)]
fn handle(ctx: &TcContext, dir: Direction) -> i32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    stats::count(ifindex, dir, ctx.len());
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
