//! Packet parsing: Ethernet + IPv4 + TCP/UDP, through bpf_skb_load_bytes
//! (no direct packet access, so no bounds games with the verifier).

use aya_ebpf::programs::TcContext;
use weir_common::lb::{PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const PROTO_ICMP: u8 = 1;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
pub const ETH_P_IP: u16 = 0x0800;
pub const IP_OFF: usize = ETH_HLEN;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

/// A parsed IPv4 packet. Addresses and ports are kept exactly as on the
/// wire (network order in memory).
#[derive(Clone, Copy)]
pub struct Ipv4Pkt {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// IP total length (host order).
    pub tot_len: u16,
    /// IP header length in bytes.
    pub ihl_bytes: usize,
    /// Not the first fragment: no L4 header.
    pub later_fragment: bool,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// ICMP: the message type.
    pub icmp_type: u8,
}

impl Ipv4Pkt {
    #[inline(always)]
    pub fn is_tcp_udp(&self) -> bool {
        (self.proto == PROTO_TCP || self.proto == PROTO_UDP) && !self.later_fragment
    }

    /// An ICMP error: it answers a packet of some other flow.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.proto == PROTO_ICMP
            && (self.icmp_type == ICMP_DEST_UNREACH || self.icmp_type == ICMP_TIME_EXCEEDED || self.icmp_type == ICMP_PARAMETER_PROBLEM)
    }

    /// Offset of the L4 checksum.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == PROTO_TCP { self.l4_off + 16 } else { self.l4_off + 6 }
    }
}

/// Parses an IPv4 packet; `None` for anything else.
#[inline(always)]
pub fn parse_v4(ctx: &TcContext) -> Option<Ipv4Pkt> {
    let eth_proto: u16 = ctx.load(12).ok()?;
    if u16::from_be(eth_proto) != ETH_P_IP {
        return None;
    }
    let vihl: u8 = ctx.load(IP_OFF).ok()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl_bytes = ((vihl & 0x0f) as usize) * 4;
    if ihl_bytes < 20 {
        return None;
    }
    let tot_len = u16::from_be(ctx.load::<u16>(IP_OFF + 2).ok()?);
    let frag = u16::from_be(ctx.load::<u16>(IP_OFF + 6).ok()?);
    let proto: u8 = ctx.load(IP_OFF + 9).ok()?;
    let saddr: u32 = ctx.load(IP_SADDR_OFF).ok()?;
    let daddr: u32 = ctx.load(IP_DADDR_OFF).ok()?;
    let l4_off = IP_OFF + ihl_bytes;
    let later_fragment = frag & 0x1fff != 0;
    let mut pkt = Ipv4Pkt {
        saddr,
        daddr,
        proto,
        l4_off,
        tot_len,
        ihl_bytes,
        later_fragment,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
    };
    if !later_fragment && (proto == PROTO_TCP || proto == PROTO_UDP) {
        pkt.sport = ctx.load(l4_off).ok()?;
        pkt.dport = ctx.load(l4_off + 2).ok()?;
        if proto == PROTO_TCP {
            pkt.tcp_flags = ctx.load(l4_off + 13).ok()?;
        }
    } else if !later_fragment && proto == PROTO_ICMP {
        pkt.icmp_type = ctx.load(l4_off).ok()?;
        // An echo and its reply share the identifier: it stands in for
        // both ports, so conntrack matches the reply reversed.
        if pkt.icmp_type == ICMP_ECHO_REQUEST || pkt.icmp_type == ICMP_ECHO_REPLY {
            let id: u16 = ctx.load(l4_off + 4).ok()?;
            pkt.sport = id;
            pkt.dport = id;
        }
    }
    Some(pkt)
}
