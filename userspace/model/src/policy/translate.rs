//! The pure policy translation: compiled policies + pods and namespaces →
//! the endpoints, ipcache and policy entries the datapath serves. Ids come
//! from [`Ids`], assigned beforehand by [`assign`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use weir_common::policy::{isolation_name_id, IpInfo, NameKey, PolicyValue, DIR_EGRESS, DIR_INGRESS, ID_WORLD, NAME_ENDPOINT, NAME_IDENTITY, NAME_ISOLATION, NAME_RULE};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};

use super::{
    compile::{CompiledPolicy, Peer, PortRule, PortSel, Rule, Tier},
    evaluate::{Endpoint, Ranked},
    ids::{Ids, LabelKey, RuleRef},
    world::{NamedPort, PodInfo, World},
};

/// Whether a pod runs on this node (every pod, without a node name).
pub fn is_local(pod: &PodInfo, node: Option<&str>) -> bool {
    node.is_none_or(|n| pod.node.as_deref() == Some(n))
}

/// The most specific of `cidrs` holding `ip`.
pub fn longest_cidr(cidrs: &BTreeSet<Prefix>, ip: &IpAddr) -> Option<Prefix> {
    cidrs.iter().filter(|p| p.contains_addr(ip)).max_by_key(|p| p.len).copied()
}

/// A pod's identity key under the policy CIDRs `cidrs`.
pub fn label_key(world: &World, pod: &PodInfo, cidrs: &BTreeSet<Prefix>) -> LabelKey {
    LabelKey {
        namespace: pod.namespace.clone(),
        namespace_labels: world.namespace_labels(&pod.namespace),
        labels: pod.labels.clone(),
        cidr: pod.ips.first().and_then(|ip| longest_cidr(cidrs, ip)),
    }
}

pub(super) fn rule_refs(p: &CompiledPolicy) -> impl Iterator<Item = (u8, usize, &Rule, RuleRef)> + '_ {
    let r = move |dir: &'static str, i: usize, rule: &Rule| RuleRef {
        kind: p.kind,
        namespace: p.namespace.clone(),
        policy: p.name.clone(),
        direction: dir,
        index: i,
        name: rule.name.clone(),
    };
    let ing = p.ingress.iter().flatten().enumerate().map(move |(i, rule)| (DIR_INGRESS, i, rule, r("ingress", i, rule)));
    let eg = p.egress.iter().flatten().enumerate().map(move |(i, rule)| (DIR_EGRESS, i, rule, r("egress", i, rule)));
    ing.chain(eg)
}

/// Gives every label set, CIDR, local pod and rule an id.
pub fn assign(ids: &mut Ids, policies: &[CompiledPolicy], world: &World, cidrs: &BTreeSet<Prefix>, node: Option<&str>) {
    for pod in &world.pods {
        ids.pod(&label_key(world, pod, cidrs));
        if is_local(pod, node) {
            ids.endpoint(&pod.namespace, &pod.name);
        }
    }
    for c in cidrs {
        ids.cidr(*c);
    }
    for p in policies {
        for (_, _, _, r) in rule_refs(p) {
            ids.rule(r);
        }
    }
}

/// A pod identity's name: `ns {k=v,...}`, and ` in <cidr>` when a policy
/// CIDR holds its pods.
pub fn identity_name(key: &LabelKey) -> String {
    let labels: Vec<String> = key.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    match &key.cidr {
        Some(c) => format!("{} {{{}}} in {c}", key.namespace, labels.join(",")),
        None => format!("{} {{{}}}", key.namespace, labels.join(",")),
    }
}

/// Names for the CLI: every rule of `policies`, every local endpoint (and
/// the policies isolating it, per direction) and every pod identity, by
/// (kind, id).
pub fn names(policies: &[CompiledPolicy], world: &World, ids: &Ids, cidrs: &BTreeSet<Prefix>, node: Option<&str>) -> BTreeMap<NameKey, String> {
    let mut out: BTreeMap<NameKey, String> = policies
        .iter()
        .flat_map(rule_refs)
        .filter_map(|(_, _, _, r)| Some((NameKey { kind: NAME_RULE, id: ids.lookup_rule(&r)? }, r.to_string())))
        .collect();
    for pod in &world.pods {
        let key = label_key(world, pod, cidrs);
        if let Some(id) = ids.lookup_pod(&key) {
            out.insert(NameKey { kind: NAME_IDENTITY, id }, identity_name(&key));
        }
        if is_local(pod, node) {
            if let Some(id) = ids.lookup_endpoint(&pod.namespace, &pod.name) {
                out.extend(endpoint_names(policies, pod, &key, id));
            }
        }
    }
    out
}

