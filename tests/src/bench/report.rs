//! Results: every sample to results.json, medians and ratios to Markdown
//! tables (results.md).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use super::{
    cell::CONCURRENCY,
    measure::Latency,
    paired::{ratio, Better, Paired},
    stats::{median, Ratio},
    topo::{Dataplane, ProgramTimes},
};

#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub dataplane: Dataplane,
    pub services: usize,
    pub rep: usize,
    pub program: ProgramTimes,
    /// One connection per request, one at a time, through the ClusterIP
    /// and pod to pod (the direct path: the ceiling), in paired slices.
    pub short: Paired,
    /// Request/response on one kept-alive connection, one at a time.
    pub keepalive: Paired,
    /// iperf3 throughput; `per_s` is Gbit/s.
    pub throughput: Paired,
    /// Single-datagram UDP flows, each from a fresh source port; `per_s`
    /// is datagrams received per second, `failures` those lost.
    pub udp: Paired,
    /// Short connections with `cell::CONCURRENCY` in flight.
    pub concurrent_short: Paired,
    /// Keep-alive requests on `cell::CONCURRENCY` connections at once.
    pub concurrent_keepalive: Paired,
    pub agent_rss_mib: Option<f64>,
    /// Kernel memory for held flows (see `memory`).
    pub memory: super::memory::FlowMemory,
}

