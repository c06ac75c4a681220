//! weir-cni's edges of the CNI 1.1 spec, invoked directly as a runtime
//! would: no process but the IPAM plugin, CHECK by value, GC that refuses
//! a missing or malformed keep-list, reclaims the lease of an ADD killed
//! half-way and sweeps past a failure, DEL that removes the veth when IPAM
//! fails and refuses IDs that would escape its data directory, and
//! concurrent operations that never corrupt the records.

use std::{sync::Arc, thread};

use serde_json::{json, Value};
use weir_tests::{
    cni::{Env, ScriptedIpam},
    names,
    netns::NetNs,
    node::tempdir::TempDir,
};

#[test]
fn add_check_and_del_start_no_process_but_the_ipam_plugin() {
    let mut e = Env::new();
    // Nothing on PATH: `ip`, `nsenter` or any other helper cannot be found.
    let empty = TempDir::new("weir-nopath");
    e.path = empty.path().display().to_string();
    let conf = e.conf("10.244.65.0/24");
    let id = names::unique("ctr");
    let (ok, res) = e.run("ADD", &id, &conf);
    assert!(ok, "ADD with an empty PATH: {res}");
    assert!(e.pod.ip(&["-o", "addr", "show", "dev", "eth0"]).contains("10.244.65."), "the pod has its address");
    assert!(e.pod.ip(&["route", "show", "default"]).contains("via 169.254.1.1 dev eth0 onlink"), "default route");
    assert!(e.pod.ip(&["neigh", "show", "169.254.1.1"]).contains("PERMANENT"), "static gateway entry");
    let mut check = conf.clone();
    check["prevResult"] = res;
    assert!(e.run("CHECK", &id, &check).0, "CHECK with an empty PATH");
    assert!(e.run("DEL", &id, &conf).0, "DEL with an empty PATH");
    e.assert_clean("after DEL");
}

#[test]
fn check_compares_addresses_by_value_not_by_text() {
    let e = Env::new();
    let conf = e.conf("10.244.66.0/24");
    let id = names::unique("ctr");
    let (ok, res) = e.run("ADD", &id, &conf);
    assert!(ok, "ADD: {res}");
    let host = res["interfaces"][0]["name"].as_str().expect("host").to_string();
    // The pod holds 11.1.1.1/32 and the host routes 1.1.1.1 to it; a
    // previous result that claims 1.1.1.1/32 must not pass because the
    // text "1.1.1.1/32" occurs inside "11.1.1.1/32".
    e.pod.ip(&["addr", "add", "11.1.1.1/32", "dev", "eth0"]);
    e.node.ns().ip(&["route", "add", "1.1.1.1/32", "dev", &host]);
    let mut check = conf.clone();
    check["prevResult"] = res.clone();
    check["prevResult"]["ips"] = json!([{"address": "1.1.1.1/32", "gateway": "169.254.1.1", "interface": 1}]);
    let (ok, err) = e.run("CHECK", &id, &check);
    assert!(!ok, "CHECK must fail: {err}");
    assert!(err["details"].as_str().is_some_and(|d| d.contains("1.1.1.1/32 is not on eth0")), "{err}");
    assert!(e.run("DEL", &id, &conf).0);
    e.assert_clean("after DEL");
}

#[test]
fn gc_without_a_well_formed_keep_list_removes_nothing() {
    let e = Env::new();
    let conf = e.conf("10.244.67.0/24");
    let id = names::unique("ctr");
    assert!(e.run("ADD", &id, &conf).0);
    for (what, valid) in [
        ("missing", None),
        ("not a list", Some(json!("everything"))),
        ("an entry without ifname", Some(json!([{"containerID": id}]))),
        ("an entry with a non-string ID", Some(json!([{"containerID": 7, "ifname": "eth0"}]))),
    ] {
        let (ok, err) = e.gc(&conf, valid);
        assert!(!ok, "{what}: GC must fail");
        assert_eq!(err["code"].as_u64(), Some(7), "{what}: invalid configuration: {err}");
        assert!(err["msg"].as_str().is_some_and(|m| m.contains("cni.dev/valid-attachments")), "{what}: names the field: {err}");
        assert_eq!(e.weir_links().len(), 1, "{what}: the attachment's veth is still there");
        assert_eq!(e.leases().len(), 1, "{what}: its lease is still there");
        assert!(e.record_of(&id).is_some(), "{what}: its record is still there");
    }
    assert!(e.run("DEL", &id, &conf).0);
    e.assert_clean("after DEL");
}

