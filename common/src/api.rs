//! The `Prefetch` API (`cache.techsquad.rocks/v1`). Field names are snake_case like the
//! original Go operator's, so its users' existing objects apply unchanged. The CRD in
//! `manifests/base/crd/` is generated from these types (`make crd`); a test fails when they drift.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits;

/// Desired state: which workloads' images (Deployments, StatefulSets, DaemonSets, Jobs,
/// CronJobs) to keep pre-pulled on which nodes, and how often.
// Each printcolumn(...) repeats the same keys; clippy reads them as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    // The derive names kube-core directly: this crate has kube-core, never kube's client.
    crates(kube_core = "::kube_core"),
    group = "cache.techsquad.rocks",
    version = "v1",
    kind = "Prefetch",
    plural = "prefetches",
    shortname = "pf",
    namespaced,
    status = "PrefetchStatus",
    doc = "Prefetch keeps the images of selected workloads (Deployments, StatefulSets, \
           DaemonSets, Jobs, CronJobs) pulled on matching nodes, so rollouts and scale-ups \
           start without waiting on registry pulls.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Phase of the last round"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.ready",
        description = "Node x image pairs pulled in the last round"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.total",
        description = "Node x image pairs targeted in the last round"
    ),
    printcolumn(
        name = "Warm",
        type_ = "integer",
        json_path = ".status.starts.warm",
        description = "Container starts of the selected workloads whose images were on the node"
    ),
    printcolumn(
        name = "Cold",
        type_ = "integer",
        json_path = ".status.starts.cold",
        description = "Container starts of the selected workloads that waited on a pull"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "string",
        json_path = ".status.nodes",
        description = "Nodes targeted"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct PrefetchSpec {
    /// Labels that select workloads in this Prefetch's namespace (all must match), of the
    /// kinds in `kinds` (Deployment, StatefulSet, DaemonSet, Job, CronJob). Their pod
    /// templates' containers', initContainers' and image volumes' images are prefetched. At
    /// least one entry.
    #[schemars(extend("minProperties" = 1))]
    pub filter_by_labels: BTreeMap<String, String>,

    /// Only nodes whose name contains this substring are targeted. Empty (the default)
    /// targets every node. Lower-case letters, digits, '.' and '-' only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub node_filter: Option<String>,

    /// Seconds between refresh rounds (default 300). A rollout signalled by the webhook
    /// starts a round at once, without waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub retry_after: Option<i64>,

    /// Nodes must carry all of these labels to be targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// At most this many nodes have a prefetch pod in flight for this Prefetch at once
    /// (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_parallel: Option<i64>,

    /// Seconds a node has to pull a round's images before its prefetch pod is stopped and
    /// the pull counted as failed (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub pull_timeout: Option<i64>,

    /// Tolerations given to prefetch pods, so they can reach tainted nodes. Nodes whose
    /// NoSchedule/NoExecute taints are not tolerated are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// PriorityClass given to prefetch pods. Unset by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Hold the new pods of a selected workload's rollout (a Deployment, StatefulSet,
    /// DaemonSet or CronJob; a Job never rolls out) with a scheduling gate until the
    /// rollout's new images are on the targeted nodes, so no new pod starts on a node that
    /// still has to pull. Needs the pod webhook and a running controller; a pod is
    /// released at the latest after gate_timeout. Delays rollouts by up to the pull time.
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_rollouts: Option<bool>,

    /// Seconds after the rollout signal at which gated pods are released even if their
    /// images are not on every node yet (a failed or slow pull never strands a rollout).
    /// Default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 3600))]
    pub gate_timeout: Option<i64>,

    /// Which workload kinds filter_by_labels selects: Deployment, StatefulSet, DaemonSet,
    /// Job, CronJob. Unset selects all five; an empty list selects none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<WorkloadKind>>,

    /// Images to prefetch whether or not a selected workload uses them yet, so that a
    /// pipeline can warm the next release before it deploys it. Image references as a pod
    /// names them (normalized like the workloads' images); at most 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub images: Option<Vec<String>>,

    /// Pull each image on a few nodes per zone first (the zone is the node's
    /// topology.kubernetes.io/zone label; nodes without it form one zone). The zone's other
    /// nodes start once one of those holds the image, so a node-local mirror (Spegel,
    /// Dragonfly) can serve them from inside the zone instead of the registry. Unset: every
    /// node pulls at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<Seed>,
}

/// `spec.seed`: which nodes pull an image first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Seed {
    /// Nodes per zone that pull each image before the zone's others (1 to 100).
    #[schemars(range(min = 1, max = 100))]
    pub per_zone: i64,
}

