//! Pods, services and policy across nodes, in both routing modes: three
//! node namespaces on one fabric, each with its own agent reading one
//! object directory. Native: the agents route every other node's pod CIDR
//! via its InternalIP; VXLAN: through the agent's tunnel device, the
//! datapath choosing the node. Each case runs in both (`both_routing_modes!`).

use std::time::Duration;

use weir_tests::{
    cluster::{Cluster, ClusterNode},
    traffic::{tcp_request, udp_request, udp_server, tcp_server, Reply, DEFAULT_TIMEOUT},
};

fn pods_reach_pods_on_other_nodes_with_their_own_address(mode: &str) {
    let c = Cluster::new(3, &["--routing", mode]);
    let a = c.nodes[0].pod("a", 10);
    let b = c.nodes[2].pod("b", 20);
    let _servers = [tcp_server(b.ns(), 8080, Reply::Peer("b".into())), udp_server(b.ns(), 5353, Reply::Peer("b".into()))];
    for (i, n) in c.nodes.iter().enumerate() {
        let routes = n.weir_routes();
        for (j, other) in c.nodes.iter().enumerate() {
            assert_eq!(routes.contains(&route_to(mode, other)), i != j, "node {i} route to node {j}'s pods: {routes}");
        }
    }
    let tcp = String::from_utf8(tcp_request(a.ns(), b.ip, 8080, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("TCP across nodes")).expect("utf-8");
    assert!(tcp.starts_with(&format!("b {}:", a.ip)), "the server saw the client pod's own address: {tcp}");
    let udp = String::from_utf8(udp_request(a.ns(), b.ip, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("UDP across nodes")).expect("utf-8");
    assert!(udp.starts_with(&format!("b {}:", a.ip)), "{udp}");
    let back = udp_server(a.ns(), 5353, Reply::Peer("a".into()));
    let reply = String::from_utf8(udp_request(b.ns(), a.ip, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("the other way")).expect("utf-8");
    assert!(reply.starts_with(&format!("a {}:", b.ip)), "{reply}");
    drop(back);
}

fn nodes_added_and_removed_at_runtime_gain_and_lose_their_routes(mode: &str) {
    let mut c = Cluster::new(2, &["--routing", mode]);
    let a = c.nodes[0].pod("a", 10);
    // A third node joins: its Node object appears, its agent starts.
    let i = c.add_node_ns();
    c.write_node_object(i);
    c.start_agent(i);
    let d = c.nodes[i].pod("d", 30);
    let _srv = udp_server(d.ns(), 5353, Reply::Name("d".into()));
    let want = route_to(mode, &c.nodes[i]);
    c.wait_for("node 0 routes to the new node's pods", || c.nodes[0].weir_routes().contains(&want));
    assert_eq!(udp_request(a.ns(), d.ip, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("the new node's pod is reachable"), b"d");
    // The node leaves: its routes go, its pods are unreachable from elsewhere.
    c.remove_node_object(i);
    c.wait_for("node 0 drops the route", || !c.nodes[0].weir_routes().contains(&want));
    assert!(udp_request(a.ns(), d.ip, 5353, b"hi".to_vec(), Duration::from_millis(500)).is_err());
    // Its agent restarts and adopts without touching other routes.
    c.nodes[0].agent().stop_with(libc::SIGTERM);
    c.nodes[0].agent().restart();
    c.nodes[0].agent().wait_synced();
    let other = route_to(mode, &c.nodes[1]);
    assert!(c.nodes[0].weir_routes().contains(&other), "{}", c.nodes[0].weir_routes());
}

fn a_clusterip_with_remote_backends_answers_from_its_vip_and_keeps_the_client_address(mode: &str) {
    use std::net::Ipv4Addr;
    use weir_tests::services::{ready, yaml_service};
    let c = Cluster::new(3, &["--routing", mode]);
    let vip = Ipv4Addr::new(10, 96, 0, 60);
    let a = c.nodes[0].pod("a", 10);
    let local = c.nodes[0].pod("local", 11);
    let (b, d) = (c.nodes[1].pod("b", 20), c.nodes[2].pod("d", 30));
    let mut servers = Vec::new();
    for (p, name) in [(&b, "b"), (&d, "d"), (&local, "local")] {
        servers.push(tcp_server(p.ns(), 8080, Reply::Peer(name.into())));
        servers.push(udp_server(p.ns(), 8080, Reply::Peer(name.into())));
    }
    // All backends remote first.
    c.write("svc.yaml", &(yaml_service("web", vip, 80, "TCP", 8080, &ready(&[b.ip, d.ip])) + "---\n" + &yaml_service("dns", vip, 53, "UDP", 8080, &ready(&[b.ip, d.ip]))));
    c.wait_for("every agent programs the service", || {
        c.nodes.iter().all(|n| String::from_utf8_lossy(&n.node.weir(&["service", "list"]).stdout).contains(&vip.to_string()))
    });
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let r = String::from_utf8(tcp_request(a.ns(), vip, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("TCP {i} via the VIP: {e}"))).expect("utf-8");
        let (name, peer) = r.trim().split_once(' ').expect("name peer");
        assert!(peer.starts_with(&format!("{}:", a.ip)), "the backend on another node saw the client's own address: {r}");
        seen.insert(name.to_string());
    }
    assert_eq!(seen.len(), 2, "both remote backends served: {seen:?}");
    // UDP: the reply comes from the VIP (a connected socket would drop anything else).
    for _ in 0..10 {
        let r = udp_request(a.ns(), vip, 53, b"q".to_vec(), DEFAULT_TIMEOUT).expect("UDP via the VIP, answered from the VIP");
        assert!(String::from_utf8_lossy(&r).contains(&a.ip.to_string()));
    }
    // Mixed local and remote backends.
    c.write("svc.yaml", &yaml_service("web", vip, 80, "TCP", 8080, &ready(&[b.ip, local.ip, d.ip])));
    c.wait_for("three backends", || {
        String::from_utf8_lossy(&c.nodes[0].node.weir(&["backend", "list"]).stdout).contains(&local.ip.to_string())
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = String::from_utf8(tcp_request(a.ns(), vip, 80, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("TCP via the VIP")).expect("utf-8");
        seen.insert(r.split_whitespace().next().unwrap_or_default().to_string());
    }
    assert_eq!(seen.len(), 3, "local and remote backends all served: {seen:?}");
}

fn network_policy_selects_pods_on_other_nodes_both_ways_directly_and_through_a_service(mode: &str) {
    use std::net::Ipv4Addr;
    use weir_tests::{
        cluster::{namespace_object, pod_object},
        services::{ready, yaml_service},
    };
    let c = Cluster::new(3, &["--routing", mode]);
    let vip = Ipv4Addr::new(10, 96, 0, 61);
    let (client, intruder, server) = (c.nodes[0].pod("client", 10), c.nodes[1].pod("intruder", 20), c.nodes[2].pod("server", 30));
    let _srv = [tcp_server(server.ns(), 8080, Reply::Name("server".into())), tcp_server(client.ns(), 8080, Reply::Name("client".into()))];
    let mut objects = namespace_object("app");
    objects += &pod_object("app", "client", "client", c.nodes[0].name(), client.ip);
    objects += &pod_object("app", "intruder", "intruder", c.nodes[1].name(), intruder.ip);
    objects += &pod_object("app", "server", "server", c.nodes[2].name(), server.ip);
    objects += &yaml_service("server", vip, 80, "TCP", 8080, &ready(&[server.ip]));
    objects += "---\n";
    // The server admits only the client; the intruder may send nowhere but DNS.
    objects += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-from-client, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n---\n";
    objects += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: intruder-egress, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: intruder}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 53, protocol: UDP}]\n---\n";
    c.write("app.yaml", &objects);
    let reach = |from: &weir_tests::Pod, to: Ipv4Addr, port: u16| tcp_request(from.ns(), to, port, b"hi".to_vec(), Duration::from_millis(700)).is_ok();
    c.wait_for("the server's node enforces the policy", || !reach(&intruder, server.ip, 8080));
    assert!(reach(&client, server.ip, 8080), "a pod on node 0 admitted by the server's ingress on node 2");
    assert!(reach(&client, vip, 80), "and through the ClusterIP (DNAT on node 0, judged on node 2)");
    assert!(!reach(&intruder, server.ip, 8080), "the server's ingress denies a pod on node 1");
    assert!(!reach(&intruder, vip, 80), "also through the ClusterIP");
    assert!(!reach(&intruder, client.ip, 8080), "the intruder's egress (node 1) denies a pod on node 0");
    assert!(reach(&server, client.ip, 8080), "the server's egress is open");
}

fn a_service_with_host_network_endpoints_works_from_every_pod(mode: &str) {
    use std::net::Ipv4Addr;
    use weir_tests::services::{ready, yaml_service};
    let c = Cluster::new(3, &["--routing", mode]);
    let vip = Ipv4Addr::new(10, 96, 0, 1);
    // The `kubernetes` Service: endpoints are node addresses, the servers
    // run in the nodes' own network namespaces.
    let _apis = [tcp_server(c.nodes[0].node.ns(), 6443, Reply::Peer("api0".into())), tcp_server(c.nodes[2].node.ns(), 6443, Reply::Peer("api2".into()))];
    let (a, b) = (c.nodes[0].pod("a", 10), c.nodes[1].pod("b", 20));
    for (name, ip) in [("local", c.nodes[0].ip), ("remote", c.nodes[2].ip)] {
        c.write("kubernetes.yaml", &yaml_service("kubernetes", vip, 443, "TCP", 6443, &ready(&[ip])));
        let want = format!("{ip}:6443");
        c.wait_for("every agent programs the endpoint", || {
            c.nodes.iter().all(|n| String::from_utf8_lossy(&n.node.weir(&["backend", "list"]).stdout).contains(&want))
        });
        for pod in [&a, &b] {
            let r = String::from_utf8(tcp_request(pod.ns(), vip, 443, b"hi".to_vec(), DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("{name} host endpoint {ip} from {}: {e}", pod.ip))).expect("utf-8");
            assert!(r.contains(&format!(" {}:", pod.ip)), "{name} host endpoint saw the pod's address: {r}");
        }
    }
}

fn killing_one_nodes_agent_breaks_no_flow(mode: &str) {
    use std::net::Ipv4Addr;
    use weir_tests::{
        services::{ready, yaml_service},
        traffic::{ask_name, tcp_connect},
    };
    let mut c = Cluster::new(3, &["--routing", mode]);
    let vip = Ipv4Addr::new(10, 96, 0, 62);
    let a = c.nodes[0].pod("a", 10);
    let (b, d) = (c.nodes[1].pod("b", 20), c.nodes[2].pod("d", 30));
    let _srv = [tcp_server(b.ns(), 9000, Reply::NamePerLine("b".into())), tcp_server(d.ns(), 9000, Reply::NamePerLine("d".into()))];
    c.write("svc.yaml", &yaml_service("lines", vip, 90, "TCP", 9000, &ready(&[b.ip])));
    c.wait_for("node 0 programs the service", || String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&vip.to_string()));
    let mut via_vip = tcp_connect(a.ns(), vip, 90, DEFAULT_TIMEOUT).expect("through the VIP to node 1");
    let mut direct = tcp_connect(a.ns(), d.ip, 9000, DEFAULT_TIMEOUT).expect("directly to node 2");
    assert_eq!(ask_name(&mut via_vip).expect("ask"), "b");
    assert_eq!(ask_name(&mut direct).expect("ask"), "d");
    for victim in [2usize, 1, 0] {
        c.nodes[victim].agent().stop_with(libc::SIGKILL);
        for _ in 0..5 {
            assert_eq!(ask_name(&mut via_vip).expect("the service flow survives"), "b", "after killing node {victim}'s agent");
            assert_eq!(ask_name(&mut direct).expect("the direct flow survives"), "d", "after killing node {victim}'s agent");
            std::thread::sleep(Duration::from_millis(100));
        }
        let fresh = tcp_connect(a.ns(), vip, 90, DEFAULT_TIMEOUT).map(|mut s| ask_name(&mut s));
        assert!(matches!(fresh, Ok(Ok(ref n)) if n == "b"), "new connections still work with node {victim}'s agent down: {fresh:?}");
        c.nodes[victim].agent().restart();
    }
}

fn big_transfers_and_datagrams_cross_nodes(mode: &str) {
    let c = Cluster::new(2, &["--routing", mode]);
    let (a, b) = (c.nodes[0].pod("a", 10), c.nodes[1].pod("b", 20));
    let _srv = [tcp_server(b.ns(), 8080, Reply::Echo), udp_server(b.ns(), 5353, Reply::Echo)];
    let mib: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let back = tcp_request(a.ns(), b.ip, 8080, mib.clone(), Duration::from_secs(20)).expect("1 MiB over TCP across nodes");
    assert_eq!(back, mib, "echoed whole");
    let dgram: Vec<u8> = (0..4000u32).map(|i| (i % 241) as u8).collect();
    assert_eq!(udp_request(a.ns(), b.ip, 5353, dgram.clone(), DEFAULT_TIMEOUT).expect("4,000-byte UDP across nodes"), dgram);
}

fn the_fabric_carries_pod_traffic_only_as_the_mode_says(mode: &str) {
    let c = Cluster::new(2, &["--routing", mode]);
    let (a, b) = (c.nodes[0].pod("a", 10), c.nodes[1].pod("b", 20));
    let _srv = udp_server(b.ns(), 5353, Reply::Echo);
    let frames = c.capture(|| {
        for _ in 0..5 {
            udp_request(a.ns(), b.ip, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("across nodes");
        }
    });
    let pod = |ip: std::net::Ipv4Addr| ip.octets()[..2] == [10, 244];
    let plain = frames.iter().filter(|(s, d, _, _)| pod(*s) || pod(*d)).count();
    let tunnel = frames.iter().filter(|(s, d, p, port)| (*s == c.nodes[0].ip || *d == c.nodes[0].ip) && *p == 17 && *port == 8472).count();
    if mode == "vxlan" {
        assert_eq!(plain, 0, "no pod address on the fabric: {frames:?}");
        assert!(tunnel >= 10, "the requests and answers went encapsulated: {frames:?}");
    } else {
        assert!(plain >= 10, "native routing carries pod addresses: {frames:?}");
        assert_eq!(tunnel, 0, "{frames:?}");
    }
}

/// How a node's route to `to`'s pods reads in `ip route`.
fn route_to(mode: &str, to: &ClusterNode) -> String {
    if mode == "vxlan" {
        format!("{} dev vx-weir", to.pod_cidr())
    } else {
        format!("{} via {}", to.pod_cidr(), to.ip)
    }
}

/// Each case, once per routing mode.
fn only_this_nodes_own_traffic_gets_the_from_the_node_allowance(mode: &str) {
    use weir_tests::cluster::{namespace_object, pod_object};
    let c = Cluster::new(2, &["--routing", mode]);
    let server = c.nodes[1].pod("server", 20);
    let _srv = tcp_server(server.ns(), 8080, Reply::Name("server".into()));
    let reach = |ns: &weir_tests::netns::NetNs| tcp_request(ns, server.ip, 8080, b"hi".to_vec(), Duration::from_millis(700)).is_ok();
    let (here, there) = (c.nodes[1].node.ns(), c.nodes[0].node.ns());
    assert!(reach(there), "before any policy, node 0's own stack reaches the pod on node 1");
    let mut objects = namespace_object("app");
    objects += &pod_object("app", "server", "server", c.nodes[1].name(), server.ip);
    objects += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-from-client, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}]\n";
    c.write("app.yaml", &objects);
    c.wait_for("node 1 enforces the server's ingress", || !reach(there));
    assert!(reach(here), "the server's own node (kubelet probes) keeps the from-the-node allowance");
    assert!(!reach(there), "another node's own traffic is judged by its address, not allowed as the node");
}