/// The keys of every name a local endpoint can have.
pub fn endpoint_name_keys(id: u32) -> [NameKey; 3] {
    [
        NameKey { kind: NAME_ENDPOINT, id },
        NameKey { kind: NAME_ISOLATION, id: isolation_name_id(id, DIR_INGRESS) },
        NameKey { kind: NAME_ISOLATION, id: isolation_name_id(id, DIR_EGRESS) },
    ]
}

/// A local endpoint's names: `ns/pod`, and per direction the policies
/// isolating it.
pub fn endpoint_names(policies: &[CompiledPolicy], pod: &PodInfo, key: &LabelKey, id: u32) -> Vec<(NameKey, String)> {
    let mut out = vec![(NameKey { kind: NAME_ENDPOINT, id }, format!("{}/{}", pod.namespace, pod.name))];
    for dir in [DIR_INGRESS, DIR_EGRESS] {
        let by: Vec<String> = policies
            .iter()
            .filter(|p| p.tier == Tier::Namespace && p.rules(dir).is_some() && p.selects(&pod.namespace, &key.namespace_labels, &pod.labels))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        if !by.is_empty() {
            out.push((NameKey { kind: NAME_ISOLATION, id: isolation_name_id(id, dir) }, by.join(", ")));
        }
    }
    out
}

/// A pod identity: what it stands for, its CIDR identity, and the named
/// ports its pods define (the union over them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub key: LabelKey,
    pub cidr_id: Option<u32>,
    pub ports: BTreeSet<NamedPort>,
}

/// The peers of every rule, by rule id (`None`: every peer), shared.
pub type Peers = BTreeMap<u32, Option<Arc<BTreeSet<u32>>>>;

/// What a translation computed on the way that a later pod change can
/// reuse (`pod_delta`): the pod identities and every rule's peers.
#[derive(Clone, Debug, Default)]
pub struct Translated {
    pub pod_ids: BTreeMap<u32, PodIdentity>,
    pub peers: Peers,
    /// Each pod's identity, in the world's order.
    pub pods: Vec<Option<u32>>,
}

/// The ipcache entry of a pod address whose pod has identity `id`.
pub fn pod_address(ids: &Ids, cidrs: &BTreeSet<Prefix>, ip: &IpAddr, id: u32) -> IpInfo {
    let cidr_identity = longest_cidr(cidrs, ip).and_then(|p| ids.lookup_cidr(&p)).unwrap_or(ID_WORLD);
    IpInfo { identity: id, cidr_identity }
}

/// Translates; everything it needs must have an id (see [`assign`]).
pub fn translate(policies: &[CompiledPolicy], world: &World, ids: &Ids, cidrs: &BTreeSet<Prefix>, node: Option<&str>) -> PolicyState {
    translate_indexed(policies, world, ids, cidrs, node).0
}

/// [`translate`], also returning what it computed on the way.
pub fn translate_indexed(policies: &[CompiledPolicy], world: &World, ids: &Ids, cidrs: &BTreeSet<Prefix>, node: Option<&str>) -> (PolicyState, Translated) {
    let mut out = PolicyState::default();
    let cidr_ids: Vec<(Prefix, u32)> = cidrs.iter().filter_map(|c| Some((*c, ids.lookup_cidr(c)?))).collect();
    for (p, id) in &cidr_ids {
        out.ipcache.insert(*p, IpInfo { identity: *id, cidr_identity: *id });
    }
    let cidr_id = |p: Option<Prefix>| p.and_then(|p| ids.lookup_cidr(&p));

    // Pod identities and their named ports (the union over pods sharing
    // the identity).
    let mut pod_ids: BTreeMap<u32, PodIdentity> = BTreeMap::new();
    let mut seen_ips = BTreeSet::new();
    let mut pods = Vec::with_capacity(world.pods.len());
    for pod in &world.pods {
        let key = label_key(world, pod, cidrs);
        let id = ids.lookup_pod(&key);
        pods.push(id);
        let Some(id) = id else { continue };
        let cid = cidr_id(key.cidr);
        let ident = pod_ids.entry(id).or_insert_with(|| PodIdentity { key, cidr_id: cid, ports: BTreeSet::new() });
        for np in &pod.ports {
            if !ident.ports.contains(np) {
                ident.ports.insert(np.clone());
            }
        }
        for ip in &pod.ips {
            // Two pods claiming one address: the first keeps it.
            if seen_ips.insert(*ip) {
                out.ipcache.insert(Prefix::host(*ip), pod_address(ids, cidrs, ip, id));
            }
        }
    }

    let peers: Peers = policies
        .iter()
        .flat_map(|p| rule_refs(p).map(move |(_, _, rule, r)| (p, rule, r)))
        .filter_map(|(p, rule, r)| Some((ids.lookup_rule(&r)?, peer_identities(rule, &p.namespace, &pod_ids, &cidr_ids).map(Arc::new))))
        .collect();
    let ranked = ranked_rules(policies, |_| true, ids, &peers);
    for pod in world.pods.iter().filter(|p| is_local(p, node)) {
        let key = label_key(world, pod, cidrs);
        let (Some(ep_id), Some(identity)) = (ids.lookup_endpoint(&pod.namespace, &pod.name), ids.lookup_pod(&key)) else {
            continue;
        };
        let (spec, entries) = endpoint_state(policies, &ranked, pod, &key, (ep_id, identity), &pod_ids, None);
        out.entries.extend(entries);
        for ip in &pod.ips {
            out.endpoints.entry(*ip).or_insert(spec);
        }
    }
    (out, Translated { pod_ids, peers, pods })
}

