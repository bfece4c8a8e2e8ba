//! Objects, resourceVersions and the change log that watches replay.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use super::Lock;
pub use super::error::ApiError;
use super::fields::{Owners, Scope};
use super::resources::{ResourceType, lookup};
use super::selector::{FieldSelector, LabelSelector};

pub const DEFAULT_HISTORY: usize = 200_000;
/// Changes buffered for live watches. A watch that falls further behind is ended (the
/// client re-watches from its last version, replayed from the history log), as the real
/// server's bounded watch cache does; a larger ring only holds more copies in memory.
const BROADCAST_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub rt: ResourceType,
    pub namespace: String,
    pub kind: ChangeKind,
    pub object: Value,
    /// The object before a modification, to turn selector transitions into ADDED/DELETED.
    pub previous: Option<Value>,
}

/// Which changes a watch wants.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn selects(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.labels.matches(labels) && self.fields.matches(object)
    }

    /// The event type this watch sees for `change`, if any.
    pub fn event_type(&self, change: &Change) -> Option<&'static str> {
        if change.rt != self.rt
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != change.namespace)
        {
            return None;
        }
        let now = self.selects(&change.object);
        match change.kind {
            ChangeKind::Added => now.then_some("ADDED"),
            ChangeKind::Deleted => now.then_some("DELETED"),
            ChangeKind::Modified => {
                let before = change.previous.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKey {
    pub verb: &'static str,
    /// API group ("" for core).
    pub group: &'static str,
    pub resource: String,
    /// The bearer token the request carried: who made it (see `kubeconfig_for`).
    pub client: String,
}

/// Answer matching requests with an error instead of serving them.
#[derive(Debug, Clone)]
pub struct Fault {
    pub verb: Option<&'static str>,
    pub resource: Option<&'static str>,
    /// Only requests with this bearer token (see `TestApiServer::kubeconfig_for`).
    pub client: Option<&'static str>,
    /// The status to answer, or [`Fault::HANG`].
    pub code: u16,
}

impl Fault {
    /// Not an answer: the request hangs, as on an API server that stopped responding, until
    /// the server goes down (`go_down`) or is dropped.
    pub const HANG: u16 = 0;
}

type ObjectKey = (ResourceType, String, String);

struct Inner {
    rv: u64,
    uid: u64,
    objects: BTreeMap<ObjectKey, Value>,
    /// Each object's field managers (its managedFields), kept beside it.
    owners: BTreeMap<ObjectKey, Owners>,
    log: VecDeque<Arc<Change>>,
    /// Changes up to and including this resourceVersion are no longer in the log.
    compacted_through: u64,
    history: usize,
}

pub struct Shared {
    inner: Lock<Inner>,
    changes: broadcast::Sender<Arc<Change>>,
    watch_epoch: watch::Sender<u64>,
    counts: Lock<BTreeMap<RequestKey, u64>>,
    faults: Lock<Vec<(Fault, u32)>>,
    /// Mutating admission webhooks, in registration order: a snapshot each request reads
    /// without copying, as kube-apiserver reads its webhook configurations from a cache.
    pub hooks: Lock<Arc<Vec<super::admission::MutatingWebhook>>>,
    /// Each namespace's labels, kept up to date on every namespace write: webhooks'
    /// namespaceSelectors read them here, as kube-apiserver reads a namespace informer's
    /// cache, not under the store's lock that every write takes.
    namespace_labels: Lock<BTreeMap<String, Arc<Map<String, Value>>>>,
}

fn lock<T>(m: &Lock<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

impl Shared {
    pub fn new(history: usize) -> Self {
        Self {
            inner: Lock::new(Inner {
                rv: 1,
                uid: 0,
                objects: BTreeMap::new(),
                owners: BTreeMap::new(),
                log: VecDeque::new(),
                compacted_through: 1,
                history,
            }),
            changes: broadcast::channel(BROADCAST_CAPACITY).0,
            watch_epoch: watch::channel(0).0,
            counts: Lock::new(BTreeMap::new()),
            faults: Lock::new(Vec::new()),
            hooks: Lock::new(Arc::default()),
            namespace_labels: Lock::new(BTreeMap::new()),
        }
    }

    pub fn create_direct(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        object: Value,
    ) -> anyhow::Result<Value> {
        let rt = lookup(group, version, plural)
            .ok_or_else(|| anyhow::anyhow!("unknown resource {plural}"))?;
        let ns = meta_str(&object, "namespace").unwrap_or("").to_string();
        self.create(rt, &ns, object)
            .map_err(|e| anyhow::anyhow!("{}", e.body))
    }

    pub fn merge_status_direct(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        ns: &str,
        name: &str,
        status: &Value,
    ) -> anyhow::Result<Value> {
        let rt = lookup(group, version, plural)
            .ok_or_else(|| anyhow::anyhow!("unknown resource {plural}"))?;
        self.update(rt, ns, name, true, |old| {
            let mut new = old.clone();
            merge_patch(&mut new, &json!({"status": status}));
            Ok(new)
        })
        .map_err(|e| anyhow::anyhow!("{}", e.body))
    }

    pub fn seed(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        object: Value,
    ) -> anyhow::Result<()> {
        let rt = lookup(group, version, plural)
            .ok_or_else(|| anyhow::anyhow!("unknown resource {plural}"))?;
        let ns = meta_str(&object, "namespace").unwrap_or("").to_string();
        self.create(rt, &ns, object)
            .map_err(|e| anyhow::anyhow!("{}", e.body))?;
        Ok(())
    }

    // ---- bookkeeping used by tests ----

    pub fn count(&self, verb: &'static str, group: &'static str, resource: &str, client: &str) {
        *lock(&self.counts)
            .entry(RequestKey {
                verb,
                group,
                resource: resource.to_string(),
                client: client.to_string(),
            })
            .or_default() += 1;
    }
    pub fn request_counts(&self) -> BTreeMap<RequestKey, u64> {
        lock(&self.counts).clone()
    }
    pub fn reset_request_counts(&self) {
        lock(&self.counts).clear();
    }
    pub fn inject(&self, fault: Fault, count: u32) {
        lock(&self.faults).push((fault, count));
    }
    pub fn take_fault(&self, verb: &'static str, resource: &str, client: &str) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let (fault, remaining) = faults.iter_mut().find(|(f, n)| {
            *n > 0
                && f.verb.is_none_or(|v| v == verb)
                && f.resource.is_none_or(|r| r == resource)
                && f.client.is_none_or(|c| c == client)
        })?;
        *remaining -= 1;
        let code = fault.code;
        faults.retain(|(_, n)| *n > 0);
        Some(code)
    }
    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    pub fn hooks(&self) -> Arc<Vec<super::admission::MutatingWebhook>> {
        lock(&self.hooks).clone()
    }

    /// The labels of namespace `name`, from the namespace cache; `None` when it does not exist.
    pub fn namespace_labels(&self, name: &str) -> Option<Arc<Map<String, Value>>> {
        lock(&self.namespace_labels).get(name).cloned()
    }

    pub fn drop_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }
    pub fn watch_epoch(&self) -> watch::Receiver<u64> {
        self.watch_epoch.subscribe()
    }
    pub fn compact(&self) {
        let mut inner = lock(&self.inner);
        inner.log.clear();
        inner.compacted_through = inner.rv;
    }
    pub fn objects(&self, group: &str, plural: &str) -> Vec<Value> {
        self.objects_where(group, plural, |_| true)
    }

    pub fn objects_where(
        &self,
        group: &str,
        plural: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let Some(rt) = super::resources::RESOURCES
            .iter()
            .copied()
            .find(|r| r.group == group && r.plural == plural)
        else {
            return Vec::new();
        };
        // Keys sort by type first: read only this type's range.
        lock(&self.inner)
            .objects
            .range((rt, String::new(), String::new())..)
            .take_while(|((r, _, _), _)| *r == rt)
            .filter(|(_, v)| wanted(v))
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn object_count(&self) -> usize {
        lock(&self.inner).objects.len()
    }

    // ---- reads ----

    pub fn get(&self, rt: ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        let inner = lock(&self.inner);
        inner
            .objects
            .get(&(rt, ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, name))
    }

    /// Matching objects after `continue_after`, at most `limit`; the list's resourceVersion;
    /// and whether more remain.
    pub fn list(
        &self,
        filter: &WatchFilter,
        limit: Option<usize>,
        continue_after: Option<(String, String)>,
    ) -> (Vec<Value>, u64, Option<(String, String)>) {
        let inner = lock(&self.inner);
        let mut items = Vec::new();
        let mut last_key = None;
        let mut next = None;
        let start = match &continue_after {
            Some((ns, name)) => std::ops::Bound::Excluded((filter.rt, ns.clone(), name.clone())),
            None => std::ops::Bound::Included((filter.rt, String::new(), String::new())),
        };
        for ((rt, ns, name), obj) in inner.objects.range((start, std::ops::Bound::Unbounded)) {
            if *rt != filter.rt {
                break;
            }
            if filter.namespace.as_ref().is_some_and(|want| want != ns) || !filter.selects(obj) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                next = last_key;
                break;
            }
            items.push(obj.clone());
            last_key = Some((ns.clone(), name.clone()));
        }
        (items, inner.rv, next)
    }

    /// Starts a watch: changes after `from_rv` already logged, and a receiver for the rest.
    /// `None` for `from_rv` means "current state as ADDED, then changes".
    #[allow(clippy::type_complexity)]
    pub fn watch_start(
        &self,
        filter: &WatchFilter,
        from_rv: Option<u64>,
    ) -> Result<
        (
            Vec<(&'static str, Value)>,
            u64,
            broadcast::Receiver<Arc<Change>>,
        ),
        ApiError,
    > {
        let inner = lock(&self.inner);
        let receiver = self.changes.subscribe();
        let mut initial = Vec::new();
        match from_rv {
            None => {
                for ((rt, ns, _), obj) in &inner.objects {
                    if *rt == filter.rt
                        && filter.namespace.as_ref().is_none_or(|want| want == ns)
                        && filter.selects(obj)
                    {
                        initial.push(("ADDED", obj.clone()));
                    }
                }
            }
            Some(rv) if rv < inner.compacted_through => {
                return Err(ApiError::new(
                    410,
                    "Expired",
                    format!(
                        "too old resource version: {rv} ({})",
                        inner.compacted_through + 1
                    ),
                ));
            }
            Some(rv) => {
                for change in inner.log.iter().filter(|c| c.rv > rv) {
                    if let Some(kind) = filter.event_type(change) {
                        initial.push((kind, change.object.clone()));
                    }
                }
            }
        }
        Ok((initial, inner.rv, receiver))
    }

    // ---- writes ----

    fn record(&self, inner: &mut Inner, change: Change) {
        let change = Arc::new(change);
        inner.log.push_back(change.clone());
        while inner.log.len() > inner.history {
            if let Some(old) = inner.log.pop_front() {
                inner.compacted_through = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    pub fn create(&self, rt: ResourceType, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.create_by(rt, ns, obj, TEST_MANAGER)
    }

    /// Creates `obj` as `manager`, who owns every field it set.
    pub fn create_by(
        &self,
        rt: ResourceType,
        ns: &str,
        mut obj: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let mut inner = lock(&self.inner);
        let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(ApiError::bad_request("metadata is required"));
        };
        if rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(body_ns) if body_ns != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta.insert("namespace".into(), json!(ns));
                }
            }
            let ns_rt = lookup("", "v1", "namespaces").expect("namespaces is a known resource");
            if !inner
                .objects
                .contains_key(&(ns_rt, String::new(), ns.to_string()))
            {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("namespaces \"{ns}\" not found"),
                ));
            }
        }
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName").and_then(Value::as_str),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) => format!("{prefix}{:05x}", inner.uid + 1),
            _ => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        let key = (
            rt,
            if rt.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.clone(),
        );
        if inner.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", rt.plural),
            ));
        }
        inner.uid += 1;
        meta.insert("name".into(), json!(name));
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", inner.uid)),
        );
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("deletionTimestamp");
        if rt.generation {
            meta.insert("generation".into(), json!(1));
        }
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
        prepare_create_status(rt, &mut obj);
        name_label(rt, &name, &mut obj);
        validate(rt, &name, &obj)?;
        let mut owners = Owners::default();
        owners.record_update(manager, main_scope(rt), &json!({}), &obj);
        inner.owners.insert(key.clone(), owners);
        Ok(self.commit(&mut inner, key, ChangeKind::Added, obj, None))
    }

    /// Replaces the stored object by `update(old)`. `status_only` writes keep everything but
    /// status; other writes to a type with a status subresource keep the old status.
    pub fn update(
        &self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        status_only: bool,
        update: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        self.update_by(rt, ns, name, status_only, TEST_MANAGER, update)
    }

    /// An update (PUT, merge or JSON patch) by `manager`, who then owns what it changed.
    pub fn update_by(
        &self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        status_only: bool,
        manager: &str,
        update: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        self.write(rt, ns, name, status_only, false, Some(manager), |old, _| {
            update(old)
        })
    }

    /// A server-side apply of `config` by `manager` (see `fields.rs`).
    pub fn apply(
        &self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        status_only: bool,
        apply: &ApplyRequest<'_>,
    ) -> Result<Value, ApiError> {
        let scope = if status_only {
            Scope::Status
        } else {
            main_scope(rt)
        };
        self.write(rt, ns, name, status_only, false, None, |old, owners| {
            owners.apply(apply.manager, scope, old, apply.config, apply.force)
        })
    }

    /// The object's managedFields, in kube-apiserver's shape.
    pub fn managed_fields(&self, rt: ResourceType, ns: &str, name: &str) -> Value {
        let inner = lock(&self.inner);
        let key = (rt, ns_of(rt, ns), name.to_string());
        inner
            .owners
            .get(&key)
            .map_or_else(|| json!([]), Owners::managed_fields)
    }

    /// A pod's `binding` subresource, as the scheduler calls it (k8s
    /// pkg/registry/core/pod/storage `assignPod`): 409 when already bound, an error when the pod
    /// still has scheduling gates ("pod has non-empty .spec.schedulingGates").
    pub fn bind(&self, ns: &str, name: &str, node: &str) -> Result<Value, ApiError> {
        let rt = lookup("", "v1", "pods").expect("pods is a known resource");
        self.write(rt, ns, name, false, true, Some("kube-scheduler"), |old, _| {
            if let Some(bound) = old.pointer("/spec/nodeName").and_then(Value::as_str)
                && !bound.is_empty()
            {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{bound}\""),
                ));
            }
            if !scheduling_gates(old).is_empty() {
                return Err(ApiError::new(
                    500,
                    "InternalError",
                    format!("pod {name} has non-empty .spec.schedulingGates"),
                ));
            }
            let mut new = old.clone();
            new["spec"]["nodeName"] = json!(node);
            Ok(new)
        })
    }

    /// `updater` names the manager of an update; `None` for an apply, whose `update` keeps the
    /// field owners itself.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        status_only: bool,
        binding: bool,
        updater: Option<&str>,
        update: impl FnOnce(&Value, &mut Owners) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = lock(&self.inner);
        let key = (rt, ns_of(rt, ns), name.to_string());
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        let mut owners = inner.owners.get(&key).cloned().unwrap_or_default();
        let mut new = update(&old, &mut owners)?;
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && rv != meta_str(&old, "resourceVersion").unwrap_or("")
        {
            return Err(ApiError::conflict(&rt, name));
        }
        if meta_str(&new, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        if status_only {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(status) => new["status"] = status,
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        } else if rt.status_subresource {
            match old.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        // Fields the client cannot change.
        let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(ApiError::bad_request("metadata is required"));
        };
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "name",
            "generation",
            "deletionTimestamp",
        ] {
            match old["metadata"].get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
        meta.insert(
            "resourceVersion".into(),
            old["metadata"]["resourceVersion"].clone(),
        );
        new["apiVersion"] = json!(rt.api_version());
        new["kind"] = json!(rt.kind);
        name_label(rt, name, &mut new);
        if new == old {
            // The real API server skips no-op writes: no new resourceVersion, no watch event.
            // (An apply that only shares ownership of equal values changes managedFields.)
            inner.owners.insert(key, owners);
            return Ok(old);
        }
        validate(rt, name, &new)?;
        if !status_only && !binding {
            validate_update(rt, name, &old, &new)?;
        }
        if rt.generation && !status_only && new.get("spec") != old.get("spec") {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if let Some(manager) = updater {
            let scope = if status_only {
                Scope::Status
            } else {
                main_scope(rt)
            };
            owners.record_update(manager, scope, &old, &new);
        }
        inner.owners.insert(key.clone(), owners);
        Ok(self.commit(&mut inner, key, ChangeKind::Modified, new, Some(old)))
    }

    pub fn delete(
        &self,
        rt: ResourceType,
        ns: &str,
        name: &str,
        preconditions: &Value,
    ) -> Result<Value, ApiError> {
        let mut inner = lock(&self.inner);
        let key = (rt, ns_of(rt, ns), name.to_string());
        let old = inner
            .objects
            .get(&key)
            .ok_or_else(|| ApiError::not_found(&rt, name))?;
        if let Some(uid) = preconditions.get("uid").and_then(Value::as_str)
            && meta_str(old, "uid") != Some(uid)
        {
            return Err(ApiError::conflict(&rt, name));
        }
        if let Some(rv) = preconditions.get("resourceVersion").and_then(Value::as_str)
            && meta_str(old, "resourceVersion") != Some(rv)
        {
            return Err(ApiError::conflict(&rt, name));
        }
        let deleted = self.remove(&mut inner, key);
        // Background garbage collection of dependents, as the controller-manager does.
        let mut owners: Vec<String> = deleted
            .iter()
            .filter_map(|o| meta_str(o, "uid").map(String::from))
            .collect();
        while let Some(owner) = owners.pop() {
            let dependents: Vec<ObjectKey> = inner
                .objects
                .iter()
                .filter(|(_, obj)| {
                    obj.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .any(|r| r.get("uid").and_then(Value::as_str) == Some(&owner))
                        })
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in dependents {
                if let Some(obj) = self.remove(&mut inner, key) {
                    owners.extend(meta_str(&obj, "uid").map(String::from));
                }
            }
        }
        deleted.ok_or_else(|| ApiError::not_found(&rt, name))
    }

    fn remove(&self, inner: &mut Inner, key: ObjectKey) -> Option<Value> {
        let obj = inner.objects.get(&key)?.clone();
        inner.owners.remove(&key);
        Some(self.commit(inner, key, ChangeKind::Deleted, obj, None))
    }

    /// Takes the next resourceVersion, stamps it on `object`, stores (or, for a deletion,
    /// removes) it, and logs the change for watches.
    fn commit(
        &self,
        inner: &mut Inner,
        key: ObjectKey,
        kind: ChangeKind,
        mut object: Value,
        previous: Option<Value>,
    ) -> Value {
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if kind == ChangeKind::Deleted {
            inner.objects.remove(&key);
        } else {
            inner.objects.insert(key.clone(), object.clone());
        }
        if key.0.group.is_empty() && key.0.plural == "namespaces" {
            let mut cache = lock(&self.namespace_labels);
            if kind == ChangeKind::Deleted {
                cache.remove(&key.2);
            } else {
                let labels = object
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object);
                cache.insert(key.2.clone(), Arc::new(labels.cloned().unwrap_or_default()));
            }
        }
        let (rt, namespace, _) = key;
        self.record(
            inner,
            Change {
                rv,
                rt,
                namespace,
                kind,
                object: object.clone(),
                previous,
            },
        );
        object
    }
}

