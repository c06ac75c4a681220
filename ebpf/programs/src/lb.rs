//! Service load balancing: frontend match, backend selection (conntrack,
//! ClientIP affinity, Maglev or random), DNAT, and reverse NAT of replies.
//! Selection logic is `weir_logic::select`, shared with `weir explain`.
//! Written once for both address families, over `family::Packet`.
//!
//! A new flow's two entries are created with `BPF_NOEXIST`:
//! - the reverse entry first: if its tuple (backend → client) is taken by
//!   another live flow (the same client port to two VIPs that share a
//!   backend), the client's source port is remapped to a free one, as
//!   kernel NAT does;
//! - then the forward entry, which elects one winner when two CPUs create
//!   the same flow: the loser drops its reverse entry and uses the
//!   winner's backend.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_get_prandom_u32, programs::TcContext};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtKey, CtStat, CT_F_HAIRPIN, CT_F_MASQ, CT_F_REMAPPED, CT_STATE_CLOSED, CT_STATE_CLOSING, CT_STATE_SYN, CT_SVC_FWD, CT_SVC_REV, DIR_ORIG, DIR_REPLY},
    drop::DropReason,
    lb::{
        AffinityKey, AffinityValue, Backend, FrontendKey, Service, SourceRangeKey, PROTO_TCP, SCOPE_EXTERNAL, SCOPE_INTERNAL},
    stats::DpError,
};
use weir_logic::{
    ct::{backend_sees_in, first, is_alive, is_syn, reopens, source_translated, TCP_ACK, TCP_SYN},
    frontend::{external_entry, masquerades, never_a_reply, refuse_new, Origin, Refusal},
    hash::flow_hash,
    select::{affinity_valid, choose_slot, eligible, has_affinity},
};

use crate::{
    conntrack::{self, clear_entry, copy_entry, create, key, remove, replace, stat, sync_twin, touch, within_quota, Ct, Exists, Family},
    debug::{self, debug_on, trace_on},
    errors,
    family::Packet,
    fwd::too_big,
    maps::{read, scratch, AFFINITY, BACKENDS, FRONTENDS, LB_TABLE, SOURCE_RANGES},
    nat::mark_translated,
    policy::Tuple,
};

/// Returned by [`reverse`] and [`forward`] when the packet is not theirs.
pub const NOT_HANDLED: i32 = i32::MIN;

/// Returned by [`forward`] for a packet of an existing flow, and by
/// [`commit`]: the flow's translation is in scratch space; the caller
/// runs [`translate`].
pub const TRANSLATE: i32 = i32::MIN + 1001;

/// Returned by [`forward`] for a packet that opens a new connection: the
/// caller runs [`open`] (a call beside [`forward`], not under it, for the
/// stack).
pub const OPEN: i32 = i32::MIN + 1002;

/// Returned by [`open`] for a new connection: the backend is chosen and
/// the conntrack entries are prepared in scratch space, but nothing is
/// written until the caller has asked the policy and called [`commit`].
/// (Keeping the policy call out of `open` keeps the BPF call chain
/// within its 512-byte stack.)
pub const NEW_FLOW: i32 = i32::MIN + 1000;

/// [`forward`], [`open`] and [`commit`] ask their caller to reject (answer) or drop
/// the packet with a reason. The caller runs `reject` at the top of the
/// call chain, where its stack frame fits the 512-byte combined BPF limit.
const REJECT_BASE: i32 = i32::MIN + 1;
const DROP_BASE: i32 = i32::MIN + 100;

#[inline(always)]
fn reject_with(reason: DropReason) -> i32 {
    REJECT_BASE + reason as i32
}

