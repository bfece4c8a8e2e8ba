//! Warm and cold starts, and what the pulls cost: which workload a started pod belongs to, the
//! share of warm starts over the last hour, and each image's pull times across nodes.
//!
//! A kubelet Event names only the pod, so the workload is found from the pod's name, the way
//! the workload controllers name what they make (as `prefetch_common::owner` reads a
//! ReplicaSet's and a Job's names): a StatefulSet's pod is `<statefulset>-<ordinal>`; the
//! pods of a ReplicaSet, DaemonSet or Job are the owner's name, `-`, and five random characters,
//! the owner's part cut to 58 characters when longer. A ReplicaSet is `<deployment>-<hash>`, a
//! CronJob's Job `<cronjob>-<minute>`. Only owners the caches hold count, and a name that leads
//! to more than one is not attributed.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prefetch_common::owner::WorkloadRef;
use prefetch_common::{ColdStart, ImagePullStatus, StartsStatus, WorkloadKind};

use crate::kubelet_events::Pulled;

/// The random suffix the API server appends to a `generateName`.
const GENERATED_SUFFIX: usize = 5;
/// A `generateName` longer than this is cut to it before the suffix is appended.
const GENERATED_BASE_MAX: usize = 58;

/// The kinds that own pods directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodOwnerKind {
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
}

/// What the shell's caches hold of the pod's namespace.
pub trait OwnerCaches {
    /// Whether a `kind` object of that name is cached.
    fn holds(&self, kind: PodOwnerKind, name: &str) -> bool;
    /// The names of cached `kind` objects that start with `prefix` (for an owner whose name
    /// was cut in its pods' names; rare, so this may scan).
    fn names_starting_with(&self, kind: PodOwnerKind, prefix: &str) -> Vec<String>;
    /// The controller owner of a cached ReplicaSet (its Deployment) or Job (its CronJob), if it
    /// has one of that kind.
    fn owner_of(&self, kind: PodOwnerKind, name: &str) -> Option<String>;
}

/// The workload that made the pod named `pod`, if exactly one cached owner leads to one.
pub fn workload_of_pod(pod: &str, caches: &impl OwnerCaches) -> Option<WorkloadRef> {
    let mut found: Vec<WorkloadRef> = stateful_set_of(pod, caches)
        .into_iter()
        .chain(generated_owner_of(pod, caches))
        .collect();
    found.dedup();
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

fn stateful_set_of(pod: &str, caches: &impl OwnerCaches) -> Option<WorkloadRef> {
    let (name, ordinal) = pod.rsplit_once('-')?;
    let is_ordinal = !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit());
    (is_ordinal && !name.is_empty() && caches.holds(PodOwnerKind::StatefulSet, name)).then(|| {
        WorkloadRef {
            kind: WorkloadKind::StatefulSet,
            name: name.to_string(),
        }
    })
}

/// The workload behind a pod named by `generateName`: its ReplicaSet's Deployment, its
/// DaemonSet, or its Job's CronJob (or the Job itself).
fn generated_owner_of(pod: &str, caches: &impl OwnerCaches) -> Vec<WorkloadRef> {
    let Some(base) = pod
        .len()
        .checked_sub(GENERATED_SUFFIX)
        .and_then(|at| pod.get(..at))
    else {
        return Vec::new();
    };
    let kinds = [
        PodOwnerKind::ReplicaSet,
        PodOwnerKind::DaemonSet,
        PodOwnerKind::Job,
    ];
    kinds
        .into_iter()
        .flat_map(|kind| {
            owners_named_by(base, kind, caches)
                .into_iter()
                .filter_map(move |owner| workload_of_owner(kind, owner, caches))
        })
        .collect()
}

/// The cached `kind` objects whose `generateName` (`<name>-`, cut to 58 characters) is `base`.
fn owners_named_by(base: &str, kind: PodOwnerKind, caches: &impl OwnerCaches) -> Vec<String> {
    if let Some(name) = base.strip_suffix('-') {
        return if caches.holds(kind, name) {
            vec![name.to_string()]
        } else {
            Vec::new()
        };
    }
    if base.len() < GENERATED_BASE_MAX {
        return Vec::new();
    }
    caches
        .names_starting_with(kind, base)
        .into_iter()
        .filter(|n| format!("{n}-").get(..GENERATED_BASE_MAX) == Some(base))
        .collect()
}

fn workload_of_owner(
    kind: PodOwnerKind,
    owner: String,
    caches: &impl OwnerCaches,
) -> Option<WorkloadRef> {
    let (kind, name) = match kind {
        PodOwnerKind::ReplicaSet => (WorkloadKind::Deployment, caches.owner_of(kind, &owner)?),
        PodOwnerKind::DaemonSet => (WorkloadKind::DaemonSet, owner),
        PodOwnerKind::StatefulSet => (WorkloadKind::StatefulSet, owner),
        PodOwnerKind::Job => match caches.owner_of(kind, &owner) {
            Some(cron_job) => (WorkloadKind::CronJob, cron_job),
            None => (WorkloadKind::Job, owner),
        },
    };
    Some(WorkloadRef { kind, name })
}

/// Warm and cold starts per minute over the last hour, for the share of warm starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HourWindow {
    /// Minute (seconds since the epoch / 60) -> (warm, cold).
    minutes: BTreeMap<i64, (u64, u64)>,
}

