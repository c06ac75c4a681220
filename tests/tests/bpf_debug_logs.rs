//! Kernel debug logs (`weir-agent --bpf-log-level`): with `debug`, one
//! connection to a ClusterIP leaves a line in the agent's log for each
//! decision the pod programs take (frontend matched and backend chosen,
//! the backend's ingress policy and the key that allowed it, the NAT
//! rewrites both ways, the redirect targets), each naming the object;
//! with the default (off) the same connection leaves none. An IPv6
//! connection's lines print whole IPv6 addresses, in the `[addr]:port`
//! form. Both agents load every object: the pod and node objects and the
//! socket programs, so the verifier accepts them with logs on and off.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use weir_tests::{
    services::yaml_dual_stack_service,
    traffic::{tcp_name, tcp_server_at, Reply, Server, DEFAULT_TIMEOUT},
    Agent, Node, Pod,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 5);
const PORT: u16 = 8080;

struct Topo {
    client: Pod,
    backend: Pod,
    agent: Agent,
    _server: Server,
    _node: Node,
}

fn pod_yaml(name: &str, ip: Ipv4Addr, ip6: Ipv6Addr, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {name}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: agnhost\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  - ip: \"{ip6}\"\n---\n"
    )
}

/// A dual-stack client and backend pod, the backend behind VIP:80 and
/// VIP6:80 and isolated by a NetworkPolicy that admits the client on its
/// port; the agent started with `agent_args`.
fn topo(agent_args: &[&str]) -> Topo {
    let node = Node::new();
    let mut client = node.pod("client", CLIENT);
    client.add_v6(&node, CLIENT6);
    let mut backend = node.pod("backend", BACKEND);
    backend.add_v6(&node, BACKEND6);
    let name = node.ns().name().to_string();
    let mut objects = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n    kubernetes.io/metadata.name: default\n---\n");
    objects += &pod_yaml("client", CLIENT, CLIENT6, &name);
    objects += &pod_yaml("backend", BACKEND, BACKEND6, &name);
    objects += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: backend-from-client\n  namespace: default\nspec:\n  podSelector:\n    matchLabels: {{app: backend}}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {{app: client}}\n    ports:\n    - {{protocol: TCP, port: {PORT}}}\n---\n"
    );
    node.write_source("objects.yaml", objects.as_bytes());
    node.write_source("svc.yaml", yaml_dual_stack_service("web", VIP, VIP6, &[("http", 80, PORT, "TCP")], &[(BACKEND, BACKEND6)]).as_bytes());
    let mut agent = node.start_agent_with(agent_args);
    agent.wait_synced();
    agent.wait_attached(&client.host_if, client.host_ifindex);
    agent.wait_attached(&backend.host_if, backend.host_ifindex);
    // Bound to `::`: both families.
    let server = tcp_server_at(backend.ns(), Ipv6Addr::UNSPECIFIED.into(), PORT, Reply::Name("backend".into()));
    Topo { client, backend, agent, _server: server, _node: node }
}

impl Topo {
    /// One TCP connection through the VIP, answered by the backend.
    fn connect(&self) {
        self.connect_to(VIP.into());
    }

    fn connect_to(&self, vip: IpAddr) {
        let name = tcp_name(self.client.ns(), vip, 80, DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("a connection through {vip}: {e}"));
        assert_eq!(name, "backend");
    }

    /// The agent's kernel records (tracing target `weir::bpf`).
    fn kernel_lines(&self) -> Vec<String> {
        self.agent.log_text().lines().filter(|l| l.contains("weir::bpf")).map(str::to_string).collect()
    }
}

