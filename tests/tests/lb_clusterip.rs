//! ClusterIP load balancing with real traffic: one client pod and three
//! backend pods on a node namespace, the real agent attaching the pod
//! programs, and services programmed through weir-datapath's Lb API.
//!
//! Every test runs twice, over IPv4 (`over_ipv4::`) and over IPv6
//! (`over_ipv6::`, the pods dual-stack and the services IPv6 ones).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use weir_datapath::lb::{spec::Protocol, Lb};
use weir_tests::{
    netpol::Family,
    services::{cluster_ip, endpoint},
    traffic::{
        ask_name, tcp_connect, tcp_name, tcp_server_at, udp_ask, udp_connect, udp_name_from, udp_server_at, unspecified, Reply,
        Server, DEFAULT_TIMEOUT,
    },
    Agent, Node, Pod,
};

/// Each test, once per address family.
macro_rules! over_both_families {
    ($($name:ident),* $(,)?) => {
        mod over_ipv4 {
            $(#[test]
            fn $name() {
                super::$name(weir_tests::netpol::Family::V4)
            })*
        }
        mod over_ipv6 {
            $(#[test]
            fn $name() {
                super::$name(weir_tests::netpol::Family::V6)
            })*
        }
    };
}

over_both_families!(
    every_backend_receives_tcp_and_udp_and_replies_come_from_the_vip,
    a_pod_reaches_itself_through_its_own_service,
    client_ip_affinity_pins_a_client_to_one_backend,
    terminating_endpoints_follow_kube_proxy_rules,
    a_service_without_endpoints_refuses_at_once,
    a_udp_backend_with_no_listener_refuses_through_the_vip,
    removing_a_backend_moves_its_udp_flow,
    removing_a_backend_another_service_keeps_moves_its_udp_flow,
    client_ip_affinity_moves_off_a_backend_its_service_dropped_that_another_keeps,
    changing_the_backend_set_does_not_move_established_tcp_connections,
    a_direct_connection_reusing_a_finished_service_flows_ports_is_not_rewritten,
);

/// The service address of the tests' service, and of another one.
fn vip(f: Family) -> IpAddr {
    match f {
        Family::V4 => Ipv4Addr::new(10, 96, 0, 10).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10).into(),
    }
}

fn other_vip(f: Family) -> IpAddr {
    match f {
        Family::V4 => Ipv4Addr::new(10, 96, 0, 99).into(),
        Family::V6 => Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x99).into(),
    }
}

/// A pod's IPv6 address beside its IPv4 10.244.0.`last`.
fn pod_v6(last: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, last as u16)
}
/// Backend ports: Reply::Name on TCP 8080 and UDP 5353, Reply::NamePerLine on TCP 9000.
const NAME_TCP: u16 = 8080;
const NAME_UDP: u16 = 5353;
const LINES_TCP: u16 = 9000;

struct Topo {
    family: Family,
    vip: IpAddr,
    lb: Lb,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<Server>,
    _agent: Agent,
    node: Node,
}

fn topo(family: Family) -> Topo {
    let node = Node::new();
    let mut client = node.pod("client", Ipv4Addr::new(10, 244, 0, 2));
    let mut backends: Vec<Pod> = (1..=3).map(|i| node.pod(&format!("b{i}"), Ipv4Addr::new(10, 244, 0, 10 + i))).collect();
    if family == Family::V6 {
        client.add_v6(&node, pod_v6(2));
        for (i, b) in backends.iter_mut().enumerate() {
            b.add_v6(&node, pod_v6(11 + i as u8));
        }
    }
    // The services are written straight into the maps, behind the agent's
    // back: its conntrack collection would take their flows for orphans
    // (their backends are none of the agent's) and delete them mid-flow.
    let agent = node.start_agent_with(&["--ct-gc-interval", "3600"]);
    agent.wait_attached(&client.host_if, client.host_ifindex);
    let vip = vip(family);
    let any = unspecified(&vip);
    let mut servers = Vec::new();
    for b in &backends {
        agent.wait_attached(&b.host_if, b.host_ifindex);
        servers.push(tcp_server_at(b.ns(), any, NAME_TCP, Reply::Name(b.name.clone())));
        servers.push(udp_server_at(b.ns(), any, NAME_UDP, Reply::Name(b.name.clone())));
        servers.push(tcp_server_at(b.ns(), any, LINES_TCP, Reply::NamePerLine(b.name.clone())));
    }
    let lb = Lb::open(&weir_datapath::PinLayout::new(node.bpffs())).expect("open lb maps");
    Topo { family, vip, lb, client, backends, _servers: servers, _agent: agent, node }
}

