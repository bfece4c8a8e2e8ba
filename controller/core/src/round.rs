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

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use prefetch_common::limits::MAX_STATUS_FAILURES;
use prefetch_common::{
    Phase, Prefetch, PrefetchStatus, PullFailure, RolloutRecord, WaitingPull, WorkloadKind,
};

use crate::budget::Allowance;
use crate::outcome::{Outcome, PodReport, read_pod};
use crate::plan::{ImagePlan, NodePlan, all_status_sources};
use crate::pod::{NODE_ANNOTATION, PodRequest, prefetch_pod};
use crate::seed::ZoneSeeds;
pub use crate::signal::RolloutSignal;

/// No image to pull through an image volume (a node that has none).
static NONE: BTreeSet<String> = BTreeSet::new();

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
    pub outcomes: Outcomes,
    /// A rollout whose images are being prefetched.
    pub rollout: Option<OwedRollout>,
}

/// (node, image) -> what happened.
pub type Outcomes = BTreeMap<(String, String), Outcome>;

/// A rollout the round owes `prefetched_at` to: (requested at, images).
pub type OwedRollout = (Timestamp, BTreeSet<String>);

/// One (node, image) outcome a prefetch pod reported, first seen by this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub node: String,
    pub image: String,
    pub outcome: Outcome,
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
    /// The pulls each budgeted registry has left (`budget.rs`); the default holds no budget.
    pub allowance: Allowance,
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
    /// The plan's images that every target is done with (present, or an outcome recorded):
    /// a gated pod using only these may start, whichever rollout the round still owes.
    pub done_everywhere: BTreeSet<String>,
    /// The pulls this reconcile's pods take from the registries' budgets (`spent`).
    pub allowance: Allowance,
    /// Every pair whose pull waits, by reason (the status lists the first ones).
    pub waiting: Vec<WaitingPull>,
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

/// The phases, in order: record a new rollout signal; find the round to work on (the one in
/// memory, one the status says is running, or one a trigger starts), else idle; work the
/// round; write the conditions.
pub fn reconcile_round(input: &RoundInput<'_>) -> RoundDecision {
    let previous = input.prefetch.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = input.prefetch.metadata.generation;
    let mut events = Vec::new();

    // A newer rollout signal is recorded whatever the round state.
    let mut owed = None;
    if let Some(signal) = record_rollout_signal(input.rollout, &previous, input.now) {
        status.last_rollout = Some(signal.record);
        events.push(signal.event);
        owed = Some(signal.owed);
    }
    let memory = if let Some(memory) = input.memory.cloned() {
        Some(memory)
    } else if let Some(resumed) = resume_from_status(&previous) {
        Some(resumed)
    } else if let Some(start) = start_round(input, &previous) {
        status.last_round_start = Some(time(start.memory.started));
        status.next_round = Some(time(start.next_round));
        events.push(start.event);
        Some(start.memory)
    } else {
        None
    };
    let mut decision = match memory {
        Some(mut memory) => {
            if let Some(owed) = owed {
                memory.rollout = Some(supersede(memory.rollout.take(), owed));
            }
            work_round(input, memory, status, events)
        }
        None => idle(input, status, events),
    };
    decision.status = finalize_conditions(
        decision.status,
        &previous,
        input.prefetch.metadata.generation,
        input.now,
    );
    decision
}

