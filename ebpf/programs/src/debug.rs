//! Kernel debug logs (aya-log): the developer's printf at the decisions
//! that explain a drop or a translation. `weir monitor` stays the
//! structured interface; these lines are for reading along.
//!
//! Every record is written here, one function per line, so this file
//! lists everything the kernel can say. The deciding modules call them
//! behind [`debug_on`] or [`trace_on`]. Those read the `AYA_LOG_LEVEL`
//! global aya-log-ebpf keeps in `.rodata`, which the agent sets at load
//! time (`--bpf-log-level`, off by default). `.rodata` is frozen, so the
//! verifier knows the level and removes each guarded call above it: with
//! logs off the fast path runs none of this code.
//!
//! The functions are BPF *global* functions (`#[no_mangle] extern "C"`,
//! scalar arguments, a scalar result), which the verifier checks once
//! each, on their own, instead of once for every path that reaches a
//! call: aya-log's formatting is long (and explores every buffer size it
//! could reserve), and checked inline the pod programs went past the
//! verifier's million instructions. Their stack frames are their own as
//! well, so the deciding functions' frames (BPF's 512 bytes are shared by
//! the whole call chain) stay as they were. A global function takes at
//! most five arguments and no pointers here: an address and port travel
//! packed in one ([`ep`]). An IPv6 address does not fit: [`ep6`] keeps it
//! in a scratch slot (one per address of the record) and packs the slot,
//! flagged IPv6, with the port; each record has an IPv6 format beside its
//! IPv4 one and prints `[addr]:port`, as the CLI does.
//!
//! Levels:
//! - debug: the decisions of a flow: frontend matched and backend chosen
//!   (or why none was), a frontend miss on a service IP, the policy
//!   verdict and the key it matched, each NAT rewrite (service, reverse,
//!   masquerade) and where the packet is forwarded;
//! - trace: plain frontend misses (traffic to no service: every other
//!   packet a pod sends).
//!
//! Messages start with the concern (`lb:`, `policy:`, `nat:`, `masq:`,
//! `fwd:`, `sock:`); the agent adds the object's name. Addresses are
//! printed with `{:i}` from host-order values ([`ip`]), ports in host
//! order ([`port`]).

use aya_log_ebpf::{debug, trace};
use weir_common::{
    addr::Addr,
    lb::{PROTO_TCP, PROTO_UDP},
    policy::DIR_EGRESS,
};

use crate::maps::scratch;

/// An IPv4 address in wire order as the host-order value `{:i}` prints.
#[inline(always)]
pub fn ip(raw: u32) -> u32 {
    u32::from_be(raw)
}

/// A port in wire order, in host order.
#[inline(always)]
pub fn port(raw: u16) -> u16 {
    u16::from_be(raw)
}

/// An address and port (both wire order) in one argument.
#[inline(always)]
pub fn ep(addr: u32, port: u16) -> u64 {
    (addr as u64) << 16 | port as u64
}

/// Bit 63 of an endpoint argument: an IPv6 address, in the scratch slot
/// bits 16..18 name ([`ep6`]).
const EP_V6: u64 = 1 << 63;

/// An IPv6 address and port (wire order) in one argument: the address
/// goes to scratch slot `slot` (0 to 3, a different one for each address
/// of a record), the argument names the slot.
#[inline(always)]
pub fn ep6(slot: u32, addr: &Addr, port: u16) -> u64 {
    let slot = slot & 3;
    if let Some(s) = scratch() {
        s.log_addrs[slot as usize] = *addr;
    }
    EP_V6 | (slot as u64) << 16 | port as u64
}

/// An address of either family (IPv4-mapped or IPv6) and port in one
/// argument ([`ep`] or [`ep6`]).
#[inline(always)]
pub fn ep_addr(slot: u32, addr: &Addr, port: u16) -> u64 {
    if addr.is_v4() {
        ep(addr.v4_raw(), port)
    } else {
        ep6(slot, addr, port)
    }
}

/// Whether a record's endpoint argument is IPv6 (the record is printed in
/// its IPv6 format: the addresses of one record share a family).
#[inline(always)]
fn v6(ep: u64) -> bool {
    ep & EP_V6 != 0
}

/// [`ep`]'s address, for `{:i}`.
#[inline(always)]
fn ep_ip(ep: u64) -> u32 {
    ip((ep >> 16) as u32)
}

/// [`ep6`]'s address, for `{:i}`.
#[inline(always)]
fn ep_ip6(ep: u64) -> [u8; 16] {
    match scratch() {
        Some(s) => s.log_addrs[((ep >> 16) & 3) as usize].bytes,
        None => [0; 16],
    }
}

