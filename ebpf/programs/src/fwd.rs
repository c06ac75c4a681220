//! Forwarding after NAT: a FIB lookup and a redirect straight to the
//! egress of the destination's interface, skipping the node's IP stack
//! (routing, netfilter, rp_filter). The destination veth's tc egress
//! program still runs, so the pod's ingress policy sees the packet. When
//! the lookup cannot answer, the packet goes up the stack as usual. A
//! whole TCP or UDP packet from a pod to another pod of this node goes
//! straight into that pod instead ([`into_pod`], which does the receiving
//! link's to_pod part), translated or not ([`between_pods_v4`]).
//!
//! A destination that is a pod of this node skips the FIB lookup: the
//! node's host route to it is in `WEIR_POD_ADDRS` (the agent mirrors the
//! host routes of the pod links there), so the packet is redirected to
//! that link with the kernel resolving the neighbour (`bpf_redirect_neigh`
//! given the pod's address as the next hop), after the link's MTU is
//! checked (`bpf_check_mtu`, with the same answers as the lookup's). A
//! link that no longer exists (an entry the agent has not removed yet)
//! fails that check, and the packet takes the FIB lookup. The route lookup
//! is the larger part of the forwarding's cost, and an IPv6 route lookup
//! costs about twice an IPv4 one (docs/performance.md).
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
    bindings::{
        bpf_check_mtu_ret::BPF_MTU_CHK_RET_FRAG_NEEDED, bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::generated::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use weir_common::{
    addr::Addr,
    drop::DropReason,
    lb::{MARK_LEARN_MACS, PROTO_TCP},
    link::LinkMacs,
    stats::Direction,
};
use weir_logic::ct::is_syn;

use crate::{
    debug::{self, debug_on},
    events,
    hdr::{Ipv4Pkt, Ipv6Pkt, FRAG_NONE, IP6_HOP_LIMIT_OFF, IP_CSUM_OFF, IP_OFF, IP_TTL_OFF},
    maps::{LINK_MACS, POD_ADDRS},
    policy, stats,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// An IPv4 header's length without options.
const IPV4_NO_OPTIONS: u16 = 20;
/// Where an IPv6 packet's upper-layer header starts when it has no
/// extension headers.
const IPV6_PLAIN_L4_OFF: u16 = IP_OFF as u16 + 40;

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
pub fn redirect_v4(ctx: &TcContext, pkt: &Ipv4Pkt, from_pod: bool) -> i32 {
    if !hops_left(pkt.ttl) {
        return TC_ACT_OK as i32;
    }
    if let Some(ifindex) = local_pod(&Addr::from_v4_raw(pkt.daddr)) {
        match fits(ctx, ifindex) {
            Fits::Yes => {
                if decrement_ttl(ctx, pkt).is_err() {
                    return failed();
                }
                if from_pod && pkt.frag == FRAG_NONE {
                    match into_pod(ctx, ifindex, &Addr::from_v4_raw(pkt.daddr), opens(pkt.proto, pkt.tcp_flags)) {
                        UNLISTED => return UNLISTED,
                        UNKNOWN_MACS | VLAN_TAGGED => {}
                        verdict => return verdict,
                    }
                }
                let mut nh = bpf_redir_neigh { nh_family: AF_INET as u32, __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: pkt.daddr } };
                return to_local_pod(ifindex, &mut nh);
            }
            Fits::TooBig(mtu) if pkt.df && !pkt.is_icmp_error() => return too_big_mtu(mtu),
            Fits::TooBig(_) => return TC_ACT_OK as i32,
            Fits::NoLink => {}
        }
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
pub fn redirect_v6(ctx: &TcContext, pkt: &Ipv6Pkt, from_pod: bool) -> i32 {
    if !hops_left(pkt.hop_limit) {
        return TC_ACT_OK as i32;
    }
    if let Some(ifindex) = local_pod(&pkt.t.daddr) {
        match fits(ctx, ifindex) {
            Fits::Yes => {
                if ctx.store(IP6_HOP_LIMIT_OFF, &(pkt.hop_limit - 1), 0).is_err() {
                    return failed();
                }
                if from_pod && pkt.frag == FRAG_NONE {
                    match into_pod(ctx, ifindex, &pkt.t.daddr, opens(pkt.t.proto, pkt.t.tcp_flags)) {
                        UNLISTED => return UNLISTED,
                        UNKNOWN_MACS | VLAN_TAGGED => {}
                        verdict => return verdict,
                    }
                }
                let mut nh = bpf_redir_neigh { nh_family: AF_INET6 as u32, __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: pkt.t.daddr.words() } };
                return to_local_pod(ifindex, &mut nh);
            }
            Fits::TooBig(mtu) if !pkt.is_icmp_error() => return too_big_mtu(mtu),
            Fits::TooBig(_) => return TC_ACT_OK as i32,
            Fits::NoLink => {}
        }
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
    too_big_mtu(unsafe { p.__bindgen_anon_1.mtu_result })
}

/// The too-big verdict for an egress MTU.
#[inline(always)]
fn too_big_mtu(mtu: u16) -> i32 {
    if debug_on() {
        debug::note_fwd(debug::FWD_TOO_BIG, mtu as u32);
    }
    TOO_BIG_BASE + mtu as i32
}

/// The link of a pod of this node that `daddr` is routed to.
#[inline(always)]
fn local_pod(daddr: &Addr) -> Option<u32> {
    // SAFETY: map value reference, read once.
    unsafe { POD_ADDRS.get(daddr) }.copied()
}

/// Whether a packet fits the link `ifindex`.
enum Fits {
    Yes,
    /// Too big for its MTU.
    TooBig(u16),
    /// No such link (any more).
    NoLink,
}

/// Checks the packet against the MTU of link `ifindex`, as the FIB
/// lookup does when given the packet's length (a GSO super-packet fits:
/// its segments do).
#[inline(always)]
fn fits(ctx: &TcContext, ifindex: u32) -> Fits {
    let mut mtu: u32 = 0;
    // SAFETY: valid skb pointer; `mtu` is ours (0: measure the skb).
    let rc = unsafe { bpf_check_mtu(ctx.skb.skb as *mut _, ifindex, &mut mtu, 0, 0) };
    match rc {
        0 => Fits::Yes,
        r if r == BPF_MTU_CHK_RET_FRAG_NEEDED as i64 => Fits::TooBig(mtu.min(u16::MAX as u32) as u16),
        _ => Fits::NoLink,
    }
}

/// Redirects to the egress of a local pod's link, the kernel resolving
/// the neighbour `nh` (the pod's own address).
#[inline(always)]
fn to_local_pod(ifindex: u32, nh: &mut bpf_redir_neigh) -> i32 {
    if debug_on() {
        debug::note_fwd(debug::FWD_LOCAL, ifindex);
    }
    // SAFETY: plain helper call; `nh` is a valid neighbour parameter block.
    unsafe { bpf_redirect_neigh(ifindex, nh, core::mem::size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
}

/// An untranslated TCP or UDP packet from a pod that its from_pod's policy
/// passed, to another pod of this node: delivered straight into it
/// ([`into_pod`]), skipping the node's routing, forwarding and netfilter
/// hooks as a translated packet does. Anything else goes up the stack as
/// before, which routes it and answers what it must: another node's pod
/// or the node itself; a fragment (to_pod tracks a first fragment's ports
/// for the later ones); a packet out of hops (time exceeded) or too big
/// for the receiver's link (fragmentation needed); a packet with IP
/// options, whose handling (source routes, router alerts) is the stack's.
#[inline(never)]
pub fn between_pods_v4(ctx: &TcContext, pkt: &Ipv4Pkt) -> i32 {
    if pkt.ihl_bytes != IPV4_NO_OPTIONS || pkt.frag != FRAG_NONE || !hops_left(pkt.ttl) {
        return TC_ACT_OK as i32;
    }
    let daddr = Addr::from_v4_raw(pkt.daddr);
    let Some(ifindex) = local_pod(&daddr) else { return TC_ACT_OK as i32 };
    if !matches!(fits(ctx, ifindex), Fits::Yes) {
        return TC_ACT_OK as i32;
    }
    if decrement_ttl(ctx, pkt).is_err() {
        return failed();
    }
    match into_pod(ctx, ifindex, &daddr, opens(pkt.proto, pkt.tcp_flags)) {
        UNLISTED => events::dropped(ctx, pkt, DropReason::UnlistedAddress),
        VLAN_TAGGED => undo_ttl(ctx, pkt),
        UNKNOWN_MACS => {
            let mut nh = bpf_redir_neigh { nh_family: AF_INET as u32, __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: pkt.daddr } };
            to_local_pod(ifindex, &mut nh)
        }
        verdict => verdict,
    }
}

/// IPv6 as [`between_pods_v4`] takes IPv4: a packet with extension
/// headers goes up the stack, as an IPv4 one with options does.
#[inline(never)]
pub fn between_pods_v6(ctx: &TcContext, pkt: &Ipv6Pkt) -> i32 {
    if pkt.l4_off != IPV6_PLAIN_L4_OFF || pkt.frag != FRAG_NONE || !hops_left(pkt.hop_limit) {
        return TC_ACT_OK as i32;
    }
    let Some(ifindex) = local_pod(&pkt.t.daddr) else { return TC_ACT_OK as i32 };
    if !matches!(fits(ctx, ifindex), Fits::Yes) {
        return TC_ACT_OK as i32;
    }
    if ctx.store(IP6_HOP_LIMIT_OFF, &(pkt.hop_limit - 1), 0).is_err() {
        return failed();
    }
    match into_pod(ctx, ifindex, &pkt.t.daddr, opens(pkt.t.proto, pkt.t.tcp_flags)) {
        UNLISTED => events::dropped_flow(ctx, &pkt.t, DropReason::UnlistedAddress),
        VLAN_TAGGED => {
            if ctx.store(IP6_HOP_LIMIT_OFF, &pkt.hop_limit, 0).is_err() {
                return TC_ACT_SHOT as i32;
            }
            TC_ACT_OK as i32
        }
        UNKNOWN_MACS => {
            let mut nh = bpf_redir_neigh { nh_family: AF_INET6 as u32, __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: pkt.t.daddr.words() } };
            to_local_pod(ifindex, &mut nh)
        }
        verdict => verdict,
    }
}

/// [`into_pod`]'s answer for a receiver's address that no endpoint names
/// on a link under a policy (`policy::unlisted_at`): the caller drops the
/// packet, as to_pod would. [`redirect_v4`] and [`redirect_v6`] hand it
/// back to theirs ([`unlisted`]), which reports the drop: a report from
/// here would be a frame below `redirect_v6`, at the bottom of the
/// deepest chain of calls (`pod_v6::from_pod`, `lb::reverse`).
const UNLISTED: i32 = i32::MIN + 1000;

/// Whether [`redirect_v4`]'s or [`redirect_v6`]'s verdict is to drop the
/// packet: its receiver's address is unlisted (see [`UNLISTED`]); the
/// caller reports it (`DropReason::UnlistedAddress`) and drops it.
#[inline(always)]
pub fn unlisted(verdict: i32) -> bool {
    verdict == UNLISTED
}
/// [`into_pod`]'s answer while the link's frame header is unknown (or
/// older than `LINK_MACS_FRESH_S`): the caller redirects the packet to
/// the link (`to_local_pod`), marked.
const UNKNOWN_MACS: i32 = i32::MIN + 1001;
/// [`into_pod`]'s answer for a VLAN-tagged frame: the caller leaves it to
/// the way it took before (the stack, or the link's egress).
const VLAN_TAGGED: i32 = i32::MIN + 1002;

/// A whole TCP or UDP packet (no fragment, no ICMP error) from a pod's
/// link (its tc ingress) to another pod of this node, translated or
/// passed by the policy: delivered straight into the receiving pod
/// (`bpf_redirect_peer` to the link's peer), skipping the link's xmit, the
/// backlog queue and a softirq pass, and the receiver's to_pod with them.
/// This does what to_pod and the link do for such a packet:
/// - counts it to the receiver's link (`ToPod`);
/// - drops it when its destination is an address no endpoint names on a
///   link under a policy (the caller reports it);
/// - writes the frame header the node's stack gives frames to this pod
///   (`WEIR_LINK_MACS`: the pod's address as the destination, the host
///   side's as the source);
/// - clears the packet's mark (the veth crossing would: nothing of the
///   node's may reach the pod).
///
/// The address is the link's (`WEIR_POD_ADDRS`, which to_pod checks too).
/// The policy needs nothing more: the sender's from_pod judged a new flow
/// for both ends and refreshed a tracked one (to_pod would find it
/// tracked, or the service flow's). ICMP errors and fragments take the
/// link's egress: to_pod judges errors, and tracks a first fragment's
/// ports for the later ones.
///
/// A frame with an offloaded VLAN tag is left to its old way
/// ([`VLAN_TAGGED`]). While the link's frame header is not known, or for
/// a TCP SYN (`opens`) once it is `LINK_MACS_FRESH_S` seconds old
/// ([`UNKNOWN_MACS`]), the caller sends the packet to the link's egress through the node's
/// neighbour output (as `redirect_v4` sends other translated packets),
/// marked for the link's to_pod to learn the header from
/// ([`learn_link_macs`]).
///
/// Inlined: a frame of its own, below `redirect_v6` below `lb::reverse`
/// below `pod_v6::from_pod`, would take that chain of calls past the
/// verifier's 512 bytes of stack.
#[inline(always)]
fn into_pod(ctx: &TcContext, ifindex: u32, daddr: &Addr, opens: bool) -> i32 {
    if policy::unlisted_at(ifindex, daddr) {
        return UNLISTED;
    }
    // A frame with a VLAN tag held beside it (offloaded by the pod's
    // veth): no VLAN is the node's to carry into a pod; it takes the way
    // it took before (the stack drops an untranslated one).
    // SAFETY: the context pointer is valid for the program's lifetime.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return VLAN_TAGGED;
    }
    let now_s = (crate::conntrack::now_ns() / 1_000_000_000) as u32;
    // A stale header is learned again only on a packet that opens a
    // connection (nothing of its flow is in flight to be overtaken by the
    // packets after it, which go straight in while it takes the link's
    // egress); until then it is used as it is.
    // SAFETY: a map value pointer, valid for the program run; read only.
    let Some(macs) = LINK_MACS.get_ptr(&ifindex).filter(|m| !opens || unsafe { (**m).fresh(now_s) }) else {
        // SAFETY: the context pointer is valid for the program's lifetime;
        // tc programs may write the mark.
        unsafe { (*ctx.skb.skb).mark |= MARK_LEARN_MACS };
        return UNKNOWN_MACS;
    };
    // SAFETY: a map value pointer, valid for the program run; the helper
    // reads its first 12 bytes (the header) in place (no copy on this
    // frame, the deepest of from_pod's).
    if ctx.store(0, unsafe { &*(macs as *const [u8; 12]) }, 0).is_err() {
        // The caller's way to the link's egress, which needs no header.
        return UNKNOWN_MACS;
    }
    stats::count(ifindex, Direction::ToPod, ctx.len());
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).mark = 0 };
    if debug_on() {
        debug::note_fwd(debug::FWD_PEER, ifindex);
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect_peer(ifindex, 0) as i32 }
}

