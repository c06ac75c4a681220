//! `weir policy show <pod-ip | ns/name>` and `weir identity list`: the
//! policy maps, with the names the agent stored for rules, endpoints and
//! identities.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::Context as _;
use aya::maps::{lpm_trie::LpmTrie, HashMap, MapData};
use serde::Serialize;
use weir_common::{
    addr::Addr,
    maps::{ENDPOINTS, IPCACHE, NAMES, POLICY},
    policy::{EndpointInfo, IpInfo, NameKey, PolicyKeyData, PolicyValue, RuleName, DIR_INGRESS, ID_ANY, ID_CIDR_FIRST, ID_HOST, ID_POD_FIRST, ID_WORLD, NAME_ENDPOINT, NAME_IDENTITY, NAME_RULE, PV_AUDIT, PV_AUDIT_DENY, PV_LOG},
};
use weir_datapath::{explain::proto_name, pinned, policy::prefix_of, PinLayout};
use weir_desired::policy::PolicyEntry;

use crate::output::{print_rows, print_table, Format};

#[derive(Default)]
pub(crate) struct Names(BTreeMap<NameKey, String>);

impl Names {
    pub(crate) fn load(layout: &PinLayout) -> anyhow::Result<Self> {
        let m: HashMap<MapData, NameKey, RuleName> = pinned::hash(layout, NAMES)?;
        Ok(Names(m.iter().filter_map(Result::ok).map(|(k, v)| (k, v.as_str().to_string())).collect()))
    }

    pub(crate) fn get(&self, kind: u32, id: u32) -> Option<&str> {
        self.0.get(&NameKey { kind, id }).map(String::as_str)
    }

    fn identity(&self, id: u32, prefixes: &BTreeMap<u32, Vec<String>>) -> String {
        match id {
            ID_ANY => "any peer".into(),
            ID_HOST => "host".into(),
            ID_WORLD => "world".into(),
            id if id >= ID_CIDR_FIRST => format!("cidr {}", prefixes.get(&id).and_then(|v| v.first()).map_or("?", String::as_str)),
            id => self.get(NAME_IDENTITY, id).map_or_else(|| format!("identity {id}"), str::to_string),
        }
    }
}

fn kind_of(id: u32) -> &'static str {
    match id {
        ID_ANY => "any",
        ID_HOST => "host",
        ID_WORLD => "world",
        id if id >= ID_CIDR_FIRST => "cidr",
        id if id >= ID_POD_FIRST => "pod",
        _ => "reserved",
    }
}

