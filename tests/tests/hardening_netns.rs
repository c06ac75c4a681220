//! A hostile pod with real sockets, through the real agent and kernel:
//! spoofed sources, IPv6 around a NetworkPolicy, fragments through a
//! ClusterIP, path-MTU discovery and TTL expiry through a VIP, a client
//! under default-deny ingress refused at once, and a half-closed
//! connection outliving the closing timeout.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket},
    time::{Duration, Instant},
};

use weir_tests::{
    hostile::{connect, late_writer, read_line, udp_from, udp_with_ttl},
    netpol::{NetpolCluster, P},
    services::{ready, yaml_service},
    traffic::{tcp_server, udp_request, udp_server, Reply, DEFAULT_TIMEOUT},
    Node, Pod,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// Default-deny ingress for every pod in namespace x.
const DENY_INGRESS_X: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n---\n";
/// An address of the node itself, so its own ICMP errors have a source.
const NODE_ADDR: &str = "192.168.0.2/32";

fn served_after(srv: &weir_tests::traffic::Server, before: u64) -> bool {
    std::thread::sleep(Duration::from_millis(300));
    srv.served() > before
}

fn drops(node: &Node, reason: &str) -> u64 {
    let out = node.weir(&["stats", "-o", "json"]);
    assert!(out.status.success(), "weir stats: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    v["drops"][reason].as_u64().unwrap_or(0)
}

#[test]
fn a_pod_sends_only_from_the_addresses_the_node_routes_to_it() {
    let node = Node::new();
    let (a, b, c) = (node.pod("a", Ipv4Addr::new(10, 244, 0, 2)), node.pod("b", Ipv4Addr::new(10, 244, 0, 3)), node.pod("c", Ipv4Addr::new(10, 244, 0, 4)));
    let agent = node.start_agent();
    for p in [&a, &b, &c] {
        agent.wait_attached(&p.host_if, p.host_ifindex);
    }
    let (srv_b, srv_c) = (udp_server(b.ns(), 5353, Reply::Echo), udp_server(c.ns(), 5353, Reply::Echo));
    assert!(udp_from(a.ns(), a.ip, b.ip, 5353, b"own".to_vec(), DEFAULT_TIMEOUT).is_ok(), "from its own address");

    // a adds addresses it was never given: one nobody has, and b's.
    let extra = Ipv4Addr::new(10, 244, 0, 99);
    a.ns().ip(&["addr", "add", "10.244.0.99/32", "dev", "eth0"]);
    a.ns().ip(&["addr", "add", "10.244.0.3/32", "dev", "eth0"]);
    let (nb, nc) = (srv_b.served(), srv_c.served());
    let lines = node.monitor_while(2.0, || {
        let _ = udp_from(a.ns(), extra, c.ip, 5353, b"spoofed".to_vec(), Duration::from_millis(300));
        let _ = udp_from(a.ns(), b.ip, c.ip, 5353, b"as b".to_vec(), Duration::from_millis(300));
    });
    let spoofed: Vec<_> = lines.iter().filter(|l| l["kind"] == "drop" && l["reason"] == "spoofed_source").collect();
    assert!(spoofed.iter().any(|l| l["src"] == extra.to_string()), "weir monitor --type drop shows it: {lines:#?}");
    assert!(spoofed.iter().any(|l| l["src"] == b.ip.to_string() && l["dst"] == c.ip.to_string()), "{lines:#?}");
    assert!(!served_after(&srv_c, nc), "c never saw what a sent from an address it does not own, nor as b");
    assert!(!served_after(&srv_b, nb), "nor did b see replies to its name");
    let n = drops(&node, "spoofed_source");
    assert!(n >= 2, "counted in weir stats: {n}: {}", String::from_utf8_lossy(&node.weir(&["stats", "-o", "json"]).stdout));
    let metrics = node.agent_http("/metrics");
    assert!(metrics.lines().any(|l| l.starts_with("weir_datapath_drops_total{reason=\"spoofed_source\"}") && !l.ends_with(" 0")), "and in /metrics");

    // The node routes the extra address to a's link (a pod wired by hand):
    // the agent follows the route over netlink.
    node.ns().ip(&["route", "add", "10.244.0.99/32", "dev", &a.host_if]);
    weir_tests::wait::until("the agent learns the route", || agent.link_addrs(a.host_ifindex).contains(&IpAddr::V4(extra)));
    assert!(udp_from(a.ns(), extra, c.ip, 5353, b"routed".to_vec(), DEFAULT_TIMEOUT).is_ok(), "a routed address may send");
    node.ns().ip(&["route", "del", "10.244.0.99/32", "dev", &a.host_if]);
    weir_tests::wait::until("the agent forgets the route", || !agent.link_addrs(a.host_ifindex).contains(&IpAddr::V4(extra)));
    let nc = srv_c.served();
    let _ = udp_from(a.ns(), extra, c.ip, 5353, b"unrouted".to_vec(), Duration::from_millis(300));
    assert!(!served_after(&srv_c, nc), "an unrouted address may not");
}

fn udp6_probe(from: &Pod, to: Ipv6Addr, port: u16) -> bool {
    from.ns().run(move || {
        let s = UdpSocket::bind("[::]:0").expect("bind v6");
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        s.connect(SocketAddrV6::new(to, port, 0, 0)).expect("connect v6");
        let _ = s.send(b"v6?");
        let mut buf = [0u8; 64];
        s.recv(&mut buf).is_ok()
    })
}

#[test]
fn ipv6_does_not_get_around_a_network_policy() {
    let mut c = NetpolCluster::new();
    let (xa, ya) = (P { ns: "x", pod: "a" }, P { ns: "y", pod: "a" });
    // Addresses routed to the pods' links that their podIPs do not list.
    let (v6_xa, v6_ya): (Ipv6Addr, Ipv6Addr) = ("fd00::10".parse().expect("v6"), "fd00::20".parse().expect("v6"));
    for (p, v6) in [(xa, v6_xa), (ya, v6_ya)] {
        let pod = &mut c.pods.iter_mut().find(|(q, _)| *q == p).expect("pod").1;
        pod.add_v6(&c.node, v6);
    }
    let echo = c.pod(xa).ns().spawn(move || {
        let s = UdpSocket::bind("[::]:7001").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    weir_tests::wait::until("the agent learns y/a's IPv6 route", || c.agent.link_addrs(c.pod(ya).host_ifindex).contains(&IpAddr::V6(v6_ya)));
    weir_tests::wait::until("the agent learns x/a's IPv6 route", || c.agent.link_addrs(c.pod(xa).host_ifindex).contains(&IpAddr::V6(v6_xa)));
    // The first datagram may meet a loaded machine: three tries.
    assert!((0..3).any(|_| udp6_probe(c.pod(ya), v6_xa, 7001)), "IPv6 between pods no policy isolates");
    c.apply(DENY_INGRESS_X);
    for _ in 0..5 {
        assert!(!udp6_probe(c.pod(ya), v6_xa, 7001), "x/a is isolated: IPv6 must not reach it");
    }
    assert!(!udp6_probe(c.pod(xa), v6_ya, 7001), "nor leave it");
    drop(echo);
}

/// One client and one backend behind VIP (UDP 53 → 5353 echo, TCP 80 →
/// 8080 echo), as YAML in the agent's directory.
struct Svc {
    node: Node,
    client: Pod,
    backend: Pod,
    agent: weir_tests::Agent,
    _servers: Vec<weir_tests::traffic::Server>,
}

fn svc(agent_args: &[&str]) -> Svc {
    let node = Node::new();
    node.ns().ip(&["addr", "add", NODE_ADDR, "dev", "lo"]);
    let client = node.pod("client", Ipv4Addr::new(10, 244, 0, 2));
    let backend = node.pod("backend", Ipv4Addr::new(10, 244, 0, 5));
    node.write_source("dns.yaml", yaml_service("dns", VIP, 53, "UDP", 5353, &ready(&[backend.ip])).as_bytes());
    node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&[backend.ip])).as_bytes());
    let mut agent = node.start_agent_with(agent_args);
    agent.wait_synced();
    agent.wait_attached(&client.host_if, client.host_ifindex);
    agent.wait_attached(&backend.host_if, backend.host_ifindex);
    let servers = vec![udp_server(backend.ns(), 5353, Reply::Echo), tcp_server(backend.ns(), 8080, Reply::Echo)];
    Svc { node, client, backend, agent, _servers: servers }
}

#[test]
fn a_4000_byte_udp_datagram_through_a_clusterip_arrives_whole_both_ways() {
    let s = svc(&[]);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let answer = udp_request(s.client.ns(), VIP, 53, payload.clone(), DEFAULT_TIMEOUT).expect("the fragmented datagram is answered");
    assert_eq!(answer, payload, "echoed whole: every fragment was translated, both ways");
}

#[test]
fn path_mtu_discovery_works_through_a_vip() {
    let s = svc(&[]);
    // The backend's link is 1200 bytes at both ends, but the backend
    // advertises the MSS of a 1500-byte link, so the client's TCP sends
    // segments the node must refuse with frag-needed. Narrowing only
    // the node's end would drop the backend's own lone full-size
    // segments at that veth, silently (a stall, not PMTU discovery).
    s.node.ns().ip(&["link", "set", &s.backend.host_if, "mtu", "1200"]);
    s.backend.ns().ip(&["link", "set", "eth0", "mtu", "1200"]);
    s.backend.ns().ip(&["route", "replace", "default", "via", weir_tests::pod::GATEWAY, "dev", "eth0", "onlink", "advmss", "1460"]);
    // Real 1500-byte segments (GSO super-packets are forwardable to any
    // MTU; the kernel segments them where it must).
    s.client.ns().exec(&["ethtool", "-K", "eth0", "tso", "off", "gso", "off"]);
    let mut stream = connect(s.client.ns(), VIP, 80, DEFAULT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    // One message that the backend echoes as one full-size segment.
    let one = vec![7u8; 1400];
    stream.write_all(&one).expect("write one message");
    let mut back_one = vec![0u8; one.len()];
    stream.read_exact(&mut back_one).expect("one 1400-byte message echoed");
    assert_eq!(back_one, one);
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut w = stream.try_clone().expect("clone");
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent));
    let mut back = vec![0u8; data.len()];
    let start = Instant::now();
    stream.read_exact(&mut back).expect("256 KiB echoed through a path with a smaller MTU (PMTU discovery)");
    writer.join().expect("writer").expect("write");
    assert_eq!(back, data);
    eprintln!("256 KiB through the VIP over a 1200-byte link in {:?}", start.elapsed());
    assert_eq!(path_mtu(&stream), 1200, "the client's socket to the VIP learned the path MTU from the translated frag-needed");
}

