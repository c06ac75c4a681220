//! Building service specs for tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// A service port for [`yaml_dual_stack_service`]: its name, port,
/// target port and protocol (`TCP`, `UDP`).
pub type PortSpec<'a> = (&'a str, u16, u16, &'a str);

/// A `RequireDualStack` Service with a ClusterIP of each family and an
/// EndpointSlice of each `addressType`, as a cluster holds them: every
/// backend (IPv4 address, IPv6 address) ready in both.
pub fn yaml_dual_stack_service(name: &str, vip4: Ipv4Addr, vip6: Ipv6Addr, ports: &[PortSpec], backends: &[(Ipv4Addr, Ipv6Addr)]) -> String {
    let list = |target: bool| {
        ports
            .iter()
            .map(|(n, port, tport, proto)| if target { format!("{{name: {n}, port: {tport}, protocol: {proto}}}") } else { format!("{{name: {n}, port: {port}, targetPort: {tport}, protocol: {proto}}}") })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {vip4}\n  clusterIPs: [{vip4}, \"{vip6}\"]\n  ports: [{}]\n",
        list(false)
    );
    for (family, addrs) in [
        ("IPv4", backends.iter().map(|b| b.0.to_string()).collect::<Vec<_>>()),
        ("IPv6", backends.iter().map(|b| format!("\"{}\"", b.1)).collect()),
    ] {
        y.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{f}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: {family}\nports: [{}]\nendpoints:\n",
            list(true),
            f = family.to_lowercase()
        ));
        for a in addrs {
            y.push_str(&format!("- addresses: [{a}]\n  conditions: {{ready: true}}\n"));
        }
    }
    y
}
