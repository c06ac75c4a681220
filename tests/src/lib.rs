//! weir's test harness. Every topology lives inside a dedicated "node"
//! network namespace with no route out of the machine; pods hang off it as
//! network namespaces wired exactly as weir-cni wires them; the agent runs
//! inside the node namespace with its own bpffs directory.
//!
//! Everything created here is owned by an RAII guard, so namespaces, links,
//! pins and processes are removed even when a test panics.

pub mod agent;
pub mod bench;
pub mod bins;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod hostile;
pub mod containerd;
pub mod kubeapi;
pub mod manifests;
pub mod names;
pub mod netns;
pub mod netpol;
pub mod north_south;
pub mod old_layout;
pub mod node;
pub mod pod;
pub mod pod_cgroup;
pub mod privileged;
pub mod services;
pub mod stats;
pub mod testrun;
pub mod traffic;
pub mod wait;
pub mod xdp_pass;

pub use agent::Agent;
pub use node::Node;
pub use pod::Pod;

/// The time of day in UTC as the agent's log writes it (`HH:MM:SS.ffffff`),
/// so what a test saw can be placed among the agent's log lines.
pub fn utc_clock() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", s / 3600, s / 60 % 60, s % 60, d.subsec_micros())
}
