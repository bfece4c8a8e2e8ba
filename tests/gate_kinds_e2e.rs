//! Warm rollouts of StatefulSets, DaemonSets and CronJobs end to end (design:
//! docs/src/design.md#every-workload-and-every-image): the real webhook signals the workload's
//! change and gates its new pods, the real controller prefetches and lifts the gate; the test plays
//! the StatefulSet, DaemonSet and CronJob controllers (pods made through admission, owned and
//! labelled as theirs are), the scheduler and the kubelets (`prefetch_tests::rollout`).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use prefetch_common::annotations::{GATED_BY_LABEL, PREFETCH_IMAGES, SCHEDULING_GATE};
use prefetch_tests::binaries::metric_value;
use prefetch_tests::kubelet::Pull;
use prefetch_tests::rollout::{GateRig, Owner, RigOptions, Start, create_owned_pods};
use serde_json::{Value, json};

const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

fn normalized(image: &str) -> String {
    format!("docker.io/library/{image}")
}

fn gated(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.scheduling_gates.iter().flatten())
        .any(|g| g.name == SCHEDULING_GATE)
}

/// A pod template of one container running `image`, labelled `app: nginx` (the rig's
/// Prefetch selects that label).
fn template(image: &str) -> Value {
    json!({"metadata": {"labels": {"app": "nginx"}},
           "spec": {"containers": [{"name": "main", "image": image}]}})
}

/// Every worker pulls each of `images` in `pull` (prefetch pods; the workload pods' pull
/// time is the rig's).
fn pulls(rig: &GateRig, images: &[&str], pull: Duration) {
    for worker in WORKERS {
        for image in images {
            rig.rules
                .set_image(worker, &normalized(image), Pull::SucceedAfter(pull));
        }
    }
}

/// No start cold, every pod gated by the webhook, and every release after `image` was on
/// every worker (the simulation's own timeline).
fn assert_warm_after_everywhere(rig: &GateRig, what: &str, pods: &[Pod], image: &str) {
    let starts: Vec<Start> = rig.starts_of(pods);
    assert_eq!(starts.len(), pods.len(), "{what}: every pod started");
    let cold: Vec<_> = starts.iter().filter(|s| s.cold()).collect();
    assert!(cold.is_empty(), "{what}: started cold: {cold:#?}");
    assert!(starts.iter().all(|s| s.was_gated), "{what}: all gated");
    let workers: Vec<String> = WORKERS.map(String::from).to_vec();
    let timeline = rig.sim.timeline();
    let everywhere = timeline
        .pulled_everywhere(&workers, &normalized(image))
        .unwrap_or_else(|| panic!("{what}: {image} never on every worker"));
    for pod in pods {
        let name = pod.name_any();
        let released = timeline.released[&name];
        assert!(
            released >= everywhere,
            "{what}: {name} released at {released:?}, before {image} was on every worker ({everywhere:?})"
        );
    }
}

