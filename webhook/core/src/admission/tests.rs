//! Tests of `admission`, beside it so that the decisions read on their own.

use super::*;
use crate::answer::Denial;
use crate::facts::fakes::{FakeNodes, FakePrefetches};
use crate::review::REVIEW_API_VERSION;
use prefetch_common::validation::validate_prefetch;
use proptest::prelude::*;

fn review_value(group: &str, kind: &str, op: &str, object: Value, old: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "uid-1", "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "x"},
            "name": "x", "namespace": "default", "operation": op,
            "userInfo": {"username": "test"}, "object": object, "oldObject": old
        }
    })
}

fn review_body(group: &str, kind: &str, op: &str, object: Value, old: Value) -> Vec<u8> {
    serde_json::to_vec(&review_value(group, kind, op, object, old)).unwrap()
}

fn deployment(labels: Value, annotations: Option<Value>, images: &[&str]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .map(|i| json!({"name": "c", "image": i}))
        .collect();
    let mut metadata = json!({"name": "web", "namespace": "default", "labels": labels});
    if let Some(a) = annotations {
        metadata["annotations"] = a;
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
               "spec": {"template": {"spec": {"containers": containers}}}})
}

fn sample() -> Value {
    json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
            "metadata": {"name": "prefetch-sample", "namespace": "default"},
            "spec": {"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"}})
}

fn now() -> jiff::Timestamp {
    "2026-11-22T03:00:00Z".parse().unwrap()
}

fn decide(endpoint: Endpoint, body: &[u8], index: &FakePrefetches) -> Answer {
    let nodes = FakeNodes::default();
    let caches = Caches {
        prefetches: index,
        nodes: &nodes,
        min_retry_after: 30,
        leader_renewed: None,
    };
    review(endpoint, body, &caches, now()).unwrap()
}

fn patch_json(answer: &Answer) -> Value {
    serde_json::to_value(answer.patch.as_ref().unwrap()).unwrap()
}

#[test]
fn gate_rollouts_without_a_leading_controller_warns() {
    let index = FakePrefetches::default();
    let nodes = FakeNodes::default();
    let mut object = sample();
    object["spec"]["gate_rollouts"] = json!(true);
    let body = review_body(API_GROUP, KIND, "CREATE", object, Value::Null);
    let warnings = |leader_renewed: Option<jiff::Timestamp>| {
        let caches = Caches {
            prefetches: &index,
            nodes: &nodes,
            min_retry_after: 30,
            leader_renewed,
        };
        review(Endpoint::ValidatePrefetch, &body, &caches, now())
            .unwrap()
            .warnings
    };
    let stale = warnings(Some("2026-11-22T02:59:29Z".parse().unwrap()));
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0].contains("pods will not be gated"));
    assert_eq!(warnings(None), stale);
    assert!(warnings(Some("2026-11-22T02:59:50Z".parse().unwrap())).is_empty());
}

