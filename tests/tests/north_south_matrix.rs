//! North-south behaviour as one table, in both routing modes: for each of
//! NodePort, LB IP, externalIP and ClusterIP, from an external client (in
//! on node 0's uplink), from a pod and from the node itself, with
//! externalTrafficPolicy Cluster and Local, internalTrafficPolicy Local,
//! no endpoints, only terminating endpoints, and source ranges inside and
//! outside. Each row is asked twice: `weir explain` (with `--from-device
//! eth0`, `--from-host`, or from the pod) must name the verdict, the
//! frontend kind and entry, the masquerade and an allowed backend; then a
//! real connection from that place must land on an allowed backend, be
//! refused, or time out, and the backend must see the client's own
//! address exactly when no masquerade is expected.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use weir_tests::{
    north_south::{landed, service, world, World, CLIENT, CLIENT2},
    traffic::{tcp_request, tcp_request_from, tcp_server, Reply, DEFAULT_TIMEOUT},
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Place {
    /// An external client, into node 0's uplink `eth0`.
    Outside(Ipv4Addr),
    /// The client pod on node 0.
    Pod,
    /// A process of node 0 itself.
    Host,
}

#[derive(Clone, Copy, Debug)]
enum Want {
    /// Lands on these backends (every one of them, over the tries), with
    /// the client's address masqueraded to node 0's or kept.
    Lands { on: &'static [&'static str], masq: bool },
    /// Refused at once: TCP RST (EPERM at connect for the node's own).
    Refused,
    /// Dropped: the connection times out.
    TimesOut,
    /// Not a frontend: the node's own server answers, untouched.
    Untouched,
}

struct Row {
    what: &'static str,
    from: Place,
    dst: Ipv4Addr,
    port: u16,
    want: Want,
    /// The frontend kind `weir explain` names (None: not a frontend).
    kind: Option<&'static str>,
    /// The entry explain says serves the flow: `external` or `internal`.
    entry: &'static str,
}

const LB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);
const LB_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 81);
const LB_RANGED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 86);
const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
const EXT_IP_LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 81);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 84);
const VIP_TERMINATING: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 90);
const VIP_ITP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 91);
/// A port of node 0 that is no NodePort, where the node's own server
/// listens.
const HOST_PORT: u16 = 9999;

fn rows(node0: Ipv4Addr) -> Vec<Row> {
    use Place::*;
    use Want::*;
    let out = Outside(CLIENT);
    let both: &'static [&'static str] = &["a", "b"];
    let lands = |masq| Lands { on: both, masq };
    let row = |what, from, dst, port, want, kind, entry| Row { what, from, dst, port, want, kind, entry };
    vec![
        // externalTrafficPolicy: Cluster.
        row("outside -> NodePort, eTP Cluster", out, node0, 30080, lands(true), Some("NodePort"), "internal"),
        row("outside -> LB IP, eTP Cluster", out, LB, 80, lands(true), Some("LoadBalancer"), "internal"),
        row("outside -> externalIP, eTP Cluster", out, EXT_IP, 80, lands(true), Some("ExternalIP"), "internal"),
        row("outside -> ClusterIP routed to the node", out, VIP, 80, lands(true), Some("ClusterIP"), "internal"),
        row("pod -> NodePort, eTP Cluster", Pod, node0, 30080, lands(true), Some("NodePort"), "internal"),
        row("pod -> LB IP, eTP Cluster", Pod, LB, 80, lands(true), Some("LoadBalancer"), "internal"),
        row("pod -> ClusterIP", Pod, VIP, 80, lands(false), Some("ClusterIP"), "internal"),
        row("node -> NodePort", Host, node0, 30080, lands(false), Some("NodePort"), "internal"),
        row("node -> LB IP", Host, LB, 80, lands(false), Some("LoadBalancer"), "internal"),
        row("node -> ClusterIP", Host, VIP, 80, lands(false), Some("ClusterIP"), "internal"),
        // externalTrafficPolicy: Local.
        row("outside -> NodePort, eTP Local", out, node0, 30081, Lands { on: &["a"], masq: false }, Some("NodePort"), "external"),
        row("outside -> LB IP, eTP Local", out, LB_LOCAL, 80, Lands { on: &["a"], masq: false }, Some("LoadBalancer"), "external"),
        row("outside -> externalIP, eTP Local", out, EXT_IP_LOCAL, 80, Lands { on: &["a"], masq: false }, Some("ExternalIP"), "external"),
        row("outside -> NodePort, eTP Local, no local endpoint", out, node0, 30083, TimesOut, Some("NodePort"), "external"),
        row("pod -> NodePort, eTP Local", Pod, node0, 30081, lands(false), Some("NodePort"), "internal"),
        row("pod -> LB IP, eTP Local", Pod, LB_LOCAL, 80, lands(false), Some("LoadBalancer"), "internal"),
        row("pod -> NodePort, eTP Local, remote endpoint only", Pod, node0, 30083, Lands { on: &["b"], masq: false }, Some("NodePort"), "internal"),
        row("node -> LB IP, eTP Local", Host, LB_LOCAL, 80, lands(false), Some("LoadBalancer"), "internal"),
        // internalTrafficPolicy: Local, endpoint on node 1 only.
        row("pod -> ClusterIP, iTP Local, no local endpoint", Pod, VIP_ITP, 80, TimesOut, Some("ClusterIP"), "internal"),
        row("node -> ClusterIP, iTP Local, no local endpoint", Host, VIP_ITP, 80, Refused, Some("ClusterIP"), "internal"),
        row("outside -> NodePort of an iTP Local service", out, node0, 30091, Lands { on: &["b"], masq: true }, Some("NodePort"), "internal"),
        // No endpoints.
        row("outside -> NodePort, no endpoints", out, node0, 30084, Refused, Some("NodePort"), "internal"),
        row("pod -> NodePort, no endpoints", Pod, node0, 30084, Refused, Some("NodePort"), "internal"),
        row("node -> ClusterIP, no endpoints", Host, VIP_EMPTY, 80, Refused, Some("ClusterIP"), "internal"),
        // Only terminating endpoints: the fallback serves.
        row("outside -> NodePort, only terminating", out, node0, 30090, Lands { on: &["a"], masq: true }, Some("NodePort"), "internal"),
        row("pod -> ClusterIP, only terminating", Pod, VIP_TERMINATING, 80, Lands { on: &["a"], masq: false }, Some("ClusterIP"), "internal"),
        // loadBalancerSourceRanges: CLIENT only.
        row("outside (in range) -> LB IP", out, LB_RANGED, 80, lands(true), Some("LoadBalancer"), "internal"),
        row("outside (out of range) -> LB IP", Outside(CLIENT2), LB_RANGED, 80, TimesOut, Some("LoadBalancer"), "internal"),
        row("outside (out of range) -> NodePort of the ranged service", Outside(CLIENT2), node0, 30086, lands(true), Some("NodePort"), "internal"),
        row("pod (out of range) -> LB IP", Pod, LB_RANGED, 80, TimesOut, Some("LoadBalancer"), "internal"),
        row("node -> ranged LB IP (the node is allowed)", Host, LB_RANGED, 80, lands(false), Some("LoadBalancer"), "internal"),
        // Not a frontend.
        row("outside -> node port that is no NodePort", out, node0, HOST_PORT, Untouched, None, ""),
    ]
}

