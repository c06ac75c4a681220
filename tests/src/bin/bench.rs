//! `cargo xtask bench`: weir, kube-proxy-style iptables and kube-proxy-style
//! nftables on the same topology (a node namespace, a client pod, three
//! backend pods), at several service counts, interleaved so that drift on
//! a noisy machine hits all three. Every measurement alternates slices
//! through the ClusterIP with slices pod to pod. Writes
//! target/bench/results.{json,md} and one PNG per metric.
//!
//! Usage: weir-bench [--quick] [--scales N,N,...] [--dataplanes weir,iptables,nftables] [--reps R] [--families ipv4,ipv6] [--weir-socket-lb all|node] [--bpf-stats] [--perf]
//!        weir-bench --replot DIR
//! (`weir-bench --help` says the same; an unknown argument is refused.)
//!
//! `--scales`, `--dataplanes` and `--reps` narrow a run (to look at one
//! cell); the published figures come from a whole run. `--families`
//! (default `ipv4`) measures each cell over each family in turn: the
//! IPv6 cells run on dual-stack pods with IPv6 services and the
//! baselines' IPv6 rules (ip6tables, `ip6 kube-proxy`), and their report
//! goes to `ipv6/` under the output directory, with a table of both
//! families side by side in the IPv4 report. `--weir-socket-lb` (default
//! `all`, the agent's default) says whether weir's agent translates the
//! client pod's sockets at connect; `node` measures weir's tc path.
//! `--bpf-stats` measures the 32-in-flight workloads once more in every
//! weir cell, with the kernel's BPF statistics on, and writes each
//! program's runs and time per connection and per request, through the
//! ClusterIP and pod to pod, to bpf_time.md (the published figures are
//! measured before, with statistics off).
//! `--replot DIR` writes a finished run's results.md and plots again from
//! its results.json, as the code now draws them.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use weir_tests::bench::{
    bpf_time::{self, BpfTime},
    cell::{self, Plan, CONCURRENCY},
    interrupt, memory,
    paired::Paired,
    perf_profile,
    plot,
    report::{self, machine, NotProgrammed, Sample},
    topo::{services, BenchTopo, Dataplane, KEEPALIVE_PORT},
};
use weir_tests::netpol::Family;

/// Connections held open for the memory measurement.
const FLOWS: usize = 1000;

/// A run: the service counts, repetitions and each cell's plan.
struct Run {
    scales: Vec<usize>,
    reps: usize,
    cell: Plan,
    /// A dataplane that has not programmed a cell by then is stopped and
    /// the cell left out (nft -f grows faster than linearly).
    program_limit: Duration,
}

fn quick() -> Run {
    Run {
        scales: vec![10, 1000],
        reps: 1,
        cell: Plan {
            pairs: 4,
            slice: Duration::from_millis(300),
            ka_requests: 500,
            iperf_secs: 1,
            udp_flows: 9000,
            udp_max: Duration::from_secs(1),
        },
        program_limit: Duration::from_secs(60),
    }
}

fn full() -> Run {
    Run {
        scales: vec![10, 1000, 10_000, 100_000],
        reps: 3,
        cell: Plan {
            pairs: 6,
            slice: Duration::from_millis(500),
            ka_requests: 1000,
            iperf_secs: 1,
            udp_flows: 10_000,
            udp_max: Duration::from_secs(1),
        },
        program_limit: Duration::from_secs(300),
    }
}

/// A family as `--families` and the output directory name it.
fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

fn parse_dataplane(s: &str) -> Result<Dataplane, String> {
    Dataplane::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| format!("no dataplane {s} (weir, iptables, nftables)"))
}

fn parse_family(s: &str) -> Result<Family, String> {
    Family::ALL.into_iter().find(|f| family_name(*f) == s).ok_or_else(|| format!("no family {s} (ipv4, ipv6)"))
}

/// Whose sockets weir's agent translates at connect (its
/// `--socket-lb-namespaces`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SocketLb {
    /// Every pod's, as deployed by default.
    All,
    /// The node's only: the client pod's connections take the tc path.
    Node,
}