#[test]
fn statefulsets_daemonsets_and_cronjobs_are_signalled_like_deployments() {
    let index = FakePrefetches::selecting(&[("default", "pf", "app", "nginx")]);
    let template = |images: &[&str]| {
        let containers: Vec<Value> = images
            .iter()
            .map(|i| json!({"name": "c", "image": i}))
            .collect();
        json!({"spec": {"containers": containers,
                            "volumes": [{"name": "w", "image": {"reference": "weights:v2"}}]}})
    };
    let workload = |kind: &str, images: &[&str]| {
        let metadata = json!({"name": "w", "namespace": "default", "labels": {"app": "nginx"}});
        let spec = if kind == "CronJob" {
            json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template(images)}}})
        } else {
            json!({"template": template(images)})
        };
        json!({"kind": kind, "metadata": metadata, "spec": spec})
    };
    for (group, kind) in [
        ("apps", "StatefulSet"),
        ("apps", "DaemonSet"),
        ("batch", "CronJob"),
    ] {
        for endpoint in [Endpoint::MutateWorkload, Endpoint::MutateDeployment] {
            let (old, new) = (
                workload(kind, &["nginx:1.7.9"]),
                workload(kind, &["nginx:1.25"]),
            );
            let update = review_body(group, kind, "UPDATE", new.clone(), old);
            let patch = patch_json(&decide(endpoint, &update, &index));
            assert_eq!(
                patch[0]["value"][PREFETCH_IMAGES], r#"["docker.io/library/nginx:1.25"]"#,
                "{kind}"
            );
            // CREATE brings every image, the image volume's too.
            let create = review_body(group, kind, "CREATE", new, Value::Null);
            let patch = patch_json(&decide(endpoint, &create, &index));
            assert_eq!(
                patch[0]["value"][PREFETCH_IMAGES],
                r#"["docker.io/library/nginx:1.25","docker.io/library/weights:v2"]"#,
                "{kind}"
            );
        }
    }
    // A Job's template never changes, and its CronJob carries the signal: no signal.
    let job = review_body(
        "batch",
        "Job",
        "CREATE",
        workload("Job", &["nginx:1.25"]),
        Value::Null,
    );
    let answer = decide(Endpoint::MutateWorkload, &job, &index);
    assert!(answer.patch.is_none() && answer.why.contains("not a workload that rolls out"));
    // A Prefetch whose kinds leave the kind out does not signal it.
    let mut deployments_only = index;
    deployments_only.prefetches[0].2.kinds = [WorkloadKind::Deployment].into();
    let create = review_body(
        "apps",
        "DaemonSet",
        "CREATE",
        workload("DaemonSet", &["nginx:1.25"]),
        Value::Null,
    );
    let answer = decide(Endpoint::MutateWorkload, &create, &deployments_only);
    assert!(answer.patch.is_none(), "{answer:?}");
}

#[test]
fn image_change_on_a_selected_deployment_adds_both_annotations() {
    let index = FakePrefetches::selecting(&[("default", "pf", "app", "nginx")]);
    let old = deployment(json!({"app": "nginx"}), None, &["nginx:1.7.9"]);
    let new = deployment(json!({"app": "nginx"}), None, &["nginx:1.25", "redis:7"]);
    let answer = decide(
        Endpoint::MutateDeployment,
        &review_body("apps", "Deployment", "UPDATE", new, old),
        &index,
    );
    assert!(answer.allowed);
    assert_eq!(answer.result, RequestResult::Patched);
    assert_eq!(
        patch_json(&answer),
        json!([{"op": "add", "path": "/metadata/annotations", "value": {
            "cache.techsquad.rocks/prefetch-images": "[\"docker.io/library/nginx:1.25\",\"docker.io/library/redis:7\"]",
            "cache.techsquad.rocks/prefetch-requested-at": "2026-11-22T03:00:00.000000Z"
        }}])
    );
}

#[test]
fn existing_annotations_get_escaped_keys_added() {
    let index = FakePrefetches::selecting(&[("default", "pf", "app", "nginx")]);
    let new = deployment(
        json!({"app": "nginx"}),
        Some(json!({"team": "a"})),
        &["nginx:1.25"],
    );
    let answer = decide(
        Endpoint::MutateDeployment,
        &review_body("apps", "Deployment", "CREATE", new, Value::Null),
        &index,
    );
    let paths: Vec<String> = patch_json(&answer)
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations/cache.techsquad.rocks~1prefetch-images",
            "/metadata/annotations/cache.techsquad.rocks~1prefetch-requested-at"
        ]
    );
}

