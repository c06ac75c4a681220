//! Why the datapath dropped or rejected a packet. Counted per reason in
//! `WEIR_DROPS`; later also carried by drop events.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The service has no usable endpoint: rejected (TCP RST, ICMP unreachable).
    NoEndpoints = 1,
    /// A service IP was dialled on a port no service has: rejected.
    UnknownServicePort = 2,
    /// A non-TCP/UDP packet to a service IP.
    UnsupportedProtoToVip = 3,
    /// A packet the program could not parse or rewrite.
    Malformed = 4,
    /// A conntrack entry could not be created (map full).
    CtFull = 5,
    /// A network policy does not allow the flow.
    PolicyDenied = 6,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::NoEndpoints,
        DropReason::UnknownServicePort,
        DropReason::UnsupportedProtoToVip,
        DropReason::Malformed,
        DropReason::CtFull,
        DropReason::PolicyDenied,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoEndpoints => "no_endpoints",
            Self::UnknownServicePort => "unknown_service_port",
            Self::UnsupportedProtoToVip => "unsupported_proto_to_vip",
            Self::Malformed => "malformed",
            Self::CtFull => "ct_full",
            Self::PolicyDenied => "policy_denied",
        }
    }
}