#[inline(always)]
fn drop_with(reason: DropReason) -> i32 {
    DROP_BASE + reason as i32
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

/// The reason [`forward`] or [`commit`] asked to drop with, if they did.
#[inline(always)]
pub fn dropped(verdict: i32) -> Option<DropReason> {
    // Any reason, not a list: a drop verdict never reaches tc as a raw
    // action code (one that was missing here once let packets through).
    let r = verdict.wrapping_sub(DROP_BASE);
    if !(0..64).contains(&r) {
        return None;
    }
    DropReason::from_u32(r as u32)
}

/// Turns a "drop with reason" code of the service path into the drop
/// (counted and reported), and a packet too big for its egress into ICMP
/// fragmentation needed sent `back` (`reject::BACK_*`); any other verdict
/// passes through.
#[inline(always)]
pub fn settle<P: Packet>(ctx: &TcContext, pkt: &P, verdict: i32, back: u32) -> i32 {
    if let Some(mtu) = too_big(verdict) {
        return pkt.too_big(ctx, mtu, back);
    }
    match dropped(verdict) {
        Some(reason) => pkt.dropped(ctx, reason),
        None => verdict,
    }
}

/// Whether `addr` is a service IP (any port).
#[inline(never)]
pub fn is_vip(addr: &Addr) -> bool {
    let k = FrontendKey { addr: *addr, port: 0, proto: 0, scope: SCOPE_INTERNAL };
    FRONTENDS.get_ptr(&k).is_some()
}

/// The forward key of the flow a reverse entry belongs to.
#[inline(always)]
fn fwd_key_of(rev: &CtEntry, proto: u8) -> CtKey {
    key(rev.orig_addr, rev.nat_addr, rev.orig_port, rev.nat_port, proto, CT_SVC_FWD)
}

/// A reply from a backend: restore the service address as the source
/// (and the client's own port and, for hairpin flows, address as the
/// destination), then forward it (`REVERSE_REDIRECT`, or
/// `REVERSE_FROM_POD` at a pod link's from_pod) or let it go on
/// where it is (`REVERSE_IN_PLACE`: at to_pod, for replies of backends
/// in the node's own network namespace). The caller has validated the
/// source: only the backend's own link (or the node itself) can send from
/// the backend's address.
#[inline(never)]
pub fn reverse<P: Packet>(ctx: &TcContext, pkt: &mut P, cfg: &DatapathConfig, now: u64, how: u32) -> i32 {
    // A SYN opens a connection; it is never a reply.
    if pkt.proto() == PROTO_TCP && is_syn(pkt.tcp_flags()) {
        return NOT_HANDLED;
    }
    let Some(s) = scratch() else { return NOT_HANDLED };
    s.rkey = key(P::wide(pkt.saddr()), P::wide(pkt.daddr()), pkt.sport(), pkt.dport(), pkt.proto(), CT_SVC_REV);
    let Some(e) = conntrack::lookup::<P::A>(&s.rkey) else { return NOT_HANDLED };
    // An IPv6 entry whose service is gone cannot restore its address.
    if !e.read(&s.rkey, &mut s.rev) {
        return NOT_HANDLED;
    }
    s.fkey = fwd_key_of(&s.rev, pkt.proto());
    let twin = conntrack::lookup::<P::A>(&s.fkey);
    let twin_alive = twin.is_some_and(|t| t.alive(now));
    if !is_alive(&s.rev, now) && !twin_alive {
        return NOT_HANDLED;
    }
    // A SYN-ACK over a finished flow answers a new handshake that did not
    // go through the service (a direct connection reusing the tuple): the
    // stale entry must not rewrite it. Only the backend can send this.
    let synack = pkt.proto() == PROTO_TCP && pkt.tcp_flags() & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK);
    if synack && (s.rev.state == CT_STATE_CLOSING || s.rev.state == CT_STATE_CLOSED) {
        remove::<P::A>(&s.rkey);
        return NOT_HANDLED;
    }
    let changed = touch(e.tail(), cfg, pkt.proto(), pkt.tcp_flags(), DIR_REPLY, now);
    match twin {
        Some(_) if changed => sync_twin::<P::A>(&s.fkey, e.tail()),
        Some(_) => {}
        None => rebuild_fwd(e),
    }
    keep_untranslated(pkt);
    if pkt.snat(ctx, &s.rev.nat_addr, s.rev.nat_port).is_err() {
        return reject_malformed();
    }
    // The reply goes to the client's own address (`orig_addr`): the backend
    // answered what it saw (the hairpin or node address) when the flow's
    // source was translated, and the client's address (a no-op) otherwise.
    if pkt.dnat(ctx, &s.rev.orig_addr, s.rev.orig_port).is_err() {
        return reject_malformed();
    }
    mark_translated(ctx);
    if how == REVERSE_IN_PLACE {
        if debug_on() {
            log_nat(debug::NAT_REPLY, pkt);
        }
        return aya_ebpf::bindings::TC_ACT_OK as i32;
    }
    forward_or_restore(ctx, pkt, debug::NAT_REPLY, how == REVERSE_FROM_POD && !crate::conntrack::migrating())
}

