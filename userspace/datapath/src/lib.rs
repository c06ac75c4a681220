//! weir's datapath access from userspace: the embedded kernel objects, the
//! bpffs pin layout, loading and attaching programs (adopting pins left by an
//! earlier agent), and typed reads and writes of the pinned maps.

pub mod attach;
pub mod batch;
pub mod config;
pub mod cgroup;
pub mod ct;
pub mod error;
pub mod explain;
pub mod inventory;
pub mod kernel_log;
pub mod lb;
pub mod links;
pub mod loader;
pub mod lpm;
pub mod masq;
pub mod migrate;
pub mod mmap;
pub mod objects;
pub mod pinned;
pub mod policy;
pub mod programmed;
pub mod pins;
pub mod stats;
pub mod tunnel;
pub mod xdp;

pub use error::DatapathError;
pub use kernel_log::KernelLogLevel;
pub use loader::{LoadOptions, NodeDatapath, PodDatapath, VerifierLog};
pub use pins::PinLayout;
pub use weir_common::config::DatapathConfig;
