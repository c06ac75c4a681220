//! Loading the pod object with its maps pinned under `--bpffs`. Maps that
//! are already pinned are reused, so a restarted agent keeps all state.

use std::collections::HashMap;

use aya::{
    maps::{Array, PerCpuHashMap},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use weir_common::{
    config::DatapathConfig,
    maps::{
        BACKENDS, BACKENDS_MAX_ENTRIES, CONFIG, CT, CT4, CT6_MASQ, CT6_MAX_ENTRIES, CT_MAX_ENTRIES, FRONTENDS, FRONTENDS_MAX_ENTRIES, IF_STATS, LB_TABLE, LB_TABLE_MAX_ENTRIES, SNAT, SVC_ADDRS, SVC_TIMES,
        SNAT_MAX_ENTRIES,
    },
    stats::{Direction, IfStats, IfStatsKey},
};

use crate::{
    attach::{attach_pinned, remove_pin, AttachOutcome, Hook},
    kernel_log::{self, KernelLogLevel},
    objects::POD_OBJECT,
    pins::PinLayout,
    DatapathError,
};

/// Map sizes chosen at load time (a pinned map keeps the size it was
/// created with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Slots in WEIR_LB_TABLE (each service takes a prime ≥ 100 × backends).
    pub lb_table_slots: u32,
    /// Entries in WEIR_FRONTENDS: one per service port and frontend kind,
    /// plus one per service address (the marker that rejects its other
    /// ports).
    pub frontends: u32,
    /// Entries in WEIR_BACKENDS (one per distinct backend address, port
    /// and protocol).
    pub backends: u32,
    /// Entries in WEIR_CT4, IPv4 conntrack (two per service flow).
    pub ct_entries: u32,
    /// Entries in WEIR_CT, IPv6 conntrack (two per service flow).
    pub ct6_entries: u32,
    /// Entries in WEIR_SNAT (two per masqueraded flow).
    pub snat_entries: u32,
    /// How much the kernel's verifier says when it loads the programs (its
    /// log ends up in a load error).
    pub verifier_log: VerifierLog,
    /// The programs' own debug logs (aya-log), fixed at load time; off
    /// removes every log call.
    pub kernel_log: KernelLogLevel,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            lb_table_slots: LB_TABLE_MAX_ENTRIES,
            frontends: FRONTENDS_MAX_ENTRIES,
            backends: BACKENDS_MAX_ENTRIES,
            ct_entries: CT_MAX_ENTRIES,
            ct6_entries: CT6_MAX_ENTRIES,
            snat_entries: SNAT_MAX_ENTRIES,
            verifier_log: VerifierLog::default(),
            kernel_log: KernelLogLevel::Off,
        }
    }
}

/// The verifier's log level (`--bpf-verifier-log-level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifierLog {
    /// No log.
    Off,
    /// The instructions that failed, and statistics (aya's default).
    #[default]
    Debug,
    /// Every instruction's verifier state, and statistics.
    Verbose,
    /// Statistics only.
    Stats,
}

impl From<VerifierLog> for aya::VerifierLogLevel {
    fn from(v: VerifierLog) -> Self {
        match v {
            VerifierLog::Off => Self::DISABLE,
            VerifierLog::Debug => Self::DEBUG | Self::STATS,
            VerifierLog::Verbose => Self::VERBOSE | Self::STATS,
            VerifierLog::Stats => Self::STATS,
        }
    }
}

impl LoadOptions {
    /// These options with the selection table at least as large as the
    /// pinned one: the table grows at runtime as services need it (see
    /// [`crate::lb::Lb::grow_with`]) and never shrinks, so
    /// `--lb-table-slots` is its initial size.
    pub fn keeping_pinned_table(mut self, layout: &PinLayout) -> Result<Self, DatapathError> {
        if let Some((_, shape)) = crate::migrate::inspect::pinned_shape(&layout.map(LB_TABLE))? {
            self.lb_table_slots = self.lb_table_slots.max(shape.max_entries);
        }
        Ok(self)
    }
}

/// What an object was loaded over: a map the options size that is rebuilt
/// at runtime (the selection table growing) leaves the object's programs
/// on the old map, so it is loaded again before its next attach.
#[derive(Clone, Debug)]
struct LoadedOver {
    opts: LoadOptions,
    maps: Vec<Option<u32>>,
}

