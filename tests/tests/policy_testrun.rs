//! The policy path on crafted packets (BPF_PROG_TEST_RUN): verdicts,
//! port ranges, return traffic riding conntrack, and the verdict events
//! the datapath writes to its ring buffer.

use std::net::{IpAddr, Ipv4Addr};

use aya::maps::{MapData, RingBuf};
use weir_common::{
    config::DatapathConfig,
    drop::DropReason,
    event::{DatapathEvent, ALLOW_RULE, EVENT_POLICY_VERDICT, VERDICT_ALLOW, VERDICT_DENY},
    maps::EVENTS,
    policy::{IpInfo, PolicyValue, DIR_EGRESS, DIR_INGRESS, ID_ANY, ID_WORLD, PV_AUDIT, PV_DENY, PV_LOG},
};
use weir_datapath::{attach::Hook, pinned, policy::PolicyMaps, stats::read_drops, PinLayout, PodDatapath};
use weir_desired::policy::{EndpointSpec, PolicyEntry, PolicyState, Prefix};
use weir_tests::{names, node::BpffsDir, privileged, testrun};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 3);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const SERVER_ID: u32 = 300;
const CLIENT_ID: u32 = 301;

struct Dp {
    _dir: BpffsDir,
    dp: PodDatapath,
    layout: PinLayout,
}

fn entry(endpoint: u32, direction: u8, identity: u32, proto: u8, port: u16, port_bits: u8) -> PolicyEntry {
    PolicyEntry { endpoint, direction, identity, proto, port, port_bits }
}

/// The server (endpoint 1) is isolated for ingress and admits the client
/// on TCP 80 and anyone on TCP 1000-2000; the client (endpoint 2) is
/// isolated for egress and may only reach the server.
fn setup(cfg: DatapathConfig) -> Dp {
    privileged::require();
    let dir = BpffsDir::new(&format!("/sys/fs/bpf/{}", names::unique("weirpt")));
    let layout = PinLayout::new(&dir.path);
    let mut dp = PodDatapath::load(&layout).expect("load pod object");
    dp.set_config(&cfg).expect("config");
    let mut s = PolicyState::default();
    s.endpoints.insert(IpAddr::V4(SERVER), EndpointSpec { id: 1, identity: SERVER_ID, ingress_isolated: true, egress_isolated: false });
    s.endpoints.insert(IpAddr::V4(CLIENT), EndpointSpec { id: 2, identity: CLIENT_ID, ingress_isolated: false, egress_isolated: true });
    s.ipcache.insert(Prefix::host(IpAddr::V4(SERVER)), IpInfo { identity: SERVER_ID, cidr_identity: ID_WORLD });
    s.ipcache.insert(Prefix::host(IpAddr::V4(CLIENT)), IpInfo { identity: CLIENT_ID, cidr_identity: ID_WORLD });
    s.entries.insert(entry(1, DIR_INGRESS, CLIENT_ID, 6, 80, 16), PolicyValue::allow(7));
    weir_logic::policy::port_blocks(1000, 2000, |base, bits| {
        s.entries.insert(entry(1, DIR_INGRESS, ID_ANY, 6, base, bits), PolicyValue::allow(8));
    });
    // Port 1500 is carved out by a Deny (rule 10), which an audit-mode
    // policy (rule 11) would allow; port 1600 is allowed and logged (rule 12).
    s.entries.insert(entry(1, DIR_INGRESS, ID_ANY, 6, 1500, 16), PolicyValue { rule: 10, flags: PV_DENY | PV_AUDIT, note_rule: 11, _pad: 0 });
    s.entries.insert(entry(1, DIR_INGRESS, ID_ANY, 6, 1600, 16), PolicyValue { rule: 8, flags: PV_LOG, note_rule: 12, _pad: 0 });
    s.entries.insert(entry(2, DIR_EGRESS, SERVER_ID, 0, 0, 0), PolicyValue::allow(9));
    let mut maps = PolicyMaps::open(&layout).expect("open policy maps");
    let w = maps.transition(&s, &s, &s);
    assert!(w.errors.is_empty(), "{:?}", w.errors);
    assert_eq!(maps.read(), s, "the maps hold exactly the desired state");
    testrun::own_sources(&layout, testrun::TEST_RUN_IFINDEX, &[SERVER.into(), CLIENT.into()]);
    Dp { _dir: dir, dp, layout }
}

fn run(d: &Dp, hook: Hook, pkt: &[u8]) -> i32 {
    testrun::run(d.dp.program(hook).expect("program"), pkt).expect("test_run").verdict
}

/// A packet from outside the node into a pod: to_pod, seen as one that
/// entered the node on an uplink (`ingress_ifindex` 1, not the node's own).
fn run_from_outside(d: &Dp, pkt: &[u8]) -> i32 {
    let prog = d.dp.program(Hook::ToPod).expect("program");
    testrun::run_from(prog, pkt, testrun::TEST_RUN_IFINDEX, 1).expect("test_run").verdict
}

fn events(d: &Dp) -> Vec<DatapathEvent> {
    let map = pinned::open(&d.layout, EVENTS).expect("events map");
    let mut ring: RingBuf<MapData> = RingBuf::try_from(map).expect("ring buffer");
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        let bytes: &[u8] = &item;
        assert!(bytes.len() >= std::mem::size_of::<DatapathEvent>());
        // SAFETY: a whole DatapathEvent record, read unaligned.
        out.push(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DatapathEvent>()) });
    }
    out
}

