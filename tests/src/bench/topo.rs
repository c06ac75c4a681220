//! One benchmark topology: a node namespace, a client pod and three
//! backend pods (TCP servers, an iperf3 server), and N services, served by
//! one of the three dataplanes, over one address family (for IPv6 the
//! pods are dual-stack, and the services, their endpoints and the
//! baselines' rules IPv6).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    baseline::{self, Proto, Svc},
    concurrent,
    udp_sinks::UdpSinks,
};
use crate::{
    agent::Agent,
    cmd,
    netpol::Family,
    traffic::unspecified,
    Node, Pod,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    Weir,
    Iptables,
    Nftables,
}

impl Dataplane {
    pub const ALL: [Dataplane; 3] = [Dataplane::Weir, Dataplane::Iptables, Dataplane::Nftables];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Weir => "weir",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        }
    }
}

/// The target services' address; load services live elsewhere.
pub const TARGET_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 255, 1);
pub const TARGET_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0xff, 1);
pub const SHORT_PORT: u16 = 80;
pub const KEEPALIVE_PORT: u16 = 90;
pub const IPERF_PORT: u16 = 5201;
/// The UDP target services, one per backend-facing flow spread: the UDP
/// flood cycles over them (DNS-shaped: port 53 → the backends' sinks).
pub const UDP_VIPS: [Ipv4Addr; 3] = [Ipv4Addr::new(10, 96, 254, 1), Ipv4Addr::new(10, 96, 254, 2), Ipv4Addr::new(10, 96, 254, 3)];
pub const UDP_VIPS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0xfe, 1),
    Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0xfe, 2),
    Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0xfe, 3),
];
pub const UDP_PORT: u16 = 53;
/// Where each backend counts UDP datagrams that came through a ClusterIP.
pub const UDP_SINK_PORT: u16 = 5300;
/// Where each backend counts UDP datagrams sent to it pod to pod: another
/// port than the ClusterIP's backends, so that a direct flow never has the
/// translated tuple of a ClusterIP flow (the two sides use the same
/// source ports).
pub const UDP_DIRECT_PORT: u16 = 5301;
/// Services that are not load: three TCP target ports and the UDP targets.
pub const TARGETS: usize = 3 + UDP_VIPS.len();

/// Programming times of one dataplane at one scale.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProgramTimes {
    pub cold_ms: f64,
    pub one_change_ms: f64,
}

pub struct BenchTopo {
    pub family: Family,
    pub client: Pod,
    pub backends: Vec<Pod>,
    _servers: concurrent::Servers,
    /// Each backend's UDP sinks (ClusterIP side, direct side, in backend
    /// order), counting the datagrams they receive.
    pub sinks: UdpSinks,
    iperf: Option<Child>,
    pub agent: Option<Agent>,
    /// More flags for weir's agent (the benchmark's socket-level load
    /// balancing scope and cgroup).
    pub weir_args: Vec<String>,
    pub node: Node,
}

/// N services: N − [`TARGETS`] load services (three fake endpoints each),
/// then the target service ports, last (the worst place for a linear
/// scan).
/// The services are of the backends' family.
pub fn services(n: usize, backends: &[IpAddr]) -> Vec<Svc> {
    let family = if backends.first().is_some_and(IpAddr::is_ipv6) { Family::V6 } else { Family::V4 };
    let load = n.saturating_sub(TARGETS);
    let mut v: Vec<Svc> = (0..load)
        .map(|i| Svc {
            name: format!("load/svc-{i}:http"),
            vip: load_vip(family, i),
            port: 80,
            endpoints: (0..3u32).map(|j| (load_endpoint(family, i as u32 * 3 + j), 8080)).collect(),
            node_port: None,
            proto: Proto::Tcp,
        })
        .collect();
    let eps = |p: u16| backends.iter().map(|b| (*b, p)).collect::<Vec<_>>();
    let target = target_vip(family);
    let tcp = |name: &str, port: u16, endpoints| Svc { name: format!("bench/target:{name}"), vip: target, port, endpoints, node_port: None, proto: Proto::Tcp };
    for (i, vip) in udp_vip_addrs(family).into_iter().enumerate() {
        v.push(Svc { name: format!("bench/dns-{i}:dns"), vip, port: UDP_PORT, endpoints: eps(UDP_SINK_PORT), node_port: None, proto: Proto::Udp });
    }
    v.push(tcp("short", SHORT_PORT, eps(8080)));
    v.push(tcp("keepalive", KEEPALIVE_PORT, eps(9000)));
    v.push(tcp("iperf", IPERF_PORT, vec![(backends[0], IPERF_PORT)]));
    v
}

