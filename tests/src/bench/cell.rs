//! One cell of the benchmark: every traffic measurement on one programmed
//! topology, in an order that keeps one measurement's leftovers out of the
//! next (the UDP flood, which fills the tracking tables, runs last).

use std::{net::SocketAddr, time::Duration};

use super::{
    bpf_time::{self, BpfTime},
    concurrent,
    measure::{iperf_slice, keepalive, short_connections, short_connections_to},
    paired::Paired,
    perf_profile,
    topo::{BenchTopo, IPERF_PORT, KEEPALIVE_PORT, SHORT_PORT},
    udp_flows,
};

/// Connections in flight in the concurrent TCP measurements.
pub const CONCURRENCY: usize = 32;

/// Source ports of the UDP slices start here; slice `i` takes the next
/// `udp_flows` ports, one per flow, so every flow of a cell is new to the
/// dataplane (the direct side sends to other ports of the backends, so it
/// may reuse the same source ports).
pub const FIRST_SPORT: u16 = 1024;

/// How long one cell's measurements are.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Pairs of slices per measurement (even: whole ABBA blocks).
    pub pairs: usize,
    /// One slice of a TCP measurement.
    pub slice: Duration,
    /// Requests in one serial keep-alive slice.
    pub ka_requests: usize,
    /// One iperf3 slice, seconds.
    pub iperf_secs: u32,
    /// UDP flows in one slice (over the three destinations).
    pub udp_flows: u16,
    /// The longest a UDP slice may send.
    pub udp_max: Duration,
}

impl Plan {
    /// Whether the UDP slices' source ports fit below 65536.
    pub fn udp_ports_fit(&self) -> bool {
        u32::from(FIRST_SPORT) + self.pairs as u32 * u32::from(self.udp_flows) <= 65_536
    }
}

/// Every measurement of a cell.
pub struct Measured {
    pub short: Paired,
    pub keepalive: Paired,
    pub throughput: Paired,
    pub concurrent_short: Paired,
    pub concurrent_keepalive: Paired,
    pub udp: Paired,
}

/// Runs every measurement on `t`.
pub fn measure(t: &BenchTopo, plan: &Plan) -> Measured {
    assert!(plan.udp_ports_fit(), "{plan:?}: UDP source ports past 65535");
    let (ns, vip) = (t.client.ns(), t.target_vip());
    let b0 = t.backend_ips()[0];
    let short = Paired::run(plan.pairs, |_| short_connections(ns, vip, SHORT_PORT, plan.slice), |_| short_connections_to(ns, t.direct(8080), plan.slice));
    let keepalive = Paired::run(plan.pairs, |_| keepalive(ns, vip, KEEPALIVE_PORT, plan.ka_requests), |_| keepalive(ns, b0, 9000, plan.ka_requests));
    let throughput = Paired::run(plan.pairs.div_ceil(2), |_| iperf_slice(ns, vip, IPERF_PORT, plan.iperf_secs), |_| iperf_slice(ns, b0, 5201, plan.iperf_secs));
    let concurrent_short = concurrent_short(t, plan);
    let concurrent_keepalive = Paired::run(
        plan.pairs,
        |_| concurrent::keepalive(ns, vec![SocketAddr::from((vip, KEEPALIVE_PORT))], CONCURRENCY, plan.slice),
        |_| concurrent::keepalive(ns, t.direct(9000), CONCURRENCY, plan.slice),
    );
    let udp = udp(t, plan);
    Measured { short, keepalive, throughput, concurrent_short, concurrent_keepalive, udp }
}

/// Short TCP connections, [`CONCURRENCY`] in flight.
pub fn concurrent_short(t: &BenchTopo, plan: &Plan) -> Paired {
    let ns = t.client.ns();
    Paired::run(
        plan.pairs,
        |_| concurrent::short_connections(ns, vec![SocketAddr::from((t.target_vip(), SHORT_PORT))], CONCURRENCY, plan.slice),
        |_| concurrent::short_connections(ns, t.direct(8080), CONCURRENCY, plan.slice),
    )
}

/// The 32-in-flight workloads again, with BPF statistics on
/// ([`bpf_time`]): (workload, unit, BPF time) for short connections and
/// keep-alive requests.
pub fn bpf_time(t: &BenchTopo, plan: &Plan) -> Result<Vec<(&'static str, &'static str, BpfTime)>, aya::sys::SyscallError> {
    let (ns, vip) = (t.client.ns(), t.target_vip());
    let short = bpf_time::paired(
        plan.pairs,
        || concurrent::short_connections(ns, vec![SocketAddr::from((vip, SHORT_PORT))], CONCURRENCY, plan.slice),
        || concurrent::short_connections(ns, t.direct(8080), CONCURRENCY, plan.slice),
    )?;
    let keepalive = bpf_time::paired(
        plan.pairs,
        || concurrent::keepalive(ns, vec![SocketAddr::from((vip, KEEPALIVE_PORT))], CONCURRENCY, plan.slice),
        || concurrent::keepalive(ns, t.direct(9000), CONCURRENCY, plan.slice),
    )?;
    Ok(vec![("short connections, 32 in flight", "connection", short), ("keep-alive, 32 in flight", "request", keepalive)])
}

/// Short connections with 32 in flight again, each side under `perf
/// record` ([`perf_profile`]), `2 * plan.pairs` pairs, the data in `dir`.
pub fn perf_profile(t: &BenchTopo, plan: &Plan, dir: &std::path::Path) -> std::io::Result<perf_profile::Profile> {
    let (ns, vip) = (t.client.ns(), t.target_vip());
    perf_profile::paired(
        dir,
        2 * plan.pairs,
        t.agent_pid(),
        || concurrent::short_connections(ns, vec![SocketAddr::from((vip, SHORT_PORT))], CONCURRENCY, plan.slice),
        || concurrent::short_connections(ns, t.direct(8080), CONCURRENCY, plan.slice),
    )
}

/// New UDP flows: the ClusterIP slices to the UDP VIPs, the direct ones to
/// the backends' direct sinks, pair `i` on source ports from
/// `FIRST_SPORT + i * udp_flows`.
pub fn udp(t: &BenchTopo, plan: &Plan) -> Paired {
    let ns = t.client.ns();
    let ports = |i: usize| FIRST_SPORT + (i as u16) * plan.udp_flows;
    Paired::run(
        plan.pairs,
        |i| udp_flows::slice(ns, t.client_ip(), t.udp_vips(), ports(i), plan.udp_flows, plan.udp_max, &t.sinks),
        |i| udp_flows::slice(ns, t.client_ip(), t.udp_direct(), ports(i), plan.udp_flows, plan.udp_max, &t.sinks),
    )
}
