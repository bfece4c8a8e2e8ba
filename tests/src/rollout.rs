//! Plays the rest of a cluster for the warm-rollout scenarios and benchmark, on the in-process
//! test API server: the Deployment controller (a template change makes a ReplicaSet
//! `<deployment>-<hash>` and its pods, created through the API server's admission as the real
//! controller's are), a scheduler (binds ungated, unbound pods; honours `nodeName` and the
//! prefetch pods' `matchFields metadata.name` affinity; spreads the rest over untainted nodes),
//! and the workload side of the kubelet with a pull-time model: an image not in the node's
//! `status.images` takes `pull_time` to pull, then appears there; a pod that starts on a node
//! lacking one of its images "starts cold", and is recorded so. The prefetch pods are left to
//! [`crate::kubelet::FakeKubelet`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use prefetch_common::images::collect_images;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::apiserver::ApiHandle;
use crate::kubelet::digest_of;

/// The label the Deployment controller gives a ReplicaSet's pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The Deployment controller's part in a rollout: the ReplicaSet of the Deployment's current
/// template and `replicas` pods of it, all at once (the instant the real one acts).
pub async fn create_replica_set(
    client: &Client,
    namespace: &str,
    deployment: &str,
    replicas: usize,
) -> anyhow::Result<Vec<Pod>> {
    let d = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(deployment)
        .await?;
    let template = serde_json::to_value(d.spec.as_ref().map(|s| &s.template))?;
    let hash = template_hash(&template);
    let rs_name = format!("{deployment}-{hash}");
    let rs_uid = format!("rs-{hash}");
    let labels = {
        let mut labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels[POD_TEMPLATE_HASH] = json!(hash);
        labels
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut created = Vec::new();
    for _ in 0..replicas {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "generateName": format!("{rs_name}-"),
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                                     "uid": rs_uid, "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": template.get("spec").cloned().unwrap_or(json!({}))
        }))?;
        created.push(pods.create(&PostParams::default(), &pod).await?);
    }
    Ok(created)
}

/// The Deployment controller's ReplicaSet object for `deployment`'s current pods (as
/// [`create_replica_set`] names them), controlled by the Deployment: what the controller
/// follows from a pod to its workload when it counts the pod's starts.
pub async fn create_replica_set_object(
    client: &Client,
    namespace: &str,
    deployment: &str,
    pods: &[Pod],
) -> anyhow::Result<()> {
    let owner = pods
        .first()
        .and_then(|p| p.owner_references().first().cloned())
        .ok_or_else(|| anyhow::anyhow!("no pod with an owner"))?;
    let d = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(deployment)
        .await?;
    let replica_set: k8s_openapi::api::apps::v1::ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": owner.name, "namespace": namespace, "uid": owner.uid,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                         "name": deployment, "uid": d.uid(), "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": deployment}},
                 "template": d.spec.map(|s| s.template)}
    }))?;
    Api::<k8s_openapi::api::apps::v1::ReplicaSet>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &replica_set)
        .await?;
    Ok(())
}

/// A workload controller object that owns pods: a StatefulSet, a DaemonSet or a Job.
#[derive(Debug, Clone)]
pub struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// A workload controller's part (StatefulSet, DaemonSet, Job): pods of `template` (a pod
/// template as JSON) with the given names, controlled by `owner`, labelled with the template's
/// labels and `labels`, created through admission as the real controllers create them. A pod
/// given a node is pinned to it the way the DaemonSet controller pins its pods: a required
/// node affinity `matchFields metadata.name In [node]`.
pub async fn create_owned_pods(
    rig: &GateRig,
    owner: &Owner,
    template: &Value,
    pods: &[(String, Option<String>)],
    labels: Value,
) -> anyhow::Result<Vec<Pod>> {
    let mut all_labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    if let (Some(all), Some(extra)) = (all_labels.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    let mut created = Vec::new();
    for (name, node) in pods {
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        if let Some(node) = node {
            spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}});
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "namespace": rig.namespace(),
                "labels": all_labels,
                "ownerReferences": [{"apiVersion": owner.api_version, "kind": owner.kind,
                                     "name": owner.name, "uid": owner.uid,
                                     "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": spec
        }))?;
        created.push(rig.pods().create(&PostParams::default(), &pod).await?);
    }
    Ok(created)
}

