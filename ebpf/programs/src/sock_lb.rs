//! Socket-level load balancing for the node's own processes (kubelet,
//! hostNetwork pods, node daemons): at connect and at every unconnected
//! UDP send, a socket asking for a service frontend (a ClusterIP, a
//! NodePort on a node address, an LB IP or an externalIP) is pointed at a
//! backend instead, so no packet of it is ever NATed; receive and
//! getpeername report the frontend again, so a UDP reply seems to come
//! from the frontend and a connected socket's peer is the frontend.
//!
//! Which sockets are touched is the configuration's `sock_scope`:
//! - `SOCK_SCOPE_NODE`: the node's own network namespace only (the netns
//!   cookie in `WEIR_CONFIG`): several agents on one kernel, each in its
//!   own node namespace, share the cgroup hierarchy their programs are
//!   attached to; or a service mesh wants pods' connections untranslated.
//! - `SOCK_SCOPE_ALL`: the pods' sockets too (every namespace under the
//!   cgroup the programs are attached to). A pod's TCP connection to a
//!   frontend is pointed at a backend where the tc path would do nothing
//!   but translate it (`frontend::pod_socket_translates`), so its packets
//!   travel as pod to pod ones and pay no per-packet NAT; policy judges
//!   them at the pod hooks as it judges any flow to the backend. Its
//!   reverse entry goes to `WEIR_SOCK_REVNAT_POD`, so a pod churning
//!   sockets evicts only pods' entries. Everything else from a pod
//!   (refusals, source ranges, affinity, masqueraded frontends, and UDP:
//!   a reply's source would depend on an entry a hostile pod could evict,
//!   and no sweep repoints a pod's connected socket when its backend
//!   leaves) is left untouched for the tc path.
//!
//! The backend is chosen as the tc path chooses it (`lb::select_backend`,
//! Maglev table or random, ClientIP affinity keyed by the node address),
//! with a random hash: no source port exists yet. A frontend that cannot
//! take the connection refuses it at once (the syscall fails with EPERM;
//! a cgroup program has no other way to say no), counted under the same
//! drop reasons as the tc path.
//!
//! IPv6 sockets take the same path (`connect6`, `sendmsg6`, `recvmsg6`,
//! `getpeername6`): the address is read and written as IPv6. A v4-mapped
//! address (`::ffff:a.b.c.d`, an IPv6 socket reaching an IPv4 service) is
//! how the maps hold IPv4 already: it matches the IPv4 frontend and is
//! pointed at the IPv4 backend, v4-mapped.
//!
//! A socket's reverse entry lives as long as the socket: `sock_release`
//! deletes it when the socket is released, so the tables hold the live
//! translated sockets only. A TCP socket's entry is keyed by its cookie
//! alone (`SockRevKey::of`): a connect that fails (refused, timed out, or
//! before its SYN, for want of a route or a port) clears the socket's
//! destination, and the release still names the entry. Short connections
//! then never fill the tables (no insert pays for an LRU eviction), and a
//! long-lived connection keeps its entry however many sockets others
//! churn. An unconnected UDP socket of the node has one entry per
//! frontend it sent to, keyed by backends it no longer names at release:
//! those are left to the LRU.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_ANY},
    maps::LruHashMap,
    helpers::{bpf_get_prandom_u32, generated::{bpf_get_netns_cookie, bpf_get_socket_cookie}},
    programs::{SockAddrContext, SockContext},
    EbpfContext,
};
use weir_common::{
    addr::Addr,
    config::{DatapathConfig, SOCK_SCOPE_ALL},
    drop::DropReason,
    lb::{Backend, FrontendKey, SockRevKey, SockRevValue, PROTO_TCP, SCOPE_INTERNAL},
};
use weir_logic::frontend::{pod_socket_translates, refuse_new, Refusal};

use crate::{
    conntrack,
    debug::{self, debug_on},
    errors::drop_reason,
    lb,
    maps::{read, FRONTENDS, SOCK_REVNAT, SOCK_REVNAT_POD},
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Whose socket a program runs for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The node's own network namespace.
    Node,
    /// Another namespace under the cgroup: a pod's (scope `all` only).
    Pod,
}

