//! The agent attaches to pod interfaces that appear after it started
//! (rtnetlink link events), and releases them when they go away.

use std::net::Ipv4Addr;

use weir_tests::{
    stats::counters,
    traffic::{udp_exchange, udp_server, Reply, DEFAULT_TIMEOUT},
    Node,
};

#[test]
fn a_link_created_after_the_agent_started_gets_the_programs() {
    let node = Node::new();
    let agent = node.start_agent();
    // Both pods are created after the agent is ready.
    let a = node.pod("a", Ipv4Addr::new(10, 244, 1, 2));
    let b = node.pod("b", Ipv4Addr::new(10, 244, 1, 3));
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);

    let _udp = udp_server(b.ns(), 9000, Reply::Echo);
    let answered = udp_exchange(a.ns(), b.ip, 9000, vec![0u8; 64], 5, DEFAULT_TIMEOUT).expect("udp");
    assert_eq!(answered, 5);
    let ca = counters(&node, &a.host_if);
    let cb = counters(&node, &b.host_if);
    assert!(ca.from_pod_packets >= 5 && ca.to_pod_packets >= 5, "a: {ca:?}");
    assert!(cb.from_pod_packets >= 5 && cb.to_pod_packets >= 5, "b: {cb:?}");
}

#[test]
fn a_deleted_pod_interface_loses_its_pins_and_counters() {
    let node = Node::new();
    let agent = node.start_agent();
    let a = node.pod("a", Ipv4Addr::new(10, 244, 2, 2));
    let b = node.pod("b", Ipv4Addr::new(10, 244, 2, 3));
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);
    let _udp = udp_server(b.ns(), 9000, Reply::Echo);
    assert_eq!(udp_exchange(a.ns(), b.ip, 9000, vec![0u8; 64], 3, DEFAULT_TIMEOUT).expect("udp"), 3);

    let (a_if, a_idx) = (a.host_if.clone(), a.host_ifindex);
    drop(a); // deleting the pod namespace deletes the veth pair
    let pins = agent.link_pins(&a_if, a_idx);
    let start = std::time::Instant::now();
    while pins.iter().any(|p| p.exists()) && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(pins.iter().all(|p| !p.exists()), "pins of a deleted interface are removed:\n{}", agent.log_text());
    let doc = weir_tests::stats::weir_stats_json(&node);
    let ifaces = doc["interfaces"].as_array().expect("interfaces");
    assert!(
        ifaces.iter().all(|i| i["ifindex"] != a_idx),
        "counters of a deleted interface are removed: {doc}"
    );
    // The other pod is untouched.
    assert!(agent.link_pins(&b.host_if, b.host_ifindex).iter().all(|p| p.exists()));
}

/// The agent's lines logged at ERROR level.
fn errors(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// Waits up to 5 s for every pin in `pins` to be gone; whether they are.
fn wait_gone(pins: &[std::path::PathBuf]) -> bool {
    let start = std::time::Instant::now();
    while pins.iter().any(|p| p.exists()) && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pins.iter().all(|p| !p.exists())
}

#[test]
fn a_pod_interface_that_never_carried_traffic_is_released_without_an_error() {
    // Its counters were never created (the datapath creates an
    // interface's counters with its first packet), so there is nothing
    // to delete: the release is still a success, not an ERROR on every
    // pod deleted before it sent anything.
    let node = Node::new();
    let mut agent = node.start_agent();
    let a = node.pod("a", Ipv4Addr::new(10, 244, 3, 2));
    agent.wait_attached(&a.host_if, a.host_ifindex);
    let (a_if, a_idx) = (a.host_if.clone(), a.host_ifindex);
    drop(a);
    assert!(wait_gone(&agent.link_pins(&a_if, a_idx)), "pins of a deleted interface are removed:\n{}", agent.log_text());
    agent.wait_for_log("pod interface gone, released", 1);
    let log = agent.log_text();
    assert!(errors(&log).is_empty(), "releasing an interface without counters logged errors:\n{log}");
}

#[test]
fn every_interface_that_vanished_while_the_agent_was_down_is_pruned_at_its_start() {
    let node = Node::new();
    let mut agent = node.start_agent();
    let pods: Vec<_> = (0..3).map(|i| node.pod(&format!("p{i}"), Ipv4Addr::new(10, 244, 4, 2 + i))).collect();
    for p in &pods {
        agent.wait_attached(&p.host_if, p.host_ifindex);
    }
    let pins: Vec<_> = pods.iter().flat_map(|p| agent.link_pins(&p.host_if, p.host_ifindex)).collect();
    let names: Vec<String> = pods.iter().map(|p| p.host_if.clone()).collect();
    // An agent stopped leaves its programs attached and pinned; the pods
    // are deleted while no agent runs, so only the next start can see
    // their pins are stale. None of them carried traffic.
    agent.stop_with(libc::SIGTERM);
    drop(pods);
    let start = std::time::Instant::now();
    while node.ns().links_with_prefix("weir").iter().any(|l| names.contains(l)) && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    agent.restart();
    agent.wait_for_log("weir-agent ready", 2);
    assert!(wait_gone(&pins), "all three vanished interfaces lose their pins at start:\n{}", agent.log_text());
    let log = agent.log_text();
    assert!(errors(&log).is_empty() && !log.contains("pruning stale pins"), "pruning logged errors:\n{log}");
}

#[test]
fn links_whose_events_the_kernel_dropped_still_get_the_programs() {
    let node = Node::new();
    // A receive buffer far too small for a burst of link events, and no
    // periodic resync to hide a loss: only the overrun's re-list can
    // attach what the lost events announced.
    let agent = node.start_agent_with(&["--netlink-rcvbuf", "1024", "--resync-interval", "3600"]);
    let names: Vec<String> = (0..100).map(|i| format!("weir{:011x}", 0xabc_0000 + i)).collect();
    let batch: String = names.iter().enumerate().map(|(i, n)| format!("link add {n} type veth peer name wpeer{i}\nlink set {n} up\n")).collect();
    let file = std::env::temp_dir().join(weir_tests::names::unique("weir-batch"));
    std::fs::write(&file, batch).expect("batch file");
    // The agent is stopped (SIGSTOP, by its PID) while the burst is made,
    // so the events surely pile up past the buffer however fast this
    // machine is: a running agent on a fast machine kept up with the
    // burst and the overrun this test is about never happened.
    {
        let _stopped = Stopped::new(agent.pid().expect("the agent runs"));
        node.ns().ip(&["-batch", &file.display().to_string()]);
    }
    let _ = std::fs::remove_file(&file);
    let pins: Vec<_> = names.iter().map(|n| agent.link_pins(n, node.ns().ifindex(n))).collect();
    let start = std::time::Instant::now();
    while pins.iter().flatten().any(|p| !p.exists()) && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let missing: Vec<_> = pins.iter().flatten().filter(|p| !p.exists()).collect();
    assert!(missing.is_empty(), "{} of 200 program pins missing, e.g. {:?}:\n{}", missing.len(), missing.first(), agent.log_text());
    let metrics = node.agent_http("/metrics");
    let overruns: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_netlink_overruns_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(overruns >= 1.0, "the burst overran the socket (else this test proves nothing):\n{metrics}");
}

/// A process stopped with SIGSTOP until this is dropped (SIGCONT), even
/// when the test panics meanwhile.
struct Stopped(i32);

impl Stopped {
    fn new(pid: u32) -> Self {
        let pid = pid as i32;
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP {pid}: {}", std::io::Error::last_os_error());
        Self(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}
