//! Upgrades and reconfigurations that rebuild pinned maps, with traffic
//! flowing: established TCP connections and UDP flows through ClusterIPs,
//! judged by a NetworkPolicy, and new connections all along.
//!
//! - A restart with other map capacities (`--ct-max-entries`,
//!   `--lb-table-slots`) rebuilds those maps beside the old ones, copies
//!   every entry, swaps every pinned link and commits: no request fails
//!   and every flow keeps its backend. (Before WEIR_CT_PREV, a connection
//!   opened by an old program during the link swap lost its translation
//!   about once in ten runs: "Connection reset by peer".)
//! - The same killed (SIGKILL) in the middle, twice, then restarted: the
//!   datapath ends in one consistent layout and nothing is lost.
//! - Conntrack pinned in an earlier layout, one table for both families
//!   (v1: 64-byte entries with a nanosecond expiry; v2: 56-byte ones),
//!   holding the established flows: the agent converts every entry into
//!   the current layout, moving the IPv4 flows to their own table
//!   (WEIR_CT4, 4-byte addresses), and swaps the programs; the flows keep
//!   their backends and their translation.
//! - A masquerade the old programs opened after the copy (gone from the
//!   rebuilt map while the migration is stalled after the swap) keeps its
//!   port and its replies: the new programs take it over from the old map.
//! - A pinned map in a layout the agent cannot convert (the 8-byte policy
//!   value that agents pinned before the verdict-valued entries), or in a newer
//!   layout (a downgrade), is refused with a message naming the map and
//!   both layouts, and the running datapath is left exactly as it was. A
//!   smaller `--lb-table-slots` is no refusal: the selection table only
//!   grows, and the pinned one is kept.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use weir_tests::{
    old_layout,
    services::{ready, yaml_service},
    traffic::{ask_name, tcp_connect, tcp_name, tcp_server, udp_ask, udp_connect, udp_server, Reply, Server, DEFAULT_TIMEOUT},
    Agent, Node, Pod,
};

const VIP_LONG: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_SHORT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const VIP_UDP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const SMALL: [&str; 6] = ["--ct-max-entries", "8192", "--lb-table-slots", "65536", "--frontends-max-entries", "1024"];
const LARGE: [&str; 6] = ["--ct-max-entries", "16384", "--lb-table-slots", "131072", "--frontends-max-entries", "131072"];
const STALL: &str = weir_datapath::migrate::STALL_ENV;

struct Topo {
    node: Node,
    client: Pod,
    intruder: Pod,
    backends: Vec<Pod>,
    _servers: Vec<Server>,
}

fn pod_yaml(y: &mut String, node: &str, name: &str, role: &str, ip: Ipv4Addr) {
    let _ = write!(
        y,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    role: {role}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: x\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n---\n"
    );
}

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backends-from-clients
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: backend
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          role: client
    ports:
    - {protocol: TCP, port: 8080}
    - {protocol: TCP, port: 8081}
    - {protocol: UDP, port: 5353}
";

impl Topo {
    fn new() -> Self {
        let node = Node::new();
        let client = node.pod("client", Ipv4Addr::new(10, 244, 0, 2));
        let intruder = node.pod("intruder", Ipv4Addr::new(10, 244, 0, 3));
        let backends: Vec<Pod> = (1..=3).map(|i| node.pod(&format!("b{i}"), Ipv4Addr::new(10, 244, 0, 10 + i))).collect();
        let mut servers = Vec::new();
        for b in &backends {
            servers.push(tcp_server(b.ns(), 8080, Reply::NamePerLine(b.name.clone())));
            servers.push(tcp_server(b.ns(), 8081, Reply::Name(b.name.clone())));
            servers.push(udp_server(b.ns(), 5353, Reply::Name(b.name.clone())));
        }
        let name = node.ns().name().to_string();
        let mut y = String::new();
        pod_yaml(&mut y, &name, "client", "client", client.ip);
        pod_yaml(&mut y, &name, "intruder", "intruder", intruder.ip);
        for b in &backends {
            pod_yaml(&mut y, &name, &b.name, "backend", b.ip);
        }
        y.push_str(POLICY);
        node.write_source("pods.yaml", y.as_bytes());
        let ips: Vec<Ipv4Addr> = backends.iter().map(|b| b.ip).collect();
        node.write_source("long.yaml", yaml_service("long", VIP_LONG, 80, "TCP", 8080, &ready(&ips)).as_bytes());
        node.write_source("short.yaml", yaml_service("short", VIP_SHORT, 80, "TCP", 8081, &ready(&ips)).as_bytes());
        node.write_source("udp.yaml", yaml_service("udp", VIP_UDP, 53, "UDP", 5353, &ready(&ips)).as_bytes());
        Self { node, client, intruder, backends, _servers: servers }
    }

