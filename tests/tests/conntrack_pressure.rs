//! Conntrack under pressure, with real traffic through the real agent: a
//! pod spraying new tuples cannot evict another pod's connections (the
//! per-endpoint quota), and a table that fills up anyway is reported in
//! /metrics, `weir status` and the log, never silently.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use weir_tests::{
    hostile::{connect, read_line, spray_udp, PushServer},
    services::{ready, yaml_service},
    Node,
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const SINK: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 41);
const SINK_PORTS: [u16; 5] = [53, 54, 55, 56, 57];

/// A UDP Service on SINK with five ports, to five ports of `backend`
/// (distinct backend ports keep the reply tuples apart: one client
/// address has at most 64k flows to one backend address and port).
fn sink_service(backend: Ipv4Addr) -> String {
    let ports: Vec<String> = SINK_PORTS.iter().map(|p| format!("{{name: p{p}, port: {p}, targetPort: {}, protocol: UDP}}", p + 1000)).collect();
    let slice_ports: Vec<String> = SINK_PORTS.iter().map(|p| format!("{{name: p{p}, port: {}, protocol: UDP}}", p + 1000)).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: sink, namespace: default}}\nspec:\n  clusterIP: {SINK}\n  ports: [{}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: sink-1, namespace: default, labels: {{kubernetes.io/service-name: sink}}}}\n\
         addressType: IPv4\nports: [{}]\nendpoints:\n- addresses: [{backend}]\n  conditions: {{ready: true}}\n",
        ports.join(", "),
        slice_ports.join(", ")
    )
}

