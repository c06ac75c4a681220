//! `cargo xtask bench` (policy part): new-connection rate to a pod that 0,
//! 100 and 10,000 NetworkPolicy rules select, on one agent, interleaved.
//! Writes target/bench/policy.{json,md}.
//!
//! Usage: weir-policy-bench [--quick] (`--help` says more). Ctrl-C stops
//! the run and removes its node, pods and agent.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use weir_tests::{
    bench::{
        interrupt,
        measure::{short_connections, Latency},
        policy::{pods, policies, CLIENT_IP, SERVER_IP, SERVER_PORT},
    },
    traffic::{tcp_server, Reply},
    Node,
};

#[derive(serde::Serialize)]
struct Sample {
    rules: usize,
    rep: usize,
    /// Agent time to translate and program the change, ms.
    program_ms: f64,
    short: Latency,
}

fn took_ms(log: &str) -> f64 {
    log.lines()
        .rfind(|l| l.contains("reconciled"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("took_us=")))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |us| us / 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// New-connection rate to a pod that 0, 100 and 10,000 NetworkPolicy
/// rules select, on one agent, interleaved. Writes policy.{json,md} to
/// $WEIR_BENCH_OUT (default target/bench).
#[derive(clap::Parser, Debug)]
#[command(name = "weir-policy-bench")]
struct Args {
    /// One repetition of shorter slices.
    #[arg(long)]
    quick: bool,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    interrupt::run("weir-policy-bench", || measure(args.quick));
}

fn measure(quick: bool) {
    let (reps, dur) = if quick { (1, Duration::from_millis(1500)) } else { (3, Duration::from_secs(3)) };
    let scales = [0usize, 100, 10_000];
    let out_dir = std::env::var("WEIR_BENCH_OUT").map_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench"), PathBuf::from);

    let node = Node::new();
    let client = node.pod("client", CLIENT_IP);
    // Thousands of short connections to one server leave the client's
    // ports in TIME_WAIT, and connect() then spends milliseconds searching
    // for a free port: measure the dataplane, not that.
    client.ns().sysctl("net.ipv4.tcp_tw_reuse", "1");
    let server = node.pod("server", SERVER_IP);
    let _srv = tcp_server(server.ns(), SERVER_PORT, Reply::Name("server".into()));
    node.write_source("pods.yaml", pods(node.ns().name()).as_bytes());
    let mut agent = node.start_agent();
    agent.wait_synced();
    agent.wait_attached(&client.host_if, client.host_ifindex);
    agent.wait_attached(&server.host_if, server.host_ifindex);

    let mut samples = Vec::new();
    let mut current = 0usize;
    for rep in 0..reps {
        for &rules in &scales {
            interrupt::check();
            if rules != current {
                let before = agent.log_text().matches("reconciled").count();
                node.write_source("policies.yaml", policies(rules).as_bytes());
                agent.wait_for_log("reconciled", before + 1);
                current = rules;
            }
            let program_ms = took_ms(&agent.log_text());
            let short = short_connections(client.ns(), SERVER_IP.into(), SERVER_PORT, dur);
            eprintln!("rep {rep} rules {rules}: {:.0} conn/s, p50 {:.0} µs, p99 {:.0} µs, {} failures, programmed in {program_ms:.1} ms", short.per_s, short.p50_us, short.p99_us, short.failures);
            samples.push(Sample { rules, rep, program_ms, short });
        }
    }

    let base = median(samples.iter().filter(|s| s.rules == 0).map(|s| s.short.per_s).collect());
    let mut md = String::from("| rules selecting the server | new conns/s (median) | vs 0 rules | p50 µs | p99 µs | failures | agent programming ms |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    for &rules in &scales {
        let of = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().filter(|s| s.rules == rules).map(f).collect());
        let rate = of(&|s| s.short.per_s);
        let failures: u64 = samples.iter().filter(|s| s.rules == rules).map(|s| s.short.failures).sum();
        let _ = writeln!(
            md,
            "| {rules} | {rate:.0} | {:.3} | {:.0} | {:.0} | {failures} | {:.1} |",
            if base > 0.0 { rate / base } else { 0.0 },
            of(&|s| s.short.p50_us),
            of(&|s| s.short.p99_us),
            of(&|s| s.program_ms)
        );
    }
    println!("{md}");
    let written = std::fs::create_dir_all(&out_dir)
        .and_then(|()| std::fs::write(out_dir.join("policy.md"), &md))
        .and_then(|()| std::fs::write(out_dir.join("policy.json"), serde_json::to_string_pretty(&samples).unwrap_or_default()));
    if let Err(e) = written {
        eprintln!("writing results to {}: {e}", out_dir.display());
        std::process::exit(1);
    }
    println!("written to {} (policy.json, policy.md)", out_dir.display());
}
