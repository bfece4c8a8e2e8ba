//! The real prefetch-controller against the test API server, with the test playing the kubelet.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use prefetch_common::Phase;
use prefetch_tests::apiserver::Fault;
use prefetch_tests::binaries::ControllerProcess;
use prefetch_tests::kubelet::Pull;
use prefetch_tests::scenario::{
    CONTROLLER_TOKEN, controller, node, node_lists, scenario, until_phase, wait_for_status,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_prefetches_on_every_worker_and_cleans_up() {
    let Some(s) = scenario("walkthrough", json!({})).await else {
        return;
    };
    let controller = controller(&s, &[], "controller").await;
    let (prefetches, kubelet) = (&s.prefetches, &s.kubelet);
    let (client, ns) = (s.cluster.client.clone(), s.ns.clone());

    let status = wait_for_status(
        prefetches,
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
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_signal_prefetches_new_images_without_waiting() {
    let Some(s) = scenario("rollout", json!({"retry_after": 3600})).await else {
        return;
    };
    let _controller = controller(&s, &[], "controller").await;
    until_phase(&s, Phase::Succeeded).await;

    // What the webhook does on the rollout: the new image, plus its two annotations.
    let requested_at = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = json!({
        "metadata": {"annotations": {
            "cache.techsquad.rocks/prefetch-images": "[\"docker.io/library/nginx:1.25\"]",
            "cache.techsquad.rocks/prefetch-requested-at": requested_at}},
        "spec": {"template": {"spec": {"containers": [{"name": "c0", "image": "nginx:1.25"}]}}}
    });
    s.deployments
        .patch(
            "nginx",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .unwrap();
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.images == ["docker.io/library/nginx:1.25"] && st.phase == Phase::Succeeded,
    )
    .await;
    let rollout = status.last_rollout.expect("last_rollout recorded");
    assert_eq!(rollout.deployment, "nginx");
    assert_eq!(rollout.images, ["docker.io/library/nginx:1.25"]);
    assert!(rollout.observed_at.is_some());
    assert_eq!(status.ready, 3);
    assert_eq!(s.kubelet.seen_pods(), 6, "three pods per round");
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nodes_get_a_pod_unless_they_have_the_image() {
    let Some(s) = scenario("join", json!({"retry_after": 3600})).await else {
        return;
    };
    let _controller = controller(&s, &[], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    for (name, images) in [
        ("kind-worker4", json!([])),
        (
            "kind-worker5",
            json!([{"names": ["docker.io/library/nginx:1.7.9"]}]),
        ),
    ] {
        let node: Node = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "images": images}}),
        )
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
    }
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.nodes.len() == 5 && st.phase == Phase::Succeeded,
    )
    .await;
    assert_eq!((status.ready, status.total), (5, 5));
    assert!(s.kubelet.seen_nodes().contains("kind-worker4"));
    assert!(
        !s.kubelet.seen_nodes().contains("kind-worker5"),
        "kind-worker5 already listed the image"
    );
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_failure_is_reported_with_node_image_and_reason() {
    let Some(s) = scenario("failure", json!({})).await else {
        return;
    };
    s.rules.set("kind-worker2", Pull::Fail("ErrImagePull"));
    let controller = controller(&s, &[], "controller").await;
    let status = until_phase(&s, Phase::Failed).await;
    assert_eq!((status.ready, status.failed, status.total), (2, 1, 3));
    let failure = &status.failures[0];
    assert_eq!(
        (
            failure.node.as_str(),
            failure.image.as_str(),
            failure.reason.as_str()
        ),
        (
            "kind-worker2",
            "docker.io/library/nginx:1.7.9",
            "ErrImagePull"
        )
    );
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "True");
    let metrics = controller.metrics().await.unwrap();
    assert!(
        metrics.contains("prefetch_controller_pull_failures_total{reason=\"ErrImagePull\"} 1"),
        "{metrics}"
    );
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_prefetch_removes_its_pods_and_never_anyone_elses() {
    let Some(s) = scenario("delete", json!({})).await else {
        return;
    };
    for node in ["kind-worker", "kind-worker2", "kind-worker3"] {
        s.rules.set(node, Pull::Hang);
    }
    // Someone else's pods, one of them wearing our labels.
    for (name, labels) in [
        ("bystander", json!({"app": "web"})),
        (
            "impostor",
            json!({"app.kubernetes.io/managed-by": "prefetch-controller", "cache.techsquad.rocks/prefetch": "prefetch-sample"}),
        ),
    ] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels,
            "annotations": {"cache.techsquad.rocks/node": "kind-worker"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        .unwrap();
        s.pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let _controller = controller(&s, &[], "controller").await;
    until_phase(&s, Phase::Running).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while s
        .pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len()
        < 4
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prefetch pods not created"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.prefetches
        .delete("prefetch-sample", &Default::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let names: Vec<String> = s
            .pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|p| kube::ResourceExt::name_any(&p))
            .collect();
        if names.len() == 2 {
            assert_eq!(names, ["bystander", "impostor"]);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pods left: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_round_creates_no_duplicates() {
    let Some(s) = scenario("restart", json!({})).await else {
        return;
    };
    s.rules.set("kind-worker3", Pull::Hang);
    let first = controller(&s, &[], "first").await;
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == Phase::Running && st.ready == 2,
    )
    .await;
    first.process.kill().await.unwrap();
    let _second = controller(&s, &[], "second").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.rules.set("kind-worker3", Pull::Succeed);
    // The hung pod still exists (Pending): the fake kubelet only writes statuses once, so
    // mark it done as the kubelet would when the pull finally completes.
    let pod_name = "prefetch-prefetch-sample-kind-worker3";
    let status = json!({"status": {"phase": "Succeeded", "containerStatuses": [{"name": "pull-0", "image": "x", "imageID": "docker.io/library/nginx@sha256:00", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}]}});
    s.pods
        .patch_status(
            pod_name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(status),
        )
        .await
        .unwrap();
    let status = until_phase(&s, Phase::Succeeded).await;
    assert_eq!(status.ready, 3);
    assert_eq!(
        s.kubelet.seen_pods(),
        3,
        "no pod created twice across the restart"
    );
    let creates: u64 = s
        .cluster
        .api
        .as_ref()
        .unwrap()
        .request_counts()
        .iter()
        .filter(|(k, _)| k.verb == "create" && k.resource == "pods")
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(creates, 3, "each prefetch pod is created once");
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_only_the_leader_acts() {
    let Some(s) = scenario("leader", json!({})).await else {
        return;
    };
    let lease_ns = s.ns.clone();
    let args = [
        "--leader-elect",
        "true",
        "--lease-namespace",
        lease_ns.as_str(),
    ];
    let a = ControllerProcess::start(
        &s.cluster.kubeconfig,
        &[&args[..], &["--identity", "replica-a", "--noop-image", "x"]].concat(),
        "replica-a",
    )
    .await
    .unwrap();
    let b = ControllerProcess::start(
        &s.cluster.kubeconfig,
        &[&args[..], &["--identity", "replica-b", "--noop-image", "x"]].concat(),
        "replica-b",
    )
    .await
    .unwrap();
    until_phase(&s, Phase::Succeeded).await;
    let (ma, mb) = (a.metrics().await.unwrap(), b.metrics().await.unwrap());
    let leaders = [&ma, &mb]
        .iter()
        .filter(|m| m.lines().any(|l| l == "prefetch_controller_leader 1"))
        .count();
    assert_eq!(leaders, 1, "exactly one leader:\n{ma}\n{mb}");
    let follower = if ma.lines().any(|l| l == "prefetch_controller_leader 1") {
        &mb
    } else {
        &ma
    };
    assert!(
        follower.contains("prefetch_controller_pods_created_total 0"),
        "{follower}"
    );
    assert_eq!(s.kubelet.seen_pods(), 3);

    // The leader stops (SIGTERM releases the lease); the other takes over and acts.
    let (leader, standby) = if ma.lines().any(|l| l == "prefetch_controller_leader 1") {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        leader
            .process
            .terminate(Duration::from_secs(20))
            .await
            .unwrap()
            .success()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !standby
        .metrics()
        .await
        .unwrap()
        .lines()
        .any(|l| l == "prefetch_controller_leader 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby never took over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_and_dropped_watches_are_survived() {
    let Some(s) = scenario("faults", json!({})).await else {
        return;
    };
    let api = s.cluster.api.as_ref().unwrap();
    api.inject(
        Fault {
            verb: Some("create"),
            resource: Some("pods"),
            client: None,
            code: 500,
        },
        2,
    );
    api.inject(
        Fault {
            verb: Some("patch"),
            resource: Some("prefetches"),
            client: None,
            code: 429,
        },
        2,
    );
    api.inject(
        Fault {
            verb: Some("list"),
            resource: Some("nodes"),
            client: None,
            code: 500,
        },
        1,
    );
    let _controller = controller(&s, &[], "controller").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.drop_watches();
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(60),
        |st| st.phase == Phase::Succeeded,
    )
    .await;
    assert_eq!((status.ready, status.total), (3, 3));
    assert_eq!(s.kubelet.seen_pods(), 3, "converged without duplicates");
    s.cluster.cleanup().await;
}

/// The RBAC list is derived from what the real binary calls: the controller runs under its
/// own token, every request it makes is recorded, and the manifests must grant exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_grant_exactly_what_the_controller_calls() {
    let Some(s) = scenario("rbac", json!({})).await else {
        return;
    };
    // A failure, so Warning events are recorded too.
    s.rules.set("kind-worker2", Pull::Fail("ErrImagePull"));
    // A warming node, whose first taint removal meets a changed node (so it is read again).
    let api = s.cluster.api.as_ref().unwrap();
    api.inject(
        Fault {
            verb: Some("patch"),
            resource: Some("nodes"),
            client: Some(CONTROLLER_TOKEN),
            code: 409,
        },
        1,
    );
    Api::<Node>::all(s.cluster.client.clone())
        .create(
            &PostParams::default(),
            &node(
                "kind-worker4",
                json!([{"key": "cache.techsquad.rocks/warming", "effect": "NoSchedule"}]),
                json!([]),
            ),
        )
        .await
        .unwrap();
    let lease_ns = s.ns.clone();
    let controller = controller(
        &s,
        &["--leader-elect", "true", "--lease-namespace", &lease_ns],
        "controller",
    )
    .await;
    until_phase(&s, Phase::Failed).await;
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while nodes
        .get("kind-worker4")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.taints)
        .is_some_and(|t| !t.is_empty())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the warmup taint stays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past one lease renewal (every 2 s), then a SIGTERM that releases the lease.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        controller
            .process
            .terminate(Duration::from_secs(20))
            .await
            .unwrap()
            .success()
    );

    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/controller/rbac.yaml");
    prefetch_tests::rbac::assert_exact(
        &prefetch_tests::rbac::called(api, CONTROLLER_TOKEN),
        &prefetch_tests::rbac::granted(&manifest).unwrap(),
        // kube's event Recorder patches an event only when the same one repeats (a series).
        &[
            ("events.k8s.io", "events", "patch"),
            // Only when a gated pod is released (tests/gate_e2e.rs checks that call).
            ("", "pods", "patch"),
            // Only with a Prefetch that gates rollouts (tests/gated_namespaces_e2e.rs checks
            // these calls).
            ("", "namespaces", "get"),
            ("", "namespaces", "patch"),
        ],
    );
}

/// Status fields that must empty do, on a server that applies patches as kube-apiserver does
/// (a JSON merge patch of the status left a dropped image's digest in place forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_fields_that_must_empty_do() {
    let Some(s) = scenario("status-empties", json!({"retry_after": 3600})).await else {
        return;
    };
    const REDIS: &str = "docker.io/library/redis:7";
    s.rules
        .set_image("kind-worker2", REDIS, Pull::Fail("ErrImagePull"));
    let containers = |images: &[&str]| {
        let containers: Vec<serde_json::Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
            .collect();
        kube::api::Patch::Merge(json!({"spec": {"template": {"spec": {"containers": containers}}}}))
    };
    let params = kube::api::PatchParams::default();
    s.deployments
        .patch("nginx", &params, &containers(&["nginx:1.7.9", "redis:7"]))
        .await
        .unwrap();
    let _controller = controller(&s, &[], "controller").await;
    let failed = until_phase(&s, Phase::Failed).await;
    let failures: Vec<(&str, &str)> = failed
        .failures
        .iter()
        .map(|f| (f.node.as_str(), f.image.as_str()))
        .collect();
    assert_eq!(failures, [("kind-worker2", REDIS)]);
    assert!(failed.digests.contains_key(REDIS), "{:?}", failed.digests);
    assert_eq!(failed.sources[REDIS], ["Deployment/nginx"]);

    // The pull succeeds when tried again: a rollout signal for redis starts the round at once.
    s.rules.set_image("kind-worker2", REDIS, Pull::Succeed);
    let signal = json!({"metadata": {"annotations": {
        "cache.techsquad.rocks/prefetch-images": format!("[\"{REDIS}\"]"),
        "cache.techsquad.rocks/prefetch-requested-at":
            prefetch_common::annotations::rfc3339(jiff::Timestamp::now())}}});
    s.deployments
        .patch("nginx", &params, &kube::api::Patch::Merge(signal))
        .await
        .unwrap();
    let retried = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| {
            st.phase == Phase::Succeeded
                && st
                    .last_rollout
                    .as_ref()
                    .is_some_and(|r| r.prefetched_at.is_some())
        },
    )
    .await;
    assert_eq!((retried.failed, retried.failures.len()), (0, 0));

    // redis leaves the Deployment: it leaves images and digests, without waiting for a round.
    s.deployments
        .patch("nginx", &params, &containers(&["nginx:1.7.9"]))
        .await
        .unwrap();
    let dropped = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.images == ["docker.io/library/nginx:1.7.9"],
    )
    .await;
    assert_eq!(
        dropped.digests.keys().collect::<Vec<_>>(),
        ["docker.io/library/nginx:1.7.9"]
    );
    // What the server holds, not only what this reader's types keep.
    let resource = kube::api::ApiResource::erase::<prefetch_common::Prefetch>(&());
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(s.cluster.client.clone(), &s.ns, &resource);
    let object = raw.get("prefetch-sample").await.unwrap();
    assert_eq!(
        object.data["status"]["digests"].as_object().unwrap().len(),
        1,
        "{:#?}",
        object.data["status"]
    );
    assert_eq!(
        object.data["status"]["sources"],
        json!({"docker.io/library/nginx:1.7.9": ["Deployment/nginx"]}),
        "the dropped image's sources are gone from the server"
    );
    s.cluster.cleanup().await;
}

