//! Refusing a connection at once: TCP gets a RST, UDP (and anything else
//! sent to a service IP, such as an ICMP echo) gets ICMP port
//! unreachable. A packet with Don't Fragment set that is too big for the
//! link its translation leaves by gets ICMP fragmentation needed, with
//! that link's MTU (path-MTU discovery through a frontend). The packet is
//! rewritten in place into the answer and
//! delivered straight into the sending pod (`bpf_redirect_peer`), so the
//! pod's own ingress policy never sees the answer to its own packet: a
//! client under default-deny ingress still fails at once.
//!
//! IPv6 is answered the same way ([`reject6`]): a TCP RST, or ICMPv6
//! destination unreachable (port unreachable) quoting the packet's fixed
//! header and the first 8 bytes of its upper layer; a packet too big,
//! with ICMPv6 packet too big ([`too_big6`]).

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_redirect_peer, bpf_skb_change_tail},
    programs::TcContext,
};
use weir_common::{
    drop::DropReason,
    lb::PROTO_TCP,
};
use weir_logic::{
    csum::{add_words, finish},
    ct::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

use weir_common::addr::Addr;

use crate::{
    errors::drop_reason,
    hdr::{Ipv4Pkt, Ipv6Pkt, ETH_HLEN, IP_OFF, PROTO_ICMPV6},
};

const IPPROTO_ICMP: u8 = 1;
const IPV6_HLEN: usize = 40;

/// [`reject`]: answer into the pod behind the host veth the packet came
/// from (past the pod's own ingress hook).
pub const BACK_TO_POD: u32 = 0;
/// [`reject`]: answer out of the device the packet came in on.
pub const BACK_OUT: u32 = 1;

/// Counts `reason` and answers the sender (`back`: [`BACK_TO_POD`],
/// [`BACK_OUT`]); drops if no answer can be made.
#[inline(never)]
pub fn reject(ctx: &TcContext, pkt: &Ipv4Pkt, reason: DropReason, back: u32) -> i32 {
    drop_reason(reason);
    let built = if pkt.proto == PROTO_TCP {
        tcp_rst(ctx, pkt)
    } else if pkt.is_icmp_error() || pkt.later_fragment() {
        Err(()) // never answer an error, nor a packet with no header
    } else {
        icmp_unreachable(ctx, pkt, CODE_PORT_UNREACHABLE, 0)
    };
    if built.is_err() {
        return TC_ACT_SHOT as i32;
    }
    send_back(ctx, back)
}

/// Answers a packet with Don't Fragment set that is too big for a link of
/// `mtu` bytes with ICMP fragmentation needed (counted as
/// `frag_needed`), from its destination, quoting it; the packet must be
/// untranslated (the sender matches the quote to its socket). `back` as
/// for [`reject`]; drops if no answer can be made.
#[inline(never)]
pub fn too_big(ctx: &TcContext, pkt: &Ipv4Pkt, mtu: u16, back: u32) -> i32 {
    drop_reason(DropReason::FragNeeded);
    if pkt.is_icmp_error() || pkt.later_fragment() || icmp_unreachable(ctx, pkt, CODE_FRAG_NEEDED, mtu).is_err() {
        return TC_ACT_SHOT as i32;
    }
    send_back(ctx, back)
}

/// Sends the answer built in place back where the packet came from.
#[inline(always)]
fn send_back(ctx: &TcContext, back: u32) -> i32 {
    // SAFETY: the context pointer is valid; plain helper call (from tc
    // ingress of the host-side veth: into its peer, the pod's eth0).
    unsafe {
        let ifindex = (*ctx.skb.skb).ifindex;
        if back == BACK_OUT {
            bpf_redirect(ifindex, 0) as i32
        } else {
            bpf_redirect_peer(ifindex, 0) as i32
        }
    }
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let macs: [u8; 12] = ctx.load(0).map_err(|_| ())?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(|_| ())
}

#[inline(always)]
fn ipv4_header(tot_len: u16, proto: u8, saddr: u32, daddr: u32) -> [u8; 20] {
    let (s, d) = (saddr.to_ne_bytes(), daddr.to_ne_bytes());
    let len = tot_len.to_be_bytes();
    let mut h = [
        0x45, 0, len[0], len[1], 0, 0, 0x40, 0, 64, proto, 0, 0, s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3],
    ];
    let c = finish(add_words(0, &h)).to_be_bytes();
    h[10] = c[0];
    h[11] = c[1];
    h
}

