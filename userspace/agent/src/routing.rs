//! Routes to the other nodes' pods: one route per remote node's pod CIDR,
//! via that node's InternalIP (`--routing native`) or through the VXLAN
//! device (`--routing vxlan`, where the datapath picks the node), installed
//! over rtnetlink with weir's own route protocol number, so that the agent
//! finds its routes again after a restart, removes the ones whose Node is
//! gone, and never touches anyone else's.

use std::{collections::BTreeSet, net::IpAddr};

use futures::TryStreamExt as _;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use weir_desired::policy::Prefix;
use weir_model::node::NodeModel;

/// The route protocol (`proto 87` in `ip route`) marking weir's routes.
pub const RTPROT_WEIR: u8 = 87;

/// Where a route to a remote node's pods goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Next {
    /// Via the node's InternalIP (native routing).
    Via(IpAddr),
    /// Out of the tunnel device (its ifindex), on-link.
    Dev(u32),
}

/// One route to a remote node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub dst: Prefix,
    pub next: Next,
}

impl std::fmt::Display for NodeRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.next {
            Next::Via(v) => write!(f, "{} via {v}", self.dst),
            Next::Dev(i) => write!(f, "{} dev #{i}", self.dst),
        }
    }
}

/// Every other node's pod CIDRs with its InternalIP of the same family
/// (a CIDR with no such address is left out). Pure.
pub fn remote_cidrs(nodes: &[&NodeModel], self_name: Option<&str>) -> Vec<(Prefix, IpAddr)> {
    let mut out = Vec::new();
    for n in nodes {
        if Some(n.name.as_str()) == self_name {
            continue;
        }
        for cidr in &n.pod_cidrs {
            if let Some(ip) = n.internal_ip(cidr.addr.is_ipv4()) {
                out.push((*cidr, ip));
            }
        }
    }
    out.sort();
    out
}

/// Every other node's pod CIDRs, of both families, with the address the
/// tunnel reaches that node at: its IPv4 InternalIP when it has one (an
/// IPv6 pod CIDR crosses the IPv4 underlay too, with IPv4's overhead,
/// which the pods' MTU already leaves), else its IPv6 one. Pure.
pub fn tunnel_endpoints(nodes: &[&NodeModel], self_name: Option<&str>) -> Vec<(Prefix, IpAddr)> {
    let mut out = Vec::new();
    for n in nodes {
        if Some(n.name.as_str()) == self_name {
            continue;
        }
        let Some(ip) = n.internal_ip(true).or_else(|| n.internal_ip(false)) else { continue };
        out.extend(n.pod_cidrs.iter().map(|c| (*c, ip)));
    }
    out.sort();
    out
}

/// Every other node's InternalIPs, each with the node's id (1-based, in
/// the order of `nodes`): a node's addresses share one, so the tunnel
/// knows them for one node's (`WEIR_NODES`). Pure.
pub fn peer_ids(nodes: &[&NodeModel], self_name: Option<&str>) -> Vec<(IpAddr, u32)> {
    nodes
        .iter()
        .filter(|n| Some(n.name.as_str()) != self_name)
        .enumerate()
        .flat_map(|(i, n)| n.internal_ips.iter().map(move |ip| (*ip, i as u32 + 1)))
        .collect()
}

/// The routes this node needs: via each node's InternalIP of the CIDR's
/// family, or through `tunnel` when given (every CIDR of a node the
/// tunnel reaches). Pure.
pub fn desired(nodes: &[&NodeModel], self_name: Option<&str>, tunnel: Option<u32>) -> BTreeSet<NodeRoute> {
    match tunnel {
        Some(dev) => tunnel_endpoints(nodes, self_name).into_iter().map(|(dst, _)| NodeRoute { dst, next: Next::Dev(dev) }).collect(),
        None => remote_cidrs(nodes, self_name).into_iter().map(|(dst, ip)| NodeRoute { dst, next: Next::Via(ip) }).collect(),
    }
}

/// Errors programming routes.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("listing routes: {0}")]
    Dump(#[source] rtnetlink::Error),
    #[error("adding the route {route}: {source}")]
    Add { route: String, #[source] source: rtnetlink::Error },
    #[error("removing the route {route}: {source}")]
    Del { route: String, #[source] source: rtnetlink::Error },
}

impl RouteError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Dump(_) => "route_dump",
            Self::Add { .. } => "route_add",
            Self::Del { .. } => "route_del",
        }
    }
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct RouteSync {
    pub added: usize,
    pub removed: usize,
    pub errors: Vec<RouteError>,
}

fn message(r: &NodeRoute) -> RouteMessage {
    let proto = RouteProtocol::Other(RTPROT_WEIR);
    match (r.dst.addr, r.next) {
        (IpAddr::V4(d), Next::Via(IpAddr::V4(v))) => {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().destination_prefix(d, r.dst.len).gateway(v).protocol(proto).build()
        }
        (IpAddr::V6(d), Next::Via(IpAddr::V6(v))) => {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().destination_prefix(d, r.dst.len).gateway(v).protocol(proto).build()
        }
        (IpAddr::V4(d), Next::Dev(i)) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(d, r.dst.len)
            .output_interface(i)
            .scope(RouteScope::Link)
            .protocol(proto)
            .build(),
        (IpAddr::V6(d), Next::Dev(i)) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(d, r.dst.len)
            .output_interface(i)
            .scope(RouteScope::Link)
            .protocol(proto)
            .build(),
        // `desired` pairs a CIDR only with a gateway of its family.
        _ => RouteMessage::default(),
    }
}