/// Load service `i`'s cluster IP: 10.97.0.1 onwards, counted as a u32 so
/// that 100,000 services get 100,000 addresses, none of them a target's
/// (10.96.254.0/24, 10.96.255.0/24); over IPv6, fd00:10:97::1 onwards.
pub fn load_vip(family: Family, i: usize) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + 1 + i as u32).into(),
        Family::V6 => Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x10, 0x97, 0, 0, 0, 0, 0)) + 1 + i as u128).into(),
    }
}

/// Load endpoint `k` (no pod answers there: load services are never dialled).
fn load_endpoint(family: Family, k: u32) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::new(10, 245, (k / 250 % 250) as u8, (k % 250 + 1) as u8).into(),
        Family::V6 => Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x10, 0x245, 0, 0, 0, 0, 0)) + 1 + u128::from(k)).into(),
    }
}

/// The target services' cluster IP.
pub fn target_vip(family: Family) -> IpAddr {
    match family {
        Family::V4 => TARGET_VIP.into(),
        Family::V6 => TARGET_VIP6.into(),
    }
}

/// The UDP target services' cluster IPs.
pub fn udp_vip_addrs(family: Family) -> [IpAddr; 3] {
    match family {
        Family::V4 => UDP_VIPS.map(IpAddr::from),
        Family::V6 => UDP_VIPS6.map(IpAddr::from),
    }
}

/// A pod's IPv6 address beside its IPv4 10.244.0.`last`.
fn pod_v6(last: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, u16::from(last))
}

/// Kubernetes YAML (Service + EndpointSlice) for weir's standalone source.
pub fn yaml(s: &Svc, idx: usize) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: s{idx}, namespace: bench}}\nspec:\n  clusterIP: {}\n  ports: [{{name: p, port: {}, protocol: {}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{idx}-1, namespace: bench, labels: {{kubernetes.io/service-name: s{idx}}}}}\naddressType: {}\nports: [{{name: p, port: {}, protocol: {}}}]\nendpoints:\n",
        s.vip, s.port, s.proto.k8s(), if s.vip.is_ipv6() { "IPv6" } else { "IPv4" }, s.endpoints.first().map_or(0, |e| e.1), s.proto.k8s()
    );
    for (a, _) in &s.endpoints {
        let _ = writeln!(y, "- addresses: [{a}]");
    }
    y.push_str("---\n");
    y
}

fn took_us(line: &str) -> Option<f64> {
    line.split_whitespace().find_map(|w| w.strip_prefix("took_us=")).and_then(|v| v.parse().ok())
}

