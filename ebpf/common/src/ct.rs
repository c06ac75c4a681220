//! Connection tracking.
//!
//! Each service connection has two entries, keyed by the tuple exactly as
//! it appears on the wire where the pod program sees it:
//! - forward (`CT_SVC_FWD`): client → VIP, seen on the client's interface;
//!   holds the backend chosen for the flow;
//! - reverse (`CT_SVC_REV`): backend → client (or → the hairpin address),
//!   seen on the backend's interface; holds the VIP to restore.
//!
//! A flow is alive while either of its entries is. A flow the policy
//! allowed has one `CT_POLICY` entry keyed by the tuple of its opener.
//!
//! Each address family has a table of its own, as Cilium keeps CT4 and
//! CT6: IPv4 flows in `WEIR_CT4` ([`CtKey4`] → [`CtEntry4`], 4-byte
//! addresses: 16 + 32 B, so an entry costs the kernel 112 B), IPv6 flows
//! in `WEIR_CT` ([`CtKey`] → [`CtTail`], layout v4: no address in the
//! value, 40 + 24 B, 128 B an entry) but for the reverse entries of
//! masqueraded flows, which keep the client's address in `WEIR_CT6_MASQ`
//! ([`CtMasqKey6`] → [`CtMasq6`], 24 + 40 B, 128 B an entry). Where an IPv6 entry's addresses come
//! from instead is `weir_logic::ct6`. Code above the tables works on the
//! wide types; an entry is narrowed on its way in and widened on its way
//! out ([`CtKey::narrow`], [`CtEntry4::widen`], [`CtTail::of`],
//! `weir_logic::ct6::widen`). The fields after the addresses ([`CtTail`])
//! are laid out alike in every table, so state updates need no
//! conversion.

use crate::addr::Addr;

pub const CT_SVC_FWD: u8 = 1;
pub const CT_SVC_REV: u8 = 2;
/// A flow the policy allowed, keyed by its original-direction tuple as the
/// pods see it (after service DNAT): the key's source opened the flow.
/// Only packets in the opposite direction ride it as replies, and never a
/// TCP SYN (a new connection from the responder is judged on its own).
pub const CT_POLICY: u8 = 3;
/// A masqueraded flow, as the pod sent it (in `WEIR_SNAT`, see `crate::masq`).
pub const CT_SNAT_OUT: u8 = 4;
/// A masqueraded flow, as its replies arrive at the node (in `WEIR_SNAT`).
pub const CT_SNAT_IN: u8 = 5;

/// Key of `WEIR_CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: Addr,
    pub daddr: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub kind: u8,
    pub _pad: u16,
}

/// TCP/UDP flow states; each has its own timeout.
pub const CT_STATE_SYN: u8 = 1;
/// Established, or half-closed (one side sent FIN): the established
/// timeout applies until both sides closed.
pub const CT_STATE_ESTABLISHED: u8 = 2;
/// Both sides sent FIN.
pub const CT_STATE_CLOSING: u8 = 3;
/// Reset.
pub const CT_STATE_CLOSED: u8 = 4;
/// A UDP flow (or another protocol's without states: ICMP echo).
pub const CT_STATE_UDP: u8 = 5;
/// A UDP flow still sending two seconds or more after its first reply
/// (nf_conntrack's "stream"), with its own, longer timeout
/// (`DatapathConfig::ct_udp_stream_timeout_s`); a one-shot exchange such
/// as a DNS query stays [`CT_STATE_UDP`].
pub const CT_STATE_UDP_STREAM: u8 = 6;

