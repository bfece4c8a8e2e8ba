//! The three admission decisions, from request body to [`Answer`]: Prefetch defaulting
//! (`/mutate/prefetch`), Prefetch validation (`/validate/prefetch`) and the Deployment rollout
//! signal (`/mutate/deployment`; design: docs/src/design.md#the-admission-webhook). No I/O: the
//! caches are read through [`Caches`], and time is passed in, so every path is unit-tested.
//!
//! Requests are read with [`crate::review`]: only the fields a decision uses, borrowed
//! from the body. The validating hook never allows what it could not judge (no object, not an
//! object, not a Prefetch, an unknown operation); the mutating hooks stay fail-open.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use prefetch_common::WorkloadKind;
use prefetch_common::annotations::{
    API_GROUP, API_VERSION, KIND, PREFETCH_IMAGES, PREFETCH_REQUESTED_AT,
};
use prefetch_common::defaulting::default_spec_patch;
use prefetch_common::images::normalize;
use prefetch_common::validation::{ValidationContext, validate_prefetch_spec};
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::answer::{Answer, Endpoint, RequestResult};
use crate::facts::{NodeNamesView, Prefetches};
use crate::lease;
use crate::review::{
    self, BadReview, ObjectOr, Operation, PodSpecImages, PrefetchView, Request, RetryAfterView,
    WorkloadView,
};

/// What the decisions may read beyond the request.
pub struct Caches<'a> {
    pub prefetches: &'a dyn Prefetches,
    pub nodes: &'a dyn NodeNamesView,
    pub min_retry_after: i64,
    /// When a holder last renewed the controller's Lease (`None`: nobody holds it, or the
    /// Lease cache is not synced).
    pub leader_renewed: Option<jiff::Timestamp>,
}

/// Parses `body` and decides. `now` stamps rollout signals.
pub fn review(
    endpoint: Endpoint,
    body: &[u8],
    caches: &Caches<'_>,
    now: jiff::Timestamp,
) -> Result<Answer, BadReview> {
    Ok(match endpoint {
        Endpoint::MutatePrefetch => mutate_prefetch(&review::parse(body)?),
        Endpoint::ValidatePrefetch => validate(&review::parse(body)?, caches, now),
        Endpoint::MutateDeployment | Endpoint::MutateWorkload => {
            workload_signal(&review::parse(body)?, caches.prefetches, now)
        }
    })
}

/// A Prefetch review as the endpoints read it; `P`, the old object, is read only as far as
/// the decision needs (nothing for defaulting, `spec.retry_after` for validation).
type PrefetchRequest<'a, P> = Request<'a, ObjectOr<PrefetchView>, P>;

/// What a Prefetch endpoint is asked about.
enum Target<'r> {
    /// A Prefetch object to default or validate.
    Prefetch(&'r PrefetchView),
    /// DELETE or CONNECT: nothing to check.
    Nothing,
    /// Another resource was sent to this endpoint: the webhook configuration is wrong.
    Misrouted(String),
    /// A Prefetch request that cannot be judged, and why.
    Unjudgeable(String),
}

fn target<'r, P>(request: &'r PrefetchRequest<'_, P>, endpoint: Endpoint) -> Target<'r> {
    if !request.kind.is(API_GROUP, API_VERSION, KIND) {
        return Target::Misrouted(format!(
            "{} handles {API_GROUP}/{API_VERSION} {KIND} only, got {}; check the webhook configuration's rules",
            endpoint.path(),
            request.kind
        ));
    }
    let operation = request.operation;
    match operation {
        Operation::Delete | Operation::Connect => return Target::Nothing,
        Operation::Other => {
            return Target::Unjudgeable(
                "request.operation is not one of CREATE, UPDATE, DELETE or CONNECT".into(),
            );
        }
        Operation::Create | Operation::Update => {}
    }
    let view = match &request.object {
        None => {
            return Target::Unjudgeable(format!(
                "request.object is missing or null on {}: there is no Prefetch to check",
                operation.as_str()
            ));
        }
        Some(ObjectOr::NotAnObject(what)) => {
            return Target::Unjudgeable(format!(
                "request.object must be a Prefetch object, got {what}"
            ));
        }
        Some(ObjectOr::Object(view)) => view,
    };
    let api_version = format!("{API_GROUP}/{API_VERSION}");
    for (field, value, want) in [
        ("apiVersion", &view.api_version, api_version.as_str()),
        ("kind", &view.kind, KIND),
    ] {
        // Absent is fine (the request's kind says what it is); present must agree.
        if let Some(value) = value
            && value.as_str() != Some(want)
        {
            return Target::Unjudgeable(format!("request.object.{field} is {value}, not {want:?}"));
        }
    }
    Target::Prefetch(view)
}