#[inline(never)]
fn tcp_rst(ctx: &TcContext, pkt: &Ipv4Pkt) -> Result<(), ()> {
    if pkt.tcp_flags & TCP_RST != 0 {
        return Err(()); // never answer a RST
    }
    let l4_len = (pkt.tot_len as u32).saturating_sub(pkt.ihl_bytes as u32);
    let mut tcp = rst_for(ctx, pkt.l4(), l4_len, pkt.tcp_flags, pkt.sport, pkt.dport)?;
    let ip = ipv4_header(40, PROTO_TCP, pkt.daddr, pkt.saddr);
    // Pseudo-header: saddr, daddr, zero, proto, TCP length.
    let pseudo = [ip[12], ip[13], ip[14], ip[15], ip[16], ip[17], ip[18], ip[19]];
    let mut sum = add_words(0, &pseudo);
    sum += PROTO_TCP as u32 + 20;
    let c = finish(add_words(sum, &tcp)).to_be_bytes();
    tcp[16] = c[0];
    tcp[17] = c[1];
    // SAFETY: valid skb pointer; plain helper call.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 40) as u32, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    ctx.store(IP_OFF, &ip, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 20, &tcp, 0).map_err(|_| ())
}

/// The TCP header (checksum zero) of the RST that answers a segment with
/// `flags`, whose header is at `l4` with `l4_len` bytes of TCP header and
/// data (RFC 793's reset generation).
#[inline(always)]
fn rst_for(ctx: &TcContext, l4: usize, l4_len: u32, flags: u8, sport: u16, dport: u16) -> Result<[u8; 20], ()> {
    let seq = u32::from_be(ctx.load::<u32>(l4 + 4).map_err(|_| ())?);
    let ack = u32::from_be(ctx.load::<u32>(l4 + 8).map_err(|_| ())?);
    let doff = ((ctx.load::<u8>(l4 + 12).map_err(|_| ())? >> 4) as u32) * 4;
    let payload = l4_len.saturating_sub(doff);
    let (rst_seq, rst_ack, out_flags) = if flags & TCP_ACK != 0 {
        (ack, 0u32, TCP_RST)
    } else {
        let mut a = seq.wrapping_add(payload);
        if flags & TCP_SYN != 0 {
            a = a.wrapping_add(1);
        }
        if flags & TCP_FIN != 0 {
            a = a.wrapping_add(1);
        }
        (0u32, a, TCP_RST | TCP_ACK)
    };
    let (sp, dp) = (dport.to_ne_bytes(), sport.to_ne_bytes());
    let (sq, ak) = (rst_seq.to_be_bytes(), rst_ack.to_be_bytes());
    Ok([sp[0], sp[1], dp[0], dp[1], sq[0], sq[1], sq[2], sq[3], ak[0], ak[1], ak[2], ak[3], 0x50, out_flags, 0, 0, 0, 0, 0, 0])
}

const CODE_PORT_UNREACHABLE: u8 = 3;
const CODE_FRAG_NEEDED: u8 = 4;

/// ICMP destination unreachable with `code` (and, for fragmentation
/// needed, the next hop's `mtu`), quoting the packet's IP header and the
/// first 8 bytes of its L4 header.
#[inline(never)]
fn icmp_unreachable(ctx: &TcContext, pkt: &Ipv4Pkt, code: u8, mtu: u16) -> Result<(), ()> {
    if pkt.ihl_bytes != 20 {
        return Err(()); // the quoted header must be whole; options are rare
    }
    let quoted: [u8; 28] = ctx.load(IP_OFF).map_err(|_| ())?;
    let ip = ipv4_header(20 + 8 + 28, IPPROTO_ICMP, pkt.daddr, pkt.saddr);
    let mut icmp = [0u8; 36];
    icmp[0] = 3; // destination unreachable
    icmp[1] = code;
    let m = mtu.to_be_bytes();
    icmp[6] = m[0];
    icmp[7] = m[1];
    let mut i = 0;
    while i < 28 {
        icmp[8 + i] = quoted[i];
        i += 1;
    }
    let c = finish(add_words(0, &icmp)).to_be_bytes();
    icmp[2] = c[0];
    icmp[3] = c[1];
    // SAFETY: valid skb pointer; plain helper call.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + 20 + 36) as u32, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    ctx.store(IP_OFF, &ip, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 20, &icmp, 0).map_err(|_| ())
}

/// [`reject`] for IPv6.
#[inline(never)]
pub fn reject6(ctx: &TcContext, p: &Ipv6Pkt, reason: DropReason, back: u32) -> i32 {
    drop_reason(reason);
    let built = if p.t.proto == PROTO_TCP {
        tcp_rst6(ctx, p)
    } else if p.later_fragment() || (p.t.proto == PROTO_ICMPV6 && p.icmp_type < 128) {
        Err(()) // never answer an error (RFC 4443 2.4), nor a packet with no header
    } else {
        icmp6_answer(ctx, p, ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACHABLE, 0)
    };
    if built.is_err() {
        return TC_ACT_SHOT as i32;
    }
    send_back(ctx, back)
}

/// [`too_big`] for IPv6: ICMPv6 packet too big with the egress `mtu`.
#[inline(never)]
pub fn too_big6(ctx: &TcContext, p: &Ipv6Pkt, mtu: u16, back: u32) -> i32 {
    drop_reason(DropReason::FragNeeded);
    if p.later_fragment() || p.is_icmp_error() || icmp6_answer(ctx, p, ICMPV6_PACKET_TOO_BIG, 0, mtu as u32).is_err() {
        return TC_ACT_SHOT as i32;
    }
    send_back(ctx, back)
}