/// [`ep`]'s port, host order.
#[inline(always)]
fn ep_port(ep: u64) -> u16 {
    port(ep as u16)
}

/// Whether debug records are kept (known to the verifier: see above).
#[inline(always)]
pub fn debug_on() -> bool {
    aya_log_ebpf::macro_support::level_enabled(aya_log_ebpf::macro_support::Level::Debug)
}

/// Whether trace records are kept.
#[inline(always)]
pub fn trace_on() -> bool {
    aya_log_ebpf::macro_support::level_enabled(aya_log_ebpf::macro_support::Level::Trace)
}

// lb: frontends and backends. `dst` is the frontend, `client` the sender.

/// A service IP on a port it does not serve: the packet is rejected.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_lb_unknown_port(dst: u64, proto: u32) -> u32 {
    if v6(dst) {
        debug!(&(), "lb: frontend miss [{:i}]:{} proto {}: the service IP has no such port (reject)", ep_ip6(dst), ep_port(dst), proto);
    } else {
        debug!(&(), "lb: frontend miss {:i}:{} proto {}: the service IP has no such port (reject)", ep_ip(dst), ep_port(dst), proto);
    }
    0
}

/// No frontend: not service traffic (every other packet from a pod).
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_lb_miss(dst: u64, proto: u32) -> u32 {
    if v6(dst) {
        trace!(&(), "lb: frontend miss [{:i}]:{} proto {}: no service", ep_ip6(dst), ep_port(dst), proto);
    } else {
        trace!(&(), "lb: frontend miss {:i}:{} proto {}: no service", ep_ip(dst), ep_port(dst), proto);
    }
    0
}

/// The service takes no new flow from this client (source ranges, ...).
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_lb_refused(client: u64, svc: u32, reason: u32) -> u32 {
    if v6(client) {
        debug!(&(), "lb: service {} refuses a new flow from {:i}: drop reason {}", svc, ep_ip6(client), reason);
    } else {
        debug!(&(), "lb: service {} refuses a new flow from {:i}: drop reason {}", svc, ep_ip(client), reason);
    }
    0
}

/// The frontend matched but its service has no backend to choose.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_lb_no_backend(dst: u64, proto: u32, svc: u32) -> u32 {
    if v6(dst) {
        debug!(&(), "lb: frontend [{:i}]:{} proto {} matched service {}: no backend (reject)", ep_ip6(dst), ep_port(dst), proto, svc);
    } else {
        debug!(&(), "lb: frontend {:i}:{} proto {} matched service {}: no backend (reject)", ep_ip(dst), ep_port(dst), proto, svc);
    }
    0
}

/// A new flow's frontend and the backend chosen for it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_lb_backend(dst: u64, client: u64, backend: u64, svc: u32, id: u32) -> u32 {
    if v6(dst) {
        debug!(
            &(),
            "lb: frontend [{:i}]:{} matched service {}: backend {} [{:i}]:{} chosen for [{:i}]:{}",
            ep_ip6(dst), ep_port(dst), svc, id, ep_ip6(backend), ep_port(backend), ep_ip6(client), ep_port(client)
        );
    } else {
        debug!(
            &(),
            "lb: frontend {:i}:{} matched service {}: backend {} {:i}:{} chosen for {:i}:{}",
            ep_ip(dst), ep_port(dst), svc, id, ep_ip(backend), ep_port(backend), ep_ip(client), ep_port(client)
        );
    }
    0
}

// nat: rewrites of service flows, source and destination before and after.

/// [`weir_log_nat`]: DNAT (and SNAT, when masqueraded) of a packet to a service.
pub const NAT_SERVICE: u32 = 0;
/// [`weir_log_nat`]: reverse NAT of a backend's reply.
pub const NAT_REPLY: u32 = 1;

/// A service flow's packet rewritten, `kind` saying which way (IPv4;
/// IPv6: [`weir_log_nat6`], chosen by the caller so that neither
/// family's chains carry the other's frame).
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_nat(kind: u32, src: u64, dst: u64, new_src: u64, new_dst: u64) -> u32 {
    if kind == NAT_SERVICE {
        debug!(
            &(),
            "nat: service flow {:i}:{} -> {:i}:{} rewritten to {:i}:{} -> {:i}:{}",
            ep_ip(src), ep_port(src), ep_ip(dst), ep_port(dst), ep_ip(new_src), ep_port(new_src), ep_ip(new_dst), ep_port(new_dst)
        );
    } else {
        debug!(
            &(),
            "nat: reply {:i}:{} -> {:i}:{} rewritten to {:i}:{} -> {:i}:{}",
            ep_ip(src), ep_port(src), ep_ip(dst), ep_port(dst), ep_ip(new_src), ep_port(new_src), ep_ip(new_dst), ep_port(new_dst)
        );
    }
    0
}

