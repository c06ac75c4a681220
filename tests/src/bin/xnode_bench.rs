//! `cargo xtask bench` (cross-node part): pod to pod, pod to a ClusterIP
//! whose backend is on the other node, and an external client to a
//! NodePort of node 0 whose backend is on node 1 (eTP Cluster, so
//! masqueraded), with weir in each routing mode and the kernel-only
//! baselines of the same mode (kube-proxy's iptables and nftables modes),
//! on the same two-node topology, interleaved rep by rep. Writes
//! target/bench/xnode.{json,md}: medians, min–max over reps, and
//! weir/baseline ratios.
//!
//! The XDP pair (weir tc against weir tc + `--xdp`, on a fabric made to
//! behave like a wire) measures the NodePort path only.
//!
//! Usage: weir-xnode-bench [--quick] [--xdp-only] (`--help` says more).
//! Ctrl-C stops the run and removes its nodes and agents.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

use serde::Serialize;
use weir_tests::bench::{
    interrupt,
    measure::{iperf, keepalive, short_connections, Latency},
    report::machine,
    stats::median,
    xnode::{Setup, XnodeTopo, IPERF_NODE_PORT, IPERF_PORT, KEEPALIVE_NODE_PORT, KEEPALIVE_PORT, SHORT_NODE_PORT, SHORT_PORT, VIP},
};

#[derive(Clone, Debug, Serialize)]
struct Path {
    throughput_gbps: f64,
    short: Latency,
    keepalive: Latency,
}

#[derive(Clone, Debug, Serialize)]
struct Sample {
    setup: Setup,
    rep: usize,
    pod_to_pod: Path,
    pod_to_clusterip: Path,
    outside_to_nodeport: Path,
}

/// (name, higher is better, value of a path).
type Metric = (&'static str, bool, fn(&Path) -> f64);

const METRICS: [Metric; 4] = [
    ("throughput Gbit/s", true, |p| p.throughput_gbps),
    ("new connections/s", true, |p| p.short.per_s),
    ("request p50 µs (kept-alive)", false, |p| p.keepalive.p50_us),
    ("request p99 µs (kept-alive)", false, |p| p.keepalive.p99_us),
];

fn stats(samples: &[Sample], setup: Setup, path: fn(&Sample) -> &Path, f: fn(&Path) -> f64) -> (f64, f64, f64) {
    let v: Vec<f64> = samples.iter().filter(|s| s.setup == setup).map(|s| f(path(s))).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(v), lo, hi)
}

fn report(samples: &[Sample], machine: &str, reps: usize) -> String {
    let mut o = format!("# Cross-node benchmark\n\nMachine: {machine}. {reps} reps, setups interleaved in each rep. Median (min–max over reps); ratio = weir / baseline of the same mode (throughput and connections: higher is better; latency: lower is better). Baselines: kernel routing of the mode plus kube-proxy's iptables (`ipt`) or nftables (`nft`) rules.\n\n");
    type PathOf = fn(&Sample) -> &Path;
    let paths: [(&str, PathOf); 3] = [
        ("pod → pod", |s| &s.pod_to_pod),
        ("pod → ClusterIP (remote backend)", |s| &s.pod_to_clusterip),
        ("outside → NodePort (remote backend, masqueraded)", |s| &s.outside_to_nodeport),
    ];
    for (pname, path) in paths {
        for (mode, weir, ipt, nft) in [("native", Setup::WeirNative, Setup::KernelNative, Setup::NftNative), ("vxlan", Setup::WeirVxlan, Setup::KernelVxlan, Setup::NftVxlan)] {
            let _ = writeln!(o, "## {pname}, {mode}\n\n| metric | weir | ipt | weir/ipt | nft | weir/nft |\n|---|---|---|---|---|---|");
            for (mname, _, f) in METRICS {
                let (w, wl, wh) = stats(samples, weir, path, f);
                let mut row = format!("| {mname} | {w:.1} ({wl:.1}–{wh:.1}) |");
                for base in [ipt, nft] {
                    let (k, kl, kh) = stats(samples, base, path, f);
                    let ratio = if k > 0.0 { w / k } else { 0.0 };
                    let _ = write!(row, " {k:.1} ({kl:.1}–{kh:.1}) | {ratio:.2} |");
                }
                let _ = writeln!(o, "{row}");
            }
            o.push('\n');
        }
    }
    // XDP: the same weir, tc alone against tc + XDP, on the wire-like fabric.
    let _ = writeln!(
        o,
        "## outside → NodePort (remote backend, masqueraded), native, XDP\n\nBoth on a fabric made to behave like a wire for XDP (pass programs on the fabric ports, checksums computed by every sender), so only `--xdp` differs.\n\n| metric | weir tc + XDP | weir tc | xdp/tc |\n|---|---|---|---|"
    );
    for (mname, _, f) in METRICS {
        let path: fn(&Sample) -> &Path = |s| &s.outside_to_nodeport;
        let (x, xl, xh) = stats(samples, Setup::WeirXdp, path, f);
        let (t, tl, th) = stats(samples, Setup::WeirWire, path, f);
        let ratio = if t > 0.0 { x / t } else { 0.0 };
        let _ = writeln!(o, "| {mname} | {x:.1} ({xl:.1}–{xh:.1}) | {t:.1} ({tl:.1}–{th:.1}) | {ratio:.2} |");
    }
    o.push('\n');
    let failures: u64 = samples
        .iter()
        .flat_map(|s| [&s.pod_to_pod, &s.pod_to_clusterip, &s.outside_to_nodeport])
        .map(|p| p.short.failures + p.keepalive.failures)
        .sum();
    let _ = writeln!(o, "Failed requests across all samples: {failures}.");
    o
}

