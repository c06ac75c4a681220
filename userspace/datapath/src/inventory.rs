//! What is pinned: every map with its fill level against its capacity,
//! read from the pins (for `weir status`).

use aya::maps::{
    lpm_trie::LpmTrie, HashMap, MapData, MapInfo, PerCpuHashMap,
};
use weir_common::{
    addr::Addr,
    ct::{CtEntry, CtKey},
    frag::{FragKey, FragValue},
    link::LinkInfo,
    lb::{AffinityKey, AffinityValue, Backend, FrontendKey, Service},
    maps::*,
    policy::{EndpointInfo, IpInfo, PolicyKeyData, PolicyValue},
    stats::{IfStats, IfStatsKey},
};

use crate::{pinned, pins::PinLayout, DatapathError};

#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    /// Entries in use; for arrays, the slots in use where that means
    /// something (the selection table), else `None`.
    pub entries: Option<u64>,
    pub capacity: u32,
}

fn count<I: Iterator<Item = Result<T, E>>, T, E>(it: I) -> u64 {
    it.filter(Result::is_ok).count() as u64
}

/// Every pinned map weir knows, in a stable order.
pub fn maps(layout: &PinLayout) -> Result<Vec<MapFill>, DatapathError> {
    layout.require_existing()?;
    let names = [
        IF_STATS, DP_ERRORS, DROPS, FRONTENDS, BACKENDS, LB_TABLE, AFFINITY, CT, CT_STATS, CT_OWNERS, CONFIG, ENDPOINTS, IPCACHE, POLICY, LINKS,
        FRAGS, EVENTS, SOURCE_RANGES,
    ];
    // The node object's maps: pinned once an agent loaded it.
    let node_names = [POD_ADDRS, TUNNEL, NODES, MASQ, NO_MASQ, SNAT];
    let node_names = node_names.into_iter().filter(|n| layout.map(n).exists());
    let mut out = Vec::new();
    for name in names.into_iter().chain(node_names) {
        let info = MapInfo::from_pin(layout.map(name)).map_err(|source| DatapathError::Map { name, source })?;
        let capacity = info.max_entries();
        let entries = match name {
            n if n == IF_STATS => Some(count(pinned::typed::<PerCpuHashMap<MapData, IfStatsKey, IfStats>>(layout, n)?.keys())),
            n if n == FRONTENDS => Some(count(pinned::typed::<HashMap<MapData, FrontendKey, Service>>(layout, n)?.keys())),
            n if n == BACKENDS => Some(count(pinned::typed::<HashMap<MapData, u32, Backend>>(layout, n)?.keys())),
            n if n == AFFINITY => Some(count(pinned::typed::<HashMap<MapData, AffinityKey, AffinityValue>>(layout, n)?.keys())),
            n if n == CT || n == SNAT => Some(count(pinned::typed::<HashMap<MapData, CtKey, CtEntry>>(layout, n)?.keys())),
            n if n == POD_ADDRS || n == NODES => Some(count(pinned::typed::<HashMap<MapData, Addr, u32>>(layout, n)?.keys())),
            n if n == MASQ => Some(count(pinned::typed::<HashMap<MapData, u32, weir_common::masq::MasqDevice>>(layout, n)?.keys())),
            n if n == NO_MASQ => Some(count(pinned::typed::<LpmTrie<MapData, Addr, u32>>(layout, n)?.keys())),
            n if n == SOURCE_RANGES => Some(count(pinned::typed::<LpmTrie<MapData, weir_common::lb::SourceRangeKey, u32>>(layout, n)?.keys())),
            n if n == TUNNEL => Some(count(pinned::typed::<LpmTrie<MapData, Addr, weir_common::tunnel::TunnelEndpoint>>(layout, n)?.keys())),
            n if n == CT_OWNERS => Some(count(pinned::typed::<HashMap<MapData, u32, u64>>(layout, n)?.keys())),
            n if n == LINKS => Some(count(pinned::typed::<HashMap<MapData, u32, LinkInfo>>(layout, n)?.keys())),
            n if n == FRAGS => Some(count(pinned::typed::<HashMap<MapData, FragKey, FragValue>>(layout, n)?.keys())),
            n if n == ENDPOINTS => Some(count(pinned::typed::<HashMap<MapData, Addr, EndpointInfo>>(layout, n)?.keys())),
            n if n == IPCACHE => Some(count(pinned::typed::<LpmTrie<MapData, Addr, IpInfo>>(layout, n)?.keys())),
            n if n == POLICY => Some(count(pinned::typed::<LpmTrie<MapData, PolicyKeyData, PolicyValue>>(layout, n)?.keys())),
            n if n == LB_TABLE => {
                let frontends = pinned::typed::<HashMap<MapData, FrontendKey, Service>>(layout, FRONTENDS)?;
                Some(frontends.iter().filter_map(Result::ok).map(|(_, s)| u64::from(s.table_len)).sum())
            }
            _ => None,
        };
        out.push(MapFill { name, entries, capacity });
    }
    Ok(out)
}