    fn start(&self, args: &[&str]) -> Agent {
        let mut agent = self.node.start_agent_with(args);
        agent.wait_synced();
        for p in [&self.client, &self.intruder].into_iter().chain(&self.backends) {
            agent.wait_attached(&p.host_if, p.host_ifindex);
        }
        agent
    }

    fn intruder_is_denied(&self) -> bool {
        tcp_name(self.intruder.ns(), VIP_SHORT, 80, Duration::from_millis(700)).is_err()
    }

    fn map_pin(&self, name: &str) -> PathBuf {
        self.node.bpffs().join("maps").join(name)
    }

    fn staging(&self) -> PathBuf {
        self.node.bpffs().join("maps-next")
    }
}

/// Established flows through the services, and a loop that uses them and
/// opens new connections until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Whether each round opens a new connection too.
    opening: Arc<AtomicBool>,
    handle: JoinHandle<Tally>,
}

#[derive(Debug, Default)]
struct Tally {
    rounds: u64,
    new_ok: u64,
    /// Failures of the established flows.
    failures: Vec<String>,
    /// New connections that failed: (time of day, UTC, as the agent logs it; error).
    new_failed: Vec<(String, String)>,
    /// Backend of every established flow, as first answered.
    backends: BTreeMap<String, String>,
}

impl Traffic {
    fn start(t: &Topo) -> Self {
        let mut tcp: Vec<(TcpStream, String)> = Vec::new();
        for _ in 0..9 {
            let mut s = tcp_connect(t.client.ns(), VIP_LONG, 80, DEFAULT_TIMEOUT).expect("long-lived connection");
            let name = ask_name(&mut s).expect("first answer");
            tcp.push((s, name));
        }
        let mut udp: Vec<(UdpSocket, String)> = Vec::new();
        for _ in 0..4 {
            let s = udp_connect(t.client.ns(), VIP_UDP, 53, DEFAULT_TIMEOUT).expect("udp flow");
            let name = udp_ask(&s).expect("first udp answer");
            udp.push((s, name));
        }
        let distinct: std::collections::BTreeSet<&String> = tcp.iter().map(|(_, n)| n).collect();
        assert!(distinct.len() >= 2, "the long-lived connections spread over backends: {distinct:?}");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let opening = Arc::new(AtomicBool::new(true));
        let opening2 = opening.clone();
        let handle = t.client.ns().spawn(move || {
            let mut tally = Tally::default();
            for (i, (_, n)) in tcp.iter().enumerate() {
                tally.backends.insert(format!("tcp{i}"), n.clone());
            }
            for (i, (_, n)) in udp.iter().enumerate() {
                tally.backends.insert(format!("udp{i}"), n.clone());
            }
            let start = Instant::now();
            while !stop2.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                tally.rounds += 1;
                for (i, (s, want)) in tcp.iter_mut().enumerate() {
                    match ask_name(s) {
                        Ok(got) if &got == want => {}
                        other => tally.failures.push(format!("round {}: tcp{i} (backend {want}): {other:?}", tally.rounds)),
                    }
                }
                for (i, (s, want)) in udp.iter().enumerate() {
                    match udp_ask(s) {
                        Ok(got) if &got == want => {}
                        other => tally.failures.push(format!("round {}: udp{i} (backend {want}): {other:?}", tally.rounds)),
                    }
                }
                if opening2.load(Ordering::Relaxed) {
                    let r = weir_tests::traffic::short_connection_here(std::net::SocketAddr::from((VIP_SHORT, 80)), Duration::from_secs(2));
                    match r {
                        Ok(()) => tally.new_ok += 1,
                        Err(e) => tally.new_failed.push((weir_tests::utc_clock(), format!("round {}: new connection: {e}", tally.rounds))),
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tally
        });
        Self { stop, opening, handle }
    }

    /// Stops or resumes opening new connections (the established flows
    /// keep going); waits for a round in flight to finish.
    fn open_new(&self, on: bool) {
        self.opening.store(on, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("traffic thread")
    }
}

/// Deletes the reverse entry of every long-lived TCP connection (through
/// `VIP_LONG`) from the IPv4 conntrack map pinned at `pin`; returns how
/// many.
fn drop_reverse_entries(pin: &Path) -> usize {
    use weir_common::ct::{CtEntry4, CtKey4, CT_SVC_REV};
    let data = aya::maps::MapData::from_pin(pin).expect("IPv4 conntrack");
    let mut ct: aya::maps::HashMap<_, CtKey4, CtEntry4> = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("conntrack map");
    // Only the long-lived connections' (a short connection the new
    // programs opened has no older half to be carried over from).
    let long_lived = |k: &CtKey4| ct.get(k, 0).is_ok_and(|e| Ipv4Addr::from(e.nat_addr.to_ne_bytes()) == VIP_LONG);
    let keys: Vec<CtKey4> = ct.keys().filter_map(Result::ok).filter(|k| k.kind == CT_SVC_REV && k.proto == 6 && long_lived(k)).collect();
    keys.iter().filter(|k| ct.remove(k).is_ok()).count()
}

/// `CtStat::CarriedOver`, summed over CPUs.
fn carried_over(t: &Topo) -> u64 {
    let data = aya::maps::MapData::from_pin(t.map_pin("WEIR_CT_STATS")).expect("WEIR_CT_STATS");
    let stats: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).expect("per-CPU array");
    stats.get(&(weir_common::ct::CtStat::CarriedOver as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)
}

fn max_entries(pin: &Path) -> u32 {
    aya::maps::MapInfo::from_pin(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display())).max_entries()
}

fn map_id(pin: &Path) -> u32 {
    aya::maps::MapInfo::from_pin(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display())).id()
}

/// Every pin under the bpffs with the id of the map or program behind it.
fn pinned_ids(root: &Path) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for dir in ["maps", "links"] {
        for e in std::fs::read_dir(root.join(dir)).expect("pins").flatten() {
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            let id = if dir == "maps" {
                map_id(&e.path())
            } else {
                let link = aya::programs::links::PinnedLink::from_pin(e.path()).expect("pinned link");
                aya::programs::links::FdLink::from(link).info().expect("link info").program_id()
            };
            out.insert(name, id);
        }
    }
    out
}

