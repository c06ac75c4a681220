//! The agent's probes against a scripted API server that is down at
//! start, comes up, goes down again and comes back: `/livez` answers 200
//! throughout (an API outage is no reason to restart thousands of agents
//! into a relist storm), `/readyz` only once the first sync has run and
//! while no watch has been failing for longer than `--ready-stale-after`.

use std::time::{Duration, Instant};

use weir_tests::{kubeapi, Agent, Node};

fn status(node: &Node, path: &str) -> u16 {
    node.agent_http(path).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn wait_status(node: &Node, path: &str, want: u16, within: Duration, agent: &Agent) {
    let start = Instant::now();
    while status(node, path) != want {
        assert!(start.elapsed() < within, "{path} did not answer {want} within {within:?}: {}\n{}", node.agent_http(path), agent.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn liveness_survives_an_api_outage_and_readiness_follows_it() {
    let node = Node::new();
    let objects = vec![serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "resourceVersion": "1"}})];
    let (port, api) = kubeapi::serve_switchable(node.ns(), objects);
    let kubeconfig = kubeapi::Kubeconfig::new(port);
    api.set_down(true);
    let mut agent = Agent::start_kube(&node, &kubeconfig.0, &["--ready-stale-after", "3"]);
    // Down at start: alive, serving, not ready.
    for _ in 0..10 {
        assert_eq!(status(&node, "/livez"), 200, "{}", node.agent_http("/livez"));
        let r = node.agent_http("/readyz");
        assert!(r.starts_with("HTTP/1.1 503") && r.contains("starting"), "{r}");
        assert_eq!(status(&node, "/healthz"), 503, "/healthz is readiness");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(agent.is_running(), "the agent keeps running without the API server");

    api.set_down(false);
    wait_status(&node, "/readyz", 200, Duration::from_secs(45), &agent);
    agent.wait_synced();

    // Down again: the open watches end and fail; after 3 s of failure the
    // agent is stale, still alive.
    api.set_down(true);
    wait_status(&node, "/readyz", 503, Duration::from_secs(45), &agent);
    let r = node.agent_http("/readyz");
    assert!(r.contains("stale: watches failing"), "{r}");
    assert_eq!(status(&node, "/livez"), 200);

    // Back: the watches relist (410 Gone after the outage) and readiness returns.
    api.set_down(false);
    wait_status(&node, "/readyz", 200, Duration::from_secs(45), &agent);
    assert_eq!(status(&node, "/livez"), 200);
    assert!(agent.is_running());
}
