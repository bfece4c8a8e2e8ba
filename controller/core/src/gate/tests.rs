use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use prefetch_common::{PrefetchSpec, PrefetchStatus, RolloutRecord};

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn pod(gates: &[&str], until: Option<&str>) -> Pod {
    let mut value = json!({"metadata": {"name": "web-abc-1", "namespace": "default",
            "labels": {"cache.techsquad.rocks/gated-by": "pf"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}],
                     "schedulingGates": gates.iter().map(|g| json!({"name": g})).collect::<Vec<_>>()}});
    if let Some(until) = until {
        value["metadata"]["annotations"] = json!({GATED_UNTIL_ANNOTATION: until});
    }
    serde_json::from_value(value).unwrap()
}

fn prefetch(gate: bool, rollout: Option<(&str, Option<&str>)>) -> Prefetch {
    let mut p = Prefetch::new(
        "pf",
        PrefetchSpec {
            filter_by_labels: [("app".into(), "web".into())].into(),
            gate_rollouts: Some(gate),
            gate_timeout: Some(900),
            ..Default::default()
        },
    );
    p.status = rollout.map(|(requested, prefetched)| PrefetchStatus {
        last_rollout: Some(RolloutRecord {
            deployment: "web".into(),
            workload: Some("Deployment/web".into()),
            images: vec!["docker.io/library/nginx:1.25".into()],
            requested_at: Some(MicroTime(t(requested))),
            observed_at: None,
            prefetched_at: prefetched.map(|p| MicroTime(t(p))),
        }),
        ..Default::default()
    });
    p
}

fn nothing_done(_: &str, _: &str) -> bool {
    false
}

/// No pull has done anything yet.
const NOTHING: Progress<'static> = Progress {
    node_done: &nothing_done,
    done_everywhere: None,
};

/// Nodes done as `node_done` says; nothing done everywhere.
fn on(node_done: &dyn Fn(&str, &str) -> bool) -> Progress<'_> {
    Progress {
        node_done,
        done_everywhere: None,
    }
}

const UNTIL: &str = "2026-11-22T03:15:00Z"; // signal at 03:00:00, gate_timeout 900
const NOW: &str = "2026-11-22T03:01:00Z";

#[test]
fn held_until_the_rollout_is_prefetched() {
    let gated = pod(&[SCHEDULING_GATE], Some(UNTIL));
    let now = t(NOW);
    let running = prefetch(true, Some(("2026-11-22T03:00:00Z", None)));
    assert_eq!(
        verdict(&gated, Some(&running), &NOTHING, now),
        Verdict::Hold { until: t(UNTIL) }
    );
    let done = prefetch(
        true,
        Some(("2026-11-22T03:00:00Z", Some("2026-11-22T03:00:40Z"))),
    );
    assert_eq!(
        verdict(&gated, Some(&done), &NOTHING, now),
        Verdict::Release(Release::Prefetched)
    );
    // A later rollout done covers this pod; an earlier one does not.
    let later = prefetch(
        true,
        Some(("2026-11-22T03:00:30Z", Some("2026-11-22T03:00:50Z"))),
    );
    assert_eq!(
        verdict(&gated, Some(&later), &NOTHING, now),
        Verdict::Release(Release::Prefetched)
    );
    let earlier = prefetch(
        true,
        Some(("2026-11-22T02:59:59Z", Some("2026-11-22T03:00:50Z"))),
    );
    assert_eq!(
        verdict(&gated, Some(&earlier), &NOTHING, now),
        Verdict::Hold { until: t(UNTIL) }
    );
    assert_eq!(
        verdict(&gated, Some(&prefetch(true, None)), &NOTHING, now),
        Verdict::Hold { until: t(UNTIL) }
    );
}

