//! Tests of `validation`, beside it so that the decisions read on their own.

use super::*;
use serde_json::json;

fn prefetch(spec: Value) -> Value {
    json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
               "metadata": {"name": "p", "namespace": "default"}, "spec": spec})
}

fn check(spec: Value) -> Verdict {
    validate_prefetch(&prefetch(spec), &ValidationContext::default())
}

fn messages(spec: Value) -> Vec<String> {
    check(spec).errors.iter().map(ToString::to_string).collect()
}

fn sample() -> Value {
    json!({"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"})
}

#[test]
fn the_original_sample_is_valid() {
    let verdict = check(sample());
    assert_eq!(verdict, Verdict::default());
    assert!(verdict.is_allowed());
}

#[test]
fn every_field_at_its_bounds_is_valid() {
    let spec = json!({
        "filter_by_labels": {"app.kubernetes.io/name": "web", "tier": ""},
        "node_filter": "a".repeat(253),
        "retry_after": 86400,
        "node_selector": {"kubernetes.io/os": "linux"},
        "max_parallel": 1000,
        "pull_timeout": 30,
        "tolerations": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
            {"operator": "Exists"},
            {"key": "dedicated", "value": "gpu", "effect": "NoExecute", "tolerationSeconds": 60}
        ],
        "priority_class_name": "system-node-critical"
    });
    assert_eq!(check(spec).errors, vec![]);
    let low = json!({"filter_by_labels": {"a": "b"}, "retry_after": 30, "max_parallel": 1, "pull_timeout": 86400});
    assert_eq!(check(low).errors, vec![]);
}

#[test]
fn declared_images_are_references_at_most_a_hundred() {
    let with = |images: Value| {
        let mut spec = sample();
        spec["images"] = images;
        messages(spec)
    };
    assert!(with(json!(["nginx:1.27", "ghcr.io/org/model@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"])).is_empty());
    assert!(with(json!([])).is_empty());
    let hundred: Vec<String> = (0..100).map(|i| format!("img-{i}:1")).collect();
    assert!(with(json!(hundred)).is_empty());
    let too_many: Vec<String> = (0..101).map(|i| format!("img-{i}:1")).collect();
    assert_eq!(
        with(json!(too_many)),
        ["spec.images: must list at most 100 images, got 101"]
    );
    let bad = with(json!(["nginx", "Not An Image", 7]));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].starts_with("spec.images[1]: "), "{bad:?}");
    assert_eq!(bad[1], "spec.images[2]: must be a string, got a number");
    assert_eq!(
        with(json!("nginx")),
        ["spec.images: must be a list of image references, got a string"]
    );
}

#[test]
fn seed_names_nodes_per_zone_between_one_and_a_hundred() {
    let with = |seed: Value| {
        let mut spec = sample();
        spec["seed"] = seed;
        check(spec)
    };
    assert_eq!(with(json!({"per_zone": 1})), Verdict::default());
    assert_eq!(with(json!({"per_zone": 100})), Verdict::default());
    assert_eq!(with(Value::Null), Verdict::default(), "null is unset");
    let errors = |seed: Value| -> Vec<String> {
        with(seed).errors.iter().map(ToString::to_string).collect()
    };
    assert_eq!(
        errors(json!({"per_zone": 0})),
        ["spec.seed.per_zone: must be >= 1, got 0"]
    );
    assert_eq!(
        errors(json!({"per_zone": 101})),
        ["spec.seed.per_zone: must be <= 100, got 101"]
    );
    assert_eq!(
        errors(json!({"per_zone": "1"})),
        ["spec.seed.per_zone: must be an integer between 1 and 100, got a string"]
    );
    assert_eq!(
        errors(json!({})),
        ["spec.seed.per_zone: required: nodes per zone that pull first"]
    );
    assert_eq!(
        errors(json!(1)),
        ["spec.seed: must be an object such as {per_zone: 1}, got a number"]
    );
    assert_eq!(
        with(json!({"per_zone": 1, "per_region": 2})).warnings,
        ["spec.seed.per_region: unknown field, ignored (known fields: per_zone)"]
    );
}