/// The configuration and whose socket it is, when the socket is in the
/// programs' scope (else they leave it alone).
#[inline(always)]
fn scope(ctx: &impl EbpfContext) -> Option<(&'static DatapathConfig, Owner)> {
    let cfg = conntrack::config()?;
    if cfg.netns_cookie == 0 {
        return None;
    }
    // SAFETY: plain helper call on the program's own context.
    let owner = if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.netns_cookie {
        Owner::Node
    } else if cfg.sock_scope == SOCK_SCOPE_ALL {
        Owner::Pod
    } else {
        return None;
    };
    Some((cfg, owner))
}

/// The configuration, the socket address and whose socket it is, when
/// the socket is in the programs' scope (else they leave it alone).
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> Option<(&'static DatapathConfig, &mut bpf_sock_addr, Owner)> {
    let (cfg, owner) = scope(ctx)?;
    // SAFETY: the context pointer is valid for the program run.
    Some((cfg, unsafe { &mut *ctx.sock_addr }, owner))
}

/// The socket address of an IPv4 (`V6` false) or IPv6 program.
#[inline(always)]
fn user_addr<const V6: bool>(sa: &bpf_sock_addr) -> Addr {
    if !V6 {
        return Addr::from_v4_raw(sa.user_ip4);
    }
    addr6(sa.user_ip6)
}

/// An IPv6 address as the context holds it: four words in network order.
#[inline(always)]
fn addr6(w: [u32; 4]) -> Addr {
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    Addr { bytes: [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]] }
}

/// Writes the socket address of an IPv4 or IPv6 program.
#[inline(always)]
fn set_user_addr<const V6: bool>(sa: &mut bpf_sock_addr, a: &Addr) {
    if !V6 {
        sa.user_ip4 = a.v4_raw();
        return;
    }
    let b = &a.bytes;
    sa.user_ip6[0] = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    sa.user_ip6[1] = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    sa.user_ip6[2] = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
    sa.user_ip6[3] = u32::from_ne_bytes([b[12], b[13], b[14], b[15]]);
}

#[inline(always)]
fn proto(ctx: &SockAddrContext) -> u8 {
    // SAFETY: the context pointer is valid for the program run.
    unsafe { (*ctx.sock_addr).protocol as u8 }
}

/// The reverse-translation table of `owner`'s sockets.
#[inline(always)]
fn revnat(owner: Owner) -> &'static LruHashMap<SockRevKey, SockRevValue> {
    match owner {
        Owner::Node => &SOCK_REVNAT,
        Owner::Pod => &SOCK_REVNAT_POD,
    }
}

/// connect4/6 and sendmsg4/6: points the socket at a backend of the
/// frontend it asks for.
#[inline(always)]
pub fn translate<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let Some((cfg, sa, owner)) = ours(ctx) else { return ALLOW };
    let (vport, proto) = (sa.user_port as u16, proto(ctx));
    // A pod's UDP stays with the tc path (see the module's notes).
    if owner == Owner::Pod && proto != PROTO_TCP {
        return ALLOW;
    }
    let key = FrontendKey { addr: user_addr::<V6>(sa), port: vport, proto, scope: SCOPE_INTERNAL };
    let Some(svc) = read(FRONTENDS.get_ptr(&key)) else {
        // A ClusterIP on a port it does not serve is refused, as on the
        // tc path (which answers a pod's packet itself); any other address
        // is not a frontend.
        let marker = FrontendKey { addr: key.addr, port: 0, proto: 0, scope: SCOPE_INTERNAL };
        if owner == Owner::Node && FRONTENDS.get_ptr(&marker).is_some() {
            if debug_on() {
                debug::weir_log_sock_unknown_port(debug::ep_addr(0, &key.addr, vport), proto as u32);
            }
            drop_reason(DropReason::UnknownServicePort);
            return REFUSE;
        }
        return ALLOW;
    };
    if owner == Owner::Pod && !pod_socket_translates(&svc) {
        return ALLOW;
    }
    // Source ranges restrict LB IPs for clients outside the node; the node
    // itself is allowed, as kube-proxy allows it.
    if let Some(Refusal::Drop(reason) | Refusal::Reject(reason)) = refuse_new(&svc, || true) {
        if debug_on() {
            debug::weir_log_sock_refused(svc.id, reason as u32);
        }
        drop_reason(reason);
        return REFUSE;
    }
    // On the stack, not in the per-CPU scratch space: a process-context
    // program can be preempted, and another connect on this CPU would
    // overwrite it.
    let mut backend = Backend::default();
    // SAFETY: plain helper call.
    let hash = unsafe { bpf_get_prandom_u32() };
    let backend_id = lb::select_backend(&svc, cfg.node_addr_for(&key.addr), hash, conntrack::now_ns(), &mut backend);
    if backend_id == 0 {
        if owner == Owner::Pod {
            return ALLOW;
        }
        if debug_on() {
            debug::weir_log_sock_refused(svc.id, DropReason::NoEndpoints as u32);
        }
        drop_reason(DropReason::NoEndpoints);
        return REFUSE;
    }
    if debug_on() {
        debug::weir_log_sock_backend(debug::ep_addr(0, &key.addr, vport), debug::ep_addr(1, &backend.addr, backend.port), svc.id, backend_id);
    }
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    record(owner, cookie, proto, &key, &backend);
    set_user_addr::<V6>(sa, &backend.addr);
    sa.user_port = u32::from(backend.port);
    ALLOW
}

