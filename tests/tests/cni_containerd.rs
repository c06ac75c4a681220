//! weir-cni under a real containerd: `ctr run --cni` containers get their
//! network from weir-cni (installed by `weir-agent --install-cni`), reach
//! each other and a ClusterIP that weir-agent load-balances (a
//! dual-stack container, a dual-stack Service over both families), and
//! leave nothing behind when they are deleted.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use weir_tests::{
    containerd::{global_cni_lock, wait_record, CniInstall, Containerd, LEASES_DIR, RECORDS_DIR},
    services::{yaml_dual_stack_service, yaml_service},
    Node,
};

const POD_CIDR: &str = "10.244.40.0/24";
const POD_CIDR6: &str = "fd00:10:244:40::/64";
const T: Duration = Duration::from_secs(20);

fn ip_of(record: &serde_json::Value) -> String {
    record["ips"][0].as_str().expect("record has an IP").to_string()
}

fn weir_links(node: &Node) -> Vec<String> {
    node.ns().links_with_prefix("weir")
}

fn pod_routes(node: &Node) -> Vec<String> {
    let v4 = node.ns().ip(&["route", "show"]);
    let v6 = node.ns().ip(&["-6", "route", "show"]);
    v4.lines().chain(v6.lines()).filter(|l| l.starts_with("10.244.40.") || l.starts_with("fd00:10:244:40:")).map(str::to_string).collect()
}

fn leases() -> Vec<String> {
    std::fs::read_dir(LEASES_DIR)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).filter(|n| n.starts_with("10.") || n.starts_with("fd00:")).collect())
        .unwrap_or_default()
}

fn records() -> usize {
    std::fs::read_dir(RECORDS_DIR).map(|rd| rd.count()).unwrap_or(0)
}

/// A node with containerd and weir-cni installed, holding the host's CNI
/// directories. Fields drop in order: containerd, the install, the node,
/// the lock last.
struct Setup {
    ctrd: Containerd,
    _cni: CniInstall,
    node: Node,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    fn new() -> Self {
        Self::with_cidrs(POD_CIDR)
    }

    /// With `--pod-cidr cidrs` (one, or one per family comma-separated).
    fn with_cidrs(cidrs: &str) -> Self {
        let lock = global_cni_lock();
        let node = Node::new();
        let cni = CniInstall::new(cidrs);
        let ctrd = Containerd::start(&node);
        Self { ctrd, _cni: cni, node, _lock: lock }
    }

    /// No link, route, lease, record, lock, container or CNI netns left.
    fn assert_nothing_left(&self) {
        let node = &self.node;
        assert!(weir_links(node).is_empty(), "no links left: {:?}", weir_links(node));
        assert!(pod_routes(node).is_empty(), "no routes left: {:?}", pod_routes(node));
        assert!(leases().is_empty(), "no leases left: {:?}", leases());
        assert_eq!(records(), 0, "no records or locks left");
        let containers = self.ctrd.ctr(&["containers", "ls", "-q"]);
        assert!(containers.trim().is_empty(), "no containers left: {containers}");
        assert!(
            !Path::new("/var/run/netns").read_dir().is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("cni-")))),
            "no CNI netns left"
        );
    }
}

#[test]
fn a_container_gets_its_ip_and_routes_and_deleting_it_removes_veth_route_and_lease() {
    let t = Setup::new();
    let (node, ctrd) = (&t.node, &t.ctrd);
    let c = ctrd.spawn("c1", "ip addr show eth0; ip route; sleep 30");
    let rec = wait_record(&c);
    let ip = ip_of(&rec);
    let host = rec["hostVeth"].as_str().expect("host veth").to_string();
    std::thread::sleep(Duration::from_millis(300));
    let out = c.output();
    assert!(out.contains(&format!("inet {ip}/32")), "the pod IP as /32 on eth0:\n{out}");
    assert!(out.contains("default via 169.254.1.1 dev eth0 onlink"), "default route via 169.254.1.1:\n{out}");
    assert!(weir_links(node).contains(&host), "host veth {host} exists");
    assert!(pod_routes(node).iter().any(|r| r.starts_with(&format!("{ip} dev {host}"))), "{:?}", pod_routes(node));
    assert!(leases().contains(&ip), "host-local leased {ip}: {:?}", leases());

    c.stop();
    assert!(weir_links(node).is_empty(), "veth removed: {:?}", weir_links(node));
    assert!(pod_routes(node).is_empty(), "route removed: {:?}", pod_routes(node));
    assert!(!leases().contains(&ip), "lease released: {:?}", leases());
    assert_eq!(records(), 0, "record removed");
}

