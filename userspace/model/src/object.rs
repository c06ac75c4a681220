//! The object kinds weir reads, in their upstream Kubernetes types.

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use serde::de::DeserializeOwned;
use weir_crds::{ClusterNetworkPolicy, WeirNetworkPolicy};

use crate::pod_object::PodObject;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    Node,
    NetworkPolicy,
    ClusterNetworkPolicy,
    WeirNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Pod,
        Kind::Namespace,
        Kind::Node,
        Kind::NetworkPolicy,
        Kind::ClusterNetworkPolicy,
        Kind::WeirNetworkPolicy,
    ];

    /// weir's own kinds: a cluster may not have their CRDs installed.
    pub const fn is_crd(self) -> bool {
        matches!(self, Self::ClusterNetworkPolicy | Self::WeirNetworkPolicy)
    }

    /// Kinds that feed policy translation.
    pub const fn is_policy_input(self) -> bool {
        matches!(self, Self::Pod | Self::Namespace | Self::NetworkPolicy | Self::ClusterNetworkPolicy | Self::WeirNetworkPolicy)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Pod => "Pod",
            Self::Namespace => "Namespace",
            Self::Node => "Node",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Self::WeirNetworkPolicy => "WeirNetworkPolicy",
        }
    }

    /// The apiVersion weir reads this kind in.
    pub const fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Pod | Self::Namespace | Self::Node => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::NetworkPolicy => "networking.k8s.io/v1",
            Self::ClusterNetworkPolicy | Self::WeirNetworkPolicy => "policy.weir.dev/v1alpha1",
        }
    }

    pub const fn namespaced(self) -> bool {
        !matches!(self, Self::Namespace | Self::Node | Self::ClusterNetworkPolicy)
    }

    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// Identity of an object: kind, namespace (for namespaced kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind.namespaced() {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        }
    }
}

/// One object in its upstream type (a Pod in weir's slim one,
/// [`PodObject`]). Objects are transient (parsed, then modelled into the
/// cluster state), but a relist holds every object of its kind at once,
/// 100,000 Pods and more: the largest variants are boxed, so an Object is
/// about 0.5 KB inline, not the 2.4 KB of the upstream Pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(EndpointSlice),
    Pod(Box<PodObject>),
    Namespace(Namespace),
    Node(Box<Node>),
    NetworkPolicy(NetworkPolicy),
    ClusterNetworkPolicy(ClusterNetworkPolicy),
    WeirNetworkPolicy(WeirNetworkPolicy),
}

fn key_of(kind: Kind, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    let namespace = if kind.namespaced() { meta.namespace.clone().unwrap_or_else(|| "default".into()) } else { String::new() };
    ObjectKey { kind, namespace, name: meta.name.clone().unwrap_or_default() }
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Pod(_) => Kind::Pod,
            Self::Namespace(_) => Kind::Namespace,
            Self::Node(_) => Kind::Node,
            Self::NetworkPolicy(_) => Kind::NetworkPolicy,
            Self::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
            Self::WeirNetworkPolicy(_) => Kind::WeirNetworkPolicy,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Pod(o) => &o.metadata,
            Self::Namespace(o) => &o.metadata,
            Self::Node(o) => &o.metadata,
            Self::NetworkPolicy(o) => &o.metadata,
            Self::ClusterNetworkPolicy(o) => &o.metadata,
            Self::WeirNetworkPolicy(o) => &o.metadata,
        }
    }

    /// Drops what weir never reads and clusters fill generously:
    /// managedFields and the last-applied-configuration annotation.
    pub fn slim(mut self) -> Self {
        let meta = match &mut self {
            Self::Service(o) => &mut o.metadata,
            Self::EndpointSlice(o) => &mut o.metadata,
            Self::Pod(o) => &mut o.metadata,
            Self::Namespace(o) => &mut o.metadata,
            Self::Node(o) => &mut o.metadata,
            Self::NetworkPolicy(o) => &mut o.metadata,
            Self::ClusterNetworkPolicy(o) => &mut o.metadata,
            Self::WeirNetworkPolicy(o) => &mut o.metadata,
        };
        meta.managed_fields = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        self
    }

    /// The object's key; objects without a namespace live in `default`,
    /// as `kubectl apply` would put them.
    pub fn key(&self) -> ObjectKey {
        key_of(self.kind(), self.meta())
    }

    /// Decodes one object from JSON, naming the failing field.
    pub fn from_value(kind: Kind, v: serde_json::Value) -> Result<Self, (Option<String>, String)> {
        fn de<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, (Option<String>, String)> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                let field = (path != ".").then_some(path);
                (field, e.into_inner().to_string())
            })
        }
        Ok(match kind {
            Kind::Service => Self::Service(Box::new(de(v)?)),
            Kind::EndpointSlice => Self::EndpointSlice(de(v)?),
            Kind::Pod => Self::Pod(Box::new(de(v)?)),
            Kind::Namespace => Self::Namespace(de(v)?),
            Kind::Node => Self::Node(Box::new(de(v)?)),
            Kind::NetworkPolicy => Self::NetworkPolicy(de(v)?),
            Kind::ClusterNetworkPolicy => Self::ClusterNetworkPolicy(de(v)?),
            Kind::WeirNetworkPolicy => Self::WeirNetworkPolicy(de(v)?),
        })
    }
}