/// Keeps the packet's addresses and ports before translation in scratch
/// space (`orig`), to undo it or log it.
#[inline(always)]
fn keep_untranslated<P: Packet>(pkt: &P) {
    if let Some(s) = scratch() {
        s.orig.saddr = P::wide(pkt.saddr());
        s.orig.daddr = P::wide(pkt.daddr());
        s.orig.sport = pkt.sport();
        s.orig.dport = pkt.dport();
    }
}

/// A packet's address and port in one debug-log argument.
#[inline(always)]
fn ep_of<P: Packet>(slot: u32, a: P::A, port: u16) -> u64 {
    P::log_ep(slot, a, port)
}

/// The debug log of a rewrite (`nat`: `debug::NAT_*`), from what
/// [`keep_untranslated`] kept to `pkt`.
#[inline(always)]
fn log_nat<P: Packet>(nat: u32, pkt: &P) {
    let Some(s) = scratch() else { return };
    let (src, dst) = (ep_of::<P>(0, P::narrow(&s.orig.saddr), s.orig.sport), ep_of::<P>(1, P::narrow(&s.orig.daddr), s.orig.dport));
    let (new_src, new_dst) = (ep_of::<P>(2, pkt.saddr(), pkt.sport()), ep_of::<P>(3, pkt.daddr(), pkt.dport()));
    if P::V4 {
        debug::weir_log_nat(nat, src, dst, new_src, new_dst);
    } else {
        debug::weir_log_nat6(nat, src, dst, new_src, new_dst);
    }
}

/// Forwards the translated packet; one too big for its egress with Don't
/// Fragment set gets its translation undone (the answer quotes what the
/// sender sent) and its too-big verdict returned, for [`settle`]. With
/// debug logs on, logs the rewrite (`nat`: `debug::NAT_*`) and where the
/// packet went, behind one guard (this runs for every translated packet).
#[inline(always)]
fn forward_or_restore<P: Packet>(ctx: &TcContext, pkt: &mut P, nat: u32, from_pod: bool) -> i32 {
    let verdict = pkt.redirect(ctx, from_pod);
    if debug_on() {
        log_nat(nat, pkt);
        debug::weir_log_fwd(ep_of::<P>(0, pkt.daddr(), 0));
    }
    if crate::fwd::unlisted(verdict) {
        return pkt.dropped(ctx, DropReason::UnlistedAddress);
    }
    if too_big(verdict).is_some() {
        let Some(s) = scratch() else { return reject_malformed() };
        if pkt.snat(ctx, &s.orig.saddr, s.orig.sport).is_err() || pkt.dnat(ctx, &s.orig.daddr, s.orig.dport).is_err() {
            return reject_malformed();
        }
        // The answer is no translated packet.
        crate::nat::take_translated(ctx);
    }
    verdict
}

/// [`reverse`]: forward the translated reply (from the network).
pub const REVERSE_REDIRECT: u32 = 0;
/// [`reverse`]: forward the translated reply from a pod's link (to a pod
/// of this node, straight into it: `fwd::into_pod`).
pub const REVERSE_FROM_POD: u32 = 2;
/// [`reverse`]: translate in place (a reply already on its way to the pod).
pub const REVERSE_IN_PLACE: u32 = 1;