/// One reconcile of a running round: read the pods, create what fits, count, then end the
/// round or keep it running. The status's conditions are left to the caller.
fn work_round(
    input: &RoundInput<'_>,
    mut memory: RoundMemory,
    mut status: PrefetchStatus,
    mut events: Vec<EventNote>,
) -> RoundDecision {
    let pods = read_pods(input, &mut memory.outcomes);
    status.digests.extend(pods.recorded.digests);
    events.extend(superseded_event(&pods.superseded));
    let seeds = ZoneSeeds::new(
        input.prefetch.spec.seed_per_zone(),
        &input.plan.targets,
        &memory.outcomes,
        &pods.pulling,
    );
    let creations = plan_creations(
        input,
        &memory.outcomes,
        &pods.occupied,
        pods.in_flight,
        seeds,
    );
    events.extend(creations.not_built);
    status.waiting = creations.waiting[..creations.waiting.len().min(MAX_STATUS_FAILURES)].to_vec();
    let tally = tally_round(input.plan, &memory.outcomes);
    write_counters(&mut status, input.plan, &tally);
    let rollout_latency = mark_rollout_prefetched(input.plan, &mut memory, &mut status, input.now);
    let done_everywhere = images_done(input.plan, &memory.outcomes);

    let round_over = tally.open == 0
        && creations.pods.is_empty()
        && pods.in_flight == 0
        && !creations.waiting_on_busy;
    let (memory, requeue_after) = if round_over {
        let retry_after = input.prefetch.spec.retry_after_seconds();
        let wait = end_round(&mut status, memory.started, retry_after, input.now);
        events.push(round_end_event(&status, &tally.failures));
        (None, wait)
    } else {
        status.phase = Phase::Running;
        let wait = running_requeue(pods.earliest_deadline, input.now);
        (Some(memory), wait)
    };
    RoundDecision {
        in_flight: pods.in_flight + creations.pods.len(),
        create: creations.pods,
        delete: pods.delete,
        status,
        memory,
        events,
        requeue_after,
        observed: pods.recorded.observed,
        newly_pulled: pods.recorded.newly_pulled,
        newly_failed: pods.recorded.newly_failed,
        rollout_latency,
        done_everywhere,
        allowance: creations.allowance,
        waiting: creations.waiting,
    }
}

// --- Phase: record a new rollout signal ---

/// A rollout signal newer than the status's, as this reconcile records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SignalRecord {
    /// The status's new `last_rollout` (not prefetched yet).
    record: RolloutRecord,
    /// What the round now owes `prefetched_at` to.
    owed: OwedRollout,
    event: EventNote,
}

fn record_rollout_signal(
    signal: Option<&RolloutSignal>,
    previous: &PrefetchStatus,
    now: Timestamp,
) -> Option<SignalRecord> {
    let signal = signal.filter(|s| is_new_signal(s, previous))?;
    Some(SignalRecord {
        record: RolloutRecord {
            deployment: match signal.workload.kind {
                WorkloadKind::Deployment => signal.workload.name.clone(),
                _ => String::new(),
            },
            workload: Some(signal.workload.to_string()),
            images: signal.images.clone(),
            requested_at: Some(micro_time(signal.requested_at)),
            observed_at: Some(micro_time(now)),
            prefetched_at: None,
        },
        owed: (
            signal.requested_at,
            signal
                .images
                .iter()
                .chain(&signal.unrecorded_images)
                .cloned()
                .collect(),
        ),
        event: EventNote {
            type_: "Normal",
            reason: "RolloutSignal",
            message: format!(
                "{} {} brings {}; prefetching now",
                signal.workload.kind.as_str(),
                signal.workload.name,
                signal.images.join(", ")
            ),
        },
    })
}

fn is_new_signal(signal: &RolloutSignal, status: &PrefetchStatus) -> bool {
    let seen = status
        .last_rollout
        .as_ref()
        .and_then(|r| r.requested_at.as_ref())
        .map(|t| t.0);
    seen.is_none_or(|seen| signal.requested_at > seen)
}

/// The rollout the round now owes `prefetched_at` to: the new signal, still owing the images of an
/// unfinished earlier one. A pod gated for the earlier signal is released when the later one is
/// prefetched (design: docs/src/design.md#warm-rollouts), so that must mean its images are done
/// too.
fn supersede(
    unfinished: Option<OwedRollout>,
    (requested_at, mut images): OwedRollout,
) -> OwedRollout {
    if let Some((_, earlier)) = unfinished {
        images.extend(earlier);
    }
    (requested_at, images)
}

