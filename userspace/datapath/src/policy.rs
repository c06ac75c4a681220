//! Programming policy into the pinned maps: local endpoints, the ipcache
//! and the policy entries.
//!
//! [`PolicyMaps::transition`] moves the maps from what they hold to a new
//! desired state so that every lookup meets either the old or the new
//! verdict of its cell, never a third one:
//! 1. entries the *old* rules give identities that are about to appear;
//! 2. the ipcache (every identity that can now be resolved already has
//!    entries consistent with its prefix);
//! 3. the new rules' entries are written, most specific keys first (a
//!    cell keeps its old entry until its own new one lands);
//! 4. endpoint isolation flags take their new values;
//! 5. the old rules' entries are deleted, broadest keys first;
//! 6. the final identities' entries, then the ipcache; entries, prefixes,
//!    identities and endpoints that are gone are deleted last.
//!
//! What is programmed is read back on [`PolicyMaps::open`], so a restarted
//! agent adopts it.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{lpm_trie::{Key, LpmTrie}, HashMap, MapData};
use weir_common::{
    addr::Addr,
    maps::{ENDPOINTS, ENDPOINTS_MAX_ENTRIES, IPCACHE, IPCACHE_MAX_ENTRIES, POLICY, POLICY_MAX_ENTRIES, NAMES, NAMES_MAX_ENTRIES},
    policy::{EndpointInfo, IpInfo, PolicyKeyData, PolicyValue, RuleName, NameKey, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, V4_PREFIX_BASE},
};
use weir_desired::policy::{EndpointSpec, PolicyDelta, PolicyEntry, PolicyState, Prefix};

use crate::{error::update_error, pinned, pins::PinLayout, DatapathError};

/// What a transition wrote.
#[derive(Debug, Default)]
pub struct PolicyWrites {
    pub map_writes: usize,
    pub errors: Vec<(String, DatapathError)>,
}

pub struct PolicyMaps {
    names: HashMap<MapData, NameKey, RuleName>,
    name_cache: BTreeMap<NameKey, String>,
    endpoints: HashMap<MapData, Addr, EndpointInfo>,
    ipcache: LpmTrie<MapData, Addr, IpInfo>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    current: PolicyState,
}

fn endpoint_info(s: &EndpointSpec) -> EndpointInfo {
    let mut flags = 0;
    if s.ingress_isolated {
        flags |= EP_F_INGRESS_ISOLATED;
    }
    if s.egress_isolated {
        flags |= EP_F_EGRESS_ISOLATED;
    }
    EndpointInfo { id: s.id, identity: s.identity, flags, _pad: 0 }
}

fn endpoint_spec(i: &EndpointInfo) -> EndpointSpec {
    EndpointSpec {
        id: i.id,
        identity: i.identity,
        ingress_isolated: i.flags & EP_F_INGRESS_ISOLATED != 0,
        egress_isolated: i.flags & EP_F_EGRESS_ISOLATED != 0,
    }
}

/// The prefix an ipcache key stands for.
pub fn prefix_of(key_len: u32, addr: &Addr) -> Prefix {
    let ip = IpAddr::from(*addr);
    if ip.is_ipv4() {
        Prefix::new(ip, key_len.saturating_sub(V4_PREFIX_BASE) as u8)
    } else {
        Prefix::new(ip, key_len.min(128) as u8)
    }
}

