//! The Helm chart (manifests/helm/weir), rendered and linted by Helm's own
//! SDK (helm-python-sdk, Helm v4's Go SDK as a library; `cargo xtask
//! setup` installs it): every object decodes into its upstream type, the
//! default values render exactly the kustomization's objects (the one
//! source of truth check), a non-default values file reaches the agent's
//! flags, the schema refuses bad values with Helm's error, and lint is
//! clean.

use std::{collections::BTreeSet, path::PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use serde_json::Value;
use weir_tests::manifests::{decode_install_object, documents, helm, helm_render, kustomize, one, typed};

fn custom_values() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/values-custom.yaml")
}

fn decode_all(docs: &[Value]) {
    docs.iter().for_each(decode_install_object);
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().filter_map(|d| d["kind"].as_str().map(str::to_string)).collect()
}

/// Drops what only Helm adds: its own labels and the pod template's
/// ConfigMap checksum (which rolls the agents when a value changes).
fn without_helm_metadata(mut v: Value) -> Value {
    if let Some(labels) = v.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        for k in ["helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"] {
            labels.remove(k);
        }
    }
    if let Some(meta) = v.pointer_mut("/spec/template/metadata").and_then(Value::as_object_mut) {
        if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            ann.remove("checksum/config");
            if ann.is_empty() {
                meta.remove("annotations");
            }
        }
    }
    v
}

#[test]
fn default_values_render_the_kustomizations_objects() {
    let chart = helm_render(None).expect("the chart renders with its defaults");
    decode_all(&chart);
    assert_eq!(kinds(&chart), ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"].map(String::from).into(), "no monitoring objects by default");
    // The namespace is Helm's (`-n weir-system --create-namespace`); every
    // other object of the kustomization comes out of the chart the same.
    let kust: Vec<Value> = kustomize().into_iter().filter(|d| d["kind"] != "Namespace" && d["kind"] != "CustomResourceDefinition").collect();
    assert_eq!(kust.len(), chart.len(), "the same objects");
    for k in &kust {
        let name = &k["metadata"]["name"];
        let c = chart.iter().find(|c| c["kind"] == k["kind"] && &c["metadata"]["name"] == name).unwrap_or_else(|| panic!("the chart has no {} {name}", k["kind"]));
        assert_eq!(without_helm_metadata(c.clone()), *k, "{} {name}: chart (left) and kustomization (right) differ", k["kind"]);
    }
    // The CRDs ship in the chart's crds/, the same files as the kustomization's.
    let crds = helm("crds", None).expect("crds");
    let names: BTreeSet<String> = crds
        .as_array()
        .expect("list")
        .iter()
        .flat_map(|f| documents(f["data"].as_str().expect("text")))
        .map(|d| typed::<CustomResourceDefinition>(&d).metadata.name.expect("name"))
        .collect();
    assert_eq!(names, ["clusternetworkpolicies.policy.weir.dev", "weirnetworkpolicies.policy.weir.dev"].map(String::from).into());
}

#[test]
fn a_values_file_reaches_the_agents_flags_and_the_monitoring_hooks() {
    let docs = helm_render(Some(&custom_values())).expect("the chart renders with the custom values");
    decode_all(&docs);
    let ds: DaemonSet = typed(one(&docs, "DaemonSet"));
    let pod = ds.spec.template.spec.clone().expect("pod spec");
    let agent = pod.containers.iter().find(|c| c.name == "agent").expect("agent");
    let args = agent.args.clone().unwrap_or_default();
    for want in [
        "--devices=eth0,eth1",
        "--routing=native",
        "--tunnel-port=4789",
        "--nodeport-addresses=192.168.0.0/16,10.0.0.0/8",
        "--masquerade=false",
        "--masquerade-all",
        "--xdp",
        "--non-masquerade-cidrs=100.64.0.0/10",
        "--masquerade-max-entries=262144",
        "--masquerade-ports=40000-60999",
        "--socket-lb-namespaces=node",
        "--lb-table-slots=8388608",
        "--kube-streaming-lists=never",
        "--frontends-max-entries=262144",
        "--backends-max-entries=1048576",
        "--ct-max-entries=1048576",
        "--ct6-max-entries=131072",
        "--ct-max-per-endpoint=65536",
        "--ct-gc-interval=5",
        "--ct-tcp-established-timeout=7200",
        "--ct-udp-timeout=20",
        "--ct-udp-stream-timeout=90",
        "--log-format=json",
        "--bpf-log-level=debug",
        "--bpf-verifier-log-level=verbose",
        "--metrics-addr=0.0.0.0:9100",
        "--healthz-bind-address=0.0.0.0:10257",
        "--policy-allow-events=10",
        "--liveness-timeout=90",
        "--ready-stale-after=30",
        "--netlink-rcvbuf=4194304",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} missing from the agent's args: {args:?}");
    }
    assert!(!args.iter().any(|a| a.starts_with("--ct-tcp-syn-timeout")), "unset values are the agent's defaults, not flags: {args:?}");
    assert_eq!(agent.image.as_deref(), Some("registry.example/weir:v0.1.0"));
    assert_eq!(agent.image_pull_policy.as_deref(), Some("Always"));
    assert!(agent.env.iter().flatten().any(|e| e.name == "RUST_BACKTRACE"), "extraEnv");
    let probe = agent.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("probe");
    assert_eq!(probe.port, k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9100), "the probes follow the metrics port");
    assert_eq!(agent.resources.as_ref().and_then(|r| r.limits.as_ref()).and_then(|l| l.get("memory")).map(|q| q.0.as_str()), Some("1Gi"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-cluster-critical"));
    assert_eq!(pod.node_selector.as_ref().and_then(|n| n.get("kubernetes.io/os")).map(String::as_str), Some("linux"));
    assert_eq!(pod.tolerations.as_ref().map(Vec::len), Some(1));
    let cni_bin = pod.volumes.iter().flatten().find(|v| v.name == "cni-bin").and_then(|v| v.host_path.as_ref()).expect("cni-bin");
    assert_eq!(cni_bin.path, "/home/kubernetes/bin");
    let init = pod.init_containers.iter().flatten().find(|c| c.name == "install-cni").expect("install-cni");
    assert!(init.args.iter().flatten().any(|a| a == "--routing=native"), "the CNI install knows the routing mode: {:?}", init.args);
    assert!(init.args.iter().flatten().any(|a| a == "--cni-fail-open"), "cni.failOpen reaches the conflist: {:?}", init.args);
    let strategy = ds.spec.update_strategy.as_ref().and_then(|u| u.rolling_update.as_ref()).and_then(|r| r.max_unavailable.clone());
    assert_eq!(strategy, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("10%".into())));
    let cm: ConfigMap = typed(one(&docs, "ConfigMap"));
    let data = cm.data.unwrap_or_default();
    assert_eq!((data["log"].as_str(), data["cni-mtu"].as_str(), data["resync-interval"].as_str()), ("debug", "8950", "120"));
    // Monitoring: a headless Service and a ServiceMonitor on its metrics
    // port; Datadog's Autodiscovery annotation names the agent container.
    let svc: Service = typed(one(&docs, "Service"));
    let spec = svc.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.ports.as_ref().and_then(|p| p.first()).map(|p| p.port), Some(9100));
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "weir-agent");
    let ann = ds.spec.template.metadata.clone().and_then(|m| m.annotations).unwrap_or_default();
    let dd: Value = serde_json::from_str(&ann["ad.datadoghq.com/agent.checks"]).expect("the Datadog annotation is JSON");
    assert_eq!(dd["openmetrics"]["instances"][0]["openmetrics_endpoint"], "http://%%host%%:9100/metrics");
    assert_eq!(ann.get("example.com/team").map(String::as_str), Some("net"), "podAnnotations");
    // A values change changes the checksum, so `helm upgrade` rolls the agents.
    let defaults: DaemonSet = typed(one(&helm_render(None).expect("defaults"), "DaemonSet"));
    let sum = |d: &DaemonSet| d.spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref()).and_then(|a| a.get("checksum/config").cloned());
    assert!(sum(&defaults).is_some());
    assert_ne!(sum(&defaults), Some(ann["checksum/config"].clone()));
}

