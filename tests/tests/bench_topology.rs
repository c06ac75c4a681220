//! The benchmark's measurements measure what they claim, on every
//! dataplane, run as the benchmark runs them (`bench::cell`): the UDP
//! flood's datagrams reach the backends through the ClusterIPs (which only
//! a working DNAT can do), spread over all three backends, and pod to pod
//! to the direct sinks, and are counted; the concurrent TCP generator's
//! connections and requests are answered. A bench whose traffic silently
//! fails would report a dataplane's failure as its speed.

use std::{
    net::{IpAddr, Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use weir_tests::{
    bench::{
        cell::{self, Plan},
        topo::{services, BenchTopo, Dataplane},
        udp_sinks::UdpSinks,
    },
    netns::NetNs,
    netpol::Family,
};

const PLAN: Plan = Plan {
    pairs: 2,
    slice: Duration::from_millis(300),
    ka_requests: 50,
    iperf_secs: 1,
    udp_flows: 900,
    udp_max: Duration::from_secs(5),
};

fn check(dp: Dataplane, family: Family) {
    let name = format!("{} over {family:?}", dp.as_str());
    let mut t = BenchTopo::new(family);
    let svcs = services(10, &t.backend_ips());
    t.program(dp, &svcs, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{name} did not program 10 services: {e}"));
    let before: Vec<u64> = t.sinks.iter().map(|s| s.served()).collect();
    let udp = cell::udp(&t, &PLAN);
    let got: Vec<u64> = t.sinks.iter().zip(&before).map(|(s, b)| s.served() - b).collect();
    let sent = PLAN.pairs as u64 * u64::from(PLAN.udp_flows);
    // Sinks come in (ClusterIP side, direct side) per backend.
    let (via_vip, direct): (Vec<u64>, Vec<u64>) = (got.iter().step_by(2).copied().collect(), got.iter().skip(1).step_by(2).copied().collect());
    // A datagram or two may be lost to a conntrack insert race; a dataplane
    // that drops a real share must not pass.
    for (what, counts) in [("through the ClusterIPs", &via_vip), ("pod to pod", &direct)] {
        let total: u64 = counts.iter().sum();
        assert!(total * 50 >= sent * 49, "{name}: {total} of {sent} UDP flows {what} arrived ({counts:?})");
    }
    // Three VIPs, each choosing among three backends: every backend gets
    // a fair share of the ClusterIP side (a third, give or take).
    for (i, n) in via_vip.iter().enumerate() {
        assert!(*n * 6 >= sent, "{name}: backend {i} got {n} of {sent} ClusterIP flows ({via_vip:?})");
    }
    assert_eq!(direct, vec![sent / 3; 3], "{name}: the direct side goes to each backend in turn");
    for (what, slices) in [("ClusterIP", &udp.vip), ("direct", &udp.direct)] {
        assert!(slices.iter().all(|l| l.per_s > 0.0 && l.samples * 50 >= u64::from(PLAN.udp_flows) * 49), "{name}: {what} UDP slices {slices:?}");
    }
    let tcp = cell::concurrent_short(&t, &PLAN);
    for (what, slices) in [("ClusterIP", &tcp.vip), ("direct", &tcp.direct)] {
        assert!(slices.iter().all(|l| l.per_s > 0.0 && l.samples > 0 && l.p50_us > 0.0), "{name}: {what} concurrent connections {slices:?}");
        // Under load on 2 cores a connection may time out; most must not.
        let (ok, failed): (u64, u64) = slices.iter().fold((0, 0), |(a, b), l| (a + l.samples, b + l.failures));
        assert!(failed * 100 <= ok, "{name}: {what}: {failed} failed against {ok} answered");
    }
}

/// One test, the dataplanes in turn: three topologies at once would
/// share the 2 cores and time connections out.
#[test]
fn every_dataplane_carries_the_benchmark_traffic() {
    for dp in Dataplane::ALL {
        check(dp, Family::V4);
    }
}

/// The same over IPv6: dual-stack pods, IPv6 services, ip6tables rules
/// and the `ip6 kube-proxy` table.
#[test]
fn every_dataplane_carries_the_benchmark_traffic_over_ipv6() {
    for dp in Dataplane::ALL {
        check(dp, Family::V6);
    }
}

/// The flood's sinks count each datagram at the socket it was sent to,
/// whether their thread waits in poll(2) (idle) or reads without sleeping
/// (while a measurement holds `busy`).
#[test]
fn the_udp_sinks_count_every_datagram_at_its_own_socket_idle_and_busy() {
    weir_tests::privileged::require();
    let ns = NetNs::new("wsink");
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let sinks = UdpSinks::start(&[(&ns, lo, 5301), (&ns, lo, 5302)]);
    let send = |port: u16, n: usize| {
        ns.run(move || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("client socket");
            for _ in 0..n {
                s.send_to(b"x", ("127.0.0.1", port)).expect("send");
            }
        })
    };
    let counts_reach = |want: [u64; 2]| {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let got: Vec<u64> = sinks.iter().map(|c| c.served()).collect();
            if got == want || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    send(5301, 3);
    assert_eq!(counts_reach([3, 0]), [3, 0], "idle: the datagrams wake the thread and are counted at their socket");
    let idle_last = sinks.last_ns();
    assert!(idle_last > 0, "the last arrival is stamped");
    {
        let _busy = sinks.busy();
        send(5302, 5);
        assert_eq!(counts_reach([3, 5]), [3, 5], "busy: counted without the thread sleeping");
    }
    assert!(sinks.last_ns() > idle_last, "the later arrival is stamped later");
    assert_eq!(sinks.received(), 8);
}
