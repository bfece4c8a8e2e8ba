//! The pod gate (`POST /mutate/pod`; design: docs/src/design.md#warm-rollouts,
//! docs/src/design.md#every-workload-and-every-image): whether a new pod of a rollout is held with
//! the scheduling gate `cache.techsquad.rocks/prefetch` until the controller has its images on the
//! nodes. Pure: the caches are read through [`Inputs`] and time is passed in. The shell reads the
//! review ([`read`]), looks the pod's workload up, asks [`decide`], makes the one live read a
//! [`Decision::ReadLive`] asks for, and sends [`answer`].
//!
//! The hooks are fail-open and see the pods that a ReplicaSet, StatefulSet, DaemonSet or a
//! CronJob's Job labelled as its own (one hook per label, in the gated namespaces only; the
//! owner is still read here, as a label alone proves nothing): a pod is gated only when everything says so (its owner leads to a workload that
//! rolls out: a Deployment through its ReplicaSet, a StatefulSet, a DaemonSet, a CronJob through
//! its Job; a Prefetch with `gate_rollouts` selects that workload, whose rollout signal is
//! younger than `gate_timeout` and not yet prefetched; the pod is of the signalled revision and
//! uses a signalled image; and a controller holds a fresh Lease to lift the gate). Anything
//! unsure passes the pod unchanged.

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::sync::LazyLock;

use jiff::{SignedDuration, Timestamp};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use prefetch_common::annotations::{
    GATED_BY_LABEL, GATED_FOR_ANNOTATION, GATED_UNTIL_ANNOTATION, POD_TEMPLATE_HASH_LABEL,
    SCHEDULING_GATE, rfc3339,
};
use prefetch_common::images::collect_images;
use prefetch_common::owner::{ControllerOwner, WorkloadRef, rollout_workload};
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::answer::Answer;
use crate::facts::{Prefetches, WorkloadFacts};
use crate::lease;
use crate::review::{self, BadReview, MetaView, Operation, PodView, Request};

/// What the gate reads of a pod review, owned, so that a live read of the workload may happen
/// between reading the review and deciding.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub uid: String,
    pub namespace: String,
    /// The workload whose rollout made the pod, or why the pod has none.
    pub workload: Result<WorkloadRef, String>,
    /// Image references of containers, initContainers and image volumes, as written.
    pub references: BTreeSet<String>,
    /// The same normalized, once a decision needs them (see [`PodFacts::images`]).
    images: OnceCell<BTreeSet<String>>,
    /// `spec.schedulingGates` names; `None` when the field is absent or null.
    pub gates: Option<Vec<String>>,
    /// `spec.nodeName` is set: the pod is bound and cannot be gated.
    pub bound: bool,
    pub has_labels: bool,
    pub has_annotations: bool,
}

impl PodFacts {
    /// The pod's images, normalized (references that do not parse left out). Computed on first
    /// use: most pods pass on what their references as written tell (their workload has no
    /// rollout signal, and a pod of the current revision is written as its template).
    pub fn images(&self) -> &BTreeSet<String> {
        self.images
            .get_or_init(|| collect_images(self.references.iter().map(String::as_str)).images)
    }
}

/// The normalized images are derived from the references: they take no part.
impl PartialEq for PodFacts {
    fn eq(&self, other: &Self) -> bool {
        fn key(p: &PodFacts) -> impl PartialEq + '_ {
            (
                &p.uid,
                &p.namespace,
                &p.workload,
                &p.references,
                &p.gates,
                p.bound,
                p.has_labels,
                p.has_annotations,
            )
        }
        key(self) == key(other)
    }
}

impl Eq for PodFacts {}

/// A review is either about a pod the gate considers, or answered at once (and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Pod(PodFacts),
    /// Not a pod CREATE with a pod object: allowed unchanged. (uid, why)
    NotForUs(String, String),
}

/// Reads a `/mutate/pod` review.
pub fn read(body: &[u8]) -> Result<Read, BadReview> {
    let request: Request<'_, PodView<'_>, IgnoredAny> = review::parse(body)?;
    let uid = request.uid.to_string();
    if !request.kind.is("", "v1", "Pod") {
        return Ok(Read::NotForUs(uid, format!("not a Pod ({})", request.kind)));
    }
    if request.operation != Operation::Create || request.sub_resource.is_some() {
        return Ok(Read::NotForUs(uid, "not a pod CREATE".into()));
    }
    let Some(pod) = request.object else {
        return Ok(Read::NotForUs(uid, "no pod object".into()));
    };
    let meta = pod.metadata.unwrap_or_default();
    let namespace = request
        .namespace
        .as_deref()
        .or(meta.namespace.as_deref())
        .unwrap_or("default")
        .to_string();
    let spec = pod.spec.unwrap_or_default();
    Ok(Read::Pod(PodFacts {
        uid,
        namespace,
        workload: workload_of(&meta),
        references: spec.references().map(String::from).collect(),
        images: OnceCell::new(),
        gates: spec
            .scheduling_gates
            .as_ref()
            .map(|gates| gates.iter().map(|g| g.name.to_string()).collect()),
        bound: spec.node_name.as_deref().is_some_and(|n| !n.is_empty()),
        has_labels: meta.labels.is_some(),
        has_annotations: meta.annotations.is_some(),
    }))
}

