//! LPM trie keys over weir's 16-byte addresses (IPv4 v4-mapped, its prefix
//! length offset by 96), for the maps keyed by CIDR.

use aya::maps::lpm_trie::Key;
use weir_common::{addr::Addr, policy::V4_PREFIX_BASE};
use weir_desired::policy::Prefix;

/// The trie key of `p`.
pub fn key(p: &Prefix) -> Key<Addr> {
    let bits = if p.addr.is_ipv4() { V4_PREFIX_BASE + u32::from(p.len) } else { u32::from(p.len) };
    Key::new(bits, Addr::from(p.addr))
}

/// Whether two keys name the same prefix.
pub fn same(a: &Key<Addr>, b: &Key<Addr>) -> bool {
    a.prefix_len() == b.prefix_len() && a.data() == b.data()
}
