//! Traffic measurements, each bounded in time, from the client pod.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::stats::percentile;
use crate::{netns::NetNs, traffic::tcp_connect};

/// One measurement: a rate, and the latency of what it counted.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    #[serde(default)]
    pub p999_us: f64,
    pub failures: u64,
    /// What the percentiles were taken over (requests, connections or
    /// datagrams).
    #[serde(default)]
    pub samples: u64,
}

/// The rate and percentiles of `lat` (µs each), completed in `took`.
pub fn summarize(mut lat: Vec<f64>, took: Duration, failures: u64) -> Latency {
    lat.sort_by(f64::total_cmp);
    Latency {
        per_s: lat.len() as f64 / took.as_secs_f64(),
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
        p999_us: percentile(&lat, 0.999),
        failures,
        samples: lat.len() as u64,
    }
}

/// One connection per request, serially, for `dur`: new connections per
/// second and request latency.
pub fn short_connections(ns: &NetNs, dst: IpAddr, port: u16, dur: Duration) -> Latency {
    short_connections_to(ns, vec![SocketAddr::from((dst, port))], dur)
}

/// [`short_connections`], connection `k` to `dsts[k % len]`.
pub fn short_connections_to(ns: &NetNs, dsts: Vec<SocketAddr>, dur: Duration) -> Latency {
    ns.run(move || {
        let _cpu = super::cpu::load_generator();
        let (mut lat, mut failures) = (Vec::new(), 0u64);
        let start = Instant::now();
        let mut k = 0usize;
        while start.elapsed() < dur {
            let addr = dsts[k % dsts.len()];
            k += 1;
            let t = Instant::now();
            let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"x")?;
                s.shutdown(std::net::Shutdown::Write)?;
                let mut v = Vec::with_capacity(32);
                s.read_to_end(&mut v)?;
                Ok(!v.is_empty())
            });
            match ok {
                Ok(true) => lat.push(t.elapsed().as_secs_f64() * 1e6),
                _ => failures += 1,
            }
        }
        summarize(lat, start.elapsed(), failures)
    })
}

/// Request/response on one kept-alive connection, `n` times.
pub fn keepalive(ns: &NetNs, dst: IpAddr, port: u16, n: usize) -> Latency {
    let Ok(mut s) = tcp_connect(ns, dst, port, Duration::from_secs(2)) else {
        return Latency { failures: n as u64, ..Latency::default() };
    };
    let _ = s.set_nodelay(true);
    let _cpu = super::cpu::load_generator();
    let (mut lat, mut failures) = (Vec::with_capacity(n), 0u64);
    let start = Instant::now();
    let mut buf = [0u8; 64];
    for _ in 0..n {
        let t = Instant::now();
        let ok = s.write_all(b"q\n").and_then(|_| {
            let mut got = 0;
            loop {
                let k = s.read(&mut buf[got..])?;
                if k == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                got += k;
                if buf[..got].contains(&b'\n') {
                    return Ok(());
                }
            }
        });
        match ok {
            Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e6),
            Err(_) => failures += 1,
        }
    }
    summarize(lat, start.elapsed(), failures)
}

/// iperf3 TCP throughput in Gbit/s (received), `secs` long, as a
/// [`Latency`] whose rate is the throughput (no latencies).
pub fn iperf_slice(ns: &NetNs, dst: IpAddr, port: u16, secs: u32) -> Latency {
    let gbps = iperf(ns, dst, port, secs);
    Latency { per_s: gbps, failures: u64::from(gbps <= 0.0), ..Latency::default() }
}

/// iperf3 TCP throughput in Gbit/s (received), `secs` long.
pub fn iperf(ns: &NetNs, dst: IpAddr, port: u16, secs: u32) -> f64 {
    let net = format!("--net={}", ns.path().display());
    let (d, p, t) = (dst.to_string(), port.to_string(), secs.to_string());
    let out = crate::cmd::output(&["nsenter", &net, "iperf3", "-c", &d, "-p", &p, "-t", &t, "-J"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9
}
