//! Conversions between layout versions: one function per map and version
//! step, next to nothing else, each with its unit tests. A step takes the
//! key and value bytes of version `from` and returns those of `from + 1`,
//! or `None` to leave the entry behind (say why in the step).
//!
//! Every map is at layout v1 today, so there is no step yet. A change to a
//! stateful map's layout bumps its version in `weir_common::abi::LAYOUTS`
//! (the layout guard insists) and adds its step here, keeping the previous
//! layout's types under a `v<N>` module beside the step. The unit test
//! `every_stateful_version_is_reachable_from_v1` fails until it exists.

/// Converts one entry from `from` to `from + 1`.
pub type Step = fn(key: &[u8], value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)>;

/// (map, from version, step).
const STEPS: &[(&str, u32, Step)] = &[];

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
    fn the_same_version_converts_to_itself() {
        assert_eq!(convert("WEIR_CT", 1, 1, b"k", b"v"), Some((b"k".to_vec(), b"v".to_vec())));
        assert_eq!(convert("WEIR_CT", 1, 2, b"k", b"v"), None);
    }
}
