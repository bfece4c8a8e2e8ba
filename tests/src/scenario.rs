//! The controller end-to-end scenarios' common ground: the walkthrough cluster (a control plane
//! and three workers), the nginx Deployment and the sample Prefetch in a test namespace, a
//! fake kubelet whose behaviour per node (and image) the test changes as it goes, and the real
//! controller started against it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use prefetch_common::{Phase, Prefetch, PrefetchStatus};
use serde_json::{Value, json};

use crate::binaries::ControllerProcess;
use crate::cluster::TestCluster;
use crate::fixtures::{nginx_deployment, sample_prefetch};
use crate::kubelet::{FakeKubelet, Pull, Rule};

/// A Ready Linux node as a kubelet registers it, with `taints` and `images` (JSON lists).
pub fn node(name: &str, taints: Value, images: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "images": images,
                   "nodeInfo": {"operatingSystem": "linux", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                                "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.33.0", "machineID": "", "osImage": "", "systemUUID": ""}}
    }))
    .expect("a valid Node")
}

/// The original walkthrough's nodes: a tainted control plane and three workers.
pub async fn create_walkthrough_nodes(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    for (name, taints) in [
        (
            "kind-control-plane",
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        ),
        ("kind-worker", json!([])),
        ("kind-worker2", json!([])),
        ("kind-worker3", json!([])),
    ] {
        nodes
            .create(&PostParams::default(), &node(name, taints, json!([])))
            .await
            .expect("node");
    }
}

/// Polls the Prefetch until `done` holds for its status, or fails after `within`.
pub async fn wait_for_status(
    api: &Api<Prefetch>,
    name: &str,
    within: Duration,
    done: impl Fn(&PrefetchStatus) -> bool,
) -> PrefetchStatus {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = api.get(name).await.unwrap().status.unwrap_or_default();
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never reached the expected state: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the namespace carries the gated-rollouts label the controller keeps on the
/// namespaces holding a gating Prefetch (the pod hook's namespaceSelector matches it).
pub async fn namespace_labelled(client: &kube::Client, namespace: &str) -> anyhow::Result<bool> {
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get(namespace)
        .await?;
    Ok(ns
        .metadata
        .labels
        .and_then(|l| {
            l.get(prefetch_common::annotations::GATED_NAMESPACE_LABEL)
                .cloned()
        })
        .is_some_and(|v| v == prefetch_common::annotations::GATED_NAMESPACE_VALUE))
}

/// Waits (up to 20 s) until the namespace carries the gated-rollouts label (`labelled`) or
/// does not.
pub async fn until_namespace_labelled(
    client: &kube::Client,
    namespace: &str,
    labelled: bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while namespace_labelled(client, namespace).await? != labelled {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "namespace {namespace}: the gated-rollouts label never became {labelled}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Whether `node` lists `image` (a reference as the kubelet reports it) in `status.images`.
pub async fn node_lists(nodes: &Api<Node>, node: &str, image: &str) -> bool {
    let node = nodes.get(node).await.expect("the node");
    node.status
        .and_then(|s| s.images)
        .into_iter()
        .flatten()
        .flat_map(|i| i.names.unwrap_or_default())
        .any(|name| name == image)
}

/// Polls `check` until it holds, or fails naming `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (node, image or every image) -> what the kubelet does.
type RuleMap = HashMap<(String, Option<String>), Pull>;

/// Kubelet behaviour per node, or per node and image, that the test can change while the
/// controller runs; everything else pulls at once.
#[derive(Clone, Default)]
pub struct NodeRules(Arc<Mutex<RuleMap>>);

impl NodeRules {
    /// Every image on `node`.
    pub fn set(&self, node: &str, pull: Pull) {
        self.lock().insert((node.into(), None), pull);
    }

    /// One image (normalized, as prefetch pods name it) on `node`; beats [`NodeRules::set`].
    pub fn set_image(&self, node: &str, image: &str, pull: Pull) {
        self.lock().insert((node.into(), Some(image.into())), pull);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RuleMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rule(&self) -> Rule {
        let rules = self.clone();
        Arc::new(move |node, image| {
            let rules = rules.lock();
            rules
                .get(&(node.to_string(), Some(image.to_string())))
                .or_else(|| rules.get(&(node.to_string(), None)))
                .cloned()
                .unwrap_or(Pull::Succeed)
        })
    }
}

pub struct Scenario {
    pub cluster: TestCluster,
    pub ns: String,
    pub prefetches: Api<Prefetch>,
    pub deployments: Api<Deployment>,
    pub pods: Api<Pod>,
    pub kubelet: FakeKubelet,
    pub rules: NodeRules,
}

/// The walkthrough cluster, the nginx Deployment and the sample Prefetch (with `spec` merged
/// in), and a fake kubelet; the controller is started by the test. `None` (after saying why)
/// against a real cluster: these scenarios create nodes and play their kubelet.
pub async fn scenario(test: &str, spec: Value) -> Option<Scenario> {
    let cluster = TestCluster::start(test).await.unwrap();
    if cluster.is_real() {
        eprintln!(
            "skipped against a real cluster: this scenario creates nodes and plays their kubelet"
        );
        return None;
    }
    let (client, ns) = (cluster.client.clone(), cluster.namespace.clone());
    create_walkthrough_nodes(&client).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(nginx_deployment(
        &ns,
        "nginx",
        json!({"app": "nginx"}),
        &["nginx:1.7.9"],
    ))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let prefetches: Api<Prefetch> = Api::namespaced(client.clone(), &ns);
    let mut sample = sample_prefetch(&ns);
    for (k, v) in spec.as_object().unwrap() {
        sample["spec"][k] = v.clone();
    }
    prefetches
        .create(
            &PostParams::default(),
            &serde_json::from_value(sample).unwrap(),
        )
        .await
        .unwrap();
    let rules = NodeRules::default();
    let kubelet = FakeKubelet::start(client.clone(), rules.rule());
    let pods = Api::namespaced(client, &ns);
    Some(Scenario {
        cluster,
        ns,
        prefetches,
        deployments,
        pods,
        kubelet,
        rules,
    })
}

/// Waits (up to 30 s) until the sample Prefetch reaches `phase`.
pub async fn until_phase(s: &Scenario, phase: Phase) -> PrefetchStatus {
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == phase,
    )
    .await
}

/// The bearer token the controller's requests carry in these scenarios, so that the test API
/// server's counts (and faults) tell them from the test's own and the fake kubelet's.
pub const CONTROLLER_TOKEN: &str = "prefetch-controller";

/// Starts the controller under [`CONTROLLER_TOKEN`] (no leader election unless `extra` asks for
/// it).
pub async fn controller(s: &Scenario, extra: &[&str], label: &'static str) -> ControllerProcess {
    let api = s
        .cluster
        .api
        .as_ref()
        .expect("scenarios run on the test API server");
    let kubeconfig = s.cluster.dir.path().join("controller-kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig_for(CONTROLLER_TOKEN)).expect("kubeconfig");
    let mut args = vec!["--noop-image", "kube-prefetch/controller:dev"];
    args.extend_from_slice(extra);
    if !extra.contains(&"--leader-elect") {
        args.extend(["--leader-elect", "false"]);
    }
    ControllerProcess::start(&kubeconfig, &args, label)
        .await
        .expect("controller starts")
}
