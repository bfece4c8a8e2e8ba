//! The imperative shell: watch caches in, [`reconcile_round`] decides, writes out.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use prefetch_common::Prefetch;
use prefetch_common::annotations::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, PREFETCH_IMAGES, PREFETCH_LABEL, PREFETCH_REQUESTED_AT,
};
use prefetch_shell::watch::{WatchHealth, WatchSet, spawn_watch};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::core::eligibility::{PLANNING_CONDITIONS, has_disk_pressure, is_ready};
use crate::core::ledger::PullLedger;
use crate::core::outcome::read_pod;
use crate::core::plan::{
    ImagePlan, account_secrets, node_images, plan_images_with, selects_deployment,
};
use crate::core::pod::NODE_ANNOTATION;
use crate::core::revisions::{for_pulls, revision_pod_spec};
use crate::core::round::{RoundInput, cached_status_predates, reconcile_round};
use crate::core::signal::newest_rollout_signal;
use crate::core::status_patch;
use crate::core::warmup::{WarmupConfig, open_warming_targets, settled};
use crate::core::workload::{Workload, selects_workload};
use crate::shell::context::{Context, WorkloadSnapshot, cached_images, lock};
use crate::shell::events::EventPublisher;
use crate::shell::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::shell::ratelimit::RateLimiter;
use crate::shell::records::{assumed_present, cached_listed, record_outcomes};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Prefetch has no namespace")]
    NoNamespace,
}

/// Writes `status` so that the server holds exactly it (see `status_patch.rs`): a forced
/// server-side apply, then, only when the applied object shows fields another manager wrote,
/// a merge patch that removes them.
pub async fn write_status(
    api: &Api<Prefetch>,
    name: &str,
    status: &prefetch_common::PrefetchStatus,
) -> Result<(), Error> {
    let apply = PatchParams::apply(status_patch::FIELD_MANAGER).force();
    let body = Patch::Apply(status_patch::apply_body(name, status));
    let applied = api.patch_status(name, &apply, &body).await?;
    if let Some(stale) = status_patch::stale_status_patch(applied.status.as_ref(), status) {
        tracing::warn!(prefetch = %name, stale = %stale, "status held fields this controller did not apply (another field manager wrote them); removing them");
        let params = PatchParams {
            field_manager: Some(status_patch::FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch_status(name, &params, &Patch::Merge(stale))
            .await?;
    }
    Ok(())
}

pub fn managed_pods_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

/// What decides whether a node matters to a round; a change here triggers reconciles, a
/// heartbeat does not.
pub fn node_fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    if let Some(spec) = &node.spec {
        spec.unschedulable.hash(&mut h);
        for taint in spec.taints.iter().flatten() {
            (&taint.key, &taint.value, &taint.effect).hash(&mut h);
        }
    }
    is_ready(node).hash(&mut h);
    has_disk_pressure(node).hash(&mut h);
    cached_listed(node).hash(&mut h);
    if let Some(status) = &node.status {
        status
            .node_info
            .as_ref()
            .map(|i| &i.operating_system)
            .hash(&mut h);
        for image in status.images.iter().flatten() {
            image.names.hash(&mut h);
        }
    }
    h.finish()
}

/// Keeps only what planning reads, to bound memory at thousands of nodes.
fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    if let Some(status) = node.status.as_mut() {
        status.addresses = None;
        status.allocatable = None;
        status.capacity = None;
        status.daemon_endpoints = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
        status.config = None;
        if let Some(conditions) = status.conditions.as_mut() {
            conditions.retain(|c| PLANNING_CONDITIONS.contains(&c.type_.as_str()));
            for c in conditions.iter_mut() {
                c.last_heartbeat_time = None;
                c.message = None;
            }
        }
    }
    // One entry holding every name the node reports, normalized, sorted and de-duplicated:
    // planning then checks presence by binary search, and each name is stored once. Its
    // `sizeBytes` is how many images the node listed (`records::cached_listed`, for the
    // full-list rule).
    let listed = node
        .status
        .as_ref()
        .and_then(|s| s.images.as_ref())
        .map_or(0, Vec::len);
    let names: Vec<String> = node_images(node).into_iter().collect();
    if let Some(status) = node.status.as_mut() {
        status.images = (listed > 0).then(|| {
            vec![k8s_openapi::api::core::v1::ContainerImage {
                names: Some(names),
                size_bytes: i64::try_from(listed).ok(),
            }]
        });
    }
}

