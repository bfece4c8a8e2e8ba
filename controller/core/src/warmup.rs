//! Warm nodes (design: docs/src/design.md#warm-nodes), the pure part: which nodes are warming, what
//! every Prefetch still wants on each, when the warmup taint comes off, and the patch that takes it
//! off. `warmer.rs` reads the caches, calls these, and acts.
//!
//! A node that joins with the startup taint `cache.techsquad.rocks/warming:NoSchedule` is
//! *warming*. Prefetch pods tolerate exactly that taint, and warming nodes get their pods
//! first. The taint comes off when every (node, image) pair that any Prefetch wants on the
//! node is done (listed by the node, pulled, or failed), when no Prefetch targets the node, or
//! `--warmup-timeout` after the node's creation. Until the node is Ready, uncordoned and free
//! of the taints that mean "not set up yet", only the timeout lifts it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use prefetch_common::{Prefetch, PrefetchStatus};
use serde_json::json;

use crate::eligibility::{has_disk_pressure, is_ready};
use crate::ledger::PullLedger;
use crate::plan::{AccountSecrets, ImagePlan, plan_images_with};
pub use crate::taint::{
    DEFAULT_WARMUP_TAINT, DEFAULT_WARMUP_TIMEOUT, WARMUP_EFFECT, WarmupConfig, is_warming,
    is_warmup_taint, toleration,
};
use crate::taint::{name, taints};
use crate::workload::Workload;

/// Taints that say a node is not set up for pods yet, removed by whoever set them: while a
/// warming node carries one, it is not judged warm or untargeted (only the timeout lifts the
/// warmup taint). Entries ending in `/` are key prefixes.
pub const TRANSIENT_TAINTS: [&str; 5] = [
    // Kubernetes' own: not-ready, unreachable, network-unavailable, memory/disk/pid-pressure,
    // unschedulable, out-of-service.
    "node.kubernetes.io/",
    // Set by the kubelet with an external cloud provider until the cloud controller manager
    // has initialized the node.
    "node.cloudprovider.kubernetes.io/uninitialized",
    // cluster-autoscaler's prefix for startup taints (removed once the node is set up).
    "startup-taint.cluster-autoscaler.kubernetes.io/",
    // Karpenter, until the node has registered.
    "karpenter.sh/unregistered",
    // Cilium, until its agent runs on the node.
    "node.cilium.io/agent-not-ready",
];

fn is_transient(key: &str) -> bool {
    TRANSIENT_TAINTS.iter().any(|t| {
        if t.ends_with('/') {
            key.starts_with(t)
        } else {
            key == *t
        }
    })
}

/// Why a warming node cannot be judged yet: not Ready, under DiskPressure, cordoned, or
/// carrying a taint of [`TRANSIENT_TAINTS`] (other than the warmup taint itself) that keeps
/// pods off.
///
/// DiskPressure holds the taint rather than lifting it: the planner skips such a node, so
/// without the hold it would look untargeted and be opened to workloads whose images it does
/// not have and cannot pull now. Kubernetes itself keeps pods off it meanwhile (the
/// `node.kubernetes.io/disk-pressure` taint), so the hold costs nothing; once the pressure
/// clears the node is warmed as usual, and `--warmup-timeout` lifts the taint if it never does.
pub fn held_back(node: &Node, key: &str) -> Option<String> {
    if !is_ready(node) {
        return Some("not Ready".into());
    }
    if has_disk_pressure(node) {
        return Some("DiskPressure".into());
    }
    if node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
    {
        return Some("cordoned".into());
    }
    taints(node)
        .iter()
        .find(|t| {
            t.key != key
                && matches!(t.effect.as_str(), "NoSchedule" | "NoExecute")
                && is_transient(&t.key)
        })
        .map(|t| format!("taint {}:{}", t.key, t.effect))
}

/// Whether (node, image) is done apart from the node listing the image: an outcome in the
/// ledger, or a failure in this Prefetch's status that is about this very node (one created
/// before the round that reported it started: a node replaced under the same name is not).
/// The status is how a restarted controller recovers failures its ledger lost.
pub fn settled(
    ledger: &PullLedger,
    node: &Node,
    status: Option<&PrefetchStatus>,
    image: &str,
) -> bool {
    let uid = node.metadata.uid.as_deref().unwrap_or("");
    if ledger.get(name(node), uid, image).is_some() {
        return true;
    }
    let Some(status) = status else {
        return false;
    };
    let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let round_start = status.last_round_start.as_ref().map(|t| t.0);
    let same_node = matches!((created, round_start), (Some(c), Some(s)) if c <= s);
    same_node
        && status
            .failures
            .iter()
            .any(|f| f.node == name(node) && f.image == image)
}

