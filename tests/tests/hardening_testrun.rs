//! A hostile pod against the pod programs, on crafted packets
//! (BPF_PROG_TEST_RUN): spoofed sources, forged replies, forged policy
//! state, IPv6 and other EtherTypes, unreadable headers, fragments, ICMP
//! errors, and conntrack under races, collisions and evictions.
//!
//! Each test runs in its own network namespace: test runs happen on its
//! loopback device (ifindex 1) unless a test gives a dummy device's
//! ifindex, so "pod links" are lo and dummies, each owning the addresses
//! the test writes to `WEIR_LINKS` (as the agent does from host routes).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weir_common::{
    config::DatapathConfig,
    ct::{CtKey, CtStat, CT_POLICY, CT_STATE_CLOSED, CT_STATE_SYN, CT_SVC_FWD, CT_SVC_REV},
    drop::DropReason,
    policy::{IpInfo, PolicyValue, DIR_EGRESS, DIR_INGRESS, ID_ANY, ID_WORLD},
};
use weir_datapath::{
    attach::Hook,
    ct::{monotonic_ns, Conntrack},
    lb::{spec::Protocol, Lb},
    policy::PolicyMaps,
    stats::{read_ct_stats, read_drops},
    PinLayout, PodDatapath,
};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};
use weir_tests::{
    services::{cluster_ip, endpoint},
    testrun::{self, parse_checked_icmp_error, parse_checked_v4, Quoted, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TEST_RUN_IFINDEX},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const EVIL: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 66);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The "uplink" packets for to_pod runs came in on (any ifindex but 0).
const UPLINK_IFINDEX: u32 = 1;

/// One test's datapath: the pod object loaded in a fresh namespace.
struct Fx {
    ns_lo: u32,
    dp: PodDatapath,
    lb: Lb,
    layout: PinLayout,
}

impl Fx {
    fn prog(&self, hook: Hook) -> &aya::programs::SchedClassifier {
        self.dp.program(hook).expect("program")
    }

    /// Runs `hook` on `pkt` on `ifindex`. to_pod runs see the packet as
    /// one that entered the node on another interface (not from the node
    /// itself, whose own traffic to pods is allowed).
    fn run(&self, hook: Hook, ifindex: u32, pkt: &[u8]) -> testrun::Run {
        let ingress = if hook == Hook::ToPod { UPLINK_IFINDEX } else { 0 };
        testrun::run_from(self.prog(hook), pkt, ifindex, ingress).expect("test_run")
    }

    /// A veth standing in for another pod link, owning `addrs` (created
    /// in the test's namespace: this thread's, which `ip` inherits; this
    /// kernel has no dummy devices).
    fn link(&self, name: &str, addrs: &[IpAddr]) -> u32 {
        testrun::pod_link(&self.layout, name, addrs)
    }

    fn drops(&self, reason: DropReason) -> u64 {
        read_drops(&self.layout).expect("drops").into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n)
    }

    fn ct_stat(&self, s: CtStat) -> u64 {
        read_ct_stats(&self.layout).expect("ct stats").into_iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| n)
    }

    fn ct(&self) -> Conntrack {
        Conntrack::open(&self.layout).expect("conntrack")
    }

    fn policy(&self, s: &PolicyState) {
        let mut maps = PolicyMaps::open(&self.layout).expect("policy maps");
        let old = maps.read();
        let w = maps.transition(&old, s, s);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
    }
}

/// Runs `f` with the pod object loaded in a fresh namespace; the client
/// owns lo.
fn with(cfg: DatapathConfig, f: impl FnOnce(&mut Fx) + Send + 'static) {
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, mut dp| {
        let layout = layout.clone();
        dp.set_config(&cfg).expect("config");
        let lb = Lb::open(&layout).expect("lb");
        testrun::own_sources(&layout, TEST_RUN_IFINDEX, &[CLIENT.into()]);
        let mut fx = Fx { ns_lo: TEST_RUN_IFINDEX, dp, lb, layout };
        f(&mut fx);
    });
}

fn syn_to_vip(fx: &Fx, sport: u16) -> testrun::V4 {
    let run = fx.run(Hook::FromPod, fx.ns_lo, &testrun::tcp4((CLIENT, sport), (VIP, 80), true, b""));
    // Redirected when the backend is a pod link of the test, else up the
    // stack (no route here).
    assert!([TC_ACT_OK, TC_ACT_REDIRECT].contains(&run.verdict), "the SYN is load-balanced, not dropped: {}", run.verdict);
    parse_checked_v4(&run.packet)
}

// ---------------------------------------------------------------- spoofing

#[test]
fn a_pod_cannot_send_from_an_address_not_routed_to_its_link() {
    with(DatapathConfig::DEFAULT, |fx| {
        let own = testrun::udp4((CLIENT, 4000), (BACKEND, 53), b"mine");
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &own).verdict, TC_ACT_OK);
        let spoofed = testrun::udp4((BACKEND, 4000), (CLIENT, 53), b"not mine");
        let run = fx.run(Hook::FromPod, fx.ns_lo, &spoofed);
        assert_eq!(run.verdict, TC_ACT_SHOT, "a source the node routes to another link");
        let unknown = fx.link("weirnoaddr", &[]);
        assert_eq!(fx.run(Hook::FromPod, unknown, &own).verdict, TC_ACT_SHOT, "a link with no routed address sends nothing");
        assert_eq!(fx.drops(DropReason::SpoofedSource), 2);
    });
}

