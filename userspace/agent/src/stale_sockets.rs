//! Connected UDP sockets of the node's own processes that the socket
//! programs pointed at a backend their frontend no longer lists: they are
//! destroyed, so they never keep sending to a backend that left. The
//! application's next call fails with ECONNABORTED, and its reconnect goes
//! through connect4 (or connect6) again, to a live backend. IPv4 and IPv6
//! sockets alike (an IPv6 socket's v4-mapped peer is an IPv4 backend, as
//! the maps hold it). (TCP needs none of this: a
//! connection to a gone backend is reset or times out by itself.)
//!
//! Destroying goes through sock_diag's SOCK_DESTROY (what `ss -K` uses),
//! which runs the same kernel function as the `bpf_sock_destroy` kfunc
//! (`udp_abort`), without a socket-iterator program; it needs
//! CONFIG_INET_DIAG_DESTROY. Only sockets of the agent's own network
//! namespace are seen: sock_diag is per namespace, like the programs'
//! netns check.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use weir_common::addr::Addr;

/// A connected UDP socket: its identity, its cookie and its peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// `AF_INET` or `AF_INET6`: the socket's own family.
    pub family: u8,
    pub id: SocketId,
    pub cookie: u64,
    pub peer: Addr,
    /// Network order, as the maps keep ports.
    pub peer_port: u16,
}

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub checked: usize,
    pub destroyed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("sock_diag netlink ({op})")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused to destroy a UDP socket (needs CONFIG_INET_DIAG_DESTROY)")]
    Unsupported(#[source] io::Error),
}

/// The sockets to destroy: translated by the programs (their
/// `WEIR_SOCK_REVNAT` entry names the frontend they asked for) and
/// connected to a backend that frontend no longer lists. `asked(cookie,
/// peer, port)` reads the entry; `lists(frontend, port, backend, port)`
/// asks the programmed services.
pub fn stale(
    sockets: &[Connected],
    asked: impl Fn(u64, Addr, u16) -> Option<(Addr, u16)>,
    lists: impl Fn(Addr, u16, Addr, u16) -> bool,
) -> Vec<&Connected> {
    sockets
        .iter()
        .filter(|s| match asked(s.cookie, s.peer, s.peer_port) {
            Some((frontend, port)) => !lists(frontend, port, s.peer, s.peer_port),
            None => false, // not one the programs pointed anywhere
        })
        .collect()
}

fn socket() -> Result<Socket, SweepError> {
    let err = |op| move |source| SweepError::Netlink { op, source };
    let mut s = Socket::new(NETLINK_SOCK_DIAG).map_err(err("socket"))?;
    s.bind_auto().map_err(err("bind"))?;
    s.connect(&SocketAddr::new(0, 0)).map_err(err("connect"))?;
    Ok(s)
}

fn send<T: netlink_packet_core::NetlinkSerializable>(s: &Socket, flags: u16, payload: T) -> Result<(), SweepError> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    s.send(&buf, 0).map_err(|source| SweepError::Netlink { op: "send", source })?;
    Ok(())
}

fn request(family: u8, id: SocketId) -> InetRequest {
    InetRequest { family, protocol: IPPROTO_UDP, extensions: ExtensionFlags::empty(), states: StateFlags::ESTABLISHED, socket_id: id }
}

/// Every connected UDP socket of this network namespace, IPv4 and IPv6.
pub fn connected_udp() -> Result<Vec<Connected>, SweepError> {
    let mut out = connected_udp_of(AF_INET)?;
    out.extend(connected_udp_of(AF_INET6)?);
    Ok(out)
}

