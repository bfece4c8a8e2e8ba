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
mod tests;
