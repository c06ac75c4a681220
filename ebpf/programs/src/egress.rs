//! What the node does with its own packets leaving an uplink: a reply of
//! a backend in the node's network namespace (a host-network endpoint of
//! a NodePort, LB IP or externalIP flow that came in on a device) leaves
//! from the frontend it was sent to.

use aya_ebpf::programs::TcContext;

use crate::{conntrack, hdr::Ipv4Pkt, lb};

/// Reverse-NATs a host-network backend's reply in place. `Err` when the
/// packet could not be rewritten.
#[inline(always)]
pub fn host_reply(ctx: &TcContext, pkt: &mut Ipv4Pkt) -> Result<(), ()> {
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