#[test]
fn the_schema_and_the_templates_refuse_bad_values_with_helms_error() {
    let dir = tempfile_dir();
    for (yaml, want) in [
        ("agent: {routing: bgp}\n", "/agent/routing"),
        ("cni: {mtu: big}\n", "/cni/mtu"),
        ("agent: {tunnelPort: 70000}\n", "/agent/tunnelPort"),
        ("agent: {nodePortAddresses: [not-a-cidr]}\n", "/agent/nodePortAddresses"),
        ("agnet: {routing: native}\n", "agnet"),
        // Scraping from outside the node needs a reachable metrics address.
        ("metrics: {serviceMonitor: {enabled: true}}\n", "set metrics.host to 0.0.0.0"),
    ] {
        let f = dir.join("values.yaml");
        std::fs::write(&f, yaml).expect("write");
        let err = helm_render(Some(&f)).expect_err(yaml);
        assert!(err.contains(want), "{yaml:?}: Helm's error names {want:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn helm_lint_passes_without_warnings() {
    for values in [None, Some(custom_values())] {
        let report = helm("lint", values.as_deref()).expect("lint runs");
        assert_eq!(report["errors"].as_array().map(Vec::len), Some(0), "{report:#}");
        // Severity 1 is information (the chart has no icon); 2 warning, 3 error.
        let serious: Vec<&Value> = report["messages"].as_array().expect("messages").iter().filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2).collect();
        assert!(serious.is_empty(), "lint warnings or errors: {serious:#?}");
    }
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("weir-helm-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
