//! How this node reaches the others, from the Node objects: the uplink
//! devices and their programs, the routes to other nodes' pod CIDRs, and
//! in VXLAN mode the tunnel device (external / collect_md, owned by the
//! agent), its programs and the map of which node holds which pod CIDR;
//! the masquerade of pod egress on the uplinks (`masquerade`); and the
//! node address masqueraded service flows come from (the Node's IPv4
//! InternalIP, in the datapath configuration).

use std::collections::BTreeMap;

use rtnetlink::{Handle, LinkVxlan, LinkUnspec};
use weir_common::tunnel::TUNNEL_MAC;
use weir_datapath::{config::ConfigMap, masq::MasqMaps, tunnel::TunnelMaps, DatapathConfig, NodeDatapath};
use weir_desired::policy::Prefix;
use weir_model::ClusterState;

use crate::{
    args::Routing,
    devices::NodeDevices,
    links::LinkWatcher,
    metrics::{KindLabels, Metrics},
    masquerade,
    routing::{self, RouteProgrammer},
};

/// `--masquerade` and `--non-masquerade-cidrs`, with the maps they fill.
pub struct MasqSettings {
    pub enabled: bool,
    /// `--masquerade-ports` (min, max).
    pub ports: (u16, u16),
    pub extra_inside: Vec<Prefix>,
    pub maps: MasqMaps,
}

/// The datapath configuration, whose node address this module keeps.
pub struct NodeAddrConfig {
    pub map: ConfigMap,
    /// What was written last.
    pub cfg: DatapathConfig,
}

/// The agent's VXLAN device (not `weir*`: that prefix means a pod link).
pub const TUNNEL_DEV: &str = "vx-weir";
/// What VXLAN adds to a packet: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;
/// What VXLAN over an IPv6 underlay adds: the outer header is 20 bytes
/// longer.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// The MTU pods get over an uplink of `uplink_mtu`: all of it with native
/// routing, less the encapsulation with VXLAN (more of it when some node
/// is reached over IPv6, `v6_underlay`: a node without an IPv4
/// InternalIP, see `routing::tunnel_endpoints`).
pub fn pod_mtu(uplink_mtu: u32, routing: Routing, v6_underlay: bool) -> u32 {
    match routing {
        Routing::Vxlan if v6_underlay => uplink_mtu.saturating_sub(VXLAN6_OVERHEAD),
        Routing::Vxlan => uplink_mtu.saturating_sub(VXLAN_OVERHEAD),
        Routing::Native | Routing::None => uplink_mtu,
    }
}

pub struct NodeNetwork {
    routing: Routing,
    node: Option<String>,
    tunnel_port: u16,
    handle: Handle,
    devices: NodeDevices,
    routes: RouteProgrammer,
    tunnel_maps: Option<TunnelMaps>,
    tunnel_ifindex: Option<u32>,
    masq: Option<MasqSettings>,
    config: Option<NodeAddrConfig>,
}

/// What [`NodeNetwork::new`] is built from, besides the netlink handle
/// and the node programs.
pub struct NodeNetworkSpec {
    pub routing: Routing,
    /// This node's name (None: no Node object to route by).
    pub node: Option<String>,
    pub tunnel_port: u16,
    /// `--devices`: the uplinks to attach to (empty: detected).
    pub explicit_devices: Vec<String>,
    pub tunnel_maps: Option<TunnelMaps>,
    pub masq: Option<MasqSettings>,
    pub config: Option<NodeAddrConfig>,
}

impl NodeNetwork {
    pub fn new(spec: NodeNetworkSpec, handle: Handle, dp: NodeDatapath) -> Self {
        let NodeNetworkSpec { routing, node, tunnel_port, explicit_devices, tunnel_maps, masq, config } = spec;
        Self {
            routing,
            node,
            tunnel_port,
            routes: RouteProgrammer::new(handle.clone()),
            handle,
            devices: NodeDevices::new(dp, explicit_devices),
            tunnel_maps,
            tunnel_ifindex: None,
            masq,
            config,
        }
    }

    /// `--xdp`: the XDP fast path on the uplinks too.
    pub fn set_xdp(&mut self, on: bool) {
        self.devices.set_xdp(on);
    }