impl PolicyMaps {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        let endpoints = pinned::hash(layout, ENDPOINTS)?;
        let ipcache = LpmTrie::try_from(pinned::open(layout, IPCACHE)?).map_err(|source| DatapathError::Map { name: IPCACHE, source })?;
        let policy = LpmTrie::try_from(pinned::open(layout, POLICY)?).map_err(|source| DatapathError::Map { name: POLICY, source })?;
        let names: HashMap<MapData, NameKey, RuleName> = pinned::hash(layout, NAMES)?;
        let name_cache = names.iter().filter_map(Result::ok).map(|(k, n)| (k, n.as_str().to_string())).collect();
        let mut me = Self { names, name_cache, endpoints, ipcache, policy, current: PolicyState::default() };
        me.current = me.read();
        Ok(me)
    }

    /// What the maps hold, in desired-state terms.
    pub fn read(&self) -> PolicyState {
        let mut s = PolicyState::default();
        for (a, i) in self.endpoints.iter().filter_map(Result::ok) {
            s.endpoints.insert(IpAddr::from(a), endpoint_spec(&i));
        }
        for (k, v) in self.ipcache.iter().filter_map(Result::ok) {
            s.ipcache.insert(prefix_of(k.prefix_len(), &k.data()), v);
        }
        for (k, v) in self.policy.iter().filter_map(Result::ok) {
            s.entries.insert(PolicyEntry::from_key(k.prefix_len(), &k.data()), v);
        }
        s
    }

    /// Packs the mirror of what is programmed (`PolicyState::pack`).
    pub fn pack(&mut self) {
        self.current.pack();
    }

    /// What this programmer last wrote (or adopted).
    pub fn current(&self) -> &PolicyState {
        &self.current
    }

    /// Moves the maps to `fin` (module docs): `old_rules` and `new_rules`
    /// are the old and new policies translated over the union of old and
    /// new identities; `fin` is the new policies over the new identities.
    pub fn transition(&mut self, old_rules: &PolicyState, new_rules: &PolicyState, fin: &PolicyState) -> PolicyWrites {
        let mut w = PolicyWrites::default();
        self.transition_into(old_rules, new_rules, fin, &mut w);
        w
    }

    /// [`PolicyMaps::transition`], adding to `w`.
    pub fn transition_into(&mut self, old_rules: &PolicyState, new_rules: &PolicyState, fin: &PolicyState, w: &mut PolicyWrites) {
        // 1. Entries for identities about to appear, under the old rules.
        let known: std::collections::BTreeSet<u32> = self.current.ipcache.values().map(|i| i.identity).collect();
        let pre: BTreeMap<PolicyEntry, PolicyValue> =
            old_rules.entries.iter().filter(|(e, _)| !known.contains(&e.identity)).map(|(e, r)| (*e, *r)).collect();
        self.put_entries(&pre, w);
        // 2. The ipcache over the union of identities.
        self.put_ipcache(&new_rules.ipcache, w);
        // 3. The new rules, on top of the old.
        self.put_entries(&new_rules.entries, w);
        // 4. Isolation flags and new endpoints.
        self.put_endpoints(&fin.endpoints, w);
        // 5. The old rules go.
        self.remove_entries(&new_rules.entries, w);
        // 6. Gone addresses, prefixes, identities and endpoints; pods whose
        //    identity changes with the CIDR set get their final identity's
        //    entries before the ipcache points at it.
        self.put_entries(&fin.entries, w);
        self.put_ipcache(&fin.ipcache, w);
        self.remove_ipcache(&fin.ipcache, w);
        self.remove_entries(&fin.entries, w);
        self.remove_endpoints(&fin.endpoints, w);
    }

    /// Applies a delta of pod changes (`weir_model::policy::pod_delta`):
    /// names, then new entries (most specific first), the ipcache and the
    /// endpoints, then what goes: entries (broadest first), addresses and
    /// endpoints, names last. A pod's new cells are in place before its
    /// address or endpoint points at them, as in a transition.
    pub fn apply_delta(&mut self, d: &PolicyDelta, w: &mut PolicyWrites) {
        let names: BTreeMap<NameKey, String> = d.names.iter().filter_map(|(k, v)| Some((*k, v.clone()?))).collect();
        self.set_names(&names, w);
        self.put_entries(&puts(&d.entries), w);
        self.put_ipcache(&puts(&d.ipcache), w);
        self.put_endpoints(&puts(&d.endpoints), w);
        let mut gone: Vec<PolicyEntry> = d.entries.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
        gone.sort_by_key(|e| e.key().0);
        let policy = &mut self.policy;
        remove_keys(&mut self.current.entries, gone, POLICY, |e| format!("{e:?}"), w, |e| {
            let (len, data) = e.key();
            policy.remove(&Key::new(len, data))
        });
        let ipcache = &mut self.ipcache;
        let gone = d.ipcache.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k);
        remove_keys(&mut self.current.ipcache, gone, IPCACHE, Prefix::to_string, w, |p| ipcache.remove(&Key::new(p.key_len(), Addr::from(p.addr))));
        let endpoints = &mut self.endpoints;
        let gone = d.endpoints.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k);
        remove_keys(&mut self.current.endpoints, gone, ENDPOINTS, IpAddr::to_string, w, |ip| endpoints.remove(&Addr::from(*ip)));
        for (k, _) in d.names.iter().filter(|(_, v)| v.is_none()) {
            if !self.name_cache.contains_key(k) {
                continue;
            }
            match crate::error::deleted(self.names.remove(k)) {
                Ok(()) => {
                    self.name_cache.remove(k);
                    w.map_writes += 1;
                }
                Err(source) => w.errors.push((format!("name {k:?}"), DatapathError::Map { name: NAMES, source })),
            }
        }
    }

    /// Rewrites anything in the maps that differs from what was programmed
    /// (drift), and deletes what should not be there. Returns repairs.
    pub fn repair(&mut self) -> PolicyWrites {
        let want = self.current.clone();
        self.current = self.read();
        let mut w = PolicyWrites::default();
        self.put_ipcache(&want.ipcache, &mut w);
        self.put_entries(&want.entries, &mut w);
        self.put_endpoints(&want.endpoints, &mut w);
        self.remove_entries(&want.entries, &mut w);
        self.remove_ipcache(&want.ipcache, &mut w);
        self.remove_endpoints(&want.endpoints, &mut w);
        w
    }

    /// Writes the names of rules, endpoints and identities the CLI shows
    /// (before the entries that refer to them).
    pub fn set_names(&mut self, names: &BTreeMap<NameKey, String>, w: &mut PolicyWrites) {
        for (k, name) in names {
            if self.name_cache.get(k) == Some(name) {
                continue;
            }
            match self.names.insert(*k, RuleName::new(name), 0) {
                Ok(()) => {
                    self.name_cache.insert(*k, name.clone());
                    w.map_writes += 1;
                }
                Err(source) => w.errors.push((name.clone(), update_error(NAMES, NAMES_MAX_ENTRIES, || name.clone(), source))),
            }
        }
    }

    /// Deletes names not in `keep`.
    pub fn prune_names(&mut self, keep: &BTreeMap<NameKey, String>, w: &mut PolicyWrites) {
        let doomed: Vec<NameKey> = self.name_cache.keys().filter(|k| !keep.contains_key(k)).copied().collect();
        for k in doomed {
            match crate::error::deleted(self.names.remove(&k)) {
                Ok(()) => {
                    self.name_cache.remove(&k);
                    w.map_writes += 1;
                }
                Err(source) => w.errors.push((format!("name {k:?}"), DatapathError::Map { name: NAMES, source })),
            }
        }
    }

    /// Writes `want`, most specific keys first: until a broader key of an
    /// identity is written, its cells fall back to what they were.
    fn put_entries(&mut self, want: &BTreeMap<PolicyEntry, PolicyValue>, w: &mut PolicyWrites) {
        let mut order: Vec<(PolicyEntry, PolicyValue)> = want.iter().map(|(e, v)| (*e, *v)).collect();
        order.sort_by_key(|(e, _)| std::cmp::Reverse(e.key().0));
        let policy = &mut self.policy;
        put_changed(&mut self.current.entries, order, (POLICY, POLICY_MAX_ENTRIES), |e| format!("{e:?}"), w, |e, v| {
            let (len, data) = e.key();
            policy.insert(&Key::new(len, data), v, 0)
        });
    }

    /// Deletes entries not in `keep`, broadest keys first: a cell whose
    /// specific entry is still there keeps it until it goes too.
    fn remove_entries(&mut self, keep: &BTreeMap<PolicyEntry, PolicyValue>, w: &mut PolicyWrites) {
        let policy = &mut self.policy;
        remove_missing(&mut self.current.entries, keep, |e| e.key().0, POLICY, |e| format!("{e:?}"), w, |e| {
            let (len, data) = e.key();
            policy.remove(&Key::new(len, data))
        });
    }

    fn put_ipcache(&mut self, want: &BTreeMap<Prefix, IpInfo>, w: &mut PolicyWrites) {
        let ipcache = &mut self.ipcache;
        put_changed(&mut self.current.ipcache, want.iter().map(|(p, i)| (*p, *i)), (IPCACHE, IPCACHE_MAX_ENTRIES), Prefix::to_string, w, |p, info| {
            ipcache.insert(&Key::new(p.key_len(), Addr::from(p.addr)), info, 0)
        });
    }

    fn remove_ipcache(&mut self, keep: &BTreeMap<Prefix, IpInfo>, w: &mut PolicyWrites) {
        let ipcache = &mut self.ipcache;
        remove_missing(&mut self.current.ipcache, keep, |_| 0, IPCACHE, Prefix::to_string, w, |p| ipcache.remove(&Key::new(p.key_len(), Addr::from(p.addr))));
    }

    fn put_endpoints(&mut self, want: &BTreeMap<IpAddr, EndpointSpec>, w: &mut PolicyWrites) {
        let endpoints = &mut self.endpoints;
        put_changed(&mut self.current.endpoints, want.iter().map(|(ip, s)| (*ip, *s)), (ENDPOINTS, ENDPOINTS_MAX_ENTRIES), IpAddr::to_string, w, |ip, spec| {
            endpoints.insert(Addr::from(*ip), endpoint_info(spec), 0)
        });
    }

    fn remove_endpoints(&mut self, keep: &BTreeMap<IpAddr, EndpointSpec>, w: &mut PolicyWrites) {
        let endpoints = &mut self.endpoints;
        remove_missing(&mut self.current.endpoints, keep, |_| 0, ENDPOINTS, IpAddr::to_string, w, |ip| endpoints.remove(&Addr::from(*ip)));
    }
}