#[test]
fn kinds_are_workload_kinds_each_once() {
    let with = |kinds: Value| {
        let mut spec = sample();
        spec["kinds"] = kinds;
        messages(spec)
    };
    assert!(
        with(json!([
            "Deployment",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "CronJob"
        ]))
        .is_empty()
    );
    assert!(with(json!(["CronJob"])).is_empty());
    assert_eq!(
        with(json!(["Deployment", "Pod", "Deployment", 3])),
        [
            "spec.kinds[1]: must be one of Deployment, StatefulSet, DaemonSet, Job, CronJob, got \"Pod\"",
            "spec.kinds[2]: Deployment is listed twice",
            "spec.kinds[3]: must be a string, got a number",
        ]
    );
    assert_eq!(
        with(json!("Job")),
        ["spec.kinds: must be a list of workload kinds, got a string"]
    );
}

#[test]
fn the_known_fields_are_the_spec_types_fields() {
    let schema = schemars::schema_for!(crate::PrefetchSpec);
    let properties: BTreeSet<&str> = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let known: BTreeSet<&str> = KNOWN_SPEC_FIELDS.into_iter().collect();
    assert_eq!(known, properties, "a field the webhook would call unknown");
}

#[test]
fn missing_or_empty_selector_is_denied() {
    assert_eq!(
        messages(json!({"retry_after": 60})),
        ["spec.filter_by_labels: required: at least one label that selects workloads"]
    );
    assert_eq!(
        messages(json!({"filter_by_labels": {}})),
        [
            "spec.filter_by_labels: must have at least one entry (an empty selector would select every workload)"
        ]
    );
    assert_eq!(
        messages(json!({"filter_by_labels": null})),
        ["spec.filter_by_labels: required: at least one label that selects workloads"]
    );
    assert_eq!(
        messages(json!({"filter_by_labels": ["app"]})),
        ["spec.filter_by_labels: must be a map of label keys to values, got a list"]
    );
}

#[test]
fn missing_or_mistyped_spec_is_denied() {
    let no_spec = json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch", "metadata": {"name": "p"}});
    let verdict = validate_prefetch(&no_spec, &ValidationContext::default());
    assert_eq!(verdict.errors[0].field, "spec");
    assert_eq!(
        messages(json!("x")),
        ["spec: must be an object, got a string"]
    );
}

#[test]
fn label_keys_and_values_are_checked() {
    let got = messages(json!({"filter_by_labels": {"bad key": "x", "app": "-bad", "n": 1}}));
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("spec.filter_by_labels[app]: invalid label value \"-bad\""),
        "{got:?}"
    );
    assert!(
        got[1].starts_with("spec.filter_by_labels[bad key]: invalid label key \"bad key\""),
        "{got:?}"
    );
    assert_eq!(
        got[2],
        "spec.filter_by_labels[n]: label value must be a string, got a number"
    );
    let got =
        messages(json!({"filter_by_labels": {"a": "b"}, "node_selector": {"Bad.Prefix/x": "y"}}));
    assert!(
        got[0].starts_with("spec.node_selector[Bad.Prefix/x]: invalid label key"),
        "{got:?}"
    );
    assert_eq!(
        messages(json!({"filter_by_labels": {"a": "b"}, "node_selector": "linux"})),
        ["spec.node_selector: must be a map of label keys to values, got a string"]
    );
}

#[test]
fn retry_after_bounds_name_the_field_and_value() {
    let with = |v: Value| messages(json!({"filter_by_labels": {"a": "b"}, "retry_after": v}));
    assert_eq!(with(json!(5)), ["spec.retry_after: must be >= 30, got 5"]);
    assert_eq!(with(json!(29)), ["spec.retry_after: must be >= 30, got 29"]);
    assert_eq!(with(json!(-1)), ["spec.retry_after: must be >= 30, got -1"]);
    assert_eq!(
        with(json!(100000)),
        ["spec.retry_after: must be <= 86400, got 100000"]
    );
    assert_eq!(
        with(json!(86401)),
        ["spec.retry_after: must be <= 86400, got 86401"]
    );
    assert_eq!(
        with(json!("60")),
        ["spec.retry_after: must be an integer between 30 and 86400, got a string"]
    );
    assert_eq!(
        with(json!(60.5)),
        ["spec.retry_after: must be an integer between 30 and 86400, got a fractional number"]
    );
    assert_eq!(
        with(json!(u64::MAX)),
        [format!(
            "spec.retry_after: must be an integer between 30 and 86400, got {}",
            u64::MAX
        )]
    );
    assert_eq!(with(Value::Null), Vec::<String>::new());
}

