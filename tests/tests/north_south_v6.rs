//! North-south traffic over IPv6: the north-south world's fabric given
//! IPv6 (`Cluster::enable_ipv6`: each Node object names an IPv6
//! InternalIP too), a dual-stack backend pod on node 0, IPv6 Services of
//! every external kind, and clients in the outside namespace on an IPv6
//! prefix of their own that routes the LB, externalIP and service ranges
//! to node 0, as for IPv4 (`north_south.rs`). The node programs on the
//! uplink load-balance, refuse and police IPv6 as they do IPv4: each case
//! asserts where the connection lands and the address the backend saw.
//! (Backends on other nodes over IPv6 wait for cross-node IPv6; both
//! routing modes carry pod traffic between nodes over IPv4 only.)

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use weir_tests::{
    bench::udp_flows,
    cluster::Cluster,
    north_south::{drops, landed, service_at, BACKEND_PORT},
    pod::Pod,
    traffic::{tcp_request_from, tcp_server_at, udp_request_from, udp_server_at, Reply, Server, DEFAULT_TIMEOUT},
};

/// The clients' prefix, routed to the outside namespace.
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0x113, 0, 0, 0, 0x10);
const CLIENT2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x203, 0, 0x113, 0, 0, 0, 0x20);
const LB: &str = "fd00:198:51:100::";
const EXTERNAL: &str = "fd00:192:0:2::";
const SERVICES: &str = "fd00:10:96::";

fn addr(prefix: &str, host: u16) -> Ipv6Addr {
    format!("{prefix}{host:x}").parse().expect("an IPv6 address")
}

struct World {
    c: Cluster,
    node0: Ipv6Addr,
    pod: Pod,
    _servers: Vec<Server>,
}

/// One node (a pod's IPv6 traffic between nodes is not routed yet) with
/// backend pod `a`, and the Services: `cluster` (LoadBalancer, eTP
/// Cluster, TCP, NodePort 30080; its LB IP, externalIP and ClusterIP end
/// in `::80`), `cluster-udp` (the same over UDP, `::82`, 30082), `local`
/// (eTP Local, `::81`, 30081), `empty` and `empty-udp` (no endpoints,
/// 30084 and 30085).
fn world() -> World {
    let mut c = Cluster::new(1, &["--routing", "native"]);
    c.enable_ipv6();
    let node0 = c.nodes[0].ip6.expect("IPv6 on the fabric");
    let mut pod = c.nodes[0].pod("a", 10);
    pod.add_v6(&c.nodes[0].node, Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 10));
    let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let servers = vec![tcp_server_at(pod.ns(), any, BACKEND_PORT, Reply::Peer("a".into())), udp_server_at(pod.ns(), any, BACKEND_PORT, Reply::Peer("a".into()))];
    for a in [CLIENT, CLIENT2] {
        c.outside.ip(&["-6", "addr", "add", &format!("{a}/64"), "dev", "eth0", "nodad"]);
    }
    let via = node0.to_string();
    for range in [format!("{SERVICES}/64"), format!("{LB}/64"), format!("{EXTERNAL}/64")] {
        c.outside.ip(&["-6", "route", "add", &range, "via", &via]);
    }
    let outside = Cluster::OUTSIDE_IP6.to_string();
    c.nodes[0].node.ns().ip(&["-6", "route", "add", "fd00:203:0:113::/64", "via", &outside]);
    let n0 = c.nodes[0].name().to_string();
    let a = [(IpAddr::V6(pod.ip6.expect("dual-stack pod")), n0.as_str())];
    let frontends = |host: u16, extra: &str| {
        (addr(SERVICES, host).to_string(), format!("  externalIPs: [\"{}\"]\n{extra}", addr(EXTERNAL, host)), addr(LB, host).to_string())
    };
    let mut y = String::new();
    for (name, host, port, proto, extra) in [("cluster", 0x80, 30080, "TCP", ""), ("cluster-udp", 0x82, 30082, "UDP", ""), ("local", 0x81, 30081, "TCP", "  externalTrafficPolicy: Local\n")] {
        let (vip, extra, lb) = frontends(host, extra);
        y += &service_at(name, "LoadBalancer", &vip, port, &extra, Some(&lb), &a, proto);
    }
    y += &service_at("empty", "NodePort", &addr(SERVICES, 0x84).to_string(), 30084, "", None, &[], "TCP");
    y += &service_at("empty-udp", "NodePort", &addr(SERVICES, 0x85).to_string(), 30085, "", None, &[], "UDP");
    c.write("services.yaml", &y);
    let want = format!("[{node0}]:30085");
    c.wait_for("node 0 programs the IPv6 NodePorts", || String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    World { c, node0, pod, _servers: servers }
}

