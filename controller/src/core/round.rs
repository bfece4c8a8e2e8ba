//! One reconcile of one Prefetch, as a pure function: from the Prefetch, the plan, its pods
//! and the round so far, decide the pods to create and delete, the status to write, the
//! events to record and when to look again.
//!
//! A round targets every (node, image) pair of the plan. A pair is done when the node already
//! lists the image, or when a prefetch pod reported it pulled or failed. Outcomes are kept per
//! pair, so a rollout that adds an image mid-round simply extends the round. The round memory
//! lives in the controller; after a restart it is rebuilt from the status (round start,
//! failures), the surviving pods, and the nodes' images; deterministic pod names mean no pod
//! is created twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use prefetch_common::limits::MAX_STATUS_FAILURES;
use prefetch_common::{Phase, Prefetch, PrefetchStatus, PullFailure, RolloutRecord};

use crate::core::outcome::{Outcome, read_pod};
use crate::core::plan::{ImagePlan, NodePlan};
use crate::core::pod::{NODE_ANNOTATION, PodRequest, prefetch_pod};

/// Grace beyond `pull_timeout` before the controller itself gives up on a pod (the kubelet
/// normally ends it first, with DeadlineExceeded).
pub const DEADLINE_GRACE: Duration = Duration::from_secs(30);
/// How often to look again while a round waits on something no watch reports (nodes busy
/// with another Prefetch's pods, deadlines).
pub const ROUND_POLL: Duration = Duration::from_secs(10);

/// The round in progress, kept by the controller between reconciles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundMemory {
    pub started: Timestamp,
    /// (node, image) -> what happened.
    pub outcomes: BTreeMap<(String, String), Outcome>,
    /// A rollout whose images are being prefetched: (requested at, images).
    pub rollout: Option<(Timestamp, BTreeSet<String>)>,
}

/// One (node, image) outcome a prefetch pod reported, first seen by this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub node: String,
    pub image: String,
    pub outcome: Outcome,
}

/// The newest rollout signal among the selected Deployments (webhook annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSignal {
    pub deployment: String,
    pub images: Vec<String>,
    pub requested_at: Timestamp,
}

