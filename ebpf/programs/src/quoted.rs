//! The packet an ICMP error quotes, for either family: read from the
//! error into scratch space ([`Inner`]), and its addresses and ports
//! rewritten with the checksums they feed ([`Quoting`]).
//!
//! - IPv4: the quoted header has a checksum of its own, and ICMP's
//!   checksum covers no pseudo-header.
//! - IPv6: the quoted header has no checksum; ICMPv6's checksum covers
//!   the pseudo-header (the error's own addresses) and the quote.
//!
//! The quoted L4 checksum is left as it is: it covers a datagram nobody
//! has, and no receiver checks it.

use aya_ebpf::programs::TcContext;
use weir_common::{
    addr::Addr,
    lb::{PROTO_TCP, PROTO_UDP},
};
use weir_logic::ipv6::{self, IPV6_HLEN};

use crate::{
    family::Packet,
    hdr::{Ipv4Pkt, Ipv6Pkt, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IP6_DADDR_OFF, IP6_SADDR_OFF, IP_CSUM_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, PROTO_ICMP, PROTO_ICMPV6},
    maps::scratch,
    nat, policy,
    policy::Tuple,
};

/// The header an ICMP error quotes: the packet that caused it.
#[derive(Clone, Copy)]
pub struct Inner {
    pub t: Tuple,
    /// Offset of the quoted IP header.
    pub ip_off: u32,
    /// Offset of the quoted L4 header.
    pub l4_off: u32,
}

/// An ICMP error of either family, as `icmp` translates it.
pub trait Quoting: Packet {
    /// An ICMP error (not a later fragment): it answers a packet of some
    /// other flow.
    fn is_error(&self) -> bool;
    /// Reads the quoted header into `scratch().icmp_inner`; false when it
    /// cannot be read whole (the IP header, its extension headers, and 8
    /// bytes of L4, within the packet), or quotes what no error may (an
    /// error, or a later fragment).
    fn read_quoted(&self, ctx: &TcContext) -> bool;
    /// Offset of the ICMP checksum.
    fn icmp_csum_off(&self) -> usize;
    /// Rewrites the error's own source (`dst` false) or destination
    /// address to `new`.
    fn set_error_addr(&mut self, ctx: &TcContext, dst: bool, new: &Addr) -> Result<(), ()>;
    /// Rewrites the quoted header's source (`dst` false) or destination
    /// address (as read into `scratch().icmp_inner`) to `new`.
    fn set_quoted_addr(&self, ctx: &TcContext, dst: bool, new: &Addr) -> Result<(), ()>;
    /// Whether either end of the error is under a policy.
    fn error_enforced(&self) -> bool;
}

/// Rewrites a port (or echo identifier) of the quoted header at `off`.
#[inline(always)]
pub fn set_quoted_port<P: Quoting>(ctx: &TcContext, pkt: &P, off: usize, old: u16, new: u16) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l4_csum_replace(pkt.icmp_csum_off(), old as u64, new as u64, 2).map_err(|_| ())
}

/// The quoted packet's ports, or its echo identifier for both; `None`
/// for an error quoting an error (which does not exist: RFC 1122,
/// RFC 4443 2.4). `w` is the quoted L4 header's first 8 bytes.
#[inline(always)]
fn quoted_ports(proto: u8, w: &[u8; 8]) -> Option<(u16, u16)> {
    if proto == PROTO_TCP || proto == PROTO_UDP {
        return Some((u16::from_ne_bytes([w[0], w[1]]), u16::from_ne_bytes([w[2], w[3]])));
    }
    let echo = match proto {
        PROTO_ICMP => w[0] == ICMP_ECHO_REQUEST || w[0] == ICMP_ECHO_REPLY,
        PROTO_ICMPV6 => w[0] == ICMPV6_ECHO_REQUEST || w[0] == ICMPV6_ECHO_REPLY,
        _ => return Some((0, 0)),
    };
    let id = u16::from_ne_bytes([w[4], w[5]]);
    echo.then_some((id, id))
}

/// IPv4: the quoted header and 8 bytes of L4.
#[inline(never)]
fn read_quoted_v4(ctx: &TcContext, pkt: &Ipv4Pkt) -> bool {
    let Some(s) = scratch() else { return false };
    let off = pkt.l4() + 8;
    let Ok(vihl) = ctx.load::<u8>(off) else { return false };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return false;
    }
    let l4 = off + ihl;
    if l4 + 8 > IP_OFF + pkt.tot_len as usize {
        return false;
    }
    let (Ok(proto), Ok(saddr), Ok(daddr), Ok(w)) = (ctx.load::<u8>(off + 9), ctx.load::<u32>(off + 12), ctx.load::<u32>(off + 16), ctx.load::<[u8; 8]>(l4)) else {
        return false;
    };
    let Some((sport, dport)) = quoted_ports(proto, &w) else { return false };
    s.icmp_inner = Inner {
        t: Tuple { saddr: Addr::from_v4_raw(saddr), daddr: Addr::from_v4_raw(daddr), sport, dport, proto, tcp_flags: 0 },
        ip_off: off as u32,
        l4_off: l4 as u32,
    };
    true
}

