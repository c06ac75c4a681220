//! What the service and policy maps hold, in comparable terms (no ids
//! that depend on history): for `weir diff`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{lpm_trie::LpmTrie, HashMap, MapData};
use serde::Serialize;
use weir_common::{
    addr::Addr,
    lb::{Backend, FrontendKey, Service, SVC_F_AFFINITY, SVC_F_RANDOM, SVC_F_VIP_MARKER},
    maps::{BACKENDS, ENDPOINTS, FRONTENDS, IPCACHE, LB_TABLE, NAMES, POLICY, SVC_TIMES},
    policy::{EndpointInfo, IpInfo, NameKey, PolicyKeyData, PolicyValue, RuleName, DIR_INGRESS, ID_ANY, ID_CIDR_FIRST, NAME_IDENTITY},
};
use weir_desired::{eligible, policy::PolicyEntry, Frontend, Selection, ServiceSpec};

use crate::{lb::frontend_of, mmap::MmapU32Array, pinned, pins::PinLayout, policy::prefix_of, DatapathError};

/// One service port, as a person compares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceView {
    pub selection: &'static str,
    pub affinity_timeout_s: Option<u32>,
    /// Backends taking new connections, `addr:port`.
    pub backends: BTreeSet<String>,
}

impl ServiceView {
    pub fn of_spec(spec: &ServiceSpec) -> Self {
        let (elig, _) = eligible(&spec.endpoints);
        ServiceView {
            selection: match spec.selection {
                Selection::Maglev => "maglev",
                Selection::Random => "random",
            },
            affinity_timeout_s: spec.affinity_timeout_s,
            backends: elig.iter().map(|e| format!("{}:{}", e.addr, e.port)).collect(),
        }
    }
}

/// Every programmed service port, with when it was last programmed (unix
/// seconds, when the agent recorded it).
pub fn services(layout: &PinLayout) -> Result<BTreeMap<Frontend, (ServiceView, Option<u64>)>, DatapathError> {
    let frontends: HashMap<MapData, FrontendKey, Service> = pinned::hash(layout, FRONTENDS)?;
    let backends: HashMap<MapData, u32, Backend> = pinned::hash(layout, BACKENDS)?;
    let times: HashMap<MapData, u32, u64> = pinned::hash(layout, SVC_TIMES)?;
    let table = MmapU32Array::open(layout, LB_TABLE)?;
    let mut out = BTreeMap::new();
    for (k, s) in frontends.iter().filter_map(Result::ok) {
        if s.flags & SVC_F_VIP_MARKER != 0 {
            continue;
        }
        let Some(f) = frontend_of(&k) else { continue };
        let w = table.window(s.table_base, s.table_len)?;
        let ids: BTreeSet<u32> = (0..s.table_len).filter_map(|i| w.get(s.table_base + i)).collect();
        let backends = ids
            .iter()
            .filter_map(|id| backends.get(id, 0).ok())
            .map(|b| format!("{}:{}", IpAddr::from(b.addr), u16::from_be(b.port)))
            .collect();
        let view = ServiceView {
            selection: if s.flags & SVC_F_RANDOM != 0 { "random" } else { "maglev" },
            affinity_timeout_s: (s.flags & SVC_F_AFFINITY != 0).then_some(s.affinity_timeout_s),
            backends,
        };
        out.insert(f, (view, times.get(&s.id, 0).ok()));
    }
    Ok(out)
}

/// One policy entry (endpoint, direction, peer, protocol, ports, verdict)
/// with peers by name: `any`, `cidr <prefix>`, or a pod identity's
/// `ns {labels}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PolicyLine {
    pub endpoint: IpAddr,
    pub direction: &'static str,
    pub peer: String,
    pub protocol: u8,
    pub port: u16,
    pub port_bits: u8,
    /// "allow" or "deny".
    pub verdict: &'static str,
}

/// Endpoint isolation (ingress, egress) and policy lines, by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyView {
    pub isolation: BTreeMap<IpAddr, (bool, bool)>,
    pub lines: BTreeSet<PolicyLine>,
}

/// Builds comparable policy lines from entries whose identities `peer`
/// can name and whose endpoint ids `endpoint` can place.
pub fn policy_lines<'a>(
    entries: impl Iterator<Item = (&'a PolicyEntry, &'a PolicyValue)>,
    endpoint: impl Fn(u32) -> Option<IpAddr>,
    peer: impl Fn(u32) -> String,
) -> BTreeSet<PolicyLine> {
    entries
        .filter_map(|(e, v)| {
            Some(PolicyLine {
                endpoint: endpoint(e.endpoint)?,
                direction: if e.direction == DIR_INGRESS { "ingress" } else { "egress" },
                peer: peer(e.identity),
                protocol: e.proto,
                port: e.port,
                port_bits: e.port_bits,
                verdict: if v.allows() { "allow" } else { "deny" },
            })
        })
        .collect()
}

/// The programmed policy, with peers named from `WEIR_NAMES` and the ipcache.
pub fn policy(layout: &PinLayout) -> Result<PolicyView, DatapathError> {
    let endpoints: HashMap<MapData, Addr, EndpointInfo> = pinned::hash(layout, ENDPOINTS)?;
    let names: HashMap<MapData, NameKey, RuleName> = pinned::hash(layout, NAMES)?;
    let ipcache: LpmTrie<MapData, Addr, IpInfo> = pinned::typed(layout, IPCACHE)?;
    let trie: LpmTrie<MapData, PolicyKeyData, PolicyValue> = pinned::typed(layout, POLICY)?;
    let eps: Vec<(Addr, EndpointInfo)> = endpoints.iter().filter_map(Result::ok).collect();
    let cidrs: BTreeMap<u32, String> = ipcache
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| v.identity >= ID_CIDR_FIRST)
        .map(|(k, v)| (v.identity, prefix_of(k.prefix_len(), &k.data()).to_string()))
        .collect();
    let entries: Vec<(PolicyEntry, PolicyValue)> = trie.iter().filter_map(Result::ok).map(|(k, v)| (PolicyEntry::from_key(k.prefix_len(), &k.data()), v)).collect();
    let lines = policy_lines(
        entries.iter().map(|(e, v)| (e, v)),
        // An endpoint is named by its lowest address (a dual-stack pod's
        // IPv4 one): the same name whatever order the map iterates in.
        |id| eps.iter().filter(|(_, e)| e.id == id).map(|(a, _)| IpAddr::from(*a)).min(),
        |id| match id {
            ID_ANY => "any".into(),
            id if id >= ID_CIDR_FIRST => format!("cidr {}", cidrs.get(&id).map_or("?", String::as_str)),
            id => names.get(&NameKey { kind: NAME_IDENTITY, id }, 0).map_or_else(|_| format!("identity {id}"), |n| n.as_str().to_string()),
        },
    );
    let isolation = eps
        .iter()
        .map(|(a, e)| (IpAddr::from(*a), (e.isolated(DIR_INGRESS), e.isolated(weir_common::policy::DIR_EGRESS))))
        .collect();
    Ok(PolicyView { isolation, lines })
}
