//! Conntrack housekeeping from userspace: collecting stale entries,
//! purging the flows of removed backends, rewriting the per-endpoint
//! counts the kernel's quota reads, and the accounting that makes a full
//! table visible. The liveness rule is `weir_logic::ct`, the one the
//! kernel uses. The masquerade table (`WEIR_SNAT`) has the same types and
//! is collected by the same code ([`Table::SNAT`]).
//!
//! Conntrack is a map per address family (`WEIR_CT4` for IPv4, `WEIR_CT`
//! for IPv6, whose values keep no address, and `WEIR_CT6_MASQ` for the
//! IPv6 entries that must: see `weir_common::ct`, `weir_logic::ct6`);
//! [`CtMaps`] reads and writes them all by the wide key and entry, so
//! everything above it sees one table.
//!
//! Deleting never races with the kernel: an entry is taken out with
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which returns what was really there,
//! and put back (`BPF_NOEXIST`) if the kernel revived or replaced it after
//! the scan saw it dead.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues};
use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    ct::{CtEntry, CtEntry4, CtKey, CtKey4, CtMasq6, CtMasqKey6, CtStat, CtTail, CT_SNAT_IN, CT_SNAT_OUT, CT_SVC_FWD, CT_SVC_REV, NS_PER_S, OWNER_COUNTS_FRESH_UNTIL},
    lb::{Backend, FrontendKey},
    maps::{BACKENDS, CONFIG, CT, CT4, CT6_MASQ, CT_OWNERS, CT_STATS, SNAT, SNAT_STATS, SVC_ADDRS},
};
use weir_logic::{
    ct::is_alive,
    ct6::{self, Nat},
};

use crate::{pinned, pins::PinLayout, DatapathError};

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The other direction's key of a service flow entry.
pub fn twin_key(key: &CtKey, e: &CtEntry, cfg: &DatapathConfig) -> Option<CtKey> {
    match key.kind {
        CT_SVC_FWD => {
            let dst = weir_logic::ct::backend_sees(e.flags, cfg, key.saddr);
            Some(CtKey { saddr: e.nat_addr, daddr: dst, sport: e.nat_port, dport: e.orig_port, proto: key.proto, kind: CT_SVC_REV, _pad: 0 })
        }
        CT_SVC_REV => Some(CtKey {
            saddr: e.orig_addr,
            daddr: e.nat_addr,
            sport: e.orig_port,
            dport: e.nat_port,
            proto: key.proto,
            kind: CT_SVC_FWD,
            _pad: 0,
        }),
        CT_SNAT_OUT | CT_SNAT_IN => weir_logic::masq::twin(key, e),
        _ => None,
    }
}

/// Which of the two tables of flows: their maps, its counters and the
/// per-endpoint counts (conntrack only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    /// With `tails`, the map of the IPv6 entries that keep the client's
    /// address (`WEIR_CT6_MASQ`); without, the map of every flow's whole
    /// entry (`WEIR_SNAT`).
    pub map: &'static str,
    /// The map of IPv6 flows without their addresses, if there is one.
    pub tails: Option<&'static str>,
    /// The map of IPv4 flows, if they have their own.
    pub map4: Option<&'static str>,
    pub stats: &'static str,
    pub owners: Option<&'static str>,
}

impl Table {
    pub const CT: Table = Table { map: CT6_MASQ, tails: Some(CT), map4: Some(CT4), stats: CT_STATS, owners: Some(CT_OWNERS) };
    pub const SNAT: Table = Table { map: SNAT, tails: None, map4: None, stats: SNAT_STATS, owners: None };
}

/// The IPv4 map, typed and raw.
type Narrow = (HashMap<MapData, CtKey4, CtEntry4>, MapData);

/// The IPv6 map of `CtTail`s, typed and raw, the map of the entries that
/// keep the client's address, and the maps that name what their entries
/// left out (`weir_logic::ct6`): `None` where an agent from before them
/// left none.
struct Tails {
    map: HashMap<MapData, CtKey, CtTail>,
    raw: MapData,
    masq: Masq6,
    backends: Option<HashMap<MapData, u32, Backend>>,
    svc_addrs: Option<HashMap<MapData, u32, FrontendKey>>,
}

/// `WEIR_CT6_MASQ`, typed and raw, and the node's IPv6 address, which its
/// keys leave out.
struct Masq6 {
    map: HashMap<MapData, CtMasqKey6, CtMasq6>,
    raw: MapData,
    node6: Addr,
}