/// The flow is a pod reaching itself through its service.
pub const CT_F_HAIRPIN: u8 = 1 << 0;
/// The opener (original direction) sent a FIN.
pub const CT_F_FIN_ORIG: u8 = 1 << 1;
/// The responder (reply direction) sent a FIN.
pub const CT_F_FIN_REPLY: u8 = 1 << 2;
/// A packet in the reply direction was seen.
pub const CT_F_SEEN_REPLY: u8 = 1 << 3;
/// The client's source port was remapped (reply tuple collision).
pub const CT_F_REMAPPED: u8 = 1 << 4;
/// The flow is masqueraded: the backend sees the node address
/// (`DatapathConfig::node_addr`) and a port of the masquerade range.
pub const CT_F_MASQ: u8 = 1 << 5;
/// The bits that describe the TCP state and are kept equal in both
/// entries of a service flow.
pub const CT_F_STATE_BITS: u8 = CT_F_FIN_ORIG | CT_F_FIN_REPLY | CT_F_SEEN_REPLY;

/// Direction of a packet relative to the flow's opener.
pub const DIR_ORIG: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// Value of `WEIR_CT` (8-aligned: the datapath copies it by words).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// Forward: the backend address. Reverse: the VIP.
    pub nat_addr: Addr,
    /// Reverse: the client's real address (differs from the reply's
    /// destination for hairpin and masqueraded flows). Forward: the
    /// client address.
    pub orig_addr: Addr,
    /// The CLOCK_MONOTONIC second from which the entry is stale (see
    /// `weir_logic::ct::expiry`). Seconds in 32 bits rather than
    /// nanoseconds in 64 (layout v1) save 8 B in every entry, 16 B per
    /// service flow, and wrap after 136 years of uptime.
    pub expires_s: u32,
    pub backend_id: u32,
    pub svc_id: u32,
    /// Forward: the backend port. Reverse: the service port. Network order.
    pub nat_port: u16,
    /// Forward: the client port the backend sees (the remapped one, or
    /// the client's own). Reverse: the client's own port. Network order.
    pub orig_port: u16,
    pub state: u8,
    pub flags: u8,
    pub _pad: u16,
    /// The pod link (ifindex) the entry is charged to, for the
    /// per-endpoint quota; 0 for none.
    pub owner: u32,
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

/// Key of `WEIR_CT4`: a [`CtKey`] of an IPv4 flow, each address the IPv4
/// word as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    pub saddr: u32,
    pub daddr: u32,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub kind: u8,
    pub _pad: u16,
}

const _: () = assert!(core::mem::size_of::<CtKey4>() == 16);

impl CtKey {
    /// Whether the key belongs to `WEIR_CT4`: an IPv4 flow's, both
    /// addresses IPv4 (the datapath drops IPv6 naming an IPv4-mapped
    /// address, so no IPv6 flow's key has one).
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.saddr.is_v4() && self.daddr.is_v4()
    }

    /// The key as `WEIR_CT4` holds it (for an IPv4 key, see [`CtKey::is_v4`]).
    #[inline(always)]
    pub const fn narrow(&self) -> CtKey4 {
        CtKey4 { saddr: self.saddr.v4_raw(), daddr: self.daddr.v4_raw(), sport: self.sport, dport: self.dport, proto: self.proto, kind: self.kind, _pad: 0 }
    }
}

impl CtKey4 {
    /// [`CtKey::narrow`]'s inverse.
    #[inline(always)]
    pub const fn widen(&self) -> CtKey {
        CtKey {
            saddr: Addr::from_v4_raw(self.saddr),
            daddr: Addr::from_v4_raw(self.daddr),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            kind: self.kind,
            _pad: 0,
        }
    }
}

/// Nanoseconds per second (conntrack's expiry is kept in seconds).
pub const NS_PER_S: u64 = 1_000_000_000;

