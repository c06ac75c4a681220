//! BPF_PROG_TEST_RUN on crafted IPv6 packets through the pod object: IPv6
//! is judged by network policy exactly as IPv4 is, and what only IPv6 has
//! (neighbour discovery, MLD, link-local scope, ICMPv6 errors, fragment
//! headers) cannot be used to get around it.
//!
//! The pod under policy ("iso", on lo) owns `ISO`; it is isolated both
//! ways, admits TCP 80 from anyone and may send UDP 53 anywhere. A second
//! link ("open") owns `OPEN`, under no policy.

use std::net::{IpAddr, Ipv6Addr};

use weir_common::{
    config::DatapathConfig,
    drop::DropReason,
    policy::{IpInfo, PolicyValue, DIR_EGRESS, DIR_INGRESS, ID_ANY, ID_WORLD},
};
use weir_datapath::{attach::Hook, policy::PolicyMaps, stats::read_drops, PinLayout, PodDatapath};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};
use weir_tests::testrun::{self, ip6, TC_ACT_OK, TC_ACT_SHOT, TEST_RUN_IFINDEX};

const ISO: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const OPEN: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 6);
const REMOTE: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xbeef, 0, 0, 0, 0, 0, 9);
const ISO_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const NODE_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// to_pod runs see their packet as one that came in on another interface.
const UPLINK_IFINDEX: u32 = 1;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const FRAGMENT: u8 = 44;

struct Fx {
    dp: PodDatapath,
    layout: PinLayout,
    open: u32,
}

impl Fx {
    fn run(&self, hook: Hook, ifindex: u32, pkt: &[u8]) -> i32 {
        let ingress = if hook == Hook::ToPod { UPLINK_IFINDEX } else { 0 };
        testrun::run_from(self.dp.program(hook).expect("program"), pkt, ifindex, ingress).expect("test_run").verdict
    }

    fn sent_by_iso(&self, pkt: &[u8]) -> i32 {
        self.run(Hook::FromPod, TEST_RUN_IFINDEX, pkt)
    }

    fn to_iso(&self, pkt: &[u8]) -> i32 {
        self.run(Hook::ToPod, TEST_RUN_IFINDEX, pkt)
    }

    fn drops(&self, reason: DropReason) -> u64 {
        read_drops(&self.layout).expect("drops").into_iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| n)
    }
}

fn with(f: impl FnOnce(&mut Fx) + Send + 'static) {
    testrun::in_fresh_datapath(weir_datapath::LoadOptions::default(), move |layout, mut dp| {
        let layout = layout.clone();
        dp.set_config(&DatapathConfig::DEFAULT).expect("config");
        testrun::own_sources(&layout, TEST_RUN_IFINDEX, &[ISO.into()]);
        let mut s = PolicyState::default();
        s.endpoints.insert(IpAddr::V6(ISO), EndpointSpec { id: 1, identity: 401, ingress_isolated: true, egress_isolated: true });
        s.ipcache.insert(Prefix::host(IpAddr::V6(ISO)), IpInfo { identity: 401, cidr_identity: ID_WORLD });
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_INGRESS, identity: ID_ANY, proto: TCP, port: 80, port_bits: 16 }, PolicyValue::allow(1));
        s.entries.insert(PolicyEntry { endpoint: 1, direction: DIR_EGRESS, identity: ID_ANY, proto: UDP, port: 53, port_bits: 16 }, PolicyValue::allow(2));
        let mut maps = PolicyMaps::open(&layout).expect("policy maps");
        let old = maps.read();
        let w = maps.transition(&old, &s, &s);
        assert!(w.errors.is_empty(), "{:?}", w.errors);
        let peer = "weirv6open";
        weir_tests::cmd::output(&["ip", "link", "add", peer, "type", "veth", "peer", "name", "weirv6openp"]);
        let c = std::ffi::CString::new(peer).expect("name");
        // SAFETY: a valid C string; the call only reads it.
        let open = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(open, 0);
        testrun::own_sources(&layout, open, &[OPEN.into()]);
        let mut fx = Fx { dp, layout, open };
        f(&mut fx);
    });
}

