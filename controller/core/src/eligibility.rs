//! Whether a node should get prefetch pods for a Prefetch, and if not, why not.

use std::fmt;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use prefetch_common::PrefetchSpec;
use prefetch_common::labels::selects;

use crate::taint::is_warmup_taint;

/// Why a node is not targeted. The order of the variants is the order of the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Its name does not contain `spec.node_filter`.
    NameFilter { filter: String },
    /// Its labels do not match `spec.node_selector`.
    NodeSelector,
    /// Being deleted.
    Deleting,
    /// Not a Linux node (the noop binary and the pod shape are Linux-only).
    NotLinux { os: String },
    /// Cordoned (`spec.unschedulable`).
    Unschedulable,
    /// Its Ready condition is not True.
    NotReady,
    /// Its DiskPressure condition is True: a pull there would only trigger the kubelet's image
    /// garbage collection (and evict pods). Checked before taints, so the reason reads the
    /// same whether or not the Prefetch tolerates `node.kubernetes.io/disk-pressure`.
    DiskPressure,
    /// A NoSchedule or NoExecute taint that `spec.tolerations` does not tolerate.
    Taint { taint: String },
}

impl SkipReason {
    /// The reason's name, for counts (`DiskPressure`, `NotReady`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::NameFilter { .. } => "NameFilter",
            SkipReason::NodeSelector => "NodeSelector",
            SkipReason::Deleting => "Deleting",
            SkipReason::NotLinux { .. } => "NotLinux",
            SkipReason::Unschedulable => "Unschedulable",
            SkipReason::NotReady => "NotReady",
            SkipReason::DiskPressure => "DiskPressure",
            SkipReason::Taint { .. } => "Taint",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NameFilter { filter } => {
                write!(f, "name does not contain node_filter {filter:?}")
            }
            SkipReason::NodeSelector => write!(f, "labels do not match node_selector"),
            SkipReason::Deleting => write!(f, "being deleted"),
            SkipReason::NotLinux { os } => write!(f, "not a Linux node ({os})"),
            SkipReason::Unschedulable => write!(f, "cordoned (unschedulable)"),
            SkipReason::NotReady => write!(f, "not Ready"),
            SkipReason::DiskPressure => write!(
                f,
                "DiskPressure: the node is low on disk, a pull would only trigger image garbage collection"
            ),
            SkipReason::Taint { taint } => write!(f, "taint {taint} not tolerated"),
        }
    }
}

/// `None` when the node is targeted. `warmup_taint` is `--warmup-taint` (`None` when warm nodes
/// are off): a node carrying it is warming, and prefetch pods tolerate it whatever the spec.
pub fn skip_reason(
    node: &Node,
    spec: &PrefetchSpec,
    warmup_taint: Option<&str>,
) -> Option<SkipReason> {
    let name = node.metadata.name.as_deref().unwrap_or("");
    let filter = spec.node_filter();
    if !name.contains(filter) {
        return Some(SkipReason::NameFilter {
            filter: filter.to_string(),
        });
    }
    if let Some(selector) = &spec.node_selector
        && !selects(selector, node.metadata.labels.as_ref())
    {
        return Some(SkipReason::NodeSelector);
    }
    if node.metadata.deletion_timestamp.is_some() {
        return Some(SkipReason::Deleting);
    }
    let os = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/os"))
        .map(String::as_str)
        .or_else(|| {
            node.status
                .as_ref()?
                .node_info
                .as_ref()
                .map(|i| i.operating_system.as_str())
        });
    if let Some(os) = os
        && os != "linux"
    {
        return Some(SkipReason::NotLinux { os: os.to_string() });
    }
    let spec_ = node.spec.as_ref();
    if spec_.and_then(|s| s.unschedulable).unwrap_or(false) {
        return Some(SkipReason::Unschedulable);
    }
    if !is_ready(node) {
        return Some(SkipReason::NotReady);
    }
    if has_disk_pressure(node) {
        return Some(SkipReason::DiskPressure);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    for taint in spec_.and_then(|s| s.taints.as_deref()).unwrap_or(&[]) {
        if warmup_taint.is_some_and(|key| is_warmup_taint(taint, key)) {
            continue;
        }
        let blocks = matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute");
        if blocks && !tolerations.iter().any(|t| tolerates(t, taint)) {
            let value = taint
                .value
                .as_deref()
                .map(|v| format!("={v}"))
                .unwrap_or_default();
            return Some(SkipReason::Taint {
                taint: format!("{}{value}:{}", taint.key, taint.effect),
            });
        }
    }
    None
}

/// The node conditions planning reads; the controller's node cache keeps only these.
pub const PLANNING_CONDITIONS: [&str; 2] = ["Ready", "DiskPressure"];

/// Whether the node's condition `type_` has status True (absent or Unknown: false).
fn condition_true(node: &Node, type_: &str) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
        .is_some_and(|c| c.status == "True")
}

pub fn is_ready(node: &Node) -> bool {
    condition_true(node, "Ready")
}

/// The kubelet reports DiskPressure True when free disk (or inodes) on the node's root or image
/// filesystem falls below its eviction threshold. Unknown (a node that stopped reporting) is
/// not pressure: such a node is not Ready either.
pub fn has_disk_pressure(node: &Node) -> bool {
    condition_true(node, "DiskPressure")
}

/// `node` with a DiskPressure condition True added (for tests).
#[cfg(test)]
pub(crate) fn under_disk_pressure(mut node: Node) -> Node {
    let condition = k8s_openapi::api::core::v1::NodeCondition {
        type_: "DiskPressure".into(),
        status: "True".into(),
        ..Default::default()
    };
    node.status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition);
    node
}

/// `Toleration.ToleratesTaint` of k8s.io/api/core/v1.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