    /// Makes devices, tunnel and routes match the Node objects. Errors are
    /// logged and counted; nothing here stops the agent. Returns the
    /// addresses on the uplink devices (NodePort candidates).
    pub async fn sync(&mut self, state: &ClusterState, watcher: &LinkWatcher, metrics: &Metrics) -> Vec<std::net::IpAddr> {
        let uplink_addrs = self.sync_devices(state, watcher, metrics).await;
        self.sync_node_addr(state, metrics);
        uplink_addrs
    }

    /// Writes the node addresses service flows are masqueraded to: the
    /// Node's InternalIP of each family. Without one of a family the
    /// address written before (by this or an earlier agent) stays, so
    /// established flows keep it.
    fn sync_node_addr(&mut self, state: &ClusterState, metrics: &Metrics) {
        let Some(c) = self.config.as_mut() else { return };
        let Some(node) = self.node.as_deref().and_then(|n| state.node(n)) else { return };
        let mut cfg = c.cfg;
        let (v4, v6) = (node.internal_ip(true), node.internal_ip(false));
        if let Some(ip) = v4 {
            cfg.node_addr = weir_common::addr::Addr::from(ip);
        }
        if let Some(ip) = v6 {
            cfg.node_addr6 = weir_common::addr::Addr::from(ip);
        }
        if cfg == c.cfg {
            return;
        }
        match c.map.set(&cfg) {
            Ok(()) => {
                tracing::info!(ipv4 = ?v4, ipv6 = ?v6, "service flows are masqueraded to the node's addresses");
                c.cfg = cfg;
            }
            Err(e) => {
                tracing::error!(error = %weir_datapath::error::chain(&e), kind = e.kind(), "writing the node address");
                metrics.reconcile_errors.get_or_create(&KindLabels { kind: e.kind().into() }).inc();
            }
        }
    }