impl Path {
    /// A path not measured in a setup.
    fn none() -> Self {
        Path { throughput_gbps: 0.0, short: Latency::default(), keepalive: Latency::default() }
    }
}

fn measure(ns: &weir_tests::netns::NetNs, dst: std::net::Ipv4Addr, ports: (u16, u16, u16), dur: Duration, ka: usize, secs: u32) -> Path {
    interrupt::check();
    Path { short: short_connections(ns, dst.into(), ports.0, dur), keepalive: keepalive(ns, dst.into(), ports.1, ka), throughput_gbps: iperf(ns, dst.into(), ports.2, secs) }
}

/// Cross-node traffic with weir in each routing mode against the kernel's
/// own routing and VXLAN, and the XDP pair. Writes xnode.{json,md} to
/// $WEIR_BENCH_OUT (default target/bench).
#[derive(clap::Parser, Debug)]
#[command(name = "weir-xnode-bench")]
struct Args {
    /// One repetition of shorter measurements.
    #[arg(long)]
    quick: bool,
    /// The XDP pair only (weir tc against weir tc + `--xdp`, NodePort).
    #[arg(long)]
    xdp_only: bool,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    interrupt::run("weir-xnode-bench", || run(&args));
}

fn run(args: &Args) {
    let quick = args.quick;
    let setups: Vec<Setup> = if args.xdp_only { vec![Setup::WeirWire, Setup::WeirXdp] } else { Setup::ALL.to_vec() };
    let (reps, dur, ka, secs): (usize, Duration, usize, u32) =
        if quick { (1, Duration::from_millis(1500), 1000, 1) } else { (3, Duration::from_secs(3), 3000, 3) };
    let out_dir = std::env::var("WEIR_BENCH_OUT").map_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"), PathBuf::from);
    let mut samples = Vec::new();
    for rep in 0..reps {
        for &setup in &setups {
            interrupt::check();
            eprintln!("==> rep {rep} {}", setup.as_str());
            let t = XnodeTopo::new(setup);
            // The XDP pair is about the NodePort path only.
            let pod_paths = !setup.is_xdp_pair();
            let pod_to_pod = if pod_paths { measure(t.client.ns(), t.server.ip, (8080, 9000, 5201), dur, ka, secs) } else { Path::none() };
            let pod_to_clusterip = if pod_paths { measure(t.client.ns(), VIP, (SHORT_PORT, KEEPALIVE_PORT, IPERF_PORT), dur, ka, secs) } else { Path::none() };
            let node0 = t.cluster.nodes[0].ip;
            let outside_to_nodeport = measure(&t.cluster.outside, node0, (SHORT_NODE_PORT, KEEPALIVE_NODE_PORT, IPERF_NODE_PORT), dur, ka, secs);
            eprintln!(
                "    pod→pod {:.2} Gbit/s {:.0} conn/s; pod→VIP {:.2} Gbit/s {:.0} conn/s; outside→NodePort {:.2} Gbit/s {:.0} conn/s p50 {:.0} µs",
                pod_to_pod.throughput_gbps, pod_to_pod.short.per_s,
                pod_to_clusterip.throughput_gbps, pod_to_clusterip.short.per_s,
                outside_to_nodeport.throughput_gbps, outside_to_nodeport.short.per_s, outside_to_nodeport.keepalive.p50_us
            );
            samples.push(Sample { setup, rep, pod_to_pod, pod_to_clusterip, outside_to_nodeport });
        }
    }
    let md = report(&samples, &machine(), reps);
    let by_setup: BTreeMap<&str, Vec<&Sample>> = samples.iter().fold(BTreeMap::new(), |mut m, s| {
        m.entry(s.setup.as_str()).or_default().push(s);
        m
    });
    let _ = std::fs::create_dir_all(&out_dir);
    let json = serde_json::to_string_pretty(&by_setup).unwrap_or_default();
    if let Err(e) = std::fs::write(out_dir.join("xnode.json"), json).and_then(|_| std::fs::write(out_dir.join("xnode.md"), &md)) {
        eprintln!("writing {}: {e}", out_dir.display());
        std::process::exit(1);
    }
    println!("{md}");
}
