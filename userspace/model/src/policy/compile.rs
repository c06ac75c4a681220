//! A NetworkPolicy compiled into rules weir evaluates, with the API's
//! exact meaning for every omitted or empty field:
//! - `policyTypes` omitted: Ingress, plus Egress when `egress` has rules;
//! - a selected direction with no rules denies everything;
//! - a rule with no (or empty) `from`/`to` matches every peer;
//! - a rule with no (or empty) `ports` matches every port and protocol;
//! - a peer with only `podSelector` means pods of the policy's namespace;
//!   `namespaceSelector` and `podSelector` in one peer must both match;
//! - `protocol` defaults to TCP; `endPort` makes a range.
//!
//! A part weir cannot compile fails closed instead of taking the policy
//! with it (see [`Compiled`]), so every agent enforces the same object
//! the same way, whatever version it saw before.

use std::net::IpAddr;

use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};
use weir_desired::policy::Prefix;

use super::selector::Selector;
use crate::validate::FieldError;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// Which object a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    NetworkPolicy,
    WeirNetworkPolicy,
    ClusterNetworkPolicy,
}

/// Where a policy's rules are evaluated; tiers run in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Cluster policies above NetworkPolicy, by priority.
    Admin,
    /// NetworkPolicy and WeirNetworkPolicy: a Deny wins over any Allow;
    /// a pod they select in a direction is denied what they do not allow.
    Namespace,
    /// Cluster policies below NetworkPolicy, for pods it does not isolate.
    Baseline,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Skip the rest of the Admin tier.
    Pass,
    /// Report the flow; evaluation goes on.
    Log,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub kind: PolicyKind,
    /// Empty for a cluster policy.
    pub namespace: String,
    pub name: String,
    pub tier: Tier,
    /// Lower first, within a tier.
    pub priority: i32,
    /// Evaluated and reported, not enforced.
    pub audit: bool,
    /// The namespaces of the pods the policy applies to; `None`: its own.
    pub namespaces: Option<Selector>,
    /// The pods it applies to, within those namespaces.
    pub subject: Selector,
    /// `Some` when the policy has a say in ingress (for the namespace
    /// tier: isolates its pods for ingress).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

/// A policy object compiled, with the parts that failed to compile.
///
/// A policy is never dropped for a bad part: dropping a Deny, or a policy
/// that isolates its pods, would open what it closes. Instead a bad part
/// fails closed:
/// - a subject selector that does not parse selects everything in the
///   policy's scope (its namespace, for the namespaced kinds);
/// - an Allow or Log rule with an error is left out (it could only have
///   allowed or reported more), and its direction stays isolated;
/// - a Deny or Pass rule with an error becomes a Deny of every peer (if
///   its peers failed) on every port (if its ports failed);
/// - an unknown `policyTypes` value isolates both directions; a cluster
///   policy's priority out of range is clamped into 0-1000.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub policy: CompiledPolicy,
    /// Empty when every part compiled.
    pub errors: Vec<FieldError>,
}

impl Compiled {
    /// The errors as warnings on the object `key`, saying what weir
    /// enforces instead.
    pub fn warnings(&self, key: &crate::ObjectKey) -> Vec<crate::Warning> {
        self.errors
            .iter()
            .map(|e| crate::Warning {
                file: None,
                object: Some(key.to_string()),
                field: Some(e.field.clone()),
                message: format!("{}; this part is enforced fail-closed (docs/policy.md)", e.message),
            })
            .collect()
    }

    /// The policy, or the first part that failed (for tests and checks
    /// that want the exact object).
    pub fn strict(self) -> Result<CompiledPolicy, FieldError> {
        match self.errors.into_iter().next() {
            None => Ok(self.policy),
            Some(e) => Err(e),
        }
    }
}

/// A selector, or everything (with the error kept) when it does not parse.
pub(super) fn selector_or_everything(r: Result<Selector, FieldError>, errors: &mut Vec<FieldError>) -> Selector {
    r.unwrap_or_else(|e| {
        errors.push(e);
        Selector::everything()
    })
}

