use super::*;
use crate::plan::{AccountSecrets, plan_images};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

const NGINX: &str = "docker.io/library/nginx:1.7.9";
const WARMING: &str = crate::taint::DEFAULT_WARMUP_TAINT;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn prefetch(spec: Value, status: Option<PrefetchStatus>, generation: i64) -> Prefetch {
    let mut base =
        json!({"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"});
    for (k, v) in spec.as_object().unwrap() {
        base[k] = v.clone();
    }
    let mut p = Prefetch::new("prefetch-sample", serde_json::from_value(base).unwrap());
    p.metadata.namespace = Some("default".into());
    p.metadata.uid = Some("uid-1".into());
    p.metadata.generation = Some(generation);
    p.status = status;
    p
}

fn deployment(images: &[&str]) -> Deployment {
    let containers: Vec<Value> = images
        .iter()
        .map(|i| json!({"name": "c", "image": i}))
        .collect();
    serde_json::from_value(
        json!({"metadata": {"name": "nginx", "namespace": "default", "labels": {"app": "nginx"}},
            "spec": {"selector": {}, "template": {"spec": {"containers": containers}}}}),
    )
    .unwrap()
}

fn node(name: &str, images: &[&str]) -> Node {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "images": [{"names": images}]}}))
        .unwrap()
}

fn walkthrough(present_on_worker: &[&str]) -> Vec<Node> {
    vec![
        node("kind-control-plane", &[]),
        node("kind-worker", present_on_worker),
        node("kind-worker2", &[]),
        node("kind-worker3", &[]),
    ]
}

/// Plays the kubelet: sets the pod's container statuses, and gives it a creation time.
fn kubelet(mut pod: Pod, created: Timestamp, states: &[Value]) -> Pod {
    pod.metadata.creation_timestamp = Some(Time(created));
    let statuses: Vec<Value> = states
            .iter()
            .enumerate()
            .map(|(i, state)| json!({"name": format!("pull-{i}"), "image": "x", "imageID": format!("sha256:{i}"), "ready": false, "restartCount": 0, "state": state}))
            .collect();
    let all_done = states.iter().all(|s| s.get("terminated").is_some());
    pod.status = Some(serde_json::from_value(json!({"phase": if all_done { "Succeeded" } else { "Pending" }, "containerStatuses": statuses})).unwrap());
    pod
}

/// The created pods as the kubelet reports them, every container in `state`.
fn all_in(created: &[Pod], at: Timestamp, state: Value) -> Vec<Pod> {
    created
        .iter()
        .map(|p| kubelet(p.clone(), at, std::slice::from_ref(&state)))
        .collect()
}

/// The kubelet pulled every image of every pod in `created`.
fn all_pulled(created: &[Pod], at: Timestamp) -> Vec<Pod> {
    all_in(created, at, pulled())
}

fn all_creating(created: &[Pod], at: Timestamp) -> Vec<Pod> {
    all_in(created, at, creating())
}

fn pulled() -> Value {
    json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
}

fn creating() -> Value {
    json!({"waiting": {"reason": "ContainerCreating"}})
}

struct World {
    prefetch: Prefetch,
    deployments: Vec<Deployment>,
    nodes: Vec<Node>,
    busy: BTreeSet<String>,
    rollout: Option<RolloutSignal>,
    warming_open: BTreeSet<String>,
    allowance: Allowance,
}

impl World {
    /// The walkthrough after its first round: started at 10:00:00, every pod pulled,
    /// the status written at 10:00:10.
    fn after_first_round() -> Self {
        let mut world = Self::walkthrough();
        let t0 = t("2026-11-22T10:00:00Z");
        let first = world.step(&[], None, t0);
        world.prefetch.status = Some(first.status.clone());
        let pods: Vec<Pod> = all_pulled(&first.create, t0);
        let done = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:10Z"));
        world.prefetch.status = Some(done.status);
        world
    }

    fn walkthrough() -> Self {
        World {
            prefetch: prefetch(json!({}), None, 1),
            deployments: vec![deployment(&["nginx:1.7.9"])],
            nodes: walkthrough(&[]),
            busy: BTreeSet::new(),
            rollout: None,
            warming_open: BTreeSet::new(),
            allowance: Allowance::default(),
        }
    }

    fn plan(&self) -> ImagePlan {
        plan_images(
            &self.prefetch,
            &self.deployments,
            &AccountSecrets::new(),
            &self.nodes,
            Some(WARMING),
        )
    }

    fn input<'a>(
        &'a self,
        plan: &'a ImagePlan,
        pods: &'a [Pod],
        memory: Option<&'a RoundMemory>,
        now: Timestamp,
    ) -> RoundInput<'a> {
        RoundInput {
            prefetch: &self.prefetch,
            plan,
            pods,
            busy_nodes: &self.busy,
            rollout: self.rollout.as_ref(),
            memory,
            now,
            noop_image: "kube-prefetch/controller:dev",
            warmup_taint: Some(WARMING),
            warming_open: &self.warming_open,
            allowance: self.allowance.clone(),
        }
    }

    fn step(&self, pods: &[Pod], memory: Option<&RoundMemory>, now: Timestamp) -> RoundDecision {
        let plan = self.plan();
        reconcile_round(&self.input(&plan, pods, memory, now))
    }
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

fn condition<'a>(status: &'a PrefetchStatus, type_: &str) -> &'a Condition {
    status.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

/// (total, ready, failed)
fn counts(status: &PrefetchStatus) -> (i64, i64, i64) {
    (status.total, status.ready, status.failed)
}

#[test]
fn walkthrough_round_runs_to_success() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    assert_eq!(
        names(&first.create),
        [
            "prefetch-prefetch-sample-kind-worker",
            "prefetch-prefetch-sample-kind-worker2",
            "prefetch-prefetch-sample-kind-worker3"
        ]
    );
    assert_eq!(first.status.phase, Phase::Running);
    assert_eq!(counts(&first.status), (3, 0, 0));
    assert_eq!(
        first.status.nodes,
        ["kind-worker", "kind-worker2", "kind-worker3"]
    );
    assert_eq!(first.status.last_round_start, Some(Time(t0)));
    assert_eq!(first.events[0].reason, "RoundStarted");
    assert_eq!(condition(&first.status, "Progressing").status, "True");
    assert_eq!(
        condition(&first.status, "Ready").reason,
        "FirstRoundRunning"
    );
    assert_eq!(first.in_flight, 3);

    // The kubelet pulls; the controller records, deletes the pods and ends the round.
    world.prefetch.status = Some(first.status.clone());
    let t1 = t("2026-11-22T10:00:20Z");
    let pods: Vec<Pod> = all_pulled(&first.create, t0);
    let second = world.step(&pods, first.memory.as_ref(), t1);
    assert!(second.create.is_empty());
    assert_eq!(second.delete, names(&first.create));
    assert_eq!(second.status.phase, Phase::Succeeded);
    assert_eq!(counts(&second.status), (3, 3, 0));
    assert_eq!(
        second.status.digests.get(NGINX).map(String::as_str),
        Some("sha256:0")
    );
    assert_eq!(second.status.last_round_end, Some(Time(t1)));
    assert_eq!(
        second.status.next_round,
        Some(Time(t("2026-11-22T10:01:00Z")))
    );
    assert_eq!(second.requeue_after, Duration::from_secs(40));
    assert!(second.memory.is_none());
    assert_eq!(second.newly_pulled, 3);
    assert_eq!(second.events.last().unwrap().reason, "RoundSucceeded");
    assert_eq!(condition(&second.status, "Ready").status, "True");
    assert_eq!(condition(&second.status, "Progressing").status, "False");
    assert_eq!(condition(&second.status, "Degraded").status, "False");

    // Idle until next_round: nothing to do, and the same status (no write).
    world.prefetch.status = Some(second.status.clone());
    let idle = world.step(&[], None, t("2026-11-22T10:00:30Z"));
    assert!(idle.create.is_empty() && idle.delete.is_empty() && idle.events.is_empty());
    assert_eq!(idle.status, second.status);
    assert_eq!(idle.requeue_after, Duration::from_secs(30));

    // At next_round a new round starts; the nodes now list the image, so no pods.
    world.nodes = vec![
        node("kind-control-plane", &[]),
        node("kind-worker", &[NGINX]),
        node("kind-worker2", &[NGINX]),
        node("kind-worker3", &["nginx:1.7.9"]),
    ];
    let next = world.step(&[], None, t("2026-11-22T10:01:00Z"));
    assert!(next.create.is_empty());
    assert_eq!(next.status.phase, Phase::Succeeded);
    assert_eq!(next.status.ready, 3);
    assert_eq!(
        next.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["RoundStarted", "RoundSucceeded"]
    );
}

