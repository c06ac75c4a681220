//! Pod changes translated alone. A pod that joins or leaves an identity
//! that keeps other pods (and the same named ports) changes only its own
//! addresses in the ipcache and, when it runs on this node, its own
//! endpoint and entries. An identity that appears, empties or changes its
//! named ports also changes the peers of the rules that select it, so
//! every endpoint on this node is evaluated again (never a pod elsewhere:
//! the work is per node, not per cluster). [`PodIndex`] keeps what the
//! last full translation knew (every pod's identity, each identity's
//! members, every rule's peers) and turns changes into a [`PolicyDelta`];
//! two pods claiming one address return `None`, and the caller translates
//! in full.
//!
//! The delta is exactly the difference between the full translation
//! before and after the change (the tests below check it against
//! [`translate`](super::translate::translate) on random changes).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use weir_common::policy::{NameKey, DIR_EGRESS, DIR_INGRESS, NAME_IDENTITY, NAME_RULE};

use weir_desired::policy::{PolicyDelta, PolicyEntry, PolicyState, Prefix};

use super::{
    compile::CompiledPolicy,
    ids::{Ids, LabelKey},
    selector::Labels,
    translate::{
        endpoint_name_keys, endpoint_names, endpoint_state, identity_name, is_local, label_key, peer_identities, peer_selects, pod_address, ranked_rules, rule_refs, selecting, PodIdentity,
        Translated,
    },
    world::{NamedPort, PodInfo, World},
};

/// A pod, by (namespace, name).
pub type PodKey = (String, String);

/// The pods of one identity and the named ports they define, counted.
#[derive(Clone, Debug, Default)]
struct Members {
    count: usize,
    ports: BTreeMap<NamedPort, usize>,
}

/// What the index keeps of a pod (its labels only while it is on this
/// node: 100,000 pods elsewhere cost their addresses and ports).
#[derive(Clone, Debug)]
struct Indexed {
    id: u32,
    /// Boxed slices, not vectors: 16 bytes less each, 100,000 times.
    ips: Box<[IpAddr]>,
    ports: Box<[NamedPort]>,
}

impl Indexed {
    fn new(pod: &PodInfo, id: u32) -> Self {
        Indexed { id, ips: pod.ips.as_slice().into(), ports: pod.ports.as_slice().into() }
    }
}

/// One pod of a batch: its key, its old entry (and whether it was on this
/// node), its new model and identity.
type Moved = (PodKey, Option<(Indexed, bool)>, Option<(PodInfo, u32)>);

/// What the last full translation knew, updated by each pod delta.
#[derive(Clone, Debug)]
pub struct PodIndex {
    node: Option<String>,
    cidrs: BTreeSet<Prefix>,
    /// Namespace labels (no pods).
    namespaces: World,
    /// Every pod with an address: what its leaving takes along.
    pods: BTreeMap<PodKey, Indexed>,
    members: BTreeMap<u32, Members>,
    /// Pods claiming each address.
    claims: BTreeMap<IpAddr, usize>,
    /// The pods on this node, whole.
    local: BTreeMap<PodKey, PodInfo>,
    translated: Translated,
}

impl PodIndex {
    /// Indexes the world a full translation (with these ids and CIDRs)
    /// just produced `translated` from. `None` when the world names a pod
    /// twice (nothing to index by).
    pub fn build(world: &World, cidrs: &BTreeSet<Prefix>, node: Option<&str>, translated: Translated) -> Option<Self> {
        let mut me = PodIndex {
            node: node.map(str::to_string),
            cidrs: cidrs.clone(),
            namespaces: World { pods: Vec::new(), namespaces: world.namespaces.clone() },
            pods: BTreeMap::new(),
            members: BTreeMap::new(),
            claims: BTreeMap::new(),
            local: BTreeMap::new(),
            translated,
        };
        if me.translated.pods.len() != world.pods.len() {
            return None;
        }
        let pod_identities = std::mem::take(&mut me.translated.pods);
        // The pods and claims are collected, sorted and built in bulk: a
        // B-tree filled by ascending inserts leaves every node about half
        // empty (8 MB more at 100,000 pods), one built from a sorted run
        // fills them.
        let mut pods: Vec<(PodKey, Indexed)> = Vec::with_capacity(world.pods.len());
        let mut claims: Vec<IpAddr> = Vec::with_capacity(world.pods.len());
        for (pod, id) in world.pods.iter().zip(pod_identities) {
            let entry = Indexed::new(pod, id?);
            me.join_identity(&entry);
            claims.extend(entry.ips.iter());
            let key = (pod.namespace.clone(), pod.name.clone());
            if is_local(pod, node) {
                me.local.insert(key.clone(), pod.clone());
            }
            pods.push((key, entry));
        }
        pods.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if pods.windows(2).any(|w| w[0].0 == w[1].0) {
            return None;
        }
        me.pods = pods.into_iter().collect();
        claims.sort_unstable();
        me.claims = claims.chunk_by(|a, b| a == b).map(|run| (run[0], run.len())).collect();
        Some(me)
    }