impl BenchTopo {
    pub fn new(family: Family) -> Self {
        let node = Node::new();
        let mut client = node.pod("client", Ipv4Addr::new(10, 244, 0, 2));
        // Short connections leave the client's ports in TIME_WAIT; without
        // reuse, connect() ends up searching for a free port for
        // milliseconds, which would measure the port allocator.
        client.ns().sysctl("net.ipv4.tcp_tw_reuse", "1");
        // Short connections at tens of thousands per second need more
        // ports than the default range holds in TIME_WAIT.
        client.ns().sysctl("net.ipv4.ip_local_port_range", "1024 65535");
        let mut backends: Vec<Pod> = (1..=3).map(|i| node.pod(&format!("b{i}"), Ipv4Addr::new(10, 244, 0, 10 + i))).collect();
        if family == Family::V6 {
            client.add_v6(&node, pod_v6(2));
            for (i, b) in backends.iter_mut().enumerate() {
                b.add_v6(&node, pod_v6(11 + i as u8));
            }
        }
        let any = unspecified(&target_vip(family));
        let servers = concurrent::serve(&backends.iter().map(|b| (b.ns(), b.name.as_str())).collect::<Vec<_>>(), any, 8080, 9000);
        let sinks = UdpSinks::start(&backends.iter().flat_map(|b| [(b.ns(), any, UDP_SINK_PORT), (b.ns(), any, UDP_DIRECT_PORT)]).collect::<Vec<_>>());
        let iperf = Command::new("nsenter")
            .arg(format!("--net={}", backends[0].ns().path().display()))
            .args(["iperf3", "-s", "-p", "5201", "-B", &any.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        std::thread::sleep(Duration::from_millis(200));
        Self { family, client, backends, _servers: servers, sinks, iperf, agent: None, weir_args: Vec::new(), node }
    }

    /// A pod's address of the topology's family.
    fn addr_of(&self, p: &Pod) -> IpAddr {
        match (self.family, p.ip6) {
            (Family::V6, Some(a)) => a.into(),
            _ => p.ip.into(),
        }
    }

    pub fn client_ip(&self) -> IpAddr {
        self.addr_of(&self.client)
    }

    pub fn backend_ips(&self) -> Vec<IpAddr> {
        self.backends.iter().map(|b| self.addr_of(b)).collect()
    }

    /// The target services' cluster IP.
    pub fn target_vip(&self) -> IpAddr {
        target_vip(self.family)
    }

    /// The backends at `port`, pod to pod: the direct path's destinations,
    /// the same servers a ClusterIP spreads over.
    pub fn direct(&self, port: u16) -> Vec<SocketAddr> {
        self.backend_ips().into_iter().map(|b| SocketAddr::from((b, port))).collect()
    }

    /// The UDP flood's destinations through the ClusterIPs.
    pub fn udp_vips(&self) -> Vec<SocketAddr> {
        udp_vip_addrs(self.family).iter().map(|v| SocketAddr::from((*v, UDP_PORT))).collect()
    }

    /// The UDP flood's destinations pod to pod: the backends' sinks.
    pub fn udp_direct(&self) -> Vec<SocketAddr> {
        self.direct(UDP_DIRECT_PORT)
    }

    /// Programs `svcs` with `dp`; returns cold and one-change times, or
    /// why the dataplane did not program them (not within `limit`, or the
    /// tool refused them).
    pub fn program(&mut self, dp: Dataplane, svcs: &[Svc], limit: Duration) -> Result<ProgramTimes, String> {
        match dp {
            Dataplane::Weir => self.program_weir(svcs, limit),
            Dataplane::Iptables => self.program_iptables(svcs, limit),
            Dataplane::Nftables => self.program_nft(svcs, limit),
        }
    }

    fn program_weir(&mut self, svcs: &[Svc], limit: Duration) -> Result<ProgramTimes, String> {
        // Load services in files of 100; the target services in a file of their own.
        let (load, targets) = svcs.split_at(svcs.len() - TARGETS);
        for (f, chunk) in load.chunks(100).enumerate() {
            let body: String = chunk.iter().enumerate().map(|(i, s)| yaml(s, f * 100 + i)).collect();
            self.node.write_source(&format!("load-{f:04}.yaml"), body.as_bytes());
        }
        let body: String = targets.iter().enumerate().map(|(i, s)| yaml(s, 1_000_000 + i)).collect();
        self.node.write_source("targets.yaml", body.as_bytes());
        let n = svcs.len() as u64;
        let slots = (n * 307 + 4096).max(1 << 20).to_string();
        let frontends = (2 * n + 4096).max(u64::from(weir_common::maps::FRONTENDS_MAX_ENTRIES)).to_string();
        let mut args = vec![
            "--lb-table-slots",
            &slots,
            "--frontends-max-entries",
            &frontends,
            "--resync-interval",
            "3600",
            // The client pod opens more flows than the default per-pod
            // conntrack quota (32,768 entries) holds; the quota is a
            // defence against one pod filling the table, not a cost.
            "--ct-max-per-endpoint",
            "0",
        ];
        args.extend(self.weir_args.iter().map(String::as_str));
        let mut agent = self.node.start_agent_with(&args);
        if !agent.log_count_within("initial sync", 1, limit) {
            return Err(format!("weir-agent had not synced after {:.0} s", limit.as_secs_f64()));
        }
        for p in std::iter::once(&self.client).chain(&self.backends) {
            agent.wait_attached(&p.host_if, p.host_ifindex);
        }
        let log = agent.log_text();
        let cold_ms = log.lines().find(|l| l.contains("initial sync")).and_then(took_us).unwrap_or(0.0) / 1e3;
        // One change: an endpoint of the short-connection target leaves.
        let short = targets.len() - 3;
        let mut changed = targets.to_vec();
        changed[short].endpoints.pop();
        let before = log.matches("reconciled").count();
        let body: String = changed.iter().enumerate().map(|(i, s)| yaml(s, 1_000_000 + i)).collect();
        self.node.write_source("targets.yaml", body.as_bytes());
        if !agent.log_count_within("reconciled", before + 1, limit) {
            return Err(format!("weir-agent had not reconciled one change after {:.0} s", limit.as_secs_f64()));
        }
        let one_change_ms = agent.log_text().lines().filter(|l| l.contains("reconciled")).nth(before).and_then(took_us).unwrap_or(0.0) / 1e3;
        // Restore the target set.
        let body: String = targets.iter().enumerate().map(|(i, s)| yaml(s, 1_000_000 + i)).collect();
        self.node.write_source("targets.yaml", body.as_bytes());
        if !agent.log_count_within("reconciled", before + 2, limit) {
            return Err(format!("weir-agent had not reconciled the restore after {:.0} s", limit.as_secs_f64()));
        }
        self.agent = Some(agent);
        Ok(ProgramTimes { cold_ms, one_change_ms })
    }

    /// Runs `argv` in the node namespace with `input` on stdin; its time
    /// in ms, or why not: it had not finished within `limit` (it is killed
    /// then) or it failed.
    fn timed_stdin(&self, argv: &[&str], input: &str, limit: Duration) -> Result<f64, String> {
        let net = format!("--net={}", self.node.ns().path().display());
        let err_path = std::env::temp_dir().join(crate::names::unique("weir-bench-stderr"));
        let err = std::fs::File::create(&err_path).expect("stderr file");
        let mut c = Command::new("nsenter");
        c.arg(&net).args(argv).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(err);
        let start = Instant::now();
        let mut child = c.spawn().expect("spawn");
        // Written from a thread, so that a tool stuck before reading all
        // its input is still stopped at the limit.
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_string();
        let writer = std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(input.as_bytes());
        });
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = start.elapsed().as_secs_f64() * 1e3;
        let _ = writer.join();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        let Some(status) = status else {
            return Err(format!("`{}` had not finished after {:.0} s", argv.join(" "), limit.as_secs_f64()));
        };
        if !status.success() {
            return Err(format!("`{}` failed ({status}): {}", argv.join(" "), stderr.trim()));
        }
        Ok(took)
    }

