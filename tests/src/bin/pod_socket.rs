//! One socket of a pod, opened by a process in a given cgroup, for the
//! tests of socket-level load balancing in pods (`lb_socket_pods`): the
//! socket programs act on sockets by the cgroup of the process that
//! opens them, and a test thread cannot leave the test process's cgroup.
//!
//! `weir-pod-socket <cgroup dir> <netns path> tcp|tcp-blocking|udp|udp-connected <ip> <port>`
//! joins the cgroup, enters the network namespace, opens one socket,
//! sends one request to `<ip>:<port>` and prints one JSON line: the
//! socket's cookie, the reply's first word, the peer (TCP and connected
//! UDP: getpeername; unconnected UDP: the reply's source), or the error
//! and its errno. With a last argument `hold` it then keeps the socket
//! open until its standard input closes, so that a test can look at what
//! the programs hold for a live socket, and at what is left once it is
//! released.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::Duration,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn cookie(fd: &impl AsRawFd) -> std::io::Result<u64> {
    let mut c = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `c`.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&mut c as *mut u64).cast(), &mut len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(c)
}

fn unspecified(ip: &IpAddr) -> IpAddr {
    if ip.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) }
}

fn first_word(b: &[u8]) -> String {
    String::from_utf8_lossy(b).split_whitespace().next().unwrap_or_default().to_string()
}

/// (cookie, reply, peer); the cookie is reported even when the exchange
/// fails, and `held` keeps the socket open (a second descriptor of it).
fn exchange(mode: &str, dst: SocketAddr, c: &mut u64, held: &mut Option<socket2::Socket>) -> std::io::Result<(String, SocketAddr)> {
    match mode {
        "tcp" | "tcp-blocking" => {
            let s = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None)?;
            *c = cookie(&s)?;
            *held = Some(s.try_clone()?);
            if mode == "tcp" {
                // Non-blocking, then poll(2) (std's way).
                s.connect_timeout(&dst.into(), TIMEOUT)?;
            } else {
                // A plain blocking connect(2), bounded by SO_SNDTIMEO. A
                // refused one returns after the kernel has disconnected
                // the socket (its destination port cleared); one that
                // times out returns EINPROGRESS with the socket still in
                // SYN_SENT.
                s.set_write_timeout(Some(TIMEOUT))?;
                s.connect(&dst.into())?;
            }
            let mut s: TcpStream = s.into();
            s.set_read_timeout(Some(TIMEOUT))?;
            let peer = s.peer_addr()?;
            s.write_all(b"hello")?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut out = Vec::new();
            s.read_to_end(&mut out)?;
            Ok((first_word(&out), peer))
        }
        "udp" | "udp-connected" => {
            let s = UdpSocket::bind((unspecified(&dst.ip()), 0))?;
            *c = cookie(&s)?;
            *held = Some(s.try_clone()?.into());
            s.set_read_timeout(Some(TIMEOUT))?;
            let mut buf = [0u8; 1500];
            if mode == "udp" {
                s.send_to(b"who", dst)?;
                let (n, from) = s.recv_from(&mut buf)?;
                Ok((first_word(&buf[..n]), from))
            } else {
                s.connect(dst)?;
                s.send(b"who")?;
                let n = s.recv(&mut buf)?;
                Ok((first_word(&buf[..n]), s.peer_addr()?))
            }
        }
        other => Err(std::io::Error::other(format!("unknown mode {other:?}"))),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (args, hold) = match args.split_last() {
        Some((last, rest)) if last == "hold" => (rest, true),
        _ => (args.as_slice(), false),
    };
    let [_, cgroup, netns, mode, ip, port] = args else {
        anyhow::bail!("usage: weir-pod-socket <cgroup dir> <netns path> tcp|tcp-blocking|udp|udp-connected <ip> <port> [hold]");
    };
    // Before any other thread exists: the whole process moves.
    std::fs::write(std::path::Path::new(cgroup).join("cgroup.procs"), "0")?;
    let ns = std::fs::File::open(netns)?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    let dst = SocketAddr::new(ip.parse()?, port.parse()?);
    let (mut c, mut held) = (0, None);
    let out = match exchange(mode, dst, &mut c, &mut held) {
        Ok((reply, peer)) => serde_json::json!({"cookie": c, "reply": reply, "peer": peer.to_string()}),
        Err(e) => serde_json::json!({"cookie": c, "error": e.to_string(), "errno": e.raw_os_error()}),
    };
    println!("{out}");
    if hold {
        std::io::stdout().flush()?;
        // Until the test closes our standard input.
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
    }
    drop(held);
    Ok(())
}
