//! North-south traffic, in both routing modes: clients outside the
//! cluster (the outside namespace, several source addresses in
//! 203.0.113.0/24, routing LB IPs, externalIPs and the service CIDR to
//! node 0 as a cloud network would) reach NodePorts, LB IPs, externalIPs
//! and ClusterIPs through the node programs on the uplink; pods reach the
//! same frontends. Each case asserts where the connection lands and the
//! address the backend saw: the client's own exactly where kube-proxy
//! keeps it, the node's where it masquerades.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use weir_tests::{
    north_south::{drops, from_outside, landed, request_here, service, world, World, BACKEND_PORT, CLIENT, CLIENT2, LINES_PORT},
    traffic::{tcp_request, tcp_request_from, tcp_server, udp_df_request_from, udp_request_from, udp_server, Reply, DEFAULT_TIMEOUT},
};

fn external_traffic_policy_cluster_spreads_and_masquerades_to_the_node(mode: &str) {
    let w = world(mode, &[]);
    let node0 = IpAddr::V4(w.c.nodes[0].ip);
    for (dst, port, what) in [
        (w.c.nodes[0].ip, 30080, "NodePort"),
        (Ipv4Addr::new(198, 51, 100, 80), 80, "LB IP"),
        (Ipv4Addr::new(192, 0, 2, 80), 80, "externalIP"),
        (Ipv4Addr::new(10, 96, 0, 80), 80, "ClusterIP routed to the node"),
    ] {
        let (names, seen) = from_outside(&w, CLIENT, dst, port, 16);
        assert_eq!(names, ["a", "b"], "{what}: an external client reaches the backends on both nodes");
        assert_eq!(seen, [node0], "{what}: the backends saw node 0's address (masquerade, so replies return through it)");
    }
    // UDP: the answer comes back from the frontend (the socket is connected).
    for (dst, port) in [(w.c.nodes[0].ip, 30082), (Ipv4Addr::new(198, 51, 100, 82), 80)] {
        for i in 0..4 {
            let r = udp_request_from(&w.c.outside, CLIENT2, dst, port, b"q".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("UDP {i} to {dst}:{port}: {e}"));
            assert_eq!(landed(&r).1.ip(), node0, "UDP to {dst}:{port} is masqueraded too");
        }
    }
    // A pod reaching an eTP Cluster NodePort or LB IP is masqueraded as
    // well (kube-proxy's rule); to the ClusterIP it keeps its address.
    for (dst, port, masq) in [(w.c.nodes[0].ip, 30080, true), (Ipv4Addr::new(198, 51, 100, 80), 80, true), (Ipv4Addr::new(10, 96, 0, 80), 80, false)] {
        for i in 0..6 {
            let r = tcp_request(w.client.ns(), dst, port, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("pod try {i} to {dst}:{port}: {e}"));
            let want = if masq { node0 } else { IpAddr::V4(w.client.ip) };
            assert_eq!(landed(&r).1.ip(), want, "pod to {dst}:{port}");
        }
    }
}

