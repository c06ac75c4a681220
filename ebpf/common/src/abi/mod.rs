//! The layout version of every pinned map: the on-disk ABI between one
//! agent and the next.
//!
//! A pinned map outlives the agent that created it, and the kernel keeps
//! only its type, sizes and flags. What the bytes of a key or a value
//! mean is recorded here: each map has a layout version, bumped whenever
//! its key or value (or a type nested in them) changes size, field order,
//! field types or meaning. The agent writes the version of every map it
//! pins into [`ABI`], checks it when it adopts pins left by an earlier
//! agent, and never reads a map whose layout differs from its own:
//! an older known version is migrated (see the datapath crate's
//! `migrate`), anything else is refused before a pin is touched.
//!
//! The unit test `layouts_match_the_lock` fails when a type's definition
//! changes while its map's version stays the same (`abi.lock` holds the
//! fingerprints of the definitions each version was made of).

use core::mem::size_of;

use crate::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtEntry4, CtKey, CtKey4, CtMasq6, CtMasqKey6, CtTail},
    ct_v1::CtEntryV1,
    event::DatapathEvent,
    frag::{FragKey, FragValue},
    lb::{AffinityKey, AffinityValue, Backend, FrontendKey, LbIds, Service, SockRevKey, SockRevValue, SourceRangeKey},
    link::{LinkInfo, LinkMacs},
    maps,
    masq::MasqDevice,
    policy::{EndpointInfo, IpInfo, IpcacheKeyData, NameKey, PolicyKeyData, PolicyValue, RuleName},
    stats::{IfStats, IfStatsKey},
    tunnel::TunnelEndpoint,
};

/// The manifest: which layout each pinned map was created with, keyed by
/// the kernel's map id (so a record belongs to the map itself, whatever
/// its pin is called or renamed to), plus the agent that last wrote it
/// (hash, written by the agent). Its own layout never changes.
pub const ABI: &str = "WEIR_ABI";
pub const ABI_MAX_ENTRIES: u32 = 1024;

/// [`AbiKey::kind`] of a map's record.
pub const ABI_KIND_MAP: u32 = 1;
/// [`AbiKey::kind`] of the agent's record (id 0): `name` holds the
/// version of the agent that last adopted or migrated the datapath.
pub const ABI_KIND_AGENT: u32 = 2;

/// Key of [`ABI`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AbiKey {
    pub kind: u32,
    /// The kernel's map id ([`ABI_KIND_MAP`]), or 0.
    pub id: u32,
}

/// Value of [`ABI`]: what a pinned map was created as.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AbiRecord {
    /// The layout version ([`MapLayout::version`]).
    pub version: u32,
    /// `bpf_map_type`, as the kernel reports it.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
    pub max_entries: u32,
    /// The map's pin name (or the agent's version), NUL-padded.
    pub name: [u8; 32],
}

impl AbiRecord {
    /// Writes `s` into `name`, truncated to 32 bytes.
    pub fn set_name(&mut self, s: &str) {
        self.name = [0; 32];
        let n = s.len().min(32);
        self.name[..n].copy_from_slice(&s.as_bytes()[..n]);
    }

    /// `name` up to its first NUL.
    pub fn name_str(&self) -> &str {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(32);
        core::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

const _: () = assert!(size_of::<AbiKey>() == 8);
const _: () = assert!(size_of::<AbiRecord>() == 56);

/// What the code of this build expects of one pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: &'static str,
    /// Bumped with every change to the key's or value's layout or meaning.
    pub version: u32,
    /// Key and value sizes as the map is created (an LPM trie's key
    /// includes its 4-byte prefix length; a ring buffer has neither, and
    /// `value` sizes its records).
    pub key_size: u32,
    pub value_size: u32,
    /// The types whose definitions make up the key and the value, nested
    /// ones included (for the layout guard).
    pub types: &'static [&'static str],
    /// Whether the map holds state that must survive an upgrade. A map
    /// without (counters, ring buffers) is recreated empty when its
    /// layout changes.
    pub stateful: bool,
}

const fn sz<T>() -> u32 {
    size_of::<T>() as u32
}