/// A 32-bit one's-complement sum folded to 16 bits.
#[inline(always)]
fn fold16(x: u32) -> u16 {
    let s = (x & 0xffff) + (x >> 16);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Writes an IPv6 fixed header (hop limit 64) from `saddr` to `daddr`
/// at the frame's IP offset.
#[inline(always)]
fn store_ipv6_header(ctx: &TcContext, payload_len: u16, next: u8, saddr: &Addr, daddr: &Addr) -> Result<(), ()> {
    let len = payload_len.to_be_bytes();
    let first: [u8; 8] = [0x60, 0, 0, 0, len[0], len[1], next, 64];
    ctx.store(IP_OFF, &first, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 8, &saddr.bytes, 0).map_err(|_| ())?;
    ctx.store(IP_OFF + 24, &daddr.bytes, 0).map_err(|_| ())
}

/// The sum of an IPv6 pseudo-header (the addresses, and the upper layer's
/// length and protocol).
#[inline(always)]
fn pseudo6(saddr: &Addr, daddr: &Addr, upper_len: u32, next: u8) -> u32 {
    add_words(add_words(0, &saddr.bytes), &daddr.bytes) + upper_len + next as u32
}

#[inline(never)]
fn tcp_rst6(ctx: &TcContext, p: &Ipv6Pkt) -> Result<(), ()> {
    if p.t.tcp_flags & TCP_RST != 0 {
        return Err(()); // never answer a RST
    }
    let l4 = p.l4_off as usize;
    let l4_len = (p.end as u32).saturating_sub(l4 as u32);
    let mut tcp = rst_for(ctx, l4, l4_len, p.t.tcp_flags, p.t.sport, p.t.dport)?;
    let c = finish(add_words(pseudo6(&p.t.daddr, &p.t.saddr, 20, PROTO_TCP), &tcp)).to_be_bytes();
    tcp[16] = c[0];
    tcp[17] = c[1];
    // SAFETY: valid skb pointer; plain helper call.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + IPV6_HLEN + 20) as u32, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    store_ipv6_header(ctx, 20, PROTO_TCP, &p.t.daddr, &p.t.saddr)?;
    ctx.store(IP_OFF + IPV6_HLEN, &tcp, 0).map_err(|_| ())
}

/// ICMPv6 destination unreachable (port unreachable), and packet too big.
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PORT_UNREACHABLE: u8 = 4;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// What an ICMPv6 answer quotes: the fixed header and 8 bytes.
const QUOTE6: usize = IPV6_HLEN + 8;

/// An ICMPv6 error of type `ty` and `code` (its 32-bit field: `value`,
/// the MTU of packet too big) from the packet's destination, quoting its
/// fixed header and the first 8 bytes of its upper layer (a packet with
/// extension headers is not answered).
#[inline(never)]
fn icmp6_answer(ctx: &TcContext, p: &Ipv6Pkt, ty: u8, code: u8, value: u32) -> Result<(), ()> {
    if p.l4_off as usize != IP_OFF + IPV6_HLEN {
        return Err(());
    }
    let quoted: [u8; QUOTE6] = ctx.load(IP_OFF).map_err(|_| ())?;
    // The quote's sum by the kernel (`csum_partial`: native-order words,
    // whose folded sum is the byte swap of the network-order one): an
    // unrolled sum of 48 bytes costs this frame more stack than the call
    // chain has.
    // SAFETY: QUOTE6 readable bytes; the helper only reads them.
    let q = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, quoted.as_ptr() as *mut u32, QUOTE6 as u32, 0) };
    if q < 0 {
        return Err(());
    }
    let q = u32::from(fold16(q as u32).swap_bytes());
    let len = (8 + QUOTE6) as u32;
    let v = value.to_be_bytes();
    let mut head: [u8; 8] = [ty, code, 0, 0, v[0], v[1], v[2], v[3]];
    let c = finish(add_words(pseudo6(&p.t.daddr, &p.t.saddr, len, PROTO_ICMPV6), &head) + q).to_be_bytes();
    head[2] = c[0];
    head[3] = c[1];
    // SAFETY: valid skb pointer; plain helper call.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + IPV6_HLEN) as u32 + len, 0) } != 0 {
        return Err(());
    }
    swap_macs(ctx)?;
    // The quote first: it is the start of the packet being overwritten.
    ctx.store(IP_OFF + IPV6_HLEN + 8, &quoted, 0).map_err(|_| ())?;
    store_ipv6_header(ctx, len as u16, PROTO_ICMPV6, &p.t.daddr, &p.t.saddr)?;
    ctx.store(IP_OFF + IPV6_HLEN, &head, 0).map_err(|_| ())
}
