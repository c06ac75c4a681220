//! IPv6 between nodes, in both routing modes: the cluster's fabric given
//! IPv6 (`Cluster::enable_ipv6`: each Node object names an IPv6
//! InternalIP and an IPv6 pod CIDR). Natively each agent routes every
//! other node's IPv6 pod CIDR via that node's IPv6 InternalIP, as it does
//! for IPv4; under VXLAN through the tunnel, whose outer header stays
//! IPv4 (the node's IPv4 InternalIP). Pods reach pods on other nodes with their own addresses; an IPv6
//! ClusterIP load-balances to a backend on another node and its replies
//! come back from the VIP (the client node's `from_net` reverse-NATs
//! them); an IPv6 NodePort reaches a backend on another node, masqueraded
//! to the node's IPv6 address as kube-proxy does; NetworkPolicy selects
//! pods on other nodes by their IPv6 addresses. Under VXLAN a pod's
//! forged IPv6 source is refused at the far end (`tunnel_spoofed`).

use std::net::{IpAddr, Ipv6Addr};

use weir_tests::{
    cluster::Cluster,
    north_south::{landed, service_at},
    traffic::{ping, tcp_request, tcp_request_from, tcp_server_at, udp_request, udp_server_at, Reply, Server, DEFAULT_TIMEOUT},
};

fn any() -> IpAddr {
    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
}

/// Two nodes with IPv6, each agent routing the other's IPv6 pod CIDR.
fn cluster(mode: &str) -> Cluster {
    cluster_with(mode, &[])
}

/// [`cluster`], the agents given `extra` arguments too.
fn cluster_with(mode: &str, extra: &[&str]) -> Cluster {
    let args: Vec<&str> = ["--routing", mode].iter().chain(extra).copied().collect();
    let mut c = Cluster::new(2, &args);
    c.enable_ipv6();
    for (i, j) in [(0, 1), (1, 0)] {
        let want = match mode {
            "vxlan" => format!("{} dev vx-weir", c.nodes[j].pod_cidr6()),
            _ => format!("{} via {}", c.nodes[j].pod_cidr6(), c.nodes[j].ip6.expect("IPv6")),
        };
        c.wait_for("each node routes the other's IPv6 pod CIDR", || c.nodes[i].node.ns().ip(&["-6", "route", "show", "proto", "87"]).contains(&want));
    }
    c
}

fn servers(pod: &weir_tests::Pod, name: &str, port: u16) -> Vec<Server> {
    vec![tcp_server_at(pod.ns(), any(), port, Reply::Peer(name.into())), udp_server_at(pod.ns(), any(), port, Reply::Peer(name.into()))]
}

fn pods_reach_pods_on_other_nodes_over_ipv6_with_their_own_address(mode: &str) {
    let c = cluster(mode);
    let (a, b) = (c.nodes[0].pod_dual("a", 10), c.nodes[1].pod_dual("b", 20));
    let (a6, b6) = (a.ip6.expect("dual-stack"), b.ip6.expect("dual-stack"));
    let _s = [servers(&a, "a", 8080), servers(&b, "b", 8080)];
    for (from, to, name, own) in [(&a, b6, "b", a6), (&b, a6, "a", b6)] {
        let r = tcp_request(from.ns(), to, 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("TCP to [{to}]: {e}"));
        assert_eq!(landed(&r), (name.to_string(), landed(&r).1));
        assert_eq!(landed(&r).1.ip(), IpAddr::V6(own), "the server saw the client pod's own IPv6 address");
        let r = udp_request(from.ns(), to, 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("UDP to [{to}]: {e}"));
        assert_eq!(landed(&r).1.ip(), IpAddr::V6(own));
    }
}