/// The workload behind a pod, through its controller owner (see [`rollout_workload`]).
fn workload_of(meta: &MetaView<'_>) -> Result<WorkloadRef, String> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .ok_or("no controller owner")?;
    let template_hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL))
        .map(|hash| &**hash);
    let owner = ControllerOwner {
        api_version: &owner.api_version,
        kind: &owner.kind,
        name: &owner.name,
    };
    rollout_workload(owner, template_hash)
}

/// What the gate may read besides the pod.
pub struct Inputs<'a> {
    /// The pod's workload, from the watch cache or from a live read.
    pub workload: Option<&'a WorkloadFacts>,
    /// `workload` comes from a live read: no further read is asked for.
    pub live: bool,
    /// The Prefetches: those with `gate_rollouts` in the pod's namespace that select its
    /// workload may gate it.
    pub prefetches: &'a dyn Prefetches,
    /// When a holder last renewed the controller's Lease.
    pub leader_renewed: Option<Timestamp>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Hold the pod: the JSON patch adds the gate, the label and the annotation.
    Gate {
        prefetch: String,
        workload: WorkloadRef,
        until: Timestamp,
        patch: Patch,
    },
    /// Allowed unchanged, and why.
    Pass(String),
    /// The cached workload is missing or behind the pod: read it live, decide again.
    ReadLive { workload: WorkloadRef },
}

/// The answer to the pod's review: allowed, with the gate patch when gated. (A `ReadLive`
/// reaches here only when the live read could not be made: the pod passes.)
pub fn answer(uid: &str, decision: Decision) -> Answer {
    match decision {
        Decision::Gate {
            prefetch,
            workload,
            until,
            patch,
        } => Answer::allow_pod(
            uid,
            format!(
                "gated for Prefetch {prefetch} ({workload}) until {}",
                rfc3339(until)
            ),
        )
        .gated(patch),
        Decision::ReadLive { workload } => {
            Answer::allow_pod(uid, format!("{workload}: no live read made"))
        }
        Decision::Pass(why) => Answer::allow_pod(uid, why),
    }
}

pub fn decide(pod: &PodFacts, inputs: &Inputs<'_>) -> Decision {
    let workload = match &pod.workload {
        Ok(workload) => workload,
        Err(why) => return Decision::Pass(why.clone()),
    };
    if pod.bound {
        return Decision::Pass("already bound to a node".into());
    }
    if pod.references.is_empty() {
        return Decision::Pass("no image to wait for".into());
    }
    if let Some(why) = no_leader(inputs) {
        return Decision::Pass(why);
    }
    let facts = match inputs.workload {
        Some(facts) if template_holds(facts, pod) => facts,
        _ if !inputs.live => {
            return Decision::ReadLive {
                workload: workload.clone(),
            };
        }
        None => return Decision::Pass(format!("{workload} not found")),
        Some(_) => {
            return Decision::Pass(format!(
                "images not all in {workload}'s template (a pod of an older revision)"
            ));
        }
    };
    let Some(signal) = &facts.signal else {
        return Decision::Pass(format!("{workload} has no rollout signal"));
    };
    // A pod written as its template (the usual case) has the template's images, normalized
    // when the cache was filled: no need to normalize its references again.
    let images = if pod.references == facts.template_references {
        &facts.template_images
    } else {
        pod.images()
    };
    if !signal.images.iter().any(|i| images.contains(i)) {
        return Decision::Pass("uses none of the rollout's new images".into());
    }
    let gating = inputs
        .prefetches
        .gating_by(&pod.namespace, workload.kind, &|key| {
            facts.labels.get(key).map(String::as_str)
        });
    if gating.is_empty() {
        return Decision::Pass(format!("no Prefetch with gate_rollouts selects {workload}"));
    }
    first_gate(pod, workload, signal.requested_at, gating, inputs.now)
}

/// Why no gate may be set for want of a controller to lift it, if so.
fn no_leader(inputs: &Inputs<'_>) -> Option<String> {
    match inputs.leader_renewed {
        Some(renewed) if lease::is_fresh(renewed, inputs.now) => None,
        Some(renewed) => Some(format!(
            "no controller leads (Lease last renewed {}): nobody would lift a gate",
            rfc3339(renewed)
        )),
        None => Some("no controller holds the Lease: nobody would lift a gate".into()),
    }
}

