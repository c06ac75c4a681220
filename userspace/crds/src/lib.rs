//! weir's policy CRDs (group `policy.weir.dev`, version `v1alpha1`),
//! modelled on sig-network's AdminNetworkPolicy / BaselineAdminNetworkPolicy:
//!
//! - [`ClusterNetworkPolicy`] (cluster-scoped): priority-ordered rules
//!   with Allow, Deny, Pass (defer to NetworkPolicy) and Log, an `Admin`
//!   tier above NetworkPolicy and a `Baseline` tier below it, and an
//!   `Audit` mode that evaluates and reports without enforcing.
//! - [`WeirNetworkPolicy`] (namespaced): NetworkPolicy plus Deny rules and
//!   port ranges, evaluated with the namespace's NetworkPolicies.
//!
//! The schemas carry the validation (ranges, enums, CEL rules), so the API
//! server refuses a bad policy before weir sees it. `weir-crdgen` writes
//! the YAML under manifests/crds/; a test fails when it is stale.

use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt as _, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a cluster policy sits relative to NetworkPolicy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Tier {
    /// Above NetworkPolicy: evaluated first; a namespace owner cannot override it.
    #[default]
    Admin,
    /// Below NetworkPolicy: applies to pods no NetworkPolicy selects.
    Baseline,
}

/// Whether a policy is enforced or only evaluated and reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Mode {
    #[default]
    Enforce,
    /// Evaluate and report what the policy would do (verdict events);
    /// traffic is treated as if the policy did not exist.
    Audit,
}

/// What a matching cluster rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClusterAction {
    Allow,
    Deny,
    /// Skip the rest of the Admin tier: NetworkPolicy decides.
    Pass,
    /// Report the flow and go on evaluating.
    Log,
}

/// What a matching namespaced rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

/// A port or an inclusive port range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endPort) || self.endPort >= self.port").message("endPort must not be below port"))]
pub struct PortRange {
    #[serde(default)]
    pub protocol: Protocol,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
}

// `metav1.LabelSelector`'s shape, with the checks the API server makes on a
// built-in selector written into the schema (a CRD's copy of
// `metav1.LabelSelector` gets none of them), so a selector weir could not
// compile never reaches it. `operator` stays a string in Rust, so an object
// stored before this schema still decodes (and fails closed in weir).

/// A label selector: matchLabels and matchExpressions, all of which must
/// hold; an empty selector `{}` selects everything.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must have exactly these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Terms that must all hold (at most 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// A selector term: `key` `operator` `values`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(
    validation = Rule::new("self.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist']").message("operator must be In, NotIn, Exists or DoesNotExist"),
    validation = Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)").message("In and NotIn need at least one value; Exists and DoesNotExist take none")
)]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// In, NotIn, Exists or DoesNotExist.
    pub operator: String,
    /// At least one for In and NotIn; none for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

impl From<&LabelSelector> for k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
    fn from(s: &LabelSelector) -> Self {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        Self {
            match_labels: s.match_labels.clone(),
            match_expressions: s.match_expressions.as_ref().map(|v| {
                v.iter().map(|r| LabelSelectorRequirement { key: r.key.clone(), operator: r.operator.clone(), values: r.values.clone() }).collect()
            }),
        }
    }
}

/// Who a policy applies to: pods matching `pods` in namespaces matching
/// `namespaces` (an omitted selector matches everything).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<LabelSelector>,
}

/// A peer: pods (by namespace and pod selectors, AND-ed) or networks
/// (CIDRs, which also match pod addresses), never both.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.networks) != (has(self.namespaces) || has(self.pods))").message("a peer selects pods (namespaces/pods) or networks, not both"),
    validation = Rule::new("!has(self.networks) || self.networks.all(n, isCIDR(n))").message("networks must be CIDRs, like 10.0.0.0/8 or fd00::/8")
)]
pub struct Peer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<LabelSelector>,
    /// CIDRs, like `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25))]
    pub networks: Option<Vec<String>>,
}

/// One rule of a cluster policy. Rules are evaluated in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRule {
    /// Named in verdict events and `weir policy show`.
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    pub action: ClusterAction,
    #[schemars(length(min = 1, max = 100))]
    pub peers: Vec<Peer>,
    /// Omitted: every port of every protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<PortRange>>,
}