/// weir against kube-proxy-style iptables and nftables rules, on the same
/// topology, interleaved. Writes results.{json,md} and one PNG per metric
/// to $WEIR_BENCH_OUT (default target/bench). Ctrl-C stops the run after
/// the slice under way and removes its namespaces, agents and pins.
#[derive(clap::Parser, Debug)]
#[command(name = "weir-bench")]
struct Args {
    /// A few minutes: two scales, one repetition, shorter measurements.
    #[arg(long)]
    quick: bool,
    /// Service counts to measure (default 10,1000,10000,100000; --quick:
    /// 10,1000).
    #[arg(long, value_delimiter = ',')]
    scales: Option<Vec<usize>>,
    /// Dataplanes to measure (default all three).
    #[arg(long, value_delimiter = ',', value_parser = parse_dataplane)]
    dataplanes: Option<Vec<Dataplane>>,
    /// Repetitions of every cell (default 3; --quick: 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Families to measure each cell over, in turn; IPv6's report goes to
    /// ipv6/ under the output directory.
    #[arg(long, value_delimiter = ',', value_parser = parse_family, default_value = "ipv4")]
    families: Vec<Family>,
    /// `node` measures weir's tc path for the client pod's TCP.
    #[arg(long, value_enum, default_value = "all")]
    weir_socket_lb: SocketLb,
    /// After each weir cell's measurements, the 32-in-flight workloads
    /// again with BPF statistics on: each program's time per connection
    /// and per request, ClusterIP against direct, to bpf_time.md.
    #[arg(long)]
    bpf_stats: bool,
    /// After each weir cell's measurements, the short connections with 32
    /// in flight again under `perf record -a`, ClusterIP and pod to pod
    /// apart: each CPU's time per connection by symbol, to perf.md (the
    /// data under perf/).
    #[arg(long)]
    perf: bool,
    /// Write a finished run's results.md and plots again from DIR's
    /// results.json (and DIR/ipv6's), measuring nothing.
    #[arg(long, value_name = "DIR", exclusive = true)]
    replot: Option<PathBuf>,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    if let Some(dir) = args.replot {
        replot(dir);
        return;
    }
    interrupt::run("weir-bench", || measure(args));
}

