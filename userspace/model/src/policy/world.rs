//! The pods and namespaces policy translation reads, extracted from the
//! cluster state.

use std::{collections::BTreeMap, net::IpAddr};

use crate::pod_object::PodObject as Pod;

use super::{
    interned::{shared, SharedLabels},
    selector::Labels,
};
use crate::{Kind, Object};

/// The label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Shared with every pod of the same labels (`interned`).
    pub labels: SharedLabels,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    pub ports: Vec<NamedPort>,
}

/// Pods with addresses, and namespace labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    pub pods: Vec<PodInfo>,
    pub namespaces: BTreeMap<String, Labels>,
}

impl World {
    /// The labels of namespace `ns` (with the name label the API server
    /// sets, also when the Namespace object is not known).
    pub fn namespace_labels(&self, ns: &str) -> SharedLabels {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
        shared(l)
    }

    /// Namespaces from their objects, pods from their compact models.
    pub fn from_parts<'a>(namespaces: impl Iterator<Item = &'a Object>, pods: impl Iterator<Item = &'a PodInfo>) -> Self {
        let mut w = Self::from_objects(namespaces);
        w.pods.extend(pods.cloned());
        w
    }

    pub fn from_objects<'a>(objects: impl Iterator<Item = &'a Object>) -> Self {
        let mut w = World::default();
        for o in objects {
            match o {
                Object::Namespace(n) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    w.namespaces.insert(name, n.metadata.labels.clone().unwrap_or_default());
                }
                Object::Pod(p) => {
                    if let Some(info) = pod_info(p) {
                        w.pods.push(info);
                    }
                }
                _ => {}
            }
        }
        w
    }
}

/// What weir keeps of a Pod (its compact model): namespace, name, labels,
/// IPs, node and named container ports, for pods that own an address (not
/// host-network, not finished, with an IP). A change to anything else
/// (conditions, container statuses, annotations) is no change to weir.
pub fn pod_info(p: &Pod) -> Option<PodInfo> {
    pod_model(p).filter(|m| !m.ips.is_empty())
}

/// The compact model of a pod that has, or will have, its own network
/// (not host-network, not finished), with or without an address yet: a
/// pod's labels are known before the API server has its IP, and the
/// node's CNI can give the address first (`ClusterState::register_local`).
pub fn pod_model(p: &Pod) -> Option<PodInfo> {
    let spec = p.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = p.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded") | Some("Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status.iter().flat_map(|s| s.pod_ips.iter().flatten()).filter_map(|i| i.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(status.and_then(|s| s.pod_ip.as_deref()).and_then(|i| i.parse::<IpAddr>().ok()));
    }
    let ports: Vec<NamedPort> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            let name = cp.name.clone()?;
            let proto = match cp.protocol.as_deref() {
                None | Some("TCP") => super::compile::PROTO_TCP,
                Some("UDP") => super::compile::PROTO_UDP,
                Some("SCTP") => super::compile::PROTO_SCTP,
                _ => return None,
            };
            Some(NamedPort { name, proto, port: u16::try_from(cp.container_port).ok()? })
        })
        .collect();
    // Kept for the pod's life, 100,000 times over: not the spare room a
    // collected Vec starts with (four elements).
    let mut ports = ports;
    ips.shrink_to_fit();
    ports.shrink_to_fit();
    Some(PodInfo {
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: p.labels.clone(),
        ips,
        node: spec.node_name.clone(),
        ports,
    })
}

/// The kinds policy translation depends on.
pub fn is_policy_kind(kind: Kind) -> bool {
    kind.is_policy_input()
}
