use super::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prefetch_common::PullFailure;
use serde_json::Value;

use crate::outcome::Outcome;

const KEY: &str = DEFAULT_WARMUP_TAINT;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn node_json(name: &str, taints: Value, ready: &str) -> Value {
    json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "41",
                     "creationTimestamp": "2026-11-22T10:00:00Z", "labels": {"kubernetes.io/os": "linux"}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": ready}]}
    })
}

fn node(name: &str, taints: Value) -> Node {
    serde_json::from_value(node_json(name, taints, "True")).unwrap()
}

fn warming_taint() -> Value {
    json!({"key": KEY, "effect": "NoSchedule"})
}

#[test]
fn warming_means_that_key_with_no_schedule() {
    assert!(is_warming(&node("n", json!([warming_taint()])), KEY));
    assert!(is_warming(
        &node(
            "n",
            json!([{"key": KEY, "value": "true", "effect": "NoSchedule"}])
        ),
        KEY
    ));
    assert!(!is_warming(
        &node("n", json!([{"key": KEY, "effect": "NoExecute"}])),
        KEY
    ));
    assert!(!is_warming(
        &node("n", json!([{"key": "other", "effect": "NoSchedule"}])),
        KEY
    ));
    assert!(!is_warming(&node("n", json!(null)), KEY));
    assert_eq!(
        serde_json::to_value(toleration(KEY)).unwrap(),
        json!({"key": KEY, "operator": "Exists", "effect": "NoSchedule"})
    );
}

