//! Network policy in the pod object.
//!
//! Only the first packet of a flow is judged (`weir_logic::policy::decide`,
//! the code `weir explain` runs too); an allowed flow gets a `CT_POLICY`
//! conntrack entry keyed by its opener's tuple: later packets of the
//! opener ride it, and so do replies (the reversed tuple, never a TCP
//! SYN), so return traffic always passes. Service
//! flows are judged in `lb::forward`, after the backend is chosen, and
//! then ride the service's own conntrack entries.
//!
//! - from_pod judges both ends of a flow between local pods: the sender's
//!   egress and the receiver's ingress.
//! - to_pod judges the receiver's ingress for flows that did not come
//!   through a local from_pod. Flows the node itself opens (kubelet
//!   probes) are allowed, as Cilium and Calico allow them.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use weir_common::{
    addr::Addr,
    ct::{CT_POLICY, CT_SVC_FWD, CT_SVC_REV, DIR_ORIG, DIR_REPLY},
    lb::{PROTO_TCP, PROTO_UDP},
    drop::DropReason,
    event::{ALLOW_HOST, ALLOW_NOT_ISOLATED, ALLOW_RULE},
    policy::{EndpointInfo, IpInfo, PolicyKeyData, PolicyValue, DIR_EGRESS, DIR_INGRESS, POLICY_PREFIX_FULL},
    stats::DpError,
};
use weir_logic::{
    ct::{alive_until, expiry, first, is_syn, reopens},
    policy::{decide, Decision, PolicyMaps},
};

use crate::{
    conntrack::{self, create_any, key, replace_any, touch, within_quota, Exists},
    debug::{self, debug_on},
    errors, events,
    hdr::Ipv4Pkt,
    maps::{read, scratch, ENDPOINTS, IPCACHE, POLICY},
    source,
};

/// Judge the sender's egress.
pub const CHECK_EGRESS: u32 = 1 << 0;
/// Judge the receiver's ingress.
pub const CHECK_INGRESS: u32 = 1 << 1;
/// The flow comes from the local node itself.
pub const FROM_HOST: u32 = 1 << 2;

pub use crate::hdr::Tuple;

struct KernelMaps;

impl PolicyMaps for KernelMaps {
    #[inline(always)]
    fn ipcache(&self, addr: &Addr) -> Option<IpInfo> {
        let k = Key::new(128, *addr);
        IPCACHE.get(&k).copied()
    }

    #[inline(always)]
    fn policy(&self, key: &PolicyKeyData) -> Option<PolicyValue> {
        let k = Key::new(POLICY_PREFIX_FULL, *key);
        POLICY.get(&k).copied()
    }
}

#[inline(always)]
fn endpoint(a: &Addr) -> Option<EndpointInfo> {
    read(ENDPOINTS.get_ptr(a))
}

/// Whether either end of the tuple is a local endpoint under some policy.
#[inline(always)]
fn enforced(t: &Tuple) -> bool {
    endpoint(&t.saddr).is_some_and(|e| e.flags != 0) || endpoint(&t.daddr).is_some_and(|e| e.flags != 0)
}

/// Whether the endpoint behind a `WEIR_ENDPOINTS` lookup is under a policy.
#[inline(always)]
fn isolated(ep: Option<*const EndpointInfo>) -> bool {
    // SAFETY: map value pointer, valid for the program run; read only.
    ep.is_some_and(|e| unsafe { (*e).flags } != 0)
}

/// Whether the pod's own address, whose lookup `own` found no endpoint,
/// is routed to a link under a policy: no rule could judge its flows
/// (on the lookup the caller makes anyway, so that a listed address
/// costs nothing more).
#[inline(always)]
fn unlisted(ctx: &TcContext, own: Option<*const EndpointInfo>) -> bool {
    own.is_none() && source::link_isolated(ifindex(ctx))
}

