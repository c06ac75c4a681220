//! Command-line interface of weir-agent.

use std::path::PathBuf;

use weir_source::SourceSpec;

#[derive(Debug, clap::Parser)]
#[command(name = "weir-agent", version, about = "weir node agent: eBPF service load balancing and policy")]
pub struct Args {
    /// Where cluster objects come from: `kube` (in-cluster config or
    /// kubeconfig) or `dir:<DIR>` (standalone: Kubernetes YAML/JSON files).
    #[arg(long, default_value = "kube")]
    pub source: SourceSpec,

    /// With `--source kube`: read each kind's initial state as a stream of
    /// watch events (`sendInitialEvents`, the API server's WatchList
    /// feature) instead of one list, so no list body of 100,000 Pods is
    /// ever held whole. `auto`: streaming lists, and lists for a kind
    /// whose streaming watch the API server refuses (WatchList off);
    /// `always` (the flag alone): streaming lists only; `never`: lists.
    #[arg(long, default_value = "auto", num_args = 0..=1, default_missing_value = "always", value_name = "auto|always|never")]
    pub kube_streaming_lists: weir_source::StreamingLists,

    /// bpffs directory that holds every pin (maps and links) of this agent.
    #[arg(long, default_value = "/sys/fs/bpf/weir")]
    pub bpffs: PathBuf,

    /// This node's name, as in the Node object and EndpointSlice nodeName.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Address of /metrics (Prometheus) and /healthz.
    #[arg(long, default_value = "127.0.0.1:9965")]
    pub metrics_addr: std::net::SocketAddr,

    /// Address of kube-proxy's node health check for cloud load balancers
    /// (`/healthz`, `/livez`).
    #[arg(long, default_value = "0.0.0.0:10256")]
    pub healthz_bind_address: std::net::SocketAddr,

    /// Seconds between full resyncs (desired state vs maps, repairing drift).
    #[arg(long, default_value_t = 60)]
    pub resync_interval: u64,

    /// Seconds without a turn of the agent's main loop after which
    /// `/livez` fails (the kubelet then restarts the agent).
    #[arg(long, default_value_t = 120)]
    pub liveness_timeout: u64,

    /// Seconds a watch of the Kubernetes API may keep failing before
    /// `/readyz` turns false (it turns true again when the watch recovers).
    #[arg(long, default_value_t = 60)]
    pub ready_stale_after: u64,

    /// The agent's run-time directory: the endpoint API's socket
    /// (`agent.sock`, root only), which weir-cni calls on ADD, and the
    /// pods it registered (`endpoints.json`). One per node; a tmpfs, as
    /// the pods' veths do not outlive a reboot either.
    #[arg(long, default_value = "/var/run/weir")]
    pub run_dir: PathBuf,

    /// Receive buffer of the rtnetlink event socket, in bytes (the
    /// kernel's default when unset). Events lost to a full buffer make the
    /// agent list links and routes again.
    #[arg(long)]
    pub netlink_rcvbuf: Option<usize>,

    /// Initial slots in the service selection table (4 bytes each; a
    /// service takes a prime of at least 100 slots per endpoint). The table
    /// grows, without dropping a packet, when services need more, and
    /// never shrinks: a larger pinned table keeps its size.
    #[arg(long, default_value_t = weir_datapath::LoadOptions::default().lb_table_slots)]
    pub lb_table_slots: u32,

    /// The selection table grows up to this many slots (the default,
    /// 2^28, is 1 GiB of kernel memory); past it, services that do not fit
    /// are reported (`lb_table_full`) and keep their previous state.
    #[arg(long, default_value_t = 1 << 28)]
    pub lb_table_max_slots: u32,

    /// Service frontends: one per service port and kind (ClusterIP,
    /// NodePort, LB IP, externalIP), plus one per service address.
    #[arg(long, default_value_t = weir_datapath::LoadOptions::default().frontends)]
    pub frontends_max_entries: u32,

    /// Service backends: one per frontend and endpoint (each frontend has
    /// its own, so a backend it drops dies with its flows at once; a
    /// Service port with a ClusterIP and a NodePort has two frontends).
    #[arg(long, default_value_t = weir_datapath::LoadOptions::default().backends)]
    pub backends_max_entries: u32,