/// A declared image (`spec.images`) is prefetched before any workload uses it: added to a running
/// Prefetch, it starts a round at once (design: docs/src/design.md#every-workload-and-every-image).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_image_is_prefetched_before_any_workload_uses_it() {
    let Some(s) = scenario("declared", json!({"retry_after": 3600})).await else {
        return;
    };
    let _controller = controller(&s, &[], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    s.prefetches
        .patch(
            "prefetch-sample",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"images": ["redis:7"]}})),
        )
        .await
        .unwrap();
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.phase == Phase::Succeeded && st.images.len() == 2,
    )
    .await;
    assert_eq!(
        status.images,
        ["docker.io/library/nginx:1.7.9", "docker.io/library/redis:7"]
    );
    assert_eq!((status.ready, status.total), (6, 6));
    assert_eq!(status.sources["docker.io/library/redis:7"], ["declared"]);
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    for worker in ["kind-worker", "kind-worker2", "kind-worker3"] {
        assert!(
            node_lists(&nodes, worker, "docker.io/library/redis:7").await,
            "{worker} never pulled the declared image"
        );
    }
    s.cluster.cleanup().await;
}

/// Every workload kind a Prefetch selects brings its images (design:
/// docs/src/design.md#every-workload-and-every-image): StatefulSets, DaemonSets, Jobs and CronJobs
/// beside the Deployment, init containers and image volumes included; a node that joins afterwards
/// gets them all (a CronJob's next run lands warm on it); `kinds` narrows the selection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_kind_brings_its_images() {
    let Some(s) = scenario("kinds", json!({"retry_after": 3600})).await else {
        return;
    };
    let client = s.cluster.client.clone();
    let labels = json!({"app": "nginx"});
    let template = |image: &str| {
        json!({"metadata": {"labels": {"app": "x"}},
               "spec": {"containers": [{"name": "c", "image": image}], "restartPolicy": "Never"}})
    };
    let create = |api_version: &str, kind: &str, name: &str, spec: serde_json::Value| {
        json!({"apiVersion": api_version, "kind": kind,
               "metadata": {"name": name, "namespace": s.ns, "labels": labels}, "spec": spec})
    };
    let mut db = template("postgres:16");
    db["spec"]["initContainers"] = json!([{"name": "migrate", "image": "flyway/flyway:10"}]);
    let mut agent = template("fluent/fluent-bit:3.0");
    agent["spec"]["volumes"] =
        json!([{"name": "rules", "image": {"reference": "ghcr.io/org/rules:7"}}]);
    let objects = [
        (
            "statefulsets",
            create(
                "apps/v1",
                "StatefulSet",
                "db",
                json!({"selector": {"matchLabels": {"app": "x"}}, "serviceName": "db", "template": db}),
            ),
        ),
        (
            "daemonsets",
            create(
                "apps/v1",
                "DaemonSet",
                "agent",
                json!({"selector": {"matchLabels": {"app": "x"}}, "template": agent}),
            ),
        ),
        (
            "jobs",
            create(
                "batch/v1",
                "Job",
                "migrate",
                json!({"template": template("busybox:1.36")}),
            ),
        ),
        (
            "cronjobs",
            create(
                "batch/v1",
                "CronJob",
                "report",
                json!({"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template("python:3.12")}}}),
            ),
        ),
    ];
    for (plural, object) in objects {
        let group = if plural == "jobs" || plural == "cronjobs" {
            "batch"
        } else {
            "apps"
        };
        let resource = kube::api::ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: format!("{group}/v1"),
            kind: object["kind"].as_str().unwrap().into(),
            plural: plural.into(),
        };
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &s.ns, &resource);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
        .unwrap();
    }
    let _controller = controller(&s, &[], "controller").await;
    let expected = [
        "docker.io/fluent/fluent-bit:3.0",
        "docker.io/flyway/flyway:10",
        "docker.io/library/busybox:1.36",
        "docker.io/library/nginx:1.7.9",
        "docker.io/library/postgres:16",
        "docker.io/library/python:3.12",
        "ghcr.io/org/rules:7",
    ];
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == Phase::Succeeded && st.images.len() == expected.len(),
    )
    .await;
    assert_eq!(status.images, expected);
    assert_eq!((status.ready, status.total), (21, 21));

    // A node joins: it gets every kind's images, the CronJob's included.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &node("kind-worker4", json!([]), json!([])),
        )
        .await
        .unwrap();
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == Phase::Succeeded && st.total == 28 && st.ready == 28,
    )
    .await;
    // The fake kubelet reports the pod before it lists the image on the node.
    prefetch_tests::scenario::eventually(
        Duration::from_secs(10),
        "the CronJob's image is on the new node before its next run",
        || node_lists(&nodes, "kind-worker4", "docker.io/library/python:3.12"),
    )
    .await;

    // kinds narrows what filter_by_labels selects.
    s.prefetches
        .patch(
            "prefetch-sample",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"kinds": ["CronJob"]}})),
        )
        .await
        .unwrap();
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.images == ["docker.io/library/python:3.12"],
    )
    .await;
    s.cluster.cleanup().await;
}

