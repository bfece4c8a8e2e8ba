//! The warm loop (leader only): reads the watch caches, asks `warmup.rs` about every warming
//! node, removes the warmup taint from those that are done, and says why (a log line, a Node
//! event, metrics). It wakes when a node changes or an outcome on a warming node is recorded,
//! and at the next timeout; with no warming node it costs one pass over the cached nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::Event;
use kube::runtime::reflector::Store;
use kube::{Api, Resource};
use prefetch_common::Prefetch;
use tokio_util::sync::CancellationToken;

use crate::core::severity::Severity;
use crate::core::warmup::{self, Verdict, WarmupConfig, Wish};
use crate::core::workload::Workload;
use crate::shell::context::{Context, WorkloadSnapshot, cached_images, lock, prefetches_synced};
use crate::shell::events::event_type;

/// What every Prefetch wants on each warming node, by node name.
type Wishes = std::collections::BTreeMap<String, Vec<Wish>>;

/// Longest sleep while nodes are warming (a Prefetch deleted meanwhile reconciles nothing).
const BUSY_WAIT: Duration = Duration::from_secs(5);
/// Longest sleep while no node is warming (a node that starts warming wakes the loop).
const IDLE_WAIT: Duration = Duration::from_secs(60);
/// After a wake-up, let a burst of them (a round recording many outcomes) make one pass.
const COALESCE: Duration = Duration::from_millis(100);
/// Attempts to remove a taint from one node in one pass (each after reading it again).
const PATCH_ATTEMPTS: usize = 4;
/// Taint removals in flight at once.
const PATCH_CONCURRENCY: usize = 8;
/// Backoff after a failed removal: doubles from the first, up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the loop remembers between passes, per node uid.
#[derive(Default)]
struct LoopState {
    /// The last verdict logged, so a node's state is logged when it changes, not every pass.
    logged: HashMap<String, String>,
    /// resourceVersions of nodes whose taint we removed, until the cache shows the change.
    lifted: HashMap<String, Vec<String>>,
    /// (when to try again, failures so far) after failed removals.
    retry: HashMap<String, (Instant, u32)>,
}

impl LoopState {
    fn keep_only(&mut self, uids: &HashSet<&str>) {
        self.logged.retain(|uid, _| uids.contains(uid.as_str()));
        self.lifted.retain(|uid, _| uids.contains(uid.as_str()));
        self.retry.retain(|uid, _| uids.contains(uid.as_str()));
    }
}

fn uid(node: &Node) -> &str {
    node.metadata.uid.as_deref().unwrap_or("")
}

fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

pub async fn run(
    ctx: Arc<Context>,
    config: WarmupConfig,
    prefetches: Store<Prefetch>,
    stop: CancellationToken,
) {
    // Judged on a half-filled Prefetch cache, every node would look untargeted.
    if !prefetches_synced(&prefetches, &stop).await {
        return;
    }
    tracing::info!(taint = %config.taint, timeout_seconds = config.timeout.as_secs(), "warm nodes: lifting the warmup taint once nodes hold their images");
    let mut state = LoopState::default();
    loop {
        let wait = pass(&ctx, &config, &prefetches, &mut state).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ctx.warm_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(COALESCE) => {}
        }
    }
    ctx.metrics.warmup.warming_nodes.set(0);
    ctx.metrics.warmup.warming_nodes_past_timeout.set(0);
}