/// Values of the programs' `WEIR_CT_PREV_ON` and `WEIR_SNAT_PREV_ON`
/// constants: where conntrack (masquerade) takes over an entry it misses
/// during a migration (see `maps::CT_PREV`, `maps::SNAT_PREV`).
pub const CARRY_OVER_OFF: u8 = 0;
/// From `maps::CT_PREV` (`maps::SNAT_PREV`), in the same layout.
pub const CARRY_OVER_SAME: u8 = 1;
/// From `maps::CT_PREV_V1` (`maps::SNAT_PREV_V1`), converted from layout
/// v1 (`crate::ct_v1`).
pub const CARRY_OVER_V1: u8 = 2;
/// `WEIR_CT4_PREV_ON` only: from `maps::CT4_PREV` (when `WEIR_CT4` is
/// rebuilt too: a migration resumed with another size), then from the
/// IPv4 entries of the one-table conntrack a migration splits (`WEIR_CT`
/// before layout v3), read where `WEIR_CT_PREV_ON` says
/// (`maps::CT_PREV_V3` or `maps::CT_PREV_V1`) and narrowed.
pub const CARRY_OVER_WIDE: u8 = 3;
/// `WEIR_CT_PREV_ON` only: from `maps::CT_PREV_V3`, a `WEIR_CT` of
/// layout v2 or v3 (`CtEntry` values, 16-byte addresses), each entry
/// narrowed to a [`CtTail`] or set aside in `WEIR_CT6_MASQ`
/// (`weir_logic::ct6::keeps_addrs`).
pub const CARRY_OVER_V3: u8 = 4;
const _: () = assert!(core::mem::size_of::<CtEntry>() == 56 && core::mem::align_of::<CtEntry>() == 8);

/// Value of `WEIR_CT4`: a [`CtEntry`] of an IPv4 flow, each address the
/// IPv4 word as on the wire; the fields after the addresses are
/// [`CtEntry`]'s ([`CtTail`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry4 {
    pub nat_addr: u32,
    pub orig_addr: u32,
    pub expires_s: u32,
    pub backend_id: u32,
    pub svc_id: u32,
    pub nat_port: u16,
    pub orig_port: u16,
    pub state: u8,
    pub flags: u8,
    pub _pad: u16,
    pub owner: u32,
}

const _: () = assert!(core::mem::size_of::<CtEntry4>() == 32 && core::mem::align_of::<CtEntry4>() == 8);

/// The fields of a conntrack entry after its two addresses, the same in
/// [`CtEntry`] (from [`TAIL`]) and [`CtEntry4`] (from [`TAIL4`]): the
/// state, expiry and owner the datapath updates in place in either table.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTail {
    pub expires_s: u32,
    pub backend_id: u32,
    pub svc_id: u32,
    pub nat_port: u16,
    pub orig_port: u16,
    pub state: u8,
    pub flags: u8,
    pub _pad: u16,
    pub owner: u32,
}

impl CtTail {
    /// The fields of `e` after its addresses: an IPv6 entry as `WEIR_CT`
    /// holds it (layout v4).
    #[inline(always)]
    pub const fn of(e: &CtEntry) -> CtTail {
        CtTail {
            expires_s: e.expires_s,
            backend_id: e.backend_id,
            svc_id: e.svc_id,
            nat_port: e.nat_port,
            orig_port: e.orig_port,
            state: e.state,
            flags: e.flags,
            _pad: 0,
            owner: e.owner,
        }
    }
}

/// Key of `WEIR_CT6_MASQ` (layout v2): the reverse key of a masqueraded
/// IPv6 flow (backend → node, at a port of the masquerade range) without
/// its destination, which is always the node's IPv6 address
/// (`DatapathConfig::node_addr6`, `weir_logic::ct6::may_keep_addrs`).
/// 24 B instead of [`CtKey`]'s 40.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtMasqKey6 {
    /// The backend.
    pub saddr: Addr,
    /// Network byte order.
    pub sport: u16,
    /// The masquerade port. Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<CtMasqKey6>() == 24);

impl CtKey {
    /// The key as `WEIR_CT6_MASQ` holds it (for a reverse key addressed to
    /// the node, see `weir_logic::ct6::may_keep_addrs`).
    #[inline(always)]
    pub const fn masq6(&self) -> CtMasqKey6 {
        CtMasqKey6 { saddr: self.saddr, sport: self.sport, dport: self.dport, proto: self.proto, _pad: [0; 3] }
    }
}

