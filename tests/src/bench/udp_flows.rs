//! New UDP flows per second: the DNS-shaped workload. One pod sends
//! single-datagram flows, each from a source port it has not used yet in
//! this topology, as fast as one core allows; the backends count what
//! arrives (`bench::udp_sinks`, reading without sleeping while a slice
//! runs, so that no datagram's sender pays to wake its reader).
//!
//! The datagrams are written whole (IPv4 or IPv6 + UDP, checksums right)
//! to a raw socket, so the sender pays one `sendto` per flow and no socket setup:
//! the work left is the kernel's, and the veth hands each packet to the
//! node's datapath on the sender's own CPU, so the send rate is bounded by
//! the dataplane's cost per new flow.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{measure::Latency, udp_sinks::UdpSinks};
use crate::{netns::NetNs, traffic::epoch};

/// Bytes of payload per datagram (a small DNS query).
const PAYLOAD: [u8; 32] = [0x42; 32];

/// What a send loop did.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub datagrams: u64,
    /// `sendto` calls the kernel refused (counted as lost too).
    pub errors: u64,
    pub started: Instant,
    pub took: Duration,
}

/// Sends from `ns` (source `src`) one datagram per flow: flow `k` goes to
/// `dsts[k % len]` from source port `first_sport + k`, for `flows` flows
/// or until `max` has passed, whichever comes first. Every flow has a
/// source port of its own, so no two flows share a tuple before or after
/// a ClusterIP's translation.
pub fn send(ns: &NetNs, src: IpAddr, dsts: Vec<SocketAddr>, first_sport: u16, flows: u16, max: Duration) -> std::io::Result<Sent> {
    assert!(u32::from(first_sport) + u32::from(flows) <= 65_536, "source ports past 65535");
    ns.run(move || {
        let _cpu = super::cpu::load_generator();
        // IPPROTO_RAW: the header is ours (IP_HDRINCL, and for IPv6 its
        // equivalent, which the kernel implies for IPPROTO_RAW).
        let domain = if src.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
        // The port of a raw socket's destination is the protocol's: none.
        let addrs: Vec<SockAddr> = dsts.iter().map(|d| SockAddr::from(SocketAddr::new(d.ip(), 0))).collect();
        let mut buf = Vec::with_capacity(64);
        let started = Instant::now();
        let (mut sent, mut errors) = (0u64, 0u64);
        for k in 0..flows {
            let i = usize::from(k) % dsts.len();
            let d = dsts[i];
            buf.clear();
            let ip = match (src, d.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
                (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
                _ => return Err(std::io::Error::other(format!("{src} and {d} are of two families"))),
            };
            ip.udp(first_sport + k, d.port()).write(&mut buf, &PAYLOAD).map_err(std::io::Error::other)?;
            if sock.send_to(&buf, &addrs[i]).is_err() {
                errors += 1;
            }
            sent += 1;
            if sent.is_multiple_of(256) && started.elapsed() >= max {
                break;
            }
        }
        Ok(Sent { datagrams: sent, errors, started, took: started.elapsed() })
    })
}

/// How long the sinks' count must stand still before a slice takes it as
/// final, when datagrams are still missing: a sink thread can wait that
/// long for its core (another test's threads, on 2 cores).
const STILL: Duration = Duration::from_millis(100);

/// Waits until `count` reaches `expected` or stops moving for [`STILL`],
/// at most a second, and returns it: datagrams still in flight when the
/// send loop ends are counted.
fn settle(count: impl Fn() -> u64, expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut last = count();
    let mut moved = Instant::now();
    while last < expected && moved.elapsed() < STILL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = count();
        if now != last {
            moved = Instant::now();
        }
        last = now;
    }
    last
}

/// One slice: `flows` flows sent to `dsts` from `ns`, counted by `sinks`.
/// The rate is datagrams received per second, from the first send to the
/// later of the last send and the last arrival (work the kernel deferred
/// past the send loop is counted); failures are the datagrams sent and
/// never counted.
pub fn slice(ns: &NetNs, src: IpAddr, dsts: Vec<SocketAddr>, first_sport: u16, flows: u16, max: Duration, sinks: &UdpSinks) -> Latency {
    let _busy = sinks.busy();
    // Nothing is expected before the send: the count stands still first.
    let before = settle(|| sinks.received(), u64::MAX);
    let Ok(sent) = send(ns, src, dsts, first_sport, flows, max) else {
        return Latency { failures: 1, ..Latency::default() };
    };
    let got = settle(|| sinks.received(), before + sent.datagrams).saturating_sub(before);
    let start_ns = sent.started.saturating_duration_since(epoch()).as_nanos() as u64;
    let last_ns = sinks.last_ns();
    let span = sent.took.max(Duration::from_nanos(last_ns.saturating_sub(start_ns)));
    Latency {
        per_s: got as f64 / span.as_secs_f64(),
        failures: sent.datagrams.saturating_sub(got).max(sent.errors),
        samples: got,
        ..Latency::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::settle;

    #[test]
    fn a_sink_that_stalls_for_a_while_is_still_counted() {
        // 900 datagrams sent; the sink's thread gets its core 60 ms late
        // (it happened in CI: a slice measured 0 and its datagrams landed
        // in the next one).
        let start = Instant::now();
        let count = || if start.elapsed() >= Duration::from_millis(60) { 900 } else { 0 };
        assert_eq!(settle(count, 900), 900);
    }

    #[test]
    fn a_count_that_reaches_what_was_sent_settles_at_once_and_a_lossy_one_gives_up() {
        let start = Instant::now();
        assert_eq!(settle(|| 900, 900), 900);
        assert!(start.elapsed() < Duration::from_millis(50), "{:?}", start.elapsed());
        let start = Instant::now();
        assert_eq!(settle(|| 899, 900), 899, "one datagram lost: the count stands still");
        assert!(start.elapsed() < Duration::from_millis(500), "gave up after standing still: {:?}", start.elapsed());
    }
}
