//! Packet parsing: Ethernet, then IPv4 (+ TCP/UDP/ICMP) or IPv6 addresses,
//! through bpf_skb_load_bytes (no direct packet access, so no bounds games
//! with the verifier). Parsing is strict: a header the program cannot read
//! whole is `Frame::Malformed`, and the caller drops it; nothing unreadable
//! is ever passed.

use aya_ebpf::programs::TcContext;
use weir_common::drop::DropReason;
use weir_logic::ipv6::{self, Upper};
use weir_common::{
    addr::Addr,
    lb::{PROTO_TCP, PROTO_UDP},
};
pub use weir_common::lb::PROTO_ICMP;

pub const ETH_HLEN: usize = 14;
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
pub const IP6_HOP_LIMIT_OFF: usize = IP_OFF + 7;
pub const IP6_SADDR_OFF: usize = IP_OFF + 8;
pub const IP6_DADDR_OFF: usize = IP_OFF + 24;

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment of a datagram (offset 0, more fragments).
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header; its ports come from `WEIR_FRAGS`.
pub const FRAG_LATER: u8 = 2;

/// A parsed IPv4 packet. Addresses and ports are kept exactly as on the
/// wire (network order in memory). 8-aligned, so it is set up with word
/// stores (see [`Ipv4Pkt::zeroed`]).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
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
    /// Don't Fragment is set: a router must answer a packet too big for
    /// its next hop with ICMP fragmentation needed, not fragment it.
    pub df: bool,
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

    /// An all-zero packet written in place, as 64-bit words: returning
    /// one by value would copy it out, and LLVM turns a copy of known
    /// zeroes back into a byte-wise `memset` call, on every packet.
    #[inline(always)]
    pub fn zero_in(slot: &mut core::mem::MaybeUninit<Ipv4Pkt>) -> &mut Ipv4Pkt {
        const WORDS: usize = core::mem::size_of::<Ipv4Pkt>() / 8;
        let w = slot.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < WORDS {
            // SAFETY: in bounds of the 8-aligned value; volatile keeps
            // LLVM from turning the loop into memset.
            unsafe { core::ptr::write_volatile(w.add(i), 0) };
            i += 1;
        }
        // SAFETY: every byte was written; all-zero is a valid Ipv4Pkt.
        unsafe { slot.assume_init_mut() }
    }
}

const _: () = assert!(core::mem::size_of::<Ipv4Pkt>() % 8 == 0);

/// A flow's tuple as the pods see it (after service DNAT), wire order,
/// for either address family (IPv4 as `::ffff:a.b.c.d`).
#[derive(Clone, Copy)]
pub struct Tuple {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
}

impl Tuple {
    #[inline(always)]
    pub fn of(pkt: &Ipv4Pkt) -> Self {
        Tuple { saddr: Addr::from_v4_raw(pkt.saddr), daddr: Addr::from_v4_raw(pkt.daddr), sport: pkt.sport, dport: pkt.dport, proto: pkt.proto, tcp_flags: pkt.tcp_flags }
    }
}

/// ICMPv6 message types the pod hooks tell apart.
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_PARAMETER_PROBLEM: u8 = 4;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// A parsed IPv6 packet: its flow (ICMPv6 echo's identifier stands in
/// for both ports, as ICMP's does) and what the pod hooks judge besides.
#[derive(Clone, Copy)]
pub struct Ipv6Pkt {
    pub t: Tuple,
    /// Offset of the upper-layer header in the frame.
    pub l4_off: u16,
    /// The end of the IPv6 payload in the frame.
    pub end: u16,
    pub hop_limit: u8,
    /// ICMPv6: the message type.
    pub icmp_type: u8,
    /// `FRAG_NONE`, `FRAG_FIRST` or `FRAG_LATER`.
    pub frag: u8,
    /// The fragment header's identification (network order as read).
    pub frag_id: u32,
}

impl Ipv6Pkt {
    #[inline(always)]
    pub fn later_fragment(&self) -> bool {
        self.frag == FRAG_LATER
    }

    /// An ICMPv6 error (RFC 4443 types 1 to 4): it answers a packet of
    /// some other flow.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.t.proto == PROTO_ICMPV6 && self.frag != FRAG_LATER && (ICMPV6_DEST_UNREACH..=ICMPV6_PARAMETER_PROBLEM).contains(&self.icmp_type)
    }
}

