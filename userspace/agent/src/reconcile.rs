//! Reconcile: desired state (the pure translation of the cluster state)
//! against what is programmed, as the smallest set of map writes.
//!
//! - `apply` re-translates only the services a change touched and writes
//!   only the frontends whose spec changed: one changed endpoint costs a
//!   handful of writes, never a rebuild.
//! - `full_sync` makes the maps exactly the desired state (used once the
//!   source has delivered everything, so a restart never flushes first).
//! - `resync` also repairs drift: entries changed or deleted behind the
//!   agent's back come back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use weir_datapath::{
    lb::{build_tables, build_threads, Lb},
    DatapathError,
};

use crate::policy::{PolicyOutcome, PolicyPath, PolicyReconciler};
use weir_desired::{Frontend, ServiceSpec};
use weir_model::{
    state::{Affected, ServiceKey},
    nodeport::NodePortAddresses,
    translate::{translate_all, translate_key, NodeContext},
    ClusterState,
};

/// Services per window of a large batch whose new selection tables are
/// built ahead on every core (at 10 endpoints, 1,009 slots each: about
/// 8 MiB of tables held at once).
const PREBUILD_WINDOW: usize = 2048;

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub services: usize,
    pub map_writes: usize,
    pub ct_purged: usize,
    /// Backends services stopped listing (connected UDP sockets of the
    /// node's processes may point at them).
    pub members_dropped: usize,
    pub repairs: usize,
    /// Policy map writes (endpoints, ipcache, entries).
    pub policy_writes: usize,
    /// How policy was translated, if it was.
    pub policy_path: Option<PolicyPath>,
    /// The reconcile's own time (translation and map writes), apart from
    /// the time the change waited for it.
    pub work: std::time::Duration,
    pub errors: Vec<(String, DatapathError)>,
}

impl Outcome {
    fn add_policy(&mut self, p: PolicyOutcome) {
        self.policy_writes += p.map_writes;
        self.errors.extend(p.errors);
    }
}

pub struct Reconciler {
    lb: Lb,
    policy: PolicyReconciler,
    node_name: Option<String>,
    /// `--nodeport-addresses`.
    nodeport: NodePortAddresses,
    /// The addresses on the uplink devices (NodePort candidates).
    device_addrs: Vec<std::net::IpAddr>,
    /// `--masquerade-all`.
    masquerade_all: bool,
    ctx: NodeContext,
    /// Programmed specs per service.
    programmed: BTreeMap<ServiceKey, Vec<ServiceSpec>>,
    /// Which service owns each frontend (two services claiming one
    /// frontend is bad input: the first keeps it).
    owners: HashMap<Frontend, ServiceKey>,
}

impl Reconciler {
    pub fn new(lb: Lb, policy: PolicyReconciler, node_name: Option<String>, nodeport: NodePortAddresses, masquerade_all: bool) -> Self {
        Self {
            lb,
            policy,
            node_name,
            nodeport,
            device_addrs: Vec::new(),
            masquerade_all,
            ctx: NodeContext::default(),
            programmed: BTreeMap::new(),
            owners: HashMap::new(),
        }
    }

    /// Records the addresses on the uplinks; true when they changed, and
    /// every service needs translating again (NodePorts may move).
    pub fn set_device_addrs(&mut self, mut addrs: Vec<std::net::IpAddr>) -> bool {
        addrs.sort();
        addrs.dedup();
        if addrs == self.device_addrs {
            return false;
        }
        self.device_addrs = addrs;
        true
    }

    fn node_context(&self, state: &ClusterState) -> NodeContext {
        let mut ctx = NodeContext::with_nodeports(state, self.node_name.as_deref(), &self.nodeport, &self.device_addrs);
        ctx.masquerade_all = self.masquerade_all;
        ctx
    }


    pub fn lb(&mut self) -> &mut Lb {
        &mut self.lb
    }

    pub fn policy(&self) -> &PolicyReconciler {
        &self.policy
    }

