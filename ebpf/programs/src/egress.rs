//! What the node does with its own packets leaving an uplink: a reply of
//! a backend in the node's network namespace (a host-network endpoint of
//! a NodePort, LB IP or externalIP flow that came in on a device) leaves
//! from the frontend it was sent to, over either family.

use aya_ebpf::programs::TcContext;

use crate::{conntrack, family::{self, Packet}, lb};

/// [`host_reply`] for the node's IPv6 packet; one that cannot be parsed
/// is the node's own and left alone (`Ok`).
#[inline(never)]
pub fn host_reply_v6(ctx: &TcContext) -> Result<(), ()> {
    match family::v6_packet(ctx) {
        Ok(p) => host_reply(ctx, p),
        Err(_) => Ok(()),
    }
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