#[test]
fn a_reply_forged_by_another_pod_is_not_reverse_natted() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        let evil_link = fx.link("weirevil", &[EVIL.into()]);
        syn_to_vip(fx, 40000);
        let reply = testrun::tcp4((BACKEND, 8080), (CLIENT, 40000), false, b"real");
        let forged = fx.run(Hook::FromPod, evil_link, &reply);
        assert_eq!(forged.verdict, TC_ACT_SHOT, "the backend's address from another pod's link");
        assert_eq!(forged.packet, reply, "and it was not rewritten");
        let real = parse_checked_v4(&fx.run(Hook::FromPod, backend_link, &reply).packet);
        assert_eq!((real.src, real.sport), (VIP, 80), "the backend's own reply is translated");
    });
}

#[test]
fn no_other_pod_can_delete_a_live_reverse_entry() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        let evil_link = fx.link("weirevil", &[EVIL.into()]);
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &testrun::udp4((CLIENT, 41000), (VIP, 53), b"q")).verdict, TC_ACT_REDIRECT, "to the backend's link");
        // The old `forget_stale_reverse` deleted the reverse entry on any
        // direct packet with the flow's tuple, from anyone.
        let forged = testrun::udp4((CLIENT, 41000), (BACKEND, 5353), b"kill");
        assert_eq!(fx.run(Hook::FromPod, evil_link, &forged).verdict, TC_ACT_SHOT);
        let tcp_forged = testrun::tcp4((CLIENT, 41000), (BACKEND, 5353), true, b"");
        assert_eq!(fx.run(Hook::FromPod, evil_link, &tcp_forged).verdict, TC_ACT_SHOT);
        assert_eq!(fx.ct().entries().len(), 2, "both entries of the flow are still there");
        let out = parse_checked_v4(&fx.run(Hook::FromPod, backend_link, &testrun::udp4((BACKEND, 5353), (CLIENT, 41000), b"a")).packet);
        assert_eq!((out.src, out.sport), (VIP, 53), "the flow's replies are still translated");
    });
}

#[test]
fn a_packet_into_a_pod_must_be_addressed_to_it() {
    with(DatapathConfig::DEFAULT, |fx| {
        let to_me = testrun::udp4((EVIL, 4000), (CLIENT, 53), b"hi");
        assert_eq!(fx.run(Hook::ToPod, fx.ns_lo, &to_me).verdict, TC_ACT_OK);
        for dst in [BACKEND, Ipv4Addr::new(224, 0, 0, 1), Ipv4Addr::BROADCAST] {
            let p = testrun::udp4((EVIL, 4000), (dst, 53), b"not for this pod");
            assert_eq!(fx.run(Hook::ToPod, fx.ns_lo, &p).verdict, TC_ACT_SHOT, "{dst} on the client's link");
        }
        assert_eq!(fx.drops(DropReason::NotForPod), 3);
    });
}

/// An address the node routes to a pod's link that the pod's `podIPs` do
/// not list (a second address from IPAM, or a pod object not delivered
/// yet) names no endpoint, so no rule could judge its flows: on an
/// isolated pod's link none passes, either way, whether to a peer, to a
/// service, as an echo or as an ICMP error. On a link under no policy
/// such an address keeps working.
#[test]
fn an_address_no_endpoint_names_carries_nothing_on_an_isolated_pods_link() {
    const UNLISTED: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 99);
    const OPEN_UNLISTED: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 98);
    with(DatapathConfig::DEFAULT, |fx| {
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V4(CLIENT), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: true });
        fx.policy(&s);
        testrun::own_sources(&fx.layout, fx.ns_lo, &[CLIENT.into(), UNLISTED.into()]);
        fx.lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let cases = [
            (Hook::FromPod, testrun::udp4((UNLISTED, 4000), (EVIL, 53), b"q"), "a flow from it"),
            (Hook::FromPod, testrun::udp4((UNLISTED, 4001), (VIP, 53), b"q"), "a service flow from it"),
            (Hook::FromPod, testrun::icmp4_echo(UNLISTED, EVIL, 7, 1), "an echo from it"),
            (Hook::ToPod, testrun::tcp4((EVIL, 40000), (UNLISTED, 80), true, b""), "a connection to it"),
            (Hook::ToPod, testrun::udp4((EVIL, 53), (UNLISTED, 4000), b"a"), "a datagram to it"),
            (Hook::FromPod, testrun::icmp4_error(UNLISTED, EVIL, 3, 3, 0, &testrun::udp4((EVIL, 53), (UNLISTED, 4000), b"a")), "an ICMP error from it"),
            (Hook::ToPod, testrun::icmp4_error(EVIL, UNLISTED, 3, 3, 0, &testrun::udp4((UNLISTED, 4000), (EVIL, 53), b"q")), "an ICMP error to it"),
        ];
        for (hook, pkt, what) in &cases {
            assert_eq!(fx.run(*hook, fx.ns_lo, pkt).verdict, TC_ACT_SHOT, "{what}");
        }
        assert_eq!(fx.drops(DropReason::UnlistedAddress), cases.len() as u64);
        assert!(fx.ct().entries().is_empty(), "no flow was tracked");

        let open = fx.link("weiropen", &[BACKEND.into(), OPEN_UNLISTED.into()]);
        let from_open = testrun::udp4((OPEN_UNLISTED, 4000), (EVIL, 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, open, &from_open).verdict, TC_ACT_OK, "an unlisted address of a pod under no policy");
        let to_open = testrun::udp4((EVIL, 53), (OPEN_UNLISTED, 4000), b"a");
        assert_eq!(fx.run(Hook::ToPod, open, &to_open).verdict, TC_ACT_OK, "and into it");
        assert_eq!(fx.drops(DropReason::UnlistedAddress), cases.len() as u64);

        // From another pod of this node, a packet goes straight into the
        // receiver (`fwd::into_pod`), whose to_pod never sees it: the
        // sender's link drops it instead, sent directly or through a
        // service whose backend the address is.
        fx.lb.upsert(&cluster_ip(VIP2, 53, Protocol::Udp, &[(UNLISTED, 5353)])).expect("upsert");
        let direct = testrun::udp4((BACKEND, 4000), (UNLISTED, 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, open, &direct).verdict, TC_ACT_SHOT, "a datagram to it from a pod of this node");
        let via_service = testrun::udp4((BACKEND, 4001), (VIP2, 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, open, &via_service).verdict, TC_ACT_SHOT, "a service flow to it from a pod of this node");
        assert_eq!(fx.drops(DropReason::UnlistedAddress), cases.len() as u64 + 2);
    });
}

