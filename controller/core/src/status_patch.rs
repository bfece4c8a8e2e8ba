//! How the controller writes a Prefetch's status so that the server holds exactly the status it
//! computed (design: docs/src/design.md#status-ownership). Pure: the request bodies;
//! `reconciler.rs` sends them.
//!
//! The write is a server-side apply of the whole status with our field manager, forced: a
//! field we applied before and leave out now is removed (a JSON merge patch would keep it, and
//! did: the previous rollout's `prefetched_at` released every later rollout's pods). Apply
//! removes only fields this manager owns. Fields another manager wrote (an older controller's
//! merge patches, `kubectl edit --subresource=status`) stay, so the applied object is compared
//! with what we computed, and any difference is removed by a merge patch of [`merge_diff`].

use prefetch_common::PrefetchStatus;
use prefetch_common::annotations::{API_GROUP, API_VERSION, KIND};
use serde_json::{Map, Value, json};

/// The field manager of every status the controller applies.
pub const FIELD_MANAGER: &str = "prefetch-controller";

/// The apply configuration: apiVersion, kind and name, as server-side apply requires, and the
/// whole status.
pub fn apply_body(name: &str, status: &PrefetchStatus) -> Value {
    json!({
        "apiVersion": format!("{API_GROUP}/{API_VERSION}"),
        "kind": KIND,
        "metadata": {"name": name},
        "status": status,
    })
}

/// The JSON merge patch (RFC 7386) that turns `server` into `ours`: members that differ take
/// our value, members only the server has become null, objects both have are compared member
/// by member. `None` when they are equal. `ours` holds no null (a merge patch cannot write
/// one; our status serializes an absent field by leaving it out).
pub fn merge_diff(server: &Value, ours: &Value) -> Option<Value> {
    match (server, ours) {
        _ if server == ours => None,
        (Value::Object(server), Value::Object(ours)) => {
            let mut patch = Map::new();
            for (key, was) in server {
                match ours.get(key) {
                    None => {
                        patch.insert(key.clone(), Value::Null);
                    }
                    Some(now) => {
                        if let Some(member) = merge_diff(was, now) {
                            patch.insert(key.clone(), member);
                        }
                    }
                }
            }
            for (key, now) in ours {
                if !server.contains_key(key) {
                    patch.insert(key.clone(), now.clone());
                }
            }
            Some(Value::Object(patch))
        }
        _ => Some(ours.clone()),
    }
}

/// The merge patch for the status subresource that removes what the server holds beyond
/// `ours`, or `None` when the applied object already holds exactly our status.
pub fn stale_status_patch(
    applied: Option<&PrefetchStatus>,
    ours: &PrefetchStatus,
) -> Option<Value> {
    if applied == Some(ours) {
        return None;
    }
    let server = serde_json::to_value(applied).ok()?;
    let ours = serde_json::to_value(ours).ok()?;
    let server = if server.is_null() { json!({}) } else { server };
    merge_diff(&server, &ours).map(|status| json!({ "status": status }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use prefetch_common::RolloutRecord;
    use proptest::prelude::*;

    fn merged(mut server: Value, patch: &Value) -> Value {
        json_patch::merge(&mut server, patch);
        server
    }

    #[test]
    fn the_apply_body_names_the_object_and_carries_the_whole_status() {
        let body = apply_body("pf", &PrefetchStatus::default());
        assert_eq!(body["apiVersion"], "cache.techsquad.rocks/v1");
        assert_eq!(body["kind"], "Prefetch");
        assert_eq!(body["metadata"], json!({"name": "pf"}));
        assert_eq!(body["status"]["images"], json!([]));
        assert!(body["status"].get("last_rollout").is_none());
    }

    #[test]
    fn a_stale_prefetched_at_and_digest_are_nulled() {
        let at = |s: &str| MicroTime(s.parse().unwrap());
        let mut server = PrefetchStatus {
            last_rollout: Some(RolloutRecord {
                deployment: "web".into(),
                workload: Some("Deployment/web".into()),
                images: vec!["b".into()],
                requested_at: Some(at("2026-12-06T04:00:00.5Z")),
                observed_at: Some(at("2026-12-06T04:00:01Z")),
                prefetched_at: Some(at("2026-12-06T03:00:00Z")),
            }),
            ..Default::default()
        };
        server.digests.insert("a".into(), "sha256:aa".into());
        server.digests.insert("b".into(), "sha256:bb".into());
        let mut ours = server.clone();
        ours.last_rollout.as_mut().unwrap().prefetched_at = None;
        ours.digests.remove("a");
        let patch = stale_status_patch(Some(&server), &ours).unwrap();
        assert_eq!(
            patch,
            json!({"status": {"digests": {"a": null}, "last_rollout": {"prefetched_at": null}}})
        );
        assert_eq!(stale_status_patch(Some(&ours), &ours), None);
        let written = stale_status_patch(None, &ours).unwrap();
        assert_eq!(written["status"], serde_json::to_value(&ours).unwrap());
    }

    /// JSON without nulls, as our statuses serialize.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The diff, merged into what the server holds, gives exactly ours.
        #[test]
        fn merging_the_diff_gives_ours(server in json_value(), ours in json_value()) {
            let server = json!({"status": server});
            let ours = json!({"status": ours});
            match merge_diff(&server, &ours) {
                None => prop_assert_eq!(&server, &ours),
                Some(patch) => prop_assert_eq!(merged(server, &patch), ours),
            }
        }
    }
}
