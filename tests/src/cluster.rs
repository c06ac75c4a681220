//! A simulated cluster on one kernel: N node namespaces, each with an
//! uplink `eth0` holding its InternalIP on one /24 (192.168.0.0/24), joined
//! by a bridge in a "fabric" namespace, plus an "outside" namespace on the
//! same fabric for clients outside the cluster. Every node runs its own
//! weir-agent (`--node-name`, `--bpffs`), and every agent reads one shared
//! object directory, as every agent of a cluster watches one API server.
//! No namespace has a default route: nothing leaves the machine.
//!
//! Node `i` (0-based) is `192.168.0.(11 + i)` with pod CIDR
//! `10.244.(i + 1).0/24`; the outside namespace is `192.168.0.200`.
//! [`Cluster::enable_ipv6`] adds IPv6 to the fabric: node `i` is also
//! `fd00:192:168::(11 + i)` (its Node object names both InternalIPs, and
//! the pod CIDR `fd00:10:244:(i + 1)::/64` beside the IPv4 one), the
//! outside `fd00:192:168::200`, all on one /64.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use crate::{agent::Agent, netns::NetNs, node::tempdir::TempDir, node::Node, pod::Pod};

/// The fabric's bridge.
const BRIDGE: &str = "br0";

/// One node of the cluster.
pub struct ClusterNode {
    // Field order: the agent stops before the node's namespace goes.
    agent: Option<Agent>,
    pub node: Node,
    pub index: usize,
    pub ip: Ipv4Addr,
    /// The uplink's IPv6 address, once [`Cluster::enable_ipv6`] gave it one.
    pub ip6: Option<Ipv6Addr>,
    /// The MTU pods of this node get (a tunnel's overhead off the uplink).
    pub pod_mtu: Option<u32>,
}

impl ClusterNode {
    /// The Node object's name (the node namespace's name).
    pub fn name(&self) -> &str {
        self.node.ns().name()
    }

    /// The i-th pod address of this node's pod CIDR.
    pub fn pod_ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index as u8 + 1, host)
    }

    pub fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index + 1)
    }

    /// The i-th pod address of this node's IPv6 pod CIDR.
    pub fn pod_ip6(&self, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0x244, self.index as u16 + 1, 0, 0, 0, host as u16)
    }

    /// This node's IPv6 pod CIDR (in its Node object once the fabric has
    /// IPv6).
    pub fn pod_cidr6(&self) -> String {
        format!("fd00:10:244:{:x}::/64", self.index + 1)
    }

    /// Wires dual-stack pod `host` of this node's CIDRs (the fabric must
    /// have IPv6: [`Cluster::enable_ipv6`]).
    pub fn pod_dual(&self, name: &str, host: u8) -> Pod {
        let mut pod = self.pod(name, host);
        pod.add_v6(&self.node, self.pod_ip6(host));
        pod
    }

    /// Wires pod `host` of this node's CIDR.
    pub fn pod(&self, name: &str, host: u8) -> Pod {
        let pod = self.node.pod(name, self.pod_ip(host));
        if let Some(mtu) = self.pod_mtu {
            let mtu = mtu.to_string();
            pod.ns().ip(&["link", "set", "eth0", "mtu", &mtu]);
            self.node.ns().ip(&["link", "set", &pod.host_if, "mtu", &mtu]);
        }
        if let Some(a) = &self.agent {
            a.wait_attached(&pod.host_if, pod.host_ifindex);
        }
        pod
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("the node's agent runs")
    }

    /// The Node object, as YAML (with an IPv6 InternalIP and pod CIDR
    /// once the fabric has IPv6).
    pub fn object(&self) -> String {
        let v6 = self.ip6.map(|a| format!("  - {{type: InternalIP, address: \"{a}\"}}\n")).unwrap_or_default();
        let cidrs = match self.ip6 {
            Some(_) => format!("{}, \"{}\"", self.pod_cidr(), self.pod_cidr6()),
            None => self.pod_cidr(),
        };
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}}}\nspec:\n  podCIDR: {cidr}\n  podCIDRs: [{cidrs}]\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {ip}}}\n{v6}  - {{type: Hostname, address: {name}}}\n---\n",
            name = self.name(),
            cidr = self.pod_cidr(),
            ip = self.ip
        )
    }

    /// The routes of this node's namespace installed by weir (`proto 87`).
    pub fn weir_routes(&self) -> String {
        self.node.ns().ip(&["route", "show", "proto", "87"])
    }
}

pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub pod_mtu: Option<u32>,
    pub outside: NetNs,
    pub outside_ip: Ipv4Addr,
    agent_args: Vec<String>,
    // Dropped last: the agents read it.
    fabric: NetNs,
    /// The fabric ports' XDP pass programs (`fabric_like_a_wire`).
    xdp_links: Vec<std::os::fd::OwnedFd>,
    objects: TempDir,
}

