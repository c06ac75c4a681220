//! New UDP flows per second: the DNS-shaped workload. One pod sends
//! single-datagram flows, each from a source port it has not used yet in
//! this topology, as fast as one core allows; the backends count what
//! arrives (`bench::udp_sinks`, reading without sleeping while a slice
//! runs, so that no datagram's sender pays to wake its reader).
//!
//! The datagrams are built whole (IPv4 or IPv6 + UDP, checksums right)
//! before the clock starts and written to a raw socket with `sendmmsg(2)`,
//! so the sender pays no socket setup and one syscall per batch: the work
//! left is the kernel's, and the veth hands each packet to the node's
//! datapath on the sender's own CPU, so the send rate is bounded by the
//! dataplane's cost per new flow.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{measure::Latency, udp_sinks::UdpSinks};
use crate::{netns::NetNs, traffic::epoch};

/// Bytes of payload per datagram (a small DNS query).
const PAYLOAD: [u8; 32] = [0x42; 32];

/// Datagrams handed to the kernel per `sendmmsg(2)`: the syscall's own
/// entry and exit, paid once per batch, leave each flow's cost to the
/// datapath (and a batch still goes out whole within a few hundred µs).
const BATCH: usize = 64;

/// What a send loop did.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub datagrams: u64,
    /// Datagrams the kernel refused (counted as lost too).
    pub errors: u64,
    pub started: Instant,
    pub took: Duration,
}

/// Flow `k`'s datagram, whole: `src` to `dst` from source port `sport`.
fn datagram(src: IpAddr, dst: SocketAddr, sport: u16) -> std::io::Result<Vec<u8>> {
    let ip = match (src, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => return Err(std::io::Error::other(format!("{src} and {dst} are of two families"))),
    };
    let mut buf = Vec::with_capacity(80);
    ip.udp(sport, dst.port()).write(&mut buf, &PAYLOAD).map_err(std::io::Error::other)?;
    Ok(buf)
}

/// Sends from `ns` (source `src`) one datagram per flow: flow `k` goes to
/// `dsts[k % len]` from source port `first_sport + k`, for `flows` flows
/// or until `max` has passed, whichever comes first. Every flow has a
/// source port of its own, so no two flows share a tuple before or after
/// a ClusterIP's translation.
///
/// Every datagram and its message header are built before the clock
/// starts; the timed loop only calls `sendmmsg(2)`, [`BATCH`] datagrams a
/// call, so what it measures is the kernel's work per flow.
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
        let packets = (0..flows).map(|k| datagram(src, dsts[usize::from(k) % dsts.len()], first_sport + k)).collect::<std::io::Result<Vec<_>>>()?;
        let mut iovs: Vec<libc::iovec> = packets.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut libc::c_void, iov_len: p.len() }).collect();
        // SAFETY: an all-zero mmsghdr is a valid empty one.
        let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; packets.len()];
        for (k, (h, iov)) in hdrs.iter_mut().zip(iovs.iter_mut()).enumerate() {
            let to = &addrs[k % addrs.len()];
            h.msg_hdr.msg_name = to.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = to.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        let started = Instant::now();
        let (mut next, mut errors) = (0usize, 0u64);
        while next < hdrs.len() {
            let n = BATCH.min(hdrs.len() - next);
            // SAFETY: `hdrs[next..next + n]` are initialised headers whose
            // names, iovecs and buffers (`addrs`, `iovs`, `packets`) outlive
            // the call; the kernel writes only each header's `msg_len`.
            let rc = unsafe { libc::sendmmsg(sock.as_raw_fd(), hdrs.as_mut_ptr().add(next), n as libc::c_uint, 0) };
            // A datagram the kernel refuses ends the call, which returns
            // how many went before it; the next call starts with it, and
            // returns -1: it is counted and skipped.
            match usize::try_from(rc) {
                Ok(sent) if sent > 0 => next += sent,
                _ => {
                    errors += 1;
                    next += 1;
                }
            }
            if started.elapsed() >= max {
                break;
            }
        }
        Ok(Sent { datagrams: next as u64, errors, started, took: started.elapsed() })
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
