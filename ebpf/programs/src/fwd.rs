//! Forwarding after NAT: a FIB lookup and a redirect straight to the
//! egress of the destination's interface, skipping the node's IP stack
//! (routing, netfilter, rp_filter). The destination veth's tc egress
//! program still runs, so the pod's ingress policy sees the packet. When
//! the lookup cannot answer, the packet goes up the stack as usual.
//!
//! As the kernel's forwarding does, a redirected packet's TTL is
//! decremented, and a packet whose TTL would run out goes up the stack,
//! which answers with ICMP time exceeded. The lookup is given the
//! packet's length, so the kernel checks it against the route's MTU
//! before any neighbour (with no length, it checks the skb only when the
//! neighbour is known: a packet to a new neighbour would be redirected
//! whole); a GSO super-packet is given no length (its segments fit the
//! MTU, and the kernel then checks the skb, which passes it). A packet
//! too big:
//! - with Don't Fragment set, is handed back to the caller
//!   ([`too_big`]: the egress MTU), which answers the sender with ICMP
//!   fragmentation needed quoting the sender's own, untranslated packet
//!   (the stack would quote the translated one, which matches no socket
//!   of the sender's);
//! - without it, goes up the stack, which fragments it to fit (a
//!   masqueraded packet from outside carries the node's own address as
//!   its source, which the stack takes from an uplink only because the
//!   agent sets `accept_local` there; see `ingress`).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::{
    debug::{self, debug_on},
    hdr::{Ipv4Pkt, Ipv6Pkt, IP6_HOP_LIMIT_OFF, IP_CSUM_OFF, IP_OFF, IP_TTL_OFF},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// [`redirect_v4`]'s answer for a packet with Don't Fragment set that is
/// too big for its egress: this base plus the egress MTU.
const TOO_BIG_BASE: i32 = i32::MIN + 2000;

/// The egress MTU, when `verdict` says the packet is too big for it.
#[inline(always)]
pub fn too_big(verdict: i32) -> Option<u16> {
    let m = verdict.wrapping_sub(TOO_BIG_BASE);
    if (0..=u16::MAX as i32).contains(&m) {
        Some(m as u16)
    } else {
        None
    }
}

#[inline(never)]
pub fn redirect_v4(ctx: &TcContext, pkt: &Ipv4Pkt) -> i32 {
    if !hops_left(pkt.ttl) {
        return TC_ACT_OK as i32;
    }
    let mut params = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = prepare(ctx, &mut params, AF_INET, pkt.proto, pkt.sport, pkt.dport, pkt.tot_len);
    p.__bindgen_anon_3.ipv4_src = pkt.saddr;
    p.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    let rc = lookup(ctx, p);
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 && pkt.df && !pkt.is_icmp_error() {
        return too_big_for(p);
    }
    if !routed(rc) {
        return TC_ACT_OK as i32;
    }
    if decrement_ttl(ctx, pkt).is_err() {
        return failed();
    }
    deliver(ctx, p, rc)
}

/// IPv6 as [`redirect_v4`] forwards IPv4, the hop limit for the TTL. IPv6
/// is never fragmented on the way: a packet too big for its egress (other
/// than an ICMPv6 error) is handed back ([`too_big`]) to be answered with
/// packet too big, as an IPv4 one with Don't Fragment set.
#[inline(never)]
pub fn redirect_v6(ctx: &TcContext, pkt: &Ipv6Pkt) -> i32 {
    if !hops_left(pkt.hop_limit) {
        return TC_ACT_OK as i32;
    }
    let mut params = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    let p = prepare(ctx, &mut params, AF_INET6, pkt.t.proto, pkt.t.sport, pkt.t.dport, pkt.end.wrapping_sub(IP_OFF as u16));
    p.__bindgen_anon_3.ipv6_src = pkt.t.saddr.words();
    p.__bindgen_anon_4.ipv6_dst = pkt.t.daddr.words();
    let rc = lookup(ctx, p);
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 && !pkt.is_icmp_error() {
        return too_big_for(p);
    }
    if !routed(rc) {
        return TC_ACT_OK as i32;
    }
    if ctx.store(IP6_HOP_LIMIT_OFF, &(pkt.hop_limit - 1), 0).is_err() {
        return failed();
    }
    deliver(ctx, p, rc)
}

/// Whether a packet with `hops` left (TTL or hop limit) may be forwarded
/// here; one that would run out goes up the stack, which answers time
/// exceeded.
#[inline(always)]
fn hops_left(hops: u8) -> bool {
    if hops <= 1 {
        if debug_on() {
            debug::note_fwd(debug::FWD_TTL, 0);
        }
        return false;
    }
    true
}

