//! Address and port rewrites with incremental checksum updates. UDP with a
//! zero checksum stays zero (BPF_F_MARK_MANGLED_0); CHECKSUM_PARTIAL skbs
//! are handled by the helpers (pseudo-header only). A later fragment has
//! no L4 header: only its IP header changes (the datagram's L4 checksum
//! lives in the first fragment, which is rewritten for the whole). An
//! ICMP echo's identifier stands in for both ports (as `hdr` parses it);
//! its checksum covers no pseudo-header.
//!
//! IPv6 has no header checksum: an address rewrite updates the TCP or
//! UDP checksum's pseudo-header by the difference of the two 16-byte
//! addresses (`bpf_csum_diff`). A UDP checksum that comes out zero is
//! written as 0xffff (BPF_F_MARK_MANGLED_0): over IPv6 a zero UDP
//! checksum means none, which receivers drop.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
    programs::TcContext,
};
use weir_common::{
    addr::Addr,
    lb::{PROTO_ICMP, PROTO_TCP, PROTO_UDP},
};

use crate::hdr::{Ipv4Pkt, Ipv6Pkt, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, PROTO_ICMPV6, IP6_DADDR_OFF, IP6_SADDR_OFF, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF};

#[inline(always)]
fn l4_flags(pkt: &Ipv4Pkt) -> u64 {
    if pkt.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 }
}

/// Rewrites the IPv4 source or destination address.
#[inline(always)]
fn rewrite_addr(ctx: &TcContext, pkt: &Ipv4Pkt, off: usize, old: u32, new: u32) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    if !pkt.later_fragment() && pkt.is_tcp_udp() {
        ctx.l4_csum_replace(pkt.l4_csum_off(), old as u64, new as u64, BPF_F_PSEUDO_HDR as u64 | l4_flags(pkt) | 4)
            .map_err(|_| ())?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4).map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())
}

/// Rewrites an L4 port (`port_off` 0 = source, 2 = destination).
#[inline(always)]
fn rewrite_port(ctx: &TcContext, pkt: &Ipv4Pkt, port_off: usize, old: u16, new: u16) -> Result<(), ()> {
    if old == new || pkt.later_fragment() {
        return Ok(());
    }
    let (csum_off, field_off) = if pkt.proto == PROTO_ICMP { (pkt.l4() + 2, pkt.l4() + 4) } else { (pkt.l4_csum_off(), pkt.l4() + port_off) };
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, l4_flags(pkt) | 2).map_err(|_| ())?;
    ctx.store(field_off, &new, 0).map_err(|_| ())
}

/// Destination NAT: daddr:dport → addr:port (wire order).
#[inline(always)]
pub fn dnat(ctx: &TcContext, pkt: &mut Ipv4Pkt, addr: u32, port: u16) -> Result<(), ()> {
    rewrite_addr(ctx, pkt, IP_DADDR_OFF, pkt.daddr, addr)?;
    rewrite_port(ctx, pkt, 2, pkt.dport, port)?;
    pkt.daddr = addr;
    pkt.dport = port;
    if pkt.proto == PROTO_ICMP {
        pkt.sport = port;
    }
    Ok(())
}

/// Source NAT: saddr:sport → addr:port (wire order).
#[inline(always)]
pub fn snat(ctx: &TcContext, pkt: &mut Ipv4Pkt, addr: u32, port: u16) -> Result<(), ()> {
    rewrite_addr(ctx, pkt, IP_SADDR_OFF, pkt.saddr, addr)?;
    rewrite_port(ctx, pkt, 0, pkt.sport, port)?;
    pkt.saddr = addr;
    pkt.sport = port;
    if pkt.proto == PROTO_ICMP {
        pkt.dport = port;
    }
    Ok(())
}

/// Where an IPv6 packet's checksum over the pseudo-header is, when its
/// upper-layer header is in this packet: TCP, UDP or ICMPv6.
#[inline(always)]
fn v6_l4_csum(p: &Ipv6Pkt) -> Option<usize> {
    if p.later_fragment() {
        return None;
    }
    match p.t.proto {
        PROTO_TCP => Some(p.l4_off as usize + 16),
        PROTO_UDP => Some(p.l4_off as usize + 6),
        PROTO_ICMPV6 => Some(p.l4_off as usize + 2),
        _ => None,
    }
}