/// Writes every `(key, value)` of `want` that `current` does not already
/// hold, in `want`'s order, recording each write in `current`; a failed
/// write is reported by key (a full map as such), and `current` keeps
/// what the map holds.
fn put_changed<K: Ord + Copy, V: PartialEq + Copy>(
    current: &mut BTreeMap<K, V>,
    want: impl IntoIterator<Item = (K, V)>,
    (map, capacity): (&'static str, u32),
    describe: impl Fn(&K) -> String,
    w: &mut PolicyWrites,
    mut write: impl FnMut(&K, &V) -> Result<(), aya::maps::MapError>,
) {
    for (k, v) in want {
        if current.get(&k) == Some(&v) {
            continue;
        }
        match write(&k, &v) {
            Ok(()) => {
                current.insert(k, v);
                w.map_writes += 1;
            }
            Err(source) => w.errors.push((describe(&k), update_error(map, capacity, || describe(&k), source))),
        }
    }
}

/// The keys a delta gives values, with them.
fn puts<K: Ord + Copy, V: Copy>(m: &BTreeMap<K, Option<V>>) -> BTreeMap<K, V> {
    m.iter().filter_map(|(k, v)| Some((*k, (*v)?))).collect()
}

/// Deletes every key of `current` that `keep` lacks, in ascending
/// `order`; a key already gone counts as deleted.
fn remove_missing<K: Ord + Copy, V, W>(
    current: &mut BTreeMap<K, V>,
    keep: &BTreeMap<K, W>,
    order: impl Fn(&K) -> u32,
    map: &'static str,
    describe: impl Fn(&K) -> String,
    w: &mut PolicyWrites,
    remove: impl FnMut(&K) -> Result<(), aya::maps::MapError>,
) {
    let mut doomed: Vec<K> = current.keys().filter(|k| !keep.contains_key(k)).copied().collect();
    doomed.sort_by_key(|k| order(k));
    remove_keys(current, doomed, map, describe, w, remove);
}

/// Deletes `doomed` (in its order) where `current` holds them; a key
/// already gone from the map counts as deleted.
fn remove_keys<K: Ord + Copy, V>(
    current: &mut BTreeMap<K, V>,
    doomed: impl IntoIterator<Item = K>,
    map: &'static str,
    describe: impl Fn(&K) -> String,
    w: &mut PolicyWrites,
    mut remove: impl FnMut(&K) -> Result<(), aya::maps::MapError>,
) {
    for k in doomed {
        if !current.contains_key(&k) {
            continue;
        }
        match crate::error::deleted(remove(&k)) {
            Ok(()) => {
                current.remove(&k);
                w.map_writes += 1;
            }
            Err(source) => w.errors.push((describe(&k), DatapathError::Map { name: map, source })),
        }
    }
}
