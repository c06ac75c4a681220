//! The compact model of a Node: only what weir's datapath reads (pod
//! CIDRs for routing, addresses for tunnels and host-network backends,
//! the zone for topology hints). A status heartbeat that changes none of
//! these equals the stored model, so it changes nothing downstream.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use weir_desired::policy::Prefix;

use crate::validate::FieldError;

/// Label holding a node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeModel {
    pub name: String,
    /// `spec.podCIDRs` (or the single `spec.podCIDR`).
    pub pod_cidrs: Vec<Prefix>,
    /// `status.addresses` of type InternalIP, in order.
    pub internal_ips: Vec<IpAddr>,
    /// Every IP in `status.addresses` (InternalIP and ExternalIP), in order.
    pub addresses: Vec<IpAddr>,
    pub zone: Option<String>,
}

impl NodeModel {
    /// The model of a validated Node (fields that do not parse are left
    /// out; [`validate`] rejects such Nodes before they are stored).
    pub fn from_k8s(n: &Node) -> Self {
        let name = n.metadata.name.clone().unwrap_or_default();
        let spec = n.spec.as_ref();
        let cidrs: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()).filter(|v| !v.is_empty()) {
            Some(v) => v,
            None => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
        };
        let pod_cidrs = cidrs.iter().filter_map(|c| crate::policy::compile::parse_cidr(c, "").ok()).collect();
        let mut internal_ips = Vec::new();
        let mut addresses = Vec::new();
        for a in n.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
            let Ok(ip) = a.address.parse::<IpAddr>() else { continue };
            match a.type_.as_str() {
                "InternalIP" => {
                    internal_ips.push(ip);
                    addresses.push(ip);
                }
                "ExternalIP" => addresses.push(ip),
                _ => {}
            }
        }
        let zone = n.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).cloned();
        Self { name, pod_cidrs, internal_ips, addresses, zone }
    }

    /// The address other nodes reach this one at: the first InternalIP of
    /// `family` (IPv4 when `v4`).
    pub fn internal_ip(&self, v4: bool) -> Option<IpAddr> {
        self.internal_ips.iter().copied().find(|a| a.is_ipv4() == v4)
    }
}

/// Field checks for Nodes from files.
pub fn validate(n: &Node) -> Result<(), FieldError> {
    let spec = n.spec.as_ref();
    if let Some(c) = spec.and_then(|s| s.pod_cidr.as_deref()) {
        crate::policy::compile::parse_cidr(c, "spec.podCIDR")?;
    }
    for (i, c) in spec.and_then(|s| s.pod_cidrs.as_ref()).into_iter().flatten().enumerate() {
        crate::policy::compile::parse_cidr(c, &format!("spec.podCIDRs[{i}]"))?;
    }
    for (i, a) in n.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten().enumerate() {
        if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") && a.address.parse::<IpAddr>().is_err() {
            return Err(FieldError {
                field: format!("status.addresses[{i}].address"),
                message: format!("{:?} is not an IP address", a.address),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_yaml_ng::from_str(yaml).expect("node yaml")
    }

    #[test]
    fn the_model_keeps_cidrs_addresses_and_zone() {
        let n = node(
            "metadata: {name: n1, labels: {topology.kubernetes.io/zone: z1}}\nspec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, 'fd00:1::/64']}\n\
             status: {addresses: [{type: Hostname, address: n1}, {type: InternalIP, address: 192.168.0.11}, {type: ExternalIP, address: 203.0.113.5}]}",
        );
        let m = NodeModel::from_k8s(&n);
        assert_eq!(m.name, "n1");
        assert_eq!(m.pod_cidrs.len(), 2);
        assert_eq!(m.internal_ip(true), Some("192.168.0.11".parse().expect("ip")));
        assert_eq!(m.addresses.len(), 2);
        assert_eq!(m.zone.as_deref(), Some("z1"));
    }

    #[test]
    fn a_heartbeat_changes_nothing() {
        let a = node("metadata: {name: n1}\nspec: {podCIDRs: [10.244.1.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.11}], conditions: [{type: Ready, status: 'True', lastHeartbeatTime: '2026-01-01T00:00:00Z'}]}");
        let b = node("metadata: {name: n1}\nspec: {podCIDRs: [10.244.1.0/24]}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.11}], conditions: [{type: Ready, status: 'True', lastHeartbeatTime: '2026-01-01T00:00:10Z'}]}");
        assert_eq!(NodeModel::from_k8s(&a), NodeModel::from_k8s(&b));
    }

    #[test]
    fn bad_fields_are_named() {
        let e = validate(&node("metadata: {name: n1}\nspec: {podCIDRs: [10.244.1.1/24]}")).expect_err("host bits");
        assert_eq!(e.field, "spec.podCIDRs[0]");
        let e = validate(&node("metadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: not-an-ip}]}")).expect_err("ip");
        assert_eq!(e.field, "status.addresses[0].address");
    }
}
