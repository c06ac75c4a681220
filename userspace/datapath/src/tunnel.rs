//! `WEIR_TUNNEL` (another node's pod CIDR → that node's InternalIP) and
//! `WEIR_NODES` (the nodes' addresses), for `--routing vxlan`. Writes
//! only what differs; new entries before removals, so a packet meets the
//! old or the new endpoint of a CIDR.

use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{lpm_trie::{Key, LpmTrie}, HashMap, MapData};
use weir_common::{
    addr::Addr,
    maps::{NODES, NODES_MAX_ENTRIES, TUNNEL, TUNNEL_MAX_ENTRIES},
    tunnel::TunnelEndpoint,
};
use weir_desired::policy::Prefix;

use crate::{
    error::update_error,
    lpm::{key, same},
    pinned,
    pins::PinLayout,
    DatapathError,
};

pub struct TunnelMaps {
    tunnel: LpmTrie<MapData, Addr, TunnelEndpoint>,
    nodes: HashMap<MapData, Addr, u32>,
}

impl TunnelMaps {
    pub fn open(layout: &PinLayout) -> Result<Self, DatapathError> {
        Ok(Self {
            tunnel: LpmTrie::try_from(pinned::open(layout, TUNNEL)?).map_err(|source| DatapathError::Map { name: TUNNEL, source })?,
            nodes: pinned::hash(layout, NODES)?,
        })
    }

    /// Makes the maps hold exactly `cidrs` (pod CIDR → the node's tunnel
    /// address) and `nodes` (each node address → its node's id: a node's
    /// addresses share one).
    pub fn sync(&mut self, cidrs: &BTreeMap<Prefix, IpAddr>, nodes: &[(IpAddr, u32)]) -> Result<usize, DatapathError> {
        let mut writes = 0;
        for (n, id) in nodes {
            let a = Addr::from(*n);
            if self.nodes.get(&a, 0).ok() != Some(*id) {
                self.nodes.insert(a, *id, 0).map_err(|source| update_error(NODES, NODES_MAX_ENTRIES, || format!("node {n}"), source))?;
                writes += 1;
            }
        }
        let have: Vec<(Key<Addr>, TunnelEndpoint)> = self.tunnel.iter().filter_map(Result::ok).collect();
        for (p, node) in cidrs {
            let k = key(p);
            let v = TunnelEndpoint { node: Addr::from(*node) };
            if have.iter().any(|(hk, hv)| same(hk, &k) && *hv == v) {
                continue;
            }
            self.tunnel.insert(&k, v, 0).map_err(|source| update_error(TUNNEL, TUNNEL_MAX_ENTRIES, || format!("pod CIDR {p} of node {node}"), source))?;
            writes += 1;
        }
        let wanted: Vec<Key<Addr>> = cidrs.keys().map(key).collect();
        for (hk, _) in &have {
            if !wanted.iter().any(|k| same(k, hk)) {
                let _ = self.tunnel.remove(hk);
                writes += 1;
            }
        }
        let keep: Vec<Addr> = nodes.iter().map(|(n, _)| Addr::from(*n)).collect();
        let stale: Vec<Addr> = self.nodes.keys().filter_map(Result::ok).filter(|a| !keep.contains(a)).collect();
        for a in stale {
            let _ = self.nodes.remove(&a);
            writes += 1;
        }
        Ok(writes)
    }
}