#[test]
fn max_parallel_bounds_pods_in_flight() {
    let mut world = World::walkthrough();
    world.prefetch = prefetch(json!({"max_parallel": 2}), None, 1);
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    assert_eq!(first.create.len(), 2);
    world.prefetch.status = Some(first.status.clone());
    // Still running: no more pods.
    let running: Vec<Pod> = all_creating(&first.create, t0);
    let again = world.step(&running, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert!(again.create.is_empty() && again.delete.is_empty());
    assert_eq!(again.in_flight, 2);
    // One finishes: the third node gets its pod in the same reconcile.
    let mut pods = running.clone();
    pods[0] = kubelet(first.create[0].clone(), t0, &[pulled()]);
    let third = world.step(&pods, again.memory.as_ref(), t("2026-11-22T10:00:10Z"));
    assert_eq!(third.delete, [names(&first.create)[0].clone()]);
    assert_eq!(
        names(&third.create),
        ["prefetch-prefetch-sample-kind-worker3"]
    );
    assert_eq!(third.status.phase, Phase::Running);
}

#[test]
fn nodes_busy_with_another_prefetch_wait() {
    let mut world = World::walkthrough();
    world.busy = ["kind-worker2".to_string()].into();
    let first = world.step(&[], None, t("2026-11-22T10:00:00Z"));
    assert_eq!(
        names(&first.create),
        [
            "prefetch-prefetch-sample-kind-worker",
            "prefetch-prefetch-sample-kind-worker3"
        ]
    );
    world.prefetch.status = Some(first.status.clone());
    let pods: Vec<Pod> = all_pulled(&first.create, t("2026-11-22T10:00:00Z"));
    let second = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert_eq!(
        second.status.phase,
        Phase::Running,
        "kind-worker2 still waits for its turn"
    );
    assert_eq!(second.requeue_after, ROUND_POLL);
    world.busy.clear();
    world.prefetch.status = Some(second.status.clone());
    let third = world.step(&[], second.memory.as_ref(), t("2026-11-22T10:00:15Z"));
    assert_eq!(
        names(&third.create),
        ["prefetch-prefetch-sample-kind-worker2"]
    );
}

#[test]
fn images_already_on_a_node_need_no_pod() {
    let mut world = World::walkthrough();
    world.nodes = walkthrough(&["docker.io/library/nginx:1.7.9"]);
    let first = world.step(&[], None, t("2026-11-22T10:00:00Z"));
    assert_eq!(
        names(&first.create),
        [
            "prefetch-prefetch-sample-kind-worker2",
            "prefetch-prefetch-sample-kind-worker3"
        ]
    );
    assert_eq!((first.status.total, first.status.ready), (3, 1));
}

#[test]
fn a_pull_failure_fails_the_round_but_not_the_other_nodes() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    world.prefetch.status = Some(first.status.clone());
    let mut pods: Vec<Pod> = all_pulled(&first.create, t0);
    pods[1] = kubelet(
        first.create[1].clone(),
        t0,
        &[json!({"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}})],
    );
    let second = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:30Z"));
    assert_eq!(second.delete.len(), 3, "the failed pod is finished too");
    assert_eq!(second.status.phase, Phase::Failed);
    assert_eq!((second.status.ready, second.status.failed), (2, 1));
    assert_eq!(
        second.status.failures,
        [PullFailure {
            node: "kind-worker2".into(),
            image: NGINX.into(),
            reason: "ErrImagePull".into(),
            message: "manifest unknown".into()
        }]
    );
    assert_eq!(second.newly_failed, ["ErrImagePull"]);
    let event = second.events.last().unwrap();
    assert_eq!((event.type_, event.reason), ("Warning", "RoundFailed"));
    assert!(
        event
            .message
            .contains("docker.io/library/nginx:1.7.9 on kind-worker2 (ErrImagePull)"),
        "{}",
        event.message
    );
    assert_eq!(condition(&second.status, "Degraded").status, "True");
    assert_eq!(condition(&second.status, "Ready").status, "False");
}

#[test]
fn a_rollout_signal_starts_a_round_at_once_and_reports_its_latency() {
    let mut world = World::after_first_round();

    // Ten seconds later, long before next_round, the Deployment rolls out nginx:1.25.
    world.deployments = vec![deployment(&["nginx:1.25"])];
    world.nodes = walkthrough(&[])
        .into_iter()
        .map(|mut n| {
            n.status.as_mut().unwrap().images = None;
            n
        })
        .collect();
    world.rollout = Some(RolloutSignal {
        workload: nginx(),
        images: vec!["docker.io/library/nginx:1.25".into()],
        requested_at: t("2026-11-22T10:00:19Z"),
        unrecorded_images: BTreeSet::new(),
    });
    let t2 = t("2026-11-22T10:00:20Z");
    let rollout = world.step(&[], None, t2);
    assert_eq!(rollout.create.len(), 3, "no waiting for retry_after");
    assert_eq!(
        rollout.create[0].spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("docker.io/library/nginx:1.25")
    );
    let record = rollout.status.last_rollout.clone().unwrap();
    assert_eq!(
        (record.deployment.as_str(), record.observed_at),
        ("nginx", Some(MicroTime(t2)))
    );
    assert_eq!(
        rollout.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["RolloutSignal", "RoundStarted"]
    );

    world.prefetch.status = Some(rollout.status.clone());
    let pods: Vec<Pod> = all_pulled(&rollout.create, t2);
    let finished = world.step(&pods, rollout.memory.as_ref(), t("2026-11-22T10:00:31Z"));
    assert_eq!(finished.rollout_latency, Some(Duration::from_secs(12)));
    assert_eq!(finished.status.phase, Phase::Succeeded);
    assert_eq!(
        rollout.status.last_rollout.as_ref().unwrap().prefetched_at,
        None,
        "not prefetched while pulling"
    );
    assert_eq!(
        finished.status.last_rollout.as_ref().unwrap().prefetched_at,
        Some(MicroTime(t("2026-11-22T10:00:31Z")))
    );

    // A controller restarted mid-rollout still records when it is prefetched.
    world.prefetch.status = Some(rollout.status.clone());
    let resumed = world.step(&pods, None, t("2026-11-22T10:00:32Z"));
    assert_eq!(
        resumed.status.last_rollout.as_ref().unwrap().prefetched_at,
        Some(MicroTime(t("2026-11-22T10:00:32Z")))
    );

    // The same signal again starts nothing.
    world.prefetch.status = Some(finished.status.clone());
    let quiet = world.step(&[], None, t("2026-11-22T10:00:35Z"));
    assert!(quiet.create.is_empty() && quiet.events.is_empty());
}

/// A rollout of nginx:1.25 signalled at `at`, for `World::walkthrough`.
fn nginx_rollout(world: &mut World, image: &str, at: &str) {
    world.deployments = vec![deployment(&[image])];
    world.rollout = Some(RolloutSignal {
        workload: nginx(),
        images: vec![format!("docker.io/library/{image}")],
        requested_at: t(at),
        unrecorded_images: BTreeSet::new(),
    });
}

#[test]
fn every_rollout_of_a_deployment_clears_the_last_ones_prefetched_at() {
    let mut world = World::walkthrough();
    world.nodes = walkthrough(&[]);
    nginx_rollout(&mut world, "nginx:1.25", "2026-11-22T10:00:00.100000Z");
    let first = world.step(&[], None, t("2026-11-22T10:00:01Z"));
    world.prefetch.status = Some(first.status.clone());
    let pods = all_pulled(&first.create, t("2026-11-22T10:00:01Z"));
    let done = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert!(
        done.status
            .last_rollout
            .as_ref()
            .unwrap()
            .prefetched_at
            .is_some()
    );
    world.prefetch.status = Some(done.status.clone());

    // The second signal falls within the first's second: a new signal all the same.
    nginx_rollout(&mut world, "nginx:1.26", "2026-11-22T10:00:00.900000Z");
    let second = world.step(&[], done.memory.as_ref(), t("2026-11-22T10:00:06Z"));
    let record = second.status.last_rollout.clone().unwrap();
    assert_eq!(
        record.requested_at,
        Some(MicroTime(t("2026-11-22T10:00:00.9Z")))
    );
    assert_eq!(record.images, ["docker.io/library/nginx:1.26"]);
    assert_eq!(
        record.prefetched_at, None,
        "the first rollout's time is gone"
    );
    assert_eq!(
        second.events.first().map(|e| e.reason),
        Some("RolloutSignal")
    );
}

/// v1.25 is rolled out, and v1.26 follows while v1.25's pods still pull.
fn superseding_rollouts(world: &mut World) -> (RoundDecision, Vec<Pod>) {
    nginx_rollout(world, "nginx:1.25", "2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t("2026-11-22T10:00:00.5Z"));
    assert_eq!(first.create.len(), 3);
    world.prefetch.status = Some(first.status.clone());
    let pulling = all_creating(&first.create, t("2026-11-22T10:00:00.5Z"));
    nginx_rollout(world, "nginx:1.26", "2026-11-22T10:00:01Z");
    (first, pulling)
}

#[test]
fn pulls_no_workload_wants_any_more_are_dropped_and_the_new_images_start() {
    let mut world = World::walkthrough();
    let (first, pulling) = superseding_rollouts(&mut world);
    let second = world.step(&pulling, first.memory.as_ref(), t("2026-11-22T10:00:01.5Z"));
    assert_eq!(
        second.delete,
        names(&first.create),
        "v1.25's pulls are not waited for"
    );
    let event = second
        .events
        .iter()
        .find(|e| e.reason == "PullsSuperseded")
        .expect("an event says why");
    assert!(
        event.message.contains("nginx:1.25 on 3 node(s)"),
        "{}",
        event.message
    );
    assert!(
        second.create.is_empty(),
        "a node is free only once its pod is gone (one pod per node, same name)"
    );
    assert_eq!(second.status.phase, Phase::Running);

    // The pods gone: v1.26 starts on every node at once, and only v1.26.
    world.prefetch.status = Some(second.status.clone());
    let third = world.step(&[], second.memory.as_ref(), t("2026-11-22T10:00:02Z"));
    assert_eq!(third.create.len(), 3);
    for pod in &third.create {
        let images: Vec<_> = pod
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .map(|c| c.image.clone().unwrap())
            .collect();
        assert_eq!(images, ["docker.io/library/nginx:1.26"]);
    }
    // Once v1.26 is pulled, the rollout (owing v1.25 too) is prefetched: v1.25 is wanted by no
    // target, so it is done.
    world.prefetch.status = Some(third.status.clone());
    let pods = all_pulled(&third.create, t("2026-11-22T10:00:02Z"));
    let done = world.step(&pods, third.memory.as_ref(), t("2026-11-22T10:00:14Z"));
    let record = done.status.last_rollout.clone().unwrap();
    assert!(record.prefetched_at.is_some());
    assert_eq!(done.status.phase, Phase::Succeeded);
    assert_eq!(counts(&done.status), (3, 3, 0));
}

#[test]
fn pulls_still_wanted_go_on() {
    // A live revision, another workload or spec.images still wants v1.25: here, spec.images.
    let mut world = World::walkthrough();
    world.prefetch = prefetch(json!({"images": ["nginx:1.25"]}), None, 1);
    let (first, pulling) = superseding_rollouts(&mut world);
    let second = world.step(&pulling, first.memory.as_ref(), t("2026-11-22T10:00:01.5Z"));
    assert!(second.delete.is_empty(), "{:?}", second.delete);
    assert!(second.events.iter().all(|e| e.reason != "PullsSuperseded"));
    assert!(second.create.is_empty(), "the nodes are busy pulling");
}

#[test]
fn a_pod_is_superseded_only_when_every_image_it_still_pulls_is_unwanted() {
    let report = |images: &[(&str, bool)]| PodReport {
        images: images
            .iter()
            .map(|(image, pulled)| {
                let outcome = pulled.then_some(Outcome::Pulled { image_id: None });
                (image.to_string(), outcome)
            })
            .collect(),
        finished: false,
    };
    // As `read_pods` reads a pod: the images it still pulls, dropped if superseded.
    let superseded_pulls = |report: &PodReport, plan: &[String]| {
        let open = still_to_pull(report);
        superseded(&open, plan).then_some(open)
    };
    let plan = ["b:2".to_string(), "c:1".to_string()];
    assert_eq!(
        superseded_pulls(&report(&[("a:1", false)]), &plan),
        Some(vec!["a:1".to_string()])
    );
    assert_eq!(
        superseded_pulls(&report(&[("b:2", true), ("a:1", false)]), &plan),
        Some(vec!["a:1".to_string()]),
        "what it pulled already is not what it still pulls"
    );
    assert_eq!(
        superseded_pulls(&report(&[("a:1", false), ("c:1", false)]), &plan),
        None,
        "c:1 is still wanted: the pod goes on"
    );
    assert_eq!(
        superseded_pulls(&report(&[("a:1", true)]), &plan),
        None,
        "nothing left to pull"
    );
    assert_eq!(superseded_pulls(&report(&[]), &plan), None);
}

#[test]
fn an_image_dropped_between_rounds_leaves_images_and_digests_at_once() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    assert_eq!(
        first.status.sources["docker.io/library/nginx:1.7.9"],
        ["Deployment/nginx"],
        "each image names its sources"
    );
    world.prefetch.status = Some(first.status.clone());
    let pods = all_pulled(&first.create, t0);
    let mut done = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert_eq!(done.status.phase, Phase::Succeeded);
    // The digest of an image the Deployment has since dropped.
    let redis = "docker.io/library/redis:7".to_string();
    done.status
        .digests
        .insert(redis.clone(), "redis@sha256:1".into());
    done.status
        .sources
        .insert(redis.clone(), vec!["Deployment/nginx".into()]);
    done.status.images.push(redis);
    world.prefetch.status = Some(done.status.clone());

    let idle = world.step(&[], None, t("2026-11-22T10:00:10Z"));
    assert!(idle.create.is_empty(), "no round for a removal");
    assert_eq!(idle.status.images, ["docker.io/library/nginx:1.7.9"]);
    assert_eq!(
        idle.status.digests.keys().collect::<Vec<_>>(),
        ["docker.io/library/nginx:1.7.9"]
    );
    assert_eq!(
        idle.status.sources,
        BTreeMap::from([(
            "docker.io/library/nginx:1.7.9".to_string(),
            vec!["Deployment/nginx".to_string()]
        )]),
        "the dropped image's sources go with it"
    );
}

#[test]
fn a_signal_that_supersedes_an_unfinished_one_still_owes_its_images() {
    let earlier: BTreeSet<String> = ["a:1".to_string()].into();
    let later: BTreeSet<String> = ["b:1".to_string()].into();
    let (at, owed) = supersede(
        Some((t("2026-11-22T10:00:00Z"), earlier)),
        (t("2026-11-22T10:00:00.5Z"), later.clone()),
    );
    assert_eq!(at, t("2026-11-22T10:00:00.5Z"));
    assert_eq!(owed, ["a:1".to_string(), "b:1".to_string()].into());
    assert_eq!(supersede(None, (at, later.clone())), (at, later));
}

#[test]
fn a_restarted_controller_resumes_without_duplicates() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    world.prefetch.status = Some(first.status.clone());
    // Restart: no memory; two pods exist (one in flight, one done), one was never created.
    let pods = vec![
        kubelet(first.create[0].clone(), t0, &[creating()]),
        kubelet(first.create[1].clone(), t0, &[pulled()]),
    ];
    let resumed = world.step(&pods, None, t("2026-11-22T10:00:05Z"));
    assert!(
        resumed.events.is_empty(),
        "no new round: {:?}",
        resumed.events
    );
    assert_eq!(
        names(&resumed.create),
        ["prefetch-prefetch-sample-kind-worker3"]
    );
    assert_eq!(resumed.delete, [names(&first.create)[1].clone()]);
    assert_eq!(resumed.memory.as_ref().unwrap().started, t0);
}

#[test]
fn a_cache_behind_the_round_end_is_recognised() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00.250Z");
    let first = world.step(&[], None, t0);
    let running = first.status.clone();
    world.prefetch.status = Some(running.clone());
    let mut pods = all_pulled(&first.create, t0);
    pods[1] = kubelet(
        first.create[1].clone(),
        t0,
        &[json!({"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}})],
    );
    let ended = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert!(ended.memory.is_none() && ended.status.phase == Phase::Failed);
    // What the reconcile right after sees through a cache that missed the write: the
    // round still running, its failure unknown (the pulled images are listed by their
    // nodes by then). Decided from that, the round would resume and kind-worker2 get a pod
    // again.
    world.nodes = vec![
        node("kind-control-plane", &[]),
        node("kind-worker", &[NGINX]),
        node("kind-worker2", &[]),
        node("kind-worker3", &[NGINX]),
    ];
    world.prefetch.status = Some(running.clone());
    let resumed = world.step(&[], None, t("2026-11-22T10:00:05Z"));
    assert_eq!(
        names(&resumed.create),
        ["prefetch-prefetch-sample-kind-worker2"]
    );
    // Which is why the shell checks first. The cache read back has whole seconds.
    let mut cached = running.clone();
    cached.last_round_start = Some(Time(t("2026-11-22T10:00:00Z")));
    assert!(cached_status_predates(Some(&cached), t0));
    assert!(
        !cached_status_predates(Some(&ended.status), t0),
        "caught up"
    );
    assert!(!cached_status_predates(None, t0));
    assert!(
        !cached_status_predates(Some(&cached), t("2026-11-22T10:01:00Z")),
        "a later round running is no sign of staleness"
    );
}

#[test]
fn terminating_pods_block_their_node_until_gone() {
    let world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    let mut terminating = kubelet(first.create[0].clone(), t0, &[creating()]);
    terminating.metadata.deletion_timestamp = Some(Time(t0));
    let memory = RoundMemory {
        started: t0,
        outcomes: BTreeMap::new(),
        rollout: None,
    };
    let again = world.step(&[terminating], Some(&memory), t("2026-11-22T10:00:01Z"));
    assert_eq!(
        names(&again.create),
        [
            "prefetch-prefetch-sample-kind-worker2",
            "prefetch-prefetch-sample-kind-worker3"
        ]
    );
    assert!(again.delete.is_empty());
}

#[test]
fn pods_past_the_deadline_fail_and_are_removed() {
    let mut world = World::walkthrough();
    world.prefetch = prefetch(json!({"pull_timeout": 60}), None, 1);
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    world.prefetch.status = Some(first.status.clone());
    let stuck: Vec<Pod> = first
        .create
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.metadata.creation_timestamp = Some(Time(t0));
            p
        })
        .collect();
    let before = world.step(&stuck, first.memory.as_ref(), t("2026-11-22T10:01:29Z"));
    assert!(before.delete.is_empty());
    assert_eq!(
        before.requeue_after,
        Duration::from_secs(1),
        "look again at the deadline"
    );
    let after_deadline = world.step(&stuck, before.memory.as_ref(), t("2026-11-22T10:01:31Z"));
    assert_eq!(after_deadline.delete.len(), 3);
    assert_eq!(after_deadline.status.phase, Phase::Failed);
    assert!(
        after_deadline
            .status
            .failures
            .iter()
            .all(|f| f.reason == "DeadlineExceeded")
    );
}

#[test]
fn pods_on_nodes_no_longer_targeted_are_removed() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    world.prefetch.status = Some(first.status.clone());
    world
        .nodes
        .retain(|n| n.metadata.name.as_deref() != Some("kind-worker3"));
    let pods: Vec<Pod> = all_creating(&first.create, t0);
    let next = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert_eq!(next.delete, ["prefetch-prefetch-sample-kind-worker3"]);
    assert_eq!(next.status.nodes, ["kind-worker", "kind-worker2"]);
    assert_eq!(next.status.total, 2);
}

#[test]
fn a_spec_change_starts_a_new_round() {
    let mut world = World::after_first_round();
    world.prefetch = prefetch(json!({"node_filter": ""}), world.prefetch.status.clone(), 2);
    world.prefetch.spec.tolerations = Some(vec![
        serde_json::from_value(json!({"operator": "Exists"})).unwrap(),
    ]);
    let changed = world.step(&[], None, t("2026-11-22T10:00:12Z"));
    assert_eq!(changed.events[0].reason, "RoundStarted");
    assert!(changed.events[0].message.starts_with("spec changed"));
    assert_eq!(changed.status.observed_generation, Some(2));
    assert_eq!(
        changed.create.len(),
        4,
        "the control plane now qualifies too"
    );
}

#[test]
fn unsignalled_new_images_and_joining_nodes_start_a_round() {
    let mut world = World::after_first_round();
    world.nodes = vec![
        node("kind-control-plane", &[]),
        node("kind-worker", &[NGINX]),
        node("kind-worker2", &[NGINX]),
        node("kind-worker3", &[NGINX]),
    ];
    assert!(
        world
            .step(&[], None, t("2026-11-22T10:00:20Z"))
            .create
            .is_empty(),
        "idle"
    );

    world.nodes.push(node("kind-worker4", &[]));
    let joined = world.step(&[], None, t("2026-11-22T10:00:21Z"));
    assert_eq!(
        joined.events[0].message.split(':').next(),
        Some("node kind-worker4 joined")
    );
    assert_eq!(
        names(&joined.create),
        ["prefetch-prefetch-sample-kind-worker4"],
        "the others already have the image"
    );

    world.nodes.pop();
    world.deployments = vec![deployment(&["nginx:1.25"])];
    let changed = world.step(&[], None, t("2026-11-22T10:00:22Z"));
    assert!(
        changed.events[0]
            .message
            .starts_with("new image docker.io/library/nginx:1.25"),
        "{:?}",
        changed.events
    );
    assert_eq!(changed.create.len(), 3);
}

#[test]
fn condition_times_only_move_on_transitions() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    world.prefetch.status = Some(first.status.clone());
    let later = world.step(&[], first.memory.as_ref(), t("2026-11-22T10:00:07Z"));
    // Pods were created at t0 but are not visible yet: the same decisions, the same times.
    assert_eq!(
        condition(&later.status, "Progressing").last_transition_time,
        Time(t0)
    );
    assert_eq!(
        condition(&later.status, "Degraded").last_transition_time,
        Time(t0)
    );
}