/// The lookup's parameters every family shares (the caller adds the
/// addresses), zeroed first. `len`: the packet's IP length (IPv4 total
/// length, IPv6 header and payload), given unless it is a GSO
/// super-packet (see the module's documentation).
#[inline(always)]
fn prepare<'a>(
    ctx: &TcContext,
    params: &'a mut core::mem::MaybeUninit<bpf_fib_lookup>,
    family: u8,
    proto: u8,
    sport: u16,
    dport: u16,
    len: u16,
) -> &'a mut bpf_fib_lookup {
    zero_params(params);
    // SAFETY: every byte was written; zero is valid for its integers and unions.
    let p = unsafe { params.assume_init_mut() };
    p.family = family;
    p.l4_protocol = proto;
    p.sport = sport;
    p.dport = dport;
    // SAFETY: the context pointer is valid for the program's lifetime.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: as above.
    if unsafe { (*ctx.skb.skb).gso_size } == 0 {
        p.__bindgen_anon_1.tot_len = len;
    }
    p
}

/// `bpf_fib_lookup` on the prepared parameters.
#[inline(always)]
fn lookup(ctx: &TcContext, p: &mut bpf_fib_lookup) -> i64 {
    // SAFETY: valid skb and params pointers, correct size.
    unsafe { fib_lookup(ctx.skb.skb as *mut _, p, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) }
}

/// The too-big verdict for the egress MTU the lookup found.
#[inline(always)]
fn too_big_for(p: &bpf_fib_lookup) -> i32 {
    // SAFETY: the kernel writes the egress MTU over the length it was
    // given (a union).
    let mtu = unsafe { p.__bindgen_anon_1.mtu_result };
    if debug_on() {
        debug::note_fwd(debug::FWD_TOO_BIG, mtu as u32);
    }
    TOO_BIG_BASE + mtu as i32
}

/// A rewrite failed: the packet goes up the stack.
#[inline(always)]
fn failed() -> i32 {
    if debug_on() {
        debug::note_fwd(debug::FWD_FAILED, 0);
    }
    TC_ACT_OK as i32
}

/// Whether the lookup found the egress (with or without its neighbour);
/// otherwise the packet goes up the stack (noted for the debug log).
#[inline(always)]
fn routed(rc: i64) -> bool {
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        if debug_on() {
            debug::note_fwd(debug::FWD_STACK, rc as u32);
        }
        return false;
    }
    true
}

/// Sends the packet to the egress the lookup found: with the neighbour's
/// MAC written, or through the kernel's neighbour resolution when none is
/// known yet.
#[inline(always)]
fn deliver(ctx: &TcContext, p: &bpf_fib_lookup, rc: i64) -> i32 {
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        if debug_on() {
            debug::note_fwd(debug::FWD_REDIRECT_NEIGH, p.ifindex);
        }
        // SAFETY: plain helper call; no neighbour params.
        return unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    }
    if ctx.store(0, &p.dmac, 0).is_err() || ctx.store(6, &p.smac, 0).is_err() {
        return failed();
    }
    if debug_on() {
        debug::note_fwd(debug::FWD_REDIRECT, p.ifindex);
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(p.ifindex, 0) as i32 }
}

/// TTL - 1, with the header checksum updated (the TTL shares its 16-bit
/// word with the protocol; both are known from the parse).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, pkt: &Ipv4Pkt) -> Result<(), ()> {
    let old = u16::from_ne_bytes([pkt.ttl, pkt.proto]);
    let new = u16::from_ne_bytes([pkt.ttl.wrapping_sub(1), pkt.proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 2).map_err(|_| ())?;
    ctx.store(IP_TTL_OFF, &new, 0).map_err(|_| ())
}

/// Zeroes the lookup parameters in place, as 32-bit words (`mem::zeroed`
/// is a byte-wise `memset` call in BPF).
#[inline(always)]
pub(crate) fn zero_params(p: &mut core::mem::MaybeUninit<bpf_fib_lookup>) {
    const WORDS: usize = core::mem::size_of::<bpf_fib_lookup>() / 4;
    let w = p.as_mut_ptr() as *mut u32;
    let mut i = 0;
    while i < WORDS {
        // SAFETY: in bounds of the 4-aligned struct; volatile keeps LLVM
        // from turning the loop into memset.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
}

const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>() % 4 == 0);