/// Every connected UDP socket of `family` of this network namespace.
fn connected_udp_of(family: u8) -> Result<Vec<Connected>, SweepError> {
    let s = socket()?;
    let any = if family == AF_INET6 { SocketId::new_v6() } else { SocketId::new_v4() };
    send(&s, NLM_F_REQUEST | NLM_F_DUMP, SockDiagMessage::InetRequest(request(family, any)))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.recv(&mut &mut buf[..], 0).map_err(|source| SweepError::Netlink { op: "receive", source })?;
        let mut off = 0;
        while off < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[off..n])
                .map_err(|e| SweepError::Netlink { op: "parse", source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()) })?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = r.header.socket_id;
                    let c = id.cookie;
                    let cookie = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])) | u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32;
                    // A v4-mapped peer is the IPv4 address as the maps hold it.
                    let peer = Addr::from(id.destination_address);
                    out.push(Connected { family, cookie, peer, peer_port: id.destination_port.to_be(), id });
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(SweepError::Netlink { op: "dump", source: e.to_io() });
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// Destroys one socket (its whole identity, cookie included, so only that
/// very socket goes).
pub fn destroy(family: u8, id: &SocketId) -> Result<(), SweepError> {
    let s = socket()?;
    send(&s, NLM_F_REQUEST | NLM_F_ACK, SockDiagDestroy::new(SockDiagMessage::InetRequest(request(family, id.clone()))))?;
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut &mut buf[..], 0).map_err(|source| SweepError::Netlink { op: "receive", source })?;
    let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[..n])
        .map_err(|e| SweepError::Netlink { op: "parse", source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()) })?;
    match msg.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => {
            let err = e.to_io();
            match err.raw_os_error() {
                // Gone meanwhile: nothing left to do.
                Some(libc::ENOENT) => Ok(()),
                Some(libc::EOPNOTSUPP) => Err(SweepError::Unsupported(err)),
                _ => Err(SweepError::Netlink { op: "destroy", source: err }),
            }
        }
        _ => Ok(()),
    }
}

/// Destroys every stale socket (see [`stale`]).
pub fn sweep(
    asked: impl Fn(u64, Addr, u16) -> Option<(Addr, u16)>,
    lists: impl Fn(Addr, u16, Addr, u16) -> bool,
) -> Result<Sweep, SweepError> {
    let sockets = connected_udp()?;
    let doomed = stale(&sockets, asked, lists);
    let mut out = Sweep { checked: sockets.len(), destroyed: 0 };
    for s in doomed {
        destroy(s.family, &s.id)?;
        tracing::info!(peer = %std::net::IpAddr::from(s.peer), port = u16::from_be(s.peer_port), cookie = s.cookie, "destroyed a connected UDP socket whose backend left its service");
        out.destroyed += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn sock(cookie: u64, peer: [u8; 4], port: u16) -> Connected {
        Connected { family: AF_INET, id: SocketId::new_v4(), cookie, peer: Addr::from(IpAddr::from(peer)), peer_port: port.to_be() }
    }

    #[test]
    fn only_translated_sockets_whose_backend_left_are_stale() {
        let vip = Addr::from(IpAddr::from([10, 96, 0, 10]));
        let kept = [10, 244, 0, 5];
        let sockets = vec![
            sock(1, kept, 53),               // still a backend of its frontend
            sock(2, [10, 244, 0, 6], 53),    // its backend left
            sock(3, [192, 0, 2, 1], 53),     // never translated: not ours
        ];
        let asked = |cookie, _, _| (cookie != 3).then_some((vip, 53u16.to_be()));
        let lists = |f: Addr, _, b: Addr, _| f == vip && b == Addr::from(IpAddr::from(kept));
        let doomed: Vec<u64> = stale(&sockets, asked, lists).iter().map(|s| s.cookie).collect();
        assert_eq!(doomed, [2]);
    }

    #[test]
    fn an_ipv6_sockets_v4_mapped_peer_is_the_ipv4_backend() {
        let v4 = std::net::Ipv4Addr::new(10, 244, 0, 5);
        assert_eq!(Addr::from(IpAddr::V6(v4.to_ipv6_mapped())), Addr::from(IpAddr::V4(v4)));
    }
}