#[test]
fn containers_reach_each_other_and_a_clusterip_served_by_weir_agent() {
    let t = Setup::new();
    let (node, ctrd) = (&t.node, &t.ctrd);
    let mut agent = node.start_agent();
    let server = ctrd.spawn("srv", "while true; do echo hello-from-srv | nc -l -p 8080; done");
    let srv_ip: Ipv4Addr = ip_of(&wait_record(&server)).parse().expect("ip");
    let host = wait_record(&server)["hostVeth"].as_str().expect("veth").to_string();
    let ifindex = node.ns().ifindex(&host);
    agent.wait_attached(&host, ifindex);

    let (ok, out) = ctrd.run_to_end("cli1", &format!("nc -w 3 {srv_ip} 8080 </dev/null"), T);
    assert!(ok && out.contains("hello-from-srv"), "container to container:\n{out}");

    let vip = Ipv4Addr::new(10, 96, 40, 10);
    node.write_source("srv.yaml", yaml_service("srv", vip, 80, "TCP", 8080, &[(srv_ip, true, true, false)]).as_bytes());
    agent.wait_for_log("reconciled", 1);
    let (ok, out) = ctrd.run_to_end("cli2", &format!("nc -w 3 {vip} 80 </dev/null"), T);
    assert!(ok && out.contains("hello-from-srv"), "container to ClusterIP:\n{out}");
    server.stop();
}

#[test]
fn a_dual_stack_container_gets_both_addresses_and_reaches_another_and_a_dual_stack_service_over_both_families() {
    let t = Setup::with_cidrs(&format!("{POD_CIDR},{POD_CIDR6}"));
    let (node, ctrd) = (&t.node, &t.ctrd);
    // The harness turns IPv6 off in its namespaces; a dual-stack node has it.
    for k in ["all.disable_ipv6", "default.disable_ipv6"] {
        node.ns().sysctl(&format!("net.ipv6.conf.{k}"), "0");
    }
    node.ns().sysctl("net.ipv6.conf.all.forwarding", "1");
    let mut agent = node.start_agent();
    let server = ctrd.spawn(&format!("srv46-{}", std::process::id()), "while true; do echo hello-from-srv | nc -l -p 8080; done");
    let rec = wait_record(&server);
    let ips: Vec<String> = rec["ips"].as_array().expect("ips").iter().filter_map(|i| i.as_str().map(str::to_string)).collect();
    let (v4, v6) = (ips.iter().find(|i| i.starts_with("10.244.40.")), ips.iter().find(|i| i.starts_with("fd00:10:244:40:")));
    let (Some(v4), Some(v6)) = (v4.cloned(), v6.cloned()) else { panic!("an address of each family: {rec}") };
    let host = rec["hostVeth"].as_str().expect("veth").to_string();
    agent.wait_attached(&host, node.ns().ifindex(&host));
    let routes = pod_routes(node);
    assert!(routes.iter().any(|r| r.starts_with(&format!("{v4} dev {host}"))) && routes.iter().any(|r| r.starts_with(&format!("{v6} dev {host}"))), "a host route per address: {routes:?}, {rec}, {}", server.output());

    // busybox's nc listens on IPv4 only: IPv6 is an echo answered by the
    // server's kernel.
    let script = format!("ip -6 addr show eth0; ip -6 route; nc -w 3 {v4} 8080 </dev/null && ping -6 -c 1 -W 3 {v6}");
    let (ok, out) = ctrd.run_to_end(&format!("cli46-{}", std::process::id()), &script, T);
    assert!(ok, "{out}");
    assert!(out.contains("/128 scope global"), "the client's IPv6 address as /128 on eth0:\n{out}");
    assert!(out.contains("default via fe80::1 dev eth0"), "default route via fe80::1:\n{out}");
    assert!(out.contains("hello-from-srv"), "container to container over IPv4:\n{out}");
    assert!(out.contains("1 packets received"), "and over IPv6:\n{out}");

    // A dual-stack Service in front of the server, reached over both
    // families from another dual-stack container.
    let (vip4, vip6) = (Ipv4Addr::new(10, 96, 40, 46), Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0x40, 0x46));
    let (srv4, srv6) = (v4.parse().expect("v4"), v6.parse().expect("v6"));
    let before = agent.log_text().matches("reconciled").count();
    node.write_source("srv46.yaml", yaml_dual_stack_service("srv46", vip4, vip6, &[("web", 80, 8080, "TCP")], &[(srv4, srv6)]).as_bytes());
    agent.wait_for_log("reconciled", before + 1);
    // The server is one `nc -l` at a time, restarted after each
    // connection: a connection in that gap is refused, so each family
    // gets a few tries. The client holds its side open for a second (a
    // client whose input ends at once may close before the greeting
    // arrives, which a loaded machine showed once), and a try that read
    // nothing counts as failed.
    let tries = |vip: String, tag: &str| {
        format!("for i in 1 2 3 4 5; do out=$(sleep 1 | nc -w 3 {vip} 80); if [ -n \"$out\" ]; then echo \"$out\"; echo {tag}; break; fi; sleep 1; done")
    };
    let script = format!("{}; {}", tries(vip4.to_string(), "via-v4"), tries(vip6.to_string(), "via-v6"));
    let (ok, out) = ctrd.run_to_end(&format!("svc46-{}", std::process::id()), &script, T);
    assert!(ok, "{out}");
    assert_eq!(out.matches("hello-from-srv").count(), 2, "the server answers through the ClusterIP of each family:\n{out}");
    assert!(out.find("via-v4") < out.find("via-v6"), "{out}");
    assert!(out.contains("via-v4") && out.contains("via-v6"), "{out}");
    server.stop();
    drop(agent);
    t.assert_nothing_left();
}