impl LoadedOver {
    fn now(layout: &PinLayout, opts: &LoadOptions) -> Self {
        Self { opts: *opts, maps: sized_map_ids(layout) }
    }

    /// The options to load the object again with, when a sized map was
    /// rebuilt since it was loaded.
    fn stale(&self, layout: &PinLayout, object: &'static str) -> Result<Option<LoadOptions>, DatapathError> {
        if sized_map_ids(layout) == self.maps {
            return Ok(None);
        }
        if !self.opts.kernel_log.is_off() {
            tracing::warn!(object, "loading the object again over a rebuilt map: its kernel debug logs are no longer read");
        }
        tracing::info!(object, "a pinned map was rebuilt: loading the object again before attaching");
        self.opts.keeping_pinned_table(layout).map(Some)
    }
}

/// The ids of the pinned maps the load options size.
fn sized_map_ids(layout: &PinLayout) -> Vec<Option<u32>> {
    sized_maps(&LoadOptions::default())
        .iter()
        .map(|(name, _)| crate::migrate::inspect::pinned_shape(&layout.map(name)).ok().flatten().map(|(id, _)| id))
        .collect()
}

/// The maps whose capacity the load options choose.
pub(crate) fn sized_maps(opts: &LoadOptions) -> [(&'static str, u32); 9] {
    [
        (LB_TABLE, opts.lb_table_slots.max(1)),
        (FRONTENDS, opts.frontends.max(2)),
        (SVC_ADDRS, opts.frontends.max(2)),
        (SVC_TIMES, opts.frontends.max(2)),
        (BACKENDS, opts.backends.max(1)),
        (CT4, opts.ct_entries.max(2)),
        (CT, opts.ct6_entries.max(2)),
        (CT6_MASQ, weir_common::maps::ct6_masq_entries(opts.ct6_entries)),
        (SNAT, opts.snat_entries.max(2)),
    ]
}

/// Loads an object over the pinned maps, sizing the maps `opts` sizes
/// (whichever object loads first creates and pins them).
///
/// A map staged by a migration (`<bpffs>/maps-next/<name>`, see
/// [`crate::migrate`]) is used instead of the one in `maps/`.
pub(crate) fn load_object(layout: &PinLayout, opts: &LoadOptions, bytes: &[u8], object: &'static str) -> Result<Ebpf, DatapathError> {
    load_object_with(layout, opts, bytes, object, &[], &[])
}

/// [`load_object`], with some maps' pins chosen by the caller (name,
/// absolute pin path), and some `u8` constants set (conntrack's and
/// masquerade's carry-over during a migration, `WEIR_CT_PREV_ON`,
/// `WEIR_CT4_PREV_ON` and `WEIR_SNAT_PREV_ON`; see [`crate::migrate`]).
pub(crate) fn load_object_with(
    layout: &PinLayout,
    opts: &LoadOptions,
    bytes: &[u8],
    object: &'static str,
    pins: &[(&'static str, std::path::PathBuf)],
    constants: &[(&'static str, u8)],
) -> Result<Ebpf, DatapathError> {
    let level = opts.kernel_log.global();
    let staged: Vec<(String, std::path::PathBuf)> = match std::fs::read_dir(layout.staging_dir()) {
        Ok(entries) => entries.flatten().filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path()))).collect(),
        Err(_) => Vec::new(),
    };
    let mut loader = EbpfLoader::new();
    loader.verifier_log_level(opts.verifier_log.into()).default_map_pin_directory(layout.maps_dir());
    for (name, size) in sized_maps(opts) {
        loader.map_max_entries(name, size);
    }
    for (name, path) in &staged {
        loader.map_pin_path(name.as_str(), path.as_path());
    }
    for (name, path) in pins {
        loader.map_pin_path(name, path.as_path());
    }
    for (name, value) in constants {
        // Not every object has them (the socket object has no conntrack).
        loader.override_global(name, value, false);
    }
    kernel_log::configure(&mut loader, &level);
    loader.load(bytes).map_err(|source| DatapathError::Load { object, source })
}

/// Loads the object's programs for `hooks` into the kernel.
fn load_programs(ebpf: &mut Ebpf, hooks: &[Hook], object: &'static str) -> Result<(), DatapathError> {
    for hook in hooks {
        let name = hook.as_str();
        let prog: &mut SchedClassifier =
            ebpf.program_mut(name).ok_or(DatapathError::MissingProgram { object, name })?.try_into().map_err(|source| DatapathError::Program { name, source })?;
        prog.load().map_err(|source| DatapathError::Program { name, source })?;
    }
    Ok(())
}

/// The loaded pod object.
pub struct PodDatapath {
    ebpf: Ebpf,
    layout: PinLayout,
    over: LoadedOver,
}

impl PodDatapath {
    /// Loads the pod object with default map sizes.
    pub fn load(layout: &PinLayout) -> Result<Self, DatapathError> {
        Self::load_with(layout, &LoadOptions::default())
    }

    /// Loads the pod object, creating or reusing the pinned maps.
    pub fn load_with(layout: &PinLayout, opts: &LoadOptions) -> Result<Self, DatapathError> {
        layout.ensure_dirs()?;
        let mut ebpf = load_object(layout, opts, POD_OBJECT, "pod")?;
        load_programs(&mut ebpf, &Hook::POD, "pod")?;
        Ok(Self { ebpf, layout: layout.clone(), over: LoadedOver::now(layout, opts) })
    }

    /// Loads the object again when a map it uses was rebuilt since.
    fn refresh(&mut self) -> Result<(), DatapathError> {
        if let Some(opts) = self.over.stale(&self.layout, "pod")? {
            *self = Self::load_with(&self.layout.clone(), &opts)?;
        }
        Ok(())
    }

    /// Writes the runtime configuration the kernel reads per packet.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(CONFIG)
            .ok_or(DatapathError::Map { name: CONFIG, source: aya::maps::MapError::InvalidName { name: CONFIG.into() } })?;
        let mut arr: Array<_, DatapathConfig> =
            Array::try_from(map).map_err(|source| DatapathError::Map { name: CONFIG, source })?;
        arr.set(0, cfg, 0).map_err(|source| DatapathError::Map { name: CONFIG, source })
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The reader of the object's kernel debug logs, handing records to
    /// `sink` (see [`kernel_log`]: keep it as long as the object). Only
    /// for an object loaded with logs on.
    pub fn kernel_log<T: log::Log>(&mut self, sink: T) -> Result<aya_log::EbpfLogger<T>, DatapathError> {
        kernel_log::take(&mut self.ebpf, "pod", sink)
    }

    /// The program for `hook`, for attaching or for BPF_PROG_TEST_RUN.
    pub fn program(&self, hook: Hook) -> Result<&SchedClassifier, DatapathError> {
        let name = hook.as_str();
        let prog = self
            .ebpf
            .program(name)
            .ok_or(DatapathError::MissingProgram { object: "pod", name })?;
        prog.try_into().map_err(|source| DatapathError::Program { name, source })
    }

    fn program_mut(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
        let name = hook.as_str();
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram { object: "pod", name })?;
        prog.try_into().map_err(|source| DatapathError::Program { name, source })
    }

    /// Attaches both pod programs to a host-side pod veth.
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<[AttachOutcome; 2], DatapathError> {
        self.refresh()?;
        let layout = self.layout.clone();
        let mut out = [AttachOutcome::Created; 2];
        for (i, hook) in Hook::POD.into_iter().enumerate() {
            out[i] = attach_pinned(self.program_mut(hook)?, &layout, ifname, ifindex, hook)?;
        }
        Ok(out)
    }

    /// Forgets an interface that is gone: removes its link pins and counters.
    pub fn release(&mut self, ifname: &str, ifindex: u32) -> Result<(), DatapathError> {
        for hook in Hook::ALL {
            remove_pin(&self.layout.link(ifname, ifindex, hook))?;
        }
        let map = self
            .ebpf
            .map_mut(IF_STATS)
            .ok_or(DatapathError::Map { name: IF_STATS, source: aya::maps::MapError::InvalidName { name: IF_STATS.into() } })?;
        let mut stats: PerCpuHashMap<_, IfStatsKey, IfStats> =
            PerCpuHashMap::try_from(map).map_err(|source| DatapathError::Map { name: IF_STATS, source })?;
        for dir in [Direction::FromPod, Direction::ToPod] {
            let key = IfStatsKey { ifindex, direction: dir as u32 };
            match crate::error::deleted(stats.remove(&key)) {
                Ok(()) => {}
                Err(source) => return Err(DatapathError::Map { name: IF_STATS, source }),
            }
        }
        Ok(())
    }

    /// Releases every pinned interface that is not in `live` (ifindex → name).
    /// Returns the pins that were pruned.
    pub fn prune(&mut self, live: &HashMap<u32, String>) -> Result<Vec<String>, DatapathError> {
        let mut pruned = Vec::new();
        for pin in self.layout.link_pins()? {
            if live.get(&pin.ifindex) != Some(&pin.ifname) {
                self.release(&pin.ifname, pin.ifindex)?;
                pruned.push(format!("{}@{}", pin.ifname, pin.ifindex));
            }
        }
        pruned.dedup();
        Ok(pruned)
    }
}

/// The loaded node object (`from_net` on the node's uplink devices),
/// sharing the pod object's pinned maps.
pub struct NodeDatapath {
    ebpf: Ebpf,
    layout: PinLayout,
    over: LoadedOver,
}

impl NodeDatapath {
    /// Loads the node object over the maps the pod object pinned (load
    /// the pod object first; `opts` sizes a map only it would create).
    pub fn load(layout: &PinLayout, opts: &LoadOptions) -> Result<Self, DatapathError> {
        layout.ensure_dirs()?;
        let mut ebpf = load_object(layout, opts, crate::objects::NODE_OBJECT, "node")?;
        load_programs(&mut ebpf, &Hook::NODE, "node")?;
        Ok(Self { ebpf, layout: layout.clone(), over: LoadedOver::now(layout, opts) })
    }

    /// Loads the object again when a map it uses was rebuilt since.
    fn refresh(&mut self) -> Result<(), DatapathError> {
        if let Some(opts) = self.over.stale(&self.layout, "node")? {
            *self = Self::load(&self.layout.clone(), &opts)?;
        }
        Ok(())
    }

    /// The program for `hook`, for attaching or for BPF_PROG_TEST_RUN.
    pub fn program(&self, hook: Hook) -> Result<&SchedClassifier, DatapathError> {
        let name = hook.as_str();
        let prog = self.ebpf.program(name).ok_or(DatapathError::MissingProgram { object: "node", name })?;
        prog.try_into().map_err(|source| DatapathError::Program { name, source })
    }

    fn program_mut(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
        let name = hook.as_str();
        let prog = self.ebpf.program_mut(name).ok_or(DatapathError::MissingProgram { object: "node", name })?;
        prog.try_into().map_err(|source| DatapathError::Program { name, source })
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// The reader of the object's kernel debug logs (see
    /// [`PodDatapath::kernel_log`]). Keep it as long as the object: the
    /// XDP program loads on first use, with the log ring buffer's descriptor.
    pub fn kernel_log<T: log::Log>(&mut self, sink: T) -> Result<aya_log::EbpfLogger<T>, DatapathError> {
        kernel_log::take(&mut self.ebpf, "node", sink)
    }

    /// Attaches the node programs to an uplink device.
    pub fn attach(&mut self, ifname: &str, ifindex: u32) -> Result<[AttachOutcome; 2], DatapathError> {
        self.refresh()?;
        let layout = self.layout.clone();
        let from = attach_pinned(self.program_mut(Hook::FromNet)?, &layout, ifname, ifindex, Hook::FromNet)?;
        let to = attach_pinned(self.program_mut(Hook::ToNet)?, &layout, ifname, ifindex, Hook::ToNet)?;
        Ok([from, to])
    }

    /// Attaches the tunnel programs to the VXLAN device.
    pub fn attach_tunnel(&mut self, ifname: &str, ifindex: u32) -> Result<[AttachOutcome; 2], DatapathError> {
        self.refresh()?;
        let layout = self.layout.clone();
        let to = attach_pinned(self.program_mut(Hook::ToTunnel)?, &layout, ifname, ifindex, Hook::ToTunnel)?;
        let from = attach_pinned(self.program_mut(Hook::FromTunnel)?, &layout, ifname, ifindex, Hook::FromTunnel)?;
        Ok([to, from])
    }

    /// Attaches the XDP fast path to an uplink in native (driver) mode,
    /// loading it on first use.
    pub fn attach_xdp(&mut self, ifname: &str, ifindex: u32) -> Result<AttachOutcome, DatapathError> {
        self.refresh()?;
        let name = crate::xdp::XDP_PROGRAM;
        let prog: &mut aya::programs::Xdp =
            self.ebpf.program_mut(name).ok_or(DatapathError::MissingProgram { object: "node", name })?.try_into().map_err(|source| DatapathError::Program { name, source })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DatapathError::Program { name, source })?;
        }
        crate::xdp::attach_pinned(prog, &self.layout, ifname, ifindex)
    }
}
