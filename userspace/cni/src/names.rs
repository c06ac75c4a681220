//! Interface names.

/// The host-side veth of an attachment: `weir` + 11 hex characters from a
/// hash (FNV-1a, 64 bit, stable across builds) of the container ID and
/// ifname. 15 characters in all, the kernel's limit.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("weir{:011x}", hash(container_id, ifname) & 0x0fff_ffff_ffff)
}

fn hash(container_id: &str, ifname: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_15_characters_and_stable() {
        let n = host_veth_name("abc", "eth0");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("weir"));
        assert_eq!(n, host_veth_name("abc", "eth0"));
        assert_ne!(n, host_veth_name("abc", "eth1"));
    }
}