/// The rollout signal's images on `object`'s annotations.
fn signalled(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Vec<String> {
    annotations
        .and_then(|a| a.get(PREFETCH_IMAGES))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_default()
}

fn owner_of(api_version: &str, kind: &str, meta: &kube::api::ObjectMeta) -> Owner {
    Owner {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap(),
        uid: meta.uid.clone().unwrap(),
    }
}

/// A StatefulSet's CREATE and its `set image` are signalled; the pods the StatefulSet
/// controller makes for each revision are gated until the revision's image is on every node,
/// and none starts cold. A pod of the older revision, made after the change, is not gated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_rollout_is_gated_and_released_warm() {
    let Some(rig) = GateRig::start("gate-statefulset", RigOptions::default())
        .await
        .unwrap()
    else {
        return;
    };
    let (old, new) = ("redis:7.0", "redis:7.2");
    pulls(&rig, &[old, new], rig.options.pull_time);
    rig.until_leader_seen().await.unwrap();
    let api: Api<StatefulSet> = Api::namespaced(rig.client(), rig.namespace());
    let db: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "labels": {"app": "nginx"}},
        "spec": {"serviceName": "db", "replicas": 3,
                 "selector": {"matchLabels": {"app": "nginx"}}, "template": template(old)}}))
    .unwrap();
    let db = api.create(&PostParams::default(), &db).await.unwrap();
    assert_eq!(
        signalled(db.metadata.annotations.as_ref()),
        [normalized(old)]
    );
    let owner = owner_of("apps/v1", "StatefulSet", &db.metadata);
    let names: Vec<(String, Option<String>)> = (0..3).map(|i| (format!("db-{i}"), None)).collect();
    let revision = |hash: &str| json!({"controller-revision-hash": format!("db-{hash}")});
    let first = create_owned_pods(&rig, &owner, &template(old), &names, revision("a"))
        .await
        .unwrap();
    assert!(first.iter().all(gated), "the CREATE's pods are gated");
    rig.until_running(&first, Duration::from_secs(30))
        .await
        .unwrap();
    assert_warm_after_everywhere(&rig, "create", &first, old);

    // `kubectl set image`: the controller replaces the pods with the new revision's.
    let changed = api
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template(new)}})),
        )
        .await
        .unwrap();
    assert_eq!(
        signalled(changed.metadata.annotations.as_ref()),
        [normalized(new)]
    );
    for pod in &first {
        rig.pods()
            .delete(&pod.name_any(), &Default::default())
            .await
            .unwrap();
    }
    let renamed: Vec<(String, Option<String>)> =
        (0..3).map(|i| (format!("db-{i}-v2"), None)).collect();
    let second = create_owned_pods(&rig, &owner, &template(new), &renamed, revision("b"))
        .await
        .unwrap();
    assert!(
        second.iter().all(gated),
        "the new revision's pods are gated"
    );
    // A partitioned pod of the older revision, made after the change: its images are not the
    // template's, so it is not the rollout's and passes.
    let older = create_owned_pods(
        &rig,
        &owner,
        &template(old),
        &[("db-old".into(), None)],
        revision("a"),
    )
    .await
    .unwrap();
    assert!(!gated(&older[0]), "an older revision's pod is never gated");
    rig.until_running(&second, Duration::from_secs(30))
        .await
        .unwrap();
    assert_warm_after_everywhere(&rig, "set image", &second, new);
    let status = rig
        .prefetches()
        .get("prefetch-sample")
        .await
        .unwrap()
        .status
        .unwrap();
    let record = status.last_rollout.unwrap();
    assert_eq!(record.workload.as_deref(), Some("StatefulSet/db"));
    assert_eq!(record.deployment, "", "not a Deployment's rollout");
    assert_eq!(record.images, [normalized(new)]);
}

/// A DaemonSet's CREATE and its update: each new pod is pinned to its node before it
/// schedules, and is released as soon as its own node holds the image, not when the slowest
/// node does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_pod_is_released_when_its_own_node_holds_the_image() {
    let Some(rig) = GateRig::start("gate-daemonset", RigOptions::default())
        .await
        .unwrap()
    else {
        return;
    };
    let (first, second) = ("fluent-bit:3.1", "fluent-bit:3.2");
    // worker-3 pulls slowly: the other nodes' pods must not wait for it.
    for image in [first, second] {
        for (worker, pull) in [
            ("worker-1", Duration::from_millis(300)),
            ("worker-2", Duration::from_millis(600)),
            ("worker-3", Duration::from_secs(8)),
        ] {
            rig.rules
                .set_image(worker, &normalized(image), Pull::SucceedAfter(pull));
        }
    }
    rig.until_leader_seen().await.unwrap();
    let api: Api<DaemonSet> = Api::namespaced(rig.client(), rig.namespace());
    let agent: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent", "labels": {"app": "nginx"}},
        "spec": {"selector": {"matchLabels": {"app": "nginx"}}, "template": template(first)}}))
    .unwrap();
    let agent = api.create(&PostParams::default(), &agent).await.unwrap();
    assert_eq!(
        signalled(agent.metadata.annotations.as_ref()),
        [normalized(first)]
    );
    let created = daemon_set_pods(&rig, &agent, first, "a").await;
    assert_released_per_node(&rig, "create", &created, first);

    // The update: the DaemonSet controller replaces each node's pod with the new revision's.
    let updated = api
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template(second)}})),
        )
        .await
        .unwrap();
    assert_eq!(
        signalled(updated.metadata.annotations.as_ref()),
        [normalized(second)]
    );
    for pod in &created {
        rig.pods()
            .delete(&pod.name_any(), &Default::default())
            .await
            .unwrap();
    }
    let replaced = daemon_set_pods(&rig, &updated, second, "b").await;
    assert_released_per_node(&rig, "update", &replaced, second);
    let metrics = rig.controllers[0]
        .as_ref()
        .unwrap()
        .metrics()
        .await
        .unwrap();
    assert!(
        metric_value(
            &metrics,
            "prefetch_controller_gate_releases_total{result=\"node_prefetched\"}"
        ) >= 4.0,
        "{metrics}"
    );
}