/// IPv6: the quoted fixed header, its extension headers walked, and 8
/// bytes of the upper layer.
#[inline(never)]
fn read_quoted_v6(ctx: &TcContext, p: &Ipv6Pkt) -> bool {
    let Some(s) = scratch() else { return false };
    let (ip, end) = (p.l4_off as usize + 8, p.end as usize);
    if ip + IPV6_HLEN > end {
        return false;
    }
    let (Ok(first), Ok(saddr), Ok(daddr)) = (ctx.load::<u8>(ip + 6), ctx.load::<[u8; 16]>(ip + 8), ctx.load::<[u8; 16]>(ip + 24)) else {
        return false;
    };
    let Ok(upper) = ipv6::walk(first, end - ip, |off| if ip + off + 8 <= end { ctx.load::<[u8; 8]>(ip + off).ok() } else { None }) else {
        return false;
    };
    if upper.frag.is_some_and(|f| f.is_later()) {
        return false; // no ports to match: related to nothing
    }
    let l4 = ip + upper.off;
    if l4 + 8 > end {
        return false;
    }
    let Ok(w) = ctx.load::<[u8; 8]>(l4) else { return false };
    let Some((sport, dport)) = quoted_ports(upper.proto, &w) else { return false };
    s.icmp_inner = Inner {
        t: Tuple { saddr: Addr { bytes: saddr }, daddr: Addr { bytes: daddr }, sport, dport, proto: upper.proto, tcp_flags: 0 },
        ip_off: ip as u32,
        l4_off: l4 as u32,
    };
    // IPv4-mapped addresses never travel in IPv6 (see `hdr::parse_v6`):
    // quoted, they would name an IPv4 flow. (Checked in scratch space: two
    // addresses built on the stack would take the deepest chains past
    // 512 bytes.)
    let t = &s.icmp_inner.t;
    !(t.saddr.is_v4() || t.daddr.is_v4())
}

impl Quoting for Ipv4Pkt {
    #[inline(always)]
    fn is_error(&self) -> bool {
        self.is_icmp_error()
    }

    #[inline(always)]
    fn read_quoted(&self, ctx: &TcContext) -> bool {
        read_quoted_v4(ctx, self)
    }

    #[inline(always)]
    fn icmp_csum_off(&self) -> usize {
        self.l4() + 2
    }

    /// The IP header checksum follows; ICMP has no pseudo-header.
    #[inline(always)]
    fn set_error_addr(&mut self, ctx: &TcContext, dst: bool, new: &Addr) -> Result<(), ()> {
        let new = new.v4_raw();
        let (off, old) = if dst { (IP_DADDR_OFF, self.daddr) } else { (IP_SADDR_OFF, self.saddr) };
        if old == new {
            return Ok(());
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4).map_err(|_| ())?;
        ctx.store(off, &new, 0).map_err(|_| ())?;
        if dst {
            self.daddr = new;
        } else {
            self.saddr = new;
        }
        Ok(())
    }

    /// The quoted header's checksum follows, and the ICMP checksum
    /// follows both changes.
    #[inline(always)]
    fn set_quoted_addr(&self, ctx: &TcContext, dst: bool, new: &Addr) -> Result<(), ()> {
        let i = &scratch().ok_or(())?.icmp_inner;
        let (old, new) = (if dst { i.t.daddr.v4_raw() } else { i.t.saddr.v4_raw() }, new.v4_raw());
        if old == new {
            return Ok(());
        }
        let ip = i.ip_off as usize;
        let (off, csum_off, icmp_csum) = (if dst { ip + 16 } else { ip + 12 }, ip + 10, self.icmp_csum_off());
        let old_sum: u16 = ctx.load(csum_off).map_err(|_| ())?;
        ctx.l3_csum_replace(csum_off, old as u64, new as u64, 4).map_err(|_| ())?;
        let new_sum: u16 = ctx.load(csum_off).map_err(|_| ())?;
        ctx.store(off, &new, 0).map_err(|_| ())?;
        ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 4).map_err(|_| ())?;
        ctx.l4_csum_replace(icmp_csum, old_sum as u64, new_sum as u64, 2).map_err(|_| ())
    }

    #[inline(always)]
    fn error_enforced(&self) -> bool {
        policy::error_enforced(self)
    }
}

impl Quoting for Ipv6Pkt {
    #[inline(always)]
    fn is_error(&self) -> bool {
        self.is_icmp_error()
    }

    #[inline(always)]
    fn read_quoted(&self, ctx: &TcContext) -> bool {
        read_quoted_v6(ctx, self)
    }

    #[inline(always)]
    fn icmp_csum_off(&self) -> usize {
        self.l4_off as usize + 2
    }

    /// The ICMPv6 checksum's pseudo-header follows (`nat::rewrite_addr6`).
    #[inline(always)]
    fn set_error_addr(&mut self, ctx: &TcContext, dst: bool, new: &Addr) -> Result<(), ()> {
        if dst {
            nat::rewrite_addr6(ctx, self, IP6_DADDR_OFF, &self.t.daddr, new)?;
            self.t.daddr = *new;
        } else {
            nat::rewrite_addr6(ctx, self, IP6_SADDR_OFF, &self.t.saddr, new)?;
            self.t.saddr = *new;
        }
        Ok(())
    }

    /// The quote is ICMPv6 payload: its checksum follows by the
    /// difference of the two addresses.
    #[inline(never)]
    fn set_quoted_addr(&self, ctx: &TcContext, dst: bool, new: &Addr) -> Result<(), ()> {
        let i = &scratch().ok_or(())?.icmp_inner;
        let old = if dst { &i.t.daddr } else { &i.t.saddr };
        if old == new {
            return Ok(());
        }
        let off = i.ip_off as usize + if dst { 24 } else { 8 };
        let diff = nat::addr6_diff(old, new)?;
        ctx.l4_csum_replace(self.icmp_csum_off(), 0, diff, 0).map_err(|_| ())?;
        ctx.store(off, &new.bytes, 0).map_err(|_| ())
    }

    #[inline(always)]
    fn error_enforced(&self) -> bool {
        policy::flow_enforced(&self.t)
    }
}
