//! The standalone demo (`cargo xtask demo`): two nodes (node network
//! namespaces on one fabric, each with its own weir-agent reading the same
//! directory of upstream YAML) and an outside client, then, step by step,
//! what makes weir different: a Service spread over both nodes, the same
//! Service as a NodePort from outside (eTP Cluster, then Local), a
//! NetworkPolicy denial seen by `weir monitor` and explained by `weir
//! explain`, `weir diff` catching drift that the agent's resync repairs,
//! and an agent killed under a connection loop. Each step prints the
//! command a user would type and what it showed; the demo exits non-zero
//! when a step does not show what it claims. Everything it creates is
//! removed when it exits; the agents' logs are kept in a directory printed
//! at the end.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use weir_tests::{
    cluster::{namespace_object, pod_object, Cluster},
    north_south::{landed, request_here, service, CLIENT},
    traffic::{tcp_request, tcp_request_from, tcp_server, Reply},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 100);
const NODE_PORT: u16 = 30080;
const TIMEOUT: Duration = Duration::from_secs(2);

/// A step's claim did not hold: say so and stop (the cluster is cleaned
/// up as the stack unwinds; the exit code is non-zero).
fn check(ok: bool, claim: &str) {
    if ok {
        println!("    ok: {claim}");
    } else {
        panic!("the demo did not show what it claims: {claim}");
    }
}

fn step(n: u32, title: &str) {
    println!("\n=== {n}. {title}");
}

/// Runs `weir ARGS` on node `i` and prints it as a user would type it,
/// with its output.
fn weir(c: &Cluster, i: usize, args: &[&str]) -> (Option<i32>, String) {
    println!("$ weir {}    # on {}", args.join(" "), c.nodes[i].name());
    let out = c.nodes[i].node.weir(args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    print!("{}", text.lines().map(|l| format!("  {l}\n")).collect::<String>());
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        print!("{}", err.lines().map(|l| format!("  {l}\n")).collect::<String>());
    }
    (out.status.code(), text)
}

fn services_yaml(c: &Cluster, endpoints: &[(Ipv4Addr, &str)], local: bool) -> String {
    let extra = if local { "  externalTrafficPolicy: Local\n" } else { "" };
    service("web", "NodePort", &VIP.to_string(), NODE_PORT, extra, None, endpoints, "TCP")
        .replace("metadata: {name: web, namespace: default}", "metadata: {name: web, namespace: demo}")
        .replace("metadata: {name: web-1, namespace: default,", "metadata: {name: web-1, namespace: demo,")
        + &namespace_object("demo")
        + &c.nodes.iter().enumerate().map(|(i, n)| pod_object("demo", &format!("web-{i}"), "web", n.name(), n.pod_ip(10))).collect::<String>()
        + &pod_object("demo", "client", "client", c.nodes[0].name(), c.nodes[0].pod_ip(30))
        + &pod_object("demo", "intruder", "intruder", c.nodes[0].name(), c.nodes[0].pod_ip(31))
}

/// `count` connections from `from` to `dst:port`: the backends' names
/// and the peer addresses they saw.
fn spread(ns: &weir_tests::netns::NetNs, src: Option<Ipv4Addr>, dst: Ipv4Addr, port: u16, count: usize) -> (Vec<String>, Vec<IpAddr>, usize) {
    let (mut names, mut peers, mut failed) = (Vec::new(), Vec::new(), 0);
    for _ in 0..count {
        let r = match src {
            Some(s) => tcp_request_from(ns, s, dst, port, b"hi".to_vec(), TIMEOUT),
            None => tcp_request(ns, dst, port, b"hi".to_vec(), TIMEOUT),
        };
        match r {
            Ok(r) => {
                let (name, peer) = landed(&r);
                names.push(name);
                peers.push(peer.ip());
            }
            Err(_) => failed += 1,
        }
    }
    let (mut n, mut p) = (names.clone(), peers.clone());
    n.sort();
    n.dedup();
    p.sort();
    p.dedup();
    let counts: Vec<String> = n.iter().map(|x| format!("{x} ×{}", names.iter().filter(|y| *y == x).count())).collect();
    println!("    {count} connections: {}; {failed} failed; backends saw {p:?}", counts.join(", "));
    (n, p, failed)
}

