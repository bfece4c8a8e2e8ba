//! Field ownership, as kube-apiserver's server-side apply keeps it (managedFields), for the
//! writes our binaries send.
//!
//! Every write is made by a field manager: `?fieldManager=` or, as the real server does, the
//! client's User-Agent up to its first `/`. An update (create, PUT, merge or JSON patch) gives
//! its manager the fields it changed and takes them from every other manager. An apply
//! (`application/apply-patch+yaml`) makes its manager own exactly the fields of its
//! configuration: a field it applied before and leaves out now is removed from the object
//! unless another manager owns it too; a field another manager owns with a different value is
//! a 409 conflict unless the apply is forced, which takes the field over.
//!
//! The model is that of a custom resource without list annotations: maps are owned key by
//! key, lists and scalars whole. Built-in kinds key their lists (containers by name, ...), so
//! the handlers refuse apply for them rather than model it wrongly.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::error::ApiError;

/// A field: the keys from the object's root to a leaf (a scalar, a list, or an empty map).
pub type FieldPath = Vec<String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

/// Which part of the object a write may change: the status subresource's status, or the
/// main resource (everything but status on kinds with a status subresource).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main { status_subresource: bool },
    Status,
}

/// One managedFields entry: a manager, its operation and subresource, and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub status: bool,
    pub fields: BTreeSet<FieldPath>,
}

/// Metadata the server sets; nobody owns it.
const SERVER_METADATA: [&str; 8] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
];

fn in_scope(path: &[String], scope: Scope) -> bool {
    match (path, scope) {
        ([first, ..], _) if first == "apiVersion" || first == "kind" => false,
        ([first, second, ..], _)
            if first == "metadata" && SERVER_METADATA.contains(&second.as_str()) =>
        {
            false
        }
        ([first, ..], Scope::Status) => first == "status",
        ([first, ..], Scope::Main { status_subresource }) => {
            !(status_subresource && first == "status")
        }
        ([], _) => false,
    }
}

/// The fields of `value` within `scope`, with their values: every leaf, and every map below
/// the top level (a map is a field of its own too: the manager that made it owns it, and it is
/// removed with its last owner, as kube-apiserver's managedFields record with `.`).
pub fn fields(value: &Value, scope: Scope) -> BTreeMap<FieldPath, &Value> {
    fn walk<'a>(value: &'a Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, &'a Value>) {
        if path.len() >= 2 || !value.is_object() {
            out.insert(path.clone(), value);
        }
        if let Value::Object(members) = value {
            for (key, member) in members {
                path.push(key.clone());
                walk(member, path, out);
                path.pop();
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, &mut Vec::new(), &mut out);
    out.retain(|path, _| in_scope(path, scope));
    out
}

fn is_leaf(value: &Value) -> bool {
    value.as_object().is_none_or(|m| m.is_empty())
}

fn value_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |v, key| v.as_object()?.get(key))
}

fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for key in parent {
        match at.as_object_mut().and_then(|m| m.get_mut(key)) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(members) = at.as_object_mut() {
        members.remove(last);
    }
}

/// Merges an apply configuration into the object: maps member by member, leaves replaced. An
/// empty map in the configuration keeps the members others own.
fn merge_config(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(target), Value::Object(config)) => {
            for (key, member) in config {
                match target.get_mut(key) {
                    Some(existing) => merge_config(existing, member),
                    None => {
                        target.insert(key.clone(), member.clone());
                    }
                }
            }
        }
        (target, config) => *target = config.clone(),
    }
}

/// A body with a null anywhere: kube-apiserver's handling of nulls in an apply configuration
/// is not modelled, and our binaries never send one.
fn find_null(value: &Value, path: &mut Vec<String>) -> Option<String> {
    match value {
        Value::Null => Some(format!(".{}", path.join("."))),
        Value::Object(members) => members.iter().find_map(|(key, member)| {
            path.push(key.clone());
            let found = find_null(member, path);
            path.pop();
            found
        }),
        Value::Array(items) => items.iter().find_map(|item| find_null(item, path)),
        _ => None,
    }
}

