//! A pod wired exactly as the CNI contract says (docs/architecture.md):
//!
//! - the pod's netns has `eth0` with the pod IP as a /32 and a default
//!   route via 169.254.1.1, onlink, plus a static neighbour entry for
//!   169.254.1.1 pointing at the host-side veth's MAC;
//! - the host-side veth is `weir` + 11 hex characters;
//! - the node has `<podIP>/32 dev <host veth>` (and a static neighbour
//!   entry for the pod, so no ARP is needed in either direction).
//!
//! A dual-stack pod ([`Pod::add_v6`]) also has its IPv6 address as a /128
//! on `eth0`, a default route via `fe80::1` with a static neighbour entry
//! for the host veth's MAC, and `<podIPv6>/128 dev <host veth>` on the
//! node (with a static neighbour entry for the pod).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{names, netns::NetNs, node::Node};

pub const GATEWAY: &str = "169.254.1.1";

pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, when it is dual-stack.
    pub ip6: Option<Ipv6Addr>,
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
        Self { name: name.to_string(), ip, ip6: None, host_if, host_ifindex, ns }
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// Gives the pod an IPv6 address, wired as the CNI contract says (see
    /// the module's documentation); the node forwards IPv6 from then on.
    pub fn add_v6(&mut self, node: &Node, addr: Ipv6Addr) {
        let host_mac = node.ns().mac(&self.host_if);
        let pod_mac = self.ns.mac("eth0");
        let a = addr.to_string();
        for (ns, dev) in [(&self.ns, "eth0"), (node.ns(), self.host_if.as_str())] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "0");
            ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0");
        }
        node.ns().sysctl("net.ipv6.conf.all.forwarding", "1");
        self.ns.ip(&["-6", "addr", "add", &format!("{a}/128"), "dev", "eth0", "nodad"]);
        if self.ip6.is_none() {
            self.ns.ip(&["-6", "neigh", "replace", "fe80::1", "lladdr", &host_mac, "dev", "eth0", "nud", "permanent"]);
            self.ns.ip(&["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
            self.ip6 = Some(addr);
        }
        node.ns().ip(&["-6", "route", "add", &format!("{a}/128"), "dev", &self.host_if]);
        node.ns().ip(&["-6", "neigh", "replace", &a, "lladdr", &pod_mac, "dev", &self.host_if, "nud", "permanent"]);
    }
}