/// The backend reached and the peer it saw, over TCP from `src`.
fn tcp_from(w: &World, src: Ipv6Addr, dst: Ipv6Addr, port: u16) -> (String, SocketAddr) {
    let r = tcp_request_from(&w.c.outside, src, dst, port, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("[{src}] -> [{dst}]:{port}: {e}"));
    landed(&r)
}

#[test]
fn ipv6_frontends_load_balance_from_outside_and_masquerade_where_kube_proxy_does() {
    let w = world();
    let node0 = IpAddr::V6(w.node0);
    // eTP Cluster: masqueraded to the node's IPv6 InternalIP, so that the
    // replies come back through the node.
    for (dst, port, what) in [(w.node0, 30080, "NodePort"), (addr(LB, 0x80), 80, "LB IP"), (addr(EXTERNAL, 0x80), 80, "externalIP"), (addr(SERVICES, 0x80), 80, "ClusterIP routed to the node")] {
        for _ in 0..3 {
            let (name, peer) = tcp_from(&w, CLIENT, dst, port);
            assert_eq!((name.as_str(), peer.ip()), ("a", node0), "{what}: the backend saw the node's IPv6 address");
        }
    }
    // UDP: answered from the frontend (the client's socket is connected).
    for (dst, port) in [(w.node0, 30082), (addr(LB, 0x82), 80)] {
        for i in 0..3 {
            let r = udp_request_from(&w.c.outside, CLIENT2, dst, port, b"q".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("UDP {i} to [{dst}]:{port}: {e}"));
            assert_eq!(landed(&r).1.ip(), node0, "UDP to [{dst}]:{port} is masqueraded too");
        }
    }
    // eTP Local: the client's own address.
    for (dst, port, what) in [(w.node0, 30081, "NodePort"), (addr(LB, 0x81), 80, "LB IP"), (addr(EXTERNAL, 0x81), 80, "externalIP")] {
        let (name, peer) = tcp_from(&w, CLIENT2, dst, port);
        assert_eq!((name.as_str(), peer.ip()), ("a", IpAddr::V6(CLIENT2)), "{what}: eTP Local keeps the client's address");
    }
    // The flows are weir's: conntrack lists them with IPv6 addresses.
    let ct = String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["ct", "list"]).stdout).to_string();
    assert!(ct.contains(&format!("[{CLIENT}]")), "conntrack holds the client's IPv6 flows:\n{ct}");
}

#[test]
fn ipv6_frontends_without_endpoints_refuse_and_the_nodes_own_servers_are_untouched() {
    let w = world();
    let err = tcp_request_from(&w.c.outside, CLIENT, w.node0, 30084, b"hi".to_vec(), DEFAULT_TIMEOUT).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "TCP to an IPv6 NodePort without endpoints is reset: {err}");
    let err = udp_request_from(&w.c.outside, CLIENT, w.node0, 30085, b"q".to_vec(), DEFAULT_TIMEOUT).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "UDP gets ICMPv6 port unreachable: {err}");
    assert!(drops(&w.c, 0, "no_endpoints") >= 2, "both counted as no_endpoints");
    // A server of the node on a port that is no NodePort sees the client's
    // own address: weir leaves that traffic alone.
    let _host = tcp_server_at(w.c.nodes[0].node.ns(), IpAddr::V6(Ipv6Addr::UNSPECIFIED), 9999, Reply::Peer("host".into()));
    let (name, peer) = tcp_from(&w, CLIENT, w.node0, 9999);
    assert_eq!((name.as_str(), peer.ip()), ("host", IpAddr::V6(CLIENT)));
}

