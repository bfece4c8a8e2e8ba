//! Tests of `gate`, beside it so that the decisions read on their own.

use super::*;
use crate::facts::PrefetchFacts;
use crate::facts::fakes::FakePrefetches;
use prefetch_common::WorkloadKind;
use prefetch_common::annotations::Signal;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const NOW: &str = "2026-11-22T03:00:00Z";

fn web() -> WorkloadRef {
    WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "web".into(),
    }
}

fn pod_value(owner: Value, hash: Option<&str>, images: &[&str]) -> Value {
    let mut labels = json!({"app": "web"});
    if let Some(hash) = hash {
        labels[POD_TEMPLATE_HASH_LABEL] = json!(hash);
    }
    let containers: Vec<Value> = images
            .iter()
            .map(|i| json!({"name": "c", "image": i, "resources": {}, "env": [{"name": "A", "value": "b"}]}))
            .collect();
    json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": "web-7d4b9c8f6-", "labels": labels, "ownerReferences": owner},
               "spec": {"containers": containers, "restartPolicy": "Always"}})
}

fn rs_owner(name: &str) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": "u", "controller": true, "blockOwnerDeletion": true}])
}

fn review_body(kind: &str, op: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "uid-1", "kind": {"group": "", "version": "v1", "kind": kind},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "default", "operation": op, "userInfo": {"username": "rs"},
                    "object": object, "oldObject": null}
    }))
    .unwrap()
}

fn facts(object: Value) -> PodFacts {
    match read(&review_body("Pod", "CREATE", object)).unwrap() {
        Read::Pod(facts) => facts,
        other => panic!("not read as a pod: {other:?}"),
    }
}

fn web_pod() -> PodFacts {
    facts(pod_value(
        rs_owner("web-7d4b9c8f6"),
        Some("7d4b9c8f6"),
        &["nginx:1.25", "sidecar:1"],
    ))
}

fn deployment(signal_at: Option<&str>, signalled: &[&str], template: &[&str]) -> WorkloadFacts {
    let norm = |refs: &[&str]| collect_images(refs.iter().copied()).images;
    WorkloadFacts {
        labels: [("app".to_string(), "web".to_string())].into(),
        signal: signal_at.map(|at| Signal {
            images: norm(signalled).into_iter().collect(),
            requested_at: t(at),
        }),
        template_images: norm(template),
        template_references: template.iter().map(|r| r.to_string()).collect(),
    }
}

fn signalled() -> WorkloadFacts {
    deployment(
        Some("2026-11-22T02:59:00Z"),
        &["nginx:1.25"],
        &["nginx:1.25", "sidecar:1"],
    )
}

/// Prefetches in the pod's namespace with `gate_rollouts` that select the web Deployment
/// (name, gate_timeout, prefetched_through), in this order.
fn gating(entries: &[(&str, i64, Option<&str>)]) -> FakePrefetches {
    FakePrefetches {
        synced: true,
        prefetches: entries
            .iter()
            .map(|(name, timeout, through)| {
                let facts = PrefetchFacts {
                    selector: [("app".to_string(), "web".to_string())].into(),
                    gate_timeout: Some(*timeout),
                    prefetched_through: through.map(t),
                    kinds: WorkloadKind::ALL.into(),
                };
                ("default".to_string(), name.to_string(), facts)
            })
            .collect(),
    }
}

struct Case {
    deployment: Option<WorkloadFacts>,
    live: bool,
    gating: FakePrefetches,
    leader: Option<Timestamp>,
    now: Timestamp,
}

impl Case {
    fn new() -> Self {
        Self {
            deployment: Some(signalled()),
            live: false,
            gating: gating(&[("pf", 900, None)]),
            leader: Some(t("2026-11-22T02:59:58Z")),
            now: t(NOW),
        }
    }
    fn decide(&self, pod: &PodFacts) -> Decision {
        decide(
            pod,
            &Inputs {
                workload: self.deployment.as_ref(),
                live: self.live,
                prefetches: &self.gating,
                leader_renewed: self.leader,
                now: self.now,
            },
        )
    }
}