fn external_traffic_policy_local_keeps_the_client_address_on_local_endpoints(mode: &str) {
    let w = world(mode, &[]);
    for (dst, port, what) in [
        (w.c.nodes[0].ip, 30081, "NodePort on node 0"),
        (Ipv4Addr::new(198, 51, 100, 81), 80, "LB IP"),
        (Ipv4Addr::new(192, 0, 2, 81), 80, "externalIP"),
    ] {
        let (names, seen) = from_outside(&w, CLIENT, dst, port, 10);
        assert_eq!(names, ["a"], "{what}: only node 0's endpoint");
        assert_eq!(seen, [IpAddr::V4(CLIENT)], "{what}: the backend saw the client's own address");
    }
    let (names, seen) = from_outside(&w, CLIENT2, w.c.nodes[1].ip, 30081, 10);
    assert_eq!((names, seen), (vec!["b".to_string()], vec![IpAddr::V4(CLIENT2)]), "node 1's NodePort: node 1's endpoint, the client's address");
    // No local endpoint: external traffic is dropped (it times out), and
    // the drop is counted under its reason.
    let err = tcp_request_from(&w.c.outside, CLIENT, w.c.nodes[0].ip, 30083, b"hi".to_vec(), std::time::Duration::from_secs(1))
        .expect_err("node 0 has no endpoint of remote-only");
    assert!(matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "dropped, not refused: {err}");
    assert!(drops(&w.c, 0, "no_local_endpoints") >= 1, "counted as no_local_endpoints");
    // Pods use every endpoint of an eTP Local frontend, without masquerade.
    let mut names = Vec::new();
    for i in 0..16 {
        let r = tcp_request(w.client.ns(), w.c.nodes[0].ip, 30081, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("pod try {i}: {e}"));
        let (name, peer) = landed(&r);
        assert_eq!(peer.ip(), IpAddr::V4(w.client.ip), "the pod keeps its address");
        names.push(name);
    }
    names.sort();
    names.dedup();
    assert_eq!(names, ["a", "b"], "a pod reaches both endpoints of an eTP Local NodePort");
    let r = tcp_request(w.client.ns(), w.c.nodes[0].ip, 30083, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("a pod reaches remote-only's remote endpoint");
    assert_eq!(landed(&r).0, "b");
}

fn frontends_without_endpoints_refuse_and_other_node_ports_are_untouched(mode: &str) {
    let w = world(mode, &[]);
    let node0 = w.c.nodes[0].ip;
    let err = tcp_request_from(&w.c.outside, CLIENT, node0, 30084, b"hi".to_vec(), DEFAULT_TIMEOUT).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "TCP to a NodePort without endpoints is reset: {err}");
    let err = udp_request_from(&w.c.outside, CLIENT, node0, 30085, b"q".to_vec(), DEFAULT_TIMEOUT).expect_err("no endpoints");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "UDP gets ICMP port unreachable: {err}");
    assert!(drops(&w.c, 0, "no_endpoints") >= 2, "both counted as no_endpoints");
    // /metrics counts north-south flows by frontend kind and verdict.
    let _ = from_outside(&w, CLIENT, node0, 30080, 2);
    let metrics = w.c.nodes[0].node.agent_http("/metrics");
    let count = |kind: &str, verdict: &str| -> u64 {
        let want = format!("weir_north_south_flows_total{{kind=\"{kind}\",verdict=\"{verdict}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&want)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    assert!(count("NodePort", "rejected") >= 2, "rejected NodePort flows counted:\n{metrics}");
    assert!(count("NodePort", "new") >= 2, "new NodePort flows counted:\n{metrics}");
    // A server of the node itself on a port that is no NodePort sees the
    // client's own address: weir leaves that traffic alone.
    let _host = tcp_server(w.c.nodes[0].node.ns(), 9999, Reply::Peer("host".into()));
    let r = tcp_request_from(&w.c.outside, CLIENT, node0, 9999, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("the node's own server");
    assert_eq!(landed(&r), ("host".to_string(), landed(&r).1));
    assert_eq!(landed(&r).1.ip(), IpAddr::V4(CLIENT));
    // `weir service list` names every frontend's kind.
    let out = String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).to_string();
    for want in ["NodePort", "LoadBalancer", "ExternalIP", "ClusterIP", "outside"] {
        assert!(out.contains(want), "service list shows {want}:\n{out}");
    }
}

fn load_balancer_source_ranges_restrict_the_lb_ip_only(mode: &str) {
    let w = world(mode, &[]);
    let lb = Ipv4Addr::new(198, 51, 100, 86);
    let (names, _) = from_outside(&w, CLIENT, lb, 80, 6);
    assert!(!names.is_empty(), "a client inside the range reaches the LB IP");
    let short = std::time::Duration::from_secs(1);
    let err = tcp_request_from(&w.c.outside, CLIENT2, lb, 80, b"hi".to_vec(), short).expect_err("outside the range");
    assert!(matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "dropped: {err}");
    assert!(drops(&w.c, 0, "not_in_source_ranges") >= 1, "counted as not_in_source_ranges");
    // A pod is a source too, and it is outside the range.
    assert!(tcp_request(w.client.ns(), lb, 80, b"hi".to_vec(), short).is_err(), "a pod outside the range is dropped too");
    // The same service's NodePort is not restricted.
    let (names, _) = from_outside(&w, CLIENT2, w.c.nodes[0].ip, 30086, 4);
    assert!(!names.is_empty(), "the NodePort takes any source");
}

/// GETs `path` from `ip:port` from the outside; returns the status code
/// and the body.
fn http_get(w: &World, ip: Ipv4Addr, port: u16, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\n\r\n").into_bytes();
    let r = tcp_request_from(&w.c.outside, CLIENT, ip, port, req, DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("GET {ip}:{port}{path}: {e}"));
    let text = String::from_utf8_lossy(&r).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

fn health_checks_answer_for_local_endpoints_as_they_come_and_go(mode: &str) {
    let w = world(mode, &[]);
    let (n0, n1) = (w.c.nodes[0].ip, w.c.nodes[1].ip);
    // kube-proxy's node health check on 10256.
    for ip in [n0, n1] {
        for path in ["/healthz", "/livez"] {
            let (code, body) = http_get(&w, ip, 10256, path);
            assert_eq!(code, 200, "{ip}:10256{path}: {body}");
            assert!(body.contains("\"nodeEligible\": true"), "{body}");
        }
    }
    let hc = |endpoints: &[(Ipv4Addr, &str)]| {
        service("hc", "LoadBalancer", "10.96.0.88", 30088, "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32088\n", Some("198.51.100.88"), endpoints, "TCP")
    };
    let (a_ip, b_ip) = (w.c.nodes[0].pod_ip(10), w.c.nodes[1].pod_ip(20));
    let (name0, name1) = (w.c.nodes[0].name().to_string(), w.c.nodes[1].name().to_string());
    w.c.write("hc.yaml", &hc(&[(a_ip, &name0)]));
    let served = |ip| tcp_request_from(&w.c.outside, CLIENT, ip, 32088, b"GET / HTTP/1.1\r\n\r\n".to_vec(), DEFAULT_TIMEOUT).is_ok();
    w.c.wait_for("both nodes serve the health-check node port", || served(n0) && served(n1));
    let state = |ip| http_get(&w, ip, 32088, "/");
    w.c.wait_for("node 0 has the endpoint", || state(n0).0 == 200);
    let (code, body) = state(n0);
    assert!(code == 200 && body.contains("\"localEndpoints\": 1"), "node 0: {code} {body}");
    assert!(body.contains("\"name\": \"hc\""), "names the service: {body}");
    assert_eq!(state(n1).0, 503, "node 1 has no local endpoint");
    // The endpoint moves to node 1: the answers follow.
    w.c.write("hc.yaml", &hc(&[(b_ip, &name1)]));
    w.c.wait_for("node 0 says 503 and node 1 says 200", || state(n0).0 == 503 && state(n1).0 == 200);
    // The service goes: so does its port.
    w.c.remove("hc.yaml");
    w.c.wait_for("the health-check port closes", || !served(n0) && !served(n1));
}

fn an_agent_restart_breaks_no_north_south_connection(mode: &str) {
    use std::sync::{atomic::{AtomicBool, AtomicUsize, Ordering}, Arc};
    use weir_tests::traffic::ask_name;
    let mut w = world(mode, &[]);
    let node0 = w.c.nodes[0].ip;
    // A long-lived connection through the NodePort...
    let mut held = w.c.outside.run(move || {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::from((CLIENT, 0)).into())?;
        sock.connect_timeout(&SocketAddr::from((node0, 30087)).into(), DEFAULT_TIMEOUT)?;
        let s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok::<_, std::io::Error>(s)
    }).expect("a long-lived connection through the NodePort");
    let first = ask_name(&mut held).expect("ask");
    // ...and new connections all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looper = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        // A thread of the outside namespace: its sockets are the outside's.
        w.c.outside.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match request_here(CLIENT2, node0, 30080) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    w.c.nodes[0].agent().stop_with(libc::SIGKILL);
    for _ in 0..5 {
        assert_eq!(ask_name(&mut held).expect("the held connection survives the agent's death"), first);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    w.c.nodes[0].agent().restart();
    w.c.nodes[0].agent().wait_synced();
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    looper.join().expect("loop");
    assert_eq!(ask_name(&mut held).expect("the held connection survives the restart"), first);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok >= 20, "the loop ran: {ok} connections");
    assert_eq!(failed, 0, "no new connection failed across the SIGKILL and restart ({ok} succeeded)");
}

fn host_processes_reach_frontends_through_the_socket_programs(mode: &str) {
    use std::io::{Read as _, Write as _};
    let w = world(mode, &[]);
    let host0 = w.c.nodes[0].node.ns();
    let vip = Ipv4Addr::new(10, 96, 0, 80);
    // TCP to a ClusterIP, a NodePort on the node's address and an LB IP:
    // the socket is pointed at a backend at connect, and its peer is
    // still the frontend.
    for (dst, port) in [(vip, 80), (w.c.nodes[0].ip, 30080), (Ipv4Addr::new(198, 51, 100, 80), 80)] {
        // Until both backends answered (the choice is random: twelve
        // fixed tries all land on one backend once in 2,048 runs).
        let mut names = Vec::new();
        for i in 0..40 {
            if names.contains(&"a".to_string()) && names.contains(&"b".to_string()) && i >= 8 {
                break;
            }
            let (peer, reply) = host0
                .run(move || {
                    let mut s = std::net::TcpStream::connect_timeout(&SocketAddr::from((dst, port)), DEFAULT_TIMEOUT)?;
                    s.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
                    let peer = s.peer_addr()?;
                    s.write_all(b"hi")?;
                    s.shutdown(std::net::Shutdown::Write)?;
                    let mut out = Vec::new();
                    s.read_to_end(&mut out)?;
                    Ok::<_, std::io::Error>((peer, out))
                })
                .unwrap_or_else(|e| panic!("host try {i} to {dst}:{port}: {e}"));
            assert_eq!(peer, SocketAddr::from((dst, port)), "getpeername names the frontend");
            names.push(landed(&reply).0);
        }
        names.sort();
        names.dedup();
        assert_eq!(names, ["a", "b"], "the node's processes reach both backends of {dst}:{port}");
    }
    // UDP, connected and not: the answers come from the frontend.
    let uvip = Ipv4Addr::new(10, 96, 0, 82);
    for i in 0..4 {
        udp_request_from(host0, Ipv4Addr::UNSPECIFIED, uvip, 80, b"q".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("connected UDP {i}: {e}"));
        let from = host0
            .run(move || {
                let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
                s.send_to(b"q", (uvip, 80))?;
                let mut buf = [0u8; 512];
                let (_, from) = s.recv_from(&mut buf)?;
                Ok::<_, std::io::Error>(from)
            })
            .unwrap_or_else(|e| panic!("unconnected UDP {i}: {e}"));
        assert_eq!(from, SocketAddr::from((uvip, 80)), "the reply seems to come from the VIP");
    }
    // A frontend without endpoints refuses at once.
    let t = std::time::Instant::now();
    assert!(tcp_request(host0, Ipv4Addr::new(10, 96, 0, 84), 80, b"hi".to_vec(), DEFAULT_TIMEOUT).is_err(), "no endpoints: refused");
    assert!(t.elapsed() < std::time::Duration::from_secs(1), "refused at connect, not timed out");
    // Each agent acts only on its own node's processes: an
    // internalTrafficPolicy: Local service whose only endpoint is on node
    // 1 is refused to node 0's processes and served to node 1's.
    let b_ip = w.c.nodes[1].pod_ip(20);
    let name1 = w.c.nodes[1].name().to_string();
    w.c.write("itp.yaml", &service("itp", "ClusterIP", "10.96.0.89", 0, "  internalTrafficPolicy: Local\n", None, &[(b_ip, &name1)], "TCP").replace(", nodePort: 0", ""));
    let itp = Ipv4Addr::new(10, 96, 0, 89);
    let host1 = w.c.nodes[1].node.ns();
    w.c.wait_for("node 1's processes reach the local endpoint", || tcp_request(host1, itp, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).is_ok());
    assert_eq!(landed(&tcp_request(host1, itp, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("node 1")).0, "b");
    assert!(tcp_request(host0, itp, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).is_err(), "node 0 has no local endpoint: node 1's programs did not act on node 0's socket");
}

/// A connected UDP socket of the node's own processes, pointed at backend
/// `X` by the socket programs: when `X` leaves the service, the socket is
/// destroyed (it is disconnected: the next send fails), while a socket on
/// the backend that stays keeps working; a reconnect reaches the one left.
fn a_connected_udp_socket_whose_backend_leaves_is_destroyed(mode: &str) {
    use std::net::UdpSocket;
    let w = world(mode, &[]);
    let host0 = w.c.nodes[0].node.ns();
    let vip = Ipv4Addr::new(10, 96, 0, 92);
    let (a_ip, b_ip) = (w.c.nodes[0].pod_ip(10), w.c.nodes[1].pod_ip(20));
    let (n0, n1) = (w.c.nodes[0].name().to_string(), w.c.nodes[1].name().to_string());
    let udp = |eps: &[(Ipv4Addr, &str)]| service("udp", "ClusterIP", &vip.to_string(), 0, "", None, eps, "UDP").replace(", nodePort: 0", "");
    w.c.write("udp.yaml", &udp(&[(a_ip, &n0), (b_ip, &n1)]));
    let try_connect = || {
        host0.run(move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
            s.connect((vip, 80))?;
            Ok::<_, std::io::Error>(s)
        })
    };
    let connect = || try_connect().expect("a connected UDP socket");
    let ask = |s: &UdpSocket| -> std::io::Result<String> {
        s.send(b"q")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        Ok(landed(&buf[..n]).0)
    };
    w.c.wait_for("node 0's processes reach the UDP service", || try_connect().and_then(|s| ask(&s)).is_ok());
    // One socket on each backend.
    let (mut on_a, mut on_b) = (None, None);
    for _ in 0..40 {
        let s = connect();
        match ask(&s).expect("ask").as_str() {
            "a" if on_a.is_none() => on_a = Some(s),
            "b" if on_b.is_none() => on_b = Some(s),
            _ => {}
        }
        if on_a.is_some() && on_b.is_some() {
            break;
        }
    }
    let (on_a, on_b) = (on_a.expect("a socket on a"), on_b.expect("a socket on b"));
    // a leaves the service (its pod still answers: without the sweep, the
    // socket would go on talking to it).
    w.c.write("udp.yaml", &udp(&[(b_ip, &n1)]));
    let start = std::time::Instant::now();
    let err = loop {
        match ask(&on_a) {
            Ok(name) => assert_eq!(name, "a", "the socket is connected to a"),
            Err(e) => break e,
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the socket on the gone backend was never destroyed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Destroyed: the socket is disconnected, so a send fails (EDESTADDRREQ)
    // and a pending receive reports the abort (ECONNABORTED).
    assert!(matches!(err.raw_os_error(), Some(libc::EDESTADDRREQ | libc::ECONNABORTED)), "destroyed: {err}");
    assert_eq!(ask(&on_b).expect("the socket on the backend that stays"), "b");
    for _ in 0..6 {
        assert_eq!(ask(&connect()).expect("a reconnect"), "b", "a new socket reaches the backend left");
    }
    let metrics = w.c.nodes[0].node.agent_http("/metrics");
    assert!(metrics.lines().any(|l| l.starts_with("weir_udp_sockets_destroyed_total ") && !l.ends_with(" 0")), "counted:\n{metrics}");
}

/// `--xdp`: established flows from outside to a NodePort whose backend is
/// on the other node are translated by the XDP fast path in native
/// routing (they leave by the uplink they came in on), both ways; under
/// VXLAN the client's packets leave by the tunnel, so tc carries them. Either way every
/// connection works as without XDP, and an agent restarted without
/// `--xdp` takes the fast path off the device.
fn the_xdp_fast_path_carries_established_flows_that_leave_by_the_uplink(mode: &str) {
    let mut w = world(mode, &["--xdp"]);
    w.c.fabric_like_a_wire();
    let node0 = w.c.nodes[0].ip;
    let xdp = |w: &World| -> (u64, u64) {
        let m = w.c.nodes[0].node.agent_http("/metrics");
        let get = |d: &str| m.lines().find_map(|l| l.strip_prefix(&format!("weir_xdp_packets_total{{direction=\"{d}\"}} "))).and_then(|v| v.trim().parse().ok());
        (get("forward").unwrap_or_else(|| panic!("no XDP counter:\n{m}")), get("reply").unwrap_or(0))
    };
    let attached = |w: &World| w.c.nodes[0].node.ns().ip(&["-d", "link", "show", "eth0"]).contains("xdp");
    assert!(attached(&w), "the XDP program is on node 0's uplink");
    let status = String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["status"]).stdout).to_string();
    assert!(status.lines().any(|l| l.starts_with("eth0 ") && l.contains("xdp_from_net") && l.contains("yes")), "weir status lists it:\n{status}");
    let before = xdp(&w);
    let (names, seen) = from_outside(&w, CLIENT, node0, 30080, 24);
    assert_eq!(names, ["a", "b"], "both backends reached");
    assert_eq!(seen, [IpAddr::V4(node0)], "masqueraded as without XDP");
    // Longer flows to the remote backend: 5,000 lines asked, each answered.
    let b_ip = w.c.nodes[1].pod_ip(20);
    let n1 = w.c.nodes[1].name().to_string();
    let remote_lines = service("remote-lines", "NodePort", "10.96.0.93", 30093, "", None, &[(b_ip, &n1)], "TCP")
        .replace(&format!("targetPort: {BACKEND_PORT}"), &format!("targetPort: {LINES_PORT}"))
        .replace(&format!("port: {BACKEND_PORT}, protocol"), &format!("port: {LINES_PORT}, protocol"));
    w.c.write("remote-lines.yaml", &remote_lines);
    let want = format!("{node0}:30093");
    w.c.wait_for("node 0 programs the NodePort", || String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    for i in 0..3 {
        let asked = b"q\n".repeat(5_000);
        let answers = tcp_request_from(&w.c.outside, CLIENT, node0, 30093, asked, DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("long flow {i} to the remote backend: {e}"));
        assert_eq!(answers.iter().filter(|&&c| c == b'\n').count(), 5_000, "every line answered");
    }
    let after = xdp(&w);
    if mode == "native" {
        assert!(after.0 > before.0 && after.1 > before.1, "native routing: XDP translated both directions ({before:?} -> {after:?})");
    } else {
        // The client's packets leave by the tunnel: tc's. (The remote
        // backend's replies to the node address come back over the fabric
        // natively, and XDP may translate those.)
        assert_eq!(after.0, before.0, "vxlan: packets to remote backends go through the tunnel, tc carries them");
    }
    // Restarted without --xdp: the fast path is removed, traffic goes on.
    w.c.nodes[0].agent().restart_with(&["--routing", mode]);
    w.c.nodes[0].agent().wait_synced();
    // (Unpinning drops the link's last reference; the kernel detaches it
    // from a work queue, so it goes a moment later.)
    w.c.wait_for("no --xdp: the XDP program is gone from the uplink", || !attached(&w));
    let (names, _) = from_outside(&w, CLIENT, node0, 30080, 8);
    assert!(!names.is_empty(), "served by tc alone");
}

/// The hardening guarantees on the uplink: a datagram fragmented on its
/// way from outside is load-balanced whole (the later fragments ride the
/// first one's translation; under VXLAN each 1,500-byte fragment is too
/// big for the pods' 1,450 bytes, and the stack fragments it further
/// after translation), and a packet from outside that claims a local
/// pod's address or the node's own is dropped (`spoofed_source`), never
/// translated.
fn hostile_or_fragmented_traffic_from_outside_is_handled_as_on_pod_links(mode: &str) {
    let w = world(mode, &[]);
    let node0 = w.c.nodes[0].ip;
    // 4,000 bytes of UDP: three fragments on a 1,500-byte link.
    for (dst, port) in [(node0, 30082), (Ipv4Addr::new(198, 51, 100, 82), 80)] {
        for i in 0..4 {
            let r = udp_request_from(&w.c.outside, CLIENT, dst, port, vec![b'f'; 4000], DEFAULT_TIMEOUT)
                .unwrap_or_else(|e| panic!("fragmented UDP {i} to {dst}:{port}: {e}"));
            assert_eq!(landed(&r).1.ip(), IpAddr::V4(node0), "answered, and masqueraded as a whole datagram is");
        }
    }
    // The outside forges pod a's address.
    let a_ip = w.c.nodes[0].pod_ip(10);
    w.c.outside.ip(&["addr", "add", &format!("{a_ip}/32"), "dev", "eth0"]);
    let before = drops(&w.c, 0, "spoofed_source");
    let err = tcp_request_from(&w.c.outside, a_ip, node0, 30080, b"hi".to_vec(), std::time::Duration::from_secs(1)).expect_err("a forged pod source");
    assert!(matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "dropped: {err}");
    assert!(drops(&w.c, 0, "spoofed_source") > before, "counted as spoofed_source");
    w.c.outside.ip(&["addr", "del", &format!("{a_ip}/32"), "dev", "eth0"]);
    // The outside forges the node's own address (which the stack takes
    // from the uplink, `accept_local`, for the masqueraded packets it
    // fragments): dropped before any translation.
    let before = drops(&w.c, 0, "spoofed_source");
    let sent = weir_tests::hostile::spray_udp(&w.c.outside, node0, node0, vec![30082], 5, 1).expect("raw socket");
    assert_eq!(sent, 5);
    w.c.wait_for("the forged node address is dropped as spoofed_source", || drops(&w.c, 0, "spoofed_source") >= before + 5);
    // The real clients are unaffected.
    let (names, _) = from_outside(&w, CLIENT, node0, 30080, 4);
    assert!(!names.is_empty());
}

/// Path-MTU discovery through a frontend: a datagram with Don't Fragment
/// set, too big for the link its translation leaves by (a backend's veth
/// or the tunnel under VXLAN, 1,450 bytes), is answered with ICMP
/// fragmentation needed carrying that MTU and quoting the client's own
/// packet, so the client's socket learns the path MTU (`EMSGSIZE`, then
/// `IP_MTU`); a datagram that fits is answered by a backend. Natively the
/// pods' links are as large as the uplink and nothing is too big.
fn a_datagram_too_big_for_the_backends_link_gets_fragmentation_needed(mode: &str) {
    let w = world(mode, &[]);
    let node0 = w.c.nodes[0].ip;
    let pod_mtu: usize = if mode == "vxlan" { 1450 } else { 1500 };
    for (dst, port) in [(node0, 30082), (Ipv4Addr::new(198, 51, 100, 82), 80), (Ipv4Addr::new(192, 0, 2, 82), 80)] {
        for i in 0..4 {
            let before = drops(&w.c, 0, "frag_needed");
            // A full 1,500-byte packet (20 of IP, 8 of UDP).
            let (answer, mtu) = udp_df_request_from(&w.c.outside, CLIENT, dst, port, vec![b'd'; 1472], DEFAULT_TIMEOUT);
            if pod_mtu < 1500 {
                let err = answer.expect_err("too big for the backend's link");
                assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE), "{dst}:{port} try {i}: the socket matched the ICMP to itself: {err}");
                assert_eq!(mtu, Some(pod_mtu as u32), "{dst}:{port}: the path MTU the ICMP carried");
                let after = drops(&w.c, 0, "frag_needed");
                assert!(after > before, "{dst}:{port} try {i}: counted as frag_needed ({before} -> {after})");
            } else {
                let r = answer.unwrap_or_else(|e| panic!("{dst}:{port} try {i}: a 1,500-byte datagram fits: {e}"));
                assert_eq!(landed(&r).1.ip(), IpAddr::V4(node0), "answered, masqueraded");
            }
            // What fits the backend's link is answered.
            let (answer, _) = udp_df_request_from(&w.c.outside, CLIENT, dst, port, vec![b'd'; pod_mtu - 28], DEFAULT_TIMEOUT);
            let r = answer.unwrap_or_else(|e| panic!("{dst}:{port} try {i}: {} bytes fit: {e}", pod_mtu));
            assert_eq!(landed(&r).1.ip(), IpAddr::V4(node0));
        }
    }
}