/// Prefetch pods as planning reads them: identity, owner, node, each container's image, and
/// the status (phase, reason, container states).
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(spec) = pod.spec.as_mut() {
        let containers = std::mem::take(&mut spec.containers)
            .into_iter()
            .map(|c| k8s_openapi::api::core::v1::Container {
                name: c.name,
                image: c.image,
                ..Default::default()
            })
            .collect();
        *spec = k8s_openapi::api::core::v1::PodSpec {
            containers,
            ..Default::default()
        };
    }
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
        status.host_ip = None;
        status.host_ips = None;
        status.pod_ip = None;
        status.pod_ips = None;
    }
}

/// Maps a changed workload to the Prefetches that select it (the Controller reconciles them).
fn selecting<K>(prefetches: &Store<Prefetch>) -> impl Fn(K) -> Vec<ObjectRef<Prefetch>> + use<K>
where
    for<'k> &'k K: Into<Workload<'k>>,
{
    let prefetches = prefetches.clone();
    move |object: K| {
        let workload: Workload<'_> = (&object).into();
        prefetches
            .state()
            .into_iter()
            .filter(|p| selects_workload(p, &workload))
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect()
    }
}

/// Maps a changed ReplicaSet to the Prefetches that select its Deployment.
fn owner_selecting(
    deployments: &Store<Deployment>,
    prefetches: &Store<Prefetch>,
) -> impl Fn(ReplicaSet) -> Vec<ObjectRef<Prefetch>> + use<> {
    let (deployments, prefetches) = (deployments.clone(), prefetches.clone());
    move |replica_set: ReplicaSet| {
        let owner = replica_set
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Deployment")
            .map(|o| o.name.clone());
        let Some(deployment) = owner.and_then(|name| {
            let namespace = replica_set.namespace().unwrap_or_default();
            deployments.get(&ObjectRef::new(&name).within(&namespace))
        }) else {
            return Vec::new();
        };
        prefetches
            .state()
            .into_iter()
            .filter(|p| selects_deployment(p, &deployment))
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect()
    }
}

/// Keeps what selection, planning and the rollout signal read of a StatefulSet, DaemonSet, Job
/// or CronJob: metadata without managedFields and with only the signal's annotations (the
/// last-applied configuration is often the largest part of an object), and the spec.
fn slim_workload<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == PREFETCH_IMAGES || k == PREFETCH_REQUESTED_AT);
    }
}

/// A watch cache of one workload kind, and the stream of its changes for the Controller.
fn workload_cache<K>(
    health: Arc<WatchHealth>,
    client: &Client,
    stop: &CancellationToken,
) -> (Store<K>, mpsc::UnboundedReceiver<Result<K, watcher::Error>>)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let store = cache(
        health,
        Api::<K>::all(client.clone()),
        watcher::Config::default(),
        slim_workload::<K>,
        move |event| forward(event, &tx, true),
        stop.clone(),
    );
    (store, rx)
}

/// Keeps of a ControllerRevision its name, namespace, controller owner, number and, of its
/// `data`, the pod template's images and pull secrets (see `revisions::for_pulls`).
fn slim_revision(revision: &mut ControllerRevision) {
    let meta = &mut revision.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    let spec = revision_pod_spec(revision);
    revision.data = spec.and_then(|spec| {
        let template = serde_json::to_value(for_pulls(spec)).ok()?;
        Some(RawExtension(
            serde_json::json!({"spec": {"template": {"spec": template}}}),
        ))
    });
}

