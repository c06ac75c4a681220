//! The kube source follows the API server's watch streams, not only its
//! lists: a Service created, changed and deleted after the initial sync
//! reaches the datapath through ADDED, MODIFIED and DELETED events, and
//! real connections to its ClusterIP show each step.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use weir_tests::{
    kubeapi,
    traffic::{tcp_request, tcp_server, Reply},
    Agent, Node,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 7);

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": VIP.to_string(), "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(backends: &[Ipv4Addr]) -> Value {
    let endpoints: Vec<Value> = backends.iter().map(|a| json!({"addresses": [a.to_string()], "conditions": {"ready": true}})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints})
}

/// The backend names a few connections to the VIP reach (empty: the
/// first one failed).
fn reached(client: &weir_tests::Pod) -> Vec<String> {
    let mut names: Vec<String> = (0..12)
        .map_while(|_| tcp_request(client.ns(), VIP, 80, b"hi".to_vec(), Duration::from_secs(1)).ok())
        .map(|r| String::from_utf8_lossy(&r).split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn wait_reached(client: &weir_tests::Pod, want: &[&str], agent: &Agent, what: &str) {
    let start = Instant::now();
    loop {
        let got = reached(client);
        if got == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: the VIP reaches {got:?}, not {want:?}\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The scripted API server with `objects` (streaming lists served when
/// `watch_list`), and an agent against it with `args`, synced and
/// attached to `pods`. The kubeconfig lives as long as the agent needs it.
fn agent_against(node: &Node, objects: Vec<Value>, watch_list: bool, args: &[&str], pods: &[&weir_tests::Pod]) -> (kubeapi::Live, kubeapi::Kubeconfig, Agent) {
    let (port, api) = kubeapi::serve_live(node.ns(), objects, Vec::new());
    api.set_watch_list(watch_list);
    let kubeconfig = kubeapi::Kubeconfig::new(port);
    let mut agent = Agent::start_kube(node, &kubeconfig.0, args);
    agent.wait_synced();
    for p in pods {
        agent.wait_attached(&p.host_if, p.host_ifindex);
    }
    (api, kubeconfig, agent)
}

#[test]
fn services_created_changed_and_deleted_through_the_watch_reach_the_datapath() {
    let node = Node::new();
    let (a, b, client) = (node.pod("a", Ipv4Addr::new(10, 244, 1, 2)), node.pod("b", Ipv4Addr::new(10, 244, 1, 3)), node.pod("client", Ipv4Addr::new(10, 244, 1, 4)));
    let _servers = [tcp_server(a.ns(), 8080, Reply::Name("a".into())), tcp_server(b.ns(), 8080, Reply::Name("b".into()))];
    let objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})];
    let (api, _kubeconfig, agent) = agent_against(&node, objects, true, &[], &[&a, &b, &client]);
    assert!(reached(&client).is_empty(), "no service yet");

    // Created after the lists: only the watch can tell the agent.
    api.apply(service());
    api.apply(slice(&[a.ip]));
    wait_reached(&client, &["a"], &agent, "ADDED");
    // The slice changes: both backends.
    api.apply(slice(&[a.ip, b.ip]));
    wait_reached(&client, &["a", "b"], &agent, "MODIFIED");
    // Deleted: the ClusterIP goes.
    api.delete(slice(&[]));
    api.delete(service());
    wait_reached(&client, &[], &agent, "DELETED");
    let log = agent.log_text();
    assert_eq!(log.matches("initial sync").count(), 1, "the changes came as watch events, not by relisting:\n{log}");
}

/// By default (`--kube-streaming-lists=auto`) the initial state comes as
/// watch events (`sendInitialEvents=true`, ended by the
/// `k8s.io/initial-events-end` bookmark), never as a list; what it held
/// is programmed, and later changes still come through the same watches.
#[test]
fn streaming_lists_read_the_initial_state_from_watch_events_without_a_list() {
    let node = Node::new();
    let (a, b, client) = (node.pod("a", Ipv4Addr::new(10, 244, 2, 2)), node.pod("b", Ipv4Addr::new(10, 244, 2, 3)), node.pod("client", Ipv4Addr::new(10, 244, 2, 4)));
    let _servers = [tcp_server(a.ns(), 8080, Reply::Name("a".into())), tcp_server(b.ns(), 8080, Reply::Name("b".into()))];
    let objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}), service(), slice(&[a.ip])];
    let (api, _kubeconfig, agent) = agent_against(&node, objects, true, &[], &[&a, &b, &client]);
    wait_reached(&client, &["a"], &agent, "the initial state, streamed");
    api.apply(slice(&[a.ip, b.ip]));
    wait_reached(&client, &["a", "b"], &agent, "a change after the initial events");

    let requests = api.requests();
    let collections = ["/api/v1/services", "/api/v1/pods", "/api/v1/namespaces", "/api/v1/nodes", "/apis/discovery.k8s.io/v1/endpointslices", "/apis/networking.k8s.io/v1/networkpolicies"];
    for c in collections {
        let of: Vec<&String> = requests.iter().filter(|r| r.split('?').next() == Some(c)).collect();
        assert!(!of.is_empty(), "{c} was watched: {requests:#?}");
        assert!(of.iter().all(|r| r.contains("watch=true")), "{c} was never listed: {of:#?}");
        assert!(of[0].contains("sendInitialEvents=true"), "{c}'s first watch asks for the initial events: {of:#?}");
    }
    let log = agent.log_text();
    assert_eq!(log.matches("initial sync").count(), 1, "{log}");
}