fn weir_status(t: &Topo) -> serde_json::Value {
    let out = t.node.weir(&["status", "-o", "json"]);
    assert!(out.status.success(), "weir status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// The datapath after a completed migration to LARGE: the new sizes, one
/// layout, nothing staged, and the traffic untouched.
fn assert_migrated(t: &Topo, agent: &Agent, tally: &Tally) {
    let log = agent.log_text();
    let mut failures = tally.failures.clone();
    failures.extend(tally.new_failed.iter().map(|(at, what)| format!("{what} at {at} UTC")));
    if !failures.is_empty() {
        let stats = t.node.weir(&["stats"]);
        panic!("no request failed and no flow moved ({} rounds):\n{}\n{}\n{log}", tally.rounds, failures.join("\n"), String::from_utf8_lossy(&stats.stdout));
    }
    assert!(tally.rounds > 20 && tally.new_ok > 20, "traffic ran all along: {tally:?}");
    assert_eq!(max_entries(&t.map_pin("WEIR_CT4")), 16384, "conntrack (IPv4) was rebuilt at the new size");
    assert_eq!(max_entries(&t.map_pin("WEIR_LB_TABLE")), 131072, "the selection table grew");
    assert_eq!(max_entries(&t.map_pin("WEIR_FRONTENDS")), 131072, "the frontends map grew");
    assert!(!t.staging().exists(), "nothing is left staged");
    for map in ["WEIR_CT4", "WEIR_LB_TABLE", "WEIR_FRONTENDS"] {
        assert!(log.lines().any(|l| l.contains("rebuilding a pinned map") && l.contains(&format!("map={map} "))), "{map} rebuilt:\n{log}");
    }
    assert!(log.contains("migrated a pinned map"), "{log}");
    assert!(log.contains("every pinned link runs the new programs"), "{log}");
    assert!(t.intruder_is_denied(), "the policy still denies the intruder");
    let st = weir_status(t);
    assert_eq!(st["migration_in_progress"], serde_json::json!([]), "{st}");
    for l in st["layouts"].as_array().expect("layouts") {
        if !l["max_entries"].is_null() {
            assert_eq!(l["pinned_version"], l["expected_version"], "every pinned map has its layout recorded: {l}");
        }
    }
    assert!(st["datapath_agent"].as_str().is_some_and(|a| a.starts_with("weir-agent ")), "{st}");
}

/// Restarts the agent with the LARGE sizes, lets the traffic run a second
/// more, and checks the finished migration.
fn restart_large_and_check(t: &Topo, agent: &mut Agent, traffic: Traffic) {
    let synced = agent.log_text().matches("initial sync").count();
    agent.restart_with(&LARGE);
    agent.wait_for_log("initial sync", synced + 1);
    std::thread::sleep(Duration::from_secs(1));
    let tally = traffic.finish();
    assert_migrated(t, agent, &tally);
}

#[test]
fn new_map_sizes_are_migrated_under_traffic_without_losing_a_connection() {
    let t = Topo::new();
    let mut agent = t.start(&SMALL);
    assert!(t.intruder_is_denied(), "the policy is in force");
    assert_eq!(max_entries(&t.map_pin("WEIR_CT4")), 8192);
    let before = pinned_ids(t.node.bpffs());
    let traffic = Traffic::start(&t);
    std::thread::sleep(Duration::from_millis(500));

    agent.stop_with(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    restart_large_and_check(&t, &mut agent, traffic);
    let after = pinned_ids(t.node.bpffs());
    assert_ne!(before["maps/WEIR_CT4"], after["maps/WEIR_CT4"], "a new conntrack map");
    assert_eq!(before["maps/WEIR_CT"], after["maps/WEIR_CT"], "IPv6 conntrack, of the same size, is adopted");
    assert_eq!(before["maps/WEIR_BACKENDS"], after["maps/WEIR_BACKENDS"], "maps of the same layout and size are adopted, not copied");
    let pod_link = format!("links/{}@{}@from_pod", t.client.host_if, t.client.host_ifindex);
    assert_ne!(before[&pod_link], after[&pod_link], "the client's link runs new programs");
}

#[test]
fn a_migration_killed_twice_in_the_middle_finishes_on_the_next_start() {
    let t = Topo::new();
    let mut agent = t.start(&SMALL);
    let traffic = Traffic::start(&t);
    std::thread::sleep(Duration::from_millis(500));
    agent.stop_with(libc::SIGTERM);

    // Killed with the new programs on every link, over maps still staged;
    // the reverse halves of the service flows the old programs created
    // after the copy are found in the old map, through WEIR_CT4_PREV.
    stall_drop_and_carry_over(&t, &mut agent, &LARGE, &t.staging().join("WEIR_CT4"), "the old map");
    agent.stop_with(libc::SIGKILL);
    assert!(t.staging().join("WEIR_CT4").exists(), "the kill left the rebuilt conntrack staged");
    assert_eq!(max_entries(&t.map_pin("WEIR_CT4")), 8192, "the old map is still pinned");
    std::thread::sleep(Duration::from_millis(500));

    // Killed again after the first map was committed.
    agent.launch_again(&LARGE, &[(STALL, "committing")]);
    agent.wait_for_log("migration stalled", 2);
    std::thread::sleep(Duration::from_millis(500));
    agent.stop_with(libc::SIGKILL);
    assert!(t.staging().exists(), "the second kill left part of the migration staged");
    std::thread::sleep(Duration::from_millis(500));

    agent.unset_env(STALL);
    restart_large_and_check(&t, &mut agent, traffic);
}

/// Starts the agent with `args`, stalled after the swap, removes the TCP
/// flows' reverse halves from the new IPv4 conntrack the programs use now
/// (`ct4`: staged when rebuilt, pinned when new; as if the old programs
/// had created them after the copy), and waits for the backends' next
/// replies to take them over from the old map (`what`).
fn stall_drop_and_carry_over(t: &Topo, agent: &mut Agent, args: &[&str], ct4: &Path, what: &str) {
    let stalled = agent.log_text().matches("migration stalled").count();
    agent.launch_again(args, &[(STALL, "swapped")]);
    agent.wait_for_log("migration stalled", stalled + 1);
    let carried = carried_over(t);
    let removed = drop_reverse_entries(ct4);
    assert!(removed >= 9, "the long-lived connections' reverse entries: {removed}");
    // The traffic's next round (which may take a while on 2 loaded cores).
    let deadline = Instant::now() + Duration::from_secs(10);
    while carried_over(t) < carried + 9 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = carried_over(t);
    assert!(now >= carried + 9, "the new programs took the missing entries over from {what}: {carried} then {now}; {}", String::from_utf8_lossy(&t.node.weir(&["stats"]).stdout));
}

/// Replaces the conntrack map pinned as `name` by one in layout v1 holding
/// the same entries, as an agent of that layout would have left it: 64-byte
/// values (`ct_v1::CtEntryV1`, converted back from the current ones) and a
/// v1 record. Returns how many entries it holds. The running programs keep
/// the current map, unpinned: from here on, the only state the next agent
/// can carry over is what it converts from v1.
fn pin_as_v1(t: &Topo, name: &str) -> usize {
    use weir_common::ct::{CtEntry, CtKey};
    use weir_datapath::migrate::steps::ct_v1;
    let pin = t.map_pin(name);
    let current: aya::maps::HashMap<_, CtKey, CtEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(&pin).expect("open"))).expect("conntrack");
    let entries: Vec<(CtKey, CtEntry)> = current.iter().filter_map(Result::ok).collect();
    let layout = weir_datapath::PinLayout::new(t.node.bpffs());
    old_layout::pin_lru::<CtKey, ct_v1::CtEntryV1>(&layout, name, 1, &pin, &[&pin], |old| {
        for (k, e) in &entries {
            old.insert(k, ct_v1::to_v1(e), 0).expect("a v1 entry");
        }
    });
    entries.len()
}

/// Replaces conntrack by the one table for both families that an agent
/// of layout `version` (1 or 2) kept as `WEIR_CT`, holding the entries of
/// both of today's maps (v1's values converted back), with its record;
/// today's maps are unpinned (that agent had only this one). Returns how
/// many entries it holds. As in [`pin_as_v1`], the running programs keep
/// today's maps.
fn pin_one_table(t: &Topo, version: u32) -> usize {
    use weir_common::ct::{CtEntry, CtKey};
    use weir_datapath::migrate::steps::ct_v1;
    let layout = weir_datapath::PinLayout::new(t.node.bpffs());
    let entries = weir_datapath::ct::Conntrack::open(&layout).expect("conntrack").entries();
    let (pin, pin4, masq) = (t.map_pin("WEIR_CT"), t.map_pin("WEIR_CT4"), t.map_pin("WEIR_CT6_MASQ"));
    let replaced: [&Path; 3] = [&pin, &pin4, &masq];
    if version == 1 {
        old_layout::pin_lru::<CtKey, ct_v1::CtEntryV1>(&layout, "WEIR_CT", 1, &pin4, &replaced, |old| {
            for (k, e) in &entries {
                old.insert(k, ct_v1::to_v1(e), 0).expect("a v1 entry");
            }
        });
    } else {
        old_layout::pin_lru::<CtKey, CtEntry>(&layout, "WEIR_CT", version, &pin4, &replaced, |old| {
            for (k, e) in &entries {
                old.insert(k, e, 0).expect("a v2 entry");
            }
        });
    }
    entries.len()
}

/// The IPv4 flows' entries, all in WEIR_CT4 and none in WEIR_CT.
fn assert_split(t: &Topo, at_least: usize) {
    use weir_common::ct::{CtEntry4, CtKey, CtKey4, CtTail};
    let four: aya::maps::HashMap<_, CtKey4, CtEntry4> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(t.map_pin("WEIR_CT4")).expect("WEIR_CT4"))).expect("IPv4 conntrack");
    let six: aya::maps::HashMap<_, CtKey, CtTail> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(t.map_pin("WEIR_CT")).expect("WEIR_CT"))).expect("IPv6 conntrack");
    let n4 = four.keys().filter_map(Result::ok).count();
    let v4_in_six = six.keys().filter_map(Result::ok).filter(|k| k.is_v4()).count();
    assert!(n4 >= at_least, "the IPv4 flows are in WEIR_CT4: {n4} entries, at least {at_least} expected");
    assert_eq!(v4_in_six, 0, "no IPv4 entry is left in WEIR_CT");
    assert_eq!(aya::maps::MapInfo::from_pin(t.map_pin("WEIR_CT4")).expect("WEIR_CT4").value_size(), 32, "IPv4 entries of 32 bytes");
}