#[test]
fn no_signal_without_a_new_image_or_a_selecting_prefetch() {
    let index = FakePrefetches::selecting(&[
        ("default", "pf", "app", "nginx"),
        ("other", "pf", "app", "web"),
    ]);
    let same = deployment(json!({"app": "nginx"}), None, &["nginx:1.7.9"]);
    let respelled = deployment(
        json!({"app": "nginx"}),
        None,
        &["docker.io/library/nginx:1.7.9"],
    );
    let answer = decide(
        Endpoint::MutateDeployment,
        &review_body("apps", "Deployment", "UPDATE", respelled, same.clone()),
        &index,
    );
    assert_eq!((answer.patch, answer.why.as_str()), (None, "no new images"));

    let web = deployment(json!({"app": "web"}), None, &["nginx:2"]);
    let answer = decide(
        Endpoint::MutateDeployment,
        &review_body("apps", "Deployment", "UPDATE", web, same),
        &index,
    );
    assert_eq!(
        (answer.patch, answer.why.as_str()),
        (None, "no Prefetch in the namespace selects it")
    );

    let unsynced = FakePrefetches::default();
    let new = deployment(json!({"app": "nginx"}), None, &["nginx:2"]);
    let answer = decide(
        Endpoint::MutateDeployment,
        &review_body("apps", "Deployment", "CREATE", new, Value::Null),
        &unsynced,
    );
    assert!(answer.allowed && answer.patch.is_none());
    assert_eq!(answer.result, RequestResult::Error);
}

#[test]
fn escaped_labels_and_images_are_read_like_plain_ones() {
    let index = FakePrefetches::selecting(&[("default", "pf", "app", "nginx")]);
    // JSON escapes force the owned path of the borrowed strings.
    let body = review_body(
        "apps",
        "Deployment",
        "CREATE",
        deployment(json!({"app": "nginx"}), None, &["nginx:1.25"]),
        Value::Null,
    );
    let escaped = String::from_utf8(body)
        .unwrap()
        .replace("\"nginx\"", "\"ngin\\u0078\"")
        .replace("nginx:1.25", "ngin\\u0078:1.25");
    let answer = decide(Endpoint::MutateDeployment, escaped.as_bytes(), &index);
    assert_eq!(answer.result, RequestResult::Patched, "{answer:?}");
    assert_eq!(
        patch_json(&answer)[0]["value"][PREFETCH_IMAGES],
        "[\"docker.io/library/nginx:1.25\"]"
    );
}

/// A Prefetch whose keys and values are written with `\u` escapes is judged as the text
/// they stand for: the escaped `retry_after` is present (not defaulted) and validated.
#[test]
fn escaped_prefetch_fields_are_judged_like_plain_ones() {
    let index = FakePrefetches::default();
    let mut prefetch = sample();
    prefetch["spec"]["retry_after"] = json!(5);
    let body = review_body(API_GROUP, KIND, "CREATE", prefetch, Value::Null);
    let escaped = String::from_utf8(body)
        .unwrap()
        .replace("retry_after", "retry_\\u0061fter")
        .replace("\"Prefetch\"", "\"Pre\\u0066etch\"");
    let validated = decide(Endpoint::ValidatePrefetch, escaped.as_bytes(), &index);
    assert_eq!(
        validated.denial.map(|d| d.message),
        Some("Prefetch is invalid: spec.retry_after: must be >= 30, got 5".into())
    );
    let defaulted = decide(Endpoint::MutatePrefetch, escaped.as_bytes(), &index);
    let paths: Vec<Value> = patch_json(&defaulted)
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].clone())
        .collect();
    assert!(!paths.contains(&json!("/spec/retry_after")), "{paths:?}");
    assert!(paths.contains(&json!("/spec/max_parallel")), "{paths:?}");
}

#[test]
fn defaulting_and_validation_of_the_sample() {
    let index = FakePrefetches::default();
    let body = review_body(API_GROUP, KIND, "CREATE", sample(), Value::Null);
    let mutated = decide(Endpoint::MutatePrefetch, &body, &index);
    assert_eq!(mutated.result, RequestResult::Patched);
    assert_eq!(patch_json(&mutated).as_array().unwrap().len(), 4);
    let validated = decide(Endpoint::ValidatePrefetch, &body, &index);
    assert!(
        validated.allowed && validated.patch.is_none(),
        "{validated:?}"
    );
}

