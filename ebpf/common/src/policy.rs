//! Policy ABI: local endpoints, the IP → identity cache, and the policy
//! entries each endpoint allows.
//!
//! Lookup path for a new flow (`weir_logic::policy::decide`):
//! `WEIR_ENDPOINTS[local pod IP]` → isolated in this direction? →
//! `WEIR_IPCACHE[peer IP]` (longest prefix) → peer identity and CIDR
//! identity → `WEIR_POLICY[(endpoint, direction, identity, proto, port)]`
//! (longest prefix, so an entry may leave the port or the protocol open),
//! tried for the peer identity, its CIDR identity and [`ID_ANY`]; the
//! first hit is the verdict (the agent evaluates every tier beforehand
//! and writes an identity's entries only where they differ from the
//! fallbacks after it).

use crate::addr::Addr;

/// In policy keys: any peer (a rule with no `from`/`to`).
pub const ID_ANY: u32 = 0;
/// The local node (kubelet probes and other host traffic).
pub const ID_HOST: u32 = 1;
/// An address no pod and no policy CIDR covers.
pub const ID_WORLD: u32 = 2;
/// First identity of a pod label set.
pub const ID_POD_FIRST: u32 = 256;
/// First identity of a policy CIDR.
pub const ID_CIDR_FIRST: u32 = 1 << 24;

pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Some policy (NetworkPolicy, WeirNetworkPolicy or a cluster policy)
/// selects the endpoint for ingress: new flows are judged by its
/// `WEIR_POLICY` entries.
pub const EP_F_INGRESS_ISOLATED: u32 = 1 << 0;
/// Some policy selects the endpoint for egress.
pub const EP_F_EGRESS_ISOLATED: u32 = 1 << 1;

/// Value of `WEIR_ENDPOINTS`, keyed by the pod's [`Addr`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// The endpoint's id in policy keys.
    pub id: u32,
    /// The pod's own identity.
    pub identity: u32,
    pub flags: u32,
    pub _pad: u32,
}

impl EndpointInfo {
    #[inline(always)]
    pub const fn isolated(&self, direction: u8) -> bool {
        let bit = if direction == DIR_INGRESS { EP_F_INGRESS_ISOLATED } else { EP_F_EGRESS_ISOLATED };
        self.flags & bit != 0
    }
}

/// Data of a `WEIR_IPCACHE` LPM key: an address (prefix lengths count
/// from the first bit of the 16 bytes, so IPv4 /n is 96 + n).
pub type IpcacheKeyData = Addr;

/// Value of `WEIR_IPCACHE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpInfo {
    /// A pod's label-set identity, a CIDR identity, or [`ID_WORLD`].
    pub identity: u32,
    /// The most specific policy CIDR holding the address ([`ID_WORLD`]
    /// when none does). For a CIDR entry, the same as `identity`; for a
    /// pod, what lets ipBlock rules match pod addresses.
    pub cidr_identity: u32,
}

/// IPv4 prefix lengths in the 16-byte key space.
pub const V4_PREFIX_BASE: u32 = 96;

/// Data of a `WEIR_POLICY` LPM key. Fields are big-endian and ordered
/// endpoint, direction, identity, protocol, port, so a key prefix leaves
/// the port open (80 bits), the protocol too (72 bits), or covers an
/// aligned block of ports (80 + bits fixed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyData {
    pub bytes: [u8; 12],
}

/// Key bits up to and including the identity: any protocol, any port.
pub const POLICY_PREFIX_ANY_PROTO: u32 = 72;
/// Key bits up to and including the protocol: any port.
pub const POLICY_PREFIX_ANY_PORT: u32 = 80;
/// Every key bit: one port.
pub const POLICY_PREFIX_FULL: u32 = 96;

impl PolicyKeyData {
    /// `port` in host order.
    #[inline(always)]
    pub const fn new(endpoint: u32, direction: u8, identity: u32, proto: u8, port: u16) -> Self {
        let e = endpoint.to_be_bytes();
        let i = identity.to_be_bytes();
        let p = port.to_be_bytes();
        PolicyKeyData { bytes: [e[0], e[1], e[2], e[3], direction, i[0], i[1], i[2], i[3], proto, p[0], p[1]] }
    }

