//! The full-list rule (design: docs/src/design.md#lean-prefetch-pods), the pure part.
//!
//! The kubelet lists at most `--node-status-max-images` images in `node.status.images`
//! (default 50): it sorts the node's images by size, largest first, and reports the first 50
//! (each under at most 5 names). On a node holding more, a small image we pulled may never be
//! listed, and the planner would give the node a prefetch pod for it every round. So when a
//! node's list is *full* (at least that many entries), a pair that a prefetch pod of an earlier
//! round pulled successfully on that very node (name and uid) counts as present, as long as the
//! digest it reported is the one the Prefetch last saw for the image (when both are known).
//!
//! "Full" is judged against the controller's `--node-status-max-images`, which should match
//! the kubelets'. Set lower than theirs, lists with room left count as full (harmless: a pair
//! counts present only after our own pod pulled it); set higher, full lists never count as full
//! and full nodes get a pod every round, as without the rule. 0 turns the rule off (for
//! kubelets running with -1, no cap).
//!
//! The records live in the [`PullLedger`](crate::ledger::PullLedger); which outcomes go in and
//! which stay is decided there (`NodeUse`).

use crate::ledger::Recorded;

/// `--node-status-max-images`' default: the kubelet's own default.
pub const DEFAULT_NODE_STATUS_MAX_IMAGES: u32 = 50;

/// Whether a node listing `listed` images has a full list under the cap `max` (0: the rule is
/// off, no list is full).
pub fn is_full(listed: usize, max: u32) -> bool {
    max > 0 && listed >= max as usize
}

/// The digest of an imageID or digest reference: what follows the last `@`, or all of it
/// (runtimes report `repo@sha256:...` or a bare `sha256:...`).
fn digest(id: &str) -> &str {
    id.rsplit_once('@').map_or(id, |(_, d)| d)
}

/// Whether an image that a full node does not list counts as present there: a prefetch pod
/// pulled it on this node before (`recorded`), and the digest it reported is `known` (the
/// digest the Prefetch last saw for the image), when both are known. A different digest means
/// the tag moved since: the node holds an older image, and gets a pod.
pub fn counts_present(recorded: Option<&Recorded>, known: Option<&str>) -> bool {
    match recorded {
        Some(Recorded::Pulled { digest: pulled }) => match (pulled.as_deref(), known) {
            (Some(pulled), Some(known)) => digest(pulled) == digest(known),
            _ => true,
        },
        Some(Recorded::Failed) | None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_full_at_the_cap() {
        assert!(!is_full(0, 50));
        assert!(!is_full(49, 50));
        assert!(is_full(50, 50));
        assert!(is_full(51, 50), "a kubelet with a higher cap than ours");
        assert!(!is_full(500, 0), "0 turns the rule off");
        assert!(is_full(1, 1));
    }

    #[test]
    fn a_recorded_pull_counts_unless_the_digest_moved() {
        let pulled = |d: Option<&str>| Recorded::Pulled {
            digest: d.map(Into::into),
        };
        let a = "docker.io/library/nginx@sha256:aaaa";
        assert!(!counts_present(None, None));
        assert!(!counts_present(Some(&Recorded::Failed), None));
        assert!(counts_present(Some(&pulled(Some(a))), None));
        assert!(counts_present(Some(&pulled(None)), Some(a)));
        assert!(counts_present(Some(&pulled(None)), None));
        assert!(counts_present(Some(&pulled(Some(a))), Some(a)));
        assert!(
            counts_present(Some(&pulled(Some(a))), Some("sha256:aaaa")),
            "the same digest under another form"
        );
        assert!(
            counts_present(
                Some(&pulled(Some(a))),
                Some("mirror.example.com/library/nginx@sha256:aaaa")
            ),
            "the same content from a mirror"
        );
        assert!(!counts_present(
            Some(&pulled(Some(a))),
            Some("docker.io/library/nginx@sha256:bbbb")
        ));
    }
}