impl CtMasqKey6 {
    /// [`CtKey::masq6`]'s inverse, `node6` being the node's IPv6 address.
    #[inline(always)]
    pub const fn widen(&self, node6: Addr) -> CtKey {
        CtKey { saddr: self.saddr, daddr: node6, sport: self.sport, dport: self.dport, proto: self.proto, kind: CT_SVC_REV, _pad: 0 }
    }
}

/// Value of `WEIR_CT6_MASQ` (layout v2): a masqueraded IPv6 flow's reverse
/// entry keeps the one address that neither its key nor an id names, the
/// client's; the service address is `WEIR_SVC_ADDRS[svc_id]` as for any
/// reverse entry (`weir_logic::ct6::widen_masq`). 40 B instead of
/// [`CtEntry`]'s 56; the [`CtTail`] first, so state updates find it where
/// they find a `WEIR_CT` value's.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtMasq6 {
    pub tail: CtTail,
    /// The client's address (a [`CtEntry`]'s `orig_addr`).
    pub client: Addr,
}

const _: () = assert!(core::mem::size_of::<CtMasq6>() == 40 && core::mem::offset_of!(CtMasq6, tail) == 0);

impl CtMasq6 {
    /// `e` as `WEIR_CT6_MASQ` holds it.
    #[inline(always)]
    pub const fn of(e: &CtEntry) -> CtMasq6 {
        CtMasq6 { tail: CtTail::of(e), client: e.orig_addr }
    }
}

/// Where [`CtTail`] starts in a [`CtEntry`] and in a [`CtEntry4`].
pub const TAIL: usize = core::mem::offset_of!(CtEntry, expires_s);
pub const TAIL4: usize = core::mem::offset_of!(CtEntry4, expires_s);

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<CtTail>() == 24 && TAIL == 32 && TAIL4 == 8);
    assert!(TAIL + size_of::<CtTail>() == size_of::<CtEntry>() && TAIL4 + size_of::<CtTail>() == size_of::<CtEntry4>());
    assert!(offset_of!(CtEntry, backend_id) - TAIL == offset_of!(CtTail, backend_id));
    assert!(offset_of!(CtEntry4, backend_id) - TAIL4 == offset_of!(CtTail, backend_id));
    assert!(offset_of!(CtEntry, svc_id) - TAIL == offset_of!(CtTail, svc_id));
    assert!(offset_of!(CtEntry4, svc_id) - TAIL4 == offset_of!(CtTail, svc_id));
    assert!(offset_of!(CtEntry, nat_port) - TAIL == offset_of!(CtTail, nat_port));
    assert!(offset_of!(CtEntry4, nat_port) - TAIL4 == offset_of!(CtTail, nat_port));
    assert!(offset_of!(CtEntry, orig_port) - TAIL == offset_of!(CtTail, orig_port));
    assert!(offset_of!(CtEntry4, orig_port) - TAIL4 == offset_of!(CtTail, orig_port));
    assert!(offset_of!(CtEntry, state) - TAIL == offset_of!(CtTail, state));
    assert!(offset_of!(CtEntry4, state) - TAIL4 == offset_of!(CtTail, state));
    assert!(offset_of!(CtEntry, flags) - TAIL == offset_of!(CtTail, flags));
    assert!(offset_of!(CtEntry4, flags) - TAIL4 == offset_of!(CtTail, flags));
    assert!(offset_of!(CtEntry, owner) - TAIL == offset_of!(CtTail, owner));
    assert!(offset_of!(CtEntry4, owner) - TAIL4 == offset_of!(CtTail, owner));
};

