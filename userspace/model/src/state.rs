//! The cluster state weir has seen, from whichever source, and which
//! services a change affects. Services and EndpointSlices are kept as
//! compact models (only what translation reads); other kinds as objects.

use std::collections::{BTreeMap, BTreeSet};

use crate::{node::NodeModel, policy::world::PodInfo, service::ServiceModel, slice::SliceModel, Kind, Object, ObjectKey};

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
    /// losing a deletion. `rejected` names the objects the list held but
    /// that failed validation: each keeps its previous version, as it does
    /// when a watch event brings the invalid edit (so agents that relisted
    /// and agents that watched agree).
    Replace { kind: Kind, objects: Vec<Object>, rejected: Vec<ObjectKey> },
}

/// A service, by namespace and name.
pub type ServiceKey = (String, String);

/// What a change touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Affected {
    pub services: BTreeSet<ServiceKey>,
    /// Something every service's translation depends on changed (a Node).
    pub all: bool,
    /// Namespaces whose object changed: the identities of their pods
    /// follow their labels (`policy::pod_delta`).
    pub namespaces: BTreeSet<String>,
    /// A NetworkPolicy, ClusterNetworkPolicy or WeirNetworkPolicy changed:
    /// the changed policies need translating (`policy::pod_delta`).
    pub policies: bool,
    /// Pods whose model (or registration) changed: their policy needs
    /// translating (`policy::pod_delta`).
    pub pods: BTreeSet<(String, String)>,
    /// A Node's routing-relevant fields changed (pod CIDRs, addresses).
    pub nodes: bool,
}

impl Affected {
    pub fn merge(&mut self, other: Affected) {
        self.services.extend(other.services);
        self.all |= other.all;
        self.namespaces.extend(other.namespaces);
        self.policies |= other.policies;
        self.pods.extend(other.pods);
        self.nodes |= other.nodes;
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.all && self.namespaces.is_empty() && !self.policies && self.pods.is_empty() && !self.nodes
    }
}

/// One stored object.
#[derive(Clone, Debug, PartialEq)]
/// Boxed: the map holds 200,000 of these, and a variant inline sizes
/// every entry of its B-tree nodes to the largest.
enum Stored {
    Service(Box<ServiceModel>),
    Slice(Box<SliceModel>),
    Node(Box<NodeModel>),
    /// A Pod's compact model (its IPs may be empty: not yet known); `None`
    /// for a pod that will never own an address (host network, finished).
    Pod(Option<Box<crate::policy::world::PodInfo>>),
    Other(Box<Object>),
}