/// [`unlisted`] for address `a` of the pod on link `ifindex`, looked up
/// here (at the sender's link, for a packet delivered straight into the
/// receiver: `fwd::into_pod`).
#[inline(always)]
pub fn unlisted_at(ifindex: u32, a: &Addr) -> bool {
    ENDPOINTS.get_ptr(a).is_none() && source::link_isolated(ifindex)
}

/// [`unlisted`] for the pod's own address `a`, not looked up yet (ICMP
/// errors at the pod's hooks).
#[inline(always)]
pub fn unlisted_addr(ctx: &TcContext, a: &Addr) -> bool {
    unlisted(ctx, ENDPOINTS.get_ptr(a))
}

/// Whether the pod's own address (`t`'s source from the pod, its
/// destination into it) is an endpoint under a policy; `None`, with the
/// packet counted and reported as dropped, when it is [`unlisted`]. (Not
/// inlined: the drop report stays out of the pod hooks' frames.)
#[inline(never)]
fn own_isolated(ctx: &TcContext, t: &Tuple, to_pod_side: bool) -> Option<bool> {
    let ep = ENDPOINTS.get_ptr(if to_pod_side { &t.daddr } else { &t.saddr });
    if unlisted(ctx, ep) {
        events::dropped_flow(ctx, t, DropReason::UnlistedAddress);
        return None;
    }
    Some(isolated(ep))
}

/// Judges a new flow for the checks in `mode`. Denials are counted and
/// reported; the caller drops the packet.
#[inline(always)]
pub fn allow_new(ctx: &TcContext, t: &Tuple, mode: u32) -> bool {
    let Some(s) = scratch() else { return false };
    s.judge_tuple = *t;
    allow_staged(ctx, mode)
}

/// [`allow_new`] for the tuple already in `scratch().judge_tuple` (see
/// `lb::stage_new_flow`): the caller's frame holds no copy of it.
#[inline(never)]
pub fn allow_staged(ctx: &TcContext, mode: u32) -> bool {
    let Some(s) = scratch() else { return false };
    // Map value pointers, not copies: an `Option<EndpointInfo>` kept across
    // the calls below is split into registers LLVM may spill undefined.
    let src = ENDPOINTS.get_ptr(&s.judge_tuple.saddr);
    let dst = ENDPOINTS.get_ptr(&s.judge_tuple.daddr);
    // The sender is the pod on this link (egress is judged at from_pod).
    if mode & CHECK_EGRESS != 0 && unlisted(ctx, src) {
        events::dropped_flow(ctx, &s.judge_tuple, DropReason::UnlistedAddress);
        return false;
    }
    // A pod may always reach itself (through its own service). Only its
    // own link can send such a flow: at to_pod, a packet claiming to come
    // from the pod itself came from somewhere else.
    if let (Some(a), Some(b)) = (src, dst) {
        // SAFETY: map value pointers, valid for the program run; read only.
        if unsafe { (*a).id == (*b).id } && mode & CHECK_EGRESS != 0 {
            return true;
        }
    }
    if mode & CHECK_EGRESS != 0 {
        if let Some(ep) = src.filter(|ep| must_judge(*ep, DIR_EGRESS)) {
            // SAFETY: as above.
            s.judge_ep = unsafe { *ep };
            let allowed = judge(ctx, DIR_EGRESS as u32);
            if debug_on() {
                debug::weir_log_policy(DIR_EGRESS as u32);
            }
            if !allowed {
                return false;
            }
        }
    }
    if mode & CHECK_INGRESS != 0 {
        if let Some(ep) = dst.filter(|ep| must_judge(*ep, DIR_INGRESS)) {
            // SAFETY: as above.
            s.judge_ep = unsafe { *ep };
            let host = if mode & FROM_HOST != 0 { (ALLOW_HOST as u32) << 8 } else { 0 };
            let allowed = judge(ctx, DIR_INGRESS as u32 | host);
            if debug_on() {
                debug::weir_log_policy(DIR_INGRESS as u32);
            }
            if !allowed {
                return false;
            }
        }
    }
    true
}

