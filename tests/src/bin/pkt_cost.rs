//! weir-pktcost: what one packet costs the pod programs, measured in the
//! kernel with BPF_PROG_TEST_RUN (the kernel's own time for the run, no
//! syscall in it): the first packet of a service flow, a packet of an
//! established service flow, a service reply, pod-to-pod traffic with and
//! without a policy, the first datagram of a UDP service flow (the
//! DNS-shaped new flow), the first packet of a flow the policy judges (with
//! one rule, and with 10,000 more for other peers), and a packet delivered
//! to a pod; pod-to-pod cases also over IPv6 (the same policy, judged by
//! the same code over 16-byte addresses), and the service cases over an
//! IPv6 ClusterIP (the same service path over `Ipv6Pkt`). Routes and
//! neighbours exist for the pods, so the FIB lookup and redirect are paid
//! as in real traffic. Every run is one packet (`repeat` would feed the
//! program its own rewritten packet again), and each figure is the median
//! of many runs; the kernel's timing of a single run adds a few tens of ns
//! to every case alike.
//!
//! `--services N` programs N - 1 more ClusterIPs (one backend each) before
//! measuring, so the figures can be read against the number of services.
//!
//! `--bpf-log-level` loads the object with its kernel debug logs on at
//! that level (see docs/architecture.md), as `weir-agent --bpf-log-level`
//! does, and drains the log ring buffer after every run as the agent's
//! reader would; the default, off, is the production object.
//!
//! ```text
//! weir-pktcost [--quick] [--services N] [--bpf-log-level off|debug|trace] [--out target/bench/pkt_cost.json]
//! ```
//! (`--help` says more.) Ctrl-C stops the run and removes its namespace
//! and pins.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use aya_log::EbpfLogger;
use weir_common::policy::{IpInfo, PolicyValue, DIR_INGRESS, ID_ANY, ID_WORLD};
use weir_datapath::{attach::Hook, lb::{spec::Protocol, Lb}, policy::PolicyMaps, KernelLogLevel, LoadOptions, PinLayout, PodDatapath};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};
use weir_tests::{names, netns::NetNs, node::BpffsDir, services::cluster_ip, testrun};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// A UDP ClusterIP (DNS-shaped: port 53), same backend.
const UDP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const GUARDED: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 6);
/// Guarded like GUARDED, with 10,000 more rules (each for another peer).
const GUARDED_BIG: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 7);
/// The IPv6 addresses of CLIENT, BACKEND and GUARDED (dual-stack pods).
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5);
const GUARDED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 6);
/// IPv6 ClusterIPs, TCP 80 and UDP 53, to BACKEND6.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10);
const UDP_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x11);
/// An IPv6 ClusterIP, TCP 80 to BACKEND6, that masquerades pods' flows
/// to the node's IPv6 address NODE6 (`WEIR_CT6_MASQ`).
const MASQ_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x12);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xff, 0, 0, 0, 0, 0, 1);

#[derive(serde::Serialize)]
struct Case {
    case: &'static str,
    median_ns: u64,
    min_ns: u64,
    max_ns: u64,
}

/// Kernel-measured ns per run of `prog` on `pkt`, `repeat` times in one
/// test run, on `ifindex`.
fn ns_per_run(prog: &SchedClassifier, pkt: &[u8], repeat: u32, ifindex: u32) -> u64 {
    let mut out = vec![0u8; pkt.len() + 256];
    let mut ctx = [0u8; 44];
    ctx[40..].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[36..40].copy_from_slice(&1u32.to_ne_bytes());
    let r = prog
        .test_run(TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ctx_in: Some(&ctx), repeat, ..TestRunOptions::default() })
        .expect("test_run");
    r.duration.as_nanos() as u64
}

/// Counts the kernel's log records and drops them.
#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

impl log::Log for Count {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, _: &log::Record<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn flush(&self) {}
}

/// Test runs, with the log ring buffer (when logs are on) drained after
/// each, so that every run finds room for its records.
struct Runner {
    logs: Option<RefCell<EbpfLogger<Count>>>,
    runs: std::cell::Cell<u64>,
}

impl Runner {
    fn run(&self, prog: &SchedClassifier, pkt: &[u8], ifindex: u32) -> u64 {
        // Between runs: a signal stops the measurement here (unwinding,
        // so the namespace and pins are removed).
        weir_tests::bench::interrupt::check();
        let ns = ns_per_run(prog, pkt, 1, ifindex);
        self.runs.set(self.runs.get() + 1);
        if let Some(l) = &self.logs {
            l.borrow_mut().flush();
        }
        ns
    }
}

