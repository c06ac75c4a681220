//! Building service specs for tests.

use std::net::{IpAddr, Ipv4Addr};

use weir_datapath::lb::spec::{Endpoint, Frontend, Protocol, Selection, ServiceSpec};

/// A Maglev ClusterIP service with ready endpoints.
pub fn cluster_ip(vip: Ipv4Addr, port: u16, protocol: Protocol, backends: &[(Ipv4Addr, u16)]) -> ServiceSpec {
    ServiceSpec {
        origin: String::new(),
        frontend: Frontend { addr: IpAddr::V4(vip), port, protocol },
        endpoints: backends.iter().map(|(a, p)| Endpoint::ready(IpAddr::V4(*a), *p)).collect(),
        selection: Selection::Maglev,
        affinity_timeout_s: None,
    }
}

/// An endpoint with explicit conditions.
pub fn endpoint(addr: Ipv4Addr, port: u16, ready: bool, serving: bool, terminating: bool) -> Endpoint {
    Endpoint { addr: IpAddr::V4(addr), port, ready, serving, terminating }
}