/// A cluster-scoped policy.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "policy.weir.dev",
    version = "v1alpha1",
    kind = "ClusterNetworkPolicy",
    shortname = "wcnp",
    derive = "PartialEq",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    validation = Rule::new("self.spec.tier != 'Baseline' || (self.spec.ingress.all(r, r.action != 'Pass') && self.spec.egress.all(r, r.action != 'Pass'))").message("Pass is only meaningful in the Admin tier")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// Lower runs first (0-1000). Two policies with one priority are
    /// ordered by name.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
    #[serde(default)]
    pub tier: Tier,
    #[serde(default)]
    pub mode: Mode,
    pub subject: Subject,
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub ingress: Vec<ClusterRule>,
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub egress: Vec<ClusterRule>,
}

/// One rule of a namespaced policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedRule {
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    pub action: Action,
    /// Omitted or empty: every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<PortRange>>,
}

/// A namespaced policy: NetworkPolicy with Deny rules and port ranges. It
/// isolates the pods it selects like a NetworkPolicy; within the namespace
/// tier a Deny wins over any Allow.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "policy.weir.dev", version = "v1alpha1", kind = "WeirNetworkPolicy", namespaced, shortname = "wnp", derive = "PartialEq")]
#[serde(rename_all = "camelCase")]
pub struct WeirNetworkPolicySpec {
    /// The pods of this namespace the policy applies to ({} = all).
    pub pod_selector: LabelSelector,
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub ingress: Vec<NamespacedRule>,
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub egress: Vec<NamespacedRule>,
}