    async fn sync_devices(&mut self, state: &ClusterState, watcher: &LinkWatcher, metrics: &Metrics) -> Vec<std::net::IpAddr> {
        let node = self.node.as_deref().and_then(|n| state.node(n));
        let ips = node.map(|n| n.internal_ips.clone()).unwrap_or_default();
        let addrs = match watcher.dump_addrs().await {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "listing addresses to find the node's devices");
                Vec::new()
            }
        };
        let default_route = crate::links::default_route_dev(&self.handle).await;
        let uplinks = self.devices.choose(&ips, &addrs, default_route);
        self.devices.ensure(&uplinks);
        let uplink_addrs: Vec<std::net::IpAddr> =
            addrs.iter().filter(|(i, _)| uplinks.iter().any(|(_, u)| u == i)).map(|(_, a)| *a).collect();
        let nodes: Vec<_> = state.nodes().collect();
        self.sync_masquerade(&nodes, &uplinks, &ips, &addrs, metrics);
        if self.routing == Routing::None {
            return uplink_addrs;
        }
        if self.routing == Routing::Vxlan {
            let cidrs: BTreeMap<_, _> = routing::tunnel_endpoints(&nodes, self.node.as_deref()).into_iter().collect();
            // The device comes with the first remote node: a lone node
            // (or one that knows no other yet) has nothing to tunnel. One
            // left by an earlier agent is adopted (its routes cleaned).
            if cidrs.is_empty() && self.tunnel_ifindex.is_none() && crate::devices::ifindex(TUNNEL_DEV).is_none() {
                return uplink_addrs;
            }
            let mtu = match uplinks.first() {
                Some((_, i)) => watcher.link_mtu(*i).await.unwrap_or(1500),
                None => 1500,
            };
            let v6_underlay = cidrs.values().any(|ip| ip.is_ipv6());
            self.ensure_tunnel(pod_mtu(mtu, Routing::Vxlan, v6_underlay), metrics).await;
            if let Some(maps) = self.tunnel_maps.as_mut() {
                if let Err(e) = maps.sync(&cidrs, &routing::peer_ids(&nodes, self.node.as_deref())) {
                    tracing::error!(error = %weir_datapath::error::chain(&e), kind = e.kind(), "tunnel maps");
                    metrics.reconcile_errors.get_or_create(&KindLabels { kind: e.kind().into() }).inc();
                }
            }
            if self.tunnel_ifindex.is_none() {
                return uplink_addrs;
            }
        }
        let out = self.routes.sync(&routing::desired(&nodes, self.node.as_deref(), self.tunnel_ifindex)).await;
        for e in &out.errors {
            tracing::error!(error = %weir_datapath::error::chain(e), kind = e.kind(), "node route");
            metrics.reconcile_errors.get_or_create(&KindLabels { kind: e.kind().into() }).inc();
        }
        if out.added > 0 || out.removed > 0 {
            tracing::info!(added = out.added, removed = out.removed, "node routes");
        }
        uplink_addrs
    }

    /// Writes the masquerade maps: the uplinks' addresses and the
    /// destinations inside the cluster (nothing on the devices when off).
    fn sync_masquerade(
        &mut self,
        nodes: &[&weir_model::node::NodeModel],
        uplinks: &[(String, u32)],
        ips: &[std::net::IpAddr],
        addrs: &[(u32, std::net::IpAddr)],
        metrics: &Metrics,
    ) {
        let Some(m) = self.masq.as_mut() else { return };
        let devices = if m.enabled { masquerade::devices(uplinks, ips, addrs, m.ports) } else { BTreeMap::new() };
        let inside = masquerade::inside(nodes, &m.extra_inside);
        match m.maps.sync(&devices, &inside) {
            Ok(0) => {}
            Ok(writes) => tracing::info!(writes, devices = devices.len(), inside = inside.len(), "masquerade maps"),
            Err(e) => {
                tracing::error!(error = %weir_datapath::error::chain(&e), kind = e.kind(), "masquerade maps");
                metrics.reconcile_errors.get_or_create(&KindLabels { kind: e.kind().into() }).inc();
            }
        }
    }

    /// Creates the VXLAN device if it is missing (external mode: the
    /// datapath sets each packet's outer destination), keeps it up with
    /// weir's MAC, no ARP and `mtu`, and attaches the tunnel programs.
    async fn ensure_tunnel(&mut self, mtu: u32, metrics: &Metrics) {
        let ifindex = match crate::devices::ifindex(TUNNEL_DEV) {
            Some(i) => i,
            None => {
                // External (collect_md) devices take every VNI: the kernel
                // looks them up with VNI 0, so the device itself has none.
                let msg = LinkVxlan::new(TUNNEL_DEV, 0)
                    .port(self.tunnel_port)
                    .learning(false)
                    .collect_metadata(true)
                    .build();
                if let Err(error) = self.handle.link().add(msg).execute().await {
                    tracing::error!(%error, dev = TUNNEL_DEV, "creating the VXLAN device");
                    metrics.reconcile_errors.get_or_create(&KindLabels { kind: "tunnel_device".into() }).inc();
                    return;
                }
                match crate::devices::ifindex(TUNNEL_DEV) {
                    Some(i) => {
                        tracing::info!(dev = TUNNEL_DEV, ifindex = i, port = self.tunnel_port, mtu, "created the VXLAN device");
                        i
                    }
                    None => return,
                }
            }
        };
        let set = LinkUnspec::new_with_index(ifindex).arp(false).address(TUNNEL_MAC.to_vec()).mtu(mtu).up().build();
        if let Err(error) = self.handle.link().set(set).execute().await {
            tracing::error!(%error, dev = TUNNEL_DEV, "setting up the VXLAN device");
            metrics.reconcile_errors.get_or_create(&KindLabels { kind: "tunnel_device".into() }).inc();
            return;
        }
        if self.tunnel_ifindex != Some(ifindex) {
            match self.devices.attach_tunnel(TUNNEL_DEV, ifindex) {
                Ok(()) => self.tunnel_ifindex = Some(ifindex),
                Err(error) => {
                    tracing::error!(error = %weir_datapath::error::chain(&error), kind = error.kind(), "tunnel programs");
                    metrics.reconcile_errors.get_or_create(&KindLabels { kind: error.kind().into() }).inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_get_the_uplink_mtu_less_what_the_mode_adds() {
        assert_eq!(pod_mtu(1500, Routing::Vxlan, false), 1450);
        assert_eq!(pod_mtu(9000, Routing::Vxlan, false), 8950);
        assert_eq!(pod_mtu(1500, Routing::Vxlan, true), 1430, "an IPv6 outer header is 20 bytes longer");
        assert_eq!(pod_mtu(1500, Routing::Native, true), 1500);
        assert_eq!(pod_mtu(1500, Routing::None, false), 1500);
    }
}
