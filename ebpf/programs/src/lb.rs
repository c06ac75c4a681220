//! Service load balancing: frontend match, backend selection (conntrack,
//! ClientIP affinity, Maglev or random), DNAT, and reverse NAT of replies.
//! Selection logic is `weir_logic::select`, shared with `weir explain`.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_get_prandom_u32, programs::TcContext};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CT_F_HAIRPIN, CT_SVC_FWD, CT_SVC_REV},
    drop::DropReason,
    lb::{AffinityKey, AffinityValue, Backend, FrontendKey, Service, BACKEND_F_TERMINATING, SVC_F_TERMINATING_FALLBACK},
    stats::DpError,
};
use weir_logic::{
    ct::{is_alive, next_state},
    hash::flow_hash,
    select::{affinity_valid, choose_slot, has_affinity},
};

use crate::{
    conntrack::{self, close_twin, key, touch},
    errors,
    fwd::redirect_v4,
    hdr::Ipv4Pkt,
    maps::{read, scratch, AFFINITY, BACKENDS, FRONTENDS, LB_TABLE},
    nat::{dnat, snat},
    policy::Tuple,
};

/// Returned by [`reverse`] and [`forward`] when the packet is not theirs.
pub const NOT_HANDLED: i32 = i32::MIN;

/// Returned by [`forward`] for a new connection: the backend is chosen and
/// the conntrack entries are prepared in scratch space, but nothing is
/// written until the caller has asked the policy and called [`commit`].
/// (Keeping the policy call out of `forward` keeps the BPF call chain
/// within its 512-byte stack.)
pub const NEW_FLOW: i32 = i32::MIN + 1000;

/// [`forward`] asks its caller to reject the packet with a reason. The
/// caller runs `reject` at the top of the call chain, where its stack
/// frame fits the 512-byte combined BPF limit.
const REJECT_BASE: i32 = i32::MIN + 1;

#[inline(always)]
fn reject_with(reason: DropReason) -> i32 {
    REJECT_BASE + reason as i32
}

/// The reason [`forward`] asked to reject with, if it did.
#[inline(always)]
pub fn rejected(verdict: i32) -> Option<DropReason> {
    let r = verdict.wrapping_sub(REJECT_BASE);
    match r {
        x if x == DropReason::NoEndpoints as i32 => Some(DropReason::NoEndpoints),
        x if x == DropReason::UnknownServicePort as i32 => Some(DropReason::UnknownServicePort),
        _ => None,
    }
}

/// A reply from a backend: restore the service address as the source
/// (and, for hairpin flows, the client's own address as destination).
#[inline(never)]
pub fn reverse(ctx: &TcContext, pkt: &mut Ipv4Pkt, cfg: &DatapathConfig, now: u64) -> i32 {
    let (src, dst) = (Addr::from_v4_raw(pkt.saddr), Addr::from_v4_raw(pkt.daddr));
    let rkey = key(src, dst, pkt.sport, pkt.dport, pkt.proto, CT_SVC_REV);
    let Some(e) = conntrack::lookup(&rkey) else { return NOT_HANDLED };
    // SAFETY: map value pointer; copied out before any other map call.
    let entry: CtEntry = unsafe { *e };
    let fkey = key(entry.orig_addr, entry.nat_addr, pkt.dport, entry.nat_port, pkt.proto, CT_SVC_FWD);
    if !is_alive(&entry, now) && !conntrack::alive(&fkey, now) {
        return NOT_HANDLED;
    }
    if touch(e, cfg, pkt.proto, pkt.tcp_flags, now) {
        close_twin(&fkey, cfg, next_state(pkt.proto, entry.state, pkt.tcp_flags), now);
    }
    if snat(ctx, pkt, entry.nat_addr.v4_raw(), entry.nat_port).is_err() {
        return reject_malformed();
    }
    if entry.flags & CT_F_HAIRPIN != 0 && dnat(ctx, pkt, entry.orig_addr.v4_raw(), pkt.dport).is_err() {
        return reject_malformed();
    }
    redirect_v4(ctx, pkt)
}