// ------------------------------------------------------ policy conntrack

/// V (endpoint 1) admits nothing; A (endpoint 2) admits anyone on 5555.
fn victim_and_attacker(a: Ipv4Addr, v: Ipv4Addr) -> PolicyState {
    let mut s = PolicyState::default();
    s.endpoints.insert(IpAddr::V4(v), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: false });
    s.endpoints.insert(IpAddr::V4(a), EndpointSpec { id: 2, identity: 402, ingress_isolated: true, egress_isolated: false });
    s.ipcache.insert(Prefix::host(IpAddr::V4(v)), IpInfo { identity: 401, cidr_identity: ID_WORLD });
    s.ipcache.insert(Prefix::host(IpAddr::V4(a)), IpInfo { identity: 402, cidr_identity: ID_WORLD });
    s.entries.insert(PolicyEntry { endpoint: 2, direction: DIR_INGRESS, identity: ID_ANY, proto: 6, port: 5555, port_bits: 16 }, PolicyValue::allow(1));
    s
}

#[test]
fn a_forged_packet_cannot_open_a_policy_flow_for_its_victim() {
    with(DatapathConfig::DEFAULT, |fx| {
        let (a, v) = (CLIENT, BACKEND);
        fx.policy(&victim_and_attacker(a, v));
        // V:22 → A:5555 arrives at A from outside the node (a forged
        // packet); A's ingress admits it, so it opens a flow whose opener
        // is V.
        let forged = testrun::tcp4((v, 22), (a, 5555), false, b"");
        assert_eq!(fx.run(Hook::ToPod, fx.ns_lo, &forged).verdict, TC_ACT_OK);
        // A's SYN to V:22 is a new connection, judged by V's ingress, not
        // a reply riding V's flow.
        let syn = testrun::tcp4((a, 5555), (v, 22), true, b"");
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &syn).verdict, TC_ACT_SHOT, "V admits nothing on 22");
        assert_eq!(fx.drops(DropReason::PolicyDenied), 1);
    });
}

#[test]
fn an_rst_from_a_side_never_seen_does_not_close_a_flow() {
    with(DatapathConfig::DEFAULT, |fx| {
        let (a, v) = (CLIENT, BACKEND);
        let mut s = victim_and_attacker(a, v);
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_INGRESS, identity: ID_ANY, proto: 6, port: 22, port_bits: 16 }, PolicyValue::allow(2));
        fx.policy(&s);
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &testrun::tcp4((a, 5000), (v, 22), true, b"")).verdict, TC_ACT_OK);
        let mut rst = testrun::tcp4((v, 22), (a, 5000), false, b"");
        rst[14 + 20 + 13] = 0x04; // a bare RST, no ACK: not the refusal of the SYN
        fx.run(Hook::ToPod, fx.ns_lo, &rst);
        let key = CtKey { saddr: a.into(), daddr: v.into(), sport: 5000u16.to_be(), dport: 22u16.to_be(), proto: 6, kind: CT_POLICY, _pad: 0 };
        let e = fx.ct().entries().into_iter().find(|(k, _)| *k == key).expect("the flow's entry").1;
        assert_eq!(e.state, CT_STATE_SYN, "the RST came from a side that has not spoken");
        let mut refusal = testrun::tcp4((v, 22), (a, 5000), false, b"");
        refusal[14 + 20 + 13] = 0x14; // RST|ACK answers the SYN
        fx.run(Hook::ToPod, fx.ns_lo, &refusal);
        let e = fx.ct().entries().into_iter().find(|(k, _)| *k == key).expect("the flow's entry").1;
        assert_eq!(e.state, CT_STATE_CLOSED);
    });
}

// -------------------------------------------------------------- not IPv4

