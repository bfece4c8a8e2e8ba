//! Warm and cold starts, and what the prefetch pulls measured (design:
//! docs/src/design.md#what-it-saved), end to end: the test plays the kubelet, whose `Pulled`
//! Events (in its exact formats) the controller counts into the Prefetch's status, its metrics
//! and a `ColdStart` Event, and plays the Deployment controller, whose ReplicaSet and pods the
//! Events name. A restarted controller counts no Event twice.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use prefetch_common::{Phase, PrefetchStatus, StartsStatus};
use prefetch_tests::binaries::{ControllerProcess, metric_value};
use prefetch_tests::fixtures::nginx_deployment;
use prefetch_tests::kubelet::{
    PULL_SECONDS, PULLED_SIZE, emit_pulled, present_message, pulled_message,
};
use prefetch_tests::rollout::{create_replica_set, create_replica_set_object};
use prefetch_tests::scenario::{Scenario, controller, eventually, scenario, until_phase};
use serde_json::json;

const IMAGE: &str = "nginx:1.7.9";
const NORMALIZED: &str = "docker.io/library/nginx:1.7.9";

async fn status_of(s: &Scenario) -> Option<PrefetchStatus> {
    s.prefetches.get("prefetch-sample").await.ok()?.status
}

async fn starts_of(s: &Scenario) -> Option<StartsStatus> {
    status_of(s).await?.starts
}

async fn wait_for_starts(s: &Scenario, warm: i64, cold: i64) -> StartsStatus {
    eventually(
        Duration::from_secs(20),
        &format!("status.starts shows {warm} warm and {cold} cold"),
        || async {
            starts_of(s)
                .await
                .is_some_and(|st| (st.warm, st.cold) == (warm, cold))
        },
    )
    .await;
    starts_of(s).await.unwrap()
}