/// While a rollout is in progress the Deployment's older ReplicaSet still runs pods: its image is
/// wanted too, so a node that joins mid-rollout is warm for the old pods it may get; once that
/// ReplicaSet is scaled to zero its image leaves the plan (design:
/// docs/src/design.md#every-workload-and-every-image).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_revision_with_pods_is_warmed_on_a_node_that_joins_mid_rollout() {
    let Some(s) = scenario("revisions", json!({"retry_after": 3600})).await else {
        return;
    };
    let _controller = controller(&s, &[], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    let deployment = s.deployments.get("nginx").await.unwrap();
    let resource = kube::api::ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        plural: "replicasets".into(),
    };
    let replica_sets: Api<kube::api::DynamicObject> =
        Api::namespaced_with(s.cluster.client.clone(), &s.ns, &resource);
    let old = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "nginx-old", "namespace": s.ns, "labels": {"app": "nginx", "pod-template-hash": "old"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx",
                                          "uid": deployment.metadata.uid.clone().unwrap(), "controller": true}]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "nginx"}},
                 "template": {"metadata": {"labels": {"app": "nginx"}},
                              "spec": {"containers": [{"name": "nginx", "image": "nginx:1.6"}]}}}});
    replica_sets
        .create(
            &PostParams::default(),
            &serde_json::from_value(old).unwrap(),
        )
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    nodes
        .create(
            &PostParams::default(),
            &node("kind-worker4", json!([]), json!([])),
        )
        .await
        .unwrap();
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == Phase::Succeeded && st.total == 8 && st.ready == 8,
    )
    .await;
    assert_eq!(
        status.images,
        [
            "docker.io/library/nginx:1.6",
            "docker.io/library/nginx:1.7.9"
        ]
    );
    assert!(
        node_lists(&nodes, "kind-worker4", "docker.io/library/nginx:1.6").await,
        "the old revision's image is on the node that joined mid-rollout"
    );

    // The rollout ends: the old ReplicaSet is scaled to zero, and its image leaves the plan.
    replica_sets
        .patch(
            "nginx-old",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| st.images == ["docker.io/library/nginx:1.7.9"],
    )
    .await;
    s.cluster.cleanup().await;
}

