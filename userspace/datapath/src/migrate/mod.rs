//! Upgrades across map layouts and sizes without losing a connection.
//!
//! Before the agent loads its objects, [`prepare`] compares every pinned
//! map with what this build expects ([`inspect`]): the layout version its
//! `WEIR_ABI` record names, and the kernel's type, sizes, flags and
//! capacity. A map in an older layout, or with another capacity
//! (`--ct-max-entries`, `--lb-table-slots`, ...), is rebuilt:
//!
//! 1. the new map is created and pinned beside the old one, under
//!    `<bpffs>/maps-next/` (its record written at once, keyed by its id);
//! 2. the three objects are loaded against the new maps (a staged pin
//!    wins over `maps/`) and every other map as pinned;
//! 3. every entry of the old map is converted ([`steps`]) and copied,
//!    then copied once more right before the swap, overwriting (the old
//!    programs still own the state until then); an IPv6 conntrack entry
//!    leaving a layout that kept both addresses is first renamed by them
//!    ([`ids`]);
//! 4. every pinned link (pod veths, node devices, XDP, cgroup) gets the
//!    new program in one `BPF_LINK_UPDATE` each;
//! 5. entries the old programs created meanwhile are copied (insert
//!    only where absent: the new programs' own entries win);
//! 6. each new pin is renamed over the old one (atomic on the bpffs), and
//!    `maps-next/` is removed; the old map goes with its last reference.
//!
//! A kill at any point leaves the old maps (until their rename) and the
//! staged ones; the next agent resumes: it keeps the staged maps that
//! have the right shape, copies again where absent, swaps again, and
//! commits. A map this build cannot convert is refused before anything
//! is touched.

pub mod ids;
pub mod inspect;
pub mod manifest;
pub mod raw;
pub mod steps;

use std::{
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::PathBuf,
};

use aya::{maps::MapData, programs::Program, Ebpf};

use self::{
    ids::IdView,
    inspect::{Action, Expected, Refusal},
    manifest::Manifest,
    raw::Update,
};
use crate::{attach::Hook, loader::{load_object_with, LoadOptions}, objects, pins::PinLayout, DatapathError};

/// The environment variable that stops a migration at a phase, for the
/// kill-in-the-middle tests: `converted`, `swapped` or `committing`.
pub const STALL_ENV: &str = "WEIR_MIGRATION_STALL";

/// What a rebuild did to one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebuilt {
    pub name: String,
    pub from_version: u32,
    pub to_version: u32,
    pub from_entries: u32,
    pub to_entries: u32,
    /// Entries carried over (the first copy, and what the old programs
    /// created after it).
    pub copied: u64,
    /// Entries that did not fit the new map, or that no conversion keeps.
    pub dropped: u64,
    /// IPv6 entries whose ids named other backends or frontends than
    /// their addresses (an agent from before `WEIR_LB_IDS` reused ids),
    /// renamed by the addresses as they left a layout that kept them
    /// ([`ids`]).
    pub renamed: u64,
    /// Whether the map's state was carried over (counters and ring
    /// buffers start empty).
    pub stateful: bool,
}

/// The outcome of [`prepare`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub rebuilt: Vec<Rebuilt>,
    /// Pinned links whose program was replaced.
    pub links_swapped: usize,
    /// Pinned links whose interface is gone (left to the agent's pruning).
    pub links_defunct: usize,
}

/// Checks every pinned map and rebuilds those in an older layout or with
/// another capacity; refuses (touching nothing) a map it cannot convert.
pub fn prepare(layout: &PinLayout, opts: &LoadOptions) -> Result<Report, DatapathError> {
    let expected = inspect::expected(opts)?;
    let manifest = Manifest::open(layout)?;
    let staged = staged_names(layout)?;
    let mut plan: Vec<(Expected, Action)> = Vec::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    for e in expected {
        let pinned = inspect::pinned(layout, &e, manifest.as_ref())?;
        match inspect::decide(&e, pinned.as_ref()) {
            // A rebuild an earlier agent started is finished.
            Ok(Action::Adopt) if staged.contains(&e.name) => plan.push((e.clone(), Action::Rebuild { from_version: e.layout.version })),
            Ok(a) => plan.push((e, a)),
            Err(r) => refusals.push(r),
        }
    }
    if !refusals.is_empty() {
        return Err(DatapathError::Refused(refusals));
    }
    let rebuild: Vec<(Expected, u32)> = plan
        .into_iter()
        .filter_map(|(e, a)| match a {
            Action::Rebuild { from_version } => Some((e, from_version)),
            _ => None,
        })
        .collect();
    if rebuild.is_empty() {
        remove_staging(layout)?;
        return Ok(Report::default());
    }
    let refusals: Vec<Refusal> = rebuild.iter().filter_map(|(e, _)| shrink_refusal(layout, e).transpose()).collect::<Result<_, _>>()?;
    if !refusals.is_empty() {
        return Err(DatapathError::Refused(refusals));
    }
    run(layout, opts, &rebuild)
}