    fn join(&mut self, pod: &Indexed) {
        self.join_identity(pod);
        for ip in &pod.ips {
            *self.claims.entry(*ip).or_default() += 1;
        }
    }

    /// [`Self::join`] without the address claims.
    fn join_identity(&mut self, pod: &Indexed) {
        let m = self.members.entry(pod.id).or_default();
        m.count += 1;
        for np in &pod.ports {
            *m.ports.entry(np.clone()).or_default() += 1;
        }
    }

    /// Takes `pod` out of its identity; false when an address it held
    /// was claimed by another pod too.
    fn leave(&mut self, pod: &Indexed) -> bool {
        if let Some(m) = self.members.get_mut(&pod.id) {
            m.count = m.count.saturating_sub(1);
            for np in &pod.ports {
                if let Some(n) = m.ports.get_mut(np) {
                    *n -= 1;
                    if *n == 0 {
                        m.ports.remove(np);
                    }
                }
            }
        }
        let mut alone = true;
        for ip in &pod.ips {
            if let Some(n) = self.claims.get_mut(ip) {
                alone &= *n == 1;
                *n -= 1;
                if *n == 0 {
                    self.claims.remove(ip);
                }
            }
        }
        alone
    }

    /// The delta for `changes` (each pod's new model with an address, or
    /// `None` when it has none any more), against `current` (what is
    /// programmed); `None` when only a full translation can say (two pods
    /// claiming one address). New local pods get endpoint ids, and new
    /// label sets identities, from `ids`. After `None` the index is spent:
    /// build it again from the full translation.
    pub fn apply(&mut self, changes: &[(PodKey, Option<PodInfo>)], policies: &[CompiledPolicy], ids: &mut Ids, current: &PolicyState) -> Option<PolicyDelta> {
        // Membership first, so the checks see the batch as a whole.
        let mut moved: Vec<Moved> = Vec::new();
        let mut touched: BTreeMap<u32, LabelKey> = BTreeMap::new();
        for (key, new) in changes {
            let old = self.pods.remove(key);
            if let Some(o) = &old {
                if !self.leave(o) {
                    return None;
                }
                if let Some(known) = self.translated.pod_ids.get(&o.id) {
                    touched.entry(o.id).or_insert_with(|| known.key.clone());
                }
            }
            let was_local = self.local.remove(key).is_some();
            let joined = match new {
                Some(n) => {
                    let lk = label_key(&self.namespaces, n, &self.cidrs);
                    let id = ids.pod(&lk);
                    let entry = Indexed::new(n, id);
                    self.join(&entry);
                    if n.ips.iter().any(|ip| self.claims.get(ip) != Some(&1)) {
                        return None;
                    }
                    touched.entry(id).or_insert(lk);
                    self.pods.insert(key.clone(), entry);
                    if is_local(n, self.node.as_deref()) {
                        self.local.insert(key.clone(), n.clone());
                    }
                    Some((n.clone(), id))
                }
                None => None,
            };
            moved.push((key.clone(), old.map(|o| (o, was_local)), joined));
        }

        let mut d = PolicyDelta::default();
        // Identities that appear, empty or change their named ports change
        // rules' peers, and so every local endpoint's entries.
        let changed = self.update_identities(&touched, policies, ids, &mut d);
        let changed = (!changed.is_empty()).then_some(changed);

        let node = self.node.as_deref();
        // What leaves, then what arrives (an address may pass between pods).
        let mut again: BTreeSet<PodKey> = BTreeSet::new();
        for ((ns, name), old, joined) in &moved {
            if let Some((o, was_local)) = old {
                for ip in &o.ips {
                    d.ipcache.insert(Prefix::host(*ip), None);
                }
                if *was_local {
                    if let Some(ep) = ids.lookup_endpoint(ns, name) {
                        for ip in &o.ips {
                            d.endpoints.insert(*ip, None);
                        }
                        for k in endpoint_name_keys(ep) {
                            d.names.insert(k, None);
                        }
                    }
                    if !self.local.contains_key(&(ns.clone(), name.clone())) {
                        Self::drop_entries(ids.lookup_endpoint(ns, name), current, &mut d);
                        ids.forget_endpoint(ns, name);
                    }
                }
            }
            if joined.as_ref().is_some_and(|(n, _)| is_local(n, node)) {
                again.insert((ns.clone(), name.clone()));
            }
        }
        for (_, _, joined) in &moved {
            if let Some((n, id)) = joined {
                for ip in &n.ips {
                    d.ipcache.insert(Prefix::host(*ip), Some(pod_address(ids, &self.cidrs, ip, *id)));
                }
            }
        }
        // The moved pods on this node: everything of theirs; every other
        // endpoint here: the cells of the identities that changed.
        let others: Vec<PodKey> = match &changed {
            Some(_) => self.local.keys().filter(|k| !again.contains(*k)).cloned().collect(),
            None => Vec::new(),
        };
        for (key, only) in again.iter().map(|k| (k, None)).chain(others.iter().map(|k| (k, changed.as_ref()))) {
            self.evaluate_endpoint(key, policies, ids, current, only, &mut d);
        }
        Some(d)
    }

