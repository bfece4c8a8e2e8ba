//! The controller's watch caches for one term of leadership: one watch per resource (run by
//! `prefetch_shell::watch`, objects slimmed to what the rounds read) feeds both the stores the
//! loops read ([`Caches`]) and the Controller's triggers ([`Triggers`]), and node and gated-pod
//! changes wake the loops beside it ([`Wakes`]). [`controller`] maps each trigger to the
//! Prefetches it concerns.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::runtime::Controller;
use kube::runtime::reflector::store::WriterDropped;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use prefetch_common::Prefetch;
use prefetch_common::annotations::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, PREFETCH_IMAGES, PREFETCH_REQUESTED_AT,
};
use prefetch_shell::watch::{WatchHealth, WatchSet, spawn_watch};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::core::eligibility::{PLANNING_CONDITIONS, has_disk_pressure, is_ready};
use crate::core::gated_namespaces::labelled_selector;
use crate::core::plan::{node_images, selects_deployment};
use crate::core::revisions::{for_pulls, revision_pod_spec};
use crate::core::workload::{Workload, selects_workload};
use crate::shell::context::controller_owner;
use crate::shell::gate_loop::{gated_pods_selector, slim_gated_pod};
use crate::shell::namespaces::slim_namespace;
use crate::shell::records::cached_listed;

/// The stores the reconciles and the loops beside them read.
pub struct Caches {
    pub nodes: Store<Node>,
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    pub jobs: Store<Job>,
    pub cron_jobs: Store<CronJob>,
    pub replica_sets: Store<ReplicaSet>,
    pub revisions: Store<ControllerRevision>,
    pub service_accounts: Store<ServiceAccount>,
    /// Prefetch pods (the managed-by label).
    pub pods: Store<Pod>,
    pub prefetches: Store<Prefetch>,
    /// Pods held by our scheduling gate (the gated-by label), for the gate loop.
    pub gated_pods: Store<Pod>,
    /// Namespaces carrying the gated-rollouts label, for the namespace loop.
    pub gated_namespaces: Store<Namespace>,
}

/// The changes that trigger reconciles, for [`controller`].
pub struct Triggers {
    prefetches: TriggerReceiver<Prefetch>,
    pods: TriggerReceiver<Pod>,
    deployments: TriggerReceiver<Deployment>,
    stateful_sets: TriggerReceiver<StatefulSet>,
    daemon_sets: TriggerReceiver<DaemonSet>,
    jobs: TriggerReceiver<Job>,
    cron_jobs: TriggerReceiver<CronJob>,
    replica_sets: TriggerReceiver<ReplicaSet>,
    service_accounts: TriggerReceiver<ServiceAccount>,
    /// A node that matters to planning changed: every Prefetch reconciles.
    nodes: mpsc::Receiver<()>,
}

/// What wakes the loops beside the Controller.
pub struct Wakes {
    /// A node changed (the warm loop; outcomes on warming nodes wake it too).
    pub warm: Arc<Notify>,
    /// A gated pod appeared or changed (the gate loop).
    pub gate: Arc<Notify>,
    /// Reconciles every Prefetch, as a node change does.
    pub reconcile_all: mpsc::Sender<()>,
    /// A Prefetch or a labelled namespace changed (the namespace loop).
    pub namespaces: Arc<Notify>,
}

/// Starts every watch of this term of leadership; they run until `stop`.
pub fn start(
    client: &Client,
    watches: &WatchSet,
    stop: &CancellationToken,
) -> (Caches, Triggers, Wakes) {
    let watch = Watcher {
        client,
        watches,
        stop,
    };
    let (nodes, node_triggers, reconcile_all, warm) = watch.nodes();
    let all = watcher::Config::default;
    let (deployments, deployment_rx) =
        watch.triggering("deployments", all(), slim_deployment, true);
    let (stateful_sets, stateful_set_rx) = watch.workloads::<StatefulSet>("statefulsets");
    let (daemon_sets, daemon_set_rx) = watch.workloads::<DaemonSet>("daemonsets");
    let (jobs, job_rx) = watch.workloads::<Job>("jobs");
    let (cron_jobs, cron_job_rx) = watch.workloads::<CronJob>("cronjobs");
    let (replica_sets, replica_set_rx) = watch.workloads::<ReplicaSet>("replicasets");
    // No trigger: a rollout's new revision comes with a change of its StatefulSet or
    // DaemonSet, whose watch triggers the reconcile.
    let revisions = watch.cache("controllerrevisions", all(), slim_revision, |_| {});
    let (service_accounts, account_rx) =
        watch.triggering("serviceaccounts", all(), slim_service_account, true);
    let managed = all().labels(&managed_pods_selector());
    let (pods, pod_rx) = watch.triggering("pods", managed, slim_pod, true);
    let namespaces_wake = Arc::new(Notify::new());
    let (prefetch_tx, prefetch_rx) = mpsc::unbounded_channel();
    let wake = namespaces_wake.clone();
    let prefetches = watch.cache(
        "prefetches",
        all(),
        |_| {},
        move |event| {
            forward(event, &prefetch_tx, false);
            wake.notify_one();
        },
    );
    let (gated_pods, gate) = watch.gated_pods();
    let gated_namespaces = watch.gated_namespaces(&namespaces_wake);
    let caches = Caches {
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
        prefetches,
        gated_pods,
        gated_namespaces,
    };
    let triggers = Triggers {
        prefetches: prefetch_rx,
        pods: pod_rx,
        deployments: deployment_rx,
        stateful_sets: stateful_set_rx,
        daemon_sets: daemon_set_rx,
        jobs: job_rx,
        cron_jobs: cron_job_rx,
        replica_sets: replica_set_rx,
        service_accounts: account_rx,
        nodes: node_triggers,
    };
    let wakes = Wakes {
        warm,
        gate,
        reconcile_all,
        namespaces: namespaces_wake,
    };
    (caches, triggers, wakes)
}

