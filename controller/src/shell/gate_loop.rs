//! The shell around `gate.rs`: for as long as this replica leads, look at every gated pod
//! (a watch on the gated-by label) about once a second and remove our scheduling gate from
//! those whose verdict is a release. Events on the Prefetch are aggregated per pass and reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, PodSpec};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::Event;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use prefetch_common::Prefetch;
use prefetch_common::annotations::{
    GATED_BY_LABEL, GATED_FOR_ANNOTATION, GATED_UNTIL_ANNOTATION, POD_TEMPLATE_HASH_LABEL,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::core::gate::{Progress, Release, Verdict, pinned_node, release_patch, verdict};
use crate::core::plan::node_images;
use crate::core::revisions::for_pulls;
use crate::shell::context::{Context, lock};
use crate::shell::events::event_type;
use crate::shell::metrics::ReleaseLabel;

/// Longest wait between two passes: a pod is released at most this long after its
/// `gated-until`, or after its Prefetch's status shows the rollout prefetched.
pub const GATE_POLL: Duration = Duration::from_secs(1);
/// A pod released by this process is not patched again for this long (the watch cache may
/// still show the gate).
const RELEASED_MEMORY: Duration = Duration::from_secs(10);

/// Label selector of the gated-pod watch.
pub fn gated_pods_selector() -> String {
    GATED_BY_LABEL.to_string()
}

/// Keeps of a gated pod only what the verdict reads: the gate, the gated-by label, the
/// gated-for and gated-until annotations, the controller owner and pod-template-hash (its
/// workload), its images, and the affinity that pins a DaemonSet's pod to its node.
pub fn slim_gated_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    if let Some(owners) = meta.owner_references.as_mut() {
        owners.retain(|o| o.controller == Some(true));
    }
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == GATED_BY_LABEL || k == POD_TEMPLATE_HASH_LABEL);
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == GATED_UNTIL_ANNOTATION || k == GATED_FOR_ANNOTATION);
    }
    pod.spec = Some(images_and_pin(pod.spec.take().unwrap_or_default()));
    pod.status = None;
}

/// A pod spec cut to its gates, what its images are read from, and its affinity.
fn images_and_pin(spec: PodSpec) -> PodSpec {
    PodSpec {
        scheduling_gates: spec.scheduling_gates.clone(),
        affinity: spec.affinity.clone(),
        ..for_pulls(spec)
    }
}

pub async fn run(
    ctx: Arc<Context>,
    prefetches: Store<Prefetch>,
    pods: Store<Pod>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    // A half-filled Prefetch cache would read as "Prefetch removed" and release pods early.
    if !crate::shell::context::synced_with(&prefetches, &pods, &stop).await {
        return;
    }
    tracing::info!("warm rollouts: releasing gated pods when prefetched or at gated-until");
    let mut released: HashMap<String, Instant> = HashMap::new();
    loop {
        pass(&ctx, &prefetches, &pods, &mut released).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(GATE_POLL) => {}
        }
    }
    ctx.metrics.gate.gated_pods.set(0);
}

/// The verdict on one gated pod, with what the pulls of its Prefetch have done so far.
fn pod_verdict(
    ctx: &Context,
    pod: &Pod,
    prefetch: Option<&Prefetch>,
    node_lists: &HashMap<String, BTreeSet<String>>,
    now: jiff::Timestamp,
) -> Verdict {
    let round = prefetch.and_then(|p| p.uid());
    // The round's outcomes only matter for a pod pinned to a node (a DaemonSet's); read under
    // the lock when asked, never copied.
    let node_done = |node: &str, image: &str| {
        node_lists.get(node).is_some_and(|l| l.contains(image))
            || round.as_ref().is_some_and(|uid| {
                let pair = (node.to_string(), image.to_string());
                lock(&ctx.rounds)
                    .get(uid)
                    .is_some_and(|m| m.outcomes.contains_key(&pair))
            })
    };
    let done_everywhere = round
        .as_ref()
        .and_then(|uid| lock(&ctx.done_everywhere).get(uid).cloned());
    let progress = Progress {
        node_done: &node_done,
        done_everywhere: done_everywhere.as_ref(),
    };
    verdict(pod, prefetch, &progress, now)
}

/// The images each node a gated pod is pinned to lists, normalized, read once per pass.
fn pinned_node_images(
    nodes: &Store<Node>,
    gated: &[Arc<Pod>],
) -> HashMap<String, BTreeSet<String>> {
    gated
        .iter()
        .filter_map(|pod| pinned_node(pod))
        .filter_map(|name| {
            let node = nodes.get(&ObjectRef::new(name))?;
            Some((name.to_string(), node_images(&node)))
        })
        .collect()
}

