//! What prefetch pods reported, per node and image, kept beyond the round that saw it.
//!
//! A round's memory lives only as long as the round, and each Prefetch has its own; some
//! decisions need outcomes across rounds and across Prefetches. The ledger serves two:
//!
//! - **Warm nodes** (`warmup.rs`): is this warming node done with every image any Prefetch
//!   wants on it? Every outcome on a warming node is recorded, pulled or failed.
//! - **The full-list rule** (`fulllist.rs`): a node whose `status.images` is full (the kubelet
//!   lists at most `--node-status-max-images` images) may never list an image we pulled, so a
//!   successful pull there is recorded and later counts the pair present.
//!
//! Which outcomes go in is [`worth_recording`]; what stays is [`PullLedger::prune`], both by
//! [`NodeUse`]. Records are keyed by node name *and* uid, so a node replaced under the same
//! name starts with a clean record. Image names and digests are interned (one allocation per
//! distinct string, shared by every node), so an entry costs a few dozen bytes: `cargo run
//! --release -p prefetch-bench --bin ledger-size` measures it at 5,000 nodes.
//!
//! It lives in memory only. After a restart, what it held is recovered from what the API server
//! shows: for warm nodes, the images the node lists, the surviving prefetch pods, and the
//! failures in each Prefetch's status (see `warmup::settled`); for full nodes, from the first
//! round after the restart, whose pods (the image is already there: no pull) record it again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::outcome::Outcome;
use crate::taint::is_warming;

/// What is kept of one (node, image) outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Pulled, with the digest (imageID) the kubelet reported, when it did.
    Pulled { digest: Option<Arc<str>> },
    /// The pull failed (only kept for warming nodes).
    Failed,
}

/// How the controller uses a node now: decides what the ledger records and keeps for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeUse {
    /// Not in the node cache (deleted, or replaced: another uid).
    Gone,
    /// Carries the warmup taint: every outcome counts for the warm decision.
    Warming,
    /// Any other node; `full` when its image list is full (see `fulllist::is_full`).
    Listed { full: bool },
}

/// Whether an outcome on a node used so is recorded: anything on a warming node, a successful
/// pull on a node whose list is full. Elsewhere the node's list tells the truth and the round's
/// own memory is enough.
pub fn worth_recording(node_use: NodeUse, outcome: &Outcome) -> bool {
    match node_use {
        NodeUse::Warming => true,
        NodeUse::Listed { full: true } => matches!(outcome, Outcome::Pulled { .. }),
        NodeUse::Listed { full: false } | NodeUse::Gone => false,
    }
}

