//! NetworkPolicy beyond the truth tables, with real traffic: service
//! traffic judged against the real backend, traffic from the node, return
//! traffic, zero transient allows while policies churn, bad policies, an
//! agent restart, and denials counted in /metrics.

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use weir_tests::{
    netpol::{ip_of, probe_ip, NetpolCluster, Proto, P},
    services::{ready, yaml_service},
    traffic::tcp_request,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);

fn p(ns: &'static str, pod: &'static str) -> P {
    P { ns, pod }
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}---\n")
}

/// A ClusterNetworkPolicy on x/a's ingress.
fn cnp(name: &str, priority: u32, extra: &str, rules: &str) -> String {
    let extra: String = extra.lines().map(|l| format!("  {l}\n")).collect();
    let rules: String = rules.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n  priority: {priority}\n{extra}  subject:\n    namespaces: {{matchLabels: {{ns: x}}}}\n    pods: {{matchLabels: {{pod: a}}}}\n  ingress:\n{rules}---\n")
}

fn via_vip(c: &NetpolCluster, from: P) -> bool {
    probe_ip(c.pod(from), VIP, 80, Proto::Tcp, "x/a")
}

#[test]
fn policy_judges_service_traffic_by_the_real_backend() {
    let mut c = NetpolCluster::new();
    c.node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 80, &ready(&[ip_of(p("x", "a"))])).as_bytes());
    c.apply(
        &(np("x", "a-from-yb", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n    podSelector:\n      matchLabels: {pod: b}")
            // y/c may only talk to z: the VIP is none of x's addresses, but its backend is.
            + &np("y", "c-to-z", "podSelector:\n  matchLabels: {pod: c}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: z}")),
    );
    assert!(via_vip(&c, p("y", "b")), "y/b is admitted by x/a's ingress policy through the ClusterIP");
    assert!(!via_vip(&c, p("y", "a")), "y/a is not admitted by x/a's ingress policy");
    assert!(!via_vip(&c, p("z", "a")), "nor is z/a");
    // y/c's egress allows only z; after DNAT the destination is x/a.
    c.apply(
        &(np("x", "a-open", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- {}")
            + &np("y", "c-to-z", "podSelector:\n  matchLabels: {pod: c}\npolicyTypes: [Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: z}")),
    );
    assert!(via_vip(&c, p("y", "a")), "x/a is open now");
    assert!(!via_vip(&c, p("y", "c")), "y/c's egress policy sees the real backend in x");
}

#[test]
fn the_node_reaches_isolated_pods_and_their_replies_return() {
    let mut c = NetpolCluster::new();
    c.node.ns().ip(&["addr", "add", "192.168.100.1/32", "dev", "lo"]);
    c.apply(&np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress, Egress]"));
    assert!(!c.probe(p("y", "a"), p("x", "a"), 80, Proto::Tcp), "pods are denied");
    // The node itself (kubelet probes): allowed, as Cilium and Calico do.
    let answer = tcp_request(c.node.ns(), ip_of(p("x", "a")), 80, Vec::new(), Duration::from_secs(2));
    let answer = answer.expect("the node reaches an isolated pod");
    assert!(String::from_utf8_lossy(&answer).starts_with("x/a"), "{answer:?}");
}

#[test]
fn replies_of_allowed_flows_pass_isolation_in_both_directions() {
    let mut c = NetpolCluster::new();
    // x/a is isolated both ways; it may open flows to y/a only.
    c.apply(&np("x", "a", "podSelector:\n  matchLabels: {pod: a}\npolicyTypes: [Ingress, Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n    podSelector:\n      matchLabels: {pod: a}"));
    for proto in [Proto::Tcp, Proto::Udp] {
        assert!(c.probe(p("x", "a"), p("y", "a"), 80, proto), "{proto:?}: the reply comes back through x/a's ingress isolation");
        assert!(!c.probe(p("y", "a"), p("x", "a"), 80, proto), "{proto:?}: y/a cannot open a flow to x/a");
        assert!(!c.probe(p("x", "a"), p("y", "b"), 80, proto), "{proto:?}: x/a cannot reach y/b");
    }
}

#[test]
fn policy_churn_never_lets_a_denied_flow_through() {
    let mut c = NetpolCluster::new();
    // Every policy set below denies y/a → x/a on TCP 81 and allows y/b → x/a
    // on TCP 80 (NetworkPolicy alone, then weir's CRDs).
    let sets = [
        np("x", "p", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n  ports:\n  - port: 80"),
        np("x", "p", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - podSelector:\n      matchLabels: {pod: b}\n    namespaceSelector: {}\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: z}\n  ports:\n  - port: 81"),
        np("x", "p", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.244.0.0/16\n      except: [10.244.2.10/32]\n- from:\n  - ipBlock:\n      cidr: 10.244.2.0/24\n  ports:\n  - port: serve-80-tcp"),
        np("x", "p", "podSelector: {}\ningress:\n- ports:\n  - port: 80\n  - port: 79\n    endPort: 79")
            + &np("x", "q", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.244.2.11/32\n  ports:\n  - port: 81"),
        np("x", "p", "podSelector:\n  matchExpressions:\n  - {key: pod, operator: In, values: [a]}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: ns, operator: In, values: [y, z]}\n  ports:\n  - port: 80\n    endPort: 80"),
        // weir's CRDs: deny entries, tiers, Pass, audit.
        cnp("c", 10, "", "- {name: no-ya-81, action: Deny, peers: [{namespaces: {matchLabels: {ns: y}}, pods: {matchLabels: {pod: a}}}], ports: [{port: 81}]}\n- {name: y-80, action: Allow, peers: [{namespaces: {matchLabels: {ns: y}}}], ports: [{port: 80}]}"),
        cnp("base", 1, "tier: Baseline\n", "- {name: no-one, action: Deny, peers: [{namespaces: {}}]}")
            + &np("x", "p", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - podSelector:\n      matchLabels: {pod: b}\n    namespaceSelector: {}\n  ports:\n  - port: 80"),
        cnp("pass", 1, "", "- {name: y-to-np, action: Pass, peers: [{namespaces: {matchLabels: {ns: y}}}]}")
            + &cnp("deny", 2, "", "- {name: no-one, action: Deny, peers: [{namespaces: {}}]}")
            + &np("x", "p", "podSelector: {}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n  ports:\n  - port: 80"),
        cnp("audit", 1, "mode: Audit\n", "- {name: no-one, action: Deny, peers: [{namespaces: {}}]}")
            + "apiVersion: policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - {name: no-ya, action: Deny, peers: [{pods: {matchLabels: {pod: a}}, namespaces: {matchLabels: {ns: y}}}], ports: [{port: 81, endPort: 90}]}\n  - {name: all, action: Allow}\n---\n",
    ];
    c.apply(&sets[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let (denied_ok, denied_tries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (allowed_ok, allowed_tries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let x_a = ip_of(p("x", "a"));
    let mut probers = Vec::new();
    for (from, port, ok, tries) in [
        (p("y", "a"), 81u16, denied_ok.clone(), denied_tries.clone()),
        (p("y", "a"), 81, denied_ok.clone(), denied_tries.clone()),
        (p("y", "b"), 80, allowed_ok.clone(), allowed_tries.clone()),
    ] {
        let ns = c.pod(from).ns().path();
        let stop = stop.clone();
        probers.push(std::thread::spawn(move || {
            let file = std::fs::File::open(&ns).expect("netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // A dropped SYN is retransmitted after 1 s, so any timeout
            // under that sees a policy drop as a failure. The allowed
            // prober paces itself so the server's accept queue never
            // overflows (which would drop SYNs for reasons of its own).
            let (timeout, pause) = if port == 80 { (Duration::from_millis(500), Duration::from_millis(5)) } else { (Duration::from_millis(100), Duration::ZERO) };
            while !stop.load(Ordering::Relaxed) {
                tries.fetch_add(1, Ordering::Relaxed);
                let addr = std::net::SocketAddr::from((x_a, port));
                if std::net::TcpStream::connect_timeout(&addr, timeout).is_ok() {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(pause);
            }
        }));
    }
    let start = Instant::now();
    let mut changes = 0;
    while changes < 40 {
        changes += 1;
        c.apply(&sets[changes % sets.len()]);
    }
    stop.store(true, Ordering::Relaxed);
    for t in probers {
        t.join().expect("prober");
    }
    eprintln!(
        "{changes} policy changes in {:?}: denied port {} of {} probes got through; allowed port {} of {}",
        start.elapsed(),
        denied_ok.load(Ordering::Relaxed),
        denied_tries.load(Ordering::Relaxed),
        allowed_ok.load(Ordering::Relaxed),
        allowed_tries.load(Ordering::Relaxed)
    );
    assert!(denied_tries.load(Ordering::Relaxed) > 20, "the denied port was probed throughout");
    assert_eq!(denied_ok.load(Ordering::Relaxed), 0, "a flow denied before and after a change got through during it");
    assert_eq!(allowed_ok.load(Ordering::Relaxed), allowed_tries.load(Ordering::Relaxed), "a flow allowed before and after a change was refused during it");
}

/// Writes `file` into the agent's source directory and waits for the
/// reconcile it causes; returns that reconcile's log line.
fn write_and_reconcile(c: &mut NetpolCluster, file: &str, yaml: &str) -> String {
    let before = c.agent.log_text().matches("reconciled").count();
    c.node.write_source(file, yaml.as_bytes());
    c.agent.wait_for_log("reconciled", before + 1);
    c.agent.log_text().lines().filter(|l| l.contains("reconciled")).nth(before).unwrap_or_default().to_string()
}

/// A Pod object of the matrix's shape (labels `pod: <label>`, the
/// matrix's named ports).
fn pod_yaml(ns: &str, name: &str, label: &str, node: &str, ip: Ipv4Addr) -> String {
    let ports: String = weir_tests::netpol::PORTS
        .iter()
        .flat_map(|port| ["TCP", "UDP"].map(|proto| format!("    - name: serve-{port}-{}\n      containerPort: {port}\n      protocol: {proto}\n", proto.to_lowercase())))
        .collect();
    format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    pod: {label}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: agnhost\n    ports:\n{ports}status:\n  phase: Running\n  podIP: {ip}\n---\n")
}

#[test]
fn pod_changes_are_programmed_alone_and_enforced_at_once() {
    let mut c = NetpolCluster::new();
    // Pods on another node share every label set of y, so an identity
    // keeps members when a pod leaves it: pod changes take the delta path.
    let twins: String = ["a", "b", "c"].iter().enumerate().map(|(i, l)| pod_yaml("y", &format!("{l}-twin"), l, "elsewhere", Ipv4Addr::new(10, 244, 9, 10 + i as u8))).collect();
    let twins = twins + &pod_yaml("x", "a-twin", "a", "elsewhere", Ipv4Addr::new(10, 244, 9, 20));
    write_and_reconcile(&mut c, "twins.yaml", &twins);
    c.apply(&np("x", "a-from-b", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector:\n      matchLabels: {pod: b}"));
    assert!(c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "y/b is admitted");
    assert!(!c.probe(p("y", "a"), p("x", "a"), 80, Proto::Tcp), "y/a is not");
    // A policy edit is a delta too: only 81 now, then back.
    let only_81 = np("x", "a-from-b", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector:\n      matchLabels: {pod: b}\n  ports:\n  - port: 81");
    let line = write_and_reconcile(&mut c, "policies.yaml", &only_81);
    assert!(line.contains("policy=\"delta\""), "a policy edit is translated alone: {line}");
    assert!(!c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp) && c.probe(p("y", "b"), p("x", "a"), 81, Proto::Tcp), "y/b: 81 only");
    c.apply(&np("x", "a-from-b", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector: {}\n    podSelector:\n      matchLabels: {pod: b}"));
    assert!(c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "y/b: every port again");

    // y/a becomes a `pod: b`: admitted at once, by a delta.
    let node = c.node.ns().name().to_string();
    let base = weir_tests::netpol::base_objects(&node);
    let ya = "  name: a\n  namespace: y\n  labels:\n    pod: a\n";
    assert!(base.contains(ya));
    let line = write_and_reconcile(&mut c, "base.yaml", &base.replace(ya, "  name: a\n  namespace: y\n  labels:\n    pod: b\n"));
    assert!(line.contains("policy=\"delta\""), "a relabel into a populated identity is translated alone: {line}");
    assert!(c.probe(p("y", "a"), p("x", "a"), 80, Proto::Tcp), "y/a, now a b, is admitted");
    assert!(c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "y/b still is");
    assert!(!c.probe(p("y", "c"), p("x", "a"), 80, Proto::Tcp), "y/c still is not");
    let line = write_and_reconcile(&mut c, "base.yaml", &base);
    assert!(line.contains("policy=\"delta\""), "and back: {line}");
    assert!(!c.probe(p("y", "a"), p("x", "a"), 80, Proto::Tcp), "y/a, an a again, is refused at once");

    // A new pod on this node, labelled like x/a: isolated like x/a from
    // its first reconcile, by a delta of its own endpoint.
    let ip = Ipv4Addr::new(10, 244, 1, 30);
    let pod = c.node.pod("x-new", ip);
    c.agent.wait_attached(&pod.host_if, pod.host_ifindex);
    let _server = weir_tests::traffic::tcp_server(pod.ns(), 80, weir_tests::traffic::Reply::Name("x/new".into()));
    let line = write_and_reconcile(&mut c, "new.yaml", &pod_yaml("x", "new", "a", &node, ip));
    assert!(line.contains("policy=\"delta\""), "a new pod of a populated identity is translated alone: {line}");
    assert!(probe_ip(c.pod(p("y", "b")), ip, 80, Proto::Tcp, "x/new"), "y/b reaches the new a");
    assert!(!probe_ip(c.pod(p("y", "a")), ip, 80, Proto::Tcp, "x/new"), "y/a does not: the new pod is isolated like x/a");
    assert!(!probe_ip(c.pod(p("z", "c")), ip, 80, Proto::Tcp, "x/new"), "nor does z/c");
    let shown = c.node.weir(&["policy", "show", "x/new"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("x/a-from-b"), "the CLI names the new endpoint and what isolates it:\n{shown}");
    // Gone again: its endpoint goes with it, by a delta.
    let line = write_and_reconcile(&mut c, "new.yaml", "");
    assert!(line.contains("policy=\"delta\""), "a pod leaving a populated identity is translated alone: {line}");
    let gone = c.node.weir(&["policy", "show", "10.244.1.30"]);
    assert!(!gone.status.success(), "its endpoint is gone: {}", String::from_utf8_lossy(&gone.stdout));
}

/// A Namespace's labels decide both which pods a policy isolates (its
/// subject) and which peers a rule admits: a relabel is translated as a
/// delta of the namespace's pods, and enforced at once, both ways.
#[test]
fn a_namespace_relabel_is_programmed_alone_and_enforced_at_once() {
    let mut c = NetpolCluster::new();
    c.apply(&cnp("no-z", 10, "", "- {name: no-z, action: Deny, peers: [{namespaces: {matchLabels: {ns: z}}}]}"));
    assert!(!c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp), "z/b is denied");
    assert!(c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "y/b is not");
    let node = c.node.ns().name().to_string();
    let base = weir_tests::netpol::base_objects(&node);
    let relabel = |objects: &str, ns: &str, to: &str| {
        let from = format!("  name: {ns}\n  labels:\n    ns: {ns}\n");
        assert!(objects.contains(&from));
        objects.replace(&from, &format!("  name: {ns}\n  labels:\n    ns: {to}\n"))
    };
    // z is no longer `ns: z`: its pods leave the rule's peers.
    let line = write_and_reconcile(&mut c, "base.yaml", &relabel(&base, "z", "q"));
    assert!(line.contains("policy=\"delta\""), "a namespace relabel is translated alone: {line}");
    assert!(c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp), "z/b, in a namespace the rule no longer names, is admitted at once");
    // y becomes `ns: z`: its pods join them.
    let line = write_and_reconcile(&mut c, "base.yaml", &relabel(&relabel(&base, "z", "q"), "y", "z"));
    assert!(line.contains("policy=\"delta\""), "{line}");
    assert!(!c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "y/b, now in a `ns: z` namespace, is denied at once");
    assert!(c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp), "z/b is still admitted");
    // x is no longer `ns: x`: x/a leaves the policy's subject.
    write_and_reconcile(&mut c, "base.yaml", &base);
    assert!(!c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp), "back as they were: z/b is denied");
    let line = write_and_reconcile(&mut c, "base.yaml", &relabel(&base, "x", "w"));
    assert!(line.contains("policy=\"delta\""), "{line}");
    assert!(c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp), "x/a is no longer the policy's subject: z/b is admitted");
    let line = write_and_reconcile(&mut c, "base.yaml", &base);
    assert!(line.contains("policy=\"delta\""), "{line}");
    assert!(!c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp), "and its subject again: z/b is denied");
}

/// The value of one /metrics series.
fn gauge(c: &NetpolCluster, series: &str) -> Option<String> {
    let m = c.node.agent_http("/metrics");
    m.lines().find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_string()))
}

#[test]
fn a_policy_weir_cannot_compile_fails_closed_and_the_rest_keep_working() {
    let mut c = NetpolCluster::new();
    c.apply(&np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"));
    // y/a's only ingress rule names a network that is not one: the rule is
    // left out, and y/a stays isolated (before, the whole policy was
    // dropped and y/a was open to everyone).
    let bad = np("y", "bad", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - ipBlock:\n      cidr: 10.244.300.0/24");
    c.node.write_source("bad.yaml", bad.as_bytes());
    c.agent.wait_for_log("spec.ingress[0].from[0].ipBlock.cidr", 1);
    let log = c.agent.log_text();
    let line = log.lines().find(|l| l.contains("spec.ingress[0].from[0].ipBlock.cidr")).unwrap_or_default();
    assert!(line.contains("NetworkPolicy y/bad") && line.contains("fail-closed"), "the warning names the object, the field and what weir did:\n{line}");
    assert!(!c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "the good policy still holds");
    assert!(!c.probe(p("x", "a"), p("y", "a"), 80, Proto::Tcp), "the bad one isolates y/a: it allows nothing it could not read");
    assert!(c.probe(p("x", "a"), p("y", "b"), 80, Proto::Tcp), "y/b is not its subject");
    assert_eq!(gauge(&c, "weir_policies_failed_closed{kind=\"NetworkPolicy\"}").as_deref(), Some("1"));
    let bad_port = np("y", "bad2", "podSelector: {}\ningress:\n- ports:\n  - port: 90\n    endPort: 80");
    c.node.write_source("bad2.yaml", bad_port.as_bytes());
    c.agent.wait_for_log("spec.ingress[0].ports[0].endPort", 1);
    assert!(c.agent.is_running());
}

#[test]
fn a_cluster_deny_weir_cannot_compile_denies_every_peer_of_its_subject() {
    let mut c = NetpolCluster::new();
    // A Deny of y/a whose selector has an operator weir cannot read (the
    // CRD schema refuses it now; an object stored before, or a file, still
    // arrives): it denies every peer of x/a on the port it names.
    c.apply(&cnp("no-ya", 10, "", "- {name: no-ya, action: Deny, peers: [{namespaces: {matchLabels: {ns: y}}, pods: {matchExpressions: [{key: pod, operator: Equals, values: [a]}]}}], ports: [{port: 80}]}"));
    c.agent.wait_for_log("spec.ingress[0].peers[0].pods.matchExpressions[0].operator", 1);
    for from in [p("y", "a"), p("y", "b"), p("z", "a")] {
        assert!(!c.probe(from, p("x", "a"), 80, Proto::Tcp), "{from:?} -> x/a:80 is denied");
    }
    assert!(c.probe(p("y", "a"), p("x", "a"), 81, Proto::Tcp), "the port it names still bounds it");
    assert!(c.probe(p("y", "a"), p("x", "b"), 80, Proto::Tcp), "and its subject");
    assert_eq!(gauge(&c, "weir_policies_failed_closed{kind=\"ClusterNetworkPolicy\"}").as_deref(), Some("1"));
    // Fixed, it denies exactly what it says, and the gauge clears.
    c.apply(&cnp("no-ya", 10, "", "- {name: no-ya, action: Deny, peers: [{namespaces: {matchLabels: {ns: y}}, pods: {matchExpressions: [{key: pod, operator: In, values: [a]}]}}], ports: [{port: 80}]}"));
    assert!(!c.probe(p("y", "a"), p("x", "a"), 80, Proto::Tcp));
    assert!(c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "y/b is no longer denied");
    assert_eq!(gauge(&c, "weir_policies_failed_closed{kind=\"ClusterNetworkPolicy\"}").as_deref(), Some("0"));
}

#[test]
fn policies_hold_while_the_agent_is_down_and_a_restart_rewrites_nothing() {
    let mut c = NetpolCluster::new();
    c.apply(&np("x", "a-from-y", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n  ports:\n  - port: 80"));
    let check = |c: &NetpolCluster| {
        assert!(c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp));
        assert!(!c.probe(p("y", "b"), p("x", "a"), 81, Proto::Tcp));
        assert!(!c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp));
    };
    check(&c);
    c.agent.stop_with(libc::SIGTERM);
    check(&c);
    c.agent.restart();
    c.agent.wait_for_log("initial sync", 2);
    let log = c.agent.log_text();
    let last = log.lines().rfind(|l| l.contains("initial sync")).expect("sync line");
    assert!(last.contains("policy_writes=0"), "a restart adopts the programmed policy: {last}");
    check(&c);
}

#[test]
fn denials_are_counted_in_metrics() {
    let mut c = NetpolCluster::with_agent_args(&["--policy-allow-events", "1"]);
    c.apply(&np("x", "a", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}"));
    for _ in 0..3 {
        assert!(!c.probe(p("z", "a"), p("x", "a"), 80, Proto::Udp));
    }
    assert!(c.probe(p("y", "a"), p("x", "a"), 80, Proto::Tcp));
    let want_deny = "weir_policy_verdicts_total{direction=\"ingress\",verdict=\"deny\",reason=\"policy_denied\"} 3";
    let want_allow = "weir_policy_verdicts_total{direction=\"ingress\",verdict=\"allow\",reason=\"rule\"} 1";
    // The senders' egress, which no policy selects: sampled allows too.
    let want_open = "weir_policy_verdicts_total{direction=\"egress\",verdict=\"allow\",reason=\"not_isolated\"} ";
    let start = Instant::now();
    loop {
        let m = c.node.agent_http("/metrics");
        if m.contains(want_deny) && m.contains(want_allow) && m.contains(want_open) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "missing `{want_deny}`, `{want_allow}` or `{want_open}` in:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One ICMP echo from `from` to `to`, one second to answer.
fn ping(c: &NetpolCluster, from: P, to: P) -> bool {
    let net = format!("--net={}", c.pod(from).ns().path().display());
    let ip = ip_of(to).to_string();
    weir_tests::cmd::output(&["nsenter", &net, "ping", "-c", "1", "-W", "1", "-q", &ip]).status.success()
}

#[test]
fn icmp_is_judged_by_rules_without_ports_and_echo_replies_return() {
    let mut c = NetpolCluster::new();
    assert!(ping(&c, p("y", "a"), p("x", "a")), "no policy: ping works");
    c.apply(&np("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"));
    assert!(!ping(&c, p("y", "a"), p("x", "a")), "an isolated pod does not answer pings");
    c.apply(&np("x", "tcp80", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}\n  ports:\n  - port: 80"));
    assert!(!ping(&c, p("y", "a"), p("x", "a")), "a rule naming TCP ports does not allow ICMP");
    c.apply(&np("x", "from-y", "podSelector:\n  matchLabels: {pod: a}\ningress:\n- from:\n  - namespaceSelector:\n      matchLabels: {ns: y}"));
    assert!(ping(&c, p("y", "a"), p("x", "a")), "a rule without ports allows every protocol");
    assert!(!ping(&c, p("z", "a"), p("x", "a")), "but only from its peers");
    // x/a isolated both ways, egress to y allowed: its own pings come back.
    c.apply(&np("x", "a", "podSelector:\n  matchLabels: {pod: a}\npolicyTypes: [Ingress, Egress]\negress:\n- to:\n  - namespaceSelector:\n      matchLabels: {ns: y}"));
    assert!(ping(&c, p("x", "a"), p("y", "b")), "the echo reply rides the echo's conntrack entry");
    assert!(!ping(&c, p("x", "a"), p("z", "b")), "egress to z is not allowed");
    assert!(!ping(&c, p("y", "b"), p("x", "a")), "y still cannot ping x/a");
}
