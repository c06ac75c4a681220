//! A Pod as weir reads it. A Pod is the one kind a cluster holds by the
//! hundred thousand, and its upstream type is large: 2.4 KB inline plus
//! 2.3 KB per container before any string, all of which a list of every
//! Pod in the cluster holds at once. This type has the upstream field
//! names and shape (it deserializes the same JSON and YAML) but keeps
//! only what weir acts on: the name, namespace, labels and
//! resourceVersion; the node, host networking, the containers' ports; the
//! phase and the addresses. Everything else is skipped while parsing,
//! managedFields and annotations included.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    api::core::v1::{ContainerPort, PodIP},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Deserializer};

use crate::policy::interned::{shared, SharedLabels};

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "RawPod")]
pub struct PodObject {
    /// Name, namespace, resourceVersion and uid (labels: [`Self::labels`]).
    pub metadata: ObjectMeta,
    /// `metadata.labels`, shared with every Pod that has the same: taken
    /// out of each Pod as soon as it is parsed, so a list of 100,000 Pods
    /// holds a few dozen label maps, not 100,000.
    pub labels: SharedLabels,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

#[derive(Deserialize)]
struct RawPod {
    #[serde(default, deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<PodSpec>,
    #[serde(default)]
    status: Option<PodStatus>,
}

impl From<RawPod> for PodObject {
    fn from(mut raw: RawPod) -> Self {
        let labels = shared(raw.metadata.labels.take().unwrap_or_default());
        Self { metadata: raw.metadata, labels, spec: raw.spec, status: raw.status }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

/// A container: its ports alone.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Container {
    #[serde(default)]
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIP>>,
}

/// The metadata fields weir reads; the rest is skipped unparsed.
fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        namespace: Option<String>,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
        #[serde(default)]
        resource_version: Option<String>,
        #[serde(default)]
        uid: Option<String>,
    }
    let s = Option::<Slim>::deserialize(d)?;
    Ok(s.map(|s| ObjectMeta { name: s.name, namespace: s.namespace, labels: s.labels, resource_version: s.resource_version, uid: s.uid, ..ObjectMeta::default() }).unwrap_or_default())
}

/// Listed and watched at the Pods' own path (`/api/v1/pods`).
impl kube::Resource for PodObject {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pod_keeps_what_weir_reads_and_drops_the_rest() {
        let y = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  uid: 1f0c
  resourceVersion: "42"
  labels: {app: web}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: "{...}"}
  managedFields: [{manager: kubelet, operation: Update, fieldsV1: {f:status: {}}}]
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: web, uid: x}]
spec:
  nodeName: n1
  containers:
  - name: c
    image: nginx
    env: [{name: A, value: b}]
    ports: [{name: http, containerPort: 8080, protocol: TCP}]
  - name: sidecar
    image: envoy
  volumes: [{name: v, emptyDir: {}}]
status:
  phase: Running
  podIP: 10.0.0.5
  podIPs: [{ip: 10.0.0.5}]
  conditions: [{type: Ready, status: "True"}]
  containerStatuses: [{name: c, ready: true, restartCount: 0, image: nginx, imageID: x}]
"#;
        let p: PodObject = serde_yaml_ng::from_str(y).expect("pod");
        let twin: PodObject = serde_yaml_ng::from_str(&y.replace("web-0", "web-1")).expect("pod");
        assert!(std::sync::Arc::ptr_eq(&p.labels, &twin.labels), "one label map for both");
        assert_eq!(p.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(p.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(*p.labels, BTreeMap::from([("app".to_string(), "web".to_string())]));
        assert_eq!(p.metadata.labels, None, "the labels live in one place");
        assert_eq!((p.metadata.annotations.as_ref(), p.metadata.managed_fields.as_ref(), p.metadata.owner_references.as_ref()), (None, None, None));
        let spec = p.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.containers.len(), 2);
        let port = &spec.containers[0].ports.as_ref().expect("ports")[0];
        assert_eq!((port.name.as_deref(), port.container_port, port.protocol.as_deref()), (Some("http"), 8080, Some("TCP")));
        let status = p.status.expect("status");
        assert_eq!((status.phase.as_deref(), status.pod_ip.as_deref()), (Some("Running"), Some("10.0.0.5")));
        assert_eq!(status.pod_ips.expect("podIPs")[0].ip, "10.0.0.5");
    }

    #[test]
    fn it_is_a_fraction_of_the_upstream_pod() {
        assert!(std::mem::size_of::<PodObject>() * 4 < std::mem::size_of::<k8s_openapi::api::core::v1::Pod>(), "{}", std::mem::size_of::<PodObject>());
    }
}