/// Replaces the datapath configuration pinned as `WEIR_CONFIG` by one in
/// layout v1 (72 bytes: no IPv6 node address), holding the current
/// configuration's first 72 bytes, with a v1 record. Returns the current
/// configuration.
fn pin_config_as_v1(t: &Topo) -> weir_common::config::DatapathConfig {
    use weir_common::config::DatapathConfig;
    use weir_datapath::migrate::{inspect::Shape, manifest::Manifest, steps::config_v1};
    const V1: usize = config_v1::VALUE_SIZE as usize;
    let pin = t.map_pin("WEIR_CONFIG");
    let info = aya::maps::MapInfo::from_pin(&pin).expect("the current map");
    let current: aya::maps::Array<_, DatapathConfig> = aya::maps::Array::try_from(aya::maps::Map::Array(aya::maps::MapData::from_pin(&pin).expect("open"))).expect("config");
    let cfg = current.get(&0, 0).expect("the configuration");
    let shape = Shape { map_type: 2, key_size: config_v1::KEY_SIZE, value_size: config_v1::VALUE_SIZE, flags: info.map_flags(), max_entries: info.max_entries() };
    let obj = aya_obj::Map::new_from_params(shape.map_type, shape.key_size, shape.value_size, shape.max_entries, shape.flags);
    let data = aya::maps::MapData::create(obj, "WEIR_CONFIG", None).expect("a v1 map");
    let id = data.info().expect("info").id();
    let mut old: aya::maps::Array<_, [u8; V1]> = aya::maps::Array::try_from(aya::maps::Map::Array(data)).expect("v1 map");
    // SAFETY: DatapathConfig is repr(C) plain data with no implicit
    // padding; its first 72 bytes are v1's layout.
    let bytes: [u8; V1] = unsafe { core::ptr::read_unaligned((&cfg as *const DatapathConfig).cast::<[u8; V1]>()) };
    old.set(0, bytes, 0).expect("the v1 configuration");
    let layout = weir_datapath::PinLayout::new(t.node.bpffs());
    Manifest::open_or_create(&layout).expect("WEIR_ABI").set(id, "WEIR_CONFIG", 1, &shape).expect("the v1 record");
    std::fs::remove_file(&pin).expect("unpin the current map (the programs keep it)");
    old.pin(&pin).expect("pin the v1 map");
    cfg
}