/// Identity → the prefixes that resolve to it (pods are /32 or /128).
fn identity_prefixes(layout: &PinLayout) -> anyhow::Result<BTreeMap<u32, Vec<String>>> {
    let ipcache: LpmTrie<MapData, Addr, IpInfo> = pinned::typed(layout, IPCACHE)?;
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (k, v) in ipcache.iter().filter_map(Result::ok) {
        out.entry(v.identity).or_default().push(prefix_of(k.prefix_len(), &k.data()).to_string());
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
struct IdentityRow {
    identity: u32,
    kind: &'static str,
    name: String,
    addresses: Vec<String>,
}

pub fn identities(layout: &PinLayout, format: Format) -> anyhow::Result<()> {
    let names = Names::load(layout)?;
    let prefixes = identity_prefixes(layout)?;
    let rows: Vec<IdentityRow> = prefixes
        .iter()
        .map(|(id, addrs)| IdentityRow { identity: *id, kind: kind_of(*id), name: names.identity(*id, &prefixes), addresses: addrs.clone() })
        .collect();
    print_rows(format, &rows, &["IDENTITY", "KIND", "NAME", "ADDRESSES"], |r| vec![r.identity.to_string(), r.kind.into(), r.name.clone(), r.addresses.join(",")])
}

#[derive(Debug, Serialize)]
struct Rule {
    direction: &'static str,
    peer_identity: u32,
    peer: String,
    protocol: &'static str,
    /// "any", one port, or an aligned block `first-last`.
    ports: String,
    /// "allow" or "deny": the final verdict of every cell the entry covers.
    verdict: &'static str,
    /// The deciding rule (0: a default verdict).
    rule_id: u32,
    rule: String,
    /// A Log rule or an audit-mode policy's verdict on these cells.
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<String>,
}

#[derive(Debug, Serialize)]
struct PolicyView {
    endpoint: IpAddr,
    endpoint_id: u32,
    name: Option<String>,
    identity: u32,
    ingress_isolated: bool,
    egress_isolated: bool,
    rules: Vec<Rule>,
}

/// What a Log rule or an audit-mode policy reports about a verdict, from
/// its `PV_*` flags: `Log(rule)` or `Audit("deny by <rule>")`.
pub enum Report {
    Log(String),
    Audit(String),
}

impl Report {
    pub fn of(flags: u32, note_rule: u32, names: &Names) -> Option<Self> {
        let rule = if note_rule == 0 { "default".to_string() } else { names.get(NAME_RULE, note_rule).unwrap_or("?").to_string() };
        if flags & PV_AUDIT != 0 {
            Some(Report::Audit(format!("{} by {rule}", if flags & PV_AUDIT_DENY != 0 { "deny" } else { "allow" })))
        } else if flags & PV_LOG != 0 {
            Some(Report::Log(rule))
        } else {
            None
        }
    }
}

fn report(v: &PolicyValue, names: &Names) -> Option<String> {
    Report::of(v.flags, v.note_rule, names).map(|r| match r {
        Report::Log(rule) => format!("log: {rule}"),
        Report::Audit(what) => format!("audit: would {what}"),
    })
}

pub fn show(layout: &PinLayout, target: &str, format: Format) -> anyhow::Result<()> {
    let names = Names::load(layout)?;
    let endpoints: HashMap<MapData, Addr, EndpointInfo> = pinned::hash(layout, ENDPOINTS)?;
    let all: Vec<(Addr, EndpointInfo)> = endpoints.iter().filter_map(Result::ok).collect();
    let found = match target.parse::<IpAddr>() {
        Ok(ip) => all.iter().find(|(a, _)| IpAddr::from(*a) == ip),
        Err(_) => all.iter().find(|(_, e)| names.get(NAME_ENDPOINT, e.id) == Some(target)),
    };
    let (addr, ep) = *found.with_context(|| format!("{target} is not a pod on this node (no entry in {ENDPOINTS}); `weir identity list` shows every known address"))?;
    let prefixes = identity_prefixes(layout)?;
    let policy: LpmTrie<MapData, PolicyKeyData, PolicyValue> = pinned::typed(layout, POLICY)?;
    let mut rules: Vec<Rule> = policy
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.data().endpoint() == ep.id)
        .map(|(k, v)| {
            let e = PolicyEntry::from_key(k.prefix_len(), &k.data());
            let ports = match (e.proto, e.port_bits) {
                (0, _) | (_, 0) => "any".to_string(),
                (_, 16) => e.port.to_string(),
                (_, bits) => format!("{}-{}", e.port, u32::from(e.port) + (1u32 << (16 - bits)) - 1),
            };
            Rule {
                direction: if e.direction == DIR_INGRESS { "ingress" } else { "egress" },
                peer_identity: e.identity,
                peer: names.identity(e.identity, &prefixes),
                protocol: if e.proto == 0 { "any" } else { proto_name(e.proto) },
                ports,
                verdict: if v.allows() { "allow" } else { "deny" },
                rule_id: v.rule,
                rule: if v.rule == 0 { "default".to_string() } else { names.get(NAME_RULE, v.rule).unwrap_or("?").to_string() },
                report: report(&v, &names),
            }
        })
        .collect();
    rules.sort_by(|a, b| (a.direction, a.peer_identity, a.protocol, &a.ports).cmp(&(b.direction, b.peer_identity, b.protocol, &b.ports)));
    let view = PolicyView {
        endpoint: IpAddr::from(addr),
        endpoint_id: ep.id,
        name: names.get(NAME_ENDPOINT, ep.id).map(str::to_string),
        identity: ep.identity,
        ingress_isolated: ep.isolated(DIR_INGRESS),
        egress_isolated: ep.isolated(weir_common::policy::DIR_EGRESS),
        rules,
    };
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let iso = |b: bool| if b { "judged by the entries below" } else { "open (no policy selects it)" };
    println!("endpoint {} {} (id {}, identity {})", view.endpoint, view.name.as_deref().unwrap_or(""), view.endpoint_id, view.identity);
    println!("ingress  {}\negress   {}\n", iso(view.ingress_isolated), iso(view.egress_isolated));
    let table: Vec<Vec<String>> = view
        .rules
        .iter()
        .map(|r| {
            vec![r.direction.into(), r.peer.clone(), r.protocol.into(), r.ports.clone(), r.verdict.into(), r.rule.clone(), r.report.clone().unwrap_or_default()]
        })
        .collect();
    print_table(&["DIRECTION", "PEER", "PROTO", "PORTS", "VERDICT", "BY", "REPORT"], &table);
    Ok(())
}
