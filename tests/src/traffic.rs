//! TCP and UDP servers and clients that run inside a namespace, each
//! bounded in time. Servers stop when their guard drops.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::NetNs;

/// Upper bound for any single client operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a server answers.
#[derive(Clone, Debug)]
pub enum Reply {
    /// TCP: `<name> <bytes received>\n` after the client half-closes.
    /// UDP: `<name>` for each datagram.
    Name(String),
    /// Echo each UDP datagram back unchanged (TCP: echo everything).
    Echo,
    /// TCP: `<name>\n` for every line received, on a long-lived connection.
    NamePerLine(String),
    /// `<name> <peer ip>:<peer port>`: who the server saw (TCP: after the
    /// client half-closes; UDP: for each datagram).
    Peer(String),
}

/// A running server; stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Connections (TCP) or datagrams (UDP) served so far.
    pub served: Arc<AtomicU64>,
}

impl Server {
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Whether two pings (`ping`, either family) from `ns` to `dst` are
/// answered.
pub fn ping(ns: &NetNs, dst: impl Into<IpAddr>) -> bool {
    let net = format!("--net={}", ns.path().display());
    std::process::Command::new("nsenter")
        .args([net.as_str(), "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", &dst.into().to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The instant the benchmark's UDP sinks stamp arrivals from (the first
/// use in this process).
pub fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Starts a TCP server on 0.0.0.0:`port` inside `ns`. Returns once it listens.
pub fn tcp_server(ns: &NetNs, port: u16, reply: Reply) -> Server {
    tcp_server_at(ns, Ipv4Addr::UNSPECIFIED.into(), port, reply)
}

/// [`tcp_server`] bound to `addr` (`::` serves both families).
pub fn tcp_server_at(ns: &NetNs, addr: std::net::IpAddr, port: u16, reply: Reply) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop2, served2) = (stop.clone(), served.clone());
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind((addr, port)).expect("tcp bind");
        let _ = ready_tx.send(());
        while !stop2.load(Ordering::Relaxed) {
            // Wait for a connection without busy polling; wake every 20 ms
            // to notice the stop flag.
            if !readable(&listener, 20) {
                continue;
            }
            if let Ok((conn, _)) = listener.accept() {
                served2.fetch_add(1, Ordering::Relaxed);
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let _ = serve_tcp(conn, &reply);
                });
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("tcp server did not start");
    Server { stop, handle: Some(handle), served }
}

/// Whether `listener` has a pending connection within `timeout_ms`.
fn readable(listener: &TcpListener, timeout_ms: i32) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, owned by this frame.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) > 0 }
}

fn serve_tcp(mut conn: TcpStream, reply: &Reply) -> io::Result<()> {
    let peer = conn.peer_addr()?;
    let _ = conn.set_nodelay(true);
    conn.set_nonblocking(false)?;
    // An idle connection is closed after a while, so a test that leaves
    // one open does not keep its thread; a long-lived one (`NamePerLine`)
    // may sit idle across an agent's restarts and a migration, which take
    // more than 10 s on a slow machine.
    let idle = if matches!(reply, Reply::NamePerLine(_)) { Duration::from_secs(300) } else { Duration::from_secs(10) };
    conn.set_read_timeout(Some(idle))?;
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0usize;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
        match reply {
            Reply::Echo => conn.write_all(&buf[..n])?,
            Reply::NamePerLine(name) => {
                for _ in buf[..n].iter().filter(|b| **b == b'\n') {
                    conn.write_all(format!("{name}\n").as_bytes())?;
                }
            }
            Reply::Name(_) | Reply::Peer(_) => {}
        }
    }
    match reply {
        Reply::Name(name) => conn.write_all(format!("{name} {total}\n").as_bytes())?,
        Reply::Peer(name) => conn.write_all(format!("{name} {peer}\n").as_bytes())?,
        _ => {}
    }
    Ok(())
}