#[test]
fn conntrack_in_the_previous_layout_is_converted_under_traffic_without_losing_a_connection() {
    let t = Topo::new();
    let mut agent = t.start(&[]);
    let before = pinned_ids(t.node.bpffs());
    let traffic = Traffic::start(&t);
    std::thread::sleep(Duration::from_millis(500));
    // The programs running now are this build's, over the map the next
    // step unpins: a connection they opened from here until the migration
    // would be in neither layout's pinned map, which no real upgrade
    // does. So new connections pause while the old layout is staged (the
    // established flows keep going); the old programs' late entries are
    // covered below, where the new programs take them over from the v1 map.
    traffic.open_new(false);
    agent.stop_with(libc::SIGTERM);
    let flows = pin_one_table(&t, 1);
    assert!(flows >= 2 * 13, "both entries of the 9 TCP and 4 UDP flows, at least: {flows}");
    pin_as_v1(&t, "WEIR_SNAT");
    let cfg = pin_config_as_v1(&t);
    let st = weir_status(&t);
    let ct = st["layouts"].as_array().expect("layouts").iter().find(|l| l["name"] == "WEIR_CT").expect("WEIR_CT").clone();
    assert_eq!((ct["pinned_version"].as_u64(), ct["expected_version"].as_u64()), (Some(1), Some(4)), "weir status sees the old layout: {ct}");
    assert!(st["conntrack"].is_null(), "and does not read conntrack in a layout it does not know: {}", st["conntrack"]);
    let ct = t.node.weir(&["ct", "list"]);
    let err = String::from_utf8_lossy(&ct.stderr);
    assert!(!ct.status.success() && err.contains("WEIR_CT is pinned in layout v1 and this build reads v4"), "weir ct list refuses, naming both layouts: {err}");

    // Stalled with the new programs on every link over the converted maps:
    // the reverse halves of the TCP flows, gone from the new map (as if the
    // old programs had created them after the copy), are taken over from
    // the v1 map and converted (and narrowed: WEIR_CT4 is new, so pinned
    // at once) on the backends' next replies.
    stall_drop_and_carry_over(&t, &mut agent, &[], &t.map_pin("WEIR_CT4"), "the v1 map");
    agent.stop_with(libc::SIGKILL);
    assert_eq!(aya::maps::MapInfo::from_pin(t.map_pin("WEIR_CT")).expect("WEIR_CT").value_size(), 64, "the kill left v1 pinned");

    // The next start finishes the migration.
    let log = finish_under_traffic(&mut agent, traffic);
    for (map, to) in [("WEIR_CT", 4), ("WEIR_SNAT", 2), ("WEIR_CONFIG", 3)] {
        let line = log.lines().rfind(|l| l.contains("migrated a pinned map") && l.contains(&format!("map={map} "))).unwrap_or_else(|| panic!("{map} migrated:\n{log}"));
        assert!(line.contains("from_version=1") && line.contains(&format!("to_version={to}")) && line.contains("dropped=0"), "{line}");
    }
    assert_eq!(aya::maps::MapInfo::from_pin(t.map_pin("WEIR_CT")).expect("WEIR_CT").value_size(), 24, "conntrack in the current layout");
    assert_split(&t, 2 * 13);
    let now: aya::maps::Array<_, weir_common::config::DatapathConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(aya::maps::MapData::from_pin(t.map_pin("WEIR_CONFIG")).expect("open"))).expect("the configuration in the current layout");
    let now = now.get(&0, 0).expect("the configuration");
    assert_eq!(aya::maps::MapInfo::from_pin(t.map_pin("WEIR_CONFIG")).expect("WEIR_CONFIG").value_size(), 96, "the configuration in the current layout");
    assert_eq!((now.node_addr, now.masq_port_min, now.ct_udp_timeout_s), (cfg.node_addr, cfg.masq_port_min, cfg.ct_udp_timeout_s), "the v1 configuration carried over");
    assert!(!t.staging().exists(), "nothing is left staged");
    let st = weir_status(&t);
    assert_eq!(st["migration_in_progress"], serde_json::json!([]), "{st}");
    for l in st["layouts"].as_array().expect("layouts") {
        if !l["max_entries"].is_null() {
            assert_eq!(l["pinned_version"], l["expected_version"], "every pinned map at this build's layout: {l}");
        }
    }
    let after = pinned_ids(t.node.bpffs());
    let pod_link = format!("links/{}@{}@from_pod", t.client.host_if, t.client.host_ifindex);
    assert_ne!(before[&pod_link], after[&pod_link], "the client's link runs the new programs");
    assert_eq!(before["maps/WEIR_BACKENDS"], after["maps/WEIR_BACKENDS"], "maps whose layout did not change are adopted");
    assert!(t.intruder_is_denied(), "the policy still denies the intruder");
}

