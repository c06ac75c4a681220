//! Routes to the other nodes' pods (`--routing native`): one route per
//! remote node's pod CIDR via that node's InternalIP, installed over
//! rtnetlink with weir's own route protocol number, so that the agent
//! finds its routes again after a restart, removes the ones whose Node is
//! gone, and never touches anyone else's.

use std::{collections::BTreeSet, net::IpAddr};

use futures::TryStreamExt as _;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};
use weir_desired::policy::Prefix;
use weir_model::node::NodeModel;

/// The route protocol (`proto 87` in `ip route`) marking weir's routes.
pub const RTPROT_WEIR: u8 = 87;

/// One route to a remote node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub dst: Prefix,
    pub via: IpAddr,
}

/// The routes this node needs: every other node's pod CIDRs via its
/// InternalIP of the same family. Pure.
pub fn desired(nodes: &[&NodeModel], self_name: Option<&str>) -> BTreeSet<NodeRoute> {
    let mut out = BTreeSet::new();
    for n in nodes {
        if Some(n.name.as_str()) == self_name {
            continue;
        }
        for cidr in &n.pod_cidrs {
            if let Some(via) = n.internal_ip(cidr.addr.is_ipv4()) {
                out.insert(NodeRoute { dst: *cidr, via });
            }
        }
    }
    out
}

/// Errors programming routes.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("listing routes: {0}")]
    Dump(#[source] rtnetlink::Error),
    #[error("adding the route to {dst} via {via}: {source}")]
    Add { dst: String, via: IpAddr, #[source] source: rtnetlink::Error },
    #[error("removing the route to {dst} via {via}: {source}")]
    Del { dst: String, via: IpAddr, #[source] source: rtnetlink::Error },
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
    match (r.dst.addr, r.via) {
        (IpAddr::V4(d), IpAddr::V4(v)) => {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().destination_prefix(d, r.dst.len).gateway(v).protocol(RouteProtocol::Other(RTPROT_WEIR)).build()
        }
        (IpAddr::V6(d), IpAddr::V6(v)) => {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().destination_prefix(d, r.dst.len).gateway(v).protocol(RouteProtocol::Other(RTPROT_WEIR)).build()
        }
        // `desired` pairs a CIDR only with a gateway of its family.
        _ => RouteMessage::default(),
    }
}

/// Parses one of weir's own routes back.
fn ours(m: &RouteMessage) -> Option<NodeRoute> {
    if m.header.protocol != RouteProtocol::Other(RTPROT_WEIR) || m.header.kind != RouteType::Unicast {
        return None;
    }
    let (mut dst, mut via) = (None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => dst = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => dst = Some(IpAddr::V6(*v6)),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => via = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => via = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    Some(NodeRoute { dst: Prefix::new(dst?, m.header.destination_prefix_length), via: via? })
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
                Err(source) => out.errors.push(RouteError::Add { dst: r.dst.to_string(), via: r.via, source }),
            }
        }
        for r in have.difference(want) {
            match self.handle.route().del(message(r)).execute().await {
                Ok(()) => out.removed += 1,
                Err(source) => out.errors.push(RouteError::Del { dst: r.dst.to_string(), via: r.via, source }),
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
        let r = desired(&[&a, &b, &c], Some("a"));
        let dsts: Vec<String> = r.iter().map(|r| format!("{} via {}", r.dst, r.via)).collect();
        assert_eq!(dsts, ["10.244.2.0/24 via 192.168.0.12", "10.244.3.0/24 via 192.168.0.13"]);
    }

    #[test]
    fn a_cidr_without_an_address_of_its_family_gets_no_route() {
        let mut b = node("b", "fd00:2::/64", "192.168.0.12");
        b.pod_cidrs.push(Prefix::new("10.244.2.0".parse().expect("addr"), 24));
        let r = desired(&[&b], Some("a"));
        assert_eq!(r.len(), 1, "only the IPv4 CIDR has an IPv4 gateway: {r:?}");
    }
}
