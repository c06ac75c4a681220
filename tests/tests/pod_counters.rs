//! Real TCP and UDP traffic between two weir-wired pods is counted per
//! interface and direction, and `weir stats -o json` reports it.

use std::net::Ipv4Addr;

use weir_tests::{
    stats::counters,
    traffic::{tcp_request, tcp_server, udp_exchange, udp_server, Reply, DEFAULT_TIMEOUT},
    Agent, Node, Pod,
};

/// Ethernet + IPv4 + UDP headers.
const UDP_OVERHEAD: u64 = 14 + 20 + 8;

/// A node with pods a and b and the agent attached to both.
fn two_pods() -> (Node, Pod, Pod, Agent) {
    let node = Node::new();
    let a = node.pod("a", Ipv4Addr::new(10, 244, 0, 2));
    let b = node.pod("b", Ipv4Addr::new(10, 244, 0, 3));
    let agent = node.start_agent();
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);
    (node, a, b, agent)
}

#[test]
fn udp_between_pods_is_counted_exactly_per_interface_and_direction() {
    let (node, a, b, _agent) = two_pods();
    let _udp = udp_server(b.ns(), 5353, Reply::Echo);

    let (a0, b0) = (counters(&node, &a.host_if), counters(&node, &b.host_if));
    const N: u64 = 20;
    const PAYLOAD: u64 = 200;
    let answered = udp_exchange(a.ns(), b.ip, 5353, vec![7u8; PAYLOAD as usize], N as usize, DEFAULT_TIMEOUT)
        .expect("udp exchange");
    assert_eq!(answered as u64, N, "every datagram is echoed");
    let da = counters(&node, &a.host_if).delta(&a0);
    let db = counters(&node, &b.host_if).delta(&b0);

    let frame = UDP_OVERHEAD + PAYLOAD;
    // a sent N requests and got N echoes; b got N requests and sent N echoes.
    assert_eq!((da.from_pod_packets, da.from_pod_bytes), (N, N * frame), "a from_pod: {da:?}");
    assert_eq!((da.to_pod_packets, da.to_pod_bytes), (N, N * frame), "a to_pod: {da:?}");
    assert_eq!((db.to_pod_packets, db.to_pod_bytes), (N, N * frame), "b to_pod: {db:?}");
    assert_eq!((db.from_pod_packets, db.from_pod_bytes), (N, N * frame), "b from_pod: {db:?}");
}

#[test]
fn tcp_between_pods_is_counted_in_both_directions() {
    let (node, a, b, _agent) = two_pods();
    let _tcp = tcp_server(b.ns(), 8080, Reply::Name("b".into()));

    let (a0, b0) = (counters(&node, &a.host_if), counters(&node, &b.host_if));
    const BYTES: u64 = 100_000;
    let reply = tcp_request(a.ns(), b.ip, 8080, vec![1u8; BYTES as usize], DEFAULT_TIMEOUT).expect("tcp request");
    assert_eq!(String::from_utf8_lossy(&reply), format!("b {BYTES}\n"));
    let da = counters(&node, &a.host_if).delta(&a0);
    let db = counters(&node, &b.host_if).delta(&b0);

    // The payload crossed a's ingress hook and b's egress hook, with headers.
    assert!(da.from_pod_bytes > BYTES, "a from_pod: {da:?}");
    assert!(db.to_pod_bytes > BYTES, "b to_pod: {db:?}");
    // Both sides of the handshake and teardown were seen: SYN, ACK, FIN at least.
    assert!(da.from_pod_packets >= 3 && db.to_pod_packets >= 3, "{da:?} {db:?}");
    assert!(db.from_pod_packets >= 3 && da.to_pod_packets >= 3, "{da:?} {db:?}");
    // What a sent is what b received, and the other way round.
    assert_eq!(da.from_pod_packets, db.to_pod_packets);
    assert_eq!(da.from_pod_bytes, db.to_pod_bytes);
    assert_eq!(db.from_pod_packets, da.to_pod_packets);
    assert_eq!(db.from_pod_bytes, da.to_pod_bytes);
}
