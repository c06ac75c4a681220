//! Pod traffic out of the cluster, in both routing modes: masqueraded in
//! eBPF to the node's address on its uplink (to_net), restored on the
//! replies and ICMP errors (from_net), turned off or narrowed by flag,
//! and a full table reported as a drop with its reason, never silent.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use weir_tests::{
    cluster::Cluster,
    traffic::{ping, tcp_request, tcp_server, udp_request, udp_server, Reply, DEFAULT_TIMEOUT},
};

/// The peer a `Reply::Peer` server saw: "<name> <addr>:<port>".
fn peer(reply: &[u8]) -> SocketAddr {
    let s = String::from_utf8_lossy(reply);
    s.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no peer in {s:?}"))
}

fn drops(c: &Cluster, node: usize, reason: &str) -> u64 {
    let out = c.nodes[node].node.weir(&["stats", "-o", "json"]);
    assert!(out.status.success(), "weir stats: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    v["drops"][reason].as_u64().unwrap_or(0)
}

fn pods_reach_the_outside_from_their_nodes_address_and_get_the_replies(mode: &str) {
    let c = Cluster::new(2, &["--routing", mode]);
    let (a, b) = (c.nodes[0].pod("a", 10), c.nodes[1].pod("b", 20));
    let out = &c.outside;
    let _srv = [
        tcp_server(out, 8080, Reply::Peer("out".into())),
        udp_server(out, 5353, Reply::Peer("out".into())),
        tcp_server(out, 8081, Reply::Echo),
    ];
    let ports = weir_common::masq::PORT_MIN..=weir_common::masq::PORT_MAX;
    let frames = c.capture(|| {
        for (pod, node) in [(&a, &c.nodes[0]), (&b, &c.nodes[1])] {
            for i in 0..5 {
                let r = tcp_request(pod.ns(), c.outside_ip, 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("TCP {i} from {} out: {e}", pod.ip));
                let p = peer(&r);
                assert_eq!(p.ip(), std::net::IpAddr::V4(node.ip), "the outside saw node {}'s address", node.index);
                assert!(ports.contains(&p.port()), "from a masquerade port: {p}");
                let r = udp_request(pod.ns(), c.outside_ip, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("UDP {i} from {} out: {e}", pod.ip));
                assert_eq!(peer(&r).ip(), std::net::IpAddr::V4(node.ip));
            }
            assert!(ping(pod.ns(), c.outside_ip), "ICMP echo from {} is masqueraded and its reply restored", pod.ip);
        }
    });
    let to_outside: Vec<_> = frames.iter().filter(|f| f.1 == c.outside_ip).collect();
    assert!(!to_outside.is_empty(), "node 0's traffic to the outside crossed its fabric port");
    assert!(to_outside.iter().all(|f| f.0 == c.nodes[0].ip), "nothing left node 0 from a pod address: {to_outside:?}");
    // An ICMP error about a masqueraded flow (the outside's port
    // unreachable, quoting the node's address and port) reaches the pod
    // quoting the pod's own packet: its connected socket is refused.
    let err = udp_request(a.ns(), c.outside_ip, 5999, b"x".to_vec(), DEFAULT_TIMEOUT).expect_err("nothing listens on 5999");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "the outside's ICMP error reached the pod's socket: {err}");
    // A whole MiB through the translation (checksums of offloaded segments).
    let mib: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(tcp_request(a.ns(), c.outside_ip, 8081, mib.clone(), Duration::from_secs(20)).expect("1 MiB out and back"), mib);
    // Pod to pod across nodes keeps the pod's address (inside the cluster).
    let _pod_srv = udp_server(b.ns(), 5353, Reply::Peer("b".into()));
    assert_eq!(peer(&udp_request(a.ns(), b.ip, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("pod to pod")).ip(), std::net::IpAddr::V4(a.ip));
}

fn masquerade_is_turned_off_or_narrowed_by_flag(mode: &str) {
    for flags in [&["--masquerade=false"][..], &["--non-masquerade-cidrs", "192.168.0.192/26"][..]] {
        let mut args = vec!["--routing", mode];
        args.extend_from_slice(flags);
        let c = Cluster::new(1, &args);
        let a = c.nodes[0].pod("a", 10);
        // The outside routes the pod CIDR to the node, so unmasqueraded
        // traffic gets its replies; it also holds a second address.
        c.outside.ip(&["route", "add", &c.nodes[0].pod_cidr(), "via", &c.nodes[0].ip.to_string()]);
        c.outside.ip(&["addr", "add", "192.168.0.100/24", "dev", "eth0"]);
        let _srv = tcp_server(&c.outside, 8080, Reply::Peer("out".into()));
        let kept = peer(&tcp_request(a.ns(), c.outside_ip, 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("{flags:?}: {e}")));
        assert_eq!(kept.ip(), std::net::IpAddr::V4(a.ip), "{flags:?}: the pod's own address reaches {}", c.outside_ip);
        let other = Ipv4Addr::new(192, 168, 0, 100);
        let seen = peer(&tcp_request(a.ns(), other, 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("{flags:?}: {e}")));
        let want = if flags[0] == "--masquerade=false" { a.ip } else { c.nodes[0].ip };
        assert_eq!(seen.ip(), std::net::IpAddr::V4(want), "{flags:?}: towards {other}");
    }
}

fn a_full_masquerade_table_refuses_new_flows_with_a_reason_and_frees_up(mode: &str) {
    // Two flows' worth of entries; UDP flows expire after 2 to 3 s.
    let c = Cluster::new(1, &["--routing", mode, "--masquerade-max-entries", "4", "--ct-udp-timeout", "2", "--ct-gc-interval", "1"]);
    let a = c.nodes[0].pod("a", 10);
    let _srv = udp_server(&c.outside, 5353, Reply::Peer("out".into()));
    let ask = |t| udp_request(a.ns(), c.outside_ip, 5353, b"hi".to_vec(), t);
    // Each request is a new socket, so a new flow.
    ask(DEFAULT_TIMEOUT).expect("flow 1");
    ask(DEFAULT_TIMEOUT).expect("flow 2");
    assert!(ask(Duration::from_millis(500)).is_err(), "a third flow does not fit");
    assert!(drops(&c, 0, "masquerade_full") >= 1, "the refusal is counted under its reason");
    // The collector frees expired flows: new ones fit again.
    std::thread::sleep(Duration::from_secs(5));
    ask(DEFAULT_TIMEOUT).expect("a new flow after the old ones expired");
}

fn a_clusterip_whose_backend_is_outside_the_cluster_is_masqueraded_and_answers_from_its_vip(mode: &str) {
    use weir_tests::services::{ready, yaml_service};
    let c = Cluster::new(1, &["--routing", mode]);
    let a = c.nodes[0].pod("a", 10);
    let _srv = [tcp_server(&c.outside, 8080, Reply::Peer("out".into())), udp_server(&c.outside, 8080, Reply::Peer("out".into()))];
    let vip = Ipv4Addr::new(10, 96, 0, 70);
    c.write("ext.yaml", &(yaml_service("ext", vip, 80, "TCP", 8080, &ready(&[c.outside_ip])) + "---\n" + &yaml_service("extu", vip, 53, "UDP", 8080, &ready(&[c.outside_ip]))));
    let want = format!("{}:8080", c.outside_ip);
    c.wait_for("the agent programs the external backend", || String::from_utf8_lossy(&c.nodes[0].node.weir(&["backend", "list"]).stdout).contains(&want));
    // DNAT to the outside, redirected to the uplink, masqueraded there.
    let r = tcp_request(a.ns(), vip, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("TCP through the VIP to the outside");
    assert_eq!(peer(&r).ip(), std::net::IpAddr::V4(c.nodes[0].ip), "the outside backend saw the node's address");
    // The reply comes back from the VIP (a connected UDP socket takes nothing else).
    let r = udp_request(a.ns(), vip, 53, b"q".to_vec(), DEFAULT_TIMEOUT).expect("UDP through the VIP, answered from the VIP");
    assert_eq!(peer(&r).ip(), std::net::IpAddr::V4(c.nodes[0].ip));
}

weir_tests::both_routing_modes!(
    pods_reach_the_outside_from_their_nodes_address_and_get_the_replies,
    masquerade_is_turned_off_or_narrowed_by_flag,
    a_full_masquerade_table_refuses_new_flows_with_a_reason_and_frees_up,
    a_clusterip_whose_backend_is_outside_the_cluster_is_masqueraded_and_answers_from_its_vip,
);