/// The warming targets of one Prefetch's plan that still have an open pair (`settled` says
/// which are done): a round must run for them even when the plan looks covered.
pub fn open_warming_targets(
    plan: &ImagePlan,
    settled: impl Fn(&str, &str) -> bool,
) -> BTreeSet<String> {
    plan.targets
        .iter()
        .filter(|t| t.warming && t.pull.iter().any(|image| !settled(&t.node, image)))
        .map(|t| t.node.clone())
        .collect()
}

/// What one Prefetch wants on one warming node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wish {
    /// `namespace/name` of the Prefetch.
    pub prefetch: String,
    /// Every image it wants there.
    pub images: Vec<String>,
    /// Those not done yet: not listed by the node, and no outcome seen.
    pub open: Vec<String>,
}

/// For each warming node (by name, every one present, possibly with no wish), what each
/// Prefetch that targets it wants there. `images_on` gives a node's images as the planner
/// reads them (sorted, normalized).
pub fn wishes<'a, F>(
    prefetches: &[&'a Prefetch],
    workloads: &[Workload<'a>],
    warming: &[&'a Node],
    key: &str,
    images_on: F,
    ledger: &PullLedger,
) -> BTreeMap<String, Vec<Wish>>
where
    F: Fn(&'a Node) -> Cow<'a, [String]>,
{
    let by_name: HashMap<&str, &Node> = warming.iter().map(|n| (name(n), *n)).collect();
    let mut out: BTreeMap<String, Vec<Wish>> = warming
        .iter()
        .map(|n| (name(n).to_string(), Vec::new()))
        .collect();
    for prefetch in prefetches {
        if prefetch.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let plan = plan_images_with(
            prefetch,
            workloads.iter().copied(),
            // Wishes are images; the pull secrets matter only to the pods a reconcile creates.
            &AccountSecrets::new(),
            warming.iter().copied(),
            Some(key),
            &images_on,
            // Warming nodes are judged by every outcome the ledger holds (`settled`).
            |_, _| false,
        );
        let id = format!(
            "{}/{}",
            prefetch.metadata.namespace.as_deref().unwrap_or(""),
            prefetch.metadata.name.as_deref().unwrap_or("")
        );
        for target in plan.targets {
            let Some(node) = by_name.get(target.node.as_str()) else {
                continue;
            };
            let open = target
                .pull
                .iter()
                .filter(|image| !settled(ledger, node, prefetch.status.as_ref(), image))
                .cloned()
                .collect();
            out.entry(target.node).or_default().push(Wish {
                prefetch: id.clone(),
                images: plan.images.clone(),
                open,
            });
        }
    }
    out
}

/// What to do about one warming node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the taint: these images are still open (sorted), or the node is held back.
    Warming {
        open: Vec<String>,
        held: Option<String>,
    },
    /// Lift it: every image any Prefetch wants on the node is done.
    Warmed { images: usize },
    /// Lift it: no Prefetch targets the node.
    Untargeted,
    /// Lift it: past `--warmup-timeout` with these images still open, or still held back.
    TimedOut {
        missing: Vec<String>,
        held: Option<String>,
    },
}

impl Verdict {
    pub fn lifts(&self) -> bool {
        !matches!(self, Verdict::Warming { .. })
    }
}

/// When the timeout lifts the taint of a node created at `created`.
pub fn deadline(created: Option<Timestamp>, timeout: Duration) -> Option<Timestamp> {
    let timeout = SignedDuration::try_from(timeout).ok()?;
    created?.checked_add(timeout).ok()
}

/// Whether a node created at `created` still carries the taint past its deadline: the timeout
/// should have lifted it, so the taint's removal is failing.
pub fn past_deadline(created: Option<Timestamp>, timeout: Duration, now: Timestamp) -> bool {
    deadline(created, timeout).is_some_and(|d| now >= d)
}

/// The verdict for one warming node: created at `created`, held back for `held`, wanted by
/// `wishes`.
pub fn decide(
    created: Option<Timestamp>,
    held: Option<String>,
    wishes: &[Wish],
    now: Timestamp,
    timeout: Duration,
) -> Verdict {
    let open: BTreeSet<&String> = wishes.iter().flat_map(|w| &w.open).collect();
    if held.is_none() {
        if wishes.is_empty() {
            return Verdict::Untargeted;
        }
        if open.is_empty() {
            let images: BTreeSet<&String> = wishes.iter().flat_map(|w| &w.images).collect();
            return Verdict::Warmed {
                images: images.len(),
            };
        }
    }
    let open: Vec<String> = open.into_iter().cloned().collect();
    if past_deadline(created, timeout, now) {
        Verdict::TimedOut {
            missing: open,
            held,
        }
    } else {
        Verdict::Warming { open, held }
    }
}

/// Images listed in a message, at most `max` of them.
fn listed(images: &[String], max: usize) -> String {
    let mut text = images
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if images.len() > max {
        text.push_str(&format!(" and {} more", images.len() - max));
    }
    text
}

/// An event for a lifting verdict: (type, reason, note), on the Node.
pub fn event(
    verdict: &Verdict,
    key: &str,
    held_for: Duration,
) -> Option<(&'static str, &'static str, String)> {
    let seconds = held_for.as_secs();
    match verdict {
        Verdict::Warming { .. } => None,
        Verdict::Warmed { images } => Some((
            "Normal",
            "Warmed",
            format!("{images} image(s) in {seconds} s; taint {key} removed"),
        )),
        Verdict::Untargeted => Some((
            "Normal",
            "Warmed",
            format!("0 images in {seconds} s (no Prefetch targets this node); taint {key} removed"),
        )),
        Verdict::TimedOut { missing, held } => {
            let mut why = Vec::new();
            if !missing.is_empty() {
                why.push(format!("missing {}", listed(missing, 10)));
            }
            if let Some(held) = held {
                why.push(format!("node {held}"));
            }
            Some((
                "Warning",
                "WarmupTimedOut",
                format!(
                    "still warming after {seconds} s: {}; taint {key} removed",
                    why.join("; ")
                ),
            ))
        }
    }
}

/// A line for logs and `plan`: what a warming verdict waits for.
pub fn describe(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Warming { open, held } => {
            let mut parts = Vec::new();
            if let Some(held) = held {
                parts.push(format!("held back ({held})"));
            }
            if !open.is_empty() {
                parts.push(format!("still needs {}", listed(open, 10)));
            }
            parts.join("; ")
        }
        Verdict::Warmed { images } => format!("warm: all {images} image(s) done"),
        Verdict::Untargeted => "warm: no Prefetch targets it".into(),
        Verdict::TimedOut { missing, .. } => format!(
            "timed out{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(" missing {}", listed(missing, 10))
            }
        ),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("the node has no resourceVersion to guard the patch with")]
    NoResourceVersion,
    #[error("building the JSON patch: {0}")]
    Build(String),
}

