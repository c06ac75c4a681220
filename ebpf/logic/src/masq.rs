//! The two halves of a masqueraded flow (see `weir_common::masq`): the
//! kernel builds the in key from the out entry when it creates a flow, and
//! both the kernel and the agent's collector find a half's twin with it.

use weir_common::{
    ct::{CtEntry, CtKey, CT_SNAT_IN, CT_SNAT_OUT},
    lb::{PROTO_ICMP, PROTO_ICMPV6},
};

/// The key of the other half of the masqueraded flow `key` → `e`.
///
/// Out (pod → remote, `e` holds the node address and port) gives in
/// (remote → node). For an ICMP or ICMPv6 echo both "ports" are the
/// identifier, so the reply's are the translated one.
#[inline(always)]
pub fn twin(key: &CtKey, e: &CtEntry) -> Option<CtKey> {
    let icmp = key.proto == PROTO_ICMP || key.proto == PROTO_ICMPV6;
    match key.kind {
        CT_SNAT_OUT => Some(CtKey {
            saddr: key.daddr,
            daddr: e.nat_addr,
            sport: if icmp { e.nat_port } else { key.dport },
            dport: e.nat_port,
            proto: key.proto,
            kind: CT_SNAT_IN,
            _pad: 0,
        }),
        CT_SNAT_IN => Some(CtKey {
            saddr: e.nat_addr,
            daddr: key.saddr,
            sport: e.nat_port,
            dport: if icmp { e.nat_port } else { key.sport },
            proto: key.proto,
            kind: CT_SNAT_OUT,
            _pad: 0,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_common::addr::Addr;

    fn out(proto: u8, sport: u16, dport: u16) -> (CtKey, CtEntry) {
        let k = CtKey {
            saddr: Addr::from_v4_octets([10, 244, 1, 10]),
            daddr: Addr::from_v4_octets([192, 168, 0, 100]),
            sport,
            dport,
            proto,
            kind: CT_SNAT_OUT,
            _pad: 0,
        };
        let e = CtEntry { nat_addr: Addr::from_v4_octets([192, 168, 0, 11]), nat_port: 61_001u16.to_be(), ..CtEntry::default() };
        (k, e)
    }

    #[test]
    fn tcp_out_and_in_are_each_others_twins() {
        let (k, e) = out(6, 40_000u16.to_be(), 80u16.to_be());
        let inn = twin(&k, &e).unwrap();
        assert_eq!((inn.saddr, inn.daddr, inn.sport, inn.dport, inn.kind), (k.daddr, e.nat_addr, k.dport, e.nat_port, CT_SNAT_IN));
        let back = CtEntry { nat_addr: k.saddr, nat_port: k.sport, ..CtEntry::default() };
        assert_eq!(twin(&inn, &back), Some(k));
    }

    #[test]
    fn an_echo_reply_carries_the_translated_identifier_in_both_ports() {
        for proto in [PROTO_ICMP, PROTO_ICMPV6] {
            let (k, e) = out(proto, 7u16.to_be(), 7u16.to_be());
            let inn = twin(&k, &e).unwrap();
            assert_eq!((inn.sport, inn.dport), (e.nat_port, e.nat_port), "protocol {proto}");
            let back = CtEntry { nat_addr: k.saddr, nat_port: k.sport, ..CtEntry::default() };
            assert_eq!(twin(&inn, &back), Some(k));
        }
    }

    #[test]
    fn other_kinds_have_no_masquerade_twin() {
        let (mut k, e) = out(17, 1, 2);
        k.kind = weir_common::ct::CT_POLICY;
        assert_eq!(twin(&k, &e), None);
    }
}
