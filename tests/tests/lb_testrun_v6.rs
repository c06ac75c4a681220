//! BPF_PROG_TEST_RUN on crafted IPv6 packets through the service path:
//! DNAT and reverse NAT bytes and checksums for TCP and UDP (a UDP
//! checksum never left zero), extension headers, fragments, hairpin, and
//! the RST / ICMPv6 answers of a service that cannot take a connection,
//! and ICMPv6 errors about service flows, translated like their flow.
//!
//! Each test runs in its own network namespace with no routes. The pods'
//! addresses are routed to lo as far as weir knows (`WEIR_POD_ADDRS`, as
//! the agent mirrors a node's host routes), so a packet to one is
//! redirected to lo (TC_ACT_REDIRECT: a pod of this node); for any other
//! address the program's FIB lookup finds nothing and the verdict is
//! TC_ACT_OK.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weir_common::{config::HAIRPIN_V6, drop::DropReason};
use weir_datapath::{attach::Hook, lb::spec::Protocol, lb::Lb, stats::read_drops, DatapathConfig, PinLayout, PodDatapath};
use weir_tests::{
    services::cluster_ip,
    testrun::{self, ip6, parse_checked_icmp6_error, parse_checked_v6, v6_checksum_ok, Quoted, TC_ACT_OK, TC_ACT_REDIRECT},
};

const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2);
const BACKEND: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 5);

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const DEST_OPTS: u8 = 60;
const FRAGMENT: u8 = 44;

fn with_datapath(f: impl FnOnce(&PodDatapath, &mut Lb, &PinLayout) + Send + 'static) {
    with_config(DatapathConfig::DEFAULT, f);
}

fn with_config(cfg: DatapathConfig, f: impl FnOnce(&PodDatapath, &mut Lb, &PinLayout) + Send + 'static) {
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, mut dp| {
        let layout = layout.clone();
        dp.set_config(&cfg).expect("config");
        let mut lb = Lb::open(&layout).expect("open lb maps");
        testrun::own_sources(&layout, testrun::TEST_RUN_IFINDEX, &[CLIENT.into(), BACKEND.into()]);
        f(&dp, &mut lb, &layout);
    });
}

fn drops(layout: &PinLayout, reason: DropReason) -> u64 {
    read_drops(layout).expect("drops").into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n)
}

fn addr(v: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(v).expect("16 bytes"))
}

#[test]
fn tcp_is_dnated_to_the_backend_and_the_reply_comes_back_from_the_vip() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");

        let run = testrun::run(prog, &testrun::tcp6((CLIENT, 40000), (VIP, 80), true, b"")).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "to the backend's link");
        let out = parse_checked_v6(&run.packet);
        assert_eq!((out.src, out.sport), (CLIENT, 40000), "source untouched");
        assert_eq!((out.dst, out.dport), (BACKEND, 8080), "DNAT to the backend");
        assert_eq!(out.hop, 63, "forwarded: the hop limit decremented");

        let data = testrun::tcp6((CLIENT, 40000), (VIP, 80), false, b"GET / HTTP/1.1\r\n\r\n");
        let out = parse_checked_v6(&testrun::run(prog, &data).expect("run").packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 8080), "the flow keeps its backend");
        assert_eq!(&out.l4[20..], b"GET / HTTP/1.1\r\n\r\n", "payload untouched");

        let reply = testrun::tcp6((BACKEND, 8080), (CLIENT, 40000), false, b"HTTP/1.1 200 OK\r\n\r\n");
        let run = testrun::run(prog, &reply).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "to the client's link");
        let out = parse_checked_v6(&run.packet);
        assert_eq!((out.src, out.sport), (VIP, 80), "reverse NAT restores the VIP");
        assert_eq!((out.dst, out.dport), (CLIENT, 40000));
    });
}

#[test]
fn udp_is_dnated_and_reverse_nated_with_valid_checksums() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let out = parse_checked_v6(&testrun::run(prog, &testrun::udp6((CLIENT, 41000), (VIP, 53), b"query")).expect("run").packet);
        assert_eq!((out.src, out.sport, out.dst, out.dport), (CLIENT, 41000, BACKEND, 5353));
        assert_eq!(&out.l4[8..], b"query", "payload untouched");
        let out = parse_checked_v6(&testrun::run(prog, &testrun::udp6((BACKEND, 5353), (CLIENT, 41000), b"answer")).expect("run").packet);
        assert_eq!((out.src, out.sport, out.dst, out.dport), (VIP, 53, CLIENT, 41000));
    });
}