/// An array cannot shrink below its last used index (the selection table's
/// ranges belong to services): such a rebuild is refused, naming the size
/// that fits. Hashes may shrink; what does not fit is counted as dropped.
fn shrink_refusal(layout: &PinLayout, e: &Expected) -> Result<Option<Refusal>, DatapathError> {
    let path = layout.map(&e.name);
    let Some((_, old)) = inspect::pinned_shape(&path)? else { return Ok(None) };
    if !is_array(e.shape.map_type) || old.max_entries <= e.shape.max_entries {
        return Ok(None);
    }
    let fd = raw::obj_get(&path).map_err(raw_error("opening", &e.name))?;
    let mut last_used = None;
    if old.flags & raw::F_MMAPABLE != 0 {
        let stride = (old.value_size as usize).div_ceil(8) * 8;
        let all = raw::ArrayMapping::new(fd.as_fd(), old.max_entries, old.value_size, false).map_err(raw_error("mapping", &e.name))?;
        let tail = &all.bytes()[e.shape.max_entries as usize * stride..old.max_entries as usize * stride];
        last_used = tail.chunks(stride).rposition(|v| v.iter().any(|b| *b != 0)).map(|i| e.shape.max_entries + i as u32);
    } else {
        let mut value = vec![0u8; old.value_size as usize];
        for i in (e.shape.max_entries..old.max_entries).rev() {
            if raw::lookup(fd.as_fd(), &i.to_ne_bytes(), &mut value).map_err(raw_error("reading", &e.name))? && value.iter().any(|b| *b != 0) {
                last_used = Some(i);
                break;
            }
        }
    }
    Ok(last_used.map(|i| Refusal {
        map: e.name.clone(),
        pinned: format!("{} entries, index {i} in use", old.max_entries),
        expected: format!("{} entries", e.shape.max_entries),
        why: format!("shrinking would drop entries in use; keep it at {} or more", i + 1),
    }))
}

/// Records the layout of every pinned map that has no record yet (maps the
/// load just created, or pinned before layout versions), drops the
/// records of maps that are gone, and names this agent.
pub fn stamp(layout: &PinLayout, opts: &LoadOptions, agent_version: &str) -> Result<(), DatapathError> {
    let mut manifest = Manifest::open_or_create(layout)?;
    let mut live = Vec::new();
    for e in inspect::expected(opts)? {
        let Some((id, shape)) = inspect::pinned_shape(&layout.map(&e.name))? else { continue };
        live.push(id);
        if manifest.record(id).is_none() {
            manifest.set(id, &e.name, e.layout.version, &shape)?;
        }
    }
    manifest.prune(&live)?;
    manifest.set_agent(agent_version)
}

/// One map's layout as `weir status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapStatus {
    pub name: String,
    /// The pinned map's recorded layout version (`None`: no record).
    pub pinned_version: Option<u32>,
    /// This build's version.
    pub expected_version: u32,
    pub max_entries: Option<u32>,
    /// A rebuilt map waiting in `maps-next/` (a migration in progress, or
    /// one a killed agent left for the next to finish).
    pub staged: bool,
}

/// The datapath's layouts: the agent that last wrote the manifest, and
/// every map.
pub fn status(layout: &PinLayout) -> Result<(Option<String>, Vec<MapStatus>), DatapathError> {
    layout.require_existing()?;
    let manifest = Manifest::open(layout)?;
    let staged = staged_names(layout)?;
    let mut out = Vec::new();
    for l in weir_common::abi::LAYOUTS {
        let pinned = inspect::pinned_shape(&layout.map(l.name))?;
        let pinned_version = pinned.and_then(|(id, _)| manifest.as_ref()?.record(id)).map(|(v, _)| v);
        out.push(MapStatus {
            name: l.name.into(),
            pinned_version,
            expected_version: l.version,
            max_entries: pinned.map(|(_, s)| s.max_entries),
            staged: staged.contains(&l.name.to_string()),
        });
    }
    Ok((manifest.and_then(|m| m.agent()), out))
}

fn staged_names(layout: &PinLayout) -> Result<Vec<String>, DatapathError> {
    let dir = layout.staging_dir();
    match std::fs::read_dir(&dir) {
        Ok(entries) => Ok(entries.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(DatapathError::Io { op: "listing", path: dir, source }),
    }
}

fn remove_staging(layout: &PinLayout) -> Result<(), DatapathError> {
    let dir = layout.staging_dir();
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatapathError::Io { op: "removing", path: dir, source }),
    }
}