/// An environment whose IPAM plugin is host-local behind [`ScriptedIpam`].
fn scripted(subnet: &str) -> (Env, ScriptedIpam, Value) {
    let mut e = Env::new();
    let ipam = ScriptedIpam::new();
    e.cni_path = ipam.dir().display().to_string();
    let conf = ipam.conf(&e.conf(subnet));
    (e, ipam, conf)
}

#[test]
fn gc_reclaims_the_lease_of_an_add_killed_half_way() {
    let (e, ipam, conf) = scripted("10.244.68.0/24");
    let id = names::unique("ctr");
    ipam.kill_after_add(true);
    let (ok, _) = e.run("ADD", &id, &conf);
    assert!(!ok, "the ADD was killed");
    ipam.kill_after_add(false);
    assert_eq!(e.leases().len(), 1, "the killed ADD left a lease behind");
    assert!(e.weir_links().is_empty(), "and no veth");
    // The runtime restarts and collects everything it does not know.
    let (ok, err) = e.gc(&conf, Some(json!([])));
    assert!(ok, "GC: {err}");
    e.assert_clean("after GC");
}

#[test]
fn gc_hands_the_keep_list_to_an_ipam_plugin_that_has_gc() {
    let (e, ipam, conf) = scripted("10.244.73.0/24");
    ipam.speak_1_1();
    let (keep, stale) = (names::unique("ctr"), names::unique("ctr"));
    let pod2 = NetNs::new("wcp");
    assert!(e.run("ADD", &keep, &conf).0);
    assert!(e.run_in("ADD", &stale, &pod2, &conf).0);
    let valid = json!([{"containerID": keep, "ifname": "eth0"}]);
    let (ok, err) = e.gc(&conf, Some(valid.clone()));
    assert!(ok, "GC: {err}");
    assert!(e.record_of(&stale).is_none() && e.record_of(&keep).is_some(), "weir-cni released the stale attachment itself");
    let calls = ipam.gc_calls();
    assert_eq!(calls.len(), 1, "the IPAM plugin's GC ran once: {calls:?}");
    assert_eq!(calls[0]["cniVersion"], "1.1.0");
    assert_eq!(calls[0]["cni.dev/valid-attachments"], valid, "with the runtime's keep-list");
    assert!(e.run("DEL", &keep, &conf).0);
    e.assert_clean("after GC and DEL");
}

#[test]
fn gc_sweeps_past_a_failing_attachment_and_reports_it() {
    let (e, ipam, conf) = scripted("10.244.69.0/24");
    let pod2 = NetNs::new("wcp");
    let (bad, good, keep) = (names::unique("ctr"), names::unique("ctr"), names::unique("ctr"));
    let pod3 = NetNs::new("wcp");
    assert!(e.run("ADD", &bad, &conf).0);
    assert!(e.run_in("ADD", &good, &pod2, &conf).0);
    assert!(e.run_in("ADD", &keep, &pod3, &conf).0);
    ipam.fail_del_for(&[&bad]);
    let (ok, err) = e.gc(&conf, Some(json!([{"containerID": keep, "ifname": "eth0"}])));
    assert!(!ok, "GC reports the failure");
    let details = err["details"].as_str().unwrap_or_default();
    assert!(details.contains(&bad) && details.contains("lease store unavailable"), "names the attachment and the cause: {err}");
    assert!(!details.contains(&good), "{err}");
    assert_eq!(e.weir_links(), vec![weir_cni::names::host_veth_name(&keep, "eth0")], "both stale veths removed, the kept one stays");
    assert!(e.record_of(&good).is_none(), "the other stale attachment was released");
    assert!(e.record_of(&bad).is_some(), "the failed one keeps its record, so a later GC retries its lease");
    assert_eq!(e.leases().len(), 2, "the failed lease and the kept one");
    ipam.fail_del_for(&[]);
    let (ok, err) = e.gc(&conf, Some(json!([{"containerID": keep, "ifname": "eth0"}])));
    assert!(ok, "the retry releases it: {err}");
    assert_eq!(e.leases().len(), 1);
    assert!(e.run_in("DEL", &keep, &pod3, &conf).0);
    e.assert_clean("after GC and DEL");
}