/// A stable, label-safe hash of a pod template (the real controller's is FNV-32a of the
/// template, in a safe alphabet; the value only has to change with the template here).
pub fn template_hash(template: &Value) -> String {
    let text = template.to_string();
    let hash: u32 = text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = hash;
    let mut out = String::new();
    for _ in 0..10 {
        out.push(SAFE[(n % SAFE.len() as u32) as usize] as char);
        n /= SAFE.len() as u32;
        if n == 0 {
            n = hash.rotate_left(out.len() as u32);
        }
    }
    out
}

/// One workload pod start the kubelet saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub pod: String,
    pub node: String,
    /// Images the node lacked when the pod started.
    pub missing: Vec<String>,
    /// The pod carried the gated-by label (the webhook gated it).
    pub was_gated: bool,
    /// Since the simulation started.
    pub at: Duration,
}

impl Start {
    pub fn cold(&self) -> bool {
        !self.missing.is_empty()
    }
}

/// When things were first seen, since the simulation started, on the simulation's own clock
/// (every 25 ms), so that their order can be compared.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// (node, normalized image) -> first listed in the node's `status.images`.
    pub listed: BTreeMap<(String, String), Duration>,
    /// Pod name -> first seen without scheduling gates after the webhook gated it.
    pub released: BTreeMap<String, Duration>,
}

impl Timeline {
    fn observe(&mut self, nodes: &[Value], pods: &[Value], at: Duration) {
        for node in nodes {
            let Some(name) = str_at(node, "/metadata/name") else {
                continue;
            };
            for image in node_images(node) {
                self.listed.entry((name.to_string(), image)).or_insert(at);
            }
        }
        for pod in pods {
            let gated = pod
                .pointer("/metadata/labels/cache.techsquad.rocks~1gated-by")
                .is_some();
            if let (true, false, Some(name)) =
                (gated, has_gates(pod), str_at(pod, "/metadata/name"))
            {
                self.released.entry(name.to_string()).or_insert(at);
            }
        }
    }

    /// When the last of `nodes` listed `image`; `None` while one has not.
    pub fn pulled_everywhere(&self, nodes: &[String], image: &str) -> Option<Duration> {
        nodes
            .iter()
            .map(|n| self.listed.get(&(n.clone(), image.to_string())).copied())
            .try_fold(Duration::ZERO, |latest, at| Some(latest.max(at?)))
    }
}

/// The scheduler and the workload kubelet, running until dropped.
pub struct ClusterSim {
    stop: CancellationToken,
    starts: Arc<Mutex<Vec<Start>>>,
    timeline: Arc<Mutex<Timeline>>,
    /// Pods bound by the scheduler, by name.
    bound: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Drop for ClusterSim {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn is_prefetch_pod(pod: &Value) -> bool {
    str_at(pod, "/metadata/labels/app.kubernetes.io~1managed-by") == Some("prefetch-controller")
}

/// Normalized image names a node lists in `status.images`.
fn node_images(node: &Value) -> BTreeSet<String> {
    let names = node
        .pointer("/status/images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("names").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str);
    collect_images(names).images
}

fn pod_images(pod: &Value) -> BTreeSet<String> {
    let refs = ["containers", "initContainers"]
        .into_iter()
        .filter_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c.get("image").and_then(Value::as_str));
    collect_images(refs).images
}

/// The node a pod is pinned to by `matchFields metadata.name In [node]`, if any.
fn pinned_node(pod: &Value) -> Option<String> {
    let terms = pod.pointer(
        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
    )?;
    terms.as_array()?.iter().find_map(|term| {
        term.get("matchFields")?.as_array()?.iter().find_map(|f| {
            (str_at(f, "/key") == Some("metadata.name") && str_at(f, "/operator") == Some("In"))
                .then(|| str_at(f, "/values/0").map(String::from))?
        })
    })
}

fn has_gates(pod: &Value) -> bool {
    pod.pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .is_some_and(|g| !g.is_empty())
}

fn tolerates_all(pod: &Value, node: &Value) -> bool {
    let tolerated: BTreeSet<&str> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| str_at(t, "/key"))
        .collect();
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| matches!(str_at(t, "/effect"), Some("NoSchedule" | "NoExecute")))
        .all(|t| str_at(t, "/key").is_some_and(|k| tolerated.contains(k)))
}