/// Pods released, per (namespace, Prefetch, reason): one Event each per pass.
type Releases = BTreeMap<(String, String, Release), usize>;

/// One look at every gated pod: release those whose verdict says so, count those held, and
/// record the releases on their Prefetches.
#[tracing::instrument(name = "gate_pass", skip_all)]
async fn pass(
    ctx: &Context,
    prefetches: &Store<Prefetch>,
    pods: &Store<Pod>,
    released: &mut HashMap<String, Instant>,
) {
    let now = jiff::Timestamp::now();
    released.retain(|_, at| at.elapsed() < RELEASED_MEMORY);
    let mut held = 0i64;
    let mut releases = Releases::new();
    let gated = pods.state();
    let node_lists = pinned_node_images(&ctx.nodes, &gated);
    for pod in gated {
        let uid = pod.uid().unwrap_or_default();
        if released.contains_key(&uid) {
            continue;
        }
        let (Some(namespace), Some(gated_by)) =
            (pod.namespace(), pod.labels().get(GATED_BY_LABEL).cloned())
        else {
            continue;
        };
        let prefetch = prefetches.get(&ObjectRef::new(&gated_by).within(&namespace));
        let reason = match pod_verdict(ctx, &pod, prefetch.as_deref(), &node_lists, now) {
            Verdict::NotGated => continue,
            Verdict::Hold { .. } => {
                held += 1;
                continue;
            }
            Verdict::Release(reason) => reason,
        };
        let span = tracing::info_span!(
            "gate",
            pod = %format!("{namespace}/{}", pod.name_any()),
            prefetch = %gated_by
        );
        match release(ctx, &pod, &namespace, reason, now)
            .instrument(span)
            .await
        {
            Released::Yes => {
                released.insert(uid, Instant::now());
                *releases.entry((namespace, gated_by, reason)).or_default() += 1;
            }
            Released::Gone => {}
            Released::Failed => held += 1,
        }
    }
    ctx.metrics.gate.gated_pods.set(held);
    publish_releases(ctx, prefetches, releases).await;
}

/// What became of a release.
enum Released {
    Yes,
    /// The pod is gone, or has no gate of ours left to remove.
    Gone,
    /// Still gated: the next pass tries again.
    Failed,
}

/// Removes our scheduling gate from `pod` for `reason`, and counts the release.
async fn release(
    ctx: &Context,
    pod: &Pod,
    namespace: &str,
    reason: Release,
    now: jiff::Timestamp,
) -> Released {
    let Some(patch) = release_patch(pod) else {
        return Released::Gone;
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let name = pod.name_any();
    match api
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {
            let waited = pod
                .creation_timestamp()
                .map(|t| now.duration_since(t.0).as_secs_f64().max(0.0))
                .unwrap_or(0.0);
            ctx.metrics.gate.rollout_gate.observe(waited);
            ctx.metrics
                .gate
                .gate_releases
                .get_or_create(&ReleaseLabel { result: reason })
                .inc();
            tracing::info!(
                reason = reason.as_str(),
                waited_seconds = waited,
                "released a gated pod"
            );
            Released::Yes
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Released::Gone,
        Err(err) => {
            // 422: the gate list changed since the cache read it; the next pass sees it.
            tracing::warn!(error = %err, "could not release a gated pod; retrying");
            Released::Failed
        }
    }
}

/// One Event per Prefetch and reason for the pods this pass released.
async fn publish_releases(ctx: &Context, prefetches: &Store<Prefetch>, releases: Releases) {
    for ((namespace, name, reason), count) in releases {
        let (type_, why, note) = reason.event(count);
        let uid = prefetches
            .get(&ObjectRef::new(&name).within(&namespace))
            .and_then(|p| p.uid());
        let reference = ObjectReference {
            api_version: Some(format!(
                "{}/{}",
                prefetch_common::annotations::API_GROUP,
                prefetch_common::annotations::API_VERSION
            )),
            kind: Some(prefetch_common::annotations::KIND.into()),
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid,
            ..Default::default()
        };
        let event = Event {
            type_: event_type(type_),
            reason: why.into(),
            note: Some(note),
            action: "ReleaseGate".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(prefetch = %format!("{namespace}/{name}"), error = %err, "could not record event");
        }
    }
}