/// A packet to a service frontend: pick (or recall) the backend and DNAT.
/// Traffic to a service IP on a port it does not serve is rejected.
#[inline(never)]
pub fn forward(ctx: &TcContext, pkt: &mut Ipv4Pkt, cfg: &DatapathConfig, now: u64) -> i32 {
    let Some(s) = scratch() else { return NOT_HANDLED };
    let (client, vip) = (Addr::from_v4_raw(pkt.saddr), Addr::from_v4_raw(pkt.daddr));
    s.frontend = FrontendKey { addr: vip, port: pkt.dport, proto: pkt.proto, scope: 0 };
    let svc: Service = match read(FRONTENDS.get_ptr(&s.frontend)) {
        Some(svc) => svc,
        None => {
            s.frontend.port = 0;
            s.frontend.proto = 0;
            if FRONTENDS.get_ptr(&s.frontend).is_some() {
                return reject_with(DropReason::UnknownServicePort);
            }
            return NOT_HANDLED;
        }
    };
    s.fkey = key(client, vip, pkt.sport, pkt.dport, pkt.proto, CT_SVC_FWD);

    // An existing flow keeps its backend while the backend exists.
    if let Some(e) = conntrack::lookup(&s.fkey) {
        // SAFETY: map value pointer; copied out.
        s.fwd = unsafe { *e };
        s.rkey = rev_key(&s.fwd, client, cfg, pkt);
        let live = is_alive(&s.fwd, now) || conntrack::alive(&s.rkey, now);
        if live && s.fwd.svc_id == svc.id && backend_matches(s.fwd.backend_id, &s.fwd) {
            if touch(e, cfg, pkt.proto, pkt.tcp_flags, now) {
                close_twin(&s.rkey, cfg, next_state(pkt.proto, s.fwd.state, pkt.tcp_flags), now);
            }
            return translate(ctx, pkt, &s.fwd, cfg);
        }
    }

    // A new connection.
    if svc.backend_count == 0 {
        return reject_with(DropReason::NoEndpoints);
    }
    let backend_id = select(&svc, pkt, now, &mut s.backend);
    if backend_id == NO_BACKEND {
        return reject_with(DropReason::NoEndpoints);
    }
    let state = next_state(pkt.proto, 0, pkt.tcp_flags);
    s.fwd.expires_ns = weir_logic::ct::expiry(cfg, state, now);
    s.fwd.created_ns = now;
    s.fwd.nat_addr = s.backend.addr;
    s.fwd.orig_addr = client;
    s.fwd.backend_id = backend_id;
    s.fwd.svc_id = svc.id;
    s.fwd.nat_port = s.backend.port;
    s.fwd.state = state;
    s.fwd.flags = if s.backend.addr == client { CT_F_HAIRPIN } else { 0 };
    s.fwd._pad = 0;
    s.rev = s.fwd;
    s.rev.nat_addr = vip;
    s.rev.nat_port = pkt.dport;
    s.rkey = rev_key(&s.fwd, client, cfg, pkt);
    NEW_FLOW
}

/// The tuple a new flow prepared by [`forward`] will have once translated
/// (client → backend), for the policy decision.
#[inline(always)]
pub fn new_flow_tuple(pkt: &Ipv4Pkt) -> Option<Tuple> {
    let s = scratch()?;
    Some(Tuple { saddr: pkt.saddr, daddr: s.fwd.nat_addr.v4_raw(), sport: pkt.sport, dport: s.fwd.nat_port, proto: pkt.proto, tcp_flags: pkt.tcp_flags })
}

/// Creates the conntrack entries of the new flow [`forward`] prepared and
/// translates its first packet. Runs only once the policy allowed it.
#[inline(never)]
pub fn commit(ctx: &TcContext, pkt: &mut Ipv4Pkt, cfg: &DatapathConfig) -> i32 {
    let Some(s) = scratch() else { return aya_ebpf::bindings::TC_ACT_SHOT as i32 };
    // Reverse first: a reply must never arrive before its translation exists.
    if conntrack::insert(&s.rkey, &s.rev).is_err() || conntrack::insert(&s.fkey, &s.fwd).is_err() {
        errors::record(DpError::CtFull);
        errors::drop_reason(DropReason::CtFull);
        return aya_ebpf::bindings::TC_ACT_SHOT as i32;
    }
    translate(ctx, pkt, &s.fwd, cfg)
}