impl ClusterSim {
    /// Runs against `api` in `namespace`: workload pods pull a missing image in `pull_time`.
    pub fn start(api: ApiHandle, namespace: &str, pull_time: Duration) -> Self {
        let stop = CancellationToken::new();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let bound = Arc::new(Mutex::new(BTreeMap::new()));
        let timeline = Arc::new(Mutex::new(Timeline::default()));
        let (token, record, binds) = (stop.clone(), starts.clone(), bound.clone());
        let seen = timeline.clone();
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            // Pulls in progress: (node, image) -> started.
            let mut pulls: HashMap<(String, String), tokio::time::Instant> = HashMap::new();
            let mut started: BTreeSet<String> = BTreeSet::new();
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                }
                let nodes = api.objects("", "nodes");
                let pods = api.objects_where("", "pods", |p| {
                    str_at(p, "/metadata/namespace") == Some(&namespace)
                });
                lock(&seen).observe(&nodes, &pods, began.elapsed());
                schedule(&api, &nodes, &pods, &binds);
                // Workload pods: start, cold or warm, then pull what is missing.
                for pod in pods.iter().filter(|p| !is_prefetch_pod(p)) {
                    let (Some(name), Some(node_name)) =
                        (str_at(pod, "/metadata/name"), str_at(pod, "/spec/nodeName"))
                    else {
                        continue;
                    };
                    let Some(node) = nodes
                        .iter()
                        .find(|n| str_at(n, "/metadata/name") == Some(node_name))
                    else {
                        continue;
                    };
                    let have = node_images(node);
                    let missing: Vec<String> = pod_images(pod)
                        .into_iter()
                        .filter(|i| !have.contains(i))
                        .collect();
                    if started.insert(name.to_string()) {
                        lock(&record).push(Start {
                            pod: name.to_string(),
                            node: node_name.to_string(),
                            missing: missing.clone(),
                            was_gated: pod
                                .pointer("/metadata/labels/cache.techsquad.rocks~1gated-by")
                                .is_some(),
                            at: began.elapsed(),
                        });
                    }
                    let mut done = Vec::new();
                    for image in &missing {
                        let since = *pulls
                            .entry((node_name.to_string(), image.clone()))
                            .or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= pull_time {
                            done.push(image.clone());
                        }
                    }
                    if !done.is_empty() {
                        add_node_images(&api, node, &done);
                    }
                    if missing.len() == done.len()
                        && str_at(pod, "/status/phase") != Some("Running")
                    {
                        let _ = api.merge_status_direct(
                            "",
                            "v1",
                            "pods",
                            &namespace,
                            name,
                            &json!({"phase": "Running"}),
                        );
                    }
                }
            }
        });
        Self {
            stop,
            starts,
            timeline,
            bound,
        }
    }

    pub fn starts(&self) -> Vec<Start> {
        lock(&self.starts).clone()
    }

    pub fn timeline(&self) -> Timeline {
        lock(&self.timeline).clone()
    }

    pub fn bound(&self) -> BTreeMap<String, String> {
        lock(&self.bound).clone()
    }
}

fn add_node_images(api: &ApiHandle, node: &Value, images: &[String]) {
    let mut list: Vec<Value> = node
        .pointer("/status/images")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for image in images {
        list.push(json!({"names": [digest_of(image), image], "sizeBytes": 1000}));
    }
    if let Some(name) = str_at(node, "/metadata/name") {
        let _ = api.merge_status_direct("", "v1", "nodes", "", name, &json!({"images": list}));
    }
}

/// Binds every ungated, unbound pod: to its pinned node, else to the untainted (or tolerated)
/// Ready node with the fewest workload pods.
fn schedule(
    api: &ApiHandle,
    nodes: &[Value],
    pods: &[Value],
    bound: &Mutex<BTreeMap<String, String>>,
) {
    let mut load: BTreeMap<String, usize> = nodes
        .iter()
        .filter_map(|n| str_at(n, "/metadata/name").map(|n| (n.to_string(), 0)))
        .collect();
    for pod in pods.iter().filter(|p| !is_prefetch_pod(p)) {
        if let Some(node) = str_at(pod, "/spec/nodeName") {
            *load.entry(node.to_string()).or_default() += 1;
        }
    }
    for pod in pods {
        let bound_already = str_at(pod, "/spec/nodeName").is_some_and(|n| !n.is_empty());
        if bound_already || has_gates(pod) || pod.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let (Some(ns), Some(name)) = (
            str_at(pod, "/metadata/namespace"),
            str_at(pod, "/metadata/name"),
        ) else {
            continue;
        };
        let target = pinned_node(pod).or_else(|| {
            nodes
                .iter()
                .filter(|n| tolerates_all(pod, n))
                .filter_map(|n| str_at(n, "/metadata/name"))
                .min_by_key(|n| (load.get(*n).copied().unwrap_or(0), n.to_string()))
                .map(String::from)
        });
        let Some(target) = target else {
            continue;
        };
        if api.bind(ns, name, &target).is_ok() {
            if !is_prefetch_pod(pod) {
                *load.entry(target.clone()).or_default() += 1;
            }
            lock(bound).insert(name.to_string(), target);
        }
    }
}

