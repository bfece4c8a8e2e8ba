//! HTTP routing of the test API server: paths, verbs, lists and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::SharedState;
use super::resources::{ResourceType, lookup};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{ApiError, ApplyRequest, WatchFilter, merge_patch};

#[derive(Clone)]
struct AppState {
    shared: SharedState,
    stop: CancellationToken,
}

pub fn router(shared: SharedState, stop: CancellationToken) -> Router {
    Router::new()
        .route(
            "/version",
            axum::routing::get(|| async {
                axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-prefetch-test", "platform": "linux/amd64"}))
            }),
        )
        .fallback(serve)
        .with_state(AppState { shared, stop })
}

/// What a path names.
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, rest @ ..]
            if lookup(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (Some(ns.to_string()), [&[*plural][..], rest].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let rt = lookup(group, version, rest.first()?)?;
    if rt.namespaced != namespace.is_some() && rest.len() > 1 {
        // A namespaced object must be addressed within its namespace.
        return None;
    }
    Some(Target {
        rt,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn error(err: ApiError) -> Response {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (code, axum::Json(err.body)).into_response();
    if code == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

fn ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

fn created(value: Value) -> Response {
    (StatusCode::CREATED, axum::Json(value)).into_response()
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))
}

async fn serve(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(target) = parse_path(uri.path()) else {
        return error(ApiError::new(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        ));
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb: &'static str = match (&method, target.name.is_some()) {
        (&Method::GET, false) if watching => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        _ => {
            return error(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported on {}", uri.path()),
            ));
        }
    };
    let resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", target.rt.plural),
        None => target.rt.plural.to_string(),
    };
    let client = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("anonymous");
    state.shared.count(verb, target.rt.group, &resource, client);
    if let Some(code) = state.shared.take_fault(verb, target.rt.plural, client) {
        if code == super::Fault::HANG {
            let mut epoch = state.shared.watch_epoch();
            epoch.mark_unchanged();
            tokio::select! {
                _ = state.stop.cancelled() => {}
                _ = epoch.changed() => {}
            }
            return error(ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is going down",
            ));
        }
        return error(injected(code, verb, &target, client));
    }
    let shared = &state.shared;
    let manager = field_manager(&query, &headers);
    let ns = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let status_only = match target.subresource.as_deref() {
        None => false,
        Some("status") if target.rt.status_subresource => true,
        Some(other) => {
            return error(ApiError::new(
                404,
                "NotFound",
                format!("subresource {other} is not served"),
            ));
        }
    };
    match verb {
        "get" => shared.get(target.rt, &ns, &name).map_or_else(error, ok),
        "list" => list(shared, &target, &query),
        "watch" => watch(&state, &target, &query),
        "create" => match parse_body(&body) {
            Ok(obj) => match admit(shared, target.rt, "CREATE", &ns, obj, None, client).await {
                Ok(obj) => shared
                    .create_by(target.rt, &ns, obj, &manager)
                    .map_or_else(error, created),
                Err(e) => error(e),
            },
            Err(e) => error(e),
        },
        "update" => match parse_body(&body) {
            Ok(obj) if !status_only => {
                admitted_update(shared, &target, &ns, &name, client, &manager, |_| Ok(obj)).await
            }
            Ok(obj) => shared
                .update_by(target.rt, &ns, &name, status_only, &manager, |_| Ok(obj))
                .map_or_else(error, ok),
            Err(e) => error(e),
        },
        "patch" => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch = match parse_body(&body) {
                Ok(p) => p,
                Err(e) => return error(e),
            };
            let content_type = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if content_type == "application/apply-patch+yaml" {
                return server_side_apply(shared, &target, &query, status_only, &patch)
                    .map_or_else(error, ok);
            }
            if status_only {
                shared
                    .update_by(target.rt, &ns, &name, status_only, &manager, |old| {
                        apply_patch(old, &content_type, &patch)
                    })
                    .map_or_else(error, ok)
            } else {
                admitted_update(shared, &target, &ns, &name, client, &manager, |old| {
                    apply_patch(old, &content_type, &patch)
                })
                .await
            }
        }
        "delete" => {
            let options = if body.is_empty() {
                Value::Null
            } else {
                parse_body(&body).unwrap_or(Value::Null)
            };
            let preconditions = options.get("preconditions").cloned().unwrap_or(Value::Null);
            shared
                .delete(target.rt, &ns, &name, &preconditions)
                .map_or_else(error, ok)
        }
        _ => error(ApiError::new(405, "MethodNotAllowed", verb)),
    }
}

/// An injected fault, with the body kube-apiserver sends for that code.
fn injected(code: u16, verb: &str, target: &Target, client: &str) -> ApiError {
    let group = target.rt.group;
    let resource = target.rt.plural;
    match code {
        // A resource the server does not serve (a CRD not installed): the same answer as for
        // any unknown path.
        404 => ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
        403 => {
            let qualified = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            let scope = match &target.namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".to_string(),
            };
            let mut err = ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{qualified} is forbidden: User \"{client}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
                ),
            );
            err.body["details"] = json!({"group": group, "kind": resource});
            err
        }
        _ => ApiError::new(
            code,
            "InternalError",
            format!("injected fault {code} for {verb} {resource}"),
        ),
    }
}

