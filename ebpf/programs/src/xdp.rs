//! The XDP fast path on the uplinks (`--xdp`), IPv4 and IPv6: a packet of an
//! established service flow whose translated packet leaves by the device
//! it came in on — to a backend on another node under native routing, or
//! that backend's reply on its way back to the outside client — is
//! translated and sent back out (`XDP_TX`) before the kernel builds an
//! skb for it. The translation is the flow's own conntrack entries,
//! exactly as tc's `lb::forward`/`lb::reverse` use them (state advanced,
//! expiry pushed, twin synced); XDP never creates or removes state.
//!
//! Everything else passes to tc's `from_net` untouched, which decides
//! exactly as without XDP: new flows (created, judged by policy and
//! counted there), every TCP SYN (a new flow or a reopened tuple) and
//! whatever comes before the backend's answer, flows tc is rebuilding (a
//! half evicted), a backend that went away,
//! fragments, IP options (IPv6: any extension header), ICMP, a TTL (hop
//! limit) about to run out, destinations on other devices (local pods,
//! the tunnel), and any source that claims one of this node's pods (tc
//! drops and counts it).
//!
//! Each family parses in a frame of its own ([`v4`], [`v6`]); the lookups
//! ([`reply`], [`forward`]) are written once, generic over the frame's
//! address type ([`FrameAddr`]: `u32` or `Addr`).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::bpf_fib_lookup as fib_lookup,
    programs::XdpContext,
    EbpfContext as _,
};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CT_F_HAIRPIN, CT_STATE_SYN, CT_SVC_FWD, CT_SVC_REV, DIR_ORIG, DIR_REPLY},
    lb::{FrontendKey, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL},
};
use weir_logic::{
    csum::{apply_diff, replace16, replace32},
    ct::{backend_sees_in, is_alive, source_translated, TCP_SYN},
    frontend::{external_entry, Origin},
};

use crate::{
    conntrack::{self, key, lookup, sync_twin, touch, Ct, Family},
    lb,
    maps::{read, scratch, FRONTENDS, XDP_STATS},
    nat::addr6_diff,
    source,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IP_HLEN: usize = 20;
const L4: usize = ETH_HLEN + IP_HLEN;
const IP6_HLEN: usize = 40;
const L4_V6: usize = ETH_HLEN + IP6_HLEN;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// `WEIR_XDP_STATS` slots.
pub const XDP_FORWARDED: u32 = 0;
pub const XDP_REPLIED: u32 = 1;

#[repr(C)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    csum: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
struct Ipv6Hdr {
    vtc_flow: u32,
    payload_len: u16,
    next_hdr: u8,
    hop_limit: u8,
    saddr: Addr,
    daddr: Addr,
}

/// A pointer to `T` at `off`, when the packet holds it.
#[inline(always)]
fn at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// The packet's flow, as parsed (addresses and ports in network order).
struct Flow {
    src: Addr,
    dst: Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    ingress: u32,
}

/// The rewrite of one packet: addresses (of the packet's family) and
/// ports, network order.
struct Rewrite<A> {
    saddr: A,
    daddr: A,
    sport: u16,
    dport: u16,
}

/// An address as a frame of one family carries it: the IPv4 rewrite
/// stays 4 bytes an address, which keeps the IPv4 chain's frames as they
/// were before IPv6 came to XDP.
trait FrameAddr: Family {
    /// A map's address (of this family: a flow never mixes families).
    fn narrow(a: &Addr) -> Self;
    /// Sets the FIB lookup's family, source and destination.
    fn fib(p: &mut bpf_fib_lookup, src: Self, dst: Self);
}

impl FrameAddr for u32 {
    #[inline(always)]
    fn narrow(a: &Addr) -> u32 {
        a.v4_raw()
    }
    #[inline(always)]
    fn fib(p: &mut bpf_fib_lookup, src: u32, dst: u32) {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = src;
        p.__bindgen_anon_4.ipv4_dst = dst;
    }
}

impl FrameAddr for Addr {
    #[inline(always)]
    fn narrow(a: &Addr) -> Addr {
        *a
    }
    #[inline(always)]
    fn fib(p: &mut bpf_fib_lookup, src: Addr, dst: Addr) {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = src.words();
        p.__bindgen_anon_4.ipv6_dst = dst.words();
    }
}

#[inline(always)]
pub fn fast_path(ctx: &XdpContext) -> u32 {
    let Some(proto_at) = at::<u16>(ctx, 12) else { return xdp_action::XDP_PASS };
    // SAFETY: bounds checked by `at`.
    let action = match u16::from_be(unsafe { *proto_at }) {
        ETH_P_IP => v4(ctx),
        ETH_P_IPV6 => v6(ctx),
        _ => None,
    };
    action.unwrap_or(xdp_action::XDP_PASS)
}

/// The TCP flags of a packet whose L4 header starts at `l4`, or `None`
/// for a packet tc takes: a SYN, a protocol other than TCP and UDP, or a
/// header cut short.
#[inline(always)]
fn l4_flags(ctx: &XdpContext, proto: u8, l4: usize) -> Option<u8> {
    match proto {
        PROTO_TCP => {
            let flags: *mut u8 = at(ctx, l4 + 13)?;
            let _whole: *mut [u8; 20] = at(ctx, l4)?;
            // SAFETY: bounds checked by `at`.
            let f = unsafe { *flags };
            // A SYN opens a flow, or reopens a finished tuple: tc's. Every
            // other packet of a live flow stays here, FIN and RST included
            // (the state advances as on tc), so that no packet of a flow
            // overtakes another by taking the other path.
            if f & TCP_SYN != 0 {
                return None;
            }
            Some(f)
        }
        PROTO_UDP => {
            let _whole: *mut [u8; 8] = at(ctx, l4)?;
            Some(0)
        }
        _ => None,
    }
}

/// The source and destination ports of the L4 header at `l4`.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize) -> Option<(u16, u16)> {
    let ports: *mut [u16; 2] = at(ctx, l4)?;
    // SAFETY: bounds checked by `at`.
    Some(unsafe { ((*ports)[0], (*ports)[1]) })
}

