//! Standalone mode end to end: Kubernetes YAML in a directory → the agent →
//! the maps → real traffic. Edits, deletions, bad input, restarts and drift.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use weir_tests::{
    services::{ready, yaml_service},
    traffic::{tcp_name, tcp_server, Reply, Server, DEFAULT_TIMEOUT},
    Agent, Node, Pod,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

struct Topo {
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<Server>,
    node: Node,
}

fn topo(n: u8) -> Topo {
    let node = Node::new();
    let client = node.pod("client", Ipv4Addr::new(10, 244, 0, 2));
    let backends: Vec<Pod> = (1..=n).map(|i| node.pod(&format!("b{i}"), Ipv4Addr::new(10, 244, 0, 10 + i))).collect();
    let servers = backends.iter().map(|b| tcp_server(b.ns(), 8080, Reply::Name(b.name.clone()))).collect();
    Topo { client, backends, _servers: servers, node }
}

impl Topo {
    fn start(&self, args: &[&str]) -> Agent {
        let mut agent = self.node.start_agent_with(args);
        agent.wait_synced();
        for p in std::iter::once(&self.client).chain(&self.backends) {
            agent.wait_attached(&p.host_if, p.host_ifindex);
        }
        agent
    }

    fn names(&self, n: usize) -> BTreeSet<String> {
        (0..n).filter_map(|_| tcp_name(self.client.ns(), VIP, 80, DEFAULT_TIMEOUT).ok()).collect()
    }

    /// Polls until every connection lands on exactly `want` (the agent
    /// applies file edits asynchronously).
    fn eventually_names(&self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let start = Instant::now();
        let mut got = BTreeSet::new();
        while start.elapsed() < Duration::from_secs(10) {
            got = self.names(20);
            if got == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("connections went to {got:?}, wanted {want:?}");
    }
}

#[test]
fn a_service_from_yaml_is_load_balanced_and_follows_file_edits() {
    let t = topo(2);
    let ips: Vec<Ipv4Addr> = t.backends.iter().map(|b| b.ip).collect();
    t.node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&ips)).as_bytes());
    let _agent = t.start(&[]);
    t.eventually_names(&["b1", "b2"]);

    // Edit: b1 goes away.
    t.node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&ips[1..])).as_bytes());
    t.eventually_names(&["b2"]);

    // Edit: b1 back, b2 terminating → only b1 takes new connections.
    let eps = vec![(ips[0], true, true, false), (ips[1], false, true, true)];
    t.node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &eps).as_bytes());
    t.eventually_names(&["b1"]);

    // Deleting the file deletes the service: the VIP stops answering.
    t.node.remove_source("web.yaml");
    let start = Instant::now();
    while tcp_name(t.client.ns(), VIP, 80, Duration::from_millis(300)).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(10), "service still answers after its file was deleted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_is_reported_and_everything_else_keeps_working() {
    let t = topo(1);
    let ips = [t.backends[0].ip];
    t.node.write_source("good.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&ips)).as_bytes());
    t.node.write_source("syntax.yaml", b"apiVersion: v1\nkind: Service\nmetadata: {name: x\n  spec: [\n");
    t.node.write_source("binary.yaml", &[0xff, 0xfe, 0x00, 0x41]);
    t.node.write_source("port.yaml", yaml_service("bad-port", Ipv4Addr::new(10, 96, 0, 11), 80, "TCP", 70000, &ready(&ips)).as_bytes());
    t.node.write_source("proto.yaml", yaml_service("bad-proto", Ipv4Addr::new(10, 96, 0, 12), 80, "ICMP", 8080, &ready(&ips)).as_bytes());
    t.node.write_source("ip.json", br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"bad-ip"},"spec":{"clusterIP":"10.96.0.300","ports":[{"port":80}]}}"#);
    t.node.write_source("missing.yaml", b"apiVersion: v1\nkind: Service\nmetadata: {namespace: default}\nspec: {clusterIP: 10.96.0.13, ports: [{port: 80}]}\n");
    let mut agent = t.start(&[]);
    t.eventually_names(&["b1"]);
    let log = agent.log_text();
    // One warning per bad file or bad object, naming file, object and field.
    let expect: [(&str, &[&str]); 6] = [
        ("syntax.yaml", &["YAML syntax error"]),
        ("binary.yaml", &["not UTF-8"]),
        ("port.yaml", &["EndpointSlice default/bad-port-1: field ports[0].port: 70000 is outside 1-65535"]),
        ("proto.yaml", &[
            "Service default/bad-proto: field spec.ports[0].protocol: unknown protocol",
            "EndpointSlice default/bad-proto-1: field ports[0].protocol: unknown protocol",
        ]),
        ("ip.json", &["Service default/bad-ip: field spec.clusterIP"]),
        ("missing.yaml", &["field metadata.name: missing"]),
    ];
    for (file, whats) in expect {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(file) && l.contains("rejected input")).collect();
        assert_eq!(lines.len(), whats.len(), "one warning per bad object in {file}:\n{log}");
        for what in whats {
            assert!(lines.iter().any(|l| l.contains(what)), "a warning naming {file} and {what:?}:\n{log}");
        }
    }
    // A bad edit of the good file keeps the service as it was.
    t.node.write_source("good.yaml", yaml_service("web", VIP, 80, "TCP", 0, &ready(&ips)).as_bytes());
    agent.wait_for_log("good.yaml", 1);
    t.eventually_names(&["b1"]);
    assert!(agent.is_running(), "the agent never crashes on input");
}

