//! weir's policy CRDs compiled into the same rules as NetworkPolicy.
//!
//! The API server enforces the CRD schemas (ranges, enums, CEL rules);
//! objects from files (and objects stored before a schema tightened) skip
//! it, so every check is made again here, with the field named, and a
//! part that fails fails closed ([`Compiled`]).
//!
//! - ClusterNetworkPolicy: `tier` Admin (above NetworkPolicy) or
//!   Baseline (below it), `priority` 0–1000, `mode: Audit` evaluates and
//!   reports only. An omitted subject or peer selector matches every
//!   namespace / pod. A policy with no rules in a direction has no say in
//!   it.
//! - WeirNetworkPolicy: the namespace tier, like NetworkPolicy: a peer
//!   with no `namespaces` means the policy's own namespace; a direction
//!   with rules isolates the selected pods in it.

use weir_crds::{Action as NsAction, ClusterAction, ClusterNetworkPolicy, ClusterRule, Mode, NamespacedRule, PortRange, Protocol, Tier as CrdTier, WeirNetworkPolicy};

use super::{
    compile::{err, parse_policy_cidr, rule_or_fail_closed, selector_or_everything, Action, Compiled, CompiledPolicy, Peer, PolicyKind, PortRule, PortSel, Rule, Tier, PROTO_SCTP, PROTO_TCP, PROTO_UDP},
    selector::Selector,
};
use crate::{validate::FieldError, Object};

/// Compiles a policy object of any kind; `None` for other kinds.
pub fn compile_object(o: &Object) -> Option<Compiled> {
    match o {
        Object::NetworkPolicy(np) => Some(super::compile(np)),
        Object::ClusterNetworkPolicy(p) => Some(compile_cluster(p)),
        Object::WeirNetworkPolicy(p) => Some(compile_namespaced(p)),
        _ => None,
    }
}

fn selector(s: Option<&weir_crds::LabelSelector>, field: &str) -> Result<Selector, FieldError> {
    s.map_or(Ok(Selector::everything()), |s| Selector::from_k8s(&s.into(), field))
}

fn ports(v: Option<&Vec<PortRange>>, field: &str) -> Result<Option<Vec<PortRule>>, FieldError> {
    let Some(v) = v else { return Ok(None) };
    if v.is_empty() {
        return Err(err(field, "an empty list matches nothing; omit ports to match every port"));
    }
    let mut out = Vec::new();
    for (i, p) in v.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let proto = match p.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => PROTO_SCTP,
        };
        let in_range = |n: i32, what: &str| u16::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| err(format!("{f}.{what}"), format!("{n} is outside 1-65535")));
        let start = in_range(p.port, "port")?;
        let end = match p.end_port {
            Some(e) => in_range(e, "endPort")?,
            None => start,
        };
        if end < start {
            return Err(err(format!("{f}.endPort"), format!("{end} is below port {start}")));
        }
        out.push(PortRule { proto, port: PortSel::Range(start, end) });
    }
    Ok(Some(out))
}

/// `cluster`: an omitted `namespaces` means every namespace (else the
/// policy's own).
fn peers(v: &[weir_crds::Peer], field: &str, cluster: bool) -> Result<Vec<Peer>, FieldError> {
    let mut out = Vec::new();
    for (i, p) in v.iter().enumerate() {
        let f = format!("{field}[{i}]");
        match &p.networks {
            Some(nets) => {
                if p.namespaces.is_some() || p.pods.is_some() {
                    return Err(err(&f, "a peer selects pods (namespaces/pods) or networks, not both"));
                }
                if nets.is_empty() {
                    return Err(err(format!("{f}.networks"), "at least one CIDR"));
                }
                for (j, n) in nets.iter().enumerate() {
                    out.push(Peer::Block { cidr: parse_policy_cidr(n, &format!("{f}.networks[{j}]"))?, except: Vec::new() });
                }
            }
            None => {
                let namespaces = match &p.namespaces {
                    Some(s) => Some(selector(Some(s), &format!("{f}.namespaces"))?),
                    None if cluster => Some(Selector::everything()),
                    None => None,
                };
                out.push(Peer::Pods { namespaces, pods: selector(p.pods.as_ref(), &format!("{f}.pods"))? });
            }
        }
    }
    Ok(out)
}

fn rule_name(name: &str, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    if name.is_empty() {
        errors.push(err(format!("{field}.name"), "every rule needs a name (verdict events report it)"));
    }
    Some(name.to_string())
}