/// The hardening guarantees on the uplink, over IPv6: a datagram the
/// client fragments (IPv6 routers never do) is load-balanced whole, the
/// later fragments riding the first one's translation; a packet from
/// outside that claims the pod's address or the node's own is dropped
/// (`spoofed_source`), never translated.
#[test]
fn hostile_or_fragmented_ipv6_from_outside_is_handled_as_ipv4_is() {
    let w = world();
    let node0 = IpAddr::V6(w.node0);
    // 4,000 bytes of UDP: three fragments on a 1,500-byte link.
    for (dst, port) in [(w.node0, 30082), (addr(LB, 0x82), 80)] {
        for i in 0..3 {
            let r = udp_request_from(&w.c.outside, CLIENT, dst, port, vec![b'f'; 4000], DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("fragmented UDP {i} to [{dst}]:{port}: {e}"));
            assert_eq!(landed(&r).1.ip(), node0, "answered, and masqueraded as a whole datagram is");
        }
    }
    // The outside forges the pod's IPv6 address.
    let pod_ip = w.pod.ip6.expect("dual-stack pod");
    w.c.outside.ip(&["-6", "addr", "add", &format!("{pod_ip}/128"), "dev", "eth0", "nodad"]);
    let before = drops(&w.c, 0, "spoofed_source");
    let err = tcp_request_from(&w.c.outside, pod_ip, w.node0, 30080, b"hi".to_vec(), Duration::from_secs(1)).expect_err("a forged pod source");
    assert!(matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "dropped: {err}");
    assert!(drops(&w.c, 0, "spoofed_source") > before, "counted as spoofed_source");
    w.c.outside.ip(&["-6", "addr", "del", &format!("{pod_ip}/128"), "dev", "eth0"]);
    // The outside forges the node's own IPv6 address (raw datagrams to its
    // UDP NodePort).
    let before = drops(&w.c, 0, "spoofed_source");
    let sent = udp_flows::send(&w.c.outside, node0, vec![SocketAddr::new(node0, 30082)], 20_000, 5, Duration::from_secs(2)).expect("raw socket");
    assert_eq!(sent.datagrams, 5);
    w.c.wait_for("the forged node address is dropped as spoofed_source", || drops(&w.c, 0, "spoofed_source") >= before + 5);
    // The real clients are unaffected.
    assert_eq!(tcp_from(&w, CLIENT, w.node0, 30080).0, "a");
}

/// ICMPv6 errors from outside about north-south flows reach the backend
/// translated: a client that closed its socket answers the backend's
/// second datagram with port unreachable, sent to the NodePort the reply
/// came from; weir turns it into an error about the backend's own packet
/// (to the node address it talks to, masqueraded), and the backend's
/// connected socket sees ECONNREFUSED.
#[test]
fn icmpv6_errors_from_outside_reach_the_backend_translated() {
    let w = world();
    let backend = w.pod.ns().spawn(|| -> std::io::Result<std::io::Error> {
        let s = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 5353))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; 64];
        let (_, peer) = s.recv_from(&mut buf)?;
        s.connect(peer)?;
        s.send(format!("first {peer}").as_bytes())?;
        std::thread::sleep(Duration::from_millis(500));
        s.send(b"second")?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(s.recv(&mut buf).expect_err("no answer but an error"))
    });
    let n0 = w.c.nodes[0].name().to_string();
    let a = [(IpAddr::V6(w.pod.ip6.expect("dual-stack pod")), n0.as_str())];
    let y = service_at("errors", "NodePort", &addr(SERVICES, 0x88).to_string(), 30088, "", None, &a, "UDP").replace(&format!("{BACKEND_PORT}"), "5353");
    w.c.write("errors.yaml", &y);
    let want = format!("[{}]:30088", w.node0);
    w.c.wait_for("node 0 programs the NodePort", || String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    let r = udp_request_from(&w.c.outside, CLIENT, w.node0, 30088, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("the first answer");
    let s = String::from_utf8_lossy(&r).to_string();
    assert!(s.starts_with(&format!("first [{}]:", w.node0)), "masqueraded to the node's IPv6 address: {s}");
    // The client's socket is closed now: the second datagram draws ICMPv6
    // port unreachable from the outside.
    let err = backend.join().expect("backend thread").expect("backend socket");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "the backend's socket saw the translated error: {err}");
}

/// A host-network endpoint (the node's own IPv6 address) of an IPv6
/// NodePort: the flow is DNATed and delivered to the node's stack, the
/// client's address kept (never masqueraded to the node itself), and the
/// node's replies leave the uplink from the NodePort (`to_net`).
#[test]
fn a_host_network_endpoint_answers_an_ipv6_node_port_from_the_frontend() {
    let w = world();
    let _host = tcp_server_at(w.c.nodes[0].node.ns(), IpAddr::V6(Ipv6Addr::UNSPECIFIED), BACKEND_PORT, Reply::Peer("host".into()));
    let n0 = w.c.nodes[0].name().to_string();
    let y = service_at("host", "NodePort", &addr(SERVICES, 0x89).to_string(), 30089, "", None, &[(IpAddr::V6(w.node0), n0.as_str())], "TCP");
    w.c.write("host.yaml", &y);
    let want = format!("[{}]:30089", w.node0);
    w.c.wait_for("node 0 programs the NodePort", || String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    for _ in 0..3 {
        let (name, peer) = tcp_from(&w, CLIENT, w.node0, 30089);
        assert_eq!((name.as_str(), peer.ip()), ("host", IpAddr::V6(CLIENT)), "the node's own server, the client's address");
    }
}