#[test]
fn ipv6_to_or_from_an_isolated_pod_is_dropped_and_other_ethertypes_from_pods_too() {
    with(DatapathConfig::DEFAULT, |fx| {
        let (v6_iso, v6_open): (Ipv6Addr, Ipv6Addr) = ("fd00::2".parse().expect("v6"), "fd00::6".parse().expect("v6"));
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V4(CLIENT), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: false });
        fx.policy(&s);
        testrun::own_sources(&fx.layout, fx.ns_lo, &[CLIENT.into(), v6_iso.into()]);
        let open = fx.link("weiropen", &[BACKEND.into(), v6_open.into()]);

        let from_iso = testrun::udp6((v6_iso, 4000), (v6_open, 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &from_iso).verdict, TC_ACT_SHOT, "from an isolated pod");
        let to_iso = testrun::udp6((v6_open, 4000), (v6_iso, 53), b"q");
        assert_eq!(fx.run(Hook::ToPod, fx.ns_lo, &to_iso).verdict, TC_ACT_SHOT, "to an isolated pod");
        assert_eq!(fx.drops(DropReason::UnlistedAddress), 2, "its podIPs list no IPv6 address");

        let to_remote = testrun::udp6((v6_open, 4000), ("fd00::50".parse().expect("v6"), 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, open, &to_remote).verdict, TC_ACT_OK, "an open pod sends from its own IPv6 address");
        assert_eq!(fx.run(Hook::ToPod, open, &from_iso).verdict, TC_ACT_OK, "and receives");
        // Straight into a pod of this node (`fwd::into_pod`): the sender's
        // link drops what the receiver's to_pod would.
        assert_eq!(fx.run(Hook::FromPod, open, &to_iso).verdict, TC_ACT_SHOT, "to the isolated pod's unlisted address, from a pod of this node");
        assert_eq!(fx.drops(DropReason::UnlistedAddress), 3);
        let ll = testrun::icmp6_echo("fe80::1".parse().expect("v6"), "ff02::1".parse().expect("v6"), 1, 1);
        assert_eq!(fx.run(Hook::FromPod, open, &ll).verdict, TC_ACT_OK, "link-local scope");
        let spoofed = testrun::udp6(("fd00::99".parse().expect("v6"), 4000), (v6_iso, 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, open, &spoofed).verdict, TC_ACT_SHOT, "an IPv6 source not routed to the link");

        let arp = testrun::frame(0x0806, &[0u8; 28]);
        assert_eq!(fx.run(Hook::FromPod, open, &arp).verdict, TC_ACT_OK, "ARP keeps working");
        for ethertype in [0x88cc_u16, 0x8100, 0x8847, 0x0842] {
            let f = testrun::frame(ethertype, &[0u8; 46]);
            assert_eq!(fx.run(Hook::FromPod, open, &f).verdict, TC_ACT_SHOT, "EtherType {ethertype:#06x} from a pod");
        }
        assert_eq!(fx.drops(DropReason::UnsupportedEthertype), 4);
    });
}

/// `frame` (Ethernet + IPv6 + upper layer) with extension headers put
/// between the fixed header and the upper layer: each (next-header kind,
/// length in bytes), zero-filled but for its next header and length.
fn with_ext_headers(frame: &[u8], headers: &[(u8, usize)]) -> Vec<u8> {
    const IP6: usize = 14;
    let upper = frame[IP6 + 6];
    let mut ext = Vec::new();
    for (i, &(kind, len)) in headers.iter().enumerate() {
        let mut h = vec![0u8; len];
        h[0] = headers.get(i + 1).map_or(upper, |n| n.0);
        h[1] = match kind {
            44 => 0,
            51 => (len / 4 - 2) as u8,
            _ => (len / 8 - 1) as u8,
        };
        ext.extend(h);
    }
    let mut out = frame[..IP6 + 40].to_vec();
    if let Some(&(first, _)) = headers.first() {
        out[IP6 + 6] = first;
    }
    let payload = u16::from_be_bytes([frame[IP6 + 4], frame[IP6 + 5]]) as usize + ext.len();
    out[IP6 + 4..IP6 + 6].copy_from_slice(&(payload as u16).to_be_bytes());
    out.extend(ext);
    out.extend_from_slice(&frame[IP6 + 40..]);
    out
}

#[test]
fn ipv6_whose_extension_headers_cannot_be_walked_is_dropped_and_counted() {
    with(DatapathConfig::DEFAULT, |fx| {
        let (v6_a, v6_b): (Ipv6Addr, Ipv6Addr) = ("fd00::7".parse().expect("v6"), "fd00::8".parse().expect("v6"));
        let a = fx.link("weirv6a", &[v6_a.into()]);
        let udp = testrun::udp6((v6_a, 4000), (v6_b, 53), b"query");
        let back = testrun::udp6((v6_b, 53), (v6_a, 4000), b"answer");
        let (dst_opts, routing, hop_by_hop, fragment, ah) = (60u8, 43u8, 0u8, 44u8, 51u8);

        let walkable = with_ext_headers(&udp, &[(hop_by_hop, 8), (dst_opts, 16), (routing, 24), (ah, 16), (fragment, 8)]);
        assert_eq!(fx.run(Hook::FromPod, a, &walkable).verdict, TC_ACT_OK, "five headers, every kind, in order");
        assert_eq!(fx.run(Hook::ToPod, a, &with_ext_headers(&back, &[(dst_opts, 8), (dst_opts, 8)])).verdict, TC_ACT_OK);

        let nine = with_ext_headers(&udp, &[(dst_opts, 8); 9]);
        assert_eq!(fx.run(Hook::FromPod, a, &nine).verdict, TC_ACT_SHOT, "nine headers: more than the walk follows");
        assert_eq!(fx.run(Hook::ToPod, a, &with_ext_headers(&back, &[(routing, 8); 9])).verdict, TC_ACT_SHOT, "nor into a pod");
        let misplaced = with_ext_headers(&udp, &[(dst_opts, 8), (hop_by_hop, 8)]);
        assert_eq!(fx.run(Hook::FromPod, a, &misplaced).verdict, TC_ACT_SHOT, "hop-by-hop after the first header");
        let two_frags = with_ext_headers(&udp, &[(fragment, 8), (fragment, 8)]);
        assert_eq!(fx.run(Hook::FromPod, a, &two_frags).verdict, TC_ACT_SHOT, "two fragment headers");
        let cut = cut6(with_ext_headers(&udp, &[(dst_opts, 8), (dst_opts, 8)]), 14 + 40 + 8 + 4);
        assert_eq!(fx.run(Hook::FromPod, a, &cut).verdict, TC_ACT_SHOT, "a header the packet ends inside of");
        assert_eq!(fx.drops(DropReason::Ipv6HeaderChain), 5);

        // A first fragment must hold the upper layer's header (RFC 7112);
        // a later fragment holds none, and rides its first fragment's ports.
        let first_without_udp = cut6(with_ext_headers(&udp, &[(fragment, 8)]), 14 + 40 + 8 + 4);
        assert_eq!(fx.run(Hook::FromPod, a, &first_without_udp).verdict, TC_ACT_SHOT, "a first fragment without its UDP header");
        assert_eq!(fx.drops(DropReason::Malformed), 1);
        let mut first = with_ext_headers(&udp, &[(fragment, 8)]);
        first[14 + 40 + 3] |= 1; // more fragments
        first[14 + 40 + 4..14 + 40 + 8].copy_from_slice(&[0, 0, 0, 7]);
        assert_eq!(fx.run(Hook::FromPod, a, &first).verdict, TC_ACT_OK, "a first fragment");
        let mut later = with_ext_headers(&udp, &[(fragment, 8)]);
        later[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&(185u16 << 3).to_be_bytes());
        later[14 + 40 + 4..14 + 40 + 8].copy_from_slice(&[0, 0, 0, 7]);
        let later = cut6(later, 14 + 40 + 8 + 4);
        assert_eq!(fx.run(Hook::FromPod, a, &later).verdict, TC_ACT_OK, "its later fragment: data only");
        let mut orphan = later.clone();
        orphan[14 + 40 + 7] = 8;
        assert_eq!(fx.run(Hook::FromPod, a, &orphan).verdict, TC_ACT_SHOT, "a later fragment of no datagram seen");
        assert_eq!(fx.drops(DropReason::FragmentUnknown), 1);
        // A payload length past the frame's end.
        let mut long = udp.clone();
        long[14 + 5] += 1;
        assert_eq!(fx.run(Hook::FromPod, a, &long).verdict, TC_ACT_SHOT, "a payload length past the frame");
        assert_eq!(fx.drops(DropReason::Malformed), 2);
    });
}

