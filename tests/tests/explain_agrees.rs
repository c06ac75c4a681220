//! `weir explain` must say what the kernel does. Random flows go through
//! `weir_datapath::explain` (what the CLI prints) and then through the
//! real `from_pod` program (BPF_PROG_TEST_RUN) on the same maps; verdict
//! and translation must agree every time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weir_common::{
    link::LinkMacs,
    maps::LINK_MACS,
    policy::{IpInfo, PolicyValue, DIR_EGRESS, DIR_INGRESS, ID_ANY, ID_WORLD},
};
use weir_datapath::{
    attach::Hook,
    ct::monotonic_ns,
    explain::{Entry, Maps, Packet},
    lb::{spec::Protocol, Lb},
    policy::PolicyMaps,
};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};
use weir_tests::{
    services::cluster_ip,
    testrun::{self, parse_checked_v4, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
};

const VIP_WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const C1: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const C2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 9);
/// The frame header learned for the test link (`WEIR_LINK_MACS`).
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
const B: [Ipv4Addr; 3] = [Ipv4Addr::new(10, 244, 0, 10), Ipv4Addr::new(10, 244, 0, 11), Ipv4Addr::new(10, 244, 0, 12)];

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize]
    }
}

fn ident(ip: Ipv4Addr) -> u32 {
    300 + u32::from(ip.octets()[3])
}

/// C1 may only talk to B[0..2] on 8080 (egress-isolated); B[0] admits only
/// C2 (ingress-isolated); the rest are open.
fn policy() -> PolicyState {
    let mut s = PolicyState::default();
    for (i, ip) in [C1, C2, B[0], B[1], B[2]].into_iter().enumerate() {
        let id = i as u32 + 1;
        s.endpoints.insert(
            IpAddr::V4(ip),
            EndpointSpec { id, identity: ident(ip), ingress_isolated: ip == B[0], egress_isolated: ip == C1 },
        );
        s.ipcache.insert(Prefix::host(IpAddr::V4(ip)), IpInfo { identity: ident(ip), cidr_identity: ID_WORLD });
    }
    for b in &B[..2] {
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_EGRESS, identity: ident(*b), proto: 6, port: 8080, port_bits: 16 }, PolicyValue::allow(1));
    }
    s.entries.insert(PolicyEntry { endpoint: 3, direction: DIR_INGRESS, identity: ident(C2), proto: 0, port: 0, port_bits: 0 }, PolicyValue::allow(2));
    // An explicit Deny entry (a cluster policy's): C1's UDP to anyone.
    s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_EGRESS, identity: ID_ANY, proto: 17, port: 0, port_bits: 0 }, PolicyValue::deny(3));
    s
}