#[test]
fn restarts_lose_no_traffic() {
    let t = topo(2);
    let ips: Vec<Ipv4Addr> = t.backends.iter().map(|b| b.ip).collect();
    t.node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&ips)).as_bytes());
    let mut agent = t.start(&[]);
    t.eventually_names(&["b1", "b2"]);

    // One long-lived connection across everything, and a loop of short ones.
    let mut long = weir_tests::traffic::tcp_connect(t.client.ns(), VIP, 80, DEFAULT_TIMEOUT).expect("long-lived connection");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    // Each failure with the time it began (UTC, as in the agent's log) and
    // its error, so a failure can be placed among the restarts.
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let looper = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        t.client.ns().spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
                let began = weir_tests::utc_clock();
                match weir_tests::traffic::short_connection_here(std::net::SocketAddr::from((VIP, 80)), Duration::from_secs(2)) {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(format!("{began}: {e:?}")),
                }
                // Paced (at most ~500/s): on the tc path a connection holds
                // two conntrack entries until 10 s after it closes, and a
                // pod's default share (32,768) admits ~1,600/s; this test
                // is about restarts, not that limit (conntrack_pressure).
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let pause = || std::thread::sleep(Duration::from_millis(700));
    // The long connection sends a byte in every phase: each must reach the
    // backend it started with (the server counts them), and the servers
    // close a connection idle for 10 s, which slow restarts can exceed.
    use std::io::{Read as _, Write as _};
    let mut sent = 0usize;
    let mut nudge = |long: &mut std::net::TcpStream| {
        long.write_all(b".").expect("write on the established connection");
        sent += 1;
    };
    pause();
    nudge(&mut long);
    agent.stop_with(libc::SIGTERM);
    pause();
    nudge(&mut long);
    agent.restart();
    agent.wait_synced();
    nudge(&mut long);
    pause();
    agent.stop_with(libc::SIGKILL);
    pause();
    nudge(&mut long);
    agent.restart();
    agent.wait_synced();
    nudge(&mut long);
    pause();
    stop.store(true, Ordering::Relaxed);
    looper.join().expect("client loop");
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(ok > 50, "the client kept connecting: {ok} connections");
    assert!(failed.is_empty(), "zero failed connections across SIGTERM, SIGKILL and restarts ({ok} succeeded), failed:\n{}", failed.join("\n"));
    // The long-lived connection survived too, every byte at one backend.
    long.write_all(b"still here").expect("write on the established connection");
    long.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut reply = String::new();
    long.read_to_string(&mut reply).expect("the established connection still answers");
    let total = sent + "still here".len();
    assert!(reply.starts_with('b') && reply.trim_end().ends_with(&format!(" {total}")), "one backend got all {total} bytes: {reply}");
    assert!(agent.log_text().contains("adopted pod programs"));
}

