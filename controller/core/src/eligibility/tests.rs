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
