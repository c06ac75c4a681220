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
weir_tests::both_routing_modes!(
    pods_reach_pods_on_other_nodes_with_their_own_address,
    nodes_added_and_removed_at_runtime_gain_and_lose_their_routes,
    a_clusterip_with_remote_backends_answers_from_its_vip_and_keeps_the_client_address,
    network_policy_selects_pods_on_other_nodes_both_ways_directly_and_through_a_service,
    a_service_with_host_network_endpoints_works_from_every_pod,
    killing_one_nodes_agent_breaks_no_flow,
    big_transfers_and_datagrams_cross_nodes,
    the_fabric_carries_pod_traffic_only_as_the_mode_says,
);