/// A rule whose parts may have failed to compile, made fail-closed (see
/// [`Compiled`]); `None`: the rule is left out.
pub(super) fn rule_or_fail_closed(
    name: Option<String>,
    action: Action,
    peers: Result<Option<Vec<Peer>>, FieldError>,
    ports: Result<Option<Vec<PortRule>>, FieldError>,
    errors: &mut Vec<FieldError>,
) -> Option<Rule> {
    let failed = peers.is_err() || ports.is_err();
    let peers = peers.unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let ports = ports.unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    match action {
        Action::Allow | Action::Log if failed => None,
        Action::Deny | Action::Pass if failed => Some(Rule { name, action: Action::Deny, peers, ports }),
        _ => Some(Rule { name, action, peers, ports }),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The rule's own name (weir's CRDs).
    pub name: Option<String>,
    pub action: Action,
    /// `None`: every peer.
    pub peers: Option<Vec<Peer>>,
    /// `None`: every port of every protocol.
    pub ports: Option<Vec<PortRule>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pods {
        /// `None`: the policy's own namespace.
        namespaces: Option<Selector>,
        pods: Selector,
    },
    Block { cidr: Prefix, except: Vec<Prefix> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRule {
    pub proto: u8,
    pub port: PortSel,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSel {
    Any,
    /// Inclusive.
    Range(u16, u16),
    /// A container port name, resolved against the destination pod.
    Named(String),
}

pub(super) fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// Parses a policy CIDR (NetworkPolicy `ipBlock`, a cluster policy's
/// `networks`) as the API server accepts it and as Go's `net.ParseCIDR`
/// reads it: host bits are allowed and cleared, so `10.1.2.3/16` is
/// `10.1.0.0/16` (upstream's own e2e tests wrote such CIDRs). Every agent
/// reads the same object the same way, and nothing the API server took is
/// dropped.
pub fn parse_policy_cidr(s: &str, field: &str) -> Result<Prefix, FieldError> {
    let (_, p) = parse_prefix(s, field)?;
    Ok(p)
}

fn parse_prefix(s: &str, field: &str) -> Result<(IpAddr, Prefix), FieldError> {
    let (a, l) = s.split_once('/').ok_or_else(|| err(field, format!("{s:?} is not a CIDR (like 10.0.0.0/8)")))?;
    let addr: IpAddr = a.parse().map_err(|_| err(field, format!("{s:?}: {a:?} is not an IP address")))?;
    let len: u8 = l.parse().map_err(|_| err(field, format!("{s:?}: {l:?} is not a prefix length")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(err(field, format!("{s:?}: prefix length {len} is over {max}")));
    }
    Ok((addr, Prefix::new(addr, len)))
}

/// Parses `a.b.c.d/n` (or IPv6) into a prefix; host bits must be zero
/// (node pod CIDRs, flags).
pub fn parse_cidr(s: &str, field: &str) -> Result<Prefix, FieldError> {
    let (addr, p) = parse_prefix(s, field)?;
    if p.addr != addr {
        return Err(err(field, format!("{s:?} has host bits set (did you mean {p}?)")));
    }
    Ok(p)
}

fn block(b: &IPBlock, field: &str) -> Result<Peer, FieldError> {
    let cidr = parse_policy_cidr(&b.cidr, &format!("{field}.cidr"))?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let p = parse_policy_cidr(e, &f)?;
        if !cidr.contains(&p) || p == cidr {
            return Err(err(f, format!("{p} is not strictly inside {cidr}")));
        }
        except.push(p);
    }
    Ok(Peer::Block { cidr, except })
}

fn peer(p: &NetworkPolicyPeer, field: &str) -> Result<Peer, FieldError> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(err(field, "ipBlock cannot be combined with podSelector or namespaceSelector"));
        }
        return block(b, &format!("{field}.ipBlock"));
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err(err(field, "a peer needs podSelector, namespaceSelector or ipBlock"));
    }
    let namespaces = p.namespace_selector.as_ref().map(|s| Selector::from_k8s(s, &format!("{field}.namespaceSelector"))).transpose()?;
    let pods = match &p.pod_selector {
        Some(s) => Selector::from_k8s(s, &format!("{field}.podSelector"))?,
        None => Selector::everything(),
    };
    Ok(Peer::Pods { namespaces, pods })
}

fn port(p: &NetworkPolicyPort, field: &str) -> Result<PortRule, FieldError> {
    let proto = match p.protocol.as_deref() {
        None | Some("TCP") => PROTO_TCP,
        Some("UDP") => PROTO_UDP,
        Some("SCTP") => PROTO_SCTP,
        Some(other) => return Err(err(format!("{field}.protocol"), format!("unknown protocol {other:?} (TCP, UDP or SCTP)"))),
    };
    let in_range = |n: i32, f: &str| -> Result<u16, FieldError> {
        u16::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| err(format!("{field}.{f}"), format!("{n} is outside 1-65535")))
    };
    let sel = match (&p.port, p.end_port) {
        (None, Some(_)) => return Err(err(format!("{field}.endPort"), "endPort needs a numeric port")),
        (None, None) => PortSel::Any,
        (Some(IntOrString::Int(n)), end) => {
            let start = in_range(*n, "port")?;
            let end = match end {
                Some(e) => in_range(e, "endPort")?,
                None => start,
            };
            if end < start {
                return Err(err(format!("{field}.endPort"), format!("{end} is below port {start}")));
            }
            PortSel::Range(start, end)
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(err(format!("{field}.endPort"), "endPort needs a numeric port, not a named one"));
            }
            if let Ok(n) = name.parse::<i32>() {
                let n = in_range(n, "port")?;
                PortSel::Range(n, n)
            } else if name.is_empty() || name.len() > 15 {
                return Err(err(format!("{field}.port"), format!("{name:?} is not a valid port name (1-15 characters)")));
            } else {
                PortSel::Named(name.clone())
            }
        }
    };
    Ok(PortRule { proto, port: sel })
}

