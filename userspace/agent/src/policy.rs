//! Policy reconcile: the cluster's NetworkPolicies, weir policies, pods
//! and namespaces →
//! ids → the pure translation → an ordered transition of the policy maps
//! (see `weir_datapath::policy` for why the order never opens a window).

use std::collections::BTreeSet;

use weir_common::policy::ID_CIDR_FIRST;
use weir_datapath::{policy::{PolicyMaps, PolicyWrites}, DatapathError, PinLayout};
use weir_desired::policy::Prefix;
use weir_model::{
    policy::{
        pod_delta::{PodIndex, PodKey},
        translate::{assign, is_local, label_key, names, translate, translate_indexed},
        CompiledPolicy, Ids,
    },
    validate::FieldError,
    ClusterState, Kind, ObjectKey,
};

/// What one policy reconcile did.
#[derive(Debug, Default)]
pub struct PolicyOutcome {
    pub map_writes: usize,
    pub errors: Vec<(String, DatapathError)>,
}

pub struct PolicyReconciler {
    maps: PolicyMaps,
    ids: Ids,
    node: Option<String>,
    /// The policies and CIDRs last programmed; `None` before the first
    /// reconcile (the maps then hold what an earlier agent programmed).
    last: Option<(Vec<CompiledPolicy>, BTreeSet<Prefix>)>,
    /// The policies with parts that failed to compile (and fail closed).
    failed: Vec<(ObjectKey, Vec<FieldError>)>,
    /// What the last full reconcile knew, for translating pod changes
    /// alone; `None` until then, and after a delta could not say.
    index: Option<PodIndex>,
}

/// Pod changes in one batch (a relist, or a relabelled Namespace's pods)
/// above which the whole policy is translated again: one pass beats many
/// deltas.
const DELTA_MAX_PODS: usize = 1024;

/// How one policy reconcile went, for the log and the tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyPath {
    /// Everything translated again.
    Full,
    /// Only the changed pods.
    Delta,
}

fn cidrs_of(policies: &[CompiledPolicy]) -> BTreeSet<Prefix> {
    policies.iter().flat_map(CompiledPolicy::cidrs).collect()
}

impl PolicyReconciler {
    /// See `Reconciler::pack`.
    pub fn pack(&mut self) {
        self.maps.pack();
    }

    #[allow(clippy::result_large_err)] // once, at start-up
    pub fn open(layout: &PinLayout, node: Option<String>) -> Result<Self, DatapathError> {
        Ok(Self { maps: PolicyMaps::open(layout)?, ids: Ids::new(), node, last: None, failed: Vec::new(), index: None })
    }

    /// Reuses the ids an earlier agent left in the maps, so a restart
    /// rewrites nothing.
    fn adopt(&mut self, state: &ClusterState, cidrs: &BTreeSet<Prefix>) {
        let world = state.policy_world();
        let current = self.maps.current().clone();
        for pod in &world.pods {
            for ip in &pod.ips {
                if let Some(info) = current.ipcache.get(&Prefix::host(*ip)) {
                    self.ids.adopt_pod(label_key(&world, pod, cidrs), info.identity);
                }
                if let Some(ep) = current.endpoints.get(ip).filter(|_| is_local(pod, self.node.as_deref())) {
                    self.ids.adopt_endpoint((pod.namespace.clone(), pod.name.clone()), ep.id);
                }
            }
        }
        for (p, info) in &current.ipcache {
            if cidrs.contains(p) {
                let id = if info.identity >= ID_CIDR_FIRST { info.identity } else { info.cidr_identity };
                self.ids.adopt_cidr(*p, id);
            }
        }
    }

    /// Programs the policy state of `state`.
    pub fn reconcile(&mut self, state: &ClusterState) -> PolicyOutcome {
        let node = self.node.clone();
        let node = node.as_deref();
        // The old index goes first: two at once would double its memory.
        self.index = None;
        let compiled = state.compiled_policies();
        self.report_failed(&compiled);
        let policies: Vec<CompiledPolicy> = compiled.into_iter().map(|(_, c)| c.policy).collect();
        let world = state.policy_world();
        let new_cidrs = cidrs_of(&policies);
        if self.last.is_none() {
            self.adopt(state, &new_cidrs);
        }
        let (old_policies, old_cidrs) = self.last.take().unwrap_or_else(|| (policies.clone(), new_cidrs.clone()));
        let union: BTreeSet<Prefix> = old_cidrs.union(&new_cidrs).copied().collect();
        assign(&mut self.ids, &old_policies, &world, &union, node);
        assign(&mut self.ids, &policies, &world, &union, node);
        // Pod identities depend on the CIDR set (translate::label_key).
        assign(&mut self.ids, &policies, &world, &new_cidrs, node);
        // Three translations in general (see weir_datapath::policy); one
        // when only pods or namespaces changed and the CIDR set is the same.
        let (fin, translated) = translate_indexed(&policies, &world, &self.ids, &new_cidrs, node);
        let new_rules = if union == new_cidrs { fin.clone() } else { translate(&policies, &world, &self.ids, &union, node) };
        let old_rules = if old_policies == policies { new_rules.clone() } else { translate(&old_policies, &world, &self.ids, &union, node) };
        let names = names(&policies, &world, &self.ids, &new_cidrs, node);
        let mut w = PolicyWrites::default();
        self.maps.set_names(&names, &mut w);
        self.maps.transition_into(&old_rules, &new_rules, &fin, &mut w);
        self.maps.prune_names(&names, &mut w);
        self.retain_ids(&world, &new_cidrs);
        self.index = PodIndex::build(&world, &new_cidrs, node, translated);
        tracing::debug!(endpoints = fin.endpoints.len(), entries = fin.entries.len(), ipcache = fin.ipcache.len(), writes = w.map_writes, "policy translated");
        let out = PolicyOutcome { map_writes: w.map_writes, errors: w.errors };
        self.last = Some((policies, new_cidrs));
        out
    }