fn stall(phase: &str) {
    if std::env::var(STALL_ENV).is_ok_and(|p| p == phase) {
        tracing::warn!(phase, "migration stalled ({STALL_ENV})");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

fn raw_error<'a>(op: &'static str, name: &'a str) -> impl FnOnce(std::io::Error) -> DatapathError + 'a {
    move |source| DatapathError::Raw { op, name: name.to_string(), source }
}

fn run(layout: &PinLayout, opts: &LoadOptions, rebuild: &[(Expected, u32)]) -> Result<Report, DatapathError> {
    layout.ensure_dirs()?;
    let staging = layout.staging_dir();
    std::fs::create_dir_all(&staging).map_err(|source| DatapathError::Io { op: "creating", path: staging.clone(), source })?;
    let mut manifest = Manifest::open_or_create(layout)?;
    let mut report = Report::default();

    // 1. The new maps, beside the old ones. A staged map an earlier
    // (killed) agent left may already be in use by the programs it
    // swapped in: it is kept, and never overwritten from the old map.
    let mut resumed = vec![false; rebuild.len()];
    for (i, (e, from)) in rebuild.iter().enumerate() {
        let path = staging.join(&e.name);
        if let Some((id, shape)) = inspect::pinned_shape(&path)? {
            if shape == e.shape {
                if manifest.record(id).is_none() {
                    manifest.set(id, &e.name, e.layout.version, &shape)?;
                }
                resumed[i] = true;
                continue;
            }
            crate::attach::remove_pin(&path)?;
        }
        let s = e.shape;
        let obj = aya_obj::Map::new_from_params(s.map_type, s.key_size, s.value_size, s.max_entries, s.flags);
        let map = MapData::create(obj, &e.name, None).map_err(|source| DatapathError::PinnedMap { path: path.clone(), source })?;
        map.pin(&path).map_err(|source| DatapathError::Pin { path: path.clone(), source })?;
        let id = map.info().map_err(|source| DatapathError::PinnedMap { path: path.clone(), source })?.id();
        manifest.set(id, &e.name, e.layout.version, &s)?;
        tracing::info!(map = %e.name, from_version = from, to_version = e.layout.version, to = %s.max_entries, "rebuilding a pinned map beside the old one");
    }

    // 2. The objects, over the new maps. The conntrack and masquerade
    // maps being replaced stay visible to them (as WEIR_CT_PREV and
    // WEIR_SNAT_PREV in the same layout, as ..._V1 in the previous one),
    // so an entry the old programs create until the last link is swapped
    // is taken over on its first miss.
    let (constants, pins) = carry_over(layout, rebuild);
    let mut objs: Vec<(&'static str, Ebpf)> = Vec::new();
    for (object, bytes) in objects::all() {
        objs.push((object, load_object_with(layout, opts, bytes, object, &pins, &constants)?));
    }
    // The maps the load just created (ones this layout added) are in this
    // build's layout: recorded now, so that an agent resuming a migration
    // killed from here on does not take them for maps of unknown layout.
    record_created(layout, opts, rebuild, &mut manifest)?;

    // 3. The entries. Conntrack rebuilt from before layout v3 sends its
    // IPv4 flows to WEIR_CT4, from before v4 its IPv6 entries that keep
    // their addresses to WEIR_CT6_MASQ (both pinned by the load above).
    let (four, aside) = split_targets(layout, rebuild)?;
    // A v4 conntrack entry names its service by id: every IPv6 frontend
    // an agent from before WEIR_SVC_ADDRS left must be named before the
    // new programs run.
    if rebuild.iter().any(|(e, from)| sets_aside(e, *from)) {
        crate::lb::name_ipv6_frontends(layout)?;
    }
    // The ids as the older agent left them (the new agent adopts them),
    // for the entries that leave a layout that kept both addresses. Without
    // them the entries keep the ids they carry, as before this check.
    let ids = match rebuild.iter().any(|(e, from)| renames_ids(e, *from)) {
        true => IdView::read(layout).inspect_err(|error| tracing::warn!(error = %crate::error::chain(error), "reading the backends' and frontends' ids: IPv6 conntrack entries keep the ids they carry")).ok(),
        false => None,
    };
    let split = Split { four: four.as_ref().map(|fd| fd.as_fd()), aside: aside.as_ref().map(|fd| fd.as_fd()), ids: ids.as_ref() };
    let mut pairs: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    for (e, from) in rebuild {
        let old = raw::obj_get(&layout.map(&e.name)).map_err(raw_error("opening", &e.name))?;
        let new = raw::obj_get(&staging.join(&e.name)).map_err(raw_error("opening", &e.name))?;
        let old_entries = inspect::pinned_shape(&layout.map(&e.name))?.map_or(0, |(_, s)| s.max_entries);
        let mut r = Rebuilt {
            name: e.name.clone(),
            from_version: *from,
            to_version: e.layout.version,
            from_entries: old_entries,
            to_entries: e.shape.max_entries,
            copied: 0,
            dropped: 0,
            renamed: 0,
            stateful: e.layout.stateful,
        };
        if e.layout.stateful {
            let c = copy(e, *from, old.as_fd(), new.as_fd(), split.of(e, *from), old_entries, raw::NOEXIST)?;
            r.copied += c.copied;
            r.dropped += c.dropped;
            r.renamed += c.renamed;
        }
        report.rebuilt.push(r);
        pairs.push((old, new));
    }
    stall("converted");
    // Once more right before the swap, overwriting: until the new programs
    // run, the old map is the truth (a flow that moved on, closed or was
    // created during the first copy carries its latest state over).
    for (i, ((e, from), ((old, new), r))) in rebuild.iter().zip(pairs.iter().zip(report.rebuilt.iter_mut())).enumerate() {
        if e.layout.stateful && !is_array(e.shape.map_type) {
            let flags = if resumed[i] { raw::NOEXIST } else { raw::ANY };
            let c = copy(e, *from, old.as_fd(), new.as_fd(), split.of(e, *from), r.from_entries, flags)?;
            r.copied = r.copied.max(c.copied);
            r.dropped = r.dropped.max(c.dropped);
            r.renamed = r.renamed.max(c.renamed);
        }
    }

    // 4. Every pinned link onto the new programs.
    swap_links(layout, &mut objs, &mut report)?;
    stall("swapped");

    // 5. What the old programs wrote since the first copy.
    for ((e, from), ((old, new), r)) in rebuild.iter().zip(pairs.iter().zip(report.rebuilt.iter_mut())) {
        if e.layout.stateful && !is_array(e.shape.map_type) {
            let c = copy(e, *from, old.as_fd(), new.as_fd(), split.of(e, *from), r.from_entries, raw::NOEXIST)?;
            r.copied += c.copied;
            r.renamed += c.renamed;
        }
    }

    // 6. The new pins in place of the old.
    for (i, (e, _)) in rebuild.iter().enumerate() {
        let from = staging.join(&e.name);
        let to = layout.map(&e.name);
        std::fs::rename(&from, &to).map_err(|source| DatapathError::Io { op: "renaming", path: from.clone(), source })?;
        if i == 0 {
            stall("committing");
        }
    }
    remove_staging(layout)?;
    drop(pairs);
    drop(objs);
    let mut live = Vec::new();
    for l in weir_common::abi::LAYOUTS {
        if let Some((id, _)) = inspect::pinned_shape(&layout.map(l.name))? {
            live.push(id);
        }
    }
    manifest.prune(&live)?;
    Ok(report)
}

/// Records, in this build's layout, every pinned map the load created: a
/// map with no record, in this build's shape, that is not being rebuilt
/// (the live pin of a map being rebuilt is the old map until the rename,
/// and an old map may have no record: one pinned before layout versions,
/// or one a killed migration's load created; recorded in this layout, it
/// would be refused as corrupt by the next start).
fn record_created(layout: &PinLayout, opts: &LoadOptions, rebuild: &[(Expected, u32)], manifest: &mut Manifest) -> Result<(), DatapathError> {
    for e in inspect::expected(opts)? {
        if rebuild.iter().any(|(r, _)| r.name == e.name) {
            continue;
        }
        let Some((id, shape)) = inspect::pinned_shape(&layout.map(&e.name))? else { continue };
        if shape == e.shape && manifest.record(id).is_none() {
            manifest.set(id, &e.name, e.layout.version, &shape)?;
        }
    }
    Ok(())
}

/// Where the migration's programs take over the conntrack and masquerade
/// entries they miss: the old map, when it is rebuilt in this layout or
/// converted from v1. Returns the programs' constants and the pins of the
/// maps they read the old entries from.
type CarryOver = (Vec<(&'static str, u8)>, Vec<(&'static str, PathBuf)>);

fn carry_over(layout: &PinLayout, rebuild: &[(Expected, u32)]) -> CarryOver {
    use weir_common::{ct::{CARRY_OVER_SAME, CARRY_OVER_V1, CARRY_OVER_V3, CARRY_OVER_WIDE}, maps};
    // (map, its switch, its old map in the same bytes, in v1)
    const MAPS: [(&str, &str, &str, Option<&str>); 3] = [
        (maps::CT, "WEIR_CT_PREV_ON", maps::CT_PREV, Some(maps::CT_PREV_V1)),
        (maps::CT4, "WEIR_CT4_PREV_ON", maps::CT4_PREV, None),
        (maps::SNAT, "WEIR_SNAT_PREV_ON", maps::SNAT_PREV, Some(maps::SNAT_PREV_V1)),
    ];
    let (mut constants, mut pins) = (Vec::new(), Vec::new());
    for (map, switch, same, v1) in MAPS {
        match rebuild.iter().find(|(e, _)| e.name == map) {
            Some((e, from)) if *from == e.layout.version => {
                constants.push((switch, CARRY_OVER_SAME));
                pins.push((same, layout.map(map)));
            }
            // Whole entries (v2, v3), narrowed as they are taken over.
            Some((_, 2 | 3)) if map == maps::CT => {
                constants.push((switch, CARRY_OVER_V3));
                pins.push((maps::CT_PREV_V3, layout.map(map)));
            }
            Some((_, 1)) => {
                if let Some(v1) = v1 {
                    constants.push((switch, CARRY_OVER_V1));
                    pins.push((v1, layout.map(map)));
                }
            }
            _ => {}
        }
    }
    // IPv4 flows the old programs open in the one-table conntrack until
    // the swap are found there by the IPv4 path, where the conntrack
    // switch above points (after WEIR_CT4_PREV, when WEIR_CT4 is rebuilt
    // too: its pin above stays, its switch is this one).
    if rebuild.iter().any(|(e, from)| splits(e, *from)) {
        constants.retain(|(switch, _)| *switch != "WEIR_CT4_PREV_ON");
        constants.push(("WEIR_CT4_PREV_ON", CARRY_OVER_WIDE));
    }
    (constants, pins)
}

/// Whether rebuilding `e` from layout `from` splits conntrack by family
/// (its IPv4 flows go to `WEIR_CT4`).
fn splits(e: &Expected, from: u32) -> bool {
    e.name == weir_common::maps::CT && from < 3
}

/// Whether rebuilding `e` from layout `from` sets conntrack's IPv6
/// entries that keep their addresses aside (to `WEIR_CT6_MASQ`).
fn sets_aside(e: &Expected, from: u32) -> bool {
    e.name == weir_common::maps::CT && from < 4
}

/// `WEIR_CT4` and `WEIR_CT6_MASQ`, opened for the split, when conntrack
/// is rebuilt from before them (staged if a migration rebuilds them too,
/// else as pinned).
fn split_targets(layout: &PinLayout, rebuild: &[(Expected, u32)]) -> Result<(Option<OwnedFd>, Option<OwnedFd>), DatapathError> {
    let open = |name: &'static str| {
        let staged = staged_path(layout, name);
        let path = if staged.exists() { staged } else { layout.map(name) };
        raw::obj_get(&path).map_err(raw_error("opening", name))
    };
    let four = if rebuild.iter().any(|(e, from)| splits(e, *from)) { Some(open(weir_common::maps::CT4)?) } else { None };
    let aside = if rebuild.iter().any(|(e, from)| sets_aside(e, *from)) { Some(open(weir_common::maps::CT6_MASQ)?) } else { None };
    Ok((four, aside))
}

/// Where conntrack's entries go that a rebuild takes out of `WEIR_CT`,
/// and the ids IPv6 entries are renamed by as they leave a layout that
/// kept both addresses ([`ids`]).
#[derive(Clone, Copy)]
struct Split<'a> {
    four: Option<BorrowedFd<'a>>,
    aside: Option<BorrowedFd<'a>>,
    ids: Option<&'a IdView>,
}

impl<'a> Split<'a> {
    /// The targets (and renaming) that apply to rebuilding `e` from `from`.
    fn of(self, e: &Expected, from: u32) -> Split<'a> {
        Split { four: self.four.filter(|_| splits(e, from)), aside: self.aside.filter(|_| sets_aside(e, from)), ids: self.ids.filter(|_| renames_ids(e, from)) }
    }
}

