//! BPF_PROG_TEST_RUN on crafted packets through the service path: DNAT and
//! reverse NAT bytes and checksums for TCP and UDP, and the RST / ICMP
//! answers of a service that cannot take a connection.
//!
//! Each test runs in its own network namespace with no routes. The pods'
//! addresses are routed to lo as far as weir knows (`WEIR_POD_ADDRS`, as
//! the agent mirrors a node's host routes), so a packet to one is
//! redirected to lo (TC_ACT_REDIRECT: a pod of this node); for any other
//! address the program's FIB lookup finds nothing and the verdict is
//! TC_ACT_OK.

use std::net::Ipv4Addr;

use weir_common::drop::DropReason;
use weir_datapath::{attach::Hook, lb::spec::Protocol, lb::Lb, stats::read_drops, DatapathConfig, PinLayout, PodDatapath};
use weir_tests::{
    services::cluster_ip,
    testrun::{self, parse_checked_v4, TC_ACT_OK, TC_ACT_REDIRECT},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);

fn with_datapath(f: impl FnOnce(&PodDatapath, &mut Lb, &PinLayout) + Send + 'static) {
    with_config(DatapathConfig::DEFAULT, f);
}

/// Loads the pod object with `cfg` in a fresh namespace and bpffs directory.
fn with_config(cfg: DatapathConfig, f: impl FnOnce(&PodDatapath, &mut Lb, &PinLayout) + Send + 'static) {
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, mut dp| {
        let layout = layout.clone();
        dp.set_config(&cfg).expect("config");
        let mut lb = Lb::open(&layout).expect("open lb maps");
        let sources: Vec<std::net::IpAddr> =
            [CLIENT, BACKEND, Ipv4Addr::new(10, 244, 0, 11), Ipv4Addr::new(10, 244, 0, 12), Ipv4Addr::new(10, 244, 0, 13)].map(Into::into).to_vec();
        testrun::own_sources(&layout, testrun::TEST_RUN_IFINDEX, &sources);
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
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "to the backend's link");
        let out = parse_checked_v4(&run.packet);
        assert_eq!((out.src, out.sport), (CLIENT, 40000), "source untouched");
        assert_eq!((out.dst, out.dport), (BACKEND, 8080), "DNAT to the backend");

        let data = testrun::tcp4((CLIENT, 40000), (VIP, 80), false, b"GET / HTTP/1.1\r\n\r\n");
        let out = parse_checked_v4(&testrun::run(prog, &data).expect("run").packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 8080), "the flow keeps its backend");

        let reply = testrun::tcp4((BACKEND, 8080), (CLIENT, 40000), false, b"HTTP/1.1 200 OK\r\n\r\n");
        let run = testrun::run(prog, &reply).expect("run");
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "to the client's link");
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
        testrun::assert_refuses_the_syn(&out.l4);
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

fn ct_states(lb: &mut Lb) -> Vec<(u8, u8, u64)> {
    use weir_datapath::ct::monotonic_ns;
    let now = monotonic_ns();
    let mut v: Vec<(u8, u8, u64)> = lb
        .conntrack()
        .entries()
        .into_iter()
        .map(|(k, e)| (k.kind, e.state, weir_logic::ct::expires_in_s(&e, now).max(0) as u64))
        .collect();
    v.sort();
    v
}

#[test]
fn tcp_flows_move_through_states_with_their_own_timeouts() {
    use weir_common::ct::{CT_STATE_CLOSING, CT_STATE_ESTABLISHED, CT_STATE_SYN, CT_SVC_FWD, CT_SVC_REV};
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        testrun::run(prog, &testrun::tcp4((CLIENT, 40010), (VIP, 80), true, b"")).expect("syn");
        let s = ct_states(lb);
        assert_eq!(s.len(), 2, "a forward and a reverse entry: {s:?}");
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_SYN && (59..=61).contains(ttl)), "SYN, 60 s: {s:?}");

        // SYN-ACK from the backend establishes the reverse direction...
        let mut synack = testrun::tcp4((BACKEND, 8080), (CLIENT, 40010), false, b"");
        synack[14 + 20 + 13] = 0x12;
        testrun::run(prog, &synack).expect("syn-ack");
        // ...and the client's ACK the forward one.
        testrun::run(prog, &testrun::tcp4((CLIENT, 40010), (VIP, 80), false, b"")).expect("ack");
        let s = ct_states(lb);
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_ESTABLISHED && *ttl > 21_000), "established, 6 h: {s:?}");

        // One FIN half-closes the connection: the other side may keep
        // sending for as long as it likes, so the established timeout stays.
        let mut fin = testrun::tcp4((CLIENT, 40010), (VIP, 80), false, b"");
        fin[14 + 20 + 13] = 0x11;
        testrun::run(prog, &fin).expect("fin");
        let s = ct_states(lb);
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_ESTABLISHED && *ttl > 21_000), "half-closed keeps 6 h: {s:?}");
        testrun::run(prog, &testrun::tcp4((BACKEND, 8080), (CLIENT, 40010), false, b"more data")).expect("data after the FIN");
        let s = ct_states(lb);
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_ESTABLISHED && *ttl > 21_000), "still half-closed: {s:?}");

        // The other side's FIN closes both directions with the short timeout.
        let mut fin2 = testrun::tcp4((BACKEND, 8080), (CLIENT, 40010), false, b"");
        fin2[14 + 20 + 13] = 0x11;
        testrun::run(prog, &fin2).expect("fin");
        let s = ct_states(lb);
        assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), [CT_SVC_FWD, CT_SVC_REV]);
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_CLOSING && *ttl <= 11), "closing, 10 s: {s:?}");
    });
}

