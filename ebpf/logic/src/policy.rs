//! The policy decision for the first packet of a flow, shared by the
//! kernel (against its maps) and `weir explain` (against the pinned maps).
//!
//! Cost is O(1) in the number of policies and rules: one LPM lookup for
//! the peer's identities and at most three LPM lookups for the verdict.

use weir_common::policy::{
    EndpointInfo, IpInfo, PolicyKeyData, PolicyValue, ID_ANY, ID_WORLD, PV_AUDIT, PV_AUDIT_DENY, PV_LOG,
};

/// How the decision reads the maps.
pub trait PolicyMaps {
    /// The longest-prefix entry of `WEIR_IPCACHE` for `addr`.
    fn ipcache(&self, addr: &weir_common::addr::Addr) -> Option<IpInfo>;
    /// The longest-prefix entry of `WEIR_POLICY` for a full key.
    fn policy(&self, key: &PolicyKeyData) -> Option<PolicyValue>;
}

/// The outcome for one endpoint and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Some policy selects the endpoint in this direction.
    pub isolated: bool,
    /// The peer's identity (as the ipcache resolved it).
    pub peer_identity: u32,
    /// The identity the matching entry was keyed by (peer, its CIDR, or any).
    pub matched_identity: u32,
    /// The deciding rule, 0 for a default verdict.
    pub rule: u32,
    /// `PV_LOG` / `PV_AUDIT` / `PV_AUDIT_DENY` of the matching entry.
    pub flags: u32,
    /// The rule those flags refer to.
    pub note_rule: u32,
}

/// The peer's identities: its own and its CIDR identity.
#[inline(always)]
pub fn peer_info(maps: &impl PolicyMaps, peer: &weir_common::addr::Addr) -> IpInfo {
    match maps.ipcache(peer) {
        Some(i) => i,
        None => IpInfo { identity: ID_WORLD, cidr_identity: ID_WORLD },
    }
}

/// Decides whether `ep` may talk to `peer` in `direction` on `proto`/`port`
/// (`port` in host order): the first of the peer's identity, its CIDR
/// identity and [`ID_ANY`] with an entry covering the port gives the
/// verdict; none denies (the endpoint is isolated).
#[inline(always)]
pub fn decide(maps: &impl PolicyMaps, ep: &EndpointInfo, direction: u8, peer: &weir_common::addr::Addr, proto: u8, port: u16) -> Decision {
    let info = peer_info(maps, peer);
    let mut d = Decision { allowed: true, isolated: false, peer_identity: info.identity, matched_identity: 0, rule: 0, flags: 0, note_rule: 0 };
    if !ep.isolated(direction) {
        return d;
    }
    d.isolated = true;
    d.allowed = false;
    let ids = [info.identity, info.cidr_identity, ID_ANY];
    let mut i = 0;
    while i < ids.len() {
        let id = ids[i];
        // The CIDR identity of an address outside every CIDR is the world,
        // which no rule names; skip the repeat lookup.
        if i == 0 || id != ids[i - 1] {
            let key = PolicyKeyData::new(ep.id, direction, id, proto, port);
            if let Some(v) = maps.policy(&key) {
                d.allowed = v.allows();
                d.matched_identity = id;
                d.rule = v.rule;
                d.flags = v.flags & (PV_LOG | PV_AUDIT | PV_AUDIT_DENY);
                d.note_rule = v.note_rule;
                return d;
            }
        }
        i += 1;
    }
    d
}