#[test]
fn the_collector_takes_out_both_halves_of_a_flow_whose_backend_is_gone() {
    use weir_datapath::ct::{monotonic_ns, Conntrack};
    with_datapath(|dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        testrun::run(prog, &testrun::udp6((CLIENT, 41100), (VIP, 53), b"q")).expect("run");
        let mut ct = Conntrack::open(layout).expect("ct");
        assert_eq!(ct.entries().len(), 2);
        // The backend leaves (moved to another port): its id, and so the
        // address an IPv6 forward entry reads through it, is gone.
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5354)])).expect("upsert");
        let fwd = ct.entries().into_iter().find(|(k, _)| k.kind == weir_common::ct::CT_SVC_FWD).expect("the forward entry");
        assert_eq!(fwd.1.nat_addr, weir_common::addr::Addr::ZERO, "the gone backend's address reads as the zero address");
        // The next collection takes both entries out, though alive: the
        // reverse one too, found as the reverse entry whose twin it is.
        let out = ct.gc_with(monotonic_ns(), |_, e| !lb.backend_is(e.backend_id, &e.nat_addr, e.nat_port));
        assert_eq!(out.deleted, 2, "{out:?}");
        assert!(ct.entries().is_empty());
    });
}

#[test]
fn a_flow_whose_backend_left_picks_a_live_one_on_its_next_packet() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let q = testrun::udp6((CLIENT, 41200), (VIP, 53), b"q");
        let first = parse_checked_v6(&testrun::run(prog, &q).expect("run").packet);
        assert_eq!((first.dst, first.dport), (BACKEND, 5353));
        // The backend moves to another port: a new id; the flow's entry
        // names the old one, whose address is gone with it.
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5354)])).expect("upsert");
        let next = parse_checked_v6(&testrun::run(prog, &q).expect("run").packet);
        assert_eq!((next.dst, next.dport), (BACKEND, 5354), "the flow's next datagram goes to the live backend");
    });
}

/// A UDP datagram from `src` to the VIP whose checksum, once DNATed to
/// `BACKEND:5353`, sums to zero: its last two payload bytes are chosen so.
fn udp_summing_to_zero_after_dnat(sport: u16) -> Vec<u8> {
    let mut payload = [0x42u8, 0x43, 0, 0];
    let probe = testrun::udp6((CLIENT, sport), (BACKEND, 5353), &payload);
    let l4 = &probe[54..];
    let mut words = testrun::pseudo6_sum(&probe[22..38], &probe[38..54], l4.len(), UDP);
    for (i, c) in l4.chunks(2).enumerate() {
        if i != 3 {
            // Leave the checksum field out.
            words += (u32::from(c[0]) << 8) | u32::from(c[1]);
        }
    }
    while words > 0xffff {
        words = (words & 0xffff) + (words >> 16);
    }
    // With the last word w the sum folds to 0xffff: a computed checksum of 0.
    let w = (0xffff - words) as u16;
    payload[2..4].copy_from_slice(&w.to_be_bytes());
    testrun::udp6((CLIENT, sport), (VIP, 53), &payload)
}

#[test]
fn a_udp_checksum_that_comes_out_zero_is_written_as_all_ones() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let q = udp_summing_to_zero_after_dnat(41010);
        assert_ne!(&q[54 + 6..54 + 8], &[0, 0], "the client's own checksum is not zero");
        let run = testrun::run(prog, &q).expect("run");
        assert_eq!(&run.packet[54 + 6..54 + 8], &[0xff, 0xff], "zero is written as 0xffff over IPv6 (RFC 8200 8.1)");
        let out = parse_checked_v6(&run.packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 5353));
    });
}

#[test]
fn a_pod_reaching_itself_is_answered_through_the_hairpin_address() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(CLIENT, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let out = parse_checked_v6(&testrun::run(prog, &testrun::tcp6((CLIENT, 40100), (VIP, 80), true, b"")).expect("run").packet);
        let hairpin = Ipv6Addr::from(HAIRPIN_V6.bytes);
        assert_eq!(hairpin, "100::a9fe:2a01".parse::<Ipv6Addr>().expect("address"));
        assert_eq!((out.src, out.dst, out.dport), (hairpin, CLIENT, 8080), "the pod sees its own connection come from the hairpin address");
        let hairpin_port = out.sport;
        let reply = testrun::tcp6((CLIENT, 8080), (hairpin, hairpin_port), false, b"");
        let out = parse_checked_v6(&testrun::run(prog, &reply).expect("run").packet);
        assert_eq!((out.src, out.sport, out.dst, out.dport), (VIP, 80, CLIENT, 40100), "its answer comes back from the VIP");
    });
}