/// Names of `pods`' owner ReplicaSet (the first pod's), for assertions.
pub fn replica_set_of(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.name.clone())
}

/// How a warm-rollout scenario's cluster is set up.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// `spec.gate_rollouts` of the Prefetch.
    pub gate: bool,
    /// `spec.gate_timeout`, seconds (default when `None`).
    pub gate_timeout: Option<i64>,
    /// Time to pull an image missing on a node, for prefetch and workload pods alike.
    pub pull_time: Duration,
    pub workers: usize,
    pub replicas: usize,
    /// Controller replicas (leader elected).
    pub controllers: usize,
    /// Register the pod hook at an address nothing listens on.
    pub pod_hook_unreachable: bool,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            gate: true,
            gate_timeout: None,
            pull_time: Duration::from_millis(1500),
            workers: 3,
            replicas: 6,
            controllers: 1,
            pod_hook_unreachable: false,
        }
    }
}

/// The first image of the scenarios' Deployment and the one a rollout brings.
pub const OLD_IMAGE: &str = "nginx:1.7.9";
pub const NEW_IMAGE: &str = "nginx:1.25";
pub const NEW_IMAGE_NORMALIZED: &str = "docker.io/library/nginx:1.25";
pub const DEPLOYMENT: &str = "nginx";
pub const PREFETCH: &str = "prefetch-sample";

/// A test API server cluster with the real webhook registered as the API server's mutating
/// admission (Deployment and pod hooks), the real controller(s), the fake kubelet for prefetch
/// pods, and [`ClusterSim`] for the scheduler and the workload kubelet.
pub struct GateRig {
    pub cluster: crate::cluster::TestCluster,
    pub webhook: crate::binaries::WebhookProcess,
    pub controllers: Vec<Option<crate::binaries::ControllerProcess>>,
    pub kubelet: crate::kubelet::FakeKubelet,
    pub rules: crate::scenario::NodeRules,
    pub sim: ClusterSim,
    pub options: RigOptions,
    pub controller_kubeconfig: std::path::PathBuf,
}

/// The Job pod hook's `matchConditions` rule of the install (`cronjob-owned`), mirrored: only
/// pods whose controller owner is a Job named as a CronJob names its Jobs, `<cronjob>-<digits>`.
pub fn owned_by_a_cron_job(pod: &Value) -> bool {
    let cron_job_named = |name: &str| {
        name.rsplit_once('-').is_some_and(|(prefix, suffix)| {
            !prefix.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
        })
    };
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|o| {
            o.get("controller") == Some(&Value::Bool(true))
                && str_at(o, "/kind") == Some("Job")
                && str_at(o, "/name").is_some_and(cron_job_named)
        })
}

