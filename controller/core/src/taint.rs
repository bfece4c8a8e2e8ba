//! The warmup taint (design: docs/src/design.md#warm-nodes) as the other decisions see it: its key,
//! its effect, whether a node carries it, and the one toleration prefetch pods add for it. A leaf:
//! the planner, the pod shape and the ledger read it; `warmup.rs` builds on them all.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

/// `--warmup-taint`'s default.
pub const DEFAULT_WARMUP_TAINT: &str = "cache.techsquad.rocks/warming";
/// `--warmup-timeout`'s default.
pub const DEFAULT_WARMUP_TIMEOUT: &str = "15m";
/// The warmup taint's effect: it keeps pods off, it never evicts.
pub const WARMUP_EFFECT: &str = "NoSchedule";

/// The settings of warm nodes in a running controller: `--warmup-taint` (never empty here:
/// an empty flag means no `WarmupConfig` at all) and `--warmup-timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupConfig {
    pub taint: String,
    pub timeout: Duration,
}

impl WarmupConfig {
    /// `None` when `taint` is empty: the feature is off.
    pub fn new(taint: &str, timeout: Duration) -> Option<Self> {
        (!taint.is_empty()).then(|| Self {
            taint: taint.to_string(),
            timeout,
        })
    }
}

pub(crate) fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

pub(crate) fn name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

/// The warmup taint itself: that key with effect NoSchedule (any value).
pub fn is_warmup_taint(taint: &Taint, key: &str) -> bool {
    taint.key == key && taint.effect == WARMUP_EFFECT
}

/// Whether `node` carries the warmup taint.
pub fn is_warming(node: &Node, key: &str) -> bool {
    taints(node).iter().any(|t| is_warmup_taint(t, key))
}

/// The one toleration prefetch pods add: exactly the warmup taint, nothing more.
pub fn toleration(key: &str) -> Toleration {
    Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".into()),
        effect: Some(WARMUP_EFFECT.into()),
        ..Default::default()
    }
}