impl Cluster {
    /// `n` nodes with their agents started with `agent_args` (each also
    /// gets `--node-name` and its own `--bpffs`), and the outside.
    pub fn new(n: usize, agent_args: &[&str]) -> Self {
        let mut c = Self::bare(n, agent_args);
        for i in 0..n {
            c.start_agent(i);
        }
        c
    }

    /// The same topology with no agent running (a baseline wires its own
    /// routes); `agent_args` only decide the pod MTU and what a later
    /// `start_agent` passes.
    pub fn bare(n: usize, agent_args: &[&str]) -> Self {
        crate::privileged::require();
        let fabric = NetNs::new("wf");
        fabric.ip(&["link", "add", BRIDGE, "type", "bridge"]);
        fabric.ip(&["link", "set", BRIDGE, "up"]);
        let outside = NetNs::new("wo");
        let outside_ip = Ipv4Addr::new(192, 168, 0, 200);
        plug(&fabric, &outside, "fo", outside_ip);
        let objects = TempDir::new("weir-cluster");
        // With a tunnel (the agent's default), pods get the uplink's MTU
        // less its overhead, as the agent tells weir-cni.
        let routing = agent_args.windows(2).find(|w| w[0] == "--routing").map_or("vxlan", |w| w[1]);
        let pod_mtu = (routing == "vxlan").then_some(1500 - 50);
        let mut c = Self { nodes: Vec::new(), pod_mtu, outside, outside_ip, agent_args: agent_args.iter().map(|s| s.to_string()).collect(), fabric, xdp_links: Vec::new(), objects };
        for _ in 0..n {
            c.add_node_ns();
        }
        for i in 0..n {
            c.write_node_object(i);
        }
        c
    }

    /// The shared object directory every agent reads.
    pub fn objects(&self) -> &Path {
        self.objects.path()
    }

