//! Validation of a Prefetch as the API server hands it to the webhook: raw JSON, because a
//! mutating webhook sees objects before schema validation, and a wrongly typed field must be
//! reported by name rather than fail deserialization as a whole. Every violation is collected.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Toleration;
use serde_json::{Map, Value};

use crate::labels::{dns1123_subdomain_error, label_key_error, label_value_error};
use crate::limits::*;

/// One rule broken by one field, e.g. `spec.retry_after: must be >= 30, got 5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What the validator found: errors deny the object; warnings reach the user but allow it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<String>,
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        self.errors.is_empty()
    }

    /// All errors in one message, in field order, as `kubectl apply` shows it.
    pub fn denial_message(&self) -> String {
        let parts: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        format!("Prefetch is invalid: {}", parts.join("; "))
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// What the validator may know about the cluster beyond the object itself.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    /// Lowest `retry_after` this cluster accepts (the webhook's `--min-retry-after`, >= 30).
    pub min_retry_after: i64,
    /// Names of the cluster's nodes, when known, to warn about a node_filter matching none.
    pub node_names: Option<&'a BTreeSet<String>>,
}

impl Default for ValidationContext<'_> {
    fn default() -> Self {
        Self {
            min_retry_after: MIN_RETRY_AFTER,
            node_names: None,
        }
    }
}

/// The spec fields of `cache.techsquad.rocks/v1` Prefetch.
pub const KNOWN_SPEC_FIELDS: [&str; 13] = [
    "filter_by_labels",
    "node_filter",
    "retry_after",
    "node_selector",
    "max_parallel",
    "pull_timeout",
    "tolerations",
    "priority_class_name",
    "gate_rollouts",
    "gate_timeout",
    "kinds",
    "images",
    "seed",
];

/// Validates a whole Prefetch object (`{"apiVersion", "kind", "metadata", "spec"}`).
pub fn validate_prefetch(object: &Value, ctx: &ValidationContext<'_>) -> Verdict {
    validate_prefetch_spec(object.get("spec"), ctx)
}

/// Validates a Prefetch's `spec` (`None` when the object has none).
pub fn validate_prefetch_spec(spec: Option<&Value>, ctx: &ValidationContext<'_>) -> Verdict {
    let mut verdict = Verdict::default();
    let Some(spec) = spec else {
        verdict.error(
            "spec",
            "required: a Prefetch needs at least spec.filter_by_labels",
        );
        return verdict;
    };
    let Some(spec) = spec.as_object() else {
        verdict.error(
            "spec",
            format!("must be an object, got {}", type_name(spec)),
        );
        return verdict;
    };

    validate_filter_by_labels(spec, &mut verdict);
    validate_node_filter(spec, ctx, &mut verdict);
    let floor = ctx.min_retry_after.max(MIN_RETRY_AFTER);
    integer_in_range(spec, "retry_after", floor, MAX_RETRY_AFTER, &mut verdict);
    validate_label_map(spec, "node_selector", &mut verdict);
    integer_in_range(
        spec,
        "max_parallel",
        MIN_MAX_PARALLEL,
        MAX_MAX_PARALLEL,
        &mut verdict,
    );
    integer_in_range(
        spec,
        "pull_timeout",
        MIN_PULL_TIMEOUT,
        MAX_PULL_TIMEOUT,
        &mut verdict,
    );
    validate_tolerations(spec, &mut verdict);
    validate_priority_class_name(spec, &mut verdict);
    validate_declared_images(spec, &mut verdict);
    validate_kinds(spec, &mut verdict);
    validate_seed(spec, &mut verdict);
    if let Some(value) = field(spec, "gate_rollouts")
        && !value.is_boolean()
    {
        verdict.error(
            "spec.gate_rollouts",
            format!("must be true or false, got {}", type_name(value)),
        );
    }
    integer_in_range(
        spec,
        "gate_timeout",
        MIN_GATE_TIMEOUT,
        MAX_GATE_TIMEOUT,
        &mut verdict,
    );

    for field in spec
        .keys()
        .filter(|k| !KNOWN_SPEC_FIELDS.contains(&k.as_str()))
    {
        verdict.warnings.push(format!(
            "spec.{field}: unknown field, ignored (known fields: {})",
            KNOWN_SPEC_FIELDS.join(", ")
        ));
    }
    verdict
}

/// A present, non-null field. `null` counts as absent, as in a merge patch.
fn field<'a>(spec: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    spec.get(name).filter(|v| !v.is_null())
}

