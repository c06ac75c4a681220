//! What a service frontend does with a flow, by where the flow comes from:
//! which entry of a split frontend serves it, whether a new flow is
//! refused (source ranges, no endpoints), and whether it is masqueraded.
//! The tc path (`lb::forward`), the socket path and `weir explain` share
//! these decisions.

use weir_common::{
    addr::Addr,
    config::DatapathConfig,
    drop::DropReason,
    lb::{svc_kind, Service, KIND_CLUSTER_IP, SVC_F_AFFINITY, SVC_F_LOCAL_ONLY, SVC_F_MASQ_LOCAL, SVC_F_MASQ_REMOTE, SVC_F_SOURCE_RANGES, SVC_F_SPLIT},
};

/// Where a flow comes from, as the service path tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Origin {
    /// One of this node's pods (from_pod).
    Pod = 0,
    /// Outside the node: an uplink device, or the tunnel (from_net,
    /// from_tunnel).
    Outside = 1,
    /// The node's own processes (the socket programs): no packet is
    /// translated, so nothing is masqueraded.
    Host = 2,
}

/// Whether a flow from `origin` is served by the external entry of the
/// frontend whose internal entry is `internal`: only traffic from outside
/// the node, and only for a split frontend (externalTrafficPolicy: Local).
#[inline(always)]
pub fn external_entry(internal: &Service, origin: Origin) -> bool {
    origin == Origin::Outside && internal.flags & SVC_F_SPLIT != 0
}

/// Whether a packet to this frontend is never the reply of a service
/// flow: a ClusterIP is a service's own address and never a client's, so
/// the datapath skips the reply lookup for packets to it. The address of
/// a NodePort, LoadBalancer or external IP frontend can also be a
/// client's (the node's own, for a masqueraded flow), so packets to those
/// are looked up as replies first.
#[inline(always)]
pub fn never_a_reply(svc: &Service) -> bool {
    svc_kind(svc.flags) == KIND_CLUSTER_IP
}

/// Why a new flow is not let in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Dropped silently (the client times out).
    Drop(DropReason),
    /// Answered: TCP RST or ICMP port unreachable (EPERM at connect on the
    /// socket path).
    Reject(DropReason),
}

/// Whether a new flow to `svc` is refused before a backend is chosen:
/// outside the source ranges (`in_ranges` is asked only when the service
/// has some), or no endpoint (dropped when only local endpoints count, as
/// kube-proxy drops; rejected otherwise).
#[inline(always)]
pub fn refuse_new(svc: &Service, in_ranges: impl FnOnce() -> bool) -> Option<Refusal> {
    if svc.flags & SVC_F_SOURCE_RANGES != 0 && !in_ranges() {
        return Some(Refusal::Drop(DropReason::NotInSourceRanges));
    }
    if svc.backend_count == 0 {
        if svc.flags & SVC_F_LOCAL_ONLY != 0 {
            return Some(Refusal::Drop(DropReason::NoLocalEndpoints));
        }
        return Some(Refusal::Reject(DropReason::NoEndpoints));
    }
    None
}

/// Whether a new flow of `svc` from `origin` to `backend` is masqueraded
/// to the node address: where kube-proxy masquerades (see `SVC_F_MASQ_*`),
/// once the node address is known, and never to a backend in the node's
/// own network namespace (the stack delivers that locally, where a local
/// source is a martian). The node's own processes are never masqueraded:
/// their sockets already carry a node address.
#[inline(always)]
pub fn masquerades(svc: &Service, cfg: &DatapathConfig, backend: &Addr, origin: Origin) -> bool {
    let want = match origin {
        Origin::Pod => SVC_F_MASQ_LOCAL,
        Origin::Outside => SVC_F_MASQ_REMOTE,
        Origin::Host => return false,
    };
    // A flow is masqueraded to the node address of its backend's family
    // (a backend could not answer the other), once that one is known.
    let node = cfg.node_addr_for(backend);
    svc.flags & want != 0 && *node != Addr::ZERO && backend != node
}

