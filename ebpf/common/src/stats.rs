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