/// Whether endpoint `ep`'s verdict in `direction` needs [`judge`]. An
/// endpoint no policy selects in that direction is allowed whatever the
/// peer, with no rule and so no log or audit flag (`decide` returns before
/// any `WEIR_POLICY` lookup); only its report would show more: the peer's
/// identity, an ipcache LPM lookup. So it is judged only when an allow
/// can be reported (sampled to the agent, or a monitor watching) or the
/// debug log would record it; otherwise the allow is taken as it stands,
/// and a new flow between two such pods pays neither lookup.
#[inline(always)]
fn must_judge(ep: *const EndpointInfo, direction: u8) -> bool {
    // SAFETY: a map value pointer, valid for the program run; read only.
    let isolated = unsafe { (*ep).isolated(direction) };
    isolated
        || debug_on()
        || conntrack::config().is_none_or(|c| c.allow_event_sample != 0)
        || events::monitoring(conntrack::now_ns())
}

/// One end's decision, for the tuple and endpoint `allow_new` left in
/// scratch space. `code`: the direction, and `ALLOW_HOST << 8` for a flow
/// the node itself opens (always allowed). A frame of its own keeps the
/// BPF call chain within its 512-byte stack; inputs travel through scratch
/// space because LLVM would otherwise promote them into more than the
/// five argument registers a BPF call has.
#[inline(never)]
fn judge(ctx: &TcContext, code: u32) -> bool {
    let Some(s) = scratch() else { return false };
    // The tuple is read in place (nothing below writes it): a copy would
    // cost the frame 40 bytes of the call chain's 512.
    let (t, ep) = (&s.judge_tuple, s.judge_ep);
    let ep = &ep;
    let direction = (code & 0xff) as u8;
    let peer = if direction == DIR_EGRESS { &t.daddr } else { &t.saddr };
    // Rules name ports of TCP and UDP only; any other protocol is matched
    // by rules that name no port.
    let port = if t.proto == PROTO_TCP || t.proto == PROTO_UDP { u16::from_be(t.dport) } else { 0 };
    let mut d = decide(&KernelMaps, ep, direction, peer, t.proto, port);
    if code >> 8 == ALLOW_HOST as u32 {
        d.allowed = true;
    }
    if debug_on() {
        if let Some(s) = scratch() {
            s.judge_decision = d;
        }
    }
    report(ctx, t, &d, ep.id, code)
}

/// Counts and reports one decision; returns whether it allowed.
/// `code` is the direction, with an allow reason in bits 8..16. Denials,
/// logged and audited flows go to the agent and any monitor; other
/// allows to the agent when sampled and to a monitor while one watches.
#[inline(always)]
fn report(ctx: &TcContext, t: &Tuple, d: &Decision, ep: u32, code: u32) -> bool {
    if !d.allowed {
        errors::drop_reason(DropReason::PolicyDenied);
        events::policy_verdict(ctx, t, d, ep, code | ((DropReason::PolicyDenied as u32) << 8) | events::TO_AGENT);
        return false;
    }
    let sample = conntrack::config().map_or(0, |c| c.allow_event_sample);
    // Log rules and audited verdicts are always reported.
    // SAFETY: plain helper call.
    let to_agent = d.flags != 0 || (sample != 0 && (sample == 1 || unsafe { bpf_get_prandom_u32() } % sample == 0));
    if to_agent || events::monitoring(conntrack::now_ns()) {
        let why = if code >> 8 != 0 {
            code >> 8
        } else if d.isolated {
            ALLOW_RULE as u32
        } else {
            ALLOW_NOT_ISOLATED as u32
        };
        let flag = if to_agent { events::TO_AGENT } else { 0 };
        events::policy_verdict(ctx, t, d, ep, (code & 0xff) | (why << 8) | flag);
    }
    true
}