#[test]
fn raised_floor_ratchets_on_unchanged_retry_after() {
    let index = FakePrefetches::default();
    let nodes = FakeNodes::default();
    let caches = Caches {
        prefetches: &index,
        nodes: &nodes,
        min_retry_after: 120,
        leader_renewed: None,
    };
    let obj = |retry: i64, label: &str| {
        json!({"metadata": {"name": "p", "labels": {"v": label}},
            "spec": {"filter_by_labels": {"app": "nginx"}, "retry_after": retry}})
    };
    let relabel = review_body(API_GROUP, KIND, "UPDATE", obj(60, "2"), obj(60, "1"));
    assert!(
        review(Endpoint::ValidatePrefetch, &relabel, &caches, now())
            .unwrap()
            .allowed
    );
    let change = review_body(API_GROUP, KIND, "UPDATE", obj(90, "2"), obj(60, "1"));
    let answer = review(Endpoint::ValidatePrefetch, &change, &caches, now()).unwrap();
    assert_eq!(
        answer.denial,
        Some(Denial {
            code: 422,
            message: "Prefetch is invalid: spec.retry_after: must be >= 120, got 90".into()
        })
    );
    let create = review_body(API_GROUP, KIND, "CREATE", obj(60, "1"), Value::Null);
    assert!(
        !review(Endpoint::ValidatePrefetch, &create, &caches, now())
            .unwrap()
            .allowed
    );
    // An UPDATE without a readable old object gets the configured floor.
    let no_old = review_body(API_GROUP, KIND, "UPDATE", obj(60, "2"), json!("x"));
    assert!(
        !review(Endpoint::ValidatePrefetch, &no_old, &caches, now())
            .unwrap()
            .allowed
    );
}

/// Every class of request the validating hook cannot judge: denied (400) naming what is
/// wrong; the mutating hook allows the same requests without a patch.
#[test]
fn the_validating_hook_denies_what_it_cannot_judge() {
    let index = FakePrefetches::default();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut review = review_value(API_GROUP, KIND, "CREATE", sample(), Value::Null);
        f(&mut review["request"]);
        serde_json::to_vec(&review).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "null object on CREATE",
            with(&|r| r["object"] = Value::Null),
            "request.object is missing or null on CREATE",
        ),
        (
            "no object on UPDATE",
            with(&|r| {
                r["operation"] = json!("UPDATE");
                r.as_object_mut().unwrap().remove("object");
            }),
            "request.object is missing or null on UPDATE",
        ),
        (
            "a string",
            with(&|r| r["object"] = json!("Prefetch")),
            "request.object must be a Prefetch object, got a string",
        ),
        (
            "a number",
            with(&|r| r["object"] = json!(42)),
            "got a number",
        ),
        (
            "a list",
            with(&|r| r["object"] = json!([sample()])),
            "got a list",
        ),
        (
            "a boolean",
            with(&|r| r["object"] = json!(false)),
            "got a boolean",
        ),
        (
            "another kind",
            with(&|r| r["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"})),
            "/validate/prefetch handles cache.techsquad.rocks/v1 Prefetch only, got apps/v1 Deployment",
        ),
        (
            "another version",
            with(&|r| r["kind"]["version"] = json!("v2")),
            "got cache.techsquad.rocks/v2 Prefetch",
        ),
        (
            "an object of another kind",
            with(&|r| r["object"]["kind"] = json!("Deployment")),
            "request.object.kind is \"Deployment\", not \"Prefetch\"",
        ),
        (
            "an object of another apiVersion",
            with(&|r| r["object"]["apiVersion"] = json!(7)),
            "request.object.apiVersion is 7, not \"cache.techsquad.rocks/v1\"",
        ),
        (
            "an unknown operation",
            with(&|r| r["operation"] = json!("PATCH")),
            "request.operation is not one of CREATE, UPDATE, DELETE or CONNECT",
        ),
    ];
    for (name, body, expected) in cases {
        let answer = decide(Endpoint::ValidatePrefetch, &body, &index);
        assert!(!answer.allowed, "{name}: allowed");
        let denial = answer.denial.expect("denial");
        assert_eq!(denial.code, 400, "{name}");
        assert!(
            denial.message.starts_with("cannot validate this request: ")
                && denial.message.contains(expected),
            "{name}: {:?} lacks {expected:?}",
            denial.message
        );
        let mutated = decide(Endpoint::MutatePrefetch, &body, &index);
        assert!(
            mutated.allowed && mutated.patch.is_none(),
            "{name}: {mutated:?}"
        );
    }

    // A misrouted kind is allowed with a warning by the mutating hook only.
    let misrouted = with(&|r| r["kind"]["kind"] = json!("Pod"));
    let answer = decide(Endpoint::MutatePrefetch, &misrouted, &index);
    assert!(answer.allowed);
    assert_eq!(answer.warnings.len(), 1, "{answer:?}");
    assert!(answer.warnings[0].contains("check the webhook configuration"));

    // DELETE and CONNECT carry no object to judge: allowed.
    for op in ["DELETE", "CONNECT"] {
        let body = with(&|r| {
            r["operation"] = json!(op);
            r["object"] = Value::Null;
        });
        assert!(
            decide(Endpoint::ValidatePrefetch, &body, &index).allowed,
            "{op}"
        );
    }
    // A Prefetch object without apiVersion and kind is judged by the request's kind.
    let bare = with(&|r| {
        let object = r["object"].as_object_mut().unwrap();
        object.remove("apiVersion");
        object.remove("kind");
    });
    assert!(decide(Endpoint::ValidatePrefetch, &bare, &index).allowed);
    // No spec, a null spec: judged, and denied as invalid (422).
    for spec in [None, Some(Value::Null)] {
        let body = with(&|r| match &spec {
            None => {
                r["object"].as_object_mut().unwrap().remove("spec");
            }
            Some(v) => r["object"]["spec"] = v.clone(),
        });
        let answer = decide(Endpoint::ValidatePrefetch, &body, &index);
        assert_eq!(answer.denial.map(|d| d.code), Some(422), "{spec:?}");
    }
}

