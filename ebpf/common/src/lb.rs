//! Service load-balancing maps: frontends, services, backends, the shared
//! selection table, and ClientIP affinity.
//!
//! Lookup path: FRONTENDS[(vip, port, proto)] → Service → LB_TABLE[base +
//! slot] → backend id → BACKENDS[id]. Ports are stored in network byte
//! order, as they appear in packets.

use crate::addr::Addr;

pub const PROTO_TCP: u8 = 6;

/// skb mark bit the pod program sets on packets it translated (service
/// DNAT, reverse NAT, translated ICMP errors). Only the node's own
/// datapath can set it: marks are scrubbed when a packet crosses network
/// namespaces, so neither a pod nor a packet from outside the node
/// carries it. to_pod lets a packet ride a service flow only with it.
pub const MARK_TRANSLATED: u32 = 0x0000_0200;
/// skb mark bit `fwd::into_pod` sets on a packet it sends to a pod's link
/// through the node's neighbour output because the link's frame header is
/// not known yet, or is due to be learned again (`WEIR_LINK_MACS`): that
/// link's to_pod learns it from the frame and clears the bit. Scrubbed at namespace crossings as
/// [`MARK_TRANSLATED`] is.
pub const MARK_LEARN_MACS: u32 = 0x0000_0400;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
/// ICMPv6's protocol number.
pub const PROTO_ICMPV6: u8 = 58;

/// Key of `WEIR_FRONTENDS`. A key with port 0 and proto 0 marks an
/// address as a service IP (see [`SVC_F_VIP_MARKER`]): traffic to a port
/// it does not serve is rejected, as kube-proxy's nftables mode does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    /// Who the entry serves: [`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`].
    pub scope: u8,
}

/// The entry serves everyone: pods, the node, and traffic from outside
/// the node unless a [`SCOPE_EXTERNAL`] entry of the same frontend exists.
pub const SCOPE_INTERNAL: u8 = 0;
/// The entry serves only traffic from outside the node (a NodePort, LB IP
/// or externalIP of an externalTrafficPolicy: Local service: this node's
/// endpoints only, and the client's address kept).
pub const SCOPE_EXTERNAL: u8 = 1;

/// Sessions from one client IP stick to one backend.
pub const SVC_F_AFFINITY: u32 = 1 << 0;
/// Random backend selection instead of Maglev.
pub const SVC_F_RANDOM: u32 = 1 << 1;
/// The entry only marks its address as a service IP; it serves no port.
pub const SVC_F_VIP_MARKER: u32 = 1 << 2;

/// No endpoint is ready: the table holds the serving, terminating ones
/// (kube-proxy's fallback), and affinity may point at them.
pub const SVC_F_TERMINATING_FALLBACK: u32 = 1 << 3;
/// The backends are this node's own only (internalTrafficPolicy: Local):
/// with none, new flows are dropped (`no_local_endpoints`), not rejected,
/// as kube-proxy does.
pub const SVC_F_LOCAL_ONLY: u32 = 1 << 4;
/// New flows from this node's pods are masqueraded to the node address
/// (a NodePort, LB IP or externalIP of an externalTrafficPolicy: Cluster
/// service, as kube-proxy does).
pub const SVC_F_MASQ_LOCAL: u32 = 1 << 5;
/// New flows from outside the node are masqueraded to the node address,
/// so that replies come back through this node (every internal-scope
/// entry: ClusterIPs reached from outside, and externalTrafficPolicy:
/// Cluster frontends).
pub const SVC_F_MASQ_REMOTE: u32 = 1 << 6;
/// The frontend also has a [`SCOPE_EXTERNAL`] entry, which serves traffic
/// from outside the node.
pub const SVC_F_SPLIT: u32 = 1 << 7;

/// Only sources inside the service's `WEIR_SOURCE_RANGES` prefixes may
/// open flows (loadBalancerSourceRanges, on LB IPs only).
pub const SVC_F_SOURCE_RANGES: u32 = 1 << 10;

/// What kind of frontend the entry is (bits 8–9 of the flags), for
/// counters and listings.
pub const SVC_KIND_SHIFT: u32 = 8;
pub const SVC_KIND_MASK: u32 = 0b11 << SVC_KIND_SHIFT;
pub const KIND_CLUSTER_IP: u32 = 0;
pub const KIND_NODE_PORT: u32 = 1;
pub const KIND_LOAD_BALANCER: u32 = 2;
pub const KIND_EXTERNAL_IP: u32 = 3;