fn warming_node(name: &str) -> Node {
    let mut n = node(name, &[]);
    n.spec = Some(
        serde_json::from_value(json!({"taints": [{"key": WARMING, "effect": "NoSchedule"}]}))
            .unwrap(),
    );
    n
}

#[test]
fn warming_nodes_get_the_free_slots_first() {
    let mut world = World::walkthrough();
    world.prefetch = prefetch(json!({"max_parallel": 2}), None, 1);
    world.nodes.push(warming_node("kind-worker9"));
    let first = world.step(&[], None, t("2026-11-22T10:00:00Z"));
    assert_eq!(
        names(&first.create),
        [
            "prefetch-prefetch-sample-kind-worker9",
            "prefetch-prefetch-sample-kind-worker"
        ],
        "the warming node first, though last by name"
    );
    let tolerations =
        |pod: &Pod| serde_json::to_value(&pod.spec.as_ref().unwrap().tolerations).unwrap();
    let warming = json!([{"key": WARMING, "operator": "Exists", "effect": "NoSchedule"}]);
    assert_eq!(tolerations(&first.create[0]), warming);
    assert_eq!(
        tolerations(&first.create[1]),
        warming,
        "the same pod shape everywhere"
    );
    // The status lists targets by name, whatever the order of creation.
    assert_eq!(
        first.status.nodes,
        [
            "kind-worker",
            "kind-worker2",
            "kind-worker3",
            "kind-worker9"
        ]
    );
}

