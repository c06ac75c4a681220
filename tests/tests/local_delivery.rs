//! Traffic between two pods of one node, through the real agent and
//! kernel. A whole TCP or UDP packet the policy passes, or a service
//! translated, goes straight into the receiving pod (`fwd::into_pod`,
//! `bpf_redirect_peer` from the sender's link):
//! - the node's forwarding never sees it (an nftables counter on the
//!   forward hook stays at zero);
//! - nor does the receiving link's transmit path (its tx counter stays
//!   put, but for the one packet that teaches the link's to_pod the frame
//!   header);
//! - the pod sees the frames the node's stack would give it: its own MAC
//!   as the destination, the host side's as the source, and no mark.
//!
//! What the node's IP stack must answer or handle still goes up it: a TTL
//! that runs out is answered with time exceeded, a packet with IP options
//! is forwarded by the stack.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use weir_datapath::lb::{spec::Protocol, Lb};
use weir_tests::{
    hostile::udp_with_ttl,
    netns::NetNs,
    services::cluster_ip,
    stats::counters,
    traffic::{tcp_request, tcp_server, udp_request, udp_server, Reply, DEFAULT_TIMEOUT},
    wait, Agent, Node, Pod,
};

/// An address of the node itself, so its own ICMP errors have a source.
const NODE_ADDR: &str = "192.168.0.2/32";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Two pods on one node with echo servers (TCP 8080 and UDP 5353 on b,
/// UDP 5353 on a), an nftables counter on the node's forward hook, and a
/// service (`VIP`: TCP 80 and UDP 53) whose backend is b.
struct Pair {
    node: Node,
    a: Pod,
    b: Pod,
    agent: Agent,
    _lb: Lb,
    _servers: Vec<weir_tests::traffic::Server>,
}

fn pair() -> Pair {
    let node = Node::new();
    node.ns().ip(&["addr", "add", NODE_ADDR, "dev", "lo"]);
    let (a, b) = (node.pod("a", Ipv4Addr::new(10, 244, 0, 2)), node.pod("b", Ipv4Addr::new(10, 244, 0, 3)));
    // The service is written straight into the maps, behind the agent's
    // back: its conntrack collection would take the flows for orphans.
    let agent = node.start_agent_with(&["--ct-gc-interval", "3600"]);
    agent.wait_attached(&a.host_if, a.host_ifindex);
    agent.wait_attached(&b.host_if, b.host_ifindex);
    let servers = vec![tcp_server(b.ns(), 8080, Reply::Echo), udp_server(b.ns(), 5353, Reply::Echo), udp_server(a.ns(), 5353, Reply::Echo)];
    nft(node.ns(), &["add table inet weirtest", "add chain inet weirtest counted { type filter hook forward priority 0; policy accept; }", "add rule inet weirtest counted meta l4proto { tcp, udp } counter"]);
    let mut lb = Lb::open(&weir_datapath::PinLayout::new(node.bpffs())).expect("open lb maps");
    lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(b.ip, 8080)])).expect("upsert tcp");
    lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(b.ip, 5353)])).expect("upsert udp");
    Pair { node, a, b, agent, _lb: lb, _servers: servers }
}

fn nft(ns: &NetNs, cmds: &[&str]) {
    for cmd in cmds {
        let argv: Vec<&str> = std::iter::once("nft").chain(cmd.split(' ')).collect();
        ns.exec(&argv);
    }
}