fn policy_drops(d: &Dp) -> u64 {
    read_drops(&d.layout).expect("drops").into_iter().find(|(r, _)| *r == DropReason::PolicyDenied).map_or(0, |(_, n)| n)
}

#[test]
fn an_allowed_flow_passes_and_its_replies_ride_conntrack() {
    let d = setup(DatapathConfig::DEFAULT);
    let syn = testrun::tcp4((CLIENT, 40000), (SERVER, 80), true, b"");
    // Both are pods of this node: what passes is redirected to the
    // server's link (`fwd::between_pods_v4`; with no frame header learned
    // here, to its egress, `bpf_redirect_neigh`, not yet into the pod).
    assert_eq!(run(&d, Hook::FromPod, &syn), testrun::TC_ACT_REDIRECT, "client egress and server ingress both allow");
    // The server's reply: the server is not egress-isolated, the client is
    // ingress-open; the reply passes either way, and the flow is tracked.
    let reply = testrun::tcp4((SERVER, 80), (CLIENT, 40000), false, b"");
    assert_eq!(run(&d, Hook::FromPod, &reply), testrun::TC_ACT_REDIRECT);
    assert!(events(&d).is_empty(), "allows are not reported by default");
    assert_eq!(policy_drops(&d), 0);
}

#[test]
fn a_denied_flow_is_dropped_counted_and_reported_with_its_tuple() {
    let d = setup(DatapathConfig::DEFAULT);
    let syn = testrun::tcp4((CLIENT, 40001), (SERVER, 81), true, b"");
    assert_eq!(run(&d, Hook::FromPod, &syn), testrun::TC_ACT_SHOT, "server ingress admits the client on 80 only");
    assert_eq!(policy_drops(&d), 1);
    let ev = events(&d);
    assert_eq!(ev.len(), 1, "{ev:?}");
    let e = ev[0];
    assert_eq!(e.kind, EVENT_POLICY_VERDICT);
    assert_eq!((e.saddr, e.daddr), (CLIENT.into(), SERVER.into()));
    assert_eq!((u16::from_be(e.sport), u16::from_be(e.dport), e.proto), (40001, 81, 6));
    assert_eq!((e.direction, e.verdict, e.endpoint, e.peer_identity), (DIR_INGRESS, VERDICT_DENY, 1, CLIENT_ID));
    assert_eq!(e.reason, DropReason::PolicyDenied as u32);
    assert_eq!(e.ifindex, 1, "the interface the program ran on (test runs use lo)");

    // Egress: the client may only reach the server.
    let out = testrun::udp4((CLIENT, 40002), (OUTSIDE, 53), b"q");
    assert_eq!(run(&d, Hook::FromPod, &out), testrun::TC_ACT_SHOT);
    let e = events(&d)[0];
    assert_eq!((e.direction, e.endpoint, e.peer_identity, e.proto), (DIR_EGRESS, 2, ID_WORLD, 17));
    assert_eq!(policy_drops(&d), 2);
}

#[test]
fn port_ranges_cover_exactly_their_ports() {
    let d = setup(DatapathConfig::DEFAULT);
    for (port, want) in [(999u16, testrun::TC_ACT_SHOT), (1000, testrun::TC_ACT_OK), (1499, testrun::TC_ACT_OK), (1501, testrun::TC_ACT_OK), (2000, testrun::TC_ACT_OK), (2001, testrun::TC_ACT_SHOT)] {
        let syn = testrun::tcp4((OUTSIDE, 40000 + port), (SERVER, port), true, b"");
        // OUTSIDE is not a local pod: only the server's ingress applies.
        assert_eq!(run_from_outside(&d, &syn), want, "port {port}");
    }
}

#[test]
fn sampled_allows_are_reported_with_the_rule() {
    let d = setup(DatapathConfig { allow_event_sample: 1, ..DatapathConfig::DEFAULT });
    let syn = testrun::tcp4((CLIENT, 40003), (SERVER, 80), true, b"");
    assert_eq!(run(&d, Hook::FromPod, &syn), testrun::TC_ACT_REDIRECT, "to a pod of this node");
    let ev = events(&d);
    // Both ends judged: the client's egress (rule 9), the server's ingress (rule 7).
    let got: Vec<(u8, u8, u32, u32)> = ev.iter().map(|e| (e.direction, e.verdict, e.rule, e.reason)).collect();
    assert_eq!(got, vec![(DIR_EGRESS, VERDICT_ALLOW, 9, ALLOW_RULE as u32), (DIR_INGRESS, VERDICT_ALLOW, 7, ALLOW_RULE as u32)]);
}

#[test]
fn deny_entries_drop_and_log_and_audit_flags_are_always_reported() {
    // Allow events are not sampled: only the flags make these reported.
    let d = setup(DatapathConfig::DEFAULT);
    let syn = testrun::tcp4((OUTSIDE, 41500), (SERVER, 1500), true, b"");
    assert_eq!(run_from_outside(&d, &syn), testrun::TC_ACT_SHOT, "a deny entry inside an allowed range");
    let syn = testrun::tcp4((OUTSIDE, 41600), (SERVER, 1600), true, b"");
    assert_eq!(run_from_outside(&d, &syn), testrun::TC_ACT_OK, "a logged allow");
    let got: Vec<(u8, u32, u16, u32)> = events(&d).iter().map(|e| (e.verdict, e.rule, e.flags, e.note_rule)).collect();
    assert_eq!(got, vec![(VERDICT_DENY, 10, PV_AUDIT as u16, 11), (VERDICT_ALLOW, 8, PV_LOG as u16, 12)]);
    assert_eq!(policy_drops(&d), 1);
}