/// A StatefulSet mid-rollout: the revision it replaces (its ControllerRevision, named by
/// `status.currentRevision`) still runs pods, so a node that joins gets its image too; once
/// the rollout ends, the image leaves the plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulsets_replaced_revision_is_warmed_on_a_node_that_joins_mid_rollout() {
    let Some(s) = scenario("sts-revisions", json!({"retry_after": 3600})).await else {
        return;
    };
    let _controller = controller(&s, &[], "controller").await;
    until_phase(&s, Phase::Succeeded).await;
    let client = s.cluster.client.clone();
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &s.ns);
    let template = |image: &str| {
        json!({"metadata": {"labels": {"app": "nginx"}},
               "spec": {"containers": [{"name": "db", "image": image}]}})
    };
    let db = sets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db", "labels": {"app": "nginx"}},
                "spec": {"serviceName": "db", "replicas": 3, "selector": {"matchLabels": {"app": "nginx"}},
                         "template": template("redis:7.2")}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let revisions: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        Api::namespaced(client.clone(), &s.ns);
    for (name, number, image) in [("db-1", 1, "redis:7.0"), ("db-2", 2, "redis:7.2")] {
        let mut data = json!({"spec": {"template": template(image)}});
        data["spec"]["template"]["$patch"] = json!("replace");
        revisions
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": {"app": "nginx"},
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                                      "uid": db.metadata.uid.clone().unwrap(), "controller": true}]},
                    "revision": number, "data": data}))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let status = |current: &str, current_replicas: i32| {
        json!({"status": {"replicas": 3, "currentRevision": current, "updateRevision": "db-2",
                          "currentReplicas": current_replicas, "updatedReplicas": 3 - current_replicas}})
    };
    sets.patch_status(
        "db",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(status("db-1", 2)),
    )
    .await
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &node("kind-worker4", json!([]), json!([])),
        )
        .await
        .unwrap();
    let old = "docker.io/library/redis:7.0";
    let status_now = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| {
            st.phase == Phase::Succeeded
                && st.images.iter().any(|i| i == old)
                && st.ready == st.total
        },
    )
    .await;
    assert_eq!(
        status_now.images,
        [
            "docker.io/library/nginx:1.7.9",
            old,
            "docker.io/library/redis:7.2"
        ]
    );
    assert!(
        node_lists(&nodes, "kind-worker4", old).await,
        "the replaced revision's image is on the node that joined mid-rollout"
    );

    // The rollout ends: every pod runs the update revision; the old image leaves the plan.
    sets.patch_status(
        "db",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"status": {"currentRevision": "db-2", "currentReplicas": 3}}),
        ),
    )
    .await
    .unwrap();
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(20),
        |st| {
            st.images
                == [
                    "docker.io/library/nginx:1.7.9",
                    "docker.io/library/redis:7.2",
                ]
        },
    )
    .await;
    s.cluster.cleanup().await;
}