#[test]
fn conntrack_in_one_table_is_split_by_family_under_traffic_without_losing_a_connection() {
    let t = Topo::new();
    let mut agent = t.start(&[]);
    let traffic = Traffic::start(&t);
    std::thread::sleep(Duration::from_millis(500));
    // New connections pause while the old layout is staged, as in the v1
    // test above (the programs running now are this build's).
    traffic.open_new(false);
    agent.stop_with(libc::SIGTERM);
    let flows = pin_one_table(&t, 2);
    assert!(flows >= 2 * 13, "both entries of the 9 TCP and 4 UDP flows, at least: {flows}");

    // Stalled with the new programs on every link: the TCP flows' reverse
    // halves, gone from WEIR_CT4, are taken over from the one-table map
    // (WEIR_CT_PREV_V3, narrowed) on the backends' next replies.
    stall_drop_and_carry_over(&t, &mut agent, &[], &t.map_pin("WEIR_CT4"), "the one-table map");
    agent.stop_with(libc::SIGKILL);
    assert_eq!(aya::maps::MapInfo::from_pin(t.map_pin("WEIR_CT")).expect("WEIR_CT").max_entries(), 262_144, "the kill left the one-table map pinned");

    let log = finish_under_traffic(&mut agent, traffic);
    let line = log.lines().rfind(|l| l.contains("migrated a pinned map") && l.contains("map=WEIR_CT ")).unwrap_or_else(|| panic!("WEIR_CT migrated:\n{log}"));
    assert!(line.contains("from_version=2") && line.contains("to_version=4") && line.contains("dropped=0"), "{line}");
    assert_split(&t, 2 * 13);
    assert_eq!(max_entries(&t.map_pin("WEIR_CT")), 65_536, "IPv6 conntrack at its own size");
    assert!(!t.staging().exists(), "nothing is left staged");
    let st = weir_status(&t);
    for l in st["layouts"].as_array().expect("layouts") {
        if !l["max_entries"].is_null() {
            assert_eq!(l["pinned_version"], l["expected_version"], "every pinned map at this build's layout: {l}");
        }
    }
    assert!(t.intruder_is_denied(), "the policy still denies the intruder");
}

