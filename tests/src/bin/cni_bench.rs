//! weir-cni ADD and DEL latency: the plugin run as a runtime runs it, in a
//! node namespace, with host-local IPAM (Debian's
//! containernetworking-plugins), one ADD then one DEL per round on the
//! same pod namespace with a fresh container ID each time.
//!
//! Each invocation is timed from spawn to exit.
//!
//! Usage: weir-cni-bench [--rounds N] [--cni PATH]   (default 200, the built weir-cni)
//! Prints one line per operation: median, p99, min, max in µs.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use serde_json::json;
use weir_tests::{bins, names, netns::NetNs, node::tempdir::TempDir, Node};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Bench {
    cni: PathBuf,
    pod: NetNs,
    conf: String,
}

impl Bench {
    /// One weir-cni call; returns its wall time in µs.
    fn call(&self, command: &str, id: &str) -> u64 {
        let start = Instant::now();
        let mut child = Command::new(&self.cni)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", self.pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn weir-cni");
        child.stdin.take().expect("stdin").write_all(self.conf.as_bytes()).expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        let took = start.elapsed().as_micros() as u64;
        assert!(out.status.success(), "{command} failed: {}", String::from_utf8_lossy(&out.stdout));
        took
    }
}

fn main() {
    weir_tests::privileged::require();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let rounds: usize = flag("--rounds").and_then(|r| r.parse().ok()).unwrap_or(200);
    let cni = flag("--cni").map_or_else(|| bins::path("weir-cni"), PathBuf::from);

    let node = Node::new();
    let (records, leases) = (TempDir::new("weir-rec"), TempDir::new("weir-lease"));
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "benchnet",
        "type": "weir-cni",
        "mtu": 1450,
        "dataDir": records.path(),
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.90.0/24"}]], "dataDir": leases.path()},
        // The wiring alone: no agent runs here (registration: see docs/performance.md).
        "agent": {"socket": node.agent_socket(), "failOpen": true},
    })
    .to_string();
    let bench = Bench { cni, pod: NetNs::new("wcb"), conf };
    // weir-cni runs in the node namespace, as a runtime there runs it.
    let (add, del) = node.ns().run(move || {
        let (mut add, mut del) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        for i in 0..rounds {
            let id = names::unique(&format!("b{i}"));
            add.push(bench.call("ADD", &id));
            del.push(bench.call("DEL", &id));
        }
        (add, del)
    });
    println!("weir-cni latency, {rounds} rounds (ADD then DEL, host-local IPAM, fresh container ID each round)");
    for (what, mut v) in [("ADD", add), ("DEL", del)] {
        v.sort_unstable();
        println!(
            "{what}: median {} µs, p99 {} µs, min {} µs, max {} µs",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.first().copied().unwrap_or(0),
            v.last().copied().unwrap_or(0)
        );
    }
}