impl Masq6 {
    /// `k` as this map keys it, if it may be here
    /// (`weir_logic::ct6::may_keep_addrs`).
    fn key(&self, k: &CtKey) -> Option<CtMasqKey6> {
        ct6::may_keep_addrs(k, &self.node6).then(|| k.masq6())
    }
}

impl Tails {
    /// The address `t` (of key `k`) left out: the zero address if the id
    /// it names is gone.
    fn nat(&self, k: &CtKey, t: &CtTail) -> Addr {
        let found = match ct6::nat_of(k.kind, t) {
            Nat::Backend(id) => self.backends.as_ref().and_then(|m| m.get(&id, 0).ok()).map(|b| b.addr),
            Nat::Service(id) => self.svc_addrs.as_ref().and_then(|m| m.get(&id, 0).ok()).map(|f| f.addr),
            Nat::None => None,
        };
        found.unwrap_or(Addr::ZERO)
    }

    fn widen(&self, k: &CtKey, t: &CtTail) -> CtEntry {
        ct6::widen(k, t, self.nat(k, t))
    }

    /// A `WEIR_CT6_MASQ` entry (`k` being its wide key), widened.
    fn widen_masq(&self, k: &CtKey, m: &CtMasq6) -> CtEntry {
        ct6::widen_masq(k, m, self.nat(k, &m.tail))
    }

    /// Every `WEIR_CT6_MASQ` entry of a scan, widened.
    fn widen_masq_all(&self, entries: Vec<(CtMasqKey6, CtMasq6)>) -> impl Iterator<Item = (CtKey, CtEntry)> + '_ {
        entries.into_iter().map(|(mk, m)| {
            let k = mk.widen(self.masq.node6);
            (k, self.widen_masq(&k, &m))
        })
    }

    /// [`Tails::widen`] for a whole scan: each id is looked up once.
    fn widen_all(&self, entries: Vec<(CtKey, CtTail)>) -> impl Iterator<Item = (CtKey, CtEntry)> + '_ {
        let mut seen: StdHashMap<Nat, Addr> = StdHashMap::new();
        entries.into_iter().map(move |(k, t)| {
            let nat = *seen.entry(ct6::nat_of(k.kind, &t)).or_insert_with(|| self.nat(&k, &t));
            (k, ct6::widen(&k, &t, nat))
        })
    }
}

/// A table's maps, read and written by the wide key and entry: an IPv4
/// key goes to the IPv4 map (narrowed) when there is one, an IPv6 entry
/// to the map of tails unless it keeps its addresses.
pub struct CtMaps {
    /// Every flow's whole entry (a table without `tails`).
    wide: Option<(HashMap<MapData, CtKey, CtEntry>, MapData)>,
    tails: Option<Tails>,
    v4: Option<Narrow>,
    capacity: u64,
    capacity_v4: u64,
    /// The whole entries' map's, when IPv6 tails have their own map.
    capacity_aside: u64,
}