impl Stored {
    fn from_object(o: Object) -> Self {
        match o {
            Object::Service(s) => Self::Service(Box::new(ServiceModel::from_k8s(&s))),
            Object::EndpointSlice(s) => Self::Slice(Box::new(SliceModel::from_k8s(&s))),
            Object::Node(n) => Self::Node(Box::new(NodeModel::from_k8s(&n))),
            Object::Pod(p) => Self::Pod(crate::policy::world::pod_model(&p).map(Box::new)),
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

/// What the state knows of one pod.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PodLookup<'a> {
    /// No such Pod has been delivered.
    Unknown,
    /// The Pod exists but never owns an address (host network, finished).
    NoNetwork,
    Known(&'a PodInfo),
}

#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    objects: BTreeMap<Kind, BTreeMap<(String, String), Stored>>,
    /// (namespace, service) → slice names.
    slices_by_service: BTreeMap<ServiceKey, BTreeSet<String>>,
    /// Pods this node's CNI wired (`register_local`), by (namespace,
    /// name): the addresses it gave them, the node, and the pod's model
    /// when it was registered.
    local: BTreeMap<(String, String), PodInfo>,
    /// Each policy object compiled once, when it arrives (a policy edit
    /// among 1,100 policies compiled them all again, on every edit).
    compiled: BTreeMap<Kind, BTreeMap<(String, String), crate::policy::Compiled>>,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the maps from sorted runs, once the initial load is in: a
    /// B-tree filled one insert at a time, in key order as sources list,
    /// leaves its nodes about half empty (at 100,000 pods, 7 MB of the
    /// pods' map alone); one built in bulk fills them.
    pub fn pack(&mut self) {
        for objects in self.objects.values_mut() {
            *objects = std::mem::take(objects).into_iter().collect();
        }
        self.slices_by_service = std::mem::take(&mut self.slices_by_service).into_iter().collect();
    }

    /// Applies a change; returns the services whose translation may differ.
    pub fn apply(&mut self, change: Change) -> Affected {
        match change {
            Change::Upsert(o) => self.upsert(o),
            Change::Delete(k) => self.delete(&k),
            Change::Replace { kind, objects, rejected } => {
                let mut affected = Affected::default();
                let keep: BTreeSet<(String, String)> = objects
                    .iter()
                    .map(|o| o.key())
                    .chain(rejected)
                    .map(|k| (k.namespace, k.name))
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
            Kind::Pod => {
                a.pods.insert((key.namespace.clone(), key.name.clone()));
            }
            Kind::Namespace => {
                a.namespaces.insert(key.name.clone());
            }
            Kind::NetworkPolicy | Kind::ClusterNetworkPolicy | Kind::WeirNetworkPolicy => a.policies = true,
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
            self.slices_by_service.entry(s).or_default().insert(key.name.clone());
        }
        if matches!(key.kind, Kind::NetworkPolicy | Kind::ClusterNetworkPolicy | Kind::WeirNetworkPolicy) {
            let id = (key.namespace, key.name);
            let compiled = match self.objects.get(&key.kind).and_then(|m| m.get(&id)) {
                Some(Stored::Other(o)) => crate::policy::compile_object(o),
                _ => None,
            };
            let cache = self.compiled.entry(key.kind).or_default();
            match compiled {
                Some(c) => cache.insert(id, c),
                None => cache.remove(&id),
            };
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
        if let Some(cache) = self.compiled.get_mut(&key.kind) {
            cache.remove(&(key.namespace.clone(), key.name.clone()));
        }
        Self::touched(key.kind, key, &old)
    }

    /// Whether an object is known.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.objects.get(&key.kind).is_some_and(|m| m.contains_key(&(key.namespace.clone(), key.name.clone())))
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceModel> {
        match self.objects.get(&Kind::Service)?.get(key)? {
            Stored::Service(s) => Some(&**s),
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
                Some(Stored::Slice(s)) => Some(&**s),
                _ => None,
            })
            .collect()
    }

    /// Every service's model, by key, without copying the keys.
    pub fn services(&self) -> impl Iterator<Item = (&ServiceKey, &ServiceModel)> + '_ {
        self.objects.get(&Kind::Service).into_iter().flat_map(|m| m.iter()).filter_map(|(k, s)| match s {
            Stored::Service(svc) => Some((k, &**svc)),
            _ => None,
        })
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

    /// The labels of the Namespace object `name` (as stored, without the
    /// name label the API server adds); `None` when it is not known.
    pub fn namespace_labels(&self, name: &str) -> Option<crate::policy::selector::Labels> {
        match self.objects.get(&Kind::Namespace).and_then(|m| m.get(&(String::new(), name.to_string()))) {
            Some(Stored::Other(o)) => match o.as_ref() {
                Object::Namespace(n) => Some(n.metadata.labels.clone().unwrap_or_default()),
                _ => None,
            },
            _ => None,
        }
    }

    /// What is known of the Pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> PodLookup<'_> {
        match self.objects.get(&Kind::Pod).and_then(|m| m.get(&(namespace.to_string(), name.to_string()))) {
            Some(Stored::Pod(Some(p))) => PodLookup::Known(p),
            Some(_) => PodLookup::NoNetwork,
            None => PodLookup::Unknown,
        }
    }

    /// A pod this node's CNI has just wired, with the addresses it gave
    /// it: policy holds it from its first packet, before (or without) the
    /// source delivering its IPs. While registered, these addresses and
    /// `info.node` are the pod's; its labels and ports come from the
    /// delivered Pod, and from `info` when there is none (not delivered
    /// yet, or deleted while its network still exists).
    pub fn register_local(&mut self, info: PodInfo) -> Affected {
        let key = (info.namespace.clone(), info.name.clone());
        if self.local.get(&key) == Some(&info) {
            return Affected::default();
        }
        self.local.insert(key.clone(), info);
        Affected { pods: [key].into(), ..Affected::default() }
    }

    /// Forgets a registration (the CNI removed the pod's network).
    pub fn unregister_local(&mut self, namespace: &str, name: &str) -> Affected {
        let key = (namespace.to_string(), name.to_string());
        match self.local.remove(&key) {
            Some(_) => Affected { pods: [key].into(), ..Affected::default() },
            None => Affected::default(),
        }
    }

    /// The registered pods.
    pub fn local_pods(&self) -> impl Iterator<Item = &PodInfo> + '_ {
        self.local.values()
    }

    /// The pods and namespaces policy reads: every pod with an address,
    /// registered pods with the addresses their CNI gave them.
    pub fn policy_world(&self) -> crate::policy::World {
        let stored = self.objects.get(&Kind::Pod).into_iter().flat_map(|m| m.iter()).filter_map(|(k, s)| match s {
            Stored::Pod(Some(p)) if !self.local.contains_key(k) && !p.ips.is_empty() => Some(p.as_ref().clone()),
            _ => None,
        });
        let local = self.local.values().map(|r| self.registered_pod(r));
        let pods: Vec<PodInfo> = stored.chain(local).collect();
        crate::policy::World::from_parts(self.objects_of(Kind::Namespace), pods.iter())
    }

    /// A registered pod as policy sees it: the CNI's addresses and node,
    /// the delivered Pod's labels and ports (the registration's until then).
    fn registered_pod(&self, r: &PodInfo) -> PodInfo {
        match self.pod(&r.namespace, &r.name) {
            PodLookup::Known(p) => PodInfo { ips: r.ips.clone(), node: r.node.clone(), ..p.clone() },
            _ => r.clone(),
        }
    }

    /// One pod of [`ClusterState::policy_world`], if it is there.
    pub fn policy_pod(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        let key = (namespace.to_string(), name.to_string());
        match self.local.get(&key) {
            Some(r) => Some(self.registered_pod(r)),
            None => match self.pod(namespace, name) {
                PodLookup::Known(p) if !p.ips.is_empty() => Some(p.clone()),
                _ => None,
            },
        }
    }

    /// Every NetworkPolicy, WeirNetworkPolicy and ClusterNetworkPolicy,
    /// compiled; the parts of one that do not compile fail closed.
    pub fn policies(&self) -> Vec<crate::policy::CompiledPolicy> {
        self.compiled_policies().into_iter().map(|(_, c)| c.policy).collect()
    }

    /// What the policies weir cannot fully compile enforce instead, as
    /// warnings naming object and field.
    pub fn policy_warnings(&self) -> Vec<crate::Warning> {
        self.compiled_policies().iter().flat_map(|(k, c)| c.warnings(k)).collect()
    }

    /// Every policy object compiled, with its key; a policy with errors is
    /// compiled fail-closed (`policy::Compiled`), never left out.
    pub fn compiled_policies(&self) -> Vec<(ObjectKey, crate::policy::Compiled)> {
        [Kind::ClusterNetworkPolicy, Kind::NetworkPolicy, Kind::WeirNetworkPolicy]
            .into_iter()
            .flat_map(|kind| self.compiled.get(&kind).into_iter().flat_map(move |m| m.iter().map(move |((namespace, name), c)| (ObjectKey { kind, namespace: namespace.clone(), name: name.clone() }, c.clone()))))
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
            Stored::Node(n) => Some(&**n),
            _ => None,
        }
    }