/// The CRDs as YAML documents, in file order: (file name, YAML).
pub fn crd_yaml() -> Result<Vec<(&'static str, String)>, serde_yaml_ng::Error> {
    Ok(vec![
        ("clusternetworkpolicies.policy.weir.dev.yaml", serde_yaml_ng::to_string(&ClusterNetworkPolicy::crd())?),
        ("weirnetworkpolicies.policy.weir.dev.yaml", serde_yaml_ng::to_string(&WeirNetworkPolicy::crd())?),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(dir: &str, name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests").join(dir).join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask codegen`)", p.display()))
    }

    #[test]
    fn the_committed_crd_yaml_is_what_the_types_generate() {
        // The kustomization's copy and the Helm chart's.
        for dir in ["crds", "helm/weir/crds"] {
            for (name, yaml) in crd_yaml().expect("yaml") {
                assert!(committed(dir, name) == yaml, "manifests/{dir}/{name} is stale: run `cargo xtask codegen`");
            }
        }
    }

    #[test]
    fn the_schemas_carry_validation() {
        let cnp = serde_json::to_string(&ClusterNetworkPolicy::crd()).expect("json");
        for needle in ["x-kubernetes-validations", "endPort must not be below port", "Pass is only meaningful", "\"maximum\":1000", "\"maximum\":65535", "\"enum\":[\"Allow\",\"Deny\",\"Pass\",\"Log\"]"] {
            assert!(cnp.contains(needle), "{needle} missing from the ClusterNetworkPolicy schema");
        }
        let wnp = serde_json::to_string(&WeirNetworkPolicy::crd()).expect("json");
        assert!(wnp.contains("\"scope\":\"Namespaced\"") && cnp.contains("\"scope\":\"Cluster\""));
    }

    #[test]
    fn a_policy_round_trips_through_the_types() {
        let y = "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: deny-db}\nspec:\n  priority: 10\n  subject: {namespaces: {matchLabels: {team: db}}}\n  ingress:\n  - name: no-web\n    action: Deny\n    peers: [{namespaces: {matchLabels: {team: web}}}]\n    ports: [{port: 5432}, {protocol: UDP, port: 1000, endPort: 2000}]\n";
        let p: ClusterNetworkPolicy = serde_yaml_ng::from_str(y).expect("parse");
        assert_eq!(p.spec.tier, Tier::Admin);
        assert_eq!(p.spec.mode, Mode::Enforce);
        assert_eq!(p.spec.ingress[0].action, ClusterAction::Deny);
        assert_eq!(p.spec.ingress[0].ports.as_ref().map(|v| v[1].end_port), Some(Some(2000)));
    }

    /// The CRD's object schema as the API server holds it.
    fn schema(crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition) -> serde_json::Value {
        let v = crd.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("schema");
        serde_json::to_value(v).expect("json")
    }

    /// What the API server's CEL says of `yaml` (empty: accepted).
    fn cel_errors(schema: &serde_json::Value, yaml: &str) -> Vec<String> {
        let obj: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        match kube_cel::validate(schema, &obj, None) {
            Ok(()) => Vec::new(),
            Err(e) => e.into_vec().into_iter().map(|e| format!("{:?} {}: {}", e.kind, e.field_path, e.message)).collect(),
        }
    }

    const CNP_HEAD: &str = "apiVersion: policy.weir.dev/v1alpha1\nkind: ClusterNetworkPolicy\nmetadata: {name: p}\nspec:\n  priority: 1\n  subject: {namespaces: {matchLabels: {team: db}}}\n";

    #[test]
    fn the_schemas_refuse_what_weir_cannot_compile() {
        let cnp = schema(&ClusterNetworkPolicy::crd());
        let ok = [
            "  ingress: [{name: a, action: Deny, peers: [{networks: [10.0.0.0/8, 10.1.2.3/16, 'fd00::/8']}]}]\n",
            "  ingress: [{name: a, action: Allow, peers: [{pods: {matchExpressions: [{key: app, operator: In, values: [a]}, {key: b, operator: Exists}]}}]}]\n",
            "  ingress: [{name: a, action: Deny, peers: [{namespaces: {}}], ports: [{port: 80, endPort: 90}]}]\n",
            "  tier: Baseline\n  egress: [{name: a, action: Deny, peers: [{namespaces: {}}]}]\n",
        ];
        for rules in ok {
            let e = cel_errors(&cnp, &format!("{CNP_HEAD}{rules}"));
            assert!(e.is_empty(), "{rules}: {e:?}");
        }
        let bad = [
            ("  ingress: [{name: a, action: Deny, peers: [{networks: [10.0.0.0/33]}]}]\n", "networks must be CIDRs"),
            ("  ingress: [{name: a, action: Deny, peers: [{networks: [bogus]}]}]\n", "networks must be CIDRs"),
            ("  ingress: [{name: a, action: Deny, peers: [{pods: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}}]}]\n", "operator must be"),
            ("  ingress: [{name: a, action: Deny, peers: [{pods: {matchExpressions: [{key: app, operator: In}]}}]}]\n", "need at least one value"),
            ("  ingress: [{name: a, action: Deny, peers: [{namespaces: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}}]}]\n", "need at least one value"),
            ("  ingress: [{name: a, action: Deny, peers: [{pods: {}, networks: [10.0.0.0/8]}]}]\n", "not both"),
            ("  ingress: [{name: a, action: Deny, peers: [{namespaces: {}}], ports: [{port: 90, endPort: 80}]}]\n", "endPort must not be below port"),
        ];
        for (rules, want) in bad {
            let e = cel_errors(&cnp, &format!("{CNP_HEAD}{rules}"));
            assert!(e.iter().any(|m| m.contains(want)), "{rules}: want {want:?}, got {e:?}");
        }
        let subject = CNP_HEAD.replace("{matchLabels: {team: db}}", "{matchExpressions: [{key: team, operator: in, values: [db]}]}");
        assert!(!cel_errors(&cnp, &format!("{subject}  ingress: [{{name: a, action: Deny, peers: [{{namespaces: {{}}}}]}}]\n")).is_empty(), "a subject selector is checked too");
        let wnp = schema(&WeirNetworkPolicy::crd());
        let w = "apiVersion: policy.weir.dev/v1alpha1\nkind: WeirNetworkPolicy\nmetadata: {name: w, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: NotIn}]}\n";
        assert!(cel_errors(&wnp, w).iter().any(|m| m.contains("need at least one value")), "{:?}", cel_errors(&wnp, w));
        assert!(cel_errors(&wnp, &w.replace("operator: NotIn", "operator: NotIn, values: [a]")).is_empty());
    }

    #[test]
    fn every_cel_rule_is_within_the_cost_budget() {
        fn walk(node: &serde_json::Value, found: &mut Vec<String>) {
            if let Some(rules) = node.get("x-kubernetes-validations").and_then(|v| v.as_array()) {
                let compiled = kube_cel::compile_schema(node);
                for r in rules {
                    let rule = r["rule"].as_str().expect("rule").to_string();
                    let warnings = kube_cel::analyze_rule(&rule, &compiled, kube_cel::ScopeContext::CrdValidation);
                    // (Its scope check does not know macro variables like `r` in `all(r, ...)`.)
                    let fatal: Vec<_> = warnings.iter().filter(|w| matches!(w.kind, kube_cel::WarningKind::CostExceeded)).collect();
                    assert!(fatal.is_empty(), "{rule}: {fatal:?}");
                    found.push(rule);
                }
            }
            match node {
                serde_json::Value::Object(m) => m.values().for_each(|v| walk(v, found)),
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        walk(&schema(&ClusterNetworkPolicy::crd()), &mut found);
        walk(&schema(&WeirNetworkPolicy::crd()), &mut found);
        assert!(found.iter().any(|r| r.contains("isCIDR")) && found.iter().any(|r| r.contains("DoesNotExist")), "{found:?}");
    }
}
