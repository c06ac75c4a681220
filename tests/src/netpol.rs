//! The NetworkPolicy truth-table harness, laid out like the upstream e2e
//! suite: namespaces x, y and z (labelled `ns: <name>` and
//! `kubernetes.io/metadata.name: <name>`), pods a, b and c in each
//! (labelled `pod: <name>`), every pod serving TCP and UDP on ports 80
//! and 81. Every pod is dual-stack (an IPv4 and an IPv6 address, both in
//! its `podIPs`). A case applies policies through the agent's standalone
//! source and probes every ordered pod pair over each family in turn,
//! then compares each 9 × 9 result with the expected matrix: the same
//! policies must give the same reachability over IPv4 and over IPv6.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use crate::{
    traffic::{tcp_server_at, udp_server_at, Reply, Server},
    Agent, Node, Pod,
};

/// An address family the matrix is probed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
}

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];
pub const PORTS: [u16; 2] = [80, 81];

/// How long a probe waits before calling the peer unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// A pod of the matrix, as `ns/pod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct P {
    pub ns: &'static str,
    pub pod: &'static str,
}

impl std::fmt::Display for P {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

/// Every pod, in matrix order.
pub fn all() -> Vec<P> {
    NAMESPACES.iter().flat_map(|ns| PODS.iter().map(move |pod| P { ns, pod })).collect()
}

/// The address of a pod: 10.244.<ns index + 1>.<pod index + 10>.
pub fn ip_of(p: P) -> Ipv4Addr {
    let n = NAMESPACES.iter().position(|x| *x == p.ns).expect("namespace") as u8;
    let i = PODS.iter().position(|x| *x == p.pod).expect("pod") as u8;
    Ipv4Addr::new(10, 244, n + 1, 10 + i)
}

/// The IPv6 address of a pod: fd00:10:244:<ns index + 1>::<pod index + 0x10>.
pub fn ip6_of(p: P) -> Ipv6Addr {
    let n = NAMESPACES.iter().position(|x| *x == p.ns).expect("namespace") as u16;
    let i = PODS.iter().position(|x| *x == p.pod).expect("pod") as u16;
    Ipv6Addr::new(0xfd00, 0x10, 0x244, n + 1, 0, 0, 0, 0x10 + i)
}

/// The pod's address in `family`.
pub fn addr_of(p: P, family: Family) -> IpAddr {
    match family {
        Family::V4 => ip_of(p).into(),
        Family::V6 => ip6_of(p).into(),
    }
}

/// A 9 × 9 reachability matrix: `[from][to]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Matrix(pub Vec<Vec<bool>>);

impl Matrix {
    /// Expected reachability from a rule. A pod always reaches itself.
    pub fn expect(f: impl Fn(P, P) -> bool) -> Self {
        let pods = all();
        Matrix(pods.iter().map(|from| pods.iter().map(|to| from == to || f(*from, *to)).collect()).collect())
    }

    pub fn render(&self) -> String {
        let pods = all();
        let mut s = String::from("from\\to");
        for p in &pods {
            let _ = write!(s, " {p}");
        }
        s.push('\n');
        for (i, row) in self.0.iter().enumerate() {
            let _ = write!(s, "{:<7}", pods[i].to_string());
            for v in row {
                s.push_str(if *v { "   . " } else { "   X " });
            }
            s.push('\n');
        }
        s
    }
}

pub struct NetpolCluster {
    pub node: Node,
    pub pods: Vec<(P, Pod)>,
    pub agent: Agent,
    _servers: Vec<Server>,
}

/// The Namespace and Pod objects of the matrix, as YAML.
pub fn base_objects(node_name: &str) -> String {
    let mut y = String::new();
    for ns in NAMESPACES {
        let _ = write!(y, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    ns: {ns}\n    kubernetes.io/metadata.name: {ns}\n---\n");
    }
    for p in all() {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\n  labels:\n    pod: {pod}\nspec:\n  nodeName: {node_name}\n  containers:\n  - name: c\n    image: agnhost\n    ports:\n",
            pod = p.pod,
            ns = p.ns
        );
        for port in PORTS {
            for proto in [Proto::Tcp, Proto::Udp] {
                let _ = write!(y, "    - name: serve-{port}-{}\n      containerPort: {port}\n      protocol: {}\n", proto.as_str().to_lowercase(), proto.as_str());
            }
        }
        let _ = write!(y, "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n  - ip: {ip6}\n---\n", ip = ip_of(p), ip6 = ip6_of(p));
    }
    y
}

impl NetpolCluster {
    pub fn new() -> Self {
        Self::with_agent_args(&[])
    }