async fn metric(controller: &ControllerProcess, series: &str) -> f64 {
    metric_value(&controller.metrics().await.unwrap(), series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_are_counted_warm_and_cold_and_pulls_measured() {
    let Some(s) = scenario("starts", json!({})).await else {
        return;
    };
    let client = s.cluster.client.clone();
    let first = controller(&s, &[], "first").await;
    until_phase(&s, Phase::Succeeded).await;
    // The prefetch pods' pulls: one per node, PULL_SECONDS each, in the kubelet's Events.
    eventually(
        Duration::from_secs(20),
        "the three pulls measured",
        || async {
            status_of(&s)
                .await
                .is_some_and(|st| st.pulls.get(NORMALIZED).is_some_and(|p| p.nodes == 3))
        },
    )
    .await;
    let status = status_of(&s).await.unwrap();
    let figures = &status.pulls[NORMALIZED];
    assert_eq!(
        (
            figures.median_seconds,
            figures.slowest_seconds,
            figures.size_bytes
        ),
        (PULL_SECONDS, PULL_SECONDS, PULLED_SIZE)
    );
    let registry = r#"{registry="docker.io"}"#;
    assert_eq!(
        metric(
            &first,
            &format!("prefetch_controller_pull_duration_seconds_count{registry}")
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &first,
            &format!("prefetch_controller_pulled_bytes_total{registry}")
        )
        .await,
        3.0 * PULLED_SIZE as f64
    );

    // A rollout's two pods start, one warm and one cold; a pod of an unselected Deployment
    // starts cold and is nobody's.
    let pods = create_replica_set(&client, &s.ns, "nginx", 2)
        .await
        .unwrap();
    create_replica_set_object(&client, &s.ns, "nginx", &pods)
        .await
        .unwrap();
    let other: Deployment = serde_json::from_value(nginx_deployment(
        &s.ns,
        "other",
        json!({"app": "other"}),
        &[IMAGE],
    ))
    .unwrap();
    s.deployments
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    let other_pods = create_replica_set(&client, &s.ns, "other", 1)
        .await
        .unwrap();
    create_replica_set_object(&client, &s.ns, "other", &other_pods)
        .await
        .unwrap();
    let container = Some("spec.containers{nginx}");
    emit_pulled(
        &client,
        &pods[0],
        container,
        "kind-worker",
        &present_message(IMAGE),
    )
    .await
    .unwrap();
    let cold = pulled_message(IMAGE, 62.5, 5_000);
    emit_pulled(&client, &pods[1], container, "kind-worker2", &cold)
        .await
        .unwrap();
    emit_pulled(&client, &other_pods[0], container, "kind-worker", &cold)
        .await
        .unwrap();

    let starts = wait_for_starts(&s, 1, 1).await;
    let last = starts.last_cold.expect("the cold start is named");
    assert_eq!(
        (
            last.pod,
            last.node.as_str(),
            last.image.as_str(),
            last.seconds
        ),
        (pods[1].name_any(), "kind-worker2", IMAGE, 62.5)
    );
    assert_eq!(starts.warm_percent_last_hour, Some(50));
    let labels = format!(r#"{{prefetch="prefetch-sample",namespace="{}""#, s.ns);
    eventually(
        Duration::from_secs(10),
        "the metrics count both starts",
        || async {
            let text = first.metrics().await.unwrap_or_default();
            metric_value(
                &text,
                &format!(r#"prefetch_controller_workload_starts_total{labels},result="warm"}}"#),
            ) == 1.0
                && metric_value(
                    &text,
                    &format!(
                        r#"prefetch_controller_workload_starts_total{labels},result="cold"}}"#
                    ),
                ) == 1.0
        },
    )
    .await;
    assert_eq!(
        metric(
            &first,
            &format!("prefetch_controller_pull_seconds_saved_total{labels}}}")
        )
        .await,
        PULL_SECONDS,
        "the warm start saved the median pull time measured for its image"
    );
    assert_eq!(
        metric(
            &first,
            &format!("prefetch_controller_cold_start_wait_seconds_sum{labels}}}")
        )
        .await,
        62.5
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &s.ns);
    let cold_start = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("ColdStart"))
        .expect("a ColdStart Event on the Prefetch");
    assert_eq!(cold_start.type_.as_deref(), Some("Warning"));
    let note = cold_start.note.unwrap_or_default();
    assert!(
        note.contains(&pods[1].name_any()) && note.contains("kind-worker2") && note.contains(IMAGE),
        "{note}"
    );

    // A container's restart folds into its Event (a higher count): not a start of its own.
    let core_events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), &s.ns);
    let warm_event = core_events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.involved_object.name.as_deref() == Some(pods[0].name_any().as_str()))
        .unwrap();
    core_events
        .patch(
            &warm_event.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"count": 2})),
        )
        .await
        .unwrap();

    // A new leader takes the counts over from the status and counts none of the relisted
    // Events again; a later start counts.
    first.process.kill().await.unwrap();
    let second = controller(&s, &[], "second").await;
    until_phase(&s, Phase::Succeeded).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    emit_pulled(
        &client,
        &pods[0],
        Some("spec.initContainers{init}"),
        "kind-worker",
        &present_message("busybox:1.36"),
    )
    .await
    .unwrap();
    let starts = wait_for_starts(&s, 2, 1).await;
    assert_eq!(starts.cold, 1, "nothing counted twice");
    let status = status_of(&s).await.unwrap();
    assert_eq!(
        status
            .pulls
            .get(NORMALIZED)
            .map(|p| (p.median_seconds, p.nodes)),
        Some((PULL_SECONDS, 3)),
        "the new leader keeps the figures of pulls it could not measure again"
    );
    assert!(
        metric_value(
            &second.metrics().await.unwrap(),
            &format!(r#"prefetch_controller_workload_starts_total{labels},result="cold"}}"#)
        ) == 0.0,
        "the relisted cold start was counted by the first process"
    );
}
