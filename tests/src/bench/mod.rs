//! The benchmark suite behind `cargo xtask bench`: weir, kube-proxy-style
//! iptables rules and kube-proxy-style nftables rules on the same
//! topology, in the same run, interleaved.

pub mod baseline;
pub mod bpf_time;
pub mod cell;
pub mod cluster_gen;
pub mod concurrent;
pub mod cpu;
pub mod interrupt;
pub mod measure;
pub mod memory;
pub mod paired;
pub mod perf_profile;
pub mod plot;
pub mod policy;
pub mod report;
pub mod stats;
pub mod topo;
pub mod udp_flows;
pub mod udp_sinks;
pub mod xnode;