    /// Writes a file into the shared object directory atomically.
    pub fn write(&self, name: &str, content: &str) {
        let tmp = self.objects().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, self.objects().join(name)).unwrap_or_else(|e| panic!("rename {name}: {e}"));
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.objects().join(name)).unwrap_or_else(|e| panic!("remove {name}: {e}"));
    }

    /// A new node namespace on the fabric (no Node object, no agent yet).
    pub fn add_node_ns(&mut self) -> usize {
        let index = self.nodes.len();
        let node = Node::new();
        let ip = Ipv4Addr::new(192, 168, 0, 11 + index as u8);
        plug(&self.fabric, node.ns(), &format!("fn{index}"), ip);
        self.nodes.push(ClusterNode { agent: None, node, index, ip, ip6: None, pod_mtu: self.pod_mtu });
        index
    }

    /// The outside namespace's IPv6 address on the fabric.
    pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0x168, 0, 0, 0, 0, 0x200);

    /// Adds IPv6 to the fabric (see the module's documentation): every
    /// node's uplink and the outside get their address (no duplicate
    /// address detection: the fabric is the test's own), the nodes
    /// forward IPv6, and each Node object is rewritten with its IPv6
    /// InternalIP, which the agents pick up as any Node change.
    pub fn enable_ipv6(&mut self) {
        let ready = |ns: &NetNs, dev: &str| {
            for conf in ["all", "default", dev] {
                ns.sysctl(&format!("net.ipv6.conf.{conf}.disable_ipv6"), "0");
                ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0");
            }
        };
        ready(&self.fabric, BRIDGE);
        ready(&self.outside, "eth0");
        self.outside.ip(&["-6", "addr", "add", &format!("{}/64", Self::OUTSIDE_IP6), "dev", "eth0", "nodad"]);
        for i in 0..self.nodes.len() {
            let ip6 = Ipv6Addr::new(0xfd00, 0x192, 0x168, 0, 0, 0, 0, 0x11 + i as u16);
            let ns = self.nodes[i].node.ns();
            ready(ns, "eth0");
            // The agent's VXLAN device, when it made one already.
            if ns.ip(&["-o", "link", "show"]).contains("vx-weir") {
                ready(ns, "vx-weir");
            }
            ns.sysctl("net.ipv6.conf.all.forwarding", "1");
            ns.ip(&["-6", "addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
            self.nodes[i].ip6 = Some(ip6);
            self.write_node_object(i);
        }
    }

    /// Makes the fabric behave like a wire for XDP on the nodes' uplinks:
    /// a veth delivers frames sent back out by XDP (`XDP_TX`) only to a
    /// peer running XDP itself, so the fabric ports get a pass program;
    /// and frames on a wire carry complete checksums, while a veth passes
    /// a sending stack's partial (offloaded) ones on, which XDP cannot
    /// tell apart, so every sender computes them (tx checksumming off), as
    /// a NIC would.
    pub fn fabric_like_a_wire(&mut self) {
        for n in &self.nodes {
            let port = format!("fn{}", n.index);
            self.xdp_links.push(crate::xdp_pass::attach(&self.fabric, &port));
            self.fabric.exec(&["ethtool", "-K", &port, "tx", "off"]);
            n.node.ns().exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        }
        self.fabric.exec(&["ethtool", "-K", "fo", "tx", "off"]);
        self.outside.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
    }

    /// Writes node `i`'s Node object (its own file, so it can be removed).
    pub fn write_node_object(&self, i: usize) {
        self.write(&format!("node-{i}.yaml"), &self.nodes[i].object());
    }

    pub fn remove_node_object(&self, i: usize) {
        self.remove(&format!("node-{i}.yaml"));
    }

    /// Starts node `i`'s agent and waits for its initial sync.
    pub fn start_agent(&mut self, i: usize) {
        let args: Vec<&str> = self.agent_args.iter().map(String::as_str).collect();
        let mut agent = Agent::start_reading(&self.nodes[i].node, self.objects.path(), &args);
        agent.wait_synced();
        self.nodes[i].agent = Some(agent);
    }

    /// Runs `traffic` while capturing every frame on node 0's port of the
    /// fabric (a raw packet socket on the bridge port); returns the IPv4
    /// frames seen as (source, destination, protocol, UDP destination port
    /// or 0).
    pub fn capture(&self, traffic: impl FnOnce()) -> Vec<(Ipv4Addr, Ipv4Addr, u8, u16)> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let h = self.fabric.spawn(move || sniff("fn0", &stop2, ready_tx));
        ready_rx.recv_timeout(std::time::Duration::from_secs(5)).expect("capture started");
        traffic();
        std::thread::sleep(std::time::Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().expect("capture thread")
    }

    /// Waits until `f` holds (10 s at most).
    pub fn wait_for(&self, what: &str, f: impl FnMut() -> bool) {
        crate::wait::until(what, f)
    }
}

/// Captures IPv4 frames on `dev` (this thread's namespace) until `stop`.
fn sniff(dev: &str, stop: &std::sync::atomic::AtomicBool, ready: std::sync::mpsc::Sender<()>) -> Vec<(Ipv4Addr, Ipv4Addr, u8, u16)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).expect("name");
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: a valid fd and sockaddr_ll of the right size.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: a valid fd and a timeval option.
    unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32) };
    let _ = ready.send(());
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: the buffer is ours and as long as we say.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 34 || buf[12..14] != [0x08, 0x00] {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = usize::from(p[14] & 0x0f) * 4;
        let dport = if p[23] == 17 && p.len() >= 14 + ihl + 4 { u16::from_be_bytes([p[14 + ihl + 2], p[14 + ihl + 3]]) } else { 0 };
        out.push((Ipv4Addr::new(p[26], p[27], p[28], p[29]), Ipv4Addr::new(p[30], p[31], p[32], p[33]), p[23], dport));
    }
    out
}

/// A Namespace object labelled `ns=<name>`.
pub fn namespace_object(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{ns: {name}, kubernetes.io/metadata.name: {name}}}\n---\n")
}

/// A running Pod object in `namespace` on `node` with `ip`, labelled
/// `app=<app>`.
pub fn pod_object(namespace: &str, name: &str, app: &str, node: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {{app: {app}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: x}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n---\n"
    )
}

/// [`pod_object`] of a dual-stack pod: `podIPs` names both addresses.
pub fn pod_object_dual(namespace: &str, name: &str, app: &str, node: &str, ip: Ipv4Addr, ip6: Ipv6Addr) -> String {
    pod_object(namespace, name, app, node, ip).replace(&format!("podIPs: [{{ip: {ip}}}]"), &format!("podIPs: [{{ip: {ip}}}, {{ip: \"{ip6}\"}}]"))
}

/// Plugs `ns` into the fabric bridge: `eth0` in `ns` with `ip/24`, its
/// peer `port` on the bridge.
fn plug(fabric: &NetNs, ns: &NetNs, port: &str, ip: Ipv4Addr) {
    fabric.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
    fabric.ip(&["link", "set", port, "master", BRIDGE]);
    fabric.ip(&["link", "set", port, "up"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

/// Runs each named case `fn case(mode: &str)` once per routing mode, as
/// `native::case` and `vxlan::case`.
#[macro_export]
macro_rules! both_routing_modes {
    ($($case:ident),+ $(,)?) => {
        mod native {
            $(#[test] fn $case() { super::$case("native") })+
        }
        mod vxlan {
            $(#[test] fn $case() { super::$case("vxlan") })+
        }
    };
}