/// The install's pod hooks (the base manifests), each as the test API server runs it: its
/// name, namespace and object selectors, and its match condition mirrored in Rust (the test
/// API server has no CEL; tests/admission_policy.rs runs the CEL itself). `namespace_selector`
/// replaces the install's when given (a benchmark's every-namespace variant).
pub fn install_pod_hooks(
    client: &Arc<crate::tls_client::PinnedClient>,
    namespace_selector: Option<&crate::apiserver::LabelSelector>,
) -> anyhow::Result<Vec<crate::apiserver::MutatingWebhook>> {
    let selector = |hook: &Value, field: &str| {
        crate::apiserver::LabelSelector::from_json(&hook[field])
            .map_err(|e| anyhow::anyhow!("{}: {field}: {e}", hook["name"]))
    };
    install_hooks_at("/mutate/pod", "pods")?
        .iter()
        .map(|hook| {
            let match_condition: Option<crate::apiserver::MatchCondition> =
                match hook["matchConditions"].as_array().map(Vec::as_slice) {
                    None | Some([]) => None,
                    Some([c]) if c["name"] == "cronjob-owned" => {
                        Some(Arc::new(owned_by_a_cron_job))
                    }
                    Some(other) => anyhow::bail!("no mirror of the match conditions {other:?}"),
                };
            Ok(crate::apiserver::MutatingWebhook {
                name: hook["name"].as_str().unwrap_or_default().to_string(),
                group: "",
                plural: "pods",
                operations: vec!["CREATE"],
                client: client.clone(),
                path: "/mutate/pod".into(),
                timeout: Duration::from_secs(hook["timeoutSeconds"].as_u64().unwrap_or(10)),
                ignore_failures: hook["failurePolicy"] == "Ignore",
                namespace_selector: match namespace_selector {
                    Some(s) => s.clone(),
                    None => selector(hook, "namespaceSelector")?,
                },
                object_selector: selector(hook, "objectSelector")?,
                match_condition,
            })
        })
        .collect()
}

/// The install's mutating hooks at `path` for `resource` (the base manifests), in order.
pub fn install_hooks_at(path: &str, resource: &str) -> anyhow::Result<Vec<Value>> {
    let docs =
        crate::manifests::kustomization_resources(&crate::manifests::manifests_dir().join("base"))?;
    let hooks = docs
        .iter()
        .find(|d| d.kind == "MutatingWebhookConfiguration")
        .context("no MutatingWebhookConfiguration in the base")?;
    let found: Vec<Value> = hooks.value["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| {
            h["clientConfig"]["service"]["path"] == path
                && h["rules"][0]["resources"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!(resource)))
        })
        .cloned()
        .collect();
    anyhow::ensure!(!found.is_empty(), "no hook at {path} for {resource}");
    Ok(found)
}