impl Caches {
    /// Resolves once every cache the rounds read has synced (the gate loop waits for its own).
    pub async fn synced(&self) -> Result<(), WriterDropped> {
        tokio::try_join!(
            self.nodes.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.stateful_sets.wait_until_ready(),
            self.daemon_sets.wait_until_ready(),
            self.jobs.wait_until_ready(),
            self.cron_jobs.wait_until_ready(),
            self.replica_sets.wait_until_ready(),
            self.revisions.wait_until_ready(),
            self.service_accounts.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.prefetches.wait_until_ready()
        )?;
        Ok(())
    }
}

/// The Controller over the Prefetch cache, each trigger mapped to the Prefetches it concerns.
pub fn controller(triggers: Triggers, caches: &Caches) -> Controller<Prefetch> {
    let prefetches = &caches.prefetches;
    let node_triggers = futures::stream::unfold(triggers.nodes, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    Controller::for_stream(trigger_stream(triggers.prefetches), prefetches.clone())
        .owns_stream(trigger_stream(triggers.pods))
        .watches_stream(
            trigger_stream(triggers.deployments),
            selecting::<Deployment>(prefetches),
        )
        .watches_stream(
            trigger_stream(triggers.stateful_sets),
            selecting::<StatefulSet>(prefetches),
        )
        .watches_stream(
            trigger_stream(triggers.daemon_sets),
            selecting::<DaemonSet>(prefetches),
        )
        .watches_stream(trigger_stream(triggers.jobs), selecting::<Job>(prefetches))
        .watches_stream(
            trigger_stream(triggers.cron_jobs),
            selecting::<CronJob>(prefetches),
        )
        .watches_stream(
            trigger_stream(triggers.replica_sets),
            owner_selecting(&caches.deployments, prefetches),
        )
        .watches_stream(
            trigger_stream(triggers.service_accounts),
            in_namespace_of(prefetches),
        )
        .reconcile_all_on(node_triggers)
}

/// Starts the watches of one term of leadership.
struct Watcher<'a> {
    client: &'a Client,
    watches: &'a WatchSet,
    stop: &'a CancellationToken,
}

impl Watcher<'_> {
    /// A watch cache: the shared watch runner (see `prefetch_shell::watch`) feeding a store,
    /// objects slimmed first; `on_event` sees each event after the store applied it.
    fn cache<K>(
        &self,
        name: &str,
        config: watcher::Config,
        slim: fn(&mut K),
        mut on_event: impl FnMut(&Event<K>) + Send + 'static,
    ) -> Store<K>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let health: Arc<WatchHealth> = self.watches.register(name);
        let api = Api::<K>::all(self.client.clone());
        let (reader, mut writer) = reflector::store();
        spawn_watch(health, api, config, self.stop.clone(), move |event| {
            let event = event.modify(slim);
            writer.apply_watcher_event(&event);
            on_event(&event);
        });
        reader
    }

    /// A watch cache, and the stream of its changes for the Controller (deletions too when
    /// `deleted_too`).
    fn triggering<K>(
        &self,
        name: &str,
        config: watcher::Config,
        slim: fn(&mut K),
        deleted_too: bool,
    ) -> (Store<K>, TriggerReceiver<K>)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.cache(name, config, slim, move |event| {
            forward(event, &tx, deleted_too)
        });
        (store, rx)
    }

    /// A watch cache of one workload kind, and the stream of its changes for the Controller.
    fn workloads<K>(&self, name: &str) -> (Store<K>, TriggerReceiver<K>)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
    {
        self.triggering(name, watcher::Config::default(), slim_workload::<K>, true)
    }

    /// The node cache. A change that matters to planning (see [`node_fingerprint`]) reconciles
    /// every Prefetch and wakes the warm loop; a heartbeat does neither.
    fn nodes(
        &self,
    ) -> (
        Store<Node>,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
        Arc<Notify>,
    ) {
        let (node_tx, node_rx) = mpsc::channel::<()>(1);
        let warm_wake = Arc::new(Notify::new());
        let reconcile_all = node_tx.clone();
        let node_changed = warm_wake.clone();
        let mut fingerprints: HashMap<String, u64> = HashMap::new();
        let nodes = self.cache(
            "nodes",
            watcher::Config::default(),
            slim_node,
            move |event| {
                if fingerprint_changed(&mut fingerprints, event) {
                    // A full channel already holds a pending trigger: dropping this one loses
                    // nothing.
                    let _ = node_tx.try_send(());
                    node_changed.notify_one();
                }
            },
        );
        (nodes, node_rx, reconcile_all, warm_wake)
    }

    /// The cache of pods held by our scheduling gate; a new or changed one wakes the gate loop.
    fn gated_pods(&self) -> (Store<Pod>, Arc<Notify>) {
        let gate_wake = Arc::new(Notify::new());
        let wake = gate_wake.clone();
        let gated_pods = self.cache(
            "gated-pods",
            watcher::Config::default().labels(&gated_pods_selector()),
            slim_gated_pod,
            move |event| {
                if matches!(event, Event::Apply(_) | Event::InitDone) {
                    wake.notify_one();
                }
            },
        );
        (gated_pods, gate_wake)
    }
}

