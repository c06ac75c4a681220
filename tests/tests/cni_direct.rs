//! weir-cni invoked directly, as a runtime would, with host-local IPAM from
//! Debian's containernetworking-plugins: the ADD/CHECK/DEL/GC/STATUS/
//! VERSION contract, each malformed input's error code, and nothing left
//! half-made after any failure.

use serde_json::{json, Value};
use weir_tests::{bins, cni::Env, names, netns::NetNs, node::tempdir::TempDir};

#[test]
fn add_check_del_follow_the_contract() {
    let e = Env::new();
    let conf = e.conf("10.244.60.0/24");
    let id = names::unique("ctr");
    let (ok, res) = e.run("ADD", &id, &conf);
    assert!(ok, "ADD: {res}");
    assert_eq!(res["cniVersion"], "1.1.0");
    let ip = res["ips"][0]["address"].as_str().expect("address").to_string();
    assert!(ip.starts_with("10.244.60.") && ip.ends_with("/32"), "{res}");
    assert_eq!(res["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(res["ips"][0]["interface"], 1);
    assert_eq!(res["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"}));
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(res["interfaces"][1]["sandbox"], e.pod.path().display().to_string());
    let host = res["interfaces"][0]["name"].as_str().expect("host").to_string();
    assert_eq!(host, weir_cni::names::host_veth_name(&id, "eth0"));
    assert!(e.pod.ip(&["link", "show", "eth0"]).contains("mtu 1400"), "MTU honoured");
    let rec: Value = serde_json::from_slice(&std::fs::read(e.records.path().join(format!("{id}_eth0.json"))).expect("record")).expect("json");
    assert_eq!((rec["podNamespace"].as_str(), rec["podName"].as_str()), (Some("shop"), Some("web-0")), "pod recorded from CNI_ARGS");

    let (ok, err) = e.run("ADD", &id, &conf);
    assert!(!ok && err["code"].as_u64() == Some(11), "ADD of an attachment that still exists: try again later: {err}");
    assert_eq!(e.leases().len(), 1, "the repeated ADD took no second lease");

    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    assert!(e.run("CHECK", &id, &check).0, "CHECK passes on a fresh attachment");
    let bare = ip.trim_end_matches("/32").to_string();
    e.node.ns().ip(&["route", "del", &bare]);
    let (ok, err) = e.run("CHECK", &id, &check);
    assert!(!ok && err["details"].as_str().is_some_and(|d| d.contains("no host route")), "CHECK notices a missing route: {err}");

    assert!(e.run("DEL", &id, &conf).0);
    e.assert_clean("after DEL");
    assert!(e.run("DEL", &id, &conf).0, "DEL of something already gone succeeds");
}

#[test]
fn malformed_input_gets_its_error_code_and_leaves_nothing() {
    let e = Env::new();
    let good = e.conf("10.244.61.0/24");
    let id = names::unique("ctr");
    let mut cases: Vec<(&str, Value, u64)> = vec![("undecodable JSON", Value::String("{".into()), 6)];
    let mut v = good.clone();
    v["cniVersion"] = json!("0.4.0");
    cases.push(("old cniVersion", v, 1));
    let mut v = good.clone();
    v.as_object_mut().expect("obj").remove("name");
    cases.push(("missing name", v, 7));
    let mut v = good.clone();
    v["type"] = json!("bridge");
    cases.push(("wrong type", v, 7));
    let mut v = good.clone();
    v["ipMasq"] = json!(true);
    cases.push(("unsupported field", v, 2));
    let mut v = good.clone();
    v["mtu"] = json!(10);
    cases.push(("bad mtu", v, 7));
    let mut v = good.clone();
    v["ipam"]["type"] = json!("no-such-ipam");
    cases.push(("missing IPAM plugin", v, 7));
    for (what, conf, code) in cases {
        let stdin = match &conf {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let vars = e.attach_vars(&id);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ok, err) = e.cni(Some("ADD"), &vars, stdin.as_bytes());
        assert!(!ok, "{what}: ADD must fail");
        assert_eq!(err["code"].as_u64(), Some(code), "{what}: {err}");
        assert!(err["msg"].as_str().is_some_and(|m| !m.is_empty()), "{what}: has a message");
        e.assert_clean(what);
    }
    // Environment problems are code 4.
    let conf = good.to_string();
    let pod = e.pod.path().display().to_string();
    for (what, command, vars) in [
        ("no CNI_COMMAND", None, vec![]),
        ("unknown CNI_COMMAND", Some("FROB"), vec![]),
        ("no CNI_NETNS", Some("ADD"), vec![("CNI_CONTAINERID", "x1"), ("CNI_IFNAME", "eth0")]),
        ("missing netns", Some("ADD"), vec![("CNI_CONTAINERID", "x1"), ("CNI_IFNAME", "eth0"), ("CNI_NETNS", "/var/run/netns/no-such-ns")]),
        ("bad ifname", Some("ADD"), vec![("CNI_CONTAINERID", "x1"), ("CNI_IFNAME", "a-name-far-too-long"), ("CNI_NETNS", pod.as_str())]),
    ] {
        let (ok, err) = e.cni(command, &vars, conf.as_bytes());
        assert!(!ok && err["code"].as_u64() == Some(4), "{what}: {err}");
        e.assert_clean(what);
    }
}

#[test]
fn a_failed_add_after_ipam_rolls_everything_back() {
    let e = Env::new();
    // A /30 has one usable address: the second ADD fails in IPAM.
    let conf = e.conf("10.244.62.0/30");
    let (a, b) = (names::unique("ctr"), names::unique("ctr"));
    assert!(e.run("ADD", &a, &conf).0);
    let pod2 = NetNs::new("wcp");
    let mut vars = e.attach_vars(&b);
    vars[1].1 = pod2.path().display().to_string();
    let vars2: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, err) = e.cni(Some("ADD"), &vars2, conf.to_string().as_bytes());
    assert!(!ok && err["msg"].as_str().is_some_and(|m| !m.is_empty()), "IPAM exhaustion is an error: {err}");
    assert_eq!(e.weir_links().len(), 1, "nothing half-made for the failed ADD");
    assert!(e.run("DEL", &a, &conf).0);
    e.assert_clean("after DEL");

    // A failure after IPAM (the pod already has the interface name):
    // the veth and the lease are rolled back.
    let conf = e.conf("10.244.63.0/24");
    e.pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    let (ok, err) = e.run("ADD", &a, &conf);
    assert!(!ok, "ADD fails when eth0 already exists: {err}");
    e.assert_clean("after the rolled-back ADD");
}

