//! Field checks the API server would have made (or that weir relies on),
//! for objects that come from files. Each failure names its field.

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use crate::Object;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

pub fn validate(obj: &Object) -> Result<(), FieldError> {
    match obj {
        Object::Service(s) => service(s),
        Object::EndpointSlice(e) => endpoint_slice(e),
        // Never rejected: a policy's bad parts fail closed where it is
        // compiled (`policy::Compiled`), and are reported there.
        Object::NetworkPolicy(_) | Object::ClusterNetworkPolicy(_) | Object::WeirNetworkPolicy(_) => Ok(()),
        Object::Pod(p) => pod(p),
        Object::Node(n) => crate::node::validate(n),
        _ => Ok(()),
    }
}

fn port(field: &str, p: i32) -> Result<(), FieldError> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(err(field, format!("{p} is outside 1-65535")))
    }
}

fn protocol(field: &str, p: Option<&str>) -> Result<(), FieldError> {
    match p {
        None | Some("TCP") | Some("UDP") | Some("SCTP") => Ok(()),
        Some(other) => Err(err(field, format!("unknown protocol {other:?} (TCP, UDP or SCTP)"))),
    }
}

fn ip(field: &str, s: &str) -> Result<IpAddr, FieldError> {
    s.parse::<IpAddr>().map_err(|_| err(field, format!("{s:?} is not an IP address")))
}

fn service(s: &Service) -> Result<(), FieldError> {
    let Some(spec) = &s.spec else { return Err(err("spec", "missing")) };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(ty, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        return Err(err("spec.type", format!("unknown type {ty:?}")));
    }
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        port(&format!("spec.ports[{i}].port"), p.port)?;
        protocol(&format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?;
        if let Some(np) = p.node_port {
            port(&format!("spec.ports[{i}].nodePort"), np)?;
        }
        if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(tp)) = &p.target_port {
            port(&format!("spec.ports[{i}].targetPort"), *tp)?;
        }
    }
    let headless = |v: &str| v == "None" || v.is_empty();
    if let Some(c) = spec.cluster_ip.as_deref().filter(|c| !headless(c)) {
        ip("spec.clusterIP", c)?;
    }
    for (i, c) in spec.cluster_ips.iter().flatten().enumerate() {
        if !headless(c) {
            ip(&format!("spec.clusterIPs[{i}]"), c)?;
        }
    }
    for (i, c) in spec.external_ips.iter().flatten().enumerate() {
        ip(&format!("spec.externalIPs[{i}]"), c)?;
    }
    if let Some(t) = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds) {
        if !(1..=86_400).contains(&t) {
            return Err(err("spec.sessionAffinityConfig.clientIP.timeoutSeconds", format!("{t} is outside 1-86400")));
        }
    }
    if let Some(a) = spec.session_affinity.as_deref() {
        if !matches!(a, "None" | "ClientIP") {
            return Err(err("spec.sessionAffinity", format!("unknown value {a:?} (None or ClientIP)")));
        }
    }
    for (_, r) in crate::service::source_ranges(s) {
        r?;
    }
    for (f, v) in [("spec.internalTrafficPolicy", &spec.internal_traffic_policy), ("spec.externalTrafficPolicy", &spec.external_traffic_policy)] {
        if let Some(v) = v.as_deref() {
            if !matches!(v, "Cluster" | "Local") {
                return Err(err(f, format!("unknown value {v:?} (Cluster or Local)")));
            }
        }
    }
    Ok(())
}

fn endpoint_slice(e: &EndpointSlice) -> Result<(), FieldError> {
    let family = e.address_type.as_str();
    if !matches!(family, "IPv4" | "IPv6" | "FQDN") {
        return Err(err("addressType", format!("unknown value {family:?} (IPv4, IPv6 or FQDN)")));
    }
    for (i, p) in e.ports.iter().flatten().enumerate() {
        if let Some(n) = p.port {
            port(&format!("ports[{i}].port"), n)?;
        }
        protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?;
    }
    if family == "FQDN" {
        return Ok(());
    }
    for (i, ep) in e.endpoints.iter().flatten().enumerate() {
        for (j, a) in ep.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            let addr = ip(&field, a)?;
            if addr.is_ipv4() != (family == "IPv4") {
                return Err(err(field, format!("{a} is not an {family} address")));
            }
        }
    }
    Ok(())
}

fn pod(p: &crate::pod_object::PodObject) -> Result<(), FieldError> {
    if let Some(status) = &p.status {
        if let Some(ip_s) = status.pod_ip.as_deref() {
            ip("status.podIP", ip_s)?;
        }
        for (i, a) in status.pod_ips.iter().flatten().enumerate() {
            ip(&format!("status.podIPs[{i}].ip"), &a.ip)?;
        }
    }
    for (i, c) in p.spec.iter().flat_map(|s| s.containers.iter()).enumerate() {
        for (j, cp) in c.ports.iter().flatten().enumerate() {
            port(&format!("spec.containers[{i}].ports[{j}].containerPort"), cp.container_port)?;
            protocol(&format!("spec.containers[{i}].ports[{j}].protocol"), cp.protocol.as_deref())?;
        }
    }
    Ok(())
}
