//! IPv6 conntrack pinned in layout v3 (whole `CtEntry` values, 56 B, both
//! addresses in each), holding established flows through an IPv6
//! ClusterIP, by an agent that named no frontend in `WEIR_SVC_ADDRS`:
//! the agent names them, narrows every entry to its `CtTail` (24 B, ids
//! only) and sets the masqueraded flows' reverse entries aside whole in
//! `WEIR_CT6_MASQ`, then swaps the programs. Every flow keeps its backend
//! and its translation, including the reverse halves the old programs
//! wrote after the copy, which the new programs take over from the v3
//! map (`WEIR_CT_PREV_V3`) and narrow. Entries whose ids an older agent
//! reused are renamed by their addresses, so each flow keeps its backend.
//!
//! `WEIR_CT6_MASQ` pinned in its layout v1 (`CtKey` → `CtEntry`, both
//! addresses) is rebuilt in v2 (keyed without the node's address, the
//! client's the only address kept) with every field of its entries.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream, UdpSocket},
    path::PathBuf,
    time::{Duration, Instant},
};

use weir_common::{
    addr::Addr,
    ct::{CtEntry, CtKey, CtMasq6, CtMasqKey6, CtStat, CtTail, CT_F_MASQ, CT_STATE_ESTABLISHED, CT_SVC_REV},
    lb::FrontendKey,
};
use weir_tests::{
    services::yaml_dual_stack_service,
    traffic::{ask_name, tcp_connect, tcp_name, tcp_server_at, udp_ask, udp_connect, udp_server_at, Reply, Server, DEFAULT_TIMEOUT},
    Node, Pod,
};

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 71, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0x71, 0x10);
const STALL: &str = weir_datapath::migrate::STALL_ENV;
const TCP_FLOWS: usize = 6;
const UDP_FLOWS: usize = 3;

fn pod(node: &Node, name: &str, last: u8) -> Pod {
    let mut p = node.pod(name, Ipv4Addr::new(10, 244, 71, last));
    p.add_v6(node, Ipv6Addr::new(0xfd00, 0x10, 0x244, 0x71, 0, 0, 0, last as u16));
    p
}

fn pin(node: &Node, name: &str) -> PathBuf {
    node.bpffs().join("maps").join(name)
}

