//! Netlink primitives: an rtnetlink session in the plugin's own (the
//! node's) network namespace, or in a pod's, opened on a dedicated thread
//! after setns so the switch never touches the main thread. Failures are
//! typed by the kernel's error code, so callers decide "already there" and
//! "already gone" by code, never by text.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags},
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// A netlink failure.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// The kernel refused a request; `errno` is positive (EEXIST, ENODEV, ...).
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel { op: String, errno: i32 },
    /// The request failed without a kernel error code (a malformed reply,
    /// a closed socket).
    #[error("{op}: {source}")]
    Request { op: String, #[source] source: rtnetlink::Error },
    #[error("opening a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("entering the network namespace {}: {source}", path.display())]
    Namespace { path: PathBuf, #[source] source: std::io::Error },
    #[error("the netlink thread for {} panicked", path.display())]
    Thread { path: PathBuf },
}

impl NlError {
    fn from_rtnl(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(m) if m.code.is_some() => Self::Kernel { op: op.into(), errno: -m.raw_code() },
            source => Self::Request { op: op.into(), source },
        }
    }

    /// The kernel's error code, if the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    pub fn is_no_device(&self) -> bool {
        self.errno() == Some(libc::ENODEV)
    }
}

/// An rtnetlink connection driven by a single-threaded runtime on the
/// calling thread.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    /// A session in the calling thread's network namespace.
    pub fn open() -> Result<Self, NlError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(NlError::Socket)?;
        let (conn, handle, _) = {
            let _in = rt.enter();
            rtnetlink::new_connection().map_err(NlError::Socket)?
        };
        rt.spawn(conn);
        Ok(Self { rt, handle })
    }

    /// Runs `f` against this session's handle.
    pub fn run<T>(&self, f: impl AsyncFnOnce(Handle) -> Result<T, NlError>) -> Result<T, NlError> {
        self.rt.block_on(f(self.handle.clone()))
    }
}

/// Runs `f` with a session inside the network namespace at `path`, on a
/// thread of its own that enters the namespace first.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce(&Netlink) -> Result<T, NlError> + Send + 'static) -> Result<T, NlError> {
    let path = path.to_path_buf();
    let p = path.clone();
    std::thread::spawn(move || {
        let ns = File::open(&p).map_err(|source| NlError::Namespace { path: p.clone(), source })?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NlError::Namespace { path: p.clone(), source: std::io::Error::from_raw_os_error(e as i32) })?;
        f(&Netlink::open()?)
    })
    .join()
    .unwrap_or(Err(NlError::Thread { path }))
}

/// A link's index and hardware address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: Vec<u8>,
}

fn link_of(m: &LinkMessage) -> Link {
    let mac = m
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => Some(mac.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Link { index: m.header.index, mac }
}

/// The link called `name`, or `None` when there is none.
pub async fn link(h: &Handle, name: &str) -> Result<Option<Link>, NlError> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(m) => Ok(m.as_ref().map(link_of)),
        Err(e) => match NlError::from_rtnl(format!("looking up link {name}"), e) {
            e if e.is_no_device() => Ok(None),
            e => Err(e),
        },
    }
}

/// Creates a link from a full message (a veth pair, say).
pub async fn add_link(h: &Handle, what: &str, msg: LinkMessage) -> Result<(), NlError> {
    h.link().add(msg).execute().await.map_err(|e| NlError::from_rtnl(format!("creating {what}"), e))
}

pub async fn set_up(h: &Handle, index: u32, name: &str) -> Result<(), NlError> {
    let msg = rtnetlink::LinkUnspec::new_with_index(index).up().build();
    h.link().set(msg).execute().await.map_err(|e| NlError::from_rtnl(format!("setting {name} up"), e))
}

/// Deletes the link `name`; `false` when it was already gone.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, NlError> {
    let Some(l) = link(h, name).await? else { return Ok(false) };
    match h.link().del(l.index).execute().await.map_err(|e| NlError::from_rtnl(format!("deleting link {name}"), e)) {
        Ok(()) => Ok(true),
        Err(e) if e.is_no_device() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Adds `ip/plen` to a link; an address already there is fine. IPv6
/// addresses skip duplicate address detection (the other end of a pod's
/// veth never holds them), so they are usable at once.
pub async fn add_addr(h: &Handle, index: u32, ip: IpAddr, plen: u8) -> Result<(), NlError> {
    let mut req = h.address().add(index, ip, plen);
    if ip.is_ipv6() {
        req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await.map_err(|e| NlError::from_rtnl(format!("adding address {ip}/{plen}"), e)) {
        Err(e) if e.is_exists() => Ok(()),
        other => other,
    }
}

/// Every address on a link, with its prefix length.
pub async fn addrs(h: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>, NlError> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| NlError::from_rtnl("listing addresses", e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.index == index)
        .filter_map(|m| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                _ => None,
            })
        })
        .collect())
}

/// A permanent neighbour entry `ip → mac` on a link (replacing any other).
pub async fn neigh_replace(h: &Handle, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), NlError> {
    h.neighbours()
        .add(index, ip)
        .link_layer_address(mac)
        .replace()
        .execute()
        .await
        .map_err(|e| NlError::from_rtnl(format!("adding neighbour {ip}"), e))
}

pub async fn route_replace(h: &Handle, what: &str, msg: RouteMessage) -> Result<(), NlError> {
    h.route().add(msg).replace().execute().await.map_err(|e| NlError::from_rtnl(format!("adding route {what}"), e))
}

/// A route as CHECK compares it: destination, prefix length, gateway and
/// output interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub plen: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

fn addr_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_of(m: &RouteMessage) -> Route {
    let v6 = m.header.address_family == netlink_packet_route::AddressFamily::Inet6;
    let unspecified = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let (mut dst, mut gateway, mut oif) = (None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr_of(d),
            RouteAttribute::Gateway(g) => gateway = addr_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Route { dst: dst.unwrap_or(unspecified), plen: m.header.destination_prefix_length, gateway, oif }
}

/// Every route of the main table, both families.
pub async fn routes(h: &Handle) -> Result<Vec<Route>, NlError> {
    let mut out = Vec::new();
    for msg in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
        let msgs: Vec<RouteMessage> =
            h.route().get(msg).execute().try_collect().await.map_err(|e| NlError::from_rtnl("listing routes", e))?;
        out.extend(msgs.iter().filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN).map(route_of));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_are_typed_by_code() {
        let e = NlError::Kernel { op: "creating veth".into(), errno: libc::EEXIST };
        assert!(e.is_exists() && !e.is_no_device());
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().starts_with("creating veth: File exists"), "{e}");
        assert!(NlError::Kernel { op: "x".into(), errno: libc::ENODEV }.is_no_device());
        assert_eq!(NlError::Socket(std::io::Error::other("x")).errno(), None);
    }

    #[test]
    fn a_route_message_reads_back_by_value() {
        let m = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(11, 1, 1, 1), 32)
            .output_interface(7)
            .build();
        assert_eq!(route_of(&m), Route { dst: "11.1.1.1".parse().expect("ip"), plen: 32, gateway: None, oif: Some(7) });
        let d = RouteMessageBuilder::<Ipv6Addr>::new().gateway("fe80::1".parse().expect("ip")).build();
        assert_eq!(route_of(&d), Route { dst: "::".parse().expect("ip"), plen: 0, gateway: Some("fe80::1".parse().expect("ip")), oif: None });
    }
}