/// A cell the dataplane could not program (not within the run's limit,
/// or its tool refused the rules).
#[derive(Clone, Debug, Serialize)]
pub struct NotProgrammed {
    pub dataplane: Dataplane,
    pub services: usize,
    pub why: String,
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

type Cell = (usize, &'static str);

/// Medians per (services, dataplane) of one per-sample metric.
pub fn medians(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> BTreeMap<Cell, f64> {
    let mut m: BTreeMap<Cell, Vec<f64>> = BTreeMap::new();
    for s in samples {
        m.entry((s.services, s.dataplane.as_str())).or_default().push(f(s));
    }
    m.into_iter().map(|(k, v)| (k, median(v))).collect()
}

/// The paired slices of one measurement, per cell, over every repetition.
fn pooled<'a>(samples: &'a [Sample], pick: impl Fn(&Sample) -> &Paired) -> BTreeMap<Cell, Vec<&'a Paired>> {
    let mut m: BTreeMap<Cell, Vec<&'a Paired>> = BTreeMap::new();
    for s in samples {
        m.entry((s.services, s.dataplane.as_str())).or_default().push(pick(s));
    }
    m
}

/// The VIP or direct slices' median of a metric, over every repetition.
fn slice_median(runs: &[&Paired], direct: bool, f: impl Fn(&Latency) -> f64) -> f64 {
    median(runs.iter().flat_map(|p| if direct { &p.direct } else { &p.vip }).map(f).collect())
}

/// Every figure of one measurement in one cell.
struct Figures {
    rate: f64,
    direct_rate: f64,
    x_direct: Ratio,
    p50: f64,
    p99: f64,
    /// `None` when the median slice had fewer than 1,000 samples (a
    /// p99.9 of fewer is the maximum).
    p999: Option<f64>,
    p99_x_direct: Ratio,
    failures: u64,
}

fn figures(runs: &[&Paired]) -> Figures {
    Figures {
        rate: slice_median(runs, false, |l| l.per_s),
        direct_rate: slice_median(runs, true, |l| l.per_s),
        x_direct: ratio(runs.iter().copied(), Better::Higher, |l| l.per_s),
        p50: slice_median(runs, false, |l| l.p50_us),
        p99: slice_median(runs, false, |l| l.p99_us),
        p999: (slice_median(runs, false, |l| l.samples as f64) >= 1000.0).then(|| slice_median(runs, false, |l| l.p999_us)),
        p99_x_direct: ratio(runs.iter().copied(), Better::Lower, |l| l.p99_us),
        failures: runs.iter().map(|p| p.vip_failures()).sum(),
    }
}

fn x(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// Every measurement's figures per cell.
fn table(samples: &[Sample], pick: impl Fn(&Sample) -> &Paired) -> BTreeMap<Cell, Figures> {
    pooled(samples, pick).into_iter().map(|(k, runs)| (k, figures(&runs))).collect()
}

pub fn write(dir: &Path, samples: &[Sample], not_programmed: &[NotProgrammed], machine: &str) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "machine": machine, "samples": samples, "not_programmed": not_programmed }))?,
    )?;
    let reps = samples.iter().map(|s| s.rep + 1).max().unwrap_or(0);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {machine}. {reps} interleaved run(s) per cell; each measurement alternates slices through the ClusterIP and pod to pod. \
         Rates and latencies are medians over the ClusterIP slices; \"× direct\" is the median ratio over blocks of two pairs (ClusterIP, direct, direct, ClusterIP) \
         with its bootstrap 95 % interval (for latencies, direct / ClusterIP, so below 1 is worse either way; no interval under 5 blocks). \
         p99.9 is shown where a slice holds at least 1,000 samples.\n"
    );
    for np in not_programmed {
        let _ = writeln!(md, "- {} did not program {} services: {}. That cell and larger ones were not measured.", np.dataplane.as_str(), np.services, np.why);
    }
    if !not_programmed.is_empty() {
        md.push('\n');
    }

    let udp = table(samples, |s| &s.udp);
    let _ = writeln!(md, "### New UDP flows per second (one datagram per flow, fresh source ports)\n");
    let _ = writeln!(md, "| services | dataplane | received flows/s | × iptables | × nftables | direct flows/s | × direct | lost |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for (&(n, dp), f) in &udp {
        let other = |d: &str| udp.get(&(n, d)).map_or(0.0, |g| g.rate);
        let _ = writeln!(md, "| {n} | {dp} | {:.0} | {} | {} | {:.0} | {} | {} |", f.rate, x(f.rate, other("iptables")), x(f.rate, other("nftables")), f.direct_rate, f.x_direct.show(), f.failures);
    }

    let cs = table(samples, |s| &s.concurrent_short);
    let ck = table(samples, |s| &s.concurrent_keepalive);
    let _ = writeln!(md, "\n### TCP with {CONCURRENCY} requests in flight\n");
    let _ = writeln!(md, "| services | dataplane | new conns/s | × iptables | × direct | p50 µs | p99 µs | p999 µs | keep-alive req/s | × direct | p50 µs | p99 µs | p999 µs | p99 × direct | failures |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (&(n, dp), f) in &cs {
        let ipt = cs.get(&(n, "iptables")).map_or(0.0, |g| g.rate);
        let Some(k) = ck.get(&(n, dp)) else { continue };
        let _ = writeln!(
            md,
            "| {n} | {dp} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} |",
            f.rate,
            x(f.rate, ipt),
            f.x_direct.show(),
            f.p50,
            f.p99,
            us(f.p999),
            k.rate,
            k.x_direct.show(),
            k.p50,
            k.p99,
            us(k.p999),
            k.p99_x_direct.show(),
            f.failures + k.failures
        );
    }

    let short = table(samples, |s| &s.short);
    let ka = table(samples, |s| &s.keepalive);
    let tput = table(samples, |s| &s.throughput);
    let _ = writeln!(md, "\n### One request at a time, and throughput\n");
    let _ = writeln!(md, "| services | dataplane | new conns/s | × iptables | × direct | req p50 µs | req p99 µs | p99 × direct | keep-alive p50 µs | keep-alive p99 µs | keep-alive × direct | throughput Gbit/s | × direct | failures |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (&(n, dp), f) in &short {
        let ipt = short.get(&(n, "iptables")).map_or(0.0, |g| g.rate);
        let (Some(k), Some(t)) = (ka.get(&(n, dp)), tput.get(&(n, dp))) else { continue };
        let _ = writeln!(
            md,
            "| {n} | {dp} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {:.2} | {} | {} |",
            f.rate,
            x(f.rate, ipt),
            f.x_direct.show(),
            f.p50,
            f.p99,
            f.p99_x_direct.show(),
            k.p50,
            k.p99,
            k.x_direct.show(),
            t.rate,
            t.x_direct.show(),
            f.failures + k.failures
        );
    }

    let cold = medians(samples, |s| s.program.cold_ms);
    let change = medians(samples, |s| s.program.one_change_ms);
    let _ = writeln!(md, "\n### Programming\n");
    let _ = writeln!(md, "| services | dataplane | program all ms | × weir | one change ms |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|");
    for (&(n, dp), &c) in &cold {
        let w = cold.get(&(n, "weir")).copied().unwrap_or(0.0);
        let _ = writeln!(md, "| {n} | {dp} | {c:.1} | {} | {:.2} |", x(c, w), change[&(n, dp)]);
    }

    let rss = medians(samples, |s| s.agent_rss_mib.unwrap_or(0.0));
    let per_flow = medians(samples, |s| s.memory.bytes_per_flow);
    let entries = medians(samples, |s| s.memory.entries as f64);
    let maps = medians(samples, |s| s.memory.bpf_maps_mib);
    let flows = samples.first().map_or(0, |s| s.memory.flows);
    let _ = writeln!(md, "\n### Memory with {flows} connections held open through the ClusterIP\n");
    let _ = writeln!(md, "| services | dataplane | tracking entries | kernel bytes per flow | agent RSS MiB | BPF maps MiB (preallocated) |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|");
    for &(n, dp) in cold.keys() {
        let k = (n, dp);
        let opt = |v: f64| if v > 0.0 { format!("{v:.1}") } else { "-".into() };
        let _ = writeln!(md, "| {n} | {dp} | {:.0} | {:.0} | {} | {} |", entries[&k], per_flow[&k], opt(rss[&k]), opt(maps[&k]));
    }
    std::fs::write(dir.join("results.md"), &md)?;
    Ok(md)
}