    /// Programs the policy state of `state` after only policy objects
    /// changed: the changed policies' delta when it can be had
    /// (`PodIndex::apply_policies`), everything otherwise.
    pub fn reconcile_policies(&mut self, state: &ClusterState) -> (PolicyOutcome, PolicyPath) {
        if self.index.is_some() && self.last.is_some() {
            let compiled = state.compiled_policies();
            self.report_failed(&compiled);
            let policies: Vec<CompiledPolicy> = compiled.into_iter().map(|(_, c)| c.policy).collect();
            if let (Some(index), Some((old, cidrs))) = (self.index.as_mut(), self.last.as_ref()) {
                if let Some(d) = index.apply_policies(old, &policies, &mut self.ids, self.maps.current()) {
                    let cidrs = cidrs.clone();
                    let out = self.apply_delta(&d, "policies");
                    self.last = Some((policies, cidrs));
                    return (out, PolicyPath::Delta);
                }
            }
        }
        self.index = None;
        (self.reconcile(state), PolicyPath::Full)
    }

    /// Writes a delta; after a failed write the next change translates in
    /// full (and so retries).
    fn apply_delta(&mut self, d: &weir_desired::policy::PolicyDelta, what: &str) -> PolicyOutcome {
        let mut w = PolicyWrites::default();
        self.maps.apply_delta(d, &mut w);
        if !w.errors.is_empty() {
            self.index = None;
        }
        tracing::debug!(what, writes = w.map_writes, "policy delta");
        PolicyOutcome { map_writes: w.map_writes, errors: w.errors }
    }

    /// Programs the policy state of `state` after only `pods` and the
    /// Namespace objects `namespaces` changed: the delta of those pods and
    /// of every pod in those namespaces when it can be had (`pod_delta`),
    /// everything otherwise.
    pub fn reconcile_pods(&mut self, state: &ClusterState, pods: &BTreeSet<PodKey>, namespaces: &BTreeSet<String>) -> (PolicyOutcome, PolicyPath) {
        if let (Some(index), Some((policies, _))) = (self.index.as_mut(), self.last.as_ref()) {
            let relabelled: Vec<(String, Option<weir_model::policy::selector::Labels>)> = namespaces.iter().map(|ns| (ns.clone(), state.namespace_labels(ns))).collect();
            let mut pods = pods.clone();
            pods.extend(index.set_namespaces(&relabelled));
            if pods.len() <= DELTA_MAX_PODS {
                let changes: Vec<(PodKey, Option<weir_model::policy::world::PodInfo>)> = pods.iter().map(|k| (k.clone(), state.policy_pod(&k.0, &k.1))).collect();
                if let Some(d) = index.apply(&changes, policies, &mut self.ids, self.maps.current()) {
                    return (self.apply_delta(&d, "pods"), PolicyPath::Delta);
                }
            }
        }
        self.index = None;
        (self.reconcile(state), PolicyPath::Full)
    }

    /// Logs the policies whose parts fail closed, when that set changes.
    fn report_failed(&mut self, compiled: &[(ObjectKey, weir_model::policy::Compiled)]) {
        let failed: Vec<(ObjectKey, Vec<FieldError>)> = compiled.iter().filter(|(_, c)| !c.errors.is_empty()).map(|(k, c)| (k.clone(), c.errors.clone())).collect();
        if failed == self.failed {
            return;
        }
        for (key, c) in compiled.iter().filter(|(k, c)| !c.errors.is_empty() && !self.failed.iter().any(|(fk, fe)| fk == k && *fe == c.errors)) {
            for w in c.warnings(key) {
                tracing::warn!(input = %w, "policy compiled fail-closed");
            }
        }
        self.failed = failed;
    }

    /// Policies with parts that failed to compile, of `kind`.
    pub fn failed_closed(&self, kind: Kind) -> usize {
        self.failed.iter().filter(|(k, _)| k.kind == kind).count()
    }

    fn retain_ids(&mut self, world: &weir_model::policy::World, cidrs: &BTreeSet<Prefix>) {
        let pods = world.pods.iter().map(|p| label_key(world, p, cidrs)).collect();
        let eps = world.pods.iter().filter(|p| is_local(p, self.node.as_deref())).map(|p| (p.namespace.clone(), p.name.clone())).collect();
        self.ids.retain(&pods, cidrs, &eps);
    }

    /// Repairs drift in the policy maps.
    pub fn repair(&mut self) -> PolicyOutcome {
        let w = self.maps.repair();
        PolicyOutcome { map_writes: w.map_writes, errors: w.errors }
    }

    /// The programmed endpoint entry of a local pod address: (endpoint id, identity).
    pub fn endpoint(&self, ip: &std::net::IpAddr) -> Option<(u32, u32)> {
        self.maps.current().endpoints.get(ip).map(|e| (e.id, e.identity))
    }

    /// Entries per map, for gauges: (endpoints, ipcache, policy).
    pub fn entry_counts(&self) -> (usize, usize, usize) {
        let c = self.maps.current();
        (c.endpoints.len(), c.ipcache.len(), c.entries.len())
    }
}