#[test]
fn full_resync_repairs_drift() {
    use weir_common::lb::{FrontendKey, Service};
    let t = topo(1);
    t.node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&[t.backends[0].ip])).as_bytes());
    let mut agent = t.start(&["--resync-interval", "1"]);
    t.eventually_names(&["b1"]);
    let layout = weir_datapath::PinLayout::new(t.node.bpffs());
    let mut frontends: aya::maps::HashMap<aya::maps::MapData, FrontendKey, Service> =
        weir_datapath::pinned::hash(&layout, "WEIR_FRONTENDS").expect("frontends");
    let key = FrontendKey { addr: VIP.into(), port: 80u16.to_be(), proto: 6, scope: 0 };
    frontends.remove(&key).expect("delete the frontend behind the agent's back");
    assert!(tcp_name(t.client.ns(), VIP, 80, Duration::from_millis(500)).is_err(), "the service is broken");
    agent.wait_for_log("resync", 1);
    t.eventually_names(&["b1"]);
    assert!(frontends.get(&key, 0).is_ok(), "the frontend came back");
}

/// The `took_us` of the `n`th (0-based) "reconciled" line of the log.
fn reconcile_took_us(agent: &Agent, n: usize) -> u64 {
    let log = agent.log_text();
    let line = log.lines().filter(|l| l.contains("reconciled")).nth(n).unwrap_or_default().to_string();
    line.split_whitespace().find_map(|w| w.strip_prefix("took_us=")).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no took_us in {line:?}"))
}

#[test]
fn a_change_that_is_no_work_does_not_age_the_next_one() {
    // The programming latency counts from the change that needed work: a
    // Node heartbeat (no work) seconds earlier must not be counted in it.
    let t = topo(1);
    let node_yaml = |beat: u32| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {}}}\nspec: {{podCIDR: 10.244.0.0/24}}\nstatus:\n  addresses: [{{type: InternalIP, address: 192.168.77.1}}]\n  conditions: [{{type: Ready, status: 'True', lastHeartbeatTime: '2026-12-03T00:00:{beat:02}Z'}}]\n",
            t.node.ns().name()
        )
    };
    t.node.write_source("node.yaml", node_yaml(0).as_bytes());
    t.node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&[Ipv4Addr::new(10, 244, 0, 11)])).as_bytes());
    let mut agent = t.start(&[]);
    let before = agent.log_text().matches("reconciled").count();
    t.node.write_source("node.yaml", node_yaml(1).as_bytes());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.log_text().matches("reconciled").count(), before, "a heartbeat is no work");
    t.node.write_source("svc.yaml", yaml_service("web", VIP, 81, "TCP", 8080, &ready(&[Ipv4Addr::new(10, 244, 0, 11)])).as_bytes());
    agent.wait_for_log("reconciled", before + 1);
    let took = reconcile_took_us(&agent, before);
    assert!(took < 1_500_000, "the service change took {took} µs: the heartbeat 3 s earlier was counted");
}

fn http_get(node: &Node, path: &str) -> String {
    node.agent_http(path)
}

#[test]
fn metrics_and_healthz_describe_the_agent() {
    let t = topo(2);
    let ips: Vec<Ipv4Addr> = t.backends.iter().map(|b| b.ip).collect();
    t.node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&ips)).as_bytes());
    let mut agent = t.start(&[]);
    assert!(http_get(&t.node, "/healthz").starts_with("HTTP/1.1 200"), "healthy once synced");
    // One endpoint change, so the programming-latency histogram has a sample.
    t.node.write_source("web.yaml", yaml_service("web", VIP, 80, "TCP", 8080, &ready(&ips[..1])).as_bytes());
    agent.wait_for_log("reconciled", 1);
    t.node.write_source("bad.yaml", b"kind: [");
    agent.wait_for_log("bad.yaml", 1);
    let m = http_get(&t.node, "/metrics");
    for needle in [
        "weir_programming_latency_seconds_count 1",
        "weir_map_entries{map=\"WEIR_FRONTENDS\"} 2",
        "weir_map_capacity{map=\"WEIR_FRONTENDS\"} 65536",
        "weir_map_entries{map=\"WEIR_BACKENDS\"} 1",
        "weir_objects{kind=\"Service\"} 1",
        "weir_objects{kind=\"EndpointSlice\"} 1",
        "weir_input_warnings_total{kind=\"file\"} 1",
    ] {
        assert!(m.contains(needle), "/metrics has {needle:?}:\n{m}");
    }
    assert!(http_get(&t.node, "/nope").starts_with("HTTP/1.1 404"));
}