    /// IPv4 conntrack entries (two per service flow; 112 B each).
    #[arg(long, default_value_t = weir_datapath::LoadOptions::default().ct_entries)]
    pub ct_max_entries: u32,

    /// IPv6 conntrack entries (two per service flow; 128 B each). A table
    /// of its own, as IPv4's entries are smaller; the masqueraded flows'
    /// reply entries (128 B each, WEIR_CT6_MASQ) get a quarter as many.
    #[arg(long, default_value_t = weir_datapath::LoadOptions::default().ct6_entries)]
    pub ct6_max_entries: u32,

    /// Conntrack entries one pod may hold (its flows, and flows opened
    /// towards it from outside the node); its new flows beyond that are
    /// refused (drop reason ct_quota) instead of evicting other pods'
    /// entries, while an agent keeps the counts fresh (with no agent for
    /// three --ct-gc-intervals the share is not enforced). 0: no limit. Default: 1/8 of --ct-max-entries, at most
    /// half of --ct6-max-entries (one count covers both families), at
    /// least 32,768 (about 400-530 new UDP service flows/s per pod; a busy
    /// client of the cluster DNS may need more: raise both tables, or this).
    #[arg(long)]
    pub ct_max_per_endpoint: Option<u32>,

    /// Install the CNI plugin (binary + 05-weir.conflist) and exit.
    #[arg(long, requires = "pod_cidr", conflicts_with = "uninstall_cni")]
    pub install_cni: bool,

    /// Remove what --install-cni wrote and exit.
    #[arg(long)]
    pub uninstall_cni: bool,

    /// This node's pod CIDR, for the conflist's host-local IPAM range; on a
    /// dual-stack node one per family, comma-separated
    /// (`10.244.1.0/24,fd00:10:244:1::/64`); or `node` to read this node's
    /// spec.podCIDRs from the API (needs --node-name).
    #[arg(long)]
    pub pod_cidr: Option<String>,

    /// The host's CNI plugin directory (Debian's containerd uses /usr/lib/cni).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: std::path::PathBuf,

    /// `--install-cni`: write `"failOpen": true` into weir-cni's
    /// configuration, so pods start when the agent cannot confirm their
    /// policy (down, slow, or refusing). Off (fail closed) by default.
    #[arg(long)]
    pub cni_fail_open: bool,

    /// The host's CNI configuration directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: std::path::PathBuf,

    /// The weir-cni binary to install (default: next to weir-agent).
    #[arg(long)]
    pub cni_plugin: Option<std::path::PathBuf>,

    /// Pod MTU written into the conflist. Default: the uplink's MTU
    /// (the first of --devices, else the default route's device), less
    /// the VXLAN overhead (50 bytes) with --routing vxlan.
    #[arg(long)]
    pub cni_mtu: Option<u32>,

    /// Remove every pin under --bpffs (detaching weir's programs) and exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Conntrack timeout of TCP flows still in the handshake, seconds.
    #[arg(long, default_value_t = 60)]
    pub ct_tcp_syn_timeout: u32,

    /// Conntrack timeout of established TCP flows, seconds.
    #[arg(long, default_value_t = 21_600)]
    pub ct_tcp_established_timeout: u32,

    /// Conntrack timeout of TCP flows after a FIN, seconds.
    #[arg(long, default_value_t = 10)]
    pub ct_tcp_closing_timeout: u32,

    /// Conntrack timeout of TCP flows after a RST, seconds.
    #[arg(long, default_value_t = 10)]
    pub ct_tcp_closed_timeout: u32,

    /// Conntrack timeout of UDP flows, seconds: after the last packet
    /// until a reply, then after the reply (nf_conntrack's udp_timeout).
    #[arg(long, default_value_t = 30)]
    pub ct_udp_timeout: u32,

    /// Conntrack timeout of UDP flows still sending two seconds or more
    /// after their reply ("streams"), seconds (nf_conntrack's
    /// udp_timeout_stream); 0: none, every UDP flow keeps --ct-udp-timeout.
    #[arg(long, default_value_t = 120)]
    pub ct_udp_stream_timeout: u32,

    /// How often stale conntrack entries are collected, seconds.
    #[arg(long, default_value_t = 10)]
    pub ct_gc_interval: u64,