/// ICMP errors from outside about north-south flows are translated back
/// to the backend: a client that closed its socket answers the backend's
/// second datagram with ICMP port unreachable, sent to the NodePort the
/// reply came from; weir turns it into an error about the backend's own
/// packet (to the masqueraded address and port it talks to), and the
/// backend's connected socket sees ECONNREFUSED. For a backend on this
/// node and one on the other.
fn icmp_errors_from_outside_reach_the_backend_translated(mode: &str) {
    let w = world(mode, &[]);
    let node0 = w.c.nodes[0].ip;
    let local = w.c.nodes[0].pod("e-local", 40);
    let remote = w.c.nodes[1].pod("e-remote", 41);
    let (n0, n1) = (w.c.nodes[0].name().to_string(), w.c.nodes[1].name().to_string());
    let mut y = service("err-local", "NodePort", "10.96.0.88", 30088, "", None, &[(local.ip, n0.as_str())], "UDP");
    y += &service("err-remote", "NodePort", "10.96.0.89", 30089, "", None, &[(remote.ip, n1.as_str())], "UDP");
    w.c.write("icmp-errors.yaml", &y);
    w.c.wait_for("node 0 programs the NodePorts", || String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&format!("{node0}:30089")));
    for (pod, port) in [(&local, 30088), (&remote, 30089)] {
        // The backend answers twice on a socket connected to its peer,
        // then waits for the error.
        let backend = pod.ns().spawn(|| -> std::io::Result<std::io::Error> {
            let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, BACKEND_PORT))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
            let mut buf = [0u8; 64];
            let (_, peer) = s.recv_from(&mut buf)?;
            s.connect(peer)?;
            s.send(format!("first {peer}").as_bytes())?;
            std::thread::sleep(std::time::Duration::from_millis(500));
            s.send(b"second")?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
            Ok(s.recv(&mut buf).expect_err("no answer but an error"))
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let r = udp_request_from(&w.c.outside, CLIENT, node0, port, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("{port}: {e}"));
        let s = String::from_utf8_lossy(&r).to_string();
        assert!(s.starts_with(&format!("first {node0}:")), "{port}: masqueraded: {s}");
        // The client's socket is closed now: the second datagram draws
        // ICMP port unreachable from the outside.
        let err = backend.join().expect("backend thread").expect("backend socket");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{port}: the backend's socket saw the translated error: {err}");
    }
}

