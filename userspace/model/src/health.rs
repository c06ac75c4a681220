//! kube-proxy's per-service health checks: every LoadBalancer service with
//! externalTrafficPolicy: Local has a `healthCheckNodePort` on which each
//! node answers whether it has a local endpoint, so that a cloud load
//! balancer sends traffic only to nodes that can serve it. Pure: the agent
//! serves what this computes.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    service::{ServiceModel, ServiceType},
    state::{Affected, ClusterState, ServiceKey},
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

/// The health check service `key` wants on this node, if any: its port
/// and what it answers.
fn check_of(state: &ClusterState, key: &ServiceKey, node_name: Option<&str>) -> Option<(u16, HealthCheck)> {
    let svc = state.service(key)?;
    let port = wants_health_check(svc)?;
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
    Some((port, HealthCheck { namespace: svc.namespace.clone(), name: svc.name.clone(), local_endpoints: local.len() }))
}

/// The health checks of the services that want one, kept up to date as
/// objects change: a change re-reads the services it affected, not every
/// service (at 100,000 services, recomputing them all took most of an
/// endpoint change's 5 ms).
#[derive(Debug, Default)]
pub struct HealthChecks {
    by_service: BTreeMap<ServiceKey, (u16, HealthCheck)>,
}

impl HealthChecks {
    /// Recomputes every service's check.
    pub fn rebuild(&mut self, state: &ClusterState, node_name: Option<&str>) {
        self.by_service = state.services().filter_map(|(k, _)| Some((k.clone(), check_of(state, k, node_name)?))).collect();
    }

    /// Follows a change of `state`: the services `affected` names, or all
    /// of them when everything may have changed.
    pub fn update(&mut self, state: &ClusterState, affected: &Affected, node_name: Option<&str>) {
        if affected.all {
            return self.rebuild(state, node_name);
        }
        for k in &affected.services {
            match check_of(state, k, node_name) {
                Some(c) => self.by_service.insert(k.clone(), c),
                None => self.by_service.remove(k),
            };
        }
    }

    /// The health-check ports this node serves, by port. Two services
    /// naming one port is bad input: the first (by namespace/name) keeps
    /// it.
    pub fn by_port(&self) -> BTreeMap<u16, HealthCheck> {
        let mut out = BTreeMap::new();
        for (port, check) in self.by_service.values() {
            out.entry(*port).or_insert_with(|| check.clone());
        }
        out
    }
}

/// The health-check ports this node serves, by port (every service read;
/// [`HealthChecks`] follows changes instead).
pub fn health_checks(state: &ClusterState, node_name: Option<&str>) -> BTreeMap<u16, HealthCheck> {
    let mut h = HealthChecks::default();
    h.rebuild(state, node_name);
    h.by_port()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{object::Object, state::Change};

    fn lb_service(name: &str, hc_port: u16, local: bool) -> Object {
        let etp = if local { "Local" } else { "Cluster" };
        let y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.0.{}, externalTrafficPolicy: {etp}, healthCheckNodePort: {hc_port}, ports: [{{name: http, port: 80, nodePort: {}}}]}}\n",
            hc_port % 200 + 1,
            hc_port + 1000
        );
        Object::Service(serde_yaml_ng::from_str(&y).expect("service"))
    }

    fn slice(service: &str, endpoints: &[(&str, &str, bool)]) -> Object {
        let mut y = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
        );
        for (addr, node, ready) in endpoints {
            y.push_str(&format!("- addresses: [{addr}]\n  nodeName: {node}\n  conditions: {{ready: {ready}}}\n"));
        }
        Object::EndpointSlice(serde_yaml_ng::from_str(&y).expect("slice"))
    }

    #[test]
    fn following_changes_service_by_service_agrees_with_reading_every_service() {
        let me = Some("n1");
        let mut st = ClusterState::new();
        let mut h = HealthChecks::default();
        h.rebuild(&st, me);
        let steps = [
            Change::Upsert(lb_service("a", 30100, true)),
            Change::Upsert(lb_service("b", 30101, true)),
            Change::Upsert(slice("a", &[("10.244.1.5", "n1", true), ("10.244.2.5", "n2", true)])),
            Change::Upsert(slice("b", &[("10.244.1.6", "n1", false)])),
            // b's port taken by c, which sorts after b: b keeps it.
            Change::Upsert(lb_service("c", 30101, true)),
            Change::Upsert(slice("a", &[("10.244.1.5", "n1", true), ("10.244.1.7", "n1", true)])),
            // a no longer wants a check: its port goes.
            Change::Upsert(lb_service("a", 30100, false)),
            Change::Delete(lb_service("b", 30101, true).key()),
        ];
        for (i, c) in steps.into_iter().enumerate() {
            let affected = st.apply(c);
            h.update(&st, &affected, me);
            assert_eq!(h.by_port(), health_checks(&st, me), "after step {i}");
        }
        let last = h.by_port();
        assert_eq!(last.keys().copied().collect::<Vec<_>>(), vec![30101], "only c's check is left");
        assert_eq!(last[&30101].name, "c");
    }

    #[test]
    fn an_endpoint_change_counts_the_local_endpoints_again() {
        let me = Some("n1");
        let mut st = ClusterState::new();
        let mut h = HealthChecks::default();
        for c in [Change::Upsert(lb_service("a", 30100, true)), Change::Upsert(slice("a", &[("10.244.1.5", "n1", true)]))] {
            let affected = st.apply(c);
            h.update(&st, &affected, me);
        }
        assert_eq!(h.by_port()[&30100].local_endpoints, 1);
        let affected = st.apply(Change::Upsert(slice("a", &[("10.244.1.5", "n1", false), ("10.244.2.5", "n2", true)])));
        h.update(&st, &affected, me);
        assert_eq!(h.by_port()[&30100].local_endpoints, 0, "the local endpoint is not ready, the ready one is elsewhere");
    }
}