#[test]
fn a_container_whose_add_fails_leaves_nothing_behind() {
    // A dual-stack conflist on a node with IPv6 off: weir-cni's ADD fails
    // at the IPv6 host route, after the veth, the addresses and the
    // IPv4 route exist.
    let t = Setup::with_cidrs(&format!("{POD_CIDR},{POD_CIDR6}"));
    let dir = t.ctrd.dir().to_path_buf();
    let id = format!("fail-{}", std::process::id());
    let (ok, out) = t.ctrd.run_to_end(&id, "true", T);
    assert!(!ok, "the container must not start: {out}");
    assert!(out.contains("weir-cni") && out.contains("fd00:10:244:40:"), "the error names the plugin and the address: {out}");
    // What weir-cni made is gone already (ctr keeps the record of a
    // container that failed to start, as a kubelet would until it removes
    // the failed sandbox).
    let node = &t.node;
    assert!(weir_links(node).is_empty() && pod_routes(node).is_empty(), "no veth or route: {:?} {:?}", weir_links(node), pod_routes(node));
    assert!(leases().is_empty() && records() == 0, "no lease or record: {:?}", leases());
    // Its task never started and its rootfs is still mounted: the
    // harness's teardown (containerd stopped, its directory removed)
    // must take that mount too.
    assert!(!t.ctrd.mounts_under_dir().is_empty(), "the failed task's rootfs is mounted");
    let cgroup = weir_datapath::cgroup::default_cgroup_root().map(|r| r.join("weir").join(&id));
    drop(t);
    // Nor a process: the task's `runc init` and its cgroup go with it.
    if let Some(cg) = cgroup {
        assert!(!cg.exists(), "the failed task's cgroup {} is gone with its process", cg.display());
    }
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let left: Vec<&str> = table.lines().filter(|l| l.contains(&*dir.to_string_lossy())).collect();
    assert!(left.is_empty(), "containerd's teardown leaves no mount behind: {left:?}");
}

#[test]
fn twenty_containers_created_and_deleted_leak_nothing() {
    let t = Setup::new();
    let ctrd = &t.ctrd;
    for i in 0..20 {
        let (ok, out) = ctrd.run_to_end(&format!("loop{i}"), "ip addr show eth0 | grep -q 'inet 10.244.40.'", T);
        assert!(ok, "container {i} got an address:\n{out}");
    }
    t.assert_nothing_left();
}

#[test]
fn twenty_containers_started_and_deleted_at_once_leak_nothing() {
    let t = Setup::new();
    let ctrd = &t.ctrd;
    // 20 `ctr run --cni --rm` at once (20 overlapping ADDs through one
    // weir-cni data directory and one host-local), each printing its
    // address, then all 20 killed at once (20 overlapping DELs).
    let runs: Vec<_> = (0..20).map(|i| ctrd.spawn(&format!("par{i}"), "ip -o -4 addr show eth0; sleep 60")).collect();
    let start = std::time::Instant::now();
    let mut ips = Vec::new();
    for c in &runs {
        let ip = loop {
            let out = c.output();
            if let Some(ip) = out.split("inet ").nth(1).and_then(|r| r.split('/').next()).filter(|ip| ip.starts_with("10.244.40.")) {
                break ip.to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(90), "container {} got no address:\n{out}", c.id());
            std::thread::sleep(Duration::from_millis(50));
        };
        ips.push(ip);
    }
    std::thread::scope(|s| {
        for c in runs {
            s.spawn(move || c.stop());
        }
    });
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "20 distinct addresses: {ips:?}");
    t.assert_nothing_left();
}
