use super::*;
use serde_json::{Value, json};

const OWNER: Owner<'static> = Owner {
    namespace: "shop",
    name: "web",
    uid: "uid-web",
};

/// A prefetch pod pulling one image (not finished) on `node`.
fn pod(
    namespace: &str,
    label: Option<&str>,
    owner_uid: Option<(&str, bool)>,
    node: Option<&str>,
) -> Pod {
    let mut meta = json!({"name": "p", "namespace": namespace});
    if let Some(label) = label {
        meta["labels"] = json!({PREFETCH_LABEL: label});
    }
    if let Some((uid, controller)) = owner_uid {
        meta["ownerReferences"] = json!([{"apiVersion": "cache.techsquad.rocks/v1alpha1",
            "kind": "Prefetch", "name": "web", "uid": uid, "controller": controller}]);
    }
    if let Some(node) = node {
        meta["annotations"] = json!({NODE_ANNOTATION: node});
    }
    serde_json::from_value(json!({"metadata": meta,
        "spec": {"containers": [{"name": "c0", "image": "nginx:1.27"}]}}))
    .unwrap()
}

fn with(pod: Pod, patch: Value) -> Pod {
    let mut value = serde_json::to_value(&pod).unwrap();
    json_patch::merge(&mut value, &patch);
    serde_json::from_value(value).unwrap()
}

fn owned(node: &str) -> Pod {
    pod("shop", Some("web"), Some(("uid-web", true)), Some(node))
}

#[test]
fn a_pod_is_own_only_in_the_namespace_with_the_label_and_the_controller_reference() {
    assert!(is_own(&owned("n1"), OWNER));
    let elsewhere = pod("other", Some("web"), Some(("uid-web", true)), Some("n1"));
    let other_label = pod("shop", Some("api"), Some(("uid-web", true)), Some("n1"));
    let unlabelled = pod("shop", None, Some(("uid-web", true)), Some("n1"));
    let other_uid = pod("shop", Some("web"), Some(("uid-old", true)), Some("n1"));
    let not_controller = pod("shop", Some("web"), Some(("uid-web", false)), Some("n1"));
    let no_owner = pod("shop", Some("web"), None, Some("n1"));
    for (what, pod) in [
        ("another namespace", elsewhere),
        ("another Prefetch's label", other_label),
        ("no label", unlabelled),
        (
            "a Prefetch of the same name before (another uid)",
            other_uid,
        ),
        ("a reference that is not the controller", not_controller),
        ("no owner: labelled like ours by someone else", no_owner),
    ] {
        assert!(!is_own(&pod, OWNER), "{what}");
    }
}

#[test]
fn a_pod_keeps_its_node_busy_until_it_finishes_or_goes() {
    let other = pod("shop", Some("api"), Some(("uid-api", true)), Some("n2"));
    assert_eq!(busy_node(&other), Some("n2"));
    let deleting = with(
        other.clone(),
        json!({"metadata": {"deletionTimestamp": "2026-11-22T10:00:00Z"}}),
    );
    assert_eq!(busy_node(&deleting), None);
    let succeeded = with(other.clone(), json!({"status": {"phase": "Succeeded"}}));
    assert_eq!(busy_node(&succeeded), None);
    let failed = with(other.clone(), json!({"status": {"phase": "Failed"}}));
    assert_eq!(busy_node(&failed), None, "a failed pod reports every image");
    let unplaced = pod("shop", Some("api"), Some(("uid-api", true)), None);
    assert_eq!(busy_node(&unplaced), None, "not placed by us: no node");
}

#[test]
fn pods_sort_into_own_and_the_nodes_others_keep_busy() {
    let mine = [owned("n1"), owned("n3")];
    let others = [
        pod("shop", Some("api"), Some(("uid-api", true)), Some("n2")),
        pod("other", Some("web"), Some(("uid-x", true)), Some("n4")),
        with(
            pod("shop", Some("db"), Some(("uid-db", true)), Some("n5")),
            json!({"status": {"phase": "Succeeded"}}),
        ),
    ];
    let sorted = sort_pods(mine.iter().chain(&others), OWNER);
    assert_eq!(sorted.own, mine);
    assert_eq!(
        sorted.busy_nodes,
        BTreeSet::from(["n2".into(), "n4".into()])
    );
}

#[test]
fn an_own_pod_never_makes_its_node_busy_even_while_it_pulls() {
    let sorted = sort_pods([owned("n1")].iter(), OWNER);
    assert_eq!(sorted.own.len(), 1);
    assert!(sorted.busy_nodes.is_empty());
}

#[test]
fn no_pods_sort_into_nothing() {
    assert_eq!(sort_pods(std::iter::empty(), OWNER), RoundPods::default());
}
