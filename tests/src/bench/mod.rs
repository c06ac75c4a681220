//! The benchmark suite behind `cargo xtask bench`: weir, kube-proxy-style
//! iptables rules and kube-proxy-style nftables rules on the same
//! topology, in the same run, interleaved.

pub mod baseline;
pub mod measure;
pub mod memory;
pub mod plot;
pub mod policy;
pub mod report;
pub mod topo;
pub mod xnode;
