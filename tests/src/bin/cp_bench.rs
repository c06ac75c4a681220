//! Control-plane measurement: the real agent, in standalone mode, on a
//! node namespace, programming N services × E endpoints from YAML.
//!
//! Reports: cold programming (agent start → maps written, and the initial
//! full sync alone), one endpoint change (p50/p99 of the agent's own
//! event → maps-written latency), and agent RSS. No assertions: numbers
//! go to docs/performance.md.
//!
//! Usage: weir-cp-bench [SERVICES] [ENDPOINTS] [CHANGES]   (default 10000 10 200)

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use weir_tests::Node;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn ep(i: u32, j: u32) -> Ipv4Addr {
    let n = i * 16 + j;
    Ipv4Addr::new(10, 244, (n / 250 % 250) as u8, (n % 250 + 1) as u8)
}

fn service_yaml(i: u32, endpoints: u32, not_ready: Option<u32>) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\nspec:\n  clusterIP: {}\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n",
        vip(i)
    );
    for j in 0..endpoints {
        let ready = not_ready != Some(j);
        let _ = writeln!(y, "- addresses: [{}]\n  conditions: {{ready: {ready}}}", ep(i, j));
    }
    y.push_str("---\n");
    y
}

/// A field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn took_us(line: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix("took_us=")).and_then(|v| v.parse().ok())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let services = args.first().copied().unwrap_or(10_000);
    let endpoints = args.get(1).copied().unwrap_or(10);
    let changes = args.get(2).copied().unwrap_or(200);
    let node = Node::new();
    // Services 1.. live in files of 100; service 0 has a file of its own, which the change loop edits.
    node.write_source("svc-0.yaml", service_yaml(0, endpoints, None).as_bytes());
    let mut chunk = String::new();
    for i in 1..services {
        chunk.push_str(&service_yaml(i, endpoints, None));
        if i % 100 == 0 || i == services - 1 {
            node.write_source(&format!("svc-{i:05}.yaml"), chunk.as_bytes());
            chunk.clear();
        }
    }
    let slots = (services as u64 * weir_logic::maglev::table_size(endpoints) as u64 + 1024).max(1 << 20);
    let slots_arg = slots.to_string();
    let start = Instant::now();
    let mut agent = node.start_agent_with(&["--lb-table-slots", &slots_arg, "--resync-interval", "3600"]);
    agent.wait_synced();
    let cold_wall = start.elapsed();
    let log = agent.log_text();
    let initial_us = log.lines().find(|l| l.contains("initial sync")).and_then(took_us).unwrap_or(0);
    let pid = agent.pid().unwrap_or(0);
    let rss_cold = rss_kib(pid);
    let (anon, shmem) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssShmem:"));

    let mut lat = Vec::new();
    for k in 0..changes {
        let before = agent.log_text().matches("reconciled").count();
        node.write_source("svc-0.yaml", service_yaml(0, endpoints, Some(k % endpoints)).as_bytes());
        agent.wait_for_log("reconciled", before + 1);
        if let Some(us) = agent.log_text().lines().filter(|l| l.contains("reconciled")).nth(before).and_then(took_us) {
            lat.push(us);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    lat.sort_unstable();
    let rss_after = rss_kib(pid);
    println!("| metric | value |");
    println!("|---|---|");
    println!("| services × endpoints | {services} × {endpoints} |");
    println!("| cold: agent start → all services programmed (wall, incl. YAML parsing) | {:.0} ms |", cold_wall.as_secs_f64() * 1e3);
    println!("| cold: initial full sync (translate + map writes) | {:.0} ms |", initial_us as f64 / 1e3);
    println!("| one endpoint change, event → maps written, p50 | {:.2} ms |", percentile(&lat, 0.5) as f64 / 1e3);
    println!("| one endpoint change, event → maps written, p99 | {:.2} ms |", percentile(&lat, 0.99) as f64 / 1e3);
    println!("| changes measured | {} |", lat.len());
    println!("| agent RSS after cold sync | {:.0} MiB |", rss_cold as f64 / 1024.0);
    println!("| of which heap (RssAnon) | {:.0} MiB |", anon as f64 / 1024.0);
    let _ = shmem;
    println!("| agent RSS after the changes | {:.0} MiB |", rss_after as f64 / 1024.0);
    println!("| LB table slots (kernel BPF map memory, not agent RSS) | {slots} ({:.0} MiB) |", slots as f64 * 8.0 / 1048576.0);
}
