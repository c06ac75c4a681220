//! weir-cni ADD and DEL latency: the plugin run as a runtime runs it, in a
//! node namespace, with host-local IPAM (Debian's
//! containernetworking-plugins), one ADD then one DEL per round on the
//! same pod namespace with a fresh container ID each time.
//!
//! Each invocation is timed from spawn to exit. Two configurations,
//! interleaved round by round: the wiring alone (no agent on the node,
//! `failOpen`), and with the node's agent, where ADD returns only once the
//! agent has programmed the pod (a Pod under a default-deny policy):
//! the time from ADD's start to the pod's first judged packet.
//!
//! Usage: weir-cni-bench [--rounds N] [--cni PATH] [--no-agent] [--cluster [NODES [PODS]]] (`--help`)
//! (default 200, the built weir-cni; --no-agent: the wiring alone on a
//! node where no agent runs; --cluster: the agent also holds issue 18's
//! generated cluster, NODES Nodes and PODS Pods with their Services and
//! policies, `weir_tests::bench::cluster_gen`)
//! Prints one line per operation and configuration: median, p99, min, max in µs.

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
}

impl Bench {
    /// One weir-cni call with configuration `conf`; returns its wall time in µs.
    fn call(&self, conf: &str, command: &str, id: &str) -> u64 {
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
        child.stdin.take().expect("stdin").write_all(conf.as_bytes()).expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        let took = start.elapsed().as_micros() as u64;
        assert!(out.status.success(), "{command} failed: {}", String::from_utf8_lossy(&out.stdout));
        took
    }
}

/// weir-cni ADD and DEL latency, with and without the node's agent.
#[derive(clap::Parser, Debug)]
#[command(name = "weir-cni-bench")]
struct Args {
    /// ADD and DEL rounds per configuration.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// The plugin binary (default: the built weir-cni).
    #[arg(long)]
    cni: Option<PathBuf>,
    /// The wiring alone, on a node where no agent runs.
    #[arg(long)]
    no_agent: bool,
    /// The agent also holds issue 18's generated cluster: NODES Nodes and
    /// PODS Pods with their Services and policies.
    #[arg(long, num_args = 0..=2, value_names = ["NODES", "PODS"], conflicts_with = "no_agent")]
    cluster: Option<Vec<u32>>,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    weir_tests::privileged::require();
    let rounds = args.rounds;
    let cni = args.cni.clone().unwrap_or_else(|| bins::path("weir-cni"));

    let node = Node::new();
    let (records, leases) = (TempDir::new("weir-rec"), TempDir::new("weir-lease"));
    let conf = |agent: serde_json::Value| {
        json!({
            "cniVersion": "1.1.0",
            "name": "benchnet",
            "type": "weir-cni",
            "mtu": 1450,
            "dataDir": records.path(),
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.90.0/24"}]], "dataDir": leases.path()},
            "agent": agent,
        })
        .to_string()
    };
    // The wiring alone: nobody listens on the socket.
    let alone = conf(json!({"socket": node.run_dir().join("none.sock"), "failOpen": true}));
    // Registered with the node's agent, fail closed.
    let registered = conf(json!({"socket": node.agent_socket()}));
    node.write_source(
        "bench.yaml",
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: bench, labels: {{app: p}}}}\nspec: {{nodeName: {}, containers: [{{name: c, image: x}}]}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny, namespace: bench}}\nspec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}\n",
            node.ns().name()
        )
        .as_bytes(),
    );
    let no_agent = args.no_agent;
    let cluster: Option<(u32, u32)> = args.cluster.as_ref().map(|v| (v.first().copied().unwrap_or(4000), v.get(1).copied().unwrap_or(100_000)));
    if let Some((nodes, pods)) = cluster {
        weir_tests::bench::cluster_gen::write_cluster(&node, node.ns().name(), nodes, pods);
    }
    let agent = (!no_agent).then(|| {
        // Room for the cluster's services (a Maglev table each).
        let slots = (u64::from(weir_tests::bench::cluster_gen::SERVICES) * u64::from(weir_logic::maglev::table_size(weir_tests::bench::cluster_gen::ENDPOINTS)) + 1024).max(1 << 22).to_string();
        let mut a = node.start_agent_with(&["--lb-table-slots", &slots]);
        a.wait_for_log_within("initial sync", 1, std::time::Duration::from_secs(600));
        a
    });
    let configs: Vec<String> = if no_agent { vec![alone] } else { vec![alone, registered] };
    let bench = Bench { cni, pod: NetNs::new("wcb") };
    // weir-cni runs in the node namespace, as a runtime there runs it.
    let times = node.ns().run(move || {
        let mut t: [Vec<u64>; 4] = Default::default();
        for i in 0..rounds {
            for (j, c) in configs.iter().enumerate() {
                let id = names::unique(&format!("b{i}"));
                t[2 * j].push(bench.call(c, "ADD", &id));
                t[2 * j + 1].push(bench.call(c, "DEL", &id));
            }
        }
        t
    });
    // The agent's own part of each registration, from its log.
    if let Some(a) = &agent {
        let field = |l: &str, name: &str| l.split_whitespace().find_map(|w| w.strip_prefix(name)?.parse::<u64>().ok());
        let log = a.log_text();
        let mut own: Vec<u64> = log.lines().filter(|l| l.contains("pod registered and programmed")).filter_map(|l| field(l, "took_us=")).collect();
        let mut work: Vec<u64> = log.lines().filter(|l| l.contains("registered pods programmed")).filter_map(|l| field(l, "work_us=")).collect();
        let mut written: Vec<u64> = log.lines().filter(|l| l.contains("registered pods programmed")).filter_map(|l| field(l, "took_us=")).collect();
        own.sort_unstable();
        work.sort_unstable();
        written.sort_unstable();
        eprintln!(
            "agent: registration to answer, median {} µs (p99 {} µs); to maps written {} µs; of which the reconcile's work {} µs",
            percentile(&own, 0.5),
            percentile(&own, 0.99),
            percentile(&written, 0.5),
            percentile(&work, 0.5)
        );
    }
    drop(agent);
    println!("weir-cni latency, {rounds} rounds (ADD then DEL, host-local IPAM, fresh container ID each round; the two configurations interleaved)");
    if let Some((nodes, pods)) = cluster {
        println!("the agent holds a cluster of {nodes} Nodes and {pods} Pods, with its Services and policies");
    }
    let labels = if no_agent {
        ["ADD, wiring alone, no agent on the node", "DEL, wiring alone, no agent on the node", "", ""]
    } else {
        ["ADD, wiring alone", "DEL, wiring alone", "ADD, registered with the agent", "DEL, registered with the agent"]
    };
    for (what, mut v) in labels.into_iter().zip(times).filter(|(_, v)| !v.is_empty()) {
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