/// The forward half of a live flow is gone (evicted): rebuild it from
/// the reverse half (met by the reply whose key is `scratch().rkey`), so
/// the client's next packet keeps its backend.
#[inline(never)]
fn rebuild_fwd<F: Family>(rev: Ct<F>) {
    let Some(s) = scratch() else { return };
    rev.read(&s.rkey, &mut s.fwd);
    s.fwd.nat_addr = s.rkey.saddr;
    s.fwd.nat_port = s.rkey.sport;
    s.fwd.orig_port = s.rkey.dport;
    if create::<F>(&s.fkey, &s.fwd).is_ok() {
        stat(CtStat::HalfRebuilt);
    }
}

/// [`frontend`]: no frontend serves the packet's address, port and
/// protocol.
pub const FRONT_NONE: u32 = 0;
/// [`frontend`]: a ClusterIP serves the packet. Its destination is a
/// service address, which is never a client's, so the packet is never a
/// reply of a service flow and [`reverse`] need not look it up.
pub const FRONT_CLUSTER_IP: u32 = 1;
/// [`frontend`]: another kind of frontend serves it (NodePort,
/// LoadBalancer, external IP), whose address can also be a client's (the
/// node's, for a masqueraded flow): a reply is looked for first.
pub const FRONT_OTHER: u32 = 2;

/// Looks up the frontend serving the packet (for a split frontend, the
/// entry `origin` is served by) into scratch space for [`forward`], and
/// says what kind it is (`FRONT_*`). The callers run it before
/// [`reverse`], so that a packet to a ClusterIP, the common case, pays no
/// conntrack lookup for a reply it cannot be.
#[inline(never)]
pub fn frontend<P: Packet>(pkt: &P, origin: Origin) -> u32 {
    let Some(s) = scratch() else { return FRONT_NONE };
    s.front = FRONT_NONE;
    s.frontend = FrontendKey { addr: P::wide(pkt.daddr()), port: pkt.dport(), proto: pkt.proto(), scope: SCOPE_INTERNAL };
    let Some(svc) = read(FRONTENDS.get_ptr(&s.frontend)) else { return FRONT_NONE };
    s.svc = svc;
    // A split frontend (externalTrafficPolicy: Local) serves traffic from
    // outside the node from its external entry.
    if external_entry(&svc, origin) {
        s.frontend.scope = SCOPE_EXTERNAL;
        if let Some(ext) = read(FRONTENDS.get_ptr(&s.frontend)) {
            s.svc = ext;
        }
    }
    s.front = if never_a_reply(&s.svc) { FRONT_CLUSTER_IP } else { FRONT_OTHER };
    s.front
}

