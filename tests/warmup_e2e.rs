//! Warm nodes end to end (design: docs/src/design.md#warm-nodes): the real prefetch-controller
//! against the test API server, the test playing the node provisioner (nodes join with the warmup
//! taint) and the kubelet. Each scenario takes seconds: timeouts are short flags.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use prefetch_common::{Phase, Prefetch};
use prefetch_tests::apiserver::Fault;
use prefetch_tests::fixtures::{nginx_deployment, prefetch};
use prefetch_tests::kubelet::Pull;
use prefetch_tests::scenario::{
    CONTROLLER_TOKEN, Scenario, controller, eventually, node, scenario, until_phase,
    wait_for_status,
};
use serde_json::{Value, json};

const WARMING: &str = "cache.techsquad.rocks/warming";
const NGINX: &str = "docker.io/library/nginx:1.7.9";
const REDIS: &str = "docker.io/library/redis:7";

fn warming_taint() -> Value {
    json!({"key": WARMING, "effect": "NoSchedule"})
}

/// The provisioner: a Ready node registers with `taints`.
async fn join(s: &Scenario, name: &str, taints: Value) {
    Api::<Node>::all(s.cluster.client.clone())
        .create(&PostParams::default(), &node(name, taints, json!([])))
        .await
        .expect("node joins");
}

async fn taints(s: &Scenario, name: &str) -> Value {
    let node = Api::<Node>::all(s.cluster.client.clone())
        .get(name)
        .await
        .unwrap();
    serde_json::to_value(node.spec.and_then(|s| s.taints).unwrap_or_default()).unwrap()
}

async fn warming(s: &Scenario, name: &str) -> bool {
    taints(s, name)
        .await
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == WARMING)
}

/// (reason, note) of the events about Node `name` (cluster-scoped: they live in "default").
async fn node_events(s: &Scenario, name: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(s.cluster.client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Node") && r.name.as_deref() == Some(name)
            })
        })
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The prefetch pods on `node`, of every Prefetch in the test namespace.
async fn pods_on(s: &Scenario, node: &str) -> Vec<Pod> {
    s.pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| {
            p.annotations()
                .get("cache.techsquad.rocks/node")
                .map(String::as_str)
                == Some(node)
        })
        .collect()
}

/// Waits (up to 10 s) for a prefetch pod on `node`.
async fn until_pod_on(s: &Scenario, node: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("a prefetch pod on {node}"),
        || async { !pods_on(s, node).await.is_empty() },
    )
    .await;
}

fn metric(text: &str, line_start: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .to_string()
}

