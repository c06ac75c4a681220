//! Evaluation order, precomputed per endpoint: for one local endpoint and
//! direction, every peer identity's verdict at every (protocol, port),
//! written as the `WEIR_POLICY` entries the kernel looks up, so no packet
//! ever walks rules.
//!
//! Order (docs/policy.md):
//! 1. Admin tier (ClusterNetworkPolicy `tier: Admin`), by priority, then
//!    policy name, then rule order: the first Allow or Deny decides; Pass
//!    skips the rest of the tier; Log records and goes on.
//! 2. Namespace tier (NetworkPolicy, WeirNetworkPolicy): a matching Deny
//!    wins over any Allow; otherwise an Allow allows; otherwise a pod the
//!    tier selects in this direction is denied (NetworkPolicy isolation).
//! 3. Baseline tier (ClusterNetworkPolicy `tier: Baseline`), by priority.
//! 4. Allow.
//!
//! Audit-mode policies are skipped for the verdict; evaluating again with
//! them enforced gives what they would do, and a cell where that differs
//! (verdict or deciding rule) carries `PV_AUDIT` and the audited rule.
//!
//! Entries: the kernel tries the peer's identity, then its CIDR identity,
//! then `ID_ANY`, and the first with an entry covering the port decides.
//! So `ID_ANY` gets the complete function of rules that match every peer;
//! an identity some rule names gets entries only where its verdict differs
//! from its fallback's (its CIDR identity's, or `ID_ANY`'s), and a complete
//! function when even its "any port" verdict differs.

use std::collections::{BTreeMap, BTreeSet};

use weir_common::policy::{PolicyValue, DIR_EGRESS, ID_ANY, PV_AUDIT, PV_AUDIT_DENY, PV_LOG};
use weir_desired::policy::PolicyEntry;
use weir_logic::policy::port_blocks;

use super::{
    compile::{Action, PortSel, Rule, Tier},
    translate::{resolve_ports, PodIdentity},
    world::PodInfo,
};

/// A rule with its id and the identities its peers cover.
pub struct Ranked<'a> {
    /// Index of its policy in the translated list.
    pub policy: usize,
    pub tier: Tier,
    pub audit: bool,
    pub dir: u8,
    pub rule: &'a Rule,
    pub id: u32,
    /// `None`: every peer.
    pub peers: Option<BTreeSet<u32>>,
    /// Evaluation order: tier, priority, namespace, policy name, index.
    pub order: (Tier, i32, String, String, usize),
}

/// One local endpoint in one direction.
pub struct Endpoint<'a> {
    pub id: u32,
    pub dir: u8,
    pub local: &'a PodInfo,
    /// The namespace tier selects it in this direction.
    pub isolated: bool,
    pub pods: &'a BTreeMap<u32, PodIdentity<'a>>,
}

/// A verdict over every (protocol, port): `base` for any protocol and for
/// ports no interval covers; `cells[proto]`: disjoint inclusive intervals
/// covering 0..=65535.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Function {
    base: PolicyValue,
    cells: BTreeMap<u8, Vec<(u16, u16, PolicyValue)>>,
}

impl Function {
    fn at(&self, proto: u8, port: u16) -> PolicyValue {
        self.cells
            .get(&proto)
            .and_then(|v| v.iter().find(|(lo, hi, _)| *lo <= port && port <= *hi))
            .map_or(self.base, |(_, _, v)| *v)
    }
}

struct Candidate<'r> {
    r: &'r Ranked<'r>,
    /// `None`: every port of every protocol.
    ports: Option<Vec<(u8, u16, u16)>>,
}

impl Candidate<'_> {
    fn covers(&self, cell: Option<(u8, u16)>) -> bool {
        match (&self.ports, cell) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(v), Some((proto, port))) => v.iter().any(|(p, lo, hi)| *p == proto && *lo <= port && port <= *hi),
        }
    }
}

/// (allowed, deciding rule, first Log rule).
type Outcome = (bool, u32, u32);

