//! Results: every sample to results.json, medians and ratios to Markdown
//! tables (results.md).

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

use super::{
    cell::CONCURRENCY,
    measure::Latency,
    paired::{ratio, Better, Paired},
    stats::{median, Ratio},
    topo::{Dataplane, ProgramTimes},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Kernel memory for held flows (see `memory`), on the tc path.
    pub memory: super::memory::FlowMemory,
    /// weir with pods' sockets served: the same flows translated at
    /// connect.
    pub memory_at_connect: Option<super::memory::FlowMemory>,
}

/// A cell the dataplane could not program (not within the run's limit,
/// or its tool refused the rules).
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// Per cell, the median of a metric over every ClusterIP slice of every
/// repetition: the figure the tables print, and the plots draw.
pub fn vip_medians(samples: &[Sample], pick: impl Fn(&Sample) -> &Paired, f: impl Fn(&Latency) -> f64) -> BTreeMap<Cell, f64> {
    pooled(samples, pick).into_iter().map(|(k, runs)| (k, slice_median(&runs, false, &f))).collect()
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

/// A table's title and header row: the cell's columns (services,
/// dataplane) and then `columns`, right-aligned.
fn header(md: &mut String, title: &str, columns: &[&str]) {
    let _ = writeln!(md, "\n### {title}\n");
    let _ = writeln!(md, "| services | dataplane | {} |", columns.join(" | "));
    let _ = writeln!(md, "|---:|---|{}", "---:|".repeat(columns.len()));
}

/// One row: the cell and its figures, in the header's order.
fn row(md: &mut String, n: usize, dp: &str, cells: &[String]) {
    let _ = writeln!(md, "| {n} | {dp} | {} |", cells.join(" | "));
}

/// Another dataplane's rate in the same cell (0 when it has none).
fn rate_of(t: &BTreeMap<Cell, Figures>, n: usize, dp: &str) -> f64 {
    t.get(&(n, dp)).map_or(0.0, |g| g.rate)
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
    header(&mut md, "New UDP flows per second (one datagram per flow, fresh source ports)", &["received flows/s", "× iptables", "× nftables", "direct flows/s", "× direct", "lost"]);
    for (&(n, dp), f) in &udp {
        let cells = [format!("{:.0}", f.rate), x(f.rate, rate_of(&udp, n, "iptables")), x(f.rate, rate_of(&udp, n, "nftables")), format!("{:.0}", f.direct_rate), f.x_direct.show(), f.failures.to_string()];
        row(&mut md, n, dp, &cells);
    }

    let cs = table(samples, |s| &s.concurrent_short);
    let ck = table(samples, |s| &s.concurrent_keepalive);
    header(
        &mut md,
        &format!("TCP with {CONCURRENCY} requests in flight"),
        &["new conns/s", "× iptables", "× direct", "p50 µs", "p99 µs", "p999 µs", "keep-alive req/s", "× direct", "p50 µs", "p99 µs", "p999 µs", "p99 × direct", "failures"],
    );
    for (&(n, dp), f) in &cs {
        let Some(k) = ck.get(&(n, dp)) else { continue };
        let cells = [
            format!("{:.0}", f.rate),
            x(f.rate, rate_of(&cs, n, "iptables")),
            f.x_direct.show(),
            format!("{:.0}", f.p50),
            format!("{:.0}", f.p99),
            us(f.p999),
            format!("{:.0}", k.rate),
            k.x_direct.show(),
            format!("{:.0}", k.p50),
            format!("{:.0}", k.p99),
            us(k.p999),
            k.p99_x_direct.show(),
            (f.failures + k.failures).to_string(),
        ];
        row(&mut md, n, dp, &cells);
    }

    let short = table(samples, |s| &s.short);
    let ka = table(samples, |s| &s.keepalive);
    let tput = table(samples, |s| &s.throughput);
    header(
        &mut md,
        "One request at a time, and throughput",
        &["new conns/s", "× iptables", "× direct", "req p50 µs", "req p99 µs", "p99 × direct", "keep-alive p50 µs", "keep-alive p99 µs", "keep-alive × direct", "throughput Gbit/s", "× direct", "failures"],
    );
    for (&(n, dp), f) in &short {
        let (Some(k), Some(t)) = (ka.get(&(n, dp)), tput.get(&(n, dp))) else { continue };
        let cells = [
            format!("{:.0}", f.rate),
            x(f.rate, rate_of(&short, n, "iptables")),
            f.x_direct.show(),
            format!("{:.0}", f.p50),
            format!("{:.0}", f.p99),
            f.p99_x_direct.show(),
            format!("{:.0}", k.p50),
            format!("{:.0}", k.p99),
            k.x_direct.show(),
            format!("{:.2}", t.rate),
            t.x_direct.show(),
            (f.failures + k.failures).to_string(),
        ];
        row(&mut md, n, dp, &cells);
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
    let at_connect = medians(samples, |s| s.memory_at_connect.map_or(-1.0, |m| m.bytes_per_flow));
    let flows = samples.first().map_or(0, |s| s.memory.flows);
    let _ = writeln!(md, "\n### Memory with {flows} connections held open through the ClusterIP\n");
    let _ = writeln!(md, "| services | dataplane | tracking entries | kernel bytes per flow | translated at connect, bytes per flow | agent RSS MiB | BPF maps MiB (preallocated) |");
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|");
    for &(n, dp) in cold.keys() {
        let k = (n, dp);
        let opt = |v: f64| if v > 0.0 { format!("{v:.1}") } else { "-".into() };
        let sock = if at_connect[&k] >= 0.0 { format!("{:.0}", at_connect[&k]) } else { "-".into() };
        let _ = writeln!(md, "| {n} | {dp} | {:.0} | {:.0} | {sock} | {} | {} |", entries[&k], per_flow[&k], opt(rss[&k]), opt(maps[&k]));
    }
    std::fs::write(dir.join("results.md"), &md)?;
    Ok(md)
}

/// A column of [`families`]: its name, the measurement, and whether it is
/// a throughput (Gbit/s, two decimals).
type FamilyMetric = (&'static str, fn(&Sample) -> &Paired, bool);

/// IPv6 beside IPv4: the ClusterIP figures of the same cells measured
/// over both families in one run (cells interleaved), and their ratio
/// (IPv6 / IPv4: below 1 is slower for rates, above 1 for latency).
pub fn families(v4: &[Sample], v6: &[Sample]) -> String {
    let metrics: [FamilyMetric; 5] = [
        ("new UDP flows/s", |s| &s.udp, false),
        ("TCP new conns/s ×32", |s| &s.concurrent_short, false),
        ("keep-alive req/s ×32", |s| &s.concurrent_keepalive, false),
        ("serial conns/s", |s| &s.short, false),
        ("throughput Gbit/s", |s| &s.throughput, true),
    ];
    let mut md = String::from("\n### IPv6 beside IPv4 (through the ClusterIP; IPv6 / IPv4 in brackets)\n\n| services | dataplane |");
    for (name, _, _) in &metrics {
        let _ = write!(md, " {name} IPv4 | IPv6 |");
    }
    let _ = writeln!(md, "\n|---:|---|{}", "---:|---:|".repeat(metrics.len()));
    let tables: Vec<(BTreeMap<Cell, Figures>, BTreeMap<Cell, Figures>)> = metrics.iter().map(|(_, pick, _)| (table(v4, pick), table(v6, pick))).collect();
    for &(n, dp) in tables[0].0.keys() {
        if !tables[0].1.contains_key(&(n, dp)) {
            continue;
        }
        let _ = write!(md, "| {n} | {dp} |");
        for ((t4, t6), (_, _, gbit)) in tables.iter().zip(&metrics) {
            let (a, b) = (rate_of(t4, n, dp), rate_of(t6, n, dp));
            let show = |v: f64| if *gbit { format!("{v:.2}") } else { format!("{v:.0}") };
            let _ = write!(md, " {} | {} ({}) |", show(a), show(b), x(b, a));
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{memory::FlowMemory, topo::ProgramTimes};

    fn paired(rate: f64) -> Paired {
        let l = Latency { per_s: rate, p50_us: 100.0, p99_us: 200.0, p999_us: 300.0, failures: 0, samples: 2000 };
        Paired { vip: vec![l; 6], direct: vec![Latency { per_s: rate * 1.1, ..l }; 6] }
    }

    fn sample(dp: Dataplane, services: usize, rate: f64) -> Sample {
        Sample {
            dataplane: dp,
            services,
            rep: 0,
            program: ProgramTimes { cold_ms: 1.0, one_change_ms: 0.5 },
            short: paired(rate),
            keepalive: paired(rate),
            throughput: paired(rate),
            udp: paired(rate),
            concurrent_short: paired(rate),
            concurrent_keepalive: paired(rate),
            agent_rss_mib: None,
            memory: FlowMemory::default(),
            memory_at_connect: None,
        }
    }

    #[test]
    fn every_row_has_its_header_s_columns_and_the_ratios_compare_the_same_cell() {
        let dir = std::env::temp_dir().join(crate::names::unique("weir-report"));
        let samples = [sample(Dataplane::Weir, 10, 200.0), sample(Dataplane::Iptables, 10, 100.0), sample(Dataplane::Nftables, 10, 50.0)];
        let md = write(&dir, &samples, &[], "test machine").expect("write");
        let _ = std::fs::remove_dir_all(&dir);
        let mut columns = 0;
        for line in md.lines().filter(|l| l.starts_with('|')) {
            let n = line.matches('|').count();
            if line.starts_with("| services") {
                columns = n;
            }
            assert_eq!(n, columns, "{line}");
        }
        let udp_weir = md.lines().find(|l| l.starts_with("| 10 | weir | 200 |")).expect("weir's UDP row");
        assert!(udp_weir.contains("| 2.00 | 4.00 | 220 | 0.91 (n=3) | 0 |"), "{udp_weir}");
    }

    #[test]
    fn the_plots_draw_the_tables_pooled_median_not_a_median_of_medians() {
        // Two repetitions whose slices are 10, 10, 10 and 40, 40 (a slow
        // first rep against a fast second): the pooled median is 10, the
        // median of the two runs' medians 25.
        let rep = |rates: &[f64]| Paired { vip: rates.iter().map(|r| Latency { per_s: *r, ..Latency::default() }).collect(), direct: vec![] };
        let mut a = sample(Dataplane::Weir, 10, 0.0);
        let mut b = a.clone();
        (a.udp, b.udp) = (rep(&[10.0, 10.0, 10.0]), rep(&[40.0, 40.0]));
        let m = vip_medians(&[a, b], |s| &s.udp, |l| l.per_s);
        assert_eq!(m.get(&(10, "weir")), Some(&10.0));
    }

    #[test]
    fn results_json_reads_back_into_the_same_report() {
        let dir = std::env::temp_dir().join(crate::names::unique("weir-report"));
        let samples = [sample(Dataplane::Weir, 10, 200.0), sample(Dataplane::Iptables, 1000, 100.0)];
        let not = [NotProgrammed { dataplane: Dataplane::Nftables, services: 1000, why: "slow".into() }];
        let md = write(&dir, &samples, &not, "test machine").expect("write");
        #[derive(Deserialize)]
        struct Back {
            machine: String,
            samples: Vec<Sample>,
            not_programmed: Vec<NotProgrammed>,
        }
        let back: Back = serde_json::from_slice(&std::fs::read(dir.join("results.json")).expect("results.json")).expect("parse");
        let again = write(&dir, &back.samples, &back.not_programmed, &back.machine).expect("write again");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(again, md);
    }

    #[test]
    fn the_family_table_puts_each_cells_ipv6_figure_beside_its_ipv4_one() {
        let v4 = [sample(Dataplane::Weir, 10, 200.0), sample(Dataplane::Iptables, 10, 100.0)];
        let v6 = [sample(Dataplane::Weir, 10, 150.0), sample(Dataplane::Iptables, 10, 100.0)];
        let md = families(&v4, &v6);
        let weir = md.lines().find(|l| l.starts_with("| 10 | weir |")).expect("weir's row");
        assert!(weir.starts_with("| 10 | weir | 200 | 150 (0.75) | 200 | 150 (0.75) |"), "{weir}");
        assert!(weir.ends_with("| 200.00 | 150.00 (0.75) |"), "{weir}");
        let ipt = md.lines().find(|l| l.starts_with("| 10 | iptables |")).expect("iptables' row");
        assert!(ipt.contains("| 100 | 100 (1.00) |"), "{ipt}");
        let header = md.lines().find(|l| l.starts_with("| services")).expect("header");
        assert_eq!(header.matches('|').count(), weir.matches('|').count());
    }
}