/// A packet that is not service traffic, between addresses and ports that
/// a finished service flow used: its reverse entry would rewrite the
/// replies of this new, direct connection. Forget it, as kernel conntrack
/// forgets a TIME_WAIT entry when the tuple is reused. Only TCP SYNs and
/// UDP packets pay the lookup.
#[inline(never)]
pub fn forget_stale_reverse(pkt: &Ipv4Pkt) {
    let syn = pkt.proto == weir_common::lb::PROTO_TCP && weir_logic::ct::is_syn(pkt.tcp_flags);
    if !syn && pkt.proto != weir_common::lb::PROTO_UDP {
        return;
    }
    let Some(s) = scratch() else { return };
    s.rkey = key(Addr::from_v4_raw(pkt.daddr), Addr::from_v4_raw(pkt.saddr), pkt.dport, pkt.sport, pkt.proto, CT_SVC_REV);
    let _ = crate::maps::CT.remove(&s.rkey);
}

/// The reverse-entry key of a forward entry: backend → client (or → the
/// hairpin address).
#[inline(always)]
fn rev_key(fwd: &CtEntry, client: Addr, cfg: &DatapathConfig, pkt: &Ipv4Pkt) -> weir_common::ct::CtKey {
    let dst = if fwd.flags & CT_F_HAIRPIN != 0 { cfg.hairpin_addr } else { client };
    key(fwd.nat_addr, dst, fwd.nat_port, pkt.sport, pkt.proto, CT_SVC_REV)
}

#[inline(always)]
fn backend_matches(id: u32, entry: &CtEntry) -> bool {
    match read(BACKENDS.get_ptr(&id)) {
        Some(b) => b.addr == entry.nat_addr && b.port == entry.nat_port,
        None => false,
    }
}

/// Applies the forward translation of `fwd` and forwards the packet.
#[inline(never)]
fn translate(ctx: &TcContext, pkt: &mut Ipv4Pkt, fwd: &CtEntry, cfg: &DatapathConfig) -> i32 {
    if dnat(ctx, pkt, fwd.nat_addr.v4_raw(), fwd.nat_port).is_err() {
        return reject_malformed();
    }
    if fwd.flags & CT_F_HAIRPIN != 0 && snat(ctx, pkt, cfg.hairpin_addr.v4_raw(), pkt.sport).is_err() {
        return reject_malformed();
    }
    redirect_v4(ctx, pkt)
}

#[inline(always)]
fn reject_malformed() -> i32 {
    errors::drop_reason(DropReason::Malformed);
    aya_ebpf::bindings::TC_ACT_SHOT as i32
}

/// Backend ids start at 1.
const NO_BACKEND: u32 = 0;

/// Chooses a backend for a new connection: ClientIP affinity first, then
/// the service's selection table. Writes the backend to `out` and returns
/// its id, or [`NO_BACKEND`]. (BPF subprograms cannot return aggregates.)
#[inline(never)]
fn select(svc: &Service, pkt: &Ipv4Pkt, now: u64, out: &mut Backend) -> u32 {
    let (client, vip) = (Addr::from_v4_raw(pkt.saddr), Addr::from_v4_raw(pkt.daddr));
    let akey = AffinityKey { svc_id: svc.id, client };
    if has_affinity(svc) {
        if let Some(a) = AFFINITY.get_ptr_mut(&akey) {
            // SAFETY: map value pointer.
            let a = unsafe { &mut *a };
            if affinity_valid(svc, a.last_ns, now) {
                if let Some(b) = read(BACKENDS.get_ptr(&a.backend_id)) {
                    let eligible = b.flags & BACKEND_F_TERMINATING == 0 || svc.flags & SVC_F_TERMINATING_FALLBACK != 0;
                    if eligible {
                        a.last_ns = now;
                        *out = b;
                        return a.backend_id;
                    }
                }
            }
        }
    }
    let hash = flow_hash(&client, &vip, pkt.sport, pkt.dport, pkt.proto);
    // SAFETY: plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    let slot = choose_slot(svc, hash, random).slot();
    let Some(id) = read(LB_TABLE.get_ptr(svc.table_base.wrapping_add(slot))) else { return NO_BACKEND };
    let Some(backend) = read(BACKENDS.get_ptr(&id)) else { return NO_BACKEND };
    if has_affinity(svc) {
        let _ = AFFINITY.insert(&akey, &AffinityValue { backend_id: id, _pad: 0, last_ns: now }, BPF_ANY as u64);
    }
    *out = backend;
    id
}