async fn admit(
    shared: &SharedState,
    rt: ResourceType,
    operation: &str,
    ns: &str,
    object: Value,
    old: Option<&Value>,
    user: &str,
) -> Result<Value, ApiError> {
    let hooks = shared.hooks();
    let ruled = |h: &super::admission::MutatingWebhook| {
        h.group == rt.group && h.plural == rt.plural && h.operations.contains(&operation)
    };
    if !hooks.iter().any(ruled) {
        return Ok(object);
    }
    let labels = if rt.namespaced {
        shared.namespace_labels(ns)
    } else {
        None
    };
    super::admission::admit(
        &hooks,
        rt,
        operation,
        ns,
        labels.as_deref(),
        object,
        old,
        user,
    )
    .await
}

/// An update or patch of the main resource: the new object goes through mutating admission
/// (UPDATE, with the stored object as oldObject) before it is stored. The write carries the
/// resourceVersion it was computed from, so a change in between is a 409 as usual.
async fn admitted_update(
    shared: &SharedState,
    target: &Target,
    ns: &str,
    name: &str,
    user: &str,
    manager: &str,
    update: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Response {
    let old = match shared.get(target.rt, ns, name) {
        Ok(old) => old,
        Err(e) => return error(e),
    };
    let new = match update(&old) {
        Ok(new) => new,
        Err(e) => return error(e),
    };
    let mut new = match admit(shared, target.rt, "UPDATE", ns, new, Some(&old), user).await {
        Ok(new) => new,
        Err(e) => return error(e),
    };
    if new.pointer("/metadata/resourceVersion").is_none() {
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    }
    shared
        .update_by(target.rt, ns, name, false, manager, |_| Ok(new))
        .map_or_else(error, ok)
}

/// Who makes a write: `?fieldManager=`, else, as kube-apiserver derives it, the User-Agent up
/// to its first `/`.
fn field_manager(query: &HashMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) {
        return manager.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|agent| agent.split('/').next())
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// Server-side apply (`fields.rs`), for what it models faithfully: the status subresource of
/// a custom resource (maps by key, lists whole). Anything else is refused, not approximated.
fn server_side_apply(
    shared: &SharedState,
    target: &Target,
    query: &HashMap<String, String>,
    status_only: bool,
    config: &Value,
) -> Result<Value, ApiError> {
    let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    // Our one custom resource; every built-in kind keys some of its lists. A Namespace's
    // labels and annotations are maps of strings, owned key by key as modelled.
    let custom_status = status_only && target.rt.group == "cache.techsquad.rocks";
    let namespace_metadata = !status_only && target.rt.kind == "Namespace" && only_metadata(config);
    if !custom_status && !namespace_metadata {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the test API server models server-side apply only for a custom resource's status subresource and a Namespace's labels and annotations",
        ));
    }
    for (field, want) in [
        ("apiVersion", target.rt.api_version()),
        ("kind", target.rt.kind.to_string()),
    ] {
        if config.get(field).and_then(Value::as_str) != Some(want.as_str()) {
            return Err(ApiError::bad_request(format!(
                "{field} must be set to {want:?} in an apply configuration"
            )));
        }
    }
    let name = target.name.clone().unwrap_or_default();
    if config
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(ApiError::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let force = matches!(query.get("force").map(String::as_str), Some("true"));
    let ns = target.namespace.clone().unwrap_or_default();
    if !status_only {
        check_apply_target(shared, target.rt, &ns, &name, config)?;
    }
    let request = ApplyRequest {
        manager,
        config,
        force,
    };
    shared.apply(target.rt, &ns, &name, status_only, &request)
}

/// An apply configuration of nothing but a Namespace's identity, labels and annotations.
fn only_metadata(config: &Value) -> bool {
    let strings = |v: &Value| {
        v.as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    };
    let Some(top) = config.as_object() else {
        return false;
    };
    top.keys()
        .all(|k| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        && config
            .get("metadata")
            .and_then(Value::as_object)
            .is_some_and(|meta| {
                meta.iter().all(|(k, v)| match k.as_str() {
                    "name" | "uid" => v.is_string(),
                    "labels" | "annotations" => strings(v),
                    _ => false,
                })
            })
}

/// Apply to the main resource creates an object that does not exist; a `metadata.uid` in the
/// configuration turns that into 409 instead (k8s staging/src/k8s.io/apiserver/pkg/endpoints/
/// handlers/patch.go, `applyPatch`: "uid mismatch"), and on an object of another uid it is a
/// change of an immutable field, 422. Creating by apply is not modelled, so refused.
fn check_apply_target(
    shared: &SharedState,
    rt: ResourceType,
    ns: &str,
    name: &str,
    config: &Value,
) -> Result<(), ApiError> {
    let uid = config.pointer("/metadata/uid").and_then(Value::as_str);
    match (shared.get(rt, ns, name), uid) {
        (Err(e), Some(uid)) if e.code == 404 => Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": uid mismatch: the provided object specified uid {uid}, and no existing object was found",
                rt.plural
            ),
        )),
        (Err(e), None) if e.code == 404 => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            "the test API server does not model server-side apply creating an object",
        )),
        (Err(e), _) => Err(e),
        (Ok(live), Some(uid))
            if live.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) =>
        {
            Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"{name}\" is invalid: metadata.uid: Invalid value: \"{uid}\": field is immutable",
                    rt.kind
                ),
            ))
        }
        (Ok(_), _) => Ok(()),
    }
}