/// IP_MTU of a connected socket: the path MTU the kernel knows for it.
fn path_mtu(s: &std::net::TcpStream) -> i32 {
    use std::os::fd::AsRawFd as _;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and an int-sized output buffer.
    let rc = unsafe { libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU, (&mut mtu as *mut libc::c_int).cast(), &mut len) };
    assert_eq!(rc, 0, "getsockopt(IP_MTU): {}", std::io::Error::last_os_error());
    mtu
}

#[test]
fn a_datagram_whose_ttl_runs_out_on_the_node_is_answered_with_time_exceeded() {
    let s = svc(&[]);
    assert!(udp_with_ttl(s.client.ns(), VIP, 53, 2, DEFAULT_TIMEOUT).is_ok(), "TTL 2 survives one hop");
    let _ = &s.agent;
    let err = udp_with_ttl(s.client.ns(), VIP, 53, 1, DEFAULT_TIMEOUT).expect_err("TTL 1 expires at the node, as forwarding does");
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "time exceeded, reported on the VIP's socket: {err}");
}

#[test]
fn a_half_closed_connection_outlives_the_closing_timeout() {
    let s = svc(&["--ct-tcp-closing-timeout", "1"]);
    let late = late_writer(s.backend.ns(), 8081, Duration::from_millis(2500), "late\n");
    s.node.write_source("late.yaml", yaml_service("late", VIP, 81, "TCP", 8081, &ready(&[s.backend.ip])).as_bytes());
    let before = s.agent.log_text().matches("reconciled").count();
    let mut agent = s.agent;
    agent.wait_for_log("reconciled", before + 1);
    let mut stream = connect(s.client.ns(), VIP, 81, DEFAULT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(6))).expect("timeout");
    stream.write_all(b"request").expect("write");
    stream.shutdown(std::net::Shutdown::Write).expect("half-close");
    assert_eq!(read_line(&mut stream).expect("read after our FIN"), "late", "the server still speaks 2.5 s after our FIN");
    late.join().expect("server").expect("server write");
}

#[test]
fn a_client_under_default_deny_ingress_is_refused_at_once() {
    let mut c = NetpolCluster::new();
    c.node.write_source("empty.yaml", yaml_service("empty", VIP, 80, "TCP", 80, &[]).as_bytes());
    c.node.write_source("empty-udp.yaml", yaml_service("emptyu", VIP, 53, "UDP", 53, &[]).as_bytes());
    c.apply(DENY_INGRESS_X);
    let client = c.pod(P { ns: "x", pod: "a" });
    let start = Instant::now();
    let err = connect(client.ns(), VIP, 80, DEFAULT_TIMEOUT).expect_err("no endpoints");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "the RST reaches the client past its own ingress policy: {err}");
    assert!(start.elapsed() < Duration::from_secs(1), "at once: {:?}", start.elapsed());
    let err = udp_request(client.ns(), VIP, 53, b"q".to_vec(), DEFAULT_TIMEOUT).expect_err("no endpoints");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "and the ICMP port unreachable: {err}");
}