/// Starts the agent again without the stall, lets new connections open
/// again, and checks that no request failed and no flow moved while the
/// migration finished. Returns the agent's log.
fn finish_under_traffic(agent: &mut Agent, traffic: Traffic) -> String {
    agent.unset_env(STALL);
    let synced = agent.log_text().matches("initial sync").count();
    agent.restart_with(&[]);
    agent.wait_for_log("initial sync", synced + 1);
    traffic.open_new(true);
    std::thread::sleep(Duration::from_secs(1));
    let tally = traffic.finish();
    let log = agent.log_text();
    let mut failures = tally.failures.clone();
    failures.extend(tally.new_failed.iter().map(|(at, what)| format!("{what} at {at} UTC")));
    assert!(failures.is_empty(), "no request failed and no flow moved ({} rounds):\n{}\n{log}", tally.rounds, failures.join("\n"));
    assert!(tally.rounds > 20 && tally.new_ok > 20, "traffic ran all along: {tally:?}");
    log
}

/// Deletes every entry of the masquerade map pinned at `pin`; returns how
/// many.
fn clear_snat(pin: &Path) -> usize {
    use weir_common::ct::{CtEntry, CtKey};
    let data = aya::maps::MapData::from_pin(pin).expect("staged masquerade map");
    let mut m: aya::maps::HashMap<_, CtKey, CtEntry> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("hash");
    let keys: Vec<CtKey> = m.keys().filter_map(Result::ok).collect();
    keys.iter().filter(|k| m.remove(k).is_ok()).count()
}

/// `CtStat::CarriedOver` of `WEIR_SNAT_STATS`, summed over CPUs.
fn snat_carried_over(bpffs: &Path) -> u64 {
    let data = aya::maps::MapData::from_pin(bpffs.join("maps/WEIR_SNAT_STATS")).expect("WEIR_SNAT_STATS");
    let stats: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).expect("per-CPU array");
    stats.get(&(weir_common::ct::CtStat::CarriedOver as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)
}

#[test]
fn a_masquerade_the_old_programs_opened_during_the_swap_keeps_its_port_and_replies() {
    let mut c = weir_tests::cluster::Cluster::new(1, &["--routing", "native"]);
    let a = c.nodes[0].pod("a", 10);
    let _srv = tcp_server(&c.outside, 8080, Reply::NamePerLine("out".into()));
    let mut conn = tcp_connect(a.ns(), c.outside_ip, 8080, DEFAULT_TIMEOUT).expect("a masqueraded connection to the outside");
    assert_eq!(ask_name(&mut conn).expect("first answer"), "out");
    let bpffs = c.nodes[0].node.bpffs().to_path_buf();
    let staged = bpffs.join("maps-next/WEIR_SNAT");

    // A new masquerade table size rebuilds WEIR_SNAT; stalled after the
    // swap, the connection's masquerade is removed from the new map, as if
    // the old programs had created it after the last copy.
    let agent = c.nodes[0].agent();
    agent.stop_with(libc::SIGTERM);
    agent.launch_again(&["--routing", "native", "--masquerade-max-entries", "65536"], &[(STALL, "swapped")]);
    agent.wait_for_log("migration stalled", 1);
    let carried = snat_carried_over(&bpffs);
    assert_eq!(clear_snat(&staged), 2, "the connection's out and in entries");
    // Without the fallback the next segment leaves from a new port and the
    // outside answers with a RST.
    assert_eq!(ask_name(&mut conn).expect("the connection still answers"), "out");
    assert!(snat_carried_over(&bpffs) >= carried + 2, "both entries taken over from the old map");
    agent.stop_with(libc::SIGKILL);

    agent.unset_env(STALL);
    agent.restart_with(&["--routing", "native", "--masquerade-max-entries", "65536"]);
    agent.wait_for_log("initial sync", 2);
    assert_eq!(ask_name(&mut conn).expect("after the migration"), "out");
    assert!(!staged.exists(), "committed");
    assert_eq!(max_entries(&bpffs.join("maps/WEIR_SNAT")), 65536);
}