/// A SYN from CLIENT:`sport` to VIP:80 with a destination options header
/// (PadN) between the fixed header and TCP.
fn syn_behind_dest_opts(sport: u16) -> Vec<u8> {
    let plain = testrun::tcp6((CLIENT, sport), (VIP, 80), true, b"");
    let mut payload = vec![TCP, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&plain[54..]);
    ip6(CLIENT, VIP, DEST_OPTS, 64, &payload)
}

#[test]
fn a_segment_with_extension_headers_is_translated_behind_them() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let pkt = syn_behind_dest_opts(40200);
        let out = parse_checked_v6(&testrun::run(prog, &pkt).expect("run").packet);
        assert_eq!(out.l4_off, 54 + 8, "the options header is kept");
        assert_eq!((out.proto, out.dst, out.dport), (TCP, BACKEND, 8080));
    });
}

/// Fragment `id` of a datagram: a fragment header, then `data` at
/// `offset` bytes into the fragmentable part.
fn fragment(src: Ipv6Addr, dst: Ipv6Addr, id: u32, offset: usize, more: bool, data: &[u8]) -> Vec<u8> {
    let word = (offset as u16) | u16::from(more);
    let mut p = vec![UDP, 0];
    p.extend_from_slice(&word.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(data);
    ip6(src, dst, FRAGMENT, 64, &p)
}

#[test]
fn both_fragments_of_a_datagram_are_translated_and_it_reassembles_with_a_valid_checksum() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let whole = testrun::udp6((CLIENT, 41020), (VIP, 53), &[0x5a; 64]);
        let udp = &whole[54..];
        let (first, later) = (fragment(CLIENT, VIP, 7, 0, true, &udp[..32]), fragment(CLIENT, VIP, 7, 32, false, &udp[32..]));
        let a = testrun::run(prog, &first).expect("run");
        let b = testrun::run(prog, &later).expect("run");
        assert_eq!((a.verdict, b.verdict), (TC_ACT_REDIRECT, TC_ACT_REDIRECT), "both to the backend's link");
        for f in [&a.packet, &b.packet] {
            assert_eq!((addr(&f[22..38]), addr(&f[38..54])), (CLIENT, BACKEND), "each fragment goes to the backend");
        }
        let mut datagram = a.packet[62..].to_vec();
        datagram.extend_from_slice(&b.packet[62..]);
        assert_eq!(u16::from_be_bytes([datagram[2], datagram[3]]), 5353, "the first fragment carries the port");
        assert!(v6_checksum_ok(&CLIENT.octets(), &BACKEND.octets(), UDP, &datagram), "the reassembled datagram's checksum holds");
    });
}

#[test]
fn a_backend_of_the_other_family_than_the_node_address_is_not_masqueraded() {
    let cfg = DatapathConfig { node_addr: weir_common::addr::Addr::from(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))), ..DatapathConfig::DEFAULT };
    with_config(cfg, |dp, lb, _| {
        let mut spec = cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)]);
        spec.masquerade.from_pods = true;
        lb.upsert(&spec).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let out = parse_checked_v6(&testrun::run(prog, &testrun::tcp6((CLIENT, 40300), (VIP, 80), true, b"")).expect("run").packet);
        assert_eq!((out.src, out.sport), (CLIENT, 40300), "an IPv6 flow keeps its source: the node address is IPv4");
        assert_eq!(out.dst, BACKEND);
    });
}

#[test]
fn a_service_without_endpoints_answers_tcp_with_a_rst() {
    with_datapath(|dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let run = testrun::run(prog, &testrun::tcp6((CLIENT, 40001), (VIP, 80), true, b"")).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "the RST goes back out to the client");
        assert_eq!(run.packet.len(), 14 + 40 + 20);
        assert_eq!(&run.packet[0..6], &testrun::CLIENT_MAC, "addressed to the client's MAC");
        let out = parse_checked_v6(&run.packet);
        assert_eq!((out.src, out.sport, out.dst, out.dport), (VIP, 80, CLIENT, 40001));
        testrun::assert_refuses_the_syn(&out.l4);
        assert_eq!(drops(layout, DropReason::NoEndpoints), 1);
    });
}