    /// Takes in namespaces' new labels (`None`: the Namespace object is
    /// gone) and returns the indexed pods in the namespaces whose labels
    /// changed: a pod's identity includes its namespace's labels, so each
    /// of them is a pod change for [`PodIndex::apply`] (in the same call
    /// as the batch's other pod changes).
    pub fn set_namespaces(&mut self, changes: &[(String, Option<Labels>)]) -> Vec<PodKey> {
        let mut pods = Vec::new();
        for (ns, labels) in changes {
            let old = match labels {
                Some(l) => self.namespaces.namespaces.insert(ns.clone(), l.clone()),
                None => self.namespaces.namespaces.remove(ns),
            };
            if old.unwrap_or_default() == labels.clone().unwrap_or_default() {
                continue;
            }
            let from = (ns.clone(), String::new());
            pods.extend(self.pods.range(from..).map(|(k, _)| k).take_while(|k| k.0 == *ns).cloned());
        }
        pods
    }

    /// The delta for a change of policies alone (pods, namespaces and the
    /// policy CIDR set as the index knows them): the rules of the policies
    /// that changed get their peers, and the endpoints on this node that
    /// the old or the new version of one selects are evaluated again.
    /// `None` when the CIDR set changed (identities change with it).
    pub fn apply_policies(&mut self, old: &[CompiledPolicy], new: &[CompiledPolicy], ids: &mut Ids, current: &PolicyState) -> Option<PolicyDelta> {
        let cidrs: BTreeSet<Prefix> = new.iter().flat_map(CompiledPolicy::cidrs).collect();
        if cidrs != self.cidrs {
            return None;
        }
        let (was, is) = (by_id(old), by_id(new));
        let changed: Vec<&CompiledPolicy> = was
            .iter()
            .filter(|(k, p)| is.get(*k) != Some(*p))
            .map(|(_, p)| *p)
            .chain(is.iter().filter(|(k, p)| was.get(*k) != Some(*p)).map(|(_, p)| *p))
            .collect();
        let mut d = PolicyDelta::default();
        if changed.is_empty() {
            return Some(d);
        }
        // Rules: the old ones' peers and names go, the new ones' come.
        for p in old.iter().filter(|p| is.get(&(p.kind, p.namespace.as_str(), p.name.as_str())) != Some(p)) {
            for (_, _, _, r) in rule_refs(p) {
                if let Some(id) = ids.lookup_rule(&r) {
                    self.translated.peers.remove(&id);
                    d.names.insert(NameKey { kind: NAME_RULE, id }, None);
                }
            }
        }
        let cidr_ids: Vec<(Prefix, u32)> = self.cidrs.iter().filter_map(|c| Some((*c, ids.lookup_cidr(c)?))).collect();
        for p in new.iter().filter(|p| was.get(&(p.kind, p.namespace.as_str(), p.name.as_str())) != Some(p)) {
            for (_, _, rule, r) in rule_refs(p) {
                let name = r.to_string();
                let id = ids.rule(r);
                self.translated.peers.insert(id, peer_identities(rule, &p.namespace, &self.translated.pod_ids, &cidr_ids).map(Arc::new));
                d.names.insert(NameKey { kind: NAME_RULE, id }, Some(name));
            }
        }
        // The endpoints here that a changed policy selects, before or after.
        let again: Vec<PodKey> = self
            .local
            .iter()
            .filter(|(_, pod)| {
                let lk = label_key(&self.namespaces, pod, &self.cidrs);
                changed.iter().any(|p| p.selects(&pod.namespace, &lk.namespace_labels, &pod.labels))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &again {
            self.evaluate_endpoint(key, new, ids, current, None, &mut d);
        }
        Some(d)
    }

    /// Evaluates a local endpoint again into `d`: everything of it, or
    /// with `only`, the cells of those pod identities.
    fn evaluate_endpoint(&self, key: &PodKey, policies: &[CompiledPolicy], ids: &mut Ids, current: &PolicyState, only: Option<&BTreeSet<u32>>, d: &mut PolicyDelta) {
        let (Some(pod), Some(id)) = (self.local.get(key), self.pods.get(key).map(|e| e.id)) else { return };
        let ep = ids.endpoint(&key.0, &key.1);
        match only {
            None => Self::drop_entries(Some(ep), current, d),
            Some(only) => {
                for dir in [DIR_INGRESS, DIR_EGRESS] {
                    for identity in only {
                        for e in current.entries.range(cells_range(ep, dir, *identity)) {
                            d.entries.insert(*e.0, None);
                        }
                    }
                }
            }
        }
        let lk = label_key(&self.namespaces, pod, &self.cidrs);
        let selected = selecting(policies, pod, &lk);
        let ranked = ranked_rules(policies, |i| selected[i], ids, &self.translated.peers);
        let (spec, entries) = endpoint_state(policies, &ranked, pod, &lk, (ep, id), &self.translated.pod_ids, only);
        for (e, v) in entries {
            d.entries.insert(e, Some(v));
        }
        if only.is_some() {
            return;
        }
        for ip in &pod.ips {
            d.endpoints.entry(*ip).or_insert(None).get_or_insert(spec);
        }
        for k in endpoint_name_keys(ep) {
            d.names.entry(k).or_insert(None);
        }
        for (k, v) in endpoint_names(policies, pod, &lk, ep) {
            d.names.insert(k, Some(v));
        }
    }

    /// Marks every programmed entry of endpoint `ep` to go (entries the
    /// delta gives values later stay).
    fn drop_entries(ep: Option<u32>, current: &PolicyState, d: &mut PolicyDelta) {
        if let Some(ep) = ep {
            for e in current.entries.range(endpoint_range(ep)) {
                d.entries.insert(*e.0, None);
            }
        }
    }

    /// Brings the identities in `touched` (by id, with their keys) and
    /// every rule's peers up to date with their members; returns the
    /// identities that appeared, emptied or changed their named ports.
    fn update_identities(&mut self, touched: &BTreeMap<u32, LabelKey>, policies: &[CompiledPolicy], ids: &mut Ids, d: &mut PolicyDelta) -> BTreeSet<u32> {
        let mut changed: Vec<(u32, bool)> = Vec::new();
        for (id, key) in touched {
            let Some(m) = self.members.get(id) else { continue };
            let ports: BTreeSet<NamedPort> = m.ports.keys().cloned().collect();
            match (m.count, self.translated.pod_ids.get_mut(id)) {
                (0, known) => {
                    self.members.remove(id);
                    if known.is_some() {
                        self.translated.pod_ids.remove(id);
                        ids.forget_pod(key);
                        d.names.insert(NameKey { kind: NAME_IDENTITY, id: *id }, None);
                        changed.push((*id, false));
                    }
                }
                (_, None) => {
                    let cidr_id = key.cidr.and_then(|c| ids.lookup_cidr(&c));
                    self.translated.pod_ids.insert(*id, PodIdentity { key: key.clone(), cidr_id, ports });
                    d.names.insert(NameKey { kind: NAME_IDENTITY, id: *id }, Some(identity_name(key)));
                    changed.push((*id, true));
                }
                (_, Some(known)) if known.ports != ports => {
                    known.ports = ports;
                    changed.push((*id, true));
                }
                _ => {}
            }
        }
        if changed.is_empty() {
            return BTreeSet::new();
        }
        for p in policies {
            for (_, _, rule, r) in rule_refs(p) {
                let (Some(rid), Some(peers)) = (ids.lookup_rule(&r), rule.peers.as_ref()) else { continue };
                let Some(Some(set)) = self.translated.peers.get_mut(&rid) else { continue };
                for (id, present) in &changed {
                    let wanted = *present && self.translated.pod_ids.get(id).is_some_and(|pi| peers.iter().any(|peer| peer_selects(peer, &p.namespace, &pi.key)));
                    if wanted != set.contains(id) {
                        let set = Arc::make_mut(set);
                        if wanted {
                            set.insert(*id);
                        } else {
                            set.remove(id);
                        }
                    }
                }
            }
        }
        changed.into_iter().map(|(id, _)| id).collect()
    }
}

/// A policy by what names it.
type PolicyId<'a> = (super::compile::PolicyKind, &'a str, &'a str);

fn by_id(ps: &[CompiledPolicy]) -> BTreeMap<PolicyId<'_>, &CompiledPolicy> {
    ps.iter().map(|p| ((p.kind, p.namespace.as_str(), p.name.as_str()), p)).collect()
}

/// The policy entries of endpoint `ep` for peer `identity` in `dir`.
fn cells_range(ep: u32, dir: u8, identity: u32) -> std::ops::RangeInclusive<PolicyEntry> {
    let lo = PolicyEntry { endpoint: ep, direction: dir, identity, proto: 0, port: 0, port_bits: 0 };
    let hi = PolicyEntry { endpoint: ep, direction: dir, identity, proto: u8::MAX, port: u16::MAX, port_bits: u8::MAX };
    lo..=hi
}

/// Every policy entry of endpoint `ep`.
fn endpoint_range(ep: u32) -> std::ops::RangeInclusive<PolicyEntry> {
    let lo = PolicyEntry { endpoint: ep, direction: 0, identity: 0, proto: 0, port: 0, port_bits: 0 };
    let hi = PolicyEntry { endpoint: ep, direction: u8::MAX, identity: u32::MAX, proto: u8::MAX, port: u16::MAX, port_bits: u8::MAX };
    lo..=hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{
            compile_object,
            translate::{assign, names, translate_indexed},
        },
        Kind, Object,
    };
    use proptest::{prelude::*, test_runner::TestCaseError};
    use weir_common::policy::NameKey;