/// A pod the current webhook gated: `gated-for` names its signal to the microsecond.
fn pod_gated_for(signal: &str, until: &str) -> Pod {
    let mut p = pod(&[SCHEDULING_GATE], Some(until));
    p.metadata
        .annotations
        .get_or_insert_default()
        .insert(GATED_FOR_ANNOTATION.into(), signal.into());
    p
}

#[test]
fn an_earlier_signal_in_the_same_second_releases_nothing() {
    // Two rollouts at 03:00:00.2 and 03:00:00.7; the pod is gated for the second.
    let gated = pod_gated_for("2026-11-22T03:00:00.700000Z", "2026-11-22T03:15:00.700000Z");
    let first_done = prefetch(
        true,
        Some(("2026-11-22T03:00:00.2Z", Some("2026-11-22T03:00:30Z"))),
    );
    assert_eq!(
        verdict(&gated, Some(&first_done), &NOTHING, t(NOW)),
        Verdict::Hold {
            until: t("2026-11-22T03:15:00.7Z")
        }
    );
    let second_done = prefetch(
        true,
        Some(("2026-11-22T03:00:00.7Z", Some("2026-11-22T03:00:40Z"))),
    );
    assert_eq!(
        verdict(&gated, Some(&second_done), &NOTHING, t(NOW)),
        Verdict::Release(Release::Prefetched)
    );
}

#[test]
fn gated_for_outranks_a_gate_timeout_changed_since() {
    // Gated with gate_timeout 900 for the 03:00:00 signal; the Prefetch now says 900 too,
    // but a pod gated under gate_timeout 3600 would derive 02:15 without the annotation.
    let gated = pod_gated_for("2026-11-22T03:00:00Z", "2026-11-22T04:00:00Z");
    let earlier_done = prefetch(
        true,
        Some(("2026-11-22T02:30:00Z", Some("2026-11-22T02:31:00Z"))),
    );
    assert_eq!(
        verdict(&gated, Some(&earlier_done), &NOTHING, t(NOW)),
        Verdict::Hold {
            until: t("2026-11-22T04:00:00Z")
        }
    );
    // Unreadable gated-for: the old derivation (until less gate_timeout = 03:45) holds too.
    let mut unreadable = gated.clone();
    unreadable
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(GATED_FOR_ANNOTATION.into(), "soon".into());
    assert!(matches!(
        verdict(&unreadable, Some(&earlier_done), &NOTHING, t(NOW)),
        Verdict::Hold { .. }
    ));
}

#[test]
fn released_at_gated_until_whatever_else() {
    let gated = pod(&[SCHEDULING_GATE], Some(UNTIL));
    let running = prefetch(true, Some(("2026-11-22T03:00:00Z", None)));
    assert_eq!(
        verdict(&gated, Some(&running), &NOTHING, t("2026-11-22T03:14:59Z")),
        Verdict::Hold { until: t(UNTIL) }
    );
    for p in [Some(&running), None] {
        assert_eq!(
            verdict(&gated, p, &NOTHING, t(UNTIL)),
            Verdict::Release(Release::TimedOut)
        );
    }
    for broken in [None, Some("soon")] {
        assert_eq!(
            verdict(
                &pod(&[SCHEDULING_GATE], broken),
                Some(&running),
                &NOTHING,
                t(NOW)
            ),
            Verdict::Release(Release::TimedOut)
        );
    }
}

#[test]
fn released_when_the_prefetch_is_gone_or_stops_gating() {
    let gated = pod(&[SCHEDULING_GATE], Some(UNTIL));
    assert_eq!(
        verdict(&gated, None, &NOTHING, t(NOW)),
        Verdict::Release(Release::PrefetchRemoved)
    );
    assert_eq!(
        verdict(&gated, Some(&prefetch(false, None)), &NOTHING, t(NOW)),
        Verdict::Release(Release::GateDisabled)
    );
    let mut cron_only = prefetch(true, None);
    cron_only.spec.kinds = Some(vec![WorkloadKind::CronJob]);
    assert_eq!(
        verdict(&gated, Some(&cron_only), &NOTHING, t(NOW)),
        Verdict::Release(Release::GateDisabled),
        "kinds no longer lists Deployment"
    );
}