/// The `namespaceSelector` of the install's mutating hook at `path` for `resource` (the base
/// manifests), for the test API server to evaluate as kube-apiserver does.
pub fn install_namespace_selector(
    path: &str,
    resource: &str,
) -> anyhow::Result<crate::apiserver::LabelSelector> {
    let hooks = install_hooks_at(path, resource)?;
    crate::apiserver::LabelSelector::from_json(&hooks[0]["namespaceSelector"])
        .map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

impl GateRig {
    /// `None` (after saying why) against a real cluster: the rig plays scheduler and kubelets.
    pub async fn start(test: &str, options: RigOptions) -> anyhow::Result<Option<Self>> {
        use crate::apiserver::MutatingWebhook;
        use crate::binaries::{ControllerProcess, WebhookOptions, WebhookProcess};
        use crate::tls_client::{PinnedClient, Protocol};

        let cluster = crate::cluster::TestCluster::start(test).await?;
        let Some(api) = cluster.api.as_ref() else {
            eprintln!(
                "skipped against a real cluster: this scenario plays the scheduler and the kubelets"
            );
            return Ok(None);
        };
        let (client, ns) = (cluster.client.clone(), cluster.namespace.clone());
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
        for i in 1..=options.workers {
            nodes
                .create(
                    &PostParams::default(),
                    &crate::scenario::node(&format!("worker-{i}"), json!([]), json!([])),
                )
                .await?;
        }
        let certs = crate::fixtures::issue_test_certs(&cluster.dir.path().join("certs"))?;
        let webhook_kubeconfig = cluster.dir.path().join("webhook-kubeconfig");
        std::fs::write(&webhook_kubeconfig, api.kubeconfig_for("prefetch-webhook"))?;
        let mut webhook_options = WebhookOptions::with_cert_dir(&webhook_kubeconfig, &certs);
        webhook_options.extra_args = vec![
            "--lease-namespace".into(),
            ns.clone(),
            "--lease-name".into(),
            "prefetch-controller".into(),
        ];
        webhook_options.echo_logs = true;
        let webhook = WebhookProcess::start(webhook_options).await?;
        let ca = std::fs::read(certs.join("ca.crt"))?;
        let pinned = |addr| -> anyhow::Result<Arc<PinnedClient>> {
            Ok(Arc::new(PinnedClient::new(
                &ca,
                addr,
                "127.0.0.1",
                Protocol::Http1,
            )?))
        };
        api.register_mutating_webhook(MutatingWebhook {
            name: "deployments.prefetch.cache.techsquad.rocks".into(),
            group: "apps",
            plural: "deployments",
            operations: vec!["CREATE", "UPDATE"],
            client: pinned(webhook.admission_addr)?,
            path: "/mutate/deployment".into(),
            timeout: Duration::from_secs(2),
            ignore_failures: true,
            namespace_selector: install_namespace_selector("/mutate/deployment", "deployments")?,
            object_selector: Default::default(),
            match_condition: None,
        });
        for (group, plural) in [
            ("apps", "statefulsets"),
            ("apps", "daemonsets"),
            ("batch", "cronjobs"),
        ] {
            api.register_mutating_webhook(MutatingWebhook {
                name: format!("{plural}.prefetch.cache.techsquad.rocks"),
                group,
                plural,
                operations: vec!["CREATE", "UPDATE"],
                client: pinned(webhook.admission_addr)?,
                path: "/mutate/workload".into(),
                timeout: Duration::from_secs(2),
                ignore_failures: true,
                namespace_selector: install_namespace_selector("/mutate/workload", plural)?,
                object_selector: Default::default(),
                match_condition: None,
            });
        }
        let pod_addr = if options.pod_hook_unreachable {
            // A port that was just free: connection refused.
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?
        } else {
            webhook.admission_addr
        };
        for hook in install_pod_hooks(&pinned(pod_addr)?, None)? {
            api.register_mutating_webhook(hook);
        }

        let mut deployment = crate::fixtures::nginx_deployment(
            &ns,
            DEPLOYMENT,
            json!({"app": "nginx"}),
            &[OLD_IMAGE],
        );
        deployment["spec"]["replicas"] = json!(options.replicas);
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &serde_json::from_value(deployment)?)
            .await?;
        let mut prefetch = crate::fixtures::sample_prefetch(&ns);
        prefetch["spec"]["gate_rollouts"] = json!(options.gate);
        if let Some(timeout) = options.gate_timeout {
            prefetch["spec"]["gate_timeout"] = json!(timeout);
        }
        let prefetches: Api<prefetch_common::Prefetch> = Api::namespaced(client.clone(), &ns);
        prefetches
            .create(&PostParams::default(), &serde_json::from_value(prefetch)?)
            .await?;

        let rules = crate::scenario::NodeRules::default();
        for i in 1..=options.workers {
            rules.set_image(
                &format!("worker-{i}"),
                NEW_IMAGE_NORMALIZED,
                crate::kubelet::Pull::SucceedAfter(options.pull_time),
            );
        }
        let kubelet = crate::kubelet::FakeKubelet::start(client.clone(), rules.rule());
        let sim = ClusterSim::start(api.handle(), &ns, options.pull_time);

        let controller_kubeconfig = cluster.dir.path().join("controller-kubeconfig");
        std::fs::write(
            &controller_kubeconfig,
            api.kubeconfig_for(crate::scenario::CONTROLLER_TOKEN),
        )?;
        let mut controllers = Vec::new();
        for i in 0..options.controllers {
            let identity = format!("controller-{i}");
            let args = [
                "--noop-image",
                "kube-prefetch/controller:dev",
                "--leader-elect",
                "true",
                "--lease-namespace",
                &ns,
                "--identity",
                &identity,
            ];
            let label = if i == 0 {
                "controller-0"
            } else {
                "controller-1"
            };
            controllers.push(Some(
                ControllerProcess::start(&controller_kubeconfig, &args, label).await?,
            ));
        }
        let rig = Self {
            cluster,
            webhook,
            controllers,
            kubelet,
            rules,
            sim,
            options,
            controller_kubeconfig,
        };
        // The first round pulls the old image everywhere.
        crate::scenario::wait_for_status(&prefetches, PREFETCH, Duration::from_secs(30), |s| {
            s.phase == prefetch_common::Phase::Succeeded
        })
        .await;
        // The webhook must see the Prefetch, and, to gate, a leading controller.
        rig.until_webhook(|w| w.contains("prefetch_webhook_watched_prefetches 1"))
            .await?;
        // The pod hook sees the namespace's pods once the controller has labelled it.
        crate::scenario::until_namespace_labelled(&rig.client(), rig.namespace(), rig.options.gate)
            .await?;
        Ok(Some(rig))
    }

    pub fn client(&self) -> Client {
        self.cluster.client.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.cluster.namespace
    }

    pub fn prefetches(&self) -> Api<prefetch_common::Prefetch> {
        Api::namespaced(self.client(), self.namespace())
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client(), self.namespace())
    }

    /// Polls the webhook's metrics (up to 20 s) until `ready` holds for their text.
    pub async fn until_webhook(&self, ready: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = crate::binaries::http_get(self.webhook.ops_addr, "/metrics")
                .await?
                .1;
            if ready(&text) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "webhook never reached the expected state:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 20 s) until a controller holds the Lease and the webhook would gate: a
    /// Prefetch with gate_rollouts validates without the "no controller" warning.
    pub async fn until_leader_seen(&self) -> anyhow::Result<()> {
        let ca = std::fs::read(self.cluster.dir.path().join("certs").join("ca.crt"))?;
        let client = crate::tls_client::PinnedClient::new(
            &ca,
            self.webhook.admission_addr,
            "127.0.0.1",
            crate::tls_client::Protocol::Http1,
        )?;
        let mut object = crate::fixtures::sample_prefetch(self.namespace());
        object["spec"]["gate_rollouts"] = json!(true);
        let review = crate::fixtures::prefetch_review("probe", "CREATE", object, Value::Null);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let reply = client
                .post(
                    "/validate/prefetch",
                    "application/json",
                    serde_json::to_vec(&review)?,
                )
                .await?
                .json()?;
            let warned = reply
                .pointer("/response/warnings")
                .and_then(Value::as_array)
                .is_some_and(|w| {
                    w.iter()
                        .any(|w| w.as_str().is_some_and(|w| w.contains("will not be gated")))
                });
            if !warned {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the webhook never saw a leading controller"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Rolls the Deployment out to [`NEW_IMAGE`] (the API server's admission runs the webhook's
    /// Deployment hook, which signals it) and plays the Deployment controller.
    pub async fn roll_out(&self) -> anyhow::Result<Vec<Pod>> {
        self.change_image().await?;
        self.create_pods().await
    }

    /// The Deployment controller's part: the new ReplicaSet's pods, through admission.
    pub async fn create_pods(&self) -> anyhow::Result<Vec<Pod>> {
        create_replica_set(
            &self.client(),
            self.namespace(),
            DEPLOYMENT,
            self.options.replicas,
        )
        .await
    }

    /// The user's part: the Deployment's image changes to [`NEW_IMAGE`].
    pub async fn change_image(&self) -> anyhow::Result<()> {
        let deployments: Api<Deployment> = Api::namespaced(self.client(), self.namespace());
        deployments
            .patch(
                DEPLOYMENT,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "c0", "image": NEW_IMAGE, "ports": [{"containerPort": 80}]}]}}}})),
            )
            .await?;
        Ok(())
    }

    /// `kubectl set image`: `deployment`'s one container `c0` runs `image` (the API server's
    /// admission runs the webhook's Deployment hook). Returns the Deployment as stored.
    pub async fn set_image(&self, deployment: &str, image: &str) -> anyhow::Result<Deployment> {
        let deployments: Api<Deployment> = Api::namespaced(self.client(), self.namespace());
        Ok(deployments
            .patch(
                deployment,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                    {"name": "c0", "image": image, "ports": [{"containerPort": 80}]}]}}}})),
            )
            .await?)
    }

    /// Waits (up to `within`) until every pod named in `pods` is Running; returns them.
    pub async fn until_running(&self, pods: &[Pod], within: Duration) -> anyhow::Result<Vec<Pod>> {
        let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now: Vec<Pod> = self
                .pods()
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|p| names.contains(&p.name_any()))
                .collect();
            let running = now
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            if running == names.len() {
                return Ok(now);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{running} of {} pods running after {within:?}: {:#?}",
                names.len(),
                now.iter()
                    .map(|p| (
                        p.name_any(),
                        p.spec
                            .as_ref()
                            .map(|s| (s.node_name.clone(), s.scheduling_gates.clone()))
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The workload starts of `pods`.
    pub fn starts_of(&self, pods: &[Pod]) -> Vec<Start> {
        let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
        self.sim
            .starts()
            .into_iter()
            .filter(|s| names.contains(&s.pod))
            .collect()
    }
}
