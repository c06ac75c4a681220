//! Conntrack entries for the steps' unit tests.

use std::net::{IpAddr, Ipv6Addr};

use weir_common::{
    addr::Addr,
    ct::{CtEntry, CtKey, CT_STATE_ESTABLISHED},
};

/// An IPv6 address from its text.
pub fn addr6(s: &str) -> Addr {
    Addr::from(IpAddr::V6(s.parse::<Ipv6Addr>().expect("an address")))
}

/// An established TCP service flow's entry of `kind`, keyed `s` → `d`,
/// with `nat`, `orig` and `flags`; every other field set (not zero), so
/// that a conversion that loses one shows.
pub fn flow(kind: u8, s: Addr, d: Addr, nat: Addr, orig: Addr, flags: u8) -> (CtKey, CtEntry) {
    let k = CtKey { saddr: s, daddr: d, sport: 8080u16.to_be(), dport: 40000u16.to_be(), proto: 6, kind, _pad: 0 };
    let e = CtEntry {
        nat_addr: nat,
        orig_addr: orig,
        expires_s: 77,
        backend_id: 7,
        svc_id: 3,
        nat_port: 80u16.to_be(),
        orig_port: 40000u16.to_be(),
        state: CT_STATE_ESTABLISHED,
        flags,
        _pad: 0,
        owner: 12,
    };
    (k, e)
}