impl CtMaps {
    /// Conntrack's two maps.
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Self::open_table(layout, Table::CT)
    }

    pub fn open_table(layout: &PinLayout, t: Table) -> Result<Self, DatapathError> {
        layout.require_existing()?;
        // The IPv6 map first: a map in another layout is named as such
        // before one its layout added is missed.
        let (tails, mut capacity, capacity_aside, wide) = match t.tails {
            Some(name) => {
                let (map, raw, n) = open_map(layout, name)?;
                let (masq, masq_raw, aside) = open_map(layout, t.map)?;
                let masq = Masq6 { map: masq, raw: masq_raw, node6: config_of(layout)?.node_addr6 };
                let backends = pinned::hash(layout, BACKENDS).ok();
                let svc_addrs = layout.map(SVC_ADDRS).exists().then(|| pinned::hash(layout, SVC_ADDRS)).transpose()?;
                (Some(Tails { map, raw, masq, backends, svc_addrs }), n + aside, aside, None)
            }
            None => {
                let (map, raw, n) = open_map(layout, t.map)?;
                (None, n, 0, Some((map, raw)))
            }
        };
        let (v4, capacity_v4) = match t.map4 {
            Some(name) => {
                let (map, raw, n) = open_map(layout, name)?;
                capacity += n;
                (Some((map, raw)), n)
            }
            None => (None, 0),
        };
        Ok(Self { wide, tails, v4, capacity, capacity_v4, capacity_aside })
    }

    fn four(&self, k: &CtKey) -> Option<&Narrow> {
        self.v4.as_ref().filter(|_| k.is_v4())
    }

    pub fn get(&self, k: &CtKey) -> Option<CtEntry> {
        if let Some((m, _)) = self.four(k) {
            return m.get(&k.narrow(), 0).ok().map(|e| e.widen());
        }
        if let Some(t) = &self.tails {
            if let Ok(tail) = t.map.get(k, 0) {
                return Some(t.widen(k, &tail));
            }
            let m = t.masq.map.get(&t.masq.key(k)?, 0).ok()?;
            return Some(t.widen_masq(k, &m));
        }
        self.wide.as_ref()?.0.get(k, 0).ok()
    }

    /// The entry behind `k` as the kernel reads it (`Ct::read`): `None`
    /// also for an entry that names a backend or service id that is gone
    /// (`weir_logic::ct6::names_gone_id`), which the kernel treats as no
    /// flow. [`CtMaps::get`] returns such an entry (the collector deletes it).
    pub fn read(&self, k: &CtKey) -> Option<CtEntry> {
        self.get(k).filter(|e| !ct6::names_gone_id(k, e))
    }

    /// Inserts `k` unless it exists (`BPF_NOEXIST`); whether it did.
    pub fn insert_new(&mut self, k: &CtKey, e: &CtEntry) -> bool {
        const NOEXIST: u64 = 1;
        if let Some((m, _)) = self.v4.as_mut().filter(|_| k.is_v4()) {
            return m.insert(k.narrow(), CtEntry4::narrow(e), NOEXIST).is_ok();
        }
        if let Some(t) = self.tails.as_mut() {
            if !ct6::keeps_addrs(k.kind, e.flags) {
                return t.map.insert(k, CtTail::of(e), NOEXIST).is_ok();
            }
            // Keyed without the node's address: one naming another could
            // never be found.
            let Some(mk) = t.masq.key(k) else { return false };
            return t.masq.map.insert(mk, CtMasq6::of(e), NOEXIST).is_ok();
        }
        self.wide.as_mut().is_some_and(|(m, _)| m.insert(k, e, NOEXIST).is_ok())
    }

    pub fn remove(&mut self, k: &CtKey) -> bool {
        if let Some((m, _)) = self.v4.as_mut().filter(|_| k.is_v4()) {
            return m.remove(&k.narrow()).is_ok();
        }
        if let Some(t) = self.tails.as_mut() {
            if t.map.remove(k).is_ok() {
                return true;
            }
            let Some(mk) = t.masq.key(k) else { return false };
            return t.masq.map.remove(&mk).is_ok();
        }
        self.wide.as_mut().is_some_and(|(m, _)| m.remove(k).is_ok())
    }

    /// Takes `k` out atomically; returns what was there.
    pub fn take(&self, k: &CtKey) -> Option<CtEntry> {
        if let Some((_, raw)) = self.four(k) {
            return lookup_and_delete::<CtKey4, CtEntry4>(raw, &k.narrow()).map(|e| e.widen());
        }
        if let Some(t) = &self.tails {
            if let Some(tail) = lookup_and_delete::<CtKey, CtTail>(&t.raw, k) {
                return Some(t.widen(k, &tail));
            }
            let m = lookup_and_delete::<CtMasqKey6, CtMasq6>(&t.masq.raw, &t.masq.key(k)?)?;
            return Some(t.widen_masq(k, &m));
        }
        lookup_and_delete::<CtKey, CtEntry>(&self.wide.as_ref()?.1, k)
    }

    /// Every entry (key, value), widened, read in batches ([`crate::batch`]).
    pub fn entries(&self) -> Vec<(CtKey, CtEntry)> {
        let mut out: Vec<(CtKey, CtEntry)> = match &self.wide {
            Some((m, raw)) => crate::batch::lookup_all(raw.fd().as_fd()).unwrap_or_else(|| m.iter().filter_map(Result::ok).collect()),
            None => Vec::new(),
        };
        if let Some(t) = &self.tails {
            let tails: Vec<(CtKey, CtTail)> = crate::batch::lookup_all(t.raw.fd().as_fd()).unwrap_or_else(|| t.map.iter().filter_map(Result::ok).collect());
            out.extend(t.widen_all(tails));
            let masq: Vec<(CtMasqKey6, CtMasq6)> = crate::batch::lookup_all(t.masq.raw.fd().as_fd()).unwrap_or_else(|| t.masq.map.iter().filter_map(Result::ok).collect());
            out.extend(t.widen_masq_all(masq));
        }
        if let Some((m, raw)) = &self.v4 {
            let four: Vec<(CtKey4, CtEntry4)> = crate::batch::lookup_all(raw.fd().as_fd()).unwrap_or_else(|| m.iter().filter_map(Result::ok).collect());
            out.extend(four.iter().map(|(k, e)| (k.widen(), e.widen())));
        }
        out
    }

    /// Every entry, read with two syscalls each (kernels without batch
    /// lookups; and the reference the batch read is tested against).
    pub fn entries_one_by_one(&self) -> Vec<(CtKey, CtEntry)> {
        let mut out: Vec<(CtKey, CtEntry)> = self.wide.iter().flat_map(|(m, _)| m.iter().filter_map(Result::ok)).collect();
        if let Some(t) = &self.tails {
            out.extend(t.map.iter().filter_map(Result::ok).map(|(k, tail)| (k, t.widen(&k, &tail))));
            out.extend(t.widen_masq_all(t.masq.map.iter().filter_map(Result::ok).collect()));
        }
        if let Some((m, _)) = &self.v4 {
            out.extend(m.iter().filter_map(Result::ok).map(|(k, e)| (k.widen(), e.widen())));
        }
        out
    }

    /// Entries both maps hold at most.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Entries the IPv4 map holds at most (0 without one).
    pub fn capacity_v4(&self) -> u64 {
        self.capacity_v4
    }

    /// Entries `WEIR_CT6_MASQ` holds at most (0 for a table without it).
    pub fn capacity_aside(&self) -> u64 {
        self.capacity_aside
    }

    /// Whether `k` → `e` is an entry of `WEIR_CT6_MASQ`: the rule every
    /// writer follows (`weir_logic::ct6::keeps_addrs`).
    pub fn is_aside(&self, k: &CtKey, e: &CtEntry) -> bool {
        self.capacity_aside > 0 && !k.is_v4() && ct6::keeps_addrs(k.kind, e.flags)
    }
}