#[test]
fn a_udp_exchange_keeps_the_udp_timeout_and_a_flow_still_talking_after_its_reply_gets_the_stream_one() {
    use weir_common::ct::{CT_STATE_UDP, CT_STATE_UDP_STREAM};
    with_datapath(|dp, lb, _| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let q = testrun::udp4((CLIENT, 41200), (VIP, 53), b"query");
        testrun::run(prog, &q).expect("query");
        testrun::run(prog, &testrun::udp4((BACKEND, 5353), (CLIENT, 41200), b"answer")).expect("answer");
        let s = ct_states(lb);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_UDP && (29..=31).contains(ttl)), "a query and its answer: 30 s from the answer: {s:?}");
        // Within two seconds of the answer (a parallel A/AAAA pair), more
        // packets leave the expiry where the answer put it.
        testrun::run(prog, &q).expect("a second query");
        let s = ct_states(lb);
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_UDP && *ttl <= 31), "{s:?}");
        // Still talking two seconds after the answer: a stream, 120 s.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        testrun::run(prog, &q).expect("still talking");
        let s = ct_states(lb);
        assert!(s.iter().all(|(_, st, ttl)| *st == CT_STATE_UDP_STREAM && (118..=121).contains(ttl)), "a stream, 120 s, both entries: {s:?}");
    });
}

#[test]
fn stale_conntrack_entries_are_collected() {
    use weir_datapath::ct::{monotonic_ns, Conntrack};
    with_config(DatapathConfig { ct_udp_timeout_s: 1, ..DatapathConfig::DEFAULT }, |dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        testrun::run(prog, &testrun::udp4((CLIENT, 41100), (VIP, 53), b"q")).expect("run");
        let mut ct = Conntrack::open(layout).expect("ct");
        assert_eq!(ct.entries().len(), 2);
        assert_eq!(ct.gc(monotonic_ns()).deleted, 0, "live flows are kept");
        // A 1 s timeout lives 1 to 2 s (entries keep whole seconds).
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(ct.gc(monotonic_ns()).deleted, 2, "both entries of the dead flow are collected");
        assert!(ct.entries().is_empty());
    });
}

#[test]
fn the_collector_keeps_a_dead_half_of_a_flow_while_its_twin_lives() {
    use weir_common::ct::{CtEntry, CtKey, CT_SVC_FWD};
    use weir_datapath::ct::{monotonic_ns, Conntrack, CtMaps};
    with_config(DatapathConfig::DEFAULT, |dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        for port in 41100..41104 {
            testrun::run(prog, &testrun::udp4((CLIENT, port), (VIP, 53), b"q")).expect("a flow");
        }
        let mut ct = Conntrack::open(layout).expect("ct");
        let mut maps = CtMaps::open(layout).expect("conntrack maps");
        assert_eq!(ct.entries().len(), 8, "four flows, two entries each");
        // The client's port of either half of a flow.
        let port = |(k, e): &(CtKey, CtEntry)| if k.kind == CT_SVC_FWD { u16::from_be(k.sport) } else { u16::from_be(e.orig_port) };
        // Rewrites the entries `pick` takes with their expiry long past
        // (the clock's second 1).
        let mut expire = |ct: &Conntrack, pick: &dyn Fn(&(CtKey, CtEntry)) -> bool| {
            for (k, e) in ct.entries().into_iter().filter(|x| pick(x)) {
                assert!(maps.remove(&k) && maps.insert_new(&k, &CtEntry { expires_s: 1, ..e }), "rewriting {k:?}");
            }
        };
        // One dead half among seven live entries (the collector's set
        // holds only the live keys the dead half asks about): its twin
        // lives, both stay.
        expire(&ct, &|x| x.0.kind == CT_SVC_FWD && port(x) == 41100);
        let out = ct.gc(monotonic_ns());
        assert_eq!(out.deleted, 0, "a flow with a live half stays whole: {out:?}");
        // Seen alive from the scan: not taken out and put back (which the
        // check on each entry taken out would also do, one syscall each).
        assert_eq!(out.restored, 0, "the scan saw the live twin: {out:?}");
        // A second flow dead on both sides: three dead among five live
        // (the collector looks up in every live key). Only that flow goes.
        expire(&ct, &|x| port(x) == 41101);
        let out = ct.gc(monotonic_ns());
        assert_eq!(out.deleted, 2, "only the flow dead on both sides goes: {out:?}");
        assert_eq!(out.restored, 0, "the scan saw the first flow's live twin: {out:?}");
        let left = ct.entries();
        assert_eq!(left.len(), 6, "{left:?}");
        assert!(left.iter().all(|x| port(x) != 41101), "{left:?}");
        // Everything dead (no live key to look up): everything goes.
        expire(&ct, &|_| true);
        assert_eq!(ct.gc(monotonic_ns()).deleted, 6, "flows dead on both sides are collected");
        assert!(ct.entries().is_empty());
    });
}

