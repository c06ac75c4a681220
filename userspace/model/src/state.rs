//! The cluster state weir has seen, from whichever source, and which
//! services a change affects. Services and EndpointSlices are kept as
//! compact models (only what translation reads); other kinds as objects.

use std::collections::{BTreeMap, BTreeSet};

use crate::{node::NodeModel, service::ServiceModel, slice::SliceModel, Kind, Object, ObjectKey};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A change from a source.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Change {
    Upsert(Object),
    Delete(ObjectKey),
    /// The complete set of objects of one kind (a relist): every object of
    /// that kind not in it is deleted. This is what keeps a watch gap from
    /// losing a deletion.
    Replace { kind: Kind, objects: Vec<Object> },
}

/// A service, by namespace and name.
pub type ServiceKey = (String, String);

/// What a change touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affected {
    pub services: BTreeSet<ServiceKey>,
    /// Something every service's translation depends on changed (a Node).
    pub all: bool,
    /// A Pod, Namespace or NetworkPolicy changed: policy needs translating.
    pub policy: bool,
    /// A Node's routing-relevant fields changed (pod CIDRs, addresses).
    pub nodes: bool,
}

impl Affected {
    pub fn merge(&mut self, other: Affected) {
        self.services.extend(other.services);
        self.all |= other.all;
        self.policy |= other.policy;
        self.nodes |= other.nodes;
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.all && !self.policy && !self.nodes
    }
}

/// One stored object.
#[derive(Clone, Debug, PartialEq)]
enum Stored {
    Service(ServiceModel),
    Slice(SliceModel),
    Node(NodeModel),
    /// A Pod's compact model; `None` for a pod that owns no address.
    Pod(Option<Box<crate::policy::world::PodInfo>>),
    Other(Box<Object>),
}

impl Stored {
    fn from_object(o: Object) -> Self {
        match o {
            Object::Service(s) => Self::Service(ServiceModel::from_k8s(&s)),
            Object::EndpointSlice(s) => Self::Slice(SliceModel::from_k8s(&s)),
            Object::Node(n) => Self::Node(NodeModel::from_k8s(&n)),
            Object::Pod(p) => Self::Pod(crate::policy::world::pod_info(&p).map(Box::new)),
            other => Self::Other(Box::new(other.slim())),
        }
    }

    /// The service a slice belongs to.
    fn slice_service(&self) -> Option<ServiceKey> {
        match self {
            Self::Slice(s) => Some((s.namespace.clone(), s.service.clone()?)),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    objects: BTreeMap<Kind, BTreeMap<(String, String), Stored>>,
    /// (namespace, service) → slice names.
    slices_by_service: BTreeMap<ServiceKey, BTreeSet<String>>,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a change; returns the services whose translation may differ.
    pub fn apply(&mut self, change: Change) -> Affected {
        match change {
            Change::Upsert(o) => self.upsert(o),
            Change::Delete(k) => self.delete(&k),
            Change::Replace { kind, objects } => {
                let mut affected = Affected::default();
                let keep: BTreeSet<(String, String)> = objects
                    .iter()
                    .map(|o| {
                        let k = o.key();
                        (k.namespace, k.name)
                    })
                    .collect();
                let stale: Vec<ObjectKey> = self
                    .objects
                    .get(&kind)
                    .map(|m| {
                        m.keys()
                            .filter(|k| !keep.contains(*k))
                            .map(|(ns, name)| ObjectKey { kind, namespace: ns.clone(), name: name.clone() })
                            .collect()
                    })
                    .unwrap_or_default();
                for k in stale {
                    affected.merge(self.delete(&k));
                }
                for o in objects {
                    affected.merge(self.upsert(o));
                }
                affected
            }
        }
    }

    fn touched(kind: Kind, key: &ObjectKey, stored: &Stored) -> Affected {
        let mut a = Affected::default();
        match kind {
            Kind::Service => {
                a.services.insert((key.namespace.clone(), key.name.clone()));
            }
            Kind::EndpointSlice => {
                if let Some(s) = stored.slice_service() {
                    a.services.insert(s);
                }
            }
            // Only a changed model gets here (an equal one returns early):
            // services read zones, routing reads CIDRs and addresses.
            Kind::Node => {
                a.all = true;
                a.nodes = true;
            }
            Kind::Pod | Kind::Namespace | Kind::NetworkPolicy | Kind::ClusterNetworkPolicy | Kind::WeirNetworkPolicy => a.policy = true,
        }
        a
    }

    fn upsert(&mut self, o: Object) -> Affected {
        let key = o.key();
        let stored = Stored::from_object(o);
        let id = (key.namespace.clone(), key.name.clone());
        if self.objects.get(&key.kind).and_then(|m| m.get(&id)) == Some(&stored) {
            return Affected::default();
        }
        let mut affected = Self::touched(key.kind, &key, &stored);
        let new_svc = stored.slice_service();
        let old = self.objects.entry(key.kind).or_default().insert(id, stored);
        if let Some(old) = old {
            affected.merge(Self::touched(key.kind, &key, &old));
            if let Some(s) = old.slice_service() {
                self.unlink_slice(&s, &key.name);
            }
        }
        if let Some(s) = new_svc {
            self.slices_by_service.entry(s).or_default().insert(key.name);
        }
        affected
    }

    fn unlink_slice(&mut self, service: &ServiceKey, slice: &str) {
        if let Some(set) = self.slices_by_service.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_by_service.remove(service);
            }
        }
    }