/// `--masquerade-ports` bounds the ports masqueraded flows take: with a
/// single port, a backend holds one masqueraded UDP flow from outside and
/// the next is refused (`tuple_collision`) instead of reusing the tuple;
/// the range overlaps the node's ephemeral ports, so the agent reserves
/// it (`ip_local_reserved_ports`) for the node's own connections.
fn masquerade_ports_bound_the_masqueraded_flows_and_are_reserved(mode: &str) {
    let w = world(mode, &["--masquerade-ports", "40000-40000"]);
    let node0 = w.c.nodes[0].ip;
    let reserved = w.c.nodes[0].node.ns().exec(&["sysctl", "-n", "net.ipv4.ip_local_reserved_ports"]);
    assert!(reserved.split(',').any(|e| e.trim() == "40000"), "reserved for the node's own connections: {reserved:?}");
    let one = w.c.nodes[0].pod("e-one", 42);
    let _server = udp_server(one.ns(), BACKEND_PORT, Reply::Peer("one".into()));
    let y = service("one-port", "NodePort", "10.96.0.90", 30090, "", None, &[(one.ip, w.c.nodes[0].name())], "UDP");
    w.c.write("one-port.yaml", &y);
    w.c.wait_for("node 0 programs the NodePort", || String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&format!("{node0}:30090")));
    let r = udp_request_from(&w.c.outside, CLIENT, node0, 30090, b"1".to_vec(), DEFAULT_TIMEOUT).expect("the first flow");
    assert_eq!(landed(&r).1, SocketAddr::from((node0, 40000)), "masqueraded on the only port");
    let before = drops(&w.c, 0, "tuple_collision");
    let err = udp_request_from(&w.c.outside, CLIENT2, node0, 30090, b"2".to_vec(), std::time::Duration::from_secs(1)).expect_err("no port left");
    assert!(matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "{err}");
    assert!(drops(&w.c, 0, "tuple_collision") > before, "counted as tuple_collision");
}

