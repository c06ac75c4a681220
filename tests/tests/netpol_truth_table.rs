//! NetworkPolicy truth tables, written from the NetworkPolicy API
//! reference and laid out like the upstream e2e suite (see
//! `weir_tests::netpol`). Each case applies its policies through the
//! agent's standalone source and probes all 81 ordered pod pairs over real
//! TCP or UDP, over IPv4 and then over IPv6 (every pod is dual-stack); each
//! result must equal the expected matrix exactly.

use weir_tests::netpol::{Matrix, NetpolCluster, Proto, P};

/// A NetworkPolicy document.
fn np(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n")
}

fn is(p: P, s: &str) -> bool {
    p.to_string() == s
}

/// Runs one case: applies `policies`, then checks each (port, protocol,
/// expectation).
/// A port, a protocol, and what a packet from one pod to another should see.
type Check<'a> = (u16, Proto, &'a dyn Fn(P, P) -> bool);

fn case(name: &str, policies: &str, checks: &[Check]) {
    let mut c = NetpolCluster::new();
    c.apply(policies);
    for (port, proto, f) in checks {
        c.check(name, *port, *proto, &Matrix::expect(f));
    }
}

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;

#[test]
fn no_policy_allows_everything() {
    case("no policy", "", &[(80, TCP, &|_, _| true), (81, UDP, &|_, _| true)]);
}

#[test]
fn default_deny_ingress_isolates_a_namespace() {
    let p = np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]");
    case("default-deny ingress", &p, &[(80, TCP, &|_, to| to.ns != "x"), (81, UDP, &|_, to| to.ns != "x")]);
}

#[test]
fn default_deny_egress_stops_a_namespace_sending() {
    let p = np("x", "deny", "podSelector: {}\npolicyTypes: [Egress]");
    case("default-deny egress", &p, &[(80, TCP, &|from, _| from.ns != "x"), (80, UDP, &|from, _| from.ns != "x")]);
}

#[test]
fn default_deny_both_directions() {
    let p = np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress, Egress]");
    case("default-deny both", &p, &[(80, TCP, &|from, to| from.ns != "x" && to.ns != "x")]);
}

#[test]
fn an_empty_rule_allows_all_ingress() {
    let p = np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]") + &np("x", "allow-all", "podSelector: {}\ningress:\n- {}");
    case("allow-all ingress unions with default deny", &p, &[(80, TCP, &|_, _| true)]);
}

