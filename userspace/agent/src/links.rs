//! Network interfaces and host routes of this node, from rtnetlink: a dump
//! of what exists now, followed by live events.

use std::net::IpAddr;

use futures::{channel::mpsc::UnboundedReceiver, StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    RouteNetlinkMessage,
};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{new_multicast_connection, Handle, MulticastGroup, RouteMessageBuilder};

/// Something happened to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface exists (new, or changed).
    Present { ifindex: u32, name: String },
    /// The interface is gone.
    Gone { ifindex: u32, name: String },
}

/// A host route (`<addr>/32` or `/128`) through one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostRoute {
    pub table: u32,
    pub addr: IpAddr,
    pub ifindex: u32,
}

/// Something happened to a host route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    /// Added, or replaced (possibly through another interface).
    Present(HostRoute),
    Gone(HostRoute),
}

/// A link, host-route or address event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    Link(LinkEvent),
    Route(RouteEvent),
    /// An address was added or removed somewhere on the node.
    Addr,
    /// The kernel dropped events because the socket's receive buffer was
    /// full (ENOBUFS): what this node has must be listed again.
    Overrun,
}

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>;

/// A subscription to link and route events plus a handle for dumps.
pub struct LinkWatcher {
    handle: Handle,
    messages: Messages,
    /// A second connection with strict checking on, so the kernel itself
    /// filters a dump (by output interface): a node of a large cluster
    /// holds a route per remote node, which a registration need not read.
    filtered: Handle,
}

impl LinkWatcher {
    /// Subscribes to link, route and address events. Subscribe before
    /// dumping, so that nothing created in between is missed. `rcvbuf`
    /// sets the socket's receive buffer (the kernel's default when `None`);
    /// events lost to a full buffer come back as [`NetEvent::Overrun`].
    pub fn subscribe(rcvbuf: Option<usize>) -> std::io::Result<Self> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ];
        let (mut conn, handle, messages) = new_multicast_connection(&groups)?;
        if let Some(bytes) = rcvbuf {
            conn.socket_mut().socket_mut().set_rx_buf_sz(bytes)?;
        }
        tokio::spawn(conn);
        let (mut fconn, filtered, _) = rtnetlink::new_connection()?;
        fconn.socket_mut().socket_mut().set_netlink_get_strict_chk(true)?;
        tokio::spawn(fconn);
        Ok(Self { handle, messages, filtered })
    }

    /// A handle for requests (route changes) on the same connection.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Every interface that exists now.
    pub async fn dump(&self) -> Result<Vec<LinkEvent>, rtnetlink::Error> {
        let links: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(links.iter().filter_map(present).collect())
    }

    /// Every address of every interface: (ifindex, address).
    pub async fn dump_addrs(&self) -> Result<Vec<(u32, IpAddr)>, rtnetlink::Error> {
        use netlink_packet_route::address::{AddressAttribute, AddressMessage};
        let msgs: Vec<AddressMessage> = self.handle.address().get().execute().try_collect().await?;
        Ok(msgs
            .iter()
            .flat_map(|m| {
                m.attributes.iter().filter_map(move |a| match a {
                    AddressAttribute::Address(ip) => Some((m.header.index, *ip)),
                    _ => None,
                })
            })
            .collect())
    }

    /// The MTU of `ifindex`.
    pub async fn link_mtu(&self, ifindex: u32) -> Option<u32> {
        link_mtu(&self.handle, ifindex).await
    }

    /// Every host route that exists now, IPv4 and IPv6.
    pub async fn dump_routes(&self) -> Result<Vec<HostRoute>, rtnetlink::Error> {
        let v4: Vec<RouteMessage> =
            self.handle.route().get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()).execute().try_collect().await?;
        let v6: Vec<RouteMessage> =
            self.handle.route().get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()).execute().try_collect().await?;
        Ok(v4.iter().chain(&v6).filter_map(host_route).collect())
    }

    /// The host routes through the interfaces `ifindexes` alone, in any
    /// table: one dump per interface and family, filtered by the kernel.
    pub async fn dump_routes_via(&self, ifindexes: &[u32]) -> Result<Vec<HostRoute>, rtnetlink::Error> {
        let mut out = Vec::new();
        for &ifindex in ifindexes {
            for mut msg in [
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().output_interface(ifindex).build(),
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().output_interface(ifindex).build(),
            ] {
                // Zero is "any" to the kernel's dump filter: every table,
                // protocol and type; the output interface alone filters.
                msg.header.table = 0;
                msg.header.protocol = netlink_packet_route::route::RouteProtocol::Unspec;
                msg.header.kind = RouteType::Unspec;
                let routes: Vec<RouteMessage> = self.filtered.route().get(msg).execute().try_collect().await?;
                out.extend(routes.iter().filter_map(host_route).filter(|r| r.ifindex == ifindex));
            }
        }
        Ok(out)
    }

    /// The next event; `None` when the netlink connection is gone.
    pub async fn next(&mut self) -> Option<NetEvent> {
        loop {
            let (msg, _) = self.messages.next().await?;
            if let NetlinkPayload::Overrun(_) = msg.payload {
                return Some(NetEvent::Overrun);
            }
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                match inner {
                    RouteNetlinkMessage::NewLink(m) => {
                        if let Some(ev) = present(&m) {
                            return Some(NetEvent::Link(ev));
                        }
                    }
                    RouteNetlinkMessage::DelLink(m) => {
                        if let Some(name) = ifname(&m) {
                            return Some(NetEvent::Link(LinkEvent::Gone { ifindex: m.header.index, name }));
                        }
                    }
                    RouteNetlinkMessage::NewRoute(m) => {
                        if let Some(r) = host_route(&m) {
                            return Some(NetEvent::Route(RouteEvent::Present(r)));
                        }
                    }
                    RouteNetlinkMessage::DelRoute(m) => {
                        if let Some(r) = host_route(&m) {
                            return Some(NetEvent::Route(RouteEvent::Gone(r)));
                        }
                    }
                    RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => return Some(NetEvent::Addr),
                    _ => {}
                }
            }
        }
    }
}

/// The MTU of `ifindex`.
pub async fn link_mtu(handle: &Handle, ifindex: u32) -> Option<u32> {
    let mut links = handle.link().get().match_index(ifindex).execute();
    let m = links.try_next().await.ok()??;
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(v) => Some(*v),
        _ => None,
    })
}

/// The interface of the main table's IPv4 default route.
pub async fn default_route_dev(handle: &Handle) -> Option<u32> {
    let routes: Vec<RouteMessage> =
        handle.route().get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()).execute().try_collect().await.ok()?;
    routes.iter().filter(|m| m.header.destination_prefix_length == 0 && m.header.kind == RouteType::Unicast).find_map(|m| {
        m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
    })
}

fn ifname(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn present(m: &LinkMessage) -> Option<LinkEvent> {
    ifname(m).map(|name| LinkEvent::Present { ifindex: m.header.index, name })
}

/// A unicast route to one address (/32, /128) through one interface.
pub fn host_route(m: &RouteMessage) -> Option<HostRoute> {
    if m.header.kind != RouteType::Unicast {
        return None;
    }
    let mut addr = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => addr = Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => addr = Some(IpAddr::V6(*v6)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let addr = addr?;
    let full = if addr.is_ipv4() { 32 } else { 128 };
    if m.header.destination_prefix_length != full {
        return None;
    }
    Some(HostRoute { table, addr, ifindex: oif? })
}
