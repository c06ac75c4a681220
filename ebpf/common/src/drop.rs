//! Why the datapath dropped or rejected a packet. Counted per reason in
//! `WEIR_DROPS`, and carried by drop events (`weir monitor --type drop`).

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The service has no usable endpoint: rejected (TCP RST, ICMP unreachable).
    NoEndpoints = 1,
    /// A service IP was dialled on a port no service has: rejected.
    UnknownServicePort = 2,
    /// A packet that is neither TCP nor UDP (ICMP echo, ...) to a service
    /// IP: rejected with ICMP port unreachable, as kube-proxy's nftables
    /// mode rejects it.
    UnsupportedProtoToVip = 3,
    /// A packet the program could not parse or rewrite (truncated headers,
    /// bad lengths, a first fragment too short for its L4 header).
    Malformed = 4,
    /// A conntrack entry could not be created (map full).
    CtFull = 5,
    /// A network policy does not allow the flow.
    PolicyDenied = 6,
    /// A pod sent from an address the node does not route to its link.
    SpoofedSource = 7,
    /// IPv6 link-scope traffic (link-local or multicast, other than
    /// neighbour discovery and MLD) to or from a policy-isolated pod: no
    /// rule can name a link-scope peer.
    Ipv6Isolated = 8,
    /// A frame from a pod that is neither IPv4, IPv6 nor ARP.
    UnsupportedEthertype = 9,
    /// A later fragment whose first fragment was not seen or not allowed.
    FragmentUnknown = 10,
    /// An ICMP error quoting no tracked flow of its destination.
    IcmpUnrelated = 11,
    /// The pod already holds its share of the conntrack table
    /// (`--ct-max-per-endpoint`): its new flow is refused.
    CtQuota = 12,
    /// A new service flow's reply tuple is taken and no free source port
    /// was found to remap it.
    TupleCollision = 13,
    /// A packet on its way into a pod whose destination is not one of the
    /// pod's addresses (the mirror of source validation).
    NotForPod = 14,
    /// A packet for the tunnel whose destination no node's pod CIDR holds.
    NoTunnelEndpoint = 15,
    /// Encapsulated traffic from an outer source that is no node, or with
    /// an inner source that node does not hold.
    TunnelSpoofed = 16,
    /// A pod's new flow out of the cluster found the masquerade table
    /// full (`--masquerade-max-entries`).
    MasqueradeFull = 17,
    /// Every masquerade port towards that remote address and port was
    /// taken (no free port found in the tries the kernel makes).
    MasqueradePortsExhausted = 18,
    /// A new flow to an internalTrafficPolicy: Local service with no
    /// endpoint on this node (dropped, not rejected, as kube-proxy does).
    NoLocalEndpoints = 19,
    /// A new flow to a load-balancer IP from a source outside the
    /// service's loadBalancerSourceRanges.
    NotInSourceRanges = 20,
    /// A packet with Don't Fragment set, too big for the link its
    /// translation leaves by: answered with ICMP fragmentation needed
    /// (the link's MTU), quoting the sender's own packet.
    FragNeeded = 21,
    /// An IPv6 packet whose extension-header chain cannot be walked to
    /// its upper layer (too long, cut short, a misplaced hop-by-hop or a
    /// second fragment header).
    Ipv6HeaderChain = 22,
    /// An ICMPv6 neighbour-discovery or MLD message that may not cross a
    /// pod's link: a router advertisement, redirect or MLD query from the
    /// pod (it is not the link's router), a hop limit other than RFC 4861's
    /// 255 (MLD's 1), or a fragment (RFC 6980).
    Ipv6LinkControl = 23,
    /// A packet, of either family, from or to an address the node routes
    /// to a policy-isolated pod's link but no endpoint names (missing from
    /// the pod's `podIPs`, or not delivered yet): no rule could judge its
    /// flow.
    UnlistedAddress = 24,
}

impl DropReason {
    pub const ALL: [DropReason; 24] = [
        DropReason::NoEndpoints,
        DropReason::UnknownServicePort,
        DropReason::UnsupportedProtoToVip,
        DropReason::Malformed,
        DropReason::CtFull,
        DropReason::PolicyDenied,
        DropReason::SpoofedSource,
        DropReason::Ipv6Isolated,
        DropReason::UnsupportedEthertype,
        DropReason::FragmentUnknown,
        DropReason::IcmpUnrelated,
        DropReason::CtQuota,
        DropReason::TupleCollision,
        DropReason::NotForPod,
        DropReason::NoTunnelEndpoint,
        DropReason::TunnelSpoofed,
        DropReason::MasqueradeFull,
        DropReason::MasqueradePortsExhausted,
        DropReason::NoLocalEndpoints,
        DropReason::NotInSourceRanges,
        DropReason::FragNeeded,
        DropReason::Ipv6HeaderChain,
        DropReason::Ipv6LinkControl,
        DropReason::UnlistedAddress,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NoEndpoints => "no_endpoints",
            Self::UnknownServicePort => "unknown_service_port",
            Self::UnsupportedProtoToVip => "unsupported_proto_to_vip",
            Self::Malformed => "malformed",
            Self::CtFull => "ct_full",
            Self::PolicyDenied => "policy_denied",
            Self::SpoofedSource => "spoofed_source",
            Self::Ipv6Isolated => "ipv6_isolated",
            Self::UnsupportedEthertype => "unsupported_ethertype",
            Self::FragmentUnknown => "fragment_unknown",
            Self::IcmpUnrelated => "icmp_unrelated",
            Self::CtQuota => "ct_quota",
            Self::TupleCollision => "tuple_collision",
            Self::NotForPod => "not_for_pod",
            Self::NoTunnelEndpoint => "no_tunnel_endpoint",
            Self::TunnelSpoofed => "tunnel_spoofed",
            Self::MasqueradeFull => "masquerade_full",
            Self::MasqueradePortsExhausted => "masquerade_ports_exhausted",
            Self::NoLocalEndpoints => "no_local_endpoints",
            Self::NotInSourceRanges => "not_in_source_ranges",
            Self::FragNeeded => "frag_needed",
            Self::Ipv6HeaderChain => "ipv6_header_chain",
            Self::Ipv6LinkControl => "ipv6_link_control",
            Self::UnlistedAddress => "unlisted_address",
        }
    }

    /// The reason with this number (as carried in events and counters).
    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u32 == v)
    }
}
