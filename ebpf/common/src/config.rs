//! Runtime configuration the agent writes into `WEIR_CONFIG[0]`; the
//! kernel reads it per packet, so changing it needs no reload.

use crate::{
    addr::Addr,
    masq::{PORT_MAX, PORT_MIN},
};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    pub ct_syn_timeout_s: u32,
    pub ct_established_timeout_s: u32,
    pub ct_closing_timeout_s: u32,
    pub ct_closed_timeout_s: u32,
    pub ct_udp_timeout_s: u32,
    /// Policy allow events: 0 none, N one in N allowed flows (denials
    /// are always reported).
    pub allow_event_sample: u32,
    /// Conntrack entries one pod link may hold (its own flows, and flows
    /// opened towards it from outside the node); new flows beyond it are
    /// refused (`ct_quota`) instead of evicting other pods' entries.
    /// 0: no limit.
    pub ct_max_per_endpoint: u32,
    /// The source ports masqueraded flows take (service flows and pod
    /// egress), host order; see [`DatapathConfig::masq_ports`].
    pub masq_port_min: u16,
    pub masq_port_max: u16,
    /// Source address used when a pod reaches itself through a service.
    pub hairpin_addr: Addr,
    /// The node's IPv4 address masqueraded service flows come from (the
    /// Node's IPv4 InternalIP); unset (zero): IPv4 service flows are never
    /// masqueraded. See [`DatapathConfig::node_addr_for`].
    pub node_addr: Addr,
    /// The cookie of the node's network namespace: the socket-level
    /// programs act only on sockets of that namespace (several agents on
    /// one kernel, each in its own node namespace, share the cgroup
    /// hierarchy). 0: they act nowhere.
    pub netns_cookie: u64,
    /// [`DatapathConfig::node_addr`]'s IPv6 counterpart (the Node's IPv6
    /// InternalIP). Layout v2 of `WEIR_CONFIG` added it.
    pub node_addr6: Addr,
    /// Which sockets the socket-level programs translate:
    /// [`SOCK_SCOPE_NODE`] (the node's own namespace only) or
    /// [`SOCK_SCOPE_ALL`] (every namespace under the cgroup they are
    /// attached to: the node's and its pods'). Layout v3 of `WEIR_CONFIG`
    /// added it.
    pub sock_scope: u32,
    /// The timeout of a UDP flow that is a stream (`CT_STATE_UDP_STREAM`:
    /// still sending two seconds or more after its first reply), seconds,
    /// as nf_conntrack's `udp_timeout_stream`. 0: no stream state, every
    /// UDP flow keeps `ct_udp_timeout_s` (what layout v3's programs did:
    /// the field was its padding, always zero).
    pub ct_udp_stream_timeout_s: u32,
}

/// [`DatapathConfig::sock_scope`]: only sockets of the node's own network
/// namespace (several agents share one cgroup hierarchy, or a service
/// mesh wants pods' connections to reach it untranslated).
pub const SOCK_SCOPE_NODE: u32 = 0;
/// [`DatapathConfig::sock_scope`]: every socket under the cgroup the
/// programs are attached to; a pod's connection is pointed at its backend
/// at connect, where the tc path would only translate its addresses.
pub const SOCK_SCOPE_ALL: u32 = 1;

impl DatapathConfig {
    /// Defaults close to Cilium's and the kernel's conntrack: SYN 60 s,
    /// established 6 h, closing 10 s, closed 10 s; UDP as nf_conntrack
    /// (what kube-proxy's users have): 30 s, and 120 s for a stream.
    /// Hairpin source 169.254.42.1, as Cilium uses.
    pub const DEFAULT: DatapathConfig = DatapathConfig {
        ct_syn_timeout_s: 60,
        ct_established_timeout_s: 21_600,
        ct_closing_timeout_s: 10,
        ct_closed_timeout_s: 10,
        ct_udp_timeout_s: 30,
        allow_event_sample: 0,
        ct_max_per_endpoint: 32_768,
        masq_port_min: PORT_MIN,
        masq_port_max: PORT_MAX,
        hairpin_addr: Addr::from_v4_octets([169, 254, 42, 1]),
        node_addr: Addr::ZERO,
        netns_cookie: 0,
        node_addr6: Addr::ZERO,
        sock_scope: SOCK_SCOPE_NODE,
        ct_udp_stream_timeout_s: 120,
    };
}

/// The source address a pod reaching itself through an IPv6 service
/// sees (the IPv6 counterpart of [`DatapathConfig::hairpin_addr`]):
/// `100::a9fe:2a01`, in the discard-only prefix `100::/64` (RFC 6666),
/// which no pod or node owns and every router discards. The pod's replies
/// to it leave by its default route and are translated back at its host
/// veth before any routing.
pub const HAIRPIN_V6: Addr = Addr { bytes: [0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0x2a, 0x01] };

impl DatapathConfig {
    /// The node address of `a`'s family (zero while unknown): the source
    /// of that family's masqueraded flows.
    #[inline(always)]
    pub fn node_addr_for(&self, a: &Addr) -> &Addr {
        if a.is_v4() {
            &self.node_addr
        } else {
            &self.node_addr6
        }
    }

    /// Whether `a` is one of the node's addresses masqueraded flows come
    /// from.
    #[inline(always)]
    pub fn is_node_addr(&self, a: &Addr) -> bool {
        *a != Addr::ZERO && self.node_addr_for(a) == a
    }

    /// The hairpin source for a client of `client`'s family.
    #[inline(always)]
    pub fn hairpin_for(&self, client: &Addr) -> Addr {
        if client.is_v4() {
            self.hairpin_addr
        } else {
            HAIRPIN_V6
        }
    }

    /// The masquerade port range; the default one when the range is unset
    /// or empty (a configuration written before the range existed held
    /// zeroes there).
    #[inline(always)]
    pub fn masq_ports(&self) -> (u16, u16) {
        if self.masq_port_min == 0 || self.masq_port_max < self.masq_port_min {
            (PORT_MIN, PORT_MAX)
        } else {
            (self.masq_port_min, self.masq_port_max)
        }
    }
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 96);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_or_empty_port_range_is_the_default_one() {
        let mut c = DatapathConfig::DEFAULT;
        assert_eq!(c.masq_ports(), (PORT_MIN, PORT_MAX));
        (c.masq_port_min, c.masq_port_max) = (0, 0);
        assert_eq!(c.masq_ports(), (PORT_MIN, PORT_MAX));
        (c.masq_port_min, c.masq_port_max) = (40_000, 39_999);
        assert_eq!(c.masq_ports(), (PORT_MIN, PORT_MAX));
        (c.masq_port_min, c.masq_port_max) = (40_000, 40_000);
        assert_eq!(c.masq_ports(), (40_000, 40_000));
    }
}

crate::user_pod!(DatapathConfig);