/// Whether a pod's TCP socket asking for `svc` is pointed at a backend at
/// connect (socket scope `all`; a pod's UDP always stays with the tc
/// path), instead of leaving its packets to the tc path: only where the
/// tc path would do nothing but translate the destination. A service that can refuse the flow (no endpoints, source
/// ranges), keeps ClientIP affinity (keyed by the pod's address, which a
/// socket has not chosen yet at connect), or masquerades a pod's flows is
/// left to the tc path, which answers, judges and translates them as it
/// always has.
#[inline(always)]
pub fn pod_socket_translates(svc: &Service) -> bool {
    svc.backend_count != 0 && svc.flags & (SVC_F_SOURCE_RANGES | SVC_F_AFFINITY | SVC_F_MASQ_LOCAL) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(flags: u32, backends: u32) -> Service {
        Service { flags, backend_count: backends, ..Service::default() }
    }

    #[test]
    fn only_clusterips_skip_the_reply_lookup() {
        use weir_common::lb::{KIND_EXTERNAL_IP, KIND_LOAD_BALANCER, KIND_NODE_PORT, SVC_KIND_SHIFT};
        assert!(never_a_reply(&svc(KIND_CLUSTER_IP << SVC_KIND_SHIFT, 1)));
        for kind in [KIND_NODE_PORT, KIND_LOAD_BALANCER, KIND_EXTERNAL_IP] {
            assert!(!never_a_reply(&svc(kind << SVC_KIND_SHIFT | SVC_F_SPLIT, 1)), "kind {kind}");
        }
    }

    #[test]
    fn only_outside_traffic_takes_the_external_entry_of_a_split_frontend() {
        let split = svc(SVC_F_SPLIT, 1);
        assert!(external_entry(&split, Origin::Outside));
        assert!(!external_entry(&split, Origin::Pod));
        assert!(!external_entry(&split, Origin::Host));
        assert!(!external_entry(&svc(0, 1), Origin::Outside));
    }

    #[test]
    fn refusals_follow_kube_proxy() {
        assert_eq!(refuse_new(&svc(0, 0), || true), Some(Refusal::Reject(DropReason::NoEndpoints)));
        assert_eq!(refuse_new(&svc(SVC_F_LOCAL_ONLY, 0), || true), Some(Refusal::Drop(DropReason::NoLocalEndpoints)));
        assert_eq!(refuse_new(&svc(SVC_F_SOURCE_RANGES, 2), || false), Some(Refusal::Drop(DropReason::NotInSourceRanges)));
        assert_eq!(refuse_new(&svc(SVC_F_SOURCE_RANGES, 2), || true), None);
        // Ranges are not asked for a service without them.
        assert_eq!(refuse_new(&svc(0, 2), || panic!("asked")), None);
    }

    #[test]
    fn pod_sockets_are_translated_only_where_the_tc_path_would_only_translate() {
        assert!(pod_socket_translates(&svc(0, 2)));
        assert!(pod_socket_translates(&svc(SVC_F_MASQ_REMOTE | SVC_F_SPLIT | SVC_F_LOCAL_ONLY, 1)), "outside traffic's masquerade is not a pod's");
        assert!(!pod_socket_translates(&svc(0, 0)), "no endpoints: the tc path rejects");
        assert!(!pod_socket_translates(&svc(SVC_F_SOURCE_RANGES, 2)), "source ranges: the tc path judges the pod's address");
        assert!(!pod_socket_translates(&svc(SVC_F_AFFINITY, 2)), "affinity is keyed by the pod's address");
        assert!(!pod_socket_translates(&svc(SVC_F_MASQ_LOCAL, 2)), "masqueraded pod flows");
    }

    #[test]
    fn masquerade_by_origin() {
        let node = Addr::from_v4_raw(u32::from_ne_bytes([192, 168, 0, 1]));
        let backend = Addr::from_v4_raw(u32::from_ne_bytes([10, 244, 1, 5]));
        let cfg = DatapathConfig { node_addr: node, ..DatapathConfig::DEFAULT };
        let both = svc(SVC_F_MASQ_LOCAL | SVC_F_MASQ_REMOTE, 1);
        assert!(masquerades(&both, &cfg, &backend, Origin::Pod));
        assert!(masquerades(&both, &cfg, &backend, Origin::Outside));
        assert!(!masquerades(&both, &cfg, &backend, Origin::Host));
        assert!(!masquerades(&both, &cfg, &node, Origin::Outside), "a host-network backend on this node");
        assert!(!masquerades(&svc(SVC_F_MASQ_REMOTE, 1), &cfg, &backend, Origin::Pod));
        let unknown = DatapathConfig { node_addr: Addr::ZERO, ..cfg };
        assert!(!masquerades(&both, &unknown, &backend, Origin::Outside));
    }

    #[test]
    fn a_flow_is_masqueraded_to_the_node_address_of_its_backends_family_once_known() {
        let node = Addr::from_v4_raw(u32::from_ne_bytes([192, 168, 0, 1]));
        let v6 = |last: u8| {
            let mut b = [0u8; 16];
            b[0] = 0xfd;
            b[15] = last;
            Addr { bytes: b }
        };
        let (backend6, node6) = (v6(5), v6(1));
        let both = svc(SVC_F_MASQ_LOCAL | SVC_F_MASQ_REMOTE, 1);
        // Only the IPv4 address known: IPv6 flows keep their source.
        let v4_only = DatapathConfig { node_addr: node, ..DatapathConfig::DEFAULT };
        assert!(!masquerades(&both, &v4_only, &backend6, Origin::Outside));
        assert!(!masquerades(&both, &v4_only, &backend6, Origin::Pod));
        // Both known: each family's own.
        let dual = DatapathConfig { node_addr6: node6, ..v4_only };
        assert!(masquerades(&both, &dual, &backend6, Origin::Outside));
        assert!(masquerades(&both, &dual, &backend6, Origin::Pod));
        assert_eq!(*dual.node_addr_for(&backend6), node6);
        assert!(!masquerades(&both, &dual, &node6, Origin::Outside), "a host-network IPv6 backend on this node");
        assert!(masquerades(&both, &dual, &Addr::from_v4_raw(u32::from_ne_bytes([10, 244, 1, 5])), Origin::Outside));
        assert!(dual.is_node_addr(&node6) && dual.is_node_addr(&node) && !dual.is_node_addr(&backend6) && !dual.is_node_addr(&Addr::ZERO));
    }
}
