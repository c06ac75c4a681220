//! TCP with many requests in flight: event-driven servers for the
//! backends (one tokio thread serves them all, see [`serve`]) and an
//! event-driven load generator in the client pod (one tokio thread), so
//! that the rate is bounded by the kernel's work per connection rather
//! than by a thread waiting on each one in turn.
//!
//! The servers answer as `traffic::Reply::Name` (short connections: the
//! name and the byte count after the client half-closes) and
//! `Reply::NamePerLine` (keep-alive: the name for every line), the
//! protocol the serial measurements speak too.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

use super::{
    cpu,
    measure::{summarize, Latency},
};
use crate::netns::NetNs;

/// How long a client waits for a connection or an answer.
const TIMEOUT: Duration = Duration::from_secs(2);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// A backend's servers; they stop when this drops.
pub struct Servers {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Serves short connections on `short_port` and keep-alive lines on
/// `keepalive_port`, at `addr` (unspecified: any address of its family),
/// for every backend of `backends` (its network namespace and the name
/// it answers as), all from one thread on the servers' CPU. A thread per
/// backend on that one CPU let the scheduler set the tail: a request
/// waited for the other backends' threads to use up their slices, so the
/// keep-alive p99 was 7–8 ms on every dataplane and the direct path
/// alike. Each listener is made in its backend's namespace (a socket
/// stays in the namespace it was made in) and served from this thread.
pub fn serve(backends: &[(&NetNs, &str)], addr: IpAddr, short_port: u16, keepalive_port: u16) -> Servers {
    let listeners: Vec<(std::net::TcpListener, std::net::TcpListener, String)> = backends
        .iter()
        .map(|(ns, name)| {
            let name = name.to_string();
            ns.run(move || (listen(addr, short_port), listen(addr, keepalive_port), name))
        })
        .collect();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let _cpu = cpu::servers();
        runtime().block_on(async move {
            for (short, keep, name) in listeners {
                let short = TcpListener::from_std(short).expect("short listener");
                let keep = TcpListener::from_std(keep).expect("keep-alive listener");
                let n1 = name.clone();
                tokio::spawn(async move {
                    while let Ok((c, _)) = short.accept().await {
                        tokio::spawn(answer_short(c, n1.clone()));
                    }
                });
                tokio::spawn(async move {
                    while let Ok((c, _)) = keep.accept().await {
                        tokio::spawn(answer_lines(c, name.clone()));
                    }
                });
            }
            let _ = stop_rx.await;
        });
    });
    Servers { stop: Some(stop_tx), handle: Some(handle) }
}

/// A non-blocking listener on `addr`:`port` in the calling thread's
/// network namespace, as tokio's own `bind` makes it (address reuse, a
/// backlog of 1024).
fn listen(addr: IpAddr, port: u16) -> std::net::TcpListener {
    use socket2::{Domain, Socket, Type};
    let at = SocketAddr::new(addr, port);
    let s = Socket::new(Domain::for_address(at), Type::STREAM, None).expect("bench listener socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.bind(&at.into()).unwrap_or_else(|e| panic!("bind {at}: {e}"));
    s.listen(1024).expect("listen");
    s.set_nonblocking(true).expect("non-blocking listener");
    s.into()
}

async fn answer_short(mut c: TcpStream, name: String) -> std::io::Result<()> {
    let _ = c.set_nodelay(true);
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    loop {
        let n = c.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n;
    }
    c.write_all(format!("{name} {total}\n").as_bytes()).await
}

async fn answer_lines(mut c: TcpStream, name: String) -> std::io::Result<()> {
    let _ = c.set_nodelay(true);
    let line = format!("{name}\n");
    let mut buf = [0u8; 4096];
    loop {
        let n = c.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        for _ in buf[..n].iter().filter(|b| **b == b'\n') {
            c.write_all(line.as_bytes()).await?;
        }
    }
}

/// What one client task measured.
#[derive(Default)]
struct Tally {
    lat_us: Vec<f64>,
    failures: u64,
}

/// `conns` clients at once, each opening a connection per request for
/// `dur`: connections per second and their latency. Each connection goes
/// to one of `dsts` drawn at random (pod to pod: the backends a ClusterIP
/// would spread over, drawn the way its random choice spreads them, so
/// both paths load the same servers alike).
pub fn short_connections(ns: &NetNs, dsts: Vec<SocketAddr>, conns: usize, dur: Duration) -> Latency {
    ns.run(move || {
        let _cpu = cpu::load_generator();
        runtime().block_on(fan_out(conns, dur, dsts, short_client))
    })
}

/// `conns` kept-alive connections at once, each sending a request as soon
/// as the last one is answered, for `dur`: requests per second and their
/// latency. Each connection goes to one of `dsts` drawn at random, as in
/// [`short_connections`].
pub fn keepalive(ns: &NetNs, dsts: Vec<SocketAddr>, conns: usize, dur: Duration) -> Latency {
    ns.run(move || {
        let _cpu = cpu::load_generator();
        runtime().block_on(fan_out(conns, dur, dsts, keepalive_client))
    })
}

async fn fan_out<F, Fut>(conns: usize, dur: Duration, dsts: Vec<SocketAddr>, client: F) -> Latency
where
    F: Fn(Pick, Instant) -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + dur;
    let dsts = std::sync::Arc::new(dsts);
    let mut seeds = fastrand::Rng::new();
    let tasks: Vec<_> = (0..conns).map(|_| tokio::spawn(client(Pick { dsts: dsts.clone(), rng: fastrand::Rng::with_seed(seeds.u64(..)) }, deadline))).collect();
    let mut all = Tally::default();
    for t in tasks {
        match t.await {
            Ok(mut t) => {
                all.lat_us.append(&mut t.lat_us);
                all.failures += t.failures;
            }
            Err(_) => all.failures += 1,
        }
    }
    summarize(all.lat_us, start.elapsed(), all.failures)
}

/// Where a client's next connection goes.
struct Pick {
    dsts: std::sync::Arc<Vec<SocketAddr>>,
    rng: fastrand::Rng,
}

impl Pick {
    fn next(&mut self) -> SocketAddr {
        self.dsts[self.rng.usize(..self.dsts.len())]
    }
}

async fn short_client(mut pick: Pick, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < deadline {
        let begin = Instant::now();
        let addr = pick.next();
        let one = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"x").await?;
            s.shutdown().await?;
            let mut v = Vec::with_capacity(32);
            s.read_to_end(&mut v).await?;
            Ok::<bool, std::io::Error>(!v.is_empty())
        };
        match tokio::time::timeout(TIMEOUT, one).await {
            Ok(Ok(true)) => t.lat_us.push(begin.elapsed().as_secs_f64() * 1e6),
            _ => t.failures += 1,
        }
    }
    t
}

async fn keepalive_client(mut pick: Pick, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    let Ok(Ok(mut s)) = tokio::time::timeout(TIMEOUT, TcpStream::connect(pick.next())).await else {
        t.failures += 1;
        return t;
    };
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        let begin = Instant::now();
        let one = async {
            s.write_all(b"q\n").await?;
            let mut got = 0;
            loop {
                let k = s.read(&mut buf[got..]).await?;
                if k == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                got += k;
                if buf[..got].contains(&b'\n') {
                    return Ok(());
                }
                if got == buf.len() {
                    return Err(std::io::Error::other("no line"));
                }
            }
        };
        match tokio::time::timeout(TIMEOUT, one).await {
            Ok(Ok(())) => t.lat_us.push(begin.elapsed().as_secs_f64() * 1e6),
            _ => {
                t.failures += 1;
                break;
            }
        }
    }
    t
}
