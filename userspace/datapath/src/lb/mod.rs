//! Programming services into the pinned maps.
//!
//! [`Lb`] upserts and removes a service port with all its backends in one
//! step. Writes are ordered so that a packet never sees a half-written
//! service: backends first, then the selection table, then the frontend;
//! removal runs in reverse. A change costs only the writes it needs: an
//! unchanged service costs none, and with an unchanged table size only
//! the slots that changed are rewritten in place.
//!
//! State is rebuilt from the maps on [`Lb::open`], so a restarted agent
//! adopts what the previous one programmed.

mod backends;
pub mod dump;
mod growth;
mod ids;
pub mod slab;
mod svc_addrs;

pub use growth::Grown;
pub(crate) use svc_addrs::name_ipv6_frontends;

/// The desired-state types `Lb` consumes.
pub use weir_desired::spec;

use std::collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet};

use aya::maps::{lpm_trie::{Key as LpmKey, LpmTrie}, HashMap, MapData};
use weir_common::{
    addr::Addr,
    lb::{
        svc_kind, AffinityKey, AffinityValue, Backend, FrontendKey, Service, SourceRangeKey, BACKEND_F_TERMINATING, BACKEND_F_UNREADY, BACKEND_F_UNSERVING,
        KIND_CLUSTER_IP, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_LOCAL_ONLY, SVC_F_MASQ_LOCAL, SVC_F_MASQ_REMOTE, SVC_F_RANDOM, SVC_F_SPLIT,
        SVC_F_SOURCE_RANGES, SVC_F_TERMINATING_FALLBACK, SVC_F_VIP_MARKER, SVC_KIND_SHIFT,
    },
    maps::{AFFINITY, BACKENDS, BACKENDS_MAX_ENTRIES, FRONTENDS, FRONTENDS_MAX_ENTRIES, LB_TABLE, SOURCE_RANGES, SOURCE_RANGES_MAX_ENTRIES, SVC_ADDRS, SVC_TIMES},
};
use weir_logic::maglev;

use crate::{ct::Conntrack, error::update_error, mmap::MmapU32Array, pinned, pins::PinLayout, DatapathError};
use self::{
    ids::IdMarks,
    slab::Slab,
    spec::{eligible, Frontend, Protocol, Scope, Selection, ServiceSpec},
};

/// A backend's identity: address, port (network order), protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Ident {
    addr: Addr,
    port: u16,
    proto: u8,
}

/// A backend as the maps hold it: each frontend (service id) has its own
/// backend ids, even for an endpoint another frontend lists too. So a
/// backend a frontend drops is deleted, and the kernel stops following its
/// flows and affinity entries at once (it checks that the id exists, with
/// this address): nothing has to scan conntrack or affinity for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Owned {
    /// The frontend's service id; 0 for a backend adopted from the maps
    /// that no selection table lists (an orphan).
    owner: u32,
    ident: Ident,
}

impl Ident {
    fn of(b: &Backend) -> Self {
        Ident { addr: b.addr, port: b.port, proto: b.proto }
    }

    fn bytes(&self) -> [u8; 19] {
        let mut b = [0u8; 19];
        b[..16].copy_from_slice(&self.addr.bytes);
        b[16..18].copy_from_slice(&self.port.to_ne_bytes());
        b[18] = self.proto;
        b
    }
}

struct SvcState {
    service: Service,
    /// Backend ids of every endpoint of the service (any condition).
    members: BTreeSet<u32>,
    /// Backend ids eligible for new connections: what the table holds.
    /// (The table itself is read from the mapped map, not copied here.)
    eligible: Vec<u32>,
    /// The service's `WEIR_SOURCE_RANGES` keys.
    ranges: BTreeSet<RangeKey>,
}

/// A `WEIR_SOURCE_RANGES` key: (prefix length, address bytes); the
/// service id is the owner's.
type RangeKey = (u32, [u8; 16]);

fn range_key(p: &weir_desired::policy::Prefix) -> RangeKey {
    let k = crate::lpm::key(p);
    (32 + k.prefix_len(), k.data().bytes)
}

fn lpm_range(svc_id: u32, r: &RangeKey) -> LpmKey<SourceRangeKey> {
    LpmKey::new(r.0, SourceRangeKey { svc_id, addr: Addr { bytes: r.1 } })
}

struct BackendState {
    value: Backend,
    /// Services that list this backend.
    refs: u32,
}

