//! Network interfaces of this node, from rtnetlink: a dump of what exists
//! now, followed by live link events.

use futures::{channel::mpsc::UnboundedReceiver, StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use rtnetlink::{new_multicast_connection, Handle, MulticastGroup};

/// Something happened to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The interface exists (new, or changed).
    Present { ifindex: u32, name: String },
    /// The interface is gone.
    Gone { ifindex: u32, name: String },
}

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>;

/// A subscription to link events plus a handle for dumps.
pub struct LinkWatcher {
    handle: Handle,
    messages: Messages,
}

impl LinkWatcher {
    /// Subscribes to link events. Subscribe before dumping, so that no link
    /// created in between is missed.
    pub fn subscribe() -> std::io::Result<Self> {
        let (conn, handle, messages) = new_multicast_connection(&[MulticastGroup::Link])?;
        tokio::spawn(conn);
        Ok(Self { handle, messages })
    }

    /// Every interface that exists now.
    pub async fn dump(&self) -> Result<Vec<LinkEvent>, rtnetlink::Error> {
        let links: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        Ok(links.iter().filter_map(present).collect())
    }

    /// The next link event; `None` when the netlink connection is gone.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let (msg, _) = self.messages.next().await?;
            if let NetlinkPayload::InnerMessage(inner) = msg.payload {
                match inner {
                    RouteNetlinkMessage::NewLink(m) => {
                        if let Some(ev) = present(&m) {
                            return Some(ev);
                        }
                    }
                    RouteNetlinkMessage::DelLink(m) => {
                        if let Some(name) = ifname(&m) {
                            return Some(LinkEvent::Gone { ifindex: m.header.index, name });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
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
