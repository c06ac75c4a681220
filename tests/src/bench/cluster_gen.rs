//! The generated cluster of issue 18's measurements: 4,000 Nodes (the
//! first is the measuring node), 100,000 Pods in 1,000 namespaces with 30
//! label sets, 10,000 Services × 10 endpoints, 1,000 NetworkPolicies and
//! 100 ClusterNetworkPolicies, as upstream YAML (`weir-cp-bench
//! --cluster`, `weir-cni-bench --cluster`).

use std::{fmt::Write as _, net::Ipv4Addr};

use crate::Node;

/// ClusterIP of service `i`, counted up from 10.96.0.1.
pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i)
}

/// Writes the whole cluster into `node`'s source directory: the objects
/// the measurements change get files of their own (`namespace-0.yaml`,
/// `node-0.yaml`, `pod-0.yaml`, `svc-0.yaml`, `np-0.yaml`).
pub fn write_cluster(node: &Node, me: &str, nodes: u32, pods: u32) {
    let mut ns = String::new();
    for k in 1..NAMESPACES {
        ns.push_str(&namespace_yaml(k, k % 20));
    }
    node.write_source("namespaces.yaml", ns.as_bytes());
    node.write_source("namespace-0.yaml", namespace_yaml(0, 0).as_bytes());
    node.write_source("node-0.yaml", node_yaml(me, 0, 0).as_bytes());
    write_chunks(node, "nodes", nodes - 1, 100, |i| node_yaml(me, i + 1, 0));
    node.write_source("pod-0.yaml", pod_yaml(me, nodes, 0, 0, None).as_bytes());
    write_chunks(node, "pods", pods - 1, 100, |i| pod_yaml(me, nodes, i + 1, (i + 1) % LABEL_SETS, None));
    node.write_source("svc-0.yaml", service_yaml(nodes, pods, 0, None).as_bytes());
    write_chunks(node, "svcs", SERVICES - 1, 100, |i| service_yaml(nodes, pods, i + 1, None));
    node.write_source("np-0.yaml", netpol_yaml(0, 80).as_bytes());
    write_chunks(node, "nps", NETPOLS - 1, 100, |i| netpol_yaml(i + 1, 80));
    write_chunks(node, "cnps", CNPS, 100, cnp_yaml);
}

/// Namespace `k` with label `team: t<team>`.
pub fn namespace_yaml(k: u32, team: u32) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{k}, labels: {{team: t{team}}}}}\n---\n")
}

pub const NAMESPACES: u32 = 1000;
pub const LABEL_SETS: u32 = 30;
pub const SERVICES: u32 = 10_000;
pub const ENDPOINTS: u32 = 10;
pub const NETPOLS: u32 = 1000;
pub const CNPS: u32 = 100;

pub fn pod_ip(nodes: u32, p: u32) -> Ipv4Addr {
    let (n, idx) = (p % nodes, p / nodes);
    Ipv4Addr::new(10, 64 + (n >> 8) as u8, (n & 255) as u8, (idx % 250 + 2) as u8)
}

pub fn node_name(me: &str, n: u32) -> String {
    if n == 0 { me.to_string() } else { format!("node-{n}") }
}

pub fn node_yaml(me: &str, n: u32, beat: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {}, labels: {{topology.kubernetes.io/zone: z{}}}}}\nspec: {{podCIDR: 10.{}.{}.0/24}}\nstatus:\n  addresses: [{{type: InternalIP, address: 172.16.{}.{}}}]\n  conditions: [{{type: Ready, status: 'True', lastHeartbeatTime: '2026-12-03T00:{:02}:{:02}Z'}}]\n---\n",
        node_name(me, n), n % 3, 64 + (n >> 8), n & 255, n >> 8, n & 255, beat / 60 % 60, beat % 60
    )
}

pub fn pod_yaml(me: &str, nodes: u32, p: u32, label: u32, node: Option<u32>) -> String {
    let ip = pod_ip(nodes, p);
    let n = node.unwrap_or(p % nodes);
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{p}, namespace: ns-{}, labels: {{app: app{label}, tier: t{}}}}}\nspec: {{nodeName: {}, containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n---\n",
        p % NAMESPACES, p % 3, node_name(me, n)
    )
}

pub fn service_yaml(nodes: u32, pods: u32, i: u32, not_ready: Option<u32>) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: ns-{}}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-1, namespace: ns-{}, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
        i % NAMESPACES, vip(i), i % NAMESPACES
    );
    for j in 0..ENDPOINTS {
        let p = (i * ENDPOINTS + j) % pods;
        let _ = writeln!(y, "- addresses: [{}]\n  conditions: {{ready: {}}}\n  nodeName: {}", pod_ip(nodes, p), not_ready != Some(j), format_args!("node-{}", p % nodes));
    }
    y.push_str("---\n");
    y
}

pub fn netpol_yaml(k: u32, port: u32) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np-{k}, namespace: ns-{}}}\nspec:\n  podSelector: {{matchLabels: {{app: app{}}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}, {{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]\n    ports: [{{port: {port}, protocol: TCP}}, {{port: http}}]\n---\n",
        k % NAMESPACES, k % LABEL_SETS, (k + 1) % LABEL_SETS, k % 20
    )
}

pub fn cnp_yaml(k: u32) -> String {
    format!(
        "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {{name: cnp-{k}}}\nspec:\n  priority: {k}\n  subject: {{namespaces: {{matchLabels: {{team: t{}}}}}}}\n  ingress:\n  - {{name: deny-{k}, action: Deny, peers: [{{pods: {{matchLabels: {{app: app{}}}}}, namespaces: {{}}}}]}}\n---\n",
        k % 20, k % LABEL_SETS
    )
}

pub fn write_chunks(node: &Node, prefix: &str, n: u32, per_file: u32, f: impl Fn(u32) -> String) {
    let mut chunk = String::new();
    for i in 0..n {
        chunk.push_str(&f(i));
        if (i + 1) % per_file == 0 || i + 1 == n {
            node.write_source(&format!("{prefix}-{:06}.yaml", i / per_file), chunk.as_bytes());
            chunk.clear();
        }
    }
}