/// A pinned hash, typed and raw, and its capacity.
type Opened<K, V> = (HashMap<MapData, K, V>, MapData, u64);

fn open_map<K: aya::Pod, V: aya::Pod>(layout: &PinLayout, name: &'static str) -> Result<Opened<K, V>, DatapathError> {
    let map = pinned::hash(layout, name)?;
    let raw = MapData::from_pin(layout.map(name)).map_err(|source| DatapathError::Map { name, source })?;
    let capacity = MapInfo::from_pin(layout.map(name)).map_err(|source| DatapathError::Map { name, source })?.max_entries();
    Ok((map, raw, u64::from(capacity)))
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: takes `k` out of `map`, returning
/// what was really there.
fn lookup_and_delete<K: aya::Pod, V: aya::Pod + Default>(map: &MapData, k: &K) -> Option<V> {
    let mut value = V::default();
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = Attr { map_fd: map.fd().as_fd().as_raw_fd() as u32, _pad: 0, key: k as *const K as u64, value: &mut value as *mut V as u64, flags: 0 };
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    // SAFETY: the attribute points at a key and a value buffer of the
    // map's sizes (the callers' types are the map's), both alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_AND_DELETE_ELEM, &attr, std::mem::size_of::<Attr>()) };
    (rc == 0).then_some(value)
}

/// The table's fill level and what happened to it, from the pinned
/// counters (no agent needed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CtAccount {
    pub entries: u64,
    /// Entries whose flow is alive.
    pub live: u64,
    pub capacity: u64,
    /// Of `entries` and `capacity`: the IPv4 table's (`WEIR_CT4`; the
    /// rest are `WEIR_CT`'s). Each table fills on its own.
    pub entries_v4: u64,
    pub capacity_v4: u64,
    /// Of `entries` and `capacity`: `WEIR_CT6_MASQ`'s (the reverse
    /// entries of masqueraded IPv6 flows, which fills on its own too).
    pub entries_masq6: u64,
    pub capacity_masq6: u64,
    pub created: u64,
    pub deleted: u64,
    /// Keys the LRU dropped to make room: `created - deleted - entries`
    /// (live entries, or expired ones the collector had not reached yet).
    pub evicted: u64,
    pub insert_failed: u64,
    pub quota_refused: u64,
    /// New flows admitted past a pod's stale count (no collection for
    /// three periods: the share was not enforced).
    pub quota_lifted: u64,
    pub half_rebuilt: u64,
    pub port_remapped: u64,
    /// How full the pods' shares are ([`ShareUse`]).
    pub share: ShareUse,
}

