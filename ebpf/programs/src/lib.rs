//! weir's kernel library: map definitions and helpers split by concern.
//! The objects themselves (one per attach site) live in `src/bin/`.
#![no_std]

pub mod carry;
pub mod conntrack;
pub mod debug;
pub mod egress;
pub mod errors;
pub mod events;
pub mod family;
pub mod frag;
pub mod fwd;
pub mod hdr;
pub mod icmp;
pub mod ingress;
pub mod lb;
pub mod maps;
pub mod masq;
pub mod nat;
pub mod pod_v6;
pub mod policy;
pub mod quoted;
pub mod reject;
pub mod service;
pub mod sock_lb;
pub mod source;
pub mod stats;
pub mod tunnel;
pub mod xdp;
