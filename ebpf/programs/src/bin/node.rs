//! The node object: attached at tc ingress ("from net") of the node's
//! uplink devices (`--devices`).
//!
//! from_net: reverse-NAT replies of service flows whose backend is on
//! another node (the reply arrives here, from the backend's node, with the
//! backend's address), translate ICMP errors about them, and drop packets
//! from outside that claim the address of one of this node's pods.
//! Everything else goes up the stack as before.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::{TC_ACT_OK, TC_ACT_SHOT}, macros::classifier, programs::TcContext};
use weir_common::{addr::Addr, drop::DropReason};
use weir_ebpf::{
    conntrack, events, frag,
    hdr::{self, Ipv4Pkt, FRAG_FIRST, FRAME_MALFORMED, FRAME_V4},
    icmp, lb, source,
};

#[classifier]
pub fn from_net(ctx: TcContext) -> i32 {
    let mut pkt = Ipv4Pkt::zeroed();
    match hdr::parse(&ctx, &mut pkt) {
        FRAME_V4 => {}
        FRAME_MALFORMED => return events::dropped_frame(&ctx, DropReason::Malformed),
        _ => return TC_ACT_OK as i32,
    }
    // Only a local pod's own link sends from its address.
    if source::is_local_pod(&Addr::from_v4_raw(pkt.saddr)) {
        return events::dropped(&ctx, &pkt, DropReason::SpoofedSource);
    }
    if pkt.later_fragment() && !frag::recover(&mut pkt) {
        return TC_ACT_OK as i32; // not ours: the stack reassembles or drops it
    }
    let first = pkt.frag == FRAG_FIRST;
    if first {
        frag::prepare(&pkt);
    }
    let verdict = v4_from_net(&ctx, &mut pkt);
    if first && verdict != TC_ACT_SHOT as i32 && verdict != TC_ACT_OK as i32 {
        frag::commit();
    }
    verdict
}

#[inline(always)]
fn v4_from_net(ctx: &TcContext, pkt: &mut Ipv4Pkt) -> i32 {
    let now = conntrack::now_ns();
    if pkt.is_icmp_error() {
        return icmp::error_from_net(ctx, pkt, now);
    }
    if !pkt.is_tcp_udp() {
        return TC_ACT_OK as i32;
    }
    let Some(cfg) = conntrack::config() else { return TC_ACT_OK as i32 };
    let verdict = lb::reverse(ctx, pkt, cfg, now, lb::REVERSE_REDIRECT);
    if verdict == lb::NOT_HANDLED {
        return TC_ACT_OK as i32;
    }
    match lb::dropped(verdict) {
        Some(reason) => events::dropped(ctx, pkt, reason),
        None => verdict,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
