//! Label selectors (matchLabels and matchExpressions), with the API's
//! semantics: every term must hold; an empty selector selects everything.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::validate::FieldError;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Expr {
    key: String,
    op: Op,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Labels,
    exprs: Vec<Expr>,
}

impl Selector {
    /// Selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Parses a selector; `field` names it in errors.
    pub fn from_k8s(s: &LabelSelector, field: &str) -> Result<Self, FieldError> {
        let labels = s.match_labels.clone().unwrap_or_default();
        let mut exprs = Vec::new();
        for (i, r) in s.match_expressions.iter().flatten().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            let values: BTreeSet<String> = r.values.iter().flatten().cloned().collect();
            let op = match r.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(FieldError { field: format!("{f}.values"), message: format!("operator {} needs at least one value", r.operator) })
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(FieldError { field: format!("{f}.values"), message: format!("operator {} takes no values", r.operator) })
                }
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(FieldError {
                        field: format!("{f}.operator"),
                        message: format!("unknown operator {other:?} (In, NotIn, Exists or DoesNotExist)"),
                    })
                }
            };
            if r.key.is_empty() {
                return Err(FieldError { field: format!("{f}.key"), message: "must not be empty".into() });
            }
            exprs.push(Expr { key: r.key.clone(), op });
        }
        Ok(Selector { labels, exprs })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| {
                let v = labels.get(&e.key);
                match &e.op {
                    Op::In(set) => v.is_some_and(|v| set.contains(v)),
                    Op::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn every_operator_has_the_api_meaning() {
        let s = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![req("tier", "In", &["a", "b"]), req("env", "NotIn", &["prod"]), req("team", "Exists", &[]), req("legacy", "DoesNotExist", &[])]),
        };
        let s = Selector::from_k8s(&s, "spec.podSelector").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "x")])));
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "b"), ("team", "x"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c"), ("team", "x")])), "In");
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("env", "prod")])), "NotIn");
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a")])), "Exists");
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("legacy", "")])), "DoesNotExist");
        assert!(!s.matches(&labels(&[("app", "api"), ("tier", "a"), ("team", "x")])), "matchLabels");
        assert!(Selector::everything().matches(&Labels::new()));
    }

    #[test]
    fn bad_selectors_name_the_field() {
        let bad = LabelSelector { match_labels: None, match_expressions: Some(vec![req("a", "Equals", &["x"])]) };
        let e = Selector::from_k8s(&bad, "spec.podSelector").unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");
        let bad = LabelSelector { match_labels: None, match_expressions: Some(vec![req("a", "In", &[])]) };
        assert_eq!(Selector::from_k8s(&bad, "x").unwrap_err().field, "x.matchExpressions[0].values");
    }
}