#[test]
fn a_raised_floor_applies_but_never_lowers() {
    let spec = prefetch(json!({"filter_by_labels": {"a": "b"}, "retry_after": 60}));
    let strict = ValidationContext {
        min_retry_after: 120,
        ..Default::default()
    };
    let got = validate_prefetch(&spec, &strict);
    assert_eq!(
        got.errors[0].to_string(),
        "spec.retry_after: must be >= 120, got 60"
    );
    let lax = ValidationContext {
        min_retry_after: 1,
        ..Default::default()
    };
    let spec = prefetch(json!({"filter_by_labels": {"a": "b"}, "retry_after": 10}));
    assert_eq!(
        validate_prefetch(&spec, &lax).errors[0].message,
        "must be >= 30, got 10"
    );
}

#[test]
fn max_parallel_and_pull_timeout_bounds() {
    let with = |k: &str, v: i64| messages(json!({"filter_by_labels": {"a": "b"}, k: v}));
    assert_eq!(
        with("max_parallel", 0),
        ["spec.max_parallel: must be >= 1, got 0"]
    );
    assert_eq!(
        with("max_parallel", 1001),
        ["spec.max_parallel: must be <= 1000, got 1001"]
    );
    assert_eq!(
        with("pull_timeout", 29),
        ["spec.pull_timeout: must be >= 30, got 29"]
    );
    assert_eq!(
        with("pull_timeout", 86401),
        ["spec.pull_timeout: must be <= 86400, got 86401"]
    );
}

#[test]
fn node_filter_rules() {
    let with = |v: Value| messages(json!({"filter_by_labels": {"a": "b"}, "node_filter": v}));
    assert_eq!(
        with(json!("Worker_1")),
        [
            "spec.node_filter: \"Worker_1\" may contain only a-z, 0-9, '.' and '-' (node names are lower-case), found \"W_\""
        ]
    );
    assert_eq!(with(json!("")), Vec::<String>::new());
    assert_eq!(
        with(json!("ip-10-0-1-2.ec2.internal")),
        Vec::<String>::new()
    );
    assert_eq!(
        with(json!(3)),
        ["spec.node_filter: must be a string, got a number"]
    );
    assert_eq!(
        with(json!("a".repeat(254))),
        ["spec.node_filter: must be at most 253 characters, got 254"]
    );
}

#[test]
fn node_filter_matching_no_node_warns() {
    let nodes: BTreeSet<String> = ["kind-control-plane", "kind-worker"]
        .map(String::from)
        .into();
    let ctx = ValidationContext {
        node_names: Some(&nodes),
        ..Default::default()
    };
    let spec = |f: &str| prefetch(json!({"filter_by_labels": {"a": "b"}, "node_filter": f}));
    let verdict = validate_prefetch(&spec("gpu"), &ctx);
    assert!(verdict.is_allowed());
    assert_eq!(
        verdict.warnings,
        ["spec.node_filter: \"gpu\" matches none of the cluster's 2 nodes now"]
    );
    assert_eq!(
        validate_prefetch(&spec("worker"), &ctx).warnings,
        Vec::<String>::new()
    );
    assert_eq!(
        validate_prefetch(&spec(""), &ctx).warnings,
        Vec::<String>::new()
    );
}

