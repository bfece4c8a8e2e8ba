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
mod tests {
    use super::*;
    use serde_json::json;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    /// A Ready Linux node with `extra` merged into its JSON.
    fn ready(name: &str, extra: serde_json::Value) -> Node {
        let mut base = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut base, extra);
        node(base)
    }

    fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    fn spec(value: serde_json::Value) -> PrefetchSpec {
        let mut base = json!({"filter_by_labels": {"app": "nginx"}});
        merge(&mut base, value);
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn node_filter_is_a_substring_and_empty_matches_all() {
        let worker = ready("kind-worker2", json!({}));
        assert_eq!(
            skip_reason(&worker, &spec(json!({"node_filter": "worker"})), None),
            None
        );
        assert_eq!(skip_reason(&worker, &spec(json!({})), None), None);
        assert_eq!(
            skip_reason(&worker, &spec(json!({"node_filter": ""})), None),
            None
        );
        assert_eq!(
            skip_reason(
                &ready("kind-control-plane", json!({})),
                &spec(json!({"node_filter": "worker"})),
                None
            ),
            Some(SkipReason::NameFilter {
                filter: "worker".into()
            })
        );
    }

    #[test]
    fn node_selector_needs_every_label() {
        let gpu = ready(
            "n",
            json!({"metadata": {"labels": {"accelerator": "gpu", "zone": "a"}}}),
        );
        assert_eq!(
            skip_reason(
                &gpu,
                &spec(json!({"node_selector": {"accelerator": "gpu"}})),
                None
            ),
            None
        );
        assert_eq!(
            skip_reason(
                &gpu,
                &spec(json!({"node_selector": {"accelerator": "gpu", "zone": "b"}})),
                None
            ),
            Some(SkipReason::NodeSelector)
        );
    }

    #[test]
    fn not_ready_unschedulable_non_linux_and_deleting_nodes_are_skipped() {
        let s = spec(json!({}));
        let not_ready = ready(
            "n",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(
            skip_reason(&not_ready, &s, None),
            Some(SkipReason::NotReady)
        );
        let unknown = ready(
            "n",
            json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        );
        assert_eq!(skip_reason(&unknown, &s, None), Some(SkipReason::NotReady));
        assert_eq!(
            skip_reason(&node(json!({"metadata": {"name": "n"}})), &s, None),
            Some(SkipReason::NotReady)
        );
        let cordoned = ready("n", json!({"spec": {"unschedulable": true}}));
        assert_eq!(
            skip_reason(&cordoned, &s, None),
            Some(SkipReason::Unschedulable)
        );
        let windows = ready(
            "n",
            json!({"metadata": {"labels": {"kubernetes.io/os": "windows"}}}),
        );
        assert_eq!(
            skip_reason(&windows, &s, None),
            Some(SkipReason::NotLinux {
                os: "windows".into()
            })
        );
        let windows_by_info = node(json!({"metadata": {"name": "n"},
            "status": {"nodeInfo": {"operatingSystem": "windows", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""},
                "conditions": [{"type": "Ready", "status": "True"}]}}));
        assert_eq!(
            skip_reason(&windows_by_info, &s, None),
            Some(SkipReason::NotLinux {
                os: "windows".into()
            })
        );
        let deleting = ready(
            "n",
            json!({"metadata": {"deletionTimestamp": "2026-11-22T00:00:00Z"}}),
        );
        assert_eq!(skip_reason(&deleting, &s, None), Some(SkipReason::Deleting));
    }

    #[test]
    fn disk_pressure_is_skipped_after_readiness_and_before_taints() {
        let s = spec(json!({}));
        let pressure = |status: &str| {
            ready(
                "n",
                json!({"status": {"conditions": [{"type": "Ready", "status": "True"},
                                                 {"type": "DiskPressure", "status": status}]}}),
            )
        };
        assert_eq!(
            skip_reason(&pressure("True"), &s, None),
            Some(SkipReason::DiskPressure)
        );
        assert_eq!(skip_reason(&pressure("False"), &s, None), None);
        assert_eq!(skip_reason(&pressure("Unknown"), &s, None), None);
        // The node lifecycle controller taints such a node; the reason stays DiskPressure,
        // and tolerating every taint does not let a pod onto it.
        let tainted = ready(
            "n",
            json!({"spec": {"taints": [{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}]},
                   "status": {"conditions": [{"type": "Ready", "status": "True"},
                                             {"type": "DiskPressure", "status": "True"}]}}),
        );
        assert_eq!(
            skip_reason(&tainted, &s, None),
            Some(SkipReason::DiskPressure)
        );
        let everything = spec(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(
            skip_reason(&tainted, &everything, None),
            Some(SkipReason::DiskPressure)
        );
        // Not Ready comes first: that is the more fundamental reason.
        let both = ready(
            "n",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"},
                                             {"type": "DiskPressure", "status": "True"}]}}),
        );
        assert_eq!(skip_reason(&both, &s, None), Some(SkipReason::NotReady));
        assert!(
            SkipReason::DiskPressure
                .to_string()
                .starts_with("DiskPressure: ")
        );
    }

    #[test]
    fn control_plane_taint_is_honoured_unless_tolerated() {
        let cp = ready(
            "kind-control-plane",
            json!({"spec": {"taints": [
            {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            skip_reason(&cp, &spec(json!({})), None),
            Some(SkipReason::Taint {
                taint: "node-role.kubernetes.io/control-plane:NoSchedule".into()
            })
        );
        let tolerated = spec(
            json!({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert_eq!(skip_reason(&cp, &tolerated, None), None);
        let everything = spec(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(skip_reason(&cp, &everything, None), None);
        // PreferNoSchedule never keeps a pod off a node.
        let soft = ready(
            "n",
            json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
        );
        assert_eq!(skip_reason(&soft, &spec(json!({})), None), None);
    }

    #[test]
    fn the_warmup_taint_is_tolerated_only_when_warm_nodes_are_on() {
        let key = crate::taint::DEFAULT_WARMUP_TAINT;
        let warming = ready(
            "kind-worker4",
            json!({"spec": {"taints": [{"key": key, "effect": "NoSchedule"}]}}),
        );
        let s = spec(json!({}));
        assert_eq!(skip_reason(&warming, &s, Some(key)), None);
        assert_eq!(
            skip_reason(&warming, &s, None),
            Some(SkipReason::Taint {
                taint: format!("{key}:NoSchedule")
            }),
            "feature off: a taint like any other"
        );
        // Only that key, only NoSchedule: other taints still count.
        let also_dedicated = ready(
            "n",
            json!({"spec": {"taints": [{"key": key, "effect": "NoSchedule"},
                                       {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            skip_reason(&also_dedicated, &s, Some(key)),
            Some(SkipReason::Taint {
                taint: "dedicated=gpu:NoSchedule".into()
            })
        );
        let evicting = ready(
            "n",
            json!({"spec": {"taints": [{"key": key, "effect": "NoExecute"}]}}),
        );
        assert_eq!(
            skip_reason(&evicting, &s, Some(key)),
            Some(SkipReason::Taint {
                taint: format!("{key}:NoExecute")
            })
        );
        // Warming does not make a NotReady node eligible.
        let not_ready = ready(
            "n",
            json!({"spec": {"taints": [{"key": key, "effect": "NoSchedule"}]},
                   "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(
            skip_reason(&not_ready, &s, Some(key)),
            Some(SkipReason::NotReady)
        );
    }

    #[test]
    fn toleration_matching_follows_kubernetes() {
        let taint = |key: &str, value: Option<&str>, effect: &str| Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Default::default()
        };
        let tol = |v: serde_json::Value| -> Toleration { serde_json::from_value(v).unwrap() };
        let gpu = taint("dedicated", Some("gpu"), "NoSchedule");
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "value": "gpu"})),
            &gpu
        ));
        assert!(tolerates(
            &tol(
                json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"})
            ),
            &gpu
        ));
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "value": "cpu"})),
            &gpu
        ));
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "value": "gpu", "effect": "NoExecute"})),
            &gpu
        ));
        assert!(tolerates(
            &tol(json!({"key": "dedicated", "operator": "Exists"})),
            &gpu
        ));
        assert!(!tolerates(
            &tol(json!({"key": "other", "operator": "Exists"})),
            &gpu
        ));
        assert!(tolerates(
            &tol(json!({"operator": "Exists", "effect": "NoSchedule"})),
            &gpu
        ));
        assert!(!tolerates(
            &tol(json!({"key": "dedicated", "operator": "Bogus"})),
            &gpu
        ));
        let bare = taint("flag", None, "NoExecute");
        assert!(tolerates(&tol(json!({"key": "flag"})), &bare));
        assert!(!tolerates(
            &tol(json!({"key": "flag", "value": "x"})),
            &bare
        ));
    }
}
