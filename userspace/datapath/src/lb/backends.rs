//! Backends: one id per frontend and endpoint ([`Owned`]), reference
//! counted by the frontend's members.
//!
//! A backend a frontend drops is deleted at once, and with it every flow
//! and affinity entry that names it, without a scan: the kernel follows
//! an established flow only while its backend id exists with the flow's
//! address and port (`lb::backend_matches`), and an affinity entry only
//! while its id exists; the conntrack collector takes dead entries out in
//! its one periodic scan ([`Lb::backend_is`]). When ids were shared
//! between frontends, dropping a backend one frontend still listed meant
//! a scan of all of conntrack and of the affinity map for each change.

use std::collections::HashSet;

use aya::maps::{HashMap, MapData};
use weir_common::{
    lb::{AffinityKey, AffinityValue, Backend},
    maps::{BACKENDS, BACKENDS_MAX_ENTRIES},
};

use super::{BackendState, Lb, Owned, WriteStats};
use crate::{error::update_error, DatapathError};
use weir_common::addr::Addr;

impl Lb {
    /// The id of backend `owned`, created (or taken over from an orphan)
    /// if it has none, and whether this call created it.
    pub(super) fn ensure_backend(&mut self, owned: Owned, flags: u8, stats: &mut WriteStats) -> Result<(u32, bool), DatapathError> {
        let ident = owned.ident;
        let value = Backend { addr: ident.addr, port: ident.port, proto: ident.proto, flags };
        if !self.backends.contains_key(&owned) {
            if let Some((id, old)) = self.orphans.get_mut(&ident).and_then(Vec::pop) {
                self.backends.insert(owned, (id, BackendState { value: old, refs: 0 }));
                self.ids.insert(id, owned);
            }
        }
        if let Some((id, st)) = self.backends.get_mut(&owned) {
            if st.value != value {
                self.backends_map.insert(*id, value, 0).map_err(|source| DatapathError::Map { name: BACKENDS, source })?;
                st.value = value;
                stats.map_writes += 1;
            }
            return Ok((*id, false));
        }
        let mut id = self.next_backend_id.max(1);
        while self.ids.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.marks.backend(id)?;
        self.next_backend_id = id.wrapping_add(1).max(1);
        self.backends_map.insert(id, value, 0).map_err(|source| {
            update_error(BACKENDS, BACKENDS_MAX_ENTRIES, || format!("backend {}:{}", ident.addr, u16::from_be(ident.port)), source)
        })?;
        stats.map_writes += 1;
        self.backends.insert(owned, (id, BackendState { value, refs: 0 }));
        self.ids.insert(id, owned);
        Ok((id, true))
    }

    /// Deletes the backends no frontend lists: those whose last member
    /// reference went in a failed write, and the orphans no frontend took
    /// over. Adoption counts only the backends in a selection table, so
    /// the non-ready ones of a service deleted while no agent ran are left
    /// over; a full sync, once every desired service is programmed, ends
    /// with this.
    pub fn prune_unreferenced(&mut self) -> Result<WriteStats, DatapathError> {
        let mut stats = WriteStats::default();
        let mut doomed: HashSet<u32> = self.backends.values().filter(|(_, st)| st.refs == 0).map(|(id, _)| *id).collect();
        doomed.extend(self.orphans.drain().flat_map(|(_, v)| v).map(|(id, _)| id));
        for id in &doomed {
            if let Some(owned) = self.ids.remove(id) {
                if self.backends.get(&owned).is_some_and(|(i, _)| i == id) {
                    self.backends.remove(&owned);
                }
            }
            match crate::error::deleted(self.backends_map.remove(id)) {
                Ok(()) => {}
                Err(source) => return Err(DatapathError::Map { name: BACKENDS, source }),
            }
            stats.map_writes += 1;
        }
        // Their flows need no scan: the kernel re-selects a flow whose
        // backend is gone, and the collector takes the entries out.
        Ok(stats)
    }

    /// Releases the backends frontend `svc_id` no longer lists. They are
    /// its own, so each goes with its last reference, and with it its
    /// flows and affinity entries (see the module's note). Only an id an
    /// agent from before per-frontend backends shared, which another
    /// frontend still lists, survives; its flows of this frontend and its
    /// affinity entries are purged with one scan each.
    pub(super) fn drop_members(&mut self, svc_id: u32, dropped: HashSet<u32>, stats: &mut WriteStats) -> Result<(), DatapathError> {
        if dropped.is_empty() {
            return Ok(());
        }
        for b in &dropped {
            self.release_backend(*b, stats)?;
        }
        let shared: HashSet<u32> = dropped.into_iter().filter(|b| self.ids.contains_key(b)).collect();
        if !shared.is_empty() {
            stats.ct_purged += self.ct.purge(Some(svc_id), &shared);
            purge_affinity(&mut self.affinity, svc_id, &shared);
        }
        Ok(())
    }

    /// Whether backend `id` exists with this address and port (network
    /// order): what the kernel checks before it follows an established
    /// flow. Conntrack entries for which it is false are dead.
    pub fn backend_is(&self, id: u32, addr: &Addr, port: u16) -> bool {
        self.ids.get(&id).is_some_and(|o| o.ident.addr == *addr && o.ident.port == port)
    }

    pub(super) fn add_ref(&mut self, id: u32) {
        if let Some((_, st)) = self.ids.get(&id).and_then(|o| self.backends.get_mut(o)) {
            st.refs += 1;
        }
    }

    /// Drops one reference; deletes the backend at zero (its flows stop at
    /// once: see [`Lb::drop_members`]).
    pub(super) fn release_backend(&mut self, id: u32, stats: &mut WriteStats) -> Result<(), DatapathError> {
        let Some(owned) = self.ids.get(&id).copied() else { return Ok(()) };
        let Some((_, st)) = self.backends.get_mut(&owned) else { return Ok(()) };
        st.refs = st.refs.saturating_sub(1);
        if st.refs > 0 {
            return Ok(());
        }
        self.backends.remove(&owned);
        self.ids.remove(&id);
        match crate::error::deleted(self.backends_map.remove(&id)) {
            Ok(()) => {}
            Err(source) => return Err(DatapathError::Map { name: BACKENDS, source }),
        }
        stats.map_writes += 1;
        Ok(())
    }
}

/// Deletes the affinity entries of frontend `svc_id` that name one of
/// `backends`.
fn purge_affinity(affinity: &mut HashMap<MapData, AffinityKey, AffinityValue>, svc_id: u32, backends: &HashSet<u32>) {
    let doomed: Vec<AffinityKey> =
        affinity.iter().filter_map(Result::ok).filter(|(k, v)| k.svc_id == svc_id && backends.contains(&v.backend_id)).map(|(k, _)| k).collect();
    for k in doomed {
        let _ = affinity.remove(&k);
    }
}

/// Deletes the affinity entries whose backend is not in the maps (left by
/// an agent that stopped before its last deletes were followed by the
/// kernel's checks): ids are handed out again after a restart, and the
/// kernel checks only that an affinity entry's id exists. One scan, at
/// adoption; the map holds only the clients of ClientIP services.
pub(super) fn sweep_affinity(
    mut affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    backends: &std::collections::HashMap<u32, Backend>,
) -> HashMap<MapData, AffinityKey, AffinityValue> {
    let doomed: Vec<AffinityKey> = affinity.iter().filter_map(Result::ok).filter(|(_, v)| !backends.contains_key(&v.backend_id)).map(|(k, _)| k).collect();
    for k in doomed {
        let _ = affinity.remove(&k);
    }
    affinity
}