/// Whether the packet belongs to a live flow the policy already allowed;
/// refreshes the flow's entry. The entry's key is the opener's tuple:
/// a packet with that tuple travels in the original direction, a packet
/// with the reversed tuple is a reply. A TCP SYN is never a reply (a new
/// connection from the responder is judged on its own), and a SYN over a
/// closing or closed entry is a new connection reusing the tuple: judged
/// again.
#[inline(never)]
fn tracked(t: &Tuple, now: u64) -> bool {
    let Some(cfg) = conntrack::config() else { return false };
    let Some(s) = scratch() else { return false };
    let (sa, da) = (t.saddr, t.daddr);
    let syn = t.proto == PROTO_TCP && is_syn(t.tcp_flags);
    s.pkey = key(sa, da, t.sport, t.dport, t.proto, CT_POLICY);
    if let Some(e) = conntrack::tail_any(&s.pkey) {
        if alive_until(e.expires_s, now) && !reopens(t.proto, e.state, t.tcp_flags) {
            touch(e, cfg, t.proto, t.tcp_flags, DIR_ORIG, now);
            return true;
        }
    }
    if syn {
        return false;
    }
    s.pkey = key(da, sa, t.dport, t.sport, t.proto, CT_POLICY);
    if let Some(e) = conntrack::tail_any(&s.pkey) {
        if alive_until(e.expires_s, now) {
            touch(e, cfg, t.proto, t.tcp_flags, DIR_REPLY, now);
            return true;
        }
    }
    false
}

/// Whether a packet arriving at a pod belongs to a service flow (the
/// service path judged it when the flow began): a request after DNAT
/// matches the flow's reverse entry reversed; a reply after reverse NAT
/// matches its forward entry reversed. Only packets this datapath
/// translated (marked) are asked: one that merely looks like a
/// translated packet came from somewhere else.
#[inline(never)]
fn service_flow(t: &Tuple, now: u64) -> bool {
    let Some(s) = scratch() else { return false };
    let (sa, da) = (t.saddr, t.daddr);
    s.pkey = key(da, sa, t.dport, t.sport, t.proto, CT_SVC_REV);
    if conntrack::alive_any(&s.pkey, now) {
        return true;
    }
    s.pkey = key(da, sa, t.dport, t.sport, t.proto, CT_SVC_FWD);
    conntrack::alive_any(&s.pkey, now)
}

/// Whether an ICMP error to `to` quoting the flow `inner` (the tuple of
/// the packet that caused it) relates to a flow the policy allowed, in
/// either direction. An error goes to the quoted packet's sender.
#[inline(never)]
pub fn related(to: &Addr, inner: &Tuple, now: u64) -> bool {
    if *to != inner.saddr {
        return false;
    }
    let Some(s) = scratch() else { return false };
    let (sa, da) = (inner.saddr, inner.daddr);
    s.pkey = key(sa, da, inner.sport, inner.dport, inner.proto, CT_POLICY);
    if conntrack::alive_any(&s.pkey, now) {
        return true;
    }
    s.pkey = key(da, sa, inner.dport, inner.sport, inner.proto, CT_POLICY);
    conntrack::alive_any(&s.pkey, now)
}

/// Records an allowed flow so the rest of it, and its replies, pass.
/// The entry is charged to the pod link `owner`; over its quota the flow
/// is refused (false).
#[inline(never)]
fn track(t: &Tuple, now: u64, owner: u32) -> bool {
    // A pod reaching itself is always allowed: nothing to remember.
    if t.saddr == t.daddr {
        return true;
    }
    let Some(cfg) = conntrack::config() else { return false };
    let Some(s) = scratch() else { return false };
    if !within_quota(cfg, owner) {
        return false;
    }
    let st = first(t.proto, t.tcp_flags);
    conntrack::clear_entry(&mut s.pentry);
    s.pentry.state = st.state;
    s.pentry.flags = st.flags;
    s.pentry.expires_s = expiry(cfg, st.state, now);
    s.pentry.owner = owner;
    s.pkey = key(t.saddr, t.daddr, t.sport, t.dport, t.proto, CT_POLICY);
    match create_any(&s.pkey, &s.pentry) {
        Ok(()) => true,
        // A stale entry of the tuple (or another CPU's): take it over.
        Err(Exists::Yes) => replace_any(&s.pkey, &s.pentry).is_ok() || fail_full(),
        Err(Exists::No) => fail_full(),
    }
}