fn passes(decision: Decision, why: &str) {
    match decision {
        Decision::Pass(reason) => assert!(reason.contains(why), "{reason:?} lacks {why:?}"),
        other => panic!("expected a pass ({why}), got {other:?}"),
    }
}

fn gated_by(decision: &Decision) -> &str {
    match decision {
        Decision::Gate { prefetch, .. } => prefetch,
        other => panic!("expected a gate, got {other:?}"),
    }
}

#[test]
fn a_rollout_pod_is_gated_with_gate_label_and_annotation() {
    let pod = web_pod();
    assert_eq!(pod.workload, Ok(web()));
    let decision = Case::new().decide(&pod);
    let Decision::Gate {
        prefetch,
        workload,
        until,
        patch,
    } = decision
    else {
        panic!("not gated: {decision:?}");
    };
    assert_eq!((prefetch.as_str(), workload), ("pf", web()));
    assert_eq!(until, t("2026-11-22T03:14:00Z"));
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": "cache.techsquad.rocks/prefetch"}]},
            {"op": "add", "path": "/metadata/labels/cache.techsquad.rocks~1gated-by", "value": "pf"},
            {"op": "add", "path": "/metadata/annotations", "value": {
                "cache.techsquad.rocks/gated-for": "2026-11-22T02:59:00.000000Z",
                "cache.techsquad.rocks/gated-until": "2026-11-22T03:14:00.000000Z"}}
        ])
    );
    // The patch applies to the pod as the API server holds it.
    let mut object = pod_value(
        rs_owner("web-7d4b9c8f6"),
        Some("7d4b9c8f6"),
        &["nginx:1.25"],
    );
    json_patch::patch(&mut object, &patch).unwrap();
    assert_eq!(object["metadata"]["labels"][GATED_BY_LABEL], "pf");
}

#[test]
fn gates_are_appended_never_duplicated() {
    let mut pod = web_pod();
    pod.gates = Some(vec!["example.com/other".into()]);
    pod.has_annotations = true;
    let patch = gate_patch(&pod, "pf", t(NOW), t(NOW));
    assert_eq!(
        serde_json::to_value(&patch).unwrap()[0],
        json!({"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": SCHEDULING_GATE}})
    );
    let value = serde_json::to_value(&patch).unwrap();
    assert_eq!(
        (&value[2]["path"], &value[3]["path"]),
        (
            &json!("/metadata/annotations/cache.techsquad.rocks~1gated-for"),
            &json!("/metadata/annotations/cache.techsquad.rocks~1gated-until")
        )
    );
    pod.gates = Some(vec![SCHEDULING_GATE.into()]);
    let ops = gate_patch(&pod, "pf", t(NOW), t(NOW)).0;
    assert_eq!(
        ops.len(),
        3,
        "our gate already there: only label and annotations"
    );
    pod.gates = Some(vec![]);
    let value = serde_json::to_value(gate_patch(&pod, "pf", t(NOW), t(NOW))).unwrap();
    assert_eq!(value[0]["path"], "/spec/schedulingGates");
}

#[test]
fn owner_and_template_hash_edge_cases() {
    let read =
        |owner: Value, hash: Option<&str>| facts(pod_value(owner, hash, &["nginx:1.25"])).workload;
    assert_eq!(read(rs_owner("web-abc"), Some("abc")), Ok(web()));
    assert_eq!(
        read(rs_owner("my-web-app-abc"), Some("abc")),
        Ok(WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "my-web-app".into()
        })
    );
    for (owner, hash, why) in [
        (json!(null), Some("abc"), "no controller owner"),
        (json!([]), Some("abc"), "no controller owner"),
        (
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u"}]),
            Some("abc"),
            "no controller owner",
        ),
        (
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u", "controller": false}]),
            Some("abc"),
            "no controller owner",
        ),
        (
            json!([{"apiVersion": "example.com/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u", "controller": true}]),
            Some("abc"),
            "not a workload that rolls out",
        ),
        (rs_owner("web-abc"), None, "no pod-template-hash label"),
        (rs_owner("web-abc"), Some(""), "no pod-template-hash label"),
        (
            rs_owner("web-xyz"),
            Some("abc"),
            "not named <deployment>-abc",
        ),
        (rs_owner("webabc"), Some("abc"), "not named"),
        (rs_owner("-abc"), Some("abc"), "not named"),
        (rs_owner("abc"), Some("abc"), "not named"),
    ] {
        let got = read(owner.clone(), hash);
        assert!(
            got.as_ref().is_err_and(|e| e.contains(why)),
            "{owner} {hash:?}: {got:?}"
        );
    }
    // A non-controller owner beside a controller ReplicaSet does not matter.
    let both = json!([
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "c"},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "u", "controller": true}
    ]);
    assert_eq!(read(both, Some("abc")), Ok(web()));
    // And every pod without a rollout workload passes.
    let pod = facts(pod_value(json!(null), None, &["nginx:1.25"]));
    passes(Case::new().decide(&pod), "no controller owner");
}