/// IPv4 lives in the maps as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so an
/// IPv6 packet naming such an address could pass for an IPv4 flow: match
/// an IPv4 ClusterIP's frontend, or an IPv4 flow's conntrack entry. No
/// such address travels in an IPv6 header (RFC 4291 2.5.5.2): dropped.
#[test]
fn ipv6_naming_an_ipv4_mapped_address_is_dropped_never_taken_for_ipv4() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let v6: Ipv6Addr = "fd00::7".parse().expect("v6");
        let a = fx.link("weirv6map", &[v6.into()]);
        let control = testrun::udp6((v6, 4000), ("fd00::8".parse().expect("v6"), 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, a, &control).verdict, TC_ACT_OK, "IPv6 to an IPv6 address");

        let to_mapped_vip = testrun::udp6((v6, 4000), (VIP.to_ipv6_mapped(), 53), b"q");
        let run = fx.run(Hook::FromPod, a, &to_mapped_vip);
        assert_eq!(run.verdict, TC_ACT_SHOT, "not load-balanced to the IPv4 ClusterIP's backend");
        assert!(fx.ct().entries().is_empty(), "no flow in either conntrack table: {:?}", fx.ct().entries());
        let from_mapped = testrun::udp6((CLIENT.to_ipv6_mapped(), 4000), (v6, 53), b"q");
        assert_eq!(fx.run(Hook::ToPod, a, &from_mapped).verdict, TC_ACT_SHOT, "nor into a pod from one");
        assert_eq!(fx.drops(DropReason::Malformed), 2);
        // Quoted in an ICMPv6 error, such a tuple names no flow either:
        // an IPv4 flow's, to the ClusterIP's backend, is live.
        let v4 = fx.run(Hook::FromPod, fx.ns_lo, &testrun::udp4((CLIENT, 4000), (VIP, 53), b"q"));
        assert_eq!(v4.verdict, TC_ACT_OK, "an IPv4 flow through the ClusterIP");
        let quoted = testrun::udp6((CLIENT.to_ipv6_mapped(), 4000), (BACKEND.to_ipv6_mapped(), 5353), b"q");
        let err = testrun::icmp6_error("fd00::1".parse().expect("v6"), v6, 1, 4, 0, &quoted);
        assert_eq!(fx.run(Hook::ToPod, a, &err).verdict, TC_ACT_SHOT, "an ICMPv6 error quoting the IPv4 flow's tuple, mapped");
        assert_eq!(fx.drops(DropReason::Malformed), 3);
    });
}

/// `frame` (Ethernet + IPv6) cut to `len` bytes, its payload length
/// following.
fn cut6(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame[14 + 4..14 + 6].copy_from_slice(&((len - 14 - 40) as u16).to_be_bytes());
    frame
}

// ----------------------------------------------------------- unreadable

#[test]
fn packets_the_parser_cannot_read_are_dropped_never_passed() {
    with(DatapathConfig::DEFAULT, |fx| {
        let syn = testrun::tcp4((CLIENT, 40000), (BACKEND, 22), true, b"");
        // A first fragment with only 8 bytes of TCP (no flags).
        let (tiny, _) = testrun::fragments(&syn, 7, 8);
        // An IP header length below 20 bytes.
        let mut short_ihl = syn.clone();
        short_ihl[14] = 0x44;
        testrun::fix_ipv4_csum(&mut short_ihl);
        // A total length beyond the frame.
        let mut long = syn.clone();
        long[16..18].copy_from_slice(&200u16.to_be_bytes());
        testrun::fix_ipv4_csum(&mut long);
        // A TCP data offset beyond the packet.
        let mut doff = syn.clone();
        doff[14 + 20 + 12] = 0xf0;
        // RFC 1858: a TCP fragment at offset 8 rewrites the first one's flags.
        let overlap = testrun::with_ipv4_frag(syn.clone(), 9, false, 1);
        // Not IPv4 although the EtherType says so.
        let mut v5 = syn.clone();
        v5[14] = 0x55;
        for (what, p) in [("tiny first fragment", &tiny), ("ihl", &short_ihl), ("total length", &long), ("data offset", &doff), ("overlap", &overlap), ("version", &v5)] {
            for hook in [Hook::FromPod, Hook::ToPod] {
                assert_eq!(fx.run(hook, fx.ns_lo, p).verdict, TC_ACT_SHOT, "{what} at {hook:?}");
            }
        }
        assert_eq!(fx.drops(DropReason::Malformed), 12);
    });
}