fn parse_level(s: &str) -> anyhow::Result<KernelLogLevel> {
    Ok(match s {
        "off" => KernelLogLevel::Off,
        "error" => KernelLogLevel::Error,
        "warn" => KernelLogLevel::Warn,
        "info" => KernelLogLevel::Info,
        "debug" => KernelLogLevel::Debug,
        "trace" => KernelLogLevel::Trace,
        other => anyhow::bail!("{other}: expected off, error, warn, info, debug or trace"),
    })
}

fn summarize(case: &'static str, mut v: Vec<u64>) -> Case {
    v.sort_unstable();
    Case { case, median_ns: v[v.len() / 2], min_ns: v[0], max_ns: v[v.len() - 1] }
}

fn veth(ns: &NetNs, name: &str, addr: Ipv4Addr, addr6: Option<Ipv6Addr>) -> u32 {
    let peer = format!("{name}p");
    ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["link", "set", name, "up"]);
    ns.ip(&["link", "set", &peer, "up"]);
    let a = addr.to_string();
    ns.ip(&["route", "add", &format!("{a}/32"), "dev", name]);
    ns.ip(&["neigh", "replace", &a, "lladdr", "02:00:00:00:00:09", "dev", name, "nud", "permanent"]);
    if let Some(a6) = addr6 {
        let a = a6.to_string();
        ns.ip(&["-6", "route", "add", &format!("{a}/128"), "dev", name]);
        ns.ip(&["-6", "neigh", "replace", &a, "lladdr", "02:00:00:00:00:09", "dev", name, "nud", "permanent"]);
    }
    ns.ifindex(name)
}

/// What one packet costs the pod programs, measured in the kernel with
/// BPF_PROG_TEST_RUN on the real objects and live maps.
#[derive(clap::Parser, Debug)]
#[command(name = "weir-pktcost")]
struct Args {
    /// Fewer runs per figure.
    #[arg(long)]
    quick: bool,
    /// Services programmed before measuring (N - 1 more ClusterIPs, one
    /// backend each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    services: u32,
    /// Load the object with its kernel debug logs on at this level (off,
    /// error, warn, info, debug, trace) and drain them after every run.
    #[arg(long, default_value = "off", value_parser = parse_level)]
    bpf_log_level: KernelLogLevel,
    /// Where the figures go (JSON).
    #[arg(long, default_value = "target/bench/pkt_cost.json")]
    out: String,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    weir_tests::bench::interrupt::run("weir-pktcost", || measure(args))
}

