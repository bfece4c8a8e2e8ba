//! Warm and cold starts, counted from the kubelet's `Pulled` Events, and what the prefetch
//! pods' pulls measured (design: docs/src/design.md#what-it-saved).
//!
//! One watch of core/v1 Events, narrowed by field selector to `Pulled` Events of pods: it
//! lists once when it starts (and again only after a failure) and then only watches. Each
//! Event is read once (the kubelet folds a repeated message, a container's restarts, into the
//! same Event with a higher count). A prefetch pod's Event is a pull measured; any other pod's
//! is a start of the workload whose pod it is, counted for each Prefetch that selects that
//! workload. The counts reach the status with the Prefetch's next round: this loop asks for one
//! at most every [`FLUSH_EVERY`] per Prefetch, so a large rollout costs a status write per
//! Prefetch per interval, not one per pod. The bookkeeping is the core's
//! [`StartsBook`](crate::core::starts_book::StartsBook).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use prefetch_common::images::{ImageRef, normalize};
use prefetch_common::owner::WorkloadRef;
use prefetch_common::{Prefetch, PrefetchStatus, WorkloadKind};
use prefetch_shell::watch::{WatchHealth, spawn_watch};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::kubelet_events::{PodPart, Pulled};
use crate::core::starts::{OwnerCaches, PodOwnerKind, Start, workload_of_pod};
use crate::core::starts_book::PrefetchKey;
use crate::core::workload::{Workload, selects_workload};
use crate::shell::context::{Context, controller_owner, lock};
use crate::shell::metrics::{PrefetchLabels, RegistryLabel};

/// At most one status write per Prefetch for its starts in this interval.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The Events this loop reads.
pub const PULLED_EVENTS: &str = "reason=Pulled,involvedObject.kind=Pod";

/// Puts the starts and pull figures into a round's status: this process's counts, or the
/// cached status's when this process counted none for the Prefetch (a round must not remove
/// what an earlier leader counted).
pub fn fill_status(ctx: &Context, prefetch: &Prefetch, status: &mut PrefetchStatus) {
    let previous = prefetch.status.as_ref();
    let mut book = lock(&ctx.starts);
    status.starts = match key_of(prefetch) {
        Some(key) => book.status_of(
            &key,
            previous.and_then(|s| s.starts.as_ref()),
            Timestamp::now(),
        ),
        None => previous.and_then(|s| s.starts.clone()),
    };
    let kept = previous.map(|s| &s.pulls);
    status.pulls = book.pull_figures(&status.images, kept.unwrap_or(&Default::default()));
}

/// How the book knows a Prefetch.
fn key_of(prefetch: &Prefetch) -> Option<PrefetchKey> {
    Some(PrefetchKey {
        uid: prefetch.uid()?,
        namespace: prefetch.namespace()?,
        name: prefetch.name_any(),
    })
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

    fn start(&self) -> Start<'_> {
        Start {
            pod: &self.pod,
            node: &self.node,
            pulled: &self.pulled,
            at: self.at,
        }
    }
}

/// The caches of one namespace, as the core's attribution reads them.
struct NamespaceCaches<'a> {
    ctx: &'a Context,
    namespace: &'a str,
}

fn at<K: Resource<DynamicType = ()>>(name: &str, namespace: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(namespace)
}

fn held<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>, name: &str, ns: &str) -> bool {
    store.get(&at(name, ns)).is_some()
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

/// The Prefetches that select the cached workload `workload` of `namespace` (none when the
/// cache no longer holds it). The workload is looked up once, not once per Prefetch.
fn selecting(
    ctx: &Context,
    prefetches: &Store<Prefetch>,
    namespace: &str,
    workload: &WorkloadRef,
) -> Vec<Arc<Prefetch>> {
    let name = workload.name.as_str();
    match workload.kind {
        WorkloadKind::Deployment => selecting_cached(&ctx.deployments, name, namespace, prefetches),
        WorkloadKind::StatefulSet => {
            selecting_cached(&ctx.stateful_sets, name, namespace, prefetches)
        }
        WorkloadKind::DaemonSet => selecting_cached(&ctx.daemon_sets, name, namespace, prefetches),
        WorkloadKind::Job => selecting_cached(&ctx.jobs, name, namespace, prefetches),
        WorkloadKind::CronJob => selecting_cached(&ctx.cron_jobs, name, namespace, prefetches),
    }
}

fn selecting_cached<K>(
    store: &Store<K>,
    name: &str,
    namespace: &str,
    prefetches: &Store<Prefetch>,
) -> Vec<Arc<Prefetch>>
where
    K: Resource<DynamicType = ()> + Clone,
    for<'k> &'k K: Into<Workload<'k>>,
{
    let Some(object) = store.get(&at(name, namespace)) else {
        return Vec::new();
    };
    let workload: Workload<'_> = object.as_ref().into();
    // selects_workload compares namespaces too: only this namespace's Prefetches pass.
    prefetches
        .state()
        .into_iter()
        .filter(|p| selects_workload(p, &workload))
        .collect()
}

/// Runs the watch of `Pulled` Events and its flushes, until `stop`; returns the Prefetches
/// whose starts changed, for the Controller to reconcile. Call it once the caches the
/// attribution reads have synced.
pub fn spawn(
    ctx: Arc<Context>,
    prefetches: Store<Prefetch>,
    health: Arc<WatchHealth>,
    stop: CancellationToken,
) -> impl futures::Stream<Item = ObjectRef<Prefetch>> + Send + 'static {
    let (rounds, rounds_rx) = mpsc::unbounded_channel();
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
    futures::stream::unfold(rounds_rx, |mut rx| async move {
        rx.recv().await.map(|prefetch| (prefetch, rx))
    })
}

