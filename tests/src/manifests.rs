//! Rendering the install manifests for the manifest and chart tests: the
//! kustomization through `kubectl kustomize`, the Helm chart through
//! Helm's own SDK (`tests/helm/helm.py` on helm-python-sdk, which `cargo
//! xtask setup` installs). Both fail loudly when their tool is missing.

use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo().join("manifests/helm/weir")
}

/// `kubectl kustomize manifests/`, one JSON value per document.
pub fn kustomize() -> Vec<Value> {
    let dir = repo().join("manifests");
    let out = std::process::Command::new("kubectl")
        .args(["kustomize", dir.to_str().expect("utf-8")])
        .output()
        .unwrap_or_else(|e| panic!("running `kubectl kustomize` (kubectl is needed to render manifests/): {e}"));
    assert!(out.status.success(), "kubectl kustomize failed: {}", String::from_utf8_lossy(&out.stderr));
    documents(&String::from_utf8(out.stdout).expect("utf-8"))
}

/// The YAML documents of a stream (comments and empty documents dropped).
pub fn documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .filter_map(|d| {
            let v: Value = serde_yaml_ng::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}"));
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// The Python that has helm-python-sdk: `WEIR_HELM_PYTHON`, else the
/// virtualenv `cargo xtask setup` makes.
pub fn helm_python() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_HELM_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/weir/helm-sdk-0.2.2/bin/python")
}

/// Runs `tests/helm/helm.py <verb> <chart> [values]`: Ok(stdout JSON) or
/// Err(Helm's message) when Helm refused.
pub fn helm(verb: &str, values: Option<&Path>) -> Result<Value, String> {
    let py = helm_python();
    let script = repo().join("tests/helm/helm.py");
    let mut cmd = std::process::Command::new(&py);
    cmd.arg(&script).arg(verb).arg(chart_dir());
    if let Some(v) = values {
        cmd.arg(v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {} (helm-python-sdk; `cargo xtask setup` installs it): {e}", py.display()));
    match out.status.code() {
        Some(0) => Ok(serde_json::from_slice(&out.stdout).expect("helm.py prints JSON")),
        Some(3) => Err(String::from_utf8_lossy(&out.stderr).to_string()),
        _ => panic!("helm.py {verb} failed (is helm-python-sdk installed? `cargo xtask setup`): {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// The chart rendered with `values` (default values when `None`), one
/// JSON value per object; Helm's error when it refuses.
pub fn helm_render(values: Option<&Path>) -> Result<Vec<Value>, String> {
    let files = helm("render", values)?;
    let mut docs = Vec::new();
    for (path, text) in files.as_object().expect("a map of templates") {
        if path.ends_with(".yaml") {
            docs.extend(documents(text.as_str().expect("text")));
        }
    }
    Ok(docs)
}

/// Decodes `v` into its Kubernetes type, naming the path of any mismatch.
pub fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_path_to_error::deserialize(v.clone()).unwrap_or_else(|e| panic!("{} at {}: {v}", e.inner(), e.path()))
}

/// The one document of `kind`.
pub fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// Decodes an install object into its upstream Kubernetes type (panicking
/// with the path of any mismatch); any other kind panics.
pub fn decode_install_object(d: &Value) {
    use k8s_openapi::{
        api::{
            apps::v1::DaemonSet,
            core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
            rbac::v1::{ClusterRole, ClusterRoleBinding},
        },
        apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    };
    match d["kind"].as_str() {
        Some("Namespace") => drop(typed::<Namespace>(d)),
        Some("CustomResourceDefinition") => drop(typed::<CustomResourceDefinition>(d)),
        Some("ServiceAccount") => drop(typed::<ServiceAccount>(d)),
        Some("ClusterRole") => drop(typed::<ClusterRole>(d)),
        Some("ClusterRoleBinding") => drop(typed::<ClusterRoleBinding>(d)),
        Some("ConfigMap") => drop(typed::<ConfigMap>(d)),
        Some("DaemonSet") => drop(typed::<DaemonSet>(d)),
        Some("Service") => drop(typed::<Service>(d)),
        // The Prometheus Operator's type, not in k8s-openapi.
        Some("ServiceMonitor") => assert_eq!(d["apiVersion"], "monitoring.coreos.com/v1", "{d}"),
        other => panic!("unexpected {other:?}: {d}"),
    }
}