    /// Report allowed flows as policy verdict events too: 0 never, N one in
    /// N (denials are always reported).
    #[arg(long, default_value_t = 0)]
    pub policy_allow_events: u32,

    /// Also attach the XDP fast path (native mode) to the uplinks: packets
    /// of established north-south flows that leave by the device they came
    /// in on (backends on other nodes under native routing, and their
    /// replies) are translated and sent back out before an skb exists;
    /// everything else takes tc as without it. Off by default: see
    /// docs/performance.md for when it pays.
    #[arg(long)]
    pub xdp: bool,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How much the kernel's BPF verifier reports when it loads weir's
    /// programs (the report is part of a load error): off, debug (the
    /// failing instructions and statistics), verbose (every instruction's
    /// state), stats.
    #[arg(long, value_enum, default_value_t = BpfVerifierLogLevel::Debug)]
    pub bpf_verifier_log_level: BpfVerifierLogLevel,

    /// The kernel programs' own debug logs (aya-log), forwarded to this
    /// agent's log (target `weir::bpf`, naming the object): off, error,
    /// warn, info, debug (each flow's decisions: frontend and backend,
    /// policy verdict and key, NAT rewrites, redirect target), trace (also
    /// per-packet misses). Fixed when the programs load; off (the default)
    /// removes every log call, so packets pay nothing. For developers:
    /// `weir monitor` is the structured interface.
    #[arg(long, value_enum, default_value_t = BpfLogLevel::Off)]
    pub bpf_log_level: BpfLogLevel,

    /// How pods reach pods on other nodes. vxlan (default): encapsulated
    /// to the node holding the destination's pod CIDR, over any network
    /// that carries UDP between the nodes' InternalIPs; native: one route
    /// per remote node's pod CIDR via its InternalIP (the nodes share a
    /// network, or the network routes pod CIDRs; no overhead); none: this
    /// agent installs no routes.
    #[arg(long, value_enum, default_value_t = Routing::Vxlan)]
    pub routing: Routing,

    /// The UDP port of the VXLAN tunnel (`--routing vxlan`).
    #[arg(long, default_value_t = 8472)]
    pub tunnel_port: u16,

    /// The node's uplink devices, comma-separated (default: the device
    /// holding the Node's InternalIP, else the default route's device). The node programs (NodePorts, LB
    /// IPs and externalIPs from outside, reverse NAT of replies from backends on other nodes, masquerade)
    /// attach there.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,

    /// Masquerade pod traffic leaving the cluster: a pod's packets to an
    /// address outside every pod CIDR and node address leave the uplink
    /// with the node's address (eBPF SNAT, on `--masquerade-ports`).
    /// `--masquerade=false` keeps pod addresses on the wire.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub masquerade: bool,

    /// Masquerade every service flow from a pod to the node address, as
    /// kube-proxy's `--masquerade-all` does (by default a pod keeps its
    /// address towards ClusterIPs and eTP Local frontends).
    #[arg(long)]
    pub masquerade_all: bool,

    /// More destinations pod traffic keeps its source address towards,
    /// comma-separated CIDRs (ip-masq-agent's nonMasqueradeCIDRs).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub non_masquerade_cidrs: Vec<weir_desired::policy::Prefix>,

    /// The cgroup v2 hierarchy the socket-level load balancer attaches to
    /// (the node's processes reaching ClusterIPs, NodePorts, LB IPs and
    /// externalIPs): a cgroup2 mount, a directory whose `unified` child
    /// is one (a host's /sys/fs/cgroup mounted into the container, on a
    /// hybrid layout), or one cgroup inside a cgroup2 mount (only its
    /// processes are served). Default: `/sys/fs/cgroup` or
    /// `/sys/fs/cgroup/unified`, whichever is cgroup2.
    #[arg(long)]
    pub cgroup_root: Option<std::path::PathBuf>,

