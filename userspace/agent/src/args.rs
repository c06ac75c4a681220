//! Command-line interface of weir-agent.

use std::path::PathBuf;

use crate::source::SourceSpec;

#[derive(Debug, clap::Parser)]
#[command(name = "weir-agent", version, about = "weir node agent: eBPF service load balancing and policy")]
pub struct Args {
    /// Where cluster objects come from: `kube` (in-cluster config or
    /// kubeconfig) or `dir:<DIR>` (standalone: Kubernetes YAML/JSON files).
    #[arg(long, default_value = "kube")]
    pub source: SourceSpec,

    /// bpffs directory that holds every pin (maps and links) of this agent.
    #[arg(long, default_value = "/sys/fs/bpf/weir")]
    pub bpffs: PathBuf,

    /// This node's name, as in the Node object and EndpointSlice nodeName.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Remove every pin under --bpffs (detaching weir's programs) and exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