/// The extra Services of the table: one whose endpoint is terminating
/// (ready: false, serving: true), and an iTP Local NodePort whose only
/// endpoint is on node 1.
fn extra_services(w: &World) -> String {
    let (a_ip, b_ip) = (w.c.nodes[0].pod_ip(10), w.c.nodes[1].pod_ip(20));
    let (n0, n1) = (w.c.nodes[0].name().to_string(), w.c.nodes[1].name().to_string());
    let terminating = service("terminating", "NodePort", &VIP_TERMINATING.to_string(), 30090, "", None, &[(a_ip, &n0)], "TCP")
        .replace(&format!("  nodeName: {n0}\n"), &format!("  nodeName: {n0}\n  conditions: {{ready: false, serving: true, terminating: true}}\n"));
    let itp = service("itp-local", "NodePort", &VIP_ITP.to_string(), 30091, "  internalTrafficPolicy: Local\n", None, &[(b_ip, &n1)], "TCP");
    terminating + &itp
}

/// `weir explain` on node 0, as JSON.
fn explain(w: &World, from: Place, dst: Ipv4Addr, port: u16) -> serde_json::Value {
    let dst = format!("{dst}:{port}/tcp");
    let src;
    let mut args = vec!["explain", "-o", "json"];
    match from {
        Place::Outside(c) => {
            src = c.to_string();
            args.extend(["--from-device", "eth0", &src]);
        }
        Place::Pod => {
            src = w.client.ip.to_string();
            args.push(&src);
        }
        Place::Host => args.push("--from-host"),
    }
    args.push(&dst);
    let out = w.c.nodes[0].node.weir(&args);
    assert!(out.status.success(), "weir {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("weir {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// One real connection from `from`; the reply.
fn connect(w: &World, from: Place, dst: Ipv4Addr, port: u16, timeout: Duration) -> std::io::Result<Vec<u8>> {
    match from {
        Place::Outside(c) => tcp_request_from(&w.c.outside, c, dst, port, b"hi".to_vec(), timeout),
        Place::Pod => tcp_request(w.client.ns(), dst, port, b"hi".to_vec(), timeout),
        Place::Host => tcp_request(w.c.nodes[0].node.ns(), dst, port, b"hi".to_vec(), timeout),
    }
}

fn check_explain(w: &World, r: &Row, x: &serde_json::Value) {
    let node0 = w.c.nodes[0].ip.to_string();
    let ip_of = |name: &str| if name == "a" { w.c.nodes[0].pod_ip(10) } else { w.c.nodes[1].pod_ip(20) }.to_string();
    let want_verdict = match (r.want, r.kind) {
        (Want::Lands { .. }, _) => "forward",
        (Want::Refused, _) => "reject",
        (Want::TimesOut, _) => "drop",
        (Want::Untouched, _) => "pass",
    };
    assert_eq!(x["verdict"], want_verdict, "{}: explain's verdict: {x:#}", r.what);
    match r.kind {
        Some(kind) => {
            assert_eq!(x["service"]["kind"], kind, "{}: the frontend kind: {x:#}", r.what);
            assert_eq!(x["service"]["entry"], r.entry, "{}: the serving entry (eTP decision): {x:#}", r.what);
        }
        None => assert!(x["service"].is_null(), "{}: no frontend: {x:#}", r.what),
    }
    if let Want::Lands { on, masq } = r.want {
        let backend = x["backend"]["addr"].as_str().unwrap_or_else(|| panic!("{}: a backend: {x:#}", r.what)).to_string();
        assert!(on.iter().any(|n| ip_of(n) == backend), "{}: explain's backend {backend} is one of {on:?}: {x:#}", r.what);
        let want_masq = if masq { serde_json::Value::from(node0.clone()) } else { serde_json::Value::Null };
        assert_eq!(x["masquerade"], want_masq, "{}: the masquerade: {x:#}", r.what);
        // The node's own sockets are pointed at the backend: no packet NAT.
        assert_eq!(x["nat"].is_null(), r.from == Place::Host, "{}: translation: {x:#}", r.what);
    }
}

fn check_traffic(w: &World, r: &Row) {
    let node0 = IpAddr::V4(w.c.nodes[0].ip);
    match r.want {
        Want::Lands { on, masq } => {
            let mut names = Vec::new();
            for i in 0..16 {
                let reply = connect(w, r.from, r.dst, r.port, DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("{}: try {i}: {e}", r.what));
                let (name, peer) = landed(&reply);
                let client = match r.from {
                    Place::Outside(c) => Some(IpAddr::V4(c)),
                    Place::Pod => Some(IpAddr::V4(w.client.ip)),
                    Place::Host => None, // the kernel picks the node's source
                };
                if let Some(client) = client {
                    let want = if masq { node0 } else { client };
                    assert_eq!(peer.ip(), want, "{}: the backend saw {} (masquerade expected: {masq})", r.what, peer.ip());
                }
                names.push(name);
            }
            names.sort();
            names.dedup();
            assert_eq!(names, on, "{}: landed on", r.what);
        }
        Want::Refused => {
            let t = std::time::Instant::now();
            let err = connect(w, r.from, r.dst, r.port, DEFAULT_TIMEOUT).expect_err(r.what);
            if r.from == Place::Host {
                assert!(t.elapsed() < Duration::from_secs(1), "{}: refused at connect ({err})", r.what);
            } else {
                assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{}: reset ({err})", r.what);
            }
        }
        Want::TimesOut => {
            let err = connect(w, r.from, r.dst, r.port, Duration::from_secs(1)).expect_err(r.what);
            assert!(matches!(err.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "{}: dropped, not refused ({err})", r.what);
        }
        Want::Untouched => {
            let reply = connect(w, r.from, r.dst, r.port, DEFAULT_TIMEOUT).unwrap_or_else(|e| panic!("{}: {e}", r.what));
            let (name, peer) = landed(&reply);
            assert_eq!(name, "host", "{}", r.what);
            if let Place::Outside(c) = r.from {
                assert_eq!(peer.ip(), IpAddr::V4(c), "{}: the node's server saw the client", r.what);
            }
        }
    }
}

fn every_frontend_from_every_place_as_explain_says(mode: &str) {
    let w = world(mode, &[]);
    w.c.write("matrix.yaml", &extra_services(&w));
    let want = format!("{}:30091", w.c.nodes[0].ip);
    w.c.wait_for("node 0 programs the table's services", || String::from_utf8_lossy(&w.c.nodes[0].node.weir(&["service", "list"]).stdout).contains(&want));
    let _host = tcp_server(w.c.nodes[0].node.ns(), HOST_PORT, Reply::Peer("host".into()));
    for r in rows(w.c.nodes[0].ip) {
        let x = explain(&w, r.from, r.dst, r.port);
        check_explain(&w, &r, &x);
        check_traffic(&w, &r);
    }
    // A device weir is not attached to is named as such, with the ones it is.
    let out = w.c.nodes[0].node.weir(&["explain", "--from-device", "lo", &CLIENT.to_string(), &format!("{}:30080/tcp", w.c.nodes[0].ip)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"lo\"") && err.contains("eth0"), "not attached to lo: {err}");
}

weir_tests::both_routing_modes!(every_frontend_from_every_place_as_explain_says);