#[test]
fn a_warming_node_joining_mid_round_goes_ahead_of_waiting_nodes() {
    let mut world = World::walkthrough();
    world.prefetch = prefetch(json!({"max_parallel": 1}), None, 1);
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    assert_eq!(
        names(&first.create),
        ["prefetch-prefetch-sample-kind-worker"]
    );
    world.prefetch.status = Some(first.status.clone());
    world.nodes.push(warming_node("kind-worker9"));
    let pods = all_pulled(&first.create, t0);
    let next = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert_eq!(
        names(&next.create),
        ["prefetch-prefetch-sample-kind-worker9"],
        "ahead of kind-worker2 and kind-worker3, which were waiting"
    );
}

#[test]
fn outcomes_are_reported_as_observed_once() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    assert!(first.observed.is_empty());
    world.prefetch.status = Some(first.status.clone());
    let mut pods = all_pulled(&first.create, t0);
    pods[1] = kubelet(
        first.create[1].clone(),
        t0,
        &[json!({"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}})],
    );
    let second = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert_eq!(second.observed.len(), 3);
    assert_eq!(
        second.observed[0],
        Observed {
            node: "kind-worker".into(),
            image: NGINX.into(),
            outcome: Outcome::Pulled {
                image_id: Some("sha256:0".into())
            }
        },
        "with the digest, which the round memory does not keep"
    );
    assert!(matches!(
        &second.observed[1].outcome,
        Outcome::Failed { reason, .. } if reason == "ErrImagePull"
    ));
    // The same pods read again (not yet deleted): nothing new.
    world.prefetch.status = Some(second.status.clone());
    let memory = RoundMemory {
        started: t0,
        outcomes: second
            .observed
            .iter()
            .map(|o| ((o.node.clone(), o.image.clone()), o.outcome.clone()))
            .collect(),
        rollout: None,
    };
    let again = world.step(&pods, Some(&memory), t("2026-11-22T10:00:06Z"));
    assert!(again.observed.is_empty());
}

#[test]
fn a_warming_node_with_open_pairs_starts_a_round_though_covered() {
    let mut world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    world.prefetch.status = Some(first.status.clone());
    let done = world.step(
        &all_pulled(&first.create, t0),
        first.memory.as_ref(),
        t("2026-11-22T10:00:10Z"),
    );
    world.prefetch.status = Some(done.status.clone());
    // kind-worker3 was replaced under the same name, warming, without the image: the
    // last round lists it, so only the warming rule starts a round before retry_after.
    world.nodes = vec![
        node("kind-control-plane", &[]),
        node("kind-worker", &[NGINX]),
        node("kind-worker2", &[NGINX]),
        warming_node("kind-worker3"),
    ];
    let idle = world.step(&[], None, t("2026-11-22T10:00:20Z"));
    assert!(idle.create.is_empty(), "without the warming rule: idle");
    world.warming_open = ["kind-worker3".to_string()].into();
    let warm = world.step(&[], None, t("2026-11-22T10:00:21Z"));
    assert_eq!(
        warm.events[0].message.split(':').next(),
        Some("node kind-worker3 is warming")
    );
    assert_eq!(
        names(&warm.create),
        ["prefetch-prefetch-sample-kind-worker3"]
    );
}

// --- Each phase on its own ---

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn target(node: &str, pull: &[&str], present: &[&str]) -> NodePlan {
    NodePlan {
        node: node.into(),
        pull: strings(pull),
        present: strings(present),
        ..NodePlan::default()
    }
}

fn plan_of(images: &[&str], targets: Vec<NodePlan>) -> ImagePlan {
    ImagePlan {
        images: strings(images),
        targets,
        ..ImagePlan::default()
    }
}

fn pulled_pair() -> Outcome {
    Outcome::Pulled { image_id: None }
}

fn failed_pair(reason: &str) -> Outcome {
    Outcome::Failed {
        reason: reason.into(),
        message: "manifest unknown".into(),
    }
}

fn outcomes_of(pairs: &[(&str, &str, Outcome)]) -> Outcomes {
    pairs
        .iter()
        .map(|(node, image, outcome)| ((node.to_string(), image.to_string()), outcome.clone()))
        .collect()
}

fn nginx() -> prefetch_common::owner::WorkloadRef {
    prefetch_common::owner::WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "nginx".into(),
    }
}

fn rollout_record(images: &[&str], requested_at: Timestamp) -> RolloutRecord {
    RolloutRecord {
        deployment: "nginx".into(),
        workload: Some("Deployment/nginx".into()),
        images: strings(images),
        requested_at: Some(MicroTime(requested_at)),
        observed_at: Some(MicroTime(requested_at)),
        prefetched_at: None,
    }
}

#[test]
fn a_new_signal_is_recorded_once_and_owes_its_images() {
    let at = t("2026-11-22T10:00:19.5Z");
    let now = t("2026-11-22T10:00:20Z");
    let signal = RolloutSignal {
        workload: nginx(),
        images: strings(&["a:1", "b:1"]),
        requested_at: at,
        unrecorded_images: ["c:1".to_string()].into(),
    };
    let recorded = record_rollout_signal(Some(&signal), &PrefetchStatus::default(), now)
        .expect("a first signal is new");
    assert_eq!(
        recorded.record,
        RolloutRecord {
            observed_at: Some(MicroTime(now)),
            ..rollout_record(&["a:1", "b:1"], at)
        }
    );
    // Another workload's signal not recorded yet (c:1) is owed too.
    assert_eq!(
        recorded.owed,
        (at, ["a:1".into(), "b:1".into(), "c:1".into()].into())
    );
    assert_eq!(
        recorded.event.message,
        "Deployment nginx brings a:1, b:1; prefetching now"
    );

    let seen = PrefetchStatus {
        last_rollout: Some(recorded.record),
        ..PrefetchStatus::default()
    };
    assert_eq!(record_rollout_signal(Some(&signal), &seen, now), None);
    let older = RolloutSignal {
        requested_at: t("2026-11-22T10:00:19Z"),
        ..signal.clone()
    };
    assert_eq!(record_rollout_signal(Some(&older), &seen, now), None);
    assert_eq!(record_rollout_signal(None, &seen, now), None);
}

#[test]
fn a_running_status_resumes_its_round_with_its_failures_and_rollout() {
    let t0 = t("2026-11-22T10:00:00Z");
    let mut status = PrefetchStatus {
        phase: Phase::Running,
        last_round_start: Some(Time(t0)),
        failures: vec![PullFailure {
            node: "kind-worker2".into(),
            image: NGINX.into(),
            reason: "ErrImagePull".into(),
            message: "manifest unknown".into(),
        }],
        last_rollout: Some(rollout_record(&[NGINX], t0)),
        ..PrefetchStatus::default()
    };
    let resumed = resume_from_status(&status).expect("running");
    assert_eq!(resumed.started, t0);
    assert_eq!(
        resumed.outcomes,
        outcomes_of(&[("kind-worker2", NGINX, failed_pair("ErrImagePull"))])
    );
    assert_eq!(resumed.rollout, Some((t0, [NGINX.to_string()].into())));

    status.last_rollout.as_mut().unwrap().prefetched_at = Some(MicroTime(t0));
    assert_eq!(
        resume_from_status(&status).unwrap().rollout,
        None,
        "a prefetched rollout is owed nothing"
    );
    status.last_round_start = None;
    assert_eq!(resume_from_status(&status), None, "no start to resume");
    status.last_round_start = Some(Time(t0));
    status.phase = Phase::Succeeded;
    assert_eq!(resume_from_status(&status), None, "only a running round");
}

#[test]
fn a_round_starts_only_when_a_trigger_calls_for_it() {
    let world = World::walkthrough();
    let plan = world.plan();
    let t0 = t("2026-11-22T10:00:00Z");
    let start = start_round(
        &world.input(&plan, &[], None, t0),
        &PrefetchStatus::default(),
    )
    .expect("the first round");
    assert_eq!(
        start.memory,
        RoundMemory {
            started: t0,
            outcomes: BTreeMap::new(),
            rollout: None
        }
    );
    assert_eq!(start.next_round, t("2026-11-22T10:01:00Z"));
    assert_eq!(
        start.event.message,
        "first round: 1 image(s) on 3 node(s), 1 node(s) skipped (NameFilter: 1)"
    );

    // The last round covered this plan: only retry_after starts the next.
    let covered = PrefetchStatus {
        observed_generation: Some(1),
        images: plan.images.clone(),
        nodes: plan.targets.iter().map(|t| t.node.clone()).collect(),
        last_round_start: Some(Time(t0)),
        next_round: Some(Time(start.next_round)),
        ..PrefetchStatus::default()
    };
    let before = world.input(&plan, &[], None, t("2026-11-22T10:00:59Z"));
    assert_eq!(start_round(&before, &covered), None);
    let due = world.input(&plan, &[], None, t("2026-11-22T10:01:00Z"));
    assert_eq!(
        round_trigger(&due, &covered).as_deref(),
        Some("retry_after elapsed")
    );
}

#[test]
fn what_the_last_round_did_not_cover_is_named_images_first() {
    let plan = plan_of(
        &["a:1", "b:1"],
        vec![
            target("n1", &["a:1", "b:1"], &[]),
            target("n2", &["a:1", "b:1"], &[]),
        ],
    );
    let mut status = PrefetchStatus {
        images: strings(&["a:1"]),
        nodes: strings(&["n1"]),
        ..PrefetchStatus::default()
    };
    let uncovered = |status: &PrefetchStatus| uncovered_by_last_round(&plan, status);
    assert_eq!(uncovered(&status).as_deref(), Some("new image b:1"));
    status.images.push("b:1".into());
    assert_eq!(uncovered(&status).as_deref(), Some("node n2 joined"));
    status.nodes.extend(strings(&["n2", "n3"]));
    assert_eq!(uncovered(&status), None, "a node gone starts nothing");
}

#[test]
fn idle_deletes_stray_pods_and_waits_for_the_next_round() {
    let world = World::walkthrough();
    let plan = world.plan();
    let t0 = t("2026-11-22T10:00:00Z");
    let strays = all_creating(&world.step(&[], None, t0).create[..1], t0);
    let redis = "docker.io/library/redis:7".to_string();
    let status = PrefetchStatus {
        images: vec![redis.clone()],
        digests: [
            (redis, "sha256:1".into()),
            (NGINX.into(), "sha256:2".into()),
        ]
        .into(),
        next_round: Some(Time(t("2026-11-22T10:01:00Z"))),
        ..PrefetchStatus::default()
    };
    let now = t("2026-11-22T10:00:30Z");
    let idle_now = idle(
        &world.input(&plan, &strays, None, now),
        status.clone(),
        Vec::new(),
    );
    assert_eq!(idle_now.delete, names(&strays));
    assert!(idle_now.create.is_empty() && idle_now.memory.is_none());
    assert_eq!(idle_now.requeue_after, Duration::from_secs(30));
    assert_eq!(idle_now.status.images, [NGINX]);
    assert_eq!(idle_now.status.digests.keys().collect::<Vec<_>>(), [NGINX]);

    let late = t("2026-11-22T10:05:00Z");
    let overdue = idle(&world.input(&plan, &[], None, late), status, Vec::new());
    assert_eq!(overdue.requeue_after, Duration::from_secs(1), "never 0");
}

#[test]
fn reading_pods_records_each_outcome_once_and_sorts_the_pods() {
    let mut world = World::walkthrough();
    world.nodes.push(node("kind-worker4", &[]));
    let t0 = t("2026-11-22T10:00:00Z");
    let created = world.step(&[], None, t0).create;
    let mut terminating = kubelet(created[3].clone(), t0, &[creating()]);
    terminating.metadata.deletion_timestamp = Some(Time(t0));
    let pods = vec![
        kubelet(created[0].clone(), t0, &[pulled()]),
        kubelet(created[1].clone(), t0, &[creating()]),
        kubelet(created[2].clone(), t0, &[creating()]),
        terminating,
    ];
    world
        .nodes
        .retain(|n| n.metadata.name.as_deref() != Some("kind-worker3"));
    let plan = world.plan();
    let now = t("2026-11-22T10:00:05Z");
    let mut outcomes = Outcomes::new();

    let read = read_pods(&world.input(&plan, &pods, None, now), &mut outcomes);
    assert_eq!(
        read.delete,
        [
            "prefetch-prefetch-sample-kind-worker",
            "prefetch-prefetch-sample-kind-worker3"
        ],
        "finished, and no longer targeted"
    );
    assert_eq!(read.in_flight, 1, "kind-worker2; kind-worker4's is going");
    assert_eq!(
        read.occupied,
        [
            "kind-worker",
            "kind-worker2",
            "kind-worker3",
            "kind-worker4"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        read.earliest_deadline,
        Some(t("2026-11-22T10:10:30Z")),
        "pull_timeout (600 s) and the grace from creation"
    );
    assert_eq!(read.recorded.newly_pulled, 1);
    assert_eq!(
        read.recorded.digests,
        [(NGINX.to_string(), "sha256:0".to_string())].into()
    );
    assert_eq!(
        outcomes,
        outcomes_of(&[("kind-worker", NGINX, pulled_pair())]),
        "the digest stays out of the memory"
    );

    let again = read_pods(&world.input(&plan, &pods, None, now), &mut outcomes);
    assert!(again.recorded.observed.is_empty() && again.recorded.newly_pulled == 0);
}

#[test]
fn a_pods_deadline_counts_from_its_creation_or_from_now() {
    let world = World::walkthrough();
    let t0 = t("2026-11-22T10:00:00Z");
    let mut pod = world.step(&[], None, t0).create.remove(0);
    let now = t("2026-11-22T10:00:10Z");
    assert_eq!(pod_deadline(&pod, 60, now), t("2026-11-22T10:01:40Z"));
    pod.metadata.creation_timestamp = Some(Time(t0));
    assert_eq!(pod_deadline(&pod, 60, now), t("2026-11-22T10:01:30Z"));
    assert_eq!(pod_node(&pod), "kind-worker");
}

#[test]
fn creations_go_warming_first_within_capacity_past_occupied_and_busy_nodes() {
    let mut world = World::walkthrough();
    world.prefetch = prefetch(json!({"max_parallel": 2}), None, 1);
    world.nodes.push(warming_node("kind-worker9"));
    world.busy = ["kind-worker2".to_string()].into();
    let plan = world.plan();
    let input = world.input(&plan, &[], None, t("2026-11-22T10:00:00Z"));
    let occupied: BTreeSet<String> = ["kind-worker".to_string()].into();

    let first = plan_creations(&input, &Outcomes::new(), &occupied, 1, ZoneSeeds::default());
    assert_eq!(
        names(&first.pods),
        ["prefetch-prefetch-sample-kind-worker9"],
        "one slot free beside the pod in flight, the warming node's"
    );
    assert!(first.waiting_on_busy, "kind-worker2 is busy");
    assert!(first.not_built.is_empty());

    let warmed = outcomes_of(&[("kind-worker9", NGINX, pulled_pair())]);
    let next = plan_creations(&input, &warmed, &occupied, 1, ZoneSeeds::default());
    assert_eq!(
        names(&next.pods),
        ["prefetch-prefetch-sample-kind-worker3"],
        "a pair with an outcome needs no pod"
    );
}

#[test]
fn a_pod_that_cannot_be_built_is_reported() {
    let mut world = World::walkthrough();
    let plan = world.plan();
    world.prefetch.metadata.namespace = None;
    let input = world.input(&plan, &[], None, t("2026-11-22T10:00:00Z"));
    let creations = plan_creations(
        &input,
        &Outcomes::new(),
        &BTreeSet::new(),
        0,
        ZoneSeeds::default(),
    );
    assert!(creations.pods.is_empty());
    assert_eq!(
        creations
            .not_built
            .iter()
            .map(|e| (e.type_, e.reason))
            .collect::<Vec<_>>(),
        [("Warning", "PodNotBuilt"); 3]
    );
}

#[test]
fn the_tally_counts_present_pulled_failed_and_open_pairs() {
    let plan = plan_of(
        &["a:1", "b:1"],
        vec![
            target("n2", &["a:1", "b:1"], &[]),
            target("n1", &["b:1"], &["a:1"]),
            target("n0", &["a:1", "b:1"], &[]),
        ],
    );
    let outcomes = outcomes_of(&[
        ("n1", "b:1", pulled_pair()),
        ("n2", "b:1", failed_pair("ErrImagePull")),
        ("n0", "a:1", failed_pair("ImagePullBackOff")),
    ]);
    let tally = tally_round(&plan, &outcomes);
    assert_eq!((tally.ready, tally.open), (2, 2));
    assert_eq!(
        tally
            .failures
            .iter()
            .map(|f| (f.node.as_str(), f.image.as_str()))
            .collect::<Vec<_>>(),
        [("n0", "a:1"), ("n2", "b:1")],
        "by node, then image"
    );
}

#[test]
fn the_status_lists_the_first_failures_and_counts_them_all() {
    let nodes: Vec<String> = (0..25).map(|i| format!("n{i:02}")).collect();
    let plan = plan_of(
        &["a:1"],
        nodes.iter().map(|n| target(n, &["a:1"], &[])).collect(),
    );
    let failed: Vec<(&str, &str, Outcome)> = nodes
        .iter()
        .map(|n| (n.as_str(), "a:1", failed_pair("ErrImagePull")))
        .collect();
    let tally = tally_round(&plan, &outcomes_of(&failed));
    let mut status = PrefetchStatus {
        digests: [("gone:1".to_string(), "sha256:9".to_string())].into(),
        ..PrefetchStatus::default()
    };
    write_counters(&mut status, &plan, &tally);
    assert_eq!(counts(&status), (25, 0, 25));
    assert_eq!(status.failures.len(), MAX_STATUS_FAILURES);
    assert_eq!(status.failures.last().map(|f| f.node.as_str()), Some("n19"));
    assert_eq!((status.images.len(), status.nodes.len()), (1, 25));
    assert!(status.digests.is_empty(), "no image of the plan");
}

#[test]
fn a_rollout_is_prefetched_once_every_target_is_done_with_its_images() {
    let at = t("2026-11-22T10:00:00Z");
    let now = t("2026-11-22T10:00:30Z");
    let plan = plan_of(
        &["a:1", "b:1"],
        vec![
            target("n1", &["a:1"], &["b:1"]),
            target("n2", &["a:1", "b:1"], &[]),
        ],
    );
    // c:1 left the Deployment after the signal: no target wants it, it holds nothing back.
    let owed = (at, ["a:1", "b:1", "c:1"].map(String::from).into());
    let mut memory = RoundMemory {
        started: at,
        outcomes: outcomes_of(&[("n1", "a:1", pulled_pair())]),
        rollout: Some(owed),
    };
    let mut status = PrefetchStatus {
        last_rollout: Some(rollout_record(&["a:1", "b:1", "c:1"], at)),
        ..PrefetchStatus::default()
    };
    let mark = |memory: &mut RoundMemory, status: &mut PrefetchStatus| {
        mark_rollout_prefetched(&plan, memory, status, now)
    };
    assert_eq!(mark(&mut memory, &mut status), None, "n2 still pulls");
    assert!(memory.rollout.is_some());

    memory.outcomes.extend(outcomes_of(&[
        ("n2", "a:1", failed_pair("ErrImagePull")),
        ("n2", "b:1", pulled_pair()),
    ]));
    assert_eq!(
        mark(&mut memory, &mut status),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        status.last_rollout.as_ref().unwrap().prefetched_at,
        Some(MicroTime(now))
    );
    assert_eq!(memory.rollout, None);
    assert_eq!(mark(&mut memory, &mut status), None, "marked once");
}

#[test]
fn a_newer_signal_in_the_status_is_not_marked_for_an_older_rollout() {
    let at = t("2026-11-22T10:00:00Z");
    let mut memory = RoundMemory {
        started: at,
        outcomes: BTreeMap::new(),
        rollout: Some((at, BTreeSet::new())),
    };
    let newer = rollout_record(&["a:1"], t("2026-11-22T10:00:01Z"));
    let mut status = PrefetchStatus {
        last_rollout: Some(newer.clone()),
        ..PrefetchStatus::default()
    };
    let now = t("2026-11-22T10:00:02Z");
    let latency = mark_rollout_prefetched(&plan_of(&[], vec![]), &mut memory, &mut status, now);
    assert_eq!(latency, Some(Duration::from_secs(2)));
    assert_eq!(status.last_rollout, Some(newer));
    // The older signal is done all the same: its pods may go, the newer one's not yet.
    assert_eq!(status.prefetched_through, Some(MicroTime(at)));
}

#[test]
fn prefetched_through_only_moves_forward() {
    let (older, newer) = (t("2026-11-22T10:00:00Z"), t("2026-11-22T10:05:00Z"));
    let mut memory = RoundMemory {
        started: older,
        outcomes: BTreeMap::new(),
        rollout: Some((older, BTreeSet::new())),
    };
    let mut status = PrefetchStatus {
        prefetched_through: Some(MicroTime(newer)),
        ..PrefetchStatus::default()
    };
    mark_rollout_prefetched(&plan_of(&[], vec![]), &mut memory, &mut status, newer);
    assert_eq!(status.prefetched_through, Some(MicroTime(newer)));
}

#[test]
fn an_ended_round_is_next_due_retry_after_from_its_start() {
    let started = t("2026-11-22T10:00:00Z");
    let mut status = PrefetchStatus::default();
    let wait = end_round(&mut status, started, 60, t("2026-11-22T10:00:20Z"));
    assert_eq!(status.phase, Phase::Succeeded);
    assert_eq!(status.last_round_end, Some(Time(t("2026-11-22T10:00:20Z"))));
    assert_eq!(status.next_round, Some(Time(t("2026-11-22T10:01:00Z"))));
    assert_eq!(wait, Duration::from_secs(40));

    // A round that outlasted retry_after: the next is due now.
    status.failed = 1;
    let late = t("2026-11-22T10:05:00Z");
    let wait = end_round(&mut status, started, 60, late);
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.next_round, Some(Time(late)));
    assert_eq!(wait, Duration::from_secs(1));
}

#[test]
fn the_round_end_event_names_the_first_five_failures() {
    let failures: Vec<PullFailure> = (1..=7)
        .map(|i| PullFailure {
            node: format!("n{i}"),
            image: "a:1".into(),
            reason: "ErrImagePull".into(),
            message: String::new(),
        })
        .collect();
    let failed = PrefetchStatus {
        total: 10,
        ready: 3,
        failed: 7,
        ..PrefetchStatus::default()
    };
    let event = round_end_event(&failed, &failures);
    assert_eq!((event.type_, event.reason), ("Warning", "RoundFailed"));
    assert_eq!(
        event.message,
        "7 of 10 pairs failed: a:1 on n1 (ErrImagePull); a:1 on n2 (ErrImagePull); \
             a:1 on n3 (ErrImagePull); a:1 on n4 (ErrImagePull); a:1 on n5 (ErrImagePull); ..."
    );
    let succeeded = PrefetchStatus {
        total: 6,
        ready: 6,
        nodes: strings(&["n1", "n2"]),
        ..PrefetchStatus::default()
    };
    let event = round_end_event(&succeeded, &[]);
    assert_eq!((event.type_, event.reason), ("Normal", "RoundSucceeded"));
    assert_eq!(
        event.message,
        "6 of 6 node x image pairs ready on 2 node(s)"
    );
}

#[test]
fn a_running_round_looks_again_at_its_first_deadline_or_the_poll() {
    let now = t("2026-11-22T10:00:00Z");
    assert_eq!(running_requeue(None, now), ROUND_POLL);
    assert_eq!(
        running_requeue(Some(t("2026-11-22T10:00:03Z")), now),
        Duration::from_secs(3)
    );
    assert_eq!(
        running_requeue(Some(t("2026-11-22T09:59:55Z")), now),
        Duration::from_secs(1),
        "a deadline passed: soon, never 0"
    );
    assert_eq!(
        running_requeue(Some(t("2026-11-22T10:01:00Z")), now),
        ROUND_POLL
    );
}

#[test]
fn mid_round_readiness_is_that_of_the_last_completed_round() {
    let running = PrefetchStatus {
        phase: Phase::Running,
        ..PrefetchStatus::default()
    };
    let first = ready_state(&running, &PrefetchStatus::default());
    assert_eq!(
        (first.status.as_str(), first.reason.as_str()),
        ("False", "FirstRoundRunning")
    );
    let failed = PrefetchStatus {
        phase: Phase::Failed,
        total: 3,
        failed: 1,
        ..PrefetchStatus::default()
    };
    let previous = finalize_conditions(
        failed,
        &PrefetchStatus::default(),
        Some(1),
        t("2026-11-22T10:00:00Z"),
    );
    assert_eq!(
        ready_state(&running, &previous),
        ConditionState::new(
            "False",
            "RoundFailed",
            "1 of 3 pairs failed in the last round"
        )
    );
}

#[test]
fn a_condition_keeps_its_transition_time_while_its_status_holds() {
    let t0 = t("2026-11-22T10:00:00Z");
    let t1 = t("2026-11-22T10:01:00Z");
    let failed = PrefetchStatus {
        phase: Phase::Failed,
        total: 3,
        ready: 2,
        failed: 1,
        ..PrefetchStatus::default()
    };
    let before = finalize_conditions(failed, &PrefetchStatus::default(), Some(1), t0);
    let succeeded = PrefetchStatus {
        phase: Phase::Succeeded,
        total: 3,
        ready: 3,
        ..PrefetchStatus::default()
    };
    let after = finalize_conditions(succeeded, &before, Some(2), t1);
    let seen = |type_: &str| {
        let c = condition(&after, type_);
        (
            c.status.as_str(),
            c.last_transition_time.0,
            c.observed_generation,
        )
    };
    assert_eq!(seen("Ready"), ("True", t1, Some(2)));
    assert_eq!(
        seen("Progressing"),
        ("False", t0, Some(2)),
        "complete both times"
    );
    assert_eq!(seen("Degraded"), ("False", t1, Some(2)));
}

/// The walkthrough with `seed: {per_zone: 1}`: kind-worker and kind-worker2 in zone a,
/// kind-worker3 in zone b.
fn zoned_world() -> World {
    let mut world = World::walkthrough();
    world.prefetch = prefetch(json!({"seed": {"per_zone": 1}}), None, 1);
    for node in &mut world.nodes {
        let zone = match node.metadata.name.as_deref() {
            Some("kind-worker" | "kind-worker2") => "a",
            _ => "b",
        };
        node.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(crate::plan::ZONE_LABEL.into(), zone.into());
    }
    world
}

fn nodes_of(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.annotations.as_ref().unwrap()[NODE_ANNOTATION].clone())
        .collect()
}