/// The pull secrets of the prefetch pod on `node`, sorted as the pod lists them, once one is
/// there (fails after 20 s).
async fn pull_secrets_of_pod_on(pods: &Api<Pod>, node: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = pods.list(&ListParams::default()).await.unwrap().items;
        let on_node = listed.into_iter().find(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("cache.techsquad.rocks/node"))
                .is_some_and(|n| n == node)
        });
        if let Some(pod) = on_node {
            let secrets = pod.spec.and_then(|s| s.image_pull_secrets);
            return secrets.into_iter().flatten().map(|s| s.name).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no prefetch pod on {node}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A prefetch pod carries the pull secrets the selected workloads' pods get (design:
/// docs/src/design.md#every-workload-and-every-image): a template's own and, for a template that
/// lists none, its ServiceAccount's (the ServiceAccount admission plugin adds an account's secrets
/// only then). A change to the account reaches the next pod. `status.sources` names each image's
/// workloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_pods_carry_the_service_accounts_pull_secrets() {
    let Some(s) = scenario("accounts", json!({"retry_after": 3600})).await else {
        return;
    };
    let client = s.cluster.client.clone();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &s.ns);
    let account = |name: &str, secrets: &[&str]| -> ServiceAccount {
        let secrets: Vec<serde_json::Value> = secrets.iter().map(|n| json!({"name": n})).collect();
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": s.ns},
                                      "imagePullSecrets": secrets}))
        .unwrap()
    };
    let params = PostParams::default();
    accounts
        .create(&params, &account("builder", &["sa-regcred"]))
        .await
        .unwrap();
    // nginx runs as `default` but lists its own secret: its pods never get the account's.
    accounts
        .create(&params, &account("default", &["default-regcred"]))
        .await
        .unwrap();
    let own_secret =
        json!({"spec": {"template": {"spec": {"imagePullSecrets": [{"name": "tpl-regcred"}]}}}});
    s.deployments
        .patch(
            "nginx",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(own_secret),
        )
        .await
        .unwrap();
    let mut api = prefetch_tests::fixtures::nginx_deployment(
        &s.ns,
        "api",
        json!({"app": "nginx"}),
        &["redis:7"],
    );
    api["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    s.deployments
        .create(&params, &serde_json::from_value(api).unwrap())
        .await
        .unwrap();
    // Long enough to read the pod before it finishes and is deleted.
    s.rules
        .set("kind-worker", Pull::SucceedAfter(Duration::from_secs(3)));
    let _controller = controller(&s, &[], "controller").await;
    assert_eq!(
        pull_secrets_of_pod_on(&s.pods, "kind-worker").await,
        ["sa-regcred", "tpl-regcred"]
    );
    let status = until_phase(&s, Phase::Succeeded).await;
    assert_eq!(
        serde_json::to_value(&status.sources).unwrap(),
        json!({"docker.io/library/nginx:1.7.9": ["Deployment/nginx"],
               "docker.io/library/redis:7": ["Deployment/api"]})
    );

    // The account gains a secret; a node that joins gets a pod carrying it.
    let more = json!({"imagePullSecrets": [{"name": "sa-regcred"}, {"name": "sa-regcred-2"}]});
    accounts
        .patch(
            "builder",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(more),
        )
        .await
        .unwrap();
    // The account's watch event and the node's travel on separate watches.
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.rules
        .set("kind-worker4", Pull::SucceedAfter(Duration::from_secs(3)));
    Api::<Node>::all(client.clone())
        .create(&params, &node("kind-worker4", json!([]), json!([])))
        .await
        .unwrap();
    assert_eq!(
        pull_secrets_of_pod_on(&s.pods, "kind-worker4").await,
        ["sa-regcred", "sa-regcred-2", "tpl-regcred"]
    );
    s.cluster.cleanup().await;
}