impl PrefetchSpec {
    pub fn node_filter(&self) -> &str {
        self.node_filter.as_deref().unwrap_or("")
    }
    pub fn retry_after_seconds(&self) -> i64 {
        self.retry_after.unwrap_or(limits::DEFAULT_RETRY_AFTER)
    }
    pub fn max_parallel(&self) -> i64 {
        self.max_parallel.unwrap_or(limits::DEFAULT_MAX_PARALLEL)
    }
    pub fn pull_timeout_seconds(&self) -> i64 {
        self.pull_timeout.unwrap_or(limits::DEFAULT_PULL_TIMEOUT)
    }
    pub fn gate_rollouts(&self) -> bool {
        self.gate_rollouts.unwrap_or(false)
    }
    pub fn gate_timeout_seconds(&self) -> i64 {
        self.gate_timeout.unwrap_or(limits::DEFAULT_GATE_TIMEOUT)
    }
    /// Whether `filter_by_labels` selects workloads of `kind` (`spec.kinds`; unset: all).
    pub fn selects_kind(&self, kind: WorkloadKind) -> bool {
        self.kinds
            .as_ref()
            .is_none_or(|kinds| kinds.contains(&kind))
    }
    /// `spec.seed.per_zone`: how many nodes per zone pull an image first; `None`: all of them.
    pub fn seed_per_zone(&self) -> Option<usize> {
        self.seed.and_then(|s| usize::try_from(s.per_zone).ok())
    }
    /// `spec.images` as written (empty when unset).
    pub fn declared_images(&self) -> &[String] {
        self.images.as_deref().unwrap_or(&[])
    }
}

/// A kind of workload whose pod template a Prefetch reads images from.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 5] = [
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
        }
    }
}

/// Phase of the last round, with the original operator's names plus SUCCEEDED.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Accepted; no round has started yet.
    #[default]
    Pending,
    /// A round is in progress.
    Running,
    /// The last round pulled every targeted image on every targeted node.
    Succeeded,
    /// The last round ended with at least one failed pull.
    Failed,
}

/// One failed pull of the last round.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PullFailure {
    /// Node that failed to pull.
    pub node: String,
    /// Normalized image reference.
    pub image: String,
    /// Machine-readable reason (ErrImagePull, ImagePullBackOff, InvalidImageName, DeadlineExceeded, ...).
    pub reason: String,
    /// Human-readable detail from the kubelet.
    #[serde(default)]
    pub message: String,
}

/// The most recent rollout signal acted upon. Its times have microseconds: `requested_at` is
/// the signal's identity, and two signals may fall within one second.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RolloutRecord {
    /// Deployment whose rollout brought new images; empty when another kind's did (see
    /// `workload`). Always written, so that a controller of an earlier release, which requires
    /// it, still reads the status after a downgrade.
    #[serde(default)]
    pub deployment: String,
    /// The workload whose rollout brought new images, as `Kind/name` (`StatefulSet/db`,
    /// `CronJob/report`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Images new in that rollout.
    pub images: Vec<String>,
    /// When the webhook saw the rollout (its `prefetch-requested-at` annotation).
    pub requested_at: Option<MicroTime>,
    /// When the reconciler started prefetching for it.
    pub observed_at: Option<MicroTime>,
    /// When every targeted node had the rollout's images pulled or failed (the round for
    /// this signal ended). Pods gated for this rollout are released then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetched_at: Option<MicroTime>,
}