/// The JSON patch that removes the warmup taint from `node` as read, and nothing else: it
/// applies only while the node is still at that resourceVersion and the taint is still at that
/// index (the API server answers 422 otherwise, and the caller reads the node again). `None`
/// when the node does not carry the taint. With the taint listed twice (the API server refuses
/// that, but a patch must not assume it), the first goes.
pub fn lift_patch(node: &Node, key: &str) -> Result<Option<json_patch::Patch>, PatchError> {
    let Some(index) = taints(node).iter().position(|t| is_warmup_taint(t, key)) else {
        return Ok(None);
    };
    let version = node
        .metadata
        .resource_version
        .as_deref()
        .filter(|v| !v.is_empty())
        .ok_or(PatchError::NoResourceVersion)?;
    let at = format!("/spec/taints/{index}");
    let ops = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "test", "path": format!("{at}/key"), "value": key},
        {"op": "test", "path": format!("{at}/effect"), "value": WARMUP_EFFECT},
        {"op": "remove", "path": at},
    ]);
    serde_json::from_value(ops)
        .map(Some)
        .map_err(|e| PatchError::Build(e.to_string()))
}

/// How long the warm loop waits after the `failures`th failed removal of a node's taint in a
/// row: doubling from `first` (the first failure waits `first`), never beyond `max`; the
/// doubling stops at the sixth failure, so the multiplication cannot overflow.
pub fn retry_backoff(failures: u32, first: Duration, max: Duration) -> Duration {
    first
        .saturating_mul(1 << failures.min(6).saturating_sub(1))
        .min(max)
}

#[cfg(test)]
mod tests;