/// An image a workload only mounts as an image volume (an artifact: model weights with no
/// runnable file) is pulled through an image volume on a node that supports them (kubelet
/// 1.36, containerd 2.1): the prefetch pod runs `noop` from the noop image and mounts the
/// artifact. A node that does not (kubelet 1.33) runs `noop` inside the image, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_is_pulled_through_an_image_volume_where_nodes_support_it() {
    let Some(s) = scenario("artifact", json!({"retry_after": 3600})).await else {
        return;
    };
    let client = s.cluster.client.clone();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            "kind-worker",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"nodeInfo": {
                "kubeletVersion": "v1.36.0", "containerRuntimeVersion": "containerd://2.1.0"}}})),
        )
        .await
        .unwrap();
    let weights = "registry.example/models/weights:v1";
    s.deployments
        .patch(
            "nginx",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"template": {"spec": {
                "containers": [{"name": "nginx", "image": "nginx:1.7.9",
                                "volumeMounts": [{"name": "weights", "mountPath": "/weights"}]}],
                "volumes": [{"name": "weights", "image": {"reference": weights}}]}}}})),
        )
        .await
        .unwrap();
    for worker in ["kind-worker", "kind-worker2", "kind-worker3"] {
        s.rules
            .set_image(worker, weights, Pull::SucceedAfter(Duration::from_secs(2)));
    }
    let _controller = controller(&s, &[], "controller").await;
    // The prefetch pods while they pull: the supporting node's mounts the artifact and runs
    // the noop image; the others run noop inside the artifact.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let pods = loop {
        let listed = s.pods.list(&ListParams::default()).await.unwrap().items;
        let pulling: Vec<Pod> = listed
            .into_iter()
            .filter(|p| serde_json::to_string(&p.spec).unwrap().contains(weights))
            .collect();
        if pulling.len() == 3 {
            break pulling;
        }
        assert!(tokio::time::Instant::now() < deadline, "{pulling:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for pod in &pods {
        let node = &pod.annotations()["cache.techsquad.rocks/node"];
        let spec = serde_json::to_value(&pod.spec).unwrap();
        let mounts_it = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["image"]["reference"] == weights);
        let runs_it = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["image"] == weights);
        assert_eq!(
            (mounts_it, runs_it),
            (node == "kind-worker", node != "kind-worker"),
            "{node}: {spec:#}"
        );
    }
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == Phase::Succeeded && st.ready == 6,
    )
    .await;
    assert_eq!(status.images, ["docker.io/library/nginx:1.7.9", weights]);
    for worker in ["kind-worker", "kind-worker2", "kind-worker3"] {
        assert!(node_lists(&nodes, worker, weights).await, "{worker}");
    }
    assert!(
        !status.digests.contains_key(weights)
            || status.digests[weights] == prefetch_tests::kubelet::digest_of(weights),
        "the noop container's imageID is never taken for the artifact's digest: {:?}",
        status.digests
    );
    s.cluster.cleanup().await;
}