/// The policies that select a pod (with identity key `key`).
pub fn selecting(policies: &[CompiledPolicy], pod: &PodInfo, key: &LabelKey) -> Vec<bool> {
    policies.iter().map(|p| p.selects(&pod.namespace, &key.namespace_labels, &pod.labels)).collect()
}

/// One local endpoint's spec and policy entries (those of the pod
/// identities in `only`, with `Some`); `ranked` holds (at least) the rules
/// of the policies that select it.
pub fn endpoint_state(
    policies: &[CompiledPolicy],
    ranked: &[Ranked],
    pod: &PodInfo,
    key: &LabelKey,
    (ep_id, identity): (u32, u32),
    pod_ids: &BTreeMap<u32, PodIdentity>,
    only: Option<&BTreeSet<u32>>,
) -> (EndpointSpec, Vec<(PolicyEntry, PolicyValue)>) {
    let selected = selecting(policies, pod, key);
    let mut spec = EndpointSpec { id: ep_id, identity, ingress_isolated: false, egress_isolated: false };
    let mut entries = Vec::new();
    for dir in [DIR_INGRESS, DIR_EGRESS] {
        let rules: Vec<&Ranked> = ranked.iter().filter(|r| r.dir == dir && selected[r.policy]).collect();
        // The namespace tier isolates like NetworkPolicy: a pod it
        // selects in a direction is denied what it does not allow.
        let isolated = policies.iter().zip(&selected).any(|(p, s)| *s && p.tier == Tier::Namespace && p.rules(dir).is_some());
        if rules.is_empty() && !isolated {
            continue;
        }
        if dir == DIR_INGRESS {
            spec.ingress_isolated = true;
        } else {
            spec.egress_isolated = true;
        }
        let ctx = Endpoint { id: ep_id, dir, local: pod, isolated, pods: pod_ids };
        entries.extend(ctx.entries_of(&rules, only));
    }
    (spec, entries)
}

/// Every rule with an id of the policies `which` admits (by index), in
/// evaluation order (tier, priority, policy, rule), with the identities
/// its peers cover (from `peers`).
pub fn ranked_rules<'a>(policies: &'a [CompiledPolicy], which: impl Fn(usize) -> bool, ids: &Ids, peers: &Peers) -> Vec<Ranked<'a>> {
    let mut out: Vec<Ranked> = policies
        .iter()
        .enumerate()
        .filter(|(i, _)| which(*i))
        .flat_map(|(i, p)| rule_refs(p).map(move |(dir, index, rule, r)| (i, p, dir, index, rule, r)))
        .filter_map(|(i, p, dir, index, rule, r)| {
            let id = ids.lookup_rule(&r)?;
            Some(Ranked {
                policy: i,
                tier: p.tier,
                audit: p.audit,
                dir,
                rule,
                id,
                peers: peers.get(&id).cloned().flatten(),
                order: (p.tier, p.priority, p.namespace.clone(), p.name.clone(), index),
            })
        })
        .collect();
    out.sort_by(|a, b| a.order.cmp(&b.order));
    out
}

/// Whether a pod peer of a policy in `policy_ns` selects the pod
/// identity `key` (a network peer never does: it covers CIDR identities).
pub fn peer_selects(peer: &Peer, policy_ns: &str, key: &LabelKey) -> bool {
    match peer {
        Peer::Pods { namespaces, pods } => {
            let ns_ok = match namespaces {
                None => key.namespace == policy_ns,
                Some(ns) => ns.matches(&key.namespace_labels),
            };
            ns_ok && pods.matches(&key.labels)
        }
        Peer::Block { .. } => false,
    }
}