fn lru<K: aya::Pod, V: aya::Pod>(path: &std::path::Path) -> aya::maps::HashMap<aya::maps::MapData, K, V> {
    let data = aya::maps::MapData::from_pin(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash of these types")
}

fn carried_over(node: &Node) -> u64 {
    let data = aya::maps::MapData::from_pin(pin(node, "WEIR_CT_STATS")).expect("WEIR_CT_STATS");
    let stats: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).expect("per-CPU array");
    stats.get(&(CtStat::CarriedOver as u32), 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// A masqueraded TCP flow's reverse entry, as an agent of layout v3 kept
/// it (backend → the node's address and a masquerade port), of the
/// service `svc_id` and the backend `backend_id` (the backend's port
/// 8080, the service's 80).
fn masq_entry(backend: Ipv6Addr, node6: Addr, svc_id: u32, backend_id: u32) -> (CtKey, CtEntry) {
    let client = Addr::from(IpAddr::V6(Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, 7)));
    let k = CtKey { saddr: Addr::from(IpAddr::V6(backend)), daddr: node6, sport: 8080u16.to_be(), dport: 33001u16.to_be(), proto: 6, kind: CT_SVC_REV, _pad: 0 };
    let e = CtEntry {
        nat_addr: Addr::from(IpAddr::V6(VIP6)),
        orig_addr: client,
        expires_s: u32::MAX,
        backend_id,
        svc_id,
        nat_port: 80u16.to_be(),
        orig_port: 41000u16.to_be(),
        state: CT_STATE_ESTABLISHED,
        flags: CT_F_MASQ,
        _pad: 0,
        owner: 0,
    };
    (k, e)
}

/// Replaces the pinned LRU hash `name` by the one an older agent kept:
/// `K` → `V`, holding `entries`, recorded at layout `version` (`None`: no
/// record). The running programs keep today's map.
fn pin_old<K: aya::Pod, V: aya::Pod>(node: &Node, name: &str, version: Option<u32>, entries: &[(K, V)]) {
    use weir_datapath::migrate::{inspect::Shape, manifest::Manifest};
    let layout = weir_datapath::PinLayout::new(node.bpffs());
    let path = pin(node, name);
    let info = aya::maps::MapInfo::from_pin(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let shape = Shape { map_type: 9, key_size: core::mem::size_of::<K>() as u32, value_size: core::mem::size_of::<V>() as u32, flags: info.map_flags(), max_entries: info.max_entries() };
    let obj = aya_obj::Map::new_from_params(shape.map_type, shape.key_size, shape.value_size, shape.max_entries, shape.flags);
    let data = aya::maps::MapData::create(obj, name, None).expect("an older layout's map");
    let id = data.info().expect("info").id();
    let mut old: aya::maps::HashMap<_, K, V> = aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("an LRU hash of these types");
    for (k, v) in entries {
        old.insert(k, v, 0).expect("an older layout's entry");
    }
    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("unpin {name} (the programs keep it): {e}"));
    old.pin(&path).expect("pin the older map");
    if let Some(version) = version {
        Manifest::open_or_create(&layout).expect("WEIR_ABI").set(id, name, version, &shape).expect("the older record");
    }
}

/// Replaces IPv6 conntrack by the table an agent of layout v3 kept as
/// `WEIR_CT` (whole entries), holding today's IPv6 entries widened plus
/// `extra`, with its v3 record; `WEIR_CT6_MASQ` is unpinned (that agent
/// had none). Returns how many entries it holds.
fn pin_as_v3(node: &Node, extra: (CtKey, CtEntry)) -> usize {
    let layout = weir_datapath::PinLayout::new(node.bpffs());
    let mut entries: Vec<(CtKey, CtEntry)> = weir_datapath::ct::Conntrack::open(&layout).expect("conntrack").entries().into_iter().filter(|(k, _)| !k.is_v4()).collect();
    entries.push(extra);
    pin_old(node, "WEIR_CT", Some(3), &entries);
    std::fs::remove_file(pin(node, "WEIR_CT6_MASQ")).expect("unpin the masqueraded entries' map");
    entries.len()
}

/// The node's IPv6 address, as the agent configured the programs.
fn node6(node: &Node) -> Addr {
    let cfg_map: aya::maps::Array<_, weir_common::config::DatapathConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(aya::maps::MapData::from_pin(pin(node, "WEIR_CONFIG")).expect("WEIR_CONFIG"))).expect("config");
    cfg_map.get(&0, 0).expect("the configuration").node_addr6
}

/// The id `WEIR_SVC_ADDRS` names the IPv6 ClusterIP's TCP frontend by.
fn vip6_tcp_id(node: &Node) -> u32 {
    vip6_id(node, 80, 6)
}

/// The id `WEIR_SVC_ADDRS` names the IPv6 ClusterIP's frontend on
/// `port` and `proto` by.
fn vip6_id(node: &Node, port: u16, proto: u8) -> u32 {
    let data = aya::maps::MapData::from_pin(pin(node, "WEIR_SVC_ADDRS")).expect("WEIR_SVC_ADDRS");
    let names: aya::maps::HashMap<_, u32, FrontendKey> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("names");
    let vip = Addr::from(IpAddr::V6(VIP6));
    names.iter().filter_map(Result::ok).find(|(_, f)| f.addr == vip && f.port == port.to_be() && f.proto == proto).map(|(id, _)| id).expect("the IPv6 frontend is named")
}

/// The id `WEIR_BACKENDS` names `addr`, `port` by.
fn backend_id(node: &Node, addr: Ipv6Addr, port: u16) -> u32 {
    let data = aya::maps::MapData::from_pin(pin(node, "WEIR_BACKENDS")).expect("WEIR_BACKENDS");
    let backends: aya::maps::HashMap<_, u32, weir_common::lb::Backend> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("backends");
    let want = Addr::from(IpAddr::V6(addr));
    backends.iter().filter_map(Result::ok).find(|(_, b)| b.addr == want && b.port == port.to_be()).map(|(id, _)| id).expect("the backend has an id")
}

/// How many names `WEIR_SVC_ADDRS` holds.
fn names(node: &Node) -> usize {
    let data = aya::maps::MapData::from_pin(pin(node, "WEIR_SVC_ADDRS")).expect("WEIR_SVC_ADDRS");
    let names: aya::maps::HashMap<_, u32, FrontendKey> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("names");
    names.keys().filter_map(Result::ok).count()
}

