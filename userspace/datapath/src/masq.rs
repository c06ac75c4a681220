//! `WEIR_MASQ` (uplink → the address and ports pod egress leaves with) and
//! `WEIR_NO_MASQ` (destinations inside the cluster), for `--masquerade`.
//! Writes only what differs; additions to the inside set before removals,
//! so a flow inside the cluster is never translated by a half-written set.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{lpm_trie::{Key, LpmTrie}, HashMap, MapData};
use weir_common::{
    addr::Addr,
    maps::{MASQ, MASQ_MAX_ENTRIES, NO_MASQ, NO_MASQ_MAX_ENTRIES},
    masq::MasqDevice,
};
use weir_desired::policy::Prefix;

use crate::{
    error::update_error,
    lpm::{key, same},
    pinned,
    pins::PinLayout,
    DatapathError,
};

pub struct MasqMaps {
    devices: HashMap<MapData, u32, MasqDevice>,
    inside: LpmTrie<MapData, Addr, u32>,
}

impl MasqMaps {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self {
            devices: pinned::hash(layout, MASQ)?,
            inside: LpmTrie::try_from(pinned::open(layout, NO_MASQ)?).map_err(|source| DatapathError::Map { name: NO_MASQ, source })?,
        })
    }

    /// Makes the maps hold exactly `devices` (ifindex → how it
    /// masquerades; empty turns masquerade off) and `inside`. Returns the
    /// writes made.
    pub fn sync(&mut self, devices: &BTreeMap<u32, MasqDevice>, inside: &BTreeSet<Prefix>) -> Result<usize, DatapathError> {
        let mut writes = 0;
        let have: Vec<Key<Addr>> = self.inside.keys().filter_map(Result::ok).collect();
        let wanted: Vec<(Key<Addr>, &Prefix)> = inside.iter().map(|p| (key(p), p)).collect();
        for (k, p) in &wanted {
            if !have.iter().any(|h| same(h, k)) {
                self.inside.insert(k, 1, 0).map_err(|source| update_error(NO_MASQ, NO_MASQ_MAX_ENTRIES, || format!("non-masquerade CIDR {p}"), source))?;
                writes += 1;
            }
        }
        for (ifindex, d) in devices {
            if self.devices.get(ifindex, 0).ok().as_ref() != Some(d) {
                self.devices.insert(ifindex, d, 0).map_err(|source| update_error(MASQ, MASQ_MAX_ENTRIES, || format!("device {ifindex}"), source))?;
                writes += 1;
            }
        }
        let stale: Vec<u32> = self.devices.keys().filter_map(Result::ok).filter(|i| !devices.contains_key(i)).collect();
        for i in stale {
            let _ = self.devices.remove(&i);
            writes += 1;
        }
        for h in &have {
            if !wanted.iter().any(|(k, _)| same(h, k)) {
                let _ = self.inside.remove(h);
                writes += 1;
            }
        }
        Ok(writes)
    }
}
