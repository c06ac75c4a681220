//! Control-plane measurement: the real agent, in standalone mode, on a
//! node namespace, programming N services × E endpoints from YAML.
//!
//! Reports: cold programming (agent start → maps written, and the initial
//! full sync alone), one endpoint change (p50/p99 of the agent's own
//! event → maps-written latency), and agent RSS. No assertions: numbers
//! go to docs/performance.md.
//!
//! Usage: weir-cp-bench [--ipv6] [SERVICES] [ENDPOINTS] [CHANGES] [--ct-entries N]   (default 10000 10 200)
//!        weir-cp-bench --cluster [--kube [--streaming]] [--default-table] [NODES] [PODS] [CHANGES]  (default 4000 100000 20)
//! (`--help` says more; an unknown argument is refused.)
//!
//! `--cluster` writes a whole cluster (issue 18's shape): NODES Nodes (the
//! first is the agent's), PODS Pods spread over them in 1,000 namespaces
//! with 30 label sets, 10,000 Services × 10 endpoints, 1,000
//! NetworkPolicies and 100 ClusterNetworkPolicies, then times each kind
//! of change CHANGES times: one endpoint, one Pod label, one new Pod on
//! this node, one Node heartbeat (should be no work at all), one
//! NetworkPolicy edit, one Namespace relabelled (its 100 pods change
//! identity; policies select namespaces by those labels).
//!
//! `--ct-entries N` fills the conntrack table with N live entries (N/2
//! service flows to the programmed backends) after the cold sync, and each
//! change then removes one endpoint of service 0 (and puts the previous
//! one back), so the figure includes whatever a removed backend costs in
//! conntrack.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use weir_tests::Node;

/// Service `i`'s ClusterIP, counted up from 10.96.0.1 as a u32 (the
/// service CIDR 10.96.0.0/12 holds a million). An earlier scheme wrapped
/// at 64,000 services, so "100,000 services" programmed 64,000 and
/// refused the rest as taken frontends.
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i)
}

/// Endpoint `j` (< 16) of service `i`, counted up from 10.128.0.1
/// (10.128.0.0/9: 100,000 services × 16 fit).
fn ep(i: u32, j: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + i * 16 + j)
}

/// Service `i`'s IPv6 ClusterIP, counted up from fd00:10:96::1.
fn vip6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from("fd00:10:96::1".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED)) + u128::from(i))
}

/// Endpoint `j` (< 16) of service `i` over IPv6, counted up from fd00:10:128::1.
fn ep6(i: u32, j: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from("fd00:10:128::1".parse::<Ipv6Addr>().unwrap_or(Ipv6Addr::UNSPECIFIED)) + u128::from(i) * 16 + u128::from(j))
}

/// The address family of the generated services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn vip(self, i: u32) -> IpAddr {
        match self {
            Family::V4 => vip(i).into(),
            Family::V6 => vip6(i).into(),
        }
    }

    fn ep(self, i: u32, j: u32) -> IpAddr {
        match self {
            Family::V4 => ep(i, j).into(),
            Family::V6 => ep6(i, j).into(),
        }
    }

    fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn every_ipv6_service_and_endpoint_has_an_address_of_its_own_up_to_100000_services() {
        let vips: BTreeSet<_> = (0..100_000).map(super::vip6).collect();
        assert_eq!(vips.len(), 100_000);
        assert_eq!(super::vip6(0).to_string(), "fd00:10:96::1");
        let eps: BTreeSet<_> = (0..100_000).flat_map(|i| (0..16).map(move |j| super::ep6(i, j))).collect();
        assert_eq!(eps.len(), 1_600_000);
        assert!(eps.iter().all(|e| e.segments()[..3] == [0xfd00, 0x10, 0x128]), "inside fd00:10:128::/48");
    }

    #[test]
    fn every_service_and_endpoint_has_an_address_of_its_own_up_to_100000_services() {
        let vips: BTreeSet<_> = (0..100_000).map(super::vip).collect();
        assert_eq!(vips.len(), 100_000);
        assert!(vips.iter().all(|v| v.octets()[0] == 10 && (96..112).contains(&v.octets()[1])), "inside 10.96.0.0/12");
        let eps: BTreeSet<_> = (0..100_000).flat_map(|i| (0..16).map(move |j| super::ep(i, j))).collect();
        assert_eq!(eps.len(), 1_600_000);
        assert!(eps.iter().all(|e| e.octets()[0] == 10 && e.octets()[1] >= 128), "inside 10.128.0.0/9");
    }
}

