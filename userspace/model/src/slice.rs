//! An EndpointSlice as weir keeps it: only what translation reads, so a
//! node holding every slice of a large cluster stays small.

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{service::PortProtocol, state::SERVICE_NAME_LABEL};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// Empty for the unnamed port.
    pub name: String,
    pub port: Option<u16>,
    pub protocol: PortProtocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointModel {
    /// The first address (kube-proxy uses only that one).
    pub addr: Option<IpAddr>,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<String>,
    /// hints.forZones
    pub zones: Option<Vec<String>>,
    /// hints.forNodes
    pub hint_nodes: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceModel {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// IPv4, IPv6 or FQDN.
    pub address_type: String,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointModel>,
}

impl SliceModel {
    pub fn from_k8s(s: &EndpointSlice) -> Self {
        Self {
            namespace: s.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: s.metadata.name.clone().unwrap_or_default(),
            service: s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned(),
            address_type: s.address_type.clone(),
            ports: s
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: p.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0),
                    protocol: PortProtocol::parse(p.protocol.as_deref()),
                })
                .collect(),
            endpoints: s
                .endpoints
                .iter()
                .flatten()
                .map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    EndpointModel {
                        addr: e.addresses.first().and_then(|a| a.parse().ok()),
                        ready: c.ready,
                        serving: c.serving,
                        terminating: c.terminating,
                        node_name: e.node_name.clone(),
                        zones: e.hints.as_ref().and_then(|h| h.for_zones.as_ref()).map(|z| z.iter().map(|z| z.name.clone()).collect()),
                        hint_nodes: e.hints.as_ref().and_then(|h| h.for_nodes.as_ref()).map(|n| n.iter().map(|n| n.name.clone()).collect()),
                    }
                })
                .collect(),
        }
    }
}
