//! A pod wired exactly as the CNI contract says (docs/architecture.md):
//!
//! - the pod's netns has `eth0` with the pod IP as a /32 and a default
//!   route via 169.254.1.1, onlink, plus a static neighbour entry for
//!   169.254.1.1 pointing at the host-side veth's MAC;
//! - the host-side veth is `weir` + 11 hex characters;
//! - the node has `<podIP>/32 dev <host veth>` (and a static neighbour
//!   entry for the pod, so no ARP is needed in either direction).

use std::net::Ipv4Addr;

use crate::{names, netns::NetNs, node::Node};

pub const GATEWAY: &str = "169.254.1.1";

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Host-side veth, in the node namespace.
    pub host_if: String,
    pub host_ifindex: u32,
    ns: NetNs,
}

impl Pod {
    pub fn new(node: &Node, name: &str, ip: Ipv4Addr) -> Self {
        let ns = NetNs::new("wp");
        let host_if = names::host_veth_name(ns.name(), "eth0");
        let node_ns = node.ns();
        node_ns.ip(&["link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        let ip_s = ip.to_string();
        let cidr = format!("{ip_s}/32");
        ns.ip(&["addr", "add", &cidr, "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        node_ns.ip(&["link", "set", &host_if, "up"]);
        let host_mac = node_ns.mac(&host_if);
        let pod_mac = ns.mac("eth0");
        ns.ip(&["neigh", "replace", GATEWAY, "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"]);
        ns.ip(&["route", "add", GATEWAY, "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0", "onlink"]);
        node_ns.ip(&["route", "add", &cidr, "dev", &host_if]);
        node_ns.ip(&["neigh", "replace", &ip_s, "lladdr", &pod_mac, "dev", &host_if, "nud", "permanent"]);
        let host_ifindex = node_ns.ifindex(&host_if);
        Self { name: name.to_string(), ip, host_if, host_ifindex, ns }
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }
}
