//! The real prefetch-controller against the test API server, with the test playing the kubelet.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use prefetch_common::{Phase, Prefetch};
use prefetch_tests::binaries::ControllerProcess;
use prefetch_tests::cluster::TestCluster;
use prefetch_tests::fixtures::{nginx_deployment, sample_prefetch};
use prefetch_tests::kubelet::{FakeKubelet, Pull, Rule};
use serde_json::json;

async fn create_walkthrough_nodes(client: &Client) {
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
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"operatingSystem": "linux", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.33.0", "machineID": "", "osImage": "", "systemUUID": ""}}
        }))
        .unwrap();
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
    }
}

/// Polls the Prefetch until `done` holds for its status, or fails after `within`.
async fn wait_for_status(
    api: &Api<Prefetch>,
    name: &str,
    within: Duration,
    done: impl Fn(&prefetch_common::PrefetchStatus) -> bool,
) -> prefetch_common::PrefetchStatus {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_prefetches_on_every_worker_and_cleans_up() {
    let cluster = TestCluster::start("walkthrough").await.unwrap();
    if cluster.is_real() {
        eprintln!(
            "skipped against a real cluster: this scenario creates nodes and plays their kubelet"
        );
        return;
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
    prefetches
        .create(
            &PostParams::default(),
            &serde_json::from_value(sample_prefetch(&ns)).unwrap(),
        )
        .await
        .unwrap();

    let rule: Rule = Arc::new(|_, _| Pull::Succeed);
    let kubelet = FakeKubelet::start(client.clone(), rule);
    let controller = ControllerProcess::start(
        &cluster.kubeconfig,
        &[
            "--leader-elect",
            "false",
            "--noop-image",
            "kube-prefetch/controller:dev",
        ],
        "controller",
    )
    .await
    .expect("controller starts");

    let status = wait_for_status(
        &prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |s| s.phase == Phase::Succeeded,
    )
    .await;
    assert_eq!((status.ready, status.total, status.failed), (3, 3, 0));
    assert_eq!(
        status.nodes,
        ["kind-worker", "kind-worker2", "kind-worker3"]
    );
    assert_eq!(status.images, ["docker.io/library/nginx:1.7.9"]);
    assert!(
        status.digests["docker.io/library/nginx:1.7.9"]
            .starts_with("docker.io/library/nginx@sha256:")
    );
    assert_eq!(
        kubelet.seen_nodes(),
        ["kind-worker", "kind-worker2", "kind-worker3"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        kubelet.seen_pods(),
        3,
        "one prefetch pod per worker, none on the control plane"
    );

    // The finished pods are removed once their results are recorded.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prefetch pods were not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conditions: Vec<(String, String)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone()))
        .collect();
    assert_eq!(
        conditions,
        [
            ("Ready".into(), "True".into()),
            ("Progressing".into(), "False".into()),
            ("Degraded".into(), "False".into())
        ]
    );
    let metrics = controller.metrics().await.unwrap();
    assert!(
        metrics.contains("prefetch_controller_pods_created_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("prefetch_controller_images_prefetched_total 3"),
        "{metrics}"
    );
    cluster.cleanup().await;
}