fn is_array(map_type: u32) -> bool {
    map_type == 2
}

/// Copies (and converts) every entry of `old` into `new`; returns
/// (copied, dropped). With `split`, an IPv4 conntrack entry goes to
/// `WEIR_CT4` instead, narrowed (`steps::ct_v2`), and an IPv6 one that
/// keeps its addresses to `WEIR_CT6_MASQ` (`steps::ct_v3`).
fn copy(e: &Expected, from: u32, old: BorrowedFd<'_>, new: BorrowedFd<'_>, split: Split<'_>, old_entries: u32, flags: u64) -> Result<Copied, DatapathError> {
    let to = e.layout.version;
    let name = e.name.as_str();
    let (mut copied, mut dropped, mut renamed) = (0u64, 0u64, 0u64);
    let key_size = e.shape.key_size.max(4) as usize;
    // An older layout's sizes may differ: read with generous buffers.
    let old_shape = old_shape(old);
    let (old_key, old_value) = old_shape.unwrap_or((key_size as u32, e.shape.value_size));
    let mut value = vec![0u8; old_value as usize];
    let mut put = |k: &[u8], v: &[u8], from: u32, flags: u64| -> Result<bool, DatapathError> {
        let elsewhere = if let Some(four) = split.four.filter(|_| steps::ct_v2::is_v4_key(k)) {
            Some((four, weir_common::maps::CT4, steps::convert(name, from, 2, k, v).and_then(|(k, v)| steps::ct_v2::narrow(&k, &v))))
        } else if let Some(aside) = split.aside {
            // In WEIR_CT6_MASQ's v1 bytes, then in its layout.
            let masq = weir_common::maps::CT6_MASQ;
            let to_masq = weir_common::abi::layout_of(masq).map_or(1, |l| l.version);
            steps::convert(name, from, 3, k, v).and_then(|(k, v)| steps::ct_v3::aside(&k, &v)).map(|(k, v)| (aside, masq, steps::convert(masq, 1, to_masq, &k, &v)))
        } else {
            None
        };
        if let Some((fd, target, converted)) = elsewhere {
            let Some((k, v)) = converted else {
                dropped += 1;
                return Ok(false);
            };
            return Ok(tally(raw::update(fd, &k, &v, flags).map_err(raw_error("writing", target))?, &mut copied, &mut dropped));
        }
        let Some((k, v)) = steps::convert(name, from, to, k, v) else {
            dropped += 1;
            return Ok(false);
        };
        Ok(tally(raw::update(new, &k, &v, flags).map_err(raw_error("writing", name))?, &mut copied, &mut dropped))
    };
    // Entries of a layout that kept both addresses are renamed by them
    // first ([`ids`]), then converted from the layout they were read in.
    let ids = split.ids;
    let mut put = |k: &[u8], v: &[u8], flags: u64| -> Result<(), DatapathError> {
        if let Some((k, v, at, changed)) = ids.and_then(|view| rename_entry(view, name, from, k, v)) {
            let written = put(&k, &v, at, flags)?;
            renamed += u64::from(changed && written);
            return Ok(());
        }
        put(k, v, from, flags).map(|_| ())
    };
    if is_array(e.shape.map_type) && e.shape.flags & raw::F_MMAPABLE != 0 && from == to && old_value == e.shape.value_size {
        // Same layout, memory-mappable (the selection table): one copy of
        // the used bytes instead of a syscall per slot.
        let stride = (old_value as usize).div_ceil(8) * 8;
        let n = old_entries.min(e.shape.max_entries) as usize;
        let src = raw::ArrayMapping::new(old, old_entries, old_value, false).map_err(raw_error("mapping", name))?;
        let mut dst = raw::ArrayMapping::new(new, e.shape.max_entries, old_value, true).map_err(raw_error("mapping", name))?;
        let bytes = n * stride;
        dst.bytes_mut()[..bytes].copy_from_slice(&src.bytes()[..bytes]);
        let used = src.bytes()[..bytes].chunks(stride).filter(|v| v.iter().any(|b| *b != 0)).count();
        return Ok(Copied { copied: used as u64, ..Copied::default() });
    }
    if is_array(e.shape.map_type) {
        let n = old_entries.min(e.shape.max_entries);
        let zero = vec![0u8; old_value as usize];
        for i in 0..n {
            let k = i.to_ne_bytes();
            if raw::lookup(old, &k, &mut value[..old_value as usize]).map_err(raw_error("reading", name))? && value[..old_value as usize] != zero[..] {
                put(&k, &value[..old_value as usize], raw::ANY)?;
            }
        }
        return Ok(Copied { copied, dropped, renamed });
    }
    let mut key = vec![0u8; old_key as usize];
    let mut next = vec![0u8; old_key as usize];
    let mut first = true;
    while raw::next_key(old, if first { None } else { Some(&key) }, &mut next).map_err(raw_error("listing", name))? {
        first = false;
        key.copy_from_slice(&next);
        if raw::lookup(old, &key, &mut value[..old_value as usize]).map_err(raw_error("reading", name))? {
            let v = value[..old_value as usize].to_vec();
            put(&key, &v, flags)?;
        }
    }
    Ok(Copied { copied, dropped, renamed })
}