#[test]
fn a_pod_selector_peer_means_the_policy_namespace() {
    let p = np("x", "a-from-b", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - podSelector:\n      matchLabels: {pod: b}");
    case("podSelector peer", &p, &[(80, TCP, &|from, to| !is(to, "x/a") || is(from, "x/b"))]);
}

#[test]
fn a_namespace_selector_peer_admits_every_pod_of_the_namespace() {
    let p = np("x", "a-from-y", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}");
    case("namespaceSelector peer", &p, &[(80, TCP, &|from, to| !is(to, "x/a") || from.ns == "y")]);
}

#[test]
fn namespace_and_pod_selector_in_one_peer_must_both_match() {
    let p = np(
        "x",
        "and",
        "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n    podSelector:\n      matchLabels: {pod: b}",
    );
    case("AND peer", &p, &[(80, TCP, &|from, to| !is(to, "x/a") || is(from, "y/b"))]);
}

#[test]
fn namespace_and_pod_selector_in_two_peers_either_matches() {
    let p = np(
        "x",
        "or",
        "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n  - podSelector:\n      matchLabels: {pod: b}",
    );
    case("OR peers", &p, &[(80, TCP, &|from, to| !is(to, "x/a") || from.ns == "y" || is(from, "x/b"))]);
}

#[test]
fn match_expressions_in_and_exists() {
    let p = np(
        "x",
        "exprs",
        "podSelector:\n  matchExpressions:\n  - {key: pod, operator: In, values: [a, b]}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector:\n      matchExpressions:\n      - {key: pod, operator: In, values: [c]}\n      - {key: pod, operator: Exists}",
    );
    case("matchExpressions In/Exists", &p, &[(80, TCP, &|from, to| !(to.ns == "x" && to.pod != "c") || from.pod == "c")]);
}

#[test]
fn match_expressions_not_in_and_does_not_exist() {
    let p = np(
        "x",
        "exprs",
        "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: ns, operator: NotIn, values: [y]}\n    podSelector:\n      matchExpressions:\n      - {key: team, operator: DoesNotExist}",
    );
    case("matchExpressions NotIn/DoesNotExist", &p, &[(80, TCP, &|from, to| !is(to, "x/a") || from.ns != "y")]);
}

#[test]
fn a_named_port_resolves_against_the_destination_pod() {
    let p = np("x", "named", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- ports:\n  - port: serve-81-tcp");
    case(
        "named port",
        &p,
        &[(81, TCP, &|_, _| true), (80, TCP, &|_, to| !is(to, "x/a")), (81, UDP, &|_, to| !is(to, "x/a"))],
    );
}

#[test]
fn a_numeric_port_admits_only_that_port_and_protocol() {
    let p = np("x", "port80", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- ports:\n  - port: 80\n    protocol: TCP");
    case(
        "numeric port",
        &p,
        &[(80, TCP, &|_, _| true), (81, TCP, &|_, to| !is(to, "x/a")), (80, UDP, &|_, to| !is(to, "x/a"))],
    );
}

#[test]
fn end_port_makes_a_range() {
    let p = np("x", "range", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- ports:\n  - port: 81\n    endPort: 90");
    case("endPort", &p, &[(81, TCP, &|_, _| true), (80, TCP, &|_, to| !is(to, "x/a"))]);
}

#[test]
fn ip_block_with_except() {
    // y's pods are 10.244.2.10-12 and fd00:10:244:2::10-12; y/b is .11 and ::11.
    let p = np(
        "x",
        "block",
        "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.244.2.0/24\n      except: [10.244.2.11/32]\n  - ipBlock:\n      cidr: fd00:10:244:2::/64\n      except: [fd00:10:244:2::11/128]",
    );
    case("ipBlock except", &p, &[(80, TCP, &|from, to| !is(to, "x/a") || (from.ns == "y" && from.pod != "b"))]);
}

#[test]
fn several_policies_add_up() {
    let p = np("x", "from-y", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}")
        + &np("x", "from-za", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: z}\n    podSelector:\n      matchLabels: {pod: a}");
    case("union", &p, &[(80, TCP, &|from, to| !is(to, "x/a") || from.ns == "y" || is(from, "z/a"))]);
}

#[test]
fn egress_default_deny_with_a_dns_like_exception() {
    // Egress only to z on UDP 80 (as a DNS exception would be, on 53).
    let p = np("x", "egress", "podSelector: {}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: z}\n  ports:\n  - protocol: UDP\n    port: 80");
    case(
        "egress with DNS-like exception",
        &p,
        &[(80, UDP, &|from, to| from.ns != "x" || to.ns == "z"), (80, TCP, &|from, _| from.ns != "x")],
    );
}

#[test]
fn egress_to_one_namespace_without_exceptions() {
    // No policyTypes: an egress section makes it an egress policy, and
    // every policy is an ingress policy, so x is also ingress-isolated.
    let p = np("x", "egress", "podSelector: {}\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: y}");
    let want = |from: P, to: P| (from.ns != "x" || to.ns == "y") && to.ns != "x";
    case("egress to y only", &p, &[(80, TCP, &want), (81, UDP, &want)]);
}

#[test]
fn udp_only_ingress() {
    let p = np("x", "udp", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- ports:\n  - protocol: UDP\n    port: 80");
    case("UDP ingress", &p, &[(80, UDP, &|_, _| true), (80, TCP, &|_, to| !is(to, "x/a"))]);
}

#[test]
fn ingress_and_egress_together() {
    let p = np("x", "a-out", "podSelector:\n  matchLabels: {pod: a}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n    podSelector:\n      matchLabels: {pod: a}")
        + &np("y", "a-in", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: x}\n    podSelector:\n      matchLabels: {pod: a}");
    case(
        "ingress and egress",
        &p,
        &[(80, TCP, &|from, to| (!is(from, "x/a") || is(to, "y/a")) && (!is(to, "y/a") || is(from, "x/a")))],
    );
}

#[test]
fn egress_named_port_resolves_against_the_peer() {
    let p = np("x", "named-out", "podSelector: {}\npolicyTypes: [Egress]\negress:\n- ports:\n  - port: serve-81-udp\n    protocol: UDP");
    case("egress named port", &p, &[(81, UDP, &|_, _| true), (80, UDP, &|from, _| from.ns != "x"), (81, TCP, &|from, _| from.ns != "x")]);
}

#[test]
fn empty_namespace_selector_means_every_namespace() {
    let p = np("x", "all-ns", "podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector:\n      matchLabels: {pod: c}");
    case("namespaceSelector {}", &p, &[(80, TCP, &|from, to| to.ns != "x" || from.pod == "c")]);
}

#[test]
fn policy_types_egress_ignores_ingress_rules() {
    let p = np("x", "egress-only", "podSelector:\n  matchLabels: {pod: a}\npolicyTypes: [Egress]\ningress:\n- from:\n  - podSelector:\n      matchLabels: {pod: b}\negress:\n- {}");
    case("policyTypes Egress only", &p, &[(80, TCP, &|_, _| true)]);
}

#[test]
fn a_pod_selector_isolates_only_the_pods_it_selects() {
    let p = np("x", "deny-b", "podSelector:\n  matchLabels: {pod: b}\npolicyTypes: [Ingress]");
    case("subject selector", &p, &[(80, TCP, &|_, to| !is(to, "x/b"))]);
}

#[test]
fn egress_ip_block_with_except() {
    // z's pods are 10.244.3.10-12 and fd00:10:244:3::10-12; z/c is .12 and ::12.
    let p = np("x", "out-block", "podSelector:\n  matchLabels: {pod: a}\negress:\n- to:\n  - ipBlock:\n      cidr: 10.244.3.0/24\n      except: [10.244.3.12/32]\n  - ipBlock:\n      cidr: fd00:10:244:3::/64\n      except: [fd00:10:244:3::12/128]\n  ports:\n  - port: 80");
    // Without policyTypes the policy also isolates x/a for ingress.
    case("egress ipBlock except", &p, &[(80, TCP, &|from, to| (!is(from, "x/a") || (to.ns == "z" && to.pod != "c")) && !is(to, "x/a"))]);
}
