//! The north-south world the north-south tests share: two nodes with a
//! backend pod each, a client pod, and an "outside" namespace holding
//! external clients that routes LB IPs, externalIPs and the service range
//! to node 0, as a cloud network would; and the Services every case uses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::{
    cluster::Cluster,
    traffic::{tcp_request_from, tcp_server, udp_server, Reply, Server, DEFAULT_TIMEOUT},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const BACKEND_PORT: u16 = 8080;
/// Where the backends answer one line per line asked (long-lived flows).
pub const LINES_PORT: u16 = 9000;

/// The backend's name and the peer it saw, from a `Reply::Peer` answer.
pub fn landed(reply: &[u8]) -> (String, SocketAddr) {
    let s = String::from_utf8_lossy(reply);
    let mut w = s.split_whitespace();
    let name = w.next().unwrap_or_default().to_string();
    let peer = w.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no peer in {s:?}"));
    (name, peer)
}

/// A Service of `ty` with its EndpointSlice; `endpoints` are (address,
/// node name). `extra` goes under `spec:`; `lb_ip` into the status.
#[allow(clippy::too_many_arguments)]
pub fn service(name: &str, ty: &str, cluster_ip: &str, node_port: u16, extra: &str, lb_ip: Option<&str>, endpoints: &[(Ipv4Addr, &str)], proto: &str) -> String {
    let endpoints: Vec<(IpAddr, &str)> = endpoints.iter().map(|(a, n)| (IpAddr::V4(*a), *n)).collect();
    service_at(name, ty, cluster_ip, node_port, extra, lb_ip, &endpoints, proto)
}

/// [`service`] of either family: the ClusterIP's (addresses are quoted,
/// so IPv6 ones read as YAML strings).
#[allow(clippy::too_many_arguments)]
pub fn service_at(name: &str, ty: &str, cluster_ip: &str, node_port: u16, extra: &str, lb_ip: Option<&str>, endpoints: &[(IpAddr, &str)], proto: &str) -> String {
    let family = if cluster_ip.contains(':') { "IPv6" } else { "IPv4" };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: {ty}\n  clusterIP: \"{cluster_ip}\"\n  ipFamilies: [{family}]\n  ports: [{{port: 80, targetPort: {BACKEND_PORT}, nodePort: {node_port}, protocol: {proto}}}]\n{extra}"
    );
    if let Some(ip) = lb_ip {
        y += &format!("status:\n  loadBalancer: {{ingress: [{{ip: \"{ip}\"}}]}}\n");
    }
    y += &format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: {family}\nports: [{{port: {BACKEND_PORT}, protocol: {proto}}}]\n"
    );
    y += if endpoints.is_empty() { "endpoints: []\n" } else { "endpoints:\n" };
    for (a, node) in endpoints {
        y += &format!("- addresses: [\"{a}\"]\n  nodeName: {node}\n");
    }
    y + "---\n"
}

/// Two nodes with a backend pod each (`a` on node 0, `b` on node 1) and a
/// client pod on node 0; the outside holds CLIENT and CLIENT2 and routes
/// the LB, externalIP and service ranges to node 0; the nodes route the
/// clients' range back through the outside.
pub struct World {
    pub c: Cluster,
    pub client: crate::pod::Pod,
    _pods: Vec<crate::pod::Pod>,
    _servers: Vec<Server>,
}

