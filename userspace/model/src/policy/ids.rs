//! Numeric ids for policy: identities (one per distinct namespace + pod
//! label set, one per policy CIDR), local endpoint ids and rule ids.
//!
//! Ids are never reused while the agent runs, and a restarted agent adopts
//! the ids it finds in the pinned maps, so a restart rewrites nothing.

use std::collections::{BTreeMap, BTreeSet};

use weir_common::policy::{ID_CIDR_FIRST, ID_POD_FIRST};
use weir_desired::policy::Prefix;

use super::{compile::PolicyKind, interned::SharedLabels};

/// What a pod identity stands for: its namespace and labels, and the most
/// specific policy CIDR holding the pod's address, so that every pod of an
/// identity gets one verdict from rules that name pods and rules that name
/// networks alike.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelKey {
    pub namespace: String,
    pub namespace_labels: SharedLabels,
    pub labels: SharedLabels,
    pub cidr: Option<Prefix>,
}

/// Which policy rule a rule id names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub kind: PolicyKind,
    /// Empty for a cluster policy.
    pub namespace: String,
    pub policy: String,
    /// "ingress" or "egress".
    pub direction: &'static str,
    pub index: usize,
    /// The rule's own name (weir's CRDs).
    pub name: Option<String>,
}

impl std::fmt::Display for RuleRef {
    /// `ns/policy ingress[0]` for a NetworkPolicy; `wnp ns/policy
    /// ingress[0] name` and `wcnp policy ingress[0] name` for weir's own
    /// (their kubectl short names).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            PolicyKind::NetworkPolicy => write!(f, "{}/{}", self.namespace, self.policy)?,
            PolicyKind::WeirNetworkPolicy => write!(f, "wnp {}/{}", self.namespace, self.policy)?,
            PolicyKind::ClusterNetworkPolicy => write!(f, "wcnp {}", self.policy)?,
        }
        write!(f, " {}[{}]", self.direction, self.index)?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default)]
pub struct Ids {
    pods: BTreeMap<LabelKey, u32>,
    cidrs: BTreeMap<Prefix, u32>,
    /// (namespace, pod name) → endpoint id.
    endpoints: BTreeMap<(String, String), u32>,
    rules: BTreeMap<RuleRef, u32>,
    rule_names: BTreeMap<u32, RuleRef>,
    next_pod: u32,
    next_cidr: u32,
    next_endpoint: u32,
    next_rule: u32,
}

impl Ids {
    pub fn new() -> Self {
        Ids { next_pod: ID_POD_FIRST, next_cidr: ID_CIDR_FIRST, next_endpoint: 1, next_rule: 1, ..Default::default() }
    }

    /// Adopts a pod identity found in the maps (restart).
    pub fn adopt_pod(&mut self, key: LabelKey, id: u32) {
        if (ID_POD_FIRST..ID_CIDR_FIRST).contains(&id) && !self.pods.contains_key(&key) && !self.pods.values().any(|v| *v == id) {
            self.pods.insert(key, id);
            self.next_pod = self.next_pod.max(id + 1);
        }
    }

    pub fn adopt_cidr(&mut self, p: Prefix, id: u32) {
        if id >= ID_CIDR_FIRST && !self.cidrs.contains_key(&p) && !self.cidrs.values().any(|v| *v == id) {
            self.cidrs.insert(p, id);
            self.next_cidr = self.next_cidr.max(id + 1);
        }
    }

    pub fn adopt_endpoint(&mut self, pod: (String, String), id: u32) {
        if id != 0 && !self.endpoints.contains_key(&pod) && !self.endpoints.values().any(|v| *v == id) {
            self.endpoints.insert(pod, id);
            self.next_endpoint = self.next_endpoint.max(id + 1);
        }
    }

    pub fn pod(&mut self, key: &LabelKey) -> u32 {
        if let Some(id) = self.pods.get(key) {
            return *id;
        }
        let id = self.next_pod;
        self.next_pod += 1;
        self.pods.insert(key.clone(), id);
        id
    }

    pub fn cidr(&mut self, p: Prefix) -> u32 {
        *self.cidrs.entry(p).or_insert_with(|| {
            let id = self.next_cidr;
            self.next_cidr += 1;
            id
        })
    }

    pub fn endpoint(&mut self, ns: &str, name: &str) -> u32 {
        *self.endpoints.entry((ns.to_string(), name.to_string())).or_insert_with(|| {
            let id = self.next_endpoint;
            self.next_endpoint += 1;
            id
        })
    }

    pub fn rule(&mut self, r: RuleRef) -> u32 {
        if let Some(id) = self.rules.get(&r) {
            return *id;
        }
        let id = self.next_rule;
        self.next_rule += 1;
        self.rule_names.insert(id, r.clone());
        self.rules.insert(r, id);
        id
    }

    /// The rule a rule id names.
    pub fn rule_name(&self, id: u32) -> Option<&RuleRef> {
        self.rule_names.get(&id)
    }

    /// What a pod identity stands for.
    pub fn pod_labels(&self, id: u32) -> Option<&LabelKey> {
        self.pods.iter().find(|(_, v)| **v == id).map(|(k, _)| k)
    }

    /// Forgets ids nothing uses any more (they are not handed out again).
    pub fn retain(&mut self, pods: &BTreeSet<LabelKey>, cidrs: &BTreeSet<Prefix>, endpoints: &BTreeSet<(String, String)>) {
        self.pods.retain(|k, _| pods.contains(k));
        self.cidrs.retain(|k, _| cidrs.contains(k));
        self.endpoints.retain(|k, _| endpoints.contains(k));
    }

    /// Forgets a pod identity no pod has any more (its id is not handed
    /// out again).
    pub fn forget_pod(&mut self, key: &LabelKey) {
        self.pods.remove(key);
    }

    /// Forgets a local endpoint that is gone (its id is not handed out again).
    pub fn forget_endpoint(&mut self, ns: &str, name: &str) {
        self.endpoints.remove(&(ns.to_string(), name.to_string()));
    }

    pub fn lookup_pod(&self, key: &LabelKey) -> Option<u32> {
        self.pods.get(key).copied()
    }

    pub fn lookup_cidr(&self, p: &Prefix) -> Option<u32> {
        self.cidrs.get(p).copied()
    }

    pub fn lookup_endpoint(&self, ns: &str, name: &str) -> Option<u32> {
        self.endpoints.get(&(ns.to_string(), name.to_string())).copied()
    }

    pub fn lookup_rule(&self, r: &RuleRef) -> Option<u32> {
        self.rules.get(r).copied()
    }
}