/// The checksum difference of replacing 16-byte address `old` by `new`.
#[inline(always)]
pub fn addr6_diff(old: &Addr, new: &Addr) -> Result<u64, ()> {
    // SAFETY: both pointers are to 16 readable bytes; the helper only
    // reads them.
    let diff = unsafe { bpf_csum_diff(old.bytes.as_ptr() as *mut u32, 16, new.bytes.as_ptr() as *mut u32, 16, 0) };
    if diff < 0 {
        return Err(());
    }
    Ok(diff as u64)
}

/// Rewrites the IPv6 source or destination address, and the checksum
/// whose pseudo-header holds it (a call of its own: the 16-byte
/// addresses stay where they are, in scratch space).
#[inline(never)]
pub fn rewrite_addr6(ctx: &TcContext, p: &Ipv6Pkt, off: usize, old: &Addr, new: &Addr) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    if let Some(csum_off) = v6_l4_csum(p) {
        let diff = addr6_diff(old, new)?;
        let mangled = if p.t.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        ctx.l4_csum_replace(csum_off, 0, diff, BPF_F_PSEUDO_HDR as u64 | mangled).map_err(|_| ())?;
    }
    ctx.store(off, &new.bytes, 0).map_err(|_| ())
}

/// Rewrites an IPv6 packet's TCP or UDP port (`port_off` 0 = source,
/// 2 = destination), or an ICMPv6 echo's identifier (which stands in for
/// both).
#[inline(always)]
fn rewrite_port6(ctx: &TcContext, p: &Ipv6Pkt, port_off: usize, old: u16, new: u16) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    let echo = p.t.proto == PROTO_ICMPV6 && (p.icmp_type == ICMPV6_ECHO_REQUEST || p.icmp_type == ICMPV6_ECHO_REPLY);
    if p.t.proto != PROTO_TCP && p.t.proto != PROTO_UDP && !echo {
        return Ok(());
    }
    let Some(csum_off) = v6_l4_csum(p) else { return Ok(()) };
    let mangled = if p.t.proto == PROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    ctx.l4_csum_replace(csum_off, old as u64, new as u64, mangled | 2).map_err(|_| ())?;
    let field = if echo { 4 } else { port_off };
    ctx.store(p.l4_off as usize + field, &new, 0).map_err(|_| ())
}

/// [`dnat`] for IPv6 (TCP, UDP and ICMPv6 echo).
#[inline(always)]
pub fn dnat6(ctx: &TcContext, p: &mut Ipv6Pkt, addr: &Addr, port: u16) -> Result<(), ()> {
    rewrite_addr6(ctx, p, IP6_DADDR_OFF, &p.t.daddr, addr)?;
    rewrite_port6(ctx, p, 2, p.t.dport, port)?;
    p.t.daddr = *addr;
    p.t.dport = port;
    if p.t.proto == PROTO_ICMPV6 {
        p.t.sport = port;
    }
    Ok(())
}

/// [`snat`] for IPv6 (TCP, UDP and ICMPv6 echo).
#[inline(always)]
pub fn snat6(ctx: &TcContext, p: &mut Ipv6Pkt, addr: &Addr, port: u16) -> Result<(), ()> {
    rewrite_addr6(ctx, p, IP6_SADDR_OFF, &p.t.saddr, addr)?;
    rewrite_port6(ctx, p, 0, p.t.sport, port)?;
    p.t.saddr = *addr;
    p.t.sport = port;
    if p.t.proto == PROTO_ICMPV6 {
        p.t.dport = port;
    }
    Ok(())
}

/// Marks the packet as translated by this datapath (see
/// `weir_common::lb::MARK_TRANSLATED`).
#[inline(always)]
pub fn mark_translated(ctx: &TcContext) {
    // SAFETY: the context pointer is valid; tc programs may write the mark.
    unsafe { (*ctx.skb.skb).mark |= weir_common::lb::MARK_TRANSLATED };
}

/// Whether the packet carries the mark.
#[inline(always)]
pub fn translated(ctx: &TcContext) -> bool {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).mark & weir_common::lb::MARK_TRANSLATED != 0 }
}

/// Whether the packet carries the mark, clearing it.
#[inline(always)]
pub fn take_translated(ctx: &TcContext) -> bool {
    // SAFETY: as above.
    unsafe {
        let m = (*ctx.skb.skb).mark;
        (*ctx.skb.skb).mark = m & !weir_common::lb::MARK_TRANSLATED;
        m & weir_common::lb::MARK_TRANSLATED != 0
    }
}