#[test]
fn a_service_without_endpoints_answers_udp_with_icmpv6_port_unreachable() {
    with_datapath(|dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let q = testrun::udp6((CLIENT, 41002), (VIP, 53), b"");
        let run = testrun::run(prog, &q).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        let out = parse_checked_v6(&run.packet);
        assert_eq!((out.src, out.dst, out.proto), (VIP, CLIENT, ICMPV6));
        assert_eq!((out.l4[0], out.l4[1]), (1, 4), "destination unreachable, port unreachable");
        assert_eq!(&out.l4[8..], &q[14..62], "quotes the original IPv6 header and UDP header");
        assert_eq!(drops(layout, DropReason::NoEndpoints), 1);
    });
}

#[test]
fn a_vip_dialled_on_a_port_or_protocol_it_does_not_serve_is_refused() {
    with_datapath(|dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let run = testrun::run(prog, &testrun::tcp6((CLIENT, 40002), (VIP, 81), true, b"")).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        assert_eq!(parse_checked_v6(&run.packet).l4[13], 0x14, "RST|ACK");
        assert_eq!(drops(layout, DropReason::UnknownServicePort), 1);

        let run = testrun::run(prog, &testrun::icmp6_echo(CLIENT, VIP, 9, 1)).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "an echo to the VIP is answered");
        let out = parse_checked_v6(&run.packet);
        assert_eq!((out.src, out.dst, out.proto, out.l4[0], out.l4[1]), (VIP, CLIENT, ICMPV6, 1, 4));
        assert_eq!(drops(layout, DropReason::UnsupportedProtoToVip), 1);
    });
}

#[test]
fn a_packet_too_big_for_the_backends_link_is_answered_with_packet_too_big_from_the_vip() {
    too_big_for_the_backends_link(true);
}

#[test]
fn a_packet_too_big_for_the_route_to_a_remote_backend_is_answered_with_packet_too_big_from_the_vip() {
    too_big_for_the_backends_link(false);
}

/// A backend behind a link of MTU 1280: a pod of this node on that link
/// (`local`: its address in `WEIR_POD_ADDRS`, so the link's MTU is
/// checked), or an address the node routes there (the FIB lookup's MTU).
fn too_big_for_the_backends_link(local: bool) {
    with_datapath(move |dp, lb, layout| {
        // The backend behind a link of MTU 1280 (smaller than the
        // client's packets).
        for k in ["all.disable_ipv6", "default.disable_ipv6"] {
            weir_tests::cmd::output(&["sysctl", "-qw", &format!("net.ipv6.conf.{k}=0")]);
        }
        weir_tests::cmd::output(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        weir_tests::cmd::output(&["ip", "link", "add", "wtrb", "mtu", "1280", "type", "veth", "peer", "name", "wtrbp", "mtu", "1280"]);
        for l in ["wtrb", "wtrbp"] {
            weir_tests::cmd::output(&["ip", "link", "set", l, "up"]);
        }
        weir_tests::cmd::output(&["ip", "-6", "route", "add", &format!("{BACKEND}/128"), "dev", "wtrb"]);
        weir_tests::cmd::output(&["ip", "-6", "neigh", "replace", &BACKEND.to_string(), "lladdr", "02:00:00:00:00:09", "dev", "wtrb", "nud", "permanent"]);
        // The client alone on lo; the backend on wtrb, or on no pod link.
        testrun::own_sources(layout, testrun::TEST_RUN_IFINDEX, &[CLIENT.into()]);
        if local {
            testrun::own_sources(layout, testrun::ifindex_of("wtrb"), &[BACKEND.into()]);
        }
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");

        let small = testrun::run(prog, &testrun::udp6((CLIENT, 41030), (VIP, 53), &[1; 100])).expect("run");
        assert_eq!(small.verdict, TC_ACT_REDIRECT, "a packet that fits is redirected to the backend's link");
        let out = parse_checked_v6(&small.packet);
        assert_eq!((out.dst, out.dport, out.hop), (BACKEND, 5353, 63), "translated, the hop limit decremented");

        let big = testrun::udp6((CLIENT, 41031), (VIP, 53), &[2; 1400]);
        let run = testrun::run(prog, &big).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "the answer goes back to the client");
        let out = parse_checked_v6(&run.packet);
        assert_eq!((out.src, out.dst, out.proto), (VIP, CLIENT, ICMPV6), "from the VIP the client asked");
        assert_eq!((out.l4[0], out.l4[1]), (2, 0), "packet too big");
        assert_eq!(u32::from_be_bytes([out.l4[4], out.l4[5], out.l4[6], out.l4[7]]), 1280, "the egress MTU");
        assert_eq!(&out.l4[8..], &big[14..62], "quotes the client's own, untranslated packet");
        assert_eq!(drops(layout, DropReason::FragNeeded), 1);
    });
}