async fn on_event(ctx: &Context, prefetches: &Store<Prefetch>, event: &KubeEvent) {
    let Some(report) = Report::read(event) else {
        tracing::debug!(message = ?event.message, "a Pulled Event in no form the kubelet writes");
        return;
    };
    if !lock(&ctx.starts).first_sight(&report.uid, Timestamp::now()) {
        return;
    }
    let prefetch_pod = held(&ctx.pods, &report.pod, &report.namespace);
    if prefetch_pod {
        record_pull(ctx, &report);
    } else {
        count_start(ctx, prefetches, &report).await;
    }
}

/// The registry host of an image, for the metrics' `registry` label.
fn registry_of(image: &str) -> String {
    ImageRef::parse(image).map_or_else(|_| "unknown".into(), |r| r.domain)
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
    let Ok(normalized) = normalize(image) else {
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
    lock(&ctx.starts).record_pull(normalized, &report.node, *pull, *size_bytes);
}

/// A workload pod's start, counted for each Prefetch that selects its workload.
async fn count_start(ctx: &Context, prefetches: &Store<Prefetch>, report: &Report) {
    let caches = NamespaceCaches {
        ctx,
        namespace: &report.namespace,
    };
    let Some(workload) = workload_of_pod(&report.pod, &caches) else {
        return;
    };
    for prefetch in selecting(ctx, prefetches, &report.namespace, &workload) {
        count_for(ctx, &prefetch, report).await;
    }
}

async fn count_for(ctx: &Context, prefetch: &Prefetch, report: &Report) {
    let Some(key) = key_of(prefetch) else {
        return;
    };
    let previous = prefetch.status.as_ref();
    let image = normalize(report.pulled.image()).ok();
    let counted = lock(&ctx.starts).count(&key, previous, &report.start(), image.as_deref());
    let Some(counted) = counted else {
        return;
    };
    let labels = PrefetchLabels {
        prefetch: key.name.clone(),
        namespace: key.namespace.clone(),
    };
    let metrics = &ctx.metrics.starts;
    let (pod, node) = (&report.pod, &report.node);
    match &report.pulled {
        Pulled::AlreadyPresent { image } => {
            metrics.count_warm(&labels, counted.saved.map(|s| s.as_secs_f64()));
            tracing::debug!(prefetch = %key.name, %pod, %node, %image, "warm start");
        }
        Pulled::Pulled { image, waited, .. } => {
            let gated = prefetch.spec.gate_rollouts();
            metrics.count_cold(&labels, waited.as_secs_f64(), gated);
            tracing::info!(prefetch = %key.name, %pod, %node, %image, ?waited, "cold start: the container waited on a pull");
            if lock(&ctx.starts).cold_event_due(&key.uid, Timestamp::now()) {
                publish_cold_start(ctx, prefetch, report, image, *waited).await;
            }
        }
    }
}

/// A `ColdStart` Warning on the Prefetch naming the pod, node, image and wait.
async fn publish_cold_start(
    ctx: &Context,
    prefetch: &Prefetch,
    report: &Report,
    image: &str,
    waited: Duration,
) {
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

/// Asks for a round of each Prefetch whose starts changed; forgets Prefetches that are gone
/// (their counts and metric series) and, every few minutes, the Events the API server no
/// longer keeps and the pulls of nodes that left.
fn flush_changed(
    ctx: &Context,
    prefetches: &Store<Prefetch>,
    rounds: &mpsc::UnboundedSender<ObjectRef<Prefetch>>,
) {
    let live: BTreeSet<String> = prefetches.state().iter().filter_map(|p| p.uid()).collect();
    let now = Timestamp::now();
    let (changed, gone) = {
        let mut book = lock(&ctx.starts);
        let gone = book.forget_gone(&live);
        if book.prune_due(now) {
            let nodes: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
            book.prune(now, &nodes);
        }
        (book.take_changed(), gone)
    };
    for key in gone {
        ctx.metrics.starts.forget(&PrefetchLabels {
            prefetch: key.name,
            namespace: key.namespace,
        });
    }
    for key in changed {
        // The Controller lives as long as this loop: a failed send means it is stopping.
        let _ = rounds.send(ObjectRef::new(&key.name).within(&key.namespace));
    }
}
