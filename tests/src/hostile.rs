//! What a hostile (or merely unusual) pod does, with real sockets inside
//! its namespace: send from an address it added itself, spray raw UDP
//! tuples, send with a tiny TTL, and hold connections the server speaks on
//! first. Every operation is bounded in count and time.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use etherparse::PacketBuilder;

use crate::netns::NetNs;

pub use crate::traffic::udp_request_from as udp_from;

/// Sends one datagram with IP TTL `ttl` on a connected socket that asks
/// for ICMP errors (IP_RECVERR); returns the answer or the error the
/// socket saw (EHOSTUNREACH for time exceeded).
pub fn udp_with_ttl(ns: &NetNs, dst: Ipv4Addr, port: u16, ttl: u32, timeout: Duration) -> io::Result<Vec<u8>> {
    ns.run(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_ttl(ttl)?;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value.
        let rc = unsafe {
            libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVERR, (&on as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as u32)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        s.connect((dst, port))?;
        s.send(b"ttl")?;
        let mut buf = vec![0u8; 1500];
        let n = s.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    })
}

/// Sends `count` UDP datagrams from `src` through a raw socket, cycling
/// through source ports 1024..61024 and then the destination ports in
/// `dports`: `count / rounds` distinct tuples, each sent `rounds` times
/// in a row (a tuple seen twice looks like a flow in use to an LRU).
/// Returns how many were sent.
pub fn spray_udp(ns: &NetNs, src: Ipv4Addr, dst: Ipv4Addr, dports: Vec<u16>, count: usize, rounds: usize) -> io::Result<usize> {
    ns.run(move || {
        // SAFETY: plain socket(2) call; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
            sin_zero: [0; 8],
        };
        let mut sent = 0;
        let mut pkt = Vec::with_capacity(64);
        for n in 0..count {
            let i = n / rounds.max(1);
            let sport = 1024 + (i % 60_000) as u16;
            let dport = dports[(i / 60_000) % dports.len()];
            pkt.clear();
            PacketBuilder::ipv4(src.octets(), dst.octets(), 64).udp(sport, dport).write(&mut pkt, b"spray").map_err(io::Error::other)?;
            // SAFETY: a valid fd, buffer and sockaddr_in of the right size.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if rc >= 0 {
                sent += 1;
            } else if io::Error::last_os_error().raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(Duration::from_micros(50));
            }
            // The veth hands packets to a per-CPU backlog of
            // netdev_max_backlog (1,000) packets: pace the bursts so the
            // packets reach the host side's tc hook instead of overflowing it.
            if n % 256 == 255 {
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        Ok(sent)
    })
}

/// A TCP server that accepts one connection and speaks first: it writes
/// `line` when told to ([`PushServer::push`]).
pub struct PushServer {
    go: mpsc::Sender<()>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl PushServer {
    pub fn start(ns: &NetNs, port: u16, line: &'static str) -> Self {
        let (go, wait) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = ns.spawn(move || {
            let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
            let _ = ready_tx.send(());
            let (mut s, _) = l.accept()?;
            if wait.recv_timeout(Duration::from_secs(120)).is_ok() {
                s.write_all(line.as_bytes())?;
            }
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("push server did not start");
        Self { go, handle: Some(handle) }
    }

    /// Tells the server to write its line.
    pub fn push(&self) {
        let _ = self.go.send(());
    }
}

impl Drop for PushServer {
    fn drop(&mut self) {
        let _ = self.go.send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP server that reads one connection to its end (the client's FIN),
/// waits `after`, then writes `line` and closes.
pub fn late_writer(ns: &NetNs, port: u16, after: Duration, line: &'static str) -> JoinHandle<io::Result<()>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
        let _ = ready_tx.send(());
        let (mut s, _) = l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut sink = Vec::new();
        s.read_to_end(&mut sink)?;
        std::thread::sleep(after);
        s.write_all(line.as_bytes())
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("late writer did not start");
    h
}

/// Connects from `ns` to `dst:port` (a stream usable from any thread).
pub fn connect(ns: &NetNs, dst: Ipv4Addr, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    ns.run(move || {
        let s = TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(dst, port)), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        Ok(s)
    })
}

/// Reads one line (up to `\n`) from `s`.
pub fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => out.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A VXLAN datagram's payload (RFC 7348 header, VNI `vni`) carrying an
/// Ethernet frame to `inner_mac` with a UDP packet `src:sport` →
/// `dst:dport` (IPv4 or IPv6, both of one family), as a pod would forge
/// it to inject traffic into another node's tunnel.
pub fn vxlan_payload(vni: u32, inner_mac: [u8; 6], src: impl Into<std::net::IpAddr>, dst: impl Into<std::net::IpAddr>, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    use std::net::IpAddr;
    let mut f = vec![0x08, 0, 0, 0];
    f.extend_from_slice(&(vni << 8).to_be_bytes());
    let eth = PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x99], inner_mac);
    let ip = match (src.into(), dst.into()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        (s, d) => panic!("{s} and {d} are of two families"),
    };
    ip.udp(sport, dport).write(&mut f, data).expect("writing to a Vec");
    f
}