#[test]
fn bad_reviews_are_rejected_with_a_reason() {
    let index = FakePrefetches::default();
    let nodes = FakeNodes::default();
    let caches = Caches {
        prefetches: &index,
        nodes: &nodes,
        min_retry_after: 30,
        leader_renewed: None,
    };
    let err = |body: &[u8]| {
        review(Endpoint::ValidatePrefetch, body, &caches, now())
            .unwrap_err()
            .to_string()
    };
    assert!(err(b"{not json").starts_with("malformed AdmissionReview"));
    let v1beta1 =
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#;
    assert!(err(v1beta1).starts_with("only admission.k8s.io/v1 AdmissionReview is supported"));
    let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
    assert_eq!(err(empty), "AdmissionReview has no request");
}

/// Arbitrary JSON of small depth.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `valid` most of the time, otherwise any JSON or nothing at all.
fn mostly(valid: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        10 => valid.prop_map(Some),
        1 => any_json().prop_map(Some),
        1 => Just(None),
    ]
}

fn one_of(values: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::sample::select(values).prop_map(Value::from)
}

fn plausible_spec() -> impl Strategy<Value = Value> {
    prop_oneof![valid_spec(), any_spec()]
}

fn valid_spec() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map("[a-z]{1,4}", one_of(&["nginx", "x"]), 1..3),
        prop::option::of(30i64..=86400),
        prop::option::of(one_of(&["", "worker"])),
    )
        .prop_map(|(labels, retry_after, node_filter)| {
            let mut spec = json!({"filter_by_labels": labels});
            if let Some(retry_after) = retry_after {
                spec["retry_after"] = json!(retry_after);
            }
            if let Some(node_filter) = node_filter {
                spec["node_filter"] = node_filter;
            }
            spec
        })
}