/// Counts one write: whether it wrote.
fn tally(u: Update, copied: &mut u64, dropped: &mut u64) -> bool {
    match u {
        Update::Written => *copied += 1,
        Update::Exists => {}
        Update::Full => *dropped += 1,
    }
    u == Update::Written
}

/// What one pass of [`copy`] did.
#[derive(Clone, Copy, Debug, Default)]
struct Copied {
    copied: u64,
    dropped: u64,
    /// Entries whose ids were renamed by their addresses ([`ids`]).
    renamed: u64,
}

/// Whether rebuilding `e` from layout `from` takes IPv6 service entries
/// out of a layout that kept both addresses: their ids are checked
/// against them ([`ids`]).
fn renames_ids(e: &Expected, from: u32) -> bool {
    use weir_common::maps::{CT, CT6_MASQ};
    (e.name == CT && from < 4) || (e.name == CT6_MASQ && from < 2)
}

/// An entry of `name` at layout `from`, renamed by `view`: its key and
/// value, the layout they are in (conntrack's v3, whose bytes
/// `WEIR_CT6_MASQ` v1 shares), and whether an id changed. `None` for an
/// entry that is not IPv6 conntrack's (it goes on as it was).
fn rename_entry(view: &IdView, name: &str, from: u32, k: &[u8], v: &[u8]) -> Option<(Vec<u8>, Vec<u8>, u32, bool)> {
    let at = if name == weir_common::maps::CT { 3 } else { from };
    if steps::ct_v2::is_v4_key(k) {
        return None;
    }
    let (k, v) = steps::convert(name, from, at, k, v)?;
    let (key, mut entry) = steps::ct_v2::parse(&k, &v)?;
    let changed = view.rename(&key, &mut entry);
    Some((k, steps::ct_v1::bytes(&entry).to_vec(), at, changed))
}

