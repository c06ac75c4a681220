//! `cargo xtask bench`: weir, kube-proxy-style iptables and kube-proxy-style
//! nftables on the same topology (a node namespace, a client pod, three
//! backend pods), at several service counts, interleaved so that drift on
//! a noisy machine hits all three. Writes target/bench/results.{json,md}.
//!
//! Usage: weir-bench [--quick]

use std::{path::PathBuf, time::Duration};

use weir_tests::bench::{
    measure::{iperf, keepalive, short_connections},
    memory,
    plot,
    report::{self, machine, Sample},
    topo::{services, BenchTopo, Dataplane, IPERF_PORT, KEEPALIVE_PORT, SHORT_PORT, TARGET_VIP},
};

/// Connections held open for the memory measurement.
const FLOWS: usize = 1000;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (scales, reps, dur, ka, secs): (&[usize], usize, Duration, usize, u32) = if quick {
        (&[10, 1000], 1, Duration::from_millis(1500), 1000, 1)
    } else {
        (&[10, 1000, 10_000], 3, Duration::from_secs(3), 3000, 2)
    };
    let out_dir = std::env::var("WEIR_BENCH_OUT").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        PathBuf::from,
    );
    let mut samples = Vec::new();
    for rep in 0..reps {
        for &n in scales {
            for dp in Dataplane::ALL {
                eprintln!("==> rep {rep} services {n} dataplane {}", dp.as_str());
                let mut t = BenchTopo::new();
                let svcs = services(n, &t.backend_ips());
                let program = t.program(dp, &svcs);
                let b0 = t.backends[0].ip;
                let ns = t.client.ns();
                let short = short_connections(ns, TARGET_VIP, SHORT_PORT, dur);
                let direct_short = short_connections(ns, b0, 8080, dur);
                let keep = keepalive(ns, TARGET_VIP, KEEPALIVE_PORT, ka);
                let direct_keep = keepalive(ns, b0, 9000, ka);
                let throughput_gbps = iperf(ns, TARGET_VIP, IPERF_PORT, secs);
                let direct_throughput_gbps = iperf(ns, b0, 5201, secs);
                let is_weir = dp == Dataplane::Weir;
                let before = memory::tracked(is_weir, t.node.bpffs(), t.node.ns());
                let held = memory::hold(ns, TARGET_VIP, KEEPALIVE_PORT, FLOWS);
                let memory = memory::measure(before, memory::tracked(is_weir, t.node.bpffs(), t.node.ns()), held.len());
                drop(held);
                let s = Sample {
                    dataplane: dp,
                    services: n,
                    rep,
                    program,
                    short,
                    keepalive: keep,
                    throughput_gbps,
                    direct_short,
                    direct_keepalive: direct_keep,
                    direct_throughput_gbps,
                    agent_rss_mib: t.agent_rss_mib(),
                    memory,
                };
                eprintln!("    memory: {} flows, {} entries, {:.0} B/flow, maps {:.1} MiB", s.memory.flows, s.memory.entries, s.memory.bytes_per_flow, s.memory.bpf_maps_mib);
                eprintln!(
                    "    {:.0} conn/s (direct {:.0}), ka p50 {:.0} µs, {:.2} Gbit/s (direct {:.2}), program {:.1} ms, change {:.2} ms",
                    s.short.per_s, s.direct_short.per_s, s.keepalive.p50_us, s.throughput_gbps, s.direct_throughput_gbps, s.program.cold_ms, s.program.one_change_ms
                );
                samples.push(s);
            }
        }
    }
    match report::write(&out_dir, &samples, &machine()) {
        Ok(md) => {
            println!("{md}");
            if let Err(e) = plot::write(&out_dir, &samples) {
                eprintln!("plots: {e}");
                std::process::exit(1);
            }
            println!("written to {} (results.json, results.md, *.png)", out_dir.display());
        }
        Err(e) => {
            eprintln!("writing results to {}: {e}", out_dir.display());
            std::process::exit(1);
        }
    }
}