/// `--devices` unset and no device holding the Node's InternalIP (it is
/// NATed, say): the default route's device is the uplink.
#[test]
fn without_a_device_holding_the_internal_ip_the_default_routes_device_is_the_uplink() {
    let mut c = Cluster::bare(1, &["--routing", "native"]);
    let ns = c.nodes[0].node.ns();
    ns.ip(&["route", "add", "default", "via", &c.outside_ip.to_string()]);
    let object = c.nodes[0].object().replace(&format!("address: {}", c.nodes[0].ip), "address: 203.0.113.7");
    c.write("node-0.yaml", &object);
    c.start_agent(0);
    let on_eth0 = |c: &Cluster| {
        let out = c.nodes[0].node.weir(&["status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["attachments"].as_array().is_some_and(|a| a.iter().any(|x| x["ifname"] == "eth0" && x["hook"] == "from_net"))
    };
    c.wait_for("the node programs on eth0", || on_eth0(&c));
}

fn drops(n: &ClusterNode, reason: &str) -> u64 {
    let out = n.node.weir(&["stats", "-o", "json"]);
    assert!(out.status.success(), "weir stats: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    v["drops"][reason].as_u64().unwrap_or(0)
}

/// A Service with internalTrafficPolicy: Local and endpoints on the named nodes.
fn local_service(name: &str, vip: std::net::Ipv4Addr, endpoints: &[(std::net::Ipv4Addr, &str)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {vip}\n  internalTrafficPolicy: Local\n  ports: [{{name: p, port: 80, protocol: TCP}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: p, port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for (a, node) in endpoints {
        y.push_str(&format!("- addresses: [{a}]\n  nodeName: {node}\n  conditions: {{ready: true}}\n"));
    }
    y
}

fn internal_traffic_policy_local_keeps_traffic_on_the_clients_node_and_drops_without_local_endpoints(mode: &str) {
    use weir_tests::traffic::{tcp_connect, tcp_name};
    let c = Cluster::new(2, &["--routing", mode]);
    let vip = std::net::Ipv4Addr::new(10, 96, 0, 63);
    let (a, here) = (c.nodes[0].pod("a", 10), c.nodes[0].pod("here", 11));
    let (b, there) = (c.nodes[1].pod("b", 20), c.nodes[1].pod("there", 21));
    let _srv = [tcp_server(here.ns(), 8080, Reply::Name("here".into())), tcp_server(there.ns(), 8080, Reply::Name("there".into()))];
    c.write("local.yaml", &local_service("local", vip, &[(here.ip, c.nodes[0].name()), (there.ip, c.nodes[1].name())]));
    c.wait_for("both agents program the service", || {
        c.nodes.iter().all(|n| String::from_utf8_lossy(&n.node.weir(&["service", "list"]).stdout).contains(&vip.to_string()))
    });
    for _ in 0..10 {
        assert_eq!(tcp_name(a.ns(), vip, 80, DEFAULT_TIMEOUT).expect("node 0's client"), "here", "only node 0's endpoint serves node 0");
        assert_eq!(tcp_name(b.ns(), vip, 80, DEFAULT_TIMEOUT).expect("node 1's client"), "there", "only node 1's endpoint serves node 1");
    }
    // Only a remote endpoint: node 0 drops (kube-proxy drops, it does not
    // reject), node 1 serves.
    c.write("local.yaml", &local_service("local", vip, &[(there.ip, c.nodes[1].name())]));
    c.wait_for("node 0 has no local endpoint", || !String::from_utf8_lossy(&c.nodes[0].node.weir(&["backend", "list"]).stdout).contains(&here.ip.to_string()));
    let before = drops(&c.nodes[0], "no_local_endpoints");
    let err = tcp_connect(a.ns(), vip, 80, Duration::from_millis(700)).expect_err("no local endpoint: no connection");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "dropped, not refused: {err}; node 0 services: {}; stats: {}",
        String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout),
        String::from_utf8_lossy(&c.nodes[0].node.weir(&["stats", "-o", "json"]).stdout)
    );
    assert!(drops(&c.nodes[0], "no_local_endpoints") > before, "counted under its own reason");
    assert_eq!(drops(&c.nodes[0], "no_endpoints"), 0, "not a reject");
    assert_eq!(tcp_name(b.ns(), vip, 80, DEFAULT_TIMEOUT).expect("node 1 still serves its own pods"), "there");
}

fn a_pod_cannot_inject_encapsulated_traffic_as_another_pod(mode: &str) {
    use weir_common::tunnel::{TUNNEL_MAC, TUNNEL_VNI};
    use weir_tests::{
        cluster::{namespace_object, pod_object},
        hostile::vxlan_payload,
    };
    let c = Cluster::new(3, &["--routing", mode]);
    let (attacker, friend, victim) = (c.nodes[0].pod("attacker", 10), c.nodes[2].pod("friend", 30), c.nodes[1].pod("victim", 20));
    let srv = udp_server(victim.ns(), 5353, Reply::Name("victim".into()));
    let mut objects = namespace_object("app");
    for (p, name, node) in [(&attacker, "attacker", 0), (&friend, "friend", 2), (&victim, "victim", 1)] {
        objects += &pod_object("app", name, name, c.nodes[node].name(), p.ip);
    }
    objects += "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: victim-from-friend, namespace: app}\nspec:\n  podSelector: {matchLabels: {app: victim}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: friend}}}]\n";
    c.write("app.yaml", &objects);
    c.wait_for("the policy refuses the attacker", || udp_request(attacker.ns(), victim.ip, 5353, b"hi".to_vec(), Duration::from_millis(300)).is_err());
    udp_request(friend.ns(), victim.ip, 5353, b"hi".to_vec(), DEFAULT_TIMEOUT).expect("the friend reaches the victim");
    let served = srv.served();
    let spoofed_before = drops(&c.nodes[1], "tunnel_spoofed");
    // The attacker wraps a packet "from the friend" in VXLAN, straight to
    // the victim's node on the tunnel port, from the pod's own socket.
    let frame = vxlan_payload(TUNNEL_VNI, TUNNEL_MAC, friend.ip, victim.ip, 40_000, 5353, b"injected");
    let node1 = c.nodes[1].ip;
    attacker.ns().run(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..5 {
            s.send_to(&frame, (node1, 8472)).expect("send");
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(srv.served(), served, "no injected packet reached the victim");
    if mode == "vxlan" {
        assert!(drops(&c.nodes[1], "tunnel_spoofed") >= spoofed_before + 5, "node 1 refused every injected frame as tunnel_spoofed");
    }
}

fn the_pod_mtu_written_for_weir_cni_leaves_room_for_the_tunnel(mode: &str) {
    let c = Cluster::new(1, &["--routing", mode]);
    let ns = c.nodes[0].node.ns();
    ns.ip(&["link", "set", "eth0", "mtu", "9000"]);
    ns.ip(&["route", "add", "default", "via", &c.outside_ip.to_string()]);
    let install = |extra: &[&str]| -> u64 {
        let dir = weir_tests::node::tempdir::TempDir::new("weir-cni-mtu");
        let d = dir.path().display().to_string();
        let net = format!("--net={}", ns.path().display());
        let agent = weir_tests::bins::path("weir-agent").display().to_string();
        let plugin = weir_tests::bins::path("weir-cni").display().to_string();
        let mut argv = vec![net.as_str(), agent.as_str(), "--install-cni", "--pod-cidr", "10.244.1.0/24", "--routing", mode];
        argv.extend_from_slice(&["--cni-bin-dir", &d, "--cni-conf-dir", &d, "--cni-plugin", &plugin]);
        argv.extend_from_slice(extra);
        let out = std::process::Command::new("nsenter").args(&argv).output().expect("weir-agent --install-cni");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let conf: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("05-weir.conflist")).expect("conflist")).expect("json");
        conf["plugins"][0]["mtu"].as_u64().unwrap_or_else(|| panic!("no mtu in {conf}"))
    };
    let want = if mode == "vxlan" { 9000 - 50 } else { 9000 };
    assert_eq!(install(&["--devices", "eth0"]), want, "from the named uplink");
    assert_eq!(install(&[]), want, "from the default route's device");
    assert_eq!(install(&["--cni-mtu", "1400"]), 1400, "--cni-mtu overrides");
}

weir_tests::both_routing_modes!(
    pods_reach_pods_on_other_nodes_with_their_own_address,
    nodes_added_and_removed_at_runtime_gain_and_lose_their_routes,
    a_clusterip_with_remote_backends_answers_from_its_vip_and_keeps_the_client_address,
    network_policy_selects_pods_on_other_nodes_both_ways_directly_and_through_a_service,
    a_service_with_host_network_endpoints_works_from_every_pod,
    killing_one_nodes_agent_breaks_no_flow,
    big_transfers_and_datagrams_cross_nodes,
    the_fabric_carries_pod_traffic_only_as_the_mode_says,
    internal_traffic_policy_local_keeps_traffic_on_the_clients_node_and_drops_without_local_endpoints,
    a_pod_cannot_inject_encapsulated_traffic_as_another_pod,
    the_pod_mtu_written_for_weir_cni_leaves_room_for_the_tunnel,
    only_this_nodes_own_traffic_gets_the_from_the_node_allowance,
);