    /// Re-translates the services `affected` names and programs the difference.
    pub fn apply(&mut self, state: &ClusterState, affected: &Affected) -> Outcome {
        let start = std::time::Instant::now();
        let mut out = Outcome::default();
        let keys: BTreeSet<ServiceKey> = if affected.all {
            self.ctx = self.node_context(state);
            state.service_keys().into_iter().chain(self.programmed.keys().cloned()).collect()
        } else {
            affected.services.clone()
        };
        let batch: Vec<(ServiceKey, Vec<ServiceSpec>)> = keys.into_iter().map(|k| {
            let specs = translate_key(state, &k, &self.ctx);
            (k, specs)
        }).collect();
        self.program_batch(batch, &mut out);
        if affected.policies {
            let (p, path) = self.policy.reconcile_policies(state);
            out.add_policy(p);
            out.policy_path = Some(path);
        }
        // A full translation above already took the pods and namespaces in.
        if (!affected.pods.is_empty() || !affected.namespaces.is_empty()) && out.policy_path != Some(PolicyPath::Full) {
            let (p, path) = self.policy.reconcile_pods(state, &affected.pods, &affected.namespaces);
            out.add_policy(p);
            out.policy_path = Some(path);
        }
        out.work = start.elapsed();
        out
    }

    /// Makes the maps exactly the desired state of `state`, removing
    /// anything programmed (by this or an earlier agent) that is not desired.
    /// Rebuilds the mirrors of what is programmed in bulk, once the
    /// initial sync is in (`ClusterState::pack`).
    pub fn pack(&mut self) {
        self.programmed = std::mem::take(&mut self.programmed).into_iter().collect();
        self.lb.pack();
        self.policy.pack();
    }

    pub fn full_sync(&mut self, state: &ClusterState) -> Outcome {
        self.ctx = self.node_context(state);
        let mut out = Outcome::default();
        let desired = translate_all(state, &self.ctx);
        let stale: Vec<ServiceKey> = self.programmed.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        let batch = stale.into_iter().map(|k| (k, Vec::new())).chain(desired).collect();
        self.program_batch(batch, &mut out);
        // Frontends in the maps that no service wants (left by an earlier agent).
        let wanted: BTreeSet<Frontend> = self.owners.keys().copied().collect();
        for f in self.lb.frontends() {
            if !wanted.contains(&f) {
                match self.lb.remove(&f) {
                    Ok(s) => {
                        out.map_writes += s.map_writes;
                        out.ct_purged += s.ct_purged;
                        out.members_dropped += s.members_dropped;
                    }
                    Err(e) => out.errors.push((f.to_string(), e)),
                }
            }
        }
        // Backends no service lists any more (the non-ready ones of services
        // deleted while no agent ran: adoption counts only table members).
        match self.lb.prune_unreferenced() {
            Ok(st) => {
                out.map_writes += st.map_writes;
                out.ct_purged += st.ct_purged;
            }
            Err(e) => out.errors.push(("unreferenced backends".into(), e)),
        }
        out.add_policy(self.policy.reconcile(state));
        out.policy_path = Some(PolicyPath::Full);
        out
    }

    /// Programs a batch of services: first every frontend they give up,
    /// then every upsert, so that a frontend one service releases in the
    /// batch (a Service deleted, another created with its IP) is taken
    /// by the other at once instead of at the next resync.
    fn program_batch(&mut self, batch: Vec<(ServiceKey, Vec<ServiceSpec>)>, out: &mut Outcome) {
        let mut touched = BTreeSet::new();
        for (k, specs) in &batch {
            if self.release(k, specs, out) {
                touched.insert(k.clone());
            }
        }
        // The selection table grows once for the whole batch, if it must.
        let wanted = self.lb.slots_wanted(batch.iter().flat_map(|(_, specs)| specs));
        if let Err(e) = self.lb.reserve(wanted) {
            out.errors.push(("the selection table".into(), e));
        }
        // A window at a time, programmed in order, its new Maglev tables
        // built ahead (`Lb::prebuild_jobs`, `build_tables`): the first
        // window's on every core, each next one's on the other cores while
        // this thread programs the window before it. The selection table
        // is mapped in large spans meanwhile (`Lb::bulk`).
        self.lb.bulk(true);
        let mut windows: Vec<Vec<(ServiceKey, Vec<ServiceSpec>)>> = Vec::new();
        let mut rest = batch.into_iter();
        loop {
            let window: Vec<(ServiceKey, Vec<ServiceSpec>)> = rest.by_ref().take(PREBUILD_WINDOW).collect();
            if window.is_empty() {
                break;
            }
            windows.push(window);
        }
        let jobs = |lb: &Lb, w: &[(ServiceKey, Vec<ServiceSpec>)]| lb.prebuild_jobs(w.iter().flat_map(|(_, specs)| specs));
        let all = build_threads();
        let beside = all.saturating_sub(1).max(1);
        std::thread::scope(|scope| {
            let mut ahead = windows.first().map(|w| build_tables(jobs(&self.lb, w), all));
            let mut windows = windows.into_iter().peekable();
            while let Some(window) = windows.next() {
                if let Some(built) = ahead.take() {
                    self.lb.take_prebuilt(built);
                }
                let next = windows.peek().map(|w| {
                    let j = jobs(&self.lb, w);
                    scope.spawn(move || build_tables(j, beside))
                });
                for (k, specs) in window {
                    if self.program(&k, specs, out) {
                        touched.insert(k);
                    }
                }
                self.lb.clear_prebuilt();
                // A builder that failed leaves its tables to be built in place.
                ahead = next.and_then(|h| h.join().ok());
            }
        });
        self.lb.bulk(false);
        out.services += touched.len();
    }