    fn delete(&mut self, key: &ObjectKey) -> Affected {
        let Some(old) = self.objects.get_mut(&key.kind).and_then(|m| m.remove(&(key.namespace.clone(), key.name.clone())))
        else {
            return Affected::default();
        };
        if let Some(s) = old.slice_service() {
            self.unlink_slice(&s, &key.name);
        }
        Self::touched(key.kind, key, &old)
    }

    /// Whether an object is known.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.objects.get(&key.kind).is_some_and(|m| m.contains_key(&(key.namespace.clone(), key.name.clone())))
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceModel> {
        match self.objects.get(&Kind::Service)?.get(key)? {
            Stored::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The EndpointSlices labelled for a service.
    pub fn slices_for(&self, key: &ServiceKey) -> Vec<&SliceModel> {
        let Some(names) = self.slices_by_service.get(key) else { return Vec::new() };
        let Some(slices) = self.objects.get(&Kind::EndpointSlice) else { return Vec::new() };
        names
            .iter()
            .filter_map(|n| match slices.get(&(key.0.clone(), n.clone())) {
                Some(Stored::Slice(s)) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Every service key.
    pub fn service_keys(&self) -> Vec<ServiceKey> {
        self.objects.get(&Kind::Service).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// The stored objects of a kind weir keeps whole (not Services,
    /// EndpointSlices, Nodes or Pods, which it keeps as compact models).
    pub fn objects_of(&self, kind: Kind) -> impl Iterator<Item = &Object> + '_ {
        self.objects.get(&kind).into_iter().flat_map(|m| m.values()).filter_map(|s| match s {
            Stored::Other(o) => Some(o.as_ref()),
            _ => None,
        })
    }

    /// The pods and namespaces policy reads.
    pub fn policy_world(&self) -> crate::policy::World {
        let pods = self.objects.get(&Kind::Pod).into_iter().flat_map(|m| m.values()).filter_map(|s| match s {
            Stored::Pod(Some(p)) => Some(p.as_ref()),
            _ => None,
        });
        crate::policy::World::from_parts(self.objects_of(Kind::Namespace), pods)
    }

    /// Every NetworkPolicy, WeirNetworkPolicy and ClusterNetworkPolicy,
    /// compiled (objects are validated on load, so a stored policy
    /// compiles; one that does not is skipped).
    pub fn policies(&self) -> Vec<crate::policy::CompiledPolicy> {
        [Kind::ClusterNetworkPolicy, Kind::NetworkPolicy, Kind::WeirNetworkPolicy]
            .into_iter()
            .flat_map(|k| self.objects_of(k))
            .filter_map(|o| crate::policy::compile_object(o)?.ok())
            .collect()
    }

    /// Objects per kind.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        Kind::ALL.into_iter().map(|k| (k, self.objects.get(&k).map_or(0, BTreeMap::len))).collect()
    }

    /// The zone label of the named node, if known.
    pub fn node_zone(&self, node: &str) -> Option<String> {
        self.node(node)?.zone.clone()
    }

    /// The named node's model.
    pub fn node(&self, name: &str) -> Option<&NodeModel> {
        match self.objects.get(&Kind::Node)?.get(&(String::new(), name.to_string()))? {
            Stored::Node(n) => Some(n),
            _ => None,
        }
    }

    /// Every node's model.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeModel> + '_ {
        self.objects.get(&Kind::Node).into_iter().flat_map(|m| m.values()).filter_map(|s| match s {
            Stored::Node(n) => Some(n),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status_extra: &str, labels: &str) -> Object {
        let y = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-0, namespace: shop, labels: {{{labels}}}, resourceVersion: '7'}}\nspec: {{nodeName: n1, containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: 10.244.1.5{status_extra}}}\n"
        );
        Object::Pod(serde_yaml_ng::from_str(&y).expect("pod"))
    }

    fn node(heartbeat: &str) -> Object {
        let y = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{podCIDR: 10.244.1.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.0.11}}], conditions: [{{type: Ready, status: 'True', lastHeartbeatTime: '{heartbeat}'}}]}}\n"
        );
        Object::Node(serde_yaml_ng::from_str(&y).expect("node"))
    }

    #[test]
    fn a_node_heartbeat_is_no_work() {
        let mut st = ClusterState::new();
        assert!(!st.apply(Change::Upsert(node("2026-12-03T01:00:00Z"))).is_empty());
        assert!(st.apply(Change::Upsert(node("2026-12-03T01:00:10Z"))).is_empty(), "a kubelet heartbeat changes nothing weir reads");
    }

    #[test]
    fn a_pod_status_only_change_is_no_work_and_a_label_change_is() {
        let mut st = ClusterState::new();
        assert!(!st.apply(Change::Upsert(pod("", "app: web"))).is_empty(), "a new pod");
        let status_only = pod(", conditions: [{type: Ready, status: 'True'}], containerStatuses: [{name: c, image: x, imageID: y, ready: true, restartCount: 3}]", "app: web");
        assert!(st.apply(Change::Upsert(status_only)).is_empty(), "conditions and container statuses change nothing weir reads");
        let relabelled = st.apply(Change::Upsert(pod("", "app: api")));
        assert!(relabelled.policy && !relabelled.all, "a label change is policy work");
        assert_eq!(st.policy_world().pods.len(), 1);
        assert_eq!(st.policy_world().pods[0].labels.get("app").map(String::as_str), Some("api"));
        assert!(!st.apply(Change::Delete(ObjectKey { kind: Kind::Pod, namespace: "shop".into(), name: "web-0".into() })).is_empty());
        assert!(st.policy_world().pods.is_empty());
    }
}