/// [`weir_log_nat`] for IPv6 ([`ep6`] arguments).
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_nat6(kind: u32, src: u64, dst: u64, new_src: u64, new_dst: u64) -> u32 {
    if kind == NAT_SERVICE {
        debug!(
            &(),
            "nat: service flow [{:i}]:{} -> [{:i}]:{} rewritten to [{:i}]:{} -> [{:i}]:{}",
            ep_ip6(src), ep_port(src), ep_ip6(dst), ep_port(dst), ep_ip6(new_src), ep_port(new_src), ep_ip6(new_dst), ep_port(new_dst)
        );
    } else {
        debug!(
            &(),
            "nat: reply [{:i}]:{} -> [{:i}]:{} rewritten to [{:i}]:{} -> [{:i}]:{}",
            ep_ip6(src), ep_port(src), ep_ip6(dst), ep_port(dst), ep_ip6(new_src), ep_port(new_src), ep_ip6(new_dst), ep_port(new_dst)
        );
    }
    0
}

// masq: pod egress leaving the cluster (its replies are not logged: the
// call would deepen `masq::ingress`'s frame, which every packet from
// outside runs).

/// A pod's packet leaves with the node's address.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_masq_out(src: u64, dst: u64, new_src: u64) -> u32 {
    if v6(src) {
        debug!(
            &(),
            "masq: [{:i}]:{} -> [{:i}]:{} leaves as [{:i}]:{}",
            ep_ip6(src), ep_port(src), ep_ip6(dst), ep_port(dst), ep_ip6(new_src), ep_port(new_src)
        );
    } else {
        debug!(
            &(),
            "masq: {:i}:{} -> {:i}:{} leaves as {:i}:{}",
            ep_ip(src), ep_port(src), ep_ip(dst), ep_port(dst), ep_ip(new_src), ep_port(new_src)
        );
    }
    0
}

// policy.

/// One end's verdict on a new flow and the key that decided it: what
/// `policy::judge` left in scratch space (tuple, endpoint, decision).
/// `direction`: `DIR_INGRESS` or `DIR_EGRESS`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_policy(direction: u32) -> u32 {
    let Some(s) = scratch() else { return 0 };
    let (t, ep, d) = (&s.judge_tuple, &s.judge_ep, &s.judge_decision);
    let port = if t.proto == PROTO_TCP || t.proto == PROTO_UDP { port(t.dport) } else { 0 };
    // Equal lengths: the word is copied with a constant size.
    let verdict = if d.allowed { "allow" } else { "deny " };
    let egress = direction == DIR_EGRESS as u32;
    let peer = if egress { &t.daddr } else { &t.saddr };
    if !peer.is_v4() {
        let peer = peer.bytes;
        if egress {
            debug!(
                &(),
                "policy: egress of endpoint {} to {:i} (identity {}) proto {} port {}: {} by key (identity {}, rule {})",
                ep.id, peer, d.peer_identity, t.proto, port, verdict, d.matched_identity, d.rule
            );
        } else {
            debug!(
                &(),
                "policy: ingress of endpoint {} from {:i} (identity {}) proto {} port {}: {} by key (identity {}, rule {})",
                ep.id, peer, d.peer_identity, t.proto, port, verdict, d.matched_identity, d.rule
            );
        }
    } else if egress {
        debug!(
            &(),
            "policy: egress of endpoint {} to {:i} (identity {}) proto {} port {}: {} by key (identity {}, rule {})",
            ep.id, ip(t.daddr.v4_raw()), d.peer_identity, t.proto, port, verdict, d.matched_identity, d.rule
        );
    } else {
        debug!(
            &(),
            "policy: ingress of endpoint {} from {:i} (identity {}) proto {} port {}: {} by key (identity {}, rule {})",
            ep.id, ip(t.saddr.v4_raw()), d.peer_identity, t.proto, port, verdict, d.matched_identity, d.rule
        );
    }
    0
}

// fwd: where a translated packet goes. `fwd::redirect_v4` notes its
// decision in scratch space ([`note_fwd`], a store: its frame is the
// deepest of the pod programs' call chains, with no room for one more
// call), and its caller logs it.

/// The packet is redirected to `value` (the egress ifindex), neighbour known.
pub const FWD_REDIRECT: u32 = 0;
/// Redirected to `value`, the kernel resolving the neighbour.
pub const FWD_REDIRECT_NEIGH: u32 = 1;
/// Up the stack: no FIB answer (`value`: the lookup's return code).
pub const FWD_STACK: u32 = 2;
/// Too big for the egress with Don't Fragment (`value`: the MTU).
pub const FWD_TOO_BIG: u32 = 3;
/// Up the stack: the TTL runs out.
pub const FWD_TTL: u32 = 4;
/// Up the stack: rewriting the packet failed.
pub const FWD_FAILED: u32 = 5;
/// Redirected to `value`, the link of a pod of this node (no FIB lookup).
pub const FWD_LOCAL: u32 = 6;
/// Delivered into the pod behind link `value` (its peer), from another
/// pod's link.
pub const FWD_PEER: u32 = 7;

