//! A dual-stack Service through the whole agent: a Service with
//! `ipFamilyPolicy: RequireDualStack`, a ClusterIP of each family and an
//! EndpointSlice of each `addressType`, read from YAML in standalone mode,
//! is reached from a dual-stack pod over IPv4 and over IPv6, by TCP and
//! UDP, every backend taking connections of both families and every reply
//! coming from the ClusterIP of the client's family. The CLI lists both
//! frontends.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use weir_tests::{
    services::yaml_dual_stack_service,
    traffic::{tcp_connect, tcp_name, tcp_server_at, udp_name_from, udp_server_at, Reply, Server},
    Node, Pod,
};

const T: Duration = Duration::from_millis(1500);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 70, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0x70, 0x10);

fn pod(node: &Node, name: &str, last: u8) -> Pod {
    let mut p = node.pod(name, Ipv4Addr::new(10, 244, 70, last));
    p.add_v6(node, Ipv6Addr::new(0xfd00, 0x10, 0x244, 0x70, 0, 0, 0, last as u16));
    p
}

/// Each backend's name on TCP 8080 and UDP 5353, over both families
/// (bound to `::`).
fn serve(backends: &[Pod]) -> Vec<Server> {
    let any: IpAddr = Ipv6Addr::UNSPECIFIED.into();
    backends
        .iter()
        .flat_map(|b| [tcp_server_at(b.ns(), any, 8080, Reply::Name(b.name.clone())), udp_server_at(b.ns(), any, 5353, Reply::Name(b.name.clone()))])
        .collect()
}