    fn program_iptables(&mut self, svcs: &[Svc], limit: Duration) -> Result<ProgramTimes, String> {
        let restore = match self.family {
            Family::V4 => "iptables-legacy-restore",
            Family::V6 => "ip6tables-legacy-restore",
        };
        let cold_ms = self.timed_stdin(&[restore], &baseline::iptables_restore(svcs), limit)?;
        let mut changed = svcs[svcs.len() - 3].clone();
        changed.endpoints.pop();
        let one_change_ms = self.timed_stdin(&[restore, "--noflush"], &baseline::iptables_one_change(svcs, &changed), limit)?;
        // Back to the full target set (not timed).
        self.timed_stdin(&[restore], &baseline::iptables_restore(svcs), limit)?;
        Ok(ProgramTimes { cold_ms, one_change_ms })
    }

    fn program_nft(&mut self, svcs: &[Svc], limit: Duration) -> Result<ProgramTimes, String> {
        let cold_ms = self.timed_stdin(&["nft", "-f", "-"], &baseline::nft_script(svcs), limit)?;
        let mut changed = svcs[svcs.len() - 3].clone();
        changed.endpoints.pop();
        let one_change_ms = self.timed_stdin(&["nft", "-f", "-"], &baseline::nft_one_change(&changed), limit)?;
        self.timed_stdin(&["nft", "-f", "-"], &baseline::nft_one_change(&svcs[svcs.len() - 3]), limit)?;
        Ok(ProgramTimes { cold_ms, one_change_ms })
    }

    /// The node agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref()?.pid()
    }

    /// The agent's resident memory, if weir is the dataplane.
    pub fn agent_rss_mib(&self) -> Option<f64> {
        let pid = self.agent_pid()?;
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}


impl Drop for BenchTopo {
    fn drop(&mut self) {
        if let Some(mut c) = self.iperf.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = cmd::output(&["true"]);
    }
}
