//! Defaulting of a Prefetch as a JSON patch that only adds absent (or null) spec fields, so
//! the user's own values are never rewritten and defaulting its own output yields no patch.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::{Value, json};

use crate::limits::{
    DEFAULT_GATE_TIMEOUT, DEFAULT_MAX_PARALLEL, DEFAULT_PULL_TIMEOUT, DEFAULT_RETRY_AFTER,
};

/// The spec fields that have a concrete default. The empty defaults (node_selector,
/// tolerations) and unset priority_class_name mean the same absent as present, so they are
/// not written.
pub fn spec_defaults() -> [(&'static str, Value); 6] {
    [
        ("node_filter", json!("")),
        ("retry_after", json!(DEFAULT_RETRY_AFTER)),
        ("max_parallel", json!(DEFAULT_MAX_PARALLEL)),
        ("pull_timeout", json!(DEFAULT_PULL_TIMEOUT)),
        ("gate_rollouts", json!(false)),
        ("gate_timeout", json!(DEFAULT_GATE_TIMEOUT)),
    ]
}

/// The patch that fills the absent defaults of a Prefetch object. Empty when nothing is
/// missing, or when `spec` is absent or not an object (validation denies those).
pub fn default_patch(object: &Value) -> Patch {
    default_spec_patch(object.get("spec"))
}

/// [`default_patch`] given only the object's `spec` (`None` when it has none).
pub fn default_spec_patch(spec: Option<&Value>) -> Patch {
    let Some(spec) = spec.and_then(Value::as_object) else {
        return Patch(Vec::new());
    };
    let operations = spec_defaults()
        .into_iter()
        .filter(|(name, _)| spec.get(*name).is_none_or(Value::is_null))
        .map(|(name, value)| {
            PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["spec", name]),
                value,
            })
        })
        .collect();
    Patch(operations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(object: &Value, patch: &Patch) -> Value {
        let mut out = object.clone();
        json_patch::patch(&mut out, patch).expect("default patch applies");
        out
    }

    #[test]
    fn fills_every_absent_default() {
        let object = json!({"spec": {"filter_by_labels": {"app": "nginx"}}});
        let patched = apply(&object, &default_patch(&object));
        assert_eq!(
            patched["spec"],
            json!({"filter_by_labels": {"app": "nginx"}, "node_filter": "", "retry_after": 300,
                   "max_parallel": 20, "pull_timeout": 600, "gate_rollouts": false,
                   "gate_timeout": 900})
        );
    }

    #[test]
    fn keeps_the_users_values() {
        let object = json!({"spec": {"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"}});
        let patch = serde_json::to_value(default_patch(&object)).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "add", "path": "/spec/max_parallel", "value": 20},
                {"op": "add", "path": "/spec/pull_timeout", "value": 600},
                {"op": "add", "path": "/spec/gate_rollouts", "value": false},
                {"op": "add", "path": "/spec/gate_timeout", "value": 900}
            ])
        );
    }

    #[test]
    fn null_counts_as_absent() {
        let object = json!({"spec": {"filter_by_labels": {"a": "b"}, "retry_after": null}});
        assert_eq!(
            apply(&object, &default_patch(&object))["spec"]["retry_after"],
            json!(300)
        );
    }

    #[test]
    fn no_spec_or_a_non_object_spec_gets_no_patch() {
        assert!(default_patch(&json!({"metadata": {}})).0.is_empty());
        assert!(default_patch(&json!({"spec": "x"})).0.is_empty());
        assert!(default_patch(&json!(null)).0.is_empty());
    }

    /// Arbitrary JSON of small depth, including wrong types for every field.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9_]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_spec() -> impl Strategy<Value = Value> {
        let mut names = crate::validation::KNOWN_SPEC_FIELDS.to_vec();
        names.push("extra");
        prop::collection::vec((prop::sample::select(names), any_json()), 0..9).prop_map(|fields| {
            Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        })
    }

    proptest! {
        #[test]
        fn defaulting_is_idempotent(spec in any_spec()) {
            let object = json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch", "spec": spec});
            let once = apply(&object, &default_patch(&object));
            prop_assert!(default_patch(&once).0.is_empty(), "second pass patched {once}");
        }

        #[test]
        fn defaulting_only_adds(spec in any_spec()) {
            let object = json!({"spec": spec});
            let patched = apply(&object, &default_patch(&object));
            for (name, value) in object["spec"].as_object().unwrap() {
                if !value.is_null() {
                    prop_assert_eq!(&patched["spec"][name], value);
                }
            }
        }
    }
}