/// The DaemonSet controller's part: one pod of `image`'s template per worker, pinned to it
/// (`revision` names the pods apart); all gated, and running within 40 s.
async fn daemon_set_pods(rig: &GateRig, set: &DaemonSet, image: &str, revision: &str) -> Vec<Pod> {
    let owner = owner_of("apps/v1", "DaemonSet", &set.metadata);
    let per_node: Vec<(String, Option<String>)> = WORKERS
        .iter()
        .map(|w| (format!("agent-{revision}-{w}"), Some(w.to_string())))
        .collect();
    let pods = create_owned_pods(
        rig,
        &owner,
        &template(image),
        &per_node,
        json!({"controller-revision-hash": format!("agent-{revision}")}),
    )
    .await
    .unwrap();
    assert!(pods.iter().all(gated), "every node's pod is gated");
    rig.until_running(&pods, Duration::from_secs(40))
        .await
        .unwrap();
    pods
}

/// None of `pods` (one per worker, in WORKERS order) started cold; each was released once its
/// own node listed `image`, and the fast nodes' before the slow worker-3 did.
fn assert_released_per_node(rig: &GateRig, what: &str, pods: &[Pod], image: &str) {
    let starts = rig.starts_of(pods);
    let cold: Vec<_> = starts.iter().filter(|s| s.cold()).collect();
    assert!(cold.is_empty(), "{what}: started cold: {cold:#?}");
    let timeline = rig.sim.timeline();
    let listed = |worker: &str| timeline.listed[&(worker.to_string(), normalized(image))];
    let released: Vec<Duration> = pods
        .iter()
        .map(|p| timeline.released[&p.name_any()])
        .collect();
    for (worker, released) in WORKERS.iter().zip(&released) {
        assert!(
            *released >= listed(worker),
            "{what}: {worker}'s pod released at {released:?}, before its node held the image ({:?})",
            listed(worker)
        );
    }
    for fast in &released[..2] {
        assert!(
            *fast < listed("worker-3"),
            "{what}: a fast node's pod waited for the slow node: released at {fast:?}, worker-3 listed at {:?}",
            listed("worker-3")
        );
    }
}