/// One look at every warming node; returns how long to sleep at most.
#[tracing::instrument(name = "warm_pass", skip_all)]
async fn pass(
    ctx: &Arc<Context>,
    config: &WarmupConfig,
    prefetches: &Store<Prefetch>,
    state: &mut LoopState,
) -> Duration {
    let now = Timestamp::now();
    let warming = warming_nodes(ctx, config);
    ctx.metrics.warmup.warming_nodes.set(warming.len() as i64);
    let overdue = warming
        .iter()
        .filter(|n| {
            let created = n.metadata.creation_timestamp.as_ref().map(|t| t.0);
            warmup::past_deadline(created, config.timeout, now)
        })
        .count();
    ctx.metrics
        .warmup
        .warming_nodes_past_timeout
        .set(overdue as i64);
    // The ledger is pruned by `records::upkeep`, for warm nodes and full lists alike.
    state.keep_only(&warming.iter().map(|n| uid(n)).collect());
    if warming.is_empty() {
        return IDLE_WAIT;
    }
    let wishes = wishes(ctx, config, prefetches, &warming);
    let (lifts, wait) = judge(config, &warming, &wishes, state, now);
    let removals: Vec<(Arc<Node>, Verdict, Removal)> = futures::stream::iter(lifts)
        .map(|(node, verdict)| async move {
            let removal = remove_taint(ctx, &config.taint, &node).await;
            (node, verdict, removal)
        })
        .buffer_unordered(PATCH_CONCURRENCY)
        .collect()
        .await;
    let mut wait = wait;
    for (node, verdict, removal) in removals {
        if let Some(backoff) = settle(ctx, config, state, &node, &verdict, removal, now).await {
            wait = wait.min(backoff);
        }
    }
    wait
}

/// The cached nodes carrying the warmup taint, but those being deleted.
fn warming_nodes(ctx: &Context, config: &WarmupConfig) -> Vec<Arc<Node>> {
    ctx.nodes
        .state()
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none() && warmup::is_warming(n, &config.taint))
        .collect()
}

/// What every Prefetch wants on each warming node, by node name (see `warmup::wishes`).
fn wishes(
    ctx: &Context,
    config: &WarmupConfig,
    prefetches: &Store<Prefetch>,
    warming: &[Arc<Node>],
) -> Wishes {
    let prefetches = prefetches.state();
    let snapshot = WorkloadSnapshot::of(ctx);
    let prefetch_refs: Vec<&Prefetch> = prefetches.iter().map(AsRef::as_ref).collect();
    let workloads: Vec<Workload<'_>> = snapshot.workloads();
    let node_refs: Vec<&Node> = warming.iter().map(AsRef::as_ref).collect();
    let ledger = lock(&ctx.ledger);
    warmup::wishes(
        &prefetch_refs,
        &workloads,
        &node_refs,
        &config.taint,
        cached_images,
        &ledger,
    )
}

/// The verdict on every warming node not waiting for our removal or a retry: the nodes whose
/// taint comes off, and how long to sleep at most (until the next retry or deadline). A
/// verdict that holds the node is logged when it changes.
fn judge(
    config: &WarmupConfig,
    warming: &[Arc<Node>],
    wishes: &Wishes,
    state: &mut LoopState,
    now: Timestamp,
) -> (Vec<(Arc<Node>, Verdict)>, Duration) {
    let mut wait = BUSY_WAIT;
    let mut lifts = Vec::new();
    let clock = Instant::now();
    for node in warming {
        let version = node.metadata.resource_version.clone().unwrap_or_default();
        if state
            .lifted
            .get(uid(node))
            .is_some_and(|versions| versions.contains(&version))
        {
            continue; // our removal is on its way to the cache
        }
        if let Some((at, _)) = state.retry.get(uid(node))
            && *at > clock
        {
            wait = wait.min(*at - clock);
            continue;
        }
        let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let verdict = warmup::decide(
            created,
            warmup::held_back(node, &config.taint),
            wishes.get(name(node)).map(Vec::as_slice).unwrap_or(&[]),
            now,
            config.timeout,
        );
        if verdict.lifts() {
            lifts.push((node.clone(), verdict));
            continue;
        }
        let line = warmup::describe(&verdict);
        if state.logged.get(uid(node)) != Some(&line) {
            tracing::info!(node = %name(node), "node is warming: {line}");
            state.logged.insert(uid(node).to_string(), line);
        }
        if let Some(deadline) = warmup::deadline(created, config.timeout) {
            let left = Duration::try_from(deadline.duration_since(now)).unwrap_or(Duration::ZERO);
            wait = wait.min(left.max(COALESCE));
        }
    }
    (lifts, wait)
}