const NGINX: &str = "docker.io/library/nginx:1.7.9";

/// A rollout that supersedes one whose pulls still run: the pods pulling only what no workload
/// wants any more are deleted, not waited for, and the new image is pulled at once. Here the
/// old image's pull never ends, so waiting for it would never succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_pull_is_dropped_and_the_new_image_pulled_at_once() {
    let Some(s) = scenario("superseded", json!({"retry_after": 3600})).await else {
        return;
    };
    let workers = ["kind-worker", "kind-worker2", "kind-worker3"];
    for worker in workers {
        s.rules.set_image(worker, NGINX, Pull::Hang);
    }
    let _controller = controller(&s, &[], "controller").await;
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == Phase::Running,
    )
    .await;
    prefetch_tests::scenario::eventually(Duration::from_secs(30), "the old pulls run", || async {
        s.pods
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            == workers.len()
    })
    .await;

    let newer = json!({"spec": {"template": {"spec": {"containers": [{"name": "c0", "image": "nginx:1.27"}]}}}});
    s.deployments
        .patch(
            "nginx",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(newer),
        )
        .await
        .unwrap();
    let status = until_phase(&s, Phase::Succeeded).await;
    assert_eq!(status.images, ["docker.io/library/nginx:1.27"]);
    assert_eq!((status.ready, status.total, status.failed), (3, 3, 0));
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    for worker in workers {
        assert!(node_lists(&nodes, worker, "docker.io/library/nginx:1.27").await);
        assert!(!node_lists(&nodes, worker, NGINX).await, "{worker}");
    }
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(s.cluster.client.clone(), &s.ns)
            .list(&ListParams::default())
            .await
            .unwrap();
    let superseded: Vec<String> = events
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("PullsSuperseded"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        superseded.iter().any(|n| n.contains(NGINX)),
        "{superseded:?}"
    );
    s.cluster.cleanup().await;
}

