//! Connection tracking for service flows.
//!
//! Each service connection has two entries, keyed by the tuple exactly as
//! it appears on the wire where the pod program sees it:
//! - forward (`CT_SVC_FWD`): client → VIP, seen on the client's interface;
//!   holds the backend chosen for the flow;
//! - reverse (`CT_SVC_REV`): backend → client (or → the hairpin address),
//!   seen on the backend's interface; holds the VIP to restore.
//!
//! A flow is alive while either of its entries is.

use crate::addr::Addr;

pub const CT_SVC_FWD: u8 = 1;
pub const CT_SVC_REV: u8 = 2;
/// A flow the policy allowed, keyed by its original-direction tuple as the
/// pods see it (after service DNAT). Replies match it reversed.
pub const CT_POLICY: u8 = 3;

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
pub const CT_STATE_ESTABLISHED: u8 = 2;
pub const CT_STATE_CLOSING: u8 = 3;
pub const CT_STATE_CLOSED: u8 = 4;
pub const CT_STATE_UDP: u8 = 5;

/// The flow is a pod reaching itself through its service.
pub const CT_F_HAIRPIN: u8 = 1 << 0;

/// Value of `WEIR_CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// CLOCK_MONOTONIC ns after which the entry is stale.
    pub expires_ns: u64,
    pub created_ns: u64,
    /// Forward: the backend address. Reverse: the VIP.
    pub nat_addr: Addr,
    /// Reverse: the client's real address (differs from the reply's
    /// destination for hairpin flows). Forward: the client address.
    pub orig_addr: Addr,
    pub backend_id: u32,
    pub svc_id: u32,
    /// Forward: the backend port. Reverse: the service port. Network order.
    pub nat_port: u16,
    pub state: u8,
    pub flags: u8,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 40);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 64);

crate::user_pod!(CtKey, CtEntry);