/// An IPv4 frame.
#[inline(never)]
fn v4(ctx: &XdpContext) -> Option<u32> {
    let ip: *mut Ipv4Hdr = at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `at`; XDP owns the frame.
    let ip = unsafe { &mut *ip };
    // IP options, fragments and dying TTLs are tc's.
    if ip.vihl != 0x45 || u16::from_be(ip.frag) & 0x3fff != 0 || ip.ttl <= 1 {
        return None;
    }
    let proto = ip.proto;
    let (sport, dport) = ports(ctx, L4)?;
    let tcp_flags = l4_flags(ctx, proto, L4)?;
    let src = Addr::from_v4_raw(ip.saddr);
    if source::is_local_pod(&src) {
        return None;
    }
    let f = Flow { src, dst: Addr::from_v4_raw(ip.daddr), sport, dport, proto, tcp_flags, ingress: ctx.ingress_ifindex() as u32 };
    let mut rw = Rewrite { saddr: 0, daddr: 0, sport: 0, dport: 0 };
    if reply(ctx, &f, &mut rw) {
        return Some(apply_v4(ctx, ip, proto, &rw, XDP_REPLIED));
    }
    if forward(ctx, &f, &mut rw) {
        return Some(apply_v4(ctx, ip, proto, &rw, XDP_FORWARDED));
    }
    None
}

/// An IPv6 frame. Only a header followed directly by TCP or UDP is
/// taken: extension headers (fragments above all) are tc's, which walks
/// them.
#[inline(never)]
fn v6(ctx: &XdpContext) -> Option<u32> {
    let ip: *mut Ipv6Hdr = at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `at`; XDP owns the frame.
    let ip = unsafe { &mut *ip };
    if ip.hop_limit <= 1 {
        return None;
    }
    let proto = ip.next_hdr;
    let (sport, dport) = ports(ctx, L4_V6)?;
    let tcp_flags = l4_flags(ctx, proto, L4_V6)?;
    if source::is_local_pod(&ip.saddr) {
        return None;
    }
    let f = Flow { src: ip.saddr, dst: ip.daddr, sport, dport, proto, tcp_flags, ingress: ctx.ingress_ifindex() as u32 };
    let mut rw = Rewrite { saddr: Addr::ZERO, daddr: Addr::ZERO, sport: 0, dport: 0 };
    if reply(ctx, &f, &mut rw) {
        return Some(apply_v6(ctx, ip, proto, &rw, XDP_REPLIED));
    }
    if forward(ctx, &f, &mut rw) {
        return Some(apply_v6(ctx, ip, proto, &rw, XDP_FORWARDED));
    }
    None
}

/// Whether an entry lets a (non-SYN) packet through without tc: it is
/// live, and past the handshake (a TCP flow still in SYN is tc's until
/// the backend answered).
#[inline(always)]
fn steady(e: &CtEntry, proto: u8, now: u64) -> bool {
    (proto != PROTO_TCP || e.state != CT_STATE_SYN) && is_alive(e, now)
}