/// A packet to a service frontend ([`frontend`] has looked it up): a
/// packet of a live flow keeps its backend ([`TRANSLATE`]); one that
/// opens a flow goes to [`open`] ([`OPEN`]). Traffic to a service IP on a
/// port it does not serve is rejected.
#[inline(never)]
pub fn forward<P: Packet>(pkt: &P, cfg: &DatapathConfig, now: u64) -> i32 {
    let Some(s) = scratch() else { return NOT_HANDLED };
    let svc: Service = match s.front {
        FRONT_CLUSTER_IP | FRONT_OTHER => s.svc,
        _ => {
            s.frontend = FrontendKey { addr: P::wide(pkt.daddr()), port: 0, proto: 0, scope: SCOPE_INTERNAL };
            if FRONTENDS.get_ptr(&s.frontend).is_some() {
                s.svc_flags = 0; // only ClusterIPs mark their address
                if debug_on() {
                    debug::weir_log_lb_unknown_port(ep_of::<P>(0, pkt.daddr(), pkt.dport()), pkt.proto() as u32);
                }
                return reject_with(DropReason::UnknownServicePort);
            }
            if trace_on() {
                debug::weir_log_lb_miss(ep_of::<P>(0, pkt.daddr(), pkt.dport()), pkt.proto() as u32);
            }
            return NOT_HANDLED;
        }
    };
    s.svc_flags = svc.flags;
    // The client and the service address are read from the key from here on.
    s.fkey = key(P::wide(pkt.saddr()), P::wide(pkt.daddr()), pkt.sport(), pkt.dport(), pkt.proto(), CT_SVC_FWD);

    // An existing flow keeps its backend while the backend exists, unless
    // a SYN reopens a finished flow.
    if let Some(e) = conntrack::lookup::<P::A>(&s.fkey) {
        // A backend that is gone reads as the zero address, which
        // `backend_matches` refuses.
        e.read(&s.fkey, &mut s.fwd);
        s.rkey = rev_key::<P>(&s.fwd, cfg, pkt.proto());
        let twin = conntrack::lookup::<P::A>(&s.rkey);
        let live = is_alive(&s.fwd, now) || twin.is_some_and(|t| t.alive(now));
        let reuse = live
            && s.fwd.svc_id == svc.id
            && backend_matches(s.fwd.backend_id, &s.fwd.nat_addr, s.fwd.nat_port)
            && !reopens(pkt.proto(), s.fwd.state, pkt.tcp_flags());
        if reuse {
            let changed = touch(e.tail(), cfg, pkt.proto(), pkt.tcp_flags(), DIR_ORIG, now);
            match twin {
                Some(_) if changed => sync_twin::<P::A>(&s.rkey, e.tail()),
                Some(_) => {}
                None => rebuild_rev(e),
            }
            // `s.fwd` still holds the translation (only the state moved).
            return TRANSLATE;
        }
    }

    // A new connection. Later fragments never create one.
    if pkt.later_fragment() {
        return drop_with(DropReason::FragmentUnknown);
    }
    OPEN
}

/// A new connection to the frontend [`forward`] matched (it returned
/// [`OPEN`]): refuse it as kube-proxy would, or choose its backend and
/// prepare its conntrack entries in scratch space ([`NEW_FLOW`]).
/// `origin` (a pod, or outside the node) decides whether it is
/// masqueraded.
#[inline(never)]
pub fn open<P: Packet>(ctx: &TcContext, pkt: &P, cfg: &DatapathConfig, now: u64, origin: Origin) -> i32 {
    let Some(s) = scratch() else { return NOT_HANDLED };
    let svc = s.svc;
    if let Some(refusal) = refuse_new(&svc, || in_source_ranges(svc.id, &s.fkey.saddr)) {
        let (verdict, reason) = match refusal {
            Refusal::Drop(reason) => (drop_with(reason), reason),
            Refusal::Reject(reason) => (reject_with(reason), reason),
        };
        if debug_on() {
            debug::weir_log_lb_refused(ep_of::<P>(0, pkt.saddr(), pkt.sport()), svc.id, reason as u32);
        }
        return verdict;
    }
    let backend_id = select(&svc, pkt, now, &mut s.backend);
    if backend_id == NO_BACKEND {
        if debug_on() {
            debug::weir_log_lb_no_backend(ep_of::<P>(0, pkt.daddr(), pkt.dport()), pkt.proto() as u32, svc.id);
        }
        return reject_with(DropReason::NoEndpoints);
    }
    if debug_on() {
        let chosen = ep_of::<P>(2, P::narrow(&s.backend.addr), s.backend.port);
        debug::weir_log_lb_backend(ep_of::<P>(0, pkt.daddr(), pkt.dport()), ep_of::<P>(1, pkt.saddr(), pkt.sport()), chosen, svc.id, backend_id);
    }
    let st = first(pkt.proto(), pkt.tcp_flags());
    clear_entry(&mut s.fwd);
    s.fwd.expires_s = weir_logic::ct::expiry(cfg, st.state, now);
    s.fwd.nat_addr = s.backend.addr;
    s.fwd.orig_addr = s.fkey.saddr;
    s.fwd.backend_id = backend_id;
    s.fwd.svc_id = svc.id;
    s.fwd.nat_port = s.backend.port;
    s.fwd.orig_port = pkt.sport();
    s.fwd.state = st.state;
    s.fwd.flags = st.flags;
    if s.backend.addr == s.fkey.saddr {
        s.fwd.flags |= CT_F_HAIRPIN;
    } else if masquerades(&svc, cfg, &s.backend.addr, origin) {
        s.fwd.flags |= CT_F_MASQ;
        s.fwd.orig_port = masq_port(cfg).to_be();
    }
    // Flows from outside are charged to no pod link: the quota bounds
    // what one pod can open.
    // SAFETY: the context pointer is valid for the program's lifetime.
    s.fwd.owner = if origin == Origin::Outside { 0 } else { unsafe { (*ctx.skb.skb).ifindex } };
    copy_entry(&mut s.rev, &s.fwd);
    s.rev.nat_addr = s.fkey.daddr;
    s.rev.nat_port = pkt.dport();
    s.rev.orig_port = pkt.sport();
    s.rkey = rev_key::<P>(&s.fwd, cfg, pkt.proto());
    NEW_FLOW
}