/// Requests the client with `token` made, by (verb, resource).
fn calls(s: &Scenario, token: &str, verb: &str, resource: &str) -> u64 {
    s.cluster
        .api
        .as_ref()
        .unwrap()
        .request_counts()
        .iter()
        .filter(|(k, _)| k.client == token && k.verb == verb && k.resource == resource)
        .map(|(_, n)| *n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tainted_node_joins_pulls_and_is_released_with_its_other_taints() {
    let dedicated =
        json!({"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"});
    let Some(s) = scenario(
        "warm-join",
        json!({"retry_after": 3600, "tolerations": [dedicated]}),
    )
    .await
    else {
        return;
    };
    let controller = controller(&s, &["--warmup-timeout", "60s"], "controller").await;
    until_phase(&s, Phase::Succeeded).await;

    // The first two removal attempts meet a changed node (a conflict, then a failed `test`):
    // the controller reads the node again each time and removes the taint from the fresh object.
    let api = s.cluster.api.as_ref().unwrap();
    for code in [409, 422] {
        api.inject(
            Fault {
                verb: Some("patch"),
                resource: Some("nodes"),
                client: Some(CONTROLLER_TOKEN),
                code,
            },
            1,
        );
    }
    s.rules.set(
        "kind-worker4",
        Pull::SucceedAfter(Duration::from_millis(1500)),
    );
    let others = [
        json!({"key": "example.com/team", "value": "a", "effect": "PreferNoSchedule"}),
        json!({"key": "dedicated", "value": "web", "effect": "NoSchedule"}),
    ];
    join(
        &s,
        "kind-worker4",
        json!([others[0], warming_taint(), others[1]]),
    )
    .await;

    // Its pod comes at once (retry_after is an hour) and tolerates the spec's taint and the
    // warmup taint, nothing more.
    until_pod_on(&s, "kind-worker4").await;
    let pod = &pods_on(&s, "kind-worker4").await[0];
    assert_eq!(
        serde_json::to_value(&pod.spec.as_ref().unwrap().tolerations).unwrap(),
        json!([dedicated, {"key": WARMING, "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert!(
        warming(&s, "kind-worker4").await,
        "still pulling: still warming"
    );

    // Someone else edits the taints meanwhile: their taint must survive the removal.
    let added = json!({"key": "example.com/added-later", "effect": "PreferNoSchedule"});
    Api::<Node>::all(s.cluster.client.clone())
        .patch(
            "kind-worker4",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/spec/taints/-", "value": added}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();

    eventually(
        Duration::from_secs(15),
        "the warmup taint lifted",
        || async { !warming(&s, "kind-worker4").await },
    )
    .await;
    assert_eq!(
        taints(&s, "kind-worker4").await,
        json!([others[0], others[1], added]),
        "every other taint, in order"
    );
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(10),
        |st| st.phase == Phase::Succeeded && st.ready == 4,
    )
    .await;
    assert!(status.nodes.contains(&"kind-worker4".to_string()));
    eventually(Duration::from_secs(5), "a Warmed event", || async {
        node_events(&s, "kind-worker4")
            .await
            .iter()
            .any(|(reason, note)| {
                reason == "Warmed" && note.starts_with("1 image(s) in ") && note.contains(WARMING)
            })
    })
    .await;
    let metrics = controller.metrics().await.unwrap();
    assert_eq!(
        metric(&metrics, "prefetch_controller_node_warmup_seconds_count"),
        "prefetch_controller_node_warmup_seconds_count 1"
    );
    assert_eq!(
        metric(&metrics, "prefetch_controller_node_warmup_timeouts_total"),
        "prefetch_controller_node_warmup_timeouts_total 0"
    );
    eventually(Duration::from_secs(5), "no node warming", || async {
        controller
            .metrics()
            .await
            .unwrap()
            .lines()
            .any(|l| l == "prefetch_controller_warming_nodes 0")
    })
    .await;
    assert_eq!(
        calls(&s, CONTROLLER_TOKEN, "patch", "nodes"),
        3,
        "two failed attempts, then the removal"
    );
    assert_eq!(
        calls(&s, CONTROLLER_TOKEN, "get", "nodes"),
        2,
        "the node read again after each failed attempt"
    );
    assert_eq!(s.kubelet.seen_pods(), 4);
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_failure_releases_the_node_when_its_round_is_done() {
    let Some(s) = scenario("warm-failure", json!({"retry_after": 3600})).await else {
        return;
    };
    let _controller = controller(&s, &["--warmup-timeout", "60s"], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    s.rules.set("kind-worker4", Pull::Fail("ErrImagePull"));
    join(&s, "kind-worker4", json!([warming_taint()])).await;
    let status = until_phase(&s, Phase::Failed).await;
    assert_eq!(status.failures[0].node, "kind-worker4");
    eventually(
        Duration::from_secs(10),
        "the warmup taint lifted",
        || async { !warming(&s, "kind-worker4").await },
    )
    .await;
    eventually(Duration::from_secs(5), "a Warmed event", || async {
        node_events(&s, "kind-worker4")
            .await
            .iter()
            .any(|(reason, _)| reason == "Warmed")
    })
    .await;
    // The failure is not retried for warmup's sake: one pod on the node, not a loop of them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let on_node = s
        .kubelet
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| n == "kind-worker4")
        .count();
    assert_eq!(on_node, 1);
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_no_prefetch_targets_are_released_at_once() {
    let Some(s) = scenario("warm-untargeted", json!({"retry_after": 3600})).await else {
        return;
    };
    let _controller = controller(&s, &["--warmup-timeout", "60s"], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    // gpu-1 is not a "worker"; worker-gpu is, but carries a taint the Prefetch does not
    // tolerate: neither is targeted.
    join(&s, "gpu-1", json!([warming_taint()])).await;
    let gpu = json!({"key": "nvidia.com/gpu", "effect": "NoSchedule"});
    join(&s, "worker-gpu", json!([warming_taint(), gpu])).await;
    for name in ["gpu-1", "worker-gpu"] {
        eventually(Duration::from_secs(5), name, || async {
            !warming(&s, name).await
        })
        .await;
    }
    assert_eq!(taints(&s, "worker-gpu").await, json!([gpu]));
    eventually(Duration::from_secs(5), "Warmed events", || async {
        node_events(&s, "gpu-1").await.iter().any(|(reason, note)| {
            reason == "Warmed" && note.contains("no Prefetch targets this node")
        })
    })
    .await;
    assert_eq!(s.kubelet.seen_pods(), 3, "no pod for either");
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pods_never_finish_is_released_at_the_timeout() {
    let Some(s) = scenario("warm-timeout", json!({"retry_after": 3600})).await else {
        return;
    };
    let controller = controller(&s, &["--warmup-timeout", "4s"], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    s.rules.set("kind-worker4", Pull::Hang);
    let joined = tokio::time::Instant::now();
    join(&s, "kind-worker4", json!([warming_taint()])).await;
    until_pod_on(&s, "kind-worker4").await;
    // The timeout counts from creation (whole seconds): well before it, the taint holds.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(joined.elapsed())).await;
    assert!(warming(&s, "kind-worker4").await);
    eventually(
        Duration::from_secs(10),
        "the warmup taint lifted",
        || async { !warming(&s, "kind-worker4").await },
    )
    .await;
    assert!(
        joined.elapsed() >= Duration::from_secs(2),
        "not before the timeout"
    );
    eventually(Duration::from_secs(5), "a WarmupTimedOut event", || async {
        node_events(&s, "kind-worker4")
            .await
            .iter()
            .any(|(reason, note)| {
                reason == "WarmupTimedOut" && note.contains(&format!("missing {NGINX}"))
            })
    })
    .await;
    let metrics = controller.metrics().await.unwrap();
    assert_eq!(
        metric(&metrics, "prefetch_controller_node_warmup_timeouts_total"),
        "prefetch_controller_node_warmup_timeouts_total 1"
    );
    s.cluster.cleanup().await;
}

/// A taint the controller cannot remove past the timeout (its node patches denied) shows in
/// `warming_nodes_past_timeout`, what the alert PrefetchNodeStuckWarming reads, until the
/// removal goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_controller_cannot_release_is_counted_past_its_timeout() {
    let Some(s) = scenario("warm-stuck", json!({"retry_after": 3600})).await else {
        return;
    };
    let controller = controller(&s, &["--warmup-timeout", "3s"], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    let api = s.cluster.api.as_ref().unwrap();
    api.inject(
        Fault {
            verb: Some("patch"),
            resource: Some("nodes"),
            client: Some(CONTROLLER_TOKEN),
            code: 403,
        },
        u32::MAX,
    );
    s.rules.set("kind-worker4", Pull::Hang);
    join(&s, "kind-worker4", json!([warming_taint()])).await;
    let past_timeout = || async {
        let text = controller.metrics().await.unwrap_or_default();
        metric(&text, "prefetch_controller_warming_nodes_past_timeout ")
    };
    eventually(
        Duration::from_secs(20),
        "the node counted past its timeout",
        || async { past_timeout().await == "prefetch_controller_warming_nodes_past_timeout 1" },
    )
    .await;
    assert!(warming(&s, "kind-worker4").await, "the patch is denied");
    api.clear_faults();
    eventually(
        Duration::from_secs(60),
        "the taint lifted once the patch goes through",
        || async { !warming(&s, "kind-worker4").await },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "no node counted past its timeout",
        || async { past_timeout().await == "prefetch_controller_warming_nodes_past_timeout 0" },
    )
    .await;
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_warmup_duplicates_nothing_and_still_releases() {
    let Some(s) = scenario("warm-restart", json!({"retry_after": 3600})).await else {
        return;
    };
    let first = controller(&s, &["--warmup-timeout", "60s"], "first").await;
    until_phase(&s, Phase::Succeeded).await;
    s.rules.set("kind-worker4", Pull::Hang);
    join(&s, "kind-worker4", json!([warming_taint()])).await;
    until_pod_on(&s, "kind-worker4").await;
    first.process.kill().await.unwrap();
    let second = controller(&s, &["--warmup-timeout", "60s"], "second").await;
    eventually(
        Duration::from_secs(10),
        "the second controller leading",
        || async {
            second.metrics().await.is_ok_and(|m| {
                m.lines()
                    .any(|l| l == "prefetch_controller_warming_nodes 1")
            })
        },
    )
    .await;
    assert!(
        warming(&s, "kind-worker4").await,
        "the pull is not done: still warming"
    );
    s.rules.set("kind-worker4", Pull::Succeed);
    eventually(
        Duration::from_secs(15),
        "the warmup taint lifted",
        || async { !warming(&s, "kind-worker4").await },
    )
    .await;
    let creates = s
        .cluster
        .api
        .as_ref()
        .unwrap()
        .request_counts()
        .iter()
        .filter(|(k, _)| k.verb == "create" && k.resource == "pods")
        .map(|(_, n)| *n)
        .sum::<u64>();
    assert_eq!(
        creates, 4,
        "each prefetch pod created once across the restart"
    );
    assert_eq!(s.kubelet.seen_pods(), 4);
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefetches_on_one_node_release_it_only_when_both_are_done() {
    let Some(s) = scenario("warm-two", json!({"retry_after": 3600})).await else {
        return;
    };
    // A second Deployment and a second Prefetch for it, on the same workers.
    let redis: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(nginx_deployment(
        &s.ns,
        "redis",
        json!({"app": "redis"}),
        &["redis:7"],
    ))
    .unwrap();
    s.deployments
        .create(&PostParams::default(), &redis)
        .await
        .unwrap();
    s.prefetches
        .create(
            &PostParams::default(),
            &serde_json::from_value::<Prefetch>(prefetch(
                &s.ns,
                "cache",
                json!({"filter_by_labels": {"app": "redis"}, "node_filter": "worker", "retry_after": 3600}),
            ))
            .unwrap(),
        )
        .await
        .unwrap();
    let _controller = controller(&s, &["--warmup-timeout", "60s"], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    wait_for_status(&s.prefetches, "cache", Duration::from_secs(30), |st| {
        st.phase == Phase::Succeeded
    })
    .await;

    // Both pulls hang on the new node; one pod runs there at a time.
    s.rules.set("kind-worker4", Pull::Hang);
    join(&s, "kind-worker4", json!([warming_taint()])).await;
    let owner = |pod: &Pod| pod.labels()["cache.techsquad.rocks/prefetch"].clone();
    let mut done = Vec::new();
    for _ in 0..2 {
        // The second waits for the first to finish (one pod per node at a time).
        eventually(
            Duration::from_secs(15),
            "the next prefetch pod on kind-worker4",
            || async {
                pods_on(&s, "kind-worker4")
                    .await
                    .iter()
                    .any(|p| !done.contains(&owner(p)))
            },
        )
        .await;
        let pod = pods_on(&s, "kind-worker4")
            .await
            .into_iter()
            .find(|p| !done.contains(&owner(p)))
            .unwrap();
        let prefetch = owner(&pod);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            warming(&s, "kind-worker4").await,
            "{} of 2 Prefetches done: still warming",
            done.len()
        );
        let image = if prefetch == "cache" { REDIS } else { NGINX };
        s.rules.set_image("kind-worker4", image, Pull::Succeed);
        wait_for_status(&s.prefetches, &prefetch, Duration::from_secs(15), |st| {
            st.phase == Phase::Succeeded && st.ready == 4
        })
        .await;
        done.push(prefetch);
    }
    eventually(
        Duration::from_secs(10),
        "the warmup taint lifted",
        || async { !warming(&s, "kind-worker4").await },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "a Warmed event for both images",
        || async {
            node_events(&s, "kind-worker4")
                .await
                .iter()
                .any(|(reason, note)| reason == "Warmed" && note.starts_with("2 image(s)"))
        },
    )
    .await;
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_empty_warmup_taint_the_taint_is_never_touched() {
    let Some(s) = scenario("warm-off", json!({"retry_after": 3600})).await else {
        return;
    };
    s.rules.set("kind-worker3", Pull::Hang);
    join(&s, "kind-worker4", json!([warming_taint()])).await;
    let controller = controller(&s, &["--warmup-taint", ""], "controller").await;
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.ready == 2,
    )
    .await;
    assert_eq!(
        status.nodes,
        ["kind-worker", "kind-worker2", "kind-worker3"],
        "the tainted node is skipped like any tainted node"
    );
    let pod = &pods_on(&s, "kind-worker3").await[0];
    assert_eq!(
        pod.spec.as_ref().unwrap().tolerations,
        None,
        "no toleration added"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(taints(&s, "kind-worker4").await, json!([warming_taint()]));
    assert!(pods_on(&s, "kind-worker4").await.is_empty());
    for verb in ["patch", "get", "update"] {
        assert_eq!(
            calls(&s, CONTROLLER_TOKEN, verb, "nodes"),
            0,
            "{verb} nodes"
        );
    }
    let metrics = controller.metrics().await.unwrap();
    assert_eq!(
        metric(&metrics, "prefetch_controller_warming_nodes"),
        "prefetch_controller_warming_nodes 0"
    );
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_deleted_or_released_by_hand_mid_warmup_are_skipped() {
    let Some(s) = scenario("warm-vanish", json!({"retry_after": 3600})).await else {
        return;
    };
    let controller = controller(&s, &["--warmup-timeout", "60s"], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    for name in ["kind-worker4", "kind-worker5"] {
        s.rules.set(name, Pull::Hang);
        join(&s, name, json!([warming_taint()])).await;
    }
    eventually(Duration::from_secs(10), "prefetch pods on both", || async {
        !pods_on(&s, "kind-worker4").await.is_empty()
            && !pods_on(&s, "kind-worker5").await.is_empty()
    })
    .await;
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    // One node goes away; the other's taint is lifted by hand (the README's escape hatch).
    nodes
        .delete("kind-worker4", &DeleteParams::default())
        .await
        .unwrap();
    nodes
        .patch(
            "kind-worker5",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/spec/taints/0"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    s.rules.set("kind-worker5", Pull::Succeed);
    // The controller carries on: a node joining now is warmed as usual.
    join(&s, "kind-worker6", json!([warming_taint()])).await;
    eventually(Duration::from_secs(15), "kind-worker6 warmed", || async {
        !warming(&s, "kind-worker6").await
    })
    .await;
    assert!(
        node_events(&s, "kind-worker5").await.is_empty(),
        "someone else lifted it: no event claims otherwise"
    );
    assert!(node_events(&s, "kind-worker4").await.is_empty());
    assert!(controller.metrics().await.is_ok(), "still running");
    let errors = controller
        .process
        .logs()
        .into_iter()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("panicked"))
        .collect::<Vec<_>>();
    assert!(errors.is_empty(), "{errors:#?}");
    s.cluster.cleanup().await;
}
