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
pub const CT_STATE_UDP: u8 = 5;

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
const _: () = assert!(core::mem::size_of::<CtEntry>() == 56 && core::mem::align_of::<CtEntry>() == 8);

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
}

impl CtStat {
    pub const ALL: [CtStat; 8] = [
        CtStat::Created,
        CtStat::Deleted,
        CtStat::InsertFailed,
        CtStat::QuotaRefused,
        CtStat::HalfRebuilt,
        CtStat::PortRemapped,
        CtStat::AgentDeleted,
        CtStat::CarriedOver,
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
        }
    }
}

crate::user_pod!(CtKey, CtEntry);
