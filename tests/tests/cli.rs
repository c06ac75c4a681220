//! The `weir` CLI against a live datapath: the NetworkPolicy matrix's
//! cluster with a service, the real agent, real traffic. Each command's
//! JSON fields and exit codes are checked.

use std::net::Ipv4Addr;

use serde_json::Value;
use weir_tests::{
    netpol::{ip6_of, ip_of, probe_ip, NetpolCluster, Proto, P},
    services::{ready, yaml_service},
    Node,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

fn p(ns: &'static str, pod: &'static str) -> P {
    P { ns, pod }
}

fn json(node: &Node, args: &[&str]) -> Value {
    let mut argv = args.to_vec();
    argv.extend(["-o", "json"]);
    let out = node.weir(&argv);
    assert!(out.status.success(), "weir {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("weir {args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn cluster() -> NetpolCluster {
    let mut c = NetpolCluster::new();
    c.node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 80, &ready(&[ip_of(p("x", "a"))])).as_bytes());
    c.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n",
    );
    c
}

#[test]
fn status_lists_the_agent_attachments_and_map_fill() {
    let c = cluster();
    let st = json(&c.node, &["status"]);
    assert_eq!(st["agent"], "ready");
    assert_eq!(st["agent_version"], concat!("weir-agent ", env!("CARGO_PKG_VERSION")), "the running agent's version, from its answer");
    let att = st["attachments"].as_array().expect("attachments");
    assert_eq!(att.len(), 18, "two programs on each of nine pods: {att:?}");
    assert!(att.iter().all(|a| a["present"] == true && a["ifname"].as_str().is_some_and(|n| n.starts_with("weir"))));
    let maps = st["maps"].as_array().expect("maps");
    let map = |name: &str| maps.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name} missing: {maps:?}")).clone();
    assert_eq!(map("WEIR_ENDPOINTS")["entries"], 18, "one per address of nine dual-stack pods");
    assert!(map("WEIR_POLICY")["entries"].as_u64().is_some_and(|n| n >= 1));
    assert_eq!(map("WEIR_CT4")["capacity"], 262_144, "IPv4 conntrack, a table of its own");
    assert_eq!(map("WEIR_CT")["capacity"], 65_536, "IPv6 conntrack");
    let text = c.node.weir(&["status"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("WEIR_FRONTENDS"));
    assert!(text.contains(concat!("agent: ready, weir-agent ", env!("CARGO_PKG_VERSION"))), "{text}");
}

#[test]
fn service_backend_and_identity_listings() {
    let c = cluster();
    let svcs = json(&c.node, &["service", "list"]);
    let web = svcs.as_array().expect("list").iter().find(|s| s["address"] == VIP.to_string()).expect("the service").clone();
    assert_eq!((web["port"].as_u64(), web["protocol"].as_str(), web["eligible_backends"].as_u64()), (Some(80), Some("tcp"), Some(1)));
    assert_eq!(web["selection"], "maglev");
    let backends = json(&c.node, &["backend", "list"]);
    assert!(backends.as_array().expect("list").iter().any(|b| b["address"] == ip_of(p("x", "a")).to_string() && b["port"] == 80));
    let ids = json(&c.node, &["identity", "list"]);
    let xa = ids.as_array().expect("list").iter().find(|i| i["addresses"].as_array().is_some_and(|a| a.iter().any(|a| a == &format!("{}/32", ip_of(p("x", "a")))))).expect("x/a's identity").clone();
    assert_eq!(xa["kind"], "pod");
    assert_eq!(xa["name"], "x {pod=a}");
}

#[test]
fn policy_show_names_the_rules_by_ip_and_by_pod_name() {
    let c = cluster();
    for target in [ip_of(p("x", "a")).to_string(), "x/a".to_string()] {
        let v = json(&c.node, &["policy", "show", &target]);
        assert_eq!(v["name"], "x/a");
        assert_eq!((v["ingress_isolated"].as_bool(), v["egress_isolated"].as_bool()), (Some(true), Some(false)));
        let rules = v["rules"].as_array().expect("rules");
        assert_eq!(rules.len(), 4, "any peer denied, and one allow per pod identity of y: {rules:?}");
        let (allows, denies): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = rules.iter().partition(|r| r["verdict"] == "allow");
        assert!(allows.iter().all(|r| r["rule"] == "x/a-from-y ingress[0]" && r["ports"] == "80" && r["protocol"] == "tcp"), "{rules:?}");
        assert!(allows.iter().any(|r| r["peer"] == "y {pod=b}"));
        assert!(denies.len() == 1 && denies[0]["peer"] == "any peer" && denies[0]["rule"] == "default", "the isolation default: {denies:?}");
    }
    let open = json(&c.node, &["policy", "show", "y/a"]);
    assert_eq!((open["ingress_isolated"].as_bool(), open["rules"].as_array().map(Vec::len)), (Some(false), Some(0)));
    let missing = c.node.weir(&["policy", "show", "10.9.9.9"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a pod on this node"));
}

#[test]
fn explain_says_what_real_traffic_then_does() {
    let c = cluster();
    let vip = format!("{VIP}:80/tcp");
    // y/b → the service: load-balanced to x/a and admitted by its policy.
    let ok = json(&c.node, &["explain", &format!("{}:40123", ip_of(p("y", "b"))), &vip]);
    assert_eq!(ok["verdict"], "forward");
    assert_eq!(ok["service"]["frontend"], vip);
    assert_eq!(ok["backend"]["addr"], ip_of(p("x", "a")).to_string());
    assert_eq!(ok["backend"]["why"]["maglev"]["table_len"].as_u64().map(|n| n > 1), Some(true));
    let steps = ok["policy"].as_array().expect("steps");
    assert!(steps.iter().any(|s| s["direction"] == "ingress" && s["allowed"] == true && s["isolated"] == true));
    assert!(c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp));
    // z/a → x/a directly: denied by x/a's ingress policy.
    let denied = json(&c.node, &["explain", &ip_of(p("z", "a")).to_string(), &format!("{}:80/tcp", ip_of(p("x", "a")))]);
    assert_eq!(denied["verdict"], "drop");
    assert!(denied["reason"].as_str().is_some_and(|r| r.contains("ingress")), "{denied}");
    assert!(!c.probe(p("z", "a"), p("x", "a"), 80, Proto::Tcp));
    // Text output for people.
    let text = c.node.weir(&["explain", &ip_of(p("z", "a")).to_string(), &format!("{}:80/tcp", ip_of(p("x", "a")))]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("verdict  drop"));
    // Bad input: a clear message and exit code 2.
    for bad in [["explain", "10.0.0.1", "10.0.0.2:80"], ["explain", "10.0.0.1", "10.0.0.2/tcp"], ["explain", "nonsense", "10.0.0.2:80/tcp"]] {
        let out = c.node.weir(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn ct_lists_and_flushes_with_filters() {
    let c = cluster();
    assert!(c.probe(p("y", "a"), p("x", "a"), 80, Proto::Tcp));
    let ya = ip_of(p("y", "a")).to_string();
    let entries = json(&c.node, &["ct", "list", "--kind", "policy", "--addr", &ya]);
    let entries = entries.as_array().expect("list");
    assert!(!entries.is_empty(), "the probe's flow is tracked");
    assert!(entries.iter().all(|e| e["kind"] == "policy" && (e["src"] == ya.as_str() || e["dst"] == ya.as_str())));
    let refused = c.node.weir(&["ct", "flush"]);
    assert_eq!(refused.status.code(), Some(2), "no filter, no --all");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--all"));
    let flushed = json(&c.node, &["ct", "flush", "--addr", &ya]);
    assert!(flushed["flushed"].as_u64().is_some_and(|n| n >= 1));
    assert!(json(&c.node, &["ct", "list", "--addr", &ya]).as_array().is_some_and(Vec::is_empty));
}

#[test]
fn ipv6_flows_are_listed_and_explained_with_their_addresses_in_brackets() {
    let c = cluster();
    let (ya, xa, za) = (ip6_of(p("y", "a")), ip6_of(p("x", "a")), ip6_of(p("z", "a")));
    assert!(probe_ip(c.pod(p("y", "a")), xa, 80, Proto::Tcp, "x/a"), "y/a reaches x/a over IPv6");
    let entries = json(&c.node, &["ct", "list", "--kind", "policy", "--addr", &ya.to_string()]);
    let entries = entries.as_array().expect("list");
    // JSON keeps plain addresses; tables bracket them before a port.
    assert!(entries.iter().any(|e| e["src"] == ya.to_string() && e["dst"] == xa.to_string() && e["dport"] == 80), "{entries:?}");
    let table = c.node.weir(&["ct", "list", "--addr", &ya.to_string()]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("[{xa}]:80")), "{table}");
    // explain takes [addr]:port and judges as the datapath did.
    let ok = json(&c.node, &["explain", &format!("[{ya}]:40123"), &format!("[{xa}]:80/tcp")]);
    assert_eq!(ok["verdict"], "forward", "{ok}");
    let denied = json(&c.node, &["explain", &za.to_string(), &format!("[{xa}]:80/tcp")]);
    assert_eq!(denied["verdict"], "drop", "{denied}");
    assert!(!probe_ip(c.pod(p("z", "a")), xa, 80, Proto::Tcp, "x/a"), "and z/a does not reach it over IPv6");
    let text = c.node.weir(&["explain", &za.to_string(), &format!("[{xa}]:80/tcp")]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("packet   [{za}]:40000 -> [{xa}]:80 tcp")), "{text}");
}

#[test]
fn a_missing_datapath_is_an_error_a_person_can_act_on() {
    let node = Node::new();
    for cmd in [&["status"][..], &["service", "list"], &["ct", "list"], &["policy", "show", "10.0.0.1"], &["explain", "10.0.0.1", "10.0.0.2:80/tcp"]] {
        let out = node.weir(cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is weir-agent running"), "{cmd:?}: {err}");
    }
}

fn monitor_while(node: &Node, secs: f64, traffic: impl FnOnce()) -> Vec<Value> {
    node.monitor_while(secs, traffic)
}

#[test]
fn monitor_streams_drops_verdicts_and_traces_with_or_without_the_agent() {
    let mut c = cluster();
    let empty = Ipv4Addr::new(10, 96, 0, 31);
    c.node.write_source("empty.yaml", yaml_service("empty", empty, 80, "TCP", 80, &[]).as_bytes());
    let before = c.agent.log_text().matches("reconciled").count();
    c.agent.wait_for_log("reconciled", before + 1);
    let (za, xa) = (ip_of(p("z", "a")).to_string(), ip_of(p("x", "a")).to_string());
    let lines = monitor_while(&c.node, 3.0, || {
        assert!(!c.probe(p("z", "a"), p("x", "a"), 80, Proto::Tcp));
        assert!(weir_tests::netpol::probe_ip(c.pod(p("y", "b")), VIP, 80, Proto::Tcp, "x/a"));
        assert!(weir_tests::traffic::tcp_request(c.pod(p("z", "b")).ns(), empty, 80, Vec::new(), std::time::Duration::from_secs(1)).is_err());
    });
    let find = |pred: &dyn Fn(&Value) -> bool, what: &str| lines.iter().find(|l| pred(l)).unwrap_or_else(|| panic!("no {what} in {lines:#?}")).clone();
    let deny = find(&|l| l["kind"] == "verdict" && l["verdict"] == "deny", "denial");
    assert_eq!((deny["src"].as_str(), deny["dst"].as_str(), deny["dport"].as_u64()), (Some(za.as_str()), Some(xa.as_str()), Some(80)));
    assert_eq!((deny["direction"].as_str(), deny["endpoint"].as_str(), deny["peer"].as_str()), (Some("ingress"), Some("x/a"), Some("z {pod=a}")));
    assert_eq!(deny["reason"], "policy_denied");
    let allow = find(&|l| l["kind"] == "verdict" && l["verdict"] == "allow" && l["reason"] == "rule", "allow verdict by a rule");
    assert_eq!(allow["rule"], "x/a-from-y ingress[0]");
    // No policy selects y/b's egress: allowed as it stands, and still
    // reported, with the peer's identity, while a monitor watches.
    let open = find(&|l| l["kind"] == "verdict" && l["verdict"] == "allow" && l["reason"] == "not_isolated" && l["endpoint"] == "y/b", "allow verdict of y/b");
    assert_eq!((open["direction"].as_str(), open["peer"].as_str(), open["dst"].as_str()), (Some("egress"), Some("x {pod=a}"), Some(xa.as_str())));
    let trace = find(&|l| l["kind"] == "trace", "trace");
    assert_eq!((trace["dst"].as_str(), trace["translated"].as_str()), (Some(VIP.to_string().as_str()), Some(format!("{xa}:80").as_str())));
    let drop = find(&|l| l["kind"] == "drop", "drop");
    assert_eq!((drop["dst"].as_str(), drop["reason"].as_str()), (Some(empty.to_string().as_str()), Some("no_endpoints")));

    // Without the agent: the datapath still reports to the monitor.
    c.agent.stop_with(libc::SIGTERM);
    let lines = monitor_while(&c.node, 2.0, || assert!(!c.probe(p("z", "b"), p("x", "a"), 80, Proto::Tcp)));
    assert!(lines.iter().any(|l| l["verdict"] == "deny" && l["src"] == ip_of(p("z", "b")).to_string()), "{lines:#?}");

    // Filters: only traces, none here.
    let out = c.node.weir(&["monitor", "--type", "trace", "--duration", "1"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn diff_compares_the_files_with_the_maps_and_exits_1_on_drift() {
    let mut c = cluster();
    let source = format!("dir:{}", c.node.source_dir().display());
    let node_name = c.node.ns().name().to_string();
    let diff = |c: &NetpolCluster| {
        let out = c.node.weir(&["diff", "--source", &source, "--node-name", &node_name, "-o", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = diff(&c);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["in_sync"], true);
    let svc = v["services"].as_array().expect("services").iter().find(|s| s["frontend"] == format!("{VIP}:80/tcp")).expect("the service").clone();
    assert_eq!((svc["status"].as_str(), svc["origin"].as_str()), (Some("in-sync"), Some("default/web:p")));
    assert!(svc["last_programmed"].as_u64().is_some(), "the agent records when it programmed the service");

    // While the agent is down, the files change: drift, named.
    c.agent.stop_with(libc::SIGTERM);
    let (xa, xb) = (ip_of(p("x", "a")), ip_of(p("x", "b")));
    c.node.write_source("svc.yaml", yaml_service("web", VIP, 80, "TCP", 80, &ready(&[xa, xb])).as_bytes());
    c.node.write_source(
        "policies.yaml",
        b"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}, {port: 81}]\n",
    );
    let (code, v) = diff(&c);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["in_sync"], false);
    let svc = v["services"].as_array().expect("services").iter().find(|s| s["frontend"] == format!("{VIP}:80/tcp")).expect("the service").clone();
    assert_eq!(svc["status"], "differs");
    assert_eq!(svc["details"][0], format!("backend {xb}:80 not programmed"));
    let missing = v["policy_missing"].as_array().expect("policy_missing");
    // Ports 80 and 81 now form one aligned block (80/15) per identity of
    // y, which replaces the programmed port-80 entries.
    assert_eq!(missing.len(), 3, "ports 80-81 from each of y's three identities: {missing:?}");
    assert!(missing.iter().all(|l| l["endpoint"] == xa.to_string() && l["port"] == 80 && l["port_bits"] == 15 && l["direction"] == "ingress" && l["verdict"] == "allow"), "{missing:?}");
    let extra = v["policy_extra"].as_array().expect("policy_extra");
    assert!(extra.len() == 3 && extra.iter().all(|l| l["port"] == 80 && l["port_bits"] == 16), "{extra:?}");
    let text = c.node.weir(&["diff", "--source", &source, "--node-name", &node_name]);
    assert_eq!(text.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&text.stdout).contains("DRIFT"));

    // The agent comes back and programs the files: in sync again.
    c.agent.restart();
    c.agent.wait_for_log("initial sync", 2);
    let (code, v) = diff(&c);
    assert_eq!(code, Some(0), "{v:#}");

    let bad = c.node.weir(&["diff", "--source", "etcd"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("expected `kube` or `dir:<DIR>`"));
}

#[test]
fn diff_reads_the_kubernetes_api_with_the_agents_source() {
    let c = cluster();
    let port = weir_tests::kubeapi::serve(c.node.ns(), weir_tests::kubeapi::objects_in(c.node.source_dir()));
    let kubeconfig = weir_tests::kubeapi::Kubeconfig::new(port);
    let run = || {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", c.node.ns().path().display()))
            .arg(weir_tests::bins::path("weir"))
            .args(["--bpffs", c.node.bpffs().to_str().expect("utf-8"), "diff", "--source", "kube", "--node-name", c.node.ns().name(), "-o", "json"])
            .env("KUBECONFIG", &kubeconfig.0)
            .output()
            .expect("weir diff")
    };
    let out = run();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{v:#}");
    assert_eq!(v["in_sync"], true);
    assert!(v["services"].as_array().is_some_and(|s| s.iter().any(|s| s["frontend"] == format!("{VIP}:80/tcp") && s["status"] == "in-sync")));
}

#[test]
fn monitor_policy_show_and_explain_name_cluster_rules_logs_and_audits() {
    let mut c = cluster();
    // Admin tier: y/b may not reach x/a on 80 (over the NetworkPolicy's
    // Allow); y/c is logged; an audit-mode policy would deny z.
    c.apply(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-from-y, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n    ports: [{port: 80}]\n---\n\
apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec:\n  priority: 1\n  subject: {pods: {matchLabels: {pod: a}}, namespaces: {matchLabels: {ns: x}}}\n  ingress:\n  - {name: no-yb, action: Deny, peers: [{namespaces: {matchLabels: {ns: y}}, pods: {matchLabels: {pod: b}}}]}\n  - {name: see-yc, action: Log, peers: [{namespaces: {matchLabels: {ns: y}}, pods: {matchLabels: {pod: c}}}]}\n---\n\
apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: trial}\nspec:\n  priority: 2\n  mode: Audit\n  subject: {pods: {matchLabels: {pod: a}}, namespaces: {matchLabels: {ns: x}}}\n  ingress:\n  - {name: allow-z, action: Allow, peers: [{namespaces: {matchLabels: {ns: z}}}]}\n",
    );
    let lines = monitor_while(&c.node, 3.0, || {
        assert!(!c.probe(p("y", "b"), p("x", "a"), 80, Proto::Tcp), "the cluster Deny wins");
        assert!(c.probe(p("y", "c"), p("x", "a"), 80, Proto::Tcp), "logged, then allowed by the NetworkPolicy");
        assert!(!c.probe(p("z", "c"), p("x", "a"), 80, Proto::Tcp), "audit enforces nothing: isolation denies");
    });
    let find = |src: P, what: &str| {
        let ip = ip_of(src).to_string();
        lines.iter().find(|l| l["kind"] == "verdict" && l["direction"] == "ingress" && l["src"] == ip.as_str()).unwrap_or_else(|| panic!("no {what} in {lines:#?}")).clone()
    };
    let deny = find(p("y", "b"), "cluster denial");
    assert_eq!((deny["verdict"].as_str(), deny["rule"].as_str()), (Some("deny"), Some("wcnp guard ingress[0] no-yb")));
    let logged = find(p("y", "c"), "logged allow");
    assert_eq!((logged["verdict"].as_str(), logged["logged_by"].as_str()), (Some("allow"), Some("wcnp guard ingress[1] see-yc")));
    assert_eq!(logged["rule"], "x/a-from-y ingress[0]");
    let audited = find(p("z", "c"), "audited denial");
    assert_eq!((audited["verdict"].as_str(), audited["audit"].as_str()), (Some("deny"), Some("allow by wcnp trial ingress[0] allow-z")));

    let show = json(&c.node, &["policy", "show", "x/a"]);
    let rules = show["rules"].as_array().expect("rules");
    assert!(rules.iter().any(|r| r["verdict"] == "deny" && r["rule"] == "wcnp guard ingress[0] no-yb" && r["peer"] == "y {pod=b}"), "{rules:#?}");
    assert!(rules.iter().any(|r| r["report"] == "audit: would allow by wcnp trial ingress[0] allow-z"), "{rules:#?}");

    let x = json(&c.node, &["explain", &ip_of(p("y", "b")).to_string(), &format!("{}:80/tcp", ip_of(p("x", "a")))]);
    assert_eq!(x["verdict"], "drop", "{x:#}");
    let reason = x["reason"].as_str().expect("reason");
    assert!(reason.contains("denies"), "names a denying rule, not a missing allow: {reason}");
}
