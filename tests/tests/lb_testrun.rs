//! BPF_PROG_TEST_RUN on crafted packets through the service path: DNAT and
//! reverse NAT bytes and checksums for TCP and UDP, and the RST / ICMP
//! answers of a service that cannot take a connection.
//!
//! Each test runs in its own network namespace with no routes, so the
//! program's FIB lookup finds nothing and the verdict is TC_ACT_OK.

use std::net::Ipv4Addr;

use weir_common::drop::DropReason;
use weir_datapath::{attach::Hook, lb::spec::Protocol, lb::Lb, stats::read_drops, PinLayout, PodDatapath};
use weir_tests::{
    names,
    netns::NetNs,
    node::BpffsDir,
    privileged,
    services::cluster_ip,
    testrun::{self, parse_checked_v4, TC_ACT_OK, TC_ACT_REDIRECT},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);

fn with_datapath(f: impl FnOnce(&PodDatapath, &mut Lb, &PinLayout) + Send + 'static) {
    privileged::require();
    let ns = NetNs::new("wlt");
    let dir = BpffsDir::new(&format!("/sys/fs/bpf/{}", names::unique("weirlt")));
    let path = dir.path.clone();
    ns.run(move || {
        let layout = PinLayout::new(&path);
        let dp = PodDatapath::load(&layout).expect("load pod object");
        let mut lb = Lb::open(&layout).expect("open lb maps");
        f(&dp, &mut lb, &layout);
    });
}

fn drops(layout: &PinLayout, reason: DropReason) -> u64 {
    read_drops(layout).expect("drops").into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n)
}

#[test]
fn tcp_is_dnated_to_the_backend_and_the_reply_comes_back_from_the_vip() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");

        let syn = testrun::tcp4((CLIENT, 40000), (VIP, 80), true, b"");
        let run = testrun::run(prog, &syn).expect("run");
        assert_eq!(run.verdict, TC_ACT_OK);
        let out = parse_checked_v4(&run.packet);
        assert_eq!((out.src, out.sport), (CLIENT, 40000), "source untouched");
        assert_eq!((out.dst, out.dport), (BACKEND, 8080), "DNAT to the backend");

        let data = testrun::tcp4((CLIENT, 40000), (VIP, 80), false, b"GET / HTTP/1.1\r\n\r\n");
        let out = parse_checked_v4(&testrun::run(prog, &data).expect("run").packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 8080), "the flow keeps its backend");

        let reply = testrun::tcp4((BACKEND, 8080), (CLIENT, 40000), false, b"HTTP/1.1 200 OK\r\n\r\n");
        let run = testrun::run(prog, &reply).expect("run");
        assert_eq!(run.verdict, TC_ACT_OK);
        let out = parse_checked_v4(&run.packet);
        assert_eq!((out.src, out.sport), (VIP, 80), "reverse NAT restores the VIP");
        assert_eq!((out.dst, out.dport), (CLIENT, 40000));
    });
}

#[test]
fn udp_is_dnated_and_reverse_nated_with_valid_checksums() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let q = testrun::udp4((CLIENT, 41000), (VIP, 53), b"query");
        let out = parse_checked_v4(&testrun::run(prog, &q).expect("run").packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 5353));
        assert_eq!(&out.l4[8..], b"query", "payload untouched");
        let a = testrun::udp4((BACKEND, 5353), (CLIENT, 41000), b"answer");
        let out = parse_checked_v4(&testrun::run(prog, &a).expect("run").packet);
        assert_eq!((out.src, out.sport), (VIP, 53));
    });
}

#[test]
fn udp_without_checksum_keeps_a_zero_checksum() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let mut q = testrun::udp4((CLIENT, 41001), (VIP, 53), b"query");
        q[14 + 20 + 6] = 0;
        q[14 + 20 + 7] = 0;
        let out = parse_checked_v4(&testrun::run(prog, &q).expect("run").packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 5353));
        assert_eq!(&out.l4[6..8], &[0, 0], "a zero UDP checksum stays zero");
    });
}

#[test]
fn a_service_without_endpoints_answers_tcp_with_a_rst() {
    with_datapath(|dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let syn = testrun::tcp4((CLIENT, 40001), (VIP, 80), true, b"");
        let run = testrun::run(prog, &syn).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "the RST goes back out to the client");
        assert_eq!(run.packet.len(), 14 + 40);
        assert_eq!(&run.packet[0..6], &testrun::CLIENT_MAC, "addressed to the client's MAC");
        let out = parse_checked_v4(&run.packet);
        assert_eq!((out.src, out.sport, out.dst, out.dport), (VIP, 80, CLIENT, 40001));
        let flags = out.l4[13];
        assert_eq!(flags, 0x14, "RST|ACK");
        let ack = u32::from_be_bytes([out.l4[8], out.l4[9], out.l4[10], out.l4[11]]);
        assert_eq!(ack, 1001, "acknowledges the SYN (seq 1000 + 1)");
        assert_eq!(drops(layout, DropReason::NoEndpoints), 1);
    });
}

#[test]
fn a_service_without_endpoints_answers_udp_with_icmp_port_unreachable() {
    with_datapath(|dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let q = testrun::udp4((CLIENT, 41002), (VIP, 53), b"");
        let run = testrun::run(prog, &q).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        let out = parse_checked_v4(&run.packet);
        assert_eq!((out.src, out.dst, out.proto), (VIP, CLIENT, 1));
        assert_eq!((out.l4[0], out.l4[1]), (3, 3), "destination unreachable, port unreachable");
        assert_eq!(&out.l4[8..36], &q[14..42], "quotes the original IP header and UDP header");
        assert_eq!(drops(layout, DropReason::NoEndpoints), 1);
    });
}

#[test]
fn a_vip_dialled_on_a_port_it_does_not_serve_is_rejected() {
    with_datapath(|dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let syn = testrun::tcp4((CLIENT, 40002), (VIP, 81), true, b"");
        let run = testrun::run(prog, &syn).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        assert_eq!(parse_checked_v4(&run.packet).l4[13], 0x14, "RST|ACK");
        let udp = testrun::udp4((CLIENT, 40003), (VIP, 80), b"x");
        let run = testrun::run(prog, &udp).expect("run");
        assert_eq!(parse_checked_v4(&run.packet).proto, 1, "ICMP for UDP");
        assert_eq!(drops(layout, DropReason::UnknownServicePort), 2);
        // Traffic to other addresses is not the service path's business.
        let other = testrun::tcp4((CLIENT, 40004), (Ipv4Addr::new(10, 244, 0, 9), 81), true, b"");
        let run = testrun::run(prog, &other).expect("run");
        assert_eq!((run.verdict, run.packet), (TC_ACT_OK, other));
    });
}