/// Starts the agent with `args`, which must refuse the pins (its message
/// containing every needle) and exit, leaving every pin, map and attached
/// program as it was.
fn expect_refusal(t: &Topo, agent: &mut Agent, args: &[&str], needles: &[&str]) {
    let before = pinned_ids(t.node.bpffs());
    let lines = agent.log_text().lines().count();
    agent.launch_again(args, &[]);
    let status = agent.wait_exit(Duration::from_secs(30)).expect("the agent stops by itself");
    assert!(!status.success(), "it exits with an error");
    let log: String = agent.log_text().lines().skip(lines).collect::<Vec<_>>().join("\n");
    for n in needles {
        assert!(log.contains(n), "the refusal says {n:?}:\n{log}");
    }
    assert!(log.contains("Nothing was changed"), "{log}");
    assert_eq!(pinned_ids(t.node.bpffs()), before, "every pin, map and attached program is as it was");
    assert!(!t.staging().exists(), "nothing staged");
}

#[test]
fn maps_the_agent_cannot_convert_are_refused_and_the_datapath_left_as_it_was() {
    let t = Topo::new();
    let mut agent = t.start(&[]);
    agent.stop_with(libc::SIGTERM);
    let traffic = Traffic::start(&t);

    // A smaller selection table asked for is no refusal: the table only
    // grows (services may have grown it), so the pinned one is kept.
    let table = map_id(&t.map_pin("WEIR_LB_TABLE"));
    let kept = agent.log_text().matches("keeping the pinned selection table").count();
    agent.launch_again(&["--lb-table-slots", "512"], &[]);
    agent.wait_for_log("keeping the pinned selection table", kept + 1);
    agent.stop_with(libc::SIGTERM);
    assert_eq!(map_id(&t.map_pin("WEIR_LB_TABLE")), table, "the pinned selection table, not a smaller one");

    // WEIR_POLICY as the agents before the 16-byte policy value pinned it
    // (the verdict-valued entries of 94fc995 and later): 8-byte values.
    let policy = t.map_pin("WEIR_POLICY");
    std::fs::remove_file(&policy).expect("unpin WEIR_POLICY (the programs keep the map)");
    let old: aya::maps::LpmTrie<aya::maps::MapData, [u8; 12], u64> = aya::maps::LpmTrie::create(1024, 1).expect("an old-layout policy map");
    old.pin(&policy).expect("pin it");
    expect_refusal(&t, &mut agent, &[], &["WEIR_POLICY", "unversioned (lpm_trie key 16 B value 8 B", "layout v1 (lpm_trie key 16 B value 16 B"]);
    // With another size requested too: still refused before anything.
    expect_refusal(&t, &mut agent, &LARGE, &["WEIR_POLICY"]);

    // A downgrade: conntrack recorded at a layout newer than this agent's.
    // (The real policy map is unpinned now, so the agent would create a
    // new one; the refusal comes first.)
    std::fs::remove_file(&policy).expect("unpin the old-layout map");
    let abi = t.map_pin("WEIR_ABI");
    let mut manifest: aya::maps::HashMap<aya::maps::MapData, weir_common::abi::AbiKey, weir_common::abi::AbiRecord> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(aya::maps::MapData::from_pin(&abi).expect("WEIR_ABI"))).expect("manifest");
    let key = weir_common::abi::AbiKey { kind: weir_common::abi::ABI_KIND_MAP, id: map_id(&t.map_pin("WEIR_CT")) };
    let mut rec = manifest.get(&key, 0).expect("conntrack's record");
    rec.version = 5;
    manifest.insert(key, rec, 0).expect("record v5");
    expect_refusal(&t, &mut agent, &[], &["WEIR_CT", "layout v5", "layout v4", "downgrade"]);

    let tally = traffic.finish();
    assert!(tally.failures.is_empty() && tally.new_failed.is_empty(), "traffic kept flowing on the pinned programs: {:?} {:?}", tally.failures, tally.new_failed);
    assert!(tally.rounds > 10, "{tally:?}");
    assert!(t.intruder_is_denied(), "the policy the programs hold still denies the intruder");
}