#[test]
fn only_pod_creates_are_considered() {
    let pod = pod_value(rs_owner("web-abc"), Some("abc"), &["nginx"]);
    for (kind, op) in [
        ("Pod", "UPDATE"),
        ("Pod", "DELETE"),
        ("Deployment", "CREATE"),
    ] {
        assert!(matches!(
            read(&review_body(kind, op, pod.clone())).unwrap(),
            Read::NotForUs(..)
        ));
    }
    assert!(matches!(
        read(&review_body("Pod", "CREATE", json!(null))).unwrap(),
        Read::NotForUs(..)
    ));
    assert!(read(b"{not json").is_err());
    assert!(
        read(br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}"#).is_err()
    );
    // A wrongly typed field is a malformed review, never a panic.
    assert!(
        read(&review_body(
            "Pod",
            "CREATE",
            json!({"spec": {"containers": 3}})
        ))
        .is_err()
    );
}

#[test]
fn several_prefetches_the_first_not_yet_prefetched_gates() {
    let pod = web_pod();
    let mut case = Case::new();
    case.gating = gating(&[("a", 900, None), ("b", 900, None)]);
    assert_eq!(gated_by(&case.decide(&pod)), "a");
    case.gating = gating(&[("a", 900, Some("2026-11-22T02:59:00Z")), ("b", 900, None)]);
    assert_eq!(gated_by(&case.decide(&pod)), "b");
    case.gating = gating(&[("a", 60, None), ("b", 900, None)]);
    assert_eq!(
        gated_by(&case.decide(&pod)),
        "b",
        "a's gate_timeout is over"
    );
}

#[test]
fn expired_signal_passes() {
    let pod = web_pod();
    let mut case = Case::new();
    case.now = t("2026-11-22T03:14:00Z");
    case.leader = Some(case.now);
    passes(case.decide(&pod), "signal older than gate_timeout 900s");
    case.now = t("2026-11-22T03:13:59Z");
    gated_by(&case.decide(&pod));
}

#[test]
fn a_signal_already_prefetched_passes() {
    let pod = web_pod();
    let mut case = Case::new();
    case.gating = gating(&[("pf", 900, Some("2026-11-22T02:59:00Z"))]);
    passes(case.decide(&pod), "already prefetched");
    case.gating = gating(&[("pf", 900, Some("2026-11-22T03:00:00Z"))]);
    passes(case.decide(&pod), "already prefetched");
    // An older rollout prefetched does not cover this one.
    case.gating = gating(&[("pf", 900, Some("2026-11-22T02:58:59Z"))]);
    gated_by(&case.decide(&pod));
}

#[test]
fn a_pod_using_none_of_the_signalled_images_passes() {
    let pod = facts(pod_value(rs_owner("web-abc"), Some("abc"), &["sidecar:1"]));
    passes(Case::new().decide(&pod), "none of the rollout's new images");
    let pod = facts(pod_value(rs_owner("web-abc"), Some("abc"), &[]));
    passes(Case::new().decide(&pod), "no image");
    // Spelled differently, normalized the same: gated.
    let pod = facts(pod_value(
        rs_owner("web-abc"),
        Some("abc"),
        &["docker.io/library/nginx:1.25", "sidecar:1"],
    ));
    gated_by(&Case::new().decide(&pod));
}

