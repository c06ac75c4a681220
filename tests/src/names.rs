//! Unique names for namespaces, pins and interfaces, so tests run in parallel.

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short unique name: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// The host-side veth name of a pod interface: weir-cni's own function,
/// so the harness wires pods exactly as the plugin does.
pub use weir_cni::names::host_veth_name;