fn measure(args: Args) {
    let started = Instant::now();
    // `--bpf-stats` holds statistics on only for its own slices; a host
    // that has them on all the time charges them to every figure.
    if std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1") {
        eprintln!("weir-bench: kernel.bpf_stats_enabled is 1: every BPF program pays for its statistics in this run's figures");
    }
    let mut run = if args.quick { quick() } else { full() };
    if let Some(scales) = args.scales {
        run.scales = scales;
    }
    if let Some(reps) = args.reps {
        run.reps = reps;
    }
    let dataplanes = args.dataplanes.unwrap_or_else(|| Dataplane::ALL.to_vec());
    let mut families = args.families;
    // IPv4 first: its report goes to the output directory itself, with
    // the table of both families, and IPv6's under it (`--replot` reads
    // them back so).
    families.sort_by_key(|f| *f != Family::V4);
    families.dedup();
    assert!(run.cell.udp_ports_fit());
    // weir as deployed: pods' sockets are translated at connect
    // (`--socket-lb-namespaces all`, the agent's default), so the client
    // pod's ClusterIP connections carry no per-packet NAT. `--weir-socket-lb
    // node` measures the tc path instead (as a service mesh deployment
    // runs it). The UDP flood uses a raw socket: always the tc path.
    let sock_lb = match args.weir_socket_lb {
        SocketLb::All => "all",
        SocketLb::Node => "node",
    };
    let sock_cgroup = (args.weir_socket_lb == SocketLb::All).then(weir_tests::pod_cgroup::TestCgroup::new);
    let out_dir = std::env::var("WEIR_BENCH_OUT").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"),
        PathBuf::from,
    );
    // Per family (in `families`' order): its samples and the cells not programmed.
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); families.len()];
    let mut not_programmed: Vec<Vec<NotProgrammed>> = vec![Vec::new(); families.len()];
    // `--bpf-stats`: per (family, services, workload), pooled over the repetitions.
    let mut bpf: std::collections::BTreeMap<(usize, usize, &str), (&str, BpfTime)> = Default::default();
    // `--perf`: per (family, services), pooled over the repetitions.
    let mut perf: std::collections::BTreeMap<(usize, usize), perf_profile::Profile> = Default::default();
    for rep in 0..run.reps {
        for &n in &run.scales {
            for (fi, &family) in families.iter().enumerate() {
            for &dp in &dataplanes {
                // A dataplane that could not program a smaller N in an
                // earlier repetition is not tried again at this one or above.
                if not_programmed[fi].iter().any(|np| np.dataplane == dp && np.services <= n) {
                    continue;
                }
                interrupt::check();
                eprintln!("==> rep {rep} services {n} {family:?} dataplane {}", dp.as_str());
                let mut t = BenchTopo::new(family);
                if let Some(cg) = &sock_cgroup {
                    t.weir_args = cg.agent_args();
                }
                let svcs = services(n, &t.backend_ips());
                let program = match t.program(dp, &svcs, run.program_limit) {
                    Ok(p) => p,
                    Err(why) => {
                        eprintln!("    not programmed: {why}");
                        not_programmed[fi].push(NotProgrammed { dataplane: dp, services: n, why });
                        continue;
                    }
                };
                // Memory first: the floods below fill the tracking tables,
                // and a full LRU table counts no new entries.
                let is_weir = dp == Dataplane::Weir;
                let before = memory::tracked(is_weir, t.node.bpffs(), t.node.ns());
                let held = memory::hold(t.client.ns(), t.target_vip(), KEEPALIVE_PORT, FLOWS);
                let memory = memory::measure(before, memory::tracked(is_weir, t.node.bpffs(), t.node.ns()), held.len());
                drop(held);
                // The traffic below comes from a process in the cgroup the
                // agent's socket programs serve, as a pod's would; the
                // memory above is the tc path's. A connection translated at
                // connect holds a socket reverse entry instead of conntrack
                // entries: measured again from inside.
                let mut memory_at_connect = None;
                if let Some(cg) = sock_cgroup.as_ref().filter(|_| is_weir) {
                    cg.enter().unwrap_or_else(|e| panic!("entering {}: {e}", cg.path().display()));
                    let before = memory::tracked(true, t.node.bpffs(), t.node.ns());
                    let held = memory::hold(t.client.ns(), t.target_vip(), KEEPALIVE_PORT, FLOWS);
                    memory_at_connect = Some(memory::measure(before, memory::tracked(true, t.node.bpffs(), t.node.ns()), held.len()));
                }
                let m = cell::measure(&t, &run.cell);
                if args.bpf_stats && is_weir {
                    // A panic unwinds through the topology's cleanup.
                    let workloads = cell::bpf_time(&t, &run.cell).unwrap_or_else(|e| panic!("--bpf-stats: turning BPF statistics on: {e}"));
                    for (workload, unit, time) in workloads {
                        eprintln!("    BPF ns per {unit} ({workload}): ClusterIP {:.0}, direct {:.0}", time.vip.total_per_unit(), time.direct.total_per_unit());
                        bpf.entry((fi, n, workload)).or_insert_with(|| (unit, BpfTime::default())).1.pool(&time);
                    }
                }
                if args.perf && is_weir {
                    let dir = perf_profile::cell_dir(&out_dir, n, rep).join(family_name(family));
                    let p = cell::perf_profile(&t, &run.cell, &dir).unwrap_or_else(|e| panic!("--perf: {}: {e}", dir.display()));
                    perf.entry((fi, n)).or_default().pool(&p);
                }
                if let Some(cg) = &sock_cgroup {
                    cg.leave().unwrap_or_else(|e| panic!("leaving {}: {e}", cg.path().display()));
                }
                let s = Sample {
                    dataplane: dp,
                    services: n,
                    rep,
                    program,
                    short: m.short,
                    keepalive: m.keepalive,
                    throughput: m.throughput,
                    udp: m.udp,
                    concurrent_short: m.concurrent_short,
                    concurrent_keepalive: m.concurrent_keepalive,
                    agent_rss_mib: t.agent_rss_mib(),
                    memory,
                    memory_at_connect,
                };
                let rate = |p: &Paired| (p.vip_median(|l| l.per_s), p.direct_median(|l| l.per_s));
                let (u, ud) = rate(&s.udp);
                let (c, cd) = rate(&s.concurrent_short);
                let (k, kd) = rate(&s.concurrent_keepalive);
                let (sh, shd) = rate(&s.short);
                eprintln!("    udp {u:.0} flows/s (direct {ud:.0}); tcp x{CONCURRENCY}: {c:.0} conn/s (direct {cd:.0}), {k:.0} req/s (direct {kd:.0}); serial {sh:.0} conn/s (direct {shd:.0})");
                let at_connect = s.memory_at_connect.map(|m| format!(" ({:.0} B/flow translated at connect)", m.bytes_per_flow)).unwrap_or_default();
                eprintln!(
                    "    program {:.1} ms, change {:.2} ms; memory {:.0} B/flow{at_connect}, maps {:.1} MiB",
                    s.program.cold_ms, s.program.one_change_ms, s.memory.bytes_per_flow, s.memory.bpf_maps_mib
                );
                samples[fi].push(s);
            }
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    let ct_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max").unwrap_or_default();
    let both = families.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(" and ");
    let written: Vec<Written> = families
        .iter()
        .zip(samples)
        .zip(not_programmed)
        .enumerate()
        .map(|(fi, ((family, samples), not_programmed))| Written {
            dir: if fi == 0 { out_dir.clone() } else { out_dir.join(family_name(*family)) },
            machine: format!(
                "{}; nf_conntrack_max {}; {family:?} (of {both}); weir's socket-level load balancing for pods: {sock_lb}; the run took {:.0} s",
                machine(),
                ct_max.trim(),
                took
            ),
            samples,
            not_programmed,
        })
        .collect();
    for (fi, w) in written.iter().enumerate() {
        let cells: Vec<(usize, &str, &str, BpfTime)> =
            bpf.iter().filter(|((f, _, _), _)| *f == fi).map(|((_, n, workload), (unit, t))| (*n, *workload, *unit, t.clone())).collect();
        if !cells.is_empty() {
            let md = format!("{}\n\nBPF run time per connection or request of each program (kernel statistics, `--bpf-stats`), pooled over the repetitions.\n\n{}", w.machine, bpf_time::table(&cells));
            let _ = std::fs::create_dir_all(&w.dir);
            std::fs::write(w.dir.join("bpf_time.md"), &md).unwrap_or_else(|e| panic!("writing {}: {e}", w.dir.join("bpf_time.md").display()));
            println!("{md}");
        }
    }
    for (fi, w) in written.iter().enumerate() {
        let cells: Vec<(usize, perf_profile::Profile)> = perf.iter().filter(|((f, _), _)| *f == fi).map(|((_, n), p)| (*n, p.clone())).collect();
        if !cells.is_empty() {
            let md = format!(
                "{}\n\nCPU time per connection (short connections, 32 in flight; `perf record -a`, `--perf`), by CPU and symbol, pooled over the repetitions. CPU 0 runs the load generator, CPU 1 the servers.\n{}",
                w.machine,
                perf_profile::table(&cells, 40)
            );
            let _ = std::fs::create_dir_all(&w.dir);
            std::fs::write(w.dir.join("perf.md"), &md).unwrap_or_else(|e| panic!("writing {}: {e}", w.dir.join("perf.md").display()));
            println!("{md}");
        }
    }
    let v4 = families.iter().position(|f| *f == Family::V4);
    let v6 = families.iter().position(|f| *f == Family::V6);
    publish(&written, v4.zip(v6));
    println!("the run took {took:.0} s");
}

/// One family's results, as results.json holds them (`report::write`).
#[derive(serde::Deserialize)]
struct Written {
    #[serde(skip)]
    dir: PathBuf,
    /// The run's header line: machine, family, duration.
    machine: String,
    samples: Vec<Sample>,
    not_programmed: Vec<NotProgrammed>,
}

/// Writes each family's results.json, results.md and plots into its
/// directory; `both` (the IPv4 and IPv6 entries of `written`) adds the
/// table of the two families side by side to the IPv4 report. Exits on
/// an error.
fn publish(written: &[Written], both: Option<(usize, usize)>) {
    let fail = |dir: &std::path::Path, e: &dyn std::fmt::Display| -> ! {
        eprintln!("writing results to {}: {e}", dir.display());
        std::process::exit(1);
    };
    for (i, w) in written.iter().enumerate() {
        let mut md = report::write(&w.dir, &w.samples, &w.not_programmed, &w.machine).unwrap_or_else(|e| fail(&w.dir, &e));
        if let Some((a, b)) = both.filter(|(a, _)| *a == i) {
            md.push_str(&report::families(&written[a].samples, &written[b].samples));
            std::fs::write(w.dir.join("results.md"), &md).unwrap_or_else(|e| fail(&w.dir, &e));
        }
        println!("{md}");
        plot::write(&w.dir, &w.samples).unwrap_or_else(|e| fail(&w.dir, &format!("plots: {e}")));
        println!("written to {} (results.json, results.md, *.png)", w.dir.display());
    }
}

/// `--replot DIR`: the tables and plots again from DIR's results.json
/// (and DIR/ipv6's, from a run over both families), as the code now
/// draws them, without measuring anything.
fn replot(dir: PathBuf) {
    let read = |dir: PathBuf| -> Option<Written> {
        let path = dir.join("results.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                eprintln!("--replot: {}: {e}", path.display());
                std::process::exit(1);
            }
        };
        let w: Written = serde_json::from_slice(&text).unwrap_or_else(|e| {
            eprintln!("--replot: {}: {e}", path.display());
            std::process::exit(1);
        });
        Some(Written { dir, ..w })
    };
    let Some(first) = read(dir.clone()) else {
        eprintln!("--replot: no results.json in {}", dir.display());
        std::process::exit(1);
    };
    let mut written = vec![first];
    written.extend(read(dir.join(family_name(Family::V6))));
    let both = (written.len() == 2).then_some((0, 1));
    publish(&written, both);
}