impl HourWindow {
    pub fn record(&mut self, at_seconds: i64, warm: bool) {
        let counts = self.minutes.entry(at_seconds.div_euclid(60)).or_default();
        if warm {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }

    /// The share of warm starts among the starts of the 60 minutes before `now_seconds`
    /// (forgetting older ones); `None` without a start in that hour.
    pub fn warm_share(&mut self, now_seconds: i64) -> Option<f64> {
        let first = now_seconds.div_euclid(60) - 59;
        self.minutes = self.minutes.split_off(&first);
        let (warm, cold) = self
            .minutes
            .values()
            .fold((0, 0), |(w, c), (mw, mc)| (w + mw, c + mc));
        let all = warm + cold;
        (all > 0).then(|| warm as f64 / all as f64)
    }
}

/// One image's pulls, the last per node, as prefetch pods' Events reported them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImagePulls {
    by_node: BTreeMap<String, Duration>,
    /// The size the last pull reported.
    pub size_bytes: u64,
}

impl ImagePulls {
    pub fn record(&mut self, node: &str, pull: Duration, size_bytes: u64) {
        self.by_node.insert(node.to_string(), pull);
        if size_bytes > 0 {
            self.size_bytes = size_bytes;
        }
    }

    /// Keeps the pulls of `nodes` only (the others left the cluster), so the figures describe
    /// the nodes there are.
    pub fn retain_nodes(&mut self, nodes: &std::collections::BTreeSet<String>) {
        self.by_node.retain(|node, _| nodes.contains(node));
    }

    /// The median pull time across nodes (the lower middle of an even count, so it is always
    /// a time some node measured); `None` before any pull.
    pub fn median(&self) -> Option<Duration> {
        let mut times: Vec<Duration> = self.by_node.values().copied().collect();
        times.sort();
        times.get(times.len().checked_sub(1)? / 2).copied()
    }

    pub fn slowest(&self) -> Option<Duration> {
        self.by_node.values().max().copied()
    }

    /// The figures a status shows; `None` before any pull.
    pub fn figures(&self) -> Option<ImagePullStatus> {
        Some(ImagePullStatus {
            size_bytes: i64::try_from(self.size_bytes).unwrap_or(i64::MAX),
            median_seconds: self.median()?.as_secs_f64(),
            slowest_seconds: self.slowest()?.as_secs_f64(),
            nodes: i64::try_from(self.by_node.len()).unwrap_or(i64::MAX),
        })
    }
}

/// A start of a selected workload's container, as its kubelet Event reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct Start<'a> {
    pub pod: &'a str,
    pub node: &'a str,
    pub pulled: &'a Pulled,
    /// When the kubelet reported it (the Event's first time).
    pub at: Timestamp,
}

/// One Prefetch's starts: the counts its status carries, and the last hour's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StartsTally {
    warm: i64,
    cold: i64,
    last_cold: Option<ColdStart>,
    counted_through: Option<Timestamp>,
    /// What the status counted through when this process took the counts over: Events up to
    /// then were counted by an earlier process (or leader), and the kubelet keeps them for an
    /// hour, so a relist shows them again.
    resumed_through: Option<Timestamp>,
    window: HourWindow,
}

impl StartsTally {
    /// Takes the counts over from a status.
    pub fn resumed(status: Option<&StartsStatus>) -> StartsTally {
        let Some(status) = status else {
            return StartsTally::default();
        };
        let through = status.counted_through.as_ref().map(|t| t.0);
        StartsTally {
            warm: status.warm,
            cold: status.cold,
            last_cold: status.last_cold.clone(),
            counted_through: through,
            resumed_through: through,
            window: HourWindow::default(),
        }
    }

    /// Counts a start; false when an earlier process counted it (reported no later than the
    /// status it resumed from said: an Event of that very second is taken as counted). Such
    /// a start still enters the last hour's share, which no status keeps.
    pub fn count(&mut self, start: &Start<'_>) -> bool {
        let warm = matches!(start.pulled, Pulled::AlreadyPresent { .. });
        self.window.record(start.at.as_second(), warm);
        if self
            .resumed_through
            .is_some_and(|through| start.at <= through)
        {
            return false;
        }
        self.counted_through = self.counted_through.max(Some(start.at));
        match start.pulled {
            Pulled::AlreadyPresent { .. } => self.warm += 1,
            Pulled::Pulled { image, waited, .. } => {
                self.cold += 1;
                self.last_cold = Some(ColdStart {
                    pod: start.pod.to_string(),
                    node: start.node.to_string(),
                    image: image.clone(),
                    seconds: waited.as_secs_f64(),
                    at: Some(Time(start.at)),
                });
            }
        }
        true
    }

    /// The status of the counts at `now`.
    pub fn status(&mut self, now: Timestamp) -> StartsStatus {
        let share = self.window.warm_share(now.as_second());
        StartsStatus {
            warm: self.warm,
            cold: self.cold,
            // Rounded down, so 100 means every start of the hour was warm.
            warm_percent_last_hour: share.map(|s| (s * 100.0).floor() as i64),
            last_cold: self.last_cold.clone(),
            counted_through: self.counted_through.map(Time),
        }
    }
}

/// What a Prefetch's status says of its images' pulls: each image this process measured a
/// pull of, else what `previous` (the cached status) said of it. A new leader cannot measure
/// again the pulls of prefetch pods that are gone, and a warm cluster pulls nothing new, so
/// the figures live on in the status.
pub fn pull_figures(
    images: &[String],
    pulls: &BTreeMap<String, ImagePulls>,
    previous: &BTreeMap<String, ImagePullStatus>,
) -> BTreeMap<String, ImagePullStatus> {
    images
        .iter()
        .filter_map(|image| {
            let figures = pulls
                .get(image)
                .and_then(ImagePulls::figures)
                .or_else(|| previous.get(image).cloned())?;
            Some((image.clone(), figures))
        })
        .collect()
}

#[cfg(test)]
mod tests;