/// The managedFields of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    pub entries: Vec<Entry>,
}

impl Owners {
    fn entry_mut(&mut self, manager: &str, operation: Operation, status: bool) -> &mut Entry {
        let index = self
            .entries
            .iter()
            .position(|e| e.manager == manager && e.operation == operation && e.status == status);
        let index = index.unwrap_or_else(|| {
            self.entries.push(Entry {
                manager: manager.to_string(),
                operation,
                status,
                fields: BTreeSet::new(),
            });
            self.entries.len() - 1
        });
        &mut self.entries[index]
    }

    fn drop_empty(&mut self) {
        self.entries.retain(|e| !e.fields.is_empty());
    }

    /// An update by `manager` turned `old` into `new`: it owns what it changed; fields gone
    /// from the object are owned by nobody.
    pub fn record_update(&mut self, manager: &str, scope: Scope, old: &Value, new: &Value) {
        let before = fields(old, scope);
        let after = fields(new, scope);
        // A leaf whose value changed, or a field that was not there.
        let changed: Vec<FieldPath> = after
            .iter()
            .filter(|(path, value)| match before.get(*path) {
                None => true,
                Some(was) => is_leaf(value) && was != *value,
            })
            .map(|(path, _)| path.clone())
            .collect();
        for entry in &mut self.entries {
            entry
                .fields
                .retain(|owned| after.contains_key(owned) && !changed.contains(owned));
        }
        if !changed.is_empty() {
            let entry = self.entry_mut(manager, Operation::Update, scope == Scope::Status);
            entry.fields.extend(changed);
        }
        self.drop_empty();
    }

    /// Server-side apply of `config` by `manager` onto `live`: the new object, or the 409
    /// that kube-apiserver answers for conflicts.
    pub fn apply(
        &mut self,
        manager: &str,
        scope: Scope,
        live: &Value,
        config: &Value,
        force: bool,
    ) -> Result<Value, ApiError> {
        if let Some(at) = find_null(config, &mut Vec::new()) {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "the test API server does not model null in an apply configuration (at {at})"
                ),
            ));
        }
        let status = scope == Scope::Status;
        let applied = fields(config, scope);
        let is_mine = |e: &Entry| {
            e.manager == manager && e.operation == Operation::Apply && e.status == status
        };
        let conflicts = self.conflicts(live, &applied, is_mine);
        if !conflicts.is_empty() && !force {
            return Err(conflict_error(&conflicts));
        }
        for entry in self.entries.iter_mut().filter(|e| !is_mine(e)) {
            entry.fields.retain(|owned| {
                !conflicts
                    .iter()
                    .any(|(m, p)| *m == entry.manager && p == owned)
            });
        }
        let previous = self
            .entries
            .iter()
            .find(|e| is_mine(e))
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        let mut object = live.clone();
        for stale in previous.iter().filter(|p| !applied.contains_key(*p)) {
            // Kept while another manager owns it or something beneath it.
            let shared = self
                .entries
                .iter()
                .filter(|e| !is_mine(e))
                .any(|e| e.fields.iter().any(|owned| owned.starts_with(stale)));
            if !shared {
                remove_at(&mut object, stale);
            }
        }
        let mut scoped = config.clone();
        if let Some(members) = scoped.as_object_mut() {
            members
                .retain(|key, _| in_scope(std::slice::from_ref(key), scope) || key == "metadata");
        }
        if let Some(meta) = scoped.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|key, _| !SERVER_METADATA.contains(&key.as_str()) && !status);
        }
        merge_config(&mut object, &scoped);
        self.entry_mut(manager, Operation::Apply, status).fields = applied.into_keys().collect();
        self.drop_empty();
        Ok(object)
    }

    /// (manager, field) pairs another manager owns, at or beneath an applied leaf, whose value
    /// the apply would change.
    fn conflicts(
        &self,
        live: &Value,
        applied: &BTreeMap<FieldPath, &Value>,
        is_mine: impl Fn(&Entry) -> bool,
    ) -> Vec<(String, FieldPath)> {
        let mut found = Vec::new();
        for entry in self.entries.iter().filter(|e| !is_mine(e)) {
            for owned in &entry.fields {
                let differs = applied.iter().any(|(path, value)| {
                    is_leaf(value)
                        && owned.starts_with(path)
                        && value_at(live, path) != Some(*value)
                });
                if differs {
                    found.push((entry.manager.clone(), owned.clone()));
                }
            }
        }
        found
    }

    /// The entries in kube-apiserver's managedFields shape (FieldsV1), for reading in tests.
    pub fn managed_fields(&self) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|e| {
                let mut fields = Map::new();
                for path in &e.fields {
                    let mut at = &mut fields;
                    for key in path {
                        let next = at.entry(format!("f:{key}")).or_insert_with(|| json!({}));
                        at = next.as_object_mut().expect("built as objects");
                    }
                    // A map owned as a field of its own, as kube-apiserver writes it.
                    let beneath = |p: &FieldPath| p.len() > path.len() && p.starts_with(path);
                    if e.fields.iter().any(beneath) {
                        at.insert(".".into(), json!({}));
                    }
                }
                let mut entry = json!({
                    "manager": e.manager,
                    "operation": if e.operation == Operation::Apply { "Apply" } else { "Update" },
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields,
                });
                if e.status {
                    entry["subresource"] = json!("status");
                }
                entry
            })
            .collect();
        Value::Array(entries)
    }
}