/// An ICMPv6 message of `ty` with a 4-byte body after the checksum and
/// then `rest`.
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, ty: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(rest);
    ip6(src, dst, ICMPV6, hop, &m)
}

fn tcp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), syn: bool) -> Vec<u8> {
    testrun::tcp6(src, dst, syn, b"")
}

fn udp(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16)) -> Vec<u8> {
    testrun::udp6(src, dst, b"q")
}

/// The IPv6 packet of a frame (what an ICMPv6 error quotes).
fn quoted(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

#[test]
fn tcp_and_udp_over_ipv6_are_judged_by_the_pods_rules_and_replies_pass() {
    with(|fx| {
        assert_eq!(fx.to_iso(&tcp((REMOTE, 40000), (ISO, 80), true)), TC_ACT_OK, "ingress TCP 80 is allowed");
        assert_eq!(fx.sent_by_iso(&tcp((ISO, 80), (REMOTE, 40000), false)), TC_ACT_OK, "its reply passes");
        assert_eq!(fx.to_iso(&tcp((REMOTE, 40000), (ISO, 80), false)), TC_ACT_OK, "and the rest of the flow");
        assert_eq!(fx.to_iso(&tcp((REMOTE, 40001), (ISO, 22), true)), TC_ACT_SHOT, "ingress TCP 22 is not");
        assert_eq!(fx.to_iso(&udp((REMOTE, 40001), (ISO, 80))), TC_ACT_SHOT, "nor UDP 80");
        assert_eq!(fx.sent_by_iso(&udp((ISO, 5000), (REMOTE, 53))), TC_ACT_OK, "egress UDP 53 is allowed");
        assert_eq!(fx.to_iso(&udp((REMOTE, 53), (ISO, 5000))), TC_ACT_OK, "its answer passes");
        assert_eq!(fx.sent_by_iso(&tcp((ISO, 5001), (REMOTE, 443), true)), TC_ACT_SHOT, "egress TCP 443 is not allowed");
        assert_eq!(fx.drops(DropReason::PolicyDenied), 3);
        // Echo is a flow keyed by its identifier, allowed by no rule here.
        assert_eq!(fx.sent_by_iso(&testrun::icmp6_echo(ISO, REMOTE, 7, 1)), TC_ACT_SHOT, "echo out of an isolated pod");
        assert_eq!(fx.to_iso(&testrun::icmp6_echo(REMOTE, ISO, 7, 1)), TC_ACT_SHOT, "echo into it");
        assert_eq!(fx.drops(DropReason::PolicyDenied), 5);
        // The pod under no policy is not judged.
        assert_eq!(fx.run(Hook::FromPod, fx.open, &tcp((OPEN, 5000), (REMOTE, 22), true)), TC_ACT_OK);
        assert_eq!(fx.run(Hook::ToPod, fx.open, &testrun::icmp6_echo(REMOTE, OPEN, 7, 1)), TC_ACT_OK);
    });
}

#[test]
fn neighbour_discovery_passes_only_as_the_link_allows_it() {
    with(|fx| {
        let ns = icmp6(ISO_LL, NODE_LL, 255, 135, &NODE_LL.octets());
        assert_eq!(fx.sent_by_iso(&ns), TC_ACT_OK, "a neighbour solicitation from an isolated pod");
        let na = icmp6(NODE_LL, ISO_LL, 255, 136, &NODE_LL.octets());
        assert_eq!(fx.to_iso(&na), TC_ACT_OK, "the node's advertisement back");
        let rs = icmp6(ISO_LL, "ff02::2".parse().expect("v6"), 255, 133, &[]);
        assert_eq!(fx.sent_by_iso(&rs), TC_ACT_OK, "a router solicitation");
        let report = icmp6(ISO_LL, "ff02::16".parse().expect("v6"), 1, 143, &[]);
        assert_eq!(fx.sent_by_iso(&report), TC_ACT_OK, "an MLDv2 report");

        let ra = icmp6(ISO_LL, "ff02::1".parse().expect("v6"), 255, 134, &[0; 8]);
        assert_eq!(fx.sent_by_iso(&ra), TC_ACT_SHOT, "a router advertisement from a pod");
        assert_eq!(fx.run(Hook::FromPod, fx.open, &ra), TC_ACT_SHOT, "from any pod");
        let redirect = icmp6(ISO_LL, NODE_LL, 255, 137, &[0; 32]);
        assert_eq!(fx.sent_by_iso(&redirect), TC_ACT_SHOT, "a redirect from a pod");
        let query = icmp6(ISO_LL, "ff02::1".parse().expect("v6"), 1, 130, &[0; 20]);
        assert_eq!(fx.sent_by_iso(&query), TC_ACT_SHOT, "an MLD query from a pod");
        let routed_ns = icmp6(ISO, NODE_LL, 64, 135, &NODE_LL.octets());
        assert_eq!(fx.sent_by_iso(&routed_ns), TC_ACT_SHOT, "a solicitation whose hop limit is not 255 (it crossed a router)");
        let mut frag_ns = vec![ICMPV6, 0, 0, 1, 0, 0, 0, 9];
        frag_ns.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        frag_ns.extend_from_slice(&NODE_LL.octets());
        assert_eq!(fx.sent_by_iso(&ip6(ISO_LL, NODE_LL, FRAGMENT, 255, &frag_ns)), TC_ACT_SHOT, "a fragmented solicitation (RFC 6980)");
        assert_eq!(fx.drops(DropReason::Ipv6LinkControl), 6);
    });
}

#[test]
fn link_local_scope_does_not_get_around_isolation() {
    with(|fx| {
        // TCP and UDP to the node's link-local address, from the pod's own
        // link-local address or its routed one: no rule can name them.
        assert_eq!(fx.sent_by_iso(&tcp((ISO_LL, 5000), (NODE_LL, 22), true)), TC_ACT_SHOT, "from link-local scope");
        assert_eq!(fx.sent_by_iso(&udp((ISO, 5000), (NODE_LL, 53))), TC_ACT_SHOT, "to link-local scope, on a port egress allows");
        assert_eq!(fx.sent_by_iso(&udp((ISO, 5000), ("ff02::fb".parse().expect("v6"), 5353))), TC_ACT_SHOT, "to a link multicast group");
        assert_eq!(fx.to_iso(&tcp((NODE_LL, 5000), (ISO_LL, 80), true)), TC_ACT_SHOT, "into it, to its link-local address");
        assert_eq!(fx.drops(DropReason::Ipv6Isolated), 4);
        // A pod under no policy keeps its link-local traffic.
        let open_ll: Ipv6Addr = "fe80::6".parse().expect("v6");
        assert_eq!(fx.run(Hook::FromPod, fx.open, &tcp((open_ll, 5000), (NODE_LL, 22), true)), TC_ACT_OK);
        // An address routed to the isolated pod's link that no endpoint
        // names (not in its podIPs) is not judged: it is dropped.
        let unlisted: Ipv6Addr = "fd00::99".parse().expect("v6");
        testrun::own_sources(&fx.layout, TEST_RUN_IFINDEX, &[ISO.into(), unlisted.into()]);
        assert_eq!(fx.sent_by_iso(&udp((unlisted, 5000), (REMOTE, 53))), TC_ACT_SHOT, "from an unlisted address");
        assert_eq!(fx.to_iso(&tcp((REMOTE, 40000), (unlisted, 80), true)), TC_ACT_SHOT, "to it");
        assert_eq!(fx.drops(DropReason::UnlistedAddress), 2);
        // And a packet for an address the pod does not hold at all.
        assert_eq!(fx.to_iso(&tcp((REMOTE, 40000), (OPEN, 80), true)), TC_ACT_SHOT);
        assert_eq!(fx.drops(DropReason::NotForPod), 1);
    });
}

#[test]
fn icmpv6_errors_must_quote_a_flow_the_policy_allowed() {
    with(|fx| {
        // The pod's DNS query is allowed and tracked: a router's packet too
        // big about it reaches the pod (path-MTU discovery works).
        let query = udp((ISO, 5000), (REMOTE, 53));
        assert_eq!(fx.sent_by_iso(&query), TC_ACT_OK);
        let router: Ipv6Addr = "fd00:ffff::1".parse().expect("v6");
        let ptb = |about: &[u8]| {
            let mut m = vec![2, 0, 0, 0];
            m.extend_from_slice(&1280u32.to_be_bytes());
            m.extend_from_slice(about);
            ip6(router, ISO, ICMPV6, 64, &m)
        };
        assert_eq!(fx.to_iso(&ptb(quoted(&query))), TC_ACT_OK, "packet too big about an allowed flow");
        // One about a flow never allowed is dropped: errors are no way in.
        let never = udp((ISO, 5001), (REMOTE, 9999));
        assert_eq!(fx.to_iso(&ptb(quoted(&never))), TC_ACT_SHOT, "about a flow the pod never had");
        // One quoting a packet the pod did not send is dropped too.
        let not_its = udp((OPEN, 5000), (REMOTE, 53));
        assert_eq!(fx.to_iso(&ptb(quoted(&not_its))), TC_ACT_SHOT, "about another pod's packet");
        assert_eq!(fx.drops(DropReason::IcmpUnrelated), 2);
        // A port unreachable the pod sends about a flow it admitted.
        let syn = tcp((REMOTE, 40000), (ISO, 80), true);
        assert_eq!(fx.to_iso(&syn), TC_ACT_OK);
        let mut unreach = vec![1, 4, 0, 0, 0, 0, 0, 0];
        unreach.extend_from_slice(quoted(&syn));
        assert_eq!(fx.sent_by_iso(&ip6(ISO, REMOTE, ICMPV6, 64, &unreach)), TC_ACT_OK, "an error about a flow the pod admitted");
        let mut forged = vec![1, 4, 0, 0, 0, 0, 0, 0];
        forged.extend_from_slice(quoted(&tcp((REMOTE, 40001), (ISO, 22), true)));
        assert_eq!(fx.sent_by_iso(&ip6(ISO, REMOTE, ICMPV6, 64, &forged)), TC_ACT_SHOT, "one about a flow it never admitted");
        // A quoted packet cut inside its header is malformed.
        let mut cut = vec![2, 0, 0, 0, 0, 0, 5, 0];
        cut.extend_from_slice(&quoted(&query)[..30]);
        assert_eq!(fx.to_iso(&ip6(router, ISO, ICMPV6, 64, &cut)), TC_ACT_SHOT);
        assert_eq!(fx.drops(DropReason::Malformed), 1);
    });
}

#[test]
fn fragments_ride_their_first_fragments_verdict() {
    with(|fx| {
        // UDP 53 out (allowed) and UDP 80 in (denied), each as a first
        // fragment (offset 0, more) and a later one (offset 8, the same id).
        let frag = |src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, id: u8, later: bool| {
            let mut p = vec![UDP, 0, 0, 0, 0, 0, 0, id];
            if later {
                p[2..4].copy_from_slice(&(8u16 << 3).to_be_bytes());
                p.extend_from_slice(&[0xaa; 16]);
            } else {
                p[3] = 1;
                p.extend_from_slice(&sport.to_be_bytes());
                p.extend_from_slice(&dport.to_be_bytes());
                p.extend_from_slice(&[0, 72, 0, 0]);
                p.extend_from_slice(&[0xaa; 56]);
            }
            ip6(src, dst, FRAGMENT, 64, &p)
        };
        assert_eq!(fx.sent_by_iso(&frag(ISO, REMOTE, 5000, 53, 1, false)), TC_ACT_OK, "an allowed first fragment");
        assert_eq!(fx.sent_by_iso(&frag(ISO, REMOTE, 0, 0, 1, true)), TC_ACT_OK, "its later fragment");
        assert_eq!(fx.to_iso(&frag(REMOTE, ISO, 5000, 80, 2, false)), TC_ACT_SHOT, "a denied first fragment");
        assert_eq!(fx.to_iso(&frag(REMOTE, ISO, 0, 0, 2, true)), TC_ACT_SHOT, "its later fragment");
        assert_eq!(fx.to_iso(&frag(REMOTE, ISO, 0, 0, 3, true)), TC_ACT_SHOT, "a later fragment of nothing seen");
        assert_eq!(fx.drops(DropReason::FragmentUnknown), 2);
    });
}
