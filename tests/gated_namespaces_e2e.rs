//! Admission that unselected pods never pay for (design: docs/src/design.md#warm-rollouts): the
//! real controller keeps the gated-rollouts label on exactly the namespaces holding a Prefetch
//! with `gate_rollouts`, and the pod hook's namespaceSelector (the install's, evaluated by the
//! test API server as kube-apiserver does) sends the real webhook only those namespaces' pods.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use prefetch_common::Prefetch;
use prefetch_common::annotations::{GATED_NAMESPACE_LABEL, GATED_NAMESPACE_VALUE};
use prefetch_tests::rollout::{DEPLOYMENT, GateRig, OLD_IMAGE, PREFETCH, RigOptions};
use prefetch_tests::scenario::{CONTROLLER_TOKEN, namespace_labelled, until_namespace_labelled};
use serde_json::json;

/// Pod reviews the webhook answered, whatever their result.
async fn pod_reviews(rig: &GateRig) -> f64 {
    let mut total = 0.0;
    for result in ["gated", "passed", "errored"] {
        total += rig
            .webhook
            .metric(&format!(
                "prefetch_webhook_pod_gate_total{{result=\"{result}\"}}"
            ))
            .await
            .unwrap();
    }
    total
}

async fn set_gating(rig: &GateRig, gate: bool) {
    rig.prefetches()
        .patch(
            PREFETCH,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gate_rollouts": gate}})),
        )
        .await
        .unwrap();
}

/// A namespace of its own beside the rig's, with `labels`, the rig's Deployment and a Prefetch
/// selecting it that does not gate.
async fn neighbour(rig: &GateRig, name: &str, labels: serde_json::Value) {
    let client = rig.client();
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let deployment = prefetch_tests::fixtures::nginx_deployment(
        name,
        DEPLOYMENT,
        json!({"app": "nginx"}),
        &[OLD_IMAGE],
    );
    Api::<Deployment>::namespaced(client.clone(), name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment).unwrap(),
        )
        .await
        .unwrap();
    let prefetch = prefetch_tests::fixtures::sample_prefetch(name);
    Api::<Prefetch>::namespaced(client, name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(prefetch).unwrap(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_follows_gating_and_only_labelled_namespaces_reach_the_pod_hook() {
    let options = RigOptions {
        gate: false,
        replicas: 2,
        ..Default::default()
    };
    let Some(rig) = GateRig::start("gated-namespaces", options).await.unwrap() else {
        return;
    };
    let client = rig.client();
    let ns = rig.namespace().to_string();
    let api = rig.cluster.api.as_ref().unwrap();
    // A neighbour whose Prefetch does not gate, and one labelled by hand with none that gates.
    let other = format!("{ns}-other");
    neighbour(&rig, &other, json!({})).await;
    let by_hand = format!("{ns}-by-hand");
    neighbour(
        &rig,
        &by_hand,
        json!({GATED_NAMESPACE_LABEL: GATED_NAMESPACE_VALUE}),
    )
    .await;
    assert!(!namespace_labelled(&client, &ns).await.unwrap());

    // Unlabelled: the pods of workloads no gating Prefetch selects never reach the webhook.
    let before = pod_reviews(&rig).await;
    rig.create_pods().await.unwrap();
    prefetch_tests::rollout::create_replica_set(&client, &other, DEPLOYMENT, 2)
        .await
        .unwrap();
    assert_eq!(pod_reviews(&rig).await, before, "no pod review sent");

    // Gating on: the controller labels the namespace, and its pods reach the pod hook.
    set_gating(&rig, true).await;
    until_namespace_labelled(&client, &ns, true).await.unwrap();
    let owners = api.managed_fields("", "v1", "namespaces", "", &ns);
    let ours = owners
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "prefetch-controller")
        .expect("the controller manages a field of the namespace");
    assert_eq!(ours["operation"], "Apply");
    let fields = ours["fieldsV1"].as_object().unwrap();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["f:metadata"]);
    let labels: Vec<&String> = ours["fieldsV1"]["f:metadata"]["f:labels"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != ".")
        .collect();
    assert_eq!(
        labels,
        [&format!("f:{GATED_NAMESPACE_LABEL}")],
        "the controller owns its label and nothing else"
    );
    let before = pod_reviews(&rig).await;
    rig.create_pods().await.unwrap();
    assert_eq!(pod_reviews(&rig).await, before + 2.0, "both pods reviewed");

    // Gating off: the label goes, and the namespace's other labels stay.
    set_gating(&rig, false).await;
    until_namespace_labelled(&client, &ns, false).await.unwrap();
    let stored = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    assert_eq!(
        stored
            .metadata
            .labels
            .unwrap_or_default()
            .get("kubernetes.io/metadata.name"),
        Some(&ns)
    );
    let before = pod_reviews(&rig).await;
    rig.create_pods().await.unwrap();
    assert_eq!(pod_reviews(&rig).await, before);

    // On again, then the Prefetch deleted: the label goes with it.
    set_gating(&rig, true).await;
    until_namespace_labelled(&client, &ns, true).await.unwrap();
    rig.prefetches()
        .delete(PREFETCH, &DeleteParams::default())
        .await
        .unwrap();
    until_namespace_labelled(&client, &ns, false).await.unwrap();

    // The neighbour without a gating Prefetch was never labelled; the one labelled by hand
    // keeps the label another manager owns, and the controller tried to remove it once.
    assert!(!namespace_labelled(&client, &other).await.unwrap());
    assert!(namespace_labelled(&client, &by_hand).await.unwrap());
    let controller = rig.controllers[0].as_ref().unwrap();
    let kept = controller
        .process
        .logs()
        .iter()
        .filter(|l| l.contains("keeps the gated-rollouts label") && l.contains(&by_hand))
        .count();
    assert_eq!(kept, 1, "one unlabel of the namespace labelled by hand");

    // RBAC: what the namespace loop calls is what the install grants.
    let called = prefetch_tests::rbac::called(api, CONTROLLER_TOKEN);
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/controller/rbac.yaml");
    let granted = prefetch_tests::rbac::granted(&manifest).unwrap();
    for verb in ["get", "list", "watch", "patch"] {
        let access = (String::new(), "namespaces".to_string(), verb.to_string());
        assert!(called.contains(&access), "{verb} namespaces called");
        assert!(granted.contains(&access), "{verb} namespaces granted");
    }
}
