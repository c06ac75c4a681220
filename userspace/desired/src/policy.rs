//! Desired policy state: local endpoints, the IP → identity cache and the
//! policy entries, in plain types (the datapath turns them into map keys).

use std::{collections::BTreeMap, fmt, net::IpAddr};

use weir_common::policy::{
    IpInfo, NameKey, PolicyKeyData, PolicyValue, POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, V4_PREFIX_BASE,
};

/// An address prefix, in the address's own family (IPv4 /0../32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The prefix with host bits cleared.
    pub fn new(addr: IpAddr, len: u8) -> Self {
        let addr = match addr {
            IpAddr::V4(a) => {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = if len == 0 { 0 } else { u128::MAX << (128 - len.min(128)) };
                IpAddr::V6((u128::from(a) & m).into())
            }
        };
        Prefix { addr, len }
    }

    pub fn host(addr: IpAddr) -> Self {
        Prefix { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn contains_addr(&self, ip: &IpAddr) -> bool {
        Prefix::new(*ip, self.len) == *self && ip.is_ipv4() == self.addr.is_ipv4()
    }

    /// Whether `other` lies inside `self`.
    pub fn contains(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains_addr(&other.addr)
    }

    /// The LPM prefix length in the 16-byte key space.
    pub fn key_len(&self) -> u32 {
        if self.addr.is_ipv4() { V4_PREFIX_BASE + self.len as u32 } else { self.len as u32 }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A local endpoint (a pod on this node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndpointSpec {
    pub id: u32,
    pub identity: u32,
    /// Some policy (of any tier) has a say in this direction: new flows
    /// are judged by the endpoint's entries.
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
}

/// One policy entry: which peers an endpoint allows, on what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntry {
    pub endpoint: u32,
    pub direction: u8,
    pub identity: u32,
    /// 0: any protocol (and any port).
    pub proto: u8,
    /// First port of the block (host order).
    pub port: u16,
    /// Fixed high bits of the port: 16 for one port, 0 for any port.
    pub port_bits: u8,
}

impl PolicyEntry {
    /// The LPM key (prefix length, data).
    pub fn key(&self) -> (u32, PolicyKeyData) {
        let len = if self.proto == 0 { POLICY_PREFIX_ANY_PROTO } else { POLICY_PREFIX_ANY_PORT + self.port_bits as u32 };
        (len, PolicyKeyData::new(self.endpoint, self.direction, self.identity, self.proto, self.port))
    }

    /// From an LPM key read back from the map.
    pub fn from_key(len: u32, k: &PolicyKeyData) -> Self {
        let (proto, port_bits) = if len <= POLICY_PREFIX_ANY_PROTO {
            (0, 0)
        } else {
            (k.proto(), (len - POLICY_PREFIX_ANY_PORT).min(16) as u8)
        };
        PolicyEntry { endpoint: k.endpoint(), direction: k.direction(), identity: k.identity(), proto, port: k.port(), port_bits }
    }
}

/// Everything the policy maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyState {
    pub endpoints: BTreeMap<IpAddr, EndpointSpec>,
    pub ipcache: BTreeMap<Prefix, IpInfo>,
    /// Entry → the verdict of every cell it covers.
    pub entries: BTreeMap<PolicyEntry, PolicyValue>,
}

impl PolicyState {
    /// Rebuilds the maps in bulk (see `ClusterState::pack` in weir-model):
    /// nodes filled by ascending inserts stay about half empty.
    pub fn pack(&mut self) {
        self.endpoints = std::mem::take(&mut self.endpoints).into_iter().collect();
        self.ipcache = std::mem::take(&mut self.ipcache).into_iter().collect();
        self.entries = std::mem::take(&mut self.entries).into_iter().collect();
    }
}

/// A change to part of the policy state: for each key, its new value, or
/// `None` when it goes. Keys not named keep what they hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDelta {
    pub endpoints: BTreeMap<IpAddr, Option<EndpointSpec>>,
    pub ipcache: BTreeMap<Prefix, Option<IpInfo>>,
    pub entries: BTreeMap<PolicyEntry, Option<PolicyValue>>,
    pub names: BTreeMap<NameKey, Option<String>>,
}

impl PolicyDelta {
    /// Applies the delta to `state` and `names` (what the maps would hold).
    pub fn apply_to(&self, state: &mut PolicyState, names: &mut BTreeMap<NameKey, String>) {
        fn set<K: Ord + Copy, V: Clone>(m: &mut BTreeMap<K, V>, d: &BTreeMap<K, Option<V>>) {
            for (k, v) in d {
                match v {
                    Some(v) => m.insert(*k, v.clone()),
                    None => m.remove(k),
                };
            }
        }
        set(&mut state.endpoints, &self.endpoints);
        set(&mut state.ipcache, &self.ipcache);
        set(&mut state.entries, &self.entries);
        set(names, &self.names);
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.ipcache.is_empty() && self.entries.is_empty() && self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_nest() {
        let p8 = Prefix::new("10.1.2.3".parse().unwrap(), 8);
        assert_eq!(p8.to_string(), "10.0.0.0/8");
        let p16 = Prefix::new("10.1.0.0".parse().unwrap(), 16);
        assert!(p8.contains(&p16) && !p16.contains(&p8));
        assert!(p8.contains_addr(&"10.200.0.1".parse().unwrap()));
        assert!(!p8.contains_addr(&"11.0.0.1".parse().unwrap()));
        assert_eq!(p16.key_len(), 112);
        let all = Prefix::new("0.0.0.0".parse().unwrap(), 0);
        assert!(all.contains(&p8) && !all.contains_addr(&"::1".parse().unwrap()));
    }

    #[test]
    fn entry_keys_round_trip() {
        for e in [
            PolicyEntry { endpoint: 3, direction: 1, identity: 300, proto: 0, port: 0, port_bits: 0 },
            PolicyEntry { endpoint: 3, direction: 0, identity: 300, proto: 6, port: 0, port_bits: 0 },
            PolicyEntry { endpoint: 3, direction: 0, identity: 300, proto: 17, port: 80, port_bits: 16 },
            PolicyEntry { endpoint: 3, direction: 0, identity: 300, proto: 6, port: 1024, port_bits: 6 },
        ] {
            let (len, k) = e.key();
            assert_eq!(PolicyEntry::from_key(len, &k), e);
        }
    }
}