#[test]
fn version_status_and_gc() {
    let e = Env::new();
    let conf = e.conf("10.244.64.0/24");
    let (ok, v) = e.cni(Some("VERSION"), &[], br#"{"cniVersion":"1.0.0"}"#);
    assert!(ok);
    assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));
    assert!(e.cni(Some("STATUS"), &[], conf.to_string().as_bytes()).0, "STATUS ok with host-local present");
    let mut broken = conf.clone();
    broken["ipam"]["type"] = json!("no-such-ipam");
    let (ok, err) = e.cni(Some("STATUS"), &[], broken.to_string().as_bytes());
    assert!(!ok && err["code"].as_u64() == Some(50), "STATUS reports an unavailable plugin: {err}");

    let (keep, drop_) = (names::unique("ctr"), names::unique("ctr"));
    assert!(e.run("ADD", &keep, &conf).0);
    let pod2 = NetNs::new("wcp");
    let mut vars = e.attach_vars(&drop_);
    vars[1].1 = pod2.path().display().to_string();
    let vars2: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(e.cni(Some("ADD"), &vars2, conf.to_string().as_bytes()).0);
    assert_eq!(e.weir_links().len(), 2);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": keep, "ifname": "eth0"}]);
    assert!(e.cni(Some("GC"), &[], gc.to_string().as_bytes()).0);
    assert_eq!(e.weir_links(), vec![weir_cni::names::host_veth_name(&keep, "eth0")], "GC removed the stale attachment only");
    assert_eq!(e.leases().len(), 1);
    assert!(e.run("DEL", &keep, &conf).0);
    e.assert_clean("after GC and DEL");
}