fn mutate_prefetch(request: &PrefetchRequest<'_, IgnoredAny>) -> Answer {
    let uid = &request.uid;
    let view = match target(request, Endpoint::MutatePrefetch) {
        Target::Prefetch(view) => view,
        // Fail-open: a misconfigured webhook must not block other resources.
        Target::Misrouted(why) => {
            let mut answer = Answer::allow(uid, why.clone());
            answer.warnings.push(format!("prefetch-webhook: {why}"));
            return answer;
        }
        Target::Nothing => return Answer::allow(uid, "no object to default"),
        // The validating hook denies it, naming what is wrong.
        Target::Unjudgeable(why) => return Answer::allow(uid, why),
    };
    let patch = default_spec_patch(view.spec.as_ref());
    let why = if patch.0.is_empty() {
        "all defaults present".to_string()
    } else {
        format!("defaulted {} field(s)", patch.0.len())
    };
    Answer::allow(uid, why).with_patch(patch)
}

fn retry_after(view: &PrefetchView) -> &Value {
    view.spec
        .as_ref()
        .and_then(|spec| spec.get("retry_after"))
        .unwrap_or(&Value::Null)
}

fn validate(
    request: &PrefetchRequest<'_, ObjectOr<RetryAfterView>>,
    caches: &Caches<'_>,
    now: jiff::Timestamp,
) -> Answer {
    let uid = &request.uid;
    let view = match target(request, Endpoint::ValidatePrefetch) {
        Target::Prefetch(view) => view,
        Target::Nothing => return Answer::allow(uid, "nothing to validate"),
        Target::Misrouted(why) | Target::Unjudgeable(why) => {
            return Answer::deny(uid, 400, format!("cannot validate this request: {why}"));
        }
    };
    // Ratcheting: an object admitted under a lower floor may still be updated (labels, other
    // fields) as long as it does not change retry_after.
    let unchanged_retry_after = request.operation == Operation::Update
        && matches!(&request.old_object, Some(ObjectOr::Object(old)) if old.retry_after() == retry_after(view));
    let min_retry_after = if unchanged_retry_after {
        prefetch_common::limits::MIN_RETRY_AFTER
    } else {
        caches.min_retry_after
    };
    let judge = |node_names: Option<&BTreeSet<String>>| {
        validate_prefetch_spec(
            view.spec.as_ref(),
            &ValidationContext {
                min_retry_after,
                node_names,
            },
        )
    };
    let mut verdict = None;
    caches
        .nodes
        .with_names(&mut |node_names| verdict = Some(judge(node_names)));
    // A view that never called back knows no names.
    let mut verdict = verdict.unwrap_or_else(|| judge(None));
    let gates = view.spec.as_ref().and_then(|s| s.get("gate_rollouts")) == Some(&Value::Bool(true));
    let leading = caches
        .leader_renewed
        .is_some_and(|renewed| lease::is_fresh(renewed, now));
    if gates && !leading {
        verdict.warnings.push(
            "spec.gate_rollouts: no prefetch-controller holds a fresh leader Lease, so pods \
             will not be gated until one runs"
                .into(),
        );
    }
    if verdict.is_allowed() {
        let mut answer = Answer::allow(uid, "valid");
        answer.warnings = verdict.warnings;
        answer
    } else {
        let mut answer = Answer::deny(uid, 422, verdict.denial_message());
        answer.warnings = verdict.warnings;
        answer
    }
}

/// The image references of `spec` as written, sorted and de-duplicated.
fn references<'s>(spec: Option<&'s PodSpecImages<'_>>) -> Vec<&'s str> {
    let mut references: Vec<&str> = spec
        .map(|spec| spec.references().collect())
        .unwrap_or_default();
    references.sort_unstable();
    references.dedup();
    references
}

/// The images `new` brings that `old` does not have, normalized, sorted and de-duplicated
/// (references that do not parse are left out). References written the same in both are never
/// normalized (most of a pod template, usually).
fn added_images(new: Option<&PodSpecImages<'_>>, old: Option<&PodSpecImages<'_>>) -> Vec<String> {
    let old = references(old);
    let candidates: Vec<&str> = references(new)
        .into_iter()
        .filter(|reference| old.binary_search(reference).is_err())
        .collect();
    if candidates.is_empty() {
        return Vec::new();
    }
    let normalized = |references: Vec<&str>| {
        let mut images: Vec<String> = references
            .into_iter()
            .filter_map(|reference| normalize(reference).ok())
            .collect();
        images.sort_unstable();
        images.dedup();
        images
    };
    let old = normalized(old);
    let mut added = normalized(candidates);
    added.retain(|image| old.binary_search(image).is_err());
    added
}