// ------------------------------------------------------------ fragments

/// Reassembles two fragments' IP payloads and checks the UDP checksum of
/// the whole datagram against the (translated) addresses.
fn udp_checksum_ok(first: &[u8], second: &[u8]) -> bool {
    let (a, b) = (parse_checked_v4(first), parse_checked_v4(second));
    assert_eq!((a.src, a.dst), (b.src, b.dst), "both fragments carry the same addresses");
    let mut dgram = a.l4.clone();
    dgram.extend_from_slice(&b.l4);
    let mut sum: u32 = 0;
    for c in [a.src.octets(), a.dst.octets()] {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]])) + u32::from(u16::from_be_bytes([c[2], c[3]]));
    }
    sum += 17 + dgram.len() as u32;
    for w in dgram.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn later_fragments_follow_the_first_fragments_translation_both_ways() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        let payload: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
        let q = testrun::udp4((CLIENT, 42000), (VIP, 53), &payload);
        let (f1, f2) = testrun::fragments(&q, 0x1234, 800);
        let r1 = fx.run(Hook::FromPod, fx.ns_lo, &f1);
        let r2 = fx.run(Hook::FromPod, fx.ns_lo, &f2);
        assert_eq!((r1.verdict, r2.verdict), (TC_ACT_REDIRECT, TC_ACT_REDIRECT), "both to the backend's link");
        assert_eq!(parse_checked_v4(&r2.packet).dst, BACKEND, "the later fragment is DNATed too");
        assert!(udp_checksum_ok(&r1.packet, &r2.packet), "the reassembled datagram's checksum holds");
        let out = parse_checked_v4(&r1.packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 5353));

        let reply = testrun::udp4((BACKEND, 5353), (CLIENT, 42000), &payload);
        let (g1, g2) = testrun::fragments(&reply, 0x4321, 400);
        let s1 = fx.run(Hook::FromPod, backend_link, &g1);
        let s2 = fx.run(Hook::FromPod, backend_link, &g2);
        assert_eq!((parse_checked_v4(&s1.packet).src, parse_checked_v4(&s2.packet).src), (VIP, VIP), "reply fragments come from the VIP");
        assert!(udp_checksum_ok(&s1.packet, &s2.packet));
    });
}

#[test]
fn a_fragmented_syn_to_a_denied_port_never_passes_and_orphans_are_dropped() {
    with(DatapathConfig::DEFAULT, |fx| {
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V4(BACKEND), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: false });
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_INGRESS, identity: ID_ANY, proto: 6, port: 80, port_bits: 16 }, PolicyValue::allow(1));
        fx.policy(&s);
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        let syn = testrun::tcp4((CLIENT, 40000), (BACKEND, 22), true, &[0x41; 40]);
        let (f1, f2) = testrun::fragments(&syn, 0x77, 24);
        for (hook, link) in [(Hook::FromPod, fx.ns_lo), (Hook::ToPod, backend_link)] {
            assert_eq!(fx.run(hook, link, &f1).verdict, TC_ACT_SHOT, "{hook:?}: the first fragment is judged and denied");
            assert_eq!(fx.run(hook, link, &f2).verdict, TC_ACT_SHOT, "{hook:?}: its later fragment has nothing to ride");
        }
        assert_eq!(fx.drops(DropReason::PolicyDenied), 2);
        assert_eq!(fx.drops(DropReason::FragmentUnknown), 2);
        // An allowed port: both fragments pass.
        let ok = testrun::tcp4((CLIENT, 40001), (BACKEND, 80), true, &[0x41; 40]);
        let (g1, g2) = testrun::fragments(&ok, 0x78, 24);
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &g1).verdict, TC_ACT_OK);
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &g2).verdict, TC_ACT_OK);
        // A later fragment of a datagram never seen.
        let (_, orphan) = testrun::fragments(&testrun::udp4((CLIENT, 4), (BACKEND, 80), &[0; 64]), 0x99, 32);
        assert_eq!(fx.run(Hook::ToPod, backend_link, &orphan).verdict, TC_ACT_SHOT);
        assert_eq!(fx.drops(DropReason::FragmentUnknown), 3);
    });
}

// ------------------------------------------------------------ ICMP errors

#[test]
fn icmp_errors_of_service_flows_are_translated_like_their_flow() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        let q = testrun::udp4((CLIENT, 43000), (VIP, 53), b"query");
        let dnat = fx.run(Hook::FromPod, fx.ns_lo, &q).packet; // CLIENT:43000 → BACKEND:5353

        // The backend's kernel answers with port unreachable.
        let err = testrun::icmp4_error(BACKEND, CLIENT, 3, 3, 0, &dnat);
        let run = fx.run(Hook::FromPod, backend_link, &err);
        assert_ne!(run.verdict, TC_ACT_SHOT);
        let (outer, quoted) = parse_checked_icmp_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (VIP, CLIENT), "the error comes from the service");
        assert_eq!(quoted, Quoted { src: CLIENT, dst: VIP, proto: 17, sport: 43000, dport: 53 }, "about the client's own packet");

        // A router on the path (the node) says fragmentation needed.
        let frag = testrun::icmp4_error(NODE, CLIENT, 3, 4, 1200, &dnat);
        let run = fx.run(Hook::ToPod, fx.ns_lo, &frag);
        assert_eq!(run.verdict, TC_ACT_OK);
        let (outer, quoted) = parse_checked_icmp_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (NODE, CLIENT), "a router's error keeps the router as source");
        assert_eq!((quoted.dst, quoted.dport), (VIP, 53));

        // The client's kernel refuses a reply (its socket closed).
        let reply = testrun::udp4((VIP, 53), (CLIENT, 43000), b"late");
        let err = testrun::icmp4_error(CLIENT, VIP, 3, 3, 0, &reply);
        let run = fx.run(Hook::FromPod, fx.ns_lo, &err);
        assert_ne!(run.verdict, TC_ACT_SHOT);
        let (outer, quoted) = parse_checked_icmp_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (CLIENT, BACKEND), "the backend hears about its own packet");
        assert_eq!(quoted, Quoted { src: BACKEND, dst: CLIENT, proto: 17, sport: 5353, dport: 43000 });
    });
}