impl Topo {
    /// Backend `i`'s address of the tests' family.
    fn addr(&self, i: usize) -> IpAddr {
        let b = &self.backends[i];
        match self.family {
            Family::V4 => b.ip.into(),
            Family::V6 => b.ip6.expect("dual-stack backend").into(),
        }
    }

    fn ips(&self, port: u16, which: &[usize]) -> Vec<(IpAddr, u16)> {
        which.iter().map(|&i| (self.addr(i), port)).collect()
    }

    fn count_tcp(&self, port: u16, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let name = tcp_name(self.client.ns(), self.vip, port, DEFAULT_TIMEOUT).expect("tcp via the VIP");
            *seen.entry(name).or_insert(0) += 1;
        }
        seen
    }
}

fn every_backend_receives_tcp_and_udp_and_replies_come_from_the_vip(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    t.lb.upsert(&cluster_ip(vip, 80, Protocol::Tcp, &t.ips(NAME_TCP, &[0, 1, 2]))).expect("upsert tcp");
    t.lb.upsert(&cluster_ip(vip, 53, Protocol::Udp, &t.ips(NAME_UDP, &[0, 1, 2]))).expect("upsert udp");

    let tcp = t.count_tcp(80, 60);
    assert_eq!(tcp.len(), 3, "every backend gets TCP connections: {tcp:?}");

    let mut udp = BTreeMap::new();
    for _ in 0..60 {
        let (name, from) = udp_name_from(t.client.ns(), vip, 53, DEFAULT_TIMEOUT).expect("udp via the VIP");
        assert_eq!(from, SocketAddr::new(vip, 53), "the reply's source is the VIP");
        *udp.entry(name).or_insert(0) += 1;
    }
    assert_eq!(udp.len(), 3, "every backend gets UDP flows: {udp:?}");

    let s = tcp_connect(t.client.ns(), vip, 80, DEFAULT_TIMEOUT).expect("connect");
    assert_eq!(s.peer_addr().expect("peer"), SocketAddr::new(vip, 80), "TCP peer is the VIP");
}

fn a_pod_reaches_itself_through_its_own_service(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    t.lb.upsert(&cluster_ip(vip, 80, Protocol::Tcp, &t.ips(NAME_TCP, &[0]))).expect("upsert");
    t.lb.upsert(&cluster_ip(vip, 53, Protocol::Udp, &t.ips(NAME_UDP, &[0]))).expect("upsert");
    let me = &t.backends[0];
    for _ in 0..5 {
        assert_eq!(tcp_name(me.ns(), vip, 80, DEFAULT_TIMEOUT).expect("hairpin tcp"), me.name);
        let (name, from) = udp_name_from(me.ns(), vip, 53, DEFAULT_TIMEOUT).expect("hairpin udp");
        assert_eq!((name.as_str(), from), (me.name.as_str(), SocketAddr::new(vip, 53)));
    }
}

fn client_ip_affinity_pins_a_client_to_one_backend(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    let mut spec = cluster_ip(vip, 80, Protocol::Tcp, &t.ips(NAME_TCP, &[0, 1, 2]));
    spec.affinity_timeout_s = Some(10_800);
    t.lb.upsert(&spec).expect("upsert");
    let seen = t.count_tcp(80, 30);
    assert_eq!(seen.len(), 1, "all connections of one client go to one backend: {seen:?}");
}

fn terminating_endpoints_follow_kube_proxy_rules(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    let (b1, b2, b3) = (t.addr(0), t.addr(1), t.addr(2));
    let mut spec = cluster_ip(vip, 80, Protocol::Tcp, &[]);

    // Ready endpoints take every new connection.
    spec.endpoints = vec![
        endpoint(b1, NAME_TCP, true, true, false),
        endpoint(b2, NAME_TCP, false, true, true),
        endpoint(b3, NAME_TCP, false, false, false),
    ];
    t.lb.upsert(&spec).expect("upsert");
    let seen = t.count_tcp(80, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b1"], "only the ready endpoint: {seen:?}");

    // No ready endpoint: serving + terminating ones take them; non-serving never.
    spec.endpoints = vec![
        endpoint(b2, NAME_TCP, false, true, true),
        endpoint(b3, NAME_TCP, false, false, true),
    ];
    t.lb.upsert(&spec).expect("upsert");
    let seen = t.count_tcp(80, 20);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["b2"], "serving+terminating fallback only: {seen:?}");

    // An established flow to an endpoint that starts terminating continues.
    let mut lines = cluster_ip(vip, 90, Protocol::Tcp, &[(b1, LINES_TCP), (b2, LINES_TCP)]);
    t.lb.upsert(&lines).expect("upsert");
    let mut conn_to_b2 = None;
    for _ in 0..40 {
        let mut s = tcp_connect(t.client.ns(), vip, 90, DEFAULT_TIMEOUT).expect("connect");
        if ask_name(&mut s).expect("ask") == "b2" {
            conn_to_b2 = Some(s);
            break;
        }
    }
    let mut conn = conn_to_b2.expect("one of 40 connections lands on b2");
    lines.endpoints = vec![endpoint(b1, LINES_TCP, true, true, false), endpoint(b2, LINES_TCP, false, true, true)];
    t.lb.upsert(&lines).expect("upsert");
    assert_eq!(ask_name(&mut conn).expect("established flow continues"), "b2");
    for _ in 0..10 {
        let mut s = tcp_connect(t.client.ns(), vip, 90, DEFAULT_TIMEOUT).expect("connect");
        assert_eq!(ask_name(&mut s).expect("ask"), "b1", "new connections avoid the terminating endpoint");
    }
}

