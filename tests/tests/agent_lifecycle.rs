//! Pins outlive the agent: SIGTERM and SIGKILL leave programs attached and
//! counting, a restarted agent adopts them, and --cleanup removes them.

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TcAttachType};

use weir_tests::{
    bins, cmd,
    stats::counters,
    traffic::{udp_exchange, udp_server, Reply, DEFAULT_TIMEOUT},
    Node,
};

#[test]
fn programs_keep_counting_while_the_agent_is_down_and_a_restart_adopts_them() {
    let node = Node::new();
    let a = node.pod("a", Ipv4Addr::new(10, 244, 3, 2));
    let b = node.pod("b", Ipv4Addr::new(10, 244, 3, 3));
    let mut agent = node.start_agent();
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);
    let _udp = udp_server(b.ns(), 9000, Reply::Echo);
    let exchange = |n| udp_exchange(a.ns(), b.ip, 9000, vec![0u8; 32], n, DEFAULT_TIMEOUT).expect("udp");

    assert_eq!(exchange(5), 5);
    let c0 = counters(&node, &a.host_if);

    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let status = agent.stop_with(signal);
        if signal == libc::SIGTERM {
            assert!(status.success(), "SIGTERM is a clean exit: {status}");
        }
        assert!(agent.link_pins(&a.host_if, a.host_ifindex).iter().all(|p| p.exists()), "pins stay after signal {signal}");
        let before = counters(&node, &a.host_if);
        assert_eq!(exchange(5), 5, "traffic flows while the agent is down");
        let after = counters(&node, &a.host_if);
        assert_eq!(after.from_pod_packets - before.from_pod_packets, 5, "still counted with the agent down");
        agent.restart();
        agent.wait_attached(&a.host_if, a.host_ifindex);
    }
    assert!(agent.log_text().contains("adopted pod programs"), "restart adopts the pinned links:\n{}", agent.log_text());
    let c1 = counters(&node, &a.host_if);
    assert!(c1.from_pod_packets >= c0.from_pod_packets + 10, "counters survive restarts: {c0:?} -> {c1:?}");
    assert_eq!(exchange(5), 5);
}

#[test]
fn cleanup_removes_every_pin_and_detaches_the_programs() {
    let node = Node::new();
    let a = node.pod("a", Ipv4Addr::new(10, 244, 4, 2));
    let mut agent = node.start_agent();
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.stop_with(libc::SIGTERM);
    let tcx_before = tcx_programs(&node, &a.host_if);
    assert_eq!(tcx_before, 2, "ingress and egress programs attached before cleanup");

    let agent_bin = bins::path("weir-agent");
    let net = format!("--net={}", node.ns().path().display());
    let bpffs = node.bpffs().display().to_string();
    cmd::run(&["nsenter", &net, agent_bin.to_str().expect("utf-8"), "--cleanup", "--bpffs", &bpffs]);

    assert!(!node.bpffs().exists(), "--cleanup removes the pin directory");
    // The kernel releases an unpinned link from a work queue: detaching
    // completes shortly after the pin is gone, not at once.
    let start = std::time::Instant::now();
    while tcx_programs(&node, &a.host_if) != 0 && start.elapsed() < std::time::Duration::from_secs(3) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(tcx_programs(&node, &a.host_if), 0, "--cleanup detaches the programs");
    let out = node.weir(&["stats"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no pins under"), "the CLI says what is wrong: {err}");
}

/// Number of TCX programs on `ifname` (ingress + egress), asked of the kernel.
fn tcx_programs(node: &Node, ifname: &str) -> usize {
    let ifname = ifname.to_string();
    node.ns().run(move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|t| SchedClassifier::query_tcx(&ifname, t).map(|(_, progs)| progs.len()).expect("query tcx"))
            .sum()
    })
}