#[test]
fn with_seed_one_node_per_zone_pulls_first_then_the_zone_follows() {
    let world = zoned_world();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    assert_eq!(nodes_of(&first.create), ["kind-worker", "kind-worker3"]);
    assert_eq!(first.status.phase, Phase::Running);
    let waits: Vec<(&str, &str)> = first
        .status
        .waiting
        .iter()
        .map(|w| (w.node.as_str(), w.reason.as_str()))
        .collect();
    assert_eq!(waits, [("kind-worker2", "ZoneSeed")]);

    // Zone a's seed still pulling: kind-worker2 waits, the round goes on.
    let creating = all_creating(&first.create, t0);
    let waiting = world.step(&creating, first.memory.as_ref(), t("2026-11-22T10:00:02Z"));
    assert!(waiting.create.is_empty());
    assert_eq!(waiting.status.phase, Phase::Running);

    // The seed pulled it: the zone's other node starts.
    let pulled = all_pulled(&first.create, t0);
    let second = world.step(&pulled, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert_eq!(nodes_of(&second.create), ["kind-worker2"]);
    let done = world.step(
        &all_pulled(&second.create, t0),
        second.memory.as_ref(),
        t("2026-11-22T10:00:07Z"),
    );
    assert_eq!(done.status.phase, Phase::Succeeded);
    assert_eq!(counts(&done.status), (3, 3, 0));
}

#[test]
fn with_seed_a_failed_seed_hands_its_zone_to_another_node() {
    let world = zoned_world();
    let t0 = t("2026-11-22T10:00:00Z");
    let first = world.step(&[], None, t0);
    let failed = json!({"waiting": {"reason": "ErrImagePull", "message": "registry down"}});
    let reports: Vec<Pod> = first
        .create
        .iter()
        .map(|p| {
            let on_worker = nodes_of(std::slice::from_ref(p)) == ["kind-worker"];
            let state = if on_worker { failed.clone() } else { pulled() };
            kubelet(p.clone(), t0, &[state])
        })
        .collect();
    let second = world.step(&reports, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
    assert_eq!(
        nodes_of(&second.create),
        ["kind-worker2"],
        "kind-worker2 seeds zone a"
    );
    let done = world.step(
        &all_pulled(&second.create, t0),
        second.memory.as_ref(),
        t("2026-11-22T10:00:07Z"),
    );
    assert_eq!(done.status.phase, Phase::Failed);
    assert_eq!(counts(&done.status), (3, 2, 1));
}

#[test]
fn a_spent_registry_budget_holds_its_pulls_and_says_why() {
    let mut world = World::walkthrough();
    world.deployments = vec![deployment(&["nginx:1.27", "ghcr.io/org/app:1"])];
    let mut ledger = crate::budget::BudgetLedger::new(["docker.io=2/1h".parse().unwrap()]);
    let t0 = t("2026-11-22T10:00:00Z");
    world.allowance = ledger.allowance(t0);
    let first = world.step(&[], None, t0);
    let images_of = |pod: &Pod| -> Vec<String> {
        let spec = pod.spec.as_ref().unwrap();
        spec.containers
            .iter()
            .map(|c| c.image.clone().unwrap())
            .collect()
    };
    let nginx = "docker.io/library/nginx:1.27";
    let app = "ghcr.io/org/app:1";
    assert_eq!(
        first.create.iter().map(images_of).collect::<Vec<_>>(),
        [vec![nginx, app], vec![nginx, app], vec![app]],
        "two docker.io pulls; ghcr.io has no budget"
    );
    assert_eq!(
        first.allowance.spent,
        BTreeMap::from([("docker.io".to_string(), 2)])
    );
    assert_eq!(first.waiting.len(), 1);
    assert_eq!(
        (
            first.waiting[0].node.as_str(),
            first.waiting[0].image.as_str(),
            first.waiting[0].reason.as_str()
        ),
        ("kind-worker3", nginx, "RegistryBudget")
    );
    assert_eq!(first.status.waiting, first.waiting);
    assert!(
        condition(&first.status, "Progressing").message.ends_with(
            "1 waiting, first docker.io/library/nginx:1.27 on kind-worker3: RegistryBudget"
        ),
        "{}",
        condition(&first.status, "Progressing").message
    );
    ledger.spend(&first.allowance, t0);

    // Pulled, and still no budget: the round waits for it, running.
    world.prefetch.status = Some(first.status.clone());
    world.allowance = ledger.allowance(t("2026-11-22T10:00:10Z"));
    let pulled: Vec<Pod> = first
        .create
        .iter()
        .map(|p| {
            let every = vec![pulled(); p.spec.as_ref().unwrap().containers.len()];
            kubelet(p.clone(), t0, &every)
        })
        .collect();
    let waiting = world.step(&pulled, first.memory.as_ref(), t("2026-11-22T10:00:10Z"));
    assert!(waiting.create.is_empty());
    assert_eq!(waiting.status.phase, Phase::Running);

    // An hour on, a pull is free again: kind-worker3 gets its image.
    world.prefetch.status = Some(waiting.status.clone());
    world.allowance = ledger.allowance(t("2026-11-22T11:00:00Z"));
    let later = world.step(&[], waiting.memory.as_ref(), t("2026-11-22T11:00:00Z"));
    assert_eq!(
        later.create.iter().map(images_of).collect::<Vec<_>>(),
        [vec![nginx]]
    );
    assert!(later.waiting.is_empty() && later.status.waiting.is_empty());
}