/// An API server with the WatchList feature off refuses a streaming
/// list (422 Invalid): by default the agent lists that kind instead, once,
/// and syncs; with `--kube-streaming-lists=always` it keeps asking (and
/// never syncs), with `never` it only lists.
#[test]
fn a_refused_streaming_list_falls_back_to_a_list() {
    let node = Node::new();
    let (a, client) = (node.pod("a", Ipv4Addr::new(10, 244, 2, 2)), node.pod("client", Ipv4Addr::new(10, 244, 2, 4)));
    let _server = tcp_server(a.ns(), 8080, Reply::Name("a".into()));
    let objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}), service(), slice(&[a.ip])];
    let (api, _kubeconfig, agent) = agent_against(&node, objects.clone(), false, &[], &[&a, &client]);
    wait_reached(&client, &["a"], &agent, "the initial state, listed after the refusal");
    let requests = api.requests();
    let of = |c: &str| -> Vec<String> { requests.iter().filter(|r| r.split('?').next() == Some(c)).cloned().collect() };
    let svcs = of("/api/v1/services");
    assert!(svcs.first().is_some_and(|r| r.contains("sendInitialEvents=true")), "asked for a streaming list first: {svcs:#?}");
    assert_eq!(svcs.iter().filter(|r| r.contains("sendInitialEvents=true")).count(), 1, "asked once: {svcs:#?}");
    assert!(svcs.iter().any(|r| !r.contains("watch=true")), "then listed: {svcs:#?}");
    let log = agent.log_text();
    assert!(log.contains("refused a streaming list"), "{log}");
    drop(agent);

    // always: no fallback, so no sync while the server refuses.
    let (port, api) = kubeapi::serve_live(node.ns(), objects.clone(), Vec::new());
    api.set_watch_list(false);
    let kubeconfig = kubeapi::Kubeconfig::new(port);
    let agent = Agent::start_kube(&node, &kubeconfig.0, &["--kube-streaming-lists=always"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let log = agent.log_text();
    assert!(!log.contains("initial sync"), "synced without the streaming lists it must use:\n{log}");
    assert!(api.requests().iter().all(|r| r.contains("sendInitialEvents=true") || r.contains("/namespaces/")), "never listed: {:#?}", api.requests());
    drop(agent);

    // never: lists from the start, the refusal never met.
    let (api, _kubeconfig, _agent) = agent_against(&node, objects, false, &["--kube-streaming-lists=never"], &[]);
    assert!(api.requests().iter().all(|r| !r.contains("sendInitialEvents")), "{:#?}", api.requests());
}