fn any_spec() -> impl Strategy<Value = Value> {
    let mut names = prefetch_common::validation::KNOWN_SPEC_FIELDS.to_vec();
    names.push("extra");
    let value = prop_oneof![
        3 => prop::collection::btree_map("[a-z]{1,4}", one_of(&["nginx", "x", "bad value!"]), 0..3)
            .prop_map(|m| json!(m)),
        3 => (-10i64..100_000).prop_map(Value::from),
        2 => one_of(&["", "worker", "Worker_1"]),
        2 => any_json(),
    ];
    prop::collection::btree_map(prop::sample::select(names), value, 0..9)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn plausible_object() -> impl Strategy<Value = Value> {
    let images = prop::collection::vec(
        one_of(&[
            "nginx:1.25",
            "redis",
            "Not A Ref",
            "registry.local:5000/a@sha256:00",
        ]),
        0..3,
    );
    let deployment = (
            mostly(prop::collection::btree_map("[a-z]{1,3}", one_of(&["nginx", "web"]), 0..3).prop_map(|m| json!(m))),
            mostly(images.prop_map(|i| json!(i.into_iter().map(|image| json!({"name": "c", "image": image})).collect::<Vec<_>>()))),
            any::<bool>(),
        )
            .prop_map(|(labels, containers, annotated)| {
                let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default"}, "spec": {"template": {"spec": {}}}});
                if let Some(labels) = labels {
                    d["metadata"]["labels"] = labels;
                }
                if annotated {
                    d["metadata"]["annotations"] = json!({"a": "b"});
                }
                if let Some(containers) = containers {
                    d["spec"]["template"]["spec"]["containers"] = containers;
                }
                d
            });
    let prefetch = (
        mostly(one_of(&["cache.techsquad.rocks/v1", "apps/v1"])),
        mostly(one_of(&["Prefetch", "Deployment"])),
        mostly(plausible_spec()),
    )
        .prop_map(|(api_version, kind, spec)| {
            let mut p = json!({"metadata": {"name": "p"}});
            for (field, value) in [("apiVersion", api_version), ("kind", kind), ("spec", spec)] {
                if let Some(value) = value {
                    p[field] = value;
                }
            }
            p
        });
    prop_oneof![3 => prefetch, 3 => deployment, 1 => any_json()]
}

/// AdmissionReviews that are right in shape most of the time, with any field of any type.
fn plausible_review() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        3 => Just(json!({"group": API_GROUP, "version": "v1", "kind": "Prefetch"})),
        2 => Just(json!({"group": "apps", "version": "v1", "kind": "Deployment"})),
        1 => Just(json!({"group": API_GROUP, "version": "v2", "kind": "Prefetch"})),
        1 => Just(json!({"group": "", "version": "v1", "kind": "Pod"})),
    ];
    let request = (
        mostly(one_of(&["uid-1", ""])),
        mostly(kind),
        mostly(one_of(&[
            "CREATE", "UPDATE", "CREATE", "UPDATE", "DELETE", "CONNECT", "PATCH", "create",
        ])),
        mostly(one_of(&["default", "other"])),
        prop_oneof![4 => Just(None), 1 => mostly(one_of(&["status", "scale"]))],
        mostly(plausible_object()),
        mostly(plausible_object()),
    )
        .prop_map(
            |(uid, kind, operation, namespace, sub_resource, object, old)| {
                let mut r = serde_json::Map::new();
                for (field, value) in [
                    ("uid", uid),
                    ("kind", kind),
                    ("operation", operation),
                    ("namespace", namespace),
                    ("subResource", sub_resource),
                    ("object", object),
                    ("oldObject", old),
                ] {
                    if let Some(value) = value {
                        r.insert(field.into(), value);
                    }
                }
                Value::Object(r)
            },
        );
    (
        mostly(Just(json!("admission.k8s.io/v1"))),
        mostly(Just(json!("AdmissionReview"))),
        mostly(request),
    )
        .prop_map(|(api_version, kind, request)| {
            let mut review = serde_json::Map::new();
            for (field, value) in [
                ("apiVersion", api_version),
                ("kind", kind),
                ("request", request),
            ] {
                if let Some(value) = value {
                    review.insert(field.into(), value);
                }
            }
            Value::Object(review)
        })
}

