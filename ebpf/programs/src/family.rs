//! What the service path asks of a packet, for either address family:
//! its flow, its rewrites (`nat`), its forwarding (`fwd`), and how it is
//! dropped, refused or reported (`events`, `reject`). `lb` is written
//! once, over [`Packet`]; [`Ipv4Pkt`] and [`Ipv6Pkt`] implement it.
//!
//! An address is carried as the family carries it ([`Packet::A`]: the
//! IPv4 word as on the wire, or the 16-byte [`Addr`]), so the IPv4 path
//! moves 4-byte addresses as it always did.

use aya_ebpf::programs::TcContext;
use weir_common::{
    addr::Addr,
    drop::DropReason,
    lb::{PROTO_TCP, PROTO_UDP},
};

use crate::{
    debug, events, fwd,
    hdr::{self, Ipv4Pkt, Ipv6Pkt, Tuple},
    maps::scratch,
    nat, reject,
};

/// This CPU's IPv6 packet, parsed from the frame (in scratch space, and
/// in a frame of its own: the paths under the hooks need the stack).
#[inline(always)]
pub fn v6_packet(ctx: &TcContext) -> Result<&'static mut Ipv6Pkt, DropReason> {
    parse_into_scratch(ctx)?;
    Ok(&mut scratch().ok_or(DropReason::Malformed)?.v6)
}

/// [`v6_packet`]'s work, returning only the verdict (a reference returned
/// with it would come back through the caller's stack, which the
/// verifier refuses).
#[inline(never)]
fn parse_into_scratch(ctx: &TcContext) -> Result<(), DropReason> {
    let s = scratch().ok_or(DropReason::Malformed)?;
    let p = &mut s.v6;
    p.t = Tuple { saddr: Addr::ZERO, daddr: Addr::ZERO, sport: 0, dport: 0, proto: 0, tcp_flags: 0 };
    hdr::parse_v6(ctx, p)
}

/// A parsed packet the service path can translate and forward.
pub trait Packet {
    /// An address as the packet carries it.
    type A: Copy + PartialEq + crate::conntrack::Family;
    /// IPv4 (else IPv6): a choice by family the compiler can drop.
    const V4: bool;

    fn saddr(&self) -> Self::A;
    fn daddr(&self) -> Self::A;
    /// `a` as the maps hold addresses.
    fn wide(a: Self::A) -> Addr;
    /// A map's address as the packet carries it (of the packet's family:
    /// frontends, backends and conntrack never mix families in a flow).
    fn narrow(a: &Addr) -> Self::A;
    /// `a` and `port` as one argument of a kernel debug record (`debug::ep`
    /// or `debug::ep6`); `slot` is the address's place in the record.
    fn log_ep(slot: u32, a: Self::A, port: u16) -> u64;
    fn sport(&self) -> u16;
    fn dport(&self) -> u16;
    fn proto(&self) -> u8;
    fn tcp_flags(&self) -> u8;
    /// ICMP or ICMPv6: the message type.
    fn icmp_type(&self) -> u8;
    fn later_fragment(&self) -> bool;

    #[inline(always)]
    fn is_tcp_udp(&self) -> bool {
        self.proto() == PROTO_TCP || self.proto() == PROTO_UDP
    }

    /// Destination NAT: daddr:dport → `a`:`port` (wire order; `a` of the
    /// packet's family).
    fn dnat(&mut self, ctx: &TcContext, a: &Addr, port: u16) -> Result<(), ()>;
    /// Source NAT: saddr:sport → `a`:`port` (as for [`Packet::dnat`]).
    fn snat(&mut self, ctx: &TcContext, a: &Addr, port: u16) -> Result<(), ()>;
    /// Forwards the translated packet (`fwd`); `from_pod`: the caller
    /// runs at a pod link's from_pod (`fwd::into_pod` may apply, and
    /// its verdict be `fwd::unlisted`: the caller reports the drop).
    fn redirect(&self, ctx: &TcContext, from_pod: bool) -> i32;
    /// Counts and reports the packet dropped for `reason`.
    fn dropped(&self, ctx: &TcContext, reason: DropReason) -> i32;
    /// Reports the packet refused for `reason` and answers its sender
    /// (`reject::BACK_*`): a TCP RST, or port unreachable.
    fn refuse(&self, ctx: &TcContext, reason: DropReason, back: u32) -> i32;
    /// Reports the packet too big for an egress of `mtu` and answers its
    /// sender (`reject::BACK_*`).
    fn too_big(&self, ctx: &TcContext, mtu: u16, back: u32) -> i32;
    /// Reports the new service flow and the backend chosen (monitor only).
    fn trace(&self, ctx: &TcContext);
}

impl Packet for Ipv4Pkt {
    type A = u32;
    const V4: bool = true;

