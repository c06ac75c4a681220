//! The pure translation: a Service and its EndpointSlices → the frontends
//! and endpoints the datapath serves, with kube-proxy's semantics. No I/O,
//! no clocks: the same input always gives the same output (golden-tested
//! in tests/testdata/).

use std::{collections::BTreeMap, net::IpAddr};

use weir_desired::{Endpoint, Frontend, Kind, Masquerade, Protocol, Scope, ServiceSpec};

use crate::{
    nodeport::NodePortAddresses,
    service::{PortModel, PortProtocol, ServiceModel, ServiceType},
    slice::SliceModel,
    state::{ClusterState, ServiceKey},
};

/// What translation needs to know about this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeContext {
    /// `--node-name`: for internalTrafficPolicy: Local.
    pub node_name: Option<String>,
    /// The node's `topology.kubernetes.io/zone`: for zone hints.
    pub zone: Option<String>,
    /// The node addresses NodePorts are served on (`--nodeport-addresses`).
    pub nodeport_addrs: Vec<IpAddr>,
    /// `--masquerade-all`: every service flow from a pod is masqueraded
    /// too (kube-proxy's flag).
    pub masquerade_all: bool,
}

impl NodeContext {
    /// The context of `node_name` with NodePorts on its primary addresses.
    pub fn from_state(state: &ClusterState, node_name: Option<&str>) -> Self {
        Self::with_nodeports(state, node_name, &NodePortAddresses::Primary, &[])
    }

    /// The context of `node_name`, NodePorts on the addresses `sel`
    /// chooses among the Node's and `device_addrs`.
    pub fn with_nodeports(state: &ClusterState, node_name: Option<&str>, sel: &NodePortAddresses, device_addrs: &[IpAddr]) -> Self {
        let node = node_name.and_then(|n| state.node(n));
        Self {
            node_name: node_name.map(str::to_string),
            zone: node_name.and_then(|n| state.node_zone(n)),
            nodeport_addrs: sel.select(node, device_addrs),
            masquerade_all: false,
        }
    }
}