/// Parses one of weir's own routes back.
fn ours(m: &RouteMessage) -> Option<NodeRoute> {
    if m.header.protocol != RouteProtocol::Other(RTPROT_WEIR) || m.header.kind != RouteType::Unicast {
        return None;
    }
    let (mut dst, mut via, mut oif) = (None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => dst = Some(IpAddr::V6(*v6)),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => via = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => via = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    let next = match (via, oif) {
        (Some(v), _) => Next::Via(v),
        (None, Some(i)) => Next::Dev(i),
        (None, None) => return None,
    };
    Some(NodeRoute { dst: Prefix::new(dst?, m.header.destination_prefix_length), next })
}

/// Installs and removes node routes over rtnetlink.
pub struct RouteProgrammer {
    handle: Handle,
}

impl RouteProgrammer {
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    /// weir's routes as the kernel holds them now.
    pub async fn current(&self) -> Result<BTreeSet<NodeRoute>, RouteError> {
        let v4: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(RouteError::Dump)?;
        let v6: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(RouteError::Dump)?;
        Ok(v4.iter().chain(&v6).filter_map(ours).collect())
    }

    /// Makes weir's routes exactly `want`: adds (or replaces) what is
    /// missing, then removes what is no longer wanted. One failing route
    /// never stops the others.
    pub async fn sync(&self, want: &BTreeSet<NodeRoute>) -> RouteSync {
        let mut out = RouteSync::default();
        let have = match self.current().await {
            Ok(h) => h,
            Err(e) => {
                out.errors.push(e);
                return out;
            }
        };
        for r in want.difference(&have) {
            match self.handle.route().add(message(r)).replace().execute().await {
                Ok(()) => out.added += 1,
                Err(source) => out.errors.push(RouteError::Add { route: r.to_string(), source }),
            }
        }
        for r in have.difference(want) {
            match self.handle.route().del(message(r)).execute().await {
                Ok(()) => out.removed += 1,
                Err(source) => out.errors.push(RouteError::Del { route: r.to_string(), source }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: &str, ip: &str) -> NodeModel {
        let (a, l) = cidr.split_once('/').expect("cidr");
        NodeModel {
            name: name.into(),
            pod_cidrs: vec![Prefix::new(a.parse().expect("addr"), l.parse().expect("len"))],
            internal_ips: vec![ip.parse().expect("ip")],
            addresses: vec![ip.parse().expect("ip")],
            zone: None,
        }
    }

    #[test]
    fn every_other_node_gets_a_route_via_its_internal_ip() {
        let (a, b, c) = (node("a", "10.244.1.0/24", "192.168.0.11"), node("b", "10.244.2.0/24", "192.168.0.12"), node("c", "10.244.3.0/24", "192.168.0.13"));
        let r = desired(&[&a, &b, &c], Some("a"), None);
        let dsts: Vec<String> = r.iter().map(ToString::to_string).collect();
        assert_eq!(dsts, ["10.244.2.0/24 via 192.168.0.12", "10.244.3.0/24 via 192.168.0.13"]);
        let t: Vec<String> = desired(&[&a, &b, &c], Some("a"), Some(9)).iter().map(ToString::to_string).collect();
        assert_eq!(t, ["10.244.2.0/24 dev #9", "10.244.3.0/24 dev #9"]);
    }

    #[test]
    fn the_tunnel_reaches_every_cidr_of_a_node_at_its_ipv4_address_when_it_has_one() {
        let mut b = node("b", "10.244.2.0/24", "192.168.0.12");
        b.pod_cidrs.push(Prefix::new("fd00:10:244:2::".parse().expect("addr"), 64));
        b.internal_ips.push("fd00::12".parse().expect("ip"));
        let mut c = node("c", "fd00:10:244:3::/64", "fd00::13");
        c.name = "c".into();
        let e: Vec<String> = tunnel_endpoints(&[&b, &c], Some("a")).iter().map(|(p, ip)| format!("{p} {ip}")).collect();
        assert_eq!(e, ["10.244.2.0/24 192.168.0.12", "fd00:10:244:2::/64 192.168.0.12", "fd00:10:244:3::/64 fd00::13"]);
        let t: Vec<String> = desired(&[&b, &c], Some("a"), Some(9)).iter().map(ToString::to_string).collect();
        assert_eq!(t, ["10.244.2.0/24 dev #9", "fd00:10:244:2::/64 dev #9", "fd00:10:244:3::/64 dev #9"], "the tunnel carries both families");
        let ids = peer_ids(&[&b, &c], Some("a"));
        assert_eq!(ids, [("192.168.0.12".parse().expect("ip"), 1), ("fd00::12".parse().expect("ip"), 1), ("fd00::13".parse().expect("ip"), 2)], "one id per node");
    }

    #[test]
    fn a_cidr_without_an_address_of_its_family_gets_no_route() {
        let mut b = node("b", "fd00:2::/64", "192.168.0.12");
        b.pod_cidrs.push(Prefix::new("10.244.2.0".parse().expect("addr"), 24));
        let r = desired(&[&b], Some("a"), None);
        assert_eq!(r.len(), 1, "only the IPv4 CIDR has an IPv4 gateway: {r:?}");
    }
}
