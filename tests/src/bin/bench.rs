//! `cargo xtask bench`: weir, kube-proxy-style iptables and kube-proxy-style
//! nftables on the same topology (a node namespace, a client pod, three
//! backend pods), at several service counts, interleaved so that drift on
//! a noisy machine hits all three. Every measurement alternates slices
//! through the ClusterIP with slices pod to pod. Writes
//! target/bench/results.{json,md} and one PNG per metric.
//!
//! Usage: weir-bench [--quick]

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use weir_tests::bench::{
    concurrent,
    measure::{iperf_slice, keepalive, short_connections, short_connections_to},
    memory,
    paired::Paired,
    plot,
    report::{self, machine, NotProgrammed, Sample, CONCURRENCY},
    topo::{services, udp_vips, BenchTopo, Dataplane, IPERF_PORT, KEEPALIVE_PORT, SHORT_PORT, TARGET_VIP},
    udp_flows,
};

/// Connections held open for the memory measurement.
const FLOWS: usize = 1000;

/// How long one run's parameters are.
struct Plan {
    scales: &'static [usize],
    reps: usize,
    /// Pairs of slices per measurement.
    pairs: usize,
    /// One slice of a TCP measurement.
    slice: Duration,
    /// Requests in one serial keep-alive slice.
    ka_requests: usize,
    /// One iperf3 slice, seconds.
    iperf_secs: u32,
    /// UDP flows per destination in one slice (three destinations).
    udp_per_dst: u16,
    /// A dataplane that has not programmed a cell by then is stopped and
    /// the cell left out (nft -f grows faster than linearly).
    program_limit: Duration,
}

const QUICK: Plan = Plan {
    scales: &[10, 1000],
    reps: 1,
    pairs: 4,
    slice: Duration::from_millis(300),
    ka_requests: 500,
    iperf_secs: 1,
    udp_per_dst: 6000,
    program_limit: Duration::from_secs(60),
};

const FULL: Plan = Plan {
    scales: &[10, 1000, 10_000, 100_000],
    reps: 3,
    pairs: 6,
    slice: Duration::from_millis(500),
    ka_requests: 1000,
    iperf_secs: 1,
    udp_per_dst: 6000,
    program_limit: Duration::from_secs(300),
};

/// Source ports of the UDP slices start here; each slice takes the next
/// `udp_per_dst` ports, so every flow of a cell is new to the dataplane.
const FIRST_SPORT: u16 = 1024;

fn measure(t: &BenchTopo, plan: &Plan) -> [Paired; 6] {
    let ns = t.client.ns();
    let b0 = t.backends[0].ip;
    let client = t.client.ip;
    let short = Paired::run(plan.pairs, |_| short_connections(ns, TARGET_VIP, SHORT_PORT, plan.slice), |_| short_connections_to(ns, t.direct(8080), plan.slice));
    let keep = Paired::run(plan.pairs, |_| keepalive(ns, TARGET_VIP, KEEPALIVE_PORT, plan.ka_requests), |_| keepalive(ns, b0, 9000, plan.ka_requests));
    let tput = Paired::run(plan.pairs.div_ceil(2), |_| iperf_slice(ns, TARGET_VIP, IPERF_PORT, plan.iperf_secs), |_| iperf_slice(ns, b0, 5201, plan.iperf_secs));
    let sinks: Vec<_> = t.sinks.iter().collect();
    let ports = |i: usize| FIRST_SPORT + (i as u16) * plan.udp_per_dst;
    let max = Duration::from_secs(1);
    let udp = Paired::run(
        plan.pairs.min(8),
        |i| udp_flows::slice(ns, client, udp_vips(), ports(i), plan.udp_per_dst, max, &sinks),
        |i| udp_flows::slice(ns, client, t.udp_direct(), ports(i), plan.udp_per_dst, max, &sinks),
    );
    let cshort = Paired::run(
        plan.pairs,
        |_| concurrent::short_connections(ns, vec![SocketAddr::from((TARGET_VIP, SHORT_PORT))], CONCURRENCY, plan.slice),
        |_| concurrent::short_connections(ns, t.direct(8080), CONCURRENCY, plan.slice),
    );
    let ckeep = Paired::run(
        plan.pairs,
        |_| concurrent::keepalive(ns, vec![SocketAddr::from((TARGET_VIP, KEEPALIVE_PORT))], CONCURRENCY, plan.slice),
        |_| concurrent::keepalive(ns, t.direct(9000), CONCURRENCY, plan.slice),
    );
    [short, keep, tput, udp, cshort, ckeep]
}