/// The packet counts of the chain's counters, in rule order.
fn nft_counters(ns: &NetNs, family: &str, table: &str, chain: &str) -> Vec<u64> {
    let out = ns.exec(&["nft", "list", "chain", family, table, chain]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let counts: Vec<u64> = words.windows(2).filter(|w| w[0] == "packets").map(|w| w[1].parse().unwrap_or_else(|_| panic!("a packet count in:\n{out}"))).collect();
    assert!(!counts.is_empty(), "no counter in:\n{out}");
    counts
}

/// The packets the node's forward hook counted.
fn forwarded(node: &Node) -> u64 {
    nft_counters(node.ns(), "inet", "weirtest", "counted")[0]
}

/// Packets the node transmitted on its side of pod link `ifname`.
fn link_tx(node: &Node, ifname: &str) -> u64 {
    let out = node.ns().ip(&["-s", "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j: {e}:\n{out}"));
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or_else(|| panic!("no tx packets in:\n{out}"))
}

/// Counters on the pod's `eth0` ingress for TCP and UDP frames it
/// receives: every one, those not addressed to the pod's own MAC, those
/// not from the host side's MAC, and those carrying a mark.
fn watch_frames(pod: &Pod, pod_mac: &str, host_mac: &str) {
    nft(
        pod.ns(),
        &[
            "add table netdev weirtest",
            "add chain netdev weirtest seen { type filter hook ingress device eth0 priority 0; policy accept; }",
            "add rule netdev weirtest seen meta l4proto { tcp, udp } counter",
            &format!("add rule netdev weirtest seen meta l4proto {{ tcp, udp }} ether daddr != {pod_mac} counter"),
            &format!("add rule netdev weirtest seen meta l4proto {{ tcp, udp }} ether saddr != {host_mac} counter"),
            "add rule netdev weirtest seen meta l4proto { tcp, udp } meta mark != 0 counter",
        ],
    );
}

#[test]
fn traffic_between_pods_of_one_node_goes_straight_into_the_receiver() {
    let p = pair();
    let (b_mac, b_host_mac) = (p.b.ns().mac("eth0"), p.node.ns().mac(&p.b.host_if));
    watch_frames(&p.b, &b_mac, &b_host_mac);
    let (tx0, a_tx0) = (link_tx(&p.node, &p.b.host_if), link_tx(&p.node, &p.a.host_if));
    let b0 = counters(&p.node, &p.b.host_if);
    let payload = b"between pods".to_vec();
    const N: u64 = 20;
    for _ in 0..N {
        assert_eq!(tcp_request(p.a.ns(), p.b.ip, 8080, payload.clone(), DEFAULT_TIMEOUT).expect("TCP a → b"), payload);
        assert_eq!(udp_request(p.a.ns(), p.b.ip, 5353, payload.clone(), DEFAULT_TIMEOUT).expect("UDP a → b"), payload);
        assert_eq!(udp_request(p.b.ns(), p.a.ip, 5353, payload.clone(), DEFAULT_TIMEOUT).expect("UDP b → a"), payload);
        assert_eq!(tcp_request(p.a.ns(), VIP, 80, payload.clone(), DEFAULT_TIMEOUT).expect("TCP a → VIP → b"), payload);
        assert_eq!(udp_request(p.a.ns(), VIP, 53, payload.clone(), DEFAULT_TIMEOUT).expect("UDP a → VIP → b"), payload);
    }
    assert_eq!(forwarded(&p.node), 0, "every packet both ways, direct or through the service, skipped the node's forwarding");
    let tx = link_tx(&p.node, &p.b.host_if) - tx0;
    assert!(tx <= 1, "the node's side of b's link transmitted {tx} packets: only the one that teaches its to_pod the frame header");
    let a_tx = link_tx(&p.node, &p.a.host_if) - a_tx0;
    assert!(a_tx <= 1, "the node's side of a's link transmitted {a_tx} packets (replies, direct and from the service, go straight into a too)");
    let seen = nft_counters(p.b.ns(), "netdev", "weirtest", "seen");
    let to_b = counters(&p.node, &p.b.host_if).delta(&b0).to_pod_packets;
    assert!(to_b >= seen[0], "weir counts what it delivers to b's link ({to_b} packets) as to_pod, as the link's to_pod would: b received {} TCP and UDP frames", seen[0]);
    // Per round: a TCP connection direct and one through the service (at
    // least SYN, ACK with data, FIN, ACK each), and two datagrams.
    assert!(seen[0] >= N * 10, "b received {} TCP and UDP frames", seen[0]);
    assert_eq!(seen[1..], [0, 0, 0], "every frame b received was addressed to its MAC ({b_mac}), came from the host side's ({b_host_mac}) and carried no mark");
    let _ = &p.agent;
}

#[test]
fn a_datagram_with_ip_options_between_pods_goes_up_the_nodes_stack() {
    let p = pair();
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
    assert_eq!(forwarded(&p.node), 0, "the stack answered it without forwarding it; the TTL-2 datagram and its echo went into the pods");
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
fn ipv6_between_pods_of_one_node_goes_straight_into_the_receiver() {
    let mut p = pair();
    let (v6_a, v6_b): (Ipv6Addr, Ipv6Addr) = ("fd00::10".parse().expect("v6"), "fd00::20".parse().expect("v6"));
    p.a.add_v6(&p.node, v6_a);
    p.b.add_v6(&p.node, v6_b);
    let (b_mac, b_host_mac) = (p.b.ns().mac("eth0"), p.node.ns().mac(&p.b.host_if));
    watch_frames(&p.b, &b_mac, &b_host_mac);
    let echo = p.b.ns().spawn(move || {
        let s = UdpSocket::bind("[::]:7001").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    wait::until("the agent learns a's IPv6 route", || p.agent.link_addrs(p.a.host_ifindex).contains(&IpAddr::V6(v6_a)));
    wait::until("the agent learns b's IPv6 route", || p.agent.link_addrs(p.b.host_ifindex).contains(&IpAddr::V6(v6_b)));
    // The first datagram may wait for neighbour discovery: three tries.
    assert!((0..3).any(|_| udp6_echo(&p.a, v6_b, 7001)), "IPv6 a → b and back");
    let tx0 = link_tx(&p.node, &p.b.host_if);
    for _ in 0..10 {
        assert!(udp6_echo(&p.a, v6_b, 7001), "IPv6 a → b and back");
    }
    assert_eq!(forwarded(&p.node), 0, "every IPv6 packet both ways skipped the node's forwarding");
    let tx = link_tx(&p.node, &p.b.host_if) - tx0;
    assert_eq!(tx, 0, "nor went out of the node's side of b's link (its frame header was learned by then)");
    assert_eq!(nft_counters(p.b.ns(), "netdev", "weirtest", "seen")[1..], [0, 0, 0], "b's frames had its MAC, the host side's and no mark");
    drop(echo);
}