/// What one upsert or removal wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub map_writes: usize,
    pub ct_purged: usize,
    /// Backends that a service no longer lists (its sockets' connected
    /// UDP peers may now be stale).
    pub members_dropped: usize,
}

/// The service programmer. One per agent.
pub struct Lb {
    frontends: HashMap<MapData, FrontendKey, Service>,
    backends_map: HashMap<MapData, u32, Backend>,
    table_map: MmapU32Array,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, u32>,
    /// Service id → when it was last programmed (unix seconds).
    times: HashMap<MapData, u32, u64>,
    /// Service id → its IPv6 frontend (see [`svc_addrs`]).
    svc_addrs: HashMap<MapData, u32, FrontendKey>,
    /// Where the id counters may resume (see [`ids`]).
    marks: IdMarks,
    ct: Conntrack,
    services: BTreeMap<FrontendKey, SvcState>,
    backends: StdHashMap<Owned, (u32, BackendState)>,
    ids: StdHashMap<u32, Owned>,
    /// Backends found in the maps at [`Lb::open`] that no selection table
    /// lists (a service's non-ready endpoints, or those of a service
    /// deleted while no agent ran): the first frontend that lists the
    /// endpoint again takes the id over, so established flows to a
    /// terminating endpoint keep their backend across a restart; the rest
    /// go with [`Lb::prune_unreferenced`].
    orphans: StdHashMap<Ident, Vec<(u32, Backend)>>,
    vips: BTreeMap<Addr, u32>,
    slab: Slab,
    next_svc_id: u32,
    next_backend_id: u32,
    /// Maglev tables built ahead for frontends not programmed yet (see
    /// [`Lb::prebuild`]), by the eligible backends' identities and the
    /// table size.
    prebuilt: StdHashMap<PrebuildJob, Vec<u32>>,
    /// Upserts that took a table from `prebuilt` since it was cleared.
    prebuilt_taken: usize,
    layout: PinLayout,
    /// Whether and how far the selection table may grow.
    growth: Option<growth::Growth>,
}

/// The identities (sorted, distinct) of a spec's eligible endpoints.
fn eligible_idents(spec: &ServiceSpec) -> Vec<Ident> {
    let proto = spec.frontend.protocol.number();
    let (elig, _) = eligible(&spec.endpoints);
    let mut idents: Vec<Ident> = elig.iter().map(|e| Ident { addr: e.addr.into(), port: e.port.to_be(), proto }).collect();
    idents.sort();
    idents.dedup();
    idents
}

/// Fewer new tables than this are built in place, one by one.
const PREBUILD_MIN: usize = 64;

/// A Maglev table to build ahead: the eligible backends' identities
/// (sorted) and the table size.
pub type PrebuildJob = (Vec<[u8; 19]>, u32);

/// The threads [`build_tables`] may use: every core, up to 8.
pub fn build_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get).min(8)
}

/// Builds the tables of `jobs` on up to `threads` threads: a pure
/// function of the jobs, so it may run beside the upserts of another
/// window. Fewer than [`PREBUILD_MIN`] jobs build nothing (each is built
/// in place, as it is needed). A thread that failed leaves its share to
/// be built in place too.
pub fn build_tables(jobs: Vec<PrebuildJob>, threads: usize) -> Vec<(PrebuildJob, Vec<u32>)> {
    if jobs.len() < PREBUILD_MIN {
        return Vec::new();
    }
    let build = |(ids, m): &PrebuildJob| {
        let refs: Vec<&[u8]> = ids.iter().map(|b| b.as_slice()).collect();
        maglev::build_stable(&refs, *m, None)
    };
    let chunk = jobs.len().div_ceil(threads.max(1));
    let built: Vec<Option<Vec<Vec<u32>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.chunks(chunk).map(|c| scope.spawn(move || c.iter().map(build).collect::<Vec<_>>())).collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let mut out = Vec::with_capacity(jobs.len());
    for (jobs, tables) in jobs.chunks(chunk).zip(built) {
        for (job, table) in jobs.iter().zip(tables.into_iter().flatten()) {
            out.push((job.clone(), table));
        }
    }
    out
}

/// Slots of the selection table mapped at once in bulk mode ([`Lb::bulk`]):
/// 8 MiB, about a thousand services of ten endpoints.
const BULK_MAP_SLOTS: u32 = 1 << 20;

fn frontend_key(f: &Frontend) -> FrontendKey {
    FrontendKey { addr: f.addr.into(), port: f.port.to_be(), proto: f.protocol.number(), scope: f.scope.number() }
}

