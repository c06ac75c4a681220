//! BPF_PROG_TEST_RUN on crafted packets: the pod programs pass every packet
//! unchanged and count it against the interface and direction.

use std::net::{Ipv4Addr, Ipv6Addr};

use weir_common::stats::Direction;
use weir_datapath::{attach::Hook, stats::read_if_stats, PinLayout, PodDatapath};
use weir_tests::{names, node::BpffsDir, privileged, testrun};

use testrun::TEST_RUN_IFINDEX;

fn load() -> (BpffsDir, PodDatapath) {
    privileged::require();
    let dir = BpffsDir::new(&format!("/sys/fs/bpf/{}", names::unique("weirtr")));
    let layout = PinLayout::new(&dir.path);
    let dp = PodDatapath::load(&layout).expect("load pod object");
    let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("v6").into();
    testrun::own_sources(&layout, TEST_RUN_IFINDEX, &[Ipv4Addr::new(10, 244, 0, 2).into(), Ipv4Addr::new(10, 244, 0, 3).into(), v6("fd00::2"), v6("fd00::3")]);
    (dir, dp)
}

fn counted(dp: &PodDatapath, dir: Direction) -> (u64, u64) {
    read_if_stats(dp.layout())
        .expect("read stats")
        .into_iter()
        .find(|r| r.ifindex == TEST_RUN_IFINDEX && r.direction == dir)
        .map(|r| (r.stats.packets, r.stats.bytes))
        .unwrap_or((0, 0))
}

#[test]
fn from_pod_passes_a_udp_packet_unchanged_and_counts_it() {
    let (_dir, dp) = load();
    // To another node's pod: a pod of this node would be delivered into
    // (`fwd::into_pod`; `local_delivery` tests that).
    let pkt = testrun::udp4((Ipv4Addr::new(10, 244, 0, 2), 40000), (Ipv4Addr::new(10, 244, 1, 3), 53), b"hello");
    let run = testrun::run(dp.program(Hook::FromPod).expect("program"), &pkt).expect("test_run");
    assert_eq!(run.verdict, testrun::TC_ACT_OK);
    assert_eq!(run.packet, pkt, "packet must be unchanged");
    assert_eq!(counted(&dp, Direction::FromPod), (1, pkt.len() as u64));
    assert_eq!(counted(&dp, Direction::ToPod), (0, 0), "the other direction is untouched");
}

#[test]
fn to_pod_counts_every_packet_kind() {
    let (_dir, dp) = load();
    let (v4a, v4b) = (Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3));
    let (v6a, v6b) = ("fd00::2".parse::<Ipv6Addr>().expect("v6"), "fd00::3".parse::<Ipv6Addr>().expect("v6"));
    let packets = [
        testrun::tcp4((v4a, 40000), (v4b, 80), true, b""),
        testrun::tcp4((v4a, 40000), (v4b, 80), false, b"GET / HTTP/1.0\r\n\r\n"),
        testrun::udp6((v6a, 40000), (v6b, 53), b"query"),
        testrun::tcp6((v6a, 40000), (v6b, 443), true, b""),
        testrun::icmp4_echo(v4a, v4b, 1, 1),
        testrun::icmp6_echo(v6a, v6b, 1, 1),
    ];
    let prog = dp.program(Hook::ToPod).expect("program");
    let mut bytes = 0u64;
    for p in &packets {
        let run = testrun::run(prog, p).expect("test_run");
        assert_eq!(run.verdict, testrun::TC_ACT_OK);
        assert_eq!(&run.packet, p);
        bytes += p.len() as u64;
    }
    assert_eq!(counted(&dp, Direction::ToPod), (packets.len() as u64, bytes));
    assert_eq!(counted(&dp, Direction::FromPod), (0, 0));
}