#[test]
fn explain_matches_the_kernel_on_random_flows() {
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, dp| {
        let layout = layout.clone();
        let mut lb = Lb::open(&layout).expect("lb");
        let web: Vec<(Ipv4Addr, u16)> = B.iter().map(|b| (*b, 8080)).collect();
        lb.upsert(&cluster_ip(VIP_WEB, 80, Protocol::Tcp, &web)).expect("web");
        lb.upsert(&cluster_ip(VIP_DNS, 53, Protocol::Udp, &[(B[1], 5353), (B[2], 5353)])).expect("dns");
        lb.upsert(&cluster_ip(VIP_EMPTY, 80, Protocol::Tcp, &[])).expect("empty");
        let s = policy();
        let w = PolicyMaps::open(&layout).expect("policy maps").transition(&s, &s, &s);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        testrun::own_sources(&layout, testrun::TEST_RUN_IFINDEX, &[C1.into(), C2.into(), STRANGER.into(), B[1].into()]);
        // B[1]'s link has its frame header learned: what goes to it from
        // a pod is delivered straight into it, with that header.
        let mut macs: aya::maps::HashMap<_, u32, LinkMacs> = weir_datapath::pinned::hash(&layout, LINK_MACS).expect("link macs");
        let learned_s = (monotonic_ns() / 1_000_000_000) as u32 - 1;
        macs.insert(testrun::TEST_RUN_IFINDEX, LinkMacs { pod: POD_MAC, node: NODE_MAC, learned_s }, 0).expect("seed the link's header");
        let maps = Maps::open(&layout).expect("explain maps");
        let prog = dp.program(Hook::FromPod).expect("from_pod");

        let dsts: [(Ipv4Addr, u16, u8); 8] = [
            (VIP_WEB, 80, 6),
            (VIP_WEB, 81, 6),
            (VIP_DNS, 53, 17),
            (VIP_EMPTY, 80, 6),
            (B[0], 8080, 6),
            (B[1], 8080, 6),
            (B[2], 9090, 17),
            (Ipv4Addr::new(10, 1, 2, 3), 80, 6),
        ];
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut seen = std::collections::BTreeMap::<&str, usize>::new();
        for i in 0..400 {
            let src = rng.pick(&[C1, C2, STRANGER, B[1]]);
            let sport = 1024 + (rng.next() % 60000) as u16;
            let (dst, dport, proto) = rng.pick(&dsts);
            let p = Packet { src: IpAddr::V4(src), sport, dst: IpAddr::V4(dst), dport, proto };
            let x = maps.explain(&p, &Entry::Pod, monotonic_ns()).expect("explain");
            let pkt = if proto == 6 { testrun::tcp4((src, sport), (dst, dport), true, b"") } else { testrun::udp4((src, sport), (dst, dport), b"q") };
            let run = testrun::run(prog, &pkt).expect("test_run");
            let ctx = format!("flow {i}: {src}:{sport} -> {dst}:{dport}/{proto}: explain said {x:?}");
            *seen.entry(x.verdict).or_default() += 1;
            match x.verdict {
                "drop" => assert_eq!(run.verdict, TC_ACT_SHOT, "{ctx}"),
                "reject" => {
                    assert_eq!(run.verdict, TC_ACT_REDIRECT, "{ctx}");
                    let out = parse_checked_v4(&run.packet);
                    assert!(out.proto == 1 || out.l4[13] & 0x04 != 0, "an ICMP error or a RST: {ctx}");
                }
                "forward" => {
                    // Translated to a pod of this node: redirected to its
                    // link; otherwise up the stack (no route here).
                    let want = if x.egress_link.is_some() { TC_ACT_REDIRECT } else { TC_ACT_OK };
                    *seen.entry(if x.egress_link.is_some() { "forward to a local pod's link" } else { "forward up the stack" }).or_default() += 1;
                    assert_eq!(run.verdict, want, "{ctx}");
                    // Straight into the pod: with the link's learned header.
                    if x.into_pod {
                        *seen.entry("forward straight into a local pod").or_default() += 1;
                        assert_eq!((&run.packet[..6], &run.packet[6..12]), (&POD_MAC[..], &NODE_MAC[..]), "{ctx}");
                    }
                    let out = parse_checked_v4(&run.packet);
                    let want = x.nat.map_or((IpAddr::V4(dst), dport), |(a, port)| (a, port));
                    assert_eq!((IpAddr::V4(out.dst), out.dport), want, "{ctx}");
                    // The next packet rides conntrack to the same place, and explain says so.
                    if x.backend.is_some() {
                        let again = maps.explain(&p, &Entry::Pod, monotonic_ns()).expect("explain");
                        assert_eq!(again.nat, x.nat, "{ctx}");
                        assert!(again.reason.contains("conntrack"), "{ctx}: {again:?}");
                    }
                }
                other => panic!("unknown verdict {other}: {ctx}"),
            }
        }
        for v in ["drop", "reject", "forward", "forward to a local pod's link", "forward straight into a local pod", "forward up the stack"] {
            assert!(seen.get(v).copied().unwrap_or(0) >= 10, "too few {v} cases to mean anything: {seen:?}");
        }
        eprintln!("explain agreed with the kernel on 400 flows: {seen:?}");
    });
}

