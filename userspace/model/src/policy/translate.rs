//! The pure policy translation: compiled policies + pods and namespaces →
//! the endpoints, ipcache and policy entries the datapath serves. Ids come
//! from [`Ids`], assigned beforehand by [`assign`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use weir_common::policy::{IpInfo, NameKey, DIR_EGRESS, DIR_INGRESS, ID_ANY, ID_WORLD, NAME_ENDPOINT, NAME_IDENTITY, NAME_RULE};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};
use weir_logic::policy::port_blocks;

use super::{
    compile::{CompiledPolicy, Peer, PortRule, PortSel, Rule},
    ids::{Ids, LabelKey, RuleRef},
    world::{NamedPort, PodInfo, World},
};

/// Whether a pod runs on this node (every pod, without a node name).
pub fn is_local(pod: &PodInfo, node: Option<&str>) -> bool {
    node.is_none_or(|n| pod.node.as_deref() == Some(n))
}

pub fn label_key(world: &World, pod: &PodInfo) -> LabelKey {
    LabelKey { namespace: pod.namespace.clone(), namespace_labels: world.namespace_labels(&pod.namespace), labels: pod.labels.clone() }
}

fn rule_refs(p: &CompiledPolicy) -> impl Iterator<Item = (u8, usize, &Rule, RuleRef)> + '_ {
    let ing = p.ingress.iter().flatten().enumerate().map(move |(i, r)| {
        (DIR_INGRESS, i, r, RuleRef { namespace: p.namespace.clone(), policy: p.name.clone(), direction: "ingress", index: i })
    });
    let eg = p.egress.iter().flatten().enumerate().map(move |(i, r)| {
        (DIR_EGRESS, i, r, RuleRef { namespace: p.namespace.clone(), policy: p.name.clone(), direction: "egress", index: i })
    });
    ing.chain(eg)
}

/// Gives every label set, CIDR, local pod and rule an id.
pub fn assign(ids: &mut Ids, policies: &[CompiledPolicy], world: &World, cidrs: &BTreeSet<Prefix>, node: Option<&str>) {
    for pod in &world.pods {
        ids.pod(&label_key(world, pod));
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

/// A pod identity's name: `ns {k=v,...}`.
pub fn identity_name(key: &LabelKey) -> String {
    let labels: Vec<String> = key.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} {{{}}}", key.namespace, labels.join(","))
}

/// Names for the CLI: every rule of `policies`, every local endpoint and
/// every pod identity, by (kind, id).
pub fn names(policies: &[CompiledPolicy], world: &World, ids: &Ids, node: Option<&str>) -> BTreeMap<NameKey, String> {
    let mut out: BTreeMap<NameKey, String> = policies
        .iter()
        .flat_map(rule_refs)
        .filter_map(|(_, _, _, r)| Some((NameKey { kind: NAME_RULE, id: ids.lookup_rule(&r)? }, r.to_string())))
        .collect();
    for pod in &world.pods {
        let key = label_key(world, pod);
        if let Some(id) = ids.lookup_pod(&key) {
            out.insert(NameKey { kind: NAME_IDENTITY, id }, identity_name(&key));
        }
        if is_local(pod, node) {
            if let Some(id) = ids.lookup_endpoint(&pod.namespace, &pod.name) {
                out.insert(NameKey { kind: NAME_ENDPOINT, id }, format!("{}/{}", pod.namespace, pod.name));
            }
        }
    }
    out
}

struct PodIdentity<'a> {
    key: LabelKey,
    ports: BTreeSet<&'a NamedPort>,
}

/// Translates; everything it needs must have an id (see [`assign`]).
pub fn translate(policies: &[CompiledPolicy], world: &World, ids: &Ids, cidrs: &BTreeSet<Prefix>, node: Option<&str>) -> PolicyState {
    let mut out = PolicyState::default();
    let cidr_ids: Vec<(Prefix, u32)> = cidrs.iter().filter_map(|c| Some((*c, ids.lookup_cidr(c)?))).collect();
    for (p, id) in &cidr_ids {
        out.ipcache.insert(*p, IpInfo { identity: *id, cidr_identity: *id });
    }
    let longest_cidr = |ip: &IpAddr| {
        cidr_ids.iter().filter(|(p, _)| p.contains_addr(ip)).max_by_key(|(p, _)| p.len).map_or(ID_WORLD, |(_, id)| *id)
    };

    // Pod identities and their named ports (the union over pods sharing
    // the identity).
    let mut pod_ids: BTreeMap<u32, PodIdentity> = BTreeMap::new();
    let mut seen_ips = BTreeSet::new();
    for pod in &world.pods {
        let key = label_key(world, pod);
        let Some(id) = ids.lookup_pod(&key) else { continue };
        pod_ids.entry(id).or_insert_with(|| PodIdentity { key, ports: BTreeSet::new() }).ports.extend(pod.ports.iter());
        for ip in &pod.ips {
            // Two pods claiming one address: the first keeps it.
            if seen_ips.insert(*ip) {
                out.ipcache.insert(Prefix::host(*ip), IpInfo { identity: id, cidr_identity: longest_cidr(ip) });
            }
        }
    }

    for pod in world.pods.iter().filter(|p| is_local(p, node)) {
        let (Some(ep_id), Some(identity)) = (ids.lookup_endpoint(&pod.namespace, &pod.name), ids.lookup_pod(&label_key(world, pod))) else {
            continue;
        };
        let selecting: Vec<&CompiledPolicy> =
            policies.iter().filter(|p| p.namespace == pod.namespace && p.subject.matches(&pod.labels)).collect();
        let spec = EndpointSpec {
            id: ep_id,
            identity,
            ingress_isolated: selecting.iter().any(|p| p.ingress.is_some()),
            egress_isolated: selecting.iter().any(|p| p.egress.is_some()),
        };
        for ip in &pod.ips {
            out.endpoints.entry(*ip).or_insert(spec);
        }
        for p in &selecting {
            for (dir, _, rule, rref) in rule_refs(p) {
                let Some(rule_id) = ids.lookup_rule(&rref) else { continue };
                let mut emit = |identity: u32, proto: u8, port: u16, port_bits: u8| {
                    let e = PolicyEntry { endpoint: ep_id, direction: dir, identity, proto, port, port_bits };
                    let v = out.entries.entry(e).or_insert(rule_id);
                    *v = (*v).min(rule_id);
                };
                let peers = peer_identities(rule, &p.namespace, &pod_ids, &cidr_ids);
                for peer in peers {
                    rule_ports(rule, dir, pod, peer, &pod_ids, &mut emit);
                }
            }
        }
    }
    out
}