pub fn world(mode: &str, agent_args: &[&str]) -> World {
    let mut args = vec!["--routing", mode];
    args.extend_from_slice(agent_args);
    let c = Cluster::new(2, &args);
    let a = c.nodes[0].pod("a", 10);
    let b = c.nodes[1].pod("b", 20);
    let client = c.nodes[0].pod("client", 30);
    let servers = vec![
        tcp_server(a.ns(), BACKEND_PORT, Reply::Peer("a".into())),
        tcp_server(b.ns(), BACKEND_PORT, Reply::Peer("b".into())),
        udp_server(a.ns(), BACKEND_PORT, Reply::Peer("a".into())),
        udp_server(b.ns(), BACKEND_PORT, Reply::Peer("b".into())),
        tcp_server(a.ns(), LINES_PORT, Reply::NamePerLine("a".into())),
        tcp_server(b.ns(), LINES_PORT, Reply::NamePerLine("b".into())),
    ];
    for addr in [CLIENT, CLIENT2] {
        c.outside.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    }
    let node0 = c.nodes[0].ip.to_string();
    for range in ["10.96.0.0/16", "198.51.100.0/24", "192.0.2.0/24"] {
        c.outside.ip(&["route", "add", range, "via", &node0]);
    }
    for n in &c.nodes {
        n.node.ns().ip(&["route", "add", "203.0.113.0/24", "via", &c.outside_ip.to_string()]);
    }
    let (n0, n1) = (c.nodes[0].name().to_string(), c.nodes[1].name().to_string());
    let both = [(a.ip, n0.as_str()), (b.ip, n1.as_str())];
    let mut y = String::new();
    y += &service("cluster", "LoadBalancer", "10.96.0.80", 30080, "  externalIPs: [192.0.2.80]\n", Some("198.51.100.80"), &both, "TCP");
    y += &service("cluster-udp", "LoadBalancer", "10.96.0.82", 30082, "  externalIPs: [192.0.2.82]\n", Some("198.51.100.82"), &both, "UDP");
    y += &service(
        "local",
        "LoadBalancer",
        "10.96.0.81",
        30081,
        "  externalTrafficPolicy: Local\n  externalIPs: [192.0.2.81]\n",
        Some("198.51.100.81"),
        &both,
        "TCP",
    );
    y += &service("remote-only", "NodePort", "10.96.0.83", 30083, "  externalTrafficPolicy: Local\n", None, &[(b.ip, n1.as_str())], "TCP");
    y += &service(
        "ranged",
        "LoadBalancer",
        "10.96.0.86",
        30086,
        &format!("  loadBalancerSourceRanges: [\" {CLIENT}/32 \"]\n"),
        Some("198.51.100.86"),
        &both,
        "TCP",
    );
    y += &service("empty", "NodePort", "10.96.0.84", 30084, "", None, &[], "TCP");
    y += &service("lines", "NodePort", "10.96.0.87", 30087, "", None, &both, "TCP").replace(&format!("targetPort: {BACKEND_PORT}"), &format!("targetPort: {LINES_PORT}")).replace(&format!("port: {BACKEND_PORT}, protocol"), &format!("port: {LINES_PORT}, protocol"));
    y += &service("empty-udp", "NodePort", "10.96.0.85", 30085, "", None, &[], "UDP");
    c.write("services.yaml", &y);
    let want = format!("{node0}:30085");
    c.wait_for("node 0 programs the NodePorts", || String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    let want = format!("{}:30081", c.nodes[1].ip);
    c.wait_for("node 1 programs the NodePorts", || String::from_utf8_lossy(&c.nodes[1].node.weir(&["service", "list"]).stdout).contains(&want));
    World { c, client, _pods: vec![a, b], _servers: servers }
}

/// Connects `tries` times from `src` in the outside to `dst:port`;
/// returns the backends reached and every peer address they saw.
pub fn from_outside(w: &World, src: Ipv4Addr, dst: Ipv4Addr, port: u16, tries: usize) -> (Vec<String>, Vec<IpAddr>) {
    let mut names = Vec::new();
    let mut seen = Vec::new();
    for i in 0..tries {
        let r = tcp_request_from(&w.c.outside, src, dst, port, b"hi".to_vec(), DEFAULT_TIMEOUT)
            .unwrap_or_else(|e| panic!("try {i}: {src} -> {dst}:{port}: {e}"));
        let (name, peer) = landed(&r);
        names.push(name);
        seen.push(peer.ip());
    }
    names.sort();
    names.dedup();
    seen.sort();
    seen.dedup();
    (names, seen)
}

/// One request and its answer from `src` to `dst:port`, on this thread
/// (whose namespace is the caller's).
pub fn request_here(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> std::io::Result<Vec<u8>> {
    crate::traffic::tcp_request_here(src, dst, port, b"hi", DEFAULT_TIMEOUT)
}

pub fn drops(c: &Cluster, node: usize, reason: &str) -> u64 {
    let out = c.nodes[node].node.weir(&["stats", "-o", "json"]);
    assert!(out.status.success(), "weir stats: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    v["drops"][reason].as_u64().unwrap_or(0)
}