/// Where the rollout signal goes, built once: escaping the `/` of the annotation keys cost more
/// than the rest of the patch.
struct SignalPointers {
    annotations: PointerBuf,
    images: PointerBuf,
    requested_at: PointerBuf,
}

static SIGNAL_POINTERS: LazyLock<SignalPointers> = LazyLock::new(|| SignalPointers {
    annotations: PointerBuf::from_tokens(["metadata", "annotations"]),
    images: PointerBuf::from_tokens(["metadata", "annotations", PREFETCH_IMAGES]),
    requested_at: PointerBuf::from_tokens(["metadata", "annotations", PREFETCH_REQUESTED_AT]),
});

/// The workload kinds whose rollouts are signalled, by the request's group and kind. A Job
/// never changes its template; its CronJob does.
fn signalled_kind(group: &str, kind: &str) -> Option<WorkloadKind> {
    match (group, kind) {
        ("apps", "Deployment") => Some(WorkloadKind::Deployment),
        ("apps", "StatefulSet") => Some(WorkloadKind::StatefulSet),
        ("apps", "DaemonSet") => Some(WorkloadKind::DaemonSet),
        ("batch", "CronJob") => Some(WorkloadKind::CronJob),
        _ => None,
    }
}

/// Annotates a workload (Deployment, StatefulSet, DaemonSet, CronJob) whose pod template brings
/// images new to it, when a Prefetch in its namespace selects it. Always allows: this hook must
/// never block a workload.
fn workload_signal(
    request: &Request<'_, WorkloadView<'_>>,
    prefetches: &dyn Prefetches,
    now: jiff::Timestamp,
) -> Answer {
    let uid = &request.uid;
    let Some(kind) = signalled_kind(&request.kind.group, &request.kind.kind) else {
        return Answer::allow(
            uid,
            format!("not a workload that rolls out ({})", request.kind),
        );
    };
    if request.sub_resource.is_some() {
        return Answer::allow(uid, "subresource");
    }
    let object = match (request.operation, &request.object) {
        (Operation::Create | Operation::Update, Some(object)) => object,
        _ => return Answer::allow(uid, "no new object"),
    };
    let old = match (request.operation, &request.old_object) {
        (Operation::Update, Some(old)) => old.template_images(),
        _ => None,
    };
    let added = added_images(object.template_images(), old);
    if added.is_empty() {
        return Answer::allow(uid, "no new images");
    }
    if !prefetches.is_synced() {
        let mut answer = Answer::allow(uid, "Prefetch cache not synced yet; no signal");
        answer.result = RequestResult::Error;
        return answer;
    }
    let metadata = object.metadata.as_ref();
    let namespace = request
        .namespace
        .as_deref()
        .or(metadata.and_then(|m| m.namespace.as_deref()))
        .unwrap_or("default");
    let labels = metadata.and_then(|m| m.labels.as_ref());
    let selecting = prefetches.selecting_by(namespace, kind, &|key| labels?.get(key).map(|v| &**v));
    if selecting.is_empty() {
        return Answer::allow(uid, "no Prefetch in the namespace selects it");
    }
    let images_json = match serde_json::to_string(&added) {
        Ok(json) => json,
        Err(err) => {
            let mut answer = Answer::allow(uid, format!("could not encode images: {err}"));
            answer.result = RequestResult::Error;
            return answer;
        }
    };
    let why = format!(
        "new images {images_json}, selected by Prefetch {}",
        selecting.join(", ")
    );
    let requested_at = prefetch_common::annotations::rfc3339(now);
    let add = |path: PointerBuf, value: Value| PatchOperation::Add(AddOperation { path, value });
    let operations = if metadata.and_then(|m| m.annotations).is_none() {
        vec![add(
            SIGNAL_POINTERS.annotations.clone(),
            json!({ PREFETCH_IMAGES: images_json, PREFETCH_REQUESTED_AT: requested_at }),
        )]
    } else {
        vec![
            add(SIGNAL_POINTERS.images.clone(), Value::String(images_json)),
            add(
                SIGNAL_POINTERS.requested_at.clone(),
                Value::String(requested_at),
            ),
        ]
    };
    Answer::allow(uid, why).with_patch(Patch(operations))
}

#[cfg(test)]
mod tests;