/// The IPv6 fixed header, read whole.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ip6Fixed {
    /// Version, traffic class, flow label, payload length, next header,
    /// hop limit.
    head: [u8; 8],
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// Parses the IPv6 packet of an IPv6 frame into `out`: its extension
/// headers walked ([`v6_upper`]), its payload within the frame, and the
/// upper layer's ports, flags or ICMPv6 type read. As for IPv4, each
/// header is read with one `bpf_skb_load_bytes`: the fixed header whole,
/// then the upper layer's first bytes (16 for TCP: ports and flags).
#[inline(always)]
pub fn parse_v6(ctx: &TcContext, out: &mut Ipv6Pkt) -> Result<(), DropReason> {
    let h: Ip6Fixed = ctx.load(IP_OFF).map_err(|_| DropReason::Malformed)?;
    let (upper, end) = v6_upper_of(ctx, h.head)?;
    let l4 = IP_OFF + upper.off;
    out.t = Tuple { saddr: Addr { bytes: h.saddr }, daddr: Addr { bytes: h.daddr }, sport: 0, dport: 0, proto: upper.proto, tcp_flags: 0 };
    // No IPv4-mapped address travels in an IPv6 header (RFC 4291
    // 2.5.5.2), and the maps hold IPv4 in that form: one on the wire
    // could pass for an IPv4 frontend or flow.
    if out.t.saddr.is_v4() || out.t.daddr.is_v4() {
        return Err(DropReason::Malformed);
    }
    out.l4_off = l4 as u16;
    out.end = end as u16;
    out.hop_limit = h.head[7];
    out.icmp_type = 0;
    out.frag = FRAG_NONE;
    out.frag_id = 0;
    if let Some(f) = upper.frag {
        out.frag_id = f.id;
        if f.is_later() {
            out.frag = FRAG_LATER;
            return Ok(());
        }
        if f.more {
            out.frag = FRAG_FIRST;
        }
    }
    if upper.proto == PROTO_TCP {
        // `v6_upper` saw the whole 20-byte header in the packet.
        let w: [u8; 16] = ctx.load(l4).map_err(|_| DropReason::Malformed)?;
        out.t.sport = u16::from_ne_bytes([w[0], w[1]]);
        out.t.dport = u16::from_ne_bytes([w[2], w[3]]);
        out.t.tcp_flags = w[13];
        return Ok(());
    }
    let w: [u8; 8] = match upper.proto {
        PROTO_UDP | PROTO_ICMPV6 => ctx.load(l4).map_err(|_| DropReason::Malformed)?,
        _ => return Ok(()),
    };
    match upper.proto {
        PROTO_UDP => {
            out.t.sport = u16::from_ne_bytes([w[0], w[1]]);
            out.t.dport = u16::from_ne_bytes([w[2], w[3]]);
        }
        _ => {
            out.icmp_type = w[0];
            if w[0] == ICMPV6_ECHO_REQUEST || w[0] == ICMPV6_ECHO_REPLY {
                let id = u16::from_ne_bytes([w[4], w[5]]);
                out.t.sport = id;
                out.t.dport = id;
            }
        }
    }
    Ok(())
}

/// The IPv6 source and destination of the frame (for IPv6 frames).
#[inline(always)]
pub fn v6_addrs(ctx: &TcContext) -> (Addr, Addr) {
    let s = ctx.load::<[u8; 16]>(IP6_SADDR_OFF).unwrap_or([0; 16]);
    let d = ctx.load::<[u8; 16]>(IP6_DADDR_OFF).unwrap_or([0; 16]);
    (Addr { bytes: s }, Addr { bytes: d })
}

/// An IPv6 packet's upper layer, its extension headers walked
/// (`weir_logic::ipv6::walk`) within the payload the fixed header
/// announces, and where that payload ends in the frame.
/// `Err(Ipv6HeaderChain)` for a chain that cannot be walked,
/// `Err(Malformed)` for a payload longer than the frame, or when the
/// upper layer's first 8 bytes (ports, ICMPv6 type) are not in the packet
/// although no later fragment explains it (RFC 7112: the first fragment
/// holds the whole header chain).
#[inline(always)]
pub fn v6_upper(ctx: &TcContext) -> Result<(Upper, usize), DropReason> {
    let h: [u8; 8] = ctx.load(IP_OFF).map_err(|_| DropReason::Malformed)?;
    v6_upper_of(ctx, h)
}

