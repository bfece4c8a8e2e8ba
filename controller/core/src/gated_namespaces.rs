//! Which namespaces carry the gated-rollouts label (design: docs/src/design.md#warm-rollouts).
//!
//! The pod hook's namespaceSelector matches [`GATED_NAMESPACE_LABEL`], so a pod reaches the
//! webhook only in a namespace that holds a Prefetch with `gate_rollouts`: the only pods one
//! could gate. The controller keeps the label on exactly those namespaces, by server-side
//! apply under its field manager, owning that one label:
//! - to label: an apply with the label, forced (a value another manager set is taken over);
//! - to unlabel: an apply without it, which removes a field this manager applied before and
//!   no other manager owns. A label another manager owns too stays (a GitOps tool that sets it
//!   is not fought); that unlabel is not sent again until the namespace changes.
//!
//! Both carry the namespace's uid: server-side apply creates an object that does not exist,
//! and with a uid it answers 409 instead ("uid mismatch"), so a namespace deleted meanwhile is
//! never created again. Pure: [`changes`] decides, [`apply_body`] is the request; the shell
//! (`controller/src/shell/namespaces.rs`) reads the caches and sends them.

use std::collections::{BTreeMap, BTreeSet};

use prefetch_common::Prefetch;
use prefetch_common::annotations::{GATED_NAMESPACE_LABEL, GATED_NAMESPACE_VALUE};
use serde_json::{Value, json};

/// The field manager of the label, the controller's (as of the status it applies).
pub const FIELD_MANAGER: &str = crate::status_patch::FIELD_MANAGER;

/// The label selector of the namespace watch: only labelled namespaces, so a cluster's other
/// namespaces cost the controller nothing.
pub fn labelled_selector() -> String {
    format!("{GATED_NAMESPACE_LABEL}={GATED_NAMESPACE_VALUE}")
}

/// The namespaces that should carry the label: those holding a Prefetch with
/// `gate_rollouts`, not being deleted.
pub fn wanted<'a>(prefetches: impl IntoIterator<Item = &'a Prefetch>) -> BTreeSet<String> {
    prefetches
        .into_iter()
        .filter(|p| p.spec.gate_rollouts() && p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.namespace.clone())
        .collect()
}

/// A namespace the label watch shows (it carries the label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// Apply the label; the shell reads the namespace's uid first.
    Label { namespace: String },
    /// Apply without the label, to the namespace of this uid.
    Unlabel { namespace: String, uid: String },
}

/// Unlabels the server answered with the label still there (another manager owns it), by
/// namespace: the resourceVersion it answered. Not sent again while the namespace is unchanged.
pub type Kept = BTreeMap<String, String>;

/// The writes that bring the labelled namespaces to `wanted`: a label for each wanted
/// namespace the watch does not show, an unlabel for each one it shows that is not wanted (but
/// one kept at the resourceVersion the watch still shows). Sorted by namespace, labels first:
/// a label lets pods be gated, so it should not wait behind removals.
pub fn changes(wanted: &BTreeSet<String>, labelled: &[Labelled], kept: &Kept) -> Vec<Change> {
    let shown: BTreeSet<&str> = labelled.iter().map(|n| n.name.as_str()).collect();
    let labels = wanted
        .iter()
        .filter(|n| !shown.contains(n.as_str()))
        .map(|n| Change::Label {
            namespace: n.clone(),
        });
    let mut stale: Vec<&Labelled> = labelled
        .iter()
        .filter(|n| !wanted.contains(&n.name))
        .filter(|n| kept.get(&n.name) != Some(&n.resource_version))
        .collect();
    stale.sort_by(|a, b| a.name.cmp(&b.name));
    let unlabels = stale.into_iter().map(|n| Change::Unlabel {
        namespace: n.name.clone(),
        uid: n.uid.clone(),
    });
    labels.chain(unlabels).collect()
}

/// Forgets kept unlabels of namespaces no longer labelled or wanted again.
pub fn prune_kept(kept: &mut Kept, wanted: &BTreeSet<String>, labelled: &[Labelled]) {
    kept.retain(|name, _| !wanted.contains(name) && labelled.iter().any(|n| n.name == *name));
}