fn an_ipv6_clusterip_with_a_remote_backend_answers_from_its_vip_and_keeps_the_client_address(mode: &str) {
    let c = cluster(mode);
    let (a, b) = (c.nodes[0].pod_dual("a", 10), c.nodes[1].pod_dual("b", 20));
    let _s = servers(&b, "b", weir_tests::north_south::BACKEND_PORT);
    let vip: Ipv6Addr = "fd00:10:96::60".parse().expect("VIP");
    let n1 = c.nodes[1].name().to_string();
    let eps = [(IpAddr::V6(b.ip6.expect("dual-stack")), n1.as_str())];
    let y = service_at("web", "ClusterIP", &vip.to_string(), 0, "", None, &eps, "TCP").replace(", nodePort: 0", "")
        + &service_at("dns", "ClusterIP", "fd00:10:96::61", 0, "", None, &eps, "UDP").replace(", nodePort: 0", "");
    c.write("svc.yaml", &y);
    let want = format!("[{vip}]:80");
    c.wait_for("node 0 programs the service", || String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    let a6 = IpAddr::V6(a.ip6.expect("dual-stack"));
    for i in 0..4 {
        let r = tcp_request(a.ns(), vip, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("TCP {i} through the VIP: {e}"));
        assert_eq!((landed(&r).0.as_str(), landed(&r).1.ip()), ("b", a6), "the remote backend saw the client's own address");
        // A connected socket takes only answers from the VIP itself.
        let vip2: Ipv6Addr = "fd00:10:96::61".parse().expect("VIP");
        let r = udp_request(a.ns(), vip2, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("UDP {i} through the VIP: {e}"));
        assert_eq!(landed(&r).1.ip(), a6);
    }
}

fn an_ipv6_node_port_reaches_a_backend_on_another_node_masqueraded(mode: &str) {
    let c = cluster(mode);
    let b = c.nodes[1].pod_dual("b", 20);
    let _s = servers(&b, "b", weir_tests::north_south::BACKEND_PORT);
    let n1 = c.nodes[1].name().to_string();
    let eps = [(IpAddr::V6(b.ip6.expect("dual-stack")), n1.as_str())];
    c.write("np.yaml", &service_at("np", "NodePort", "fd00:10:96::62", 30062, "", None, &eps, "TCP"));
    let node0 = c.nodes[0].ip6.expect("IPv6");
    let want = format!("[{node0}]:30062");
    c.wait_for("node 0 programs the NodePort", || String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    for i in 0..4 {
        let r = tcp_request_from(&c.outside, Cluster::OUTSIDE_IP6, node0, 30062, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("try {i}: {e}"));
        assert_eq!((landed(&r).0.as_str(), landed(&r).1.ip()), ("b", IpAddr::V6(node0)), "masqueraded to node 0's IPv6 address, so that the replies return through it");
    }
}

/// `--xdp` over IPv6: an established flow from outside to a NodePort
/// whose backend is on the other node is translated by the XDP fast path
/// in native routing (it leaves by the uplink it came in on), both ways;
/// under VXLAN the client's packets leave by the tunnel, so tc carries
/// them. Every line of the long flows is answered either way, and so is
/// every datagram of a long UDP flow (the fast path's UDP checksum over
/// the IPv6 pseudo-header: a wrong one would be dropped by the receiver).
/// Before, XDP passed every IPv6 frame to tc and its counters stayed
/// still.
fn the_xdp_fast_path_carries_established_ipv6_flows_that_leave_by_the_uplink(mode: &str) {
    let mut c = cluster_with(mode, &["--xdp"]);
    c.fabric_like_a_wire();
    let b = c.nodes[1].pod_dual("b", 20);
    let port = weir_tests::north_south::BACKEND_PORT;
    let _s = [tcp_server_at(b.ns(), any(), port, Reply::NamePerLine("b".into())), udp_server_at(b.ns(), any(), port, Reply::Name("b".into()))];
    let n1 = c.nodes[1].name().to_string();
    let eps = [(IpAddr::V6(b.ip6.expect("dual-stack")), n1.as_str())];
    c.write("lines.yaml", &service_at("lines", "NodePort", "fd00:10:96::63", 30063, "", None, &eps, "TCP"));
    c.write("dgrams.yaml", &service_at("dgrams", "NodePort", "fd00:10:96::64", 30064, "", None, &eps, "UDP"));
    let node0 = c.nodes[0].ip6.expect("IPv6");
    let want = [format!("[{node0}]:30063"), format!("[{node0}]:30064")];
    c.wait_for("node 0 programs the NodePorts", || {
        let list = String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout).to_string();
        want.iter().all(|w| list.contains(w))
    });
    let xdp = |c: &Cluster| -> (u64, u64) {
        let m = c.nodes[0].node.agent_http("/metrics");
        let get = |d: &str| m.lines().find_map(|l| l.strip_prefix(&format!("weir_xdp_packets_total{{direction=\"{d}\"}} "))).and_then(|v| v.trim().parse().ok());
        (get("forward").unwrap_or_else(|| panic!("no XDP counter:\n{m}")), get("reply").unwrap_or(0))
    };
    let before = xdp(&c);
    for i in 0..3 {
        let asked = b"q\n".repeat(5_000);
        let answers = tcp_request_from(&c.outside, Cluster::OUTSIDE_IP6, node0, 30063, asked, DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("long flow {i} to the remote backend: {e}"));
        assert_eq!(answers.iter().filter(|&&ch| ch == b'\n').count(), 5_000, "every line answered");
        assert!(answers.starts_with(b"b\n"), "the remote backend answered");
    }
    let after = xdp(&c);
    if mode == "native" {
        assert!(after.0 > before.0 && after.1 > before.1, "native routing: XDP translated IPv6 both ways ({before:?} -> {after:?})");
    } else {
        assert_eq!(after.0, before.0, "vxlan: packets to remote backends go through the tunnel, tc carries them");
    }
    // One UDP flow, 200 datagrams each answered: after the first (tc's),
    // both directions can take the fast path.
    let sock = weir_tests::traffic::udp_connect(&c.outside, node0, 30064, DEFAULT_TIMEOUT).expect("a UDP socket");
    for i in 0..200 {
        assert_eq!(weir_tests::traffic::udp_ask(&sock).unwrap_or_else(|e| panic!("datagram {i}: {e}")), "b", "datagram {i} answered by the remote backend");
    }
    let udp = xdp(&c);
    if mode == "native" {
        assert!(udp.0 >= after.0 + 150 && udp.1 >= after.1 + 150, "native routing: XDP carried the UDP flow both ways ({after:?} -> {udp:?})");
    }
}

/// NetworkPolicy across nodes over IPv6: identities cover both addresses
/// of a pod (`podIPs`), so the server's node admits the client's IPv6
/// traffic and refuses the intruder's, directly and through an IPv6
/// ClusterIP (DNAT on the client's node, judged on the server's).
fn network_policy_selects_pods_on_other_nodes_over_ipv6(mode: &str) {
    use std::time::Duration;
    use weir_tests::cluster::{namespace_object, pod_object_dual};
    let c = cluster(mode);
    let (client, intruder, server) = (c.nodes[0].pod_dual("client", 10), c.nodes[0].pod_dual("intruder", 11), c.nodes[1].pod_dual("server", 20));
    let _s = servers(&server, "server", weir_tests::north_south::BACKEND_PORT);
    let mut objects = namespace_object("app");
    for (p, node) in [(&client, 0), (&intruder, 0), (&server, 1)] {
        objects += &pod_object_dual("app", &p.name, &p.name, c.nodes[node].name(), p.ip, p.ip6.expect("dual-stack"));
    }
    let vip: Ipv6Addr = "fd00:10:96::63".parse().expect("VIP");
    let n1 = c.nodes[1].name().to_string();
    let server6 = server.ip6.expect("dual-stack");
    objects += &service_at("server", "ClusterIP", &vip.to_string(), 0, "", None, &[(IpAddr::V6(server6), n1.as_str())], "TCP").replace(", nodePort: 0", "").replace("namespace: default", "namespace: app");
    objects += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-from-client, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n---\n";
    c.write("app.yaml", &objects);
    let port = weir_tests::north_south::BACKEND_PORT;
    let reach = |from: &weir_tests::Pod, to: Ipv6Addr, port: u16| tcp_request(from.ns(), to, port, b"hi".to_vec(), Duration::from_millis(700)).is_ok();
    // The objects reach each agent at its own pace: wait until node 1
    // knows both the policy and the client's identity.
    c.wait_for("the server's node enforces the policy over IPv6", || !reach(&intruder, server6, port) && reach(&client, server6, port));
    assert!(reach(&client, server6, port), "the client on node 0 is admitted by the server's ingress on node 1");
    assert!(reach(&client, vip, 80), "and through the IPv6 ClusterIP");
    assert!(!reach(&intruder, server6, port), "the intruder is refused");
    assert!(!reach(&intruder, vip, 80), "also through the IPv6 ClusterIP");
}

/// Under VXLAN, IPv6 pod traffic crosses the fabric encapsulated in
/// IPv4 between the nodes' IPv4 addresses (so the pods' MTU, which leaves
/// room for IPv4's overhead, holds for both families); natively it is
/// never encapsulated.
fn ipv6_pod_traffic_crosses_the_fabric_as_the_mode_says(mode: &str) {
    let c = cluster(mode);
    let (a, b) = (c.nodes[0].pod_dual("a", 10), c.nodes[1].pod_dual("b", 20));
    let b6 = b.ip6.expect("dual-stack");
    let _s = servers(&b, "b", 5353);
    let frames = c.capture(|| {
        for i in 0..5 {
            udp_request(a.ns(), b6, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("UDP {i} across nodes: {e}"));
        }
    });
    let tunnel = frames.iter().filter(|(s, d, p, port)| (*s == c.nodes[0].ip && *d == c.nodes[1].ip || *s == c.nodes[1].ip && *d == c.nodes[0].ip) && *p == 17 && *port == 8472).count();
    if mode == "vxlan" {
        assert!(tunnel >= 10, "the IPv6 requests and answers went encapsulated in IPv4 between the nodes: {frames:?}");
    } else {
        assert_eq!(tunnel, 0, "{frames:?}");
    }
}

fn drops(c: &Cluster, node: usize, reason: &str) -> u64 {
    weir_tests::north_south::drops(c, node, reason)
}

/// A pod wraps an IPv6 packet "from" a pod of another node in VXLAN and
/// sends it straight to a node's tunnel port: it never reaches the
/// victim, and under VXLAN the node counts it as `tunnel_spoofed` (the
/// outer source is no node).
fn a_pod_cannot_inject_encapsulated_ipv6_as_another_pod(mode: &str) {
    use weir_common::tunnel::{TUNNEL_MAC, TUNNEL_VNI};
    use weir_tests::hostile::vxlan_payload;
    let c = cluster(mode);
    let (attacker, victim) = (c.nodes[0].pod_dual("attacker", 10), c.nodes[1].pod_dual("victim", 20));
    let victim6 = victim.ip6.expect("dual-stack");
    let srv = udp_server_at(victim.ns(), any(), 5353, Reply::Name("victim".into()));
    udp_request(attacker.ns(), victim6, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("the path works");
    let served = srv.served();
    let before = drops(&c, 1, "tunnel_spoofed");
    let frame = vxlan_payload(TUNNEL_VNI, TUNNEL_MAC, c.nodes[0].pod_ip6(99), victim6, 40_000, 5353, b"injected");
    let node1 = c.nodes[1].ip;
    attacker.ns().run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..5 {
            s.send_to(&frame, (node1, 8472)).expect("send");
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(srv.served(), served, "no injected packet reached the victim");
    if mode == "vxlan" {
        assert!(drops(&c, 1, "tunnel_spoofed") >= before + 5, "node 1 refused every injected frame as tunnel_spoofed");
    }
}

/// Under VXLAN, a real peer's tunnel (outer source: node 0's IPv4
/// InternalIP) carries IPv6 only from node 0's own addresses and pod
/// CIDRs: an inner source that is the receiving node's pod or its IPv6
/// address is refused as `tunnel_spoofed`, while node 0's own IPv6
/// address (the same node id in `WEIR_NODES` as its IPv4 one) passes.
#[test]
fn a_peers_tunnel_carries_ipv6_only_from_that_peers_own_addresses() {
    use weir_common::tunnel::{TUNNEL_MAC, TUNNEL_VNI};
    use weir_tests::hostile::vxlan_payload;
    let c = cluster("vxlan");
    let victim = c.nodes[1].pod_dual("victim", 20);
    let victim6 = victim.ip6.expect("dual-stack");
    let srv = udp_server_at(victim.ns(), any(), 5353, Reply::Name("victim".into()));
    let (node0_6, node1_6) = (c.nodes[0].ip6.expect("IPv6"), c.nodes[1].ip6.expect("IPv6"));
    let node1 = c.nodes[1].ip;
    let send = |src: Ipv6Addr| {
        let frame = vxlan_payload(TUNNEL_VNI, TUNNEL_MAC, src, victim6, 40_000, 5353, b"tunnelled");
        c.nodes[0].node.ns().run(move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            for _ in 0..5 {
                s.send_to(&frame, (node1, 8472)).expect("send");
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    for forged in [c.nodes[1].pod_ip6(99), node1_6] {
        let (served, before) = (srv.served(), drops(&c, 1, "tunnel_spoofed"));
        send(forged);
        assert_eq!(srv.served(), served, "nothing node 0 tunnelled from [{forged}] reached the victim");
        assert!(drops(&c, 1, "tunnel_spoofed") >= before + 5, "node 1 refused every frame from [{forged}] as tunnel_spoofed");
    }
    let served = srv.served();
    send(node0_6);
    assert!(srv.served() > served, "node 0's own IPv6 address passes through its IPv4 tunnel");
}

/// IPv6 pod egress out of the cluster is masqueraded as IPv4's is: the
/// outside (an address on the fabric, outside every pod CIDR and node
/// address) sees each pod's traffic from its node's IPv6 address and a
/// port of the masquerade range, and the replies (ICMPv6 echo's, and an
/// ICMPv6 error about the flow) are restored to the pod. The outside
/// has no route to the pods' IPv6 CIDRs:
/// an unmasqueraded reply would be lost.
fn ipv6_pod_egress_leaves_from_its_nodes_address_and_gets_the_replies(mode: &str) {
    let c = cluster(mode);
    let (a, b) = (c.nodes[0].pod_dual("a", 10), c.nodes[1].pod_dual("b", 20));
    let _out = [tcp_server_at(&c.outside, any(), 8080, Reply::Peer("out".into())), udp_server_at(&c.outside, any(), 5353, Reply::Peer("out".into()))];
    let ports = weir_common::masq::PORT_MIN..=weir_common::masq::PORT_MAX;
    let outside = Cluster::OUTSIDE_IP6;
    for (pod, node) in [(&a, &c.nodes[0]), (&b, &c.nodes[1])] {
        let node6 = IpAddr::V6(node.ip6.expect("IPv6"));
        for i in 0..3 {
            let r = tcp_request(pod.ns(), outside, 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("TCP {i} from {} out: {e}", pod.name));
            let (_, peer) = landed(&r);
            assert_eq!(peer.ip(), node6, "the outside saw node {}'s IPv6 address", node.index);
            assert!(ports.contains(&peer.port()), "from a masquerade port: {peer}");
            let r = udp_request(pod.ns(), outside, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("UDP {i} from {} out: {e}", pod.name));
            assert_eq!(landed(&r).1.ip(), node6);
        }
        assert!(ping(pod.ns(), outside), "ICMPv6 echo from {} is masqueraded and its reply restored", pod.name);
        // A port nobody serves: the outside's port unreachable, about the
        // masqueraded packet, reaches the pod about its own.
        let err = udp_request(pod.ns(), outside, 5999, b"hi".to_vec(), DEFAULT_TIMEOUT).expect_err("no listener outside");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{}'s socket saw the translated ICMPv6 error: {err}", pod.name);
    }
    // Between the pods, over IPv6, nothing is masqueraded.
    let _b = tcp_server_at(b.ns(), any(), 8080, Reply::Peer("b".into()));
    let r = tcp_request(a.ns(), b.ip6.expect("dual-stack"), 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("pod to pod");
    assert_eq!(landed(&r).1.ip(), IpAddr::V6(a.ip6.expect("dual-stack")), "inside the cluster the pod keeps its address");
}

weir_tests::both_routing_modes!(
    ipv6_pod_egress_leaves_from_its_nodes_address_and_gets_the_replies,
    ipv6_pod_traffic_crosses_the_fabric_as_the_mode_says,
    a_pod_cannot_inject_encapsulated_ipv6_as_another_pod,
    pods_reach_pods_on_other_nodes_over_ipv6_with_their_own_address,
    an_ipv6_clusterip_with_a_remote_backend_answers_from_its_vip_and_keeps_the_client_address,
    an_ipv6_node_port_reaches_a_backend_on_another_node_masqueraded,
    network_policy_selects_pods_on_other_nodes_over_ipv6,
    the_xdp_fast_path_carries_established_ipv6_flows_that_leave_by_the_uplink,
);
