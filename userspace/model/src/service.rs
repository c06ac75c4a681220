//! A Service as weir models it: every field kube-proxy acts on, typed,
//! including the north-south ones (NodePort, LoadBalancer, externalIPs,
//! externalTrafficPolicy).

use std::net::IpAddr;

use k8s_openapi::{api::core::v1::Service, apimachinery::pkg::util::intstr::IntOrString};
use weir_desired::Selection;

/// Label that hands a service to another proxy (kube-proxy skips it too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// weir's per-service backend selection: `maglev` (default) or `random`.
pub const LB_ALGORITHM_ANNOTATION: &str = "weir.dev/lb-algorithm";
/// The legacy annotation kube-proxy reads when loadBalancerSourceRanges is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// kube-proxy's default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl PortProtocol {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("UDP") => Self::Udp,
            Some("SCTP") => Self::Sctp,
            _ => Self::Tcp,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortModel {
    /// Empty for the single unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: PortProtocol,
    pub node_port: Option<u16>,
    pub target_port: Option<IntOrString>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub namespace: String,
    pub name: String,
    pub ty: ServiceType,
    /// Empty for headless services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<PortModel>,
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress[].ip, except `ipMode: Proxy` (the load
    /// balancer proxies to the nodes itself; kube-proxy skips those too).
    pub load_balancer_ips: Vec<IpAddr>,
    /// loadBalancerSourceRanges (or, when the field is empty, the legacy
    /// `service.beta.kubernetes.io/load-balancer-source-ranges`
    /// annotation), entries trimmed of whitespace: only these sources
    /// reach the LB IPs.
    pub load_balancer_source_ranges: Vec<weir_desired::policy::Prefix>,
    pub external_traffic_policy_local: bool,
    pub internal_traffic_policy_local: bool,
    pub health_check_node_port: Option<u16>,
    /// sessionAffinity ClientIP, with its timeout.
    pub affinity_timeout_s: Option<u32>,
    /// The proxy this service is left to (label), if any.
    pub proxy_name: Option<String>,
    pub selection: Selection,
}

fn ips<'a>(v: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    v.into_iter().filter_map(|s| s.parse().ok()).collect()
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

impl ServiceModel {
    /// Models a (validated) Service.
    pub fn from_k8s(s: &Service) -> Self {
        let spec = s.spec.clone().unwrap_or_default();
        let ty = match spec.type_.as_deref() {
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            _ => ServiceType::ClusterIP,
        };
        let mut cluster_ips = ips(spec.cluster_ips.iter().flatten());
        if cluster_ips.is_empty() {
            cluster_ips = ips(spec.cluster_ip.iter());
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortModel {
                    name: p.name.clone().unwrap_or_default(),
                    port: port_u16(p.port)?,
                    protocol: PortProtocol::parse(p.protocol.as_deref()),
                    node_port: p.node_port.and_then(port_u16),
                    target_port: p.target_port.clone(),
                })
            })
            .collect();
        let lb_ips = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|ing| {
                ing.iter()
                    .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                    .filter_map(|i| i.ip.as_ref())
                    .filter_map(|ip| ip.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let affinity_timeout_s = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
        });
        let labels = s.metadata.labels.as_ref();
        let annotations = s.metadata.annotations.as_ref();
        Self {
            namespace: s.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: s.metadata.name.clone().unwrap_or_default(),
            ty,
            cluster_ips,
            ports,
            external_ips: ips(spec.external_ips.iter().flatten()),
            load_balancer_ips: lb_ips,
            load_balancer_source_ranges: source_ranges(s).into_iter().filter_map(|(_, r)| r.ok()).collect(),
            external_traffic_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_traffic_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            health_check_node_port: spec.health_check_node_port.and_then(port_u16),
            affinity_timeout_s,
            proxy_name: labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)).cloned(),
            selection: match annotations.and_then(|a| a.get(LB_ALGORITHM_ANNOTATION)).map(String::as_str) {
                Some("random") => Selection::Random,
                _ => Selection::Maglev,
            },
        }
    }
}

/// The Service's source ranges as written, each with the field it came
/// from and its parse (trimmed of whitespace, as upstream requires).
pub fn source_ranges(s: &Service) -> Vec<(String, Result<weir_desired::policy::Prefix, crate::validate::FieldError>)> {
    let spec = s.spec.as_ref();
    let field: Vec<String> = spec.and_then(|s| s.load_balancer_source_ranges.clone()).unwrap_or_default();
    let (raw, name): (Vec<String>, &dyn Fn(usize) -> String) = if !field.is_empty() {
        (field, &|i| format!("spec.loadBalancerSourceRanges[{i}]"))
    } else {
        let ann = s.metadata.annotations.as_ref().and_then(|a| a.get(SOURCE_RANGES_ANNOTATION)).cloned().unwrap_or_default();
        (ann.split(',').map(str::to_string).filter(|r| !r.trim().is_empty()).collect(), &|_| format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]"))
    };
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let f = name(i);
            let parsed = crate::policy::compile::parse_cidr(r.trim(), &f);
            (f, parsed)
        })
        .collect()
}