/// The key and value sizes of the map behind `fd`.
fn old_shape(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    let owned = fd.try_clone_to_owned().ok()?;
    let data = MapData::from_fd(owned).ok()?;
    let info = data.info().ok()?;
    Some((info.key_size(), info.value_size()))
}

/// The object and program a link pin runs, from its name.
fn program_of(pin: &str) -> Option<(&'static str, &'static str)> {
    if let Some(prog) = pin.strip_prefix("cgroup-") {
        return crate::cgroup::SOCK_PROGRAMS.into_iter().find(|p| *p == prog).map(|p| ("sock", p));
    }
    let (_, hook) = pin.rsplit_once('@')?;
    if hook == "xdp" {
        return Some(("node", crate::xdp::XDP_PROGRAM));
    }
    let hook = Hook::parse(hook)?;
    let object = if Hook::POD.contains(&hook) { "pod" } else { "node" };
    Some((object, hook.as_str()))
}

fn program_fd<'a>(objs: &'a mut [(&'static str, Ebpf)], object: &str, name: &'static str) -> Result<BorrowedFd<'a>, DatapathError> {
    let ebpf = &mut objs.iter_mut().find(|(o, _)| *o == object).ok_or(DatapathError::MissingProgram { object: "?", name })?.1;
    let prog = ebpf.program_mut(name).ok_or(DatapathError::MissingProgram { object: "?", name })?;
    if prog.fd().is_err() {
        let loaded = match prog {
            Program::SchedClassifier(p) => p.load(),
            Program::Xdp(p) => p.load(),
            Program::CgroupSockAddr(p) => p.load(),
            Program::CgroupSock(p) => p.load(),
            Program::SockOps(p) => p.load(),
            _ => return Err(DatapathError::MissingProgram { object: "?", name }),
        };
        loaded.map_err(|source| DatapathError::Program { name, source })?;
    }
    let fd = prog.fd().map_err(|source| DatapathError::Program { name, source })?;
    Ok(fd.as_fd())
}

