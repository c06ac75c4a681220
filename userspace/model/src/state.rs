//! The cluster state weir has seen, from whichever source, and which
//! services a change affects.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::{Kind, Object, ObjectKey};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A change from a source.
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
}

impl Affected {
    pub fn merge(&mut self, other: Affected) {
        self.services.extend(other.services);
        self.all |= other.all;
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.all
    }
}

#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    objects: BTreeMap<Kind, BTreeMap<(String, String), Object>>,
    /// (namespace, service) → slice names.
    slices_by_service: BTreeMap<ServiceKey, BTreeSet<String>>,
}

fn slice_service(o: &Object) -> Option<ServiceKey> {
    match o {
        Object::EndpointSlice(s) => {
            let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
            Some((s.metadata.namespace.clone().unwrap_or_else(|| "default".into()), svc.clone()))
        }
        _ => None,
    }
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
                let keep: BTreeSet<(String, String)> = objects.iter().map(|o| { let k = o.key(); (k.namespace, k.name) }).collect();
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

    fn touched(&self, o: &Object) -> Affected {
        let mut a = Affected::default();
        match o.kind() {
            Kind::Service => {
                let k = o.key();
                a.services.insert((k.namespace, k.name));
            }
            Kind::EndpointSlice => {
                if let Some(s) = slice_service(o) {
                    a.services.insert(s);
                }
            }
            Kind::Node => a.all = true,
            _ => {}
        }
        a
    }

    fn upsert(&mut self, o: Object) -> Affected {
        let o = o.slim();
        let key = o.key();
        let id = (key.namespace.clone(), key.name.clone());
        if self.objects.get(&key.kind).and_then(|m| m.get(&id)) == Some(&o) {
            return Affected::default();
        }
        let mut affected = self.touched(&o);
        let old = self.objects.entry(key.kind).or_default().insert(id, o.clone());
        if let Some(old) = old {
            affected.merge(self.touched(&old));
            if let Some(s) = slice_service(&old) {
                if let Some(set) = self.slices_by_service.get_mut(&s) {
                    set.remove(&key.name);
                }
            }
        }
        if let Some(s) = slice_service(&o) {
            self.slices_by_service.entry(s).or_default().insert(key.name);
        }
        affected
    }

    fn delete(&mut self, key: &ObjectKey) -> Affected {
        let Some(old) = self.objects.get_mut(&key.kind).and_then(|m| m.remove(&(key.namespace.clone(), key.name.clone())))
        else {
            return Affected::default();
        };
        if let Some(s) = slice_service(&old) {
            if let Some(set) = self.slices_by_service.get_mut(&s) {
                set.remove(&key.name);
                if set.is_empty() {
                    self.slices_by_service.remove(&s);
                }
            }
        }
        self.touched(&old)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(&key.kind)?.get(&(key.namespace.clone(), key.name.clone()))
    }

    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        match self.objects.get(&Kind::Service)?.get(key)? {
            Object::Service(s) => Some(s),
            _ => None,
        }
    }

    /// The EndpointSlices labelled for a service.
    pub fn slices_for(&self, key: &ServiceKey) -> Vec<&EndpointSlice> {
        let Some(names) = self.slices_by_service.get(key) else { return Vec::new() };
        let Some(slices) = self.objects.get(&Kind::EndpointSlice) else { return Vec::new() };
        names
            .iter()
            .filter_map(|n| match slices.get(&(key.0.clone(), n.clone())) {
                Some(Object::EndpointSlice(s)) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Every service key.
    pub fn service_keys(&self) -> Vec<ServiceKey> {
        self.objects.get(&Kind::Service).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Objects per kind.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        Kind::ALL.into_iter().map(|k| (k, self.objects.get(&k).map_or(0, BTreeMap::len))).collect()
    }

    /// The zone label of the named node, if known.
    pub fn node_zone(&self, node: &str) -> Option<String> {
        match self.objects.get(&Kind::Node)?.get(&(String::new(), node.to_string()))? {
            Object::Node(n) => n.metadata.labels.as_ref()?.get("topology.kubernetes.io/zone").cloned(),
            _ => None,
        }
    }
}