#[test]
fn the_collector_takes_out_flows_whose_backend_is_gone() {
    use weir_datapath::ct::{monotonic_ns, Conntrack};
    with_config(DatapathConfig::DEFAULT, |dp, lb, layout| {
        lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        testrun::run(prog, &testrun::udp4((CLIENT, 41100), (VIP, 53), b"q")).expect("run");
        let mut ct = Conntrack::open(layout).expect("ct");
        assert_eq!(ct.entries().len(), 2);
        let orphaned = |ct: &Conntrack, lb: &Lb| {
            ct.entries().into_iter().filter(|(k, e)| k.kind == weir_common::ct::CT_SVC_FWD && !lb.backend_is(e.backend_id, &e.nat_addr, e.nat_port)).count()
        };
        assert_eq!(orphaned(&ct, lb), 0);
        assert_eq!(ct.gc_with(monotonic_ns(), |_, e| !lb.backend_is(e.backend_id, &e.nat_addr, e.nat_port)).deleted, 0, "a live flow to a live backend stays");
        // The backend leaves (moved to another port): no scan at the change...
        let st = lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5354)])).expect("upsert");
        assert_eq!(st.ct_purged, 0, "{st:?}");
        assert_eq!(orphaned(&ct, lb), 1, "the forward entry names a backend that is gone");
        // ...the next collection takes both entries out, though alive.
        let out = ct.gc_with(monotonic_ns(), |_, e| !lb.backend_is(e.backend_id, &e.nat_addr, e.nat_port));
        assert_eq!(out.deleted, 2, "{out:?}");
        assert!(ct.entries().is_empty());
    });
}

#[test]
fn the_collector_reads_the_whole_table_in_batches() {
    use weir_common::ct::{CtEntry, CtEntry4, CtKey, CtKey4, CtTail, CT_SVC_FWD};
    use weir_datapath::ct::{Conntrack, CtMaps};
    with_config(DatapathConfig::DEFAULT, |_, _, layout| {
        let mut maps = CtMaps::open(layout).expect("conntrack");
        // Enough for several batches, and a table with many keys per
        // bucket; IPv4 flows in WEIR_CT4, IPv6 ones in WEIR_CT (ids only:
        // with no backend behind their ids, their backend address reads
        // as the zero address).
        for i in 0..10_000u32 {
            let saddr = if i % 4 == 0 { std::net::IpAddr::from(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | i as u128)) } else { Ipv4Addr::from(0x0a00_0000 + i).into() };
            let daddr = if i % 4 == 0 { std::net::IpAddr::from(std::net::Ipv6Addr::from(0xfd00_0096_u128 << 96 | 10)) } else { VIP.into() };
            let k = CtKey { saddr: saddr.into(), daddr: daddr.into(), sport: (i as u16).to_be(), dport: 53u16.to_be(), proto: 17, kind: CT_SVC_FWD, _pad: 0 };
            let nat_addr = if i % 4 == 0 { weir_common::addr::Addr::ZERO } else { Ipv4Addr::new(10, 244, 0, 5).into() };
            assert!(maps.insert_new(&k, &CtEntry { backend_id: i, nat_addr, orig_addr: k.saddr, ..CtEntry::default() }), "insert {i}");
        }
        let ct = Conntrack::open(layout).expect("ct");
        let four = aya::maps::MapData::from_pin(layout.map("WEIR_CT4")).expect("pinned IPv4 conntrack");
        let batched4 = weir_datapath::batch::lookup_all::<CtKey4, CtEntry4>(std::os::fd::AsFd::as_fd(four.fd())).expect("this kernel batches hash maps");
        assert_eq!(batched4.len(), 7_500, "the IPv4 flows, in their own map");
        let six = aya::maps::MapData::from_pin(layout.map("WEIR_CT")).expect("pinned IPv6 conntrack");
        assert!(weir_datapath::batch::lookup_all::<CtKey, CtEntry>(std::os::fd::AsFd::as_fd(six.fd())).is_none(), "a batch read of other types than the map's is refused");
        let batched6 = weir_datapath::batch::lookup_all::<CtKey, CtTail>(std::os::fd::AsFd::as_fd(six.fd())).expect("batches");
        assert_eq!(batched6.len(), 2_500, "the IPv6 flows");
        let six_wide = batched6.iter().map(|(k, t)| (*k, weir_logic::ct6::widen(k, t, weir_common::addr::Addr::ZERO)));
        let mut batched: Vec<(CtKey, CtEntry)> = six_wide.chain(batched4.iter().map(|(k, e)| (k.widen(), e.widen()))).collect();
        let mut one_by_one = ct.entries_one_by_one();
        assert_eq!(one_by_one.len(), 10_000);
        let order = |v: &mut Vec<(CtKey, CtEntry)>| v.sort_by_key(|(_, e)| e.backend_id);
        order(&mut batched);
        order(&mut one_by_one);
        assert!(batched == one_by_one, "the batch read returns every entry, each with its value");
        let mut entries = ct.entries();
        order(&mut entries);
        assert!(entries == one_by_one);
        assert!(entries.iter().all(|(k, e)| k.saddr == e.orig_addr && k.sport == ((e.backend_id as u16).to_be())), "each entry widened back whole");
    });
}

