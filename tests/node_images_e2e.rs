//! What a node's status says about its disk and its images (design:
//! docs/src/design.md#lean-prefetch-pods), end to end: nodes under DiskPressure are skipped until
//! the pressure clears, and a node whose image list is full (the kubelet lists at most 50) gets no
//! pod in later rounds for an image our pod already pulled there. The test plays the kubelet,
//! including its 50-image cap.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use prefetch_common::{Phase, PrefetchStatus};
use prefetch_tests::kubelet::{NODE_STATUS_MAX_IMAGES, PULLED_SIZE};
use prefetch_tests::scenario::{Scenario, controller, scenario, until_phase, wait_for_status};
use serde_json::{Value, json};

const NGINX: &str = "docker.io/library/nginx:1.7.9";

/// Starts a new round by changing the spec (`max_parallel`), and waits until it has ended (the
/// reconcile that sees the new generation starts the round; a round with no pod ends there).
async fn next_round(s: &Scenario, max_parallel: i64) -> PrefetchStatus {
    let patched = s
        .prefetches
        .patch(
            "prefetch-sample",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"max_parallel": max_parallel}})),
        )
        .await
        .unwrap();
    let generation = patched.metadata.generation;
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.observed_generation == generation && st.phase == Phase::Succeeded,
    )
    .await
}

async fn set_node_status(s: &Scenario, node: &str, status: Value) {
    Api::<Node>::all(s.cluster.client.clone())
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .unwrap();
}

async fn listed(s: &Scenario, node: &str) -> Vec<Vec<String>> {
    let node = Api::<Node>::all(s.cluster.client.clone())
        .get(node)
        .await
        .unwrap();
    node.status
        .and_then(|st| st.images)
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.names.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_image_list_gets_no_pod_for_an_image_our_pod_already_pulled() {
    let Some(s) = scenario("full-list", json!({"retry_after": 3600})).await else {
        return;
    };
    // kind-worker holds 50 images larger than anything the fake kubelet pulls.
    let big: Vec<Value> = (0..NODE_STATUS_MAX_IMAGES)
        .map(|i| {
            json!({"names": [format!("registry.example.com/big/app-{i}:1")],
                   "sizeBytes": 500_000_000 + i as i64 * 1000})
        })
        .collect();
    set_node_status(&s, "kind-worker", json!({"images": big})).await;

    let first = controller(&s, &[], "first").await;
    let status = until_phase(&s, Phase::Succeeded).await;
    assert_eq!((status.ready, status.total), (3, 3));
    assert_eq!(s.kubelet.seen_on("kind-worker"), 1);
    // The kubelet's cap: nginx (PULLED_SIZE bytes) is on kind-worker but not listed.
    let on_full = listed(&s, "kind-worker").await;
    assert_eq!(on_full.len(), NODE_STATUS_MAX_IMAGES);
    assert!(!on_full.iter().flatten().any(|n| n == NGINX), "{on_full:?}");
    const { assert!(PULLED_SIZE < 500_000_000) };
    assert!(
        listed(&s, "kind-worker2")
            .await
            .iter()
            .flatten()
            .any(|n| n == NGINX)
    );

    // The second round: no node gets a pod, the full one included.
    let status = next_round(&s, 19).await;
    assert_eq!((status.ready, status.total), (3, 3));
    assert_eq!(
        s.kubelet.seen_on("kind-worker"),
        1,
        "the pull of the first round counts on the full list"
    );
    assert_eq!(s.kubelet.seen_pods(), 3);

    // The record is in memory: after a restart, the first round gives the full node one pod
    // (the image is there: no download), and the rounds after it none.
    first.process.kill().await.unwrap();
    let _second = controller(&s, &[], "second").await;
    next_round(&s, 18).await;
    assert_eq!(
        s.kubelet.seen_on("kind-worker"),
        2,
        "one extra pod after the restart"
    );
    let status = next_round(&s, 17).await;
    assert_eq!((status.ready, status.total), (3, 3));
    assert_eq!(s.kubelet.seen_on("kind-worker"), 2);
    assert_eq!(
        s.kubelet.seen_pods(),
        4,
        "only the full node ever got a second pod"
    );
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure_nodes_are_skipped_until_the_pressure_clears() {
    let Some(s) = scenario("disk-pressure", json!({"retry_after": 3600})).await else {
        return;
    };
    let conditions = |pressure: &str| {
        json!({"conditions": [{"type": "Ready", "status": "True"},
                              {"type": "DiskPressure", "status": pressure}]})
    };
    set_node_status(&s, "kind-worker3", conditions("True")).await;
    let _controller = controller(&s, &[], "controller").await;
    let status = until_phase(&s, Phase::Succeeded).await;
    assert_eq!(status.nodes, ["kind-worker", "kind-worker2"]);
    assert_eq!(s.kubelet.seen_on("kind-worker3"), 0);
    let notes: Vec<String> = Api::<Event>::namespaced(s.cluster.client.clone(), &s.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RoundStarted"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.ends_with("2 node(s) skipped (NameFilter: 1, DiskPressure: 1)")),
        "{notes:?}"
    );

    // The pressure clears: a condition change, not a heartbeat, so the node is planned again
    // at once (retry_after is an hour).
    set_node_status(&s, "kind-worker3", conditions("False")).await;
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.nodes.len() == 3 && st.phase == Phase::Succeeded,
    )
    .await;
    assert_eq!((status.ready, status.total), (3, 3));
    assert_eq!(s.kubelet.seen_on("kind-worker3"), 1);
    s.cluster.cleanup().await;
}
