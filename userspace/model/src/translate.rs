//! The pure translation: a Service and its EndpointSlices → the frontends
//! and endpoints the datapath serves, with kube-proxy's semantics. No I/O,
//! no clocks: the same input always gives the same output (golden-tested
//! in tests/testdata/).

use std::{collections::BTreeMap, net::IpAddr};

use weir_desired::{Endpoint, Frontend, Protocol, ServiceSpec};

use crate::{
    service::{PortModel, PortProtocol, ServiceModel, ServiceType},
    slice::SliceModel,
    state::{ClusterState, ServiceKey},
};

/// What translation needs to know about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// `--node-name`: for internalTrafficPolicy: Local.
    pub node_name: Option<String>,
    /// The node's `topology.kubernetes.io/zone`: for trafficDistribution: PreferClose.
    pub zone: Option<String>,
}

impl NodeContext {
    pub fn from_state(state: &ClusterState, node_name: Option<&str>) -> Self {
        Self { node_name: node_name.map(str::to_string), zone: node_name.and_then(|n| state.node_zone(n)) }
    }
}

struct Candidate {
    ep: Endpoint,
    node: Option<String>,
    zones: Option<Vec<String>>,
}

fn family_matches(address_type: &str, ip: &IpAddr) -> bool {
    match address_type {
        "IPv4" => ip.is_ipv4(),
        "IPv6" => ip.is_ipv6(),
        _ => false,
    }
}

/// Endpoints of `slices` for one service port and address family.
fn candidates(port: &PortModel, family_of: &IpAddr, slices: &[&SliceModel]) -> Vec<Candidate> {
    let mut out: BTreeMap<(IpAddr, u16), Candidate> = BTreeMap::new();
    for slice in slices {
        if !family_matches(&slice.address_type, family_of) {
            continue;
        }
        // The slice port for this service port: matched by name (the empty
        // name matches the unnamed port) and protocol.
        let Some(target) = slice.ports.iter().find(|p| p.name == port.name && p.protocol == port.protocol) else {
            continue;
        };
        let Some(tport) = target.port else { continue };
        for e in &slice.endpoints {
            // kube-proxy uses the first address; the rest are fungible.
            let Some(addr) = e.addr else { continue };
            if !family_matches(&slice.address_type, &addr) {
                continue;
            }
            // API semantics: ready nil = ready; serving nil = ready; terminating nil = false.
            let ready = e.ready.unwrap_or(true);
            let serving = e.serving.unwrap_or(ready);
            let terminating = e.terminating.unwrap_or(false);
            let cand = Candidate {
                ep: Endpoint { addr, port: tport, ready, serving, terminating },
                node: e.node_name.clone(),
                zones: e.zones.clone(),
            };
            // The same endpoint in two slices (mid-update): prefer the ready one.
            match out.get(&(addr, tport)) {
                Some(prev) if prev.ep.ready || !cand.ep.ready => {}
                _ => {
                    out.insert((addr, tport), cand);
                }
            }
        }
    }
    out.into_values().collect()
}

/// kube-proxy's topology rule for PreferClose: use zone hints only when
/// every ready endpoint has them, and only if some endpoint is hinted for
/// this node's zone.
fn prefer_close(cands: Vec<Candidate>, zone: Option<&str>) -> Vec<Candidate> {
    let Some(zone) = zone else { return cands };
    let ready: Vec<&Candidate> = cands.iter().filter(|c| c.ep.ready).collect();
    if ready.is_empty() || ready.iter().any(|c| c.zones.is_none()) {
        return cands;
    }
    let in_zone = |c: &Candidate| c.zones.as_ref().is_some_and(|z| z.iter().any(|z| z == zone));
    if !ready.iter().any(|c| in_zone(c)) {
        return cands;
    }
    cands.into_iter().filter(|c| !c.ep.ready || in_zone(c)).collect()
}

/// Translates one service. Headless and ExternalName services, services
/// left to another proxy, and SCTP ports get no frontend.
pub fn translate_service(svc: &ServiceModel, slices: &[&SliceModel], ctx: &NodeContext) -> Vec<ServiceSpec> {
    if svc.proxy_name.is_some() || svc.ty == ServiceType::ExternalName || svc.cluster_ips.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for vip in &svc.cluster_ips {
        for port in &svc.ports {
            let protocol = match port.protocol {
                PortProtocol::Tcp => Protocol::Tcp,
                PortProtocol::Udp => Protocol::Udp,
                PortProtocol::Sctp => continue,
            };
            let mut cands = candidates(port, vip, slices);
            if svc.internal_traffic_policy_local {
                cands.retain(|c| c.node.is_some() && c.node == ctx.node_name);
            }
            if svc.traffic_distribution_prefer_close {
                cands = prefer_close(cands, ctx.zone.as_deref());
            }
            let port_label = if port.name.is_empty() { port.port.to_string() } else { port.name.clone() };
            out.push(ServiceSpec {
                origin: format!("{}/{}:{port_label}", svc.namespace, svc.name),
                frontend: Frontend { addr: *vip, port: port.port, protocol },
                endpoints: cands.into_iter().map(|c| c.ep).collect(),
                selection: svc.selection,
                affinity_timeout_s: svc.affinity_timeout_s,
                local_only: svc.internal_traffic_policy_local,
            });
        }
    }
    out
}

/// Translates the service `key` as the state holds it now.
pub fn translate_key(state: &ClusterState, key: &ServiceKey, ctx: &NodeContext) -> Vec<ServiceSpec> {
    let Some(svc) = state.service(key) else { return Vec::new() };
    translate_service(svc, &state.slices_for(key), ctx)
}

/// Translates every service.
pub fn translate_all(state: &ClusterState, ctx: &NodeContext) -> BTreeMap<ServiceKey, Vec<ServiceSpec>> {
    state.service_keys().into_iter().map(|k| {
        let specs = translate_key(state, &k, ctx);
        (k, specs)
    }).filter(|(_, v)| !v.is_empty()).collect()
}
