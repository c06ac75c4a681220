//! The receiving end of the UDP flood: a socket per backend and port, all
//! read by one thread on the servers' CPU (`bench::cpu`), which counts
//! each socket's datagrams and when the last one arrived.
//!
//! While a measurement holds [`UdpSinks::busy`], the thread reads its
//! sockets without ever sleeping. A reader asleep on a socket is woken
//! for each datagram, and the wake-up is paid by whoever queued the
//! datagram: here the sender's own CPU, which carries each datagram
//! through the whole path (veth, the node's datapath, the backend's
//! stack) before its next `sendto`. On the 2-vCPU VM of
//! docs/performance.md that wake-up (an inter-processor interrupt) took
//! 38 % of the sender's time under `sendto`, twice what weir's programs
//! took, and the same on every dataplane, so it diluted every difference
//! between them. Outside a measurement the thread waits in poll(2).

use std::{
    io,
    net::{IpAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crate::{netns::NetNs, traffic::epoch};

/// What one sink has counted.
#[derive(Debug, Default)]
pub struct SinkCount {
    served: AtomicU64,
    /// When its last datagram was read, in ns after [`epoch`] (0: none yet).
    last_ns: AtomicU64,
}

impl SinkCount {
    /// Datagrams read so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// When the last of them was read, in ns after [`epoch`] (0: none yet).
    pub fn last_ns(&self) -> u64 {
        self.last_ns.load(Ordering::Relaxed)
    }
}

/// The sinks and their thread, which stops when this drops.
pub struct UdpSinks {
    counts: Vec<Arc<SinkCount>>,
    /// How many [`Busy`] guards are alive.
    busy: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

/// While it lives, the sinks' thread reads without sleeping.
pub struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long the idle thread waits in poll(2) before it looks at the stop
/// flag again.
const IDLE_POLL_MS: i32 = 20;

impl UdpSinks {
    /// A sink for each of `at`: a network namespace, an address
    /// (unspecified: any of its family) and a port. Each socket's receive
    /// buffer is 64 MiB (SO_RCVBUFFORCE), so a burst is counted rather
    /// than dropped at the socket.
    pub fn start(at: &[(&NetNs, IpAddr, u16)]) -> Self {
        // A socket stays in the namespace it was made in.
        let socks: Vec<UdpSocket> = at
            .iter()
            .map(|&(ns, addr, port)| ns.run(move || bind(addr, port)).unwrap_or_else(|e| panic!("udp sink {addr} port {port}: {e}")))
            .collect();
        let counts: Vec<Arc<SinkCount>> = socks.iter().map(|_| Arc::default()).collect();
        let busy = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, b, s) = (counts.clone(), busy.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let _cpu = super::cpu::servers();
            read_all(&socks, &c, &b, &s);
        });
        Self { counts, busy, stop, handle: Some(handle) }
    }

    /// Each sink's count, in the order [`UdpSinks::start`] was given.
    pub fn iter(&self) -> impl Iterator<Item = &SinkCount> {
        self.counts.iter().map(|c| &**c)
    }

    /// Datagrams read by all sinks so far.
    pub fn received(&self) -> u64 {
        self.iter().map(SinkCount::served).sum()
    }

    /// When the last datagram of any sink was read (see [`SinkCount::last_ns`]).
    pub fn last_ns(&self) -> u64 {
        self.iter().map(SinkCount::last_ns).max().unwrap_or(0)
    }

    /// Keeps the thread reading without sleeping until the guard drops.
    pub fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(&self.busy)
    }
}

impl Drop for UdpSinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A non-blocking UDP socket on `addr`:`port` in the calling thread's
/// namespace, with its 64 MiB receive buffer.
fn bind(addr: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind((addr, port))?;
    let size: libc::c_int = 64 << 20;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const size).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// The thread: drains every socket in turn, waiting in poll(2) between
/// rounds unless a [`Busy`] guard is alive.
fn read_all(socks: &[UdpSocket], counts: &[Arc<SinkCount>], busy: &AtomicUsize, stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = socks.iter().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    let mut buf = [0u8; 2048];
    let epoch = epoch();
    while !stop.load(Ordering::Relaxed) {
        if busy.load(Ordering::Relaxed) == 0 {
            // SAFETY: `fds` is an array of valid pollfds of its own length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, IDLE_POLL_MS) };
        }
        for (sock, count) in socks.iter().zip(counts) {
            let mut got = 0;
            while sock.recv(&mut buf).is_ok() {
                got += 1;
            }
            if got > 0 {
                count.served.fetch_add(got, Ordering::Relaxed);
                count.last_ns.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }
}
