//! What a caller asks for: one service port with its endpoints, and the
//! kube-proxy rule for which endpoints take new connections.

use std::net::IpAddr;

use weir_common::lb::{KIND_CLUSTER_IP, KIND_EXTERNAL_IP, KIND_LOAD_BALANCER, KIND_NODE_PORT, PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Whom a frontend entry serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Everyone: pods, the node, and traffic from outside the node
    /// unless the frontend also has an [`Scope::External`] entry.
    #[default]
    Internal,
    /// Only traffic from outside the node (externalTrafficPolicy: Local).
    External,
}

impl Scope {
    pub const fn number(self) -> u8 {
        match self {
            Self::Internal => SCOPE_INTERNAL,
            Self::External => SCOPE_EXTERNAL,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            SCOPE_INTERNAL => Some(Self::Internal),
            SCOPE_EXTERNAL => Some(Self::External),
            _ => None,
        }
    }
}

/// A service frontend: address, port, protocol, and whom it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

impl Frontend {
    /// An internal-scope frontend.
    pub const fn new(addr: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self { addr, port, protocol, scope: Scope::Internal }
    }
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol.as_str())?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol.as_str())?,
        }
        if self.scope == Scope::External {
            f.write_str(" (external)")?;
        }
        Ok(())
    }
}

/// Where a frontend comes from in the Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    #[default]
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl Kind {
    pub const fn number(self) -> u32 {
        match self {
            Self::ClusterIp => KIND_CLUSTER_IP,
            Self::NodePort => KIND_NODE_PORT,
            Self::LoadBalancer => KIND_LOAD_BALANCER,
            Self::ExternalIp => KIND_EXTERNAL_IP,
        }
    }

    pub const fn from_number(n: u32) -> Self {
        match n {
            KIND_NODE_PORT => Self::NodePort,
            KIND_LOAD_BALANCER => Self::LoadBalancer,
            KIND_EXTERNAL_IP => Self::ExternalIp,
            _ => Self::ClusterIp,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalIp => "ExternalIP",
        }
    }
}

/// Which new flows through a frontend are masqueraded to the node
/// address (kube-proxy's rules; see docs/architecture.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Masquerade {
    /// Flows from this node's pods.
    pub from_pods: bool,
    /// Flows from outside the node.
    pub from_outside: bool,
}

/// An endpoint with its EndpointSlice conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    /// A ready, serving, non-terminating endpoint.
    pub fn ready(addr: IpAddr, port: u16) -> Self {
        Self { addr, port, ready: true, serving: true, terminating: false }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    /// Maglev consistent hashing (the default).
    #[default]
    Maglev,
    /// Uniformly random per new connection.
    Random,
}

/// One service port and everything the datapath needs to serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The Kubernetes service and port this frontend comes from
    /// (`namespace/name:port-name`); empty when programmed directly.
    pub origin: String,
    pub frontend: Frontend,
    pub endpoints: Vec<Endpoint>,
    pub selection: Selection,
    /// sessionAffinity: ClientIP with this timeout, in seconds.
    pub affinity_timeout_s: Option<u32>,
    /// The endpoints are this node's only (internalTrafficPolicy: Local,
    /// or the external entry of externalTrafficPolicy: Local); with none,
    /// new flows are dropped instead of rejected.
    pub local_only: bool,
    pub kind: Kind,
    pub masquerade: Masquerade,
    /// The frontend also has an external-scope entry (programmed first),
    /// which serves traffic from outside the node.
    pub split: bool,
    /// Only these sources may open flows (loadBalancerSourceRanges, on LB
    /// IPs); empty: any source.
    pub source_ranges: Vec<crate::policy::Prefix>,
}

/// Which endpoints take new connections, as kube-proxy decides: the ready
/// ones; if none is ready, the serving and terminating ones. A non-serving
/// endpoint never takes new traffic. Returns the chosen endpoints and
/// whether the terminating fallback applied.
pub fn eligible(endpoints: &[Endpoint]) -> (Vec<Endpoint>, bool) {
    let ready: Vec<Endpoint> = endpoints.iter().copied().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return (ready, false);
    }
    let fallback: Vec<Endpoint> = endpoints.iter().copied().filter(|e| e.serving && e.terminating).collect();
    let used = !fallback.is_empty();
    (fallback, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint { addr: IpAddr::from([10, 0, 0, last]), port: 80, ready, serving, terminating }
    }

    #[test]
    fn ready_endpoints_win() {
        let eps = [ep(1, true, true, false), ep(2, false, true, true), ep(3, false, false, false)];
        assert_eq!(eligible(&eps), (vec![eps[0]], false));
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback() {
        let eps = [ep(2, false, true, true), ep(3, false, false, true), ep(4, false, false, false)];
        assert_eq!(eligible(&eps), (vec![eps[0]], true));
    }

    #[test]
    fn non_serving_endpoints_never_take_traffic() {
        let eps = [ep(3, false, false, true), ep(4, false, false, false)];
        assert_eq!(eligible(&eps), (vec![], false));
    }
}