fn marker_key(addr: Addr) -> FrontendKey {
    FrontendKey { addr, port: 0, proto: 0, scope: SCOPE_INTERNAL }
}

/// The frontend a key stands for (for messages and dumps).
pub fn frontend_of(k: &FrontendKey) -> Option<Frontend> {
    Some(Frontend {
        addr: k.addr.into(),
        port: u16::from_be(k.port),
        protocol: Protocol::from_number(k.proto)?,
        scope: Scope::from_number(k.scope)?,
    })
}

/// Only ClusterIPs mark their address as a service IP: traffic to a
/// ClusterIP on a port it does not serve is rejected (nftables mode),
/// while a node address, LB IP or externalIP on another port is left alone.
fn marks_vip(flags: u32) -> bool {
    svc_kind(flags) == KIND_CLUSTER_IP
}

/// What a failed upsert gives back.
#[derive(Default)]
struct Undo {
    created_backends: Vec<u32>,
    /// Table slots allocated by this upsert.
    slots: Option<(u32, u32)>,
    /// Slots overwritten in place, with their previous backend.
    table_restore: Vec<(u32, u32)>,
    ranges: Vec<(u32, RangeKey)>,
    vip: Option<Addr>,
    /// The service id this upsert named in `WEIR_SVC_ADDRS`.
    named: Option<u32>,
}

impl Lb {
    /// Rebuilds the services' mirror in bulk once the initial sync is in:
    /// a B-tree filled by ascending inserts keeps its nodes half empty.
    pub fn pack(&mut self) {
        self.services = std::mem::take(&mut self.services).into_iter().collect();
        self.vips = std::mem::take(&mut self.vips).into_iter().collect();
    }

    /// Opens the pinned LB maps and adopts the services already programmed.
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        let frontends: HashMap<MapData, FrontendKey, Service> = pinned::hash(layout, FRONTENDS)?;
        let backends_map: HashMap<MapData, u32, Backend> = pinned::hash(layout, BACKENDS)?;
        let table_map = MmapU32Array::open(layout, LB_TABLE)?;
        let affinity = pinned::hash(layout, AFFINITY)?;
        let source_ranges: LpmTrie<MapData, SourceRangeKey, u32> = pinned::typed(layout, SOURCE_RANGES)?;
        let mut ranges_by_id: StdHashMap<u32, BTreeSet<RangeKey>> = StdHashMap::new();
        for k in source_ranges.keys().filter_map(Result::ok) {
            ranges_by_id.entry(k.data().svc_id).or_default().insert((k.prefix_len(), k.data().addr.bytes));
        }
        let times = pinned::hash(layout, SVC_TIMES)?;
        let svc_addrs = pinned::hash(layout, SVC_ADDRS)?;
        let marks = IdMarks::open(layout)?;
        let ct = Conntrack::open(layout)?;