fn nodeport_addresses_choose_the_node_addresses_that_serve(mode: &str) {
    let secondary = Ipv4Addr::new(192, 168, 0, 111);
    let served = |w: &World| String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&format!("{secondary}:30080"));
    // Default (`primary`): the Node's InternalIP only; a second address
    // on the uplink is the node's own business.
    let w = world(mode, &[]);
    w.c.nodes[0].node.ns().ip(&["addr", "add", &format!("{secondary}/24"), "dev", "eth0"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!served(&w), "primary: the secondary address serves no NodePort");
    let err = tcp_request_from(&w.c.outside, CLIENT, secondary, 30080, b"hi".to_vec(), DEFAULT_TIMEOUT).expect_err("not a NodePort there");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "the node's stack answers: nothing listens ({err})");
    drop(w);
    // A CIDR covering it: the address is followed live as it comes and goes.
    let w = world(mode, &["--nodeport-addresses", "192.168.0.0/24"]);
    w.c.nodes[0].node.ns().ip(&["addr", "add", &format!("{secondary}/24"), "dev", "eth0"]);
    w.c.wait_for("the new address serves the NodePorts", || served(&w));
    let (names, seen) = from_outside(&w, CLIENT, secondary, 30080, 8);
    assert!(!names.is_empty() && seen == [IpAddr::V4(w.c.nodes[0].ip)], "served on the secondary address, masqueraded: {names:?} {seen:?}");
    // `weir diff` computes NodePorts as the agent does when told its flags.
    let source = format!("dir:{}", w.c.objects().display());
    let node = w.c.nodes[0].name().to_string();
    let diff = |extra: &[&str]| {
        let mut args = vec!["diff", "--source", &source, "--node-name", &node, "-o", "json"];
        args.extend_from_slice(extra);
        let out = w.c.nodes[0].node.weir(&args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = diff(&["--nodeport-addresses", "192.168.0.0/24", "--devices", "eth0"]);
    assert_eq!((code, &v["in_sync"]), (Some(0), &serde_json::Value::Bool(true)), "the same flags: in sync: {v:#}");
    let (code, v) = diff(&[]);
    let extra = format!("{secondary}:30080/tcp");
    assert_eq!(code, Some(1), "primary only: the secondary address's NodePorts are extra: {v:#}");
    assert!(v["services"].as_array().expect("services").iter().any(|s| s["frontend"] == extra.as_str() && s["status"] == "extra"), "{extra} extra: {v:#}");
    w.c.nodes[0].node.ns().ip(&["addr", "del", &format!("{secondary}/24"), "dev", "eth0"]);
    w.c.wait_for("the removed address stops serving", || !served(&w));
}

fn short_connections_reuse_the_masquerade_tuples_of_finished_ones(mode: &str) {
    // 12,000 serial connections through an eTP Cluster NodePort: more
    // than the masquerade range holds per backend (4,536 ports each, two
    // backends), all finished within the closing timeout. A finished
    // flow's tuple is free for the next SYN, so none collides and none
    // waits for a SYN retransmission.
    let w = world(mode, &[]);
    let node0 = w.c.nodes[0].ip;
    let slowest = w.c.outside.run(move || {
        let mut slowest = std::time::Duration::ZERO;
        for i in 0..12_000 {
            let t = std::time::Instant::now();
            request_here(CLIENT2, node0, 30080).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            slowest = slowest.max(t.elapsed());
        }
        slowest
    });
    assert_eq!(drops(&w.c, 0, "tuple_collision"), 0, "no new flow found its masquerade tuple taken");
    assert!(slowest < std::time::Duration::from_millis(900), "no connection waited for a SYN retransmission: slowest {slowest:?}");
}

weir_tests::both_routing_modes!(
    external_traffic_policy_cluster_spreads_and_masquerades_to_the_node,
    external_traffic_policy_local_keeps_the_client_address_on_local_endpoints,
    frontends_without_endpoints_refuse_and_other_node_ports_are_untouched,
    load_balancer_source_ranges_restrict_the_lb_ip_only,
    health_checks_answer_for_local_endpoints_as_they_come_and_go,
    an_agent_restart_breaks_no_north_south_connection,
    host_processes_reach_frontends_through_the_socket_programs,
    a_connected_udp_socket_whose_backend_leaves_is_destroyed,
    the_xdp_fast_path_carries_established_flows_that_leave_by_the_uplink,
    hostile_or_fragmented_traffic_from_outside_is_handled_as_on_pod_links,
    a_datagram_too_big_for_the_backends_link_gets_fragmentation_needed,
    icmp_errors_from_outside_reach_the_backend_translated,
    masquerade_ports_bound_the_masqueraded_flows_and_are_reserved,
    nodeport_addresses_choose_the_node_addresses_that_serve,
    short_connections_reuse_the_masquerade_tuples_of_finished_ones,
);
