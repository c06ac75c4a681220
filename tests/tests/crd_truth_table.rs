//! weir's policy CRDs, as truth tables over real traffic: the same 3 × 3
//! pod matrix as the NetworkPolicy tables (`weir_tests::netpol`), policies
//! applied through the agent's standalone source, all 81 ordered pairs
//! probed. Cases: priority order, a cluster Deny over a NetworkPolicy
//! Allow, Pass deferring to NetworkPolicy, the baseline under
//! NetworkPolicy, audit mode (allows, and reports the rule), Log rules,
//! and the namespaced policy's Deny with a port range.

use std::time::{Duration, Instant};

use weir_tests::netpol::{Matrix, NetpolCluster, Proto, P};

const TCP: Proto = Proto::Tcp;
const UDP: Proto = Proto::Udp;

fn np(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n")
}

/// A ClusterNetworkPolicy whose subject is every pod of namespace x.
fn cnp(name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n  subject:\n    namespaces:\n      matchLabels: {{ns: x}}\n{spec}---\n")
}

fn check(c: &NetpolCluster, case: &str, port: u16, proto: Proto, f: impl Fn(P, P) -> bool) {
    c.check(case, port, proto, &Matrix::expect(f));
}

/// The value of one /metrics sample, 0 when absent.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn cluster_policies_apply_in_priority_order() {
    let mut c = NetpolCluster::new();
    let allow_y = |prio: u32| cnp("allow-y", &format!("priority: {prio}\ningress:\n- name: from-y\n  action: Allow\n  peers: [{{namespaces: {{matchLabels: {{ns: y}}}}}}]"));
    let deny_all = cnp("deny-all", "priority: 20\ningress:\n- name: no-one\n  action: Deny\n  peers: [{namespaces: {}}]");
    c.apply(&(allow_y(10) + &deny_all));
    check(&c, "Allow at 10 before Deny at 20", 80, TCP, |from, to| to.ns != "x" || from.ns == "y");
    c.apply(&(allow_y(30) + &deny_all));
    check(&c, "Deny at 20 before Allow at 30", 80, TCP, |_, to| to.ns != "x");
}

#[test]
fn a_cluster_deny_beats_a_networkpolicy_allow() {
    let mut c = NetpolCluster::new();
    let allow = np("x", "allow-all-to-a", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- {}");
    let deny = cnp("deny-z-80", "priority: 10\ningress:\n- name: no-z\n  action: Deny\n  peers: [{namespaces: {matchLabels: {ns: z}}}]\n  ports: [{port: 80}]");
    c.apply(&(allow + &deny));
    check(&c, "cluster Deny on 80 wins over the NetworkPolicy Allow", 80, TCP, |from, to| !(to.ns == "x" && from.ns == "z"));
    check(&c, "the NetworkPolicy still allows 81", 81, TCP, |_, _| true);
}

#[test]
fn pass_defers_to_networkpolicy() {
    let mut c = NetpolCluster::new();
    let pass = cnp("pass-y", "priority: 5\ningress:\n- name: y-to-np\n  action: Pass\n  peers: [{namespaces: {matchLabels: {ns: y}}}]");
    let deny = cnp("deny-all", "priority: 10\ningress:\n- name: no-one\n  action: Deny\n  peers: [{namespaces: {}}]");
    let allow = np("x", "from-y-a", "podSelector: {}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n    podSelector:\n      matchLabels: {pod: a}");
    c.apply(&(pass + &deny + &allow));
    check(&c, "y passes to NetworkPolicy, which admits y/a; the rest meets the Deny", 80, TCP, |from, to| {
        to.ns != "x" || (from.ns == "y" && from.pod == "a")
    });
}

#[test]
fn the_baseline_sits_below_networkpolicy() {
    let mut c = NetpolCluster::new();
    let baseline = cnp("baseline", "priority: 1\ntier: Baseline\ningress:\n- name: no-one\n  action: Deny\n  peers: [{namespaces: {}}]");
    c.apply(&baseline);
    check(&c, "baseline alone denies", 80, UDP, |_, to| to.ns != "x");
    let allow = np("x", "a-from-y", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}");
    c.apply(&(baseline + &allow));
    check(&c, "NetworkPolicy decides for x/a, the baseline for the rest of x", 80, UDP, |from, to| {
        to.ns != "x" || (to.pod == "a" && from.ns == "y")
    });
}

#[test]
fn audit_mode_allows_and_reports_and_log_rules_report() {
    let mut c = NetpolCluster::new();
    let audit = cnp("audit-z", "priority: 1\nmode: Audit\ningress:\n- name: no-z\n  action: Deny\n  peers: [{namespaces: {matchLabels: {ns: z}}}]");
    let log = cnp("log-y", "priority: 2\ningress:\n- name: see-y\n  action: Log\n  peers: [{namespaces: {matchLabels: {ns: y}}}]");
    c.apply(&(audit + &log));
    check(&c, "audit mode enforces nothing; Log only reports", 80, TCP, |_, _| true);
    // 3 z pods × 3 x pods: nine flows the audited rule would deny; nine
    // y → x flows the Log rule reports.
    let audited = "weir_policy_reports_total{direction=\"ingress\",kind=\"audit\",would=\"deny\",rule=\"wcnp audit-z ingress[0] no-z\"}";
    let logged = "weir_policy_reports_total{direction=\"ingress\",kind=\"log\",would=\"allow\",rule=\"wcnp log-y ingress[0] see-y\"}";
    let start = Instant::now();
    loop {
        let m = c.node.agent_http("/metrics");
        if sample(&m, audited) >= 9 && sample(&m, logged) >= 9 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "want 9 of `{audited}` and `{logged}` in:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_text = c.agent.log_text();
    assert!(log_text.contains("policy audit") && log_text.contains("wcnp audit-z ingress[0] no-z"), "the agent logs the audited rule:\n{log_text}");
}

#[test]
fn a_weir_namespaced_deny_with_a_port_range_beats_allows() {
    let mut c = NetpolCluster::new();
    let wnp = "apiVersion: policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata:\n  name: no-b\n  namespace: x\nspec:\n  podSelector: {}\n  ingress:\n  - name: no-b-80-81\n    action: Deny\n    peers: [{pods: {matchLabels: {pod: b}}}]\n    ports: [{port: 80, endPort: 81}, {protocol: UDP, port: 80, endPort: 81}]\n  - name: everyone\n    action: Allow\n---\n";
    c.apply(wnp);
    for (port, proto) in [(80, TCP), (81, UDP)] {
        check(&c, "x/b (same namespace) denied on 80-81, everyone else allowed", port, proto, |from, to| {
            !(to.ns == "x" && from.ns == "x" && from.pod == "b")
        });
    }
}