fn validate_filter_by_labels(spec: &Map<String, Value>, verdict: &mut Verdict) {
    const FIELD: &str = "spec.filter_by_labels";
    match field(spec, "filter_by_labels") {
        None => verdict.error(FIELD, "required: at least one label that selects workloads"),
        Some(Value::Object(map)) if map.is_empty() => verdict.error(
            FIELD,
            "must have at least one entry (an empty selector would select every workload)",
        ),
        Some(_) => validate_label_map(spec, "filter_by_labels", verdict),
    }
}

fn validate_label_map(spec: &Map<String, Value>, name: &str, verdict: &mut Verdict) {
    let Some(value) = field(spec, name) else {
        return;
    };
    let Some(map) = value.as_object() else {
        verdict.error(
            format!("spec.{name}"),
            format!(
                "must be a map of label keys to values, got {}",
                type_name(value)
            ),
        );
        return;
    };
    for (key, value) in map {
        let path = format!("spec.{name}[{key}]");
        if let Some(why) = label_key_error(key) {
            verdict.error(&path, why);
        }
        match value.as_str() {
            Some(value) => {
                if let Some(why) = label_value_error(value) {
                    verdict.error(&path, why);
                }
            }
            None => verdict.error(
                &path,
                format!("label value must be a string, got {}", type_name(value)),
            ),
        }
    }
}

fn validate_node_filter(
    spec: &Map<String, Value>,
    ctx: &ValidationContext<'_>,
    verdict: &mut Verdict,
) {
    const FIELD: &str = "spec.node_filter";
    let Some(value) = field(spec, "node_filter") else {
        return;
    };
    let Some(filter) = value.as_str() else {
        verdict.error(FIELD, format!("must be a string, got {}", type_name(value)));
        return;
    };
    if filter.len() > MAX_NODE_FILTER_LEN {
        verdict.error(
            FIELD,
            format!(
                "must be at most {MAX_NODE_FILTER_LEN} characters, got {}",
                filter.len()
            ),
        );
    }
    let bad: BTreeSet<char> = filter
        .chars()
        .filter(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-'))
        .collect();
    if !bad.is_empty() {
        let bad: String = bad.into_iter().collect();
        verdict.error(
            FIELD,
            format!(
                "{filter:?} may contain only a-z, 0-9, '.' and '-' (node names are lower-case), found {bad:?}"
            ),
        );
    } else if let Some(nodes) = ctx.node_names
        && !filter.is_empty()
        && !nodes.iter().any(|node| node.contains(filter))
    {
        verdict.warnings.push(format!(
            "spec.node_filter: {filter:?} matches none of the cluster's {} nodes now",
            nodes.len()
        ));
    }
}

fn integer_in_range(
    spec: &Map<String, Value>,
    name: &str,
    min: i64,
    max: i64,
    verdict: &mut Verdict,
) {
    let path = format!("spec.{name}");
    Bounded {
        path: &path,
        min,
        max,
    }
    .check(field(spec, name), verdict);
}

/// An integer field with bounds, at `path`.
struct Bounded<'a> {
    path: &'a str,
    min: i64,
    max: i64,
}

impl Bounded<'_> {
    /// Reports `value` (absent: nothing to check) if it is no integer or out of bounds.
    fn check(&self, value: Option<&Value>, verdict: &mut Verdict) {
        let Some(value) = value else {
            return;
        };
        let (path, min, max) = (self.path, self.min, self.max);
        let Some(n) = value.as_i64() else {
            let got = match value.as_u64() {
                Some(big) => big.to_string(),
                None => type_name(value).to_string(),
            };
            verdict.error(
                path,
                format!("must be an integer between {min} and {max}, got {got}"),
            );
            return;
        };
        if n < min {
            verdict.error(path, format!("must be >= {min}, got {n}"));
        } else if n > max {
            verdict.error(path, format!("must be <= {max}, got {n}"));
        }
    }
}

fn validate_seed(spec: &Map<String, Value>, verdict: &mut Verdict) {
    let Some(value) = field(spec, "seed") else {
        return;
    };
    let Some(seed) = value.as_object() else {
        verdict.error(
            "spec.seed",
            format!(
                "must be an object such as {{per_zone: 1}}, got {}",
                type_name(value)
            ),
        );
        return;
    };
    let per_zone = Bounded {
        path: "spec.seed.per_zone",
        min: MIN_SEED_PER_ZONE,
        max: MAX_SEED_PER_ZONE,
    };
    match field(seed, "per_zone") {
        None => verdict.error(
            "spec.seed.per_zone",
            "required: nodes per zone that pull first",
        ),
        value => per_zone.check(value, verdict),
    }
    for unknown in seed.keys().filter(|k| k.as_str() != "per_zone") {
        verdict.warnings.push(format!(
            "spec.seed.{unknown}: unknown field, ignored (known fields: per_zone)"
        ));
    }
}