    /// Whose sockets the socket-level load balancer translates: `all`
    /// (the node's processes and every pod under `--cgroup-root`: a pod's
    /// connection to a ClusterIP goes straight to a backend, with no
    /// per-packet NAT) or `node` (the node's own network namespace only,
    /// as Cilium's `socketLB.hostNamespaceOnly`: for a service mesh that
    /// must see pods' connections to the ClusterIP, or for several agents
    /// sharing one cgroup hierarchy). A pod's flow the socket path cannot
    /// fully serve (no endpoints, source ranges, ClientIP affinity, a
    /// masquerading frontend, a connected UDP socket) stays with the tc
    /// path either way.
    #[arg(long, value_enum, default_value_t = SocketLbNamespaces::All)]
    pub socket_lb_namespaces: SocketLbNamespaces,

    /// Which node addresses serve NodePorts: `primary` (the Node's
    /// InternalIP of each family), or comma-separated CIDRs selecting
    /// among the Node's addresses and those on the uplink devices
    /// (kube-proxy's flag and meaning).
    #[arg(long, default_value = "primary", value_parser = parse_nodeport_addresses)]
    pub nodeport_addresses: weir_model::nodeport::NodePortAddresses,

    /// Entries in the masquerade table (two per masqueraded flow); a
    /// full table refuses new flows (drop reason masquerade_full).
    #[arg(long, default_value_t = weir_datapath::LoadOptions::default().snat_entries)]
    pub masquerade_max_entries: u32,

    /// The source ports masqueraded flows take, `MIN-MAX` (service flows
    /// masqueraded to the node address, and pod egress): each backend (or
    /// remote address and port) can hold this many masqueraded UDP flows
    /// per UDP timeout. A range overlapping the node's ephemeral ports
    /// (`net.ipv4.ip_local_port_range`) is added to
    /// `net.ipv4.ip_local_reserved_ports`, so the node's own connections
    /// never take a port a masqueraded flow holds.
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    pub masquerade_ports: PortRange,
}

/// An inclusive range of ports (`--masquerade-ports`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let (a, b) = s.trim().split_once('-').ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 61000-65535"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{s:?}: {p:?} is no port: {e}"));
    let r = PortRange { min: port(a)?, max: port(b)? };
    if r.min < weir_common::masq::PORT_FLOOR {
        return Err(format!("{s:?}: ports below {} are the node's own", weir_common::masq::PORT_FLOOR));
    }
    if r.max < r.min {
        return Err(format!("{s:?}: the range is empty"));
    }
    Ok(r)
}

fn parse_nodeport_addresses(s: &str) -> Result<weir_model::nodeport::NodePortAddresses, String> {
    s.parse().map_err(|e: weir_model::nodeport::BadNodePortAddresses| e.to_string())
}

fn parse_cidr(s: &str) -> Result<weir_desired::policy::Prefix, String> {
    weir_model::policy::compile::parse_cidr(s, "--non-masquerade-cidrs").map_err(|e| e.message)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    Vxlan,
    Native,
    None,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    /// The datapath configuration these flags ask for.
    pub fn datapath_config(&self) -> weir_datapath::DatapathConfig {
        weir_datapath::DatapathConfig {
            ct_syn_timeout_s: self.ct_tcp_syn_timeout.max(1),
            ct_established_timeout_s: self.ct_tcp_established_timeout.max(1),
            ct_closing_timeout_s: self.ct_tcp_closing_timeout.max(1),
            ct_closed_timeout_s: self.ct_tcp_closed_timeout.max(1),
            ct_udp_timeout_s: self.ct_udp_timeout.max(1),
            ct_udp_stream_timeout_s: self.ct_udp_stream_timeout,
            allow_event_sample: self.policy_allow_events,
            ct_max_per_endpoint: self.ct_max_per_endpoint.unwrap_or_else(|| per_endpoint_share(self.ct_max_entries, self.ct6_max_entries)),
            masq_port_min: self.masquerade_ports.min,
            masq_port_max: self.masquerade_ports.max,
            sock_scope: match self.socket_lb_namespaces {
                SocketLbNamespaces::Node => weir_common::config::SOCK_SCOPE_NODE,
                SocketLbNamespaces::All => weir_common::config::SOCK_SCOPE_ALL,
            },
            ..weir_datapath::DatapathConfig::DEFAULT
        }
    }
}