fn metric(node: &Node, prefix: &str) -> u64 {
    node.agent_http("/metrics")
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn one_pod_spraying_new_tuples_cannot_evict_another_pods_connection() {
    let node = Node::new();
    let client = node.pod("client", Ipv4Addr::new(10, 244, 0, 2));
    let server = node.pod("server", Ipv4Addr::new(10, 244, 0, 3));
    let sprayer = node.pod("sprayer", Ipv4Addr::new(10, 244, 0, 4));
    let sink = node.pod("sink", Ipv4Addr::new(10, 244, 0, 5));
    node.write_source("web.yaml", yaml_service("web", WEB, 80, "TCP", 8080, &ready(&[server.ip])).as_bytes());
    node.write_source("sink.yaml", sink_service(sink.ip).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    for p in [&client, &server, &sprayer, &sink] {
        agent.wait_attached(&p.host_if, p.host_ifindex);
    }
    // The server speaks first, after the spray: its packet needs the
    // flow's reverse entry, which is what an eviction would take.
    let push = PushServer::start(server.ns(), 8080, "push\n");
    let mut stream = connect(client.ns(), WEB, 80, Duration::from_secs(3)).expect("connect through the VIP");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");

    let start = Instant::now();
    let sent = spray_udp(sprayer.ns(), sprayer.ip, SINK, SINK_PORTS.to_vec(), 600_000, 2).expect("spray");
    eprintln!("sprayed 300,000 UDP tuples twice ({sent} datagrams) in {:?}", start.elapsed());
    assert!(sent >= 590_000, "the spray went out: {sent}");

    push.push();
    assert_eq!(read_line(&mut stream).expect("the server's line reaches the client"), "push", "the idle connection survived the spray");

    let out = node.weir(&["stats", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    let refused = v["drops"]["ct_quota"].as_u64().unwrap_or(0);
    assert!(refused > 400_000, "the sprayer's flows beyond its quota were refused, not admitted: {refused}");
    assert!(metric(&node, "weir_conntrack_events_total{event=\"quota_refused\"}") > 0, "and /metrics says so");

    // The pod at its share is named before anyone reads drop counters.
    let out = node.weir(&["status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let share = &v["conntrack"]["share"];
    let limit = share["limit"].as_u64().unwrap_or(0);
    assert_eq!(limit, 32_768, "the default share: {share}");
    assert_eq!(share["fullest_link"].as_u64(), Some(u64::from(sprayer.host_ifindex)), "the sprayer's link is the fullest: {share}");
    assert!(share["fullest_entries"].as_u64().unwrap_or(0) * 10 >= limit * 9, "and it is at its share: {share}");
    let text = node.weir(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("the fullest pod link, {}", sprayer.host_if)) && text.contains("that pod is nearing or at its share"), "{text}");
    assert_eq!(metric(&node, "weir_conntrack_pod_share_limit"), 32_768);
    assert!(metric(&node, "weir_conntrack_pod_share_fullest") * 10 >= 32_768 * 9, "/metrics shows the fullest pod near its share");
}

#[test]
fn a_full_conntrack_table_is_reported_not_silent() {
    let node = Node::new();
    let sprayer = node.pod("sprayer", Ipv4Addr::new(10, 244, 0, 4));
    let sink = node.pod("sink", Ipv4Addr::new(10, 244, 0, 5));
    node.write_source("sink.yaml", sink_service(sink.ip).as_bytes());
    let mut agent = node.start_agent_with(&["--ct-max-entries", "4096", "--ct-max-per-endpoint", "0", "--ct-gc-interval", "1"]);
    agent.wait_synced();
    agent.wait_attached(&sprayer.host_if, sprayer.host_ifindex);
    agent.wait_attached(&sink.host_if, sink.host_ifindex);
    let sent = spray_udp(sprayer.ns(), sprayer.ip, SINK, SINK_PORTS.to_vec(), 20_000, 1).expect("spray");
    assert!(sent >= 19_000, "{sent}");

    let start = Instant::now();
    let mut evicted = 0;
    while start.elapsed() < Duration::from_secs(10) && evicted == 0 {
        std::thread::sleep(Duration::from_millis(200));
        evicted = metric(&node, "weir_conntrack_evictions_total");
    }
    assert!(evicted > 10_000, "/metrics counts the evictions of a full table: {evicted}");
    let out = node.weir(&["status", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert!(v["conntrack"]["evicted"].as_u64().unwrap_or(0) > 10_000, "weir status shows them: {}", v["conntrack"]);
    assert_eq!(v["conntrack"]["capacity_v4"].as_u64(), Some(4096), "the IPv4 table, the one that filled");
    assert!(v["conntrack"]["entries_v4"].as_u64().is_some_and(|n| n > 3_000), "and it is full: {}", v["conntrack"]);
    assert_eq!(v["conntrack"]["capacity"].as_u64(), Some(4096 + 65_536 + 16_384), "every table: IPv4, IPv6, IPv6 masqueraded replies");
    assert_eq!(v["conntrack"]["capacity_masq6"].as_u64(), Some(16_384), "the masqueraded IPv6 replies' table, on its own: {}", v["conntrack"]);
    let text = node.weir(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("the table filled up"), "{}", String::from_utf8_lossy(&text.stdout));
    agent.wait_for_log("conntrack table full", 1);
}

/// Conntrack counter `stat`, summed over CPUs.
fn ct_stat(node: &Node, stat: weir_common::ct::CtStat) -> u64 {
    let layout = weir_datapath::PinLayout::new(node.bpffs());
    let stats = weir_datapath::stats::read_ct_stats(&layout).expect("WEIR_CT_STATS");
    stats.into_iter().find(|(s, _)| *s == stat).map_or(0, |(_, n)| n)
}

/// Waits until a collection has made the per-pod counts fresh
/// (`OWNER_COUNTS_FRESH_UNTIL` is ahead of the clock).
fn wait_counts_fresh(node: &Node) {
    let layout = weir_datapath::PinLayout::new(node.bpffs());
    let owners: aya::maps::HashMap<aya::maps::MapData, u32, u64> = weir_datapath::pinned::hash(&layout, "WEIR_CT_OWNERS").expect("WEIR_CT_OWNERS");
    let start = Instant::now();
    while owners.get(&weir_common::ct::OWNER_COUNTS_FRESH_UNTIL, 0).unwrap_or(0) <= weir_datapath::ct::monotonic_ns() {
        assert!(start.elapsed() < Duration::from_secs(10), "no collection made the counts fresh");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens `n` short connections to `WEB` one after another from `client`;
/// returns how many got their answer within `timeout`.
fn short_connections(client: &weir_tests::Pod, n: usize, timeout: Duration) -> usize {
    (0..n).filter(|_| weir_tests::traffic::tcp_name(client.ns(), WEB, 80, timeout).is_ok()).count()
}

#[test]
fn a_pods_new_flows_are_not_refused_on_counts_no_agent_keeps() {
    // A pod's count only grows between collections: what expires is
    // subtracted by the next one. With no agent running, an honest pod's
    // count would climb to its share and its new flows be refused until
    // an agent came back; a restarted agent recounts at once.
    let node = Node::new();
    let client = node.pod("client", Ipv4Addr::new(10, 244, 0, 2));
    let server = node.pod("server", Ipv4Addr::new(10, 244, 0, 3));
    let _srv = weir_tests::traffic::tcp_server(server.ns(), 8080, weir_tests::traffic::Reply::Name("server".into()));
    node.write_source("web.yaml", yaml_service("web", WEB, 80, "TCP", 8080, &ready(&[server.ip])).as_bytes());
    // 64 entries: 32 connections (two entries each), gone a second after
    // they close; counts hold three collections (3 s).
    let quota = ["--ct-max-per-endpoint", "64", "--ct-tcp-closing-timeout", "1", "--ct-tcp-closed-timeout", "1"];
    let mut agent = node.start_agent_with(&[&quota[..], &["--ct-gc-interval", "1"]].concat());
    agent.wait_synced();
    agent.wait_attached(&client.host_if, client.host_ifindex);
    agent.wait_attached(&server.host_if, server.host_ifindex);
    assert_eq!(short_connections(&client, 10, Duration::from_secs(3)), 10, "the pod connects while the agent runs");

    // No agent: once the counts are stale, 100 connections (200 entries,
    // three times the share) all go through.
    agent.stop_with(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(3_500));
    let refused_before = ct_stat(&node, weir_common::ct::CtStat::QuotaRefused);
    assert_eq!(short_connections(&client, 100, Duration::from_secs(3)), 100, "no new flow is refused on a count no agent keeps");
    assert_eq!(ct_stat(&node, weir_common::ct::CtStat::QuotaRefused), refused_before, "none was refused");
    assert!(ct_stat(&node, weir_common::ct::CtStat::QuotaLifted) > 0, "and the lifted quota is counted");
    let text = node.weir(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("admitted past a pod's stale count"), "weir status says the share was not enforced:\n{text}");

    // An agent again (collecting every 10 s): it recounts at once, and the
    // share holds again: 32 connections, then refusals.
    std::thread::sleep(Duration::from_secs(2)); // the closed entries expire
    agent.restart_with(&quota);
    agent.wait_synced();
    wait_counts_fresh(&node);
    let lifted = ct_stat(&node, weir_common::ct::CtStat::QuotaLifted);
    let ok = short_connections(&client, 40, Duration::from_millis(300));
    assert!((24..=32).contains(&ok), "the recounted pod had its share, then was refused: {ok} of 40 connected");
    assert!(ct_stat(&node, weir_common::ct::CtStat::QuotaRefused) > refused_before, "refused by the quota");
    assert_eq!(ct_stat(&node, weir_common::ct::CtStat::QuotaLifted), lifted, "the fresh counts were not lifted");
}