/// A backend's reply to a client outside the node: the translation
/// `lb::reverse` applies, if it leaves by the ingress device.
#[inline(never)]
fn reply<A: FrameAddr>(ctx: &XdpContext, f: &Flow, rw: &mut Rewrite<A>) -> bool {
    let (Some(cfg), now) = (conntrack::config(), conntrack::now_ns()) else { return false };
    let rkey = key(f.src, f.dst, f.sport, f.dport, f.proto, CT_SVC_REV);
    let (Some(e), Some(s)) = (lookup::<A>(&rkey), scratch()) else { return false };
    // Read widened from scratch space (copies on the stack would not fit).
    if !e.read(&rkey, &mut s.other) {
        return false;
    }
    let rev = &s.other;
    if !steady(rev, f.proto, now) {
        return false;
    }
    let fkey = key(rev.orig_addr, rev.nat_addr, rev.orig_port, rev.nat_port, f.proto, CT_SVC_FWD);
    rw.saddr = A::narrow(&rev.nat_addr);
    rw.daddr = A::narrow(if source_translated(rev.flags) { &rev.orig_addr } else { &f.dst });
    rw.sport = rev.nat_port;
    rw.dport = rev.orig_port;
    take(ctx, f, rw, e, &fkey, DIR_REPLY, cfg, now)
}

/// A client's packet of an established flow opened from outside: the
/// translation `lb::forward` keeps for it, if it leaves by the ingress
/// device.
#[inline(never)]
fn forward<A: FrameAddr>(ctx: &XdpContext, f: &Flow, rw: &mut Rewrite<A>) -> bool {
    let (Some(cfg), now) = (conntrack::config(), conntrack::now_ns()) else { return false };
    let fkey = key(f.src, f.dst, f.sport, f.dport, f.proto, CT_SVC_FWD);
    let (Some(e), Some(s)) = (lookup::<A>(&fkey), scratch()) else { return false };
    // As in `reply`.
    e.read(&fkey, &mut s.other);
    let fwd = &s.other;
    // Only flows opened from outside (charged to no pod link).
    if fwd.owner != 0 || !steady(fwd, f.proto, now) {
        return false;
    }
    // The flow's frontend still serves it, and its backend still exists.
    let mut fk = FrontendKey { addr: f.dst, port: f.dport, proto: f.proto, scope: SCOPE_INTERNAL };
    let Some(mut svc) = read(FRONTENDS.get_ptr(&fk)) else { return false };
    if external_entry(&svc, Origin::Outside) {
        fk.scope = SCOPE_EXTERNAL;
        if let Some(ext) = read(FRONTENDS.get_ptr(&fk)) {
            svc = ext;
        }
    }
    if fwd.svc_id != svc.id || !lb::backend_matches(fwd.backend_id, &fwd.nat_addr, fwd.nat_port) {
        return false;
    }
    // A hairpin flow (a node reaching its own host-network endpoint
    // through another node's frontend) is left to tc: rare, and choosing
    // its hairpin source by family costs this frame more stack than XDP
    // has beside its caller.
    let flags = fwd.flags;
    if flags & CT_F_HAIRPIN != 0 {
        return false;
    }
    let sees = backend_sees_in(flags, cfg, fwd.orig_addr, A::V4);
    let rkey = key(fwd.nat_addr, sees, fwd.nat_port, fwd.orig_port, f.proto, CT_SVC_REV);
    rw.saddr = A::narrow(&sees);
    rw.daddr = A::narrow(&fwd.nat_addr);
    rw.sport = fwd.orig_port;
    rw.dport = fwd.nat_port;
    take(ctx, f, rw, e, &rkey, DIR_ORIG, cfg, now)
}

/// Takes the packet of entry `e` (travelling in `dir`) onto the fast path
/// when the flow's other half `twin` exists (tc rebuilds a missing one)
/// and the rewritten packet `rw` leaves by the ingress device: the state
/// advances and the twin follows, as on tc.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn take<A: FrameAddr>(ctx: &XdpContext, f: &Flow, rw: &Rewrite<A>, e: Ct<A>, twin: &CtKey, dir: u8, cfg: &DatapathConfig, now: u64) -> bool {
    if lookup::<A>(twin).is_none() || !leaves_by(ctx, rw, f) {
        return false;
    }
    if touch(e.tail(), cfg, f.proto, f.tcp_flags, dir, now) {
        sync_twin::<A>(twin, e.tail());
    }
    true
}