/// A server-side apply: who applies what, and whether it takes over others' fields.
pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub config: &'a Value,
    pub force: bool,
}

/// The manager of writes the tests make directly, not through HTTP.
const TEST_MANAGER: &str = "test-api-server";

fn main_scope(rt: ResourceType) -> Scope {
    Scope::Main {
        status_subresource: rt.status_subresource,
    }
}

fn ns_of(rt: ResourceType, ns: &str) -> String {
    if rt.namespaced {
        ns.to_string()
    } else {
        String::new()
    }
}

/// The validation of the real API server, for the fields our code writes or depends on:
/// a Node's taints (qualified-name keys, label-syntax values, a known effect, each key and
/// effect pair once). Answered as the real one does: 422 Invalid naming the field.
fn validate(rt: ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    if rt.kind == "Pod" {
        return validate_pod(rt, name, obj);
    }
    if rt.kind != "Node" {
        return Ok(());
    }
    let mut errors = Vec::new();
    let taints = obj.pointer("/spec/taints").unwrap_or(&Value::Null);
    let taints = match taints {
        Value::Null => &[][..],
        Value::Array(list) => list.as_slice(),
        _ => {
            return Err(invalid(
                rt,
                name,
                vec!["spec.taints: Invalid value: must be a list".into()],
            ));
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, taint) in taints.iter().enumerate() {
        let field = format!("spec.taints[{i}]");
        let key = taint.get("key").and_then(Value::as_str).unwrap_or("");
        if key.is_empty() {
            errors.push(format!("{field}.key: Required value"));
        } else if let Some(why) = prefetch_common::labels::label_key_error(key) {
            errors.push(format!("{field}.key: Invalid value: {key:?}: {why}"));
        }
        match taint.get("value") {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) => {
                if let Some(why) = prefetch_common::labels::label_value_error(v) {
                    errors.push(format!("{field}.value: Invalid value: {v:?}: {why}"));
                }
            }
            Some(other) => errors.push(format!(
                "{field}.value: Invalid value: {other}: must be a string"
            )),
        }
        let effect = taint.get("effect").and_then(Value::as_str).unwrap_or("");
        if effect.is_empty() {
            errors.push(format!("{field}.effect: Required value"));
        } else if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            errors.push(format!(
                "{field}.effect: Unsupported value: {effect:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            ));
        }
        if !seen.insert((key.to_string(), effect.to_string())) {
            errors.push(format!(
                "{field}: Duplicate value: taints must be unique by key and effect pair"
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(rt, name, errors))
    }
}

fn scheduling_gates(pod: &Value) -> Vec<&str> {
    pod.pointer("/spec/schedulingGates")
        .and_then(Value::as_array)
        .map(|gates| {
            gates
                .iter()
                .filter_map(|g| g.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// A pod's scheduling gates, as `ValidatePodSpec` checks them (k8s
/// pkg/apis/core/validation/validation.go `validateSchedulingGates`, and `ValidatePodCreate`):
/// unique names, and no gates on a pod created already bound ("spec.nodeName: Forbidden:
/// cannot be set until all schedulingGates have been cleared").
fn validate_pod(rt: ResourceType, name: &str, pod: &Value) -> Result<(), ApiError> {
    let gates = scheduling_gates(pod);
    let mut errors = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (i, gate) in gates.iter().enumerate() {
        if !seen.insert(*gate) {
            errors.push(format!(
                "spec.schedulingGates[{i}]: Duplicate value: {gate:?}"
            ));
        }
    }
    if !gates.is_empty()
        && pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
    {
        errors.push(
            "spec.nodeName: Forbidden: cannot be set until all schedulingGates have been cleared"
                .into(),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(rt, name, errors))
    }
}

/// What `ValidatePodUpdate` allows (k8s pkg/apis/core/validation/validation.go): scheduling
/// gates may only be removed ("only deletion is allowed, but found new scheduling gate"), and
/// the spec may change only in containers' and initContainers' images,
/// activeDeadlineSeconds, tolerations (additions), terminationGracePeriodSeconds and, while
/// the pod is gated, its scheduling directives (nodeSelector, affinity). `spec.nodeName` is set
/// by a binding, never by an update.
fn validate_update(rt: ResourceType, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    if rt.kind != "Pod" {
        return Ok(());
    }
    let (old_gates, new_gates) = (scheduling_gates(old), scheduling_gates(new));
    let mut errors: Vec<String> = new_gates
        .iter()
        .filter(|g| !old_gates.contains(g))
        .map(|g| {
            format!(
                "spec.schedulingGates: Forbidden: only deletion is allowed, but found new scheduling gate '{g}'"
            )
        })
        .collect();
    let mutable = |spec: &Value| -> Value {
        let mut spec = spec.clone();
        if let Some(map) = spec.as_object_mut() {
            for field in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "schedulingGates",
            ] {
                map.remove(field);
            }
            if !old_gates.is_empty() {
                map.remove("nodeSelector");
                map.remove("affinity");
            }
            for list in ["containers", "initContainers"] {
                if let Some(containers) = map.get_mut(list).and_then(Value::as_array_mut) {
                    for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                        c.remove("image");
                    }
                }
            }
        }
        spec
    };
    let spec = |pod: &Value| pod.get("spec").cloned().unwrap_or(Value::Null);
    if mutable(&spec(old)) != mutable(&spec(new)) {
        errors.push(
            "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(rt, name, errors))
    }
}

fn invalid(rt: ResourceType, name: &str, errors: Vec<String>) -> ApiError {
    let message = if errors.len() == 1 {
        errors[0].clone()
    } else {
        format!("[{}]", errors.join(", "))
    };
    ApiError::new(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {message}", rt.kind),
    )
}

/// What each type's create strategy does to status.
fn prepare_create_status(rt: ResourceType, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match rt.kind {
        "Pod" => {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
        "Namespace" => {
            map.insert("status".into(), json!({"phase": "Active"}));
        }
        // Kubelets register nodes with their status.
        "Node" => {}
        _ if rt.status_subresource => {
            map.remove("status");
        }
        _ => {}
    }
}

/// The label `kubernetes.io/metadata.name` every Namespace carries, set to its name on create
/// and on every update whatever was sent (k8s pkg/registry/core/namespace/strategy.go,
/// `PrepareForCreate` and `PrepareForUpdate`): webhooks' namespaceSelectors match on it.
fn name_label(rt: ResourceType, name: &str, obj: &mut Value) {
    if rt.kind != "Namespace" {
        return;
    }
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels["kubernetes.io/metadata.name"] = json!(name);
}

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Some(target) = target.as_object_mut() {
                for (k, v) in patch {
                    if v.is_null() {
                        target.remove(k);
                    } else {
                        merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}
