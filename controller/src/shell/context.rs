//! What the controller's loops share: the watch caches, the API client, the rounds in
//! progress and the ledger, behind one [`Context`] (as kube-rs's controller-rs passes it to
//! `reconcile` and `error_policy`), and the small helpers every loop uses to read them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::Client;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::WriterDropped;
use prefetch_common::Prefetch;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::core::ledger::PullLedger;
use crate::core::revisions::{OlderRevision, deployment_revisions, set_revisions};
use crate::core::round::RoundMemory;
use crate::core::taint::WarmupConfig;
use crate::core::workload::{Workload, job_finished};
use crate::shell::events::EventPublisher;
use crate::shell::metrics::Metrics;
use crate::shell::ratelimit::RateLimiter;

pub struct Context {
    pub client: Client,
    pub nodes: Store<Node>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
    /// Deployments' ReplicaSets: an older revision that still runs pods brings its images.
    pub replica_sets: Store<ReplicaSet>,
    /// StatefulSets' and DaemonSets' revisions (cut to what pulling reads): the one a rollout
    /// replaces brings its images.
    pub revisions: Store<ControllerRevision>,
    /// Slimmed to name, namespace and imagePullSecrets: the selected workloads' pods get their
    /// account's pull secrets, so the prefetch pods carry them too.
    pub service_accounts: Store<ServiceAccount>,
    pub pods: Store<Pod>,
    pub rounds: Mutex<HashMap<String, RoundMemory>>,
    /// Per Prefetch uid: the images every targeted node was done with at its last reconcile
    /// (the gate loop releases a pod whose images are all there).
    pub done_everywhere: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Per Prefetch uid: when the round this process last ended had started (see
    /// `round::cached_status_predates`).
    pub ended: Mutex<HashMap<String, jiff::Timestamp>>,
    pub inflight: Mutex<HashMap<String, usize>>,
    pub metrics: Arc<Metrics>,
    pub recorder: EventPublisher,
    pub limiter: RateLimiter,
    pub noop_image: String,
    /// Warm nodes' settings; `None` when `--warmup-taint` is empty.
    pub warmup: Option<WarmupConfig>,
    /// Outcomes beyond the rounds that saw them, for warming nodes and full image lists (see
    /// `ledger.rs`, `records.rs`).
    pub ledger: Mutex<PullLedger>,
    /// `--node-status-max-images`: a node listing this many images has a full list.
    pub node_status_max_images: u32,
    /// Wakes the warm loop: a warming node changed, or an outcome on one was recorded.
    pub warm_wake: Arc<Notify>,
    /// Reconciles every Prefetch (as a node change does).
    pub reconcile_all: mpsc::Sender<()>,
    /// Warm and cold starts and pull figures, from the kubelet's Events (`starts.rs`).
    pub starts: Mutex<crate::core::starts_book::StartsBook>,
    /// `--registry-budget`: pulls each budgeted registry took, for every Prefetch and across
    /// terms of leadership (`None`: no budget, and no lock taken).
    pub budgets: Option<Arc<Mutex<crate::core::budget::BudgetLedger>>>,
    /// Per Prefetch uid: its pairs waiting for a registry's budget, by host (for the metric).
    pub budget_waits: Mutex<HashMap<String, BTreeMap<String, usize>>>,
}

pub(crate) use prefetch_shell::locks::lock;

/// A cached node's images as planning reads them: normalized and sorted by `caches::slim_node`.
pub(crate) fn cached_images(node: &Node) -> std::borrow::Cow<'_, [String]> {
    let names = node
        .status
        .as_ref()
        .and_then(|s| s.images.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.names.as_deref());
    std::borrow::Cow::Borrowed(names.unwrap_or(&[]))
}

