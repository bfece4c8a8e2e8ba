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
    if deadline(created, timeout).is_some_and(|d| now >= d) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use prefetch_common::PullFailure;
    use serde_json::Value;

    use crate::outcome::Outcome;

    const KEY: &str = DEFAULT_WARMUP_TAINT;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn node_json(name: &str, taints: Value, ready: &str) -> Value {
        json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "41",
                         "creationTimestamp": "2026-11-22T10:00:00Z", "labels": {"kubernetes.io/os": "linux"}},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}
        })
    }

    fn node(name: &str, taints: Value) -> Node {
        serde_json::from_value(node_json(name, taints, "True")).unwrap()
    }

    fn warming_taint() -> Value {
        json!({"key": KEY, "effect": "NoSchedule"})
    }

    #[test]
    fn warming_means_that_key_with_no_schedule() {
        assert!(is_warming(&node("n", json!([warming_taint()])), KEY));
        assert!(is_warming(
            &node(
                "n",
                json!([{"key": KEY, "value": "true", "effect": "NoSchedule"}])
            ),
            KEY
        ));
        assert!(!is_warming(
            &node("n", json!([{"key": KEY, "effect": "NoExecute"}])),
            KEY
        ));
        assert!(!is_warming(
            &node("n", json!([{"key": "other", "effect": "NoSchedule"}])),
            KEY
        ));
        assert!(!is_warming(&node("n", json!(null)), KEY));
        assert_eq!(
            serde_json::to_value(toleration(KEY)).unwrap(),
            json!({"key": KEY, "operator": "Exists", "effect": "NoSchedule"})
        );
    }

    #[test]
    fn not_ready_cordoned_and_transient_taints_hold_a_node_back() {
        assert_eq!(held_back(&node("n", json!([warming_taint()])), KEY), None);
        let not_ready: Node =
            serde_json::from_value(node_json("n", json!([warming_taint()]), "False")).unwrap();
        assert_eq!(held_back(&not_ready, KEY).as_deref(), Some("not Ready"));
        let mut cordoned = node("n", json!([warming_taint()]));
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_eq!(held_back(&cordoned, KEY).as_deref(), Some("cordoned"));
        let pressure = crate::eligibility::under_disk_pressure(node("n", json!([warming_taint()])));
        assert_eq!(held_back(&pressure, KEY).as_deref(), Some("DiskPressure"));
        // Held, a node no Prefetch targets (the planner skips it) keeps its taint until the
        // timeout, instead of being lifted as untargeted.
        let created = Some(t("2026-11-22T10:00:00Z"));
        let timeout = Duration::from_secs(900);
        assert_eq!(
            decide(
                created,
                held_back(&pressure, KEY),
                &[],
                t("2026-11-22T10:01:00Z"),
                timeout
            ),
            Verdict::Warming {
                open: vec![],
                held: Some("DiskPressure".into())
            }
        );
        assert!(
            decide(
                created,
                held_back(&pressure, KEY),
                &[],
                t("2026-11-22T10:15:00Z"),
                timeout
            )
            .lifts()
        );
        for transient in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/network-unavailable",
            "node.cloudprovider.kubernetes.io/uninitialized",
            "startup-taint.cluster-autoscaler.kubernetes.io/cni",
            "karpenter.sh/unregistered",
            "node.cilium.io/agent-not-ready",
        ] {
            let n = node(
                "n",
                json!([warming_taint(), {"key": transient, "effect": "NoSchedule"}]),
            );
            assert_eq!(
                held_back(&n, KEY),
                Some(format!("taint {transient}:NoSchedule")),
                "{transient}"
            );
        }
        // A permanent taint is a Prefetch's business (tolerated or not), not a hold.
        let dedicated = node(
            "n",
            json!([warming_taint(), {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        assert_eq!(held_back(&dedicated, KEY), None);
        // PreferNoSchedule never keeps pods off.
        let soft = node(
            "n",
            json!([warming_taint(), {"key": "node.kubernetes.io/not-ready", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(held_back(&soft, KEY), None);
        // The warmup taint under cluster-autoscaler's startup prefix is still the warmup taint.
        let ca_key = "startup-taint.cluster-autoscaler.kubernetes.io/warming";
        let ca = node("n", json!([{"key": ca_key, "effect": "NoSchedule"}]));
        assert_eq!(held_back(&ca, ca_key), None);
    }

    fn wish(prefetch: &str, images: &[&str], open: &[&str]) -> Wish {
        Wish {
            prefetch: prefetch.into(),
            images: images.iter().map(|s| s.to_string()).collect(),
            open: open.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_verdicts() {
        let created = Some(t("2026-11-22T10:00:00Z"));
        let timeout = Duration::from_secs(900);
        let early = t("2026-11-22T10:05:00Z");
        let late = t("2026-11-22T10:15:00Z");

        // Nothing targets the node: warm at once.
        assert_eq!(
            decide(created, None, &[], early, timeout),
            Verdict::Untargeted
        );
        // Every pair done across both Prefetches (the shared image counted once).
        let done = [
            wish("a/p", &["nginx", "envoy"], &[]),
            wish("b/q", &["redis", "envoy"], &[]),
        ];
        assert_eq!(
            decide(created, None, &done, early, timeout),
            Verdict::Warmed { images: 3 }
        );
        // One Prefetch still open: warming, and which images.
        let half = [
            wish("a/p", &["nginx"], &[]),
            wish("b/q", &["redis", "envoy"], &["redis", "envoy"]),
        ];
        assert_eq!(
            decide(created, None, &half, early, timeout),
            Verdict::Warming {
                open: vec!["envoy".into(), "redis".into()],
                held: None
            }
        );
        // Past the timeout (from creation): lifted, naming what was missing.
        assert_eq!(
            decide(created, None, &half, late, timeout),
            Verdict::TimedOut {
                missing: vec!["envoy".into(), "redis".into()],
                held: None
            }
        );
        // Held back: neither warm nor untargeted, whatever the wishes; only the timeout lifts.
        let held = Some("not Ready".to_string());
        assert_eq!(
            decide(created, held.clone(), &[], early, timeout),
            Verdict::Warming {
                open: vec![],
                held: held.clone()
            }
        );
        assert_eq!(
            decide(created, held.clone(), &done, early, timeout),
            Verdict::Warming {
                open: vec![],
                held: held.clone()
            }
        );
        assert_eq!(
            decide(created, held.clone(), &[], late, timeout),
            Verdict::TimedOut {
                missing: vec![],
                held
            }
        );
        // Done beats timed out.
        assert_eq!(
            decide(created, None, &done, late, timeout),
            Verdict::Warmed { images: 3 }
        );
        // No creation time (never from a real API server): no timeout.
        assert!(!decide(None, None, &half, late, timeout).lifts());
        assert_eq!(deadline(created, timeout), Some(late));
    }

    #[test]
    fn events_say_what_happened() {
        let warmed = event(&Verdict::Warmed { images: 3 }, KEY, Duration::from_secs(42)).unwrap();
        assert_eq!(
            warmed,
            (
                "Normal",
                "Warmed",
                format!("3 image(s) in 42 s; taint {KEY} removed")
            )
        );
        let untargeted = event(&Verdict::Untargeted, KEY, Duration::from_secs(1)).unwrap();
        assert_eq!(untargeted.1, "Warmed");
        assert!(untargeted.2.contains("no Prefetch targets this node"));
        let missing: Vec<String> = (0..12).map(|i| format!("img-{i:02}")).collect();
        let (type_, reason, note) = event(
            &Verdict::TimedOut {
                missing,
                held: Some("not Ready".into()),
            },
            KEY,
            Duration::from_secs(900),
        )
        .unwrap();
        assert_eq!((type_, reason), ("Warning", "WarmupTimedOut"));
        assert!(
            note.starts_with("still warming after 900 s: missing img-00, img-01"),
            "{note}"
        );
        assert!(note.contains("img-09 and 2 more; node not Ready"), "{note}");
        assert!(
            event(
                &Verdict::Warming {
                    open: vec![],
                    held: None
                },
                KEY,
                Duration::ZERO
            )
            .is_none()
        );
    }

    fn apply(node: &Node, patch: &json_patch::Patch) -> Result<Value, json_patch::PatchError> {
        let mut doc = serde_json::to_value(node).unwrap();
        json_patch::patch(&mut doc, patch).map(|()| doc)
    }

    #[test]
    fn the_patch_removes_exactly_the_warmup_taint() {
        let n = node(
            "n",
            json!([
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": KEY, "effect": "NoExecute"},
                {"key": KEY, "value": "x", "effect": "NoSchedule"},
                {"key": "zone", "effect": "PreferNoSchedule"}
            ]),
        );
        let patch = lift_patch(&n, KEY).unwrap().unwrap();
        let after = apply(&n, &patch).unwrap();
        assert_eq!(
            after["spec"]["taints"],
            json!([
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": KEY, "effect": "NoExecute"},
                {"key": "zone", "effect": "PreferNoSchedule"}
            ])
        );
        let mut before = serde_json::to_value(&n).unwrap();
        before["spec"]["taints"] = after["spec"]["taints"].clone();
        assert_eq!(before, after, "nothing else changes");
    }

    #[test]
    fn the_patch_is_guarded_by_the_version_read() {
        let n = node(
            "n",
            json!([{"key": "a", "effect": "NoSchedule"}, warming_taint()]),
        );
        let patch = lift_patch(&n, KEY).unwrap().unwrap();
        // Someone else changed the node meanwhile (a new version, a taint added in front).
        let mut changed = n.clone();
        changed.metadata.resource_version = Some("42".into());
        assert!(apply(&changed, &patch).is_err());
        let mut shifted = n.clone();
        shifted
            .spec
            .as_mut()
            .unwrap()
            .taints
            .as_mut()
            .unwrap()
            .insert(
                0,
                serde_json::from_value(json!({"key": "b", "effect": "NoSchedule"})).unwrap(),
            );
        assert!(
            apply(&shifted, &patch).is_err(),
            "index moved, same version faked"
        );
        // Already lifted: nothing to do.
        assert_eq!(
            lift_patch(
                &node("n", json!([{"key": "a", "effect": "NoSchedule"}])),
                KEY
            ),
            Ok(None)
        );
        assert_eq!(lift_patch(&node("n", json!(null)), KEY), Ok(None));
        let mut no_version = n.clone();
        no_version.metadata.resource_version = None;
        assert_eq!(
            lift_patch(&no_version, KEY),
            Err(PatchError::NoResourceVersion)
        );
    }

    fn prefetch(name: &str, filter: &str, app: &str) -> Prefetch {
        let mut p = Prefetch::new(
            name,
            serde_json::from_value(
                json!({"filter_by_labels": {"app": app}, "node_filter": filter}),
            )
            .unwrap(),
        );
        p.metadata.namespace = Some("default".into());
        p
    }

    fn deployment(app: &str, images: &[&str]) -> Deployment {
        let containers: Vec<Value> = images
            .iter()
            .map(|i| json!({"name": "c", "image": i}))
            .collect();
        serde_json::from_value(
            json!({"metadata": {"name": app, "namespace": "default", "labels": {"app": app}},
            "spec": {"selector": {}, "template": {"spec": {"containers": containers}}}}),
        )
        .unwrap()
    }

    fn images_on(node: &Node) -> Cow<'_, [String]> {
        Cow::Owned(crate::plan::node_images(node).into_iter().collect())
    }

    #[test]
    fn wishes_gather_every_prefetch_that_targets_each_warming_node() {
        let nginx = "docker.io/library/nginx:1.25";
        let redis = "docker.io/library/redis:7";
        let mut worker: Value = node_json("worker-1", json!([warming_taint()]), "True");
        worker["status"]["images"] = json!([{"names": [nginx]}]);
        let worker: Node = serde_json::from_value(worker).unwrap();
        let gpu = node("gpu-1", json!([warming_taint()]));
        let web = prefetch("web", "worker", "web");
        let cache = prefetch("cache", "", "cache");
        let deployments = [
            deployment("web", &["nginx:1.25"]),
            deployment("cache", &["redis:7"]),
        ];
        let mut ledger = PullLedger::default();
        let deployment_refs: Vec<Workload<'_>> = deployments.iter().map(Workload::from).collect();
        let wishes_with = |ledger: &PullLedger| {
            wishes(
                &[&web, &cache],
                &deployment_refs,
                &[&worker, &gpu],
                KEY,
                images_on,
                ledger,
            )
        };
        let got = wishes_with(&ledger);
        assert_eq!(
            got["worker-1"],
            [
                wish("default/web", &[nginx], &[]),
                wish("default/cache", &[redis], &[redis])
            ]
        );
        assert_eq!(got["gpu-1"], [wish("default/cache", &[redis], &[redis])]);

        // redis failed on worker-1: settled for the warm decision.
        ledger.record(
            "worker-1",
            "uid-worker-1",
            redis,
            &Outcome::Failed {
                reason: "ErrImagePull".into(),
                message: String::new(),
            },
        );
        let got = wishes_with(&ledger);
        assert!(got["worker-1"].iter().all(|w| w.open.is_empty()));
        assert_eq!(got["gpu-1"][0].open, [redis]);
    }

    #[test]
    fn status_failures_settle_pairs_only_for_the_same_node() {
        let ledger = PullLedger::default();
        let n = node("n", json!([warming_taint()])); // created 10:00:00
        let status = |round_start: &str| PrefetchStatus {
            last_round_start: Some(Time(t(round_start))),
            failures: vec![PullFailure {
                node: "n".into(),
                image: "nginx".into(),
                reason: "ErrImagePull".into(),
                message: String::new(),
            }],
            ..Default::default()
        };
        assert!(settled(
            &ledger,
            &n,
            Some(&status("2026-11-22T10:00:30Z")),
            "nginx"
        ));
        assert!(!settled(
            &ledger,
            &n,
            Some(&status("2026-11-22T10:00:30Z")),
            "redis"
        ));
        assert!(
            !settled(&ledger, &n, Some(&status("2026-11-22T09:59:00Z")), "nginx"),
            "a round older than the node reported on its predecessor"
        );
        assert!(!settled(&ledger, &n, None, "nginx"));
    }

    #[test]
    fn open_warming_targets_are_the_warming_ones_with_open_pairs() {
        let plan = ImagePlan {
            images: vec!["nginx".into()],
            targets: vec![
                crate::plan::NodePlan {
                    node: "a".into(),
                    pull: vec!["nginx".into()],
                    present: vec![],
                    warming: true,
                    ..Default::default()
                },
                crate::plan::NodePlan {
                    node: "b".into(),
                    pull: vec!["nginx".into()],
                    present: vec![],
                    warming: false,
                    ..Default::default()
                },
                crate::plan::NodePlan {
                    node: "c".into(),
                    pull: vec![],
                    present: vec!["nginx".into()],
                    warming: true,
                    ..Default::default()
                },
                crate::plan::NodePlan {
                    node: "d".into(),
                    pull: vec!["nginx".into()],
                    present: vec![],
                    warming: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let open = open_warming_targets(&plan, |node, _| node == "d");
        assert_eq!(open, ["a".to_string()].into());
    }
}
