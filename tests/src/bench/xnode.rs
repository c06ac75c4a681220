//! Cross-node benchmark topology: the multi-node harness with a client
//! pod on node 0, a server pod on node 1 (TCP servers, an iperf3 server)
//! and the outside namespace as an external client, served by weir in
//! either routing mode or by a kernel-only baseline of the same mode on
//! the same topology:
//! - kernel native: one route per remote pod CIDR via the node, and
//!   kube-proxy-style rules (iptables or nftables mode) for the ClusterIP
//!   and its NodePorts (eTP Cluster: masqueraded);
//! - kernel VXLAN: a kernel VXLAN device per node (same VNI port and MTU
//!   as weir's), a route, a permanent neighbour and an fdb entry per
//!   remote node (as Flannel programs them), and the same rules.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::baseline::{self, Proto, Svc};
use crate::{
    cluster::Cluster,
    traffic::{tcp_server, Reply, Server},
    Pod,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    WeirNative,
    /// Kernel routes and kube-proxy's iptables mode.
    KernelNative,
    /// Kernel routes and kube-proxy's nftables mode.
    NftNative,
    WeirVxlan,
    KernelVxlan,
    NftVxlan,
    /// weir in native routing on a fabric made to behave like a wire for
    /// XDP (see `Cluster::fabric_like_a_wire`), tc only: the XDP row's
    /// baseline.
    WeirWire,
    /// The same with `--xdp`.
    WeirXdp,
}

impl Setup {
    pub const ALL: [Setup; 8] =
        [Setup::WeirNative, Setup::KernelNative, Setup::NftNative, Setup::WeirVxlan, Setup::KernelVxlan, Setup::NftVxlan, Setup::WeirWire, Setup::WeirXdp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::WeirNative => "weir-native",
            Self::KernelNative => "kernel-native",
            Self::NftNative => "nftables-native",
            Self::WeirVxlan => "weir-vxlan",
            Self::KernelVxlan => "kernel-vxlan",
            Self::NftVxlan => "nftables-vxlan",
            Self::WeirWire => "weir-native-wire",
            Self::WeirXdp => "weir-native-xdp",
        }
    }

    pub fn mode(self) -> &'static str {
        match self {
            Self::WeirNative | Self::KernelNative | Self::NftNative | Self::WeirWire | Self::WeirXdp => "native",
            Self::WeirVxlan | Self::KernelVxlan | Self::NftVxlan => "vxlan",
        }
    }

    pub fn is_weir(self) -> bool {
        matches!(self, Self::WeirNative | Self::WeirVxlan | Self::WeirWire | Self::WeirXdp)
    }

    /// The XDP comparison's setups, measured on the NodePort path only.
    pub fn is_xdp_pair(self) -> bool {
        matches!(self, Self::WeirWire | Self::WeirXdp)
    }

    fn nftables(self) -> bool {
        matches!(self, Self::NftNative | Self::NftVxlan)
    }

    /// The kernel routing of the baselines (Kernel* and Nft* alike).
    fn kernel_routing(self) -> Setup {
        match self.mode() {
            "native" => Self::KernelNative,
            _ => Self::KernelVxlan,
        }
    }
}

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 250, 1);
pub const SHORT_PORT: u16 = 80;
pub const KEEPALIVE_PORT: u16 = 90;
pub const IPERF_PORT: u16 = 5201;
/// The services' NodePorts on node 0 (eTP Cluster), for the outside.
pub const SHORT_NODE_PORT: u16 = 30080;
pub const KEEPALIVE_NODE_PORT: u16 = 30090;
pub const IPERF_NODE_PORT: u16 = 30201;

pub struct XnodeTopo {
    pub client: Pod,
    pub server: Pod,
    _servers: Vec<Server>,
    iperf: Option<Child>,
    pub cluster: Cluster,
}

fn services(server: Ipv4Addr) -> Vec<Svc> {
    let (vip, server) = (VIP.into(), server.into());
    vec![
        Svc { name: "bench/xnode:short".into(), vip, port: SHORT_PORT, endpoints: vec![(server, 8080)], node_port: Some(SHORT_NODE_PORT), proto: Proto::Tcp },
        Svc { name: "bench/xnode:keepalive".into(), vip, port: KEEPALIVE_PORT, endpoints: vec![(server, 9000)], node_port: Some(KEEPALIVE_NODE_PORT), proto: Proto::Tcp },
        Svc { name: "bench/xnode:iperf".into(), vip, port: IPERF_PORT, endpoints: vec![(server, 5201)], node_port: Some(IPERF_NODE_PORT), proto: Proto::Tcp },
    ]
}