/// An allow rule; left out when any part fails (see [`Compiled`]).
fn rule(peers: Option<&Vec<NetworkPolicyPeer>>, ports: Option<&Vec<NetworkPolicyPort>>, field: &str, peer_field: &str, errors: &mut Vec<FieldError>) -> Option<Rule> {
    let peers = match peers {
        Some(v) if !v.is_empty() => v.iter().enumerate().map(|(i, p)| peer(p, &format!("{field}.{peer_field}[{i}]"))).collect::<Result<Vec<_>, _>>().map(Some),
        _ => Ok(None),
    };
    let ports = match ports {
        Some(v) if !v.is_empty() => v.iter().enumerate().map(|(i, p)| port(p, &format!("{field}.ports[{i}]"))).collect::<Result<Vec<_>, _>>().map(Some),
        _ => Ok(None),
    };
    rule_or_fail_closed(None, Action::Allow, peers, ports, errors)
}

/// Compiles a NetworkPolicy; errors name the offending field, and the
/// parts they name fail closed.
pub fn compile(np: &NetworkPolicy) -> Compiled {
    let namespace = np.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = np.metadata.name.clone().unwrap_or_default();
    let mut errors = Vec::new();
    let mut policy = CompiledPolicy {
        kind: PolicyKind::NetworkPolicy,
        namespace,
        name,
        tier: Tier::Namespace,
        priority: 0,
        audit: false,
        namespaces: None,
        subject: Selector::everything(),
        ingress: Some(Vec::new()),
        egress: Some(Vec::new()),
    };
    let Some(spec) = &np.spec else {
        errors.push(err("spec", "missing"));
        return Compiled { policy, errors };
    };
    if let Some(s) = &spec.pod_selector {
        policy.subject = selector_or_everything(Selector::from_k8s(s, "spec.podSelector"), &mut errors);
    }
    let (mut ingress_on, mut egress_on) = (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()));
    if let Some(types) = &spec.policy_types {
        ingress_on = false;
        egress_on = false;
        let mut unknown = false;
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => ingress_on = true,
                "Egress" => egress_on = true,
                other => {
                    errors.push(err(format!("spec.policyTypes[{i}]"), format!("unknown value {other:?} (Ingress or Egress)")));
                    unknown = true;
                }
            }
        }
        if unknown {
            (ingress_on, egress_on) = (true, true);
        }
    }
    let mut ingress_rules = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        ingress_rules.extend(rule(r.from.as_ref(), r.ports.as_ref(), &format!("spec.ingress[{i}]"), "from", &mut errors));
    }
    let mut egress_rules = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        egress_rules.extend(rule(r.to.as_ref(), r.ports.as_ref(), &format!("spec.egress[{i}]"), "to", &mut errors));
    }
    policy.ingress = ingress_on.then_some(ingress_rules);
    policy.egress = egress_on.then_some(egress_rules);
    Compiled { policy, errors }
}

impl CompiledPolicy {
    /// Whether the policy applies to a pod of namespace `ns` (labelled
    /// `ns_labels`) with `labels`.
    pub fn selects(&self, ns: &str, ns_labels: &super::selector::Labels, labels: &super::selector::Labels) -> bool {
        let ns_ok = match &self.namespaces {
            None => self.namespace == ns,
            Some(sel) => sel.matches(ns_labels),
        };
        ns_ok && self.subject.matches(labels)
    }

    /// The rules of a direction (`DIR_INGRESS` / `DIR_EGRESS`).
    pub fn rules(&self, direction: u8) -> Option<&Vec<Rule>> {
        if direction == weir_common::policy::DIR_INGRESS { self.ingress.as_ref() } else { self.egress.as_ref() }
    }

    /// Every CIDR the policy names (blocks and their exceptions).
    pub fn cidrs(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.ingress
            .iter()
            .chain(self.egress.iter())
            .flatten()
            .flat_map(|r| r.peers.iter().flatten())
            .flat_map(|p| match p {
                Peer::Block { cidr, except } => std::iter::once(*cidr).chain(except.iter().copied()).collect::<Vec<_>>(),
                Peer::Pods { .. } => Vec::new(),
            })
    }
}
