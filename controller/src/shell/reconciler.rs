//! The imperative shell around one Prefetch: [`reconcile`] reads the watch caches (see
//! `caches.rs`), [`reconcile_round`] decides, and the writes go out; [`run`] runs the
//! Controller and the loops beside it for one term of leadership.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use prefetch_common::Prefetch;
use prefetch_shell::watch::WatchSet;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::core::budget::BudgetLedger;
use crate::core::ledger::PullLedger;
use crate::core::ownership::{Owner, RoundPods, sort_pods};
use crate::core::plan::{ImagePlan, account_secrets, plan_images_with};
use crate::core::pod::NODE_ANNOTATION;
use crate::core::round::{
    EventNote, RoundDecision, RoundInput, RoundMemory, cached_status_predates, reconcile_round,
};
use crate::core::signal::newest_rollout_signal;
use crate::core::status_patch;
use crate::core::warmup::{WarmupConfig, open_warming_targets, settled};
use crate::shell::budgets;
use crate::shell::caches::{self, Caches, Wakes};
use crate::shell::context::{Context, WorkloadSnapshot, cached_images, lock};
use crate::shell::events::{EventPublisher, event_type};
use crate::shell::metrics::{Metrics, ReasonLabel, ReconcileResult, ResultLabel};
use crate::shell::ratelimit::RateLimiter;
use crate::shell::records::{assumed_present, record_outcomes};
use crate::shell::starts;

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
        tracing::warn!(stale = %stale, "status held fields this controller did not apply (another field manager wrote them); removing them");
        let params = PatchParams {
            field_manager: Some(status_patch::FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch_status(name, &params, &Patch::Merge(stale))
            .await?;
    }
    Ok(())
}

