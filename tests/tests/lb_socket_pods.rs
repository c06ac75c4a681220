//! Socket-level load balancing for pods (`--socket-lb-namespaces=all`):
//! a pod's TCP connection to a ClusterIP is pointed at a backend at
//! connect, so its packets travel as pod-to-pod ones; a pod's UDP, and
//! what the socket path cannot fully serve, stays with the tc path;
//! policy judges the translated flow by its backend; a socket's reverse
//! entry lives as long as the socket; a pod churning sockets cannot evict
//! the node's reverse entries; and with `node` the pods' sockets are left
//! alone.
//!
//! The agent attaches its socket programs to a cgroup of the test's own
//! (`TestCgroup`), and the pods' sockets are opened by `weir-pod-socket`
//! processes in it: other tests' agents, sharing the host's hierarchy,
//! translate only their own node's sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use weir_common::addr::Addr;
use weir_datapath::{cgroup::SockRevNat, PinLayout};
use weir_tests::{
    netpol::{ip6_of, ip_of, NetpolCluster, P},
    pod_cgroup::{Probe, SockMode, TestCgroup},
    services::{ready, yaml_dual_stack_service, yaml_service},
};

const VIP4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x30);
const XA: P = P { ns: "x", pod: "a" };
const XB: P = P { ns: "x", pod: "b" };
const YA: P = P { ns: "y", pod: "a" };
const YB: P = P { ns: "y", pod: "b" };
const YC: P = P { ns: "y", pod: "c" };