fn service_yaml(f: Family, i: u32, endpoints: u32, not_ready: Option<u32>) -> String {
    service_yaml_without(f, i, endpoints, not_ready, None)
}

/// `missing`: an endpoint left out of the slice.
fn service_yaml_without(f: Family, i: u32, endpoints: u32, not_ready: Option<u32>, missing: Option<u32>) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  clusterIP: \"{}\"\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: {}\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
        f.vip(i),
        f.address_type()
    );
    for j in (0..endpoints).filter(|j| missing != Some(*j)) {
        let ready = not_ready != Some(j);
        let _ = writeln!(y, "- addresses: [\"{}\"]\n  conditions: {{ready: {ready}}}", f.ep(i, j));
    }
    y.push_str("---\n");
    y
}

/// A field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn took_us(line: &str) -> Option<u64> {
    field_us(line, "took_us=")
}

/// A numeric field (`name=`, with the `=`) of an agent log line.
fn field_us(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse().ok())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The real agent, in standalone mode, programming N services × E
/// endpoints from YAML (or, with --cluster, a whole generated cluster):
/// cold programming, one change's latency, RSS.
#[derive(clap::Parser, Debug)]
#[command(name = "weir-cp-bench")]
struct Args {
    /// SERVICES ENDPOINTS CHANGES (default 10000 10 200); with --cluster:
    /// NODES PODS CHANGES (default 4000 100000 20).
    #[arg(num_args = 0..=3, value_name = "COUNT")]
    counts: Vec<u32>,
    /// A whole cluster (issue 18's shape) instead of services alone.
    #[arg(long)]
    cluster: bool,
    /// With --cluster: the agent reads the cluster from a scripted API
    /// server (the kube source) instead of YAML files.
    #[arg(long, requires = "cluster")]
    kube: bool,
    /// With --cluster: the agent starts with its default selection table,
    /// which grows during the initial sync (10,000 services × 10
    /// endpoints need more than its 4,194,304 slots).
    #[arg(long, requires = "cluster")]
    default_table: bool,
    /// With --kube: the agent reads the initial state as streaming lists.
    #[arg(long, requires = "kube")]
    streaming: bool,
    /// Fill the conntrack table with N live entries after the cold sync;
    /// each change then removes one endpoint of service 0.
    #[arg(long, default_value_t = 0, conflicts_with = "cluster")]
    ct_entries: u32,
    /// IPv6 services and endpoints (each IPv6 frontend is also named in
    /// `WEIR_SVC_ADDRS`).
    #[arg(long, conflicts_with_all = ["cluster", "ct_entries"])]
    ipv6: bool,
}