#[test]
fn the_datapath_dump_is_stable_text() {
    with_datapath(|_, lb, layout| {
        let b = |last| (Ipv4Addr::new(10, 244, 0, last), 8080);
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[b(3), b(1), b(2)])).expect("upsert");
        let mut udp = cluster_ip(VIP, 53, Protocol::Udp, &[]);
        udp.affinity_timeout_s = Some(30);
        lb.upsert(&udp).expect("upsert");
        let dump = weir_datapath::lb::dump::dump(layout).expect("dump");
        assert_eq!(
            dump,
            "service 10.96.0.10:80/tcp maglev slots=307 affinity=none fallback=no\n\
             \x20 backend 10.244.0.1:8080 slots=103\n\
             \x20 backend 10.244.0.2:8080 slots=102\n\
             \x20 backend 10.244.0.3:8080 slots=102\n\
             service 10.96.0.10:53/udp maglev slots=0 affinity=clientip/30s fallback=no\n\
             vip 10.96.0.10\n"
        );
    });
}

#[test]
fn maglev_and_random_selection_both_spread_new_flows() {
    use weir_datapath::lb::spec::Selection;
    with_datapath(|dp, lb, _| {
        let backends: Vec<(Ipv4Addr, u16)> = (1..=3).map(|i| (Ipv4Addr::new(10, 244, 0, 10 + i), 8080)).collect();
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        for (port, selection) in [(80u16, Selection::Maglev), (81, Selection::Random)] {
            let mut spec = cluster_ip(VIP, port, Protocol::Tcp, &backends);
            spec.selection = selection;
            lb.upsert(&spec).expect("upsert");
            let mut seen = std::collections::BTreeMap::new();
            for sport in 0..90u16 {
                let out = testrun::run(prog, &testrun::tcp4((CLIENT, 30000 + sport), (VIP, port), true, b"")).expect("run");
                *seen.entry(parse_checked_v4(&out.packet).dst).or_insert(0) += 1;
            }
            assert_eq!(seen.len(), 3, "{selection:?} uses every backend: {seen:?}");
            assert!(seen.values().all(|n| *n >= 10), "{selection:?} spreads flows: {seen:?}");
        }
    });
}

#[test]
fn a_pod_address_whose_link_is_gone_is_left_to_the_fib() {
    // The agent has not yet removed the address of a link that was just
    // deleted: the packet must not be redirected into the void. With no
    // route here, the FIB lookup sends it up the stack, untouched but for
    // its translation.
    with_datapath(|dp, lb, layout| {
        testrun::own_sources(layout, 4242, &[BACKEND.into()]);
        lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let run = testrun::run(prog, &testrun::tcp4((CLIENT, 40100), (VIP, 80), true, b"")).expect("run");
        assert_eq!(run.verdict, TC_ACT_OK, "up the stack, not redirected to ifindex 4242");
        let out = parse_checked_v4(&run.packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 8080), "translated");
        assert_eq!(run.packet[22], 64, "not forwarded here: the TTL is the sender's");
    });
}