/// The ordered evaluation of one cell over the matching rules (in order).
fn evaluate<'a>(matching: impl Iterator<Item = &'a Ranked<'a>>, isolated: bool, with_audit: bool) -> Outcome {
    let mut log = 0;
    let mut passed = false;
    let (mut ns_allow, mut ns_deny) = (None, None);
    let namespace_verdict = |ns_allow: Option<u32>, ns_deny: Option<u32>, log| match (ns_deny, ns_allow) {
        (Some(d), _) => Some((false, d, log)),
        (None, Some(a)) => Some((true, a, log)),
        (None, None) if isolated => Some((false, 0, log)),
        (None, None) => None,
    };
    for r in matching {
        if r.audit && !with_audit {
            continue;
        }
        let action = r.rule.action;
        match r.tier {
            Tier::Admin if passed => {}
            Tier::Admin | Tier::Baseline => {
                if r.tier == Tier::Baseline {
                    if let Some(o) = namespace_verdict(ns_allow, ns_deny, log) {
                        return o;
                    }
                }
                match action {
                    Action::Allow => return (true, r.id, log),
                    Action::Deny => return (false, r.id, log),
                    Action::Pass => passed = true,
                    Action::Log if log == 0 => log = r.id,
                    Action::Log => {}
                }
            }
            Tier::Namespace => match action {
                Action::Deny => {
                    ns_deny.get_or_insert(r.id);
                }
                Action::Allow => {
                    ns_allow.get_or_insert(r.id);
                }
                Action::Pass | Action::Log => {}
            },
        }
    }
    namespace_verdict(ns_allow, ns_deny, log).unwrap_or((true, 0, log))
}