/// The apply configuration for the namespace `name` of `uid`: with the label when `label`, else
/// with nothing but its identity (this manager then owns no field of it, and the label it
/// applied is removed). The uid makes the apply of a namespace that is gone a 409, never a
/// create.
pub fn apply_body(name: &str, uid: &str, label: bool) -> Value {
    let mut metadata = json!({"name": name, "uid": uid});
    if label {
        metadata["labels"] = json!({GATED_NAMESPACE_LABEL: GATED_NAMESPACE_VALUE});
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
}

/// Whether a namespace's labels carry ours with its value.
pub fn carries_label(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(GATED_NAMESPACE_LABEL))
        .is_some_and(|v| v == GATED_NAMESPACE_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use prefetch_common::PrefetchSpec;

    fn prefetch(namespace: &str, name: &str, gate: Option<bool>) -> Prefetch {
        let mut p = Prefetch::new(
            name,
            PrefetchSpec {
                filter_by_labels: [("app".to_string(), "web".to_string())].into(),
                gate_rollouts: gate,
                ..Default::default()
            },
        );
        p.metadata.namespace = Some(namespace.into());
        p
    }

    fn labelled(name: &str, rv: &str) -> Labelled {
        Labelled {
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: rv.into(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn label(ns: &str) -> Change {
        Change::Label {
            namespace: ns.into(),
        }
    }

    fn unlabel(ns: &str) -> Change {
        Change::Unlabel {
            namespace: ns.into(),
            uid: format!("uid-{ns}"),
        }
    }

    #[test]
    fn only_namespaces_with_a_gating_prefetch_are_wanted() {
        let mut deleting = prefetch("leaving", "pf", Some(true));
        deleting.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let mut no_namespace = prefetch("x", "pf", Some(true));
        no_namespace.metadata.namespace = None;
        let prefetches = [
            prefetch("gated", "a", Some(true)),
            prefetch("gated", "b", Some(false)),
            prefetch("mixed", "a", None),
            prefetch("mixed", "b", Some(true)),
            prefetch("open", "a", Some(false)),
            prefetch("defaulted", "a", None),
            deleting,
            no_namespace,
        ];
        assert_eq!(wanted(&prefetches), set(&["gated", "mixed"]));
        assert!(wanted(&[]).is_empty());
    }

    #[test]
    fn labels_what_is_wanted_and_unlabels_what_is_not() {
        let labelled = [labelled("a", "1"), labelled("c", "3"), labelled("d", "4")];
        assert_eq!(
            changes(&set(&["b", "a", "e"]), &labelled, &Kept::new()),
            vec![label("b"), label("e"), unlabel("c"), unlabel("d")]
        );
    }

    #[test]
    fn nothing_to_do_when_the_labels_match() {
        let labelled = [labelled("a", "1"), labelled("b", "2")];
        assert!(changes(&set(&["a", "b"]), &labelled, &Kept::new()).is_empty());
        assert!(changes(&set(&[]), &[], &Kept::new()).is_empty());
    }

    #[test]
    fn every_label_is_removed_when_nothing_gates() {
        let labelled = [labelled("b", "2"), labelled("a", "1")];
        assert_eq!(
            changes(&set(&[]), &labelled, &Kept::new()),
            vec![unlabel("a"), unlabel("b")]
        );
    }

    #[test]
    fn a_kept_unlabel_is_not_sent_again_until_the_namespace_changes() {
        let kept: Kept = [("a".to_string(), "7".to_string())].into();
        assert!(changes(&set(&[]), &[labelled("a", "7")], &kept).is_empty());
        assert_eq!(
            changes(&set(&[]), &[labelled("a", "8")], &kept),
            vec![unlabel("a")]
        );
    }

    #[test]
    fn kept_unlabels_are_forgotten_once_gone_or_wanted() {
        let mut kept: Kept = [
            ("gone".to_string(), "1".to_string()),
            ("wanted".to_string(), "2".to_string()),
            ("still".to_string(), "3".to_string()),
        ]
        .into();
        let labelled = [labelled("wanted", "2"), labelled("still", "3")];
        prune_kept(&mut kept, &set(&["wanted"]), &labelled);
        assert_eq!(kept, [("still".to_string(), "3".to_string())].into());
    }

    #[test]
    fn the_apply_bodies_carry_the_uid_and_only_our_label() {
        assert_eq!(
            apply_body("team-a", "u1", true),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "team-a", "uid": "u1",
                "labels": {"cache.techsquad.rocks/gated-rollouts": "true"}}})
        );
        assert_eq!(
            apply_body("team-a", "u1", false),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "uid": "u1"}})
        );
        assert_eq!(
            labelled_selector(),
            "cache.techsquad.rocks/gated-rollouts=true"
        );
    }

    #[test]
    fn only_the_value_true_carries_the_label() {
        let of = |v: &str| -> BTreeMap<String, String> {
            [(GATED_NAMESPACE_LABEL.to_string(), v.to_string())].into()
        };
        assert!(carries_label(Some(&of("true"))));
        assert!(!carries_label(Some(&of("false"))));
        assert!(!carries_label(Some(&BTreeMap::new())));
        assert!(!carries_label(None));
    }

    proptest::proptest! {
        /// Applying the changes to the labelled set gives exactly the wanted set (nothing kept).
        #[test]
        fn changes_reach_the_wanted_set(
            wanted_names in proptest::collection::btree_set("[a-e]", 0..5),
            shown in proptest::collection::btree_set("[a-e]", 0..5),
        ) {
            let labelled: Vec<Labelled> = shown.iter().map(|n| labelled(n, "1")).collect();
            let mut after: BTreeSet<String> = shown.clone();
            for change in changes(&wanted_names, &labelled, &Kept::new()) {
                match change {
                    Change::Label { namespace } => proptest::prop_assert!(after.insert(namespace)),
                    Change::Unlabel { namespace, .. } => proptest::prop_assert!(after.remove(&namespace)),
                }
            }
            proptest::prop_assert_eq!(after, wanted_names);
        }
    }
}
