//! What prefetch pods reported, per node and image, kept beyond the round that saw it.
//!
//! A round's memory lives only as long as the round, and each Prefetch has its own; some
//! decisions need outcomes across rounds and across Prefetches (is this warming node done with
//! every image any Prefetch wants on it?). The ledger keeps them for the nodes the controller
//! says it still needs them for ([`PullLedger::retain`]), keyed by node name *and* uid, so a
//! node replaced under the same name starts with a clean record.
//!
//! It lives in memory only. After a restart, what it held is recovered from what the API server
//! shows: the images the node lists, the surviving prefetch pods, and the failures in each
//! Prefetch's status (see `warmup::settled`).

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use crate::outcome::Outcome;

/// One (node, image) outcome and when the controller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Pulled keeps the digest the kubelet reported, when it did.
    pub outcome: Outcome,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Default)]
struct NodeRecord {
    uid: String,
    images: BTreeMap<String, Recorded>,
}

#[derive(Debug, Clone, Default)]
pub struct PullLedger {
    nodes: HashMap<String, NodeRecord>,
}

impl PullLedger {
    /// Records what a prefetch pod reported for `image` on node `node` (uid `uid`). A record
    /// under another uid is of a node that was replaced: it is dropped first. The first
    /// outcome of a pair stands (a later round re-pulling the same image adds nothing).
    pub fn record(&mut self, node: &str, uid: &str, image: &str, outcome: &Outcome, at: Timestamp) {
        let record = self.nodes.entry(node.to_string()).or_default();
        if record.uid != uid {
            *record = NodeRecord {
                uid: uid.to_string(),
                images: BTreeMap::new(),
            };
        }
        record
            .images
            .entry(image.to_string())
            .or_insert_with(|| Recorded {
                outcome: outcome.clone(),
                at,
            });
    }

    /// The outcome recorded for `image` on this node (name and uid), if any.
    pub fn get(&self, node: &str, uid: &str, image: &str) -> Option<&Recorded> {
        self.nodes
            .get(node)
            .filter(|r| r.uid == uid)
            .and_then(|r| r.images.get(image))
    }

    /// Keeps only the nodes for which `keep(name, uid)` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &str) -> bool) {
        self.nodes.retain(|name, record| keep(name, &record.uid));
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

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn records_per_node_uid_and_image() {
        let mut ledger = PullLedger::default();
        let t0 = t("2026-11-22T10:00:00Z");
        ledger.record("n1", "uid-1", "nginx", &pulled("sha256:a"), t0);
        ledger.record("n1", "uid-1", "redis", &failed(), t0);
        assert_eq!(
            ledger.get("n1", "uid-1", "nginx").unwrap().outcome,
            pulled("sha256:a")
        );
        assert_eq!(
            ledger.get("n1", "uid-1", "redis").unwrap().outcome,
            failed()
        );
        assert!(ledger.get("n1", "uid-1", "envoy").is_none());
        assert!(ledger.get("n2", "uid-1", "nginx").is_none());
        assert!(
            ledger.get("n1", "uid-other", "nginx").is_none(),
            "another node under the same name"
        );
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn the_first_outcome_stands() {
        let mut ledger = PullLedger::default();
        ledger.record("n1", "u", "nginx", &failed(), t("2026-11-22T10:00:00Z"));
        ledger.record(
            "n1",
            "u",
            "nginx",
            &pulled("sha256:a"),
            t("2026-11-22T10:01:00Z"),
        );
        let recorded = ledger.get("n1", "u", "nginx").unwrap();
        assert_eq!(recorded.outcome, failed());
        assert_eq!(recorded.at, t("2026-11-22T10:00:00Z"));
    }

    #[test]
    fn a_replaced_node_starts_clean() {
        let mut ledger = PullLedger::default();
        let t0 = t("2026-11-22T10:00:00Z");
        ledger.record("n1", "old", "nginx", &pulled("sha256:a"), t0);
        ledger.record("n1", "new", "redis", &pulled("sha256:b"), t0);
        assert!(ledger.get("n1", "old", "nginx").is_none());
        assert!(ledger.get("n1", "new", "nginx").is_none());
        assert!(ledger.get("n1", "new", "redis").is_some());
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn retain() {
        let mut ledger = PullLedger::default();
        let t0 = t("2026-11-22T10:00:00Z");
        for node in ["a", "b", "c"] {
            ledger.record(node, &format!("uid-{node}"), "nginx", &failed(), t0);
        }
        ledger.retain(|name, uid| name != "a" && uid != "uid-b");
        assert!(ledger.get("c", "uid-c", "nginx").is_some());
        assert_eq!(ledger.len(), 1);
        ledger.retain(|_, _| false);
        assert!(ledger.is_empty());
    }
}