#[test]
fn icmp_errors_quoting_no_tracked_flow_are_dropped_under_a_policy() {
    with(DatapathConfig::DEFAULT, |fx| {
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V4(CLIENT), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: true });
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_EGRESS, identity: ID_ANY, proto: 17, port: 53, port_bits: 16 }, PolicyValue::allow(1));
        fx.policy(&s);
        let q = testrun::udp4((CLIENT, 44000), (BACKEND, 53), b"q");
        assert_eq!(fx.run(Hook::FromPod, fx.ns_lo, &q).verdict, TC_ACT_OK, "allowed and tracked");
        let related = testrun::icmp4_error(BACKEND, CLIENT, 3, 3, 0, &q);
        assert_eq!(fx.run(Hook::ToPod, fx.ns_lo, &related).verdict, TC_ACT_OK, "an error about the client's flow");
        let unrelated = testrun::icmp4_error(EVIL, CLIENT, 3, 3, 0, &testrun::udp4((CLIENT, 1), (EVIL, 9), b"never sent"));
        assert_eq!(fx.run(Hook::ToPod, fx.ns_lo, &unrelated).verdict, TC_ACT_SHOT, "an error about nothing the client did");
        let ttl = testrun::icmp4_error(EVIL, CLIENT, 11, 0, 0, &testrun::tcp4((CLIENT, 5), (EVIL, 22), true, b""));
        assert_eq!(fx.run(Hook::ToPod, fx.ns_lo, &ttl).verdict, TC_ACT_SHOT);
        assert_eq!(fx.drops(DropReason::IcmpUnrelated), 2);
    });
}

#[test]
fn icmp_echo_to_a_service_ip_is_rejected_as_kube_proxy_does() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let run = fx.run(Hook::FromPod, fx.ns_lo, &testrun::icmp4_echo(CLIENT, VIP, 7, 1));
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "answered at once, back into the pod");
        let (outer, quoted) = parse_checked_icmp_error(&run.packet);
        assert_eq!((outer.src, outer.dst), (VIP, CLIENT));
        assert_eq!((outer.l4[0], outer.l4[1]), (3, 3), "port unreachable, as nftables' reject");
        assert_eq!((quoted.src, quoted.dst, quoted.proto), (CLIENT, VIP, 1));
        assert_eq!(fx.drops(DropReason::UnsupportedProtoToVip), 1);
    });
}

// -------------------------------------------------------------- conntrack

#[test]
fn a_flow_that_lost_one_half_to_eviction_rebuilds_it() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        syn_to_vip(fx, 45000);
        let mut ct = fx.ct();
        assert_eq!(ct.flush(|k, _| k.kind == CT_SVC_REV), 1, "the reverse half is gone");
        fx.run(Hook::FromPod, fx.ns_lo, &testrun::tcp4((CLIENT, 45000), (VIP, 80), false, b"data"));
        let out = parse_checked_v4(&fx.run(Hook::FromPod, backend_link, &testrun::tcp4((BACKEND, 8080), (CLIENT, 45000), false, b"reply")).packet);
        assert_eq!((out.src, out.sport), (VIP, 80), "the reply is translated: the reverse half was rebuilt");
        assert_eq!(ct.flush(|k, _| k.kind == CT_SVC_FWD), 1, "now the forward half goes");
        let out = parse_checked_v4(&fx.run(Hook::FromPod, backend_link, &testrun::tcp4((BACKEND, 8080), (CLIENT, 45000), false, b"more")).packet);
        assert_eq!(out.src, VIP);
        let out = parse_checked_v4(&fx.run(Hook::FromPod, fx.ns_lo, &testrun::tcp4((CLIENT, 45000), (VIP, 80), false, b"ack")).packet);
        assert_eq!((out.dst, out.dport), (BACKEND, 8080));
        assert_eq!(fx.ct_stat(CtStat::HalfRebuilt), 2);
        assert_eq!(ct.entries().len(), 2);
    });
}

#[test]
fn one_client_port_to_two_vips_sharing_a_backend_gets_a_remapped_port() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("vip 1");
        fx.lb.upsert(&cluster_ip(VIP2, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("vip 2");
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        let a = syn_to_vip(fx, 46000);
        let run = fx.run(Hook::FromPod, fx.ns_lo, &testrun::tcp4((CLIENT, 46000), (VIP2, 80), true, b""));
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "to the backend's link");
        let b = parse_checked_v4(&run.packet);
        assert_eq!(a.sport, 46000);
        assert_ne!(b.sport, 46000, "the second flow's reply tuple was taken: its source port is remapped");
        assert_eq!(fx.ct_stat(CtStat::PortRemapped), 1);
        for (port, vip) in [(a.sport, VIP), (b.sport, VIP2)] {
            let out = parse_checked_v4(&fx.run(Hook::FromPod, backend_link, &testrun::tcp4((BACKEND, 8080), (CLIENT, port), false, b"r")).packet);
            assert_eq!((out.src, out.sport, out.dport), (vip, 80, 46000), "each reply reaches its own flow");
        }
        let again = parse_checked_v4(&fx.run(Hook::FromPod, fx.ns_lo, &testrun::tcp4((CLIENT, 46000), (VIP2, 80), false, b"d")).packet);
        assert_eq!(again.sport, b.sport, "the flow keeps its port");
    });
}

