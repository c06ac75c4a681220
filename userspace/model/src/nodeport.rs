//! `--nodeport-addresses`: which of this node's addresses NodePorts are
//! served on, with kube-proxy's meaning. `primary` (the default) is the
//! Node's first InternalIP of each family; CIDRs select every node
//! address inside them. Node addresses are the Node object's addresses
//! plus the addresses on the uplink devices (followed live by the agent).

use std::{net::IpAddr, str::FromStr};

use weir_desired::policy::Prefix;

use crate::node::NodeModel;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The Node's primary InternalIP of each family.
    #[default]
    Primary,
    /// Every node address inside one of these prefixes.
    Cidrs(Vec<Prefix>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--nodeport-addresses: `{0}` is neither `primary` nor a CIDR")]
pub struct BadNodePortAddresses(pub String);

impl FromStr for NodePortAddresses {
    type Err = BadNodePortAddresses;

    /// `primary`, or comma-separated CIDRs (kube-proxy's flag syntax).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s == "primary" {
            return Ok(Self::Primary);
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = crate::policy::compile::parse_cidr(part, "").map_err(|_| BadNodePortAddresses(part.to_string()))?;
            out.push(p);
        }
        Ok(Self::Cidrs(out))
    }
}

impl NodePortAddresses {
    /// The addresses NodePorts are served on, sorted and without
    /// duplicates. `device_addrs`: the addresses on the uplinks.
    pub fn select(&self, node: Option<&NodeModel>, device_addrs: &[IpAddr]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = match self {
            Self::Primary => {
                let Some(n) = node else { return Vec::new() };
                [n.internal_ip(true), n.internal_ip(false)].into_iter().flatten().collect()
            }
            Self::Cidrs(cidrs) => node
                .map(|n| n.addresses.clone())
                .unwrap_or_default()
                .into_iter()
                .chain(device_addrs.iter().copied())
                .filter(|a| cidrs.iter().any(|c| c.contains_addr(a)))
                .collect(),
        };
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeModel {
        NodeModel {
            name: "n".into(),
            pod_cidrs: vec![],
            internal_ips: vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()],
            addresses: vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap(), "198.51.100.10".parse().unwrap()],
            zone: None,
        }
    }

    #[test]
    fn primary_is_the_first_internal_ip_of_each_family() {
        let got = NodePortAddresses::Primary.select(Some(&node()), &["192.0.2.11".parse().unwrap()]);
        assert_eq!(got, vec!["192.0.2.10".parse::<IpAddr>().unwrap(), "2001:db8::10".parse().unwrap()]);
        assert!(NodePortAddresses::Primary.select(None, &[]).is_empty());
    }

    #[test]
    fn cidrs_select_node_and_device_addresses_inside_them() {
        let sel: NodePortAddresses = " 192.0.2.0/24 , 203.0.113.0/24".parse().unwrap();
        let got = sel.select(Some(&node()), &["192.0.2.11".parse().unwrap(), "10.0.0.1".parse().unwrap()]);
        assert_eq!(got, vec!["192.0.2.10".parse::<IpAddr>().unwrap(), "192.0.2.11".parse().unwrap()]);
    }

    #[test]
    fn bad_flags_name_the_part() {
        assert_eq!("primary".parse::<NodePortAddresses>(), Ok(NodePortAddresses::Primary));
        assert_eq!("10.0.0.0/8,nonsense".parse::<NodePortAddresses>(), Err(BadNodePortAddresses("nonsense".into())));
    }
}