    const NS: [&str; 3] = ["x", "y", "z"];
    const APPS: [&str; 4] = ["web", "cli", "db", "job"];

    /// Policies that name pods, namespaces, networks and named ports, in
    /// every tier.
    const POLICIES: [&str; 5] = [
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: cli}}}, {namespaceSelector: {matchLabels: {team: b}}}]\n    ports: [{port: http}, {port: 9000, endPort: 9003, protocol: UDP}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: y}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.0.0.0/24]}}]\n  - ports: [{port: http}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: z}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
        "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: no-jobs}\nspec:\n  priority: 5\n  subject: {namespaces: {}, pods: {matchLabels: {app: db}}}\n  ingress:\n  - {name: no-job, action: Deny, peers: [{pods: {matchLabels: {app: job}}}], ports: [{port: 5432}]}\n",
        "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: base}\nspec:\n  tier: Baseline\n  priority: 5\n  subject: {namespaces: {matchLabels: {team: b}}}\n  egress:\n  - {name: no-net, action: Deny, peers: [{networks: [10.0.2.0/24]}]}\n",
    ];

    /// Another version of each of `POLICIES` (same name: an edit).
    const EDITS: [&str; 5] = [
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, db]}]}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: job}}}]\n    ports: [{port: 80}, {port: http}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: y}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.0.0.0/24]}}]\n    ports: [{port: 5432}]\n",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: all, namespace: z}\nspec:\n  podSelector: {matchLabels: {app: cli}}\n  policyTypes: [Ingress, Egress]\n",
        "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: no-jobs}\nspec:\n  priority: 3\n  subject: {namespaces: {}, pods: {matchLabels: {app: web}}}\n  ingress:\n  - {name: cli-ok, action: Allow, peers: [{pods: {matchLabels: {app: cli}}}], ports: [{port: 5432}]}\n  - {name: no-job, action: Deny, peers: [{pods: {matchLabels: {app: job}}}]}\n",
        "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: base}\nspec:\n  tier: Baseline\n  priority: 5\n  subject: {namespaces: {}}\n  egress:\n  - {name: no-net, action: Deny, peers: [{networks: [10.0.2.0/24]}], ports: [{port: 53, protocol: UDP}]}\n",
    ];

    fn compiled(y: &str) -> CompiledPolicy {
        let v: serde_json::Value = serde_yaml_ng::from_str(y).expect("yaml");
        let kind = Kind::from_kind(v["kind"].as_str().expect("kind")).expect("known kind");
        compile_object(&Object::from_value(kind, v).expect("decodes")).expect("a policy").strict().expect("compiles")
    }

    fn policies() -> Vec<CompiledPolicy> {
        POLICIES.iter().map(|y| compiled(y)).collect()
    }

    /// Pod `i` of the generated world: namespace, app, node, address and
    /// named port all follow from `i` and `variant`.
    fn pod(i: usize, variant: usize) -> PodInfo {
        let app = APPS[(i + variant) % APPS.len()];
        let http = if app == "web" || variant.is_multiple_of(3) { vec![NamedPort { name: "http".into(), proto: 6, port: 8080 }] } else { vec![] };
        PodInfo {
            namespace: NS[i % NS.len()].into(),
            name: format!("p{i}"),
            labels: crate::policy::interned::shared([("app".to_string(), app.to_string())].into()),
            ips: vec![format!("10.0.{}.{}", (i + variant) % 3, 10 + i).parse().expect("ip")],
            node: Some(if (i + variant).is_multiple_of(2) { "n1" } else { "n2" }.into()),
            ports: http,
        }
    }

    /// The Namespace objects of the generated world: y is team b.
    fn namespaces() -> BTreeMap<String, Labels> {
        [("y".to_string(), [("team".to_string(), "b".to_string())].into())].into()
    }

    fn world(pods: &BTreeMap<usize, PodInfo>) -> World {
        world_in(pods, &namespaces())
    }

    fn world_in(pods: &BTreeMap<usize, PodInfo>, namespaces: &BTreeMap<String, Labels>) -> World {
        World { pods: pods.values().cloned().collect(), namespaces: namespaces.clone() }
    }

    fn full(policies: &[CompiledPolicy], w: &World, ids: &mut Ids, cidrs: &BTreeSet<Prefix>) -> (PolicyState, BTreeMap<NameKey, String>, Translated) {
        assign(ids, policies, w, cidrs, Some("n1"));
        let (s, t) = translate_indexed(policies, w, ids, cidrs, Some("n1"));
        (s, names(policies, w, ids, cidrs, Some("n1")), t)
    }

    /// What the maps hold, moved by deltas, with the full translation as
    /// the reference (and the fallback when there is no delta).
    struct Programmed {
        ids: Ids,
        state: PolicyState,
        names: BTreeMap<NameKey, String>,
        index: PodIndex,
        /// The Namespace objects the reference translation sees.
        namespaces: BTreeMap<String, Labels>,
    }

    impl Programmed {
        fn new(policies: &[CompiledPolicy], pods: &BTreeMap<usize, PodInfo>) -> Self {
            let cidrs: BTreeSet<Prefix> = policies.iter().flat_map(CompiledPolicy::cidrs).collect();
            let mut ids = Ids::new();
            let (state, names, t) = full(policies, &world(pods), &mut ids, &cidrs);
            let index = PodIndex::build(&world(pods), &cidrs, Some("n1"), t).expect("indexable");
            Programmed { ids, state, names, index, namespaces: namespaces() }
        }

        /// Applies `delta` and checks the result against the full
        /// translation of `policies` and `pods`; translates in full without one.
        fn settle(&mut self, delta: Option<PolicyDelta>, policies: &[CompiledPolicy], pods: &BTreeMap<usize, PodInfo>) -> Result<(), TestCaseError> {
            let cidrs: BTreeSet<Prefix> = policies.iter().flat_map(CompiledPolicy::cidrs).collect();
            match delta {
                Some(d) => {
                    d.apply_to(&mut self.state, &mut self.names);
                    let mut check = self.ids.clone();
                    let (want, want_names, _) = full(policies, &world_in(pods, &self.namespaces), &mut check, &cidrs);
                    prop_assert_eq!(&self.state, &want);
                    prop_assert_eq!(&self.names, &want_names);
                }
                None => {
                    let w = world_in(pods, &self.namespaces);
                    let (s, n, t) = full(policies, &w, &mut self.ids, &cidrs);
                    (self.state, self.names) = (s, n);
                    self.index = PodIndex::build(&w, &cidrs, Some("n1"), t).expect("indexable");
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// After any sequence of pod changes, the programmed state built
        /// from deltas equals the full translation of the new world, and
        /// the common changes take the delta path.
        #[test]
        fn pod_deltas_equal_the_full_translation(steps in prop::collection::vec((0usize..24, 0usize..6, any::<bool>(), any::<bool>()), 1..40), batch in 1usize..4) {
            let policies = policies();
            let mut pods: BTreeMap<usize, PodInfo> = (0..24).map(|i| (i, pod(i, 0))).collect();
            let mut p = Programmed::new(&policies, &pods);
            // Applied in batches, one change per pod (as the agent sees them).
            for chunk in steps.chunks(batch) {
                let mut changes: BTreeMap<PodKey, Option<PodInfo>> = BTreeMap::new();
                for &(i, variant, present, portless) in chunk {
                    let new = present.then(|| pod(i, variant)).map(|mut p| {
                        if portless {
                            p.ports.clear();
                        }
                        p
                    });
                    match &new {
                        Some(p) => pods.insert(i, p.clone()),
                        None => pods.remove(&i),
                    };
                    changes.insert((NS[i % NS.len()].to_string(), format!("p{i}")), new);
                }
                let changes: Vec<(PodKey, Option<PodInfo>)> = changes.into_iter().collect();
                let delta = p.index.apply(&changes, &policies, &mut p.ids, &p.state);
                p.settle(delta, &policies, &pods)?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Policy edits, additions and removals, mixed with pod changes:
        /// the deltas add up to the full translation of the new state.
        #[test]
        fn policy_deltas_equal_the_full_translation(steps in prop::collection::vec((0usize..5, 0usize..3, 0usize..24, 0usize..6, any::<bool>()), 1..30)) {
            let mut slots: Vec<Option<CompiledPolicy>> = policies().into_iter().map(Some).collect();
            let live = |slots: &[Option<CompiledPolicy>]| -> Vec<CompiledPolicy> { slots.iter().flatten().cloned().collect() };
            let mut policies = live(&slots);
            let mut pods: BTreeMap<usize, PodInfo> = (0..24).map(|i| (i, pod(i, 0))).collect();
            let mut p = Programmed::new(&policies, &pods);
            for (slot, version, i, variant, pod_too) in steps {
                let old = policies.clone();
                slots[slot] = match version {
                    0 => Some(compiled(POLICIES[slot])),
                    1 => Some(compiled(EDITS[slot])),
                    _ => None,
                };
                policies = live(&slots);
                let mut delta = p.index.apply_policies(&old, &policies, &mut p.ids, &p.state);
                if let (Some(d), true) = (&mut delta, pod_too) {
                    // A pod changes in the same batch: its delta follows.
                    d.apply_to(&mut p.state, &mut p.names);
                    pods.insert(i, pod(i, variant));
                    let key = (NS[i % NS.len()].to_string(), format!("p{i}"));
                    delta = p.index.apply(&[(key, Some(pod(i, variant)))], &policies, &mut p.ids, &p.state);
                } else if pod_too {
                    pods.insert(i, pod(i, variant));
                }
                p.settle(delta, &policies, &pods)?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Namespaces relabelled, created and deleted, with a pod change in
        /// the same batch: each is a delta of the pods in them, and the
        /// deltas add up to the full translation of the new world.
        #[test]
        fn namespace_deltas_equal_the_full_translation(steps in prop::collection::vec((0usize..3, 0usize..4, 0usize..24, 0usize..6, any::<bool>()), 1..30)) {
            let policies = policies();
            let mut pods: BTreeMap<usize, PodInfo> = (0..24).map(|i| (i, pod(i, 0))).collect();
            let mut p = Programmed::new(&policies, &pods);
            for (ns, labels, i, variant, pod_too) in steps {
                let name = NS[ns].to_string();
                let team = |t: &str| -> Labels { [("team".to_string(), t.to_string())].into() };
                let labels = match labels {
                    0 => None,
                    1 => Some(team("b")),
                    2 => Some(team("a")),
                    _ => Some([("team".to_string(), "b".to_string()), ("tier".to_string(), "x".to_string())].into()),
                };
                match &labels {
                    Some(l) => p.namespaces.insert(name.clone(), l.clone()),
                    None => p.namespaces.remove(&name),
                };
                let mut keys: BTreeSet<PodKey> = p.index.set_namespaces(&[(name, labels)]).into_iter().collect();
                if pod_too {
                    pods.insert(i, pod(i, variant));
                    keys.insert((NS[i % NS.len()].to_string(), format!("p{i}")));
                }
                let changes: Vec<(PodKey, Option<PodInfo>)> =
                    keys.into_iter().map(|k| { let now = pods.values().find(|p| p.namespace == k.0 && p.name == k.1).cloned(); (k, now) }).collect();
                let delta = p.index.apply(&changes, &policies, &mut p.ids, &p.state);
                prop_assert!(delta.is_some(), "no address is claimed twice: always a delta");
                p.settle(delta, &policies, &pods)?;
            }
        }
    }

    /// The generated world, translated in full and indexed.
    fn indexed() -> (Vec<CompiledPolicy>, Ids, PolicyState, PodIndex) {
        let policies = policies();
        let cidrs: BTreeSet<Prefix> = policies.iter().flat_map(CompiledPolicy::cidrs).collect();
        let pods: BTreeMap<usize, PodInfo> = (0..24).map(|i| (i, pod(i, 0))).collect();
        let mut ids = Ids::new();
        let (state, _, t) = full(&policies, &world(&pods), &mut ids, &cidrs);
        let index = PodIndex::build(&world(&pods), &cidrs, Some("n1"), t).expect("indexable");
        (policies, ids, state, index)
    }

    #[test]
    fn a_pod_joining_an_identity_with_members_is_a_delta_of_its_own_cells() {
        let (policies, mut ids, state, mut index) = indexed();
        // p0 (x, web, n1) relabelled cli: x/cli has other members.
        let mut moved = pod(0, 0);
        std::sync::Arc::make_mut(&mut moved.labels).insert("app".into(), "cli".into());
        let d = index.apply(&[(("x".into(), "p0".into()), Some(moved))], &policies, &mut ids, &state).expect("a delta");
        assert_eq!(d.ipcache.len(), 1, "its one address");
        assert!(d.entries.keys().all(|e| Some(e.endpoint) == ids.lookup_endpoint("x", "p0")), "only its own endpoint's entries");
        assert!(!d.entries.is_empty(), "web's entries go");
    }

    #[test]
    fn a_new_label_set_is_a_new_identity_in_the_peers_that_select_it() {
        let (policies, mut ids, state, mut index) = indexed();
        // p3 (x, job, on n2) becomes {app: cli, tier: new}: x/web's rule
        // admits it, so x/web's endpoint on this node (p12) gets its cells.
        let mut fresh = pod(3, 0);
        fresh.labels = crate::policy::interned::shared([("app".to_string(), "cli".to_string()), ("tier".to_string(), "new".to_string())].into());
        let d = index.apply(&[(("x".into(), "p3".into()), Some(fresh))], &policies, &mut ids, &state).expect("a delta");
        let id = d.ipcache.values().flatten().map(|i| i.identity).next().expect("its address");
        assert!(!state.entries.keys().any(|e| e.identity == id), "a new identity");
        assert_eq!(d.names.get(&NameKey { kind: NAME_IDENTITY, id }), Some(&Some("x {app=cli,tier=new} in 10.0.0.0/24".to_string())));
        let web = ids.lookup_endpoint("x", "p12").expect("x/web on n1");
        assert!(d.entries.iter().any(|(e, v)| e.endpoint == web && e.identity == id && v.is_some_and(|v| v.allows())), "x/web admits it");
    }

    #[test]
    fn a_namespace_relabel_changes_its_pods_and_no_others() {
        let (_, _, _, mut index) = indexed();
        let y: Vec<PodKey> = index.pods.keys().filter(|k| k.0 == "y").cloned().collect();
        assert!(!y.is_empty());
        assert_eq!(index.set_namespaces(&[("y".into(), Some([("team".to_string(), "a".to_string())].into()))]), y, "every pod of y, no other");
        assert!(index.set_namespaces(&[("y".into(), Some([("team".to_string(), "a".to_string())].into()))]).is_empty(), "the same labels again: nothing");
        assert!(index.set_namespaces(&[("x".into(), Some(Labels::new()))]).is_empty(), "an object with no labels where none was: nothing");
    }

    #[test]
    fn an_address_two_pods_claim_needs_the_full_translation() {
        let (policies, mut ids, state, mut index) = indexed();
        let mut thief = pod(12, 0);
        thief.ips = pod(0, 0).ips;
        assert!(index.apply(&[(("x".into(), "p12".into()), Some(thief))], &policies, &mut ids, &state).is_none());
    }
}