        let mut backends = StdHashMap::new();
        let mut ids: StdHashMap<u32, Owned> = StdHashMap::new();
        let mut next_backend_id = marks.marks().next_backend_id.max(1);
        let values: StdHashMap<u32, Backend> = backends_map.iter().filter_map(Result::ok).collect();
        for id in values.keys() {
            next_backend_id = next_backend_id.max(id.wrapping_add(1));
        }
        let mut services = BTreeMap::new();
        let mut vips = BTreeMap::new();
        let mut used = Vec::new();
        let mut next_svc_id = marks.marks().next_svc_id.max(1);
        for (k, svc) in frontends.iter().filter_map(Result::ok) {
            if svc.flags & SVC_F_VIP_MARKER != 0 {
                continue;
            }
            next_svc_id = next_svc_id.max(svc.id.wrapping_add(1));
            used.push((svc.table_base, svc.table_len));
            let w = table_map.window(svc.table_base, svc.table_len)?;
            let members: BTreeSet<u32> = (0..svc.table_len)
                .filter_map(|slot| w.get(svc.table_base + slot))
                .filter(|id| values.contains_key(id))
                .collect();
            let eligible: Vec<u32> = members.iter().copied().collect();
            for id in &members {
                // The first table that lists an id owns it (agents before
                // per-frontend backends shared one id between frontends;
                // the others get their own on their next upsert).
                let owned = *ids.entry(*id).or_insert_with(|| Owned { owner: svc.id, ident: Ident::of(&values[id]) });
                backends.entry(owned).or_insert((*id, BackendState { value: values[id], refs: 0 })).1.refs += 1;
            }
            if marks_vip(svc.flags) {
                *vips.entry(k.addr).or_insert(0) += 1;
            }
            let ranges = ranges_by_id.remove(&svc.id).unwrap_or_default();
            services.insert(k, SvcState { service: svc, members, eligible, ranges });
        }
        let mut orphans: StdHashMap<Ident, Vec<(u32, Backend)>> = StdHashMap::new();
        for (id, b) in &values {
            if !ids.contains_key(id) {
                let ident = Ident::of(b);
                ids.insert(*id, Owned { owner: 0, ident });
                orphans.entry(ident).or_default().push((*id, *b));
            }
        }
        let mut marks = marks;
        marks.cover(next_svc_id, next_backend_id)?;
        let slab = Slab::new(table_map.len(), &used);
        let affinity = backends::sweep_affinity(affinity, &values);
        let mut lb = Self {
            frontends,
            backends_map,
            table_map,
            affinity,
            source_ranges,
            times,
            svc_addrs,
            marks,
            ct,
            services,
            backends,
            ids,
            orphans,
            vips,
            slab,
            next_svc_id,
            next_backend_id,
            prebuilt: StdHashMap::new(),
            prebuilt_taken: 0,
            layout: layout.clone(),
            growth: None,
        };
        // Names the IPv6 frontends an agent before `WEIR_SVC_ADDRS` programmed.
        lb.repair_names()?;
        Ok(lb)
    }

    /// Builds, on every core, the Maglev tables that upserting `specs`
    /// will need for frontends not programmed yet (a cold sync). Such a
    /// table has no previous one to stay close to, so it is a pure
    /// function of the eligible backends and the table size, and
    /// [`Lb::upsert`] takes it from here instead of building it. On one
    /// core the fill was 2.2 s of a 100,000 services × 10 endpoints sync.
    /// [`Lb::clear_prebuilt`] drops what no upsert took; callers prebuild
    /// a window of a large batch at a time, so the tables held at once
    /// stay small. The same in steps, to build one window's tables while
    /// another's are programmed: [`Lb::prebuild_jobs`], [`build_tables`]
    /// (on any thread), [`Lb::take_prebuilt`].
    pub fn prebuild<'a>(&mut self, specs: impl IntoIterator<Item = &'a ServiceSpec>) {
        let jobs = self.prebuild_jobs(specs);
        self.take_prebuilt(build_tables(jobs, build_threads()));
    }

    /// The tables upserting `specs` will need that [`Lb::prebuild`] can
    /// build ahead: those of frontends not programmed yet, each once.
    pub fn prebuild_jobs<'a>(&self, specs: impl IntoIterator<Item = &'a ServiceSpec>) -> Vec<PrebuildJob> {
        specs
            .into_iter()
            .filter(|s| s.selection != Selection::Random && !self.services.contains_key(&frontend_key(&s.frontend)))
            .filter_map(|s| {
                let idents = eligible_idents(s);
                let m = maglev::resize(0, idents.len() as u32);
                (!idents.is_empty()).then(|| (idents.iter().map(Ident::bytes).collect(), m))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Keeps tables [`build_tables`] built for the upserts that follow.
    pub fn take_prebuilt(&mut self, built: Vec<(PrebuildJob, Vec<u32>)>) {
        self.prebuilt.extend(built);
    }

    /// Bulk mode for a batch of upserts (a cold sync): the selection
    /// table is mapped [`BULK_MAP_SLOTS`] slots at a time instead of once
    /// per service (`MmapU32Array::map_ahead`). Off again when the batch
    /// ends, so the agent keeps no mapping of the table between batches.
    pub fn bulk(&self, on: bool) {
        self.table_map.map_ahead(if on { BULK_MAP_SLOTS } else { 0 });
    }

    /// Drops the tables [`Lb::prebuild`] built that no upsert took.
    pub fn clear_prebuilt(&mut self) {
        self.prebuilt = StdHashMap::new();
        self.prebuilt_taken = 0;
    }

    /// How many tables [`Lb::prebuild`] holds, and how many upserts took
    /// one since the last [`Lb::clear_prebuilt`].
    pub fn prebuilt_counts(&self) -> (usize, usize) {
        (self.prebuilt.len(), self.prebuilt_taken)
    }

    /// The frontends programmed now.
    pub fn frontends(&self) -> Vec<Frontend> {
        self.services.keys().filter_map(frontend_of).collect()
    }

    /// Slots in use and capacity of WEIR_LB_TABLE.
    /// Whether the frontend `addr:port/proto` (its internal entry, the one
    /// the socket programs use; ports in network order) lists the backend
    /// `backend:backend_port` among its endpoints, in any condition.
    pub fn lists(&self, addr: Addr, port: u16, proto: u8, backend: Addr, backend_port: u16) -> bool {
        let key = FrontendKey { addr, port, proto, scope: SCOPE_INTERNAL };
        let Some(s) = self.services.get(&key) else { return false };
        s.members.iter().any(|id| self.ids.get(id).is_some_and(|o| o.ident.addr == backend && o.ident.port == backend_port))
    }

    pub fn table_usage(&self) -> (u32, u32) {
        (self.slab.used(), self.slab.capacity())
    }

    /// Conntrack access (GC, flush).
    pub fn conntrack(&mut self) -> &mut Conntrack {
        &mut self.ct
    }

    /// Creates or updates one service port with all its endpoints. A
    /// failure leaves the maps and this programmer as they were: the
    /// backends it created, the table slots it took (or overwrote in
    /// place), the source ranges it added and the VIP marker it set are
    /// given back. A table that does not fit makes the selection table
    /// grow, when [`Lb::grow_with`] allows it, and the upsert is tried
    /// again over the larger table.
    pub fn upsert(&mut self, spec: &ServiceSpec) -> Result<WriteStats, DatapathError> {
        match self.upsert_once(spec) {
            Err(full @ DatapathError::LbTableFull { .. }) => {
                let DatapathError::LbTableFull { needed, .. } = full else { return Err(full) };
                match self.grow_for(needed)? {
                    Some(_) => self.upsert_once(spec),
                    None => Err(full),
                }
            }
            r => r,
        }
    }

    fn upsert_once(&mut self, spec: &ServiceSpec) -> Result<WriteStats, DatapathError> {
        let mut undo = Undo::default();
        let r = self.upsert_steps(spec, &mut undo);
        if r.is_err() {
            self.roll_back(undo);
        }
        r
    }

    fn roll_back(&mut self, undo: Undo) {
        if !undo.table_restore.is_empty() {
            if let Some(first) = undo.table_restore.iter().map(|(s, _)| *s).min() {
                let last = undo.table_restore.iter().map(|(s, _)| *s).max().unwrap_or(first);
                if let Ok(w) = self.table_map.window(first, last - first + 1) {
                    for (slot, id) in &undo.table_restore {
                        w.set(*slot, *id);
                    }
                }
            }
        }
        if let Some((base, len)) = undo.slots {
            self.slab.give_back(base, len);
        }
        for (id, r) in &undo.ranges {
            let _ = self.source_ranges.remove(&lpm_range(*id, r));
        }
        if let Some(addr) = undo.vip {
            let _ = self.release_vip(addr, &mut WriteStats::default());
        }
        if let Some(id) = undo.named {
            self.unname_frontend(id);
        }
        for id in undo.created_backends {
            let Some(ident) = self.ids.get(&id).copied() else { continue };
            if self.backends.get(&ident).is_some_and(|(_, st)| st.refs == 0) {
                self.backends.remove(&ident);
                self.ids.remove(&id);
                let _ = self.backends_map.remove(&id);
            }
        }
    }

    fn upsert_steps(&mut self, spec: &ServiceSpec, undo: &mut Undo) -> Result<WriteStats, DatapathError> {
        let key = frontend_key(&spec.frontend);
        let proto = spec.frontend.protocol.number();
        let mut stats = WriteStats::default();
        // The frontend's service id: its backends are its own.
        let id = match self.services.get(&key) {
            Some(o) => o.service.id,
            None => {
                let id = self.next_svc_id;
                self.marks.svc(id)?;
                self.next_svc_id = self.next_svc_id.wrapping_add(1).max(1);
                id
            }
        };

        // 1. Backends for every endpoint, eligible or not (established flows
        //    to terminating endpoints keep their translation).
        let mut members = BTreeSet::new();
        for ep in &spec.endpoints {
            let owned = Owned { owner: id, ident: Ident { addr: ep.addr.into(), port: ep.port.to_be(), proto } };
            let flags = backend_flags(ep);
            let (id, created) = self.ensure_backend(owned, flags, &mut stats)?;
            if created {
                undo.created_backends.push(id);
            }
            members.insert(id);
        }
        let (_, fallback) = eligible(&spec.endpoints);
        let elig_idents = eligible_idents(spec);
        let elig_ids: Vec<u32> = elig_idents.iter().filter_map(|i| self.backends.get(&Owned { owner: id, ident: *i }).map(|(id, _)| *id)).collect();

        // 2. The selection table.
        let old = self.services.get(&key);
        let random = spec.selection == Selection::Random;
        let old_len = old.map_or(0, |o| o.service.table_len);
        let old_random = old.is_some_and(|o| o.service.flags & SVC_F_RANDOM != 0);
        let n = elig_ids.len() as u32;
        let table: Vec<u32> = if n == 0 {
            Vec::new()
        } else if random {
            elig_ids.clone()
        } else {
            let m = maglev::resize(if old_random { 0 } else { old_len }, n);
            let idents: Vec<[u8; 19]> = elig_idents.iter().map(Ident::bytes).collect();
            let refs: Vec<&[u8]> = idents.iter().map(|b| b.as_slice()).collect();
            let index: StdHashMap<u32, u32> = elig_ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();
            let prev: Option<Vec<Option<u32>>> = match old.filter(|o| o.service.table_len == m && !old_random) {
                Some(o) => {
                    let w = self.table_map.window(o.service.table_base, m)?;
                    Some((0..m).map(|i| w.get(o.service.table_base + i).and_then(|id| index.get(&id).copied())).collect())
                }
                None => None,
            };
            // Services with the same backends share one table built ahead.
            let prebuilt = if prev.is_none() { self.prebuilt.get(&(idents.clone(), m)).cloned() } else { None };
            self.prebuilt_taken += usize::from(prebuilt.is_some());
            prebuilt
                .unwrap_or_else(|| maglev::build_stable(&refs, m, prev.as_deref()))
                .into_iter()
                .map(|i| elig_ids[i as usize])
                .collect()
        };
        let len = table.len() as u32;
        let (base, moved) = match old {
            Some(o) if o.service.table_len == len && len > 0 => (o.service.table_base, false),
            _ if len == 0 => (0, old_len > 0),
            _ => {
                let base = self.slab.alloc(len).ok_or_else(|| DatapathError::LbTableFull {
                    frontend: spec.frontend.to_string(),
                    needed: len,
                    used: self.slab.used(),
                    capacity: self.slab.capacity(),
                })?;
                undo.slots = Some((base, len));
                (base, true)
            }
        };
        let in_place = old.is_some() && !moved;
        if len > 0 {
            let w = self.table_map.window(base, len)?;
            for (slot, id) in table.iter().enumerate() {
                let slot = base + slot as u32;
                let was = w.get(slot);
                if in_place && was == Some(*id) {
                    continue;
                }
                if in_place {
                    undo.table_restore.push((slot, was.unwrap_or(0)));
                }
                w.set(slot, *id);
                stats.map_writes += 1;
            }
        }

        // 3. Source ranges the service gains (before the frontend names
        //    them), then the frontend.
        let ranges: BTreeSet<RangeKey> = spec.source_ranges.iter().map(range_key).collect();
        let old_ranges = old.map(|o| o.ranges.clone()).unwrap_or_default();
        for r in ranges.difference(&old_ranges) {
            self.source_ranges.insert(&lpm_range(id, r), 1, 0).map_err(|source| {
                update_error(SOURCE_RANGES, SOURCE_RANGES_MAX_ENTRIES, || format!("a source range of {}", spec.frontend), source)
            })?;
            undo.ranges.push((id, *r));
            stats.map_writes += 1;
        }
        let mut flags = 0;
        if random {
            flags |= SVC_F_RANDOM;
        }
        if fallback {
            flags |= SVC_F_TERMINATING_FALLBACK;
        }
        if spec.local_only {
            flags |= SVC_F_LOCAL_ONLY;
        }
        if spec.masquerade.from_pods {
            flags |= SVC_F_MASQ_LOCAL;
        }
        if spec.masquerade.from_outside {
            flags |= SVC_F_MASQ_REMOTE;
        }
        if spec.split {
            flags |= SVC_F_SPLIT;
        }
        if !ranges.is_empty() {
            flags |= SVC_F_SOURCE_RANGES;
        }
        flags |= spec.kind.number() << SVC_KIND_SHIFT;
        let affinity_timeout_s = spec.affinity_timeout_s.unwrap_or(0);
        if affinity_timeout_s > 0 {
            flags |= SVC_F_AFFINITY;
        }
        let service = Service { id, flags, backend_count: n, table_base: base, table_len: len, affinity_timeout_s };
        let was_new = old.is_none();
        // The address is marked a service IP before its first frontend
        // exists, so nothing after the frontend's write can fail.
        if was_new && marks_vip(flags) {
            self.add_vip(key.addr, &mut stats)?;
            undo.vip = Some(key.addr);
        }
        // Its id names it before the frontend exists (an IPv6 frontend).
        if was_new && self.name_frontend(id, &key)? {
            undo.named = Some(id);
            stats.map_writes += 1;
        }
        let old = self.services.get(&key);
        if old.map(|o| o.service) != Some(service) {
            self.frontends.insert(key, service, 0).map_err(|source| {
                update_error(FRONTENDS, FRONTENDS_MAX_ENTRIES, || format!("service {}", spec.frontend), source)
            })?;
            stats.map_writes += 1;
        }
        let old_range = old.filter(|_| moved).map(|o| (o.service.table_base, o.service.table_len));
        let old_members = old.map(|o| o.members.clone()).unwrap_or_default();
        if let Some((b, l)) = old_range {
            self.slab.free(b, l);
        }
        // Ranges the service lost, now that the frontend no longer needs them.
        for r in old_ranges.difference(&ranges) {
            let _ = self.source_ranges.remove(&lpm_range(id, r));
            stats.map_writes += 1;
        }
        self.services.insert(key, SvcState { service, members: members.clone(), eligible: elig_ids, ranges });

        // 4. Backends this service no longer lists.
        for added in members.difference(&old_members) {
            self.add_ref(*added);
        }
        let dropped: HashSet<u32> = old_members.difference(&members).copied().collect();
        stats.members_dropped += dropped.len();
        self.drop_members(id, dropped, &mut stats)?;
        if stats.map_writes > 0 {
            self.stamp(id);
        }
        Ok(stats)
    }

    /// Records when service `id` was last programmed (for `weir diff`);
    /// not counted as a map write, and best effort: the timestamp is
    /// information, never state the datapath depends on.
    fn stamp(&mut self, id: u32) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Err(e) = self.times.insert(id, now, 0) {
            tracing::debug!(service_id = id, error = %e, "could not record the programming time");
        }
    }

    /// Removes one service port. Frontend first, then its table and backends.
    pub fn remove(&mut self, frontend: &Frontend) -> Result<WriteStats, DatapathError> {
        let key = frontend_key(frontend);
        let mut stats = WriteStats::default();
        let Some(old) = self.services.remove(&key) else { return Ok(stats) };
        match crate::error::deleted(self.frontends.remove(&key)) {
            Ok(()) => {}
            Err(source) => return Err(DatapathError::Map { name: FRONTENDS, source }),
        }
        let _ = self.times.remove(&old.service.id);
        if svc_addrs::named(&key) {
            self.unname_frontend(old.service.id);
            stats.map_writes += 1;
        }
        stats.map_writes += 1;
        self.slab.free(old.service.table_base, old.service.table_len);
        if marks_vip(old.service.flags) {
            self.release_vip(key.addr, &mut stats)?;
        }
        for r in &old.ranges {
            let _ = self.source_ranges.remove(&lpm_range(old.service.id, r));
            stats.map_writes += 1;
        }
        stats.members_dropped += old.members.len();
        self.drop_members(old.service.id, old.members.iter().copied().collect(), &mut stats)?;
        Ok(stats)
    }

    /// Makes the programmed services exactly `specs`: upserts each, and
    /// removes every other service.
    pub fn sync(&mut self, specs: &[ServiceSpec]) -> Result<WriteStats, DatapathError> {
        let mut total = WriteStats::default();
        let wanted: BTreeSet<FrontendKey> = specs.iter().map(|s| frontend_key(&s.frontend)).collect();
        for spec in specs {
            let s = self.upsert(spec)?;
            total.map_writes += s.map_writes;
            total.ct_purged += s.ct_purged;
            total.members_dropped += s.members_dropped;
        }
        let stale: Vec<Frontend> = self.services.keys().filter(|k| !wanted.contains(k)).filter_map(frontend_of).collect();
        for f in stale {
            let s = self.remove(&f)?;
            total.map_writes += s.map_writes;
            total.ct_purged += s.ct_purged;
            total.members_dropped += s.members_dropped;
        }
        Ok(total)
    }

    /// Compares the maps with what this programmer wrote and repairs any
    /// drift: entries deleted or changed behind its back, and stray entries.
    /// Backends first, then table slots, then frontends. Returns the number
    /// of entries repaired.
    pub fn repair(&mut self) -> Result<usize, DatapathError> {
        let mut repairs = 0;
        let actual: StdHashMap<u32, Backend> = self.backends_map.iter().filter_map(Result::ok).collect();
        let wanted: Vec<(u32, Backend)> = self.backends.values().map(|(id, st)| (*id, st.value)).collect();
        for (id, value) in &wanted {
            if actual.get(id) != Some(value) {
                self.backends_map.insert(*id, *value, 0).map_err(|source| {
                    update_error(BACKENDS, BACKENDS_MAX_ENTRIES, || format!("backend {id}"), source)
                })?;
                repairs += 1;
            }
        }
        for id in actual.keys().filter(|id| !self.ids.contains_key(id)) {
            let _ = self.backends_map.remove(id);
            repairs += 1;
        }
        // A slot naming anything but an eligible backend is drift: rewrite it
        // with an eligible backend, spreading in slot order.
        for svc in self.services.values() {
            if svc.eligible.is_empty() {
                continue;
            }
            let w = self.table_map.window(svc.service.table_base, svc.service.table_len)?;
            for i in 0..svc.service.table_len {
                let slot = svc.service.table_base + i;
                let ok = w.get(slot).is_some_and(|id| svc.eligible.contains(&id));
                if !ok {
                    w.set(slot, svc.eligible[i as usize % svc.eligible.len()]);
                    repairs += 1;
                }
            }
        }
        // Names before the frontends they name.
        repairs += self.repair_names()?;
        let actual: StdHashMap<FrontendKey, Service> = self.frontends.iter().filter_map(Result::ok).collect();
        let mut wanted: Vec<(FrontendKey, Service)> = self.services.iter().map(|(k, s)| (*k, s.service)).collect();
        wanted.extend(self.vips.keys().map(|a| (marker_key(*a), Service { flags: SVC_F_VIP_MARKER, ..Service::default() })));
        for (k, v) in &wanted {
            if actual.get(k) != Some(v) {
                self.frontends.insert(*k, *v, 0).map_err(|source| {
                    update_error(FRONTENDS, FRONTENDS_MAX_ENTRIES, || "a repaired frontend".to_string(), source)
                })?;
                repairs += 1;
            }
        }
        let wanted_keys: BTreeSet<FrontendKey> = wanted.iter().map(|(k, _)| *k).collect();
        for k in actual.keys().filter(|k| !wanted_keys.contains(k)) {
            let _ = self.frontends.remove(k);
            repairs += 1;
        }
        Ok(repairs)
    }

    /// Entries this programmer holds: (frontends incl. VIP markers, backends, table slots).
    pub fn entry_counts(&self) -> (usize, usize, u32) {
        (self.services.len() + self.vips.len(), self.ids.len(), self.slab.used())
    }

    fn add_vip(&mut self, addr: Addr, stats: &mut WriteStats) -> Result<(), DatapathError> {
        if let Some(count) = self.vips.get_mut(&addr) {
            *count += 1;
            return Ok(());
        }
        let marker = Service { flags: SVC_F_VIP_MARKER, ..Service::default() };
        self.frontends.insert(marker_key(addr), marker, 0).map_err(|source| {
            update_error(FRONTENDS, FRONTENDS_MAX_ENTRIES, || format!("service IP {addr}"), source)
        })?;
        self.vips.insert(addr, 1);
        stats.map_writes += 1;
        Ok(())
    }

    fn release_vip(&mut self, addr: Addr, stats: &mut WriteStats) -> Result<(), DatapathError> {
        let Some(count) = self.vips.get_mut(&addr) else { return Ok(()) };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.vips.remove(&addr);
            match crate::error::deleted(self.frontends.remove(&marker_key(addr))) {
                Ok(()) => {}
                Err(source) => return Err(DatapathError::Map { name: FRONTENDS, source }),
            }
            stats.map_writes += 1;
        }
        Ok(())
    }

}

/// The endpoint's conditions as backend flags, for the kernel's
/// eligibility rule (`weir_logic::select::eligible`), which ClientIP
/// affinity obeys too.
fn backend_flags(ep: &weir_desired::Endpoint) -> u8 {
    let mut f = 0;
    if ep.terminating {
        f |= BACKEND_F_TERMINATING;
    }
    if !ep.ready {
        f |= BACKEND_F_UNREADY;
    }
    if !ep.serving {
        f |= BACKEND_F_UNSERVING;
    }
    f
}