    #[inline(always)]
    fn saddr(&self) -> u32 {
        self.saddr
    }
    #[inline(always)]
    fn daddr(&self) -> u32 {
        self.daddr
    }
    #[inline(always)]
    fn wide(a: u32) -> Addr {
        Addr::from_v4_raw(a)
    }
    #[inline(always)]
    fn narrow(a: &Addr) -> u32 {
        a.v4_raw()
    }
    #[inline(always)]
    fn log_ep(_slot: u32, a: u32, port: u16) -> u64 {
        debug::ep(a, port)
    }
    #[inline(always)]
    fn sport(&self) -> u16 {
        self.sport
    }
    #[inline(always)]
    fn dport(&self) -> u16 {
        self.dport
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn tcp_flags(&self) -> u8 {
        self.tcp_flags
    }
    #[inline(always)]
    fn icmp_type(&self) -> u8 {
        self.icmp_type
    }
    #[inline(always)]
    fn later_fragment(&self) -> bool {
        Ipv4Pkt::later_fragment(self)
    }
    #[inline(always)]
    fn dnat(&mut self, ctx: &TcContext, a: &Addr, port: u16) -> Result<(), ()> {
        nat::dnat(ctx, self, a.v4_raw(), port)
    }
    #[inline(always)]
    fn snat(&mut self, ctx: &TcContext, a: &Addr, port: u16) -> Result<(), ()> {
        nat::snat(ctx, self, a.v4_raw(), port)
    }
    #[inline(always)]
    fn redirect(&self, ctx: &TcContext, from_pod: bool) -> i32 {
        fwd::redirect_v4(ctx, self, from_pod)
    }
    #[inline(always)]
    fn dropped(&self, ctx: &TcContext, reason: DropReason) -> i32 {
        events::dropped(ctx, self, reason)
    }
    #[inline(always)]
    fn refuse(&self, ctx: &TcContext, reason: DropReason, back: u32) -> i32 {
        events::drop(ctx, self, reason as u32);
        reject::reject(ctx, self, reason, back)
    }
    #[inline(always)]
    fn too_big(&self, ctx: &TcContext, mtu: u16, back: u32) -> i32 {
        events::drop(ctx, self, DropReason::FragNeeded as u32);
        reject::too_big(ctx, self, mtu, back)
    }
    #[inline(always)]
    fn trace(&self, ctx: &TcContext) {
        events::trace(ctx, self)
    }
}

impl Packet for Ipv6Pkt {
    type A = Addr;
    const V4: bool = false;

    #[inline(always)]
    fn saddr(&self) -> Addr {
        self.t.saddr
    }
    #[inline(always)]
    fn daddr(&self) -> Addr {
        self.t.daddr
    }
    #[inline(always)]
    fn wide(a: Addr) -> Addr {
        a
    }
    #[inline(always)]
    fn narrow(a: &Addr) -> Addr {
        *a
    }
    #[inline(always)]
    fn log_ep(slot: u32, a: Addr, port: u16) -> u64 {
        debug::ep6(slot, &a, port)
    }
    #[inline(always)]
    fn sport(&self) -> u16 {
        self.t.sport
    }
    #[inline(always)]
    fn dport(&self) -> u16 {
        self.t.dport
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.t.proto
    }
    #[inline(always)]
    fn tcp_flags(&self) -> u8 {
        self.t.tcp_flags
    }
    #[inline(always)]
    fn icmp_type(&self) -> u8 {
        self.icmp_type
    }
    #[inline(always)]
    fn later_fragment(&self) -> bool {
        Ipv6Pkt::later_fragment(self)
    }
    #[inline(always)]
    fn dnat(&mut self, ctx: &TcContext, a: &Addr, port: u16) -> Result<(), ()> {
        nat::dnat6(ctx, self, a, port)
    }
    #[inline(always)]
    fn snat(&mut self, ctx: &TcContext, a: &Addr, port: u16) -> Result<(), ()> {
        nat::snat6(ctx, self, a, port)
    }
    #[inline(always)]
    fn redirect(&self, ctx: &TcContext, from_pod: bool) -> i32 {
        fwd::redirect_v6(ctx, self, from_pod)
    }
    #[inline(always)]
    fn dropped(&self, ctx: &TcContext, reason: DropReason) -> i32 {
        events::dropped_flow(ctx, &self.t, reason)
    }
    #[inline(always)]
    fn refuse(&self, ctx: &TcContext, reason: DropReason, back: u32) -> i32 {
        events::report_drop(ctx, &self.t, reason as u32);
        reject::reject6(ctx, self, reason, back)
    }
    #[inline(always)]
    fn too_big(&self, ctx: &TcContext, mtu: u16, back: u32) -> i32 {
        events::report_drop(ctx, &self.t, DropReason::FragNeeded as u32);
        reject::too_big6(ctx, self, mtu, back)
    }
    #[inline(always)]
    fn trace(&self, ctx: &TcContext) {
        events::trace_flow(ctx, &self.t)
    }
}
