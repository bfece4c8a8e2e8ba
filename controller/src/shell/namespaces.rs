//! The shell around `gated_namespaces.rs`: for as long as this replica leads, keep the
//! gated-rollouts label on exactly the namespaces holding a Prefetch with `gate_rollouts`, so
//! that the pod hook's namespaceSelector sends the webhook only pods it could gate (design:
//! docs/src/design.md#warm-rollouts).
//!
//! It reads the Prefetch cache the reconciler already has and a namespace watch narrowed to
//! the label (so the cluster's other namespaces cost nothing), and runs a pass when either
//! changes, and every [`RESYNC`] besides. A label is applied after one GET of the namespace,
//! for its uid (see `gated_namespaces.rs`); nothing else is read from the API server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use prefetch_common::Prefetch;
use prefetch_common::annotations::GATED_NAMESPACE_LABEL;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::core::gated_namespaces::{
    Change, FIELD_MANAGER, Kept, Labelled, apply_body, carries_label, changes, prune_kept, wanted,
};
use crate::shell::context::Context;

/// Longest wait between two passes when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(60);
/// Wait before the next pass after a write failed, doubled on each failure in a row up to
/// [`RESYNC`].
const RETRY: Duration = Duration::from_secs(2);
/// A write sent is not sent again for this long while the watch does not show it done yet.
const SENT_MEMORY: Duration = Duration::from_secs(10);

/// Keeps of a labelled namespace only what the decision reads: name, uid, resourceVersion and
/// our label.
pub fn slim_namespace(namespace: &mut Namespace) {
    let meta = &mut namespace.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == GATED_NAMESPACE_LABEL);
    }
    namespace.spec = None;
    namespace.status = None;
}

/// What a write did.
enum Written {
    Done,
    /// The namespace is gone (404 on the GET, or the apply's uid no longer matches: 409).
    Gone,
    /// An unlabel left the label: another field manager owns it too. The resourceVersion
    /// answered.
    Kept(String),
}

pub async fn run(
    ctx: Arc<Context>,
    prefetches: Store<Prefetch>,
    namespaces: Store<Namespace>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    // A half-filled Prefetch cache would read as "no gating Prefetch" and unlabel namespaces.
    if !crate::shell::context::synced_with(&prefetches, &namespaces, &stop).await {
        return;
    }
    tracing::info!(
        label = GATED_NAMESPACE_LABEL,
        "warm rollouts: labelling the namespaces that hold a gating Prefetch"
    );
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    let mut kept = Kept::new();
    let mut sent: HashMap<Change, Instant> = HashMap::new();
    let mut retry = RETRY;
    loop {
        let failed = pass(&ctx, &api, &prefetches, &namespaces, &mut kept, &mut sent).await;
        let next = if failed { retry } else { RESYNC };
        retry = if failed {
            (retry * 2).min(RESYNC)
        } else {
            RETRY
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// One pass: the writes [`changes`] asks for, but those sent within [`SENT_MEMORY`] that the
/// watch does not show yet. Whether a write failed.
async fn pass(
    ctx: &Context,
    api: &Api<Namespace>,
    prefetches: &Store<Prefetch>,
    namespaces: &Store<Namespace>,
    kept: &mut Kept,
    sent: &mut HashMap<Change, Instant>,
) -> bool {
    let wanted = wanted(prefetches.state().iter().map(AsRef::as_ref));
    let labelled: Vec<Labelled> = namespaces
        .state()
        .iter()
        .filter(|n| carries_label(n.metadata.labels.as_ref()))
        .map(|n| Labelled {
            name: n.name_any(),
            uid: n.metadata.uid.clone().unwrap_or_default(),
            resource_version: n.resource_version().unwrap_or_default(),
        })
        .collect();
    ctx.metrics.gate.gated_namespaces.set(labelled.len() as i64);
    prune_kept(kept, &wanted, &labelled);
    // A write the watch shows done is forgotten at once: a later change of mind (gating turned
    // off and on again) is sent without waiting.
    sent.retain(|change, at| {
        let shown = match change {
            Change::Label { namespace } => labelled.iter().any(|n| n.name == *namespace),
            Change::Unlabel { namespace, .. } => !labelled.iter().any(|n| n.name == *namespace),
        };
        !shown && at.elapsed() < SENT_MEMORY
    });
    let mut failed = false;
    for change in changes(&wanted, &labelled, kept) {
        if sent.contains_key(&change) {
            continue;
        }
        match write(api, &change).await {
            Ok(written) => {
                log(&change, &written);
                if let (Change::Unlabel { namespace, .. }, Written::Kept(rv)) = (&change, written) {
                    kept.insert(namespace.clone(), rv);
                }
                sent.insert(change, Instant::now());
            }
            Err(err) => {
                failed = true;
                ctx.metrics.gate.namespace_label_errors.inc();
                let namespace = match &change {
                    Change::Label { namespace } | Change::Unlabel { namespace, .. } => namespace,
                };
                tracing::warn!(namespace = %namespace, error = %err, "could not write the gated-rollouts label; retrying");
            }
        }
    }
    failed
}

fn log(change: &Change, written: &Written) {
    match (change, written) {
        (Change::Label { namespace }, Written::Done) => {
            tracing::info!(namespace = %namespace, "labelled the namespace: its workloads' pods now reach the pod hook")
        }
        (Change::Unlabel { namespace, .. }, Written::Done) => {
            tracing::info!(namespace = %namespace, "unlabelled the namespace: no Prefetch there gates rollouts")
        }
        (Change::Unlabel { namespace, .. }, Written::Kept(_)) => {
            tracing::info!(namespace = %namespace, "the namespace keeps the gated-rollouts label: another field manager set it too (left as it is)")
        }
        (_, _) => {}
    }
}

/// Sends one change (see `gated_namespaces.rs` for the bodies).
async fn write(api: &Api<Namespace>, change: &Change) -> Result<Written, kube::Error> {
    let (name, uid, label) = match change {
        Change::Label { namespace } => {
            let Some(found) = api.get_opt(namespace).await? else {
                return Ok(Written::Gone);
            };
            (namespace, found.metadata.uid.unwrap_or_default(), true)
        }
        Change::Unlabel { namespace, uid } => (namespace, uid.clone(), false),
    };
    let params = PatchParams::apply(FIELD_MANAGER);
    // Forced to label: the label is ours by design, whatever value another manager set.
    let params = if label { params.force() } else { params };
    let body = Patch::Apply(apply_body(name, &uid, label));
    match api.patch(name, &params, &body).await {
        Ok(applied) if !label && carries_label(applied.metadata.labels.as_ref()) => Ok(
            Written::Kept(applied.resource_version().unwrap_or_default()),
        ),
        Ok(_) => Ok(Written::Done),
        // "uid mismatch": the namespace was deleted (and perhaps created again) meanwhile.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Written::Gone),
        Err(err) => Err(err),
    }
}