/// Every endpoint on `body`: never a panic; a 400 when `body` is not JSON; otherwise a
/// 400 or an answer that serializes to a well-formed AdmissionReview response echoing the
/// uid. Returns the answers.
fn answers(body: &[u8], index: &FakePrefetches) -> Vec<(Endpoint, Option<Answer>)> {
    let nodes = FakeNodes::default();
    let caches = Caches {
        prefetches: index,
        nodes: &nodes,
        min_retry_after: 30,
        leader_renewed: None,
    };
    let is_json = serde_json::from_slice::<IgnoredAny>(body).is_ok();
    Endpoint::ALL
        .into_iter()
        .map(|endpoint| {
            let answer = review(endpoint, body, &caches, now()).ok();
            assert!(
                is_json || answer.is_none(),
                "{endpoint:?} answered a body that is not JSON: {:?}",
                String::from_utf8_lossy(body)
            );
            if let Some(answer) = &answer {
                let out: Value = serde_json::from_slice(&answer.to_review_json().unwrap()).unwrap();
                assert_eq!(out["apiVersion"], REVIEW_API_VERSION);
                assert_eq!(out["response"]["uid"], answer.uid.as_str());
                assert_eq!(out["response"]["allowed"], answer.allowed);
                assert_eq!(answer.allowed, answer.denial.is_none());
            }
            (endpoint, answer)
        })
        .collect()
}

/// The validating hook's allow, re-derived from the JSON: a Prefetch v1 request that is a
/// DELETE or CONNECT, or whose object is a valid Prefetch.
fn validation_may_allow(review: &Value) -> bool {
    let request = &review["request"];
    let kind = &request["kind"];
    if !(kind["group"] == API_GROUP && kind["version"] == "v1" && kind["kind"] == "Prefetch") {
        return false;
    }
    match request["operation"].as_str() {
        Some("DELETE" | "CONNECT") => return true,
        Some("CREATE" | "UPDATE") => {}
        _ => return false,
    }
    let object = &request["object"];
    object.is_object()
        && [
            ("apiVersion", "cache.techsquad.rocks/v1"),
            ("kind", "Prefetch"),
        ]
        .iter()
        .all(|(f, want)| object[f].is_null() || object[f] == *want)
        && validate_prefetch(object, &ValidationContext::default()).is_allowed()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_get_an_answer_or_a_400(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let index = FakePrefetches::selecting(&[("default", "pf", "app", "nginx")]);
        answers(&bytes, &index);
    }

    #[test]
    fn damaged_reviews_get_an_answer_or_a_400(
        review in plausible_review(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let index = FakePrefetches::selecting(&[("default", "pf", "app", "nginx")]);
        let mut body = serde_json::to_vec(&review).unwrap();
        let at = cut.index(body.len().max(1));
        if at < body.len() {
            body[at] = byte;
        }
        answers(&body, &index);
        answers(&body[..at.min(body.len())], &index);
    }

    #[test]
    fn plausible_reviews_are_judged_soundly(review in plausible_review()) {
        let index = FakePrefetches::selecting(&[("default", "pf", "app", "nginx")]);
        let body = serde_json::to_vec(&review).unwrap();
        answers(&serde_json::to_vec_pretty(&review).unwrap(), &index);
        for (endpoint, answer) in answers(&body, &index) {
            let Some(answer) = answer else { continue };
            match endpoint {
                Endpoint::ValidatePrefetch => {
                    prop_assert!(
                        !answer.allowed || validation_may_allow(&review),
                        "allowed what it could not judge: {answer:?}"
                    );
                    prop_assert!(answer.patch.is_none());
                }
                Endpoint::MutatePrefetch | Endpoint::MutateDeployment | Endpoint::MutateWorkload => {
                    prop_assert!(answer.allowed, "a mutating hook denied: {answer:?}");
                    if let Some(patch) = &answer.patch {
                        let mut object = review["request"]["object"].clone();
                        prop_assert!(json_patch::patch(&mut object, patch).is_ok(), "{patch:?} does not apply");
                    }
                }
            }
        }
    }
}