/// How the controller uses `node` (as its cache shows it; `None` when absent) for the record
/// held under `uid`: another uid, or a node being deleted, is [`NodeUse::Gone`]. `warmup_taint`
/// is `--warmup-taint` (`None`: warm nodes off); `list_full` says whether its list is full.
pub fn node_use(
    node: Option<&Node>,
    uid: &str,
    warmup_taint: Option<&str>,
    list_full: impl Fn(&Node) -> bool,
) -> NodeUse {
    let Some(node) = node.filter(|n| {
        n.metadata.uid.as_deref().unwrap_or("") == uid && n.metadata.deletion_timestamp.is_none()
    }) else {
        return NodeUse::Gone;
    };
    if warmup_taint.is_some_and(|key| is_warming(node, key)) {
        NodeUse::Warming
    } else {
        NodeUse::Listed {
            full: list_full(node),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct NodeRecord {
    uid: String,
    /// Sorted by image: a node holds tens of entries, so a sorted Vec beats a tree in memory.
    images: Vec<(Arc<str>, Recorded)>,
}

#[derive(Debug, Clone, Default)]
pub struct PullLedger {
    nodes: HashMap<String, NodeRecord>,
    /// Every image name and digest held, once.
    strings: HashSet<Arc<str>>,
}

impl PullLedger {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(found) = self.strings.get(s) {
            return found.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.strings.insert(new.clone());
        new
    }

    /// Records what a prefetch pod reported for `image` on node `node` (uid `uid`); the caller
    /// asks [`worth_recording`] first. A record under another uid is of a node that was
    /// replaced: it is dropped first. The first outcome of a pair stands (a later round
    /// re-pulling the same image adds nothing), except that a pull replaces an older pull (a
    /// newer digest).
    pub fn record(&mut self, node: &str, uid: &str, image: &str, outcome: &Outcome) {
        let recorded = match outcome {
            Outcome::Pulled { image_id } => Recorded::Pulled {
                digest: image_id.as_deref().map(|d| self.intern(d)),
            },
            Outcome::Failed { .. } => Recorded::Failed,
        };
        let image = self.intern(image);
        let record = self.nodes.entry(node.to_string()).or_default();
        if record.uid != uid {
            *record = NodeRecord {
                uid: uid.to_string(),
                images: Vec::new(),
            };
        }
        match record
            .images
            .binary_search_by(|(i, _)| i.as_ref().cmp(image.as_ref()))
        {
            Ok(at) => {
                if let (Recorded::Pulled { .. }, Recorded::Pulled { .. }) =
                    (&record.images[at].1, &recorded)
                {
                    record.images[at].1 = recorded;
                }
            }
            Err(at) => {
                // Grown one by one: a node holds tens of entries, and doubling would leave up
                // to half of each node's capacity unused across thousands of nodes.
                record.images.reserve_exact(1);
                record.images.insert(at, (image, recorded));
            }
        }
    }

    /// The outcome recorded for `image` on this node (name and uid), if any.
    pub fn get(&self, node: &str, uid: &str, image: &str) -> Option<&Recorded> {
        let record = self.nodes.get(node).filter(|r| r.uid == uid)?;
        let at = record
            .images
            .binary_search_by(|(i, _)| i.as_ref().cmp(image))
            .ok()?;
        Some(&record.images[at].1)
    }

    /// Drops what can no longer matter, or no longer be trusted:
    /// - a node that is [`NodeUse::Gone`]: all of it;
    /// - a warming node: nothing (the warm loop judges every pair);
    /// - a node whose list is full: failures (they only mattered while warming) and images no
    ///   Prefetch wants any more (`wanted`);
    /// - a node whose list is not full: all of it. Such a node lists every image it holds, so
    ///   a record there is either redundant or false (the kubelet removed the image since).
    pub fn prune(
        &mut self,
        node_use: impl Fn(&str, &str) -> NodeUse,
        wanted: impl Fn(&str) -> bool,
    ) {
        self.nodes.retain(|name, record| {
            match node_use(name, &record.uid) {
                NodeUse::Gone | NodeUse::Listed { full: false } => return false,
                NodeUse::Warming => {}
                NodeUse::Listed { full: true } => record
                    .images
                    .retain(|(image, r)| matches!(r, Recorded::Pulled { .. }) && wanted(image)),
            }
            !record.images.is_empty()
        });
        self.strings.retain(|s| Arc::strong_count(s) > 1);
    }

    /// Node x image pairs held.
    pub fn len(&self) -> usize {
        self.nodes.values().map(|r| r.images.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled(digest: &str) -> Outcome {
        Outcome::Pulled {
            image_id: Some(digest.into()),
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            reason: "ErrImagePull".into(),
            message: "manifest unknown".into(),
        }
    }

    fn digest_of(r: Option<&Recorded>) -> Option<&str> {
        match r {
            Some(Recorded::Pulled { digest }) => digest.as_deref(),
            _ => None,
        }
    }

    #[test]
    fn records_per_node_uid_and_image() {
        let mut ledger = PullLedger::default();
        ledger.record("n1", "uid-1", "nginx", &pulled("sha256:a"));
        ledger.record("n1", "uid-1", "redis", &failed());
        assert_eq!(
            digest_of(ledger.get("n1", "uid-1", "nginx")),
            Some("sha256:a")
        );
        assert_eq!(ledger.get("n1", "uid-1", "redis"), Some(&Recorded::Failed));
        assert!(ledger.get("n1", "uid-1", "envoy").is_none());
        assert!(ledger.get("n2", "uid-1", "nginx").is_none());
        assert!(
            ledger.get("n1", "uid-other", "nginx").is_none(),
            "another node under the same name"
        );
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn the_first_outcome_stands_but_a_newer_pull_updates_the_digest() {
        let mut ledger = PullLedger::default();
        ledger.record("n1", "u", "nginx", &failed());
        ledger.record("n1", "u", "nginx", &pulled("sha256:a"));
        assert_eq!(ledger.get("n1", "u", "nginx"), Some(&Recorded::Failed));
        ledger.record("n1", "u", "redis", &pulled("sha256:a"));
        ledger.record("n1", "u", "redis", &pulled("sha256:b"));
        assert_eq!(digest_of(ledger.get("n1", "u", "redis")), Some("sha256:b"));
        ledger.record("n1", "u", "redis", &failed());
        assert_eq!(digest_of(ledger.get("n1", "u", "redis")), Some("sha256:b"));
    }

    #[test]
    fn a_replaced_node_starts_clean() {
        let mut ledger = PullLedger::default();
        ledger.record("n1", "old", "nginx", &pulled("sha256:a"));
        ledger.record("n1", "new", "redis", &pulled("sha256:b"));
        assert!(ledger.get("n1", "old", "nginx").is_none());
        assert!(ledger.get("n1", "new", "nginx").is_none());
        assert!(ledger.get("n1", "new", "redis").is_some());
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn what_is_recorded_for_each_use() {
        let ok = pulled("sha256:a");
        assert!(worth_recording(NodeUse::Warming, &ok));
        assert!(worth_recording(NodeUse::Warming, &failed()));
        assert!(worth_recording(NodeUse::Listed { full: true }, &ok));
        assert!(
            !worth_recording(NodeUse::Listed { full: true }, &failed()),
            "a failure on a full node is the round's business only"
        );
        assert!(!worth_recording(NodeUse::Listed { full: false }, &ok));
        assert!(!worth_recording(NodeUse::Gone, &ok));
    }

    #[test]
    fn how_a_node_is_used() {
        let node = |v: serde_json::Value| -> Node { serde_json::from_value(v).unwrap() };
        let key = crate::taint::DEFAULT_WARMUP_TAINT;
        let plain = node(serde_json::json!({"metadata": {"name": "n", "uid": "u"}}));
        let warming = node(serde_json::json!({"metadata": {"name": "n", "uid": "u"},
            "spec": {"taints": [{"key": key, "effect": "NoSchedule"}]}}));
        let deleting = node(serde_json::json!({"metadata": {"name": "n", "uid": "u",
            "deletionTimestamp": "2026-11-22T10:00:00Z"}}));
        let full = |_: &Node| true;
        let room = |_: &Node| false;
        assert_eq!(node_use(None, "u", Some(key), full), NodeUse::Gone);
        assert_eq!(
            node_use(Some(&plain), "other", Some(key), full),
            NodeUse::Gone
        );
        assert_eq!(
            node_use(Some(&deleting), "u", Some(key), full),
            NodeUse::Gone
        );
        assert_eq!(
            node_use(Some(&warming), "u", Some(key), room),
            NodeUse::Warming
        );
        assert_eq!(
            node_use(Some(&warming), "u", None, room),
            NodeUse::Listed { full: false },
            "warm nodes off"
        );
        assert_eq!(
            node_use(Some(&plain), "u", Some(key), full),
            NodeUse::Listed { full: true }
        );
        assert_eq!(
            node_use(Some(&plain), "u", Some(key), room),
            NodeUse::Listed { full: false }
        );
    }

    #[test]
    fn what_is_kept_for_each_use() {
        let mut ledger = PullLedger::default();
        for node in ["warming", "full", "not-full", "gone"] {
            ledger.record(node, "u", "nginx", &pulled("sha256:a"));
            ledger.record(node, "u", "redis", &failed());
            ledger.record(node, "u", "envoy", &pulled("sha256:e"));
        }
        ledger.record("replaced", "old-uid", "nginx", &pulled("sha256:a"));
        ledger.prune(
            |name, uid| match (name, uid) {
                ("warming", "u") => NodeUse::Warming,
                ("full", "u") => NodeUse::Listed { full: true },
                ("not-full", "u") => NodeUse::Listed { full: false },
                _ => NodeUse::Gone,
            },
            |image| image != "envoy",
        );
        // Warming: everything, even images no Prefetch wants any more.
        for image in ["nginx", "redis", "envoy"] {
            assert!(ledger.get("warming", "u", image).is_some(), "{image}");
        }
        // Full: wanted pulls only.
        assert!(ledger.get("full", "u", "nginx").is_some());
        assert!(ledger.get("full", "u", "redis").is_none());
        assert!(ledger.get("full", "u", "envoy").is_none());
        for gone in ["not-full", "gone", "replaced"] {
            assert!(ledger.get(gone, "u", "nginx").is_none(), "{gone}");
        }
        assert_eq!(ledger.len(), 4);
        // The warm node lifted and its list full: its failures go, its wanted pulls stay.
        ledger.prune(|_, _| NodeUse::Listed { full: true }, |_| true);
        assert_eq!(ledger.len(), 3);
        ledger.prune(|_, _| NodeUse::Listed { full: true }, |_| false);
        assert!(ledger.is_empty());
        assert!(ledger.strings.is_empty());
    }
}