fn apply_patch(old: &Value, content_type: &str, patch: &Value) -> Result<Value, ApiError> {
    let mut new = old.clone();
    match content_type {
        "application/json-patch+json" => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            // As kube-apiserver answers a patch that does not apply (a failed `test`, a path
            // that is not there): 422 Invalid, the patch library's error as the cause.
            json_patch::patch(&mut new, &ops).map_err(|e| {
                let mut err = ApiError::new(
                    422,
                    "Invalid",
                    "the server rejected our request due to an error in our request",
                );
                err.body["details"] = json!({"causes": [
                    {"reason": "UnexpectedServerResponse", "message": e.to_string()}
                ]});
                err
            })?;
        }
        "application/merge-patch+json" => {
            merge_patch(&mut new, patch);
        }
        // Strategic merge merges lists by key, per type; not modelled, so refused.
        "application/strategic-merge-patch+json" => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the test API server does not model strategic merge patch; send a merge, JSON or apply patch",
            ));
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            ));
        }
    }
    // A patch carrying a resourceVersion is a precondition; one without never conflicts.
    if patch.pointer("/metadata/resourceVersion").is_none()
        && let Some(rv) = old.pointer("/metadata/resourceVersion")
    {
        new["metadata"]["resourceVersion"] = rv.clone();
    }
    Ok(new)
}

fn filter_from(target: &Target, query: &HashMap<String, String>) -> Result<WatchFilter, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok(WatchFilter {
        rt: target.rt,
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

fn list(shared: &SharedState, target: &Target, query: &HashMap<String, String>) -> Response {
    let filter = match filter_from(target, query) {
        Ok(f) => f,
        Err(e) => return error(e),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let continue_after = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match decode_continue(token) {
            Some(key) => Some(key),
            None => return error(ApiError::bad_request("invalid continue token")),
        },
        None => None,
    };
    let (items, rv, next) = shared.list(&filter, limit, continue_after);
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(next) = next {
        metadata["continue"] = json!(encode_continue(&next));
    }
    ok(json!({
        "apiVersion": target.rt.api_version(),
        "kind": format!("{}List", target.rt.kind),
        "metadata": metadata,
        "items": items,
    }))
}

fn encode_continue((ns, name): &(String, String)) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!([ns, name])).unwrap_or_default())
}

fn decode_continue(token: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let (ns, name): (String, String) = serde_json::from_slice(&bytes).ok()?;
    Some((ns, name))
}

fn watch(state: &AppState, target: &Target, query: &HashMap<String, String>) -> Response {
    let filter = match filter_from(target, query) {
        Ok(f) => f,
        Err(e) => return error(e),
    };
    let from_rv = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error(ApiError::bad_request(format!(
                    "invalid resourceVersion {rv:?}"
                )));
            }
        },
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let line = |kind: &str, object: &Value| {
        let mut bytes =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        bytes.push(b'\n');
        Ok(Bytes::from(bytes))
    };
    match state.shared.watch_start(&filter, from_rv) {
        Err(expired) => {
            // The real server answers 200 and then an ERROR event carrying the 410 Status.
            let _ = tx.try_send(line("ERROR", &expired.body));
        }
        Ok((initial, mut last_rv, mut changes)) => {
            let mut epoch = state.shared.watch_epoch();
            epoch.mark_unchanged();
            let stop = state.stop.clone();
            let rt = target.rt;
            tokio::spawn(async move {
                for (kind, object) in initial {
                    if tx.send(line(kind, &object)).await.is_err() {
                        return;
                    }
                }
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = epoch.changed() => return,
                        _ = &mut deadline => {
                            if bookmarks {
                                let bookmark = json!({"apiVersion": rt.api_version(), "kind": rt.kind,
                                    "metadata": {"resourceVersion": last_rv.to_string()}});
                                let _ = tx.send(line("BOOKMARK", &bookmark)).await;
                            }
                            return;
                        }
                        change = changes.recv() => match change {
                            Ok(change) => {
                                if change.rv <= last_rv {
                                    continue;
                                }
                                last_rv = change.rv;
                                if let Some(kind) = filter.event_type(&change)
                                    && tx.send(line(kind, &change.object)).await.is_err()
                                {
                                    return;
                                }
                            }
                            // A watcher that fell too far behind is cut off, as the real
                            // server does; the client re-watches from its last version.
                            Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                        },
                    }
                }
            });
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