#[test]
fn pods_without_our_gate_are_left_alone() {
    for gates in [&[][..], &["example.com/other"][..]] {
        let p = pod(gates, Some(UNTIL));
        assert_eq!(verdict(&p, None, &NOTHING, t(UNTIL)), Verdict::NotGated);
        assert_eq!(release_patch(&p), None);
    }
}

#[test]
fn the_patch_tests_the_gates_and_removes_only_ours() {
    let p = pod(
        &["a.example/one", SCHEDULING_GATE, "b.example/two"],
        Some(UNTIL),
    );
    let patch = release_patch(&p).unwrap();
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            {"op": "test", "path": "/spec/schedulingGates", "value": [
                {"name": "a.example/one"}, {"name": SCHEDULING_GATE}, {"name": "b.example/two"}]},
            {"op": "remove", "path": "/spec/schedulingGates/1"}
        ])
    );
    let mut object = serde_json::to_value(&p).unwrap();
    let before = object.clone();
    json_patch::patch(&mut object, &patch).unwrap();
    assert_eq!(
        object["spec"]["schedulingGates"],
        json!([{"name": "a.example/one"}, {"name": "b.example/two"}])
    );
    object["spec"]["schedulingGates"] = before["spec"]["schedulingGates"].clone();
    assert_eq!(object, before, "nothing but the gate changed");
    // A gate list changed since it was read fails the test.
    let mut changed = before.clone();
    changed["spec"]["schedulingGates"] = json!([{"name": SCHEDULING_GATE}]);
    assert!(json_patch::patch(&mut changed, &patch).is_err());
}

/// A gated pod of `owner` (api version, kind, name), pinned to `node` when given.
fn owned_pod(owner: (&str, &str, &str), node: Option<&str>) -> Pod {
    let mut p = pod(&[SCHEDULING_GATE], Some(UNTIL));
    let (api_version, kind, name) = owner;
    let mut value = serde_json::to_value(&p).unwrap();
    value["metadata"]["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind,
            "name": name, "uid": "u", "controller": true}]);
    value["spec"]["volumes"] = json!([{"name": "w", "image": {"reference": "weights:v2"}}]);
    if let Some(node) = node {
        value["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
    }
    p = serde_json::from_value(value).unwrap();
    p
}

#[test]
fn a_daemonset_pod_is_released_when_its_own_node_is_done() {
    let agent = owned_pod(("apps/v1", "DaemonSet", "agent"), Some("worker-2"));
    assert_eq!(pinned_node(&agent), Some("worker-2"));
    let running = prefetch(true, Some(("2026-11-22T03:00:00Z", None)));
    let holds = |node: &str, image: &str| {
        node == "worker-2"
            && [
                "docker.io/library/nginx:latest",
                "docker.io/library/weights:v2",
            ]
            .contains(&image)
    };
    assert_eq!(
        verdict(&agent, Some(&running), &on(&holds), t(NOW)),
        Verdict::Release(Release::NodePrefetched)
    );
    // Not yet every image of the pod (the image volume's missing): held.
    let only_nginx = |node: &str, image: &str| holds(node, image) && image.contains("nginx");
    assert_eq!(
        verdict(&agent, Some(&running), &on(&only_nginx), t(NOW)),
        Verdict::Hold { until: t(UNTIL) }
    );
    // Another node done says nothing about this one.
    let other = owned_pod(("apps/v1", "DaemonSet", "agent"), Some("worker-1"));
    assert_eq!(
        verdict(&other, Some(&running), &on(&holds), t(NOW)),
        Verdict::Hold { until: t(UNTIL) }
    );
    // Only a DaemonSet's pod is released per node: a StatefulSet's may land anywhere.
    let db = owned_pod(("apps/v1", "StatefulSet", "db"), Some("worker-2"));
    assert_eq!(
        verdict(&db, Some(&running), &on(&holds), t(NOW)),
        Verdict::Hold { until: t(UNTIL) }
    );
    // A DaemonSet pod not pinned to one node waits for the rollout like the rest.
    let unpinned = owned_pod(("apps/v1", "DaemonSet", "agent"), None);
    assert_eq!(pinned_node(&unpinned), None);
    assert_eq!(
        verdict(&unpinned, Some(&running), &on(&holds), t(NOW)),
        Verdict::Hold { until: t(UNTIL) }
    );
}

