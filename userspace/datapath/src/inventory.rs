//! What is pinned: every map with its fill level against its capacity,
//! read from the pins (for `weir status`). Entries are counted by key
//! alone, so a map in another layout than this build's (an upgrade under
//! way) is counted without reading its values.

use std::os::fd::AsFd as _;

use aya::maps::{HashMap, MapData, MapInfo, MapType};
use weir_common::{
    lb::{FrontendKey, Service},
    maps::*,
};

use crate::{migrate::raw, pinned, pins::PinLayout, DatapathError};

#[derive(Clone, Debug, serde::Serialize)]
pub struct MapFill {
    pub name: &'static str,
    /// Entries in use; for arrays, the slots in use where that means
    /// something (the selection table), else `None`.
    pub entries: Option<u64>,
    pub capacity: u32,
}

/// The keys of the hash or trie `name`, walked with get-next-key.
fn count_keys(layout: &PinLayout, name: &'static str, key_size: u32) -> Result<u64, DatapathError> {
    let raw_error = |source| DatapathError::Raw { op: "counting", name: name.to_string(), source };
    let fd = raw::obj_get(&layout.map(name)).map_err(raw_error)?;
    let (mut key, mut next) = (vec![0u8; key_size as usize], vec![0u8; key_size as usize]);
    let mut n = 0u64;
    while raw::next_key(fd.as_fd(), (n > 0).then_some(&key[..]), &mut next).map_err(raw_error)? {
        key.copy_from_slice(&next);
        n += 1;
    }
    Ok(n)
}

/// Every pinned map weir knows, in a stable order.
pub fn maps(layout: &PinLayout) -> Result<Vec<MapFill>, DatapathError> {
    layout.require_existing()?;
    let names = [
        IF_STATS, DP_ERRORS, DROPS, FRONTENDS, BACKENDS, LB_TABLE, AFFINITY, CT, CT_STATS, CT_OWNERS, CONFIG, ENDPOINTS, IPCACHE, POLICY, LINKS,
        FRAGS, EVENTS, SOURCE_RANGES,
    ];
    // Maps that may not be pinned yet: IPv4 conntrack (WEIR_CT4) and the
    // IPv6 masqueraded entries (WEIR_CT6_MASQ) while an older agent's
    // conntrack waits for its migration, and the node object's maps
    // until an agent loaded it.
    let optional = [CT4, CT6_MASQ, POD_ADDRS, TUNNEL, NODES, MASQ, NO_MASQ, SNAT, SVC_ADDRS, LB_IDS];
    let optional = optional.into_iter().filter(|n| layout.map(n).exists());
    let mut out = Vec::new();
    for name in names.into_iter().chain(optional) {
        let info = MapInfo::from_pin(layout.map(name)).map_err(|source| DatapathError::Map { name, source })?;
        let capacity = info.max_entries();
        let keyed = matches!(info.map_type(), Ok(MapType::Hash | MapType::LruHash | MapType::PerCpuHash | MapType::LruPerCpuHash | MapType::LpmTrie));
        let entries = if name == LB_TABLE {
            let frontends = pinned::typed::<HashMap<MapData, FrontendKey, Service>>(layout, FRONTENDS)?;
            Some(frontends.iter().filter_map(Result::ok).map(|(_, s)| u64::from(s.table_len)).sum())
        } else if keyed {
            Some(count_keys(layout, name, info.key_size())?)
        } else {
            None
        };
        out.push(MapFill { name, entries, capacity });
    }
    Ok(out)
}