#[test]
fn not_ready_cordoned_and_transient_taints_hold_a_node_back() {
    assert_eq!(held_back(&node("n", json!([warming_taint()])), KEY), None);
    let not_ready: Node =
        serde_json::from_value(node_json("n", json!([warming_taint()]), "False")).unwrap();
    assert_eq!(held_back(&not_ready, KEY).as_deref(), Some("not Ready"));
    let mut cordoned = node("n", json!([warming_taint()]));
    cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
    assert_eq!(held_back(&cordoned, KEY).as_deref(), Some("cordoned"));
    let pressure = crate::eligibility::under_disk_pressure(node("n", json!([warming_taint()])));
    assert_eq!(held_back(&pressure, KEY).as_deref(), Some("DiskPressure"));
    // Held, a node no Prefetch targets (the planner skips it) keeps its taint until the
    // timeout, instead of being lifted as untargeted.
    let created = Some(t("2026-11-22T10:00:00Z"));
    let timeout = Duration::from_secs(900);
    assert_eq!(
        decide(
            created,
            held_back(&pressure, KEY),
            &[],
            t("2026-11-22T10:01:00Z"),
            timeout
        ),
        Verdict::Warming {
            open: vec![],
            held: Some("DiskPressure".into())
        }
    );
    assert!(
        decide(
            created,
            held_back(&pressure, KEY),
            &[],
            t("2026-11-22T10:15:00Z"),
            timeout
        )
        .lifts()
    );
    for transient in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/network-unavailable",
        "node.cloudprovider.kubernetes.io/uninitialized",
        "startup-taint.cluster-autoscaler.kubernetes.io/cni",
        "karpenter.sh/unregistered",
        "node.cilium.io/agent-not-ready",
    ] {
        let n = node(
            "n",
            json!([warming_taint(), {"key": transient, "effect": "NoSchedule"}]),
        );
        assert_eq!(
            held_back(&n, KEY),
            Some(format!("taint {transient}:NoSchedule")),
            "{transient}"
        );
    }
    // A permanent taint is a Prefetch's business (tolerated or not), not a hold.
    let dedicated = node(
        "n",
        json!([warming_taint(), {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
    );
    assert_eq!(held_back(&dedicated, KEY), None);
    // PreferNoSchedule never keeps pods off.
    let soft = node(
        "n",
        json!([warming_taint(), {"key": "node.kubernetes.io/not-ready", "effect": "PreferNoSchedule"}]),
    );
    assert_eq!(held_back(&soft, KEY), None);
    // The warmup taint under cluster-autoscaler's startup prefix is still the warmup taint.
    let ca_key = "startup-taint.cluster-autoscaler.kubernetes.io/warming";
    let ca = node("n", json!([{"key": ca_key, "effect": "NoSchedule"}]));
    assert_eq!(held_back(&ca, ca_key), None);
}

fn wish(prefetch: &str, images: &[&str], open: &[&str]) -> Wish {
    Wish {
        prefetch: prefetch.into(),
        images: images.iter().map(|s| s.to_string()).collect(),
        open: open.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn the_verdicts() {
    let created = Some(t("2026-11-22T10:00:00Z"));
    let timeout = Duration::from_secs(900);
    let early = t("2026-11-22T10:05:00Z");
    let late = t("2026-11-22T10:15:00Z");

    // Nothing targets the node: warm at once.
    assert_eq!(
        decide(created, None, &[], early, timeout),
        Verdict::Untargeted
    );
    // Every pair done across both Prefetches (the shared image counted once).
    let done = [
        wish("a/p", &["nginx", "envoy"], &[]),
        wish("b/q", &["redis", "envoy"], &[]),
    ];
    assert_eq!(
        decide(created, None, &done, early, timeout),
        Verdict::Warmed { images: 3 }
    );
    // One Prefetch still open: warming, and which images.
    let half = [
        wish("a/p", &["nginx"], &[]),
        wish("b/q", &["redis", "envoy"], &["redis", "envoy"]),
    ];
    assert_eq!(
        decide(created, None, &half, early, timeout),
        Verdict::Warming {
            open: vec!["envoy".into(), "redis".into()],
            held: None
        }
    );
    // Past the timeout (from creation): lifted, naming what was missing.
    assert_eq!(
        decide(created, None, &half, late, timeout),
        Verdict::TimedOut {
            missing: vec!["envoy".into(), "redis".into()],
            held: None
        }
    );
    // Held back: neither warm nor untargeted, whatever the wishes; only the timeout lifts.
    let held = Some("not Ready".to_string());
    assert_eq!(
        decide(created, held.clone(), &[], early, timeout),
        Verdict::Warming {
            open: vec![],
            held: held.clone()
        }
    );
    assert_eq!(
        decide(created, held.clone(), &done, early, timeout),
        Verdict::Warming {
            open: vec![],
            held: held.clone()
        }
    );
    assert_eq!(
        decide(created, held.clone(), &[], late, timeout),
        Verdict::TimedOut {
            missing: vec![],
            held
        }
    );
    // Done beats timed out.
    assert_eq!(
        decide(created, None, &done, late, timeout),
        Verdict::Warmed { images: 3 }
    );
    // No creation time (never from a real API server): no timeout.
    assert!(!decide(None, None, &half, late, timeout).lifts());
    assert_eq!(deadline(created, timeout), Some(late));
}

#[test]
fn a_node_is_past_its_deadline_from_the_timeout_on() {
    let created = Some(t("2026-01-01T00:00:00Z"));
    let timeout = Duration::from_secs(900);
    assert!(!past_deadline(created, timeout, t("2026-01-01T00:14:59Z")));
    assert!(past_deadline(created, timeout, t("2026-01-01T00:15:00Z")));
    assert!(past_deadline(created, timeout, t("2026-01-01T01:00:00Z")));
    // No creation time: no deadline.
    assert!(!past_deadline(None, timeout, t("2026-01-01T01:00:00Z")));
}

#[test]
fn events_say_what_happened() {
    let warmed = event(&Verdict::Warmed { images: 3 }, KEY, Duration::from_secs(42)).unwrap();
    assert_eq!(
        warmed,
        (
            "Normal",
            "Warmed",
            format!("3 image(s) in 42 s; taint {KEY} removed")
        )
    );
    let untargeted = event(&Verdict::Untargeted, KEY, Duration::from_secs(1)).unwrap();
    assert_eq!(untargeted.1, "Warmed");
    assert!(untargeted.2.contains("no Prefetch targets this node"));
    let missing: Vec<String> = (0..12).map(|i| format!("img-{i:02}")).collect();
    let (type_, reason, note) = event(
        &Verdict::TimedOut {
            missing,
            held: Some("not Ready".into()),
        },
        KEY,
        Duration::from_secs(900),
    )
    .unwrap();
    assert_eq!((type_, reason), ("Warning", "WarmupTimedOut"));
    assert!(
        note.starts_with("still warming after 900 s: missing img-00, img-01"),
        "{note}"
    );
    assert!(note.contains("img-09 and 2 more; node not Ready"), "{note}");
    assert!(
        event(
            &Verdict::Warming {
                open: vec![],
                held: None
            },
            KEY,
            Duration::ZERO
        )
        .is_none()
    );
}

fn apply(node: &Node, patch: &json_patch::Patch) -> Result<Value, json_patch::PatchError> {
    let mut doc = serde_json::to_value(node).unwrap();
    json_patch::patch(&mut doc, patch).map(|()| doc)
}

#[test]
fn the_patch_removes_exactly_the_warmup_taint() {
    let n = node(
        "n",
        json!([
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": KEY, "effect": "NoExecute"},
            {"key": KEY, "value": "x", "effect": "NoSchedule"},
            {"key": "zone", "effect": "PreferNoSchedule"}
        ]),
    );
    let patch = lift_patch(&n, KEY).unwrap().unwrap();
    let after = apply(&n, &patch).unwrap();
    assert_eq!(
        after["spec"]["taints"],
        json!([
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": KEY, "effect": "NoExecute"},
            {"key": "zone", "effect": "PreferNoSchedule"}
        ])
    );
    let mut before = serde_json::to_value(&n).unwrap();
    before["spec"]["taints"] = after["spec"]["taints"].clone();
    assert_eq!(before, after, "nothing else changes");
}

#[test]
fn the_patch_is_guarded_by_the_version_read() {
    let n = node(
        "n",
        json!([{"key": "a", "effect": "NoSchedule"}, warming_taint()]),
    );
    let patch = lift_patch(&n, KEY).unwrap().unwrap();
    // Someone else changed the node meanwhile (a new version, a taint added in front).
    let mut changed = n.clone();
    changed.metadata.resource_version = Some("42".into());
    assert!(apply(&changed, &patch).is_err());
    let mut shifted = n.clone();
    shifted
        .spec
        .as_mut()
        .unwrap()
        .taints
        .as_mut()
        .unwrap()
        .insert(
            0,
            serde_json::from_value(json!({"key": "b", "effect": "NoSchedule"})).unwrap(),
        );
    assert!(
        apply(&shifted, &patch).is_err(),
        "index moved, same version faked"
    );
    // Already lifted: nothing to do.
    assert_eq!(
        lift_patch(
            &node("n", json!([{"key": "a", "effect": "NoSchedule"}])),
            KEY
        ),
        Ok(None)
    );
    assert_eq!(lift_patch(&node("n", json!(null)), KEY), Ok(None));
    let mut no_version = n.clone();
    no_version.metadata.resource_version = None;
    assert_eq!(
        lift_patch(&no_version, KEY),
        Err(PatchError::NoResourceVersion)
    );
}

fn prefetch(name: &str, filter: &str, app: &str) -> Prefetch {
    let mut p = Prefetch::new(
        name,
        serde_json::from_value(json!({"filter_by_labels": {"app": app}, "node_filter": filter}))
            .unwrap(),
    );
    p.metadata.namespace = Some("default".into());
    p
}

fn deployment(app: &str, images: &[&str]) -> Deployment {
    let containers: Vec<Value> = images
        .iter()
        .map(|i| json!({"name": "c", "image": i}))
        .collect();
    serde_json::from_value(
        json!({"metadata": {"name": app, "namespace": "default", "labels": {"app": app}},
            "spec": {"selector": {}, "template": {"spec": {"containers": containers}}}}),
    )
    .unwrap()
}

fn images_on(node: &Node) -> Cow<'_, [String]> {
    Cow::Owned(crate::plan::node_images(node).into_iter().collect())
}

#[test]
fn wishes_gather_every_prefetch_that_targets_each_warming_node() {
    let nginx = "docker.io/library/nginx:1.25";
    let redis = "docker.io/library/redis:7";
    let mut worker: Value = node_json("worker-1", json!([warming_taint()]), "True");
    worker["status"]["images"] = json!([{"names": [nginx]}]);
    let worker: Node = serde_json::from_value(worker).unwrap();
    let gpu = node("gpu-1", json!([warming_taint()]));
    let web = prefetch("web", "worker", "web");
    let cache = prefetch("cache", "", "cache");
    let deployments = [
        deployment("web", &["nginx:1.25"]),
        deployment("cache", &["redis:7"]),
    ];
    let mut ledger = PullLedger::default();
    let deployment_refs: Vec<Workload<'_>> = deployments.iter().map(Workload::from).collect();
    let wishes_with = |ledger: &PullLedger| {
        wishes(
            &[&web, &cache],
            &deployment_refs,
            &[&worker, &gpu],
            KEY,
            images_on,
            ledger,
        )
    };
    let got = wishes_with(&ledger);
    assert_eq!(
        got["worker-1"],
        [
            wish("default/web", &[nginx], &[]),
            wish("default/cache", &[redis], &[redis])
        ]
    );
    assert_eq!(got["gpu-1"], [wish("default/cache", &[redis], &[redis])]);

    // redis failed on worker-1: settled for the warm decision.
    ledger.record(
        "worker-1",
        "uid-worker-1",
        redis,
        &Outcome::Failed {
            reason: "ErrImagePull".into(),
            message: String::new(),
        },
    );
    let got = wishes_with(&ledger);
    assert!(got["worker-1"].iter().all(|w| w.open.is_empty()));
    assert_eq!(got["gpu-1"][0].open, [redis]);
}

#[test]
fn status_failures_settle_pairs_only_for_the_same_node() {
    let ledger = PullLedger::default();
    let n = node("n", json!([warming_taint()])); // created 10:00:00
    let status = |round_start: &str| PrefetchStatus {
        last_round_start: Some(Time(t(round_start))),
        failures: vec![PullFailure {
            node: "n".into(),
            image: "nginx".into(),
            reason: "ErrImagePull".into(),
            message: String::new(),
        }],
        ..Default::default()
    };
    assert!(settled(
        &ledger,
        &n,
        Some(&status("2026-11-22T10:00:30Z")),
        "nginx"
    ));
    assert!(!settled(
        &ledger,
        &n,
        Some(&status("2026-11-22T10:00:30Z")),
        "redis"
    ));
    assert!(
        !settled(&ledger, &n, Some(&status("2026-11-22T09:59:00Z")), "nginx"),
        "a round older than the node reported on its predecessor"
    );
    assert!(!settled(&ledger, &n, None, "nginx"));
}

#[test]
fn open_warming_targets_are_the_warming_ones_with_open_pairs() {
    let plan = ImagePlan {
        images: vec!["nginx".into()],
        targets: vec![
            crate::plan::NodePlan {
                node: "a".into(),
                pull: vec!["nginx".into()],
                present: vec![],
                warming: true,
                ..Default::default()
            },
            crate::plan::NodePlan {
                node: "b".into(),
                pull: vec!["nginx".into()],
                present: vec![],
                warming: false,
                ..Default::default()
            },
            crate::plan::NodePlan {
                node: "c".into(),
                pull: vec![],
                present: vec!["nginx".into()],
                warming: true,
                ..Default::default()
            },
            crate::plan::NodePlan {
                node: "d".into(),
                pull: vec!["nginx".into()],
                present: vec![],
                warming: true,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let open = open_warming_targets(&plan, |node, _| node == "d");
    assert_eq!(open, ["a".to_string()].into());
}

#[test]
fn a_failed_removal_backs_off_doubling_up_to_the_cap() {
    let (first, max) = (Duration::from_secs(2), Duration::from_secs(60));
    let waits: Vec<u64> = (0..=8)
        .map(|failures| retry_backoff(failures, first, max).as_secs())
        .collect();
    // No failure yet waits as one does.
    assert_eq!(waits, [2, 2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(retry_backoff(u32::MAX, first, max), max);
    assert_eq!(
        retry_backoff(6, first, Duration::from_secs(3600)).as_secs(),
        64,
        "the doubling stops at the sixth failure"
    );
    assert_eq!(retry_backoff(u32::MAX, first, Duration::MAX).as_secs(), 64);
}
