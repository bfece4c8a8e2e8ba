//! Warm and cold starts, counted from the kubelet's `Pulled` Events, and what the prefetch
//! pods' pulls measured (design: docs/src/design.md#what-it-saved).
//!
//! One watch of core/v1 Events, narrowed by field selector to `Pulled` Events of pods: it
//! lists once when it starts (and again only after a failure) and then only watches. Each
//! Event counts once, when first seen: the kubelet folds a repeated message (a container's
//! restarts) into the same Event with a higher count. A prefetch pod's Event is a pull
//! measured; any other pod's is a start of the workload whose pod it is, counted for each
//! Prefetch that selects that workload. The counts reach the status with the Prefetch's next
//! round: this loop asks for one at most every [`FLUSH_EVERY`] per Prefetch, so a large
//! rollout costs a status write per Prefetch per interval, not one per pod.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use prefetch_common::images::ImageRef;
use prefetch_common::owner::WorkloadRef;
use prefetch_common::{ImagePullStatus, Prefetch, StartsStatus, WorkloadKind};
use prefetch_shell::locks::lock;
use prefetch_shell::watch::{WatchHealth, spawn_watch};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::kubelet_events::{PodPart, Pulled};
use crate::core::starts::{
    ImagePulls, OwnerCaches, PodOwnerKind, Start, StartsTally, pull_figures, workload_of_pod,
};
use crate::core::workload::{Workload, selects_workload};
use crate::shell::context::Context;

/// At most one status write per Prefetch for its starts in this interval.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// At most one `ColdStart` Event per Prefetch in this interval; every cold start is logged.
const COLD_EVENT_EVERY: SignedDuration = SignedDuration::from_mins(1);
/// Events are kept by the API server for an hour (`--event-ttl`); a seen Event is remembered
/// twice as long, so a relist never counts one again.
const REMEMBER_SEEN: SignedDuration = SignedDuration::from_hours(2);

/// The Events this loop reads.
pub const PULLED_EVENTS: &str = "reason=Pulled,involvedObject.kind=Pod";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    pub prefetch: String,
    pub namespace: String,
    pub result: StartResult,
}

/// Whether a start found its image on the node.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StartResult {
    Warm,
    Cold,
}