fn main() {
    let a = <Args as clap::Parser>::parse();
    let args = a.counts;
    if a.cluster {
        cluster::run(args.first().copied().unwrap_or(4000), args.get(1).copied().unwrap_or(100_000), args.get(2).copied().unwrap_or(20), a.kube, a.default_table, a.streaming);
        return;
    }
    let ct_entries = a.ct_entries;
    let f = if a.ipv6 { Family::V6 } else { Family::V4 };
    let services = args.first().copied().unwrap_or(10_000);
    let endpoints = args.get(1).copied().unwrap_or(10);
    let changes = args.get(2).copied().unwrap_or(200);
    let node = Node::new();
    // Services 1.. live in files of 100; service 0 has a file of its own, which the change loop edits.
    node.write_source("svc-0.yaml", service_yaml(f, 0, endpoints, None).as_bytes());
    let mut chunk = String::new();
    for i in 1..services {
        chunk.push_str(&service_yaml(f, i, endpoints, None));
        if i % 100 == 0 || i == services - 1 {
            node.write_source(&format!("svc-{i:05}.yaml"), chunk.as_bytes());
            chunk.clear();
        }
    }
    let slots = (services as u64 * weir_logic::maglev::table_size(endpoints) as u64 + 1024).max(1 << 20);
    let slots_arg = slots.to_string();
    // Two frontends per service: its port and the VIP's marker.
    let frontends = (2 * u64::from(services) + 1024).max(u64::from(weir_common::maps::FRONTENDS_MAX_ENTRIES)).to_string();
    // Every endpoint address is distinct: one backend each.
    let backends = (u64::from(services) * u64::from(endpoints) + 1024).max(u64::from(weir_datapath::LoadOptions::default().backends)).to_string();
    let start = Instant::now();
    let mut agent = node.start_agent_with(&[
        "--lb-table-slots",
        &slots_arg,
        "--frontends-max-entries",
        &frontends,
        "--backends-max-entries",
        &backends,
        "--resync-interval",
        "3600",
    ]);
    agent.wait_for_log_within("initial sync", 1, Duration::from_secs(300));
    let cold_wall = start.elapsed();
    let log = agent.log_text();
    let sync_line = log.lines().find(|l| l.contains("initial sync")).unwrap_or_default();
    // A figure from a sync that left services out would flatter weir.
    assert!(sync_line.contains(" errors=0 "), "the initial sync failed for some services; nothing measured:\n{sync_line}");
    let initial_us = took_us(sync_line).unwrap_or(0);
    let pid = agent.pid().unwrap_or(0);
    let rss_cold = rss_kib(pid);
    let (anon, shmem) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssShmem:"));

    let mut scans = None;
    if ct_entries > 0 {
        fill_conntrack(&node, ct_entries);
        scans = Some(time_conntrack_scans(&node));
    }
    let mut lat = Vec::new();
    for k in 0..changes {
        let before = agent.log_text().matches("reconciled").count();
        let yaml = if ct_entries > 0 { service_yaml_without(f, 0, endpoints, None, Some(k % endpoints)) } else { service_yaml(f, 0, endpoints, Some(k % endpoints)) };
        node.write_source("svc-0.yaml", yaml.as_bytes());
        agent.wait_for_log("reconciled", before + 1);
        if let Some(us) = agent.log_text().lines().filter(|l| l.contains("reconciled")).nth(before).and_then(took_us) {
            lat.push(us);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    lat.sort_unstable();
    let rss_after = rss_kib(pid);
    println!("| metric | value |");
    println!("|---|---|");
    println!("| services × endpoints | {services} × {endpoints} ({}) |", f.address_type());
    if ct_entries > 0 {
        println!("| conntrack entries present (each change removes an endpoint) | {ct_entries} |");
    }
    if let Some((batched, one_by_one, collection)) = scans {
        println!("| one read of the whole conntrack table: in batches / one entry at a time (medians of 5) | {:.1} ms / {:.1} ms |", batched * 1e3, one_by_one * 1e3);
        println!("| one collection of the whole table, every entry live (the collector's scan and its sets; median of 5) | {:.1} ms |", collection * 1e3);
    }
    println!("| cold: agent start → all services programmed (wall, incl. YAML parsing) | {:.0} ms |", cold_wall.as_secs_f64() * 1e3);
    println!("| cold: initial full sync (translate + map writes) | {:.0} ms |", initial_us as f64 / 1e3);
    println!("| one endpoint change, event → maps written, p50 | {:.2} ms |", percentile(&lat, 0.5) as f64 / 1e3);
    println!("| one endpoint change, event → maps written, p99 | {:.2} ms |", percentile(&lat, 0.99) as f64 / 1e3);
    println!("| changes measured | {} |", lat.len());
    println!("| agent RSS after cold sync | {:.0} MiB |", rss_cold as f64 / 1024.0);
    println!("| of which heap (RssAnon) | {:.0} MiB |", anon as f64 / 1024.0);
    let _ = shmem;
    println!("| agent RSS after the changes | {:.0} MiB |", rss_after as f64 / 1024.0);
    println!("| LB table slots (kernel BPF map memory, not agent RSS) | {slots} ({:.0} MiB) |", slots as f64 * 8.0 / 1048576.0);
}

/// Writes `n` live conntrack entries: `n / 2` UDP service flows (forward
/// and reverse), spread over the programmed backends, as if clients had
/// opened them.
fn fill_conntrack(node: &Node, n: u32) {
    use weir_common::{
        addr::Addr,
        ct::{CtEntry, CtKey, CT_STATE_UDP, CT_SVC_FWD, CT_SVC_REV},
        lb::Backend,
    };
    let layout = weir_datapath::PinLayout::new(node.bpffs());
    let backends = weir_datapath::pinned::hash::<u32, Backend>(&layout, "WEIR_BACKENDS").expect("backends");
    let backends: Vec<(u32, Backend)> = backends.iter().filter_map(Result::ok).collect();
    assert!(!backends.is_empty(), "no backends programmed");
    let mut ct = weir_datapath::ct::CtMaps::open(&layout).expect("conntrack");
    let expires_s = (weir_datapath::ct::monotonic_ns() / 1_000_000_000) as u32 + 3600;
    for f in 0..n / 2 {
        let (id, b) = backends[f as usize % backends.len()];
        let client = Addr::from(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + f / 60_000));
        let sport = (1024 + f % 60_000) as u16;
        let vip = Addr::from(vip(0));
        let fwd = CtKey { saddr: client, daddr: vip, sport: sport.to_be(), dport: 53u16.to_be(), proto: 17, kind: CT_SVC_FWD, _pad: 0 };
        let rev = CtKey { saddr: b.addr, daddr: client, sport: b.port, dport: sport.to_be(), proto: 17, kind: CT_SVC_REV, _pad: 0 };
        let e = |nat_addr: Addr, orig_addr: Addr, nat_port: u16, orig_port: u16| CtEntry { nat_addr, orig_addr, expires_s, backend_id: id, svc_id: 1, nat_port, orig_port, state: CT_STATE_UDP, ..CtEntry::default() };
        assert!(ct.insert_new(&fwd, &e(b.addr, client, b.port, sport.to_be())), "insert forward");
        assert!(ct.insert_new(&rev, &e(vip, client, 53u16.to_be(), sport.to_be())), "insert reverse");
    }
}

/// Medians of five reads of the whole conntrack table, in seconds: in
/// batches (what the collector does) and one entry at a time; and of five
/// whole collections (`Conntrack::gc`: the batched read, the liveness and
/// twin checks, the per-pod counts), which delete nothing here (every
/// entry is live) and run on the agent's one loop in the agent.
fn time_conntrack_scans(node: &Node) -> (f64, f64, f64) {
    let mut ct = weir_datapath::ct::Conntrack::open(&weir_datapath::PinLayout::new(node.bpffs())).expect("conntrack");
    let median = |f: &mut dyn FnMut() -> usize| {
        let mut v: Vec<f64> = (0..5).map(|_| { let t = Instant::now(); std::hint::black_box(f()); t.elapsed().as_secs_f64() }).collect();
        v.sort_by(f64::total_cmp);
        v[2]
    };
    let (batched, one_by_one) = (median(&mut || ct.entries().len()), median(&mut || ct.entries_one_by_one().len()));
    let collection = median(&mut || {
        let out = ct.gc(weir_datapath::ct::monotonic_ns());
        assert_eq!(out.deleted, 0, "every entry is live: the collection deletes none");
        out.account.entries as usize
    });
    (batched, one_by_one, collection)
}

/// The whole-cluster measurement (`--cluster`).
mod cluster {
    use std::time::{Duration, Instant};

    use weir_tests::Node;
    use weir_tests::bench::cluster_gen::{namespace_yaml, netpol_yaml, node_yaml, pod_yaml, service_yaml, CNPS, ENDPOINTS, LABEL_SETS, NAMESPACES, NETPOLS, SERVICES};

    /// Times `change` CHANGES times: the agent's own event → maps-written
    /// latency from its "reconciled" lines. Each change starts once the
    /// agent is idle (no reconcile for 300 ms); a change expected to be no
    /// work gets 2 s to show otherwise, one expected to work up to 120 s.
    fn time(agent: &mut weir_tests::Agent, changes: u32, expect_work: bool, mut change: impl FnMut(u32)) -> (Vec<u64>, u32) {
        let mut lat = Vec::new();
        // The reconcile's own part of each.
        let mut work = Vec::new();
        let mut no_work = 0;
        for k in 0..changes {
            // Idle: the reconcile count stable for 300 ms.
            let mut seen = agent.log_text().matches("reconciled").count();
            loop {
                std::thread::sleep(Duration::from_millis(300));
                let now = agent.log_text().matches("reconciled").count();
                if now == seen {
                    break;
                }
                seen = now;
            }
            let before = seen;
            change(k);
            let start = Instant::now();
            let limit = if expect_work { Duration::from_secs(120) } else { Duration::from_secs(2) };
            loop {
                let log = agent.log_text();
                if log.matches("reconciled").count() > before {
                    let line = log.lines().filter(|l| l.contains("reconciled")).nth(before).unwrap_or_default();
                    if let Some(us) = super::took_us(line) {
                        lat.push(us);
                        work.push(super::field_us(line, "work_us=").unwrap_or(0));
                    }
                    break;
                }
                if start.elapsed() > limit {
                    no_work += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // In order, so a slow first change shows as such.
        eprintln!("latencies in order (µs): {lat:?}");
        eprintln!("  of which the reconcile's own work (µs): {work:?}");
        lat.sort_unstable();
        (lat, no_work)
    }

    /// Where the agent reads the cluster: its source directory, or the
    /// scripted API server (lists, then watch events).
    enum Source<'a> {
        Dir(&'a Node),
        Kube(weir_tests::kubeapi::Live),
    }

    impl Source<'_> {
        /// Creates or replaces the objects of `yaml` (the file `name` in a
        /// directory; one watch event each from the API server).
        fn put(&self, name: &str, yaml: &str) {
            match self {
                Source::Dir(node) => node.write_source(name, yaml.as_bytes()),
                Source::Kube(live) => {
                    for o in weir_tests::kubeapi::objects_of(yaml) {
                        live.apply(o);
                    }
                }
            }
        }
    }

    pub fn run(nodes: u32, pods: u32, changes: u32, kube: bool, grow: bool, streaming: bool) {
        let node = Node::new();
        let me = node.ns().name().to_string();
        let gen = Instant::now();
        weir_tests::bench::cluster_gen::write_cluster(&node, &me, nodes, pods);
        let gen_took = gen.elapsed();

        let slots = (SERVICES as u64 * weir_logic::maglev::table_size(ENDPOINTS) as u64 + 1024).max(1 << 20);
        let slots_arg = slots.to_string();
        // The kube source lists unless --streaming (the agent's default,
        // auto, would stream from this server).
        let mut args: Vec<&str> = vec!["--resync-interval", "3600", if streaming { "--kube-streaming-lists=always" } else { "--kube-streaming-lists=never" }];
        if !grow {
            args.extend(["--lb-table-slots", &slots_arg]);
        }
        let args = &args[..];
        // The same objects from the scripted API server: one list per kind
        // (resourceVersion=0, unpaginated, as the kube source asks), then
        // one watch per kind.
        let served = kube.then(|| {
            let (port, live) = weir_tests::kubeapi::serve_live(node.ns(), weir_tests::kubeapi::objects_in(node.source_dir()), Vec::new());
            (weir_tests::kubeapi::Kubeconfig::new(port), live)
        });
        let start = Instant::now();
        let mut agent = match &served {
            Some((kubeconfig, _)) => weir_tests::Agent::start_kube(&node, &kubeconfig.0, args),
            None => node.start_agent_with(args),
        };
        let source = match &served {
            Some((_, live)) => Source::Kube(live.clone()),
            None => Source::Dir(&node),
        };
        agent.wait_for_log_within("initial sync", 1, Duration::from_secs(1800));
        let cold = start.elapsed();
        let log = agent.log_text();
        let sync_line = log.lines().find(|l| l.contains("initial sync")).unwrap_or_default();
        assert!(sync_line.contains(" errors=0 "), "the initial sync failed for some objects; nothing measured:\n{sync_line}");
        let initial_us = super::took_us(sync_line).unwrap_or(0);
        let pid = agent.pid().unwrap_or(0);
        // Once the agent has returned the load's freed memory (the line
        // right after the sync's).
        agent.wait_for_log_within("heap once synced", 1, Duration::from_secs(30));
        let rss_cold = super::rss_kib(pid);
        let peak_cold = super::status_kib(pid, "VmHWM:");
        let heap = agent.log_text().lines().find(|l| l.contains("heap once synced")).map(str::to_string);
        eprintln!("{}", heap.as_deref().unwrap_or("(no heap line)"));
        // Where the cold start went: the agent's own milestones.
        for l in agent.log_text().lines().filter(|l| ["weir-agent ready", "listed", "initial sync", "loaded", "attached", "grew the selection table"].iter().any(|m| l.contains(m))).take(20) {
            eprintln!("  {}", l.chars().take(200).collect::<String>());
        }

        // An endpoint change edits the slice alone (the Service stays).
        let slice_only = |k: u32| {
            let y = service_yaml(nodes, pods, 0, Some(k % ENDPOINTS));
            y.split_once("---\n").map_or(y.clone(), |(_, slice)| slice.to_string())
        };
        let (ep, ep_none) = time(&mut agent, changes, true, |k| match &source {
            Source::Dir(_) => source.put("svc-0.yaml", &service_yaml(nodes, pods, 0, Some(k % ENDPOINTS))),
            Source::Kube(_) => source.put("svc-0.yaml", &slice_only(k)),
        });
        let (label, label_none) = time(&mut agent, changes, true, |k| source.put("pod-0.yaml", &pod_yaml(&me, nodes, 0, (k + 1) % LABEL_SETS, None)));
        let (newpod, newpod_none) = time(&mut agent, changes, true, |k| source.put(&format!("new-{k}.yaml"), &pod_yaml(&me, nodes, pods + k * nodes, k % LABEL_SETS, Some(0))));
        let (beat, beat_none) = time(&mut agent, changes, false, |k| source.put("node-0.yaml", &node_yaml(&me, 0, k + 1)));
        let (np, np_none) = time(&mut agent, changes, true, |k| source.put("np-0.yaml", &netpol_yaml(0, 81 + k)));
        let (nsl, nsl_none) = time(&mut agent, changes, true, |k| source.put("namespace-0.yaml", &namespace_yaml(0, (k + 1) % 20)));
        // Steady state: the agent returns the changes' freed memory once
        // idle (within its 1 s heartbeat).
        std::thread::sleep(Duration::from_millis(1500));
        let rss_after = super::rss_kib(pid);
        let (anon_after, shmem_after, file_after) = (super::status_kib(pid, "RssAnon:"), super::status_kib(pid, "RssShmem:"), super::status_kib(pid, "RssFile:"));

        let ms = |v: &[u64], p: f64| super::percentile(v, p) as f64 / 1e3;
        println!("| metric | value |");
        println!("|---|---|");
        println!("| cluster | {nodes} Nodes, {pods} Pods in {NAMESPACES} namespaces, {SERVICES} Services × {ENDPOINTS} endpoints, {NETPOLS} NetworkPolicies, {CNPS} ClusterNetworkPolicies |");
        println!("| source | {} |", match (kube, streaming) {
            (true, false) => "kube (the scripted API server: lists, then watch events)",
            (true, true) => "kube, streaming lists (the initial state as watch events)",
            _ => "directory (standalone)",
        });
        println!("| writing the YAML (not the agent) | {:.1} s |", gen_took.as_secs_f64());
        println!("| cold: agent start → programmed (wall, incl. parsing) | {:.1} s |", cold.as_secs_f64());
        println!("| cold: initial full sync (translate + map writes) | {:.1} s |", initial_us as f64 / 1e6);
        println!("| agent RSS after cold sync (peak during the load) | {:.0} MiB ({:.0} MiB) |", rss_cold as f64 / 1024.0, peak_cold as f64 / 1024.0);
        println!("| agent RSS after the changes | {:.0} MiB |", rss_after as f64 / 1024.0);
        println!("| of which heap and stacks (RssAnon) / mapped BPF maps and files (RssShmem + RssFile) | {:.0} / {:.0} MiB |", anon_after as f64 / 1024.0, (shmem_after + file_after) as f64 / 1024.0);
        for (what, v, none) in [
            ("one endpoint", &ep, ep_none),
            ("one Pod label", &label, label_none),
            ("one new Pod on this node", &newpod, newpod_none),
            ("one Node heartbeat", &beat, beat_none),
            ("one NetworkPolicy edit", &np, np_none),
            ("one Namespace relabelled (100 pods)", &nsl, nsl_none),
        ] {
            println!("| {what}: event → maps written, p50 / p99 ({} changes, {none} no work) | {:.2} / {:.2} ms |", v.len(), ms(v, 0.5), ms(v, 0.99));
        }
    }
}