/// A NodePort Service and its EndpointSlice, for weir.
fn node_port_yaml(s: &Svc, idx: usize) -> String {
    let (ep, tport) = s.endpoints.first().copied().unwrap_or((Ipv4Addr::UNSPECIFIED.into(), 0));
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: x{idx}, namespace: bench}}\nspec:\n  type: NodePort\n  clusterIP: {}\n  ports: [{{name: p, port: {}, nodePort: {}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: x{idx}-1, namespace: bench, labels: {{kubernetes.io/service-name: x{idx}}}}}\n\
         addressType: IPv4\nports: [{{name: p, port: {tport}}}]\nendpoints:\n- addresses: [{ep}]\n---\n",
        s.vip,
        s.port,
        s.node_port.unwrap_or_default()
    )
}

fn vtep_mac(i: usize) -> String {
    format!("02:00:00:00:01:{:02x}", i + 1)
}

impl XnodeTopo {
    pub fn new(setup: Setup) -> Self {
        let mut args = vec!["--routing", setup.mode(), "--resync-interval", "3600"];
        if setup == Setup::WeirXdp {
            args.push("--xdp");
        }
        let mut cluster = Cluster::bare(2, &args);
        if setup.is_xdp_pair() {
            cluster.fabric_like_a_wire();
        }
        if setup.is_weir() {
            for i in 0..2 {
                cluster.start_agent(i);
            }
        } else {
            kernel_routes(&cluster, setup.kernel_routing());
        }
        let client = cluster.nodes[0].pod("client", 10);
        client.ns().sysctl("net.ipv4.tcp_tw_reuse", "1");
        cluster.outside.sysctl("net.ipv4.tcp_tw_reuse", "1");
        let server = cluster.nodes[1].pod("server", 20);
        let servers = vec![tcp_server(server.ns(), 8080, Reply::Name("server".into())), tcp_server(server.ns(), 9000, Reply::NamePerLine("server".into()))];
        let iperf = Command::new("nsenter")
            .arg(format!("--net={}", server.ns().path().display()))
            .args(["iperf3", "-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let svcs = services(server.ip);
        if setup.is_weir() {
            let body: String = svcs.iter().enumerate().map(|(i, s)| node_port_yaml(s, i)).collect();
            cluster.write("xnode.yaml", &body);
            let want = format!("{}:{IPERF_NODE_PORT}", cluster.nodes[0].ip);
            cluster.wait_for("node 0 programs the services and their NodePorts", || {
                String::from_utf8_lossy(&cluster.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want)
            });
        } else if setup.nftables() {
            let script = baseline::nft_script_with_node_ports(&svcs, &[cluster.nodes[0].ip]);
            let net = format!("--net={}", cluster.nodes[0].node.ns().path().display());
            let mut c = Command::new("nsenter");
            c.args([net.as_str(), "nft", "-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
            let mut child = c.spawn().expect("nft");
            {
                use std::io::Write as _;
                child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("rules");
            }
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "nft -f: {}", String::from_utf8_lossy(&out.stderr));
        } else {
            let net = format!("--net={}", cluster.nodes[0].node.ns().path().display());
            let mut c = Command::new("nsenter");
            c.args([net.as_str(), "iptables-legacy-restore"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
            let mut child = c.spawn().expect("iptables-legacy-restore");
            {
                use std::io::Write as _;
                child.stdin.take().expect("stdin").write_all(baseline::iptables_restore(&svcs).as_bytes()).expect("rules");
            }
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "iptables-legacy-restore: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
        Self { client, server, _servers: servers, iperf, cluster }
    }
}

/// The kernel-only routes between the two nodes' pod CIDRs.
fn kernel_routes(c: &Cluster, setup: Setup) {
    for (i, n) in c.nodes.iter().enumerate() {
        let ns = n.node.ns();
        if setup == Setup::KernelVxlan {
            ns.ip(&["link", "add", "vxk", "address", &vtep_mac(i), "type", "vxlan", "id", "42", "dstport", "8472", "dev", "eth0", "nolearning"]);
            ns.ip(&["link", "set", "vxk", "mtu", "1450", "up"]);
        }
        for (j, other) in c.nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let cidr = other.pod_cidr();
            match setup {
                Setup::KernelVxlan => {
                    // The remote VTEP is the remote CIDR's .0, as Flannel does.
                    let vtep = format!("10.244.{}.0", j + 1);
                    ns.ip(&["route", "add", &cidr, "via", &vtep, "dev", "vxk", "onlink"]);
                    ns.ip(&["neigh", "add", &vtep, "lladdr", &vtep_mac(j), "dev", "vxk", "nud", "permanent"]);
                    ns.exec(&["bridge", "fdb", "append", &vtep_mac(j), "dev", "vxk", "dst", &other.ip.to_string()]);
                }
                _ => {
                    ns.ip(&["route", "add", &cidr, "via", &other.ip.to_string()]);
                }
            }
        }
    }
}

impl Drop for XnodeTopo {
    fn drop(&mut self) {
        if let Some(mut c) = self.iperf.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