/// Whether `client` is inside one of service `svc_id`'s source ranges.
#[inline(never)]
fn in_source_ranges(svc_id: u32, client: &Addr) -> bool {
    // The service id (32 bits) and the whole address (128; IPv4 mapped).
    let k = aya_ebpf::maps::lpm_trie::Key::new(32 + 128, SourceRangeKey { svc_id, addr: *client });
    SOURCE_RANGES.get(&k).is_some()
}

/// A port of the masquerade range (which the node's own connections never
/// take, see `weir_common::masq::PORT_MIN`), host order.
#[inline(always)]
fn masq_port(cfg: &DatapathConfig) -> u16 {
    let (min, max) = cfg.masq_ports();
    // SAFETY: plain helper call.
    let r = unsafe { bpf_get_prandom_u32() };
    // `masq_ports` never returns an empty range; `checked_rem` keeps a
    // panic path (which BPF cannot have) out of the program.
    (min as u32 + r.checked_rem(max.saturating_sub(min) as u32 + 1).unwrap_or(0)) as u16
}

/// The reverse half of a live flow is gone (evicted): rebuild it from the
/// forward half (met by the packet whose key is `scratch().fkey`), so the
/// backend's replies are still translated.
#[inline(never)]
fn rebuild_rev<F: Family>(fwd: Ct<F>) {
    let Some(s) = scratch() else { return };
    fwd.read(&s.fkey, &mut s.rev);
    s.rev.nat_addr = s.fkey.daddr;
    s.rev.nat_port = s.fkey.dport;
    s.rev.orig_port = s.fkey.sport;
    if create::<F>(&s.rkey, &s.rev).is_ok() {
        stat(CtStat::HalfRebuilt);
    }
}

/// Stages the tuple a new flow prepared by [`forward`] will have once
/// translated (client → backend) for the policy decision
/// (`policy::allow_staged`); false without scratch space.
#[inline(always)]
pub fn stage_new_flow<P: Packet>(pkt: &P) -> bool {
    let Some(s) = scratch() else { return false };
    s.judge_tuple = Tuple { saddr: P::wide(pkt.saddr()), daddr: s.fwd.nat_addr, sport: pkt.sport(), dport: s.fwd.nat_port, proto: pkt.proto(), tcp_flags: pkt.tcp_flags() };
    true
}