/// Empties `WEIR_SVC_ADDRS`, as an agent from before it left it; returns
/// how many names there were.
fn unname_frontends(node: &Node) -> usize {
    let data = aya::maps::MapData::from_pin(pin(node, "WEIR_SVC_ADDRS")).expect("WEIR_SVC_ADDRS");
    let mut names: aya::maps::HashMap<_, u32, FrontendKey> = aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("names");
    let ids: Vec<u32> = names.keys().filter_map(Result::ok).collect();
    ids.iter().filter(|id| names.remove(id).is_ok()).count()
}

struct Flows {
    tcp: Vec<(TcpStream, String)>,
    udp: Vec<(UdpSocket, String)>,
}

impl Flows {
    fn open(client: &Pod) -> Self {
        let tcp: Vec<(TcpStream, String)> = (0..TCP_FLOWS)
            .map(|_| {
                let mut s = tcp_connect(client.ns(), VIP6, 80, DEFAULT_TIMEOUT).expect("an IPv6 connection through the VIP");
                let name = ask_name(&mut s).expect("first answer");
                (s, name)
            })
            .collect();
        let udp: Vec<(UdpSocket, String)> = (0..UDP_FLOWS)
            .map(|_| {
                let s = udp_connect(client.ns(), VIP6, 53, DEFAULT_TIMEOUT).expect("an IPv6 UDP flow");
                let name = udp_ask(&s).expect("first UDP answer");
                (s, name)
            })
            .collect();
        Self { tcp, udp }
    }

    /// Asks every flow once: the failures (an error, or another backend).
    fn round(&mut self, what: &str) -> Vec<String> {
        let mut failed = Vec::new();
        for (i, (s, want)) in self.tcp.iter_mut().enumerate() {
            match ask_name(s) {
                Ok(got) if &got == want => {}
                other => failed.push(format!("{what}: tcp{i} (backend {want}): {other:?}")),
            }
        }
        for (i, (s, want)) in self.udp.iter().enumerate() {
            match udp_ask(s) {
                Ok(got) if &got == want => {}
                other => failed.push(format!("{what}: udp{i} (backend {want}): {other:?}")),
            }
        }
        failed
    }
}

/// A node with a client and two dual-stack backends behind a dual-stack
/// ClusterIP (TCP 80, UDP 53), its agent running.
struct Topo {
    node: Node,
    client: Pod,
    backends: [Pod; 2],
    _servers: Vec<Server>,
    agent: weir_tests::Agent,
}

impl Topo {
    fn new() -> Self {
        let node = Node::new();
        let client = pod(&node, "client", 2);
        let backends = [pod(&node, "b1", 11), pod(&node, "b2", 12)];
        let any: IpAddr = Ipv6Addr::UNSPECIFIED.into();
        let _servers: Vec<Server> = backends
            .iter()
            .flat_map(|b| [tcp_server_at(b.ns(), any, 8080, Reply::NamePerLine(b.name.clone())), udp_server_at(b.ns(), any, 5353, Reply::Name(b.name.clone()))])
            .collect();
        let pairs: Vec<(Ipv4Addr, Ipv6Addr)> = backends.iter().map(|b| (b.ip, b.ip6.expect("dual-stack pod"))).collect();
        node.write_source("svc.yaml", yaml_dual_stack_service("both", VIP4, VIP6, &[("web", 80, 8080, "TCP"), ("dns", 53, 5353, "UDP")], &pairs).as_bytes());
        let mut agent = node.start_agent();
        agent.wait_synced();
        for p in [&client, &backends[0], &backends[1]] {
            agent.wait_attached(&p.host_if, p.host_ifindex);
        }
        Self { node, client, backends, _servers, agent }
    }
}