pub struct RoundInput<'a> {
    pub prefetch: &'a Prefetch,
    pub plan: &'a ImagePlan,
    /// This Prefetch's prefetch pods.
    pub pods: &'a [Pod],
    /// Nodes with an in-flight prefetch pod of another Prefetch (one per node at a time).
    pub busy_nodes: &'a BTreeSet<String>,
    pub rollout: Option<&'a RolloutSignal>,
    pub memory: Option<&'a RoundMemory>,
    pub now: Timestamp,
    pub noop_image: &'a str,
    /// `--warmup-taint`, `None` when warm nodes are off: prefetch pods tolerate it.
    pub warmup_taint: Option<&'a str>,
    /// Warming targets with a pair not done yet (`warmup::open_warming_targets`): a round runs
    /// for them at once, even when the last round covered the node.
    pub warming_open: &'a BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    /// Normal or Warning.
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct RoundDecision {
    pub create: Vec<Pod>,
    /// Names of pods to delete (finished, results recorded; or no longer wanted).
    pub delete: Vec<String>,
    pub status: PrefetchStatus,
    /// `None` when no round is running.
    pub memory: Option<RoundMemory>,
    pub events: Vec<EventNote>,
    pub requeue_after: Duration,
    /// Every pair outcome recorded by this reconcile, as the pod reported it (digest kept),
    /// for what outlives the round (see `ledger.rs`).
    pub observed: Vec<Observed>,
    /// Pairs recorded by this reconcile, for metrics.
    pub newly_pulled: usize,
    pub newly_failed: Vec<String>,
    /// Time from a rollout signal to all its images prefetched, when that completed now.
    pub rollout_latency: Option<Duration>,
    /// Pods in flight after this reconcile (created ones included).
    pub in_flight: usize,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

/// Rollout times keep microseconds: `requested_at` identifies the signal.
fn micro_time(t: Timestamp) -> MicroTime {
    MicroTime(t)
}

fn after(t: Timestamp, seconds: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(t)
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// Whether `cached`, the Prefetch's status as a watch cache shows it, predates this process's
/// own write that ended the round started at `ended`: it still says that round is running. A
/// reconcile right after the one that ended a round (one the round's own events queued) can
/// read such a cache; deciding from it would resume the ended round, give a pod again to every
/// pair that had failed, and write the stale status back. Compared at whole seconds, as the
/// API server stores times.
pub fn cached_status_predates(cached: Option<&PrefetchStatus>, ended: Timestamp) -> bool {
    cached.is_some_and(|s| {
        s.phase == Phase::Running
            && s.last_round_start
                .as_ref()
                .is_some_and(|t| t.0.as_second() == ended.as_second())
    })
}

/// Why a new round starts now, if one should.
fn round_trigger(input: &RoundInput<'_>, status: &PrefetchStatus) -> Option<String> {
    let generation = input.prefetch.metadata.generation;
    let Some(start) = &status.last_round_start else {
        return Some("first round".into());
    };
    if generation.is_some() && generation != status.observed_generation {
        return Some("spec changed".into());
    }
    if let Some(signal) = input.rollout
        && is_new_signal(signal, status)
    {
        return Some(format!("rollout of Deployment {}", signal.deployment));
    }
    // What the last round did not cover: an image change the webhook did not signal (its
    // Deployment hook fails open), or a node that joined.
    let covered_images: BTreeSet<&String> = status.images.iter().collect();
    if let Some(image) = input
        .plan
        .images
        .iter()
        .find(|i| !covered_images.contains(i))
    {
        return Some(format!("new image {image}"));
    }
    let covered_nodes: BTreeSet<&String> = status.nodes.iter().collect();
    if let Some(node) = input
        .plan
        .targets
        .iter()
        .map(|t| &t.node)
        .find(|n| !covered_nodes.contains(n))
    {
        return Some(format!("node {node} joined"));
    }
    if let Some(node) = input.warming_open.first() {
        return Some(format!("node {node} is warming"));
    }
    let next = status.next_round.as_ref().map_or(
        after(start.0, input.prefetch.spec.retry_after_seconds()),
        |t| t.0,
    );
    (input.now >= next).then(|| "retry_after elapsed".into())
}

/// The rollout a resumed round still owes `prefetched_at` to (the memory that tracked it died
/// with the previous process).
fn unfinished_rollout(status: &PrefetchStatus) -> Option<(Timestamp, BTreeSet<String>)> {
    let record = status.last_rollout.as_ref()?;
    if record.prefetched_at.is_some() {
        return None;
    }
    Some((
        record.requested_at.as_ref()?.0,
        record.images.iter().cloned().collect(),
    ))
}

/// The rollout the round now owes `prefetched_at` to: the new signal, still owing the images of
/// an unfinished earlier one. A pod gated for the earlier signal is released when the later
/// one is prefetched (DESIGN.md section 9), so that must mean its images are done too.
fn supersede(
    unfinished: Option<(Timestamp, BTreeSet<String>)>,
    (requested_at, mut images): (Timestamp, BTreeSet<String>),
) -> (Timestamp, BTreeSet<String>) {
    if let Some((_, earlier)) = unfinished {
        images.extend(earlier);
    }
    (requested_at, images)
}

fn is_new_signal(signal: &RolloutSignal, status: &PrefetchStatus) -> bool {
    let seen = status
        .last_rollout
        .as_ref()
        .and_then(|r| r.requested_at.as_ref())
        .map(|t| t.0);
    seen.is_none_or(|seen| signal.requested_at > seen)
}

/// The order in which targets get pods: warming nodes first (DESIGN.md section 8), so they take
/// the free `max_parallel` slots ahead of the others; each group in plan order.
fn creation_order(targets: &[NodePlan]) -> impl Iterator<Item = &NodePlan> {
    let (warming, others): (Vec<&NodePlan>, Vec<&NodePlan>) =
        targets.iter().partition(|t| t.warming);
    warming.into_iter().chain(others)
}

pub fn reconcile_round(input: &RoundInput<'_>) -> RoundDecision {
    let prefetch = input.prefetch;
    let spec = &prefetch.spec;
    let previous = prefetch.status.clone().unwrap_or_default();
    let now = input.now;
    let mut decision = RoundDecision::default();
    let mut status = previous.clone();
    status.observed_generation = prefetch.metadata.generation;

    // A newer rollout signal is recorded whatever the round state.
    let mut memory = input.memory.cloned();
    let mut new_rollout = None;
    if let Some(signal) = input.rollout
        && is_new_signal(signal, &previous)
    {
        status.last_rollout = Some(RolloutRecord {
            deployment: signal.deployment.clone(),
            images: signal.images.clone(),
            requested_at: Some(micro_time(signal.requested_at)),
            observed_at: Some(micro_time(now)),
            prefetched_at: None,
        });
        new_rollout = Some((
            signal.requested_at,
            signal.images.iter().cloned().collect::<BTreeSet<_>>(),
        ));
        decision.events.push(EventNote {
            type_: "Normal",
            reason: "RolloutSignal",
            message: format!(
                "Deployment {} brings {}; prefetching now",
                signal.deployment,
                signal.images.join(", ")
            ),
        });
    }

    // Resume a round the status says is running (controller restarted), or start one.
    if memory.is_none()
        && previous.phase == Phase::Running
        && let Some(start) = &previous.last_round_start
    {
        let outcomes = previous
            .failures
            .iter()
            .map(|f| {
                (
                    (f.node.clone(), f.image.clone()),
                    Outcome::Failed {
                        reason: f.reason.clone(),
                        message: f.message.clone(),
                    },
                )
            })
            .collect();
        memory = Some(RoundMemory {
            started: start.0,
            outcomes,
            rollout: unfinished_rollout(&previous),
        });
    }
    if memory.is_none()
        && let Some(why) = round_trigger(input, &previous)
    {
        memory = Some(RoundMemory {
            started: now,
            outcomes: BTreeMap::new(),
            rollout: None,
        });
        status.last_round_start = Some(time(now));
        status.next_round = Some(time(after(now, spec.retry_after_seconds())));
        decision.events.push(EventNote {
            type_: "Normal",
            reason: "RoundStarted",
            message: format!(
                "{why}: {} image(s) on {} node(s), {} node(s) skipped{}",
                input.plan.images.len(),
                input.plan.targets.len(),
                input.plan.skipped.len(),
                match input.plan.skipped_by_reason() {
                    counts if counts.is_empty() => counts,
                    counts => format!(" ({counts})"),
                }
            ),
        });
    }
    let Some(mut memory) = memory else {
        // Idle between rounds: only stray pods to clean up.
        decision.delete = input
            .pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        status.images = input.plan.images.clone();
        // An image no workload wants any more leaves the status now, not at the next round.
        status
            .digests
            .retain(|image, _| input.plan.images.contains(image));
        decision.status = finalize_conditions(status, &previous, prefetch.metadata.generation, now);
        let next = decision.status.next_round.as_ref().map_or(now, |t| t.0);
        decision.requeue_after = until(now, next).max(Duration::from_secs(1));
        return decision;
    };
    if let Some(rollout) = new_rollout {
        memory.rollout = Some(supersede(memory.rollout.take(), rollout));
    }

    // Read every pod: record outcomes, delete the finished and the unwanted.
    let targets: BTreeMap<&str, &NodePlan> = input
        .plan
        .targets
        .iter()
        .map(|t| (t.node.as_str(), t))
        .collect();
    let mut occupied = BTreeSet::new();
    let mut in_flight = 0usize;
    let mut earliest_deadline: Option<Timestamp> = None;
    for pod in input.pods {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let node = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NODE_ANNOTATION))
            .cloned()
            .unwrap_or_default();
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let created = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        let deadline = after(created, spec.pull_timeout_seconds())
            .checked_add(DEADLINE_GRACE)
            .unwrap_or(created);
        let report = read_pod(pod, now >= deadline);
        for (image, outcome) in &report.images {
            if let Some(outcome) = outcome {
                let key = (node.clone(), image.clone());
                if let std::collections::btree_map::Entry::Vacant(slot) = memory.outcomes.entry(key)
                {
                    decision.observed.push(Observed {
                        node: node.clone(),
                        image: image.clone(),
                        outcome: outcome.clone(),
                    });
                    // The memory holds one entry per pair of every running round (hundreds of
                    // thousands at scale): keep a pulled pair's digest in the status only.
                    let remembered = match outcome {
                        Outcome::Pulled { image_id } => {
                            decision.newly_pulled += 1;
                            if let Some(id) = image_id {
                                status.digests.insert(image.clone(), id.clone());
                            }
                            Outcome::Pulled { image_id: None }
                        }
                        Outcome::Failed { reason, .. } => {
                            decision.newly_failed.push(reason.clone());
                            outcome.clone()
                        }
                    };
                    slot.insert(remembered);
                }
            }
        }
        occupied.insert(node.clone());
        if terminating {
            continue;
        }
        if report.finished || !targets.contains_key(node.as_str()) {
            decision.delete.push(name);
        } else {
            in_flight += 1;
            earliest_deadline =
                Some(earliest_deadline.map_or(deadline, |d: Timestamp| d.min(deadline)));
        }
    }

    // Create pods for nodes that still need images, within the limits.
    let capacity = usize::try_from(spec.max_parallel())
        .unwrap_or(1)
        .saturating_sub(in_flight);
    let mut waiting_on_busy = false;
    for target in creation_order(&input.plan.targets) {
        let needed: Vec<String> = target
            .pull
            .iter()
            .filter(|image| {
                !memory
                    .outcomes
                    .contains_key(&(target.node.clone(), (*image).clone()))
            })
            .cloned()
            .collect();
        if needed.is_empty() || occupied.contains(&target.node) {
            continue;
        }
        if input.busy_nodes.contains(&target.node) {
            waiting_on_busy = true;
            continue;
        }
        if decision.create.len() >= capacity {
            break;
        }
        match prefetch_pod(&PodRequest {
            prefetch,
            node: &target.node,
            images: &needed,
            pull_secrets: &input.plan.pull_secrets,
            noop_image: input.noop_image,
            warmup_taint: input.warmup_taint,
        }) {
            Ok(pod) => decision.create.push(pod),
            Err(err) => decision.events.push(EventNote {
                type_: "Warning",
                reason: "PodNotBuilt",
                message: err.to_string(),
            }),
        }
    }
    decision.in_flight = in_flight + decision.create.len();

    // Tally the round over the current plan.
    let mut ready = 0i64;
    let mut failures = Vec::new();
    let mut open = 0usize;
    for target in &input.plan.targets {
        ready += target.present.len() as i64;
        for image in &target.pull {
            match memory.outcomes.get(&(target.node.clone(), image.clone())) {
                Some(Outcome::Pulled { .. }) => ready += 1,
                Some(Outcome::Failed { reason, message }) => failures.push(PullFailure {
                    node: target.node.clone(),
                    image: image.clone(),
                    reason: reason.clone(),
                    message: message.clone(),
                }),
                None => open += 1,
            }
        }
    }
    status
        .digests
        .retain(|image, _| input.plan.images.contains(image));
    status.images = input.plan.images.clone();
    status.nodes = input.plan.targets.iter().map(|t| t.node.clone()).collect();
    status.total = input.plan.total_pairs() as i64;
    status.ready = ready;
    status.failed = failures.len() as i64;
    failures.sort_by(|a, b| (&a.node, &a.image).cmp(&(&b.node, &b.image)));
    let failure_summary: Vec<String> = failures
        .iter()
        .take(5)
        .map(|f| format!("{} on {} ({})", f.image, f.node, f.reason))
        .collect();
    failures.truncate(MAX_STATUS_FAILURES);
    status.failures = failures;

    // A rollout is prefetched once every target has an outcome for each of its images.
    if let Some((requested_at, images)) = &memory.rollout {
        let done = input.plan.targets.iter().all(|t| {
            images.iter().all(|image| {
                t.present.contains(image)
                    || !t.pull.contains(image)
                    || memory
                        .outcomes
                        .contains_key(&(t.node.clone(), image.clone()))
            })
        });
        if done {
            decision.rollout_latency = Some(until(*requested_at, now));
            // What releases the pods held for this rollout (DESIGN.md section 9).
            if let Some(record) = status.last_rollout.as_mut()
                && record.requested_at.as_ref().map(|t| t.0) == Some(*requested_at)
            {
                record.prefetched_at = Some(micro_time(now));
            }
            memory.rollout = None;
        }
    }

    let round_over = open == 0 && decision.create.is_empty() && in_flight == 0 && !waiting_on_busy;
    if round_over {
        status.phase = if status.failed == 0 {
            Phase::Succeeded
        } else {
            Phase::Failed
        };
        status.last_round_end = Some(time(now));
        let next = after(memory.started, spec.retry_after_seconds()).max(now);
        status.next_round = Some(time(next));
        decision.events.push(if status.failed == 0 {
            EventNote {
                type_: "Normal",
                reason: "RoundSucceeded",
                message: format!(
                    "{} of {} node x image pairs ready on {} node(s)",
                    status.ready,
                    status.total,
                    status.nodes.len()
                ),
            }
        } else {
            EventNote {
                type_: "Warning",
                reason: "RoundFailed",
                message: format!(
                    "{} of {} pairs failed: {}{}",
                    status.failed,
                    status.total,
                    failure_summary.join("; "),
                    if status.failed > 5 { "; ..." } else { "" }
                ),
            }
        });
        decision.requeue_after = until(now, next).max(Duration::from_secs(1));
        decision.memory = None;
    } else {
        status.phase = Phase::Running;
        let deadline_wait =
            earliest_deadline.map_or(ROUND_POLL, |d| until(now, d).max(Duration::from_secs(1)));
        decision.requeue_after = deadline_wait.min(ROUND_POLL);
        decision.memory = Some(memory);
    }
    decision.status = finalize_conditions(status, &previous, prefetch.metadata.generation, now);
    decision
}