/// Creates the conntrack entries of the new flow [`forward`] prepared
/// ([`TRANSLATE`] then translates its first packet). Runs only once the
/// policy allowed it.
#[inline(never)]
pub fn commit<P: Packet>(pkt: &P, cfg: &DatapathConfig) -> i32 {
    let Some(s) = scratch() else { return drop_with(DropReason::CtFull) };
    if !within_quota(cfg, s.fwd.owner) {
        return drop_with(DropReason::CtQuota);
    }
    // Reverse first: a reply must never arrive before its translation exists.
    match claim_rev::<P::A>(cfg) {
        CLAIM_OK => {}
        CLAIM_FULL => return ct_full(),
        _ => return drop_with(DropReason::TupleCollision),
    }
    match create::<P::A>(&s.fkey, &s.fwd) {
        Ok(()) => {}
        Err(Exists::No) => {
            remove::<P::A>(&s.rkey);
            return ct_full();
        }
        Err(Exists::Yes) => {
            // Another CPU created this flow first, or a stale entry of the
            // same tuple is in the way.
            let Some(e) = conntrack::lookup::<P::A>(&s.fkey) else { return ct_full() };
            e.read(&s.fkey, &mut s.other);
            let now = conntrack::now_ns();
            let stale = !is_alive(&s.other, now)
                || s.other.svc_id != s.fwd.svc_id
                || reopens(pkt.proto(), s.other.state, pkt.tcp_flags())
                || !backend_matches(s.other.backend_id, &s.other.nat_addr, s.other.nat_port);
            if stale {
                if replace::<P::A>(&s.fkey, &s.fwd).is_err() {
                    remove::<P::A>(&s.rkey);
                    return ct_full();
                }
            } else {
                // The winner's flow stands: ours goes.
                let theirs = rev_key::<P>(&s.other, cfg, pkt.proto());
                if theirs != s.rkey {
                    remove::<P::A>(&s.rkey);
                }
                copy_entry(&mut s.fwd, &s.other);
            }
        }
    }
    TRANSLATE
}

const CLAIM_OK: u32 = 0;
const CLAIM_FULL: u32 = 1;
const CLAIM_COLLISION: u32 = 2;

/// How many free source ports a colliding flow tries.
const REMAP_TRIES: u32 = 8;

/// Creates the prepared reverse entry. A stale entry of the same tuple,
/// or one of this very flow (a retransmitted first packet), is replaced;
/// a live entry of another flow is a collision, resolved by remapping the
/// client's source port.
#[inline(never)]
fn claim_rev<F: Family>(cfg: &DatapathConfig) -> u32 {
    let Some(s) = scratch() else { return CLAIM_FULL };
    match create::<F>(&s.rkey, &s.rev) {
        Ok(()) => return CLAIM_OK,
        Err(Exists::No) => return CLAIM_FULL,
        Err(Exists::Yes) => {}
    }
    let Some(e) = conntrack::lookup::<F>(&s.rkey) else { return CLAIM_FULL };
    // One whose service is gone is no flow's any more: stale.
    let known = e.read(&s.rkey, &mut s.other);
    let same_flow = s.other.orig_addr == s.rev.orig_addr
        && s.other.nat_addr == s.rev.nat_addr
        && s.other.nat_port == s.rev.nat_port
        && s.other.orig_port == s.rev.orig_port;
    // A TCP flow that has finished (both FINs, or a RST) leaves its tuple
    // to a new connection's SYN, as a TIME_WAIT socket does: without this
    // a tuple space (the masquerade range, 4,536 ports per backend by default) is
    // held for the closing timeout after every short connection.
    let finished = s.rkey.proto == PROTO_TCP && s.fwd.state == CT_STATE_SYN && (s.other.state == CT_STATE_CLOSING || s.other.state == CT_STATE_CLOSED);
    if same_flow || finished || !known || !is_alive(&s.other, conntrack::now_ns()) {
        return if replace::<F>(&s.rkey, &s.rev).is_ok() { CLAIM_OK } else { CLAIM_FULL };
    }
    let masq = s.fwd.flags & CT_F_MASQ != 0;
    let mut i = 0;
    while i < REMAP_TRIES {
        let port = if masq {
            masq_port(cfg)
        } else {
            // SAFETY: plain helper call.
            (1024 + unsafe { bpf_get_prandom_u32() } % (65536 - 1024)) as u16
        };
        s.rkey.dport = port.to_be();
        match create::<F>(&s.rkey, &s.rev) {
            Ok(()) => {
                s.fwd.orig_port = s.rkey.dport;
                s.fwd.flags |= CT_F_REMAPPED;
                s.rev.flags |= CT_F_REMAPPED;
                stat(CtStat::PortRemapped);
                return CLAIM_OK;
            }
            Err(Exists::No) => return CLAIM_FULL,
            Err(Exists::Yes) => {}
        }
        i += 1;
    }
    CLAIM_COLLISION
}

