//! Label and field selectors as the API server parses them (`k8s.io/apimachinery/pkg/labels`).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if let Some((key, values)) = split_set(term, " notin ") {
                Requirement::NotIn(key, values?)
            } else if let Some((key, values)) = split_set(term, " in ") {
                Requirement::In(key, values?)
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else {
                Requirement::Exists(term.to_string())
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// A `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`), as webhooks'
    /// `namespaceSelector` and `objectSelector` hold it: every term must hold; the empty
    /// selector matches everything (k8s.io/apimachinery `LabelSelectorAsSelector`).
    pub fn from_json(selector: &Value) -> Result<Self, String> {
        let mut requirements = Vec::new();
        let labels = selector.get("matchLabels").and_then(Value::as_object);
        for (key, value) in labels.into_iter().flatten() {
            let value = value
                .as_str()
                .ok_or_else(|| format!("matchLabels.{key}: not a string"))?;
            requirements.push(Requirement::Equals(key.clone(), value.to_string()));
        }
        let expressions = selector.get("matchExpressions").and_then(Value::as_array);
        for expression in expressions.into_iter().flatten() {
            let key = expression
                .get("key")
                .and_then(Value::as_str)
                .ok_or("matchExpressions: a term without key")?
                .to_string();
            let values: Vec<String> = expression
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            let operator = expression.get("operator").and_then(Value::as_str);
            requirements.push(match operator {
                Some("In") if !values.is_empty() => Requirement::In(key, values),
                Some("NotIn") if !values.is_empty() => Requirement::NotIn(key, values),
                Some("Exists") if values.is_empty() => Requirement::Exists(key),
                Some("DoesNotExist") if values.is_empty() => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "matchExpressions: {key}: operator {other:?} with values {values:?} is not valid"
                    ));
                }
            });
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// Commas separate terms, except inside `in (a,b)` sets.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
}

fn split_set(term: &str, op: &str) -> Option<(String, Result<Vec<String>, String>)> {
    let (key, rest) = term.split_once(op)?;
    let rest = rest.trim();
    let values = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| inner.split(',').map(|v| v.trim().to_string()).collect())
        .ok_or_else(|| {
            format!(
                "set requirement must be of the form key {} (a,b): {term}",
                op.trim()
            )
        });
    Some((key.trim().to_string(), values))
}

/// `a.b.c=v,x!=y` over any JSON field path (the real server allows only some per type; the
/// ones our code uses are metadata.name, metadata.namespace, spec.nodeName, status.phase).
#[derive(Debug, Clone, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some((k, v)) = term.split_once("!=") {
                terms.push((k.to_string(), false, v.to_string()));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                terms.push((k.to_string(), true, v.to_string()));
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            }
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let got = path.split('.').try_fold(object, |v, part| v.get(part));
            let got = match got {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selectors() {
        let l = labels(json!({"app": "nginx", "tier": "web"}));
        let yes = [
            "",
            "app=nginx",
            "app==nginx",
            "app",
            "!db",
            "tier in (web,api)",
            "tier notin (db)",
            "app=nginx,tier!=db",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        let no = [
            "app=redis",
            "db",
            "!app",
            "tier in (api)",
            "tier notin (web)",
            "app=nginx,tier=db",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn label_selector_objects() {
        let l = labels(json!({"kubernetes.io/metadata.name": "team-a", "gated": "true"}));
        let selector = |v: Value| LabelSelector::from_json(&v).unwrap();
        let hook = selector(json!({
            "matchLabels": {"gated": "true"},
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                  "values": ["kube-system"]}]}));
        assert!(hook.matches(Some(&l)));
        assert!(!hook.matches(Some(&labels(
            json!({"kubernetes.io/metadata.name": "team-a"})
        ))));
        assert!(!hook.matches(Some(&labels(
            json!({"kubernetes.io/metadata.name": "kube-system", "gated": "true"})
        ))));
        // NotIn holds for a missing key; In does not.
        assert!(
            selector(
                json!({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["a"]}]})
            )
            .matches(Some(&l))
        );
        assert!(
            !selector(
                json!({"matchExpressions": [{"key": "x", "operator": "In", "values": ["a"]}]})
            )
            .matches(Some(&l))
        );
        assert!(
            selector(json!({"matchExpressions": [{"key": "gated", "operator": "Exists"}]}))
                .matches(Some(&l))
        );
        assert!(
            selector(json!({"matchExpressions": [{"key": "gated", "operator": "DoesNotExist"}]}))
                .matches(None)
        );
        assert!(selector(json!({})).matches(None), "empty matches all");
        assert!(
            LabelSelector::from_json(
                &json!({"matchExpressions": [{"key": "x", "operator": "In", "values": []}]})
            )
            .is_err()
        );
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}});
        assert!(
            FieldSelector::parse("metadata.name=a,spec.nodeName=n1")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.nodeName!=n2")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.name=b")
                .unwrap()
                .matches(&obj)
        );
        assert!(FieldSelector::parse("status.phase=").unwrap().matches(&obj));
    }
}