/// An LPM trie's key: the prefix length, then the data.
const fn lpm<T>() -> u32 {
    4 + size_of::<T>() as u32
}

const fn layout(name: &'static str, version: u32, key_size: u32, value_size: u32, types: &'static [&'static str], stateful: bool) -> MapLayout {
    MapLayout { name, version, key_size, value_size, types, stateful }
}

/// Every map the kernel objects pin, with its layout version.
///
/// Changes so far (their conversions are in the datapath crate's
/// `migrate::steps`):
/// - v2 of `WEIR_CT`, `WEIR_SNAT` and `WEIR_CT_PREV`: `CtEntry` keeps its
///   expiry in whole seconds in 32 bits (56 B instead of 64); v1 stays
///   readable as `WEIR_CT_PREV_V1` and `WEIR_SNAT_PREV_V1` (`crate::ct_v1`).
/// - v2 of `WEIR_CONFIG`: `DatapathConfig::node_addr6` appended (88 B
///   instead of 72).
/// - v3 of `WEIR_CONFIG`: `DatapathConfig::sock_scope` appended (96 B
///   instead of 88).
/// - v3 of `WEIR_CT`: IPv6 flows only (the bytes as in v2); IPv4 flows
///   are in `WEIR_CT4` (v1), with 4-byte addresses.
/// - v4 of `WEIR_CT` (v3 of `WEIR_CT_PREV`): IPv6 values are `CtTail`s,
///   no address (24 B instead of 56; `weir_logic::ct6`); the reverse
///   entries of masqueraded flows keep both in `WEIR_CT6_MASQ` (v1). v2
///   and v3 stay readable as `WEIR_CT_PREV_V3`.
/// - v2 of `WEIR_CT6_MASQ`: `CtMasqKey6` → `CtMasq6`, the key without the
///   node's address and the value with the client's only (24 + 40 B
///   instead of 40 + 56).
/// - `WEIR_CONFIG` v3's last 4 bytes, padding until 2026-12-06, are
///   `ct_udp_stream_timeout_s`, whose 0 (what the padding always held)
///   means no UDP stream state, what the programs did before: no version
///   bump, the lock refreshed.
pub const LAYOUTS: &[MapLayout] = &[
    layout(maps::IF_STATS, 1, sz::<IfStatsKey>(), sz::<IfStats>(), &["IfStatsKey", "IfStats"], false),
    layout(maps::DP_ERRORS, 1, 4, 8, &["u64"], false),
    layout(maps::DROPS, 1, 4, 8, &["u64"], false),
    layout(maps::FRONTENDS, 1, sz::<FrontendKey>(), sz::<Service>(), &["FrontendKey", "Service", "Addr"], true),
    layout(maps::BACKENDS, 1, 4, sz::<Backend>(), &["Backend", "Addr"], true),
    layout(maps::LB_TABLE, 1, 4, 4, &["u32"], true),
    layout(maps::AFFINITY, 1, sz::<AffinityKey>(), sz::<AffinityValue>(), &["AffinityKey", "AffinityValue", "Addr"], true),
    layout(maps::CT, 4, sz::<CtKey>(), sz::<CtTail>(), &["CtKey", "CtTail", "Addr"], true),
    layout(maps::CT6_MASQ, 2, sz::<CtMasqKey6>(), sz::<CtMasq6>(), &["CtMasqKey6", "CtMasq6", "CtTail", "Addr"], true),
    layout(maps::CT4, 1, sz::<CtKey4>(), sz::<CtEntry4>(), &["CtKey4", "CtEntry4"], true),
    layout(maps::CT4_PREV, 1, sz::<CtKey4>(), sz::<CtEntry4>(), &["CtKey4", "CtEntry4"], false),
    layout(maps::CT_PREV, 3, sz::<CtKey>(), sz::<CtTail>(), &["CtKey", "CtTail", "Addr"], false),
    layout(maps::CT_PREV_V3, 1, sz::<CtKey>(), sz::<CtEntry>(), &["CtKey", "CtEntry", "Addr"], false),
    layout(maps::CT_PREV_V1, 1, sz::<CtKey>(), sz::<CtEntryV1>(), &["CtKey", "CtEntryV1", "Addr"], false),
    layout(maps::CT_STATS, 1, 4, 8, &["u64"], false),
    layout(maps::CT_OWNERS, 1, 4, 8, &["u32", "u64"], true),
    layout(maps::LINKS, 1, 4, sz::<LinkInfo>(), &["LinkInfo", "Addr"], true),
    layout(maps::POD_ADDRS, 1, sz::<Addr>(), 4, &["Addr"], true),
    layout(maps::LINK_MACS, 1, 4, sz::<LinkMacs>(), &["LinkMacs"], false),
    layout(maps::TUNNEL, 1, lpm::<Addr>(), sz::<TunnelEndpoint>(), &["Addr", "TunnelEndpoint"], true),
    layout(maps::NODES, 1, sz::<Addr>(), 4, &["Addr"], true),
    layout(maps::MASQ, 1, 4, sz::<MasqDevice>(), &["MasqDevice", "Addr"], true),
    layout(maps::NO_MASQ, 1, lpm::<Addr>(), 4, &["Addr"], true),
    layout(maps::NS_FLOWS, 1, 4, 8, &["u64"], false),
    layout(maps::XDP_STATS, 1, 4, 8, &["u64"], false),
    layout(maps::SOCK_REVNAT, 2, sz::<SockRevKey>(), sz::<SockRevValue>(), &["SockRevKey", "SockRevValue", "Addr"], true),
    layout(maps::SOCK_REVNAT_POD, 2, sz::<SockRevKey>(), sz::<SockRevValue>(), &["SockRevKey", "SockRevValue", "Addr"], true),
    layout(maps::SOURCE_RANGES, 1, lpm::<SourceRangeKey>(), 4, &["SourceRangeKey", "Addr"], true),
    layout(maps::SNAT, 2, sz::<CtKey>(), sz::<CtEntry>(), &["CtKey", "CtEntry", "Addr"], true),
    layout(maps::SNAT_PREV, 2, sz::<CtKey>(), sz::<CtEntry>(), &["CtKey", "CtEntry", "Addr"], false),
    layout(maps::SNAT_PREV_V1, 1, sz::<CtKey>(), sz::<CtEntryV1>(), &["CtKey", "CtEntryV1", "Addr"], false),
    layout(maps::SNAT_STATS, 1, 4, 8, &["u64"], false),
    layout(maps::FRAGS, 1, sz::<FragKey>(), sz::<FragValue>(), &["FragKey", "FragValue", "Addr"], true),
    layout(maps::CONFIG, 3, 4, sz::<DatapathConfig>(), &["DatapathConfig", "Addr"], true),
    layout(maps::ENDPOINTS, 1, sz::<Addr>(), sz::<EndpointInfo>(), &["EndpointInfo", "Addr"], true),
    layout(maps::IPCACHE, 1, lpm::<IpcacheKeyData>(), sz::<IpInfo>(), &["IpInfo", "Addr"], true),
    layout(maps::POLICY, 1, lpm::<PolicyKeyData>(), sz::<PolicyValue>(), &["PolicyKeyData", "PolicyValue"], true),
    layout(maps::NAMES, 1, sz::<NameKey>(), sz::<RuleName>(), &["NameKey", "RuleName"], true),
    layout(maps::SVC_TIMES, 1, 4, 8, &["u32", "u64"], true),
    layout(maps::SVC_ADDRS, 1, 4, sz::<FrontendKey>(), &["FrontendKey", "Addr"], true),
    layout(maps::LB_IDS, 1, 4, sz::<LbIds>(), &["LbIds"], true),
    layout(maps::EVENTS, 1, 0, sz::<DatapathEvent>(), &["DatapathEvent", "Addr"], false),
    layout(maps::MON_EVENTS, 1, 0, sz::<DatapathEvent>(), &["DatapathEvent", "Addr"], false),
    layout(maps::MON_LEASE, 1, 4, 8, &["u64"], true),
];

/// This build's layout of the map `name`.
pub fn layout_of(name: &str) -> Option<&'static MapLayout> {
    LAYOUTS.iter().find(|l| l.name == name)
}

crate::user_pod!(AbiKey, AbiRecord);

#[cfg(test)]
mod guard;
