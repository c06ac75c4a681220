//! kube-proxy's per-service health checks: every LoadBalancer service with
//! externalTrafficPolicy: Local has a `healthCheckNodePort` on which each
//! node answers whether it has a local endpoint, so that a cloud load
//! balancer sends traffic only to nodes that can serve it. Pure: the agent
//! serves what this computes.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    service::{ServiceModel, ServiceType},
    state::ClusterState,
};

/// One health-check port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the service on this node (each address once,
    /// whatever its ports), as kube-proxy counts them.
    pub local_endpoints: usize,
}

fn wants_health_check(svc: &ServiceModel) -> Option<u16> {
    let eligible = svc.ty == ServiceType::LoadBalancer && svc.external_traffic_policy_local && svc.proxy_name.is_none();
    svc.health_check_node_port.filter(|_| eligible)
}

/// The health-check ports this node serves, by port. Two services naming
/// one port is bad input: the first (by namespace/name) keeps it.
pub fn health_checks(state: &ClusterState, node_name: Option<&str>) -> BTreeMap<u16, HealthCheck> {
    let mut out = BTreeMap::new();
    for (key, svc) in state.services() {
        let Some(port) = wants_health_check(svc) else { continue };
        let mut local = BTreeSet::new();
        for slice in state.slices_for(key) {
            for e in &slice.endpoints {
                let here = node_name.is_some() && e.node_name.as_deref() == node_name;
                if here && e.ready.unwrap_or(true) {
                    if let Some(a) = e.addr {
                        local.insert(a);
                    }
                }
            }
        }
        out.entry(port).or_insert(HealthCheck { namespace: svc.namespace.clone(), name: svc.name.clone(), local_endpoints: local.len() });
    }
    out
}