#[inline(always)]
fn ct_full() -> i32 {
    errors::record(DpError::CtFull);
    drop_with(DropReason::CtFull)
}

/// The reverse-entry key of a forward entry: backend → client (or → the
/// hairpin address), at the client port the backend sees.
#[inline(always)]
fn rev_key<P: Packet>(fwd: &CtEntry, cfg: &DatapathConfig, proto: u8) -> CtKey {
    key(fwd.nat_addr, backend_sees_in(fwd.flags, cfg, fwd.orig_addr, P::V4), fwd.nat_port, fwd.orig_port, proto, CT_SVC_REV)
}

/// Whether backend `id` still exists with the address and port a flow's
/// forward entry holds.
#[inline(always)]
pub(crate) fn backend_matches(id: u32, addr: &Addr, port: u16) -> bool {
    match read(BACKENDS.get_ptr(&id)) {
        Some(b) => b.addr == *addr && b.port == port,
        None => false,
    }
}

/// Applies the forward translation of the flow in `scratch().fwd` and
/// forwards the packet. The callers of [`forward`] and [`commit`] run it
/// when they return [`TRANSLATE`] (not those two themselves: a call
/// beside them, not under them, keeps the call chain within the BPF
/// stack).
#[inline(never)]
pub fn translate<P: Packet>(ctx: &TcContext, pkt: &mut P, cfg: &DatapathConfig, origin: Origin) -> i32 {
    let Some(s) = scratch() else { return reject_malformed() };
    keep_untranslated(pkt);
    if pkt.dnat(ctx, &s.fwd.nat_addr, s.fwd.nat_port).is_err() {
        return reject_malformed();
    }
    // The client's own address, or what the backend sees instead.
    let sees;
    let from = if source_translated(s.fwd.flags) {
        sees = backend_sees_in(s.fwd.flags, cfg, s.fwd.orig_addr, P::V4);
        &sees
    } else {
        &s.fwd.orig_addr
    };
    if pkt.snat(ctx, from, s.fwd.orig_port).is_err() {
        return reject_malformed();
    }
    mark_translated(ctx);
    forward_or_restore(ctx, pkt, debug::NAT_SERVICE, origin == Origin::Pod && !crate::conntrack::migrating())
}

#[inline(always)]
fn reject_malformed() -> i32 {
    drop_with(DropReason::Malformed)
}

/// Backend ids start at 1.
const NO_BACKEND: u32 = 0;

/// Chooses a backend for a new connection: ClientIP affinity first (only
/// while its backend may take new connections), then the service's
/// selection table. Writes the backend to `out` and returns its id, or
/// [`NO_BACKEND`]. (BPF subprograms cannot return aggregates.)
#[inline(always)]
fn select<P: Packet>(svc: &Service, pkt: &P, now: u64, out: &mut Backend) -> u32 {
    let Some(s) = scratch() else { return NO_BACKEND };
    // The client and the service address as [`forward`] keyed them.
    let hash = flow_hash(&s.fkey.saddr, &s.fkey.daddr, pkt.sport(), pkt.dport(), pkt.proto());
    select_backend(svc, &s.fkey.saddr, hash, now, out)
}

/// [`select`] for a client address and a flow hash: also used by the
/// socket-level path, which hashes nothing (no source port exists at
/// connect time) and passes a random value.
#[inline(never)]
pub fn select_backend(svc: &Service, client: &Addr, hash: u32, now: u64, out: &mut Backend) -> u32 {
    let akey = AffinityKey { svc_id: svc.id, client: *client };
    if has_affinity(svc) {
        if let Some(a) = AFFINITY.get_ptr_mut(&akey) {
            // SAFETY: map value pointer.
            let a = unsafe { &mut *a };
            if affinity_valid(svc, a.last_ns, now) {
                if let Some(b) = read(BACKENDS.get_ptr(&a.backend_id)) {
                    if eligible(&b, svc) {
                        a.last_ns = now;
                        *out = b;
                        return a.backend_id;
                    }
                }
            }
        }
    }
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