fn cluster_rule(r: &ClusterRule, field: &str, tier: Tier, errors: &mut Vec<FieldError>) -> Option<Rule> {
    let name = rule_name(&r.name, field, errors);
    let action = match r.action {
        ClusterAction::Allow => Action::Allow,
        ClusterAction::Deny => Action::Deny,
        ClusterAction::Pass if tier == Tier::Baseline => {
            // Fails closed: a Deny of the peers and ports it names.
            errors.push(err(format!("{field}.action"), "Pass is only meaningful in the Admin tier"));
            Action::Deny
        }
        ClusterAction::Pass => Action::Pass,
        ClusterAction::Log => Action::Log,
    };
    let peers = if r.peers.is_empty() {
        Err(err(format!("{field}.peers"), "at least one peer (an empty namespaces selector `{}` selects every pod)"))
    } else {
        peers(&r.peers, &format!("{field}.peers"), true).map(Some)
    };
    rule_or_fail_closed(name, action, peers, ports(r.ports.as_ref(), &format!("{field}.ports")), errors)
}

/// A direction's compiled rules; `Some` when the object has rules in it,
/// even if every one was left out (the direction stays isolated).
fn direction<R>(v: &[R], dir: &str, mut rule: impl FnMut(&R, &str) -> Option<Rule>) -> Option<Vec<Rule>> {
    let out: Vec<Rule> = v.iter().enumerate().filter_map(|(i, r)| rule(r, &format!("spec.{dir}[{i}]"))).collect();
    (!v.is_empty()).then_some(out)
}

/// Compiles a ClusterNetworkPolicy; bad parts fail closed (see [`Compiled`]).
pub fn compile_cluster(p: &ClusterNetworkPolicy) -> Compiled {
    let s = &p.spec;
    let mut errors = Vec::new();
    if !(0..=1000).contains(&s.priority) {
        errors.push(err("spec.priority", format!("{} is outside 0-1000", s.priority)));
    }
    let tier = match s.tier {
        CrdTier::Admin => Tier::Admin,
        CrdTier::Baseline => Tier::Baseline,
    };
    let namespaces = selector_or_everything(selector(s.subject.namespaces.as_ref(), "spec.subject.namespaces"), &mut errors);
    let subject = selector_or_everything(selector(s.subject.pods.as_ref(), "spec.subject.pods"), &mut errors);
    let ingress = direction(&s.ingress, "ingress", |r, f| cluster_rule(r, f, tier, &mut errors));
    let egress = direction(&s.egress, "egress", |r, f| cluster_rule(r, f, tier, &mut errors));
    let policy = CompiledPolicy {
        kind: PolicyKind::ClusterNetworkPolicy,
        namespace: String::new(),
        name: p.metadata.name.clone().unwrap_or_default(),
        tier,
        priority: s.priority.clamp(0, 1000),
        audit: s.mode == Mode::Audit,
        namespaces: Some(namespaces),
        subject,
        ingress,
        egress,
    };
    Compiled { policy, errors }
}

fn namespaced_rule(r: &NamespacedRule, field: &str, errors: &mut Vec<FieldError>) -> Option<Rule> {
    let name = rule_name(&r.name, field, errors);
    let action = match r.action {
        NsAction::Allow => Action::Allow,
        NsAction::Deny => Action::Deny,
    };
    let peers = if r.peers.is_empty() { Ok(None) } else { peers(&r.peers, &format!("{field}.peers"), false).map(Some) };
    rule_or_fail_closed(name, action, peers, ports(r.ports.as_ref(), &format!("{field}.ports")), errors)
}

