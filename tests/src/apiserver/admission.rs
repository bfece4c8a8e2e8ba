//! Mutating admission as kube-apiserver runs it for the webhooks our install registers: on a
//! matching request the object (and the old object, for UPDATE) goes to the webhook in an
//! AdmissionReview v1 over TLS (connections kept alive and reused, as client-go's transport
//! does), bounded by `timeoutSeconds`; a returned JSON patch is applied
//! before the object is validated and stored; a denial fails the request with the webhook's
//! status. With `failurePolicy: Ignore`, a call that fails (connection refused, TLS error,
//! timeout, a non-200 answer, an unreadable response, a patch that does not apply) admits the
//! object unchanged; with `Fail` it fails the request (k8s
//! staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/mutating/dispatcher.go).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::resources::ResourceType;
use super::selector::LabelSelector;
use crate::tls_client::PinnedClient;

/// A `matchConditions` rule, as a predicate on the object (the install's CEL, mirrored).
pub type MatchCondition = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// One webhook of a MutatingWebhookConfiguration.
#[derive(Clone)]
pub struct MutatingWebhook {
    pub name: String,
    pub group: &'static str,
    pub plural: &'static str,
    /// CREATE, UPDATE.
    pub operations: Vec<&'static str>,
    pub client: Arc<PinnedClient>,
    pub path: String,
    pub timeout: Duration,
    /// `failurePolicy: Ignore`.
    pub ignore_failures: bool,
    /// The `namespaceSelector`, matched against the labels of the request's namespace (the
    /// empty selector matches every namespace).
    pub namespace_selector: LabelSelector,
    /// The `objectSelector`, matched against the object's labels (the empty selector matches
    /// every object).
    pub object_selector: LabelSelector,
    pub match_condition: Option<MatchCondition>,
}

impl MutatingWebhook {
    /// As kube-apiserver matches a webhook (k8s staging/src/k8s.io/apiserver/pkg/admission/
    /// plugin/webhook/predicates/{namespace,object}/matcher.go): the rules, the namespaceSelector
    /// on the labels of the object's namespace (`namespace_labels`; a cluster-scoped object
    /// other than a Namespace always matches), the objectSelector on the labels of the object
    /// or of the old one (either may match), then the matchConditions.
    fn applies(
        &self,
        rt: ResourceType,
        operation: &str,
        namespace_labels: Option<&Map<String, Value>>,
        object: &Value,
        old: Option<&Value>,
    ) -> bool {
        let labels = |o: &Value| {
            self.object_selector
                .matches(o.pointer("/metadata/labels").and_then(Value::as_object))
        };
        rt.group == self.group
            && rt.plural == self.plural
            && self.operations.contains(&operation)
            && (!rt.namespaced || self.namespace_selector.matches(namespace_labels))
            && (labels(object) || old.is_some_and(labels))
            && self.match_condition.as_ref().is_none_or(|m| m(object))
    }
}

/// Runs every applicable webhook in order; returns the object to store. `namespace_labels` are
/// the labels of the request's namespace, as the API server's namespace cache holds them.
#[allow(clippy::too_many_arguments)]
pub async fn admit(
    hooks: &[MutatingWebhook],
    rt: ResourceType,
    operation: &str,
    namespace: &str,
    namespace_labels: Option<&Map<String, Value>>,
    mut object: Value,
    old: Option<&Value>,
    user: &str,
) -> Result<Value, ApiError> {
    for hook in hooks {
        if !hook.applies(rt, operation, namespace_labels, &object, old) {
            continue;
        }
        let verdict = call(hook, rt, operation, namespace, &object, old, user)
            .await
            .and_then(|verdict| match verdict {
                // In place: `json_patch::patch` reverts what it applied when an operation fails.
                Verdict::Allowed(Some(patch)) => json_patch::patch(&mut object, &patch)
                    .map(|()| Verdict::Allowed(None))
                    .map_err(|e| format!("patch does not apply: {e}")),
                other => Ok(other),
            });
        match verdict {
            Ok(Verdict::Allowed(_)) => {}
            Ok(Verdict::Denied(err)) => return Err(err),
            Err(why) if hook.ignore_failures => {
                tracing::info!(webhook = %hook.name, error = %why, "failed calling webhook, failing open (failurePolicy Ignore)");
            }
            Err(why) => {
                return Err(ApiError::new(
                    500,
                    "InternalError",
                    format!(
                        "Internal error occurred: failed calling webhook \"{}\": {why}",
                        hook.name
                    ),
                ));
            }
        }
    }
    Ok(object)
}

