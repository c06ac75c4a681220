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

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
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
#[x_kube(validation = Rule::new("has(self.networks) != (has(self.namespaces) || has(self.pods))").message("a peer selects pods (namespaces/pods) or networks, not both"))]
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
}
