//! New UDP flows per second: the DNS-shaped workload. One pod sends
//! single-datagram flows, each from a source port it has not used yet in
//! this topology, as fast as one core allows; the backends count what
//! arrives (`traffic::udp_sink`).
//!
//! The datagrams are written whole (IPv4 + UDP, checksums right) to a raw
//! socket, so the sender pays one `sendto` per flow and no socket setup:
//! the work left is the kernel's, and the veth hands each packet to the
//! node's datapath on the sender's own CPU, so the send rate is bounded by
//! the dataplane's cost per new flow.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::measure::Latency;
use crate::{netns::NetNs, traffic::Server};

/// Bytes of payload per datagram (a small DNS query).
const PAYLOAD: [u8; 32] = [0x42; 32];

/// What a send loop did.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub datagrams: u64,
    pub took: Duration,
}

/// Sends from `ns` (source `src`) one datagram per flow, cycling over
/// `dsts`: flow `k` goes to `dsts[k % len]` from source port
/// `first_sport + k / len`, for `per_dst` source ports or until `max` has
/// passed, whichever comes first.
pub fn send(ns: &NetNs, src: Ipv4Addr, dsts: Vec<SocketAddrV4>, first_sport: u16, per_dst: u16, max: Duration) -> std::io::Result<Sent> {
    ns.run(move || {
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
        let addrs: Vec<SockAddr> = dsts.iter().map(|d| SockAddr::from(*d)).collect();
        let mut buf = Vec::with_capacity(64);
        let total = u64::from(per_dst) * dsts.len() as u64;
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let i = (sent % dsts.len() as u64) as usize;
            let sport = first_sport.wrapping_add((sent / dsts.len() as u64) as u16);
            let d = dsts[i];
            buf.clear();
            PacketBuilder::ipv4(src.octets(), d.ip().octets(), 64)
                .udp(sport, d.port())
                .write(&mut buf, &PAYLOAD)
                .map_err(std::io::Error::other)?;
            // A full queue (ENOBUFS) is a loss, counted by the receivers.
            let _ = sock.send_to(&buf, &addrs[i]);
            sent += 1;
            if sent.is_multiple_of(256) && start.elapsed() >= max {
                break;
            }
        }
        Ok(Sent { datagrams: sent, took: start.elapsed() })
    })
}

/// Datagrams counted by `sinks` so far.
pub fn received(sinks: &[Arc<std::sync::atomic::AtomicU64>]) -> u64 {
    sinks.iter().map(|s| s.load(Ordering::Relaxed)).sum()
}

/// Waits until the sinks' count stops moving (the last datagrams still
/// in flight), at most a second.
fn settle(sinks: &[Arc<std::sync::atomic::AtomicU64>]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut last = received(sinks);
    let mut still = 0;
    while still < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = received(sinks);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    last
}

/// One slice: flows sent to `dsts` from `ns`, counted by `sinks`. The
/// rate is datagrams received per second of sending; failures are the
/// datagrams sent and never counted.
pub fn slice(ns: &NetNs, src: Ipv4Addr, dsts: Vec<SocketAddrV4>, first_sport: u16, per_dst: u16, max: Duration, sinks: &[&Server]) -> Latency {
    let counters: Vec<_> = sinks.iter().map(|s| s.served.clone()).collect();
    let before = settle(&counters);
    let Ok(sent) = send(ns, src, dsts, first_sport, per_dst, max) else {
        return Latency { failures: 1, ..Latency::default() };
    };
    let got = settle(&counters).saturating_sub(before);
    Latency { per_s: got as f64 / sent.took.as_secs_f64(), failures: sent.datagrams.saturating_sub(got), ..Latency::default() }
}