impl Endpoint<'_> {
    /// The `WEIR_POLICY` entries for `rules` (this endpoint's, in order).
    pub fn entries(&self, rules: &[&Ranked]) -> Vec<(PolicyEntry, PolicyValue)> {
        // Rules that match every peer, and per identity the rules naming it.
        let any: Vec<usize> = (0..rules.len()).filter(|i| rules[*i].peers.is_none()).collect();
        let mut named: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            match &r.peers {
                Some(set) => set.iter().for_each(|id| named.entry(*id).or_default().push(i)),
                // An egress rule to any peer on a named port names the pod
                // identities that define the port.
                None if self.dir == DIR_EGRESS && has_named_port(r.rule) => {
                    for (id, p) in self.pods {
                        if p.ports.iter().any(|np| rule_names_port(r.rule, &np.name, np.proto)) {
                            named.entry(*id).or_default();
                        }
                    }
                }
                None => {}
            }
        }
        let function = |class: u32, extra: Option<u32>| -> Function {
            let mut idx: Vec<usize> = any.clone();
            for c in [Some(class), extra].into_iter().flatten() {
                idx.extend(named.get(&c).into_iter().flatten());
            }
            idx.sort_unstable();
            idx.dedup();
            let peer = self.pods.get(&class);
            let cands: Vec<Candidate> = idx.iter().map(|i| Candidate { r: rules[*i], ports: resolve_ports(rules[*i].rule, self.dir, self.local, peer) }).collect();
            self.function(&cands)
        };
        let any_fn = function(ID_ANY, None);
        let mut out = Vec::new();
        self.emit(ID_ANY, &any_fn, None, &mut out);
        let mut cidr_fns: BTreeMap<u32, Function> = BTreeMap::new();
        for class in named.keys().copied().filter(|c| *c != ID_ANY) {
            let cidr = self.pods.get(&class).and_then(|p| p.cidr_id);
            let f = function(class, cidr);
            let fallback = match cidr {
                Some(c) => cidr_fns.entry(c).or_insert_with(|| function(c, None)),
                None => &any_fn,
            };
            self.emit(class, &f, Some(fallback), &mut out);
        }
        out
    }

    /// The verdict function of the candidate rules.
    fn function(&self, cands: &[Candidate]) -> Function {
        let value = |cell: Option<(u8, u16)>| -> PolicyValue {
            let matching = || cands.iter().filter(|c| c.covers(cell)).map(|c| c.r);
            let (allow, rule, log) = evaluate(matching(), self.isolated, false);
            let mut v = if allow { PolicyValue::allow(rule) } else { PolicyValue::deny(rule) };
            if log != 0 {
                v.flags |= PV_LOG;
                v.note_rule = log;
            }
            if cands.iter().any(|c| c.r.audit) {
                let (a_allow, a_rule, _) = evaluate(matching(), self.isolated, true);
                if (a_allow, a_rule) != (allow, rule) {
                    v.flags |= PV_AUDIT | if a_allow { 0 } else { PV_AUDIT_DENY };
                    v.note_rule = a_rule;
                }
            }
            v
        };
        let base = value(None);
        let mut bounds: BTreeMap<u8, BTreeSet<u32>> = BTreeMap::new();
        for (proto, lo, hi) in cands.iter().flat_map(|c| c.ports.iter().flatten()) {
            let b = bounds.entry(*proto).or_insert_with(|| [0u32, 65536].into());
            b.insert(u32::from(*lo));
            b.insert(u32::from(*hi) + 1);
        }
        let cells = bounds
            .into_iter()
            .map(|(proto, b)| {
                let pts: Vec<u32> = b.into_iter().collect();
                let mut v: Vec<(u16, u16, PolicyValue)> = Vec::new();
                for w in pts.windows(2) {
                    let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
                    let val = value(Some((proto, lo)));
                    match v.last_mut() {
                        Some(last) if last.2 == val => last.1 = hi,
                        _ => v.push((lo, hi, val)),
                    }
                }
                (proto, v)
            })
            .collect();
        Function { base, cells }
    }

    /// Entries for `class` with function `f`: complete when `fallback` is
    /// `None` or differs in its base; otherwise only where `f` differs.
    fn emit(&self, class: u32, f: &Function, fallback: Option<&Function>, out: &mut Vec<(PolicyEntry, PolicyValue)>) {
        let (id, dir) = (self.id, self.dir);
        let put = |out: &mut Vec<(PolicyEntry, PolicyValue)>, proto: u8, lo: u16, hi: u16, v: PolicyValue| {
            port_blocks(lo, hi, |port, bits| {
                out.push((PolicyEntry { endpoint: id, direction: dir, identity: class, proto, port, port_bits: bits }, v));
            });
        };
        match fallback {
            Some(fb) if fb.base == f.base => {
                let protos: BTreeSet<u8> = f.cells.keys().chain(fb.cells.keys()).copied().collect();
                for proto in protos {
                    let mut pts: BTreeSet<u32> = [0, 65536].into();
                    for (lo, hi, _) in f.cells.get(&proto).into_iter().chain(fb.cells.get(&proto)).flatten() {
                        pts.insert(u32::from(*lo));
                        pts.insert(u32::from(*hi) + 1);
                    }
                    let pts: Vec<u32> = pts.into_iter().collect();
                    for w in pts.windows(2) {
                        let (lo, hi) = (w[0] as u16, (w[1] - 1) as u16);
                        let v = f.at(proto, lo);
                        if v != fb.at(proto, lo) {
                            put(out, proto, lo, hi, v);
                        }
                    }
                }
            }
            _ => {
                out.push((PolicyEntry { endpoint: self.id, direction: self.dir, identity: class, proto: 0, port: 0, port_bits: 0 }, f.base));
                for (proto, cells) in &f.cells {
                    for (lo, hi, v) in cells.iter().filter(|c| c.2 != f.base) {
                        put(out, *proto, *lo, *hi, *v);
                    }
                }
            }
        }
    }
}

fn has_named_port(r: &Rule) -> bool {
    r.ports.iter().flatten().any(|p| matches!(p.port, PortSel::Named(_)))
}

fn rule_names_port(r: &Rule, name: &str, proto: u8) -> bool {
    r.ports.iter().flatten().any(|p| p.proto == proto && matches!(&p.port, PortSel::Named(n) if n == name))
}