/// Observed state, written by prefetch-controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct PrefetchStatus {
    /// PENDING, RUNNING, SUCCEEDED or FAILED.
    #[serde(default)]
    pub phase: Phase,
    /// metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Images of the selected workloads and the declared ones (normalized, sorted,
    /// de-duplicated).
    #[serde(default)]
    pub images: Vec<String>,
    /// Image -> where it comes from: `Kind/name` of each selected workload using it
    /// (`Deployment/web`, `CronJob/report`), and `declared` for spec.images; sorted. At most
    /// 10 entries per image: past that, the first workloads by name, `declared` if it is one,
    /// and a last entry `+N more` counting the workloads left out.
    #[serde(default)]
    pub sources: BTreeMap<String, Vec<String>>,
    /// Nodes targeted by the last round.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Node x image pairs of the last round.
    #[serde(default)]
    pub total: i64,
    /// Node x image pairs pulled (or already present) in the last round.
    #[serde(default)]
    pub ready: i64,
    /// Node x image pairs that failed in the last round.
    #[serde(default)]
    pub failed: i64,
    /// Up to 20 failures of the last round.
    #[serde(default)]
    pub failures: Vec<PullFailure>,
    /// Image -> imageID reported by the kubelet.
    #[serde(default)]
    pub digests: BTreeMap<String, String>,
    /// When the last round started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round_start: Option<Time>,
    /// When the last round ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_round_end: Option<Time>,
    /// When the next periodic round is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_round: Option<Time>,
    /// The most recent rollout signal acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout: Option<RolloutRecord>,
    /// The newest rollout signal (`requested_at`) such that its images and every earlier
    /// signal's are prefetched. Pods gated for a signal up to this one are released, even while
    /// a newer signal (`last_rollout`, another workload's perhaps) is still being prefetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetched_through: Option<MicroTime>,
    /// Ready, Progressing and Degraded conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Warm and cold starts of the selected workloads' containers, as the kubelet reported
    /// them in its `Pulled` Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts: Option<StartsStatus>,
    /// Image -> what this Prefetch's pulls of it measured across nodes, from the kubelet's
    /// `Pulled` Events of the prefetch pods. Only images pulled since the controller started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pulls: BTreeMap<String, ImagePullStatus>,
    /// Pairs of the running round whose pull may not start yet, and why: RegistryBudget (the
    /// image's registry has spent its pulls for the period, see --registry-budget) or
    /// ZoneSeed (another node of the zone pulls it first, see spec.seed). At most 20 are
    /// listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<WaitingPull>,
}

/// A (node, image) pair whose pull waits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct WaitingPull {
    /// Node that would pull it.
    pub node: String,
    /// Normalized image reference.
    pub image: String,
    /// RegistryBudget or ZoneSeed.
    pub reason: String,
    /// What it waits for.
    #[serde(default)]
    pub message: String,
}

/// Warm and cold starts of the selected workloads' containers (init containers and image
/// volumes included), counted from the kubelet's `Pulled` Events.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct StartsStatus {
    /// Starts whose image was already on the node, since the Prefetch was created.
    #[serde(default)]
    pub warm: i64,
    /// Starts that waited on a pull, since the Prefetch was created.
    #[serde(default)]
    pub cold: i64,
    /// Percent of warm starts among the starts of the last hour; absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_percent_last_hour: Option<i64>,
    /// The last cold start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cold: Option<ColdStart>,
    /// The time of the newest Event counted: a restarted controller counts only later ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted_through: Option<Time>,
}

/// A container start that waited on its image's pull.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ColdStart {
    /// The pod whose container waited.
    pub pod: String,
    /// The node it started on.
    pub node: String,
    /// The image it waited for, as the pod names it.
    pub image: String,
    /// How long the container waited on the pull, queueing in the kubelet included.
    pub seconds: f64,
    /// When the kubelet reported the pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

/// What the pulls of one image measured across nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ImagePullStatus {
    /// The image's size, as the node's container runtime reported it.
    #[serde(default)]
    pub size_bytes: i64,
    /// The median pull time across the nodes that pulled it.
    pub median_seconds: f64,
    /// The slowest node's pull time.
    pub slowest_seconds: f64,
    /// How many nodes' pulls these figures cover.
    pub nodes: i64,
}