struct Candidate {
    ep: Endpoint,
    node: Option<String>,
    zones: Option<Vec<String>>,
    hint_nodes: Option<Vec<String>>,
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
            // kube-proxy's reading: ready nil = ready, serving nil =
            // serving, terminating nil = not terminating.
            let ready = e.ready.unwrap_or(true);
            let serving = e.serving.unwrap_or(true);
            let terminating = e.terminating.unwrap_or(false);
            let cand = Candidate {
                ep: Endpoint { addr, port: tport, ready, serving, terminating },
                node: e.node_name.clone(),
                zones: e.zones.clone(),
                hint_nodes: e.hint_nodes.clone(),
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

/// Which topology hints kube-proxy (1.33+) follows for a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every endpoint.
    Any,
    /// Endpoints hinted for this node (`hints.forNodes`).
    SameNode,
    /// Endpoints hinted for this node's zone (`hints.forZones`).
    SameZone,
}

fn hinted(hints: &Option<Vec<String>>, want: Option<&str>) -> bool {
    match (hints, want) {
        (Some(h), Some(w)) => h.iter().any(|h| h == w),
        _ => false,
    }
}

fn has_hints(hints: &Option<Vec<String>>) -> bool {
    hints.as_ref().is_some_and(|h| !h.is_empty())
}

/// kube-proxy's `topologyModeFromHints`: the hints decide, not the
/// service's `trafficDistribution` (the EndpointSlice controller writes
/// hints from it). Node hints are used when every ready endpoint has one
/// and one names this node; otherwise zone hints, when every ready
/// endpoint has one and one names this node's zone; otherwise none.
fn topology(cands: &[Candidate], ctx: &NodeContext) -> Topology {
    let ready: Vec<&Candidate> = cands.iter().filter(|c| c.ep.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let node = ctx.node_name.as_deref();
    if ready.iter().all(|c| has_hints(&c.hint_nodes)) && ready.iter().any(|c| hinted(&c.hint_nodes, node)) {
        return Topology::SameNode;
    }
    let zone = ctx.zone.as_deref();
    if ready.iter().all(|c| has_hints(&c.zones)) && ready.iter().any(|c| hinted(&c.zones, zone)) {
        return Topology::SameZone;
    }
    Topology::Any
}

/// The endpoints the topology mode leaves: for ready endpoints and for
/// the terminating fallback alike (kube-proxy's `availableForTopology`).
fn by_topology(cands: Vec<Candidate>, ctx: &NodeContext) -> Vec<Candidate> {
    match topology(&cands, ctx) {
        Topology::Any => cands,
        Topology::SameNode => cands.into_iter().filter(|c| hinted(&c.hint_nodes, ctx.node_name.as_deref())).collect(),
        Topology::SameZone => cands.into_iter().filter(|c| hinted(&c.zones, ctx.zone.as_deref())).collect(),
    }
}

/// The frontends of one service port that are reached from outside the
/// cluster, with their kind: externalIPs, load-balancer IPs, and the
/// NodePort on every NodePort address, of one address family.
fn external_frontends(svc: &ServiceModel, port: &PortModel, ctx: &NodeContext, v4: bool) -> Vec<(IpAddr, u16, Kind)> {
    let mut out = Vec::new();
    let family = |a: &&IpAddr| a.is_ipv4() == v4;
    out.extend(svc.external_ips.iter().filter(family).map(|a| (*a, port.port, Kind::ExternalIp)));
    if svc.ty == ServiceType::LoadBalancer {
        out.extend(svc.load_balancer_ips.iter().filter(family).map(|a| (*a, port.port, Kind::LoadBalancer)));
    }
    // A NodePort is served wherever the API server put one (with
    // allocateLoadBalancerNodePorts: false there is none unless the user
    // set it), at any port number: the API server's range is configurable.
    if matches!(svc.ty, ServiceType::NodePort | ServiceType::LoadBalancer) {
        if let Some(np) = port.node_port {
            out.extend(ctx.nodeport_addrs.iter().filter(family).map(|a| (*a, np, Kind::NodePort)));
        }
    }
    out
}

fn is_local(c: &Candidate, ctx: &NodeContext) -> bool {
    c.node.is_some() && c.node == ctx.node_name
}

/// Translates one service. Headless and ExternalName services, services
/// left to another proxy, and SCTP ports get no frontend.
///
/// kube-proxy's rules (nftables mode):
/// - a ClusterIP serves the endpoints internalTrafficPolicy allows;
///   traffic from outside the node to it is masqueraded;
/// - a NodePort, LB IP or externalIP serves every endpoint to pods and the
///   node; with externalTrafficPolicy: Cluster everything through it is
///   masqueraded (pods included), with Local traffic from outside the
///   node gets this node's endpoints only (an external-scope entry,
///   dropped when there are none) and keeps its source address.
pub fn translate_service(svc: &ServiceModel, slices: &[&SliceModel], ctx: &NodeContext) -> Vec<ServiceSpec> {
    if svc.proxy_name.is_some() || svc.ty == ServiceType::ExternalName || svc.cluster_ips.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for port in &svc.ports {
        let protocol = match port.protocol {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
            PortProtocol::Sctp => continue,
        };
        let port_label = if port.name.is_empty() { port.port.to_string() } else { port.name.clone() };
        let origin = format!("{}/{}:{port_label}", svc.namespace, svc.name);
        let spec = |frontend: Frontend, endpoints: Vec<Candidate>, kind: Kind| ServiceSpec {
            origin: origin.clone(),
            frontend,
            endpoints: endpoints.into_iter().map(|c| c.ep).collect(),
            selection: svc.selection,
            affinity_timeout_s: svc.affinity_timeout_s,
            local_only: false,
            kind,
            masquerade: Masquerade::default(),
            split: false,
            // kube-proxy restricts the LB IPs only, never the NodePorts.
            source_ranges: if kind == Kind::LoadBalancer { svc.load_balancer_source_ranges.clone() } else { Vec::new() },
        };
        for vip in &svc.cluster_ips {
            let mut cands = candidates(port, vip, slices);
            if svc.internal_traffic_policy_local {
                cands.retain(|c| is_local(c, ctx));
            } else {
                cands = by_topology(cands, ctx);
            }
            let mut s = spec(Frontend::new(*vip, port.port, protocol), cands, Kind::ClusterIp);
            s.local_only = svc.internal_traffic_policy_local;
            s.masquerade = Masquerade { from_pods: ctx.masquerade_all, from_outside: true };
            out.push(s);
        }
        for v4 in [true, false] {
            let externals = external_frontends(svc, port, ctx, v4);
            let Some((first, _, _)) = externals.first() else { continue };
            let local = svc.external_traffic_policy_local;
            for (addr, p, kind) in &externals {
                let frontend = Frontend::new(*addr, *p, protocol);
                if local {
                    // The external entry first: the internal one points at it.
                    let mine: Vec<Candidate> = candidates(port, first, slices).into_iter().filter(|c| is_local(c, ctx)).collect();
                    let mut s = spec(Frontend { scope: Scope::External, ..frontend }, mine, *kind);
                    s.local_only = true;
                    out.push(s);
                }
                let mut s = spec(frontend, by_topology(candidates(port, first, slices), ctx), *kind);
                s.masquerade = Masquerade { from_pods: !local || ctx.masquerade_all, from_outside: true };
                s.split = local;
                out.push(s);
            }
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