/// Ready, Progressing and Degraded, keeping each condition's lastTransitionTime while its
/// status stays the same (so an unchanged round writes an unchanged status).
fn finalize_conditions(
    mut status: PrefetchStatus,
    previous: &PrefetchStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> PrefetchStatus {
    let running = status.phase == Phase::Running;
    let last_ok = match status.phase {
        Phase::Succeeded => Some(true),
        Phase::Failed => Some(false),
        _ => None,
    };
    let ready = match last_ok {
        Some(true) => (
            "True".to_string(),
            "RoundSucceeded".to_string(),
            format!(
                "{} of {} node x image pairs ready",
                status.ready, status.total
            ),
        ),
        Some(false) => (
            "False".into(),
            "RoundFailed".into(),
            format!(
                "{} of {} pairs failed in the last round",
                status.failed, status.total
            ),
        ),
        None => match previous.conditions.iter().find(|c| c.type_ == "Ready") {
            // Mid-round, readiness is that of the last completed round.
            Some(c) => (c.status.clone(), c.reason.clone(), c.message.clone()),
            None => (
                "False".into(),
                "FirstRoundRunning".into(),
                "the first round is running".into(),
            ),
        },
    };
    let progressing = if running {
        (
            "True".to_string(),
            "RoundRunning".to_string(),
            format!(
                "{} of {} pairs done",
                status.ready + status.failed,
                status.total
            ),
        )
    } else {
        (
            "False".into(),
            "RoundComplete".into(),
            "waiting for the next round".into(),
        )
    };
    let degraded = if status.failed > 0 {
        (
            "True".to_string(),
            "PullFailures".to_string(),
            format!("{} pull(s) failed", status.failed),
        )
    } else {
        ("False".into(), "NoFailures".into(), "no pull failed".into())
    };
    status.conditions = [
        ("Ready", ready),
        ("Progressing", progressing),
        ("Degraded", degraded),
    ]
    .into_iter()
    .map(|(type_, (state, reason, message))| {
        let before = previous.conditions.iter().find(|c| c.type_ == type_);
        let transition = match before {
            Some(c) if c.status == *state => c.last_transition_time.clone(),
            _ => time(now),
        };
        Condition {
            type_: type_.into(),
            status: state,
            reason,
            message,
            observed_generation: generation,
            last_transition_time: transition,
        }
    })
    .collect();
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::plan::plan_images;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};

    const NGINX: &str = "docker.io/library/nginx:1.7.9";
    const WARMING: &str = crate::core::taint::DEFAULT_WARMUP_TAINT;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn prefetch(spec: Value, status: Option<PrefetchStatus>, generation: i64) -> Prefetch {
        let mut base = json!({"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"});
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
        serde_json::from_value(json!({"metadata": {"name": "nginx", "namespace": "default", "labels": {"app": "nginx"}},
            "spec": {"selector": {}, "template": {"spec": {"containers": containers}}}}))
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

    /// The kubelet pulled every image of every pod in `created`.
    /// The created pods as the kubelet reports them, every container in `state`.
    fn all_in(created: &[Pod], at: Timestamp, state: Value) -> Vec<Pod> {
        created
            .iter()
            .map(|p| kubelet(p.clone(), at, std::slice::from_ref(&state)))
            .collect()
    }

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
    }

    impl World {
        fn walkthrough() -> Self {
            World {
                prefetch: prefetch(json!({}), None, 1),
                deployments: vec![deployment(&["nginx:1.7.9"])],
                nodes: walkthrough(&[]),
                busy: BTreeSet::new(),
                rollout: None,
                warming_open: BTreeSet::new(),
            }
        }

        fn step(
            &self,
            pods: &[Pod],
            memory: Option<&RoundMemory>,
            now: Timestamp,
        ) -> RoundDecision {
            let plan = plan_images(
                &self.prefetch,
                &self.deployments,
                &self.nodes,
                Some(WARMING),
            );
            reconcile_round(&RoundInput {
                prefetch: &self.prefetch,
                plan: &plan,
                pods,
                busy_nodes: &self.busy,
                rollout: self.rollout.as_ref(),
                memory,
                now,
                noop_image: "kube-prefetch/controller:dev",
                warmup_taint: Some(WARMING),
                warming_open: &self.warming_open,
            })
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
        assert_eq!(
            (first.status.total, first.status.ready, first.status.failed),
            (3, 0, 0)
        );
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
        assert_eq!(
            (
                second.status.total,
                second.status.ready,
                second.status.failed
            ),
            (3, 3, 0)
        );
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
        let mut world = World::walkthrough();
        let t0 = t("2026-11-22T10:00:00Z");
        let first = world.step(&[], None, t0);
        world.prefetch.status = Some(first.status.clone());
        let pods: Vec<Pod> = all_pulled(&first.create, t0);
        let done = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:10Z"));
        world.prefetch.status = Some(done.status.clone());

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
            deployment: "nginx".into(),
            images: vec!["docker.io/library/nginx:1.25".into()],
            requested_at: t("2026-11-22T10:00:19Z"),
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
            deployment: "nginx".into(),
            images: vec![format!("docker.io/library/{image}")],
            requested_at: t(at),
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

    #[test]
    fn an_image_dropped_between_rounds_leaves_images_and_digests_at_once() {
        let mut world = World::walkthrough();
        let t0 = t("2026-11-22T10:00:00Z");
        let first = world.step(&[], None, t0);
        world.prefetch.status = Some(first.status.clone());
        let pods = all_pulled(&first.create, t0);
        let mut done = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:05Z"));
        assert_eq!(done.status.phase, Phase::Succeeded);
        // The digest of an image the Deployment has since dropped.
        let redis = "docker.io/library/redis:7".to_string();
        done.status
            .digests
            .insert(redis.clone(), "redis@sha256:1".into());
        done.status.images.push(redis);
        world.prefetch.status = Some(done.status.clone());

        let idle = world.step(&[], None, t("2026-11-22T10:00:10Z"));
        assert!(idle.create.is_empty(), "no round for a removal");
        assert_eq!(idle.status.images, ["docker.io/library/nginx:1.7.9"]);
        assert_eq!(
            idle.status.digests.keys().collect::<Vec<_>>(),
            ["docker.io/library/nginx:1.7.9"]
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
        let mut world = World::walkthrough();
        let first = world.step(&[], None, t("2026-11-22T10:00:00Z"));
        world.prefetch.status = Some(first.status.clone());
        let pods: Vec<Pod> = all_pulled(&first.create, t("2026-11-22T10:00:00Z"));
        let done = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:10Z"));
        world.prefetch = prefetch(json!({"node_filter": ""}), Some(done.status.clone()), 2);
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
        let mut world = World::walkthrough();
        let t0 = t("2026-11-22T10:00:00Z");
        let first = world.step(&[], None, t0);
        world.prefetch.status = Some(first.status.clone());
        let pods: Vec<Pod> = all_pulled(&first.create, t0);
        let done = world.step(&pods, first.memory.as_ref(), t("2026-11-22T10:00:10Z"));
        world.prefetch.status = Some(done.status.clone());
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
}
