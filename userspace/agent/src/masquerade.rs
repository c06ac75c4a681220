//! Masquerade of pod egress (`--masquerade`, `--non-masquerade-cidrs`):
//! what the datapath's `WEIR_MASQ` and `WEIR_NO_MASQ` should hold, from the
//! Node objects and the node's devices. Pure; `node_net` writes it.
//!
//! Inside the cluster, where a pod's own address is kept: every node's
//! pod CIDRs, every node address (another node's host-network pods and
//! the tunnel's outer sources must see the pod as itself; a pod's raw
//! VXLAN towards a node is then judged by its own address and refused),
//! link-local 169.254.0.0/16 (ip-masq-agent's default, and weir's hairpin
//! address) and fe80::/10, and `--non-masquerade-cidrs` (ip-masq-agent's
//! meaning). Both families: IPv6 pod egress is masqueraded to the
//! device's IPv6 address as IPv4's is to its IPv4 one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use weir_common::{
    addr::Addr,
    masq::{device_key, MasqDevice},
};
use weir_desired::policy::Prefix;
use weir_model::node::NodeModel;

/// Destinations pod egress keeps its source towards.
pub fn inside(nodes: &[&NodeModel], extra: &[Prefix]) -> BTreeSet<Prefix> {
    let mut out: BTreeSet<Prefix> = extra.iter().copied().collect();
    out.insert(Prefix::new(IpAddr::from([169, 254, 0, 0]), 16));
    out.insert(Prefix::new(IpAddr::from([0xfe80, 0, 0, 0, 0, 0, 0, 0]), 10));
    for n in nodes {
        out.extend(n.pod_cidrs.iter().copied());
        out.extend(n.addresses.iter().chain(&n.internal_ips).map(|a| Prefix::host(*a)));
    }
    out
}

/// How each uplink masquerades each family (keyed by
/// `weir_common::masq::device_key`): from this node's InternalIP of the
/// family when the device holds it, else from the device's first address
/// of the family (link-local IPv6 addresses aside: they do not leave the
/// link), on the ports `(min, max)`. A device with no address of a family
/// masquerades nothing of it.
pub fn devices(uplinks: &[(String, u32)], internal_ips: &[IpAddr], addrs: &[(u32, IpAddr)], ports: (u16, u16)) -> BTreeMap<u32, MasqDevice> {
    let mut out = BTreeMap::new();
    for (_, ifindex) in uplinks {
        for v4 in [true, false] {
            let usable = |a: &IpAddr| match a {
                IpAddr::V4(_) => v4,
                IpAddr::V6(a) => !v4 && !a.is_unicast_link_local(),
            };
            let mine: Vec<IpAddr> = addrs.iter().filter(|(i, a)| i == ifindex && usable(a)).map(|(_, a)| *a).collect();
            let chosen = internal_ips.iter().find(|ip| mine.contains(ip)).or(mine.first());
            if let Some(a) = chosen {
                out.insert(device_key(*ifindex, v4), MasqDevice { addr: Addr::from(*a), port_min: ports.0, port_max: ports.1, _pad: 0 });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(name: &str, cidr: &str, addr: &str) -> NodeModel {
        let (a, l) = cidr.split_once('/').unwrap();
        NodeModel {
            name: name.into(),
            pod_cidrs: vec![Prefix::new(ip(a), l.parse().unwrap())],
            internal_ips: vec![ip(addr)],
            addresses: vec![ip(addr)],
            zone: None,
        }
    }

    #[test]
    fn every_pod_cidr_and_node_address_is_inside() {
        let (a, b) = (node("a", "10.244.1.0/24", "192.168.0.11"), node("b", "10.244.2.0/24", "192.168.0.12"));
        let extra = [Prefix::new(ip("172.16.0.0"), 12)];
        let got = inside(&[&a, &b], &extra);
        for p in ["10.244.1.0/24", "10.244.2.0/24", "192.168.0.11/32", "192.168.0.12/32", "169.254.0.0/16", "172.16.0.0/12"] {
            assert!(got.iter().any(|g| g.to_string() == p), "{p} missing from {got:?}");
        }
        assert_eq!(got.len(), 7, "and fe80::/10");
        assert!(!got.iter().any(|g| g.contains_addr(&ip("192.168.0.100"))), "the rest of the node subnet is outside");
    }

    #[test]
    fn a_device_masquerades_from_the_internal_ip_it_holds_else_its_first_ipv4() {
        let uplinks = [("eth0".to_string(), 2), ("eth1".to_string(), 3), ("eth2".to_string(), 4)];
        let addrs = [(2, ip("10.0.0.5")), (2, ip("192.168.0.11")), (3, ip("fd00::1")), (3, ip("172.20.0.9")), (4, ip("fd00::2"))];
        let got = devices(&uplinks, &[ip("192.168.0.11")], &addrs, (40_000, 50_000));
        assert_eq!(got[&2].addr, Addr::from(ip("192.168.0.11")));
        assert_eq!(got[&3].addr, Addr::from(ip("172.20.0.9")));
        assert!(!got.contains_key(&4), "no IPv4 address, no IPv4 masquerade");
        assert_eq!((got[&2].port_min, got[&2].port_max), (40_000, 50_000), "the configured ports");
    }

    #[test]
    fn each_family_masquerades_from_an_address_of_its_own_never_a_link_local_one() {
        let uplinks = [("eth0".to_string(), 2), ("eth1".to_string(), 3)];
        let addrs = [(2, ip("192.168.0.11")), (2, ip("fe80::1")), (2, ip("fd00::9")), (2, ip("fd00::11")), (3, ip("fe80::2")), (3, ip("10.0.0.1"))];
        let got = devices(&uplinks, &[ip("192.168.0.11"), ip("fd00::11")], &addrs, (40_000, 50_000));
        assert_eq!(got[&device_key(2, true)].addr, Addr::from(ip("192.168.0.11")));
        assert_eq!(got[&device_key(2, false)].addr, Addr::from(ip("fd00::11")), "the IPv6 InternalIP the device holds");
        assert_eq!(got[&device_key(3, true)].addr, Addr::from(ip("10.0.0.1")));
        assert!(!got.contains_key(&device_key(3, false)), "a link-local address is no masquerade source");
        let inside = inside(&[&node("a", "fd00:10:244:1::/64", "fd00::11")], &[]);
        for p in ["fd00:10:244:1::/64", "fd00::11/128", "fe80::/10"] {
            assert!(inside.iter().any(|g| g.to_string() == p), "{p} missing from {inside:?}");
        }
    }
}
