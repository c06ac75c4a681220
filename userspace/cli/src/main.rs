//! weir: the debug CLI. It reads the pinned maps directly, so it works
//! whether or not weir-agent is running.

mod ifnames;
mod output;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weir", version, about = "Show what weir's datapath does, and why")]
struct Cli {
    /// bpffs directory the agent pins under (its --bpffs).
    #[arg(long, global = true, default_value = "/sys/fs/bpf/weir")]
    bpffs: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Per-interface packet and byte counters kept by the datapath.
    Stats {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = output::Format::Table)]
        output: output::Format,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let layout = weir_datapath::PinLayout::new(&cli.bpffs);
    let result = match cli.command {
        Command::Stats { output } => stats::run(&layout, output),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