/// Acts on one taint removal's result; returns the backoff before trying again after a
/// failure.
async fn settle(
    ctx: &Context,
    config: &WarmupConfig,
    state: &mut LoopState,
    node: &Node,
    verdict: &Verdict,
    removal: Removal,
    now: Timestamp,
) -> Option<Duration> {
    let uid = uid(node).to_string();
    match removal {
        Removal::Removed { patched_at } => {
            state.retry.remove(&uid);
            let mut versions = vec![node.metadata.resource_version.clone().unwrap_or_default()];
            versions.push(patched_at);
            state.lifted.insert(uid, versions);
            lifted(ctx, config, node, verdict, now).await;
        }
        Removal::AlreadyGone => {
            tracing::info!(node = %name(node), "warmup taint already removed by someone else");
            state.retry.remove(&uid);
        }
        Removal::NodeGone => {
            tracing::info!(node = %name(node), "node deleted while warming; nothing to lift");
        }
        Removal::Failed(why) => {
            let failures = state.retry.get(&uid).map_or(0, |(_, n)| *n) + 1;
            let backoff = warmup::retry_backoff(failures, RETRY_FIRST, RETRY_MAX);
            tracing::warn!(node = %name(node), error = %why, retry_in_seconds = backoff.as_secs(), "could not remove the warmup taint");
            state
                .retry
                .insert(uid, (Instant::now() + backoff, failures));
            return Some(backoff);
        }
    }
    None
}

enum Removal {
    /// Done; the node's resourceVersion the patch applied to.
    Removed {
        patched_at: String,
    },
    /// The node no longer carries the taint.
    AlreadyGone,
    /// The node was deleted (or replaced under its name).
    NodeGone,
    Failed(String),
}

/// Removes the warmup taint with a guarded JSON patch, reading the node again and rebuilding
/// the patch when it changed in between (409, or 422 for a failed `test`).
async fn remove_taint(ctx: &Context, key: &str, cached: &Node) -> Removal {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let node_name = name(cached);
    let mut current = cached.clone();
    for _ in 0..PATCH_ATTEMPTS {
        let patch = match warmup::lift_patch(&current, key) {
            Ok(Some(patch)) => patch,
            Ok(None) => return Removal::AlreadyGone,
            Err(err) => return Removal::Failed(err.to_string()),
        };
        let patched_at = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        match api
            .patch(
                node_name,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await
        {
            Ok(_) => return Removal::Removed { patched_at },
            Err(kube::Error::Api(s)) if s.code == 404 => return Removal::NodeGone,
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                tracing::debug!(node = %node_name, code = s.code, "node changed since read; reading it again");
                match api.get_opt(node_name).await {
                    Ok(Some(fresh)) if uid(&fresh) == uid(cached) => current = fresh,
                    Ok(_) => return Removal::NodeGone,
                    Err(err) => return Removal::Failed(err.to_string()),
                }
            }
            Err(err) => return Removal::Failed(err.to_string()),
        }
    }
    Removal::Failed(format!(
        "the node changed on each of {PATCH_ATTEMPTS} attempts"
    ))
}

/// Logs, counts and records an event for a node whose taint was just removed.
async fn lifted(
    ctx: &Context,
    config: &WarmupConfig,
    node: &Node,
    verdict: &Verdict,
    now: Timestamp,
) {
    let held_for = node
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or(Duration::ZERO);
    ctx.metrics
        .warmup
        .node_warmup
        .observe(held_for.as_secs_f64());
    if matches!(verdict, Verdict::TimedOut { .. }) {
        ctx.metrics.warmup.node_warmup_timeouts.inc();
    }
    // The node's ledger entries stay while the cache shows it warming (`ledger::node_use`): a
    // reconcile reading the cache before the change must still see its pairs done.
    let Some((type_, reason, note)) = warmup::event(verdict, &config.taint, held_for) else {
        return;
    };
    match Severity::of(type_) {
        Severity::Warning => tracing::warn!(node = %name(node), reason, "{note}"),
        Severity::Normal => tracing::info!(node = %name(node), reason, "{note}"),
    }
    let event = Event {
        type_: event_type(type_),
        reason: reason.into(),
        note: Some(note),
        action: "Warmup".into(),
        secondary: None,
    };
    // A Node is cluster-scoped: the recorder puts its events in "default", as the API server
    // expects for events about cluster-scoped objects.
    if let Err(err) = ctx.recorder.publish(&event, &node.object_ref(&())).await {
        tracing::warn!(node = %name(node), error = %err, "could not record event");
    }
}