/// At a pod link's to_pod (`ifindex`): a frame [`into_pod`] marked for
/// the purpose carries the header the node's stack gives frames to this
/// pod; it is kept for the packets `into_pod` delivers straight into the
/// pod, and the mark bit cleared. Any other frame costs a read of the
/// mark.
#[inline(always)]
pub fn learn_link_macs(ctx: &TcContext, ifindex: u32) {
    // SAFETY: the context pointer is valid for the program's lifetime.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & MARK_LEARN_MACS == 0 {
        return;
    }
    // SAFETY: as above; tc programs may write the mark.
    unsafe { (*ctx.skb.skb).mark = mark & !MARK_LEARN_MACS };
    if let Ok(header) = ctx.load::<[u8; 12]>(0) {
        let mut macs = LinkMacs { learned_s: (crate::conntrack::now_ns() / 1_000_000_000) as u32, ..LinkMacs::default() };
        macs.pod.copy_from_slice(&header[..6]);
        macs.node.copy_from_slice(&header[6..]);
        // A full LRU map evicts; an error leaves the next packet to learn.
        let _ = LINK_MACS.insert(&ifindex, &macs, 0);
    }
}

/// Whether a packet opens a TCP connection (a SYN without ACK).
#[inline(always)]
fn opens(proto: u8, tcp_flags: u8) -> bool {
    proto == PROTO_TCP && is_syn(tcp_flags)
}

/// Restores the TTL [`decrement_ttl`] took, for a packet that goes up the
/// stack after all (which decrements it when it forwards); the packet is
/// dropped if that fails.
#[inline(always)]
fn undo_ttl(ctx: &TcContext, pkt: &Ipv4Pkt) -> i32 {
    let now = u16::from_ne_bytes([pkt.ttl.wrapping_sub(1), pkt.proto]);
    let was = u16::from_ne_bytes([pkt.ttl, pkt.proto]);
    if ctx.l3_csum_replace(IP_CSUM_OFF, now as u64, was as u64, 2).is_err() || ctx.store(IP_TTL_OFF, &was, 0).is_err() {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
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
