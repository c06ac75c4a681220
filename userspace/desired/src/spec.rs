//! What a caller asks for: one service port with its endpoints, and the
//! kube-proxy rule for which endpoints take new connections.

use std::net::IpAddr;

use weir_common::lb::{PROTO_TCP, PROTO_UDP};

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

/// A service frontend: address, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.protocol.as_str()),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.protocol.as_str()),
        }
    }
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
    /// internalTrafficPolicy: Local: the endpoints are this node's only;
    /// with none, new flows are dropped instead of rejected.
    pub local_only: bool,
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
