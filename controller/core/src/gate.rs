//! Warm rollouts (design: docs/src/design.md#warm-rollouts): when a pod the webhook held with the
//! scheduling gate `cache.techsquad.rocks/prefetch` is released. Pure; `gate_loop.rs` applies the
//! verdicts.
//!
//! A gated pod carries the label `cache.techsquad.rocks/gated-by: <prefetch>` and the
//! annotation `cache.techsquad.rocks/gated-until: <RFC 3339>` (signal time + gate_timeout). It
//! is released when the first of these holds:
//! - its Prefetch's round for the rollout is done: `status.last_rollout.prefetched_at` is set
//!   for the signal the pod was gated for (its `gated-for` annotation) or a later one, whose
//!   round also owed the earlier signal's images ("done" counts failed pulls as done, as for
//!   warm nodes: a failed node is reported in the Prefetch's status, the pods are not held for
//!   it). Never an earlier signal: a record whose `requested_at` is older than the pod's
//!   signal says nothing about the pod's images;
//! - a DaemonSet's pod, whose node is known before it schedules (the DaemonSet controller pins
//!   it with `matchFields metadata.name`): as soon as that node is done with every image of
//!   the pod, not when every node is;
//! - `gated-until` has passed (also when the annotation is missing or unreadable: release);
//! - the Prefetch is gone, no longer has `gate_rollouts`, or no longer selects the pod's
//!   workload kind (`spec.kinds`).
//!
//! Nothing depends on this process having seen the gating: a restarted or newly elected
//! controller reaches the same verdicts from the pods and Prefetches alone.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation, RemoveOperation, TestOperation};
use k8s_openapi::api::core::v1::Pod;
use prefetch_common::Prefetch;
use prefetch_common::WorkloadKind;
use prefetch_common::annotations::{
    GATED_FOR_ANNOTATION, GATED_UNTIL_ANNOTATION, POD_TEMPLATE_HASH_LABEL, SCHEDULING_GATE,
    signal_time,
};
use prefetch_common::images::pod_spec_images;
use prefetch_common::owner::{ControllerOwner, WorkloadRef, rollout_workload};
use serde_json::{Value, json};

/// Why a gated pod was released; the Event reason and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Release {
    /// The rollout's images are done on every targeted node.
    Prefetched,
    /// A DaemonSet's pod: its own node is done with the pod's images.
    NodePrefetched,
    /// `gated-until` passed (or the pod carried no readable time).
    TimedOut,
    /// The Prefetch is gone.
    PrefetchRemoved,
    /// The Prefetch no longer has `gate_rollouts`.
    GateDisabled,
}

impl Release {
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Prefetched => "prefetched",
            Release::NodePrefetched => "node_prefetched",
            Release::TimedOut => "timed_out",
            Release::PrefetchRemoved => "prefetch_removed",
            Release::GateDisabled => "gate_disabled",
        }
    }

    /// The Event on the Prefetch for `count` pods released for this reason.
    pub fn event(self, count: usize) -> (&'static str, &'static str, String) {
        let pods = if count == 1 { "pod" } else { "pods" };
        match self {
            Release::Prefetched => (
                "Normal",
                "RolloutReleased",
                format!(
                    "released {count} gated {pods}: the rollout's images are on every targeted node"
                ),
            ),
            Release::NodePrefetched => (
                "Normal",
                "RolloutReleased",
                format!("released {count} gated DaemonSet {pods}: each one's node has its images"),
            ),
            Release::TimedOut => (
                "Warning",
                "RolloutGateTimedOut",
                format!(
                    "released {count} gated {pods} at gate_timeout: the rollout's images were not on every targeted node yet"
                ),
            ),
            Release::PrefetchRemoved => (
                "Warning",
                "RolloutGateOrphaned",
                format!("released {count} gated {pods}: this Prefetch was removed"),
            ),
            Release::GateDisabled => (
                "Normal",
                "RolloutGateDisabled",
                format!(
                    "released {count} gated {pods}: gate_rollouts is off, or kinds no longer lists the pod's workload kind"
                ),
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pod does not carry our gate (released already, or never gated): nothing to do.
    NotGated,
    /// Keep it gated; look again at `until` at the latest.
    Hold {
        until: Timestamp,
    },
    Release(Release),
}

/// The pod's scheduling gate names, in order.
pub fn gates(pod: &Pod) -> Vec<&str> {
    pod.spec
        .iter()
        .flat_map(|s| s.scheduling_gates.iter().flatten())
        .map(|g| g.name.as_str())
        .collect()
}

pub fn gated_until(pod: &Pod) -> Option<Timestamp> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(GATED_UNTIL_ANNOTATION)?
        .parse()
        .ok()
}

/// The signal the pod was gated for: its `gated-for` annotation; for a pod gated before the
/// webhook wrote one, `gated-until` less the Prefetch's `gate_timeout`.
fn gated_for(pod: &Pod, until: Timestamp, gate_timeout_seconds: i64) -> Timestamp {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GATED_FOR_ANNOTATION))
        .and_then(|text| signal_time(text));
    annotated.unwrap_or_else(|| {
        until
            .checked_sub(SignedDuration::from_secs(gate_timeout_seconds))
            .unwrap_or(until)
    })
}