/// The gate of the first Prefetch whose `gate_timeout` still runs and that has not prefetched
/// the signal; or why none gates.
fn first_gate(
    pod: &PodFacts,
    workload: &WorkloadRef,
    signal: Timestamp,
    gating: Vec<crate::facts::GatingPrefetch>,
    now: Timestamp,
) -> Decision {
    let mut why_not = Vec::new();
    for prefetch in gating {
        let until = signal
            .checked_add(SignedDuration::from_secs(prefetch.gate_timeout))
            .unwrap_or(signal);
        if until <= now {
            why_not.push(format!(
                "{}: signal older than gate_timeout {}s",
                prefetch.name, prefetch.gate_timeout
            ));
        } else if prefetch
            .prefetched_through
            .is_some_and(|through| through >= signal)
        {
            why_not.push(format!("{}: rollout already prefetched", prefetch.name));
        } else {
            return Decision::Gate {
                patch: gate_patch(pod, &prefetch.name, signal, until),
                prefetch: prefetch.name,
                workload: workload.clone(),
                until,
            };
        }
    }
    Decision::Pass(why_not.join("; "))
}

/// Whether the workload's template has every image of `pod`, which tells a pod of the current
/// revision from an older one's: compared as written first (no normalizing: a pod of the
/// current revision is written as its template), then normalized.
fn template_holds(facts: &WorkloadFacts, pod: &PodFacts) -> bool {
    pod.references.is_subset(&facts.template_references)
        || facts.template_images.is_superset(pod.images())
}

/// Adds our scheduling gate (appended to the pod's own, never twice), the gated-by label, and
/// the gated-for (the signal) and gated-until annotations. `add` on a map entry replaces a
/// value the pod already had; a map the pod lacks is added whole.
pub fn gate_patch(pod: &PodFacts, prefetch: &str, signal: Timestamp, until: Timestamp) -> Patch {
    let add = |path: &PointerBuf, value: Value| {
        PatchOperation::Add(AddOperation {
            path: path.clone(),
            value,
        })
    };
    let pointers = &*GATE_POINTERS;
    let gate = json!({ "name": SCHEDULING_GATE });
    let mut operations = Vec::with_capacity(4);
    match &pod.gates {
        Some(gates) if gates.iter().any(|g| g == SCHEDULING_GATE) => {}
        Some(gates) if !gates.is_empty() => operations.push(add(&pointers.gates_end, gate)),
        _ => operations.push(add(&pointers.gates, json!([gate]))),
    }
    operations.push(if pod.has_labels {
        add(&pointers.gated_by, Value::String(prefetch.to_string()))
    } else {
        add(&pointers.labels, json!({ GATED_BY_LABEL: prefetch }))
    });
    let (signal, until) = (rfc3339(signal), rfc3339(until));
    if pod.has_annotations {
        operations.push(add(&pointers.gated_for, Value::String(signal)));
        operations.push(add(&pointers.gated_until, Value::String(until)));
    } else {
        operations.push(add(
            &pointers.annotations,
            json!({ GATED_FOR_ANNOTATION: signal, GATED_UNTIL_ANNOTATION: until }),
        ));
    }
    Patch(operations)
}

/// Where the gate patch writes, built once (escaping the `/` of label and annotation keys is
/// most of the cost of a pointer).
struct GatePointers {
    gates: PointerBuf,
    /// Appends to the pod's own gates.
    gates_end: PointerBuf,
    /// The maps, added whole when the pod has none, and our entries.
    labels: PointerBuf,
    annotations: PointerBuf,
    gated_by: PointerBuf,
    gated_for: PointerBuf,
    gated_until: PointerBuf,
}

static GATE_POINTERS: LazyLock<GatePointers> = LazyLock::new(|| GatePointers {
    gates: PointerBuf::from_tokens(["spec", "schedulingGates"]),
    gates_end: PointerBuf::from_tokens(["spec", "schedulingGates", "-"]),
    labels: PointerBuf::from_tokens(["metadata", "labels"]),
    annotations: PointerBuf::from_tokens(["metadata", "annotations"]),
    gated_by: PointerBuf::from_tokens(["metadata", "labels", GATED_BY_LABEL]),
    gated_for: PointerBuf::from_tokens(["metadata", "annotations", GATED_FOR_ANNOTATION]),
    gated_until: PointerBuf::from_tokens(["metadata", "annotations", GATED_UNTIL_ANNOTATION]),
});

#[cfg(test)]
mod tests;
