//! weir-agent: the node agent. It loads weir's kernel programs, attaches
//! them to every pod interface, and (in later stages) programs the maps
//! from cluster state read from Kubernetes or a directory of YAML files.

mod args;
mod bpf_log;
mod devices;
mod dp_metrics;
mod endpoint_api;
mod endpoints;
mod events;
mod health;
mod http;
mod links;
mod masquerade;
mod memory;
mod metrics;
mod node_net;
mod pod_addrs;
mod pods;
mod probes;
mod policy;
mod reconcile;
mod reserved_ports;
mod routing;
mod run;
mod stale_sockets;

use clap::Parser as _;

/// mimalloc: see `memory`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let thp = memory::no_huge_pages();
    let args = args::Args::parse();
    init_tracing(args.log_format, args.bpf_log_level != args::BpfLogLevel::Off);
    if let Err(error) = thp {
        tracing::warn!(%error, "cannot turn transparent huge pages off; the heap may hold more memory");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run::run(args))
}

/// `kernel_logs`: `--bpf-log-level` is on, so the kernel's records
/// (target `weir::bpf`, any level) are let through whatever `WEIR_LOG` says.
fn init_tracing(format: args::LogFormat, kernel_logs: bool) {
    use tracing_subscriber::{fmt, EnvFilter};
    let mut filter = EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if kernel_logs {
        match format!("{}=trace", bpf_log::TARGET).parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(error) => eprintln!("weir-agent: cannot let kernel logs through the log filter: {error}"),
        }
    }
    match format {
        args::LogFormat::Text => fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
        args::LogFormat::Json => fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
}
