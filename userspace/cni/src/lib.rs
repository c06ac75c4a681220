//! weir-cni: the CNI plugin (`"type": "weir-cni"`, CNI 1.0.0 and 1.1.0).
//!
//! Routed wiring, no bridge: a veth pair per attachment, the pod side named
//! CNI_IFNAME with the pod IP as /32 (/128) and a default route via
//! 169.254.1.1 (fe80::1), onlink, with a static neighbour entry for the
//! gateway; the host side named `weir` + 11 hex characters with a
//! `<ip>/32` (/128) route. Everything is made over netlink (`nl`, `wire`):
//! the only process weir-cni starts is the IPAM plugin, delegated through
//! the config's `ipam` section and CNI_PATH as the reference plugins do.
//! Every attachment is recorded (with the pod's namespace and name from
//! CNI_ARGS) under a per-attachment lock (`store`). A Kubernetes pod
//! (K8S_POD_NAMESPACE and K8S_POD_NAME in CNI_ARGS) is registered with the
//! local agent (`agent`) before ADD returns, so policy holds it from its
//! first packet.

pub mod agent;
pub mod conf;
pub mod error;
pub mod install;
pub mod ipam;
pub mod names;
pub mod nl;
pub mod ops;
pub mod store;
pub mod wire;

pub use error::CniError;

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