/// The identities a rule's peers cover; `[ID_ANY]` for every peer.
fn peer_identities(rule: &Rule, policy_ns: &str, pods: &BTreeMap<u32, PodIdentity>, cidrs: &[(Prefix, u32)]) -> Vec<u32> {
    let Some(peers) = &rule.peers else { return vec![ID_ANY] };
    let mut out = BTreeSet::new();
    for peer in peers {
        match peer {
            Peer::Pods { namespaces, pods: sel } => {
                for (id, p) in pods {
                    let ns_ok = match namespaces {
                        None => p.key.namespace == policy_ns,
                        Some(ns) => ns.matches(&p.key.namespace_labels),
                    };
                    if ns_ok && sel.matches(&p.key.labels) {
                        out.insert(*id);
                    }
                }
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
    out.into_iter().collect()
}

/// Emits the (identity, protocol, port block) entries of one rule for one
/// peer identity. Named ports resolve against the destination pod: the
/// local pod for ingress, the peer's pods for egress.
fn rule_ports(rule: &Rule, dir: u8, local: &PodInfo, peer: u32, pods: &BTreeMap<u32, PodIdentity>, emit: &mut impl FnMut(u32, u8, u16, u8)) {
    let Some(ports) = &rule.ports else {
        emit(peer, 0, 0, 0);
        return;
    };
    for PortRule { proto, port } in ports {
        match port {
            PortSel::Any => emit(peer, *proto, 0, 0),
            PortSel::Range(a, b) => port_blocks(*a, *b, |base, bits| emit(peer, *proto, base, bits)),
            PortSel::Named(name) => {
                let named = |np: &NamedPort| np.name == *name && np.proto == *proto;
                if dir == DIR_INGRESS {
                    for np in local.ports.iter().filter(|np| named(np)) {
                        emit(peer, *proto, np.port, 16);
                    }
                } else if peer == ID_ANY {
                    // Any destination: every pod identity with the name.
                    for (id, p) in pods {
                        for np in p.ports.iter().filter(|np| named(np)) {
                            emit(*id, *proto, np.port, 16);
                        }
                    }
                } else if let Some(p) = pods.get(&peer) {
                    for np in p.ports.iter().filter(|np| named(np)) {
                        emit(peer, *proto, np.port, 16);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{compile, world::NamedPort};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use weir_common::policy::ID_CIDR_FIRST;

    fn pod(ns: &str, name: &str, app: &str, ip: &str, ports: &[(&str, u8, u16)]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            node: Some("n1".into()),
            ports: ports.iter().map(|(n, p, port)| NamedPort { name: n.to_string(), proto: *p, port: *port }).collect(),
        }
    }

    fn policy(yaml: &str) -> CompiledPolicy {
        let np: NetworkPolicy = serde_yaml_ng::from_str(yaml).unwrap();
        compile(&np).unwrap()
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
        let got: Vec<(u32, u8, u16, u8)> = s.entries.keys().map(|e| (e.identity, e.proto, e.port, e.port_bits)).collect();
        // x/cli only (the peer is in the policy's namespace); the named
        // port resolves to web's 8080; 9000-9003 is one aligned block.
        assert_eq!(got, vec![(cli_x, 6, 8080, 16), (cli_x, 17, 9000, 14)]);
        assert!(s.entries.keys().all(|e| e.endpoint == web.id && e.direction == weir_common::policy::DIR_INGRESS));
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
        let peers: BTreeSet<u32> = s.entries.keys().map(|e| e.identity).collect();
        assert_eq!(peers, [block].into(), "the except block is not allowed");
        let ep = |ip: &str| s.endpoints[&ip.parse().unwrap()];
        assert!(ep("10.0.0.1").egress_isolated && !ep("10.0.0.1").ingress_isolated);
        assert!(!ep("10.0.1.2").egress_isolated, "y's pod is not selected");
    }

    #[test]
    fn policy_types_default_from_the_sections_present() {
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: [{}]");
        assert!(p.ingress.is_some() && p.egress.is_some(), "egress rules add Egress; Ingress is always there");
        let p = policy("metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  egress: []");
        assert!(p.ingress.is_some() && p.egress.is_none(), "an empty egress list does not add Egress");
    }
}