#[test]
fn two_cpus_creating_the_same_flow_end_with_one_backend() {
    use weir_datapath::lb::spec::Selection;
    with(DatapathConfig::DEFAULT, |fx| {
        let backends: Vec<(Ipv4Addr, u16)> = (10..26).map(|i| (Ipv4Addr::new(10, 244, 1, i), 8080)).collect();
        let mut spec = cluster_ip(VIP, 53, Protocol::Udp, &backends);
        spec.selection = Selection::Random;
        fx.lb.upsert(&spec).expect("upsert");
        let prog = fx.prog(Hook::FromPod);
        let flows = 300u16;
        let barrier = std::sync::Barrier::new(2);
        // Threads start in this thread's namespace (test runs use its lo).
        let seen: Vec<Vec<Ipv4Addr>> = std::thread::scope(|sc| {
            let threads: Vec<_> = (0..2)
                .map(|cpu| {
                    let barrier = &barrier;
                    sc.spawn(move || {
                        pin_to_cpu(cpu);
                        let mut out = Vec::new();
                        for i in 0..flows {
                            let q = testrun::udp4((CLIENT, 20000 + i), (VIP, 53), b"q");
                            barrier.wait();
                            out.push(parse_checked_v4(&testrun::run(prog, &q).expect("test_run").packet).dst);
                        }
                        out
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("thread")).collect()
        });
        let ct = fx.ct().entries();
        for (i, (a, b)) in seen[0].iter().zip(&seen[1]).enumerate() {
            assert_eq!(a, b, "flow {i}: both CPUs sent it to one backend");
            let port = (20000 + i as u16).to_be();
            let revs = ct.iter().filter(|(k, _)| k.kind == CT_SVC_REV && k.dport == port).count();
            assert_eq!(revs, 1, "flow {i}: exactly one reverse entry");
        }
    });
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % 2, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn a_syn_over_a_closed_service_flow_gets_a_fresh_policy_verdict() {
    with(DatapathConfig::DEFAULT, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 80, Protocol::Tcp, &[(BACKEND, 8080)])).expect("upsert");
        let backend_link = fx.link("weirbackend", &[BACKEND.into()]);
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V4(BACKEND), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: false });
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_INGRESS, identity: ID_ANY, proto: 6, port: 8080, port_bits: 16 }, PolicyValue::allow(1));
        fx.policy(&s);
        syn_to_vip(fx, 47000);
        let mut rst = testrun::tcp4((BACKEND, 8080), (CLIENT, 47000), false, b"");
        rst[14 + 20 + 13] = 0x14;
        fx.run(Hook::FromPod, backend_link, &rst);
        // The backend's ingress now admits nobody.
        s.entries.clear();
        fx.policy(&s);
        let again = fx.run(Hook::FromPod, fx.ns_lo, &testrun::tcp4((CLIENT, 47000), (VIP, 80), true, b""));
        assert_eq!(again.verdict, TC_ACT_SHOT, "a reused tuple is a new connection, judged by today's policy");
    });
}

#[test]
fn affinity_never_sends_new_connections_to_an_unready_endpoint() {
    with(DatapathConfig::DEFAULT, |fx| {
        let (b1, b2) = (Ipv4Addr::new(10, 244, 0, 21), Ipv4Addr::new(10, 244, 0, 22));
        let mut spec = cluster_ip(VIP, 80, Protocol::Tcp, &[(b1, 8080), (b2, 8080)]);
        spec.affinity_timeout_s = Some(600);
        fx.lb.upsert(&spec).expect("upsert");
        let first = syn_to_vip(fx, 48000).dst;
        assert_eq!(syn_to_vip(fx, 48001).dst, first, "affinity holds");
        let other = if first == b1 { b2 } else { b1 };
        spec.endpoints = vec![endpoint(first, 8080, false, true, false), endpoint(other, 8080, true, true, false)];
        fx.lb.upsert(&spec).expect("first turns unready");
        for p in 48002..48010 {
            assert_eq!(syn_to_vip(fx, p).dst, other, "affinity does not override readiness");
        }
    });
}

#[test]
fn the_collector_never_deletes_an_entry_revived_after_its_scan() {
    let cfg = DatapathConfig { ct_udp_timeout_s: 1, ..DatapathConfig::DEFAULT };
    with(cfg, |fx| {
        fx.lb.upsert(&cluster_ip(VIP, 53, Protocol::Udp, &[(BACKEND, 5353)])).expect("upsert");
        let q = testrun::udp4((CLIENT, 49000), (VIP, 53), b"q");
        fx.run(Hook::FromPod, fx.ns_lo, &q);
        // A 1 s timeout lives 1 to 2 s (entries keep whole seconds).
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let mut ct = fx.ct();
        let scan = ct.entries(); // both entries dead
        fx.run(Hook::FromPod, fx.ns_lo, &q); // the flow comes back meanwhile
        let out = ct.collect(scan, monotonic_ns());
        assert_eq!(out.deleted, 0, "what the scan saw dead is alive again: {out:?}");
        assert_eq!(ct.entries().len(), 2);
    });
}
