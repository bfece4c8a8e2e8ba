//! Watch caches the webhook answers from: which Prefetch selects which workloads, the
//! cluster's Deployments, StatefulSets, DaemonSets and CronJobs (slimmed to [`WorkloadFacts`]),
//! node names, and the
//! controller's leader Lease. [`PrefetchIndex`] and [`NodeNames`] implement the core's views
//! of them ([`Prefetches`], [`NodeNamesView`]). Fed by kube-runtime watchers run by
//! `prefetch_shell::watch` (the one runner of every watch: resetting backoff, relist after a
//! failure, health for `/readyz` and the staleness metric); never an API call per request.
//!
//! A relist (`Init` .. `InitDone`) builds a fresh map and swaps it in whole, so objects deleted
//! while the watch was down disappear too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::watcher::Event;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use prefetch_common::owner::WorkloadRef;
use prefetch_common::workload::Workload;
use prefetch_common::{Prefetch, WorkloadKind};
use prefetch_shell::watch::{WatchHealth, run_watch};
use tokio_util::sync::CancellationToken;

use crate::core::facts::{GatingPrefetch, NodeNamesView, PrefetchFacts, Prefetches, WorkloadFacts};
use crate::core::lease;
use crate::shell::metrics::Metrics;
use prefetch_shell::locks;

type ByNamespace = HashMap<String, BTreeMap<String, PrefetchFacts>>;

/// namespace -> Prefetch name -> what the decisions read of it.
#[derive(Debug, Default)]
struct Selectors {
    live: ByNamespace,
    /// Being filled by a relist; swapped into `live` at `InitDone`.
    relist: Option<ByNamespace>,
}

/// Which Prefetches select which Deployments, per namespace.
#[derive(Debug, Default)]
pub struct PrefetchIndex {
    selectors: RwLock<Selectors>,
    synced: AtomicBool,
}