fn measure(args: Args) -> anyhow::Result<()> {
    let Args { quick, services, bpf_log_level: level, out: out_path } = args;
    weir_tests::privileged::require();
    let ns = NetNs::new("wpc");
    ns.sysctl("net.ipv4.ip_forward", "1");
    for k in ["all.disable_ipv6", "default.disable_ipv6"] {
        ns.sysctl(&format!("net.ipv6.conf.{k}"), "0");
    }
    ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    let (client_if, backend_if, guarded_if) =
        (veth(&ns, "weirc", CLIENT, Some(CLIENT6)), veth(&ns, "weirb", BACKEND, Some(BACKEND6)), veth(&ns, "weirg", GUARDED, Some(GUARDED6)));
    let big_if = veth(&ns, "weirh", GUARDED_BIG, None);
    let dir = BpffsDir::new(&format!("/sys/fs/bpf/{}", names::unique("weirpc")));
    let path = dir.path.clone();
    let (reps, runs, flows) = if quick { (3, 300, 300) } else { (9, 2_000, 2_000) };
    let records = Count::default();
    let counted = records.clone();
    let (cases, runs) = ns.run(move || -> anyhow::Result<(Vec<Case>, u64)> {
        let layout = PinLayout::new(&path);
        // Each extra service takes 101 slots (Maglev, one backend).
        let defaults = LoadOptions::default();
        let lb_table_slots = defaults.lb_table_slots.max((services.saturating_mul(101) + 1_100).next_power_of_two());
        let frontends = defaults.frontends.max(2 * services + 16);
        let mut dp = PodDatapath::load_with(&layout, &LoadOptions { kernel_log: level, lb_table_slots, frontends, ..defaults })?;
        // The node's IPv6 address, for MASQ_VIP6's flows (the rest of the
        // defaults, as the programs read an unwritten configuration).
        dp.set_config(&weir_common::config::DatapathConfig { node_addr6: IpAddr::V6(NODE6).into(), ..weir_common::config::DatapathConfig::DEFAULT })?;
        let r = Runner { logs: if level.is_off() { None } else { Some(RefCell::new(dp.kernel_log(counted)?)) }, runs: Default::default() };
        testrun::own_sources(&layout, client_if, &[CLIENT.into(), CLIENT6.into()]);
        testrun::own_sources(&layout, backend_if, &[BACKEND.into(), BACKEND6.into()]);
        testrun::own_sources(&layout, guarded_if, &[GUARDED.into(), GUARDED6.into()]);
        own(&layout, big_if, GUARDED_BIG);
        let mut lb = Lb::open(&layout)?;
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)]))?;
        lb.upsert(&cluster_ip(UDP_VIP, 53, Protocol::Udp, &[(BACKEND, 5353)]))?;
        lb.upsert(&cluster_ip(VIP6, 80, Protocol::Tcp, &[(BACKEND6, 8080)]))?;
        lb.upsert(&cluster_ip(UDP_VIP6, 53, Protocol::Udp, &[(BACKEND6, 5353)]))?;
        let mut masq6 = cluster_ip(MASQ_VIP6, 80, Protocol::Tcp, &[(BACKEND6, 8080)]);
        masq6.masquerade.from_pods = true;
        lb.upsert(&masq6)?;
        for i in 1..services {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i);
            let backend = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + i);
            lb.upsert(&cluster_ip(vip, 80, Protocol::Tcp, &[(backend, 8080)]))?;
        }
        // Every local pod is an endpoint, as the agent writes them; the
        // client and the backend are under no policy.
        let mut s = PolicyState::default();
        for (id, identity, addrs) in [(3, 602, [IpAddr::V4(CLIENT), IpAddr::V6(CLIENT6)]), (4, 603, [IpAddr::V4(BACKEND), IpAddr::V6(BACKEND6)])] {
            for a in addrs {
                s.endpoints.insert(a, EndpointSpec { id, identity, ingress_isolated: false, egress_isolated: false });
                s.ipcache.insert(Prefix::host(a), IpInfo { identity, cidr_identity: ID_WORLD });
            }
        }
        // GUARDED admits anyone on TCP 9000: its flows are judged and tracked.
        s.endpoints.insert(IpAddr::V4(GUARDED), EndpointSpec { id: 1, identity: 600, ingress_isolated: true, egress_isolated: false });
        s.ipcache.insert(Prefix::host(IpAddr::V4(GUARDED)), IpInfo { identity: 600, cidr_identity: ID_WORLD });
        s.endpoints.insert(IpAddr::V6(GUARDED6), EndpointSpec { id: 1, identity: 600, ingress_isolated: true, egress_isolated: false });
        s.ipcache.insert(Prefix::host(IpAddr::V6(GUARDED6)), IpInfo { identity: 600, cidr_identity: ID_WORLD });
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_INGRESS, identity: ID_ANY, proto: 6, port: 9000, port_bits: 16 }, PolicyValue::allow(1));
        // GUARDED_BIG the same, plus 10,000 rules for other peers.
        s.endpoints.insert(IpAddr::V4(GUARDED_BIG), EndpointSpec { id: 2, identity: 601, ingress_isolated: true, egress_isolated: false });
        s.ipcache.insert(Prefix::host(IpAddr::V4(GUARDED_BIG)), IpInfo { identity: 601, cidr_identity: ID_WORLD });
        s.entries.insert(PolicyEntry { endpoint: 2, direction: DIR_INGRESS, identity: ID_ANY, proto: 6, port: 9000, port_bits: 16 }, PolicyValue::allow(1));
        for i in 0..10_000u32 {
            s.entries.insert(PolicyEntry { endpoint: 2, direction: DIR_INGRESS, identity: 10_000 + i, proto: 6, port: 9000, port_bits: 16 }, PolicyValue::allow(2));
        }
        let w = PolicyMaps::open(&layout)?.transition(&s, &s, &s);
        anyhow::ensure!(w.errors.is_empty(), "policy: {:?}", w.errors);
        let (from_pod, to_pod) = (dp.program(Hook::FromPod)?, dp.program(Hook::ToPod)?);

        let mut out = Vec::new();
        // First packets (SYNs, or for port 53 single datagrams, from fresh
        // source ports) to each destination, interleaved in `reps` slices:
        // the median of each slice.
        let mut sport = 10_000u16;
        let mut first_packets = |dsts: &[(IpAddr, u16)]| -> Vec<Vec<u64>> {
            let mut medians = vec![Vec::new(); dsts.len()];
            for _ in 0..reps {
                for (i, dst) in dsts.iter().enumerate() {
                    let mut v: Vec<u64> = (0..flows / reps.max(1))
                        .map(|_| {
                            sport = sport.wrapping_add(1).max(10_000);
                            let pkt = match dst.0 {
                                IpAddr::V4(a) if dst.1 == 53 => testrun::udp4((CLIENT, sport), (a, dst.1), &[0x65; 32]),
                                IpAddr::V4(a) => testrun::tcp4((CLIENT, sport), (a, dst.1), true, b""),
                                IpAddr::V6(a) if dst.1 == 53 => testrun::udp6((CLIENT6, sport), (a, dst.1), &[0x65; 32]),
                                IpAddr::V6(a) => testrun::tcp6((CLIENT6, sport), (a, dst.1), true, b""),
                            };
                            r.run(from_pod, &pkt, client_if)
                        })
                        .collect();
                    v.sort_unstable();
                    medians[i].push(v[v.len() / 2]);
                }
            }
            medians
        };
        let dsts = [
            (VIP.into(), 80),
            (UDP_VIP.into(), 53),
            (GUARDED.into(), 9000),
            (GUARDED_BIG.into(), 9000),
            (GUARDED6.into(), 9000),
            (VIP6.into(), 80),
            (UDP_VIP6.into(), 53),
        ];
        let [service, udp_service, judged, judged_big, judged6, service6, udp_service6]: [Vec<u64>; 7] =
            first_packets(&dsts).try_into().map_err(|_| anyhow::anyhow!("seven cases"))?;
        out.push(summarize("new service flow (SYN to a VIP: select, policy, two entries, DNAT, redirect)", service));
        out.push(summarize("new UDP service flow (one datagram to a VIP from a fresh port)", udp_service));
        out.push(summarize("policy-judged first packet (SYN to a guarded pod), its 1 rule", judged));
        out.push(summarize("policy-judged first packet, the pod has 10,001 rules", judged_big));
        out.push(summarize("policy-judged first packet over IPv6 (SYN to the guarded pod's IPv6 address)", judged6));
        out.push(summarize("new service flow over IPv6 (SYN to an IPv6 VIP)", service6));
        out.push(summarize("new UDP service flow over IPv6 (one datagram to an IPv6 VIP from a fresh port)", udp_service6));

        let median = |prog: &SchedClassifier, pkt: &[u8], ifindex: u32| -> u64 {
            let mut v: Vec<u64> = (0..runs).map(|_| r.run(prog, pkt, ifindex)).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        // One established flow, both directions: `open` and `answer` (a
        // segment without payload, made a SYN-ACK here) open it, then its
        // `data` and `reply` packets are timed.
        let established = |open: Vec<u8>, mut answer: Vec<u8>, data: Vec<u8>, reply: Vec<u8>| -> (Vec<u64>, Vec<u64>) {
            r.run(from_pod, &open, client_if);
            let flags = answer.len() - 20 + 13;
            answer[flags] = 0x12;
            r.run(from_pod, &answer, backend_if);
            ((0..reps).map(|_| median(from_pod, &data, client_if)).collect(), (0..reps).map(|_| median(from_pod, &reply, backend_if)).collect())
        };
        let (data, reply) = established(
            testrun::tcp4((CLIENT, 9999), (VIP, 80), true, b""),
            testrun::tcp4((BACKEND, 8080), (CLIENT, 9999), false, b""),
            testrun::tcp4((CLIENT, 9999), (VIP, 80), false, &[0x61; 64]),
            testrun::tcp4((BACKEND, 8080), (CLIENT, 9999), false, &[0x62; 64]),
        );
        out.push(summarize("established service flow (client → VIP)", data));
        out.push(summarize("service reply (backend → client, reverse NAT)", reply));
        let (data6, reply6) = established(
            testrun::tcp6((CLIENT6, 9999), (VIP6, 80), true, b""),
            testrun::tcp6((BACKEND6, 8080), (CLIENT6, 9999), false, b""),
            testrun::tcp6((CLIENT6, 9999), (VIP6, 80), false, &[0x61; 64]),
            testrun::tcp6((BACKEND6, 8080), (CLIENT6, 9999), false, &[0x62; 64]),
        );
        out.push(summarize("established service flow over IPv6 (client → VIP)", data6));
        out.push(summarize("service reply over IPv6 (backend → client, reverse NAT)", reply6));
        // A masqueraded flow: the backend answers the node's address at the
        // port the SYN was given.
        let syn = testrun::tcp6((CLIENT6, 9998), (MASQ_VIP6, 80), true, b"");
        let sent = testrun::parse_checked_v6(&testrun::run_on(from_pod, &syn, client_if)?.packet);
        anyhow::ensure!(sent.src == NODE6, "MASQ_VIP6's flow is masqueraded: {}", sent.src);
        let back = testrun::tcp6((BACKEND6, 8080), (NODE6, sent.sport), false, &[0x62; 64]);
        let (masq_data6, masq_reply6) = established(
            syn,
            testrun::tcp6((BACKEND6, 8080), (NODE6, sent.sport), false, b""),
            testrun::tcp6((CLIENT6, 9998), (MASQ_VIP6, 80), false, &[0x61; 64]),
            back.clone(),
        );
        let replied = testrun::parse_checked_v6(&testrun::run_on(from_pod, &back, backend_if)?.packet);
        anyhow::ensure!((replied.src, replied.dst) == (MASQ_VIP6, CLIENT6), "the reply was translated back: {} → {}", replied.src, replied.dst);
        out.push(summarize("established masqueraded flow over IPv6 (client → VIP)", masq_data6));
        out.push(summarize("masqueraded service reply over IPv6 (backend → node, WEIR_CT6_MASQ)", masq_reply6));
        let direct = testrun::udp4((CLIENT, 5000), (BACKEND, 53), &[0x63; 64]);
        out.push(summarize("pod to pod, no policy (from_pod)", (0..reps).map(|_| median(from_pod, &direct, client_if)).collect()));
        r.run(from_pod, &testrun::tcp4((CLIENT, 7000), (GUARDED, 9000), true, b""), client_if);
        let guarded = testrun::tcp4((CLIENT, 7000), (GUARDED, 9000), false, &[0x64; 64]);
        out.push(summarize("pod to pod under a policy, tracked flow (from_pod)", (0..reps).map(|_| median(from_pod, &guarded, client_if)).collect()));
        let direct6 = testrun::udp6((CLIENT6, 5000), (BACKEND6, 53), &[0x63; 64]);
        out.push(summarize("pod to pod over IPv6, no policy (from_pod)", (0..reps).map(|_| median(from_pod, &direct6, client_if)).collect()));
        r.run(from_pod, &testrun::tcp6((CLIENT6, 7000), (GUARDED6, 9000), true, b""), client_if);
        let guarded6 = testrun::tcp6((CLIENT6, 7000), (GUARDED6, 9000), false, &[0x64; 64]);
        out.push(summarize("pod to pod over IPv6 under a policy, tracked flow (from_pod)", (0..reps).map(|_| median(from_pod, &guarded6, client_if)).collect()));
        let delivered = testrun::udp4((CLIENT, 5000), (BACKEND, 53), &[0x63; 64]);
        out.push(summarize("delivered to a pod, no policy (to_pod)", (0..reps).map(|_| median(to_pod, &delivered, backend_if)).collect()));
        Ok((out, r.runs.get()))
    })?;
    drop(dir);
    println!("services: {services}; kernel debug logs: {level:?}, {:.2} records per run", records.0.load(Ordering::Relaxed) as f64 / runs.max(1) as f64);
    println!("{:<80} {:>10} {:>10} {:>10}", "case", "median ns", "min", "max");
    for c in &cases {
        println!("{:<80} {:>10} {:>10} {:>10}", c.case, c.median_ns, c.min_ns, c.max_ns);
    }
    if let Some(parent) = std::path::Path::new(&out_path).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&cases)?)?;
    eprintln!("wrote {out_path}");
    Ok(())
}

/// The pod link `ifindex` owns `addr` (what the agent learns from the
/// host route), so from_pod accepts its packets.
fn own(layout: &PinLayout, ifindex: u32, addr: Ipv4Addr) {
    testrun::own_sources(layout, ifindex, &[addr.into()]);
}
