//! Watch caches the webhook answers from: which Prefetch selects which Deployments, and the
//! cluster's node names. Fed by kube-runtime watchers run by `prefetch_common::watch` (the
//! one runner of every watch: resetting backoff, relist after a failure, health for
//! `/readyz` and the staleness metric); never an API call per request.
//!
//! A relist (`Init` .. `InitDone`) builds a fresh map and swaps it in whole, so objects deleted
//! while the watch was down disappear too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::watcher::Event;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use prefetch_common::Prefetch;
use prefetch_common::labels::selects_by;
use prefetch_common::watch::{WatchHealth, run_watch};
use tokio_util::sync::CancellationToken;

use crate::locks;
use crate::metrics::Metrics;

type Selector = BTreeMap<String, String>;

/// namespace -> Prefetch name -> filter_by_labels.
#[derive(Debug, Default)]
struct Selectors {
    live: HashMap<String, BTreeMap<String, Selector>>,
    /// Being filled by a relist; swapped into `live` at `InitDone`.
    relist: Option<HashMap<String, BTreeMap<String, Selector>>>,
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

    /// Whether some Prefetch in `namespace` selects an object with these labels; the names of
    /// those that do, for logs.
    pub fn selecting(
        &self,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> Vec<String> {
        self.selecting_by(namespace, |key| labels?.get(key).map(String::as_str))
    }

    /// [`Self::selecting`] over any label lookup (labels borrowed from a request body).
    pub fn selecting_by<'l>(
        &self,
        namespace: &str,
        label: impl Fn(&str) -> Option<&'l str>,
    ) -> Vec<String> {
        let guard = locks::read(&self.selectors);
        guard
            .live
            .get(namespace)
            .map(|by_name| {
                by_name
                    .iter()
                    .filter(|(_, selector)| !selector.is_empty() && selects_by(selector, &label))
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
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
            |guard: DeserializeGuard<Prefetch>| -> Option<((String, String), Option<Selector>)> {
                match guard.0 {
                    Ok(prefetch) => {
                        let key = namespace_and_name(&prefetch.metadata)?;
                        Some((key, Some(prefetch.spec.filter_by_labels)))
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

fn remove(map: &mut HashMap<String, BTreeMap<String, Selector>>, ns: &str, name: &str) {
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
            index.selecting("default", Some(&labels(&[("app", "nginx"), ("x", "y")]))),
            ["web"]
        );
        assert!(
            index
                .selecting("other", Some(&labels(&[("app", "nginx")])))
                .is_empty()
        );
        assert!(
            index
                .selecting("default", Some(&labels(&[("app", "redis")])))
                .is_empty()
        );
        assert!(index.selecting("default", None).is_empty());
    }

    #[test]
    fn delete_and_relist_forget_prefetches() {
        let index = PrefetchIndex::default();
        let nginx = labels(&[("app", "nginx")]);
        index.apply(Event::Apply(prefetch("default", "a", &[("app", "nginx")])));
        index.apply(Event::Apply(prefetch("default", "b", &[("app", "nginx")])));
        index.apply(Event::Delete(prefetch("default", "a", &[])));
        assert_eq!(index.selecting("default", Some(&nginx)), ["b"]);
        assert!(!index.is_synced());

        // A relist that no longer contains "b" (deleted while the watch was down).
        index.apply(Event::Init);
        index.apply(Event::InitApply(prefetch("team", "c", &[("app", "nginx")])));
        assert_eq!(
            index.selecting("default", Some(&nginx)),
            ["b"],
            "live view holds until InitDone"
        );
        index.apply(Event::InitDone);
        assert!(index.is_synced());
        assert!(index.selecting("default", Some(&nginx)).is_empty());
        assert_eq!(index.selecting("team", Some(&nginx)), ["c"]);
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
}