/// Writes the reverse entry of a socket `translate` pointed at `backend`
/// for `frontend`. Out of line: its key and value (72 bytes) would not
/// fit connect6's frame beside `lb::select_backend`'s.
#[inline(never)]
fn record(owner: Owner, cookie: u64, proto: u8, frontend: &FrontendKey, backend: &Backend) {
    let rk = SockRevKey::of(cookie, proto, backend.addr, backend.port);
    let rv = SockRevValue { addr: frontend.addr, port: frontend.port, _pad: 0, backend: backend.addr, backend_port: backend.port, _pad1: 0 };
    let _ = revnat(owner).insert(&rk, &rv, BPF_ANY as u64);
}

/// recvmsg4/6 and getpeername4/6: reports the frontend a translated
/// socket asked for instead of its backend.
#[inline(always)]
pub fn restore<const V6: bool>(ctx: &SockAddrContext) -> i32 {
    let Some((_, sa, owner)) = ours(ctx) else { return ALLOW };
    // A pod's UDP socket is never translated: its receives need no lookup.
    if owner == Owner::Pod && proto(ctx) != PROTO_TCP {
        return ALLOW;
    }
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let (peer, port) = (user_addr::<V6>(sa), sa.user_port as u16);
    let Some(v) = read(revnat(owner).get_ptr(&SockRevKey::of(cookie, proto(ctx), peer, port))) else { return ALLOW };
    if let Some((addr, port)) = v.frontend_for(&peer, port) {
        set_user_addr::<V6>(sa, &addr);
        sa.user_port = u32::from(port);
    }
    ALLOW
}

/// `AF_INET`, as `bpf_sock.family` holds it.
const AF_INET: u32 = 2;

/// sock_release: deletes the reverse entry of a socket the programs
/// translated, keyed as `translate` made it: a TCP socket's by its cookie
/// (whether its connect succeeded or not), a UDP socket's by its cookie
/// and the backend it is connected to. A socket never translated (or a
/// UDP socket no longer connected) has none, and the delete finds
/// nothing.
#[inline(always)]
pub fn forget(ctx: &SockContext) -> i32 {
    let Some((_, owner)) = scope(ctx) else { return ALLOW };
    // SAFETY: the context pointer is valid for the program run.
    let sk = unsafe { &*ctx.sock };
    let proto = sk.protocol as u8;
    // A pod's UDP socket is never translated.
    if owner == Owner::Pod && proto != PROTO_TCP {
        return ALLOW;
    }
    let port = sk.dst_port;
    if proto != PROTO_TCP && port == 0 {
        return ALLOW;
    }
    // Both addresses are read, each at its own offset: the verifier takes
    // no context read through a pointer chosen by the family.
    // SAFETY: reads of the program's own context fields.
    let (v4, v6) = unsafe { (read_volatile(&sk.dst_ip4), read_volatile(&sk.dst_ip6)) };
    let addr = if sk.family == AF_INET { Addr::from_v4_raw(v4) } else { addr6(v6) };
    // SAFETY: plain helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = revnat(owner).remove(&SockRevKey::of(cookie, proto, addr, port));
    ALLOW
}
