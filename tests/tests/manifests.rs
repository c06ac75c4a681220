//! The install manifests: `kubectl kustomize manifests/` renders them
//! offline, every document decodes into its upstream Kubernetes type, and
//! the fields that matter for a node agent are what the README promises.
//! (kubectl comes with the machine; without it this test fails, loudly.)

use std::collections::BTreeSet;

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::ConfigMap,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
};
use serde_json::Value;
use weir_tests::manifests::{decode_install_object, kustomize, one, typed};

fn render() -> Vec<Value> {
    kustomize()
}

#[test]
fn kustomize_renders_every_object_into_its_upstream_type() {
    let docs = render();
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    let want: BTreeSet<&str> = ["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"].into();
    assert_eq!(kinds, want);
    for d in &docs {
        decode_install_object(d);
        if ["ServiceAccount", "ConfigMap", "DaemonSet"].contains(&d["kind"].as_str().unwrap_or("")) {
            assert_eq!(d["metadata"]["namespace"], "weir-system", "{d}");
        }
    }
    let crds: BTreeSet<&str> = docs.iter().filter(|d| d["kind"] == "CustomResourceDefinition").filter_map(|d| d["metadata"]["name"].as_str()).collect();
    assert_eq!(crds, ["clusternetworkpolicies.policy.weir.dev", "weirnetworkpolicies.policy.weir.dev"].into());
}

#[test]
fn the_daemonset_runs_a_privileged_host_network_agent_on_every_node() {
    let docs = render();
    let ds: DaemonSet = typed(one(&docs, "DaemonSet"));
    let pod = ds.spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("weir-agent"));
    assert!(pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()), "tolerates every taint");
    let agent = pod.containers.iter().find(|c| c.name == "agent").expect("agent container");
    assert_eq!(agent.security_context.as_ref().and_then(|s| s.privileged), Some(true));
    let probe = agent.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("readiness probe");
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    assert_eq!(probe.host.as_deref(), Some("127.0.0.1"), "the agent serves its probes on the node's loopback");
    let live = agent.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("liveness probe");
    assert_eq!(live.path.as_deref(), Some("/livez"), "liveness does not depend on the API server");
    let args = agent.args.clone().unwrap_or_default();
    assert!(args.contains(&"--source=kube".to_string()) && args.contains(&"--bpffs=/sys/fs/bpf/weir".to_string()), "{args:?}");
    let mounts: BTreeSet<String> = agent.volume_mounts.iter().flatten().map(|m| m.mount_path.clone()).collect();
    for m in ["/sys/fs/bpf", "/run/netns", "/host/opt/cni/bin", "/host/etc/cni/net.d", "/var/run/weir"] {
        assert!(mounts.contains(m), "{m} not mounted: {mounts:?}");
    }
    // weir-cni on the host calls the agent's endpoint API at the path the
    // conflist names (the default --run-dir): the same host directory.
    assert!(args.contains(&"--run-dir=/var/run/weir".to_string()), "{args:?}");
    let run = pod.volumes.iter().flatten().find(|v| v.name == "run").and_then(|v| v.host_path.as_ref()).expect("run volume");
    assert_eq!(run.path, "/var/run/weir");
    let bpffs = agent.volume_mounts.iter().flatten().find(|m| m.mount_path == "/sys/fs/bpf").expect("bpffs");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"), "pins must reach the host's bpffs");
    let init = pod.init_containers.iter().flatten().find(|c| c.name == "install-cni").expect("install-cni init container");
    let init_args = init.args.clone().unwrap_or_default();
    assert!(init_args.contains(&"--install-cni".to_string()) && init_args.contains(&"--pod-cidr=node".to_string()), "{init_args:?}");
    // Every referenced ConfigMap key exists.
    let cm: ConfigMap = typed(one(&docs, "ConfigMap"));
    let keys: BTreeSet<String> = cm.data.unwrap_or_default().into_keys().collect();
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        for e in c.env.iter().flatten() {
            if let Some(r) = e.value_from.as_ref().and_then(|v| v.config_map_key_ref.as_ref()) {
                assert!(keys.contains(&r.key), "{} refers to missing ConfigMap key {}", c.name, r.key);
            }
        }
    }
}

#[test]
fn the_cluster_role_only_reads_the_kinds_the_agent_watches() {
    let docs = render();
    let role: ClusterRole = typed(one(&docs, "ClusterRole"));
    let mut granted = BTreeSet::new();
    for r in role.rules.unwrap_or_default() {
        for v in &r.verbs {
            assert!(["get", "list", "watch"].contains(&v.as_str()), "write verb {v} granted: least privilege");
        }
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                granted.insert(format!("{g}/{res}"));
            }
        }
    }
    // Every kind the agent's source watches (weir_model::Kind::ALL), as
    // group/plural.
    let watched: BTreeSet<String> = weir_model::Kind::ALL
        .iter()
        .map(|k| {
            let group = k.api_version().rsplit_once('/').map_or("", |(g, _)| g);
            let lower = k.as_str().to_lowercase();
            let plural = match lower.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{lower}s"),
            };
            format!("{group}/{plural}")
        })
        .collect();
    assert!(watched.contains("policy.weir.dev/clusternetworkpolicies") && watched.contains("/services"), "{watched:?}");
    assert_eq!(granted, watched, "exactly the kinds weir-agent reads");
    let binding: ClusterRoleBinding = typed(one(&docs, "ClusterRoleBinding"));
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), ("weir-agent", Some("weir-system")));
}