fn namespace_and_name(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

impl PrefetchIndex {
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The Prefetches of `namespace`, by name, under the read lock.
    fn with_namespace<R>(
        &self,
        namespace: &str,
        read: impl FnOnce(&BTreeMap<String, PrefetchFacts>) -> R,
    ) -> Option<R> {
        let guard = locks::read(&self.selectors);
        guard.live.get(namespace).map(read)
    }

    pub fn len(&self) -> usize {
        let guard = locks::read(&self.selectors);
        guard.live.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one watcher event. Objects that failed to deserialize are dropped from the
    /// index (an invalid Prefetch selects nothing) and returned so the caller can log them.
    pub fn apply(&self, event: Event<DeserializeGuard<Prefetch>>) -> Vec<String> {
        let mut invalid = Vec::new();
        let mut entry =
            |guard: DeserializeGuard<Prefetch>| -> Option<((String, String), Option<PrefetchFacts>)> {
                match guard.0 {
                    Ok(prefetch) => {
                        let key = namespace_and_name(&prefetch.metadata)?;
                        Some((key, Some(PrefetchFacts::of(prefetch))))
                    }
                    Err(err) => {
                        invalid.push(format!(
                            "{}/{}: {}",
                            err.metadata.namespace.as_deref().unwrap_or(""),
                            err.metadata.name.as_deref().unwrap_or(""),
                            err.error
                        ));
                        Some((namespace_and_name(&err.metadata)?, None))
                    }
                }
            };
        let mut guard = locks::write(&self.selectors);
        let state = &mut *guard;
        match event {
            Event::Init => state.relist = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let Some(((ns, name), Some(selector))) = entry(obj) {
                    state
                        .relist
                        .get_or_insert_with(HashMap::new)
                        .entry(ns)
                        .or_default()
                        .insert(name, selector);
                }
            }
            Event::InitDone => {
                state.live = state.relist.take().unwrap_or_default();
                self.synced.store(true, Ordering::Release);
            }
            Event::Apply(obj) => match entry(obj) {
                Some(((ns, name), Some(selector))) => {
                    state.live.entry(ns).or_default().insert(name, selector);
                }
                Some(((ns, name), None)) => remove(&mut state.live, &ns, &name),
                None => {}
            },
            Event::Delete(obj) => {
                if let Some(((ns, name), _)) = entry(obj) {
                    remove(&mut state.live, &ns, &name);
                }
            }
        }
        invalid
    }
}

impl Prefetches for PrefetchIndex {
    fn is_synced(&self) -> bool {
        PrefetchIndex::is_synced(self)
    }

    fn selecting_by<'l>(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        label: &dyn Fn(&str) -> Option<&'l str>,
    ) -> Vec<String> {
        self.with_namespace(namespace, |by_name| {
            by_name
                .iter()
                .filter(|(_, facts)| facts.selects_by(kind, label))
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
    }

    fn gating_by<'l>(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        label: &dyn Fn(&str) -> Option<&'l str>,
    ) -> Vec<GatingPrefetch> {
        self.with_namespace(namespace, |by_name| {
            by_name
                .iter()
                .filter_map(|(name, facts)| facts.gating(name, kind, label))
                .collect()
        })
        .unwrap_or_default()
    }
}

fn remove(map: &mut ByNamespace, ns: &str, name: &str) {
    if let Some(by_name) = map.get_mut(ns) {
        by_name.remove(name);
        if by_name.is_empty() {
            map.remove(ns);
        }
    }
}

/// Names of the cluster's nodes, for the "node_filter matches no node" warning.
#[derive(Debug, Default)]
pub struct NodeNames {
    names: RwLock<(BTreeSet<String>, Option<BTreeSet<String>>)>,
    synced: AtomicBool,
}

impl NodeNames {
    /// Runs `read` over the names (`None` until the first list has completed), under the
    /// lock: validation needs one substring check, not a copy of every node name.
    pub fn with_names<R>(&self, read: impl FnOnce(Option<&BTreeSet<String>>) -> R) -> R {
        if !self.synced.load(Ordering::Acquire) {
            return read(None);
        }
        let guard = locks::read(&self.names);
        read(Some(&guard.0))
    }

    pub fn apply<K: ResourceExt>(&self, event: Event<K>) {
        let mut guard = locks::write(&self.names);
        let (live, relist) = &mut *guard;
        match event {
            Event::Init => *relist = Some(BTreeSet::new()),
            Event::InitApply(node) => {
                relist
                    .get_or_insert_with(BTreeSet::new)
                    .insert(node.name_any());
            }
            Event::InitDone => {
                *live = relist.take().unwrap_or_default();
                self.synced.store(true, Ordering::Release);
            }
            Event::Apply(node) => {
                live.insert(node.name_any());
            }
            Event::Delete(node) => {
                live.remove(&node.name_any());
            }
        }
    }
}

impl NodeNamesView for NodeNames {
    fn with_names(&self, read: &mut dyn FnMut(Option<&BTreeSet<String>>)) {
        NodeNames::with_names(self, read)
    }
}

type WorkloadMap = HashMap<(String, String), Arc<WorkloadFacts>>;

/// The cluster's workloads of one kind `K`, slimmed to [`WorkloadFacts`], by (namespace, name).
#[derive(Debug)]
pub struct WorkloadIndex<K> {
    maps: RwLock<(WorkloadMap, Option<WorkloadMap>)>,
    synced: AtomicBool,
    kind: std::marker::PhantomData<fn(K)>,
}

impl<K> Default for WorkloadIndex<K> {
    fn default() -> Self {
        Self {
            maps: RwLock::default(),
            synced: AtomicBool::new(false),
            kind: std::marker::PhantomData,
        }
    }
}

impl<K> WorkloadIndex<K>
where
    K: kube::Resource,
    for<'k> &'k K: Into<Workload<'k>>,
{
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<WorkloadFacts>> {
        let guard = locks::read(&self.maps);
        guard
            .0
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        locks::read(&self.maps).0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn apply(&self, event: Event<K>) {
        let key = |w: &K| namespace_and_name(w.meta());
        let facts = |w: &K| Arc::new(WorkloadFacts::from(w.into()));
        let mut guard = locks::write(&self.maps);
        let (live, relist) = &mut *guard;
        match event {
            Event::Init => *relist = Some(HashMap::new()),
            Event::InitApply(w) => {
                if let Some(k) = key(&w) {
                    relist.get_or_insert_with(HashMap::new).insert(k, facts(&w));
                }
            }
            Event::InitDone => {
                *live = relist.take().unwrap_or_default();
                self.synced.store(true, Ordering::Release);
            }
            Event::Apply(w) => {
                if let Some(k) = key(&w) {
                    live.insert(k, facts(&w));
                }
            }
            Event::Delete(w) => {
                if let Some(k) = key(&w) {
                    live.remove(&k);
                }
            }
        }
    }
}

/// The workload caches the pod gate reads, one per kind that rolls out (a Job's pods are
/// looked up under its CronJob).
#[derive(Debug, Default)]
pub struct Workloads {
    pub deployments: Arc<WorkloadIndex<Deployment>>,
    pub stateful_sets: Arc<WorkloadIndex<StatefulSet>>,
    pub daemon_sets: Arc<WorkloadIndex<DaemonSet>>,
    pub cron_jobs: Arc<WorkloadIndex<CronJob>>,
}

impl Workloads {
    /// Whether the cache of `kind` has been filled once (`false` for a Job: never cached).
    pub fn is_synced(&self, kind: WorkloadKind) -> bool {
        match kind {
            WorkloadKind::Deployment => self.deployments.is_synced(),
            WorkloadKind::StatefulSet => self.stateful_sets.is_synced(),
            WorkloadKind::DaemonSet => self.daemon_sets.is_synced(),
            WorkloadKind::CronJob => self.cron_jobs.is_synced(),
            WorkloadKind::Job => false,
        }
    }

    pub fn get(&self, namespace: &str, workload: &WorkloadRef) -> Option<Arc<WorkloadFacts>> {
        let name = &workload.name;
        match workload.kind {
            WorkloadKind::Deployment => self.deployments.get(namespace, name),
            WorkloadKind::StatefulSet => self.stateful_sets.get(namespace, name),
            WorkloadKind::DaemonSet => self.daemon_sets.get(namespace, name),
            WorkloadKind::CronJob => self.cron_jobs.get(namespace, name),
            WorkloadKind::Job => None,
        }
    }

    /// Workloads cached, all kinds.
    pub fn len(&self) -> usize {
        self.deployments.len()
            + self.stateful_sets.len()
            + self.daemon_sets.len()
            + self.cron_jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The controller's leader Lease as the pod gate reads it: when its holder last renewed it.
#[derive(Debug, Default)]
pub struct LeaderLease {
    /// See [`lease::holder_renewed`]; `None` also when there is no such Lease.
    renewed: RwLock<Option<jiff::Timestamp>>,
    synced: AtomicBool,
}

impl LeaderLease {
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// When a holder last renewed the Lease; `None` when nobody holds it (or unknown).
    pub fn renewed_at(&self) -> Option<jiff::Timestamp> {
        *locks::read(&self.renewed)
    }

    pub fn apply(&self, event: Event<Lease>) {
        let mut renewed = locks::write(&self.renewed);
        match event {
            Event::Init => {}
            Event::InitApply(lease) | Event::Apply(lease) => {
                *renewed = lease::holder_renewed(&lease)
            }
            Event::InitDone => self.synced.store(true, Ordering::Release),
            Event::Delete(_) => *renewed = None,
        }
    }
}

/// Keeps `index` in step with the cluster's Prefetches until `stop`.
pub async fn run_prefetch_watch(
    client: Client,
    index: Arc<PrefetchIndex>,
    metrics: Arc<Metrics>,
    health: Arc<WatchHealth>,
    stop: CancellationToken,
) {
    let api: Api<DeserializeGuard<Prefetch>> = Api::all(client);
    let connect = move || watcher(api.clone(), watcher::Config::default());
    run_watch(health, connect, stop, |event| {
        for invalid in index.apply(event) {
            tracing::warn!(prefetch = %invalid, "ignoring a Prefetch that does not deserialize; it selects nothing");
        }
        metrics.watched_prefetches.set(index.len() as i64);
    })
    .await;
}

/// Keeps `index` in step with the cluster's workloads of kind `K` (all namespaces) until
/// `stop`.
pub async fn run_workload_watch<K>(
    client: Client,
    index: Arc<WorkloadIndex<K>>,
    health: Arc<WatchHealth>,
    stop: CancellationToken,
) where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
    for<'k> &'k K: Into<Workload<'k>>,
{
    let api: Api<K> = Api::all(client);
    let connect = move || watcher(api.clone(), watcher::Config::default());
    run_watch(health, connect, stop, |event| index.apply(event)).await;
}

/// Keeps `lease` in step with the controller's leader Lease `namespace/name` until `stop`.
pub async fn run_lease_watch(
    client: Client,
    namespace: String,
    name: String,
    lease: Arc<LeaderLease>,
    health: Arc<WatchHealth>,
    stop: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let connect = move || watcher(api.clone(), config.clone());
    run_watch(health, connect, stop, |event| lease.apply(event)).await;
}

/// Keeps `names` in step with the cluster's Nodes (metadata only: names are all we need).
pub async fn run_node_watch(
    client: Client,
    names: Arc<NodeNames>,
    health: Arc<WatchHealth>,
    stop: CancellationToken,
) {
    let api: Api<PartialObjectMeta<Node>> = Api::all(client);
    let connect = move || watcher(api.clone(), watcher::Config::default());
    run_watch(health, connect, stop, |event| names.apply(event)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Prefetches in `namespace` selecting a Deployment with these labels.
    fn selecting_deployment(
        index: &PrefetchIndex,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<String> {
        Prefetches::selecting_by(index, namespace, WorkloadKind::Deployment, &|key| {
            labels?.get(key).map(String::as_str)
        })
    }
    use kube::core::error_boundary::InvalidObject;
    use prefetch_common::PrefetchSpec;

    fn prefetch(ns: &str, name: &str, labels: &[(&str, &str)]) -> DeserializeGuard<Prefetch> {
        let mut p = Prefetch::new(
            name,
            PrefetchSpec {
                filter_by_labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some(ns.into());
        DeserializeGuard(Ok(p))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selects_only_within_the_namespace() {
        let index = PrefetchIndex::default();
        index.apply(Event::Apply(prefetch(
            "default",
            "web",
            &[("app", "nginx")],
        )));
        assert_eq!(
            selecting_deployment(
                &index,
                "default",
                Some(&labels(&[("app", "nginx"), ("x", "y")]))
            ),
            ["web"]
        );
        assert!(
            selecting_deployment(&index, "other", Some(&labels(&[("app", "nginx")]))).is_empty()
        );
        assert!(
            selecting_deployment(&index, "default", Some(&labels(&[("app", "redis")]))).is_empty()
        );
        assert!(selecting_deployment(&index, "default", None).is_empty());
    }

    #[test]
    fn delete_and_relist_forget_prefetches() {
        let index = PrefetchIndex::default();
        let nginx = labels(&[("app", "nginx")]);
        index.apply(Event::Apply(prefetch("default", "a", &[("app", "nginx")])));
        index.apply(Event::Apply(prefetch("default", "b", &[("app", "nginx")])));
        index.apply(Event::Delete(prefetch("default", "a", &[])));
        assert_eq!(selecting_deployment(&index, "default", Some(&nginx)), ["b"]);
        assert!(!index.is_synced());

        // A relist that no longer contains "b" (deleted while the watch was down).
        index.apply(Event::Init);
        index.apply(Event::InitApply(prefetch("team", "c", &[("app", "nginx")])));
        assert_eq!(
            selecting_deployment(&index, "default", Some(&nginx)),
            ["b"],
            "live view holds until InitDone"
        );
        index.apply(Event::InitDone);
        assert!(index.is_synced());
        assert!(selecting_deployment(&index, "default", Some(&nginx)).is_empty());
        assert_eq!(selecting_deployment(&index, "team", Some(&nginx)), ["c"]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn an_update_that_no_longer_deserializes_stops_selecting() {
        let index = PrefetchIndex::default();
        index.apply(Event::Apply(prefetch("default", "a", &[("app", "nginx")])));
        let metadata = ObjectMeta {
            namespace: Some("default".into()),
            name: Some("a".into()),
            ..Default::default()
        };
        let broken = DeserializeGuard(Err(InvalidObject {
            error: "missing field filter_by_labels".into(),
            metadata,
        }));
        let invalid = index.apply(Event::Apply(broken));
        assert_eq!(invalid, ["default/a: missing field filter_by_labels"]);
        assert!(index.is_empty());
    }

    #[test]
    fn node_names_follow_events_and_relists() {
        let names = NodeNames::default();
        let node = |n: &str| Node {
            metadata: ObjectMeta {
                name: Some(n.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(names.with_names(|n| n.cloned()), None);
        names.apply(Event::<Node>::Init);
        names.apply(Event::InitApply(node("a")));
        names.apply(Event::<Node>::InitDone);
        names.apply(Event::Apply(node("b")));
        names.apply(Event::Delete(node("a")));
        assert_eq!(
            names.with_names(|n| n.cloned()),
            Some(["b".to_string()].into())
        );
    }

    #[test]
    fn gating_prefetches_and_sync_are_read_through_the_view() {
        let index = PrefetchIndex::default();
        let view: &dyn Prefetches = &index;
        let mut gating = prefetch("default", "gates", &[("app", "web")]);
        if let Ok(p) = &mut gating.0 {
            p.spec.gate_rollouts = Some(true);
            p.spec.gate_timeout = Some(120);
        }
        index.apply(Event::Init);
        index.apply(Event::InitApply(gating));
        index.apply(Event::InitApply(prefetch(
            "default",
            "plain",
            &[("app", "web")],
        )));
        assert!(!view.is_synced());
        index.apply(Event::InitDone);
        assert!(view.is_synced());
        let web = |key: &str| (key == "app").then_some("web");
        assert_eq!(
            view.selecting_by("default", WorkloadKind::Deployment, &web),
            ["gates", "plain"]
        );
        assert_eq!(
            view.gating_by("default", WorkloadKind::StatefulSet, &web),
            [GatingPrefetch {
                name: "gates".into(),
                gate_timeout: 120,
                prefetched_through: None,
            }]
        );
        assert!(
            view.gating_by("other", WorkloadKind::Deployment, &web)
                .is_empty()
        );
    }

    #[test]
    fn the_lease_follows_its_holder() {
        use k8s_openapi::api::coordination::v1::LeaseSpec;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let at: jiff::Timestamp = "2026-11-22T03:00:00Z".parse().unwrap();
        let lease = |holder: &str| Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(at)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let leader = LeaderLease::default();
        leader.apply(Event::Init);
        leader.apply(Event::InitApply(lease("controller-1")));
        assert!(!leader.is_synced());
        leader.apply(Event::InitDone);
        assert!(leader.is_synced());
        assert_eq!(leader.renewed_at(), Some(at));
        leader.apply(Event::Apply(lease("")));
        assert_eq!(leader.renewed_at(), None, "released");
        leader.apply(Event::Apply(lease("controller-2")));
        leader.apply(Event::Delete(lease("controller-2")));
        assert_eq!(leader.renewed_at(), None, "deleted");
    }
}