fn validate_tolerations(spec: &Map<String, Value>, verdict: &mut Verdict) {
    let Some(value) = field(spec, "tolerations") else {
        return;
    };
    let Some(items) = value.as_array() else {
        verdict.error(
            "spec.tolerations",
            format!("must be a list, got {}", type_name(value)),
        );
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("spec.tolerations[{i}]");
        let toleration: Toleration = match serde_json::from_value(item.clone()) {
            Ok(t) => t,
            Err(err) => {
                verdict.error(path, format!("is not a core/v1 Toleration: {err}"));
                continue;
            }
        };
        for message in toleration_errors(&toleration) {
            verdict.error(&path, message);
        }
    }
}

/// The API server's own rules for a pod's tolerations (`validateTolerations`), so a Prefetch
/// never produces prefetch pods the API server would reject.
fn toleration_errors(t: &Toleration) -> Vec<String> {
    let mut errors = Vec::new();
    let key = t.key.as_deref().unwrap_or("");
    let operator = t.operator.as_deref().unwrap_or("Equal");
    let effect = t.effect.as_deref().unwrap_or("");
    if !key.is_empty()
        && let Some(why) = label_key_error(key)
    {
        errors.push(format!("key: {why}"));
    }
    if key.is_empty() && operator != "Exists" {
        errors.push("operator: must be Exists when key is empty (to tolerate every taint)".into());
    }
    match operator {
        "Equal" => {
            if let Some(why) = t.value.as_deref().and_then(label_value_error) {
                errors.push(format!("value: {why}"));
            }
        }
        "Exists" => {
            if t.value.as_deref().is_some_and(|v| !v.is_empty()) {
                errors.push("value: must be empty when operator is Exists".into());
            }
        }
        other => errors.push(format!("operator: must be Equal or Exists, got {other:?}")),
    }
    if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        errors.push(format!(
            "effect: must be NoSchedule, PreferNoSchedule, NoExecute or empty, got {effect:?}"
        ));
    }
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        errors.push("tolerationSeconds: only allowed with effect NoExecute".into());
    }
    errors
}

fn validate_priority_class_name(spec: &Map<String, Value>, verdict: &mut Verdict) {
    const FIELD: &str = "spec.priority_class_name";
    let Some(value) = field(spec, "priority_class_name") else {
        return;
    };
    match value.as_str() {
        Some(name) => {
            if let Some(why) = dns1123_subdomain_error(name) {
                verdict.error(FIELD, why);
            }
        }
        None => verdict.error(FIELD, format!("must be a string, got {}", type_name(value))),
    }
}

/// `spec.images`: a list of at most [`MAX_DECLARED_IMAGES`] image references, each one a
/// reference a pod could name; every bad entry named by its index.
fn validate_declared_images(spec: &Map<String, Value>, verdict: &mut Verdict) {
    const FIELD: &str = "spec.images";
    let Some(value) = field(spec, "images") else {
        return;
    };
    let Some(images) = value.as_array() else {
        verdict.error(
            FIELD,
            format!(
                "must be a list of image references, got {}",
                type_name(value)
            ),
        );
        return;
    };
    if images.len() > MAX_DECLARED_IMAGES {
        verdict.error(
            FIELD,
            format!(
                "must list at most {MAX_DECLARED_IMAGES} images, got {}",
                images.len()
            ),
        );
    }
    for (index, image) in images.iter().enumerate() {
        let at = format!("{FIELD}[{index}]");
        match image.as_str() {
            Some(reference) => {
                if let Err(err) = crate::images::normalize(reference) {
                    verdict.error(&at, err.to_string());
                }
            }
            None => verdict.error(&at, format!("must be a string, got {}", type_name(image))),
        }
    }
}

/// `spec.kinds`: workload kinds by name, each at most once.
fn validate_kinds(spec: &Map<String, Value>, verdict: &mut Verdict) {
    const FIELD: &str = "spec.kinds";
    let Some(value) = field(spec, "kinds") else {
        return;
    };
    let Some(kinds) = value.as_array() else {
        verdict.error(
            FIELD,
            format!("must be a list of workload kinds, got {}", type_name(value)),
        );
        return;
    };
    let names: Vec<&str> = crate::WorkloadKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    let mut seen = BTreeSet::new();
    for (index, kind) in kinds.iter().enumerate() {
        let at = format!("{FIELD}[{index}]");
        match kind.as_str() {
            Some(name) if names.contains(&name) => {
                if !seen.insert(name) {
                    verdict.error(&at, format!("{name} is listed twice"));
                }
            }
            Some(name) => verdict.error(
                &at,
                format!("must be one of {}, got {name:?}", names.join(", ")),
            ),
            None => verdict.error(&at, format!("must be a string, got {}", type_name(kind))),
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