/// `Store::wait_until_ready`, polled afresh every 100 ms: in kube-runtime 5 the readiness
/// future keeps a single waker, so of several tasks waiting at once (the Controller waits on
/// this very store) only the last to poll is woken.
pub(crate) async fn until_ready(store: &Store<Prefetch>) -> Result<(), WriterDropped> {
    loop {
        if let Ok(ready) =
            tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await
        {
            return ready;
        }
    }
}

/// Waits until the Prefetch cache has synced: `false` if `stop` came first or the cache's
/// writer is gone, and the caller's loop should not start.
pub(crate) async fn prefetches_synced(
    prefetches: &Store<Prefetch>,
    stop: &CancellationToken,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        ready = until_ready(prefetches) => ready.is_ok(),
    }
}

/// [`prefetches_synced`], then `other`'s cache as well.
pub(crate) async fn synced_with<K>(
    prefetches: &Store<Prefetch>,
    other: &Store<K>,
    stop: &CancellationToken,
) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    prefetches_synced(prefetches, stop).await
        && tokio::select! {
            _ = stop.cancelled() => false,
            ready = other.wait_until_ready() => ready.is_ok(),
        }
}

/// The workload caches' contents at one moment, held so that planning can borrow them.
pub struct WorkloadSnapshot {
    deployments: Vec<Arc<Deployment>>,
    stateful_sets: Vec<Arc<StatefulSet>>,
    daemon_sets: Vec<Arc<DaemonSet>>,
    jobs: Vec<Arc<Job>>,
    cron_jobs: Vec<Arc<CronJob>>,
    replica_sets: Vec<Arc<ReplicaSet>>,
    /// StatefulSets' and DaemonSets' older revisions with pods, read from their
    /// ControllerRevisions once per snapshot.
    set_revisions: Vec<OlderRevision>,
}

impl WorkloadSnapshot {
    pub fn of(ctx: &Context) -> Self {
        let stateful_sets = ctx.stateful_sets.state();
        let daemon_sets = ctx.daemon_sets.state();
        let revisions = ctx.revisions.state();
        let set_revisions = set_revisions(
            &stateful_sets.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &daemon_sets.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &revisions.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        );
        Self {
            deployments: ctx.deployments.state(),
            stateful_sets,
            daemon_sets,
            jobs: ctx.jobs.state(),
            cron_jobs: ctx.cron_jobs.state(),
            replica_sets: ctx.replica_sets.state(),
            set_revisions,
        }
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments.iter().map(AsRef::as_ref)
    }

    /// Every cached workload, of every kind (but finished Jobs), and the older revisions of
    /// Deployments, StatefulSets and DaemonSets that still run pods.
    pub fn workloads(&self) -> Vec<Workload<'_>> {
        let deployments: Vec<&Deployment> = self.deployments().collect();
        let replica_sets: Vec<&ReplicaSet> = self.replica_sets.iter().map(AsRef::as_ref).collect();
        let stateful_sets = self
            .stateful_sets
            .iter()
            .map(|o| Workload::from(o.as_ref()));
        let daemon_sets = self.daemon_sets.iter().map(|o| Workload::from(o.as_ref()));
        let jobs = self
            .jobs
            .iter()
            .filter(|job| !job_finished(job))
            .map(|o| Workload::from(o.as_ref()));
        let cron_jobs = self.cron_jobs.iter().map(|o| Workload::from(o.as_ref()));
        let set_revisions = self.set_revisions.iter().map(Workload::from);
        deployments
            .iter()
            .map(|d| Workload::from(*d))
            .chain(deployment_revisions(&deployments, &replica_sets))
            .chain(stateful_sets)
            .chain(set_revisions)
            .chain(daemon_sets)
            .chain(jobs)
            .chain(cron_jobs)
            .collect()
    }
}

/// The name of an object's controller owner of `kind` (a ReplicaSet's Deployment, a Job's
/// CronJob).
pub(crate) fn controller_owner<K: kube::Resource>(object: &K, kind: &str) -> Option<String> {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.name.clone())
}