impl StartResult {
    pub fn as_str(self) -> &'static str {
        match self {
            StartResult::Warm => "warm",
            StartResult::Cold => "cold",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for StartResult {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefetchLabels {
    pub prefetch: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabel {
    pub registry: String,
}

/// The metrics of starts and pulls.
pub struct StartsMetrics {
    pub starts: Family<StartLabels, Counter>,
    pub cold_wait: Family<PrefetchLabels, Histogram>,
    pub seconds_saved: Family<PrefetchLabels, Counter<f64>>,
    pub pull_duration: Family<RegistryLabel, Histogram>,
    pub pulled_bytes: Family<RegistryLabel, Counter>,
}

/// Buckets for pull times, from a cached layer's fraction of a second to a large image's
/// minutes.
fn pull_buckets() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

impl StartsMetrics {
    pub fn register(registry: &mut Registry) -> StartsMetrics {
        let metrics = StartsMetrics {
            starts: Family::default(),
            cold_wait: Family::new_with_constructor(pull_buckets),
            seconds_saved: Family::default(),
            pull_duration: Family::new_with_constructor(pull_buckets),
            pulled_bytes: Family::default(),
        };
        registry.register(
            "workload_starts",
            "Container starts of the selected workloads, by result (warm: image on the node; cold: pulled)",
            metrics.starts.clone(),
        );
        registry.register(
            "cold_start_wait_seconds",
            "Time cold starts of the selected workloads waited on their pull, queueing included",
            metrics.cold_wait.clone(),
        );
        registry.register(
            "pull_seconds_saved",
            "Pull time warm starts did not wait: per warm start, the median pull time prefetch pods measured for its image",
            metrics.seconds_saved.clone(),
        );
        registry.register(
            "pull_duration_seconds",
            "Pull times of prefetch pods, by registry host",
            metrics.pull_duration.clone(),
        );
        registry.register(
            "pulled_bytes",
            "Bytes of the images prefetch pods pulled, by registry host (the sizes the runtimes reported)",
            metrics.pulled_bytes.clone(),
        );
        metrics
    }

    /// Drops the series of Prefetches that are gone.
    fn forget(&self, prefetch: &PrefetchLabels) {
        for result in [StartResult::Warm, StartResult::Cold] {
            self.starts.remove(&StartLabels {
                prefetch: prefetch.prefetch.clone(),
                namespace: prefetch.namespace.clone(),
                result,
            });
        }
        self.cold_wait.remove(prefetch);
        self.seconds_saved.remove(prefetch);
    }
}

/// What this process counted: per Prefetch (by uid) its starts, and per image its pulls.
#[derive(Default)]
pub struct StartsBook {
    state: Mutex<BookState>,
}

#[derive(Default)]
struct BookState {
    tallies: HashMap<String, StartsTally>,
    pulls: BTreeMap<String, ImagePulls>,
    /// Event uid -> when it was reported.
    seen: HashMap<String, Timestamp>,
    /// Prefetches whose starts changed since their last round.
    changed: HashSet<ObjectRef<Prefetch>>,
    /// Prefetch uid -> when its last `ColdStart` Event was published.
    cold_published: HashMap<String, Timestamp>,
    /// Prefetch uid -> the labels of its metric series, dropped when it is gone.
    series: HashMap<String, PrefetchLabels>,
    /// When pulls of nodes that left were last forgotten.
    nodes_pruned: Option<Timestamp>,
}

impl StartsBook {
    /// The starts a round writes: this process's counts, or the status's when it has none.
    pub fn status_of(&self, prefetch: &Prefetch, now: Timestamp) -> Option<StartsStatus> {
        let uid = prefetch.uid()?;
        let mut state = lock(&self.state);
        let tally = state.tallies.get_mut(&uid)?;
        Some(tally.status(now))
    }

    /// The pull figures a round writes for `images`.
    pub fn pull_figures(&self, images: &[String]) -> BTreeMap<String, ImagePullStatus> {
        pull_figures(images, &lock(&self.state).pulls)
    }
}

/// A `Pulled` Event, read.
struct Report {
    uid: String,
    namespace: String,
    pod: String,
    node: String,
    pulled: Pulled,
    at: Timestamp,
}

impl Report {
    fn read(event: &KubeEvent) -> Option<Report> {
        let object = &event.involved_object;
        if event.reason.as_deref() != Some("Pulled") || object.kind.as_deref() != Some("Pod") {
            return None;
        }
        PodPart::from_field_path(object.field_path.as_deref())?;
        let at = event
            .first_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(event.event_time.as_ref().map(|t| t.0))
            .or(event.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
        let node = event
            .source
            .as_ref()
            .and_then(|s| s.host.clone())
            .or(event.reporting_instance.clone())
            .unwrap_or_default();
        Some(Report {
            uid: event.metadata.uid.clone()?,
            namespace: object.namespace.clone()?,
            pod: object.name.clone()?,
            node,
            pulled: Pulled::read(event.message.as_deref()?)?,
            at,
        })
    }
}

/// The caches of one namespace, as `starts` reads them.
struct NamespaceCaches<'a> {
    ctx: &'a Context,
    namespace: &'a str,
}

fn names_in<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    namespace: &str,
    prefix: &str,
) -> Vec<String> {
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .filter_map(|o| o.meta().name.clone())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn held<K: Resource<DynamicType = ()> + Clone>(
    store: &Store<K>,
    name: &str,
    namespace: &str,
) -> bool {
    store.get(&at(name, namespace)).is_some()
}

/// The name of an object's controller owner of `kind`.
fn controller_owner<K: Resource>(object: &K, kind: &str) -> Option<String> {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.name.clone())
}

impl OwnerCaches for NamespaceCaches<'_> {
    fn holds(&self, kind: PodOwnerKind, name: &str) -> bool {
        let ns = self.namespace;
        match kind {
            PodOwnerKind::ReplicaSet => held(&self.ctx.replica_sets, name, ns),
            PodOwnerKind::StatefulSet => held(&self.ctx.stateful_sets, name, ns),
            PodOwnerKind::DaemonSet => held(&self.ctx.daemon_sets, name, ns),
            PodOwnerKind::Job => held(&self.ctx.jobs, name, ns),
        }
    }

    fn names_starting_with(&self, kind: PodOwnerKind, prefix: &str) -> Vec<String> {
        let ns = self.namespace;
        match kind {
            PodOwnerKind::ReplicaSet => names_in::<ReplicaSet>(&self.ctx.replica_sets, ns, prefix),
            PodOwnerKind::StatefulSet => {
                names_in::<StatefulSet>(&self.ctx.stateful_sets, ns, prefix)
            }
            PodOwnerKind::DaemonSet => names_in::<DaemonSet>(&self.ctx.daemon_sets, ns, prefix),
            PodOwnerKind::Job => names_in::<Job>(&self.ctx.jobs, ns, prefix),
        }
    }

    fn owner_of(&self, kind: PodOwnerKind, name: &str) -> Option<String> {
        let ns = self.namespace;
        match kind {
            PodOwnerKind::ReplicaSet => {
                let replica_set = self.ctx.replica_sets.get(&at(name, ns))?;
                controller_owner(replica_set.as_ref(), "Deployment")
            }
            PodOwnerKind::Job => {
                controller_owner(self.ctx.jobs.get(&at(name, ns))?.as_ref(), "CronJob")
            }
            PodOwnerKind::StatefulSet | PodOwnerKind::DaemonSet => None,
        }
    }
}

/// Whether `prefetch` selects the cached workload `workload` of `namespace`.
fn selects(ctx: &Context, prefetch: &Prefetch, namespace: &str, workload: &WorkloadRef) -> bool {
    let name = workload.name.as_str();
    let chosen = |w: Workload<'_>| selects_workload(prefetch, &w);
    match workload.kind {
        WorkloadKind::Deployment => cached(&ctx.deployments, name, namespace, chosen),
        WorkloadKind::StatefulSet => cached(&ctx.stateful_sets, name, namespace, chosen),
        WorkloadKind::DaemonSet => cached(&ctx.daemon_sets, name, namespace, chosen),
        WorkloadKind::Job => cached(&ctx.jobs, name, namespace, chosen),
        WorkloadKind::CronJob => cached(&ctx.cron_jobs, name, namespace, chosen),
    }
}

/// Whether the cached object `name` of `namespace` passes `test`, seen as a workload.
fn cached<K>(
    store: &Store<K>,
    name: &str,
    namespace: &str,
    test: impl Fn(Workload<'_>) -> bool,
) -> bool
where
    K: Resource<DynamicType = ()> + Clone,
    for<'k> &'k K: Into<Workload<'k>>,
{
    store
        .get(&at(name, namespace))
        .is_some_and(|object| test(object.as_ref().into()))
}

fn at<K: Resource<DynamicType = ()>>(name: &str, namespace: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(namespace)
}

/// The registry host of an image, for the metrics' `registry` label.
fn registry_of(image: &str) -> String {
    ImageRef::parse(image)
        .map(|r| r.domain)
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the watch of `Pulled` Events and its flushes, until `stop`. Call it once the caches the
/// attribution reads have synced.
pub fn spawn(
    ctx: Arc<Context>,
    prefetches: Store<Prefetch>,
    health: Arc<WatchHealth>,
    rounds: mpsc::UnboundedSender<ObjectRef<Prefetch>>,
    stop: CancellationToken,
) {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<KubeEvent>();
    spawn_watch(
        health,
        Api::<KubeEvent>::all(ctx.client.clone()),
        watcher::Config::default().fields(PULLED_EVENTS),
        stop.clone(),
        move |event| {
            if let watcher::Event::Apply(e) | watcher::Event::InitApply(e) = event {
                // The receiver lives as long as the watch: a failed send means it stopped.
                let _ = events_tx.send(e);
            }
        },
    );
    tokio::spawn(async move {
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(event) = events_rx.recv() => on_event(&ctx, &prefetches, &event).await,
                _ = flush.tick() => flush_changed(&ctx, &prefetches, &rounds),
            }
        }
    });
}

async fn on_event(ctx: &Context, prefetches: &Store<Prefetch>, event: &KubeEvent) {
    let Some(report) = Report::read(event) else {
        tracing::debug!(message = ?event.message, "a Pulled Event in no form the kubelet writes");
        return;
    };
    let now = Timestamp::now();
    {
        let mut state = lock(&ctx.starts.state);
        if state.seen.insert(report.uid.clone(), report.at).is_some() {
            return;
        }
    }
    let prefetch_pod = ctx
        .pods
        .get(&ObjectRef::new(&report.pod).within(&report.namespace))
        .is_some();
    if prefetch_pod {
        record_pull(ctx, &report);
    } else {
        count_start(ctx, prefetches, &report, now).await;
    }
}

/// A prefetch pod's pull: its time and size for the image's figures and the registry's
/// metrics.
fn record_pull(ctx: &Context, report: &Report) {
    let Pulled::Pulled {
        image,
        pull,
        size_bytes,
        ..
    } = &report.pulled
    else {
        return;
    };
    let Ok(normalized) = prefetch_common::images::normalize(image) else {
        return;
    };
    let registry = RegistryLabel {
        registry: registry_of(image),
    };
    let metrics = &ctx.metrics.starts;
    metrics
        .pull_duration
        .get_or_create(&registry)
        .observe(pull.as_secs_f64());
    metrics
        .pulled_bytes
        .get_or_create(&registry)
        .inc_by(*size_bytes);
    lock(&ctx.starts.state)
        .pulls
        .entry(normalized)
        .or_default()
        .record(&report.node, *pull, *size_bytes);
}

/// A workload pod's start, counted for each Prefetch that selects its workload.
async fn count_start(ctx: &Context, prefetches: &Store<Prefetch>, report: &Report, now: Timestamp) {
    let caches = NamespaceCaches {
        ctx,
        namespace: &report.namespace,
    };
    let Some(workload) = workload_of_pod(&report.pod, &caches) else {
        return;
    };
    let selecting: Vec<Arc<Prefetch>> = prefetches
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(report.namespace.as_str()))
        .filter(|p| selects(ctx, p, &report.namespace, &workload))
        .collect();
    for prefetch in selecting {
        count_for(ctx, &prefetch, report, now).await;
    }
}

async fn count_for(ctx: &Context, prefetch: &Prefetch, report: &Report, now: Timestamp) {
    let (Some(uid), name) = (prefetch.uid(), prefetch.name_any()) else {
        return;
    };
    let start = Start {
        pod: &report.pod,
        node: &report.node,
        pulled: &report.pulled,
        at: report.at,
    };
    let saved = {
        let mut state = lock(&ctx.starts.state);
        let resumed = prefetch.status.as_ref().and_then(|s| s.starts.as_ref());
        let tally = state
            .tallies
            .entry(uid.clone())
            .or_insert_with(|| StartsTally::resumed(resumed));
        if !tally.count(&start) {
            return;
        }
        state.changed.insert(ObjectRef::from_obj(prefetch));
        let labels = PrefetchLabels {
            prefetch: name.clone(),
            namespace: report.namespace.clone(),
        };
        state.series.insert(uid.clone(), labels);
        normalized_median(&state.pulls, report.pulled.image())
    };
    let labels = PrefetchLabels {
        prefetch: name.clone(),
        namespace: report.namespace.clone(),
    };
    let metrics = &ctx.metrics.starts;
    match &report.pulled {
        Pulled::AlreadyPresent { image } => {
            metrics
                .starts
                .get_or_create(&start_labels(&labels, StartResult::Warm))
                .inc();
            if let Some(saved) = saved {
                metrics
                    .seconds_saved
                    .get_or_create(&labels)
                    .inc_by(saved.as_secs_f64());
            }
            tracing::debug!(prefetch = %name, pod = %report.pod, node = %report.node, %image, "warm start");
        }
        Pulled::Pulled { image, waited, .. } => {
            metrics
                .starts
                .get_or_create(&start_labels(&labels, StartResult::Cold))
                .inc();
            metrics
                .cold_wait
                .get_or_create(&labels)
                .observe(waited.as_secs_f64());
            tracing::info!(prefetch = %name, pod = %report.pod, node = %report.node, %image, waited = ?waited, "cold start: the container waited on a pull");
            publish_cold_start(ctx, prefetch, &uid, report, image, *waited, now).await;
        }
    }
}

fn start_labels(labels: &PrefetchLabels, result: StartResult) -> StartLabels {
    StartLabels {
        prefetch: labels.prefetch.clone(),
        namespace: labels.namespace.clone(),
        result,
    }
}

fn normalized_median(pulls: &BTreeMap<String, ImagePulls>, image: &str) -> Option<Duration> {
    let normalized = prefetch_common::images::normalize(image).ok()?;
    pulls.get(&normalized)?.median()
}

/// A `ColdStart` Warning on the Prefetch, at most one per [`COLD_EVENT_EVERY`].
async fn publish_cold_start(
    ctx: &Context,
    prefetch: &Prefetch,
    uid: &str,
    report: &Report,
    image: &str,
    waited: Duration,
    now: Timestamp,
) {
    {
        let mut state = lock(&ctx.starts.state);
        let last = state.cold_published.get(uid).copied();
        if last.is_some_and(|t| now.duration_since(t) < COLD_EVENT_EVERY) {
            return;
        }
        state.cold_published.insert(uid.to_string(), now);
    }
    let note = format!(
        "pod {} on node {} waited {:.1}s pulling {image}",
        report.pod,
        report.node,
        waited.as_secs_f64()
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "ColdStart".into(),
        note: Some(note),
        action: "Start".into(),
        secondary: None,
    };
    if let Err(err) = ctx
        .recorder
        .publish(&event, &prefetch.object_ref(&()))
        .await
    {
        tracing::warn!(error = %err, "could not publish a ColdStart Event");
    }
}

/// How often the pulls of nodes that left the cluster, and Events past their time, are
/// forgotten.
const PRUNE_NODES_EVERY: SignedDuration = SignedDuration::from_mins(5);

/// Asks for a round of each Prefetch whose starts changed; forgets Prefetches that are gone
/// (their counts and metric series) and, now and then, the pulls of nodes that left and the
/// Events the API server no longer keeps.
fn flush_changed(
    ctx: &Context,
    prefetches: &Store<Prefetch>,
    rounds: &mpsc::UnboundedSender<ObjectRef<Prefetch>>,
) {
    let live: BTreeSet<String> = prefetches.state().iter().filter_map(|p| p.uid()).collect();
    let now = Timestamp::now();
    let (changed, gone) = {
        let mut state = lock(&ctx.starts.state);
        let gone_uids: Vec<String> = state
            .tallies
            .keys()
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        let gone: Vec<PrefetchLabels> = gone_uids
            .iter()
            .filter_map(|uid| {
                state.tallies.remove(uid);
                state.cold_published.remove(uid);
                state.series.remove(uid)
            })
            .collect();
        if state
            .nodes_pruned
            .is_none_or(|t| now.duration_since(t) >= PRUNE_NODES_EVERY)
        {
            state.nodes_pruned = Some(now);
            prune_nodes(ctx, &mut state.pulls);
            state
                .seen
                .retain(|_, at| now.duration_since(*at) < REMEMBER_SEEN);
        }
        (std::mem::take(&mut state.changed), gone)
    };
    for labels in &gone {
        ctx.metrics.starts.forget(labels);
    }
    for prefetch in changed {
        // The Controller lives as long as this loop: a failed send means it is stopping.
        let _ = rounds.send(prefetch);
    }
}

/// Forgets the pulls of nodes no longer in the cluster, so the figures describe the nodes
/// there are and the book stays bounded by nodes x images.
fn prune_nodes(ctx: &Context, pulls: &mut BTreeMap<String, ImagePulls>) {
    let nodes: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    for image_pulls in pulls.values_mut() {
        image_pulls.retain_nodes(&nodes);
    }
    pulls.retain(|_, image_pulls| image_pulls.median().is_some());
}