    /// Every node's model.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeModel> + '_ {
        self.objects.get(&Kind::Node).into_iter().flat_map(|m| m.values()).filter_map(|s| match s {
            Stored::Node(n) => Some(&**n),
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

    #[test]
    fn packing_keeps_every_object_and_later_changes_apply() {
        let named = |i: usize| -> Object {
            let y = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i:04}, namespace: shop, labels: {{app: web}}}}\nspec: {{nodeName: n1, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.244.{}.{}}}\n", i / 200, i % 200 + 1);
            Object::Pod(serde_yaml_ng::from_str(&y).expect("pod"))
        };
        let mut st = ClusterState::new();
        for i in 0..500 {
            st.apply(Change::Upsert(named(i)));
        }
        let before = st.policy_world();
        st.pack();
        assert_eq!(st.policy_world(), before);
        assert!(matches!(st.pod("shop", "p0123"), PodLookup::Known(p) if p.name == "p0123"));
        st.apply(Change::Delete(ObjectKey { kind: Kind::Pod, namespace: "shop".into(), name: "p0123".into() }));
        st.apply(Change::Upsert(named(600)));
        assert!(matches!(st.pod("shop", "p0123"), PodLookup::Unknown));
        assert_eq!(st.policy_world().pods.len(), 500);
    }

    fn node(heartbeat: &str) -> Object {
        let y = format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nspec: {{podCIDR: 10.244.1.0/24}}\nstatus: {{addresses: [{{type: InternalIP, address: 192.168.0.11}}], conditions: [{{type: Ready, status: 'True', lastHeartbeatTime: '{heartbeat}'}}]}}\n"
        );
        Object::Node(serde_yaml_ng::from_str(&y).expect("node"))
    }

    #[test]
    fn a_relist_keeps_the_previous_version_of_an_object_it_rejected_and_drops_what_it_lacks() {
        let mut st = ClusterState::new();
        st.apply(Change::Upsert(pod("", "app: web")));
        let key = pod("", "app: web").key();
        st.apply(Change::Replace { kind: Kind::Pod, objects: Vec::new(), rejected: vec![key.clone()] });
        assert!(st.contains(&key), "an invalid edit seen in a relist keeps the previous version, as on a watch event");
        st.apply(Change::Replace { kind: Kind::Pod, objects: Vec::new(), rejected: Vec::new() });
        assert!(!st.contains(&key), "an object the relist lacks is deleted");
    }

    #[test]
    fn a_node_heartbeat_is_no_work() {
        let mut st = ClusterState::new();
        assert!(!st.apply(Change::Upsert(node("2026-12-03T01:00:00Z"))).is_empty());
        assert!(st.apply(Change::Upsert(node("2026-12-03T01:00:10Z"))).is_empty(), "a kubelet heartbeat changes nothing weir reads");
    }

    #[test]
    fn policies_are_compiled_once_and_follow_every_edit_delete_and_relist() {
        let np = |name: &str, port: u16| Object::from_value(Kind::NetworkPolicy, serde_yaml_ng::from_str(&format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  podSelector: {{}}\n  ingress: [{{ports: [{{port: {port}}}]}}]\n")).expect("yaml")).expect("decodes");
        let mut st = ClusterState::new();
        // What compiling every stored object says, as before the cache.
        let fresh = |st: &ClusterState| -> Vec<(ObjectKey, crate::policy::Compiled)> {
            [Kind::ClusterNetworkPolicy, Kind::NetworkPolicy, Kind::WeirNetworkPolicy].into_iter().flat_map(|k| st.objects_of(k)).filter_map(|o| Some((o.key(), crate::policy::compile_object(o)?))).collect()
        };
        st.apply(Change::Upsert(np("a", 80)));
        st.apply(Change::Upsert(np("b", 81)));
        assert_eq!(st.compiled_policies(), fresh(&st));
        assert_eq!(st.compiled_policies().len(), 2);
        st.apply(Change::Upsert(np("a", 90)));
        assert_eq!(st.compiled_policies(), fresh(&st), "an edit is compiled again");
        st.apply(Change::Delete(np("b", 81).key()));
        assert_eq!(st.compiled_policies(), fresh(&st), "a delete leaves");
        st.apply(Change::Replace { kind: Kind::NetworkPolicy, objects: vec![np("c", 82)], rejected: Vec::new() });
        assert_eq!(st.compiled_policies(), fresh(&st), "a relist replaces");
        assert_eq!(st.compiled_policies().len(), 1);
    }

    #[test]
    fn a_namespace_change_names_the_namespace_and_its_labels_are_read_back() {
        let ns = |labels: &str| Object::Namespace(serde_yaml_ng::from_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{{labels}}}}}\n")).expect("namespace"));
        let mut st = ClusterState::new();
        assert_eq!(st.namespace_labels("shop"), None);
        let a = st.apply(Change::Upsert(ns("team: a")));
        assert_eq!(a.namespaces, BTreeSet::from(["shop".to_string()]));
        assert!(a.pods.is_empty() && !a.policies && !a.all, "{a:?}");
        assert_eq!(st.namespace_labels("shop"), Some([("team".to_string(), "a".to_string())].into()));
        assert!(st.apply(Change::Upsert(ns("team: a"))).is_empty(), "the same object again: no work");
        let gone = st.apply(Change::Delete(ObjectKey { kind: Kind::Namespace, namespace: String::new(), name: "shop".into() }));
        assert_eq!(gone.namespaces, BTreeSet::from(["shop".to_string()]));
        assert_eq!(st.namespace_labels("shop"), None);
    }

    #[test]
    fn a_pod_status_only_change_is_no_work_and_a_label_change_is() {
        let mut st = ClusterState::new();
        assert!(!st.apply(Change::Upsert(pod("", "app: web"))).is_empty(), "a new pod");
        let status_only = pod(", conditions: [{type: Ready, status: 'True'}], containerStatuses: [{name: c, image: x, imageID: y, ready: true, restartCount: 3}]", "app: web");
        assert!(st.apply(Change::Upsert(status_only)).is_empty(), "conditions and container statuses change nothing weir reads");
        let relabelled = st.apply(Change::Upsert(pod("", "app: api")));
        assert!(relabelled.pods.contains(&("shop".to_string(), "web-0".to_string())) && relabelled.namespaces.is_empty() && !relabelled.all, "a label change is that pod's policy work");
        assert_eq!(st.policy_world().pods.len(), 1);
        assert_eq!(st.policy_world().pods[0].labels.get("app").map(String::as_str), Some("api"));
        assert!(!st.apply(Change::Delete(ObjectKey { kind: Kind::Pod, namespace: "shop".into(), name: "web-0".into() })).is_empty());
        assert!(st.policy_world().pods.is_empty());
    }

    fn registered(ip: &str, labels: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            namespace: "shop".into(),
            name: "web-0".into(),
            labels: crate::policy::interned::shared(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ips: vec![ip.parse().expect("ip")],
            node: Some("n1".into()),
            ports: vec![],
        }
    }

    #[test]
    fn a_registered_pod_is_in_policy_with_its_cni_address_before_and_after_the_source_delivers_it() {
        let mut st = ClusterState::new();
        assert!(!st.apply(Change::Upsert(pod("", "app: web"))).pods.is_empty());
        let pending = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: shop, labels: {app: api}}\nspec: {nodeName: n1, containers: [{name: c, image: x}]}\nstatus: {phase: Pending}\n";
        let pending = Object::Pod(serde_yaml_ng::from_str(pending).expect("pod"));
        st.apply(Change::Upsert(pending));
        assert!(matches!(st.pod("shop", "web-0"), PodLookup::Known(p) if p.ips.is_empty()), "an IP-less pod is known, with its labels");
        assert!(st.policy_world().pods.is_empty(), "no address, nothing to police yet");
        assert_eq!(st.policy_pod("shop", "web-0"), None);
        assert!(!st.register_local(registered("10.244.1.9", &[("app", "stale")])).pods.is_empty());
        assert!(st.register_local(registered("10.244.1.9", &[("app", "stale")])).is_empty(), "the same registration again is no work");
        let w = st.policy_world();
        assert_eq!(w.pods.len(), 1);
        assert_eq!(st.policy_pod("shop", "web-0").as_ref(), w.pods.first(), "one pod of the world is the world's");
        assert_eq!(w.pods[0].ips, vec!["10.244.1.9".parse::<std::net::IpAddr>().expect("ip")], "the CNI's address");
        assert_eq!(w.pods[0].labels.get("app").map(String::as_str), Some("api"), "the delivered Pod's labels win");
        // The API server's (older) IP does not replace the registered one.
        st.apply(Change::Upsert(pod("", "app: web")));
        assert_eq!(st.policy_world().pods[0].ips[0].to_string(), "10.244.1.9");
        // Deleted from the source while its network exists: the registration keeps it.
        st.apply(Change::Delete(ObjectKey { kind: Kind::Pod, namespace: "shop".into(), name: "web-0".into() }));
        let w = st.policy_world();
        assert_eq!((w.pods.len(), w.pods[0].labels.get("app").map(String::as_str)), (1, Some("stale")));
        assert!(!st.unregister_local("shop", "web-0").pods.is_empty());
        assert!(st.policy_world().pods.is_empty());
        assert!(st.unregister_local("shop", "web-0").is_empty());
    }
}