    pub const fn endpoint(&self) -> u32 {
        let b = &self.bytes;
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub const fn direction(&self) -> u8 {
        self.bytes[4]
    }

    pub const fn identity(&self) -> u32 {
        let b = &self.bytes;
        u32::from_be_bytes([b[5], b[6], b[7], b[8]])
    }

    pub const fn proto(&self) -> u8 {
        self.bytes[9]
    }

    /// Host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes([self.bytes[10], self.bytes[11]])
    }
}

/// The entry denies (otherwise it allows).
pub const PV_DENY: u32 = 1 << 0;
/// A `Log` rule matched: report the flow (`note_rule` names it).
pub const PV_LOG: u32 = 1 << 1;
/// A policy in audit mode would decide the other way: report the flow
/// (`note_rule` names the audited rule, 0 for the default verdict).
pub const PV_AUDIT: u32 = 1 << 2;
/// With `PV_AUDIT`: the audited verdict is deny (otherwise allow).
pub const PV_AUDIT_DENY: u32 = 1 << 3;

/// Value of `WEIR_POLICY`: the fully evaluated verdict of every cell the
/// key covers (cluster tiers, NetworkPolicy, baseline, default), so the
/// kernel never walks rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyValue {
    /// The deciding rule (the agent's rule table names its policy), 0 for
    /// a default verdict; used by verdict events and `weir explain`.
    pub rule: u32,
    /// `PV_*` bits.
    pub flags: u32,
    /// The `Log` or audited rule that `PV_LOG` / `PV_AUDIT` refer to.
    pub note_rule: u32,
    pub _pad: u32,
}

impl PolicyValue {
    pub const fn allow(rule: u32) -> Self {
        PolicyValue { rule, flags: 0, note_rule: 0, _pad: 0 }
    }

    pub const fn deny(rule: u32) -> Self {
        PolicyValue { rule, flags: PV_DENY, note_rule: 0, _pad: 0 }
    }

    #[inline(always)]
    pub const fn allows(&self) -> bool {
        self.flags & PV_DENY == 0
    }
}

/// What a `WEIR_NAMES` entry names.
pub const NAME_RULE: u32 = 1;
pub const NAME_ENDPOINT: u32 = 2;
pub const NAME_IDENTITY: u32 = 3;
/// The NetworkPolicies (and weir's namespaced policies) that isolate an
/// endpoint in one direction, comma-separated: what denies a flow no rule
/// allows. Keyed by [`isolation_name_id`].
pub const NAME_ISOLATION: u32 = 4;

/// The id of an endpoint's [`NAME_ISOLATION`] entry for `dir`.
pub const fn isolation_name_id(endpoint: u32, dir: u8) -> u32 {
    (endpoint << 1) | (dir & 1) as u32
}

/// Key of `WEIR_NAMES`: a rule id, endpoint id or identity, by kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    pub kind: u32,
    pub id: u32,
}

/// Value of `WEIR_NAMES` (written by the agent, read by the CLI; the
/// kernel only carries ids): `ns/policy ingress[0]` for a rule,
/// `ns/pod` for an endpoint, `ns {labels}` for an identity; UTF-8,
/// NUL-padded, cut at 120 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleName {
    pub bytes: [u8; 120],
}

impl Default for RuleName {
    fn default() -> Self {
        RuleName { bytes: [0; 120] }
    }
}

impl RuleName {
    /// The name, cut at 120 bytes on a character boundary.
    pub fn new(name: &str) -> Self {
        let mut r = RuleName::default();
        let mut end = name.len().min(r.bytes.len());
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        r.bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        r
    }

    pub fn as_str(&self) -> &str {
        let end = self.bytes.iter().position(|b| *b == 0).unwrap_or(self.bytes.len());
        core::str::from_utf8(&self.bytes[..end]).unwrap_or("")
    }
}

const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);
const _: () = assert!(core::mem::size_of::<RuleName>() == 120);
const _: () = assert!(core::mem::size_of::<NameKey>() == 8);
const _: () = assert!(core::mem::size_of::<IpInfo>() == 8);
const _: () = assert!(core::mem::size_of::<PolicyKeyData>() == 12);
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 16);

crate::user_pod!(EndpointInfo, IpInfo, PolicyKeyData, PolicyValue, RuleName, NameKey);