fn main() {
    let started = Instant::now();
    let logs = std::env::temp_dir().join(format!("weir-demo-{}", std::process::id()));

    step(1, "Two nodes and an outside client, from upstream YAML in one directory");
    let mut c = Cluster::new(2, &["--routing", "vxlan", "--resync-interval", "5"]);
    // The outside holds the client's address; the nodes route its range
    // back through the outside, as a cloud network would.
    c.outside.ip(&["addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"]);
    for n in &c.nodes {
        n.node.ns().ip(&["route", "add", "203.0.113.0/24", "via", &c.outside_ip.to_string()]);
    }
    for (i, n) in c.nodes.iter().enumerate() {
        println!("    node {i}: {} at {}, pods in {}, its own weir-agent (VXLAN between the nodes)", n.name(), n.ip, n.pod_cidr());
    }
    println!("    outside: {CLIENT} (routes to the nodes through the fabric; no namespace has a route off the machine)");
    println!("    objects: {}", c.objects().display());
    let pods: Vec<_> = (0..2).map(|i| c.nodes[i].pod(&format!("web-{i}"), 10)).collect();
    let client = c.nodes[0].pod("client", 30);
    let intruder = c.nodes[0].pod("intruder", 31);
    let _servers: Vec<_> = pods.iter().enumerate().map(|(i, p)| tcp_server(p.ns(), 8080, Reply::Peer(format!("web-{i}")))).collect();
    let n0 = c.nodes[0].name().to_string();
    let n1 = c.nodes[1].name().to_string();
    let endpoints = [(pods[0].ip, n0.as_str()), (pods[1].ip, n1.as_str())];
    let yaml = services_yaml(&c, &endpoints, false);
    c.write("demo.yaml", &yaml);
    println!("    wrote demo.yaml: Namespace demo, Pods web-0 ({}), web-1 ({}), client, intruder; Service web (ClusterIP {VIP}:80, NodePort {NODE_PORT}) and its EndpointSlice", pods[0].ip, pods[1].ip);
    let want = format!("{}:{NODE_PORT}", c.nodes[1].ip);
    c.wait_for("both agents program the Service", || {
        String::from_utf8_lossy(&c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&format!("{}:{NODE_PORT}", c.nodes[0].ip))
            && String::from_utf8_lossy(&c.nodes[1].node.weir(&["service", "list"]).stdout).contains(&want)
    });
    check(true, "both agents programmed the Service from the files");

    step(2, "A Service with backends on both nodes: connections from a pod spread over them");
    println!("$ for i in $(seq 20); do curl {VIP}:80; done    # from pod client on {n0}");
    let (names, peers, failed) = spread(client.ns(), None, VIP, 80, 20);
    check(names == ["web-0", "web-1"] && failed == 0, "the local and the remote backend both answered, no failure");
    check(peers == [IpAddr::V4(client.ip)], "the backends saw the pod's own address (no masquerade to a ClusterIP)");
    weir(&c, 0, &["service", "list"]);
    weir(&c, 1, &["service", "list"]);

    step(3, "The same Service as a NodePort from outside: eTP Cluster, then Local");
    let node0 = c.nodes[0].ip;
    println!("$ for i in $(seq 20); do curl {node0}:{NODE_PORT}; done    # from {CLIENT}, outside the cluster");
    let (names, peers, failed) = spread(&c.outside, Some(CLIENT), node0, NODE_PORT, 20);
    check(names == ["web-0", "web-1"] && failed == 0, "externalTrafficPolicy: Cluster spreads over both nodes");
    check(peers == [IpAddr::V4(node0)], "and masquerades to the node's address, so replies come back through it");
    c.write("demo.yaml", &services_yaml(&c, &endpoints, true));
    println!("    demo.yaml now says externalTrafficPolicy: Local");
    c.wait_for("node 0 serves the NodePort from its local endpoint only", || {
        request_from_outside(&c, node0).is_some_and(|(_, peer)| peer.ip() == IpAddr::V4(CLIENT))
    });
    let (names, peers, failed) = spread(&c.outside, Some(CLIENT), node0, NODE_PORT, 20);
    check(names == ["web-0"] && failed == 0, "externalTrafficPolicy: Local serves only node 0's own endpoint");
    check(peers == [IpAddr::V4(CLIENT)], "and keeps the client's address");

    step(4, "A NetworkPolicy admits only the client pod (and the outside range): the intruder's connection fails, and weir says why");
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-client, namespace: demo}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: client}}}, {ipBlock: {cidr: 203.0.113.0/24}}]\n    ports: [{port: 8080}]\n";
    c.write("policy.yaml", policy);
    print!("{}", policy.lines().map(|l| format!("    | {l}\n")).collect::<String>());
    let web0 = pods[0].ip;
    let reach = |p: &weir_tests::Pod| tcp_request(p.ns(), web0, 8080, b"hi".to_vec(), Duration::from_millis(700)).is_ok();
    c.wait_for("node 0 enforces the policy", || !reach(&intruder));
    check(reach(&client), "the client still reaches web-0");
    println!("$ weir monitor --type drop -o json --duration 2    # on {n0}, while the intruder tries {web0}:8080 again");
    let lines = c.nodes[0].node.monitor_types_while(2.0, &["drop"], || {
        let _ = tcp_request(intruder.ns(), web0, 8080, b"hi".to_vec(), Duration::from_millis(700));
    });
    let denials: Vec<_> = lines.iter().filter(|l| l["verdict"] == "deny").collect();
    for l in &denials {
        println!("  {l}");
    }
    let named = denials.iter().any(|l| l["src"] == intruder.ip.to_string() && l["dst"] == web0.to_string() && l["isolated_by"] == "demo/web-from-client");
    check(named, "the denial is reported as it happens, naming the policy that isolates web-0");
    let (_, text) = weir(&c, 0, &["explain", &format!("{}:40000", intruder.ip), &format!("{web0}:8080/tcp")]);
    check(text.contains("isolated by demo/web-from-client") && text.contains("verdict  drop: denied by the ingress policy"), "weir explain, running the kernel's own decision code, says web-0's ingress drops it, isolated by that policy");
    let (_, text) = weir(&c, 0, &["explain", &format!("{}:40000", client.ip), &format!("{web0}:8080/tcp")]);
    check(text.contains("verdict") && !text.contains("verdict  drop"), "and lets the client through");

    step(5, "weir diff: in sync, drift after a map entry is removed by hand, repaired by the agent's resync");
    let source = format!("dir:{}", c.objects().display());
    let (code, _) = weir(&c, 0, &["diff", "--source", &source, "--node-name", &n0]);
    check(code == Some(0), "in sync (exit 0)");
    let bpffs = c.nodes[0].node.bpffs().to_path_buf();
    let map = bpffs.join("maps").join(weir_common::maps::FRONTENDS);
    // The ClusterIP's frontend key: v4-mapped address, port (network
    // order), TCP, internal scope.
    let mut key: Vec<String> = [0u8; 10].iter().chain(&[0xff, 0xff]).chain(&VIP.octets()).map(|b| b.to_string()).collect();
    key.extend(["0", "80", "6", "0"].map(String::from));
    let mut argv = vec!["bpftool".to_string(), "map".into(), "delete".into(), "pinned".into(), map.display().to_string(), "key".into()];
    argv.extend(key);
    println!("$ {}", argv.join(" "));
    let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().expect("bpftool");
    check(out.status.success(), &format!("bpftool removed the ClusterIP's frontend {}", String::from_utf8_lossy(&out.stderr).trim()));
    let (code, text) = weir(&c, 0, &["diff", "--source", &source, "--node-name", &n0]);
    check(code == Some(1) && text.contains("DRIFT"), "weir diff reports the drift (exit 1)");
    println!("    waiting for the agent's resync (--resync-interval 5)");
    c.wait_for("the resync repairs the frontend", || c.nodes[0].node.weir(&["diff", "--source", &source, "--node-name", &n0]).status.code() == Some(0));
    let (code, _) = weir(&c, 0, &["diff", "--source", &source, "--node-name", &n0]);
    check(code == Some(0), "in sync again, without a restart");

    step(6, "An agent killed and restarted under a connection loop");
    let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looper = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        c.outside.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match request_here(CLIENT, node0, NODE_PORT) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let pid = c.nodes[0].agent().pid().map_or_else(|| "?".into(), |p| p.to_string());
    println!("$ kill -9 {pid}    # node 0's weir-agent, while {CLIENT} connects to {node0}:{NODE_PORT} in a loop");
    c.nodes[0].agent().stop_with(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    println!("$ weir-agent ...    # restarted: it adopts the pinned programs and maps");
    c.nodes[0].agent().restart();
    c.nodes[0].agent().wait_synced();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = looper.join();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("    {ok} connections succeeded, {failed} failed");
    check(ok >= 20 && failed == 0, "no connection failed across the kill and the restart");

    step(7, "Clean-up");
    std::fs::create_dir_all(&logs).expect("log directory");
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let path: PathBuf = logs.join(format!("node{i}.agent.log"));
        std::fs::write(&path, n.agent().log_text()).expect("agent log");
    }
    drop((pods, client, intruder));
    drop(c);
    println!("    agents stopped; namespaces, links, pins and files removed");
    println!("\ndone in {:.0?}; the agents' logs: {}", started.elapsed(), logs.display());
}

/// One connection from the outside client to node 0's NodePort: the
/// backend and the peer it saw.
fn request_from_outside(c: &Cluster, node0: Ipv4Addr) -> Option<(String, SocketAddr)> {
    tcp_request_from(&c.outside, CLIENT, node0, NODE_PORT, b"hi".to_vec(), TIMEOUT).ok().map(|r| landed(&r))
}