#[test]
fn a_prefetch_that_stops_reading_the_pods_kind_releases_it() {
    let mut deployments_only = prefetch(true, Some(("2026-11-22T03:00:00Z", None)));
    deployments_only.spec.kinds = Some(vec![WorkloadKind::Deployment]);
    for (owner, released) in [
        (("apps/v1", "StatefulSet", "db"), true),
        (("apps/v1", "DaemonSet", "agent"), true),
        (("batch/v1", "Job", "report-29431260"), true),
        (("apps/v1", "ReplicaSet", "web-abc"), false),
    ] {
        let mut gated = owned_pod(owner, None);
        gated
            .metadata
            .labels
            .get_or_insert_default()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), "abc".into());
        let expected = if released {
            Verdict::Release(Release::GateDisabled)
        } else {
            Verdict::Hold { until: t(UNTIL) }
        };
        assert_eq!(
            verdict(&gated, Some(&deployments_only), &NOTHING, t(NOW)),
            expected,
            "{owner:?}"
        );
    }
}

#[test]
fn a_pod_whose_signal_is_done_is_released_while_another_workloads_rollout_pulls() {
    let gated = pod(&[SCHEDULING_GATE], Some(UNTIL)); // signal 03:00:00
    let mut other_pulling = prefetch(true, Some(("2026-11-22T03:00:30Z", None)));
    assert_eq!(
        verdict(&gated, Some(&other_pulling), &NOTHING, t(NOW)),
        Verdict::Hold { until: t(UNTIL) }
    );
    other_pulling.status.as_mut().unwrap().prefetched_through =
        Some(MicroTime(t("2026-11-22T03:00:00Z")));
    assert_eq!(
        verdict(&gated, Some(&other_pulling), &NOTHING, t(NOW)),
        Verdict::Release(Release::Prefetched)
    );
    other_pulling.status.as_mut().unwrap().prefetched_through =
        Some(MicroTime(t("2026-11-22T02:59:59Z")));
    assert_eq!(
        verdict(&gated, Some(&other_pulling), &NOTHING, t(NOW)),
        Verdict::Hold { until: t(UNTIL) },
        "an earlier signal done says nothing of this one"
    );
}

#[test]
fn a_pod_whose_images_are_on_every_node_is_released_before_the_round_ends() {
    let gated = pod(&[SCHEDULING_GATE], Some(UNTIL)); // uses nginx:latest
    let combined = prefetch(true, Some(("2026-11-22T03:00:30Z", None)));
    let done: BTreeSet<String> = ["docker.io/library/nginx:latest".to_string()].into();
    let progress = Progress {
        node_done: &nothing_done,
        done_everywhere: Some(&done),
    };
    assert_eq!(
        verdict(&gated, Some(&combined), &progress, t(NOW)),
        Verdict::Release(Release::Prefetched)
    );
    let other: BTreeSet<String> = ["docker.io/library/redis:7".to_string()].into();
    let progress = Progress {
        node_done: &nothing_done,
        done_everywhere: Some(&other),
    };
    assert_eq!(
        verdict(&gated, Some(&combined), &progress, t(NOW)),
        Verdict::Hold { until: t(UNTIL) },
        "its own image is not everywhere yet"
    );
}