    pub fn with_agent_args(args: &[&str]) -> Self {
        let node = Node::new();
        let pods: Vec<(P, Pod)> = all()
            .into_iter()
            .map(|p| {
                let mut pod = node.pod(&format!("{}-{}", p.ns, p.pod), ip_of(p));
                pod.add_v6(&node, ip6_of(p));
                (p, pod)
            })
            .collect();
        node.write_source("base.yaml", base_objects(node.ns().name()).as_bytes());
        let mut agent = node.start_agent_with(args);
        agent.wait_synced();
        let mut servers = Vec::new();
        for (p, pod) in &pods {
            agent.wait_attached(&pod.host_if, pod.host_ifindex);
            // `::` serves both families.
            for port in PORTS {
                servers.push(tcp_server_at(pod.ns(), Ipv6Addr::UNSPECIFIED.into(), port, Reply::Name(p.to_string())));
                servers.push(udp_server_at(pod.ns(), Ipv6Addr::UNSPECIFIED.into(), port, Reply::Name(p.to_string())));
            }
        }
        Self { node, pods, agent, _servers: servers }
    }

    pub fn pod(&self, p: P) -> &Pod {
        &self.pods.iter().find(|(q, _)| *q == p).expect("pod").1
    }

    /// Replaces the policies (one YAML stream) and waits until the agent
    /// has programmed them.
    pub fn apply(&mut self, policies: &str) {
        if policies.is_empty() && !self.node.source_dir().join("policies.yaml").exists() {
            return;
        }
        let before = self.agent.log_text().matches("reconciled").count();
        self.node.write_source("policies.yaml", policies.as_bytes());
        self.agent.wait_for_log("reconciled", before + 1);
    }

    /// Whether `from` reaches `to` on `port`/`proto` over IPv4: the answer
    /// must name `to`.
    pub fn probe(&self, from: P, to: P, port: u16, proto: Proto) -> bool {
        probe_ip(self.pod(from), ip_of(to), port, proto, &to.to_string())
    }

    /// Probes every ordered pair at once, over `family`.
    pub fn probe_all(&self, family: Family, port: u16, proto: Proto) -> Matrix {
        let pods = all();
        let handles: Vec<Vec<std::thread::JoinHandle<bool>>> = pods
            .iter()
            .map(|from| {
                pods.iter()
                    .map(|to| {
                        let ns = self.pod(*from).ns().path();
                        let (ip, want) = (addr_of(*to, family), to.to_string());
                        std::thread::spawn(move || probe_in(&ns, ip, port, proto, &want))
                    })
                    .collect()
            })
            .collect();
        Matrix(handles.into_iter().map(|row| row.into_iter().map(|h| h.join().unwrap_or(false)).collect()).collect())
    }

    /// Probes every pair over IPv4, then over IPv6, and panics with both
    /// matrices when a result differs from `want`.
    pub fn check(&self, case: &str, port: u16, proto: Proto, want: &Matrix) {
        for family in Family::ALL {
            let got = self.probe_all(family, port, proto);
            if &got != want {
                panic!(
                    "{case}: {proto:?}/{port} over {family:?}: reachability differs\nexpected:\n{}\ngot:\n{}\nagent log:\n{}",
                    want.render(),
                    got.render(),
                    self.agent.log_text()
                );
            }
        }
    }
}

impl Default for NetpolCluster {
    fn default() -> Self {
        Self::new()
    }
}

/// One probe from `pod` to `ip`.
pub fn probe_ip(pod: &Pod, ip: impl Into<IpAddr>, port: u16, proto: Proto, want: &str) -> bool {
    let (ip, want) = (ip.into(), want.to_string());
    pod.ns().run(move || probe_here(ip, port, proto, &want))
}

fn probe_in(ns: &std::path::Path, ip: IpAddr, port: u16, proto: Proto, want: &str) -> bool {
    let Ok(file) = std::fs::File::open(ns) else { return false };
    if nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    probe_here(ip, port, proto, want)
}

/// One probe from the calling thread's namespace: the answer must start
/// with `want`.
fn probe_here(ip: IpAddr, port: u16, proto: Proto, want: &str) -> bool {
    use std::{
        io::Read as _,
        net::{SocketAddr, TcpStream, UdpSocket},
    };
    let answer: std::io::Result<Vec<u8>> = match proto {
        Proto::Tcp => (|| {
            let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), PROBE_TIMEOUT)?;
            s.set_read_timeout(Some(PROBE_TIMEOUT))?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok(out)
        })(),
        Proto::Udp => (|| {
            let any: IpAddr = if ip.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            let s = UdpSocket::bind((any, 0))?;
            s.set_read_timeout(Some(PROBE_TIMEOUT))?;
            s.connect((ip, port))?;
            s.send(b"?")?;
            let mut buf = vec![0u8; 1500];
            let n = s.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })(),
    };
    answer.is_ok_and(|a| String::from_utf8_lossy(&a).starts_with(want))
}