/// [`v6_upper`] of the fixed header's first 8 bytes `h`, already read.
#[inline(always)]
fn v6_upper_of(ctx: &TcContext, h: [u8; 8]) -> Result<(Upper, usize), DropReason> {
    let end = IP_OFF + ipv6::IPV6_HLEN + u16::from_be_bytes([h[4], h[5]]) as usize;
    if h[0] >> 4 != 6 || end > ctx.len() as usize {
        return Err(DropReason::Malformed);
    }
    let upper = ipv6::walk(h[6], end - IP_OFF, |off| if IP_OFF + off + 8 <= end { ctx.load::<[u8; 8]>(IP_OFF + off).ok() } else { None })
        .map_err(|_| DropReason::Ipv6HeaderChain)?;
    let later = upper.frag.is_some_and(|f| f.is_later());
    if !later && matches!(upper.proto, PROTO_TCP | PROTO_UDP | PROTO_ICMPV6) && IP_OFF + upper.off + min_l4(upper.proto) > end {
        return Err(DropReason::Malformed);
    }
    Ok((upper, end))
}

pub use weir_common::lb::PROTO_ICMPV6;

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
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => 0,
    }
}

/// Parses an IPv4 packet into `pkt`; `None` when it is malformed. Each
/// header is read with one `bpf_skb_load_bytes` (a helper call per field
/// would cost more than the rest of the parse).
#[inline(always)]
fn parse_v4(ctx: &TcContext, out: &mut Ipv4Pkt) -> Option<()> {
    let h: [u32; 5] = ctx.load(IP_OFF).ok()?;
    let [vihl, _tos, len_hi, len_lo] = h[0].to_ne_bytes();
    let [id_hi, id_lo, frag_hi, frag_lo] = h[1].to_ne_bytes();
    let [ttl, proto, _, _] = h[2].to_ne_bytes();
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl_bytes = ((vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes([len_hi, len_lo]);
    if ihl_bytes < 20 || (tot_len as usize) < ihl_bytes || tot_len as usize + ETH_HLEN > ctx.len() as usize {
        return None;
    }
    let frag_field = u16::from_be_bytes([frag_hi, frag_lo]);
    let offset = frag_field & 0x1fff;
    let more = frag_field & 0x2000 != 0;
    let df = frag_field & 0x4000 != 0;
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
    let pkt = out;
    pkt.saddr = h[3];
    pkt.daddr = h[4];
    pkt.proto = proto;
    pkt.frag = frag;
    pkt.ttl = ttl;
    pkt.l4_off = l4_off as u16;
    pkt.tot_len = tot_len;
    pkt.id = u16::from_ne_bytes([id_hi, id_lo]);
    pkt.ihl_bytes = ihl_bytes as u16;
    pkt.df = df;
    if frag == FRAG_LATER {
        return Some(());
    }
    if payload < min_l4(proto) {
        return None;
    }
    if proto == PROTO_TCP {
        // Ports, sequence, acknowledgment, data offset and flags.
        let t: [u32; 4] = ctx.load(l4_off).ok()?;
        let [sp_hi, sp_lo, dp_hi, dp_lo] = t[0].to_ne_bytes();
        let [doff, flags, _, _] = t[3].to_ne_bytes();
        let doff = ((doff >> 4) as usize) * 4;
        if doff < 20 || doff > payload {
            return None;
        }
        pkt.sport = u16::from_ne_bytes([sp_hi, sp_lo]);
        pkt.dport = u16::from_ne_bytes([dp_hi, dp_lo]);
        pkt.tcp_flags = flags;
    } else if proto == PROTO_UDP {
        let [sp_hi, sp_lo, dp_hi, dp_lo] = ctx.load::<u32>(l4_off).ok()?.to_ne_bytes();
        pkt.sport = u16::from_ne_bytes([sp_hi, sp_lo]);
        pkt.dport = u16::from_ne_bytes([dp_hi, dp_lo]);
    } else if proto == PROTO_ICMP {
        let [ty, _code, _, _, id_hi, id_lo, _, _] = ctx.load::<u64>(l4_off).ok()?.to_ne_bytes();
        pkt.icmp_type = ty;
        // An echo and its reply share the identifier: it stands in for
        // both ports, so conntrack matches the reply reversed.
        if ty == ICMP_ECHO_REQUEST || ty == ICMP_ECHO_REPLY {
            let id = u16::from_ne_bytes([id_hi, id_lo]);
            pkt.sport = id;
            pkt.dport = id;
        }
    }
    Some(())
}