fn main() {
    let started = Instant::now();
    let plan = if std::env::args().any(|a| a == "--quick") { QUICK } else { FULL };
    // At most eight UDP slices of `udp_per_dst` ports each: they must fit
    // in the port space.
    assert!(u32::from(FIRST_SPORT) + 8 * u32::from(plan.udp_per_dst) <= 65_535);
    let out_dir = std::env::var("WEIR_BENCH_OUT").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        PathBuf::from,
    );
    let mut samples = Vec::new();
    let mut not_programmed: Vec<NotProgrammed> = Vec::new();
    for rep in 0..plan.reps {
        for &n in plan.scales {
            for dp in Dataplane::ALL {
                // A dataplane that could not program a smaller N in an
                // earlier repetition is not tried again at this one or above.
                if not_programmed.iter().any(|np| np.dataplane == dp && np.services <= n) {
                    continue;
                }
                eprintln!("==> rep {rep} services {n} dataplane {}", dp.as_str());
                let mut t = BenchTopo::new();
                let svcs = services(n, &t.backend_ips());
                let Some(program) = t.program(dp, &svcs, plan.program_limit) else {
                    not_programmed.push(NotProgrammed { dataplane: dp, services: n, limit_s: plan.program_limit.as_secs_f64() });
                    continue;
                };
                let [short, keepalive, throughput, udp, concurrent_short, concurrent_keepalive] = measure(&t, &plan);
                let is_weir = dp == Dataplane::Weir;
                let before = memory::tracked(is_weir, t.node.bpffs(), t.node.ns());
                let held = memory::hold(t.client.ns(), TARGET_VIP, KEEPALIVE_PORT, FLOWS);
                let memory = memory::measure(before, memory::tracked(is_weir, t.node.bpffs(), t.node.ns()), held.len());
                drop(held);
                let s = Sample {
                    dataplane: dp,
                    services: n,
                    rep,
                    program,
                    short,
                    keepalive,
                    throughput,
                    udp,
                    concurrent_short,
                    concurrent_keepalive,
                    agent_rss_mib: t.agent_rss_mib(),
                    memory,
                };
                let rate = |p: &Paired| (p.vip_median(|l| l.per_s), p.direct_median(|l| l.per_s));
                let (u, ud) = rate(&s.udp);
                let (c, cd) = rate(&s.concurrent_short);
                let (k, kd) = rate(&s.concurrent_keepalive);
                let (sh, shd) = rate(&s.short);
                eprintln!("    udp {u:.0} flows/s (direct {ud:.0}); tcp x{CONCURRENCY}: {c:.0} conn/s (direct {cd:.0}), {k:.0} req/s (direct {kd:.0}); serial {sh:.0} conn/s (direct {shd:.0})");
                eprintln!(
                    "    program {:.1} ms, change {:.2} ms; memory {:.0} B/flow, maps {:.1} MiB",
                    s.program.cold_ms, s.program.one_change_ms, s.memory.bytes_per_flow, s.memory.bpf_maps_mib
                );
                samples.push(s);
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    let header = format!("{}; the run took {:.0} s", machine(), took);
    match report::write(&out_dir, &samples, &not_programmed, &header) {
        Ok(md) => {
            println!("{md}");
            if let Err(e) = plot::write(&out_dir, &samples) {
                eprintln!("plots: {e}");
                std::process::exit(1);
            }
            println!("written to {} (results.json, results.md, *.png); the run took {took:.0} s", out_dir.display());
        }
        Err(e) => {
            eprintln!("writing results to {}: {e}", out_dir.display());
            std::process::exit(1);
        }
    }
}