/// The Service and its two EndpointSlices, as a cluster holds them.
fn dual_stack_service(backends: &[&Pod]) -> String {
    let pairs: Vec<(Ipv4Addr, Ipv6Addr)> = backends.iter().map(|b| (b.ip, b.ip6.expect("dual-stack pod"))).collect();
    yaml_dual_stack_service("both", VIP4, VIP6, &[("web", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")], &pairs)
}

#[test]
fn a_dual_stack_service_is_reached_over_both_families_by_tcp_and_udp() {
    let node = Node::new();
    let client = pod(&node, "client", 2);
    let backends = [pod(&node, "b1", 11), pod(&node, "b2", 12)];
    let _servers = serve(&backends);
    node.write_source("both.yaml", dual_stack_service(&[&backends[0], &backends[1]]).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    for p in [&client, &backends[0], &backends[1]] {
        agent.wait_attached(&p.host_if, p.host_ifindex);
    }
    let log = agent.log_text();
    assert!(!log.contains("rejected input") && !log.contains("WARN") && !log.contains("ERROR"), "the Service is taken whole:\n{log}");

    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let mut tcp = BTreeSet::new();
        let mut udp = BTreeSet::new();
        for _ in 0..30 {
            tcp.insert(tcp_name(client.ns(), vip, 80, T).unwrap_or_else(|e| panic!("TCP to {vip}: {e}")));
            let (name, from) = udp_name_from(client.ns(), vip, 53, T).unwrap_or_else(|e| panic!("UDP to {vip}: {e}"));
            assert_eq!(from, SocketAddr::new(vip, 53), "the UDP answer comes from the ClusterIP the client asked");
            udp.insert(name);
        }
        let all: BTreeSet<String> = ["b1", "b2"].map(String::from).into();
        assert_eq!((&tcp, &udp), (&all, &all), "every backend answers over {vip}");
        let s = tcp_connect(client.ns(), vip, 80, T).expect("connect");
        assert_eq!(s.peer_addr().expect("peer"), SocketAddr::new(vip, 80), "the TCP peer is the ClusterIP");
    }

    let out = node.weir(&["service", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{VIP4}:80")) && text.contains(&format!("[{VIP6}]:80")), "both frontends are listed:\n{text}");
    // explain follows an IPv6 flow through the IPv6 frontend to a backend.
    let client6 = client.ip6.expect("dual-stack client");
    let out = node.weir(&["explain", &format!("[{client6}]:40123"), &format!("[{VIP6}]:80/tcp"), "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(e["verdict"], "forward", "{e}");
    assert_eq!(e["service"]["frontend"], format!("[{VIP6}]:80/tcp"), "{e}");
    let b6: Vec<String> = backends.iter().map(|b| b.ip6.expect("dual-stack").to_string()).collect();
    assert!(e["backend"]["addr"].as_str().is_some_and(|a| b6.iter().any(|b| b == a)), "an IPv6 backend: {e}");
}

#[test]
fn an_endpoint_in_the_nodes_own_network_namespace_answers_over_ipv6() {
    let node = Node::new();
    let client = pod(&node, "client", 2);
    // The node's own IPv6 address, where a host-network pod listens.
    let host: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0x70, 0, 0, 0, 1);
    node.ns().ip(&["-6", "addr", "add", &format!("{host}/128"), "dev", "lo", "nodad"]);
    let _server = tcp_server_at(node.ns(), Ipv6Addr::UNSPECIFIED.into(), 9090, Reply::Name("node".into()));
    let vip: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0x70, 0x20);
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hostnet, namespace: default}}\nspec:\n  ipFamilies: [IPv6]\n  clusterIP: \"{vip}\"\n  \
         ports: [{{name: web, port: 80, targetPort: 9090, protocol: TCP}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: hostnet-1, namespace: default, labels: {{kubernetes.io/service-name: hostnet}}}}\n\
         addressType: IPv6\nports: [{{name: web, port: 9090, protocol: TCP}}]\nendpoints:\n- addresses: [\"{host}\"]\n  conditions: {{ready: true}}\n"
    );
    node.write_source("hostnet.yaml", yaml.as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    agent.wait_attached(&client.host_if, client.host_ifindex);
    for _ in 0..5 {
        assert_eq!(tcp_name(client.ns(), vip, 80, T).expect("through the ClusterIP to the node"), "node");
    }
    let s = tcp_connect(client.ns(), vip, 80, T).expect("connect");
    assert_eq!(s.peer_addr().expect("peer"), SocketAddr::new(vip.into(), 80), "the node's reply is reverse-NATed on its way into the pod");
}

#[test]
fn the_nodes_own_ipv6_sockets_reach_the_service_through_the_socket_programs() {
    let node = Node::new();
    let backends = [pod(&node, "b1", 11), pod(&node, "b2", 12)];
    // The node's own addresses (its sockets' sources).
    node.ns().ip(&["-6", "addr", "add", "fd00:10:0:70::1/128", "dev", "lo", "nodad"]);
    node.ns().ip(&["addr", "add", "10.0.70.1/32", "dev", "lo"]);
    let _servers = serve(&backends);
    node.write_source("both.yaml", dual_stack_service(&[&backends[0], &backends[1]]).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    let host = node.ns();
    // An IPv6 socket to the IPv6 ClusterIP, and one to the IPv4 ClusterIP
    // as a v4-mapped address: pointed at a backend at connect, the
    // frontend still its peer.
    let mapped = IpAddr::V6(VIP4.to_ipv6_mapped());
    for vip in [IpAddr::V6(VIP6), mapped] {
        let mut names = BTreeSet::new();
        for i in 0..40 {
            if names.len() == 2 && i >= 8 {
                break;
            }
            let (peer, name) = host
                .run(move || {
                    use std::io::{Read as _, Write as _};
                    let mut s = std::net::TcpStream::connect_timeout(&SocketAddr::new(vip, 80), T)?;
                    s.set_read_timeout(Some(T))?;
                    let peer = s.peer_addr()?;
                    s.write_all(b"hi")?;
                    s.shutdown(std::net::Shutdown::Write)?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    Ok::<_, std::io::Error>((peer, out.split_whitespace().next().unwrap_or_default().to_string()))
                })
                .unwrap_or_else(|e| panic!("the node's TCP to {vip}: {e}"));
            assert_eq!(peer, SocketAddr::new(vip, 80), "getpeername names the frontend");
            names.insert(name);
        }
        assert_eq!(names, ["b1", "b2"].map(String::from).into(), "the node reaches both backends of {vip}");
        // Unconnected UDP: the answer seems to come from the frontend.
        let (name, from) = udp_name_from(host, vip, 53, T).unwrap_or_else(|e| panic!("the node's UDP to {vip}: {e}"));
        assert!(name == "b1" || name == "b2", "{name}");
        assert_eq!(from, SocketAddr::new(vip, 53), "recvmsg names the frontend");
    }
}

#[test]
fn the_nodes_connected_ipv6_udp_socket_whose_backend_leaves_is_destroyed() {
    use std::net::UdpSocket;
    let node = Node::new();
    let backends = [pod(&node, "b1", 11), pod(&node, "b2", 12)];
    node.ns().ip(&["-6", "addr", "add", "fd00:10:0:70::1/128", "dev", "lo", "nodad"]);
    let _servers = serve(&backends);
    node.write_source("both.yaml", dual_stack_service(&[&backends[0], &backends[1]]).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    let host = node.ns();
    let connect = || {
        host.run(move || {
            let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
            s.set_read_timeout(Some(T))?;
            s.connect((VIP6, 53))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("a connected IPv6 UDP socket")
    };
    let ask = |s: &UdpSocket| -> std::io::Result<String> {
        s.send(b"q")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let (mut on_1, mut on_2) = (None, None);
    for _ in 0..40 {
        let s = connect();
        match ask(&s).expect("ask").as_str() {
            "b1" if on_1.is_none() => on_1 = Some(s),
            "b2" if on_2.is_none() => on_2 = Some(s),
            _ => {}
        }
        if on_1.is_some() && on_2.is_some() {
            break;
        }
    }
    let (on_1, on_2) = (on_1.expect("a socket on b1"), on_2.expect("a socket on b2"));
    // b1 leaves the service; its pod still answers.
    node.write_source("both.yaml", dual_stack_service(&[&backends[1]]).as_bytes());
    let start = std::time::Instant::now();
    let err = loop {
        match ask(&on_1) {
            Ok(name) => assert_eq!(name, "b1", "the socket is connected to b1"),
            Err(e) => break e,
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the IPv6 socket on the gone backend was never destroyed");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(matches!(err.raw_os_error(), Some(libc::EDESTADDRREQ | libc::ECONNABORTED)), "destroyed: {err}");
    assert_eq!(ask(&on_2).expect("the socket on the backend that stays"), "b2");
    for _ in 0..6 {
        assert_eq!(ask(&connect()).expect("a reconnect"), "b2", "a new socket reaches the backend left");
    }
}
