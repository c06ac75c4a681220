//! weir: the debug CLI. It reads the pinned maps directly, so it works
//! whether or not weir-agent is running.

mod ct;
mod diff;
mod explain;
mod ifnames;
mod lb;
mod monitor;
mod output;
mod policy;
mod stats;
mod status;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use output::Format;

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "Show what weir's datapath does, and why")]
struct Cli {
    /// bpffs directory the agent pins under (its --bpffs).
    #[arg(long, global = true, default_value = "/sys/fs/bpf/weir")]
    bpffs: PathBuf,

    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Agent health, attached programs, and every map's fill level.
    Status {
        /// The agent's --metrics-addr.
        #[arg(long, default_value = "127.0.0.1:9965")]
        metrics_addr: SocketAddr,
    },
    /// Per-interface packet and byte counters, drops and datapath errors.
    Stats,
    /// Service frontends as the kernel reads them.
    Service {
        #[command(subcommand)]
        verb: ListVerb,
    },
    /// Service backends.
    Backend {
        #[command(subcommand)]
        verb: ListVerb,
    },
    /// Connection tracking entries.
    Ct {
        #[command(subcommand)]
        verb: CtVerb,
    },
    /// Identities: pod label sets and policy CIDRs, with their addresses.
    Identity {
        #[command(subcommand)]
        verb: ListVerb,
    },
    /// The policy of one local pod: isolation and every allowed peer.
    Policy {
        #[command(subcommand)]
        verb: PolicyVerb,
    },
    /// Datapath events as they happen: drops, policy verdicts, new service
    /// flows. Works with or without the agent.
    Monitor {
        #[command(flatten)]
        args: monitor::Args,
    },
    /// Compares the desired state (loaded here, from the agent's kind of
    /// source) with the pinned maps; exits 1 on drift.
    Diff {
        #[command(flatten)]
        args: diff::Args,
    },
    /// What the datapath will do with a new flow, and why, using the
    /// kernel's own decision code on the live maps.
    Explain {
        #[command(flatten)]
        args: explain::Args,
    },
}

#[derive(Debug, Subcommand)]
enum ListVerb {
    List,
}

#[derive(Debug, Subcommand)]
enum CtVerb {
    List {
        #[command(flatten)]
        filter: ct::Filter,
    },
    /// Deletes matching entries (their flows are judged again).
    Flush {
        #[command(flatten)]
        filter: ct::Filter,
        /// Allow flushing with no filter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyVerb {
    /// `weir policy show <pod-ip | namespace/name>`.
    Show { pod: String },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let layout = weir_datapath::PinLayout::new(&cli.bpffs);
    let f = cli.output;
    let result = match cli.command {
        Command::Status { metrics_addr } => status::run(&layout, metrics_addr, f),
        Command::Stats => stats::run(&layout, f),
        Command::Service { verb: ListVerb::List } => lb::services(&layout, f),
        Command::Backend { verb: ListVerb::List } => lb::backends(&layout, f),
        Command::Ct { verb: CtVerb::List { filter } } => ct::list(&layout, &filter, f),
        Command::Ct { verb: CtVerb::Flush { filter, all } } => ct::flush(&layout, &filter, all, f),
        Command::Identity { verb: ListVerb::List } => policy::identities(&layout, f),
        Command::Policy { verb: PolicyVerb::Show { pod } } => policy::show(&layout, &pod, f),
        Command::Monitor { args } => monitor::run(&layout, &args, f),
        Command::Diff { args } => match diff::run(&layout, &args, f) {
            Ok(true) => Ok(()),
            Ok(false) => return std::process::ExitCode::from(1),
            Err(e) => Err(e),
        },
        Command::Explain { args } => explain::run(&layout, &args, f),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