/// The kernel line holding every one of `parts`, within 10 s.
fn wait_line(t: &Topo, parts: &[&str]) -> String {
    let start = Instant::now();
    loop {
        if let Some(l) = t.kernel_lines().into_iter().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("no kernel log line with {parts:?}; kernel lines:\n{}", t.kernel_lines().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn debug_logs_every_decision_of_a_service_connection_naming_the_object() {
    let t = topo(&["--bpf-log-level", "debug"]);
    assert!(t.agent.log_text().contains("kernel debug logs on"), "the agent says the logs are on:\n{}", t.agent.log_text());
    t.connect();
    let (c, b) = (CLIENT.to_string(), BACKEND.to_string());
    // Both are pods of this node: redirected to their own link without a
    // FIB lookup (`fwd::local_pod`), to the right one.
    let to_backend = format!("redirect to ifindex {}, a pod of this node", t.backend.host_ifindex);
    let to_client = format!("redirect to ifindex {}, a pod of this node", t.client.host_ifindex);
    let lines = [
        // Frontend matched, backend chosen.
        wait_line(&t, &["lb: frontend 10.96.0.10:80 matched service", &format!("{b}:{PORT} chosen for {c}:")]),
        // The backend's ingress, judged on the translated tuple, and the key that allowed it.
        wait_line(&t, &["policy: ingress of endpoint", &format!("from {c} "), &format!("port {PORT}: allow by key (identity")]),
        // DNAT of the request, reverse NAT of the reply.
        wait_line(&t, &["nat: service flow", &format!("-> 10.96.0.10:80 rewritten to {c}:"), &format!("-> {b}:{PORT}")]),
        wait_line(&t, &["nat: reply", &format!("{b}:{PORT} -> {c}:"), "rewritten to 10.96.0.10:80 ->"]),
        // Where each went: the backend's and the client's host veth.
        wait_line(&t, &[&format!("fwd: {b}: "), &to_backend]),
        wait_line(&t, &[&format!("fwd: {c}: "), &to_client]),
    ];
    for l in &lines {
        assert!(l.contains("DEBUG"), "kernel debug records keep their level: {l}");
        assert!(l.contains("object=pod"), "a record names the object that logged it: {l}");
    }
    eprintln!("{}", lines.join("\n"));
}

#[test]
fn an_ipv6_connection_logs_whole_ipv6_addresses() {
    let t = topo(&["--bpf-log-level", "debug"]);
    t.connect_to(VIP6.into());
    let (c, b, v) = (CLIENT6.to_string(), BACKEND6.to_string(), format!("[{VIP6}]:80"));
    // Both are pods of this node: redirected to their own link without a
    // FIB lookup (`fwd::local_pod`), to the right one.
    let to_backend = format!("redirect to ifindex {}, a pod of this node", t.backend.host_ifindex);
    let to_client = format!("redirect to ifindex {}, a pod of this node", t.client.host_ifindex);
    let lines = [
        wait_line(&t, &[&format!("lb: frontend {v} matched service"), &format!("[{b}]:{PORT} chosen for [{c}]:")]),
        wait_line(&t, &["policy: ingress of endpoint", &format!("from {c} "), &format!("port {PORT}: allow by key (identity")]),
        wait_line(&t, &["nat: service flow", &format!("-> {v} rewritten to [{c}]:"), &format!("-> [{b}]:{PORT}")]),
        wait_line(&t, &["nat: reply", &format!("[{b}]:{PORT} -> [{c}]:"), &format!("rewritten to {v} ->")]),
        wait_line(&t, &[&format!("fwd: {b}: "), &to_backend]),
        wait_line(&t, &[&format!("fwd: {c}: "), &to_client]),
    ];
    for l in &lines {
        assert!(l.contains("DEBUG") && l.contains("object=pod"), "{l}");
    }
    // Nothing printed as IPv4: before, an IPv6 address showed as its last four bytes.
    let last4 = |a: Ipv6Addr| {
        let o = a.octets();
        Ipv4Addr::new(o[12], o[13], o[14], o[15]).to_string()
    };
    for l in t.kernel_lines() {
        for a in [VIP6, CLIENT6, BACKEND6] {
            assert!(!l.contains(&format!(" {}:", last4(a))), "no IPv6 address cut to IPv4: {l}");
        }
    }
    eprintln!("{}", lines.join("\n"));
}

#[test]
fn trace_adds_frontend_misses() {
    let t = topo(&["--bpf-log-level", "trace"]);
    t.connect();
    // Straight to the backend: no service, a frontend miss.
    let name = tcp_name(t.client.ns(), BACKEND, PORT, DEFAULT_TIMEOUT).expect("a direct connection");
    assert_eq!(name, "backend");
    let miss = wait_line(&t, &["lb: frontend miss", &format!("{BACKEND}:{PORT} proto 6: no service")]);
    assert!(miss.contains("TRACE") && miss.contains("object=pod"), "{miss}");
    // Debug lines come too.
    wait_line(&t, &["lb: frontend 10.96.0.10:80 matched service"]);
}

#[test]
fn off_by_default_the_same_connection_logs_nothing() {
    let t = topo(&[]);
    t.connect();
    // Give a reader, were there one, the time the debug test allows.
    std::thread::sleep(Duration::from_secs(2));
    let text = t.agent.log_text();
    assert!(!text.contains("kernel debug logs on"), "logs are off by default:\n{text}");
    assert!(t.kernel_lines().is_empty(), "no kernel records with logs off:\n{}", t.kernel_lines().join("\n"));
    for decision in ["lb: ", "policy: ", "nat: ", "fwd: "] {
        assert!(!text.contains(decision), "no `{decision}` line with logs off:\n{text}");
    }
}
