//! Packet parsing: Ethernet, then IPv4 (+ TCP/UDP/ICMP) or IPv6 addresses,
//! through bpf_skb_load_bytes (no direct packet access, so no bounds games
//! with the verifier). Parsing is strict: a header the program cannot read
//! whole is `Frame::Malformed`, and the caller drops it; nothing unreadable
//! is ever passed.

use aya_ebpf::programs::TcContext;
use weir_common::{
    addr::Addr,
    lb::{PROTO_TCP, PROTO_UDP},
};

pub const ETH_HLEN: usize = 14;
pub const PROTO_ICMP: u8 = 1;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IP_OFF: usize = ETH_HLEN;
pub const IP_TTL_OFF: usize = IP_OFF + 8;
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment of a datagram (offset 0, more fragments).
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header; its ports come from `WEIR_FRAGS`.
pub const FRAG_LATER: u8 = 2;

/// A parsed IPv4 packet. Addresses and ports are kept exactly as on the
/// wire (network order in memory).
#[derive(Clone, Copy)]
pub struct Ipv4Pkt {
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    /// `FRAG_NONE`, `FRAG_FIRST` or `FRAG_LATER`.
    pub frag: u8,
    pub ttl: u8,
    pub tcp_flags: u8,
    /// Offset of the L4 header.
    pub l4_off: u16,
    /// IP total length (host order).
    pub tot_len: u16,
    /// IP identification (wire order).
    pub id: u16,
    /// IP header length in bytes.
    pub ihl_bytes: u16,
    pub sport: u16,
    pub dport: u16,
    /// ICMP: the message type.
    pub icmp_type: u8,
}

/// What a frame is ([`parse`]'s result).
pub const FRAME_V4: u8 = 0;
pub const FRAME_V6: u8 = 1;
pub const FRAME_ARP: u8 = 2;
/// Any other EtherType.
pub const FRAME_OTHER: u8 = 3;
/// An IP header, or the L4 header it announces, that cannot be read whole
/// or whose lengths do not add up.
pub const FRAME_MALFORMED: u8 = 4;

impl Ipv4Pkt {
    #[inline(always)]
    pub fn is_tcp_udp(&self) -> bool {
        self.proto == PROTO_TCP || self.proto == PROTO_UDP
    }

    #[inline(always)]
    pub fn later_fragment(&self) -> bool {
        self.frag == FRAG_LATER
    }

    /// An ICMP error: it answers a packet of some other flow.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.proto == PROTO_ICMP
            && self.frag != FRAG_LATER
            && (self.icmp_type == ICMP_DEST_UNREACH || self.icmp_type == ICMP_TIME_EXCEEDED || self.icmp_type == ICMP_PARAMETER_PROBLEM)
    }

    /// Offset of the L4 checksum (TCP or UDP).
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4() + if self.proto == PROTO_TCP { 16 } else { 6 }
    }

    /// Offset of the L4 header.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        self.l4_off as usize
    }

    pub const EMPTY: Ipv4Pkt = Ipv4Pkt {
        saddr: 0,
        daddr: 0,
        proto: 0,
        frag: FRAG_NONE,
        ttl: 0,
        tcp_flags: 0,
        l4_off: 0,
        tot_len: 0,
        id: 0,
        ihl_bytes: 0,
        sport: 0,
        dport: 0,
        icmp_type: 0,
    };
}

/// The IPv6 source and destination of the frame (for IPv6 frames).
#[inline(always)]
pub fn v6_addrs(ctx: &TcContext) -> (Addr, Addr) {
    let s = ctx.load::<[u8; 16]>(IP_OFF + 8).unwrap_or([0; 16]);
    let d = ctx.load::<[u8; 16]>(IP_OFF + 24).unwrap_or([0; 16]);
    (Addr { bytes: s }, Addr { bytes: d })
}