/// Keeps what planning reads of a ServiceAccount: its name, namespace and pull secrets (not
/// its token secrets, labels or managedFields).
fn slim_service_account(account: &mut ServiceAccount) {
    *account = ServiceAccount {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: account.metadata.name.take(),
            namespace: account.metadata.namespace.take(),
            ..Default::default()
        },
        image_pull_secrets: account.image_pull_secrets.take(),
        ..Default::default()
    };
}

/// Maps a changed ServiceAccount to the Prefetches in its namespace: the pull secrets of their
/// prefetch pods may change with it.
fn in_namespace_of(
    prefetches: &Store<Prefetch>,
) -> impl Fn(ServiceAccount) -> Vec<ObjectRef<Prefetch>> + use<> {
    let prefetches = prefetches.clone();
    move |account: ServiceAccount| {
        prefetches
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace == account.metadata.namespace)
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect()
    }
}

fn slim_deployment(deployment: &mut Deployment) {
    deployment.metadata.managed_fields = None;
    if let Some(annotations) = deployment.metadata.annotations.as_mut() {
        annotations.retain(|k, _| k == PREFETCH_IMAGES || k == PREFETCH_REQUESTED_AT);
    }
    deployment.status = None;
}

/// A watch cache for one term of leadership: the shared watch runner (see
/// `prefetch_shell::watch`) feeding a store, objects slimmed first; `on_event` sees each event
/// after the store applied it.
fn cache<K>(
    health: Arc<WatchHealth>,
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    mut on_event: impl FnMut(&Event<K>) + Send + 'static,
    stop: CancellationToken,
) -> Store<K>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, mut writer) = reflector::store();
    spawn_watch(health, api, config, stop, move |event| {
        let event = event.modify(slim);
        writer.apply_watcher_event(&event);
        on_event(&event);
    });
    reader
}

type Trigger<K> = mpsc::UnboundedSender<Result<K, watcher::Error>>;

/// Feeds the objects an event touched (applied, or deleted too) to a Controller trigger.
/// Unbounded, but the Controller drains it as it comes (its scheduler keeps one entry per
/// object), so it holds what one watch event carries.
fn forward<K: Clone>(event: &Event<K>, trigger: &Trigger<K>, deleted_too: bool) {
    match event {
        Event::Apply(obj) | Event::InitApply(obj) => {
            let _ = trigger.send(Ok(obj.clone()));
        }
        Event::Delete(obj) if deleted_too => {
            let _ = trigger.send(Ok(obj.clone()));
        }
        _ => {}
    }
}

