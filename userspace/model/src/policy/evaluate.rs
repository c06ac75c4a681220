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

use weir_common::policy::{PolicyValue, DIR_EGRESS, ID_ANY, ID_CIDR_FIRST, PV_AUDIT, PV_AUDIT_DENY, PV_LOG};
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
    pub peers: Option<std::sync::Arc<BTreeSet<u32>>>,
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
    pub pods: &'a BTreeMap<u32, PodIdentity>,
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
        self.entries_of(rules, None)
    }

    /// The entries of the pod identities in `only` (all of them, with the
    /// `ID_ANY` and CIDR entries, for `None`). A peer's cells depend only
    /// on the rules, its own identity and its fallbacks, so one identity's
    /// entries can be computed alone (`pod_delta`).
    pub fn entries_of(&self, rules: &[&Ranked], only: Option<&BTreeSet<u32>>) -> Vec<(PolicyEntry, PolicyValue)> {
        // Rules that match every peer, and per identity the rules naming it
        // (with `only`: those identities, and the CIDR identities they fall
        // back to).
        let any: Vec<usize> = (0..rules.len()).filter(|i| rules[*i].peers.is_none()).collect();
        let mut named: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            match (&r.peers, only) {
                (Some(set), None) => set.iter().for_each(|id| named.entry(*id).or_default().push(i)),
                (Some(set), Some(only)) => {
                    only.iter().filter(|id| set.contains(id)).chain(set.range(ID_CIDR_FIRST..)).for_each(|id| named.entry(*id).or_default().push(i));
                }
                // An egress rule to any peer on a named port names the pod
                // identities that define the port.
                (None, _) if self.dir == DIR_EGRESS && has_named_port(r.rule) => {
                    for (id, p) in self.pods.iter().filter(|(id, _)| only.is_none_or(|o| o.contains(id))) {
                        if p.ports.iter().any(|np| rule_names_port(r.rule, &np.name, np.proto)) {
                            named.entry(*id).or_default();
                        }
                    }
                }
                (None, _) => {}
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
        if only.is_none() {
            self.emit(ID_ANY, &any_fn, None, &mut out);
        }
        let mut cidr_fns: BTreeMap<u32, Function> = BTreeMap::new();
        for class in named.keys().copied().filter(|c| *c != ID_ANY && only.is_none_or(|o| o.contains(c))) {
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

#[cfg(test)]
mod tests {
    //! Translated state read back through `weir_logic::policy::decide` (the
    //! kernel's and `weir explain`'s decision), with longest-prefix lookups
    //! done the slow way: what a packet would meet.

    use std::{collections::BTreeSet, net::IpAddr};

    use weir_common::{
        addr::Addr,
        policy::{EndpointInfo, IpInfo, PolicyKeyData, PolicyValue, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ISOLATED, EP_F_INGRESS_ISOLATED, PV_AUDIT, PV_AUDIT_DENY, PV_LOG},
    };
    use weir_desired::policy::{PolicyState, Prefix};
    use weir_logic::policy::{decide, Decision, PolicyMaps};

    use crate::{
        policy::{
            compile_object,
            translate::{assign, translate},
            world::{NamedPort, PodInfo, World},
            CompiledPolicy, Ids,
        },
        Kind, Object,
    };

    struct Maps<'a>(&'a PolicyState);

    fn bit(b: &[u8], i: u32) -> bool {
        b[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    fn prefix_eq(a: &[u8], b: &[u8], len: u32) -> bool {
        (0..len).all(|i| bit(a, i) == bit(b, i))
    }

    impl PolicyMaps for Maps<'_> {
        fn ipcache(&self, addr: &Addr) -> Option<IpInfo> {
            self.0.ipcache.iter().filter(|(p, _)| prefix_eq(&Addr::from(p.addr).bytes, &addr.bytes, p.key_len())).max_by_key(|(p, _)| p.len).map(|(_, v)| *v)
        }
        fn policy(&self, key: &PolicyKeyData) -> Option<PolicyValue> {
            self.0.entries.iter().map(|(e, v)| (e.key(), v)).filter(|((len, k), _)| prefix_eq(&k.bytes, &key.bytes, *len)).max_by_key(|((len, _), _)| *len).map(|(_, v)| *v)
        }
    }

    fn pod(ns: &str, name: &str, app: &str, ip: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: crate::policy::interned::shared([("app".to_string(), app.to_string())].into()),
            ips: vec![ip.parse().expect("ip")],
            node: None,
            ports: vec![NamedPort { name: "http".into(), proto: 6, port: 80 }],
        }
    }

    /// x/a 10.0.0.1, x/b 10.0.0.2, y/a 10.0.1.1, y/b 10.0.1.2.
    fn world() -> World {
        World {
            pods: vec![pod("x", "a", "a", "10.0.0.1"), pod("x", "b", "b", "10.0.0.2"), pod("y", "a", "a", "10.0.1.1"), pod("y", "b", "b", "10.0.1.2")],
            namespaces: [("x".to_string(), [("ns".to_string(), "x".to_string())].into()), ("y".to_string(), [("ns".to_string(), "y".to_string())].into())].into(),
        }
    }

    fn compile(docs: &[&str]) -> Vec<CompiledPolicy> {
        docs.iter()
            .map(|y| {
                let v: serde_json::Value = serde_yaml_ng::from_str(y).expect("yaml");
                let kind = Kind::from_kind(v["kind"].as_str().expect("kind")).expect("known kind");
                let o = Object::from_value(kind, v).expect("decodes");
                compile_object(&o).expect("a policy").strict().expect("compiles")
            })
            .collect()
    }

    struct Judge {
        state: PolicyState,
    }

    impl Judge {
        fn new(policies: &[CompiledPolicy]) -> Self {
            let w = world();
            let cidrs: BTreeSet<Prefix> = policies.iter().flat_map(CompiledPolicy::cidrs).collect();
            let mut ids = Ids::new();
            assign(&mut ids, policies, &w, &cidrs, None);
            Judge { state: translate(policies, &w, &ids, &cidrs, None) }
        }

        /// The flow src → dst:port/TCP as the kernel judges it: the
        /// sender's egress, then the receiver's ingress; the deciding one.
        fn flow(&self, src: &str, dst: &str, port: u16) -> Decision {
            let (s, d): (IpAddr, IpAddr) = (src.parse().expect("ip"), dst.parse().expect("ip"));
            let ep = |ip: &IpAddr| {
                self.state.endpoints.get(ip).map(|e| EndpointInfo {
                    id: e.id,
                    identity: e.identity,
                    flags: if e.ingress_isolated { EP_F_INGRESS_ISOLATED } else { 0 } | if e.egress_isolated { EP_F_EGRESS_ISOLATED } else { 0 },
                    _pad: 0,
                })
            };
            let m = Maps(&self.state);
            let eg = decide(&m, &ep(&s).expect("src endpoint"), DIR_EGRESS, &Addr::from(d), 6, port);
            if !eg.allowed {
                return eg;
            }
            let ing = decide(&m, &ep(&d).expect("dst endpoint"), DIR_INGRESS, &Addr::from(s), 6, port);
            if ing.flags != 0 || !ing.allowed { ing } else { eg }
        }

        fn allowed(&self, src: &str, dst: &str, port: u16) -> bool {
            self.flow(src, dst, port).allowed
        }
    }

    const NP_ALLOW_A_TO_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]\n";

    fn cnp(name: &str, priority: i32, extra: &str, rules: &str) -> String {
        format!("apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  priority: {priority}\n{extra}  subject: {{namespaces: {{matchLabels: {{ns: x}}}}, pods: {{matchLabels: {{app: b}}}}}}\n  ingress:\n{rules}")
    }

    #[test]
    fn a_cluster_deny_beats_a_networkpolicy_allow() {
        let deny = cnp("deny-a", 10, "", "  - {name: no-a, action: Deny, peers: [{pods: {matchLabels: {app: a}}}], ports: [{port: 80}]}\n");
        let j = Judge::new(&compile(&[NP_ALLOW_A_TO_B, &deny]));
        assert!(!j.allowed("10.0.0.1", "10.0.0.2", 80), "the admin Deny wins on 80");
        assert!(j.allowed("10.0.0.1", "10.0.0.2", 81), "NetworkPolicy still allows other ports");
        assert!(!j.allowed("10.0.1.2", "10.0.0.2", 81), "NetworkPolicy isolation still denies y/b");
        assert_eq!(j.flow("10.0.0.1", "10.0.0.2", 80).rule, j.flow("10.0.1.1", "10.0.0.2", 80).rule, "both a pods meet the same rule");
    }

    #[test]
    fn lower_priority_numbers_decide_first_and_rules_in_order() {
        let allow = cnp("allow-a", 5, "", "  - {name: yes-a, action: Allow, peers: [{pods: {matchLabels: {app: a}}}]}\n");
        let deny = cnp("deny-all", 6, "", "  - {name: no-one, action: Deny, peers: [{namespaces: {}}]}\n");
        let j = Judge::new(&compile(&[&allow, &deny]));
        assert!(j.allowed("10.0.1.1", "10.0.0.2", 80), "priority 5 Allow before priority 6 Deny");
        assert!(!j.allowed("10.0.1.2", "10.0.0.2", 80), "others meet the Deny");
        let deny_first = cnp("deny-all", 4, "", "  - {name: no-one, action: Deny, peers: [{namespaces: {}}]}\n");
        let j = Judge::new(&compile(&[&allow, &deny_first]));
        assert!(!j.allowed("10.0.1.1", "10.0.0.2", 80), "now the Deny comes first");
        let in_order = cnp("one", 1, "", "  - {name: no-a-80, action: Deny, peers: [{pods: {matchLabels: {app: a}}}], ports: [{port: 80}]}\n  - {name: yes-a, action: Allow, peers: [{pods: {matchLabels: {app: a}}}]}\n");
        let j = Judge::new(&compile(&[&in_order, &deny]));
        assert!(!j.allowed("10.0.0.1", "10.0.0.2", 80) && j.allowed("10.0.0.1", "10.0.0.2", 81), "rule order within a policy");
    }

    #[test]
    fn pass_defers_to_networkpolicy_and_skips_the_rest_of_the_tier() {
        let pass = cnp("pass-a", 1, "", "  - {name: to-np, action: Pass, peers: [{pods: {matchLabels: {app: a}}}]}\n");
        let deny = cnp("deny-all", 2, "", "  - {name: no-one, action: Deny, peers: [{namespaces: {}}]}\n");
        let j = Judge::new(&compile(&[&pass, &deny, NP_ALLOW_A_TO_B]));
        assert!(j.allowed("10.0.0.1", "10.0.0.2", 80), "passed, NetworkPolicy allows x/a");
        assert!(!j.allowed("10.0.1.1", "10.0.0.2", 80), "passed, NetworkPolicy does not allow y/a");
        let j = Judge::new(&compile(&[&pass, &deny]));
        assert!(j.allowed("10.0.1.1", "10.0.0.2", 80), "passed, no NetworkPolicy: allowed");
    }

    #[test]
    fn the_baseline_applies_only_where_networkpolicy_does_not_isolate() {
        let base = cnp("baseline", 1, "  tier: Baseline\n", "  - {name: no-one, action: Deny, peers: [{namespaces: {}}]}\n");
        let j = Judge::new(&compile(&[&base]));
        assert!(!j.allowed("10.0.0.1", "10.0.0.2", 80), "baseline Deny with no NetworkPolicy");
        let j = Judge::new(&compile(&[&base, NP_ALLOW_A_TO_B]));
        assert!(j.allowed("10.0.0.1", "10.0.0.2", 80), "NetworkPolicy allows above the baseline");
        assert!(!j.allowed("10.0.1.2", "10.0.0.2", 80), "isolation denies the rest");
        assert_eq!(j.flow("10.0.1.2", "10.0.0.2", 80).rule, 0, "by NetworkPolicy's default deny, not the baseline rule");
    }

    #[test]
    fn audit_mode_allows_and_reports_the_rule_it_would_apply() {
        let deny = cnp("try-deny", 1, "  mode: Audit\n", "  - {name: no-a, action: Deny, peers: [{pods: {matchLabels: {app: a}}}]}\n");
        let j = Judge::new(&compile(&[&deny]));
        let d = j.flow("10.0.0.1", "10.0.0.2", 80);
        assert!(d.allowed, "not enforced");
        assert_eq!(d.flags, PV_AUDIT | PV_AUDIT_DENY, "reported as an audited deny");
        assert_ne!(d.note_rule, 0);
        let d = j.flow("10.0.0.2", "10.0.0.2", 80);
        assert_eq!(d.flags, 0, "x/b is not a peer of the audited rule");
        let allow = cnp("try-allow", 1, "  mode: Audit\n", "  - {name: yes-a, action: Allow, peers: [{pods: {matchLabels: {app: a}}}]}\n");
        let j = Judge::new(&compile(&[&allow, NP_ALLOW_A_TO_B]));
        let d = j.flow("10.0.1.1", "10.0.0.2", 80);
        assert!(!d.allowed && d.flags == PV_AUDIT, "denied by isolation; the audited policy would allow: {d:?}");
        let d = j.flow("10.0.1.2", "10.0.0.2", 80);
        assert!(!d.allowed && d.flags == 0, "{d:?}");
        let deny_allowed = cnp("try-deny", 1, "  mode: Audit\n", "  - {name: no-a, action: Deny, peers: [{pods: {matchLabels: {app: a}}}]}\n");
        let j = Judge::new(&compile(&[&deny_allowed, NP_ALLOW_A_TO_B]));
        let d = j.flow("10.0.0.1", "10.0.0.2", 80);
        assert!(d.allowed && d.flags == PV_AUDIT | PV_AUDIT_DENY, "allowed by NetworkPolicy; the audit would deny: {d:?}");
    }

    #[test]
    fn log_rules_report_and_evaluation_goes_on() {
        let log = cnp("log", 1, "", "  - {name: see-a, action: Log, peers: [{pods: {matchLabels: {app: a}}}]}\n  - {name: no-a, action: Deny, peers: [{pods: {matchLabels: {app: a}}}], ports: [{port: 81}]}\n");
        let j = Judge::new(&compile(&[&log]));
        let d = j.flow("10.0.0.1", "10.0.0.2", 80);
        assert!(d.allowed && d.flags == PV_LOG && d.note_rule != 0, "{d:?}");
        let d = j.flow("10.0.0.1", "10.0.0.2", 81);
        assert!(!d.allowed && d.flags == PV_LOG, "{d:?}");
    }

    #[test]
    fn a_weir_deny_wins_over_a_networkpolicy_allow_in_the_namespace_tier() {
        let wnp = "apiVersion: policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{name: no-a-range, action: Deny, peers: [{pods: {matchLabels: {app: a}}}], ports: [{port: 80, endPort: 90}]}]\n";
        let j = Judge::new(&compile(&[NP_ALLOW_A_TO_B, wnp]));
        assert!(!j.allowed("10.0.0.1", "10.0.0.2", 85), "the range's Deny wins");
        assert!(j.allowed("10.0.0.1", "10.0.0.2", 91), "NetworkPolicy allows outside it");
    }

    #[test]
    fn networks_match_pod_addresses_alongside_pod_rules() {
        let mixed = cnp("mixed", 1, "", "  - {name: yes-a, action: Allow, peers: [{pods: {matchLabels: {app: a}}, namespaces: {matchLabels: {ns: x}}}]}\n  - {name: no-net, action: Deny, peers: [{networks: [10.0.0.0/16]}]}\n");
        let j = Judge::new(&compile(&[&mixed]));
        assert!(j.allowed("10.0.0.1", "10.0.0.2", 80), "x/a: allowed before the network rule");
        assert!(!j.allowed("10.0.1.1", "10.0.0.2", 80), "y/a: only the network rule matches");
        assert!(j.allowed("10.0.0.1", "10.0.0.2", 80) && !j.allowed("10.0.1.2", "10.0.0.2", 80), "y/b: the network rule");
    }

    /// Policies compiled as the agent compiles them: bad parts fail
    /// closed; with the fields that failed.
    fn compile_failing(docs: &[&str]) -> (Vec<CompiledPolicy>, Vec<String>) {
        let mut fields = Vec::new();
        let policies = docs
            .iter()
            .map(|y| {
                let v: serde_json::Value = serde_yaml_ng::from_str(y).expect("yaml");
                let kind = Kind::from_kind(v["kind"].as_str().expect("kind")).expect("known kind");
                let c = compile_object(&Object::from_value(kind, v).expect("decodes")).expect("a policy");
                fields.extend(c.errors.into_iter().map(|e| e.field));
                c.policy
            })
            .collect();
        (policies, fields)
    }

    #[test]
    fn a_cluster_deny_weir_cannot_compile_denies_more_never_less() {
        // A bad network: the Deny covers every peer, on the ports it named.
        let bad_net = cnp("deny", 1, "", "  - {name: no-a, action: Deny, peers: [{pods: {matchLabels: {app: a}}}, {networks: [10.0.0.0/33]}], ports: [{port: 80}]}\n");
        let (p, fields) = compile_failing(&[&bad_net]);
        assert_eq!(fields, ["spec.ingress[0].peers[1].networks[0]"]);
        let j = Judge::new(&p);
        assert!(!j.allowed("10.0.0.1", "10.0.0.2", 80) && !j.allowed("10.0.1.2", "10.0.0.2", 80), "every peer is denied on 80");
        assert!(j.allowed("10.0.1.2", "10.0.0.2", 81), "the ports it named still bound it");
        assert!(j.allowed("10.0.1.2", "10.0.1.1", 80), "and its subject");
        // A selector the API server's CRD schema once let through.
        let bad_sel = cnp("deny", 1, "", "  - {name: no-a, action: Deny, peers: [{pods: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}]}\n");
        let (p, fields) = compile_failing(&[&bad_sel, NP_ALLOW_A_TO_B]);
        assert_eq!(fields, ["spec.ingress[0].peers[0].pods.matchExpressions[0].operator"]);
        let j = Judge::new(&p);
        assert!(!j.allowed("10.0.0.1", "10.0.0.2", 80), "the NetworkPolicy's allow is overridden: the Deny holds");
        // A bad port range: every port of the peers it named.
        let bad_port = cnp("deny", 1, "", "  - {name: no-a, action: Deny, peers: [{pods: {matchLabels: {app: a}}}], ports: [{port: 90, endPort: 80}]}\n");
        let (p, _) = compile_failing(&[&bad_port]);
        let j = Judge::new(&p);
        assert!(!j.allowed("10.0.0.1", "10.0.0.2", 7) && !j.allowed("10.0.1.1", "10.0.0.2", 80), "a pods on every port");
        assert!(j.allowed("10.0.1.2", "10.0.0.2", 80), "others are not its peers");
        // A Pass with a bad peer denies rather than deferring.
        let bad_pass = cnp("pass", 1, "", "  - {name: to-np, action: Pass, peers: [{networks: [bogus]}]}\n");
        let (p, _) = compile_failing(&[&bad_pass, NP_ALLOW_A_TO_B]);
        assert!(!Judge::new(&p).allowed("10.0.0.1", "10.0.0.2", 80));
    }

    #[test]
    fn a_subject_weir_cannot_compile_widens_the_subject() {
        let doc = "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: d}\nspec:\n  priority: 1\n  subject: {namespaces: {matchLabels: {ns: x}}, pods: {matchExpressions: [{key: app, operator: In}]}}\n  ingress:\n  - {name: no-y, action: Deny, peers: [{namespaces: {matchLabels: {ns: y}}}]}\n";
        let (p, fields) = compile_failing(&[doc]);
        assert_eq!(fields, ["spec.subject.pods.matchExpressions[0].values"]);
        let j = Judge::new(&p);
        assert!(!j.allowed("10.0.1.1", "10.0.0.1", 80) && !j.allowed("10.0.1.1", "10.0.0.2", 80), "every pod of the namespaces it names");
        assert!(j.allowed("10.0.0.1", "10.0.1.2", 80), "not the namespaces it does not");
    }

    #[test]
    fn an_allow_weir_cannot_compile_is_left_out_and_its_pods_stay_isolated() {
        let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.300.0/24}}]\n  - from: [{podSelector: {matchLabels: {app: a}}}]\n    ports: [{port: 80}]\n";
        let (p, fields) = compile_failing(&[np]);
        assert_eq!(fields, ["spec.ingress[0].from[0].ipBlock.cidr"]);
        let j = Judge::new(&p);
        assert!(!j.allowed("10.0.1.2", "10.0.0.2", 80), "isolated: the bad rule allows nothing");
        assert!(j.allowed("10.0.0.1", "10.0.0.2", 80) && !j.allowed("10.0.0.1", "10.0.0.2", 81), "the good rule still allows");
        let wnp = "apiVersion: policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  egress: [{name: dns, action: Allow, peers: [{networks: [10.0.1.0/40]}]}]\n";
        let (p, fields) = compile_failing(&[wnp]);
        assert_eq!(fields, ["spec.egress[0].peers[0].networks[0]"]);
        let j = Judge::new(&p);
        assert!(!j.allowed("10.0.0.2", "10.0.1.1", 53), "its only rule left out, x/b stays isolated for egress");
        assert!(j.allowed("10.0.0.1", "10.0.1.1", 53), "x/a is not its subject");
    }
}
