//! Datapath events.
//!
//! - `WEIR_EVENTS` (ring buffer, read by the agent for /metrics): policy
//!   denials always, allows when sampled (`DatapathConfig::allow_event_sample`).
//! - `WEIR_MON_EVENTS` (ring buffer, read by `weir monitor`): every event
//!   kind, written only while a monitor holds the lease in
//!   `WEIR_MON_LEASE` (CLOCK_MONOTONIC ns), so nothing is spent when no
//!   one watches and the agent's counts never compete with a monitor.

use crate::addr::Addr;

/// A policy verdict on the first packet of a flow.
pub const EVENT_POLICY_VERDICT: u8 = 1;
/// A packet dropped or rejected for another reason (`reason` is a DropReason).
pub const EVENT_DROP: u8 = 2;
/// A new service flow: `daddr:dport` translated to `nat_addr:nat_port`.
pub const EVENT_TRACE: u8 = 3;

pub const VERDICT_ALLOW: u8 = 0;
pub const VERDICT_DENY: u8 = 1;

/// Why a flow was allowed (in [`DatapathEvent::reason`] when allowed).
pub const ALLOW_NOT_ISOLATED: u8 = 0;
pub const ALLOW_RULE: u8 = 1;
pub const ALLOW_HOST: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathEvent {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub saddr: Addr,
    pub daddr: Addr,
    /// Trace events: the translated destination.
    pub nat_addr: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    /// Network byte order.
    pub nat_port: u16,
    pub kind: u8,
    pub proto: u8,
    /// `DIR_INGRESS` or `DIR_EGRESS`, seen from `endpoint`.
    pub direction: u8,
    pub verdict: u8,
    /// Policy verdicts: `PV_LOG` / `PV_AUDIT` bits of the deciding entry.
    pub flags: u16,
    /// The local endpoint whose policy decided (0: none).
    pub endpoint: u32,
    pub peer_identity: u32,
    /// The allowing rule, or 0.
    pub rule: u32,
    /// Denied or dropped: a `DropReason` as u32. Allowed: an `ALLOW_*` code.
    pub reason: u32,
    /// The host-side veth the program ran on.
    pub ifindex: u32,
    /// With `flags`: the `Log` rule, or the audited rule (whose verdict
    /// is the opposite of `verdict`).
    pub note_rule: u32,
    pub _pad: [u32; 1],
}

const _: () = assert!(core::mem::size_of::<DatapathEvent>() == 96);

crate::user_pod!(DatapathEvent);