#[test]
fn the_agent_installs_and_uninstalls_the_plugin() {
    let (bin, conf) = (TempDir::new("weir-cnibin"), TempDir::new("weir-cniconf"));
    let agent = bins::path("weir-agent").display().to_string();
    let (b, c) = (bin.path().display().to_string(), conf.path().display().to_string());
    let out = weir_tests::cmd::output(&[&agent, "--install-cni", "--pod-cidr", "10.244.1.0/24", "--cni-bin-dir", &b, "--cni-conf-dir", &c, "--cni-mtu", "1450"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&std::fs::read(conf.path().join("05-weir.conflist")).expect("conflist")).expect("json");
    assert_eq!(list["plugins"][0]["agent"], serde_json::json!({"socket": "/var/run/weir/agent.sock"}), "the agent's endpoint API, fail closed");
    let out = weir_tests::cmd::output(&[&agent, "--install-cni", "--pod-cidr", "10.244.1.0/24", "--cni-bin-dir", &b, "--cni-conf-dir", &c, "--cni-mtu", "1450", "--run-dir", "/run/w", "--cni-fail-open"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&std::fs::read(conf.path().join("05-weir.conflist")).expect("conflist")).expect("json");
    assert_eq!(list["plugins"][0]["agent"], serde_json::json!({"socket": "/run/w/agent.sock", "failOpen": true}));
    assert_eq!(list["plugins"][0]["type"], "weir-cni");
    assert_eq!(list["plugins"][0]["mtu"], 1450);
    assert_eq!(list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(std::fs::read(bin.path().join("weir-cni")).expect("binary"), std::fs::read(bins::path("weir-cni")).expect("built"));
    let out = weir_tests::cmd::output(&[&agent, "--uninstall-cni", "--cni-bin-dir", &b, "--cni-conf-dir", &c]);
    assert!(out.status.success());
    assert_eq!(std::fs::read_dir(bin.path()).expect("dir").count() + std::fs::read_dir(conf.path()).expect("dir").count(), 0);
    let out = weir_tests::cmd::output(&[&agent, "--install-cni", "--pod-cidr", "not-a-cidr", "--cni-bin-dir", &b, "--cni-conf-dir", &c]);
    assert!(!out.status.success(), "a bad --pod-cidr is refused");
}

#[test]
fn the_installer_reads_the_nodes_pod_cidr_from_the_api() {
    let node = weir_tests::Node::new();
    let objects = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.7.0/24"}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bare"}, "spec": {}}),
    ];
    let port = weir_tests::kubeapi::serve(node.ns(), objects);
    let kubeconfig = weir_tests::kubeapi::Kubeconfig::new(port);
    let (bin, conf) = (TempDir::new("weir-cnibin"), TempDir::new("weir-cniconf"));
    let (b, c) = (bin.path().display().to_string(), conf.path().display().to_string());
    let install = |name: &str| {
        std::process::Command::new("nsenter")
            .arg(format!("--net={}", node.ns().path().display()))
            .arg(bins::path("weir-agent"))
            .args(["--install-cni", "--pod-cidr", "node", "--node-name", name, "--cni-bin-dir", &b, "--cni-conf-dir", &c])
            .env("KUBECONFIG", &kubeconfig.0)
            .output()
            .expect("weir-agent --install-cni")
    };
    let out = install("n1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&std::fs::read(conf.path().join("05-weir.conflist")).expect("conflist")).expect("json");
    assert_eq!(list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"], "10.244.7.0/24");
    let out = install("bare");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no spec.podCIDR"), "{}", String::from_utf8_lossy(&out.stderr));
}