enum Verdict {
    /// With the JSON patch to apply, if any.
    Allowed(Option<json_patch::Patch>),
    Denied(ApiError),
}

/// An AdmissionReview, serialized from borrowed objects (no copy of them).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Review<'a> {
    api_version: &'static str,
    kind: &'static str,
    request: ReviewRequest<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewRequest<'a> {
    uid: &'a str,
    kind: Value,
    resource: Value,
    request_kind: Value,
    request_resource: Value,
    name: &'a Value,
    namespace: &'a str,
    operation: &'a str,
    user_info: Value,
    object: &'a Value,
    old_object: &'a Value,
    dry_run: bool,
    options: Value,
}

async fn call(
    hook: &MutatingWebhook,
    rt: ResourceType,
    operation: &str,
    namespace: &str,
    object: &Value,
    old: Option<&Value>,
    user: &str,
) -> Result<Verdict, String> {
    let uid = format!("{:032x}", rand_u128());
    let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let resource = json!({"group": rt.group, "version": rt.version, "resource": rt.plural});
    let no_name = json!("");
    let request = ReviewRequest {
        uid: &uid,
        request_kind: kind.clone(),
        kind,
        request_resource: resource.clone(),
        resource,
        name: object.pointer("/metadata/name").unwrap_or(&no_name),
        namespace,
        operation,
        user_info: json!({"username": user}),
        object,
        old_object: old.unwrap_or(&Value::Null),
        dry_run: false,
        options: json!({"apiVersion": "meta.k8s.io/v1", "kind": if operation == "CREATE" { "CreateOptions" } else { "UpdateOptions" }}),
    };
    let review = Review {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        request,
    };
    let body = serde_json::to_vec(&review).map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(
        hook.timeout,
        hook.client
            .post_keep_alive(&hook.path, "application/json", body.into()),
    )
    .await
    .map_err(|_| format!("context deadline exceeded after {:?}", hook.timeout))?
    .map_err(|e| format!("{e:#}"))?;
    if reply.status != 200 {
        return Err(format!("the server answered {}", reply.status));
    }
    let answer = reply.json().map_err(|e| e.to_string())?;
    let response = answer
        .get("response")
        .ok_or("the AdmissionReview has no response")?;
    if response.get("uid").and_then(Value::as_str) != Some(uid.as_str()) {
        return Err("the response's uid does not match the request's".into());
    }
    if response.get("allowed") != Some(&Value::Bool(true)) {
        let status = response.get("status").cloned().unwrap_or(Value::Null);
        let code = status
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(403);
        let message = status.get("message").and_then(Value::as_str).unwrap_or("");
        return Ok(Verdict::Denied(ApiError::new(
            code,
            status
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("Forbidden"),
            format!(
                "admission webhook \"{}\" denied the request: {message}",
                hook.name
            ),
        )));
    }
    let Some(patch) = response.get("patch").and_then(Value::as_str) else {
        return Ok(Verdict::Allowed(None));
    };
    if response.get("patchType").and_then(Value::as_str) != Some("JSONPatch") {
        return Err("patchType must be JSONPatch".into());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .map_err(|e| format!("patch is not base64: {e}"))?;
    let patch: json_patch::Patch =
        serde_json::from_slice(&bytes).map_err(|e| format!("patch is not a JSON patch: {e}"))?;
    Ok(Verdict::Allowed(Some(patch)))
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u64(1);
    let mut b = state.build_hasher();
    b.write_u64(2);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}
