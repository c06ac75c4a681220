//! The node object, on the node's own devices:
//! - `from_net` / `to_net`: tc ingress / egress of the uplink devices
//!   (`--devices`): north-south load balancing (NodePorts, LB IPs,
//!   externalIPs, ClusterIPs routed to the node) on the way in, the
//!   replies of backends in the node's own network namespace on the way
//!   out;
//! - `to_tunnel` / `from_tunnel`: tc egress / ingress of the VXLAN device
//!   (`--routing vxlan`);
//! - `xdp_from_net`: XDP on the uplinks (`--xdp`): the fast path of
//!   established north-south flows that leave by the device they came in
//!   on (`weir_ebpf::xdp`); everything else goes on to `from_net`.
//!
//! from_net and from_tunnel reverse-NAT replies of service flows whose
//! backend is on another node, translate ICMP errors about them, and drop
//! packets from outside that claim the address of one of this node's
//! pods; from_tunnel first checks that encapsulated traffic comes from a
//! node and carries that node's own addresses. to_tunnel sets the outer
//! destination: the node holding the destination's pod CIDR. The tunnel
//! carries IPv4 and IPv6 pod traffic (`weir_ebpf::tunnel`). to_net
//! masquerades pod egress leaving the cluster; from_net first restores
//! the pod's address on its replies. from_net and to_net take IPv6 as
//! IPv4 (north-south, pod egress masqueraded), each family's work in a
//! frame of its own.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use weir_common::{addr::Addr, drop::DropReason};
use weir_ebpf::{
    events,
    hdr::{self, Ipv4Pkt, FRAME_MALFORMED, FRAME_V4, FRAME_V6},
    egress, ingress, masq, tunnel,
};

#[xdp]
pub fn xdp_from_net(ctx: XdpContext) -> u32 {
    weir_ebpf::xdp::fast_path(&ctx)
}

/// What `from_net_v4` and `to_net_v4` return for an IPv6 frame (no TC
/// verdict is negative).
const FRAME_IS_V6: i32 = -1;

#[classifier]
pub fn from_net(ctx: TcContext) -> i32 {
    // IPv6 is handled outside IPv4's frame: the deepest IPv6 call chain
    // has no room for the parsed IPv4 packet's slot.
    match from_net_v4(&ctx) {
        FRAME_IS_V6 => ingress::from_outside_v6(&ctx),
        verdict => verdict,
    }
}

#[inline(never)]
fn from_net_v4(ctx: &TcContext) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = Ipv4Pkt::zero_in(&mut slot);
    match hdr::parse(ctx, pkt) {
        FRAME_V4 => {
            if masq::ingress(ctx, pkt).is_err() {
                return events::dropped(ctx, pkt, DropReason::Malformed);
            }
            ingress::from_outside(ctx, pkt)
        }
        FRAME_V6 => FRAME_IS_V6,
        FRAME_MALFORMED => events::dropped_frame(ctx, DropReason::Malformed),
        _ => TC_ACT_OK as i32,
    }
}

#[classifier]
pub fn to_net(ctx: TcContext) -> i32 {
    match to_net_v4(&ctx) {
        FRAME_IS_V6 => egress::to_net_v6(&ctx, from_host(&ctx)),
        verdict => verdict,
    }
}

#[inline(never)]
fn to_net_v4(ctx: &TcContext) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = Ipv4Pkt::zero_in(&mut slot);
    match hdr::parse(ctx, pkt) {
        FRAME_V4 => {
            if from_host(ctx) && egress::host_reply(ctx, pkt).is_err() {
                return events::dropped(ctx, pkt, DropReason::Malformed);
            }
            egress::masquerade(ctx, pkt)
        }
        FRAME_V6 => FRAME_IS_V6,
        _ => TC_ACT_OK as i32,
    }
}

/// The node's own stack sent the packet (no ingress device).
#[inline(always)]
fn from_host(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).ingress_ifindex == 0 }
}

/// The IPv4 packet on the tunnel device; an IPv6 one is `Err(FRAME_IS_V6)`
/// and anything else is dropped (the tunnel carries only pod traffic),
/// with its verdict as `Err`.
#[inline(always)]
fn tunnel_packet<'a>(ctx: &TcContext, slot: &'a mut core::mem::MaybeUninit<Ipv4Pkt>) -> Result<&'a mut Ipv4Pkt, i32> {
    let pkt = Ipv4Pkt::zero_in(slot);
    match hdr::parse(ctx, pkt) {
        FRAME_V4 => Ok(pkt),
        FRAME_V6 => Err(FRAME_IS_V6),
        FRAME_MALFORMED => Err(events::dropped_frame(ctx, DropReason::Malformed)),
        _ => Err(events::dropped_frame(ctx, DropReason::UnsupportedEthertype)),
    }
}

#[classifier]
pub fn from_tunnel(ctx: TcContext) -> i32 {
    match from_tunnel_v4(&ctx) {
        FRAME_IS_V6 => ingress::from_tunnel_v6(&ctx),
        verdict => verdict,
    }
}

#[inline(never)]
fn from_tunnel_v4(ctx: &TcContext) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = match tunnel_packet(ctx, &mut slot) {
        Ok(p) => p,
        Err(verdict) => return verdict,
    };
    if !tunnel::from_peer(ctx, &Addr::from_v4_raw(pkt.saddr)) {
        return events::dropped(ctx, pkt, DropReason::TunnelSpoofed);
    }
    ingress::from_outside(ctx, pkt)
}

#[classifier]
pub fn to_tunnel(ctx: TcContext) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let daddr = match tunnel_packet(&ctx, &mut slot) {
        Ok(p) => Addr::from_v4_raw(p.daddr),
        Err(FRAME_IS_V6) => hdr::v6_addrs(&ctx).1,
        Err(verdict) => return verdict,
    };
    if !tunnel::encapsulate(&ctx, &daddr) {
        return events::dropped_frame(&ctx, DropReason::NoTunnelEndpoint);
    }
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