/// The frontend kind in `flags`.
pub const fn svc_kind(flags: u32) -> u32 {
    (flags & SVC_KIND_MASK) >> SVC_KIND_SHIFT
}

/// Key data of `WEIR_SOURCE_RANGES` (an LPM trie): the service id, always
/// matched whole, then the source prefix. The prefix length of a key is
/// 32 + the address's (IPv4 offset by 96, as everywhere).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    pub svc_id: u32,
    pub addr: Addr,
}

/// Key of `WEIR_SOCK_REVNAT`: a socket the socket-level programs pointed
/// at a backend. A TCP socket has one entry, keyed by its cookie alone
/// (`addr` and `port` zero: a connect that fails clears the socket's
/// destination before `sock_release` could read it, so the release names
/// the entry by the cookie); a node's UDP socket one per backend it sends
/// to (an unconnected one may send to several frontends). Build it with
/// [`SockRevKey::of`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// bpf_get_socket_cookie.
    pub cookie: u64,
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad0: u8,
    pub _pad1: u32,
}

impl SockRevKey {
    /// The key of socket `cookie`'s entry for `backend:port` (network
    /// order) over `proto`.
    #[inline(always)]
    pub fn of(cookie: u64, proto: u8, backend: Addr, port: u16) -> Self {
        if proto == PROTO_TCP {
            return SockRevKey { cookie, addr: Addr::ZERO, port: 0, proto, _pad0: 0, _pad1: 0 };
        }
        SockRevKey { cookie, addr: backend, port, proto, _pad0: 0, _pad1: 0 }
    }
}

/// Value of `WEIR_SOCK_REVNAT`: the frontend the socket asked for, which
/// recvmsg and getpeername report instead of the backend, and the backend
/// it was pointed at (a TCP key names none, and a socket whose connect
/// failed may connect again, elsewhere).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub _pad: u16,
    pub backend: Addr,
    /// Network byte order.
    pub backend_port: u16,
    pub _pad1: u16,
}

impl SockRevValue {
    /// The frontend (address, port) to report for a socket whose peer is
    /// `peer:port`: the entry's, if the socket is still connected to (or
    /// receiving from) the backend the entry was made for.
    #[inline(always)]
    pub fn frontend_for(&self, peer: &Addr, port: u16) -> Option<(Addr, u16)> {
        (self.backend == *peer && self.backend_port == port).then_some((self.addr, self.port))
    }
}

/// Value of `WEIR_FRONTENDS`: one service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Stable id of this service port (affinity and conntrack refer to it).
    pub id: u32,
    pub flags: u32,
    /// Backends eligible for new connections. 0 means: reject at once.
    pub backend_count: u32,
    /// Start of this service's slots in `WEIR_LB_TABLE`.
    pub table_base: u32,
    /// Number of slots: a prime ≥ 100 × backend_count for Maglev, or
    /// backend_count for random selection.
    pub table_len: u32,
    /// ClientIP affinity timeout, seconds.
    pub affinity_timeout_s: u32,
}

/// The backend is terminating: no new connections unless nothing is ready.
pub const BACKEND_F_TERMINATING: u8 = 1 << 0;
/// The endpoint is not ready (`conditions.ready: false`).
pub const BACKEND_F_UNREADY: u8 = 1 << 1;
/// The endpoint is not serving (`conditions.serving: false`).
pub const BACKEND_F_UNSERVING: u8 = 1 << 2;

/// Value of `WEIR_BACKENDS`, keyed by backend id (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// Key of `WEIR_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub svc_id: u32,
    pub client: Addr,
}

/// Value of `WEIR_AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last new connection.
    pub last_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FrontendKey>() == 20);
const _: () = assert!(core::mem::size_of::<Service>() == 24);
const _: () = assert!(core::mem::size_of::<Backend>() == 20);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 20);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<SourceRangeKey>() == 20);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 40);

/// Value of `WEIR_LB_IDS`: the ids an agent start resumes from. Every
/// id handed out is below its mark (until a counter wraps past
/// `u32::MAX`, four billion ids on: then backend ids skip the ids still
/// in use, and service ids start again from 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbIds {
    pub next_svc_id: u32,
    pub next_backend_id: u32,
}

crate::user_pod!(FrontendKey, Service, Backend, AffinityKey, AffinityValue, SourceRangeKey, SockRevKey, SockRevValue, LbIds);