/// Whether the translated packet's route leaves by `ingress` with a
/// resolved neighbour; the MACs to use are written into the frame.
#[inline(always)]
fn leaves_by<A: FrameAddr>(ctx: &XdpContext, rw: &Rewrite<A>, f: &Flow) -> bool {
    let (proto, ingress) = (f.proto, f.ingress);
    let mut params = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    crate::fwd::zero_params(&mut params);
    // SAFETY: every byte was written; zero is valid for its integers and unions.
    let p = unsafe { params.assume_init_mut() };
    p.l4_protocol = proto;
    p.sport = rw.sport;
    p.dport = rw.dport;
    p.ifindex = ingress;
    A::fib(p, rw.saddr, rw.daddr);
    // SAFETY: valid context and params pointers, correct size.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 || p.ifindex != ingress {
        return false;
    }
    let Some(macs) = at::<[u8; 12]>(ctx, 0) else { return false };
    // SAFETY: bounds checked by `at`.
    let macs = unsafe { &mut *macs };
    macs[..6].copy_from_slice(&p.dmac);
    macs[6..].copy_from_slice(&p.smac);
    true
}

/// The ports and L4 checksum of the frame's TCP or UDP header at `l4`.
#[inline(always)]
fn l4_fields(ctx: &XdpContext, proto: u8, l4: usize) -> Option<(&'static mut [u16; 2], &'static mut u16)> {
    let csum_off = if proto == PROTO_TCP { l4 + 16 } else { l4 + 6 };
    let (ports, sum) = (at::<[u16; 2]>(ctx, l4)?, at::<u16>(ctx, csum_off)?);
    // SAFETY: bounds checked by `at`; valid for the program run.
    Some(unsafe { (&mut *ports, &mut *sum) })
}

/// The L4 checksum as sent: a computed UDP checksum of zero goes out as
/// all ones (zero means "none"; IPv4 only, where `had_none` keeps it).
#[inline(always)]
fn l4_sum_out(proto: u8, had_none: bool, sum: u16) -> u16 {
    match (had_none, proto == PROTO_UDP && sum == 0) {
        (true, _) => 0,
        (false, true) => 0xffff,
        (false, false) => sum,
    }
}

/// Counts the packet in `slot` and sends the frame back out.
#[inline(always)]
fn sent(slot: u32) -> u32 {
    if let Some(c) = XDP_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *c = (*c).wrapping_add(1) };
    }
    xdp_action::XDP_TX
}

/// Rewrites an IPv4 frame's addresses and ports with their checksums,
/// decrements the TTL, counts, and sends the frame back out.
#[inline(always)]
fn apply_v4(ctx: &XdpContext, ip: &mut Ipv4Hdr, proto: u8, rw: &Rewrite<u32>, slot: u32) -> u32 {
    let Some((ports, l4sum)) = l4_fields(ctx, proto, L4) else { return xdp_action::XDP_PASS };
    let (saddr, daddr) = (rw.saddr, rw.daddr);
    let mut ipsum = ip.csum;
    let mut sum = *l4sum;
    let udp_without_sum = proto == PROTO_UDP && sum == 0;
    ipsum = replace32(ipsum, ip.saddr, saddr);
    ipsum = replace32(ipsum, ip.daddr, daddr);
    sum = replace32(sum, ip.saddr, saddr);
    sum = replace32(sum, ip.daddr, daddr);
    sum = replace16(sum, ports[0], rw.sport);
    sum = replace16(sum, ports[1], rw.dport);
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    ip.csum = replace16(ipsum, old_ttl, new_ttl);
    ip.ttl -= 1;
    ip.saddr = saddr;
    ip.daddr = daddr;
    ports[0] = rw.sport;
    ports[1] = rw.dport;
    *l4sum = l4_sum_out(proto, udp_without_sum, sum);
    sent(slot)
}

/// Rewrites an IPv6 frame's addresses and ports with the L4 checksum
/// (its pseudo-header covers the addresses; IPv6 has no header checksum),
/// decrements the hop limit, counts, and sends the frame back out. A UDP
/// datagram without a checksum (not allowed over IPv6) is left to tc.
#[inline(always)]
fn apply_v6(ctx: &XdpContext, ip: &mut Ipv6Hdr, proto: u8, rw: &Rewrite<Addr>, slot: u32) -> u32 {
    let Some((ports, l4sum)) = l4_fields(ctx, proto, L4_V6) else { return xdp_action::XDP_PASS };
    let mut sum = *l4sum;
    if proto == PROTO_UDP && sum == 0 {
        return xdp_action::XDP_PASS;
    }
    let (Ok(ds), Ok(dd)) = (addr6_diff(&ip.saddr, &rw.saddr), addr6_diff(&ip.daddr, &rw.daddr)) else { return xdp_action::XDP_PASS };
    sum = apply_diff(apply_diff(sum, ds as u32), dd as u32);
    sum = replace16(sum, ports[0], rw.sport);
    sum = replace16(sum, ports[1], rw.dport);
    ip.hop_limit -= 1;
    ip.saddr = rw.saddr;
    ip.daddr = rw.daddr;
    ports[0] = rw.sport;
    ports[1] = rw.dport;
    *l4sum = l4_sum_out(proto, false, sum);
    sent(slot)
}