#[inline(always)]
fn fail_full() -> bool {
    errors::record(DpError::CtFull);
    errors::drop_reason(DropReason::CtFull);
    false
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's lifetime.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// from_pod, for traffic that is not a service flow. (Not inlined: its
/// locals stay out of the program's top frame, which `reject` stacks on.)
/// Later fragments never create state: one whose flow is not tracked
/// under a policy is dropped.
#[inline(never)]
pub fn from_pod(ctx: &TcContext, pkt: &Ipv4Pkt, now: u64) -> i32 {
    flow_from_pod(ctx, &Tuple::of(pkt), pkt.later_fragment(), now)
}

/// [`from_pod`] for a flow of either family; `later`: a later fragment.
#[inline(always)]
pub fn flow_from_pod(ctx: &TcContext, t: &Tuple, later: bool, now: u64) -> i32 {
    let Some(own_isolated) = own_isolated(ctx, t, false) else { return TC_ACT_SHOT as i32 };
    if !(own_isolated || isolated(ENDPOINTS.get_ptr(&t.daddr))) || tracked(t, now) {
        return TC_ACT_OK as i32;
    }
    if later {
        return events::dropped_flow(ctx, t, DropReason::FragmentUnknown);
    }
    if !allow_new(ctx, t, CHECK_EGRESS | CHECK_INGRESS) || !track(t, now, ifindex(ctx)) {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

/// Traffic that is neither TCP nor UDP and not an ICMP error (ICMP echo,
/// SCTP, ...), in either hook: judged like a flow, with no port (so only
/// rules that name no port allow it), and tracked by (addresses,
/// protocol, ICMP echo identifier), so replies pass.
#[inline(never)]
pub fn other(ctx: &TcContext, pkt: &Ipv4Pkt, to_pod_side: bool) -> i32 {
    let now = conntrack::now_ns();
    if to_pod_side { to_pod(ctx, pkt, now) } else { from_pod(ctx, pkt, now) }
}

/// to_pod: the receiver's ingress, for flows no local from_pod judged.
#[inline(never)]
pub fn to_pod(ctx: &TcContext, pkt: &Ipv4Pkt, now: u64) -> i32 {
    flow_to_pod(ctx, &Tuple::of(pkt), pkt.later_fragment(), now)
}

/// [`to_pod`] for a flow of either family; `later`: a later fragment.
#[inline(always)]
pub fn flow_to_pod(ctx: &TcContext, t: &Tuple, later: bool, now: u64) -> i32 {
    let translated = crate::nat::take_translated(ctx);
    let Some(own_isolated) = own_isolated(ctx, t, true) else { return TC_ACT_SHOT as i32 };
    if !own_isolated || tracked(t, now) || (translated && service_flow(t, now)) {
        return TC_ACT_OK as i32;
    }
    if later {
        return events::dropped_flow(ctx, t, DropReason::FragmentUnknown);
    }
    // SAFETY: the context pointer is valid for the program's lifetime.
    let from_host = unsafe { (*ctx.skb.skb).ingress_ifindex } == 0;
    let mode = if from_host { CHECK_INGRESS | FROM_HOST } else { CHECK_INGRESS };
    if !allow_new(ctx, t, mode) || !track(t, now, ifindex(ctx)) {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

/// Whether either end of `t` is a local endpoint under some policy.
#[inline(always)]
pub fn flow_enforced(t: &Tuple) -> bool {
    enforced(t)
}

/// Whether either end of the ICMP error's outer tuple is under a policy.
#[inline(always)]
pub fn error_enforced(pkt: &Ipv4Pkt) -> bool {
    enforced(&Tuple::of(pkt))
}
