//! `WEIR_SVC_ADDRS`: service id → the frontend it names, for IPv6
//! frontends. Written before the frontend (so no flow can name an id
//! whose frontend it cannot find), removed after it, repaired with it.
//! It is what an IPv6 conntrack entry, which keeps only the service id,
//! restores the address its replies come from with (`weir_logic::ct6`);
//! an IPv4 entry keeps its 4-byte addresses, so IPv4 frontends have no
//! entry here.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, MapData};
use weir_common::{
    lb::{FrontendKey, Service},
    maps::{FRONTENDS, FRONTENDS_MAX_ENTRIES, SVC_ADDRS},
};

use super::{frontend_of, marker_key, Lb};
use crate::{error::update_error, pinned, pins::PinLayout, DatapathError};

/// Whether frontend `k` has its entry in `WEIR_SVC_ADDRS`.
pub(super) fn named(k: &FrontendKey) -> bool {
    !k.addr.is_v4()
}

/// Names every IPv6 frontend pinned in `WEIR_FRONTENDS` (not the
/// entries that mark a ClusterIP's address), before any
/// agent runs: what a migration to conntrack layout v4 does before its
/// programs run, when the agent it follows may not have named them.
/// Returns how many it wrote.
pub(crate) fn name_ipv6_frontends(layout: &PinLayout) -> Result<usize, DatapathError> {
    let frontends: HashMap<MapData, FrontendKey, Service> = pinned::hash(layout, FRONTENDS)?;
    let mut names: HashMap<MapData, u32, FrontendKey> = pinned::hash(layout, SVC_ADDRS)?;
    let wanted: Vec<(FrontendKey, u32)> = frontends.iter().filter_map(Result::ok).filter(|(k, _)| named(k) && *k != marker_key(k.addr)).map(|(k, s)| (k, s.id)).collect();
    for (k, id) in &wanted {
        names.insert(id, k, 0).map_err(|source| update_error(SVC_ADDRS, FRONTENDS_MAX_ENTRIES, || format!("service id {id}"), source))?;
    }
    Ok(wanted.len())
}

impl Lb {
    /// Names service `id` → `key` (an IPv6 frontend; nothing otherwise).
    /// Whether it wrote.
    pub(super) fn name_frontend(&mut self, id: u32, key: &FrontendKey) -> Result<bool, DatapathError> {
        if !named(key) {
            return Ok(false);
        }
        self.svc_addrs.insert(id, *key, 0).map_err(|source| {
            update_error(SVC_ADDRS, FRONTENDS_MAX_ENTRIES, || frontend_of(key).map_or_else(|| format!("service id {id}"), |f| format!("service {f}")), source)
        })?;
        Ok(true)
    }

    /// Removes service `id`'s name (best effort: a stray one is repaired).
    pub(super) fn unname_frontend(&mut self, id: u32) {
        let _ = self.svc_addrs.remove(&id);
    }

    /// What `WEIR_SVC_ADDRS` should hold: every programmed IPv6 frontend.
    fn wanted_names(&self) -> StdHashMap<u32, FrontendKey> {
        self.services.iter().filter(|(k, _)| named(k)).map(|(k, s)| (s.service.id, *k)).collect()
    }

    /// Makes `WEIR_SVC_ADDRS` name exactly the programmed IPv6 frontends
    /// (at start, after an agent that did not write it, and when repairing
    /// drift). Returns the entries written or removed.
    pub(super) fn repair_names(&mut self) -> Result<usize, DatapathError> {
        let actual: StdHashMap<u32, FrontendKey> = self.svc_addrs.iter().filter_map(Result::ok).collect();
        let wanted = self.wanted_names();
        let mut repairs = 0;
        for (id, k) in &wanted {
            if actual.get(id) != Some(k) {
                self.name_frontend(*id, k)?;
                repairs += 1;
            }
        }
        for id in actual.keys().filter(|id| !wanted.contains_key(id)) {
            self.unname_frontend(*id);
            repairs += 1;
        }
        Ok(repairs)
    }
}
