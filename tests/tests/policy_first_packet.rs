//! Policy from a pod's first packet: weir-cni ADD registers a Kubernetes
//! pod with its node's agent (the endpoint API on a root-only Unix
//! socket) and returns only once the pod's identity, policy and programs
//! are in the datapath; without that, ADD fails (fail closed) and leaves
//! nothing behind.

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use serde_json::json;
use weir_cni::agent::{AgentClient, AgentError, Registration};
use weir_tests::{
    cni::Env,
    containerd::{global_cni_lock, CniInstall, Containerd},
    kubeapi,
    traffic::{tcp_connect, tcp_request, tcp_server, Reply},
    Agent, Node, Pod,
};

const T: Duration = Duration::from_millis(1500);

/// Pods labelled `app: web` in `shop` take TCP 8080 from `role: client`
/// pods only, and may send nothing.
const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-only-clients, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 8080, protocol: TCP}]
";

/// A Pod object; `ip: None` for one the kubelet has not reported an IP for.
fn pod_yaml(name: &str, label: (&str, &str), node: &str, ip: Option<Ipv4Addr>) -> String {
    let status = ip.map_or_else(|| "status: {phase: Pending}\n".to_string(), |ip| format!("status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{{k}: {v}}}}}\nspec: {{nodeName: {node}, containers: [{{name: c, image: x}}]}}\n{status}---\n",
        k = label.0,
        v = label.1
    )
}

fn registration(pod: &Pod, name: &str) -> Registration {
    Registration {
        namespace: "shop".into(),
        name: name.into(),
        container_id: format!("c-{name}"),
        ifname: "eth0".into(),
        host_interface: pod.host_if.clone(),
        addresses: vec![IpAddr::V4(pod.ip)],
        timeout_ms: 8_000,
    }
}

fn client(node: &Node) -> AgentClient<'static> {
    let socket: &'static std::path::Path = Box::leak(node.agent_socket().into_boxed_path());
    AgentClient { socket, timeout: Duration::from_secs(10) }
}

/// A connection the policy drops: no answer at all (not even a RST).
fn assert_dropped(from: &Pod, to: Ipv4Addr, what: &str) {
    match tcp_connect(from.ns(), to, 8080, T) {
        Err(e) if e.kind() == ErrorKind::TimedOut => {}
        Err(e) => panic!("{what}: expected the SYN dropped by policy, got {e} (the packet reached the pod)"),
        Ok(_) => panic!("{what}: expected the SYN dropped by policy, but it connected"),
    }
}

fn registered_json(node: &Node) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(node.run_dir().join("endpoints.json")).unwrap_or_else(|_| b"[]".to_vec())).expect("endpoints.json")
}