/// The default `--ct-max-per-endpoint` for IPv4 and IPv6 conntrack tables
/// of `ct4` and `ct6` entries: an eighth of the IPv4 table, so that
/// raising the tables raises every pod's share with them; at most half of
/// the IPv6 table, since one count (`WEIR_CT_OWNERS`) covers a pod's
/// entries of both families; and never less than the default tables'
/// share (32,768).
pub fn per_endpoint_share(ct4: u32, ct6: u32) -> u32 {
    (ct4 / 8).min(ct6 / 2).max(weir_datapath::DatapathConfig::DEFAULT.ct_max_per_endpoint)
}

/// `--socket-lb-namespaces`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketLbNamespaces {
    Node,
    All,
}

/// `--bpf-verifier-log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BpfVerifierLogLevel {
    Off,
    Debug,
    Verbose,
    Stats,
}

impl From<BpfVerifierLogLevel> for weir_datapath::VerifierLog {
    fn from(l: BpfVerifierLogLevel) -> Self {
        match l {
            BpfVerifierLogLevel::Off => Self::Off,
            BpfVerifierLogLevel::Debug => Self::Debug,
            BpfVerifierLogLevel::Verbose => Self::Verbose,
            BpfVerifierLogLevel::Stats => Self::Stats,
        }
    }
}

/// `--bpf-log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BpfLogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<BpfLogLevel> for weir_datapath::KernelLogLevel {
    fn from(l: BpfLogLevel) -> Self {
        match l {
            BpfLogLevel::Off => Self::Off,
            BpfLogLevel::Error => Self::Error,
            BpfLogLevel::Warn => Self::Warn,
            BpfLogLevel::Info => Self::Info,
            BpfLogLevel::Debug => Self::Debug,
            BpfLogLevel::Trace => Self::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn kernel_logs_are_off_unless_asked_and_the_verifier_keeps_its_own_flag() {
        let a = Args::parse_from(["weir-agent"]);
        assert_eq!(a.bpf_log_level, BpfLogLevel::Off);
        assert_eq!(a.bpf_verifier_log_level, BpfVerifierLogLevel::Debug);
        let a = Args::parse_from(["weir-agent", "--bpf-log-level", "trace", "--bpf-verifier-log-level", "verbose"]);
        assert_eq!(a.bpf_log_level, BpfLogLevel::Trace);
        assert_eq!(a.bpf_verifier_log_level, BpfVerifierLogLevel::Verbose);
        // The verifier's levels are no kernel log levels.
        assert!(Args::try_parse_from(["weir-agent", "--bpf-log-level", "verbose"]).is_err());
    }

    #[test]
    fn a_pods_conntrack_share_grows_with_the_table_unless_set() {
        let quota = |args: &[&str]| Args::parse_from([&["weir-agent"], args].concat()).datapath_config().ct_max_per_endpoint;
        assert_eq!(quota(&[]), 32_768, "an eighth of the default 262,144, half the default IPv6 65,536");
        let both = ["--ct-max-entries", "1048576", "--ct6-max-entries", "524288"];
        assert_eq!(quota(&both), 131_072, "an eighth of a larger IPv4 table");
        assert_eq!(quota(&["--ct-max-entries", "1048576", "--ct6-max-entries", "131072"]), 65_536, "at most half the IPv6 table");
        assert_eq!(quota(&["--ct-max-entries", "1048576"]), 32_768, "a larger IPv4 table alone: the IPv6 table bounds the share");
        assert_eq!(quota(&["--ct-max-entries", "8192"]), 32_768, "never below the default's share");
        assert_eq!(quota(&[&both[..], &["--ct-max-per-endpoint", "1000"]].concat()), 1000, "a quota given is kept");
        assert_eq!(quota(&["--ct-max-per-endpoint", "0"]), 0, "0 still means no limit");
    }

    #[test]
    fn masquerade_ports_are_an_unprivileged_non_empty_range() {
        assert_eq!(parse_port_range("61000-65535"), Ok(PortRange { min: 61_000, max: 65_535 }));
        assert_eq!(parse_port_range(" 40000 - 40000 "), Ok(PortRange { min: 40_000, max: 40_000 }));
        for bad in ["61000", "1000-2000", "5000-4000", "a-b", "61000-70000", ""] {
            assert!(parse_port_range(bad).is_err(), "{bad:?} accepted");
        }
    }
}