fn cluster(cg: &TestCgroup) -> NetpolCluster {
    let args = cg.agent_args();
    NetpolCluster::with_agent_args(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A dual-stack service `web` on port 80 (TCP and UDP) with `backends`.
fn web(c: &NetpolCluster, backends: &[P]) {
    let b: Vec<(Ipv4Addr, Ipv6Addr)> = backends.iter().map(|p| (ip_of(*p), ip6_of(*p))).collect();
    let y = yaml_dual_stack_service("web", VIP4, VIP6, &[("t", 80, 80, "TCP"), ("u", 80, 80, "UDP")], &b);
    write_and_wait(c, "web.yaml", &y);
}

fn write_and_wait(c: &NetpolCluster, name: &str, yaml: &str) {
    let before = c.agent.log_text().matches("reconciled").count();
    c.node.write_source(name, yaml.as_bytes());
    let start = std::time::Instant::now();
    while c.agent.log_text().matches("reconciled").count() <= before {
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "the agent did not reconcile {name}:\n{}", c.agent.log_text());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn addr_of(p: P, v6: bool) -> IpAddr {
    if v6 { ip6_of(p).into() } else { ip_of(p).into() }
}

fn pod_named(name: &str) -> P {
    [XA, XB, YA, YB, YC].into_iter().find(|p| p.to_string() == name).unwrap_or_else(|| panic!("no pod answers {name:?}"))
}

/// The frontend the socket programs recorded for `probe`'s socket and the
/// backend that answered it, if they translated it.
fn translated(c: &NetpolCluster, probe: &Probe, mode: SockMode, v6: bool) -> Option<SocketAddr> {
    let (reply, _) = probe.result.as_ref().ok()?;
    let backend = addr_of(pod_named(reply), v6);
    let revnat = SockRevNat::open_pods(&PinLayout::new(c.node.bpffs())).expect("the pods' socket reverse-translation map");
    let (a, port) = revnat.frontend_of(probe.cookie, Addr::from(backend), 80u16.to_be(), mode.proto())?;
    Some(SocketAddr::new(IpAddr::from(a), u16::from_be(port)))
}

/// Whether any backend of `web` holds a reverse translation for the socket.
fn any_translation(c: &NetpolCluster, probe: &Probe, mode: SockMode, v6: bool) -> bool {
    let revnat = SockRevNat::open_pods(&PinLayout::new(c.node.bpffs())).expect("the pods' socket reverse-translation map");
    [XA, XB, YA, YB, YC].into_iter().any(|p| revnat.frontend_of(probe.cookie, Addr::from(addr_of(p, v6)), 80u16.to_be(), mode.proto()).is_some())
}

#[test]
fn a_pods_connection_to_a_clusterip_is_pointed_at_a_backend_at_connect() {
    let cg = TestCgroup::new();
    let mut c = cluster(&cg);
    web(&c, &[XA, XB]);
    for v6 in [false, true] {
        let vip = SocketAddr::new(if v6 { IpAddr::from(VIP6) } else { IpAddr::from(VIP4) }, 80);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..12 {
            let held = cg.probe_held(c.pod(YA).ns(), SockMode::Tcp, vip.ip(), 80);
            let p = &held.probe;
            let (reply, peer) = p.result.clone().unwrap_or_else(|e| panic!("TCP to {vip}: {e:?}\n{}", c.agent.log_text()));
            assert!(reply == "x/a" || reply == "x/b", "TCP to {vip}: a backend answers: {reply}");
            assert_eq!(peer, vip, "getpeername names the frontend");
            assert_eq!(translated(&c, p, SockMode::Tcp, v6), Some(vip), "TCP to {vip}: the socket programs pointed the socket at {reply}");
            // The entry lives as long as the socket.
            let p = held.release();
            assert_eq!(translated(&c, &p, SockMode::Tcp, v6), None, "TCP to {vip}: the released socket's reverse entry is deleted");
            seen.insert(reply);
        }
        assert_eq!(seen.len(), 2, "both backends are chosen: {seen:?}");

        // UDP, unconnected or connected, stays with the tc path: the reply
        // still comes from the frontend, and no entry is made.
        for mode in [SockMode::Udp, SockMode::UdpConnected] {
            let held = cg.probe_held(c.pod(YA).ns(), mode, vip.ip(), 80);
            let p = &held.probe;
            let (reply, peer) = p.result.clone().unwrap_or_else(|e| panic!("{mode:?} to {vip}: {e:?}"));
            assert!((reply == "x/a" || reply == "x/b") && peer == vip, "{mode:?} via the tc path: {reply} from {peer}");
            assert!(!any_translation(&c, p, mode, v6), "{mode:?}: a pod's UDP socket is not translated");
        }
    }
    // Every socket is closed: the pods' table holds nothing, so sockets
    // churned by pods never fill it (and never evict a live one's entry).
    let pods_table = SockRevNat::open_pods(&PinLayout::new(c.node.bpffs())).expect("the pods' table");
    assert_eq!(pods_table.count(), 0, "24 connections made and closed leave no entry behind");

    // `weir explain` says what a pod's connect() meets, not only a raw packet.
    let explain = |proto: &str| -> serde_json::Value {
        let out = c.node.weir(&["explain", &format!("{}:40123", ip_of(YA)), &format!("{VIP4}:80/{proto}"), "-o", "json"]);
        assert!(out.status.success(), "weir explain: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("weir explain -o json")
    };
    let tcp = explain("tcp");
    assert_eq!(tcp["at_connect"], serde_json::json!(true), "explain names the socket path for a pod's TCP: {tcp}");
    assert!(tcp["reason"].as_str().is_some_and(|r| r.contains("connect()")), "and says so: {tcp}");
    let udp = explain("udp");
    assert_eq!(udp["at_connect"], serde_json::json!(false), "a pod's UDP stays with the tc path: {udp}");

    // The node's own reverse entries live apart: a pod's connections
    // filling the pods' table leave them alone.
    let node_table = SockRevNat::open(&PinLayout::new(c.node.bpffs())).expect("the node's table");
    assert_eq!(node_table.count(), 0, "the pods' connections made no entry in the node's table");

    // With `node`, the pods' sockets are the tc path's again.
    let mut args = cg.agent_args();
    args[0] = "--socket-lb-namespaces=node".into();
    c.agent.restart_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let held = cg.probe_held(c.pod(YA).ns(), SockMode::Tcp, VIP4, 80);
    let p = &held.probe;
    let (reply, peer) = p.result.clone().unwrap_or_else(|e| panic!("TCP with scope node: {e:?}"));
    assert!((reply == "x/a" || reply == "x/b") && peer == SocketAddr::new(VIP4.into(), 80), "TCP with scope node: {reply} from {peer}");
    assert!(!any_translation(&c, p, SockMode::Tcp, false), "with scope node a pod's TCP socket is not translated");
    drop(held);
    let out = c.node.weir(&["explain", &format!("{}:40123", ip_of(YA)), &format!("{VIP4}:80/tcp"), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("weir explain -o json");
    assert_eq!(v["at_connect"], serde_json::json!(false), "with scope node explain shows the tc path only: {v}");
}

#[test]
fn a_nodes_socket_keeps_its_reverse_entry_until_it_is_released() {
    let cg = TestCgroup::new();
    let c = cluster(&cg);
    web(&c, &[XA]);
    // The node's own address, for its processes to reach pods from.
    c.node.ns().ip(&["addr", "add", "192.168.100.1/32", "dev", "lo"]);
    c.node.ns().ip(&["addr", "add", "fd00:100::1/128", "dev", "lo", "nodad"]);
    let node_table = || SockRevNat::open(&PinLayout::new(c.node.bpffs())).expect("the node's table");
    for v6 in [false, true] {
        let vip = SocketAddr::new(if v6 { IpAddr::from(VIP6) } else { IpAddr::from(VIP4) }, 80);
        // The node's TCP and connected UDP sockets are translated at connect.
        for mode in [SockMode::Tcp, SockMode::UdpConnected] {
            let held = cg.probe_held(c.node.ns(), mode, vip.ip(), 80);
            let (reply, peer) = held.probe.result.clone().unwrap_or_else(|e| panic!("{mode:?} from the node to {vip}: {e:?}\n{}", c.agent.log_text()));
            assert_eq!((reply.as_str(), peer), ("x/a", vip), "{mode:?} from the node to {vip}");
            let entry = |p: &Probe| node_table().frontend_of(p.cookie, Addr::from(addr_of(XA, v6)), 80u16.to_be(), mode.proto());
            assert_eq!(entry(&held.probe), Some((Addr::from(vip.ip()), 80u16.to_be())), "{mode:?} {vip}: the live socket's entry names its frontend");
            let p = held.release();
            assert_eq!(entry(&p), None, "{mode:?} {vip}: the released socket's entry is deleted");
        }
    }
    assert_eq!(node_table().count(), 0, "no released socket leaves an entry behind");
}

#[test]
fn policy_judges_a_socket_translated_connection_by_its_backend() {
    let cg = TestCgroup::new();
    let mut c = cluster(&cg);
    web(&c, &[XA]);
    let np = |ns: &str, name: &str, spec: &str| {
        let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n")
    };
    c.apply(
        &(np("x", "a-from-yb", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n    podSelector:\n      matchLabels: {pod: b}")
            + &np("y", "c-to-z", "podSelector:\n  matchLabels: {pod: c}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: z}")),
    );
    for v6 in [false, true] {
        let vip: IpAddr = if v6 { VIP6.into() } else { VIP4.into() };
        for mode in [SockMode::Tcp, SockMode::Udp] {
            let tcp = mode == SockMode::Tcp;
            let held = cg.probe_held(c.pod(YB).ns(), mode, vip, 80);
            let p = &held.probe;
            assert_eq!(p.result.as_ref().map(|r| r.0.as_str()), Ok("x/a"), "{mode:?} {vip}: y/b is admitted by x/a's ingress");
            assert_eq!(translated(&c, p, mode, v6).is_some(), tcp, "{mode:?} {vip}: y/b's socket was translated (TCP only)");
            drop(held);
            // The attack: the socket is pointed at x/a at connect, and its
            // packets reach x/a's link as pod-to-pod ones; x/a's ingress
            // policy still refuses y/a, and y/c's egress (z only) still
            // refuses x/a.
            for from in [YA, YC] {
                let held = cg.probe_held(c.pod(from).ns(), mode, vip, 80);
                let p = &held.probe;
                assert!(p.result.is_err(), "{mode:?} {vip}: {from} must not reach x/a through the ClusterIP: {:?}", p.result);
                let revnat = SockRevNat::open_pods(&PinLayout::new(c.node.bpffs())).expect("revnat");
                assert_eq!(
                    revnat.frontend_of(p.cookie, Addr::from(addr_of(XA, v6)), 80u16.to_be(), mode.proto()).is_some(),
                    tcp,
                    "{mode:?} {vip}: {from}'s socket was translated (TCP), and policy denied it all the same"
                );
            }
        }
    }
    let out = c.node.weir(&["stats", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("weir stats -o json");
    assert!(v["drops"]["policy_denied"].as_u64().unwrap_or(0) > 0, "the denials are counted: {}", v["drops"]);
}

#[test]
fn a_pods_flow_the_socket_path_cannot_serve_is_left_to_the_tc_path() {
    let cg = TestCgroup::new();
    let c = cluster(&cg);
    let empty = Ipv4Addr::new(10, 96, 0, 31);
    let sticky = Ipv4Addr::new(10, 96, 0, 32);
    let affinity = yaml_service("sticky", sticky, 80, "TCP", 80, &ready(&[ip_of(XA), ip_of(XB)])).replacen("spec:\n", "spec:\n  sessionAffinity: ClientIP\n", 1);
    write_and_wait(&c, "svc.yaml", &(yaml_service("empty", empty, 80, "TCP", 80, &[]) + "---\n" + &affinity));

    // No endpoints: the tc path answers with a RST, as kube-proxy does
    // (the socket path could only fail the connect with EPERM).
    let p = cg.probe(c.pod(YA).ns(), SockMode::Tcp, empty, 80);
    assert_eq!(p.result.as_ref().err().and_then(|e| e.1), Some(libc::ECONNREFUSED), "no endpoints: connection refused, not EPERM: {:?}", p.result);
    // A port the ClusterIP does not serve: refused by the tc path too.
    let p = cg.probe(c.pod(YA).ns(), SockMode::Tcp, empty, 81);
    assert_ne!(p.result.as_ref().err().and_then(|e| e.1), Some(libc::EPERM), "an unknown port is the tc path's to refuse: {:?}", p.result);
    assert!(p.result.is_err(), "an unknown port is refused: {:?}", p.result);

    // ClientIP affinity is keyed by the pod's address, which a socket has
    // not chosen at connect: the tc path keeps the client on one backend.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let held = cg.probe_held(c.pod(YA).ns(), SockMode::Tcp, sticky, 80);
        let p = &held.probe;
        let (reply, _) = p.result.clone().unwrap_or_else(|e| panic!("affinity service: {e:?}"));
        assert!(!any_translation(&c, p, SockMode::Tcp, false), "an affinity service's connection is not translated at connect");
        seen.insert(reply);
    }
    assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
}

/// A connection that fails leaves no reverse entry behind once its socket
/// is released, however the pod connected and wherever the connect
/// failed: refused by the backend, without blocking (the socket keeps its
/// destination until released) or with a blocking `connect(2)`, after
/// which the kernel has already cleared the socket's destination port;
/// and before any SYN left (no route), where the socket never had one.
/// While the socket is open it holds its one entry, keyed by its cookie
/// alone, which is how `sock_release` names it whatever became of the
/// connect. Over IPv4, IPv6 and an IPv6 socket asking for the IPv4
/// frontend (v4-mapped). (Before layout v2 of the socket tables, a
/// sock_ops program deleted a refused connect's entry, and a connect
/// failing before its SYN left one behind for good: the last assertion
/// failed.)
#[test]
fn a_failed_connection_leaves_no_reverse_entry_behind() {
    let cg = TestCgroup::new();
    let c = cluster(&cg);
    let (v4, v6) = (Ipv4Addr::new(10, 96, 0, 33), Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x33));
    // x/a serves ports 80 and 81 only: port 80 of the service goes to 82,
    // where a SYN is answered with a RST; port 81 goes to 80, served.
    let y = yaml_dual_stack_service("closed", v4, v6, &[("t", 80, 82, "TCP"), ("s", 81, 80, "TCP")], &[(ip_of(XA), ip6_of(XA))]);
    write_and_wait(&c, "closed.yaml", &y);
    let table = SockRevNat::open_pods(&PinLayout::new(c.node.bpffs())).expect("the pods' socket reverse-translation map");
    let mapped = IpAddr::from(v4.to_ipv6_mapped());
    let vips = [(IpAddr::from(v4), false), (IpAddr::from(v6), true), (mapped, false)];
    // Without blocking and blocking, a connect to `vip`:`port` fails with
    // `errno`; the open socket holds its one entry, the released none.
    let fails_and_forgets = |vip: IpAddr, port: u16, errno: i32| {
        for mode in [SockMode::Tcp, SockMode::TcpBlocking] {
            let held = cg.probe_held(c.pod(YA).ns(), mode, vip, port);
            let got = held.probe.result.as_ref().err().and_then(|e| e.1);
            assert_eq!(got, Some(errno), "{mode:?} to {vip}:{port}: {:?}", held.probe.result);
            assert_eq!(table.count(), 1, "{mode:?} to {vip}:{port}: the failed socket, still open, holds its one entry");
            held.release();
            assert_eq!(table.count(), 0, "{mode:?} to {vip}:{port}: none once released");
        }
    };
    for (vip, v6) in vips {
        // The service's sockets are translated at connect: a blocking
        // connect to its served port holds an entry naming the frontend.
        let held = cg.probe_held(c.pod(YA).ns(), SockMode::TcpBlocking, vip, 81);
        if vip != mapped {
            assert_eq!(translated(&c, &held.probe, SockMode::TcpBlocking, v6), Some(SocketAddr::new(vip, 81)), "{vip}:81 is translated at connect: {:?}", held.probe.result);
        } else {
            assert!(held.probe.result.is_ok() && table.count() == 1, "{vip}:81 is translated at connect: {:?}, {} entries", held.probe.result, table.count());
        }
        held.release();
        assert_eq!(table.count(), 0, "{vip}:81: the released socket's entry is gone");
        fails_and_forgets(vip, 80, libc::ECONNREFUSED);
    }
    // No route out of the pod: the connect fails before its SYN, after
    // connect4 pointed it at x/a.
    c.pod(YA).ns().ip(&["route", "flush", "table", "main"]);
    c.pod(YA).ns().ip(&["-6", "route", "flush", "table", "main"]);
    for (vip, _) in vips {
        fails_and_forgets(vip, 81, libc::ENETUNREACH);
    }
}

/// An agent before this one kept the socket reverse tables in layout v1
/// (every entry keyed by the socket's cookie and its backend) and attached
/// a sock_ops program, `tcp_state`, whose link this build has no program
/// for. The next agent converts the tables (a TCP socket's entry keyed by
/// its cookie alone, its backend in the value), so a connection
/// translated before the upgrade still names its frontend and its entry
/// goes with its socket; and it removes the retired link, which otherwise
/// kept its program attached (and, here, an old `connect4` with it).
#[test]
fn an_upgrade_converts_the_socket_tables_and_detaches_the_retired_program() {
    let cg = TestCgroup::new();
    let mut c = cluster(&cg);
    web(&c, &[XA]);
    let held = cg.probe_held(c.pod(YA).ns(), SockMode::Tcp, VIP4, 80);
    assert_eq!(translated(&c, &held.probe, SockMode::Tcp, false), Some(SocketAddr::new(VIP4.into(), 80)), "translated at connect: {:?}", held.probe.result);
    let before = programs_on(cg.path());
    c.agent.stop_with(libc::SIGTERM);
    let layout = PinLayout::new(c.node.bpffs());
    assert_eq!(pin_pod_table_as_v1(&c), 1, "the live socket's entry, in layout v1");
    // A link pinned under the retired program's name, as an older agent
    // left `tcp_state`'s: here the running connect4's link, pinned twice.
    let links = c.node.bpffs().join("links");
    let retired = links.join("cgroup-tcp_state");
    weir_tests::cmd::run(&["bpftool", "link", "pin", "pinned", &links.join("cgroup-connect4").display().to_string(), &retired.display().to_string()]);
    c.agent.restart();
    c.agent.wait_synced();
    let log = c.agent.log_text();
    let line = log.lines().rfind(|l| l.contains("migrated a pinned map") && l.contains("map=WEIR_SOCK_REVNAT_POD ")).unwrap_or_else(|| panic!("the pods' table migrated:\n{log}"));
    assert!(line.contains("from_version=1") && line.contains("to_version=2") && line.contains("copied=1") && line.contains("dropped=0"), "{line}");
    assert_eq!(translated(&c, &held.probe, SockMode::Tcp, false), Some(SocketAddr::new(VIP4.into(), 80)), "the connection still names its frontend after the upgrade");
    assert!(!retired.exists(), "the retired program's link is removed");
    // A link whose last reference went is detached a moment later (its
    // release is deferred).
    let start = std::time::Instant::now();
    while programs_on(cg.path()) != before && start.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(programs_on(cg.path()), before, "the same programs on the cgroup, the old connect4 gone with the retired link");
    held.release();
    assert_eq!(SockRevNat::open_pods(&layout).expect("the pods' table").count(), 0, "the converted entry goes with its socket");
}

/// The BPF programs attached to the cgroup at `path` (their names).
fn programs_on(path: &std::path::Path) -> Vec<String> {
    let out = weir_tests::cmd::run(&["bpftool", "-j", "cgroup", "show", &path.display().to_string()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool cgroup show: {e}: {out}"));
    let mut names: Vec<String> = v.as_array().into_iter().flatten().filter_map(|p| p["name"].as_str().map(str::to_string)).collect();
    names.sort();
    names
}

/// Replaces the pods' socket reverse table by one in layout v1 holding
/// the same entries as a v1 agent keyed them (cookie and backend; the
/// value the frontend only), with a v1 record, as an older agent left it.
/// The running programs keep the current table. Returns how many entries
/// it holds.
fn pin_pod_table_as_v1(c: &NetpolCluster) -> usize {
    use weir_common::lb::{SockRevKey, SockRevValue};
    use weir_datapath::migrate::steps::sock_revnat_v1::SockRevValueV1;
    let name = weir_common::maps::SOCK_REVNAT_POD;
    let layout = PinLayout::new(c.node.bpffs());
    let pin = layout.map(name);
    let current: aya::maps::HashMap<_, SockRevKey, SockRevValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(&pin).expect("open"))).expect("the table");
    let entries: Vec<(SockRevKey, SockRevValue)> = current.iter().filter_map(Result::ok).collect();
    weir_tests::old_layout::pin_lru::<SockRevKey, SockRevValueV1>(&layout, name, 1, &pin, &[&pin], |old| {
        for (k, v) in &entries {
            let k1 = SockRevKey { addr: v.backend, port: v.backend_port, ..*k };
            old.insert(k1, SockRevValueV1 { addr: v.addr, port: v.port, _pad: 0 }, 0).expect("a v1 entry");
        }
    });
    entries.len()
}