impl CtEntry4 {
    /// An IPv4 flow's entry as `WEIR_CT4` holds it.
    #[inline(always)]
    pub const fn narrow(e: &CtEntry) -> CtEntry4 {
        CtEntry4 {
            nat_addr: e.nat_addr.v4_raw(),
            orig_addr: e.orig_addr.v4_raw(),
            expires_s: e.expires_s,
            backend_id: e.backend_id,
            svc_id: e.svc_id,
            nat_port: e.nat_port,
            orig_port: e.orig_port,
            state: e.state,
            flags: e.flags,
            _pad: 0,
            owner: e.owner,
        }
    }

    /// [`CtEntry4::narrow`]'s inverse.
    #[inline(always)]
    pub const fn widen(&self) -> CtEntry {
        CtEntry {
            nat_addr: Addr::from_v4_raw(self.nat_addr),
            orig_addr: Addr::from_v4_raw(self.orig_addr),
            expires_s: self.expires_s,
            backend_id: self.backend_id,
            svc_id: self.svc_id,
            nat_port: self.nat_port,
            orig_port: self.orig_port,
            state: self.state,
            flags: self.flags,
            _pad: 0,
            owner: self.owner,
        }
    }
}

/// The key of `WEIR_CT_OWNERS` that holds no count but the
/// CLOCK_MONOTONIC nanosecond until which the counts are fresh: the
/// collector writes it after rewriting them (its time plus three
/// `--ct-gc-interval`s). A count only grows between collections (what
/// expires or is evicted is subtracted only by the next one), so with no
/// collector past that moment (no agent running) it says more than the
/// pod holds: the kernel then admits the pod's new flows rather than
/// refuse them on it (`CtStat::QuotaLifted`). Owner 0 is no pod link
/// (flows from outside the node are nobody's), so the key is free.
pub const OWNER_COUNTS_FRESH_UNTIL: u32 = 0;

/// Conntrack counters (`WEIR_CT_STATS`, per-CPU array), indexed by this.
/// `Created` and `Deleted` count every key that entered or left the table
/// by an insert or a delete (kernel and agent), so
/// `created - deleted - entries` is what the LRU evicted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtStat {
    /// New keys inserted (kernel and agent).
    Created = 0,
    /// Keys deleted (kernel and agent).
    Deleted = 1,
    /// Inserts that failed (table full or a race lost).
    InsertFailed = 2,
    /// New flows refused by the per-endpoint quota.
    QuotaRefused = 3,
    /// A live flow's missing half rebuilt from the other half.
    HalfRebuilt = 4,
    /// Service flows whose client port was remapped (tuple collision).
    PortRemapped = 5,
    /// Keys the agent (or `weir ct flush`) deleted. Written by userspace
    /// only, so it never races with the kernel's slots.
    AgentDeleted = 6,
    /// Entries taken over from the map a migration replaces
    /// (`maps::CT_PREV` or `maps::CT_PREV_V1`); also counted in `Created`.
    CarriedOver = 7,
    /// New flows of a pod at its share admitted because its count was
    /// stale ([`OWNER_COUNTS_FRESH_UNTIL`] passed: no agent collecting).
    QuotaLifted = 8,
}

impl CtStat {
    pub const ALL: [CtStat; 9] = [
        CtStat::Created,
        CtStat::Deleted,
        CtStat::InsertFailed,
        CtStat::QuotaRefused,
        CtStat::HalfRebuilt,
        CtStat::PortRemapped,
        CtStat::AgentDeleted,
        CtStat::CarriedOver,
        CtStat::QuotaLifted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Deleted => "deleted",
            Self::InsertFailed => "insert_failed",
            Self::QuotaRefused => "quota_refused",
            Self::HalfRebuilt => "half_rebuilt",
            Self::PortRemapped => "port_remapped",
            Self::AgentDeleted => "agent_deleted",
            Self::CarriedOver => "carried_over",
            Self::QuotaLifted => "quota_lifted",
        }
    }
}

crate::user_pod!(CtKey, CtEntry, CtKey4, CtEntry4, CtTail, CtMasqKey6, CtMasq6);
