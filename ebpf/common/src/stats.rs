//! Interface counters kept by the pod program.

/// Direction of a packet relative to the pod whose host-side veth saw it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// tc ingress on the host-side veth: the pod sent the packet.
    FromPod = 0,
    /// tc egress on the host-side veth: the packet is delivered to the pod.
    ToPod = 1,
}

impl Direction {
    /// Decodes the raw value stored in an [`IfStatsKey`].
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::FromPod),
            1 => Some(Self::ToPod),
            _ => None,
        }
    }

    /// Stable name used in CLI output and pin names.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::FromPod => "from_pod",
            Self::ToPod => "to_pod",
        }
    }
}

/// Key of [`crate::maps::IF_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfStatsKey {
    pub ifindex: u32,
    /// A [`Direction`] as u32 (a Pod type carries no enums).
    pub direction: u32,
}

/// Value of [`crate::maps::IF_STATS`] (one per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfStats {
    pub packets: u64,
    pub bytes: u64,
}

/// Index into [`crate::maps::DP_ERRORS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpError {
    /// An interface counter could not be created because IF_STATS is full.
    IfStatsFull = 0,
    /// A conntrack entry could not be created (WEIR_CT full).
    CtFull = 1,
}

impl DpError {
    pub const ALL: [DpError; 2] = [DpError::IfStatsFull, DpError::CtFull];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::IfStatsFull => "if_stats_full",
            Self::CtFull => "ct_full",
        }
    }
}

const _: () = assert!(core::mem::size_of::<IfStatsKey>() == 8);
const _: () = assert!(core::mem::size_of::<IfStats>() == 16);

crate::user_pod!(IfStatsKey, IfStats);

/// North-south flow counters (`WEIR_NS_FLOWS`, per-CPU array of u64):
/// new flows from outside the node to a frontend, by frontend kind
/// (`lb::KIND_*`) and verdict, at index `kind * NS_VERDICTS + verdict`.
pub const NS_VERDICTS: u32 = 3;
/// The flow was load-balanced.
pub const NS_NEW: u32 = 0;
/// The flow was dropped (policy, no local endpoint, source ranges, ...).
pub const NS_DROPPED: u32 = 1;
/// The flow was rejected (no endpoints).
pub const NS_REJECTED: u32 = 2;

/// The verdict's name, for metrics.
pub const fn ns_verdict_name(v: u32) -> &'static str {
    match v {
        NS_NEW => "new",
        NS_DROPPED => "dropped",
        _ => "rejected",
    }
}