#[test]
fn del_removes_the_veth_when_ipam_fails_and_reports_the_failure() {
    let (e, ipam, conf) = scripted("10.244.70.0/24");
    let id = names::unique("ctr");
    assert!(e.run("ADD", &id, &conf).0);
    ipam.fail_del_for(&[&id]);
    let (ok, err) = e.run("DEL", &id, &conf);
    assert!(!ok, "DEL reports the IPAM failure");
    assert_eq!(err["code"].as_u64(), Some(11), "the IPAM plugin's own code: {err}");
    assert!(e.weir_links().is_empty(), "the veth is gone all the same");
    assert!(e.pod.links_with_prefix("eth0").is_empty(), "and so is the pod's end");
    assert_eq!(e.leases().len(), 1, "the lease could not be released");
    ipam.fail_del_for(&[]);
    assert!(e.run("DEL", &id, &conf).0, "the runtime's retry succeeds");
    e.assert_clean("after the retried DEL");
    assert!(e.run("DEL", &id, &conf).0, "DEL of something already gone succeeds");
}

#[test]
fn del_refuses_ids_that_would_escape_the_data_directory() {
    let e = Env::new();
    // No IPAM section: weir-cni alone must refuse (host-local would refuse
    // such IDs by itself, hiding weir-cni's own check).
    let mut conf = e.conf("10.244.71.0/24");
    conf.as_object_mut().expect("object").remove("ipam");
    // A file beside the data directory, where "../<name>" would lead.
    let parent = e.records.path().parent().expect("parent").to_path_buf();
    let victim = names::unique("victim");
    let victim_file = parent.join(format!("{victim}_eth0.json"));
    std::fs::write(&victim_file, b"{}").expect("victim");
    let escape = format!("../{victim}");
    for (what, vars) in [
        ("container ID with ..", vec![("CNI_CONTAINERID", escape.as_str()), ("CNI_IFNAME", "eth0")]),
        ("ifname with /", vec![("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "../../x")]),
        ("no ifname", vec![("CNI_CONTAINERID", "abc")]),
    ] {
        let (ok, err) = e.cni(Some("DEL"), &vars, conf.to_string().as_bytes());
        assert!(!ok && err["code"].as_u64() == Some(4), "{what}: refused as a bad environment: {err}");
    }
    assert!(victim_file.exists(), "nothing outside the data directory was touched");
    let _ = std::fs::remove_file(victim_file);
}

#[test]
fn concurrent_operations_never_corrupt_the_records() {
    let e = Arc::new(Env::new());
    let conf = Arc::new(e.conf("10.244.72.0/24"));
    // The same attachment added twice at once: exactly one ADD wins, the
    // other is told to try again, and one lease is taken.
    for round in 0..5 {
        let id = Arc::new(names::unique("same"));
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (e, conf, id) = (e.clone(), conf.clone(), id.clone());
                thread::spawn(move || e.run("ADD", &id, &conf))
            })
            .collect();
        let results: Vec<(bool, Value)> = racers.into_iter().map(|t| t.join().expect("join")).collect();
        let winners = results.iter().filter(|(ok, _)| *ok).count();
        assert_eq!(winners, 1, "round {round}: one ADD wins: {results:?}");
        let loser = results.iter().find(|(ok, _)| !ok).expect("a loser");
        assert_eq!(loser.1["code"].as_u64(), Some(11), "round {round}: try again later: {results:?}");
        assert_eq!(e.leases().len(), 1, "round {round}: one lease");
        assert!(e.run("DEL", &id, &conf).0);
        e.assert_clean(&format!("round {round}"));
    }
    // 20 pods added and deleted at once, with GC running beside them (it
    // is told to keep every one of them: it must not touch ADDs in flight).
    let ids: Vec<String> = (0..20).map(|_| names::unique("par")).collect();
    let keep = Arc::new(json!(ids.iter().map(|id| json!({"containerID": id, "ifname": "eth0"})).collect::<Vec<_>>()));
    let workers: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let (e, conf) = (e.clone(), conf.clone());
            thread::spawn(move || {
                let pod = NetNs::new("wcq");
                let (ok, res) = e.run_in("ADD", &id, &pod, &conf);
                let del = e.run_in("DEL", &id, &pod, &conf);
                (ok, res, del)
            })
        })
        .collect();
    let gcs: Vec<_> = (0..3)
        .map(|_| {
            let (e, conf, keep) = (e.clone(), conf.clone(), keep.clone());
            thread::spawn(move || e.gc(&conf, Some((*keep).clone())))
        })
        .collect();
    for w in workers {
        let (ok, res, (del_ok, del)) = w.join().expect("join");
        assert!(ok, "ADD: {res}");
        assert!(del_ok, "DEL: {del}");
    }
    for g in gcs {
        let (ok, err) = g.join().expect("join");
        assert!(ok, "GC: {err}");
    }
    e.assert_clean("after 20 concurrent ADD/DEL pairs and GC");
}
