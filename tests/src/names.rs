//! Unique names for namespaces, pins and interfaces, so tests run in parallel.

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short unique name: `<prefix><pid>x<n>`.
pub fn unique(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// The host-side veth name of a pod interface: `weir` + 11 hex characters
/// from a hash of the container ID and ifname (the CNI contract).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bit: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("weir{:011x}", h & 0x0fff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_15_chars_and_stable() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("weir"));
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
    }
}