fn a_service_without_endpoints_refuses_at_once(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    t.lb.upsert(&cluster_ip(vip, 80, Protocol::Tcp, &[])).expect("upsert");
    t.lb.upsert(&cluster_ip(vip, 53, Protocol::Udp, &[])).expect("upsert");

    let start = Instant::now();
    let err = tcp_connect(t.client.ns(), vip, 80, Duration::from_secs(3)).expect_err("refused");
    let took = start.elapsed();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_millis(100), "TCP refused in {took:?}");

    let sock = udp_connect(t.client.ns(), vip, 53, Duration::from_secs(3)).expect("udp socket");
    let start = Instant::now();
    let err = udp_ask(&sock).expect_err("refused");
    let took = start.elapsed();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_millis(100), "UDP refused in {took:?}");

    // A port the VIP does not serve is refused too.
    let err = tcp_connect(t.client.ns(), vip, 8443, Duration::from_secs(3)).expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let _ = &t.node;
}

/// The backend's kernel answers with port unreachable; the client's
/// socket, connected to the VIP, hears it only if the error comes back
/// translated: from the VIP, quoting the client's own packet.
fn a_udp_backend_with_no_listener_refuses_through_the_vip(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    let closed = t.ips(5999, &[0]);
    t.lb.upsert(&cluster_ip(vip, 54, Protocol::Udp, &closed)).expect("upsert");
    let sock = udp_connect(t.client.ns(), vip, 54, Duration::from_secs(3)).expect("udp socket");
    let err = udp_ask(&sock).expect_err("nothing listens on the backend's port");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let _ = &t.node;
}

fn removing_a_backend_moves_its_udp_flow(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    let all = t.ips(NAME_UDP, &[0, 1, 2]);
    t.lb.upsert(&cluster_ip(vip, 53, Protocol::Udp, &all)).expect("upsert");
    let sock = udp_connect(t.client.ns(), vip, 53, DEFAULT_TIMEOUT).expect("udp socket");
    let first = udp_ask(&sock).expect("first answer");
    assert_eq!(udp_ask(&sock).expect("second answer"), first, "a UDP flow sticks to its backend");

    let idx = t.backends.iter().position(|b| b.name == first).expect("known backend");
    let rest: Vec<(IpAddr, u16)> = all.iter().copied().filter(|(a, _)| *a != t.addr(idx)).collect();
    let stats = t.lb.upsert(&cluster_ip(vip, 53, Protocol::Udp, &rest)).expect("upsert");
    // A backend no service lists is deleted, and the kernel re-selects its
    // flows by itself: no scan of the conntrack table.
    assert_eq!(stats.ct_purged, 0, "no conntrack scan for a deleted backend: {stats:?}");
    let moved = udp_ask(&sock).expect("answer after removal");
    assert_ne!(moved, first, "the flow moved off the removed backend");
}

fn removing_a_backend_another_service_keeps_moves_its_udp_flow(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    let all = t.ips(NAME_UDP, &[0, 1, 2]);
    t.lb.upsert(&cluster_ip(vip, 53, Protocol::Udp, &all)).expect("upsert");
    // Another service lists the same pods: they stay backends.
    t.lb.upsert(&cluster_ip(other_vip(f), 53, Protocol::Udp, &all)).expect("upsert other");
    let sock = udp_connect(t.client.ns(), vip, 53, DEFAULT_TIMEOUT).expect("udp socket");
    let first = udp_ask(&sock).expect("first answer");
    let idx = t.backends.iter().position(|b| b.name == first).expect("known backend");
    let rest: Vec<(IpAddr, u16)> = all.iter().copied().filter(|(a, _)| *a != t.addr(idx)).collect();
    let stats = t.lb.upsert(&cluster_ip(vip, 53, Protocol::Udp, &rest)).expect("upsert");
    // Each frontend has its own backend ids: the one this service dropped
    // is deleted, so the kernel re-selects the flow by itself, without a
    // scan of conntrack (before, its id was shared and two entries were
    // purged by a scan of the whole table).
    assert_eq!(stats.ct_purged, 0, "no conntrack scan: {stats:?}");
    let moved = udp_ask(&sock).expect("answer after removal");
    assert_ne!(moved, first, "the flow moved off the backend this service dropped");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(udp_name_from(t.client.ns(), other_vip(f), 53, DEFAULT_TIMEOUT).expect("the other service").0);
    }
    assert!(seen.contains(&first), "the other service still sends flows to the backend: {seen:?}");
}

