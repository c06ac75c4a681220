//! Datapath events, written to the `WEIR_EVENTS` ring buffer: policy
//! denials always, allows when sampled (`DatapathConfig::allow_event_sample`).

use crate::addr::Addr;

pub const EVENT_POLICY_VERDICT: u8 = 1;

pub const VERDICT_ALLOW: u8 = 0;
pub const VERDICT_DENY: u8 = 1;

/// Why a flow was allowed (in [`PolicyEvent::reason`] when allowed).
pub const ALLOW_NOT_ISOLATED: u8 = 0;
pub const ALLOW_RULE: u8 = 1;
pub const ALLOW_HOST: u8 = 2;

/// One policy verdict on the first packet of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyEvent {
    /// CLOCK_MONOTONIC ns.
    pub ts_ns: u64,
    pub saddr: Addr,
    pub daddr: Addr,
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub kind: u8,
    pub proto: u8,
    /// `DIR_INGRESS` or `DIR_EGRESS`, seen from `endpoint`.
    pub direction: u8,
    pub verdict: u8,
    /// The local endpoint whose policy decided.
    pub endpoint: u32,
    pub peer_identity: u32,
    /// The allowing rule, or 0.
    pub rule: u32,
    /// Denied: a `DropReason` as u32. Allowed: an `ALLOW_*` code.
    pub reason: u32,
    /// The host-side veth the program ran on.
    pub ifindex: u32,
}

const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 72);

crate::user_pod!(PolicyEvent);