/// Splits the inclusive port range `[start, end]` into aligned blocks
/// `(base, fixed_bits)`: block covers `base .. base + 2^(16 - fixed_bits)`.
/// A 16-bit range needs at most 30 blocks.
pub fn port_blocks(start: u16, end: u16, mut out: impl FnMut(u16, u8)) {
    if start > end {
        return;
    }
    let (mut lo, hi) = (start as u32, end as u32);
    while lo <= hi {
        // The largest aligned block starting at lo that fits in [lo, hi].
        let mut size: u32 = if lo == 0 { 1 << 16 } else { 1 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out(lo as u16, 16 - size.trailing_zeros() as u8);
        lo += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::{addr::Addr, policy::*};

    extern crate std;
    use std::{collections::BTreeMap, vec::Vec};

    /// Maps as sorted lists, with longest-prefix lookups done the slow way.
    #[derive(Default)]
    struct Fake {
        ipcache: Vec<(Addr, u32, IpInfo)>,
        policy: BTreeMap<(PolicyKeyData, u32), PolicyValue>,
    }

    fn bit(bytes: &[u8], i: u32) -> bool {
        bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    fn prefix_eq(a: &[u8], b: &[u8], len: u32) -> bool {
        (0..len).all(|i| bit(a, i) == bit(b, i))
    }

    impl PolicyMaps for Fake {
        fn ipcache(&self, addr: &Addr) -> Option<IpInfo> {
            self.ipcache.iter().filter(|(a, l, _)| prefix_eq(&a.bytes, &addr.bytes, *l)).max_by_key(|(_, l, _)| *l).map(|(_, _, v)| *v)
        }
        fn policy(&self, key: &PolicyKeyData) -> Option<PolicyValue> {
            self.policy.iter().filter(|((k, l), _)| prefix_eq(&k.bytes, &key.bytes, *l)).max_by_key(|((_, l), _)| *l).map(|(_, v)| *v)
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr {
        Addr::from_v4_octets([a, b, c, d])
    }

    const EP: EndpointInfo = EndpointInfo { id: 7, identity: 300, flags: EP_F_INGRESS_ISOLATED, _pad: 0 };

    #[test]
    fn not_isolated_allows_everything() {
        let f = Fake::default();
        let d = decide(&f, &EP, DIR_EGRESS, &v4(1, 2, 3, 4), 6, 80);
        assert!(d.allowed && !d.isolated);
    }

    #[test]
    fn isolated_denies_without_an_entry_and_allows_with_one() {
        let mut f = Fake::default();
        f.ipcache.push((v4(10, 0, 0, 5), 128, IpInfo { identity: 400, cidr_identity: ID_WORLD }));
        assert!(!decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 5), 6, 80).allowed);
        f.policy.insert((PolicyKeyData::new(7, DIR_INGRESS, 400, 6, 80), POLICY_PREFIX_FULL), PolicyValue::allow(9));
        let d = decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 5), 6, 80);
        assert!(d.allowed);
        assert_eq!((d.rule, d.matched_identity, d.peer_identity), (9, 400, 400));
        assert!(!decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 5), 6, 81).allowed, "other port");
        assert!(!decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 5), 17, 80).allowed, "other protocol");
        assert!(!decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 6), 6, 80).allowed, "other peer");
    }

    #[test]
    fn wildcards_cover_ports_protocols_and_peers() {
        let mut f = Fake::default();
        f.policy.insert((PolicyKeyData::new(7, DIR_INGRESS, ID_WORLD, 6, 0), POLICY_PREFIX_ANY_PORT), PolicyValue::allow(1));
        assert!(decide(&f, &EP, DIR_INGRESS, &v4(8, 8, 8, 8), 6, 5000).allowed);
        assert!(!decide(&f, &EP, DIR_INGRESS, &v4(8, 8, 8, 8), 17, 5000).allowed);
        f.policy.insert((PolicyKeyData::new(7, DIR_INGRESS, ID_ANY, 0, 0), POLICY_PREFIX_ANY_PROTO), PolicyValue::allow(2));
        assert!(decide(&f, &EP, DIR_INGRESS, &v4(8, 8, 8, 8), 17, 5000).allowed);
        assert!(!decide(&f, &EP, DIR_EGRESS, &v4(8, 8, 8, 8), 17, 5000).allowed || !EP.isolated(DIR_EGRESS));
    }

    #[test]
    fn cidr_identity_matches_pod_addresses() {
        let mut f = Fake::default();
        let cidr = ID_CIDR_FIRST + 1;
        f.ipcache.push((v4(10, 0, 0, 0), 96 + 8, IpInfo { identity: cidr, cidr_identity: cidr }));
        f.ipcache.push((v4(10, 0, 0, 5), 128, IpInfo { identity: 400, cidr_identity: cidr }));
        f.policy.insert((PolicyKeyData::new(7, DIR_INGRESS, cidr, 0, 0), POLICY_PREFIX_ANY_PROTO), PolicyValue::allow(3));
        let d = decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 5), 6, 80);
        assert!(d.allowed && d.matched_identity == cidr && d.peer_identity == 400);
        assert!(decide(&f, &EP, DIR_INGRESS, &v4(10, 9, 9, 9), 6, 80).allowed);
        assert!(!decide(&f, &EP, DIR_INGRESS, &v4(11, 0, 0, 1), 6, 80).allowed);
    }

    #[test]
    fn the_first_identity_with_an_entry_decides_and_deny_entries_deny() {
        let mut f = Fake::default();
        f.ipcache.push((v4(10, 0, 0, 5), 128, IpInfo { identity: 400, cidr_identity: ID_WORLD }));
        f.policy.insert((PolicyKeyData::new(7, DIR_INGRESS, ID_ANY, 0, 0), POLICY_PREFIX_ANY_PROTO), PolicyValue::allow(1));
        f.policy.insert((PolicyKeyData::new(7, DIR_INGRESS, 400, 6, 80), POLICY_PREFIX_FULL), PolicyValue { rule: 2, flags: PV_DENY | PV_AUDIT, note_rule: 5, _pad: 0 });
        let d = decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 5), 6, 80);
        assert!(!d.allowed && d.rule == 2 && d.flags == PV_AUDIT && d.note_rule == 5);
        // 400 has no entry for port 81: the ANY entry decides.
        let d = decide(&f, &EP, DIR_INGRESS, &v4(10, 0, 0, 5), 6, 81);
        assert!(d.allowed && d.rule == 1 && d.matched_identity == ID_ANY);
    }

    #[test]
    fn port_blocks_cover_exactly_the_range() {
        for (s, e) in [(0u16, 65535u16), (80, 80), (1, 65535), (1000, 2000), (32000, 32768), (65535, 65535), (0, 0), (5, 4)] {
            let mut covered = std::vec![false; 65536];
            let mut n = 0;
            port_blocks(s, e, |base, bits| {
                n += 1;
                let size = 1u32 << (16 - bits);
                assert_eq!(base as u32 % size, 0, "aligned");
                for p in base as u32..base as u32 + size {
                    assert!(!covered[p as usize], "overlap");
                    covered[p as usize] = true;
                }
            });
            assert!(n <= 30, "{s}-{e}: {n} blocks");
            for (p, c) in covered.iter().enumerate() {
                assert_eq!(*c, s <= e && (s as usize..=e as usize).contains(&p), "{s}-{e} port {p}");
            }
        }
    }
}