/// A CronJob's job template changes: the change is signalled, and the next run's pod (the
/// CronJob controller's Job `<cronjob>-<minute>`, then the Job controller's pod) is gated until
/// the new image is on every node, then starts warm. A Job made by hand is never gated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cronjob_template_change_gates_its_next_run_until_warm() {
    let Some(rig) = GateRig::start("gate-cronjob", RigOptions::default())
        .await
        .unwrap()
    else {
        return;
    };
    let (old, new) = ("busybox:1.36", "busybox:1.37");
    pulls(&rig, &[old, new], rig.options.pull_time);
    rig.until_leader_seen().await.unwrap();
    let cron_jobs: Api<CronJob> = Api::namespaced(rig.client(), rig.namespace());
    let job_template = |image: &str| {
        let mut pod = template(image);
        pod["spec"]["restartPolicy"] = json!("OnFailure");
        json!({"spec": {"template": pod}})
    };
    let report: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "report", "labels": {"app": "nginx"}},
        "spec": {"schedule": "*/5 * * * *", "jobTemplate": job_template(old)}}))
    .unwrap();
    cron_jobs
        .create(&PostParams::default(), &report)
        .await
        .unwrap();
    // Wait until the CREATE's images are prefetched, so that the change below is the one
    // the next run waits for.
    prefetch_tests::scenario::wait_for_status(
        &rig.prefetches(),
        "prefetch-sample",
        Duration::from_secs(30),
        |s| {
            s.last_rollout
                .as_ref()
                .is_some_and(|r| r.images == [normalized(old)] && r.prefetched_at.is_some())
        },
    )
    .await;
    let changed = cron_jobs
        .patch(
            "report",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"jobTemplate": job_template(new)}})),
        )
        .await
        .unwrap();
    assert_eq!(
        signalled(changed.metadata.annotations.as_ref()),
        [normalized(new)]
    );

    // The next run: the CronJob controller's Job, then the Job controller's pod.
    let jobs: Api<Job> = Api::namespaced(rig.client(), rig.namespace());
    let run = |name: &str, owner: Option<Owner>| {
        let mut job = json!({"metadata": {"name": name, "labels": {"app": "nginx"}},
                             "spec": job_template(new)["spec"].clone()});
        if let Some(owner) = owner {
            job["metadata"]["ownerReferences"] = json!([{"apiVersion": owner.api_version,
                "kind": owner.kind, "name": owner.name, "uid": owner.uid, "controller": true}]);
        }
        serde_json::from_value::<Job>(job).unwrap()
    };
    let cron_owner = owner_of("batch/v1", "CronJob", &changed.metadata);
    let scheduled = jobs
        .create(
            &PostParams::default(),
            &run("report-29431260", Some(cron_owner)),
        )
        .await
        .unwrap();
    // The pod template as the API server labels a Job's (the pod hooks select on it).
    let job_pod_template = |job: &str| {
        let mut template = job_template(new)["spec"]["template"].clone();
        template["metadata"]["labels"]["job-name"] = json!(job);
        template["metadata"]["labels"]["batch.kubernetes.io/job-name"] = json!(job);
        template
    };
    let pods = create_owned_pods(
        &rig,
        &owner_of("batch/v1", "Job", &scheduled.metadata),
        &job_pod_template("report-29431260"),
        &[("report-29431260-x7k2p".into(), None)],
        json!({}),
    )
    .await
    .unwrap();
    assert!(gated(&pods[0]), "the next run's pod is gated");
    assert_eq!(
        pods[0].labels().get(GATED_BY_LABEL).map(String::as_str),
        Some("prefetch-sample")
    );
    // A Job made by hand, with the same template: no CronJob's run, nothing to wait for.
    let by_hand = jobs
        .create(&PostParams::default(), &run("migrate", None))
        .await
        .unwrap();
    let manual = create_owned_pods(
        &rig,
        &owner_of("batch/v1", "Job", &by_hand.metadata),
        &job_pod_template("migrate"),
        &[("migrate-q9f4z".into(), None)],
        json!({}),
    )
    .await
    .unwrap();
    assert!(!gated(&manual[0]), "a Job made by hand is not gated");
    rig.until_running(&pods, Duration::from_secs(30))
        .await
        .unwrap();
    assert_warm_after_everywhere(&rig, "next run", &pods, new);
    let sources: BTreeSet<String> = rig
        .prefetches()
        .get("prefetch-sample")
        .await
        .unwrap()
        .status
        .unwrap()
        .last_rollout
        .into_iter()
        .filter_map(|r| r.workload)
        .collect();
    assert_eq!(sources, ["CronJob/report".to_string()].into());

    // Another workload's rollout starts and pulls slowly: the CronJob's signal is done, so its
    // next run is not held for an image it does not use.
    let slow = "redis:9.0";
    pulls(&rig, &[slow], Duration::from_secs(8));
    let sets: Api<StatefulSet> = Api::namespaced(rig.client(), rig.namespace());
    let db: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "db", "labels": {"app": "nginx"}},
        "spec": {"serviceName": "db", "replicas": 1,
                 "selector": {"matchLabels": {"app": "nginx"}}, "template": template(slow)}}))
    .unwrap();
    sets.create(&PostParams::default(), &db).await.unwrap();
    let pulling = prefetch_tests::scenario::wait_for_status(
        &rig.prefetches(),
        "prefetch-sample",
        Duration::from_secs(10),
        |s| {
            s.last_rollout
                .as_ref()
                .is_some_and(|r| r.workload.as_deref() == Some("StatefulSet/db"))
        },
    )
    .await;
    assert!(
        pulling.last_rollout.unwrap().prefetched_at.is_none(),
        "the StatefulSet's images are still pulling"
    );
    // Let the webhook's Prefetch cache catch up with that status (whatever it has seen, the
    // run must pass; only a stale cache could let a regression pass unseen).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = jobs
        .create(
            &PostParams::default(),
            &run(
                "report-29431265",
                Some(owner_of("batch/v1", "CronJob", &changed.metadata)),
            ),
        )
        .await
        .unwrap();
    let later = create_owned_pods(
        &rig,
        &owner_of("batch/v1", "Job", &next.metadata),
        &job_template(new)["spec"]["template"],
        &[("report-29431265-b2m8d".into(), None)],
        json!({}),
    )
    .await
    .unwrap();
    assert!(
        !gated(&later[0]),
        "the CronJob's signal is prefetched: its run is not held for the StatefulSet's image"
    );
}