#[test]
fn a_default_deny_pod_started_by_containerd_is_policed_from_its_first_packet() {
    let _lock = global_cni_lock();
    let node = Node::new();
    let me = node.ns().name().to_string();
    let ok = node.pod("client-ok", Ipv4Addr::new(10, 244, 44, 2));
    let no = node.pod("client-no", Ipv4Addr::new(10, 244, 44, 3));
    let objects = [
        pod_yaml("web1", ("app", "web"), &me, None),
        pod_yaml("client-ok", ("role", "client"), &me, Some(ok.ip)),
        pod_yaml("client-no", ("role", "other"), &me, Some(no.ip)),
        POLICY.to_string(),
    ];
    node.write_source("objects.yaml", objects.concat().as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    agent.wait_attached(&ok.host_if, ok.host_ifindex);
    agent.wait_attached(&no.host_if, no.host_ifindex);
    let _server = tcp_server(ok.ns(), 8080, Reply::Name("client-ok".into()));
    let _cni = CniInstall::as_pods("10.244.43.0/24", &node, "shop");
    let ctrd = Containerd::start(&node);

    // The container's first instructions run as soon as ADD has returned:
    // a listener, its address, then a connection out (egress: denied).
    let c = ctrd.spawn(
        "web1",
        &format!("(while true; do echo hi | nc -l -p 8080; done) & ip -o -4 addr show eth0; nc -w 2 {} 8080 </dev/null && echo EGRESS-OPEN || echo EGRESS-CLOSED; sleep 60", ok.ip),
    );
    let start = Instant::now();
    let ip: Ipv4Addr = loop {
        let out = c.output();
        if let Some(ip) = out.split("inet ").nth(1).and_then(|r| r.split('/').next()).and_then(|ip| ip.parse().ok()) {
            break ip;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the container did not start:\n{out}\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(5));
    };
    // At once: a pod the policy does not admit gets nothing back.
    assert_dropped(&no, ip, "client-no -> web1 right after ADD");
    // An admitted client gets through (once the listener is up).
    let start = Instant::now();
    loop {
        match tcp_request(ok.ns(), ip, 8080, Vec::new(), T) {
            Ok(reply) if String::from_utf8_lossy(&reply).contains("hi") => break,
            other => assert!(start.elapsed() < Duration::from_secs(5), "client-ok -> web1: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    while !c.output().contains("EGRESS-") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", c.output());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.output().contains("EGRESS-CLOSED"), "the pod's very first connection out is denied:\n{}", c.output());
    assert!(agent.log_text().contains("pod registered and programmed"), "{}", agent.log_text());
    let reg = registered_json(&node);
    assert_eq!(reg.as_array().map(Vec::len), Some(1), "{reg}");
    assert_eq!(reg[0]["registration"]["name"], "web1");

    // DEL unregisters.
    c.stop();
    agent.wait_for_log("pod unregistered", 1);
    assert_eq!(registered_json(&node), json!([]));
    drop(ctrd);
}

#[test]
fn add_fails_closed_without_the_agent_and_leaves_nothing() {
    let e = Env::new();
    let me = e.node.ns().name().to_string();
    let mut conf = e.conf("10.244.45.0/24");
    conf["agent"] = json!({"socket": e.node.agent_socket(), "timeoutSeconds": 3});
    let status_vars = [("CNI_PATH", e.cni_path.as_str())];

    // No agent: ADD fails with "try again later", and nothing is left.
    let (ok, out) = e.run("ADD", "c1", &conf);
    assert!(!ok && out["code"] == 11, "{out}");
    assert!(out["msg"].as_str().is_some_and(|m| m.contains("not started before its policy is programmed") && m.contains("not reachable")), "{out}");
    e.assert_clean("ADD refused for want of an agent");
    let (ok, out) = e.cni(Some("STATUS"), &status_vars, conf.to_string().as_bytes());
    assert!(!ok && out["code"] == 50, "STATUS: not ready without the agent: {out}");

    // failOpen starts the pod anyway.
    let mut open = conf.clone();
    open["agent"]["failOpen"] = json!(true);
    let (ok, out) = e.run("ADD", "c2", &open);
    assert!(ok, "{out}");
    assert!(e.run("DEL", "c2", &open).0);
    e.assert_clean("fail open");

    // An agent that does not know the pod refuses at its deadline.
    let mut agent = e.node.start_agent();
    agent.wait_synced();
    let (ok, out) = e.cni(Some("STATUS"), &status_vars, conf.to_string().as_bytes());
    assert!(ok, "STATUS: ready with the agent: {out}");
    let (ok, out) = e.run("ADD", "c3", &conf);
    assert!(!ok && out["code"] == 11 && out["msg"].as_str().is_some_and(|m| m.contains("not known to the agent")), "{out}");
    e.assert_clean("ADD of an unknown pod");

    // Known (the Env's pods are shop/web-0): programmed, recorded, and DEL forgets it.
    e.node.write_source("web.yaml", pod_yaml("web-0", ("app", "web"), &me, None).as_bytes());
    agent.wait_for_log("reconciled", 1);
    let (ok, out) = e.run("ADD", "c4", &conf);
    assert!(ok, "{out}\n{}", agent.log_text());
    assert_eq!(registered_json(&e.node)[0]["registration"]["containerId"], "c4");
    assert!(e.run("DEL", "c4", &conf).0);
    assert_eq!(registered_json(&e.node), json!([]));
    e.assert_clean("after DEL");
}

#[test]
fn the_agent_reads_a_pod_its_watch_has_not_delivered() {
    let node = Node::new();
    let me = node.ns().name().to_string();
    let web = node.pod("web-0", Ipv4Addr::new(10, 244, 46, 2));
    let other = node.pod("other", Ipv4Addr::new(10, 244, 46, 3));
    let yaml = |s: &str| -> Vec<serde_json::Value> {
        s.split("---\n").filter(|d| !d.trim().is_empty()).map(|d| serde_yaml_ng::from_str(d).expect("yaml")).collect()
    };
    let listed = [yaml(POLICY), yaml(&pod_yaml("other", ("role", "other"), &me, Some(other.ip)))].concat();
    // web-0 was created a moment ago: a GET finds it, no list has it.
    let unlisted = yaml(&pod_yaml("web-0", ("app", "web"), &me, None));
    let port = kubeapi::serve_with_unlisted(node.ns(), listed, unlisted);
    let kubeconfig = kubeapi::Kubeconfig::new(port);
    let mut agent = Agent::start_kube(&node, &kubeconfig.0, &[]);
    agent.wait_synced();
    agent.wait_attached(&web.host_if, web.host_ifindex);
    agent.wait_attached(&other.host_if, other.host_ifindex);
    let _server = tcp_server(web.ns(), 8080, Reply::Name("web".into()));
    assert!(tcp_request(other.ns(), web.ip, 8080, Vec::new(), T).is_ok(), "unknown to the agent, web-0 is not isolated yet");

    let api = client(&node);
    api.status().expect("the agent is ready");
    let p = api.register(&registration(&web, "web-0")).unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert_eq!(p.addresses.len(), 1);
    assert_eq!(p.addresses[0].address, IpAddr::V4(web.ip));
    assert_dropped(&other, web.ip, "other -> web-0 once registered");

    match api.register(&registration(&other, "gone")) {
        Err(AgentError::Refused { status: 404, message }) => assert!(message.contains("shop/gone does not exist"), "{message}"),
        r => panic!("a pod the API does not have is refused: {r:?}"),
    }
    api.unregister("c-web-0", "eth0").expect("unregister");
    let start = Instant::now();
    while tcp_request(other.ns(), web.ip, 8080, Vec::new(), T).is_err() {
        assert!(start.elapsed() < Duration::from_secs(5), "unregistered, web-0 has no known address again");
    }
}

#[test]
fn a_registration_survives_an_agent_restart_and_goes_with_its_link() {
    let node = Node::new();
    let me = node.ns().name().to_string();
    let web = node.pod("web-0", Ipv4Addr::new(10, 244, 47, 2));
    let cl = node.pod("client", Ipv4Addr::new(10, 244, 47, 3));
    let objects = [pod_yaml("web-0", ("app", "web"), &me, None), pod_yaml("client", ("role", "other"), &me, Some(cl.ip)), POLICY.to_string()];
    node.write_source("objects.yaml", objects.concat().as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    let _server = tcp_server(web.ns(), 8080, Reply::Name("web".into()));
    client(&node).register(&registration(&web, "web-0")).unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert_dropped(&cl, web.ip, "registered");

    agent.stop_with(libc::SIGTERM);
    agent.restart();
    agent.wait_for_log("initial sync", 2);
    assert!(agent.log_text().contains("read the pods weir-cni registered"), "{}", agent.log_text());
    assert_dropped(&cl, web.ip, "after a restart, with no new registration");

    node.ns().ip(&["link", "del", &web.host_if]);
    agent.wait_for_log("pod unregistered", 1);
    assert_eq!(registered_json(&node), json!([]));
}