/// Compiles a WeirNetworkPolicy; bad parts fail closed (see [`Compiled`]).
pub fn compile_namespaced(p: &WeirNetworkPolicy) -> Compiled {
    let s = &p.spec;
    let mut errors = Vec::new();
    let subject = selector_or_everything(selector(Some(&s.pod_selector), "spec.podSelector"), &mut errors);
    let ingress = direction(&s.ingress, "ingress", |r, f| namespaced_rule(r, f, &mut errors));
    let egress = direction(&s.egress, "egress", |r, f| namespaced_rule(r, f, &mut errors));
    let policy = CompiledPolicy {
        kind: PolicyKind::WeirNetworkPolicy,
        namespace: p.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: p.metadata.name.clone().unwrap_or_default(),
        tier: Tier::Namespace,
        priority: 0,
        audit: false,
        namespaces: None,
        subject,
        ingress,
        egress,
    };
    Compiled { policy, errors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_desired::policy::Prefix;

    fn cnp(yaml: &str) -> Result<CompiledPolicy, FieldError> {
        compile_cluster(&serde_yaml_ng::from_str(yaml).expect("parse")).strict()
    }

    #[test]
    fn a_cluster_policy_compiles_with_its_tier_order_and_peers() {
        let p = cnp("metadata: {name: a}\nspec:\n  priority: 5\n  subject: {namespaces: {matchLabels: {team: db}}}\n  ingress:\n  - {name: no-web, action: Deny, peers: [{namespaces: {matchLabels: {team: web}}}, {networks: [10.0.0.0/8]}], ports: [{port: 5432}, {protocol: UDP, port: 1000, endPort: 2000}]}\n").expect("compiles");
        assert_eq!((p.tier, p.priority, p.audit, p.kind), (Tier::Admin, 5, false, PolicyKind::ClusterNetworkPolicy));
        assert!(p.egress.is_none(), "no egress rules: no say in egress");
        let r = &p.ingress.as_ref().expect("ingress")[0];
        assert_eq!((r.action, r.name.as_deref()), (Action::Deny, Some("no-web")));
        assert_eq!(r.peers.as_ref().map(Vec::len), Some(2));
        assert_eq!(r.ports.as_ref().map(|v| v[1].port.clone()), Some(PortSel::Range(1000, 2000)));
    }

    #[test]
    fn bad_cluster_policies_name_the_field() {
        let base = "metadata: {name: a}\nspec:\n  subject: {}\n";
        for (extra, field) in [
            ("  priority: 1001\n", "spec.priority"),
            ("  priority: 1\n  tier: Baseline\n  ingress: [{name: p, action: Pass, peers: [{}]}]\n", "spec.ingress[0].action"),
            ("  priority: 1\n  egress: [{name: p, action: Deny, peers: [{networks: [10.0.0.0/33]}]}]\n", "spec.egress[0].peers[0].networks[0]"),
            ("  priority: 1\n  egress: [{name: p, action: Deny, peers: [{pods: {}, networks: [10.0.0.0/8]}]}]\n", "spec.egress[0].peers[0]"),
            ("  priority: 1\n  ingress: [{name: p, action: Deny, peers: []}]\n", "spec.ingress[0].peers"),
            ("  priority: 1\n  ingress: [{name: p, action: Deny, peers: [{}], ports: [{port: 80, endPort: 79}]}]\n", "spec.ingress[0].ports[0].endPort"),
            ("  priority: 1\n  ingress: [{name: p, action: Allow, peers: [{pods: {matchExpressions: [{key: a, operator: In}]}}]}]\n", "spec.ingress[0].peers[0].pods.matchExpressions[0].values"),
        ] {
            let e = cnp(&format!("{base}{extra}")).expect_err(extra);
            assert_eq!(e.field, field, "{extra}: {}", e.message);
        }
        // Host bits are no error: the API server accepts them, and the
        // Deny is enforced on the network they name.
        let p = cnp(&format!("{base}  priority: 1\n  egress: [{{name: p, action: Deny, peers: [{{networks: [10.0.0.1/8]}}]}}]\n")).expect("compiles");
        let peers = p.egress.as_ref().and_then(|r| r[0].peers.clone()).expect("peers");
        assert_eq!(peers, vec![Peer::Block { cidr: Prefix::new("10.0.0.0".parse().expect("ip"), 8), except: Vec::new() }]);
    }

    #[test]
    fn a_namespaced_policy_keeps_its_namespace_for_peers() {
        let p: WeirNetworkPolicy = serde_yaml_ng::from_str("metadata: {name: w, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{name: no-b, action: Deny, peers: [{pods: {matchLabels: {pod: b}}}]}]\n").expect("parse");
        let c = compile_namespaced(&p).strict().expect("compiles");
        assert_eq!((c.tier, c.namespace.as_str()), (Tier::Namespace, "x"));
        assert!(c.egress.is_none());
        match &c.ingress.as_ref().expect("ingress")[0].peers.as_ref().expect("peers")[0] {
            Peer::Pods { namespaces, .. } => assert!(namespaces.is_none(), "the policy's own namespace"),
            other => panic!("{other:?}"),
        }
    }
}