/// The per-pod conntrack shares (`--ct-max-per-endpoint`): what one pod
/// link may hold, and the link holding the most, by the counts the
/// kernel's quota reads (it adds as it creates; the collector rewrites
/// them from its scans). A pod at its share has its new flows refused
/// (`ct_quota`): this is what shows it coming.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShareUse {
    /// Entries one pod link may hold; 0: no limit.
    pub limit: u64,
    /// The pod link (ifindex) holding the most entries; 0: none holds any.
    pub fullest_link: u32,
    /// How many it holds.
    pub fullest_entries: u64,
}

impl ShareUse {
    /// From the per-link counts and the limit.
    pub fn of(counts: impl IntoIterator<Item = (u32, u64)>, limit: u32) -> Self {
        let (fullest_link, fullest_entries) = counts.into_iter().filter(|(l, _)| *l != 0).max_by_key(|(l, n)| (*n, std::cmp::Reverse(*l))).unwrap_or((0, 0));
        Self { limit: u64::from(limit), fullest_link, fullest_entries }
    }

    /// Read from the pinned maps (`WEIR_CT_OWNERS`, `WEIR_CONFIG`).
    pub fn read(layout: &PinLayout) -> Result<Self, DatapathError> {
        let owners: HashMap<MapData, u32, u64> = pinned::hash(layout, CT_OWNERS)?;
        Ok(Self::of(owners.iter().filter_map(Result::ok), config_of(layout)?.ct_max_per_endpoint))
    }
}

/// The datapath configuration the agent wrote (the defaults before it did).
fn config_of(layout: &PinLayout) -> Result<DatapathConfig, DatapathError> {
    let cfg_map = pinned::array::<DatapathConfig>(layout, CONFIG)?;
    Ok(match cfg_map.get(&0, 0) {
        Ok(c) if c.ct_udp_timeout_s != 0 => c,
        _ => DatapathConfig::DEFAULT,
    })
}

/// What one collection did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcOutcome {
    pub deleted: usize,
    /// Entries found dead by the scan but alive again when taken out
    /// (the kernel revived them): put back.
    pub restored: usize,
    pub account: CtAccount,
}

/// For how many collection periods the per-pod counts a collection
/// writes hold: one late collection (a busy agent, a restart) keeps the
/// quota; no agent at all lifts it.
const COUNTS_HOLD_COLLECTIONS: u64 = 3;

/// The pinned conntrack map and its counters.
pub struct Conntrack {
    maps: CtMaps,
    stats: PerCpuArray<MapData, u64>,
    owners: Option<HashMap<MapData, u32, u64>>,
    /// How long after a collection its counts hold (see
    /// [`Conntrack::set_collection_interval`]).
    counts_hold_ns: u64,
    capacity: u64,
    cfg: DatapathConfig,
    layout: PinLayout,
}

