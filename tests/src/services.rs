//! Building service specs for tests.

use std::net::{IpAddr, Ipv4Addr};

use weir_datapath::lb::spec::{Endpoint, Frontend, Kind, Masquerade, Protocol, Selection, ServiceSpec};

/// A Maglev ClusterIP service with ready endpoints.
/// (Either family: the frontend and its backends are of one.)
pub fn cluster_ip<A: Into<IpAddr> + Copy>(vip: A, port: u16, protocol: Protocol, backends: &[(A, u16)]) -> ServiceSpec {
    ServiceSpec {
        origin: String::new(),
        frontend: Frontend::new(vip.into(), port, protocol),
        endpoints: backends.iter().map(|(a, p)| Endpoint::ready((*a).into(), *p)).collect(),
        selection: Selection::Maglev,
        affinity_timeout_s: None,
        local_only: false,
        kind: Kind::ClusterIp,
        // As the translation programs a ClusterIP.
        masquerade: Masquerade { from_pods: false, from_outside: true },
        split: false,
        source_ranges: Vec::new(),
    }
}

/// An endpoint with explicit conditions.
pub fn endpoint(addr: impl Into<IpAddr>, port: u16, ready: bool, serving: bool, terminating: bool) -> Endpoint {
    Endpoint { addr: addr.into(), port, ready, serving, terminating }
}

/// A Service and its EndpointSlice as YAML, the way a cluster would hold
/// them: `endpoints` are (address, ready, serving, terminating).
pub fn yaml_service(name: &str, vip: Ipv4Addr, port: u16, protocol: &str, target_port: u32, endpoints: &[(Ipv4Addr, bool, bool, bool)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: p, port: {port}, protocol: {protocol}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: p, port: {target_port}, protocol: {protocol}}}]\n"
    );
    y.push_str(if endpoints.is_empty() { "endpoints: []\n" } else { "endpoints:\n" });
    for (a, ready, serving, terminating) in endpoints {
        y.push_str(&format!("- addresses: [{a}]\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n"));
    }
    y
}

/// Ready endpoints for [`yaml_service`].
pub fn ready(addrs: &[Ipv4Addr]) -> Vec<(Ipv4Addr, bool, bool, bool)> {
    addrs.iter().map(|a| (*a, true, true, false)).collect()
}