// --- Phase: resume or start a round ---

/// The round the status says is running, rebuilt after a controller restart (the memory died
/// with the previous process): its start, its recorded failures, and the rollout it still owes.
/// Pulled pairs come back from the nodes' images and the surviving pods.
fn resume_from_status(previous: &PrefetchStatus) -> Option<RoundMemory> {
    if previous.phase != Phase::Running {
        return None;
    }
    let start = previous.last_round_start.as_ref()?;
    let outcomes = previous
        .failures
        .iter()
        .map(|f| {
            let outcome = Outcome::Failed {
                reason: f.reason.clone(),
                message: f.message.clone(),
            };
            ((f.node.clone(), f.image.clone()), outcome)
        })
        .collect();
    Some(RoundMemory {
        started: start.0,
        outcomes,
        rollout: unfinished_rollout(previous),
    })
}

/// The rollout a resumed round still owes `prefetched_at` to.
fn unfinished_rollout(status: &PrefetchStatus) -> Option<OwedRollout> {
    let record = status.last_rollout.as_ref()?;
    if record.prefetched_at.is_some() {
        return None;
    }
    Some((
        record.requested_at.as_ref()?.0,
        record.images.iter().cloned().collect(),
    ))
}

/// A round starting now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoundStart {
    memory: RoundMemory,
    /// When the round after it is due (`retry_after` from now).
    next_round: Timestamp,
    /// RoundStarted: why, and what the round covers.
    event: EventNote,
}