fn conflict_error(conflicts: &[(String, FieldPath)]) -> ApiError {
    let describe = |(manager, path): &(String, FieldPath)| {
        format!("conflict with \"{manager}\": .{}", path.join("."))
    };
    let mut err = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            conflicts
                .iter()
                .map(describe)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    );
    err.body["details"] = json!({"causes": conflicts.iter().map(|(manager, path)| json!({
        "type": "FieldManagerConflict",
        "message": format!("conflict with \"{manager}\""),
        "field": format!(".{}", path.join(".")),
    })).collect::<Vec<_>>()});
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: Scope = Scope::Status;

    fn object(status: Value) -> Value {
        json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
               "metadata": {"name": "pf", "namespace": "default", "uid": "u", "resourceVersion": "7"},
               "spec": {"filter_by_labels": {"app": "web"}}, "status": status})
    }

    fn config(status: Value) -> Value {
        json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
               "metadata": {"name": "pf"}, "status": status})
    }

    #[test]
    fn fields_applied_before_and_left_out_now_are_removed() {
        let mut owners = Owners::default();
        let live = object(json!({}));
        let first = config(
            json!({"phase": "RUNNING", "last_rollout": {"requested_at": "t1", "prefetched_at": "t0"},
                                  "digests": {"a": "sha256:a", "b": "sha256:b"}}),
        );
        let live = owners.apply("ctl", STATUS, &live, &first, true).unwrap();
        let second = config(
            json!({"phase": "RUNNING", "last_rollout": {"requested_at": "t2"}, "digests": {"b": "sha256:b"}}),
        );
        let live = owners.apply("ctl", STATUS, &live, &second, true).unwrap();
        assert_eq!(live["status"], second["status"]);
        assert_eq!(
            live["spec"],
            json!({"filter_by_labels": {"app": "web"}}),
            "spec untouched"
        );
        assert_eq!(live["metadata"]["uid"], "u");
    }

    #[test]
    fn another_managers_fields_stay_and_conflict_without_force() {
        let mut owners = Owners::default();
        let old = object(json!({}));
        let edited = object(json!({"phase": "FAILED", "note": "by hand"}));
        owners.record_update("kubectl", STATUS, &old, &edited);
        let applied = config(json!({"phase": "RUNNING"}));
        let err = owners
            .apply("ctl", STATUS, &edited, &applied, false)
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.body["details"]["causes"][0]["field"], ".status.phase");
        let live = owners
            .apply("ctl", STATUS, &edited, &applied, true)
            .unwrap();
        assert_eq!(
            live["status"],
            json!({"phase": "RUNNING", "note": "by hand"})
        );
        // Forced: the field is ours now, so leaving it out removes it; "note" is still theirs.
        let live = owners
            .apply("ctl", STATUS, &live, &config(json!({"ready": 1})), false)
            .unwrap();
        assert_eq!(live["status"], json!({"note": "by hand", "ready": 1}));
    }

    #[test]
    fn the_same_value_is_shared_not_a_conflict_and_stays_while_shared() {
        let mut owners = Owners::default();
        let old = object(json!({}));
        let edited = object(json!({"phase": "RUNNING"}));
        owners.record_update("kubectl", STATUS, &old, &edited);
        let live = owners
            .apply(
                "ctl",
                STATUS,
                &edited,
                &config(json!({"phase": "RUNNING"})),
                false,
            )
            .unwrap();
        let live = owners
            .apply("ctl", STATUS, &live, &config(json!({"ready": 1})), false)
            .unwrap();
        assert_eq!(live["status"], json!({"phase": "RUNNING", "ready": 1}));
    }

    #[test]
    fn an_update_takes_the_fields_it_changes_and_removal_frees_them() {
        let mut owners = Owners::default();
        let live = owners
            .apply(
                "ctl",
                STATUS,
                &object(json!({})),
                &config(json!({"digests": {"a": "1"}})),
                true,
            )
            .unwrap();
        let mut edited = live.clone();
        edited["status"]["digests"]["a"] = json!("2");
        owners.record_update("kubectl", STATUS, &live, &edited);
        let managed = owners.managed_fields();
        assert_eq!(
            managed[0]["fieldsV1"],
            json!({"f:status": {"f:digests": {}}}),
            "ctl keeps the map it made"
        );
        assert_eq!(managed[1]["manager"], "kubectl");
        assert_eq!(
            managed[1]["fieldsV1"],
            json!({"f:status": {"f:digests": {"f:a": {}}}})
        );
        // Applied without digests: ctl's map goes only with kubectl's key gone too.
        let live = owners
            .apply(
                "ctl",
                STATUS,
                &edited,
                &config(json!({"phase": "RUNNING"})),
                true,
            )
            .unwrap();
        assert_eq!(live["status"]["digests"], json!({"a": "2"}));
    }

    #[test]
    fn a_map_applied_before_and_left_out_now_goes_whole() {
        let mut owners = Owners::default();
        let live = owners
            .apply(
                "ctl",
                STATUS,
                &object(json!({})),
                &config(json!({"last_rollout": {"deployment": "web"}})),
                true,
            )
            .unwrap();
        let live = owners
            .apply(
                "ctl",
                STATUS,
                &live,
                &config(json!({"phase": "RUNNING"})),
                true,
            )
            .unwrap();
        assert_eq!(live["status"], json!({"phase": "RUNNING"}));
    }

    #[test]
    fn nulls_and_main_resource_fields_in_a_status_apply() {
        let mut owners = Owners::default();
        let err = owners
            .apply(
                "ctl",
                STATUS,
                &object(json!({})),
                &config(json!({"phase": null})),
                true,
            )
            .unwrap_err();
        assert_eq!(err.code, 422);
        let mut with_spec = config(json!({"phase": "RUNNING"}));
        with_spec["spec"] = json!({"retry_after": 30});
        let live = owners
            .apply("ctl", STATUS, &object(json!({})), &with_spec, true)
            .unwrap();
        assert_eq!(live["spec"], json!({"filter_by_labels": {"app": "web"}}));
    }
}