/// The workload whose rollout made `pod` (see `prefetch_common::owner`).
pub fn pod_workload(pod: &Pod) -> Option<WorkloadRef> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL));
    let owner = ControllerOwner {
        api_version: &owner.api_version,
        kind: &owner.kind,
        name: &owner.name,
    };
    rollout_workload(owner, hash.map(String::as_str)).ok()
}

/// The node a pod is pinned to by a required `matchFields metadata.name In [node]` term, as
/// the DaemonSet controller pins its pods.
pub fn pinned_node(pod: &Pod) -> Option<&str> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    let [field] = term.match_fields.as_deref()? else {
        return None;
    };
    let pinned = field.key == "metadata.name" && field.operator == "In";
    match field.values.as_deref() {
        Some([node]) if pinned => Some(node),
        _ => None,
    }
}

/// What the pulls have done so far, for releases that do not wait for a whole rollout.
pub struct Progress<'a> {
    /// Whether a node is done with an image: it lists it, or a prefetch pod reported it
    /// pulled or failed there. (node, normalized image)
    pub node_done: &'a dyn Fn(&str, &str) -> bool,
    /// The images every node the Prefetch targets is done with, as its last reconcile saw
    /// them (`None` when it has not reconciled yet).
    pub done_everywhere: Option<&'a BTreeSet<String>>,
}

/// Whether `pod` is a DaemonSet's whose pinned node is done with every image it uses.
fn its_node_is_done(pod: &Pod, images: &BTreeSet<String>, progress: &Progress<'_>) -> bool {
    let daemon_set = pod_workload(pod).is_some_and(|w| w.kind == WorkloadKind::DaemonSet);
    let Some(node) = pinned_node(pod) else {
        return false;
    };
    daemon_set && images.iter().all(|image| (progress.node_done)(node, image))
}

/// Whether every targeted node is done with every image `pod` uses: then it starts warm
/// wherever it lands, even while the round still owes another workload's images.
fn its_images_are_done(images: &BTreeSet<String>, progress: &Progress<'_>) -> bool {
    progress
        .done_everywhere
        .is_some_and(|done| done.is_superset(images))
}

/// The verdict on one pod labelled gated-by `prefetch`'s name. `prefetch` is `None` when no
/// such Prefetch exists (the caller has a synced cache).
pub fn verdict(
    pod: &Pod,
    prefetch: Option<&Prefetch>,
    progress: &Progress<'_>,
    now: Timestamp,
) -> Verdict {
    if !gates(pod).contains(&SCHEDULING_GATE) {
        return Verdict::NotGated;
    }
    let Some(until) = gated_until(pod) else {
        return Verdict::Release(Release::TimedOut);
    };
    if now >= until {
        return Verdict::Release(Release::TimedOut);
    }
    let Some(prefetch) = prefetch else {
        return Verdict::Release(Release::PrefetchRemoved);
    };
    // A Prefetch that no longer reads the pod's kind will never prefetch for it. (A pod whose
    // owner tells no workload was gated as a Deployment's, before other kinds were.)
    let kind = pod_workload(pod).map_or(WorkloadKind::Deployment, |w| w.kind);
    if !prefetch.spec.gate_rollouts() || !prefetch.spec.selects_kind(kind) {
        return Verdict::Release(Release::GateDisabled);
    }
    let signal = gated_for(pod, until, prefetch.spec.gate_timeout_seconds());
    let status = prefetch.status.as_ref();
    let last_prefetched = status
        .and_then(|s| s.last_rollout.as_ref())
        .filter(|r| r.prefetched_at.is_some())
        .and_then(|r| r.requested_at.as_ref())
        .is_some_and(|requested| requested.0 >= signal);
    // Another workload's newer signal may be in `last_rollout`, still pulling: the pod's own
    // signal is done all the same.
    let through = status
        .and_then(|s| s.prefetched_through.as_ref())
        .is_some_and(|through| through.0 >= signal);
    let prefetched = last_prefetched || through;
    let images = pod
        .spec
        .as_ref()
        .map(|spec| pod_spec_images(spec).images)
        .unwrap_or_default();
    if prefetched || (!images.is_empty() && its_images_are_done(&images, progress)) {
        Verdict::Release(Release::Prefetched)
    } else if !images.is_empty() && its_node_is_done(pod, &images, progress) {
        Verdict::Release(Release::NodePrefetched)
    } else {
        Verdict::Hold { until }
    }
}

/// The JSON patch that removes our gate and nothing else: a `test` of the whole gate list as
/// read, then a `remove` of our entry, so a concurrent change to the gates fails the patch
/// (422) instead of removing the wrong one. `None` when the pod does not carry our gate.
pub fn release_patch(pod: &Pod) -> Option<Patch> {
    let gates = gates(pod);
    let index = gates.iter().position(|g| *g == SCHEDULING_GATE)?;
    let listed: Vec<Value> = gates.iter().map(|g| json!({ "name": g })).collect();
    let path = PointerBuf::from_tokens(["spec", "schedulingGates"]);
    let mut entry = path.clone();
    entry.push_back(index.to_string());
    Some(Patch(vec![
        PatchOperation::Test(TestOperation {
            path,
            value: Value::Array(listed),
        }),
        PatchOperation::Remove(RemoveOperation { path: entry }),
    ]))
}

#[cfg(test)]
mod tests {
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
}