fn client_ip_affinity_moves_off_a_backend_its_service_dropped_that_another_keeps(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    let mut spec = cluster_ip(vip, 80, Protocol::Tcp, &t.ips(NAME_TCP, &[0, 1, 2]));
    spec.affinity_timeout_s = Some(10_800);
    t.lb.upsert(&spec).expect("upsert");
    t.lb.upsert(&cluster_ip(other_vip(f), 80, Protocol::Tcp, &t.ips(NAME_TCP, &[0, 1, 2]))).expect("upsert other");
    let pinned = t.count_tcp(80, 5);
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    let first = pinned.keys().next().cloned().unwrap_or_default();
    let idx = t.backends.iter().position(|b| b.name == first).expect("known backend");
    spec.endpoints.retain(|e| e.addr != t.addr(idx));
    let stats = t.lb.upsert(&spec).expect("drop the client's backend");
    assert_eq!(stats.ct_purged, 0, "no scan: {stats:?}");
    let after = t.count_tcp(80, 10);
    assert_eq!(after.len(), 1, "still one backend for the client: {after:?}");
    assert!(!after.contains_key(&first), "the client left the backend its service dropped, though another service keeps it: {after:?}");
}

fn changing_the_backend_set_does_not_move_established_tcp_connections(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    t.lb.upsert(&cluster_ip(vip, 90, Protocol::Tcp, &t.ips(LINES_TCP, &[0, 1]))).expect("upsert");
    let mut conns = Vec::new();
    for _ in 0..12 {
        let mut s = tcp_connect(t.client.ns(), vip, 90, DEFAULT_TIMEOUT).expect("connect");
        let name = ask_name(&mut s).expect("ask");
        conns.push((s, name));
    }
    t.lb.upsert(&cluster_ip(vip, 90, Protocol::Tcp, &t.ips(LINES_TCP, &[0, 1, 2]))).expect("grow");
    for (s, name) in conns.iter_mut() {
        assert_eq!(&ask_name(s).expect("established flow"), name, "the connection kept its backend");
    }
    t.lb.upsert(&cluster_ip(vip, 90, Protocol::Tcp, &t.ips(LINES_TCP, &[1, 0, 2]))).expect("reorder");
    for (s, name) in conns.iter_mut() {
        assert_eq!(&ask_name(s).expect("established flow"), name);
    }
}

/// Connects from a fixed source port (SO_REUSEADDR), as heavy traffic
/// eventually does by reusing ephemeral ports.
fn connect_from_port(ns: &weir_tests::netns::NetNs, src_port: u16, dst: IpAddr, port: u16) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    ns.run(move || {
        let dst = SocketAddr::new(dst, port);
        let sock = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        // The handshake must complete on its first SYN-ACK: a SYN-ACK
        // rewritten by a stale entry would leave connect() to retransmit.
        sock.set_write_timeout(Some(Duration::from_millis(500)))?;
        sock.bind(&SocketAddr::new(unspecified(&dst.ip()), src_port).into())?;
        sock.connect(&dst.into())?;
        let s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(s)
    })
}

fn request(mut s: std::net::TcpStream) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    s.write_all(b"x")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn a_direct_connection_reusing_a_finished_service_flows_ports_is_not_rewritten(f: Family) {
    let mut t = topo(f);
    let vip = t.vip;
    let b = t.addr(0);
    t.lb.upsert(&cluster_ip(vip, 80, Protocol::Tcp, &[(b, NAME_TCP)])).expect("upsert");
    let via_vip = request(connect_from_port(t.client.ns(), 40123, vip, 80).expect("connect via VIP")).expect("request via VIP");
    assert!(via_vip.starts_with("b1"), "{via_vip}");
    // Same client port, straight to the backend, while the service flow's
    // conntrack entries are still within their closing timeout.
    let direct = request(connect_from_port(t.client.ns(), 40123, b, NAME_TCP).expect("connect directly")).expect("direct request");
    assert!(direct.starts_with("b1"), "the direct connection's replies keep the backend's address: {direct}");
}