/// `pod_v6`'s link rules, which come before the service and the policy:
/// link-scope traffic passes for a pod under no policy and is dropped for
/// an isolated one, and so is an address routed to an isolated pod's link
/// that no endpoint names. Explain and the kernel agree on each, on each
/// link; a link-local source names no link, and explain says the verdict
/// depends on it, which the kernel bears out on both links.
#[test]
fn explain_matches_the_kernel_on_ipv6_link_scope_traffic() {
    const ISO: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2);
    const UNLISTED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x99);
    const OPEN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 3);
    const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x50);
    let node_ll: Ipv6Addr = "fe80::1".parse().expect("v6");
    let pod_ll: Ipv6Addr = "fe80::5".parse().expect("v6");
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("v6");
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, dp| {
        let layout = layout.clone();
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V6(ISO), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: true });
        s.endpoints.insert(IpAddr::V6(OPEN), EndpointSpec { id: 2, identity: 402, ingress_isolated: false, egress_isolated: false });
        let w = PolicyMaps::open(&layout).expect("policy maps").transition(&s, &s, &s);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let iso_link = testrun::pod_link(&layout, "wxiso", &[ISO.into(), UNLISTED.into()]);
        let open_link = testrun::pod_link(&layout, "wxopen", &[OPEN.into()]);
        let maps = Maps::open(&layout).expect("explain maps");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        type Case<'a> = (Ipv6Addr, Ipv6Addr, &'a str, &'a [(u32, i32)]);
        let cases: [Case; 6] = [
            (ISO, node_ll, "drop", &[(iso_link, TC_ACT_SHOT)]),
            (ISO, all_nodes, "drop", &[(iso_link, TC_ACT_SHOT)]),
            (OPEN, node_ll, "pass", &[(open_link, TC_ACT_OK)]),
            (OPEN, all_nodes, "pass", &[(open_link, TC_ACT_OK)]),
            (UNLISTED, REMOTE, "drop", &[(iso_link, TC_ACT_SHOT)]),
            (pod_ll, node_ll, "depends", &[(iso_link, TC_ACT_SHOT), (open_link, TC_ACT_OK)]),
        ];
        for (src, dst, want, runs) in cases {
            let p = Packet { src: IpAddr::V6(src), sport: 5000, dst: IpAddr::V6(dst), dport: 53, proto: 17 };
            let x = maps.explain(&p, &Entry::Pod, monotonic_ns()).expect("explain");
            assert_eq!(x.verdict, want, "{src} -> {dst}: {x:?}");
            let named = if src == UNLISTED { "unlisted_address" } else { "ipv6_isolated" };
            assert!(x.reason.contains(named) || want == "pass", "{src} -> {dst}: the drop reason is named: {}", x.reason);
            for &(link, verdict) in runs {
                let run = testrun::run_on(prog, &testrun::udp6((src, 5000), (dst, 53), b"q"), link).expect("test_run");
                assert_eq!(run.verdict, verdict, "{src} -> {dst} on link {link}: explain said {x:?}");
            }
        }
        // A listed address of the isolated pod to a global peer is judged
        // by policy (denied: no rule allows it), not by the link rules.
        let p = Packet { src: IpAddr::V6(ISO), sport: 5000, dst: IpAddr::V6(REMOTE), dport: 53, proto: 17 };
        let x = maps.explain(&p, &Entry::Pod, monotonic_ns()).expect("explain");
        assert_eq!(x.verdict, "drop", "{x:?}");
        assert!(!x.policy.is_empty() && !x.reason.contains("ipv6_isolated"), "{x:?}");
        assert_eq!(testrun::run_on(prog, &testrun::udp6((ISO, 5000), (REMOTE, 53), b"q"), iso_link).expect("run").verdict, TC_ACT_SHOT);
    });
}

