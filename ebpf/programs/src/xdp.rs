//! The XDP fast path on the uplinks (`--xdp`): a packet of an
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
//! fragments, IP options, ICMP, a TTL about to run out, destinations on
//! other devices (local pods, the tunnel), and any source that claims one
//! of this node's pods (tc drops and counts it).

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
    csum::{replace16, replace32},
    ct::{backend_sees_in, is_alive, source_translated, TCP_SYN},
    frontend::{external_entry, Origin},
};

use crate::{
    conntrack::{self, key, lookup, sync_twin, touch},
    lb,
    maps::{read, FRONTENDS, XDP_STATS},
    source,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_HLEN: usize = 20;
const L4: usize = ETH_HLEN + IP_HLEN;
const AF_INET: u8 = 2;

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

/// The rewrite of one packet: addresses and ports (network order).
struct Rewrite {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

#[inline(always)]
pub fn fast_path(ctx: &XdpContext) -> u32 {
    match try_fast_path(ctx) {
        Some(action) => action,
        None => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn try_fast_path(ctx: &XdpContext) -> Option<u32> {
    let proto_at: *mut u16 = at(ctx, 12)?;
    // SAFETY: bounds checked by `at`.
    if u16::from_be(unsafe { *proto_at }) != ETH_P_IP {
        return None;
    }
    let ip: *mut Ipv4Hdr = at(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by `at`; XDP owns the frame.
    let ip = unsafe { &mut *ip };
    // IP options, fragments and dying TTLs are tc's.
    if ip.vihl != 0x45 || u16::from_be(ip.frag) & 0x3fff != 0 || ip.ttl <= 1 {
        return None;
    }
    let proto = ip.proto;
    let ports: *mut [u16; 2] = at(ctx, L4)?;
    // SAFETY: bounds checked by `at`.
    let (sport, dport) = unsafe { ((*ports)[0], (*ports)[1]) };
    let tcp_flags = match proto {
        PROTO_TCP => {
            let flags: *mut u8 = at(ctx, L4 + 13)?;
            let _whole: *mut [u8; 20] = at(ctx, L4)?;
            // SAFETY: bounds checked by `at`.
            let f = unsafe { *flags };
            // A SYN opens a flow, or reopens a finished tuple: tc's. Every
            // other packet of a live flow stays here, FIN and RST included
            // (the state advances as on tc), so that no packet of a flow
            // overtakes another by taking the other path.
            if f & TCP_SYN != 0 {
                return None;
            }
            f
        }
        PROTO_UDP => {
            let _whole: *mut [u8; 8] = at(ctx, L4)?;
            0
        }
        _ => return None,
    };
    let src = Addr::from_v4_raw(ip.saddr);
    if source::is_local_pod(&src) {
        return None;
    }
    let f = Flow { src, dst: Addr::from_v4_raw(ip.daddr), sport, dport, proto, tcp_flags, ingress: ctx.ingress_ifindex() as u32 };
    let mut rw = Rewrite { saddr: 0, daddr: 0, sport: 0, dport: 0 };
    if reply(ctx, &f, &mut rw) {
        return Some(apply(ctx, ip, proto, &rw, XDP_REPLIED));
    }
    if forward(ctx, &f, &mut rw) {
        return Some(apply(ctx, ip, proto, &rw, XDP_FORWARDED));
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
fn reply(ctx: &XdpContext, f: &Flow, rw: &mut Rewrite) -> bool {
    let (Some(cfg), now) = (conntrack::config(), conntrack::now_ns()) else { return false };
    let rkey = key(f.src, f.dst, f.sport, f.dport, f.proto, CT_SVC_REV);
    let Some(e) = lookup(&rkey) else { return false };
    // SAFETY: map value pointer, valid for the program run.
    let rev = unsafe { &*e };
    if !steady(rev, f.proto, now) {
        return false;
    }
    let fkey = key(rev.orig_addr, rev.nat_addr, rev.orig_port, rev.nat_port, f.proto, CT_SVC_FWD);
    rw.saddr = rev.nat_addr.v4_raw();
    rw.daddr = if source_translated(rev.flags) { rev.orig_addr.v4_raw() } else { f.dst.v4_raw() };
    rw.sport = rev.nat_port;
    rw.dport = rev.orig_port;
    take(ctx, f, rw, e, &fkey, DIR_REPLY, cfg, now)
}

/// A client's packet of an established flow opened from outside: the
/// translation `lb::forward` keeps for it, if it leaves by the ingress
/// device.
#[inline(never)]
fn forward(ctx: &XdpContext, f: &Flow, rw: &mut Rewrite) -> bool {
    let (Some(cfg), now) = (conntrack::config(), conntrack::now_ns()) else { return false };
    let fkey = key(f.src, f.dst, f.sport, f.dport, f.proto, CT_SVC_FWD);
    let Some(e) = lookup(&fkey) else { return false };
    // SAFETY: map value pointer, valid for the program run.
    let fwd = unsafe { &*e };
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
    if fwd.svc_id != svc.id || !lb::backend_matches(fwd.backend_id, fwd) {
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
    let sees = backend_sees_in(flags, cfg, fwd.orig_addr, true);
    let rkey = key(fwd.nat_addr, sees, fwd.nat_port, fwd.orig_port, f.proto, CT_SVC_REV);
    rw.saddr = sees.v4_raw();
    rw.daddr = fwd.nat_addr.v4_raw();
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
fn take(ctx: &XdpContext, f: &Flow, rw: &Rewrite, e: *mut CtEntry, twin: &CtKey, dir: u8, cfg: &DatapathConfig, now: u64) -> bool {
    if lookup(twin).is_none() || !leaves_by(ctx, rw, f) {
        return false;
    }
    if touch(e, cfg, f.proto, f.tcp_flags, dir, now) {
        sync_twin(twin, e);
    }
    true
}

/// Whether the translated packet's route leaves by `ingress` with a
/// resolved neighbour; the MACs to use are written into the frame.
#[inline(always)]
fn leaves_by(ctx: &XdpContext, rw: &Rewrite, f: &Flow) -> bool {
    let (proto, ingress) = (f.proto, f.ingress);
    let mut params = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    crate::fwd::zero_params(&mut params);
    // SAFETY: every byte was written; zero is valid for its integers and unions.
    let p = unsafe { params.assume_init_mut() };
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = rw.sport;
    p.dport = rw.dport;
    p.ifindex = ingress;
    p.__bindgen_anon_3.ipv4_src = rw.saddr;
    p.__bindgen_anon_4.ipv4_dst = rw.daddr;
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

/// Rewrites addresses and ports with their checksums, decrements the TTL,
/// counts, and sends the frame back out.
#[inline(always)]
fn apply(ctx: &XdpContext, ip: &mut Ipv4Hdr, proto: u8, rw: &Rewrite, slot: u32) -> u32 {
    let csum_off = if proto == PROTO_TCP { L4 + 16 } else { L4 + 6 };
    let (Some(ports), Some(l4sum)) = (at::<[u16; 2]>(ctx, L4), at::<u16>(ctx, csum_off)) else { return xdp_action::XDP_PASS };
    // SAFETY: bounds checked by `at`.
    let (ports, l4sum) = unsafe { (&mut *ports, &mut *l4sum) };
    let mut ipsum = ip.csum;
    let mut sum = *l4sum;
    let udp_without_sum = proto == PROTO_UDP && sum == 0;
    ipsum = replace32(ipsum, ip.saddr, rw.saddr);
    ipsum = replace32(ipsum, ip.daddr, rw.daddr);
    sum = replace32(sum, ip.saddr, rw.saddr);
    sum = replace32(sum, ip.daddr, rw.daddr);
    sum = replace16(sum, ports[0], rw.sport);
    sum = replace16(sum, ports[1], rw.dport);
    let old_ttl = u16::from_ne_bytes([ip.ttl, ip.proto]);
    let new_ttl = u16::from_ne_bytes([ip.ttl - 1, ip.proto]);
    ip.csum = replace16(ipsum, old_ttl, new_ttl);
    ip.ttl -= 1;
    ip.saddr = rw.saddr;
    ip.daddr = rw.daddr;
    ports[0] = rw.sport;
    ports[1] = rw.dport;
    *l4sum = match (udp_without_sum, proto == PROTO_UDP && sum == 0) {
        (true, _) => 0,
        // A computed UDP checksum of zero is sent as all ones.
        (false, true) => 0xffff,
        (false, false) => sum,
    };
    if let Some(c) = XDP_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *c = (*c).wrapping_add(1) };
    }
    xdp_action::XDP_TX
}