#[test]
fn tolerations_follow_the_api_server_rules() {
    let with = |t: Value| messages(json!({"filter_by_labels": {"a": "b"}, "tolerations": t}));
    assert_eq!(
        with(json!({})),
        ["spec.tolerations: must be a list, got an object"]
    );
    let got = with(json!([
        {"key": "k", "operator": "Sometimes"},
        {"operator": "Equal", "value": "v"},
        {"key": "k", "operator": "Exists", "value": "v"},
        {"key": "k", "effect": "NoWhere"},
        {"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5},
        {"key": "bad key"},
        {"key": "k", "tolerationSeconds": "soon"}
    ]));
    assert_eq!(
        got[0],
        "spec.tolerations[0]: operator: must be Equal or Exists, got \"Sometimes\""
    );
    assert_eq!(
        got[1],
        "spec.tolerations[1]: operator: must be Exists when key is empty (to tolerate every taint)"
    );
    assert_eq!(
        got[2],
        "spec.tolerations[2]: value: must be empty when operator is Exists"
    );
    assert_eq!(
        got[3],
        "spec.tolerations[3]: effect: must be NoSchedule, PreferNoSchedule, NoExecute or empty, got \"NoWhere\""
    );
    assert_eq!(
        got[4],
        "spec.tolerations[4]: tolerationSeconds: only allowed with effect NoExecute"
    );
    assert!(
        got[5].starts_with("spec.tolerations[5]: key: invalid label key"),
        "{got:?}"
    );
    assert!(
        got[6].starts_with("spec.tolerations[6]: is not a core/v1 Toleration"),
        "{got:?}"
    );
    assert_eq!(got.len(), 7);
}

#[test]
fn gate_fields_are_typed_and_bounded() {
    let with = |k: &str, v: Value| messages(json!({"filter_by_labels": {"a": "b"}, k: v}));
    assert_eq!(with("gate_rollouts", json!(true)), Vec::<String>::new());
    assert_eq!(with("gate_timeout", json!(60)), Vec::<String>::new());
    assert_eq!(with("gate_timeout", json!(3600)), Vec::<String>::new());
    assert_eq!(
        with("gate_rollouts", json!("yes")),
        ["spec.gate_rollouts: must be true or false, got a string"]
    );
    assert_eq!(
        with("gate_timeout", json!(59)),
        ["spec.gate_timeout: must be >= 60, got 59"]
    );
    assert_eq!(
        with("gate_timeout", json!(3601)),
        ["spec.gate_timeout: must be <= 3600, got 3601"]
    );
    assert_eq!(
        with("gate_timeout", json!("15m")),
        ["spec.gate_timeout: must be an integer between 60 and 3600, got a string"]
    );
}

#[test]
fn priority_class_name_must_be_a_dns_subdomain() {
    let with =
        |v: Value| messages(json!({"filter_by_labels": {"a": "b"}, "priority_class_name": v}));
    assert_eq!(with(json!("high-priority")), Vec::<String>::new());
    assert!(
        with(json!("High"))[0]
            .starts_with("spec.priority_class_name: \"High\" must be a lower-case DNS subdomain")
    );
    assert_eq!(
        with(json!(1)),
        ["spec.priority_class_name: must be a string, got a number"]
    );
}

#[test]
fn all_violations_come_back_together() {
    let verdict = check(json!({
        "filter_by_labels": {},
        "retry_after": 5,
        "node_filter": "Worker_1",
        "max_parallel": 0
    }));
    let fields: Vec<&str> = verdict.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.filter_by_labels",
            "spec.node_filter",
            "spec.retry_after",
            "spec.max_parallel"
        ]
    );
    let message = verdict.denial_message();
    assert!(
        message.starts_with(
            "Prefetch is invalid: spec.filter_by_labels: must have at least one entry"
        )
    );
    assert!(
        message.contains("; spec.retry_after: must be >= 30, got 5; "),
        "{message}"
    );
}

#[test]
fn unknown_fields_warn_without_denying() {
    let verdict = check(json!({"filter_by_labels": {"a": "b"}, "retry_afer": 60}));
    assert!(verdict.is_allowed());
    assert!(verdict.warnings[0].starts_with("spec.retry_afer: unknown field, ignored"));
}
