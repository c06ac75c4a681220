//! Traffic between two pods of one node, through the real agent and
//! kernel: what the policy passes goes straight to the receiving pod's
//! link (`fwd::between_pods_v4`/`_v6`), so the node's forwarding never
//! sees it (an nftables counter on the forward hook stays at zero); what
//! the node's IP stack must answer or handle still goes up it (a TTL that
//! runs out is answered with time exceeded, a packet with IP options is
//! forwarded by the stack).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use weir_tests::{
    hostile::udp_with_ttl,
    traffic::{tcp_request, tcp_server, udp_request, udp_server, Reply, DEFAULT_TIMEOUT},
    Agent, Node, Pod,
};

/// An address of the node itself, so its own ICMP errors have a source.
const NODE_ADDR: &str = "192.168.0.2/32";

/// Two pods on one node with echo servers (TCP 8080, UDP 5353), an
/// nftables counter on the node's forward hook for packets to either.
struct Pair {
    node: Node,
    a: Pod,
    b: Pod,
    agent: Agent,
    _servers: Vec<weir_tests::traffic::Server>,
}

fn pair() -> Pair {
    let node = Node::new();
    node.ns().ip(&["addr", "add", NODE_ADDR, "dev", "lo"]);
    let (a, b) = (node.pod("a", Ipv4Addr::new(10, 244, 0, 2)), node.pod("b", Ipv4Addr::new(10, 244, 0, 3)));
    let agent = node.start_agent();
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);
    let servers = vec![tcp_server(b.ns(), 8080, Reply::Echo), udp_server(b.ns(), 5353, Reply::Echo), udp_server(a.ns(), 5353, Reply::Echo)];
    for cmd in [
        "add table inet weirtest",
        "add chain inet weirtest counted { type filter hook forward priority 0; policy accept; }",
        "add rule inet weirtest counted meta l4proto { tcp, udp } counter",
    ] {
        let argv: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        node.ns().exec(&argv);
    }
    Pair { node, a, b, agent, _servers: servers }
}

/// The packets the node's forward hook counted.
fn forwarded(node: &Node) -> u64 {
    let out = node.ns().exec(&["nft", "list", "chain", "inet", "weirtest", "counted"]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets").unwrap_or_else(|| panic!("no counter in:\n{out}"));
    words[at + 1].parse().unwrap_or_else(|_| panic!("a packet count in:\n{out}"))
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting: {what}");
}

#[test]
fn traffic_between_pods_of_one_node_skips_the_nodes_forwarding() {
    let p = pair();
    let payload = b"between pods".to_vec();
    for _ in 0..20 {
        assert_eq!(tcp_request(p.a.ns(), p.b.ip, 8080, payload.clone(), DEFAULT_TIMEOUT).expect("TCP a → b"), payload);
        assert_eq!(udp_request(p.a.ns(), p.b.ip, 5353, payload.clone(), DEFAULT_TIMEOUT).expect("UDP a → b"), payload);
        assert_eq!(udp_request(p.b.ns(), p.a.ip, 5353, payload.clone(), DEFAULT_TIMEOUT).expect("UDP b → a"), payload);
    }
    assert_eq!(forwarded(&p.node), 0, "every packet both ways went straight to the other pod's link");

    // What the stack must handle still reaches it, and still arrives: a
    // datagram with IP options (four no-ops) is forwarded by the stack.
    let b_ip = p.b.ip;
    let sent = p.a.ns().run(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        s.set_read_timeout(Some(DEFAULT_TIMEOUT)).expect("timeout");
        let nops = [1u8, 1, 1, 1];
        // SAFETY: a valid socket and a 4-byte option buffer.
        let rc = unsafe { libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, nops.as_ptr().cast(), nops.len() as u32) };
        assert_eq!(rc, 0, "IP_OPTIONS: {}", std::io::Error::last_os_error());
        s.send_to(b"with options", (b_ip, 5353)).expect("send");
        let mut buf = [0u8; 64];
        s.recv(&mut buf).map(|n| buf[..n].to_vec())
    });
    assert_eq!(sent.expect("a datagram with IP options is answered"), b"with options");
    assert!(forwarded(&p.node) >= 1, "and the node's forwarding saw it");
    let _ = &p.agent;
}

#[test]
fn a_datagram_between_pods_whose_ttl_runs_out_on_the_node_is_answered_with_time_exceeded() {
    let p = pair();
    assert!(udp_with_ttl(p.a.ns(), p.b.ip, 5353, 2, DEFAULT_TIMEOUT).is_ok(), "TTL 2 survives the node's hop");
    let err = udp_with_ttl(p.a.ns(), p.b.ip, 5353, 1, DEFAULT_TIMEOUT).expect_err("TTL 1 expires at the node, as forwarding does");
    assert_eq!(err.raw_os_error(), Some(libc::EHOSTUNREACH), "time exceeded: {err}");
    assert_eq!(forwarded(&p.node), 0, "the stack answered it without forwarding it; the TTL-2 datagram and its echo were redirected");
}

fn udp6_echo(from: &Pod, to: Ipv6Addr, port: u16) -> bool {
    from.ns().run(move || {
        let s = UdpSocket::bind("[::]:0").expect("bind v6");
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        s.connect(SocketAddrV6::new(to, port, 0, 0)).expect("connect v6");
        let _ = s.send(b"v6");
        let mut buf = [0u8; 64];
        s.recv(&mut buf).is_ok_and(|n| &buf[..n] == b"v6")
    })
}

#[test]
fn ipv6_between_pods_of_one_node_skips_the_nodes_forwarding() {
    let mut p = pair();
    let (v6_a, v6_b): (Ipv6Addr, Ipv6Addr) = ("fd00::10".parse().expect("v6"), "fd00::20".parse().expect("v6"));
    p.a.add_v6(&p.node, v6_a);
    p.b.add_v6(&p.node, v6_b);
    let echo = p.b.ns().spawn(move || {
        let s = UdpSocket::bind("[::]:7001").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    wait_for(|| p.agent.link_addrs(p.a.host_ifindex).contains(&IpAddr::V6(v6_a)), "the agent learns a's IPv6 route");
    wait_for(|| p.agent.link_addrs(p.b.host_ifindex).contains(&IpAddr::V6(v6_b)), "the agent learns b's IPv6 route");
    // The first datagram waits for neighbour discovery: three tries.
    assert!((0..3).any(|_| udp6_echo(&p.a, v6_b, 7001)), "IPv6 a → b and back");
    for _ in 0..10 {
        assert!(udp6_echo(&p.a, v6_b, 7001), "IPv6 a → b and back");
    }
    assert_eq!(forwarded(&p.node), 0, "every IPv6 packet both ways went straight to the other pod's link");
    drop(echo);
}