impl Conntrack {
    /// The conntrack table.
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Self::open_table(layout, Table::CT)
    }

    pub fn open_table(layout: &PinLayout, t: Table) -> Result<Self, DatapathError> {
        let maps = CtMaps::open_table(layout, t)?;
        let capacity = maps.capacity();
        let stats = pinned::typed::<PerCpuArray<MapData, u64>>(layout, t.stats)?;
        let owners = match t.owners {
            Some(name) => Some(pinned::hash(layout, name)?),
            None => None,
        };
        let cfg = config_of(layout)?;
        let counts_hold_ns = COUNTS_HOLD_COLLECTIONS * 10 * NS_PER_S;
        Ok(Self { maps, stats, owners, counts_hold_ns, capacity, cfg, layout: layout.clone() })
    }

    /// How often the caller collects: the per-pod counts a collection
    /// writes are fresh for three such periods, after which the kernel no
    /// longer refuses a pod's new flows on them
    /// ([`weir_common::ct::OWNER_COUNTS_FRESH_UNTIL`]). Ten seconds until
    /// set.
    pub fn set_collection_interval(&mut self, every: std::time::Duration) {
        self.counts_hold_ns = COUNTS_HOLD_COLLECTIONS.saturating_mul(u64::try_from(every.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Every entry (key, value), read in batches ([`crate::batch`]).
    pub fn entries(&self) -> Vec<(CtKey, CtEntry)> {
        self.maps.entries()
    }

    /// Every entry, read with two syscalls each (kernels without batch
    /// lookups; and the reference the batch read is tested against).
    pub fn entries_one_by_one(&self) -> Vec<(CtKey, CtEntry)> {
        self.maps.entries_one_by_one()
    }

    fn stat(&self, s: CtStat) -> u64 {
        self.stats.get(&(s as u32), 0).map_or(0, |v| v.iter().sum())
    }

    /// Adds `n` to the agent's own delete counter (CPU 0's slot; the
    /// kernel never writes this index).
    fn count_deleted(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let idx = CtStat::AgentDeleted as u32;
        let Ok(mut values) = self.stats.get(&idx, 0) else { return };
        let mut v: Vec<u64> = values.iter().copied().collect();
        if let Some(first) = v.first_mut() {
            *first += n;
        }
        if let Ok(pv) = PerCpuValues::try_from(v) {
            values = pv;
            let _ = self.stats.set(idx, values, 0);
        }
    }

    /// Takes `k` out atomically; returns what was there.
    fn take(&self, k: &CtKey) -> Option<CtEntry> {
        self.maps.take(k)
    }

    /// Deletes `k` unless its entry is alive at `now_ns` (or its twin is).
    /// Returns whether it was deleted.
    fn delete_if_dead(&mut self, k: &CtKey, now_ns: u64) -> (bool, bool) {
        let Some(v) = self.take(k) else { return (false, false) };
        let twin_alive = twin_key(k, &v, &self.cfg).and_then(|t| self.maps.get(&t)).is_some_and(|t| is_alive(&t, now_ns));
        if is_alive(&v, now_ns) || twin_alive {
            // Revived meanwhile: put it back, unless the kernel already
            // created the key again.
            if self.maps.insert_new(k, &v) {
                return (false, true);
            }
        }
        (true, false)
    }

    /// Deletes entries whose flow is dead: the entry and its twin are both
    /// past their expiry at `now_ns` (checked again on the entry taken
    /// out). Rewrites the per-endpoint counts from what stays.
    pub fn gc(&mut self, now_ns: u64) -> GcOutcome {
        self.gc_with(now_ns, |_, _| false)
    }

    /// [`Conntrack::gc`] that also deletes the service flows whose forward
    /// entry `orphaned` says has lost its backend (the kernel no longer
    /// follows them), with their twins, in the same scan. An entry the
    /// kernel replaced meanwhile is put back.
    pub fn gc_with(&mut self, now_ns: u64, orphaned: impl Fn(&CtKey, &CtEntry) -> bool) -> GcOutcome {
        let created_before = self.stat(CtStat::Created);
        let entries = self.entries();
        self.collect_scanned(created_before, entries, now_ns, orphaned)
    }

    /// [`Conntrack::gc`] on a scan taken earlier: whatever happened to the
    /// table since, only entries that are still dead when taken out go.
    pub fn collect(&mut self, scan: Vec<(CtKey, CtEntry)>, now_ns: u64) -> GcOutcome {
        let created_before = self.stat(CtStat::Created);
        self.collect_scanned(created_before, scan, now_ns, |_, _| false)
    }

    fn collect_scanned(&mut self, created_before: u64, entries: Vec<(CtKey, CtEntry)>, now_ns: u64, orphaned: impl Fn(&CtKey, &CtEntry) -> bool) -> GcOutcome {
        // A dead entry stays while its twin is alive (or another copy of
        // its key is). Only dead entries ask, and a live entry is known
        // live by itself, so the set a dead entry looks in is the smaller
        // of two that answer alike: every live key, or the live keys
        // among those the dead entries ask about (their own and their
        // twins'). A table of live flows, or of dead ones, hashes no key
        // (a set of every live key took 160 ms of a 270 ms collection of
        // 200,000 live entries: `weir-cp-bench --ct-entries`).
        let live_n = entries.iter().filter(|(_, e)| is_alive(e, now_ns)).count();
        let dead_n = entries.len() - live_n;
        let alive: HashSet<CtKey> = if live_n == 0 || dead_n == 0 {
            HashSet::new()
        } else if live_n <= 2 * dead_n {
            entries.iter().filter(|(_, e)| is_alive(e, now_ns)).map(|(k, _)| *k).collect()
        } else {
            let asked: HashSet<CtKey> =
                entries.iter().filter(|(_, e)| !is_alive(e, now_ns)).flat_map(|(k, e)| std::iter::once(*k).chain(twin_key(k, e, &self.cfg))).collect();
            entries.iter().filter(|(k, e)| is_alive(e, now_ns) && asked.contains(k)).map(|(k, _)| *k).collect()
        };
        // Orphaned forward entries and their twins. An IPv6 forward entry
        // whose backend is gone has lost the backend's address with it,
        // so its reverse twin is also found from the other side: the
        // reverse entry whose own twin is an orphan.
        let mut orphans: HashSet<CtKey> = HashSet::new();
        for (k, e) in entries.iter().filter(|(k, e)| k.kind == CT_SVC_FWD && orphaned(k, e)) {
            orphans.insert(*k);
            orphans.extend(twin_key(k, e, &self.cfg));
        }
        if !orphans.is_empty() {
            let reverse_twins: Vec<CtKey> =
                entries.iter().filter(|(k, e)| k.kind == CT_SVC_REV && twin_key(k, e, &self.cfg).is_some_and(|t| t.kind == CT_SVC_FWD && orphans.contains(&t))).map(|(k, _)| *k).collect();
            orphans.extend(reverse_twins);
        }
        let mut out = GcOutcome::default();
        let mut deleted_v4 = 0u64;
        let mut deleted_aside = 0u64;
        let mut owners: StdHashMap<u32, u64> = StdHashMap::new();
        let mut live = 0u64;
        for (k, e) in &entries {
            if orphans.contains(k) {
                match self.take(k) {
                    // Re-created for a live backend since the scan: put it
                    // back (unless the kernel already created the key again,
                    // as in `delete_if_dead`).
                    Some(v) if k.kind == CT_SVC_FWD && !orphaned(k, &v) && self.maps.insert_new(k, &v) => {
                        out.restored += 1;
                        live += 1;
                        *owners.entry(v.owner).or_default() += 1;
                    }
                    Some(_) => {
                        out.deleted += 1;
                        deleted_v4 += u64::from(k.is_v4() && self.maps.capacity_v4() > 0);
                        deleted_aside += u64::from(self.maps.is_aside(k, e));
                    }
                    None => {}
                }
                continue;
            }
            if is_alive(e, now_ns) || alive.contains(k) || twin_key(k, e, &self.cfg).is_some_and(|t| alive.contains(&t)) {
                live += 1;
                *owners.entry(e.owner).or_default() += 1;
                continue;
            }
            match self.delete_if_dead(k, now_ns) {
                (true, _) => {
                    out.deleted += 1;
                    deleted_v4 += u64::from(k.is_v4() && self.maps.capacity_v4() > 0);
                    deleted_aside += u64::from(self.maps.is_aside(k, e));
                }
                (false, true) => {
                    out.restored += 1;
                    live += 1;
                    *owners.entry(e.owner).or_default() += 1;
                }
                (false, false) => {}
            }
        }
        self.count_deleted(out.deleted as u64);
        self.write_owners(&owners);
        let remaining = (entries.len() - out.deleted) as u64;
        let v4 = self.v4_count(&entries).saturating_sub(deleted_v4);
        let aside = self.aside_count(&entries).saturating_sub(deleted_aside);
        // The counts just written (the agent's handle follows its own
        // configuration, written before it opened conntrack).
        let share = if self.owners.is_some() { ShareUse::of(owners, self.cfg.ct_max_per_endpoint) } else { ShareUse::default() };
        out.account = self.account_with(created_before, remaining, live, (v4, aside), share);
        out
    }

    /// Rewrites the per-pod counts from a scan, then says until when they
    /// hold (from now: the scan's own time does not eat into it).
    fn write_owners(&mut self, owners: &StdHashMap<u32, u64>) {
        let Some(map) = self.owners.as_mut() else { return };
        let stale: Vec<u32> = map.keys().filter_map(Result::ok).filter(|o| *o != OWNER_COUNTS_FRESH_UNTIL && !owners.contains_key(o)).collect();
        for o in stale {
            let _ = map.remove(&o);
        }
        for (o, n) in owners {
            if *o != OWNER_COUNTS_FRESH_UNTIL {
                let _ = map.insert(o, n, 0);
            }
        }
        let _ = map.insert(OWNER_COUNTS_FRESH_UNTIL, monotonic_ns().saturating_add(self.counts_hold_ns), 0);
    }

    /// How many of `entries` the IPv4 map holds (none without one).
    fn v4_count(&self, entries: &[(CtKey, CtEntry)]) -> u64 {
        if self.maps.capacity_v4() == 0 {
            return 0;
        }
        entries.iter().filter(|(k, _)| k.is_v4()).count() as u64
    }

    /// How many of `entries` `WEIR_CT6_MASQ` holds.
    fn aside_count(&self, entries: &[(CtKey, CtEntry)]) -> u64 {
        entries.iter().filter(|(k, e)| self.maps.is_aside(k, e)).count() as u64
    }

    /// `(entries_v4, entries_masq6)`: of `entries`, the IPv4 map's and
    /// `WEIR_CT6_MASQ`'s.
    fn account_with(&self, created: u64, entries: u64, live: u64, (entries_v4, entries_masq6): (u64, u64), share: ShareUse) -> CtAccount {
        let deleted = self.stat(CtStat::Deleted) + self.stat(CtStat::AgentDeleted);
        CtAccount {
            entries,
            live,
            capacity: self.capacity,
            entries_v4,
            capacity_v4: self.maps.capacity_v4(),
            entries_masq6,
            capacity_masq6: self.maps.capacity_aside(),
            created,
            deleted,
            evicted: created.saturating_sub(deleted).saturating_sub(entries),
            insert_failed: self.stat(CtStat::InsertFailed),
            quota_refused: self.stat(CtStat::QuotaRefused),
            quota_lifted: self.stat(CtStat::QuotaLifted),
            half_rebuilt: self.stat(CtStat::HalfRebuilt),
            port_remapped: self.stat(CtStat::PortRemapped),
            share,
        }
    }

    /// The table's accounting now (one scan).
    pub fn account(&self, now_ns: u64) -> CtAccount {
        let created = self.stat(CtStat::Created);
        let entries = self.entries();
        let live = entries.iter().filter(|(_, e)| is_alive(e, now_ns)).count() as u64;
        let v4 = (self.v4_count(&entries), self.aside_count(&entries));
        // The counts the kernel reads, and the limit as written now (a
        // reader's handle may predate the agent's configuration).
        let share = match &self.owners {
            Some(o) => ShareUse::of(o.iter().filter_map(Result::ok), config_of(&self.layout).map_or(self.cfg.ct_max_per_endpoint, |c| c.ct_max_per_endpoint)),
            None => ShareUse::default(),
        };
        self.account_with(created, entries.len() as u64, live, v4, share)
    }

    /// Deletes the flows of `(svc_id, backend_id)` pairs; `svc_id` None
    /// matches every service. Returns how many entries were deleted.
    pub fn purge(&mut self, svc_id: Option<u32>, backend_ids: &HashSet<u32>) -> usize {
        if backend_ids.is_empty() {
            return 0;
        }
        self.flush(|_, e| backend_ids.contains(&e.backend_id) && svc_id.is_none_or(|s| s == e.svc_id))
    }

    /// Deletes matching entries; returns how many.
    pub fn flush(&mut self, mut pred: impl FnMut(&CtKey, &CtEntry) -> bool) -> usize {
        let doomed: Vec<CtKey> = self.entries().into_iter().filter(|(k, e)| pred(k, e)).map(|(k, _)| k).collect();
        let n = doomed.iter().filter(|k| self.maps.remove(k)).count();
        self.count_deleted(n as u64);
        n
    }
}

#[cfg(test)]
mod share_tests {
    use super::ShareUse;

    #[test]
    fn the_fullest_pod_link_is_the_one_holding_the_most_and_flows_from_outside_are_nobodys() {
        assert_eq!(ShareUse::of([], 32_768), ShareUse { limit: 32_768, fullest_link: 0, fullest_entries: 0 });
        let s = ShareUse::of([(7, 10), (0, 90_000), (12, 31_000), (9, 31_000)], 32_768);
        assert_eq!(s, ShareUse { limit: 32_768, fullest_link: 9, fullest_entries: 31_000 }, "link 0 (outside) is no pod; a tie names the lower link");
    }
}