/// One reconcile of a Prefetch, as kube-runtime's Controller calls it: read the caches, let
/// [`reconcile_round`] decide, then delete and create pods, write the status, count and
/// record events. Its span names the Prefetch once for every line logged inside.
#[tracing::instrument(
    name = "reconcile",
    skip_all,
    fields(prefetch = %prefetch.name_any(), namespace = %prefetch.namespace().unwrap_or_default())
)]
pub async fn reconcile(prefetch: Arc<Prefetch>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = prefetch.namespace().ok_or(Error::NoNamespace)?;
    let name = prefetch.name_any();
    let uid = prefetch.uid().unwrap_or_default();
    if prefetch.metadata.deletion_timestamp.is_some() {
        // Its pods are owned by it: the garbage collector removes them.
        forget(&ctx, &uid);
        return Ok(Action::await_change());
    }
    let memory = lock(&ctx.rounds).get(&uid).cloned();
    if memory.is_none() && cache_behind_own_write(&ctx, &prefetch, &uid) {
        // Decided from this status, the round would resume and the status be written back.
        tracing::debug!("cache behind our own status write; looking again shortly");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let owner = Owner {
        namespace: &namespace,
        name: &name,
        uid: &uid,
    };
    let round_pods = sort_pods(ctx.pods.state().iter().map(AsRef::as_ref), owner);
    let mut decision = decide(&ctx, &prefetch, &round_pods, memory.as_ref());
    starts::fill_status(&ctx, &prefetch, &mut decision.status);
    // Before any pod is deleted: outcomes on warming nodes and full lists outlive this round.
    record_outcomes(&ctx, &decision.observed);

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    delete_pods(&pods, &decision.delete, &round_pods.own).await?;
    create_pods(&ctx, &pods, &decision.create).await?;
    // Memory first: a failed status write must not lose recorded outcomes.
    remember_round(&ctx, &uid, &decision);
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
    budgets::publish_waits(&ctx, &uid, Some(&decision));
    count_round(&ctx, uid, &decision);
    publish_round_events(&ctx, &prefetch, &decision.events).await;
    Ok(Action::requeue(decision.requeue_after))
}

/// Drops what this process remembers of a Prefetch being deleted.
fn forget(ctx: &Context, uid: &str) {
    budgets::publish_waits(ctx, uid, None);
    lock(&ctx.rounds).remove(uid);
    lock(&ctx.done_everywhere).remove(uid);
    lock(&ctx.ended).remove(uid);
}

/// Whether the cached status predates the end of the round this process last wrote.
fn cache_behind_own_write(ctx: &Context, prefetch: &Prefetch, uid: &str) -> bool {
    let ended = lock(&ctx.ended).get(uid).copied();
    ended.is_some_and(|ended| cached_status_predates(prefetch.status.as_ref(), ended))
}

/// Plans from the caches and decides the round.
fn decide(
    ctx: &Context,
    prefetch: &Prefetch,
    round_pods: &RoundPods,
    memory: Option<&RoundMemory>,
) -> RoundDecision {
    let snapshot = WorkloadSnapshot::of(ctx);
    let nodes = ctx.nodes.state();
    let now = jiff::Timestamp::now();
    let warmup_taint = ctx.warmup.as_ref().map(|w| w.taint.as_str());
    let namespace = prefetch.namespace().unwrap_or_default();
    let accounts = account_secrets(
        ctx.service_accounts.state().iter().map(AsRef::as_ref),
        &namespace,
    );
    let plan = plan_images_with(
        prefetch,
        snapshot.workloads(),
        &accounts,
        nodes.iter().map(AsRef::as_ref),
        warmup_taint,
        cached_images,
        |node, image| assumed_present(ctx, prefetch, node, image),
    );
    if !plan.missing_accounts.is_empty() {
        // Their workloads' pods cannot be created either; the prefetch pods do without.
        tracing::info!(accounts = ?plan.missing_accounts, "selected workloads name ServiceAccounts that do not exist: their pull secrets are not carried");
    }
    let warming_open = warming_open(ctx, &plan, prefetch);
    let recorded = prefetch
        .status
        .as_ref()
        .and_then(|s| s.last_rollout.as_ref())
        .and_then(|r| r.requested_at.as_ref())
        .map(|t| t.0);
    let signal = newest_rollout_signal(prefetch, snapshot.workloads(), recorded);
    budgets::decide_within(ctx, now, |allowance| {
        reconcile_round(&RoundInput {
            prefetch,
            plan: &plan,
            pods: &round_pods.own,
            busy_nodes: &round_pods.busy_nodes,
            rollout: signal.as_ref(),
            memory,
            now,
            noop_image: &ctx.noop_image,
            warmup_taint,
            warming_open: &warming_open,
            allowance,
        })
    })
}

/// Deletes the pods the round is done with. Only the pod we read: a pod created since under
/// the same (deterministic) name is another round's, and the uid precondition makes its
/// deletion a 409.
async fn delete_pods(pods: &Api<Pod>, names: &[String], own: &[Pod]) -> Result<(), Error> {
    for pod_name in names {
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
            Ok(_) => tracing::debug!(pod = %pod_name, "deleted finished prefetch pod"),
            // Gone already, or replaced by a newer pod of the same name: nothing of ours to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Creates the round's new pods, paced by the controller-wide rate limit.
async fn create_pods(ctx: &Context, pods: &Api<Pod>, create: &[Pod]) -> Result<(), Error> {
    for pod in create {
        ctx.limiter.acquire().await;
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => {
                ctx.metrics.rounds.pods_created.inc();
                let node = pod
                    .annotations()
                    .get(NODE_ANNOTATION)
                    .cloned()
                    .unwrap_or_default();
                tracing::info!(pod = %pod.name_any(), node = %node, "created prefetch pod");
            }
            // Created before and not yet in our cache: the deterministic name did its job.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// What the gate loop and the next reconcile read of this round.
fn remember_round(ctx: &Context, uid: &str, decision: &RoundDecision) {
    lock(&ctx.done_everywhere).insert(uid.to_string(), decision.done_everywhere.clone());
    match &decision.memory {
        Some(m) => lock(&ctx.rounds).insert(uid.to_string(), m.clone()),
        None => lock(&ctx.rounds).remove(uid),
    };
}

/// The round's metrics: pairs pulled and failed, rollout latency, pods in flight.
fn count_round(ctx: &Context, uid: String, decision: &RoundDecision) {
    let metrics = &ctx.metrics.rounds;
    metrics
        .images_prefetched
        .inc_by(decision.newly_pulled as u64);
    for reason in &decision.newly_failed {
        metrics
            .pull_failures
            .get_or_create(&ReasonLabel {
                reason: reason.clone(),
            })
            .inc();
    }
    if let Some(latency) = decision.rollout_latency {
        metrics.rollout_latency.observe(latency.as_secs_f64());
    }
    let mut inflight = lock(&ctx.inflight);
    inflight.insert(uid, decision.in_flight);
    metrics
        .inflight_pods
        .set(inflight.values().sum::<usize>() as i64);
}

/// Logs and records the round's events on the Prefetch.
async fn publish_round_events(ctx: &Context, prefetch: &Prefetch, notes: &[EventNote]) {
    let reference = prefetch.object_ref(&());
    for note in notes {
        tracing::info!(reason = note.reason, "{}", note.message);
        let event = KubeEvent {
            type_: event_type(note.type_),
            reason: note.reason.into(),
            note: Some(note.message.clone()),
            action: "Prefetch".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, "could not record event");
        }
    }
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
        .rounds
        .reconciles
        .get_or_create(&ResultLabel {
            result: ReconcileResult::Error,
        })
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
    pub budgets: Option<Arc<Mutex<BudgetLedger>>>,
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
    let (caches, triggers, wakes) = caches::start(&client, watches, &stop);
    // Planning on a half-filled cache would run rounds over too few nodes: wait for every cache.
    // Until then `/readyz` says which watch is missing and why. The Prefetch cache too: the
    // Controller holds its runner until that store is ready, and a held runner would never
    // finish, not even on shutdown (as with the CRD not installed).
    tokio::select! {
        _ = term.cancelled() => {
            tracing::info!("stopping before the watch caches synced");
            return;
        }
        synced = caches.synced() => if synced.is_err() {
            tracing::error!("a watch cache ended before it synced");
            return;
        }
    }
    tracing::info!("watch caches synced; reconciling");
    let controller = caches::controller(triggers, &caches);
    let (prefetches, gated_pods) = (caches.prefetches.clone(), caches.gated_pods.clone());
    let events = watches.register("events");
    let concurrency = settings.concurrency;
    let warmup = settings.warmup.clone();
    let gate_wake = wakes.gate.clone();
    let labels = (caches.gated_namespaces.clone(), wakes.namespaces.clone());
    let ctx = Arc::new(context(client, caches, wakes, metrics.clone(), settings));
    // Starts are counted once the caches that attribute them have synced; their counts reach
    // the status through the rounds the count asks for.
    let starts_rounds = starts::spawn(ctx.clone(), prefetches.clone(), events, stop.clone());
    let loops = Loops::spawn(
        &ctx, warmup, prefetches, gated_pods, gate_wake, labels, &stop,
    );
    controller
        .reconcile_on(starts_rounds)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(term.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok(_) => {
                    metrics
                        .rounds
                        .reconciles
                        .get_or_create(&ResultLabel {
                            result: ReconcileResult::Ok,
                        })
                        .inc();
                }
                Err(err) => tracing::debug!(error = %err, "reconcile dispatch error"),
            }
            std::future::ready(())
        })
        .await;
    stop.cancel();
    loops.finish().await;
}

/// What the reconciles and the loops beside them share, for one term of leadership.
fn context(
    client: Client,
    caches: Caches,
    wakes: Wakes,
    metrics: Arc<Metrics>,
    settings: Settings,
) -> Context {
    let recorder = EventPublisher::new(
        client.clone(),
        Reporter {
            controller: "prefetch-controller".into(),
            instance: Some(settings.identity),
        },
    );
    Context {
        client,
        nodes: caches.nodes,
        deployments: caches.deployments,
        stateful_sets: caches.stateful_sets,
        daemon_sets: caches.daemon_sets,
        jobs: caches.jobs,
        cron_jobs: caches.cron_jobs,
        replica_sets: caches.replica_sets,
        revisions: caches.revisions,
        service_accounts: caches.service_accounts,
        pods: caches.pods,
        rounds: Mutex::new(HashMap::new()),
        done_everywhere: Mutex::new(HashMap::new()),
        ended: Mutex::new(HashMap::new()),
        inflight: Mutex::new(HashMap::new()),
        metrics,
        recorder,
        limiter: RateLimiter::new(settings.max_pod_creates_per_second),
        noop_image: settings.noop_image,
        warmup: settings.warmup,
        ledger: Mutex::new(PullLedger::default()),
        node_status_max_images: settings.node_status_max_images,
        warm_wake: wakes.warm,
        reconcile_all: wakes.reconcile_all,
        starts: Mutex::default(),
        budgets: settings.budgets,
        budget_waits: Mutex::default(),
    }
}

/// The loops beside the Controller, leader only, for as long as this term of leadership.
struct Loops {
    warm: Option<JoinHandle<()>>,
    gate: JoinHandle<()>,
    namespaces: JoinHandle<()>,
}

impl Loops {
    fn spawn(
        ctx: &Arc<Context>,
        warmup: Option<WarmupConfig>,
        prefetches: Store<Prefetch>,
        gated_pods: Store<Pod>,
        gate_wake: Arc<Notify>,
        (namespaces, namespaces_wake): (Store<k8s_openapi::api::core::v1::Namespace>, Arc<Notify>),
        stop: &CancellationToken,
    ) -> Self {
        let warm = warmup.map(|config| {
            tokio::spawn(crate::shell::warmer::run(
                ctx.clone(),
                config,
                prefetches.clone(),
                stop.clone(),
            ))
        });
        tokio::spawn(crate::shell::records::upkeep(
            ctx.clone(),
            prefetches.clone(),
            stop.clone(),
        ));
        let labels = tokio::spawn(crate::shell::namespaces::run(
            ctx.clone(),
            prefetches.clone(),
            namespaces,
            namespaces_wake,
            stop.clone(),
        ));
        let gate = tokio::spawn(crate::shell::gate_loop::run(
            ctx.clone(),
            prefetches,
            gated_pods,
            gate_wake,
            stop.clone(),
        ));
        Self {
            warm,
            gate,
            namespaces: labels,
        }
    }

    /// Lets a taint removal or gate release in progress finish (bounded); `stop` was cancelled.
    async fn finish(self) {
        if tokio::time::timeout(Duration::from_secs(5), self.namespaces)
            .await
            .is_err()
        {
            tracing::warn!("the namespace loop did not stop within 5 s");
        }
        if tokio::time::timeout(Duration::from_secs(5), self.gate)
            .await
            .is_err()
        {
            tracing::warn!("the gate loop did not stop within 5 s");
        }
        if let Some(task) = self.warm
            && tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
        {
            tracing::warn!("the warm loop did not stop within 5 s");
        }
    }
}