#[test]
fn ipv6_conntrack_of_layout_v3_is_narrowed_to_ids_without_losing_a_connection() {
    let Topo { node, client, backends, _servers, mut agent } = Topo::new();
    let mut flows = Flows::open(&client);
    let distinct: std::collections::BTreeSet<&String> = flows.tcp.iter().map(|(_, n)| n).collect();
    assert!(distinct.len() == 2, "the connections spread over both backends: {distinct:?}");
    let b1 = backends[0].ip6.expect("dual-stack pod");
    let masq = masq_entry(b1, node6(&node), vip6_tcp_id(&node), backend_id(&node, b1, 8080));

    // An agent of layout v3, from before WEIR_SVC_ADDRS, left this.
    agent.stop_with(libc::SIGTERM);
    let held = pin_as_v3(&node, masq);
    assert!(held > 2 * (TCP_FLOWS + UDP_FLOWS), "both entries of every flow, and the masqueraded one: {held}");
    assert_eq!(unname_frontends(&node), 2, "the IPv6 frontends (TCP and UDP) had names");

    // Stalled after the swap: the new programs run over the narrowed map.
    agent.launch_again(&[], &[(STALL, "swapped")]);
    agent.wait_for_log("migration stalled", 1);
    assert_eq!(names(&node), 2, "the migration named both IPv6 frontends before the new programs ran");
    let staged = node.bpffs().join("maps-next").join("WEIR_CT");
    assert_eq!(aya::maps::MapInfo::from_pin(&staged).expect("the staged map").value_size(), 24, "IPv6 entries narrowed to 24 bytes");
    agent.stop_with(libc::SIGKILL);

    // The next start resumes: swaps again and commits.
    restart(&mut agent);
    let failed = flows.round("after the migration");
    assert!(failed.is_empty(), "every flow kept its backend and its translation:\n{}\n{}", failed.join("\n"), agent.log_text());
    let log = agent.log_text();
    let line = log.lines().rfind(|l| l.contains("migrated a pinned map") && l.contains("map=WEIR_CT ")).unwrap_or_else(|| panic!("WEIR_CT migrated:\n{log}"));
    assert!(line.contains("from_version=3") && line.contains("to_version=4") && line.contains("dropped=0") && line.contains("renamed=0"), "every id named the entry's addresses: {line}");

    let tails: aya::maps::HashMap<_, CtKey, CtTail> = lru(&pin(&node, "WEIR_CT"));
    let in_tails: Vec<CtKey> = tails.keys().filter_map(Result::ok).collect();
    assert!(in_tails.len() >= 2 * (TCP_FLOWS + UDP_FLOWS), "every flow's entries, narrowed: {}", in_tails.len());
    assert!(!in_tails.contains(&masq.0), "the masqueraded reverse entry is not narrowed");
    let aside: aya::maps::HashMap<_, CtMasqKey6, CtMasq6> = lru(&pin(&node, "WEIR_CT6_MASQ"));
    assert_eq!(aside.get(&masq.0.masq6(), 0).ok(), Some(CtMasq6::of(&masq.1)), "the masqueraded reverse entry moved aside with the client's address");
    assert_eq!(widened(&node, &masq.0), Some(masq.1), "and reads back whole, every field kept");
    assert!(tcp_name(client.ns(), VIP6, 80, DEFAULT_TIMEOUT).is_ok(), "new IPv6 connections open");
    assert!(!node.bpffs().join("maps-next").exists(), "nothing is left staged");
}