// ------------------------------------------------------------ ICMPv6 errors

/// A router on the client's path (the node).
const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0x70, 0, 0, 0, 1);

#[test]
fn icmpv6_errors_of_service_flows_are_translated_like_their_flow() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let (from_pod, to_pod) = (dp.program(Hook::FromPod).expect("from_pod"), dp.program(Hook::ToPod).expect("to_pod"));
        let q = testrun::udp6((CLIENT, 43000), (VIP, 53), b"query");
        let dnat = testrun::run(from_pod, &q).expect("run").packet; // CLIENT:43000 → BACKEND:5353

        // The backend's kernel answers with port unreachable.
        let err = testrun::icmp6_error(BACKEND, CLIENT, 1, 4, 0, &dnat);
        let run = testrun::run(from_pod, &err).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "forwarded to the client's link");
        let (outer, quoted) = parse_checked_icmp6_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (VIP, CLIENT), "the error comes from the service");
        assert_eq!(quoted, Quoted { src: CLIENT, dst: VIP, proto: UDP, sport: 43000, dport: 53 }, "about the client's own packet");
        assert_eq!(&outer.l4[8 + 48..], b"query", "the quoted payload is untouched");

        // A router on the path (the node) says packet too big.
        let too_big = testrun::icmp6_error(ROUTER, CLIENT, 2, 0, 1280, &dnat);
        let run = testrun::run(to_pod, &too_big).expect("run");
        assert_eq!(run.verdict, TC_ACT_OK);
        let (outer, quoted) = parse_checked_icmp6_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (ROUTER, CLIENT), "a router's error keeps the router as source");
        assert_eq!((quoted.src, quoted.sport, quoted.dst, quoted.dport), (CLIENT, 43000, VIP, 53));
        assert_eq!(u32::from_be_bytes([outer.l4[4], outer.l4[5], outer.l4[6], outer.l4[7]]), 1280, "the MTU is kept");

        // The client's kernel refuses a reply (its socket closed).
        let reply = testrun::udp6((VIP, 53), (CLIENT, 43000), b"late");
        let err = testrun::icmp6_error(CLIENT, VIP, 1, 4, 0, &reply);
        let run = testrun::run(from_pod, &err).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "forwarded to the backend's link");
        let (outer, quoted) = parse_checked_icmp6_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (CLIENT, BACKEND), "the backend hears about its own packet");
        assert_eq!(quoted, Quoted { src: BACKEND, dst: CLIENT, proto: UDP, sport: 5353, dport: 43000 });
    });
}

#[test]
fn an_icmpv6_error_quoting_extension_headers_is_translated_behind_them() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let dnat = testrun::run(prog, &syn_behind_dest_opts(40300)).expect("run").packet;
        assert_eq!(parse_checked_v6(&dnat).dst, BACKEND);

        // The backend answers with parameter problem (unrecognised option).
        let err = testrun::icmp6_error(BACKEND, CLIENT, 4, 2, 42, &dnat);
        let run = testrun::run(prog, &err).expect("run");
        let (outer, quoted) = parse_checked_icmp6_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (VIP, CLIENT));
        assert_eq!(quoted, Quoted { src: CLIENT, dst: VIP, proto: TCP, sport: 40300, dport: 80 });
        assert_eq!(outer.l4[8 + 40], TCP, "the options header is quoted as it was");
    });
}

#[test]
fn an_icmpv6_error_from_a_backend_that_no_flow_explains_is_not_translated() {
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        // The backend forges an error about a flow the client never opened.
        let never = testrun::udp6((CLIENT, 43999), (BACKEND, 5353), b"never sent");
        let err = testrun::icmp6_error(BACKEND, CLIENT, 1, 4, 0, &never);
        let run = testrun::run(prog, &err).expect("run");
        let (outer, quoted) = parse_checked_icmp6_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (BACKEND, CLIENT), "no flow: nothing to hide");
        assert_eq!((quoted.dst, quoted.dport), (BACKEND, 5353));
    });
}