/// An IPv4 address routed to an isolated pod's link that no endpoint
/// names is dropped before the service and the policy (`unlisted_address`);
/// the pod's listed address is judged by its policy. Explain and the
/// kernel agree on both.
#[test]
fn explain_matches_the_kernel_on_an_unlisted_address_of_an_isolated_pod() {
    const UNLISTED: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 99);
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, dp| {
        let layout = layout.clone();
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V4(C1), EndpointSpec { id: 1, identity: 401, ingress_isolated: false, egress_isolated: true });
        s.ipcache.insert(Prefix::host(IpAddr::V4(STRANGER)), IpInfo { identity: ID_WORLD, cidr_identity: ID_WORLD });
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_EGRESS, identity: ID_ANY, proto: 17, port: 53, port_bits: 16 }, PolicyValue::allow(1));
        let w = PolicyMaps::open(&layout).expect("policy maps").transition(&s, &s, &s);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let link = testrun::pod_link(&layout, "wxiso4", &[C1.into(), UNLISTED.into()]);
        let maps = Maps::open(&layout).expect("explain maps");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        for (src, want, named) in [(UNLISTED, "drop", "unlisted_address"), (C1, "forward", "")] {
            let p = Packet { src: IpAddr::V4(src), sport: 5000, dst: IpAddr::V4(STRANGER), dport: 53, proto: 17 };
            let x = maps.explain(&p, &Entry::Pod, monotonic_ns()).expect("explain");
            assert_eq!(x.verdict, want, "{src}: {x:?}");
            assert!(x.reason.contains(named), "{src}: the drop reason is named: {}", x.reason);
            let verdict = if want == "drop" { TC_ACT_SHOT } else { TC_ACT_OK };
            assert_eq!(testrun::run_on(prog, &testrun::udp4((src, 5000), (STRANGER, 53), b"q"), link).expect("run").verdict, verdict, "{src}: explain said {x:?}");
        }
    });
}

/// A reply whose flow's service is gone (its frontend removed, its
/// conntrack entries not yet collected) names a service id with no
/// address: the kernel leaves the reply untranslated, and explain says
/// so instead of rewriting its source to an unknown address.
#[test]
fn explain_matches_the_kernel_on_a_reply_whose_service_is_gone() {
    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2);
    const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 10);
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, dp| {
        let layout = layout.clone();
        let client_link = testrun::pod_link(&layout, "wxgc", &[CLIENT6.into()]);
        let backend_link = testrun::pod_link(&layout, "wxgb", &[BACKEND6.into()]);
        let mut lb = Lb::open(&layout).expect("lb");
        let svc = cluster_ip(VIP6, 53, Protocol::Udp, &[(BACKEND6, 5353)]);
        lb.upsert(&svc).expect("upsert");
        let prog = dp.program(Hook::FromPod).expect("from_pod");
        let maps = Maps::open(&layout).expect("explain maps");
        let sent = testrun::run_on(prog, &testrun::udp6((CLIENT6, 41000), (VIP6, 53), b"q"), client_link).expect("run");
        assert_eq!(testrun::parse_checked_v6(&sent.packet).dst, BACKEND6);
        let reply = Packet { src: IpAddr::V6(BACKEND6), sport: 5353, dst: IpAddr::V6(CLIENT6), dport: 41000, proto: 17 };
        let x = maps.explain(&reply, &Entry::Pod, monotonic_ns()).expect("explain");
        assert_eq!(x.nat, Some((IpAddr::V6(VIP6), 53)), "while the service exists, its reply is translated: {x:?}");

        lb.remove(&svc.frontend).expect("remove");
        let x = maps.explain(&reply, &Entry::Pod, monotonic_ns()).expect("explain");
        let run = testrun::run_on(prog, &testrun::udp6((BACKEND6, 5353), (CLIENT6, 41000), b"a"), backend_link).expect("run");
        let out = testrun::parse_checked_v6(&run.packet);
        assert_eq!((out.src, out.sport), (BACKEND6, 5353), "the kernel leaves the reply untranslated");
        assert_eq!(x.nat, None, "and explain says so: {x:?}");
        assert!(!x.reason.contains("reply of a service flow"), "{}", x.reason);
    });
}