#[test]
fn reverse_halves_the_old_programs_wrote_after_the_copy_are_taken_over_from_the_v3_map() {
    let Topo { node, client, backends, _servers, mut agent } = Topo::new();
    let mut flows = Flows::open(&client);
    let b1 = backends[0].ip6.expect("dual-stack pod");
    let masq = masq_entry(b1, node6(&node), vip6_tcp_id(&node), backend_id(&node, b1, 8080));
    agent.stop_with(libc::SIGTERM);
    pin_as_v3(&node, masq);

    agent.launch_again(&[], &[(STALL, "swapped")]);
    agent.wait_for_log("migration stalled", 1);
    // The TCP flows' reverse halves, gone from the narrowed map (as if the
    // old programs had created them after the copy).
    let staged = node.bpffs().join("maps-next").join("WEIR_CT");
    let mut tails: aya::maps::HashMap<_, CtKey, CtTail> = lru(&staged);
    let rev: Vec<CtKey> = tails.keys().filter_map(Result::ok).filter(|k| k.kind == CT_SVC_REV && k.proto == 6).collect();
    let removed = rev.iter().filter(|k| tails.remove(k).is_ok()).count();
    assert!(removed >= TCP_FLOWS, "the connections' reverse entries: {removed}");
    let before = carried_over(&node);
    let failed = flows.round("stalled after the swap");
    assert!(failed.is_empty(), "the new programs translated every reply:\n{}", failed.join("\n"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while carried_over(&node) < before + TCP_FLOWS as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = carried_over(&node);
    assert!(now >= before + TCP_FLOWS as u64, "the reverse halves were taken over from the v3 map: {before} then {now}");
    let back = rev.iter().filter(|k| tails.get(k, 0).is_ok()).count();
    assert_eq!(back, removed, "each narrowed into the new map");
    agent.stop_with(libc::SIGKILL);
    restart(&mut agent);
    let failed = flows.round("after the migration");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// The entry conntrack reads for `k`, widened (`weir_datapath::ct`).
fn widened(node: &Node, k: &CtKey) -> Option<CtEntry> {
    let layout = weir_datapath::PinLayout::new(node.bpffs());
    weir_datapath::ct::Conntrack::open(&layout).expect("conntrack").entries().into_iter().find(|(key, _)| key == k).map(|(_, e)| e)
}

/// Replaces `WEIR_CT6_MASQ` by the map an agent of its layout v1 kept
/// (`CtKey` → `CtEntry`, both addresses), holding `entries`, with its v1
/// record.
fn pin_masq_as_v1(node: &Node, entries: &[(CtKey, CtEntry)]) {
    pin_old(node, "WEIR_CT6_MASQ", Some(1), entries);
}

#[test]
fn masqueraded_ipv6_replies_of_layout_v1_are_rebuilt_without_the_nodes_address_every_field_kept() {
    let Topo { node, client, backends, _servers, mut agent } = Topo::new();
    let mut flows = Flows::open(&client);
    let (node6, svc) = (node6(&node), vip6_tcp_id(&node));
    let b = |i: usize| backends[i].ip6.expect("dual-stack pod");
    let held: Vec<(CtKey, CtEntry)> = (0..2)
        .map(|i| masq_entry(b(i), node6, svc, backend_id(&node, b(i), 8080)))
        .chain([{
            // A UDP flow's (port 53 to the backends' 5353), another
            // masquerade port.
            let (mut k, mut e) = masq_entry(b(1), node6, vip6_id(&node, 53, 17), backend_id(&node, b(1), 5353));
            (k.proto, k.sport, k.dport, e.nat_port, e.state) = (17, 5353u16.to_be(), 33002u16.to_be(), 53u16.to_be(), weir_common::ct::CT_STATE_UDP);
            (k, e)
        }])
        .collect();

    // An agent of WEIR_CT6_MASQ v1 left this: `weir status` names the
    // layout that differs (and reads no conntrack through it).
    agent.stop_with(libc::SIGTERM);
    pin_masq_as_v1(&node, &held);
    let st = node.weir(&["status"]);
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success() && text.contains("WEIR_CT6_MASQ v1 (this weir: v2)"), "{text}{}", String::from_utf8_lossy(&st.stderr));
    restart(&mut agent);
    let log = agent.log_text();
    let line = log.lines().rfind(|l| l.contains("migrated a pinned map") && l.contains("map=WEIR_CT6_MASQ ")).unwrap_or_else(|| panic!("WEIR_CT6_MASQ migrated:\n{log}"));
    assert!(line.contains("from_version=1") && line.contains("to_version=2") && line.contains("dropped=0") && line.contains("renamed=0"), "{line}");
    let info = aya::maps::MapInfo::from_pin(pin(&node, "WEIR_CT6_MASQ")).expect("the rebuilt map");
    assert_eq!((info.key_size(), info.value_size()), (24, 40), "64 B of key and value instead of 96");

    let aside: aya::maps::HashMap<_, CtMasqKey6, CtMasq6> = lru(&pin(&node, "WEIR_CT6_MASQ"));
    for (k, e) in &held {
        assert_eq!(aside.get(&k.masq6(), 0).ok(), Some(CtMasq6::of(e)), "{k:?}");
        assert_eq!(widened(&node, k).as_ref(), Some(e), "read back whole, the service's address by its id: {k:?}");
    }
    let failed = flows.round("after the migration");
    assert!(failed.is_empty(), "the pods' flows went on:\n{}", failed.join("\n"));
    assert!(!node.bpffs().join("maps-next").exists(), "nothing is left staged");
}

/// A `WEIR_CT6_MASQ` of v1 without a record (as the load of a v3 → v4
/// migration killed before its end left it) is taken for v1 by its sizes
/// and rebuilt; killed after the copy, the next start finishes. The live
/// pin is the old map until the rename: it must not be recorded in the
/// new layout meanwhile (the next start would refuse it as corrupt).
#[test]
fn an_unrecorded_masqueraded_map_of_v1_whose_rebuild_was_killed_is_finished_on_the_next_start() {
    let Topo { node, client, backends, _servers, mut agent } = Topo::new();
    let mut flows = Flows::open(&client);
    let b1 = backends[0].ip6.expect("dual-stack pod");
    let held = [masq_entry(b1, node6(&node), vip6_tcp_id(&node), backend_id(&node, b1, 8080))];
    agent.stop_with(libc::SIGTERM);
    pin_old(&node, "WEIR_CT6_MASQ", None, &held);

    agent.launch_again(&[], &[(STALL, "converted")]);
    agent.wait_for_log("migration stalled", 1);
    agent.stop_with(libc::SIGKILL);
    restart(&mut agent);
    let log = agent.log_text();
    let line = log.lines().rfind(|l| l.contains("migrated a pinned map") && l.contains("map=WEIR_CT6_MASQ ")).unwrap_or_else(|| panic!("WEIR_CT6_MASQ migrated:\n{log}"));
    assert!(line.contains("to_version=2") && line.contains("dropped=0"), "{line}");
    assert_eq!(widened(&node, &held[0].0), Some(held[0].1), "the entry, rebuilt, reads back whole");
    let failed = flows.round("after the migration");
    assert!(failed.is_empty(), "the pods' flows went on:\n{}", failed.join("\n"));
}

/// An agent from before `WEIR_LB_IDS` handed ids out afresh at every
/// start, so an IPv6 entry of layout v3 older than its last start can
/// carry ids that now name another backend (or frontend: the unit tests
/// of `migrate::ids`). The migration renames each such entry by the
/// addresses it still holds: narrowed as they were, the flows would
/// widen to the other backend.
#[test]
fn ipv6_entries_whose_ids_an_older_agent_reused_are_renamed_by_their_addresses() {
    let Topo { node, client, backends, _servers, mut agent } = Topo::new();
    let mut flows = Flows::open(&client);
    let b = |i: usize| backends[i].ip6.expect("dual-stack pod");
    // Each backend's id is the other backend's on the same port.
    let other_backend: std::collections::HashMap<u32, u32> = [8080, 5353]
        .into_iter()
        .flat_map(|p| {
            let (x, y) = (backend_id(&node, b(0), p), backend_id(&node, b(1), p));
            [(x, y), (y, x)]
        })
        .collect();
    agent.stop_with(libc::SIGTERM);
    let layout = weir_datapath::PinLayout::new(node.bpffs());
    let right: Vec<(CtKey, CtEntry)> = weir_datapath::ct::Conntrack::open(&layout).expect("conntrack").entries().into_iter().filter(|(k, _)| !k.is_v4()).collect();
    assert!(right.len() >= 2 * (TCP_FLOWS + UDP_FLOWS), "both entries of every flow: {}", right.len());
    let reused: Vec<(CtKey, CtEntry)> = right
        .iter()
        .map(|(k, e)| {
            let mut e = *e;
            e.backend_id = other_backend.get(&e.backend_id).copied().unwrap_or_else(|| panic!("a backend of the service: {e:?}"));
            (*k, e)
        })
        .collect();
    pin_old(&node, "WEIR_CT", Some(3), &reused);
    std::fs::remove_file(pin(&node, "WEIR_CT6_MASQ")).expect("unpin the masqueraded entries' map");

    restart(&mut agent);
    let log = agent.log_text();
    let line = log.lines().rfind(|l| l.contains("migrated a pinned map") && l.contains("map=WEIR_CT ")).unwrap_or_else(|| panic!("WEIR_CT migrated:\n{log}"));
    assert!(line.contains("from_version=3") && line.contains("dropped=0") && line.contains(&format!("renamed={} ", right.len())), "every entry renamed: {line}");
    for (k, e) in &right {
        assert_eq!(widened(&node, k).as_ref(), Some(e), "named by its own backend again: {k:?}");
    }
    let failed = flows.round("after the migration");
    assert!(failed.is_empty(), "every flow kept its backend:\n{}", failed.join("\n"));
}

/// Starts the agent again without the stall, and waits for its sync.
fn restart(agent: &mut weir_tests::Agent) {
    agent.unset_env(STALL);
    let synced = agent.log_text().matches("initial sync").count();
    agent.restart_with(&[]);
    agent.wait_for_log("initial sync", synced + 1);
}