/// Parses the frame at the start of the skb; an IPv4 packet is written
/// to `pkt`. Returns a `FRAME_*` kind.
#[inline(always)]
pub fn parse(ctx: &TcContext, pkt: &mut Ipv4Pkt) -> u8 {
    let Ok(eth_proto) = ctx.load::<u16>(12) else { return FRAME_MALFORMED };
    match u16::from_be(eth_proto) {
        ETH_P_IP => {
            if parse_v4(ctx, pkt).is_some() {
                FRAME_V4
            } else {
                FRAME_MALFORMED
            }
        }
        ETH_P_IPV6 => {
            if (ctx.len() as usize) < IP_OFF + 40 {
                FRAME_MALFORMED
            } else {
                FRAME_V6
            }
        }
        ETH_P_ARP => FRAME_ARP,
        _ => FRAME_OTHER,
    }
}

/// The minimal L4 header a packet (or first fragment) of `proto` must
/// carry whole: TCP 20 bytes, UDP and ICMP 8.
#[inline(always)]
fn min_l4(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 20,
        PROTO_UDP | PROTO_ICMP => 8,
        _ => 0,
    }
}

/// Parses an IPv4 packet into `pkt`; `None` when it is malformed.
#[inline(always)]
fn parse_v4(ctx: &TcContext, out: &mut Ipv4Pkt) -> Option<()> {
    let vihl: u8 = ctx.load(IP_OFF).ok()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl_bytes = ((vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(ctx.load::<u16>(IP_OFF + 2).ok()?);
    if ihl_bytes < 20 || (tot_len as usize) < ihl_bytes || tot_len as usize + ETH_HLEN > ctx.len() as usize {
        return None;
    }
    let id: u16 = ctx.load(IP_OFF + 4).ok()?;
    let frag_field = u16::from_be(ctx.load::<u16>(IP_OFF + 6).ok()?);
    let ttl: u8 = ctx.load(IP_OFF + 8).ok()?;
    let proto: u8 = ctx.load(IP_OFF + 9).ok()?;
    let saddr: u32 = ctx.load(IP_SADDR_OFF).ok()?;
    let daddr: u32 = ctx.load(IP_DADDR_OFF).ok()?;
    let offset = frag_field & 0x1fff;
    let more = frag_field & 0x2000 != 0;
    let frag = if offset != 0 {
        FRAG_LATER
    } else if more {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    // RFC 1858: a TCP fragment at offset 8 can only exist to overwrite the
    // flags of the first one.
    if frag == FRAG_LATER && proto == PROTO_TCP && offset == 1 {
        return None;
    }
    let l4_off = IP_OFF + ihl_bytes;
    let payload = tot_len as usize - ihl_bytes;
    *out = Ipv4Pkt {
        saddr,
        daddr,
        proto,
        frag,
        ttl,
        tcp_flags: 0,
        l4_off: l4_off as u16,
        tot_len,
        id,
        ihl_bytes: ihl_bytes as u16,
        sport: 0,
        dport: 0,
        icmp_type: 0,
    };
    let pkt = out;
    if frag == FRAG_LATER {
        return Some(());
    }
    if payload < min_l4(proto) {
        return None;
    }
    if proto == PROTO_TCP || proto == PROTO_UDP {
        pkt.sport = ctx.load(l4_off).ok()?;
        pkt.dport = ctx.load(l4_off + 2).ok()?;
        if proto == PROTO_TCP {
            let doff = ((ctx.load::<u8>(l4_off + 12).ok()? >> 4) as usize) * 4;
            if doff < 20 || doff > payload {
                return None;
            }
            pkt.tcp_flags = ctx.load(l4_off + 13).ok()?;
        }
    } else if proto == PROTO_ICMP {
        pkt.icmp_type = ctx.load(l4_off).ok()?;
        // An echo and its reply share the identifier: it stands in for
        // both ports, so conntrack matches the reply reversed.
        if pkt.icmp_type == ICMP_ECHO_REQUEST || pkt.icmp_type == ICMP_ECHO_REPLY {
            let id: u16 = ctx.load(l4_off + 4).ok()?;
            pkt.sport = id;
            pkt.dport = id;
        }
    }
    Some(())
}