/// The identities a rule's peers cover; `None` for every peer.
pub(super) fn peer_identities(rule: &Rule, policy_ns: &str, pods: &BTreeMap<u32, PodIdentity>, cidrs: &[(Prefix, u32)]) -> Option<BTreeSet<u32>> {
    let peers = rule.peers.as_ref()?;
    let mut out = BTreeSet::new();
    for peer in peers {
        match peer {
            Peer::Pods { .. } => {
                out.extend(pods.iter().filter(|(_, p)| peer_selects(peer, policy_ns, &p.key)).map(|(id, _)| *id));
            }
            Peer::Block { cidr, except } => {
                for (p, id) in cidrs {
                    if cidr.contains(p) && !except.iter().any(|e| e.contains(p)) {
                        out.insert(*id);
                    }
                }
            }
        }
    }
    Some(out)
}

/// A rule's ports as (protocol, first, last) for one peer (`None`: every
/// port of every protocol). Named ports resolve against the destination
/// pod: the local pod for ingress, the peer identity's pods for egress.
pub(super) fn resolve_ports(rule: &Rule, dir: u8, local: &PodInfo, peer: Option<&PodIdentity>) -> Option<Vec<(u8, u16, u16)>> {
    let ports = rule.ports.as_ref()?;
    let mut out = Vec::new();
    for PortRule { proto, port } in ports {
        match port {
            PortSel::Any => out.push((*proto, 0, u16::MAX)),
            PortSel::Range(a, b) => out.push((*proto, *a, *b)),
            PortSel::Named(name) => {
                let named = |np: &NamedPort| np.name == *name && np.proto == *proto;
                if dir == DIR_INGRESS {
                    out.extend(local.ports.iter().filter(|np| named(np)).map(|np| (*proto, np.port, np.port)));
                } else if let Some(p) = peer {
                    out.extend(p.ports.iter().filter(|np| named(np)).map(|np| (*proto, np.port, np.port)));
                }
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{compile, world::NamedPort};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use weir_common::policy::{ID_ANY, ID_CIDR_FIRST};

    fn pod(ns: &str, name: &str, app: &str, ip: &str, ports: &[(&str, u8, u16)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: crate::policy::interned::shared([("app".to_string(), app.to_string())].into()),
            ips: vec![ip.parse().unwrap()],
            node: Some("n1".into()),
            ports: ports.iter().map(|(n, p, port)| NamedPort { name: n.to_string(), proto: *p, port: *port }).collect(),
        }
    }

    fn policy(yaml: &str) -> CompiledPolicy {
        let np: NetworkPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        compile(&np).strict().unwrap()
    }

    fn run(policies: &[CompiledPolicy], world: &World) -> (Ids, PolicyState) {
        let mut ids = Ids::new();
        let cidrs: BTreeSet<Prefix> = policies.iter().flat_map(CompiledPolicy::cidrs).collect();
        assign(&mut ids, policies, world, &cidrs, Some("n1"));
        let s = translate(policies, world, &ids, &cidrs, Some("n1"));
        (ids, s)
    }

    fn world() -> World {
        World {
            pods: vec![
                pod("x", "web", "web", "10.0.0.1", &[("http", 6, 8080)]),
                pod("x", "cli", "cli", "10.0.0.2", &[]),
                pod("y", "cli", "cli", "10.0.1.2", &[]),
                PodInfo { node: Some("other".into()), ..pod("x", "remote", "web", "10.0.9.9", &[]) },
            ],
            namespaces: BTreeMap::new(),
        }
    }

    #[test]
    fn pods_sharing_labels_share_an_identity_and_only_local_pods_are_endpoints() {
        let (_, s) = run(&[], &world());
        let id = |ip: &str| s.ipcache[&Prefix::host(ip.parse().unwrap())].identity;
        assert_eq!(id("10.0.0.1"), id("10.0.9.9"), "same namespace and labels");
        assert_ne!(id("10.0.0.2"), id("10.0.1.2"), "same labels, other namespace");
        assert_eq!(s.endpoints.len(), 3, "the remote pod is not an endpoint here");
        assert!(s.endpoints.values().all(|e| !e.ingress_isolated && !e.egress_isolated));
        assert!(s.entries.is_empty());
    }

    #[test]
    fn a_rule_becomes_entries_for_the_selected_endpoint_only() {
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: cli}}}]\n    ports: [{port: http}, {port: 9000, endPort: 9003, protocol: UDP}]");
        let (_, s) = run(&[p], &world());
        let web = s.endpoints[&"10.0.0.1".parse().unwrap()];
        assert!(web.ingress_isolated && !web.egress_isolated);
        let cli_x = s.ipcache[&Prefix::host("10.0.0.2".parse().unwrap())].identity;
        let got: Vec<(u32, u8, u16, u8, bool)> = s.entries.iter().map(|(e, v)| (e.identity, e.proto, e.port, e.port_bits, v.allows())).collect();
        // Any peer: denied (isolation); x/cli only (the peer is in the
        // policy's namespace); the named port resolves to web's 8080;
        // 9000-9003 is one aligned block.
        assert_eq!(got, vec![(ID_ANY, 0, 0, 0, false), (cli_x, 6, 8080, 16, true), (cli_x, 17, 9000, 14, true)]);
        assert!(s.entries.keys().all(|e| e.endpoint == web.id && e.direction == weir_common::policy::DIR_INGRESS));
    }

    #[test]
    fn the_policies_isolating_an_endpoint_are_named_per_direction() {
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: cli}}}]");
        let q = policy("metadata: {name: q, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]");
        let policies = [p, q];
        let (ids, s) = run(&policies, &world());
        let cidrs = BTreeSet::new();
        let n = names(&policies, &world(), &ids, &cidrs, Some("n1"));
        let ep = |ip: &str| s.endpoints[&ip.parse().unwrap()].id;
        let get = |ip: &str, dir| n.get(&NameKey { kind: NAME_ISOLATION, id: isolation_name_id(ep(ip), dir) }).cloned();
        assert_eq!(get("10.0.0.1", DIR_INGRESS).as_deref(), Some("x/p, x/q"), "both select web for ingress");
        assert_eq!(get("10.0.0.2", DIR_INGRESS).as_deref(), Some("x/q"));
        assert_eq!(get("10.0.0.1", DIR_EGRESS), None, "nothing isolates egress");
        assert_eq!(get("10.0.1.2", DIR_INGRESS), None, "another namespace");
    }

    #[test]
    fn ip_blocks_get_cidr_identities_and_pods_inside_carry_them() {
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]");
        let (ids, s) = run(&[p], &world());
        let block = ids.lookup_cidr(&Prefix::new("10.0.0.0".parse().unwrap(), 16)).unwrap();
        let except = ids.lookup_cidr(&Prefix::new("10.0.1.0".parse().unwrap(), 24)).unwrap();
        assert!(block >= ID_CIDR_FIRST && except >= ID_CIDR_FIRST);
        assert_eq!(s.ipcache[&Prefix::host("10.0.0.2".parse().unwrap())].cidr_identity, block);
        assert_eq!(s.ipcache[&Prefix::host("10.0.1.2".parse().unwrap())].cidr_identity, except);
        let peers: BTreeSet<u32> = s.entries.iter().filter(|(_, v)| v.allows()).map(|(e, _)| e.identity).collect();
        assert_eq!(peers, [block].into(), "the except block is not allowed");
        let ep = |ip: &str| s.endpoints[&ip.parse().unwrap()];
        assert!(ep("10.0.0.1").egress_isolated && !ep("10.0.0.1").ingress_isolated);
        assert!(!ep("10.0.1.2").egress_isolated, "y's pod is not selected");
    }

    #[test]
    fn ip_blocks_with_host_bits_are_normalised_as_the_api_server_accepts_them() {
        // The API server takes 10.0.7.9/16 (upstream e2e tests wrote such
        // CIDRs); Go reads it as 10.0.0.0/16, and so must every agent.
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.7.9/16, except: [10.0.1.77/24]}}]");
        let (ids, s) = run(&[p], &world());
        let block = ids.lookup_cidr(&Prefix::new("10.0.0.0".parse().unwrap(), 16)).expect("compiled, masked");
        let except = ids.lookup_cidr(&Prefix::new("10.0.1.0".parse().unwrap(), 24)).expect("except masked");
        let peers: BTreeSet<u32> = s.entries.iter().filter(|(_, v)| v.allows()).map(|(e, _)| e.identity).collect();
        assert_eq!(peers, [block].into());
        assert_ne!(block, except);
    }

    #[test]
    fn policy_types_default_from_the_sections_present() {
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: [{}]");
        assert!(p.ingress.is_some() && p.egress.is_some(), "egress rules add Egress; Ingress is always there");
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: []");
        assert!(p.ingress.is_some() && p.egress.is_none(), "an empty egress list does not add Egress");
    }
}