/// `seed: {per_zone: 1}`: one node per zone pulls first; the zone's other nodes start only
/// once it holds the image (a mirror inside the zone could then serve them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_seed_one_node_per_zone_pulls_first() {
    let spec = json!({"retry_after": 3600, "seed": {"per_zone": 1}});
    let Some(s) = scenario("seed", spec).await else {
        return;
    };
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    for (worker, zone) in [
        ("kind-worker", "zone-a"),
        ("kind-worker2", "zone-a"),
        ("kind-worker3", "zone-b"),
    ] {
        let labels = json!({"metadata": {"labels": {"topology.kubernetes.io/zone": zone}}});
        nodes
            .patch(
                worker,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(labels),
            )
            .await
            .unwrap();
    }
    // Zone a's seed pulls until the test lets it finish.
    s.rules.set("kind-worker", Pull::Hang);
    let _controller = controller(&s, &[], "controller").await;
    let on_nodes = || async {
        let pods = s.pods.list(&ListParams::default()).await.unwrap().items;
        let mut nodes: Vec<String> = pods
            .iter()
            .filter_map(|p| p.annotations().get("cache.techsquad.rocks/node").cloned())
            .collect();
        nodes.sort();
        nodes
    };
    prefetch_tests::scenario::eventually(
        Duration::from_secs(30),
        "zone b is done and zone a's seed pulls",
        || async {
            on_nodes().await == ["kind-worker"] && node_lists(&nodes, "kind-worker3", NGINX).await
        },
    )
    .await;
    // Zone b's pod ended and its status was written since: kind-worker2 was considered and
    // held back, not merely not reached yet.
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.ready == 1,
    )
    .await;
    assert_eq!(
        on_nodes().await,
        ["kind-worker"],
        "kind-worker2 waits for the seed"
    );
    assert!(!node_lists(&nodes, "kind-worker2", NGINX).await);

    s.rules.set("kind-worker", Pull::Succeed);
    let status = until_phase(&s, Phase::Succeeded).await;
    assert_eq!((status.ready, status.total, status.failed), (3, 3, 0));
    assert!(node_lists(&nodes, "kind-worker2", NGINX).await);
    s.cluster.cleanup().await;
}

/// `--registry-budget docker.io=2/1h`: two of the three nodes pull the image; the third waits
/// with the reason RegistryBudget, and the metrics say what is left and what waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_registry_budget_holds_the_pulls_past_it() {
    let Some(s) = scenario("budget", json!({"retry_after": 3600})).await else {
        return;
    };
    let controller = controller(&s, &["--registry-budget", "docker.io=2/1h"], "controller").await;
    let status = wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.ready == 2 && !st.waiting.is_empty(),
    )
    .await;
    assert_eq!(
        status.phase,
        Phase::Running,
        "the round waits for the budget"
    );
    assert_eq!(status.waiting.len(), 1);
    let waiting = &status.waiting[0];
    assert_eq!(
        (waiting.image.as_str(), waiting.reason.as_str()),
        (NGINX, "RegistryBudget")
    );
    let nodes: Api<Node> = Api::all(s.cluster.client.clone());
    assert!(!node_lists(&nodes, &waiting.node, NGINX).await);
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert!(
        progressing.message.contains("RegistryBudget"),
        "{}",
        progressing.message
    );
    let metrics = controller.metrics().await.unwrap();
    let value = |series: &str| prefetch_tests::binaries::metric_value(&metrics, series);
    assert_eq!(
        value("prefetch_controller_registry_budget_remaining{registry=\"docker.io\"}"),
        0.0
    );
    assert_eq!(
        value("prefetch_controller_registry_budget_waiting_pairs{registry=\"docker.io\"}"),
        1.0
    );
    s.cluster.cleanup().await;
}