/// Starts a UDP server on 0.0.0.0:`port` inside `ns`.
pub fn udp_server(ns: &NetNs, port: u16, reply: Reply) -> Server {
    udp_server_at(ns, Ipv4Addr::UNSPECIFIED.into(), port, reply)
}

/// [`udp_server`] bound to `addr` (`::` serves both families).
pub fn udp_server_at(ns: &NetNs, addr: std::net::IpAddr, port: u16, reply: Reply) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop2, served2) = (stop.clone(), served.clone());
    let handle = ns.spawn(move || {
        let sock = UdpSocket::bind((addr, port)).expect("udp bind");
        sock.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let _ = ready_tx.send(());
        let mut buf = [0u8; 65536];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                served2.fetch_add(1, Ordering::Relaxed);
                let _ = match &reply {
                    Reply::Echo => sock.send_to(&buf[..n], peer),
                    Reply::Name(name) | Reply::NamePerLine(name) => sock.send_to(name.as_bytes(), peer),
                    Reply::Peer(name) => sock.send_to(format!("{name} {peer}").as_bytes(), peer),
                };
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("udp server did not start");
    Server { stop, handle: Some(handle), served }
}

/// Connects from `ns` to `dst:port`, sends `payload`, half-closes and
/// returns everything the server answered.
pub fn tcp_request(ns: &NetNs, dst: impl Into<IpAddr>, port: u16, payload: Vec<u8>, timeout: Duration) -> io::Result<Vec<u8>> {
    let dst = dst.into();
    tcp_request_from(ns, unspecified(&dst), dst, port, payload, timeout)
}

/// The unspecified address of `a`'s family (bind to any).
pub fn unspecified(a: &IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// [`tcp_request`] from the source address `src` (one the namespace holds).
pub fn tcp_request_from(ns: &NetNs, src: impl Into<IpAddr>, dst: impl Into<IpAddr>, port: u16, payload: Vec<u8>, timeout: Duration) -> io::Result<Vec<u8>> {
    let (src, dst) = (src.into(), dst.into());
    ns.run(move || tcp_request_here(src, dst, port, &payload, timeout))
}

/// [`tcp_request_from`] on the calling thread, in whatever namespace the
/// thread is in (for loops that run inside a namespace's thread).
pub fn tcp_request_here(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, port: u16, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let dst = SocketAddr::new(dst.into(), port);
    let sock = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.bind(&SocketAddr::new(src.into(), 0).into())?;
    sock.connect_timeout(&dst.into(), timeout)?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Sends one datagram from `ns` to `dst:port` and waits for one answer.
pub fn udp_request(ns: &NetNs, dst: impl Into<IpAddr>, port: u16, payload: Vec<u8>, timeout: Duration) -> io::Result<Vec<u8>> {
    let dst = dst.into();
    udp_request_from(ns, unspecified(&dst), dst, port, payload, timeout)
}

/// [`udp_request`] from the source address `src` (one the namespace holds).
pub fn udp_request_from(ns: &NetNs, src: impl Into<IpAddr>, dst: impl Into<IpAddr>, port: u16, payload: Vec<u8>, timeout: Duration) -> io::Result<Vec<u8>> {
    let (src, dst) = (src.into(), dst.into());
    ns.run(move || exchange(&UdpSocket::bind((src, 0))?, dst, port, &payload, timeout))
}

/// Connects `s` to `dst:port`, sends `payload` and waits for one answer.
fn exchange(s: &UdpSocket, dst: IpAddr, port: u16, payload: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    s.set_read_timeout(Some(timeout))?;
    s.connect((dst, port))?;
    s.send(payload)?;
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// One datagram with Don't Fragment set from `src` in `ns` to `dst:port`,
/// sent whatever path MTU the namespace learnt before
/// (`IP_PMTUDISC_PROBE`): the answer, or the error the socket reported
/// (an ICMP fragmentation needed matched to it is `EMSGSIZE`), and the
/// path MTU the socket knows afterwards (`IP_MTU`).
pub fn udp_df_request_from(ns: &NetNs, src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: Vec<u8>, timeout: Duration) -> (io::Result<Vec<u8>>, Option<u32>) {
    ns.run(move || {
        let s = match UdpSocket::bind((src, 0)) {
            Ok(s) => s,
            Err(e) => return (Err(e), None),
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let sockopt = |opt: libc::c_int, v: libc::c_int| {
            // SAFETY: a valid socket and a c_int option value.
            unsafe { libc::setsockopt(fd, libc::IPPROTO_IP, opt, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t) }
        };
        if sockopt(libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_PROBE) != 0 {
            return (Err(io::Error::last_os_error()), None);
        }
        let answer = exchange(&s, IpAddr::V4(dst), port, &payload, timeout);
        let mut mtu: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket, and an out value of the length given.
        let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_IP, libc::IP_MTU, (&mut mtu as *mut libc::c_int).cast(), &mut len) };
        (answer, (rc == 0).then_some(mtu as u32))
    })
}

/// Sends `count` datagrams on one socket, each waiting for its answer.
/// Returns how many were answered.
pub fn udp_exchange(ns: &NetNs, dst: Ipv4Addr, port: u16, payload: Vec<u8>, count: usize, timeout: Duration) -> io::Result<usize> {
    ns.run(move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(timeout))?;
        s.connect((dst, port))?;
        let mut buf = vec![0u8; 65536];
        let mut answered = 0;
        for _ in 0..count {
            s.send(&payload)?;
            if s.recv(&mut buf).is_ok() {
                answered += 1;
            }
        }
        Ok(answered)
    })
}

/// Connects from `ns` and returns the stream; it stays in `ns` and can be
/// used from any thread.
pub fn tcp_connect(ns: &NetNs, dst: impl Into<IpAddr>, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let dst = dst.into();
    ns.run(move || {
        let s = TcpStream::connect_timeout(&SocketAddr::new(dst, port), timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(s)
    })
}

/// One short connection from the calling thread's network namespace to a
/// [`Reply::Name`] server: connect, send a byte, half-close, read the
/// whole answer, which must not be empty.
pub fn short_connection_here(addr: SocketAddr, timeout: Duration) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"x")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    if v.is_empty() { Err(io::Error::other("empty reply")) } else { Ok(()) }
}

