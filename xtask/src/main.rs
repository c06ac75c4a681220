//! weir's developer tasks. Every task that needs the toolchain or the
//! machine runs `setup` first, so a fresh machine needs no third step.
//!
//! ```text
//! cargo xtask setup     install what this machine lacks (idempotent, seconds when nothing is missing)
//! cargo xtask build     setup + cargo build --release
//! cargo xtask test      setup + build + every test layer
//! cargo xtask demo      setup + build + the standalone demo
//! ```

mod setup;
mod sh;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "weir developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: Debian packages, nightly rust-src, bpf-linker, bpffs mount.
    Setup,
    /// Setup, then build every binary in release mode.
    Build,
    /// Setup, build, then run every test layer (extra args go to `cargo test`).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, then run the standalone demo in its own network namespaces.
    Demo,
    /// Setup, build, then measure the per-packet cost of the pod programs
    /// (BPF_PROG_TEST_RUN), benchmark weir against kube-proxy-style
    /// iptables and nftables rules, policy cost at 0, 100 and 10,000
    /// rules, and cross-node traffic in both routing modes against kernel
    /// routing and kernel VXLAN (writes target/bench/).
    Bench {
        /// A few minutes: fewer scales, one run, shorter measurements.
        #[arg(long)]
        quick: bool,
        /// Measure the ClusterIP cells over IPv6 too, each beside its IPv4
        /// twin (weir-bench --families ipv4,ipv6; the IPv6 report goes to
        /// target/bench/ipv6/).
        #[arg(long)]
        ipv6: bool,
        /// For weir, each BPF program's time per connection and per
        /// request, through the ClusterIP and pod to pod (weir-bench
        /// --bpf-stats; writes target/bench/bpf_time.md, and ipv6/bpf_time.md
        /// with --ipv6).
        #[arg(long)]
        bpf_stats: bool,
        /// For weir, each CPU's time per connection by symbol, through the
        /// ClusterIP and pod to pod, under `perf record -a` (weir-bench
        /// --perf; needs perf, Debian's linux-perf; writes
        /// target/bench/perf.md, and ipv6/perf.md with --ipv6).
        #[arg(long)]
        perf: bool,
    },
    /// Regenerate the CRD YAML under manifests/crds/ from the Rust types.
    Codegen,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build()
        }
        Task::Test { args } => {
            setup::run()?;
            build()?;
            test(&root, &args)
        }
        Task::Bench { quick, ipv6, bpf_stats, perf } => {
            setup::run()?;
            build()?;
            for bin in ["weir-pktcost", "weir-bench", "weir-policy-bench", "weir-xnode-bench"] {
                let mut args = vec!["run", "--release", "--quiet", "-p", "weir-tests", "--bin", bin, "--"];
                if quick {
                    args.push("--quick");
                }
                if ipv6 && bin == "weir-bench" {
                    args.extend(["--families", "ipv4,ipv6"]);
                }
                if bpf_stats && bin == "weir-bench" {
                    args.push("--bpf-stats");
                }
                if perf && bin == "weir-bench" {
                    args.push("--perf");
                }
                sh::run("cargo", &args)?;
            }
            Ok(())
        }
        Task::Codegen => sh::run("cargo", &["run", "--release", "--quiet", "-p", "weir-crds", "--bin", "weir-crdgen"]),
        Task::Demo => {
            setup::run()?;
            build()?;
            sh::run("cargo", &["run", "--release", "--quiet", "-p", "weir-tests", "--bin", "weir-demo"])
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn build() -> anyhow::Result<()> {
    sh::step("building (cargo build --release)");
    sh::run("cargo", &["build", "--release"])
}

fn test(root: &std::path::Path, extra: &[String]) -> anyhow::Result<()> {
    sh::step("running every test layer (cargo test --release)");
    let bin_dir = root.join("target/release");
    // Every test binary runs even after one fails, so one run shows every
    // failure.
    let mut args: Vec<&str> = vec!["test", "--release", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    let (ok, summary) = sh::run_tests("cargo", &args, &[("WEIR_BIN_DIR", bin_dir.to_string_lossy().as_ref())])?;
    // Each failure's panic again, then one closing line for the whole
    // run: the end of a long log is what a reader sees first.
    if !summary.failures.is_empty() {
        println!("failed tests, the start of each panic:");
        for (name, lines) in &summary.failures {
            println!("  {name}");
            for l in lines {
                println!("    {l}");
            }
        }
    }
    println!("summary: {} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.ignored);
    if !ok || summary.failed > 0 {
        // Not an error from main: its backtrace (RUST_BACKTRACE in CI)
        // would bury the lines above.
        eprintln!("tests failed");
        std::process::exit(1);
    }
    if summary.passed == 0 {
        anyhow::bail!("no test ran");
    }
    Ok(())
}