#[test]
fn no_signal_or_no_gating_prefetch_passes() {
    let pod = web_pod();
    let mut case = Case::new();
    case.deployment = Some(deployment(None, &[], &["nginx:1.25", "sidecar:1"]));
    passes(case.decide(&pod), "no rollout signal");
    // Written as its template: decided without normalizing a reference.
    assert!(pod.images.get().is_none());
    let mut case = Case::new();
    case.gating = gating(&[]);
    passes(case.decide(&pod), "no Prefetch with gate_rollouts");
}

#[test]
fn no_fresh_leader_passes() {
    let pod = web_pod();
    let mut case = Case::new();
    case.leader = None;
    passes(case.decide(&pod), "no controller holds the Lease");
    case.leader = Some(t("2026-11-22T02:59:29Z"));
    passes(case.decide(&pod), "no controller leads");
    case.leader = Some(t("2026-11-22T02:59:30Z"));
    gated_by(&case.decide(&pod));
}

#[test]
fn a_cache_behind_the_rollout_asks_for_one_live_read() {
    let pod = web_pod();
    let mut case = Case::new();
    case.deployment = Some(deployment(None, &[], &["nginx:1.24", "sidecar:1"]));
    assert_eq!(case.decide(&pod), Decision::ReadLive { workload: web() });
    case.deployment = None;
    assert!(matches!(case.decide(&pod), Decision::ReadLive { .. }));
    // After the live read: decided, never another read.
    case.live = true;
    passes(case.decide(&pod), "Deployment/web not found");
    case.deployment = Some(deployment(None, &[], &["nginx:1.24", "sidecar:1"]));
    passes(case.decide(&pod), "older revision");
    case.deployment = Some(signalled());
    gated_by(&case.decide(&pod));
}

#[test]
fn bound_pods_pass() {
    let mut value = pod_value(rs_owner("web-abc"), Some("abc"), &["nginx:1.25"]);
    value["spec"]["nodeName"] = json!("worker-1");
    passes(Case::new().decide(&facts(value)), "already bound");
}

/// A pod of `kind`'s controller named `owner`, with `images`.
fn owned_pod(api_version: &str, kind: &str, owner: &str, images: &[&str]) -> PodFacts {
    let owners = json!([{"apiVersion": api_version, "kind": kind, "name": owner, "uid": "u", "controller": true}]);
    facts(pod_value(owners, None, images))
}

#[test]
fn pods_of_statefulsets_daemonsets_and_cronjob_jobs_are_gated_for_their_workload() {
    let cases = [
        (
            "apps/v1",
            "StatefulSet",
            "db",
            WorkloadKind::StatefulSet,
            "db",
        ),
        (
            "apps/v1",
            "DaemonSet",
            "agent",
            WorkloadKind::DaemonSet,
            "agent",
        ),
        (
            "batch/v1",
            "Job",
            "report-29431260",
            WorkloadKind::CronJob,
            "report",
        ),
    ];
    for (api_version, kind, owner, workload_kind, name) in cases {
        let pod = owned_pod(api_version, kind, owner, &["nginx:1.25", "sidecar:1"]);
        let expected = WorkloadRef {
            kind: workload_kind,
            name: name.into(),
        };
        assert_eq!(pod.workload, Ok(expected.clone()));
        match Case::new().decide(&pod) {
            Decision::Gate { workload, .. } => assert_eq!(workload, expected),
            other => panic!("{kind} pod not gated: {other:?}"),
        }
        // A Prefetch whose kinds leave this kind out does not gate it.
        let mut case = Case::new();
        case.gating.prefetches[0].2.kinds = [WorkloadKind::Deployment].into();
        passes(case.decide(&pod), "no Prefetch with gate_rollouts selects");
    }
    let by_hand = owned_pod("batch/v1", "Job", "migrate", &["nginx:1.25"]);
    passes(Case::new().decide(&by_hand), "not a CronJob's");
}

#[test]
fn an_image_volume_counts_as_an_image_of_the_pod() {
    let mut value = pod_value(rs_owner("web-abc"), Some("abc"), &["sidecar:1"]);
    value["spec"]["volumes"] = json!([{"name": "weights", "image": {"reference": "nginx:1.25"}}, {"name": "tmp", "emptyDir": {}}]);
    let pod = facts(value);
    assert!(pod.references.contains("nginx:1.25"));
    gated_by(&Case::new().decide(&pod));
}