/// Notes `redirect_v4`'s decision for [`weir_log_fwd`].
#[inline(always)]
pub fn note_fwd(what: u32, value: u32) {
    if let Some(s) = scratch() {
        s.fwd_what = what;
        s.fwd_value = value;
    }
}

/// Where the packet to `dst` (an endpoint argument, port 0) went, as
/// [`note_fwd`] noted.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_fwd(dst: u64) -> u32 {
    let Some(s) = scratch() else { return 0 };
    let value = s.fwd_value;
    if v6(dst) {
        let dst = ep_ip6(dst);
        match s.fwd_what {
            FWD_REDIRECT => debug!(&(), "fwd: {:i}: redirect to ifindex {}", dst, value),
            FWD_REDIRECT_NEIGH => debug!(&(), "fwd: {:i}: redirect to ifindex {} (neighbour resolved by the kernel)", dst, value),
            FWD_LOCAL => debug!(&(), "fwd: {:i}: redirect to ifindex {}, a pod of this node", dst, value),
            FWD_PEER => debug!(&(), "fwd: {:i}: into the pod behind ifindex {}", dst, value),
            FWD_STACK => debug!(&(), "fwd: {:i}: no FIB answer (rc {}), up the stack", dst, value),
            FWD_TOO_BIG => debug!(&(), "fwd: {:i}: too big for the egress MTU {}", dst, value),
            FWD_TTL => debug!(&(), "fwd: {:i}: hop limit runs out, up the stack", dst),
            _ => debug!(&(), "fwd: {:i}: rewriting failed, up the stack", dst),
        }
        return 0;
    }
    let dst = ep_ip(dst);
    match s.fwd_what {
        FWD_REDIRECT => debug!(&(), "fwd: {:i}: redirect to ifindex {}", dst, value),
        FWD_REDIRECT_NEIGH => debug!(&(), "fwd: {:i}: redirect to ifindex {} (neighbour resolved by the kernel)", dst, value),
        FWD_LOCAL => debug!(&(), "fwd: {:i}: redirect to ifindex {}, a pod of this node", dst, value),
        FWD_PEER => debug!(&(), "fwd: {:i}: into the pod behind ifindex {}", dst, value),
        FWD_STACK => debug!(&(), "fwd: {:i}: no FIB answer (rc {}), up the stack", dst, value),
        FWD_TOO_BIG => debug!(&(), "fwd: {:i}: too big with DF for the egress MTU {}", dst, value),
        FWD_TTL => debug!(&(), "fwd: {:i}: TTL runs out, up the stack", dst),
        _ => debug!(&(), "fwd: {:i}: rewriting failed, up the stack", dst),
    }
    0
}

// sock: the socket-level load balancer (the node's own processes).

/// A ClusterIP on a port it does not serve: connect fails.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_sock_unknown_port(dst: u64, proto: u32) -> u32 {
    if v6(dst) {
        debug!(&(), "sock: frontend miss [{:i}]:{} proto {}: the service IP has no such port (refused)", ep_ip6(dst), ep_port(dst), proto);
    } else {
        debug!(&(), "sock: frontend miss {:i}:{} proto {}: the service IP has no such port (refused)", ep_ip(dst), ep_port(dst), proto);
    }
    0
}

/// The service refuses the connection (drop reason `no_endpoints`: it
/// has no backend).
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_sock_refused(svc: u32, reason: u32) -> u32 {
    debug!(&(), "sock: service {} refuses the connection: drop reason {}", svc, reason);
    0
}

/// The socket is pointed at a backend.
#[no_mangle]
#[inline(never)]
pub extern "C" fn weir_log_sock_backend(dst: u64, backend: u64, svc: u32, id: u32) -> u32 {
    if v6(dst) {
        debug!(
            &(),
            "sock: frontend [{:i}]:{} matched service {}: socket pointed at backend {} [{:i}]:{}",
            ep_ip6(dst), ep_port(dst), svc, id, ep_ip6(backend), ep_port(backend)
        );
    } else {
        debug!(
            &(),
            "sock: frontend {:i}:{} matched service {}: socket pointed at backend {} {:i}:{}",
            ep_ip(dst), ep_port(dst), svc, id, ep_ip(backend), ep_port(backend)
        );
    }
    0
}
