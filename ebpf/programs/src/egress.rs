//! What the node does with packets leaving an uplink: a reply of a
//! backend in the node's network namespace (a host-network endpoint of a
//! NodePort, LB IP or externalIP flow that came in on a device) leaves
//! from the frontend it was sent to, over either family; pod egress is
//! masqueraded (`masq`).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use weir_common::drop::DropReason;

use crate::{conntrack, events, family::{self, Packet}, hdr::Ipv6Pkt, lb, masq};

/// An IPv6 packet leaving an uplink (`from_host`: the node's own stack
/// sent it): a host-network backend's reply is reverse-NATed, pod egress
/// masqueraded. One that cannot be parsed passes: the stack built it.
#[inline(never)]
pub fn to_net_v6(ctx: &TcContext, from_host: bool) -> i32 {
    match family::v6_packet(ctx) {
        Ok(p) => v6_out(ctx, p, from_host),
        Err(_) => TC_ACT_OK as i32,
    }
}

/// [`to_net_v6`]'s work, in a frame beside the parse's.
#[inline(never)]
fn v6_out(ctx: &TcContext, p: &mut Ipv6Pkt, from_host: bool) -> i32 {
    if from_host && host_reply(ctx, p).is_err() {
        return events::dropped_flow(ctx, &p.t, DropReason::Malformed);
    }
    masquerade(ctx, p)
}

/// Pod egress leaving the node (`masq::egress`), in a frame beside the
/// reverse NAT's rather than under it: `to_net`'s chain (the parse, the
/// host reply's reverse NAT and its FIB lookup) stays far from BPF's 512
/// bytes, for both families.
#[inline(never)]
pub fn masquerade<P: Packet>(ctx: &TcContext, p: &mut P) -> i32 {
    masq::egress(ctx, p)
}

/// Reverse-NATs a host-network backend's reply in place. `Err` when the
/// packet could not be rewritten.
#[inline(always)]
pub fn host_reply<P: Packet>(ctx: &TcContext, pkt: &mut P) -> Result<(), ()> {
    if !pkt.is_tcp_udp() || pkt.later_fragment() {
        return Ok(());
    }
    let Some(cfg) = conntrack::config() else { return Ok(()) };
    let v = lb::reverse(ctx, pkt, cfg, conntrack::now_ns(), lb::REVERSE_IN_PLACE);
    match lb::dropped(v) {
        Some(_) => Err(()),
        None => Ok(()),
    }
}