/// Sends one line on a [`Reply::NamePerLine`] connection and returns the answer.
pub fn ask_name(s: &mut TcpStream) -> io::Result<String> {
    s.write_all(b"who\n")?;
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte)?;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        out.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One TCP request to a [`Reply::Name`] server; returns the server's name.
pub fn tcp_name(ns: &NetNs, dst: impl Into<IpAddr>, port: u16, timeout: Duration) -> io::Result<String> {
    let r = tcp_request(ns, dst, port, b"hello".to_vec(), timeout)?;
    Ok(String::from_utf8_lossy(&r).split_whitespace().next().unwrap_or_default().to_string())
}

/// One UDP request from a fresh unconnected socket (a new flow each time);
/// returns the answer and the address it came from.
pub fn udp_name_from(ns: &NetNs, dst: impl Into<IpAddr>, port: u16, timeout: Duration) -> io::Result<(String, SocketAddr)> {
    let dst = dst.into();
    ns.run(move || {
        let s = UdpSocket::bind((unspecified(&dst), 0))?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"who", (dst, port))?;
        let mut buf = [0u8; 1500];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
}

/// A connected UDP socket in `ns` (one flow), usable from any thread.
pub fn udp_connect(ns: &NetNs, dst: impl Into<IpAddr>, port: u16, timeout: Duration) -> io::Result<UdpSocket> {
    let dst = dst.into();
    ns.run(move || {
        let s = UdpSocket::bind((unspecified(&dst), 0))?;
        s.set_read_timeout(Some(timeout))?;
        s.connect((dst, port))?;
        Ok(s)
    })
}

/// Sends on a connected UDP socket and returns the answer as text.
pub fn udp_ask(s: &UdpSocket) -> io::Result<String> {
    s.send(b"who")?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
