//! Routed pod wiring over netlink: the veth pair (its pod end created
//! straight inside the pod's namespace, by file descriptor), the pod's
//! addresses, neighbour entries and routes, and the host's routes and
//! neighbour entries. Also CHECK's comparison and DEL's removal.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use netlink_packet_route::{
    link::{InfoData, InfoVeth},
    route::{RouteProtocol, RouteScope},
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::nl::{self, in_netns, Netlink, NlError, Route};

/// The pod's IPv4 gateway, answered by the host veth through a static
/// neighbour entry.
pub const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

pub fn gateway(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY6),
    }
}

/// A pod address's prefix length: the address alone.
pub fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv6() {
        128
    } else {
        32
    }
}

/// What ADD wires.
#[derive(Clone, Debug)]
pub struct Plan {
    pub host: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub mtu: Option<u32>,
    pub ips: Vec<IpAddr>,
}

/// The MAC addresses ADD reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    pub host_mac: String,
    pub pod_mac: String,
}

pub fn mac_string(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Whether the host veth `name` exists in the plugin's namespace.
pub fn host_link_exists(host: &Netlink, name: &str) -> Result<bool, NlError> {
    host.run(async |h| Ok(nl::link(&h, name).await?.is_some()))
}

/// Creates the veth pair, addresses, routes and neighbour entries. On an
/// error the caller removes the host veth (its peer and routes go with it).
pub fn wire(host: &Netlink, plan: &Plan) -> Result<Wired, NlError> {
    let ns = std::fs::File::open(&plan.netns).map_err(|source| NlError::Namespace { path: plan.netns.clone(), source })?;
    let host_link = host.run(async |h| {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(plan.ifname.clone()).setns_by_fd(ns.as_raw_fd());
        let mut pair = LinkVeth::new(&plan.host, &plan.ifname);
        if let Some(m) = plan.mtu {
            peer = peer.mtu(m);
            pair = pair.mtu(m);
        }
        let msg = pair.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
        nl::add_link(&h, &format!("veth {} (peer {} in {})", plan.host, plan.ifname, plan.netns.display()), msg).await?;
        let l = nl::link(&h, &plan.host).await?.ok_or(NlError::Kernel { op: format!("looking up {}", plan.host), errno: libc::ENODEV })?;
        nl::set_up(&h, l.index, &plan.host).await?;
        Ok(l)
    })?;
    let (ifname, ips, host_mac) = (plan.ifname.clone(), plan.ips.clone(), host_link.mac.clone());
    let pod_mac = in_netns(&plan.netns, move |pod| pod.run(async |h| wire_pod(&h, &ifname, &ips, &host_mac).await))?;
    host.run(async |h| {
        for ip in &plan.ips {
            let what = format!("{ip}/{} dev {}", host_prefix(*ip), plan.host);
            nl::route_replace(&h, &what, host_route(*ip, host_link.index)).await?;
            nl::neigh_replace(&h, host_link.index, *ip, &pod_mac).await?;
        }
        Ok(())
    })?;
    Ok(Wired { host_mac: mac_string(&host_link.mac), pod_mac: mac_string(&pod_mac) })
}

/// The pod's side: link up, each address, the gateway's permanent
/// neighbour entry, the on-link gateway route (IPv4) and the default
/// route. Returns the pod end's MAC.
async fn wire_pod(h: &rtnetlink::Handle, ifname: &str, ips: &[IpAddr], host_mac: &[u8]) -> Result<Vec<u8>, NlError> {
    let l = nl::link(h, ifname).await?.ok_or(NlError::Kernel { op: format!("looking up {ifname} in the pod"), errno: libc::ENODEV })?;
    nl::set_up(h, l.index, ifname).await?;
    for ip in ips {
        nl::add_addr(h, l.index, *ip, host_prefix(*ip)).await?;
        let gw = gateway(*ip);
        nl::neigh_replace(h, l.index, gw, host_mac).await?;
        let default = match gw {
            IpAddr::V4(g) => {
                let on_link = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(g, 32)
                    .output_interface(l.index)
                    .scope(RouteScope::Link)
                    .protocol(RouteProtocol::Boot)
                    .build();
                nl::route_replace(h, &format!("{g} dev {ifname} scope link"), on_link).await?;
                RouteMessageBuilder::<Ipv4Addr>::new().gateway(g).output_interface(l.index).onlink().protocol(RouteProtocol::Boot).build()
            }
            IpAddr::V6(g) => {
                RouteMessageBuilder::<Ipv6Addr>::new().gateway(g).output_interface(l.index).onlink().protocol(RouteProtocol::Boot).build()
            }
        };
        nl::route_replace(h, &format!("default via {gw} dev {ifname} onlink"), default).await?;
    }
    Ok(l.mac)
}

/// `<ip>/32 dev <host veth>` (or /128).
fn host_route(ip: IpAddr, index: u32) -> netlink_packet_route::route::RouteMessage {
    match ip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .output_interface(index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Boot)
            .build(),
        IpAddr::V6(a) => {
            RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, 128).output_interface(index).protocol(RouteProtocol::Boot).build()
        }
    }
}