fn swap_links(layout: &PinLayout, objs: &mut [(&'static str, Ebpf)], report: &mut Report) -> Result<(), DatapathError> {
    let dir = layout.links_dir();
    let mut pins: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(DatapathError::Io { op: "listing", path: dir, source }),
    };
    pins.sort();
    for pin in pins {
        let Some((object, name)) = pin.file_name().and_then(|n| n.to_str()).and_then(program_of) else { continue };
        let link = match raw::obj_get(&pin) {
            Ok(fd) => fd,
            Err(error) => {
                tracing::warn!(pin = %pin.display(), %error, "cannot open a pinned link; leaving it");
                report.links_defunct += 1;
                continue;
            }
        };
        let prog = program_fd(objs, object, name)?;
        match raw::link_update(link.as_fd(), prog) {
            Ok(()) => report.links_swapped += 1,
            Err(error) => {
                tracing::warn!(pin = %pin.display(), %error, "a pinned link took no new program (its interface is gone?)");
                report.links_defunct += 1;
            }
        }
    }
    Ok(())
}

/// Where a rebuilt map waits until it replaces the old one.
pub fn staged_path(layout: &PinLayout, name: &str) -> PathBuf {
    layout.staging_dir().join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(name: &str) -> Expected {
        let layout = weir_common::abi::layout_of(name).expect("layout");
        let shape = inspect::Shape { map_type: 9, key_size: layout.key_size, value_size: layout.value_size, flags: 0, max_entries: 1024 };
        Expected { name: name.into(), shape, layout }
    }

    #[test]
    fn each_rebuild_carries_over_from_its_old_map_with_one_switch_per_table() {
        use weir_common::{ct::{CARRY_OVER_SAME, CARRY_OVER_V1, CARRY_OVER_V3, CARRY_OVER_WIDE}, maps};
        let layout = PinLayout::new(std::path::Path::new("/sys/fs/bpf/weir-test"));
        let switch = |c: &[(&str, u8)], name: &str| -> Vec<u8> { c.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v).collect() };
        let pinned = |p: &[(&str, PathBuf)], name: &str| p.iter().find(|(n, _)| *n == name).map(|(_, path)| path.clone());
        // A new IPv4 size: WEIR_CT4_PREV, nothing wide.
        let (c, p) = carry_over(&layout, &[(exp(maps::CT4), 1)]);
        assert_eq!((switch(&c, "WEIR_CT4_PREV_ON"), switch(&c, "WEIR_CT_PREV_ON")), (vec![CARRY_OVER_SAME], vec![]));
        assert_eq!(pinned(&p, maps::CT4_PREV), Some(layout.map(maps::CT4)));
        // The split of v2: the IPv6 path from the old map's whole
        // entries, narrowed, the IPv4 path from it too.
        let (c, p) = carry_over(&layout, &[(exp(maps::CT), 2)]);
        assert_eq!((switch(&c, "WEIR_CT_PREV_ON"), switch(&c, "WEIR_CT4_PREV_ON")), (vec![CARRY_OVER_V3], vec![CARRY_OVER_WIDE]));
        assert_eq!(pinned(&p, maps::CT_PREV_V3), Some(layout.map(maps::CT)));
        // v3 (IPv6 only, whole entries): narrowed, nothing for IPv4.
        let (c, p) = carry_over(&layout, &[(exp(maps::CT), 3)]);
        assert_eq!((switch(&c, "WEIR_CT_PREV_ON"), switch(&c, "WEIR_CT4_PREV_ON")), (vec![CARRY_OVER_V3], vec![]));
        assert_eq!(pinned(&p, maps::CT_PREV_V3), Some(layout.map(maps::CT)));
        // From v1: converted on the way.
        let (c, p) = carry_over(&layout, &[(exp(maps::CT), 1)]);
        assert_eq!((switch(&c, "WEIR_CT_PREV_ON"), switch(&c, "WEIR_CT4_PREV_ON")), (vec![CARRY_OVER_V1], vec![CARRY_OVER_WIDE]));
        assert_eq!(pinned(&p, maps::CT_PREV_V1), Some(layout.map(maps::CT)));
        // A split resumed with a new IPv4 size: one switch for WEIR_CT4
        // (WIDE reads WEIR_CT4_PREV first), both old maps pinned.
        let (c, p) = carry_over(&layout, &[(exp(maps::CT), 2), (exp(maps::CT4), 1)]);
        assert_eq!(switch(&c, "WEIR_CT4_PREV_ON"), vec![CARRY_OVER_WIDE]);
        assert!(pinned(&p, maps::CT4_PREV).is_some() && pinned(&p, maps::CT_PREV_V3).is_some());
        // A new IPv6 size only: nothing for IPv4.
        let (c, _) = carry_over(&layout, &[(exp(maps::CT), 4)]);
        assert_eq!((switch(&c, "WEIR_CT_PREV_ON"), switch(&c, "WEIR_CT4_PREV_ON")), (vec![CARRY_OVER_SAME], vec![]));
    }

    #[test]
    fn link_pins_name_their_program() {
        assert_eq!(program_of("weir0123456789a@12@from_pod"), Some(("pod", "from_pod")));
        assert_eq!(program_of("eth0@2@to_net"), Some(("node", "to_net")));
        assert_eq!(program_of("eth0@2@xdp"), Some(("node", crate::xdp::XDP_PROGRAM)));
        assert_eq!(program_of("cgroup-connect4"), Some(("sock", "connect4")));
        assert_eq!(program_of("cgroup-sock_release"), Some(("sock", "sock_release")));
        assert_eq!(program_of("cgroup-tcp_state"), None, "retired: its link is removed at attach, not given a new program");
        assert_eq!(program_of("cgroup-connect4-new"), None);
        assert_eq!(program_of("README"), None);
    }
}
