//! Results: every sample to results.json, medians and ratios to a
//! Markdown table (results.md).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use super::{
    measure::Latency,
    topo::{Dataplane, ProgramTimes},
};

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub dataplane: Dataplane,
    pub services: usize,
    pub rep: usize,
    pub program: ProgramTimes,
    /// One connection per request through the ClusterIP.
    pub short: Latency,
    /// Request/response on a kept-alive connection through the ClusterIP.
    pub keepalive: Latency,
    pub throughput_gbps: f64,
    /// The same, pod to pod with no load balancing: the ceiling.
    pub direct_short: Latency,
    pub direct_keepalive: Latency,
    pub direct_throughput_gbps: f64,
    pub agent_rss_mib: Option<f64>,
    /// Kernel memory for held flows (see `memory`).
    pub memory: super::memory::FlowMemory,
}

/// The machine a run measured: vCPUs, CPU model and kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} vCPU {cpu}, Linux {}", kernel.trim())
}

/// The median of `v` (0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians per (services, dataplane) of one metric.
pub fn medians(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> BTreeMap<(usize, &'static str), f64> {
    let mut m: BTreeMap<(usize, &'static str), Vec<f64>> = BTreeMap::new();
    for s in samples {
        m.entry((s.services, s.dataplane.as_str())).or_default().push(f(s));
    }
    m.into_iter().map(|(k, v)| (k, median(v))).collect()
}

pub fn write(dir: &Path, samples: &[Sample], machine: &str) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&serde_json::json!({ "machine": machine, "samples": samples }))?)?;
    let conn = medians(samples, |s| s.short.per_s);
    let p50 = medians(samples, |s| s.short.p50_us);
    let p99 = medians(samples, |s| s.short.p99_us);
    let ka50 = medians(samples, |s| s.keepalive.p50_us);
    let ka99 = medians(samples, |s| s.keepalive.p99_us);
    let tput = medians(samples, |s| s.throughput_gbps);
    let dconn = medians(samples, |s| s.direct_short.per_s);
    let dka50 = medians(samples, |s| s.direct_keepalive.p50_us);
    let dtput = medians(samples, |s| s.direct_throughput_gbps);
    let cold = medians(samples, |s| s.program.cold_ms);
    let change = medians(samples, |s| s.program.one_change_ms);
    let fails = medians(samples, |s| (s.short.failures + s.keepalive.failures) as f64);
    let reps = samples.iter().map(|s| s.rep + 1).max().unwrap_or(0);
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}. Medians of {reps} interleaved run(s) per cell.\n");
    let _ = writeln!(md, "| services | dataplane | new conns/s | × iptables | × direct | req p50 µs | req p99 µs | keep-alive p50 µs | keep-alive p99 µs | × direct (ka p50) | throughput Gbit/s | × direct | program all ms | one change ms | failures |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (&(n, dp), &c) in &conn {
        let ipt = conn.get(&(n, "iptables")).copied().unwrap_or(0.0);
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}", a / b) } else { "-".into() };
        let k = (n, dp);
        let _ = writeln!(
            md,
            "| {n} | {dp} | {c:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.2} | {} | {:.1} | {:.2} | {:.0} |",
            ratio(c, ipt),
            ratio(c, dconn[&k]),
            p50[&k],
            p99[&k],
            ka50[&k],
            ka99[&k],
            ratio(dka50[&k], ka50[&k]),
            tput[&k],
            ratio(tput[&k], dtput[&k]),
            cold[&k],
            change[&k],
            fails[&k],
        );
    }
    let rss = medians(samples, |s| s.agent_rss_mib.unwrap_or(0.0));
    let per_flow = medians(samples, |s| s.memory.bytes_per_flow);
    let entries = medians(samples, |s| s.memory.entries as f64);
    let maps = medians(samples, |s| s.memory.bpf_maps_mib);
    let flows = samples.first().map_or(0, |s| s.memory.flows);
    let _ = writeln!(md, "\nMemory with {flows} connections held open through the ClusterIP:\n");
    let _ = writeln!(md, "| services | dataplane | tracking entries | kernel bytes per flow | agent RSS MiB | BPF maps MiB (preallocated) |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|");
    for &(n, dp) in conn.keys() {
        let k = (n, dp);
        let opt = |v: f64| if v > 0.0 { format!("{v:.1}") } else { "-".into() };
        let _ = writeln!(md, "| {n} | {dp} | {:.0} | {:.0} | {} | {} |", entries[&k], per_flow[&k], opt(rss[&k]), opt(maps[&k]));
    }
    std::fs::write(dir.join("results.md"), &md)?;
    Ok(md)
}
