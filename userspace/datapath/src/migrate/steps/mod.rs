//! Conversions between layout versions: one function per map and version
//! step, each in a module named for the layout it starts from (which keeps
//! that layout's types), with its unit tests. A step takes the key and
//! value bytes of version `from` and returns those of `from + 1`, or
//! `None` to leave the entry behind (say why in the step).
//!
//! A change to a stateful map's layout bumps its version in
//! `weir_common::abi::LAYOUTS` (the layout guard insists), adds its step
//! here, and names the first layout's sizes in [`V1_SIZES`] if they
//! changed (maps pinned before layout versions are recognised by them).
//! The unit test `every_stateful_version_is_reachable_from_v1` fails until
//! the step exists.
//!
//! Steps so far:
//! - `WEIR_CT`, `WEIR_SNAT` v1 → v2: the expiry in whole seconds
//!   ([`ct_v1`]).
//! - `WEIR_CONFIG` v1 → v2: the node's IPv6 address appended
//!   ([`config_v1`]).
//! - `WEIR_CT` v2 → v3: IPv4 flows move to `WEIR_CT4` ([`ct_v2`]).
//! - `WEIR_CONFIG` v2 → v3: the socket programs' scope appended
//!   ([`config_v2`]).
//! - `WEIR_CT` v3 → v4: IPv6 values keep no address, but masqueraded
//!   flows' reverse entries, which move to `WEIR_CT6_MASQ` ([`ct_v3`]).
//! - `WEIR_CT6_MASQ` v1 → v2: keyed without the node's address, the
//!   client's the only address kept ([`ct6_masq_v1`]).
//! - `WEIR_SOCK_REVNAT`, `WEIR_SOCK_REVNAT_POD` v1 → v2: a TCP socket's
//!   entry keyed by its cookie alone, the backend in the value
//!   ([`sock_revnat_v1`]).

pub mod config_v1;
pub mod config_v2;
pub mod ct6_masq_v1;
pub mod ct_v1;
pub mod ct_v2;
pub mod ct_v3;
pub mod sock_revnat_v1;
#[cfg(test)]
pub(super) mod fixtures;

use weir_common::maps::{CONFIG, CT, CT6_MASQ, CT_PREV, SNAT, SOCK_REVNAT, SOCK_REVNAT_POD};

/// Converts one entry from `from` to `from + 1`.
pub type Step = fn(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)>;

/// (map, from version, step).
const STEPS: &[(&str, u32, Step)] = &[
    (CT, 1, ct_v1::step),
    (CT, 2, ct_v2::step),
    (CT, 3, ct_v3::step),
    (CT6_MASQ, 1, ct6_masq_v1::step),
    (SNAT, 1, ct_v1::step),
    (CONFIG, 1, config_v1::step),
    (CONFIG, 2, config_v2::step),
    (SOCK_REVNAT, 1, sock_revnat_v1::step),
    (SOCK_REVNAT_POD, 1, sock_revnat_v1::step),
];

/// The key and value sizes at layout v1 of the maps whose sizes have
/// changed since: a map pinned before layout versions (it has no record)
/// is taken for v1 when its sizes are these, or this build's while it is
/// at v1.
const V1_SIZES: &[(&str, u32, u32)] = &[
    (CT, ct_v1::KEY_SIZE, ct_v1::VALUE_SIZE),
    (CT_PREV, ct_v1::KEY_SIZE, ct_v1::VALUE_SIZE),
    (SNAT, ct_v1::KEY_SIZE, ct_v1::VALUE_SIZE),
    (CT6_MASQ, ct6_masq_v1::KEY_SIZE, ct6_masq_v1::VALUE_SIZE),
    (CONFIG, config_v1::KEY_SIZE, config_v1::VALUE_SIZE),
    (SOCK_REVNAT, sock_revnat_v1::KEY_SIZE, sock_revnat_v1::VALUE_SIZE),
    (SOCK_REVNAT_POD, sock_revnat_v1::KEY_SIZE, sock_revnat_v1::VALUE_SIZE),
];

/// `name`'s key and value sizes at layout v1, when they differ from this
/// build's.
pub fn v1_sizes(name: &str) -> Option<(u32, u32)> {
    V1_SIZES.iter().find(|(n, _, _)| *n == name).map(|(_, k, v)| (*k, *v))
}

fn step(name: &str, from: u32) -> Option<Step> {
    STEPS.iter().find(|(n, v, _)| *n == name && *v == from).map(|(_, _, s)| *s)
}

/// Whether every step from `from` to `to` exists.
pub fn has_chain(name: &str, from: u32, to: u32) -> bool {
    (from..to).all(|v| step(name, v).is_some())
}

/// Converts one entry from version `from` to `to` (unchanged when equal);
/// `None` leaves it behind.
pub fn convert(name: &str, from: u32, to: u32, key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut cur = (key.to_vec(), value.to_vec());
    for v in from..to {
        cur = step(name, v)?(&cur.0, &cur.1)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stateful_version_is_reachable_from_v1() {
        for l in weir_common::abi::LAYOUTS.iter().filter(|l| l.stateful) {
            assert!(has_chain(l.name, 1, l.version), "{} is at layout v{} with no conversion chain from v1", l.name, l.version);
        }
    }

    #[test]
    fn the_same_version_converts_to_itself_and_a_chain_runs_every_step() {
        assert_eq!(convert(CT, 2, 2, b"k", b"v"), Some((b"k".to_vec(), b"v".to_vec())));
        assert_eq!(convert(CT, 1, 2, b"k", b"v"), None, "not a v1 entry");
        assert_eq!(convert(CT, 1, 5, &[0; 40], &[0; 64]), None, "no step from v4 yet");
        let (k, v) = convert(CT, 1, 4, &[1; 40], &[0; 64]).expect("an IPv6 v1 entry, through v2 and v3");
        assert_eq!((k.len(), v.len()), (40, 24));
        let (k, v) = convert(CT, 1, 3, &[1; 40], &[0; 64]).expect("an IPv6 v1 entry, through v2");
        assert_eq!((k.len(), v.len()), (40, 56));
        let (k, v) = convert(SNAT, 1, 2, &[1; 40], &[0; 64]).expect("a v1 entry");
        assert_eq!((k.len(), v.len()), (40, 56));
    }

    #[test]
    fn v1_sizes_name_the_maps_whose_sizes_changed() {
        assert_eq!(v1_sizes(CT), Some((40, 64)));
        assert_eq!(v1_sizes(weir_common::maps::FRONTENDS), None);
    }
}
