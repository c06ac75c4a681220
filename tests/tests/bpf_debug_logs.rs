//! Kernel debug logs (`weir-agent --bpf-log-level`): with `debug`, one
//! connection to a ClusterIP leaves a line in the agent's log for each
//! decision the pod programs take (frontend matched and backend chosen,
//! the backend's ingress policy and the key that allowed it, the NAT
//! rewrites both ways, the redirect targets), each naming the object;
//! with the default (off) the same connection leaves none. Both agents
//! load every object: the pod and node objects and the socket programs,
//! so the verifier accepts them with logs on and off.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use weir_tests::{
    services::{ready, yaml_service},
    traffic::{tcp_name, tcp_server, Reply, Server, DEFAULT_TIMEOUT},
    Agent, Node, Pod,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const PORT: u16 = 8080;

struct Topo {
    client: Pod,
    backend: Pod,
    agent: Agent,
    _server: Server,
    _node: Node,
}

fn pod_yaml(name: &str, ip: Ipv4Addr, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: {name}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: agnhost\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n---\n"
    )
}

/// A client and a backend pod, the backend behind VIP:80 and isolated
/// by a NetworkPolicy that admits the client on its port; the agent
/// started with `agent_args`.
fn topo(agent_args: &[&str]) -> Topo {
    let node = Node::new();
    let client = node.pod("client", CLIENT);
    let backend = node.pod("backend", BACKEND);
    let name = node.ns().name().to_string();
    let mut objects = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels:\n    kubernetes.io/metadata.name: default\n---\n");
    objects += &pod_yaml("client", CLIENT, &name);
    objects += &pod_yaml("backend", BACKEND, &name);
    objects += &format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: backend-from-client\n  namespace: default\nspec:\n  podSelector:\n    matchLabels: {{app: backend}}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {{app: client}}\n    ports:\n    - {{protocol: TCP, port: {PORT}}}\n---\n"
    );
    node.write_source("objects.yaml", objects.as_bytes());
    node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", u32::from(PORT), &ready(&[BACKEND])).as_bytes());
    let mut agent = node.start_agent_with(agent_args);
    agent.wait_synced();
    agent.wait_attached(&client.host_if, client.host_ifindex);
    agent.wait_attached(&backend.host_if, backend.host_ifindex);
    let server = tcp_server(backend.ns(), PORT, Reply::Name("backend".into()));
    Topo { client, backend, agent, _server: server, _node: node }
}

impl Topo {
    /// One TCP connection through the VIP, answered by the backend.
    fn connect(&self) {
        let name = tcp_name(self.client.ns(), VIP, 80, DEFAULT_TIMEOUT).expect("a connection through the VIP");
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
    let to_backend = format!("redirect to ifindex {}", t.backend.host_ifindex);
    let to_client = format!("redirect to ifindex {}", t.client.host_ifindex);
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
