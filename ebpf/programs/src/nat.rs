//! Address and port rewrites with incremental checksum updates. UDP with a
//! zero checksum stays zero (BPF_F_MARK_MANGLED_0); CHECKSUM_PARTIAL skbs
//! are handled by the helpers (pseudo-header only). A later fragment has
//! no L4 header: only its IP header changes (the datagram's L4 checksum
//! lives in the first fragment, which is rewritten for the whole). An
//! ICMP echo's identifier stands in for both ports (as `hdr` parses it);
//! its checksum covers no pseudo-header.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use weir_common::lb::{PROTO_ICMP, PROTO_UDP};

use crate::hdr::{Ipv4Pkt, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF};

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