impl Watcher<'_> {
    /// The cache of namespaces carrying the gated-rollouts label; a change wakes the
    /// namespace loop.
    fn gated_namespaces(&self, wake: &Arc<Notify>) -> Store<Namespace> {
        let wake = wake.clone();
        self.cache(
            "gated-namespaces",
            watcher::Config::default().labels(&labelled_selector()),
            slim_namespace,
            move |_| wake.notify_one(),
        )
    }
}

/// Whether a node event changes what planning sees, keeping `fingerprints` up to date: an
/// applied node whose fingerprint differs (not while the watch lists), a deleted node we knew,
/// the end of a list.
fn fingerprint_changed(fingerprints: &mut HashMap<String, u64>, event: &Event<Node>) -> bool {
    match event {
        Event::Apply(node) | Event::InitApply(node) => {
            let print = node_fingerprint(node);
            fingerprints.insert(node.name_any(), print) != Some(print)
                && matches!(event, Event::Apply(_))
        }
        Event::Delete(node) => fingerprints.remove(&node.name_any()).is_some(),
        Event::InitDone => true,
        Event::Init => false,
    }
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

/// Prefetch pods as planning reads them: identity, owner, node, each container's image and
/// mounts, the image volumes, and the status (phase, reason, container states). A container
/// that mounts an image volume pulls the volume's image (`outcome::read_pod`): without its
/// mounts and the volumes, the pod would read as pulling the noop image.
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(spec) = pod.spec.as_mut() {
        let containers = std::mem::take(&mut spec.containers)
            .into_iter()
            .map(|c| k8s_openapi::api::core::v1::Container {
                name: c.name,
                image: c.image,
                volume_mounts: c.volume_mounts,
                ..Default::default()
            })
            .collect();
        let image_volumes: Vec<_> = std::mem::take(&mut spec.volumes)
            .into_iter()
            .flatten()
            .filter(|v| v.image.is_some())
            .collect();
        *spec = k8s_openapi::api::core::v1::PodSpec {
            containers,
            volumes: (!image_volumes.is_empty()).then_some(image_volumes),
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
        let owner = controller_owner(&replica_set, "Deployment");
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

type TriggerSender<K> = mpsc::UnboundedSender<Result<K, watcher::Error>>;
type TriggerReceiver<K> = mpsc::UnboundedReceiver<Result<K, watcher::Error>>;

/// Feeds the objects an event touched (applied, or deleted too) to a Controller trigger.
/// Unbounded, but the Controller drains it as it comes (its scheduler keeps one entry per
/// object), so it holds what one watch event carries.
fn forward<K: Clone>(event: &Event<K>, trigger: &TriggerSender<K>, deleted_too: bool) {
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
    rx: TriggerReceiver<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
{
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::context::cached_images;
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

#[cfg(test)]
mod slim_pod_tests {
    use super::*;
    use crate::core::outcome::read_pod;

    #[test]
    fn a_slimmed_pod_still_reads_as_pulling_its_image_volume() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "prefetch-p-n", "namespace": "ns"},
            "spec": {
                "containers": [
                    {"name": "pull-0", "image": "docker.io/library/nginx:1.27",
                     "command": ["/prefetch/noop"], "resources": {"limits": {"cpu": "10m"}}},
                    {"name": "pull-1", "image": "kube-prefetch/noop:dev",
                     "volumeMounts": [{"name": "artifact-0", "mountPath": "/artifact"}]}
                ],
                "volumes": [
                    {"name": "artifact-0", "image": {"reference": "ghcr.io/org/weights:1"}},
                    {"name": "noop", "emptyDir": {}}
                ]
            }
        }))
        .unwrap();
        slim_pod(&mut pod);
        let images: Vec<String> = read_pod(&pod, false)
            .images
            .into_iter()
            .map(|(image, _)| image)
            .collect();
        assert_eq!(
            images,
            ["docker.io/library/nginx:1.27", "ghcr.io/org/weights:1"]
        );
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.volumes.unwrap().len(),
            1,
            "only the image volume is kept"
        );
        assert_eq!(spec.containers[0].command, None);
    }
}