/// Removes the host veth (its peer, routes and neighbour entries go with
/// it); `false` when it was already gone.
pub fn unwire(host: &Netlink, host_veth: &str) -> Result<bool, NlError> {
    host.run(async |h| nl::delete_link(&h, host_veth).await)
}

/// What CHECK found wrong, one line each; empty when the attachment is as
/// ADD left it.
pub fn check(host: &Netlink, plan: &Plan) -> Result<Vec<String>, NlError> {
    let mut wrong = Vec::new();
    let (host_link, host_routes) = host.run(async |h| Ok((nl::link(&h, &plan.host).await?, nl::routes(&h).await?)))?;
    let Some(host_link) = host_link else {
        wrong.push(format!("host veth {} is missing", plan.host));
        return Ok(wrong);
    };
    let ifname = plan.ifname.clone();
    let pod = in_netns(&plan.netns, move |pod| {
        pod.run(async |h| {
            let Some(l) = nl::link(&h, &ifname).await? else { return Ok(None) };
            Ok(Some((nl::addrs(&h, l.index).await?, nl::routes(&h).await?, l.index)))
        })
    })?;
    let Some((pod_addrs, pod_routes, pod_index)) = pod else {
        wrong.push(format!("{} is missing in {}", plan.ifname, plan.netns.display()));
        return Ok(wrong);
    };
    wrong.extend(compare(plan, host_link.index, &host_routes, pod_index, &pod_addrs, &pod_routes));
    Ok(wrong)
}

/// CHECK's comparison, by value: each address with its exact prefix
/// length on the pod interface, each host route to exactly that address
/// through the host veth, and a default route via the gateway of each
/// family.
pub fn compare(plan: &Plan, host_index: u32, host_routes: &[Route], pod_index: u32, pod_addrs: &[(IpAddr, u8)], pod_routes: &[Route]) -> Vec<String> {
    let mut wrong = Vec::new();
    for ip in &plan.ips {
        let plen = host_prefix(*ip);
        if !pod_addrs.contains(&(*ip, plen)) {
            wrong.push(format!("{ip}/{plen} is not on {}", plan.ifname));
        }
        if !host_routes.iter().any(|r| r.dst == *ip && r.plen == plen && r.oif == Some(host_index) && r.gateway.is_none()) {
            wrong.push(format!("no host route {ip}/{plen} dev {}", plan.host));
        }
    }
    let mut gateways: Vec<IpAddr> = plan.ips.iter().map(|ip| gateway(*ip)).collect();
    gateways.dedup();
    for gw in gateways {
        if !pod_routes.iter().any(|r| r.dst.is_unspecified() && r.plen == 0 && r.gateway == Some(gw) && r.oif == Some(pod_index)) {
            wrong.push(format!("no default route via {gw} dev {}", plan.ifname));
        }
    }
    wrong
}


#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn check_compares_addresses_and_routes_by_value() {
        let plan = Plan { host: "weirabc".into(), ifname: "eth0".into(), netns: "/x".into(), mtu: None, ips: vec![ip("1.1.1.1"), ip("fd00::5")] };
        let good_addrs = vec![(ip("1.1.1.1"), 32), (ip("fd00::5"), 128)];
        let host_routes = vec![
            Route { dst: ip("1.1.1.1"), plen: 32, gateway: None, oif: Some(9) },
            Route { dst: ip("fd00::5"), plen: 128, gateway: None, oif: Some(9) },
        ];
        let pod_routes = vec![
            Route { dst: ip("0.0.0.0"), plen: 0, gateway: Some(ip("169.254.1.1")), oif: Some(2) },
            Route { dst: ip("::"), plen: 0, gateway: Some(ip("fe80::1")), oif: Some(2) },
        ];
        assert!(compare(&plan, 9, &host_routes, 2, &good_addrs, &pod_routes).is_empty());
        // 11.1.1.1/32 contains the text "1.1.1.1/32": it must not match.
        let near = vec![(ip("11.1.1.1"), 32), (ip("fd00::5"), 128)];
        let near_routes = vec![Route { dst: ip("11.1.1.1"), plen: 32, gateway: None, oif: Some(9) }, host_routes[1].clone()];
        let w = compare(&plan, 9, &near_routes, 2, &near, &pod_routes);
        assert_eq!(w, vec!["1.1.1.1/32 is not on eth0".to_string(), "no host route 1.1.1.1/32 dev weirabc".to_string()]);
        // The right address with another prefix length, a route through
        // another link, no IPv6 default route.
        let w = compare(
            &plan,
            9,
            &[Route { oif: Some(3), ..host_routes[0].clone() }, host_routes[1].clone()],
            2,
            &[(ip("1.1.1.1"), 24), (ip("fd00::5"), 128)],
            &pod_routes[..1],
        );
        assert_eq!(w.len(), 3, "{w:?}");
    }

    #[test]
    fn macs_print_as_iproute2_does() {
        assert_eq!(mac_string(&[0x0a, 0, 0xff, 1, 2, 3]), "0a:00:ff:01:02:03");
    }
}