fn trigger_stream<K>(
    rx: mpsc::UnboundedReceiver<Result<K, watcher::Error>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

pub async fn reconcile(prefetch: Arc<Prefetch>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = prefetch.namespace().ok_or(Error::NoNamespace)?;
    let name = prefetch.name_any();
    let uid = prefetch.uid().unwrap_or_default();
    if prefetch.metadata.deletion_timestamp.is_some() {
        // Its pods are owned by it: the garbage collector removes them.
        lock(&ctx.rounds).remove(&uid);
        lock(&ctx.done_everywhere).remove(&uid);
        lock(&ctx.ended).remove(&uid);
        return Ok(Action::await_change());
    }
    let memory = lock(&ctx.rounds).get(&uid).cloned();
    if memory.is_none()
        && let Some(ended) = lock(&ctx.ended).get(&uid).copied()
        && cached_status_predates(prefetch.status.as_ref(), ended)
    {
        // Decided from this status, the round would resume and the status be written back.
        tracing::debug!(prefetch = %name, "cache behind our own status write; looking again shortly");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let snapshot = WorkloadSnapshot::of(&ctx);
    let nodes = ctx.nodes.state();
    let all_pods = ctx.pods.state();
    let now = jiff::Timestamp::now();

    let (mut own, mut busy) = (Vec::new(), BTreeSet::new());
    for pod in &all_pods {
        let mine = pod.namespace().as_deref() == Some(namespace.as_str())
            && pod.labels().get(PREFETCH_LABEL).map(String::as_str) == Some(name.as_str())
            // Owned by this Prefetch, not merely labelled like it: a pod someone else made
            // with our labels is never touched.
            && pod.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid);
        if mine {
            own.push(pod.as_ref().clone());
        } else if pod.metadata.deletion_timestamp.is_none()
            && !read_pod(pod, false).finished
            && let Some(node) = pod.annotations().get(NODE_ANNOTATION)
        {
            busy.insert(node.clone());
        }
    }
    let warmup_taint = ctx.warmup.as_ref().map(|w| w.taint.as_str());
    let accounts = account_secrets(
        ctx.service_accounts.state().iter().map(AsRef::as_ref),
        &namespace,
    );
    let plan = plan_images_with(
        &prefetch,
        snapshot.workloads(),
        &accounts,
        nodes.iter().map(AsRef::as_ref),
        warmup_taint,
        cached_images,
        |node, image| assumed_present(&ctx, &prefetch, node, image),
    );
    if !plan.missing_accounts.is_empty() {
        // Their workloads' pods cannot be created either; the prefetch pods do without.
        tracing::info!(prefetch = %name, accounts = ?plan.missing_accounts, "selected workloads name ServiceAccounts that do not exist: their pull secrets are not carried");
    }
    let warming_open = warming_open(&ctx, &plan, &prefetch);
    let recorded = prefetch
        .status
        .as_ref()
        .and_then(|s| s.last_rollout.as_ref())
        .and_then(|r| r.requested_at.as_ref())
        .map(|t| t.0);
    let signal = newest_rollout_signal(&prefetch, snapshot.workloads(), recorded);
    let decision = reconcile_round(&RoundInput {
        prefetch: &prefetch,
        plan: &plan,
        pods: &own,
        busy_nodes: &busy,
        rollout: signal.as_ref(),
        memory: memory.as_ref(),
        now,
        noop_image: &ctx.noop_image,
        warmup_taint,
        warming_open: &warming_open,
    });
    // Before any pod is deleted: outcomes on warming nodes and full lists outlive this round.
    record_outcomes(&ctx, &decision.observed);

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for pod_name in &decision.delete {
        // Only the pod we read: a pod created since under the same (deterministic) name is
        // another round's, and the uid precondition makes its deletion a 409.
        let observed_uid = own
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(pod_name.as_str()))
            .and_then(|p| p.metadata.uid.clone());
        let params = DeleteParams {
            preconditions: observed_uid.map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(pod_name, &params).await {
            Ok(_) => {
                tracing::debug!(prefetch = %name, pod = %pod_name, "deleted finished prefetch pod")
            }
            // Gone already, or replaced by a newer pod of the same name: nothing of ours to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    for pod in &decision.create {
        ctx.limiter.acquire().await;
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => {
                ctx.metrics.pods_created.inc();
                tracing::info!(prefetch = %name, pod = %pod.name_any(), node = %pod.annotations().get(NODE_ANNOTATION).cloned().unwrap_or_default(), "created prefetch pod");
            }
            // Created before and not yet in our cache: the deterministic name did its job.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }

    // Memory first: a failed status write must not lose recorded outcomes.
    lock(&ctx.done_everywhere).insert(uid.clone(), decision.done_everywhere.clone());
    match &decision.memory {
        Some(m) => lock(&ctx.rounds).insert(uid.clone(), m.clone()),
        None => lock(&ctx.rounds).remove(&uid),
    };
    let mut decision = decision;
    decision.status.starts = ctx
        .starts
        .status_of(&prefetch, now)
        .or_else(|| prefetch.status.as_ref().and_then(|s| s.starts.clone()));
    decision.status.pulls = ctx.starts.pull_figures(&decision.status.images);
    if prefetch.status.as_ref() != Some(&decision.status) {
        let api: Api<Prefetch> = Api::namespaced(ctx.client.clone(), &namespace);
        write_status(&api, &name, &decision.status).await?;
    }
    // Written (or already so): until the cache shows it, no reconcile may take the round for
    // running.
    match (&decision.memory, &decision.status.last_round_start) {
        (None, Some(started)) => lock(&ctx.ended).insert(uid.clone(), started.0),
        _ => lock(&ctx.ended).remove(&uid),
    };

    ctx.metrics
        .images_prefetched
        .inc_by(decision.newly_pulled as u64);
    for reason in &decision.newly_failed {
        ctx.metrics
            .pull_failures
            .get_or_create(&ReasonLabel {
                reason: reason.clone(),
            })
            .inc();
    }
    if let Some(latency) = decision.rollout_latency {
        ctx.metrics.rollout_latency.observe(latency.as_secs_f64());
    }
    {
        let mut inflight = lock(&ctx.inflight);
        inflight.insert(uid, decision.in_flight);
        ctx.metrics
            .inflight_pods
            .set(inflight.values().sum::<usize>() as i64);
    }
    let reference = prefetch.object_ref(&());
    for note in &decision.events {
        tracing::info!(prefetch = %format!("{namespace}/{name}"), reason = note.reason, "{}", note.message);
        let event = KubeEvent {
            type_: if note.type_ == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.into(),
            note: Some(note.message.clone()),
            action: "Prefetch".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, "could not record event");
        }
    }
    Ok(Action::requeue(decision.requeue_after))
}

/// Warming targets of `plan` with a pair not done yet, by the ledger and this Prefetch's status.
fn warming_open(ctx: &Context, plan: &ImagePlan, prefetch: &Prefetch) -> BTreeSet<String> {
    if !plan.targets.iter().any(|t| t.warming) {
        return BTreeSet::new();
    }
    let ledger = lock(&ctx.ledger);
    open_warming_targets(plan, |node, image| {
        ctx.nodes
            .get(&ObjectRef::new(node))
            .is_some_and(|n| settled(&ledger, &n, prefetch.status.as_ref(), image))
    })
}

pub fn error_policy(prefetch: Arc<Prefetch>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabel { result: "error" })
        .inc();
    tracing::warn!(prefetch = %prefetch.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

pub struct Settings {
    pub noop_image: String,
    pub warmup: Option<WarmupConfig>,
    pub max_pod_creates_per_second: f64,
    pub identity: String,
    pub concurrency: u16,
    pub node_status_max_images: u32,
}

/// Runs the controller until `term` is cancelled (shutdown, or leadership lost), whatever
/// state it is in: waiting for the caches to sync, or reconciling (in-flight reconciles
/// finish; the caller bounds how long).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    watches: &WatchSet,
    term: CancellationToken,
) {
    // The watch caches live as long as this term of leadership, and past `term` until the
    // reconciles in flight have finished.
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let (node_tx, node_rx) = mpsc::channel::<()>(1);
    let warm_wake = Arc::new(Notify::new());
    let reconcile_all = node_tx.clone();
    let node_changed = warm_wake.clone();
    let mut fingerprints: HashMap<String, u64> = HashMap::new();
    let nodes = cache(
        watches.register("nodes"),
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        slim_node,
        move |event| {
            let changed = match event {
                Event::Apply(node) | Event::InitApply(node) => {
                    let print = node_fingerprint(node);
                    fingerprints.insert(node.name_any(), print) != Some(print)
                        && matches!(event, Event::Apply(_))
                }
                Event::Delete(node) => fingerprints.remove(&node.name_any()).is_some(),
                Event::InitDone => true,
                Event::Init => false,
            };
            if changed {
                // A full channel already holds a pending trigger: dropping this one loses nothing.
                let _ = node_tx.try_send(());
                node_changed.notify_one();
            }
        },
        stop.clone(),
    );
    // One watch per resource feeds both the caches the rounds read and the Controller's
    // triggers.
    let (deployment_tx, deployment_rx) = mpsc::unbounded_channel();
    let deployments = cache(
        watches.register("deployments"),
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
        slim_deployment,
        move |event| forward(event, &deployment_tx, true),
        stop.clone(),
    );
    let (stateful_sets, stateful_set_rx) =
        workload_cache::<StatefulSet>(watches.register("statefulsets"), &client, &stop);
    let (daemon_sets, daemon_set_rx) =
        workload_cache::<DaemonSet>(watches.register("daemonsets"), &client, &stop);
    let (jobs, job_rx) = workload_cache::<Job>(watches.register("jobs"), &client, &stop);
    let (cron_jobs, cron_job_rx) =
        workload_cache::<CronJob>(watches.register("cronjobs"), &client, &stop);
    let (replica_sets, replica_set_rx) =
        workload_cache::<ReplicaSet>(watches.register("replicasets"), &client, &stop);
    // No trigger: a rollout's new revision comes with a change of its StatefulSet or
    // DaemonSet, whose watch triggers the reconcile.
    let revisions = cache(
        watches.register("controllerrevisions"),
        Api::<ControllerRevision>::all(client.clone()),
        watcher::Config::default(),
        slim_revision,
        |_| {},
        stop.clone(),
    );
    let (account_tx, account_rx) = mpsc::unbounded_channel();
    let service_accounts = cache(
        watches.register("serviceaccounts"),
        Api::<ServiceAccount>::all(client.clone()),
        watcher::Config::default(),
        slim_service_account,
        move |event| forward(event, &account_tx, true),
        stop.clone(),
    );
    let (pod_tx, pod_rx) = mpsc::unbounded_channel();
    let pods = cache(
        watches.register("pods"),
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(&managed_pods_selector()),
        slim_pod,
        move |event| forward(event, &pod_tx, true),
        stop.clone(),
    );
    let (prefetch_tx, prefetch_rx) = mpsc::unbounded_channel();
    let prefetch_store = cache(
        watches.register("prefetches"),
        Api::<Prefetch>::all(client.clone()),
        watcher::Config::default(),
        |_| {},
        move |event| forward(event, &prefetch_tx, false),
        stop.clone(),
    );

    let gate_wake = Arc::new(Notify::new());
    let gated_pods = {
        let wake = gate_wake.clone();
        cache(
            watches.register("gated-pods"),
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(&crate::shell::gate_loop::gated_pods_selector()),
            crate::shell::gate_loop::slim_gated_pod,
            move |event| {
                if matches!(event, Event::Apply(_) | Event::InitDone) {
                    wake.notify_one();
                }
            },
            stop.clone(),
        )
    };

    // Planning on a half-filled cache would run rounds over too few nodes: wait for every cache.
    // Until then `/readyz` says which watch is missing and why. The Prefetch cache too: the
    // Controller holds its runner until that store is ready, and a held runner would never
    // finish, not even on shutdown (as with the CRD not installed).
    tokio::select! {
        _ = term.cancelled() => {
            tracing::info!("stopping before the watch caches synced");
            return;
        }
        synced = async {
            tokio::try_join!(
                nodes.wait_until_ready(),
                deployments.wait_until_ready(),
                stateful_sets.wait_until_ready(),
                daemon_sets.wait_until_ready(),
                jobs.wait_until_ready(),
                cron_jobs.wait_until_ready(),
                replica_sets.wait_until_ready(),
                revisions.wait_until_ready(),
                service_accounts.wait_until_ready(),
                pods.wait_until_ready(),
                prefetch_store.wait_until_ready()
            )
        } => if synced.is_err() {
            tracing::error!("a watch cache ended before it synced");
            return;
        }
    }
    tracing::info!("watch caches synced; reconciling");
    let controller = Controller::for_stream(trigger_stream(prefetch_rx), prefetch_store.clone());
    let settings_concurrency = settings.concurrency;
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes,
        deployments,
        stateful_sets,
        daemon_sets,
        jobs,
        cron_jobs,
        replica_sets,
        revisions,
        service_accounts,
        pods,
        rounds: Mutex::new(HashMap::new()),
        done_everywhere: Mutex::new(HashMap::new()),
        ended: Mutex::new(HashMap::new()),
        inflight: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        recorder: EventPublisher::new(
            client.clone(),
            Reporter {
                controller: "prefetch-controller".into(),
                instance: Some(settings.identity),
            },
        ),
        limiter: RateLimiter::new(settings.max_pod_creates_per_second),
        noop_image: settings.noop_image,
        warmup: settings.warmup.clone(),
        ledger: Mutex::new(PullLedger::default()),
        node_status_max_images: settings.node_status_max_images,
        warm_wake,
        reconcile_all,
        starts: crate::shell::starts::StartsBook::default(),
    });
    // Starts are counted once the caches that attribute them have synced; their counts reach
    // the status through rounds the loop asks for.
    let (starts_tx, starts_rx) = mpsc::unbounded_channel();
    crate::shell::starts::spawn(
        ctx.clone(),
        prefetch_store.clone(),
        watches.register("events"),
        starts_tx,
        stop.clone(),
    );
    let starts_rounds = futures::stream::unfold(starts_rx, |mut rx| async move {
        rx.recv().await.map(|prefetch| (prefetch, rx))
    });
    // The warm loop runs beside the reconciles, for as long as this term of leadership.
    let warm_loop = settings.warmup.map(|config| {
        tokio::spawn(crate::shell::warmer::run(
            ctx.clone(),
            config,
            prefetch_store.clone(),
            stop.clone(),
        ))
    });
    tokio::spawn(crate::shell::records::upkeep(
        ctx.clone(),
        prefetch_store.clone(),
        stop.clone(),
    ));
    // The gate loop too: leader only, for as long as this term of leadership.
    let gate_loop = tokio::spawn(crate::shell::gate_loop::run(
        ctx.clone(),
        prefetch_store.clone(),
        gated_pods,
        gate_wake,
        stop.clone(),
    ));
    let node_triggers = futures::stream::unfold(node_rx, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    controller
        .owns_stream(trigger_stream(pod_rx))
        .watches_stream(
            trigger_stream(deployment_rx),
            selecting::<Deployment>(&prefetch_store),
        )
        .watches_stream(
            trigger_stream(stateful_set_rx),
            selecting::<StatefulSet>(&prefetch_store),
        )
        .watches_stream(
            trigger_stream(daemon_set_rx),
            selecting::<DaemonSet>(&prefetch_store),
        )
        .watches_stream(trigger_stream(job_rx), selecting::<Job>(&prefetch_store))
        .watches_stream(
            trigger_stream(cron_job_rx),
            selecting::<CronJob>(&prefetch_store),
        )
        .watches_stream(
            trigger_stream(replica_set_rx),
            owner_selecting(&ctx.deployments, &prefetch_store),
        )
        .watches_stream(trigger_stream(account_rx), in_namespace_of(&prefetch_store))
        .reconcile_all_on(node_triggers)
        .reconcile_on(starts_rounds)
        .with_config(kube::runtime::controller::Config::default().concurrency(settings_concurrency))
        .graceful_shutdown_on(term.cancelled_owned())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            match result {
                Ok(_) => {
                    metrics
                        .reconciles
                        .get_or_create(&ResultLabel { result: "ok" })
                        .inc();
                }
                Err(err) => tracing::debug!(error = %err, "reconcile dispatch error"),
            }
            std::future::ready(())
        })
        .await;
    // Let a taint removal or gate release in progress finish (bounded), then stop the loops.
    stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), gate_loop)
        .await
        .is_err()
    {
        tracing::warn!("the gate loop did not stop within 5 s");
    }
    if let Some(task) = warm_loop
        && tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
    {
        tracing::warn!("the warm loop did not stop within 5 s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn heartbeats_do_not_change_the_fingerprint() {
        let a = node(json!({"metadata": {"name": "n", "labels": {"a": "b"}},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-11-22T10:00:00Z"}]}}));
        let mut b = a.clone();
        b.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_heartbeat_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-11-22T10:00:40Z".parse().unwrap(),
            ));
        b.metadata.resource_version = Some("99".into());
        assert_eq!(node_fingerprint(&a), node_fingerprint(&b));
        let mut not_ready = a.clone();
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        assert_ne!(node_fingerprint(&a), node_fingerprint(&not_ready));
        let mut relabeled = a.clone();
        relabeled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert_ne!(node_fingerprint(&a), node_fingerprint(&relabeled));
        let mut cordoned = a.clone();
        cordoned.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        assert_ne!(node_fingerprint(&a), node_fingerprint(&cordoned));
    }

    #[test]
    fn disk_pressure_and_the_image_count_survive_slimming_and_flip_the_fingerprint() {
        let raw = |pressure: &str, heartbeat: &str, images: usize| {
            let images: Vec<serde_json::Value> = (0..images)
                .map(|i| json!({"names": [format!("docker.io/library/img-{i}:1")], "sizeBytes": 1000 - i}))
                .collect();
            node(json!({"metadata": {"name": "n", "annotations": {"a": "b"}},
                "status": {"images": images, "conditions": [
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat},
                    {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat},
                    {"type": "DiskPressure", "status": pressure, "lastHeartbeatTime": heartbeat,
                     "message": "kubelet has disk pressure"}]}}))
        };
        let slim = |mut n: Node| {
            slim_node(&mut n);
            n
        };
        let calm = slim(raw("False", "2026-11-22T10:00:00Z", 50));
        let kinds: Vec<&str> = calm
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(kinds, ["Ready", "DiskPressure"]);
        assert!(!has_disk_pressure(&calm));
        assert_eq!(cached_listed(&calm), 50);
        assert_eq!(cached_images(&calm).len(), 50);
        let pressed = slim(raw("True", "2026-11-22T10:00:00Z", 50));
        assert!(has_disk_pressure(&pressed));
        assert_ne!(node_fingerprint(&calm), node_fingerprint(&pressed));
        // Heartbeats on every condition change nothing.
        let later = slim(raw("False", "2026-11-22T10:00:40Z", 50));
        assert_eq!(node_fingerprint(&calm), node_fingerprint(&later));
        assert_eq!(later.metadata.annotations, None);
        let fewer = slim(raw("False", "2026-11-22T10:00:00Z", 49));
        assert_eq!(cached_listed(&fewer), 49);
        assert_ne!(node_fingerprint(&calm), node_fingerprint(&fewer));
        assert_eq!(
            cached_listed(&slim(raw("False", "2026-11-22T10:00:00Z", 0))),
            0
        );
    }

    #[test]
    fn a_slimmed_service_account_keeps_its_name_and_pull_secrets_only() {
        let mut account: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": "builder", "namespace": "shop", "uid": "u-1",
                         "labels": {"a": "b"}, "annotations": {"c": "d"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "secrets": [{"name": "builder-token"}],
            "imagePullSecrets": [{"name": "sa-regcred"}]}))
        .unwrap();
        slim_service_account(&mut account);
        assert_eq!(
            serde_json::to_value(&account).unwrap(),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "builder", "namespace": "shop"},
                   "imagePullSecrets": [{"name": "sa-regcred"}]})
        );
    }
}
