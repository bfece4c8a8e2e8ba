//! Warm rollouts end to end (design: docs/src/design.md#warm-rollouts): the real webhook registered
//! as the test API server's mutating admission, the real controller, and the test playing the
//! Deployment controller, the scheduler and the kubelets with a pull-time model
//! (`prefetch_tests::rollout`).

use std::time::Duration;

use prefetch_common::annotations::{GATED_BY_LABEL, GATED_UNTIL_ANNOTATION, SCHEDULING_GATE};
use prefetch_tests::binaries::metric_value;
use prefetch_tests::kubelet::Pull;
use prefetch_tests::rollout::{GateRig, NEW_IMAGE_NORMALIZED, RigOptions};

fn gates(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.scheduling_gates.iter().flatten())
        .map(|g| g.name.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_rollout_starts_no_pod_cold() {
    let Some(rig) = GateRig::start("gate-warm", RigOptions::default())
        .await
        .unwrap()
    else {
        return;
    };
    rig.until_leader_seen().await.unwrap();
    let created = rig.roll_out().await.unwrap();
    assert_eq!(created.len(), 6);
    for pod in &created {
        assert_eq!(gates(pod), [SCHEDULING_GATE], "{pod:?}");
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[GATED_BY_LABEL],
            "prefetch-sample"
        );
        assert!(
            pod.metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(GATED_UNTIL_ANNOTATION)
        );
    }
    let running = rig
        .until_running(&created, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(running.iter().all(|p| gates(p).is_empty()));
    let starts = rig.starts_of(&created);
    assert_eq!(starts.len(), 6);
    let cold: Vec<_> = starts.iter().filter(|s| s.cold()).collect();
    assert!(
        cold.is_empty(),
        "pods started on nodes lacking their image: {cold:#?}"
    );
    let nodes: std::collections::BTreeSet<&str> = starts.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "spread over the three workers");
    let status = rig
        .prefetches()
        .get("prefetch-sample")
        .await
        .unwrap()
        .status
        .unwrap();
    let rollout = status.last_rollout.unwrap();
    assert_eq!(rollout.images, [NEW_IMAGE_NORMALIZED]);
    assert!(rollout.prefetched_at.is_some());
    let metrics = rig.controllers[0]
        .as_ref()
        .unwrap()
        .metrics()
        .await
        .unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "prefetch_controller_gate_releases_total{result=\"prefetched\"}"
        ),
        6.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "prefetch_controller_gated_pods"),
        0.0
    );
    assert_eq!(
        rig.webhook
            .metric("prefetch_webhook_pod_gate_total{result=\"gated\"}")
            .await
            .unwrap(),
        6.0
    );
    // The release is a pods patch, which the install grants the controller (controller_e2e.rs
    // checks its other grants exactly).
    let api = rig.cluster.api.as_ref().unwrap();
    let called = prefetch_tests::rbac::called(api, prefetch_tests::scenario::CONTROLLER_TOKEN);
    let patch = (String::new(), "pods".to_string(), "patch".to_string());
    assert!(called.contains(&patch));
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/controller/rbac.yaml");
    assert!(
        prefetch_tests::rbac::granted(&manifest)
            .unwrap()
            .contains(&patch)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gate_a_rollout_starts_cold() {
    let options = RigOptions {
        gate: false,
        ..Default::default()
    };
    let Some(rig) = GateRig::start("gate-off", options).await.unwrap() else {
        return;
    };
    rig.until_leader_seen().await.unwrap();
    let created = rig.roll_out().await.unwrap();
    assert!(created.iter().all(|p| gates(p).is_empty()));
    rig.until_running(&created, Duration::from_secs(20))
        .await
        .unwrap();
    let starts = rig.starts_of(&created);
    let cold = starts.iter().filter(|s| s.cold()).count();
    println!(
        "without the gate: {cold} of {} new pods started on a node lacking their image",
        starts.len()
    );
    // No Prefetch in the namespace gates: the controller does not label it, and the pod
    // hook's namespaceSelector keeps its pods from the webhook altogether.
    let mut reviews = 0.0;
    for result in ["gated", "passed", "errored"] {
        reviews += rig
            .webhook
            .metric(&format!(
                "prefetch_webhook_pod_gate_total{{result=\"{result}\"}}"
            ))
            .await
            .unwrap();
    }
    assert_eq!(reviews, 0.0, "no pod review reached the webhook");
}

/// gated-until of a pod, parsed.
fn gated_until(pod: &k8s_openapi::api::core::v1::Pod) -> jiff::Timestamp {
    pod.metadata.annotations.as_ref().unwrap()[GATED_UNTIL_ANNOTATION]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_never_ends_releases_the_pods_at_gate_timeout() {
    let options = RigOptions {
        gate_timeout: Some(60),
        ..Default::default()
    };
    let Some(rig) = GateRig::start("gate-timeout", options).await.unwrap() else {
        return;
    };
    rig.rules
        .set_image("worker-1", NEW_IMAGE_NORMALIZED, Pull::Hang);
    rig.until_leader_seen().await.unwrap();
    rig.change_image().await.unwrap();
    // gate_timeout is at least 60 s: the signal is made 57 s old, as a webhook could have
    // written it a while before the ReplicaSet's pods come (no image change: the hook keeps it).
    let earlier = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(57);
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(rig.client(), rig.namespace());
    deployments
        .patch(
            "nginx",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {
                "cache.techsquad.rocks/prefetch-requested-at": prefetch_common::annotations::rfc3339(earlier)}}})),
        )
        .await
        .unwrap();
    let created = rig.create_pods().await.unwrap();
    assert!(
        created.iter().all(|p| gates(p) == [SCHEDULING_GATE]),
        "{created:#?}"
    );
    let until = gated_until(&created[0]);
    let running = rig
        .until_running(&created, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(running.iter().all(|p| gates(p).is_empty()));
    // Released at gated-until (plus the controller's poll), never before: worker-1 never
    // finished pulling.
    let released_at = jiff::Timestamp::now();
    assert!(
        released_at.duration_since(until) < jiff::SignedDuration::from_secs(5),
        "released {} after gated-until",
        released_at.duration_since(until)
    );
    let metrics = rig.controllers[0]
        .as_ref()
        .unwrap()
        .metrics()
        .await
        .unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "prefetch_controller_gate_releases_total{result=\"timed_out\"}"
        ),
        6.0,
        "{metrics}"
    );
    // The round could only finish once the released pods' own pulls put the image on
    // worker-1, after gated-until.
    let status = rig
        .prefetches()
        .get("prefetch-sample")
        .await
        .unwrap()
        .status
        .unwrap();
    if let Some(done) = status.last_rollout.unwrap().prefetched_at {
        assert!(
            done.0 >= until,
            "prefetched at {} before gated-until {until}",
            done.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_releases_pods_gated_under_a_killed_leader() {
    let options = RigOptions {
        controllers: 2,
        pull_time: Duration::from_secs(2),
        ..Default::default()
    };
    let Some(mut rig) = GateRig::start("gate-failover", options).await.unwrap() else {
        return;
    };
    rig.until_leader_seen().await.unwrap();
    let created = rig.roll_out().await.unwrap();
    assert!(created.iter().all(|p| gates(p) == [SCHEDULING_GATE]));
    let lease = kube::Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        rig.client(),
        rig.namespace(),
    )
    .get("prefetch-controller")
    .await
    .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    let leader = if holder == "controller-0" { 0 } else { 1 };
    rig.controllers[leader]
        .take()
        .unwrap()
        .process
        .kill()
        .await
        .unwrap();
    // The survivor takes the Lease once it expires (15 s), resumes the round and releases.
    let running = rig
        .until_running(&created, Duration::from_secs(40))
        .await
        .unwrap();
    assert!(running.iter().all(|p| gates(p).is_empty()));
    let cold: Vec<_> = rig
        .starts_of(&created)
        .into_iter()
        .filter(|s| s.cold())
        .collect();
    assert!(cold.is_empty(), "{cold:#?}");
    let survivor = rig.controllers[1 - leader]
        .as_ref()
        .unwrap()
        .metrics()
        .await
        .unwrap();
    assert_eq!(
        metric_value(
            &survivor,
            "prefetch_controller_gate_releases_total{result=\"prefetched\"}"
        ),
        6.0,
        "{survivor}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_pod_hook_creates_pods_ungated() {
    let options = RigOptions {
        pod_hook_unreachable: true,
        ..Default::default()
    };
    let Some(rig) = GateRig::start("gate-unreachable", options).await.unwrap() else {
        return;
    };
    rig.until_leader_seen().await.unwrap();
    let created = rig.roll_out().await.unwrap();
    for pod in &created {
        assert!(gates(pod).is_empty());
        assert!(
            !pod.metadata
                .labels
                .as_ref()
                .unwrap()
                .contains_key(GATED_BY_LABEL)
        );
    }
    // The Deployment hook still signalled the rollout.
    rig.until_running(&created, Duration::from_secs(20))
        .await
        .unwrap();
    let status = rig
        .prefetches()
        .get("prefetch-sample")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.last_rollout.unwrap().images, [NEW_IMAGE_NORMALIZED]);
}

/// One rollout of the scenario below: the pods it created and the image they wait for.
struct Rollout {
    what: &'static str,
    pods: Vec<k8s_openapi::api::core::v1::Pod>,
    image: String,
}

/// The Deployment controller's part in a rollout of `web`: its current template's
/// ReplicaSet with 6 pods, created through admission; returns once they all run.
async fn replica_set_running(
    rig: &GateRig,
    client: &kube::Client,
    ns: &str,
    what: &'static str,
    image: String,
) -> Rollout {
    let pods = prefetch_tests::rollout::create_replica_set(client, ns, "web", 6)
        .await
        .unwrap();
    rig.until_running(&pods, Duration::from_secs(30))
        .await
        .unwrap();
    Rollout { what, pods, image }
}

/// The Deployment's rollout signal time, as the webhook stamped it.
fn signalled_at(deployment: &k8s_openapi::api::apps::v1::Deployment) -> String {
    deployment.metadata.annotations.as_ref().unwrap()
        [prefetch_common::annotations::PREFETCH_REQUESTED_AT]
        .clone()
}

/// Sleeps until early in a wall-clock second, so that two quick changes fall within it.
async fn start_of_a_second() {
    let into = jiff::Timestamp::now().subsec_nanosecond();
    let left = 1_000_000_000 - i64::from(into);
    tokio::time::sleep(Duration::from_nanos(left as u64 + 20_000_000)).await;
}

/// A Deployment gated four times over (design: docs/src/design.md#warm-rollouts; the bug this
/// guards against let only a Deployment's first rollout wait: the earlier rollout's `prefetched_at`
/// stayed in the status and released every later rollout's pods at once): its CREATE, `set image`,
/// `set image` twice within one second (the second change must be a signal of its own), and
/// `rollout undo` back to the first template. Every rollout starts no pod cold, and every pod is
/// released, with reason prefetched, only once its image is on every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rollout_of_a_deployment_starts_no_pod_cold() {
    let Some(rig) = GateRig::start("gate-every-rollout", RigOptions::default())
        .await
        .unwrap()
    else {
        return;
    };
    let workers: Vec<String> = (1..=3).map(|i| format!("worker-{i}")).collect();
    let [first, second, third, fourth] = ["nginx:1.26", "nginx:1.27", "nginx:1.28", "nginx:1.29"];
    let normalized = |image: &str| format!("docker.io/library/{image}");
    for worker in &workers {
        for image in [first, second, third, fourth] {
            rig.rules.set_image(
                worker,
                &normalized(image),
                Pull::SucceedAfter(rig.options.pull_time),
            );
        }
    }
    rig.until_leader_seen().await.unwrap();
    let (client, ns) = (rig.client(), rig.namespace().to_string());
    let web = prefetch_tests::fixtures::nginx_deployment(
        &ns,
        "web",
        serde_json::json!({"app": "nginx"}),
        &[first],
    );
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), &ns);
    let mut rollouts = Vec::new();

    // 1. CREATE.
    deployments
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(web).unwrap(),
        )
        .await
        .unwrap();
    rollouts.push(replica_set_running(&rig, &client, &ns, "create", normalized(first)).await);

    // 2. set image.
    rig.set_image("web", second).await.unwrap();
    rollouts.push(replica_set_running(&rig, &client, &ns, "set image", normalized(second)).await);

    // 3 and 4. set image twice within one second: the Deployment controller makes the last
    // template's ReplicaSet.
    start_of_a_second().await;
    let third_signal = signalled_at(&rig.set_image("web", third).await.unwrap());
    let fourth_signal = signalled_at(&rig.set_image("web", fourth).await.unwrap());
    assert_eq!(
        third_signal[..19],
        fourth_signal[..19],
        "both changes within one second"
    );
    assert!(
        fourth_signal > third_signal,
        "{third_signal} then {fourth_signal}"
    );
    rollouts.push(
        replica_set_running(
            &rig,
            &client,
            &ns,
            "set image twice in one second",
            normalized(fourth),
        )
        .await,
    );

    // 5. rollout undo to the first template, whose image the nodes hold since the first.
    rig.set_image("web", first).await.unwrap();
    rollouts.push(replica_set_running(&rig, &client, &ns, "rollout undo", normalized(first)).await);

    let timeline = rig.sim.timeline();
    let mut gated = 0;
    for rollout in &rollouts {
        let starts = rig.starts_of(&rollout.pods);
        assert_eq!(starts.len(), 6, "{}", rollout.what);
        let cold: Vec<_> = starts.iter().filter(|s| s.cold()).collect();
        assert!(cold.is_empty(), "{}: started cold: {cold:#?}", rollout.what);
        // The undo brings an image every node holds: its round may be done before the
        // ReplicaSet's pods come, which then pass ungated.
        if rollout.what != "rollout undo" {
            assert!(
                starts.iter().all(|s| s.was_gated),
                "{}: all gated",
                rollout.what
            );
        }
        gated += starts.iter().filter(|s| s.was_gated).count();
        let pulled = timeline
            .pulled_everywhere(&workers, &rollout.image)
            .unwrap_or_else(|| panic!("{}: {} never on every worker", rollout.what, rollout.image));
        for pod in &rollout.pods {
            let name = pod.metadata.name.clone().unwrap();
            let Some(&released) = timeline.released.get(&name) else {
                continue;
            };
            assert!(
                released >= pulled,
                "{}: {name} released at {released:?}, before {} was on every worker ({pulled:?})",
                rollout.what,
                rollout.image
            );
        }
    }
    let metrics = rig.controllers[0]
        .as_ref()
        .unwrap()
        .metrics()
        .await
        .unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            "prefetch_controller_gate_releases_total{result=\"prefetched\"}"
        ),
        gated as f64,
        "every gated pod released as prefetched: {metrics}"
    );
    assert!(gated >= 18, "{gated} pods gated");
    let record = rig
        .prefetches()
        .get("prefetch-sample")
        .await
        .unwrap()
        .status
        .unwrap()
        .last_rollout
        .unwrap();
    assert_eq!(record.images, [normalized(first)]);
    assert!(record.prefetched_at.is_some());
    // Each rollout's Event says its own image (kube's Recorder alone folded them into the
    // first one's series, keeping its text).
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(client.clone(), &ns);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutSignal"))
        .filter_map(|e| e.note)
        .collect();
    for image in [second, fourth] {
        assert!(
            notes.iter().any(|n| n.contains(&normalized(image))),
            "no RolloutSignal event names {image}: {notes:#?}"
        );
    }
}