/// A new round, when `round_trigger` calls for one.
fn start_round(input: &RoundInput<'_>, previous: &PrefetchStatus) -> Option<RoundStart> {
    let why = round_trigger(input, previous)?;
    let plan = input.plan;
    let skipped = match plan.skipped_by_reason() {
        counts if counts.is_empty() => counts,
        counts => format!(" ({counts})"),
    };
    Some(RoundStart {
        memory: RoundMemory {
            started: input.now,
            outcomes: BTreeMap::new(),
            rollout: None,
        },
        next_round: after(input.now, input.prefetch.spec.retry_after_seconds()),
        event: EventNote {
            type_: "Normal",
            reason: "RoundStarted",
            message: format!(
                "{why}: {} image(s) on {} node(s), {} node(s) skipped{skipped}",
                plan.images.len(),
                plan.targets.len(),
                plan.skipped.len(),
            ),
        },
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
        return Some(format!("rollout of {}", signal.workload));
    }
    if let Some(why) = uncovered_by_last_round(input.plan, status) {
        return Some(why);
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

/// What the last round did not cover: an image change the webhook did not signal (its
/// Deployment hook fails open), or a node that joined.
fn uncovered_by_last_round(plan: &ImagePlan, status: &PrefetchStatus) -> Option<String> {
    let covered_images: BTreeSet<&String> = status.images.iter().collect();
    if let Some(image) = plan.images.iter().find(|i| !covered_images.contains(i)) {
        return Some(format!("new image {image}"));
    }
    let covered_nodes: BTreeSet<&String> = status.nodes.iter().collect();
    let joined = plan
        .targets
        .iter()
        .map(|t| &t.node)
        .find(|n| !covered_nodes.contains(n))?;
    Some(format!("node {joined} joined"))
}

// --- Phase: idle between rounds ---

/// Between rounds: only stray pods to clean up; look again when the next round is due.
fn idle(
    input: &RoundInput<'_>,
    mut status: PrefetchStatus,
    events: Vec<EventNote>,
) -> RoundDecision {
    write_plan_images(&mut status, input.plan);
    let next = status.next_round.as_ref().map_or(input.now, |t| t.0);
    RoundDecision {
        delete: input
            .pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect(),
        requeue_after: until(input.now, next).max(Duration::from_secs(1)),
        status,
        events,
        done_everywhere: images_done(input.plan, &Outcomes::new()),
        ..RoundDecision::default()
    }
}

/// The plan's images, in and out of a round: an image no workload wants any more leaves the
/// status (and its sources and digest) now, not at the next round.
fn write_plan_images(status: &mut PrefetchStatus, plan: &ImagePlan) {
    status.images = plan.images.clone();
    status.sources = all_status_sources(&plan.sources);
    status
        .digests
        .retain(|image, _| plan.images.contains(image));
}

// --- Phase: read the pods ---

/// What this Prefetch's pods say, read once per reconcile.
#[derive(Debug, Default)]
struct PodsRead {
    recorded: Recorded,
    /// Finished pods (their results now recorded) and pods on nodes no longer targeted.
    delete: Vec<String>,
    /// Nodes with a pod of ours, terminating ones included: no second pod goes there.
    occupied: BTreeSet<String>,
    /// Pods still working (neither finished, unwanted nor terminating).
    in_flight: usize,
    /// The first deadline among those, when the controller gives up on a pod itself.
    earliest_deadline: Option<Timestamp>,
    /// Pods deleted because every image they still had to pull is one the plan no longer
    /// wants: (node, those images).
    superseded: Vec<(String, Vec<String>)>,
    /// (node, image) the pods in flight are still pulling, for `spec.seed`.
    pulling: Vec<(String, String)>,
}

/// Pair outcomes first seen by this reconcile.
#[derive(Debug, Default)]
struct Recorded {
    /// As the pods reported them, digests kept.
    observed: Vec<Observed>,
    newly_pulled: usize,
    /// Reasons, one per failed pair.
    newly_failed: Vec<String>,
    /// Image -> digest of the pulls, for the status.
    digests: BTreeMap<String, String>,
}

/// Reads every pod: records outcomes not yet in `outcomes`, and sorts the pods into those to
/// delete and those in flight.
fn read_pods(input: &RoundInput<'_>, outcomes: &mut Outcomes) -> PodsRead {
    let targets: BTreeSet<&str> = input.plan.targets.iter().map(|t| t.node.as_str()).collect();
    let pull_timeout = input.prefetch.spec.pull_timeout_seconds();
    let mut read = PodsRead::default();
    for pod in input.pods {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        let node = pod_node(pod);
        let deadline = pod_deadline(pod, pull_timeout, input.now);
        let report = read_pod(pod, input.now >= deadline);
        read.recorded.record(&node, &report, outcomes);
        read.occupied.insert(node.clone());
        if pod.metadata.deletion_timestamp.is_some() {
            // Going already: it holds its node until gone, and is neither deleted again nor
            // counted in flight.
            continue;
        }
        let open = still_to_pull(&report);
        if report.finished || !targets.contains(node.as_str()) {
            read.delete.push(name);
        } else if superseded(&open, &input.plan.images) {
            read.delete.push(name);
            read.superseded.push((node, open));
        } else {
            read.in_flight += 1;
            read.pulling
                .extend(open.into_iter().map(|image| (node.clone(), image)));
            read.earliest_deadline =
                Some(read.earliest_deadline.map_or(deadline, |d| d.min(deadline)));
        }
    }
    read
}

/// The images a pod has not pulled yet (no outcome).
fn still_to_pull(report: &PodReport) -> Vec<String> {
    report
        .images
        .iter()
        .filter(|(_, outcome)| outcome.is_none())
        .map(|(image, _)| image.clone())
        .collect()
}

/// Whether the plan wants none of the images a pod still has to pull (`open`): a newer
/// rollout superseded the one it pulls for (and the old revision's pods are gone), so the pod
/// is deleted rather than waited for, and the node is free for the images now wanted (design:
/// docs/src/design.md#the-reconciler). Not while any of them is still wanted, by a workload,
/// a live revision or `spec.images`: those pulls go on.
fn superseded(open: &[String], plan_images: &[String]) -> bool {
    !open.is_empty() && !open.iter().any(|image| plan_images.contains(image))
}

/// PullsSuperseded, naming the images dropped and on how many nodes.
fn superseded_event(superseded: &[(String, Vec<String>)]) -> Option<EventNote> {
    if superseded.is_empty() {
        return None;
    }
    let images: BTreeSet<&String> = superseded.iter().flat_map(|(_, i)| i).collect();
    Some(EventNote {
        type_: "Normal",
        reason: "PullsSuperseded",
        message: format!(
            "stopped pulling {} on {} node(s): no workload, revision or spec.images wants it any more",
            images.into_iter().cloned().collect::<Vec<_>>().join(", "),
            superseded.len()
        ),
    })
}

/// The node a prefetch pod was made for (its annotation; empty when missing).
fn pod_node(pod: &Pod) -> String {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NODE_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

/// When the controller gives up on a pod: `pull_timeout` after its creation, plus
/// [`DEADLINE_GRACE`]. A pod without a creation time counts from now.
fn pod_deadline(pod: &Pod, pull_timeout_seconds: i64, now: Timestamp) -> Timestamp {
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    after(created, pull_timeout_seconds)
        .checked_add(DEADLINE_GRACE)
        .unwrap_or(created)
}

impl Recorded {
    /// Records in `outcomes` each outcome of `report` the round has not seen yet.
    fn record(&mut self, node: &str, report: &PodReport, outcomes: &mut Outcomes) {
        for (image, outcome) in &report.images {
            let Some(outcome) = outcome else {
                continue;
            };
            let Entry::Vacant(slot) = outcomes.entry((node.to_string(), image.clone())) else {
                continue;
            };
            self.observed.push(Observed {
                node: node.to_string(),
                image: image.clone(),
                outcome: outcome.clone(),
            });
            slot.insert(self.remembered(image, outcome));
        }
    }

    /// Counts a new outcome, and returns what the memory keeps of it. The memory holds one
    /// entry per pair of every running round (hundreds of thousands at scale): a pulled pair's
    /// digest is kept in the status only.
    fn remembered(&mut self, image: &str, outcome: &Outcome) -> Outcome {
        match outcome {
            Outcome::Pulled { image_id } => {
                self.newly_pulled += 1;
                if let Some(id) = image_id {
                    self.digests.insert(image.to_string(), id.clone());
                }
                Outcome::Pulled { image_id: None }
            }
            Outcome::Failed { reason, .. } => {
                self.newly_failed.push(reason.clone());
                outcome.clone()
            }
        }
    }
}

// --- Phase: plan the creations ---

/// The pods this reconcile creates.
#[derive(Debug, Default)]
struct Creations {
    pods: Vec<Pod>,
    /// PodNotBuilt warnings, for targets whose pod could not be built.
    not_built: Vec<EventNote>,
    /// A target that still needs images waits on a node busy with another Prefetch's pod: the
    /// round is not over, though nothing of ours is in flight.
    waiting_on_busy: bool,
    /// Pairs held back: by a zone's seed, or by their registry's budget.
    waiting: Vec<WaitingPull>,
    /// What the pods created take from the registries' budgets.
    allowance: Allowance,
}

/// A pod for each target that still needs images, warming nodes first, within `max_parallel`
/// (counting the pods in flight), skipping nodes with a pod already (ours or another
/// Prefetch's: one per node at a time), each pulling what its zone's seeds allow.
fn plan_creations(
    input: &RoundInput<'_>,
    outcomes: &Outcomes,
    occupied: &BTreeSet<String>,
    in_flight: usize,
    mut seeds: ZoneSeeds,
) -> Creations {
    let capacity = usize::try_from(input.prefetch.spec.max_parallel())
        .unwrap_or(1)
        .saturating_sub(in_flight);
    let mut creations = Creations {
        allowance: input.allowance.clone(),
        ..Creations::default()
    };
    for target in creation_order(&input.plan.targets) {
        let needed = still_needed(target, outcomes);
        if needed.is_empty() || occupied.contains(&target.node) {
            continue;
        }
        if input.busy_nodes.contains(&target.node) {
            creations.waiting_on_busy = true;
            continue;
        }
        if creations.pods.len() >= capacity {
            break;
        }
        let needed = creations.hold_back(target, needed, &mut seeds);
        if needed.is_empty() {
            // A seed's pod ending wakes the round; a budget freeing up, the round's poll.
            continue;
        }
        match prefetch_pod(&PodRequest {
            prefetch: input.prefetch,
            node: &target.node,
            images: &needed,
            pull_secrets: &input.plan.pull_secrets,
            through_volumes: if target.image_volumes {
                &input.plan.artifacts
            } else {
                &NONE
            },
            noop_image: input.noop_image,
            warmup_taint: input.warmup_taint,
        }) {
            Ok(pod) => creations.pods.push(pod),
            Err(err) => creations.not_built.push(EventNote {
                type_: "Warning",
                reason: "PodNotBuilt",
                message: err.to_string(),
            }),
        }
    }
    creations
}

impl Creations {
    /// The images of `needed` that `target` may pull now: those its zone's seeds allow (see
    /// `seed.rs`), then those whose registry has a pull left (see `budget.rs`). The others
    /// are noted as waiting, with why.
    fn hold_back(
        &mut self,
        target: &NodePlan,
        needed: Vec<String>,
        seeds: &mut ZoneSeeds,
    ) -> Vec<String> {
        let mut now = Vec::new();
        for image in needed {
            let (reason, message) = if !seeds.take(target, &image) {
                let zone = if target.zone.is_empty() {
                    "nodes without a zone"
                } else {
                    &target.zone
                };
                (
                    "ZoneSeed",
                    format!("waiting for a node of {zone} to pull it first"),
                )
            } else if self.allowance.take(&image) {
                now.push(image);
                continue;
            } else {
                (
                    crate::budget::REASON,
                    "its registry's pull budget for the period is spent".to_string(),
                )
            };
            self.waiting.push(WaitingPull {
                node: target.node.clone(),
                image,
                reason: reason.into(),
                message,
            });
        }
        now
    }
}

/// The order in which targets get pods: warming nodes first (design:
/// docs/src/design.md#warm-nodes), so they take the free `max_parallel` slots ahead of the others;
/// each group in plan order.
fn creation_order(targets: &[NodePlan]) -> impl Iterator<Item = &NodePlan> {
    let (warming, others): (Vec<&NodePlan>, Vec<&NodePlan>) =
        targets.iter().partition(|t| t.warming);
    warming.into_iter().chain(others)
}

/// The images a target still has to pull this round: those without an outcome.
fn still_needed(target: &NodePlan, outcomes: &Outcomes) -> Vec<String> {
    target
        .pull
        .iter()
        .filter(|image| !outcomes.contains_key(&(target.node.clone(), (*image).clone())))
        .cloned()
        .collect()
}

// --- Phase: count the round ---

/// The round over the current plan.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    /// Pairs present on their node or pulled.
    ready: i64,
    /// Every failed pair, by node then image.
    failures: Vec<PullFailure>,
    /// Pairs without an outcome yet.
    open: usize,
}

fn tally_round(plan: &ImagePlan, outcomes: &Outcomes) -> Tally {
    let mut tally = Tally::default();
    for target in &plan.targets {
        tally.ready += target.present.len() as i64;
        for image in &target.pull {
            match outcomes.get(&(target.node.clone(), image.clone())) {
                Some(Outcome::Pulled { .. }) => tally.ready += 1,
                Some(Outcome::Failed { reason, message }) => tally.failures.push(PullFailure {
                    node: target.node.clone(),
                    image: image.clone(),
                    reason: reason.clone(),
                    message: message.clone(),
                }),
                None => tally.open += 1,
            }
        }
    }
    tally
        .failures
        .sort_by(|a, b| (&a.node, &a.image).cmp(&(&b.node, &b.image)));
    tally
}

/// The status's view of the round: images, nodes, counters, and the first failures (the
/// status holds at most `MAX_STATUS_FAILURES`; `failed` counts them all).
fn write_counters(status: &mut PrefetchStatus, plan: &ImagePlan, tally: &Tally) {
    write_plan_images(status, plan);
    status.nodes = plan.targets.iter().map(|t| t.node.clone()).collect();
    status.total = plan.total_pairs() as i64;
    status.ready = tally.ready;
    status.failed = tally.failures.len() as i64;
    status.failures = tally.failures[..tally.failures.len().min(MAX_STATUS_FAILURES)].to_vec();
}

// --- Phase: mark the rollout prefetched ---

/// Once every target has an outcome for each image of the rollout the round owes, records
/// `prefetched_at` (what releases the pods held for it; design: docs/src/design.md#warm-rollouts),
/// forgets the rollout, and returns the time from its signal.
fn mark_rollout_prefetched(
    plan: &ImagePlan,
    memory: &mut RoundMemory,
    status: &mut PrefetchStatus,
    now: Timestamp,
) -> Option<Duration> {
    let (requested_at, images) = memory.rollout.as_ref()?;
    if !rollout_done(plan, &memory.outcomes, images) {
        return None;
    }
    let requested_at = *requested_at;
    // A newer signal in the status is not this one's to mark.
    if let Some(record) = status.last_rollout.as_mut()
        && record.requested_at.as_ref().map(|t| t.0) == Some(requested_at)
    {
        record.prefetched_at = Some(micro_time(now));
    }
    // Every earlier signal is done too: one unfinished when this one came is owed by this
    // round (see `supersede`), one finished before is done already.
    let through = status.prefetched_through.as_ref().map(|t| t.0);
    if through.is_none_or(|through| through < requested_at) {
        status.prefetched_through = Some(micro_time(requested_at));
    }
    memory.rollout = None;
    Some(until(requested_at, now))
}

/// The plan's images every target has present or with an outcome.
fn images_done(plan: &ImagePlan, outcomes: &Outcomes) -> BTreeSet<String> {
    plan.images
        .iter()
        .filter(|image| image_done(plan, outcomes, image))
        .cloned()
        .collect()
}

/// Whether every target has each of `images` (among those it wants) present or with an outcome.
fn rollout_done(plan: &ImagePlan, outcomes: &Outcomes, images: &BTreeSet<String>) -> bool {
    images.iter().all(|image| image_done(plan, outcomes, image))
}

/// Whether every target that wants `image` has it present or with an outcome.
fn image_done(plan: &ImagePlan, outcomes: &Outcomes, image: &str) -> bool {
    plan.targets.iter().all(|t| {
        !t.pull.iter().any(|wanted| wanted == image)
            || t.present.iter().any(|has| has == image)
            || outcomes.contains_key(&(t.node.clone(), image.to_string()))
    })
}

// --- Phase: end the round, or keep it running ---

/// Ends a round with nothing left to do: its phase, end time and when the next one is due
/// (`retry_after` from its start, not before now). Returns how long until then (a second at
/// least).
fn end_round(
    status: &mut PrefetchStatus,
    started: Timestamp,
    retry_after_seconds: i64,
    now: Timestamp,
) -> Duration {
    status.phase = if status.failed == 0 {
        Phase::Succeeded
    } else {
        Phase::Failed
    };
    status.last_round_end = Some(time(now));
    let next = after(started, retry_after_seconds).max(now);
    status.next_round = Some(time(next));
    until(now, next).max(Duration::from_secs(1))
}

/// RoundSucceeded, or RoundFailed naming the first five `failures` (by node then image).
fn round_end_event(status: &PrefetchStatus, failures: &[PullFailure]) -> EventNote {
    if status.failed == 0 {
        return EventNote {
            type_: "Normal",
            reason: "RoundSucceeded",
            message: format!(
                "{} of {} node x image pairs ready on {} node(s)",
                status.ready,
                status.total,
                status.nodes.len()
            ),
        };
    }
    let summary: Vec<String> = failures
        .iter()
        .take(5)
        .map(|f| format!("{} on {} ({})", f.image, f.node, f.reason))
        .collect();
    EventNote {
        type_: "Warning",
        reason: "RoundFailed",
        message: format!(
            "{} of {} pairs failed: {}{}",
            status.failed,
            status.total,
            summary.join("; "),
            if status.failed > 5 { "; ..." } else { "" }
        ),
    }
}

/// How soon to look again at a running round: at its first pod deadline (at least a second
/// away), and within [`ROUND_POLL`] for what no watch reports (busy nodes, deadlines).
fn running_requeue(earliest_deadline: Option<Timestamp>, now: Timestamp) -> Duration {
    earliest_deadline
        .map_or(ROUND_POLL, |d| until(now, d).max(Duration::from_secs(1)))
        .min(ROUND_POLL)
}

// --- Conditions ---

/// A condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConditionState {
    status: String,
    reason: String,
    message: String,
}

impl ConditionState {
    fn new(status: &str, reason: &str, message: impl Into<String>) -> Self {
        ConditionState {
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Ready, Progressing and Degraded, keeping each condition's lastTransitionTime while its
/// status stays the same (so an unchanged round writes an unchanged status).
fn finalize_conditions(
    mut status: PrefetchStatus,
    previous: &PrefetchStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> PrefetchStatus {
    let states = [
        ("Ready", ready_state(&status, previous)),
        ("Progressing", progressing_state(&status)),
        ("Degraded", degraded_state(&status)),
    ];
    status.conditions = states
        .into_iter()
        .map(|(type_, state)| {
            let before = previous.conditions.iter().find(|c| c.type_ == type_);
            let transition = match before {
                Some(c) if c.status == state.status => c.last_transition_time.clone(),
                _ => time(now),
            };
            Condition {
                type_: type_.into(),
                status: state.status,
                reason: state.reason,
                message: state.message,
                observed_generation: generation,
                last_transition_time: transition,
            }
        })
        .collect();
    status
}

/// Ready: the outcome of the last completed round.
fn ready_state(status: &PrefetchStatus, previous: &PrefetchStatus) -> ConditionState {
    match status.phase {
        Phase::Succeeded => ConditionState::new(
            "True",
            "RoundSucceeded",
            format!(
                "{} of {} node x image pairs ready",
                status.ready, status.total
            ),
        ),
        Phase::Failed => ConditionState::new(
            "False",
            "RoundFailed",
            format!(
                "{} of {} pairs failed in the last round",
                status.failed, status.total
            ),
        ),
        // Mid-round, readiness is that of the last completed round.
        _ => match previous.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) => ConditionState::new(&c.status, &c.reason, c.message.clone()),
            None => ConditionState::new("False", "FirstRoundRunning", "the first round is running"),
        },
    }
}

fn progressing_state(status: &PrefetchStatus) -> ConditionState {
    if status.phase == Phase::Running {
        let done = status.ready + status.failed;
        let mut message = format!("{done} of {} pairs done", status.total);
        if let Some(first) = status.waiting.first() {
            let listed = status.waiting.len();
            let count = if listed >= MAX_STATUS_FAILURES {
                format!("{listed} or more")
            } else {
                listed.to_string()
            };
            message.push_str(&format!(
                "; {count} waiting, first {} on {}: {}",
                first.image, first.node, first.reason
            ));
        }
        ConditionState::new("True", "RoundRunning", message)
    } else {
        ConditionState::new("False", "RoundComplete", "waiting for the next round")
    }
}

fn degraded_state(status: &PrefetchStatus) -> ConditionState {
    if status.failed > 0 {
        ConditionState::new(
            "True",
            "PullFailures",
            format!("{} pull(s) failed", status.failed),
        )
    } else {
        ConditionState::new("False", "NoFailures", "no pull failed")
    }
}

#[cfg(test)]
mod tests;