    /// Removes the frontends of `key` that `specs` no longer has; returns
    /// whether it removed any. A frontend whose removal fails stays
    /// programmed (and owned), for the next attempt.
    fn release(&mut self, key: &ServiceKey, specs: &[ServiceSpec], out: &mut Outcome) -> bool {
        let Some(old) = self.programmed.get(key) else { return false };
        let wanted: BTreeSet<Frontend> = specs.iter().map(|s| s.frontend).collect();
        let (keep, gone): (Vec<ServiceSpec>, Vec<ServiceSpec>) = old.iter().cloned().partition(|o| wanted.contains(&o.frontend));
        if gone.is_empty() {
            return false;
        }
        let mut kept = keep;
        for o in gone {
            match self.lb.remove(&o.frontend) {
                Ok(s) => {
                    out.map_writes += s.map_writes;
                    out.ct_purged += s.ct_purged;
                    out.members_dropped += s.members_dropped;
                    self.owners.remove(&o.frontend);
                }
                Err(e) => {
                    out.errors.push((o.frontend.to_string(), e));
                    kept.push(o);
                }
            }
        }
        if kept.is_empty() {
            self.programmed.remove(key);
        } else {
            self.programmed.insert(key.clone(), kept);
        }
        true
    }

    /// Repairs drift between the maps and what was programmed, then
    /// re-checks the desired state.
    pub fn resync(&mut self, state: &ClusterState) -> Outcome {
        let repairs = match self.lb.repair() {
            Ok(n) => n,
            Err(e) => {
                let mut out = Outcome::default();
                out.errors.push(("repair".into(), e));
                return out;
            }
        };
        let policy = self.policy.repair();
        let policy_repairs = policy.map_writes;
        let mut out = self.full_sync(state);
        out.add_policy(policy);
        out.repairs = repairs + policy_repairs;
        out
    }

    /// Upserts the new and changed frontends of `key` (after [`Self::release`]
    /// removed the vanished ones); returns whether anything changed.
    fn program(&mut self, key: &ServiceKey, mut specs: Vec<ServiceSpec>, out: &mut Outcome) -> bool {
        let released = self.release(key, &specs, out);
        let old = self.programmed.get(key).cloned().unwrap_or_default();
        // Frontend conflicts: the first owner keeps the frontend.
        specs.retain(|s| match self.owners.get(&s.frontend) {
            Some(owner) if owner != key => {
                tracing::warn!(service = %format!("{}/{}", key.0, key.1), frontend = %s.frontend, owner = %format!("{}/{}", owner.0, owner.1), "frontend already belongs to another service; ignored");
                false
            }
            _ => true,
        });
        if specs == old {
            return released;
        }
        // Exact: a pushed Vec starts with room for four specs, and 10,000
        // services keep theirs for their life.
        let mut kept = Vec::with_capacity(specs.len());
        for spec in &specs {
            if old.iter().any(|o| o == spec) {
                kept.push(spec.clone());
                continue;
            }
            match self.lb.upsert(spec) {
                Ok(s) => {
                    out.map_writes += s.map_writes;
                    out.ct_purged += s.ct_purged;
                    out.members_dropped += s.members_dropped;
                    self.owners.insert(spec.frontend, key.clone());
                    kept.push(spec.clone());
                }
                Err(e) => {
                    out.errors.push((spec.frontend.to_string(), e));
                    // A failed upsert leaves the maps as they were: a
                    // frontend that was programmed stays so, and ours, so a
                    // later change retries it and a delete removes it.
                    if let Some(o) = old.iter().find(|o| o.frontend == spec.frontend) {
                        kept.push(o.clone());
                    }
                }
            }
        }
        if kept.is_empty() {
            self.programmed.remove(key);
        } else {
            self.programmed.insert(key.clone(), kept);
        }
        true
    }
}