/// Two workloads roll out together (as one `helm upgrade` does): the first's pods are released
/// as soon as its own image is on every node, not when the round the two share ends with the
/// second's slow image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_not_held_for_another_workloads_slower_images() {
    let Some(rig) = GateRig::start("gate-together", RigOptions::default())
        .await
        .unwrap()
    else {
        return;
    };
    let (quick, slow) = ("redis:7.4", "postgres:17");
    pulls(&rig, &[quick], Duration::from_millis(500));
    pulls(&rig, &[slow], Duration::from_secs(8));
    rig.until_leader_seen().await.unwrap();
    // The Deployment's rollout keeps every node's prefetch pod busy for a moment, so both
    // StatefulSets' images go into the next pods together: the quick image is done while the
    // same pods still pull the slow one.
    rig.change_image().await.unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(rig.client(), rig.namespace());
    let set = |name: &str, image: &str| -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "nginx"}},
            "spec": {"serviceName": name, "replicas": 3,
                     "selector": {"matchLabels": {"app": "nginx"}}, "template": template(image)}}))
        .unwrap()
    };
    let cache = sets
        .create(&PostParams::default(), &set("cache", quick))
        .await
        .unwrap();
    sets.create(&PostParams::default(), &set("db", slow))
        .await
        .unwrap();
    let names: Vec<(String, Option<String>)> =
        (0..3).map(|i| (format!("cache-{i}"), None)).collect();
    let pods = create_owned_pods(
        &rig,
        &owner_of("apps/v1", "StatefulSet", &cache.metadata),
        &template(quick),
        &names,
        json!({"controller-revision-hash": "cache-a"}),
    )
    .await
    .unwrap();
    assert!(
        pods.iter().all(gated),
        "the quick workload's pods are gated"
    );
    rig.until_running(&pods, Duration::from_secs(30))
        .await
        .unwrap();
    assert_warm_after_everywhere(&rig, "the quick workload", &pods, quick);
    let workers: Vec<String> = WORKERS.map(String::from).to_vec();
    let timeline = rig.sim.timeline();
    let slow_everywhere = timeline.pulled_everywhere(&workers, &normalized(slow));
    for pod in &pods {
        let released = timeline.released[&pod.name_any()];
        assert!(
            slow_everywhere.is_none_or(|slow| released < slow),
            "{} waited for the other workload's image: released at {released:?}, {slow} everywhere at {slow_everywhere:?}",
            pod.name_any()
        );
    }
}
