//! The three admission decisions, from request body to AdmissionReview response. No I/O: the
//! caches are read through [`Caches`], and time is passed in, so every path is unit-tested.

use std::collections::BTreeSet;

use base64::Engine;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use prefetch_common::annotations::{API_GROUP, KIND, PREFETCH_IMAGES, PREFETCH_REQUESTED_AT};
use prefetch_common::defaulting::default_patch;
use prefetch_common::images::pod_spec_json_images;
use prefetch_common::validation::{ValidationContext, validate_prefetch};
use serde::Serialize;
use serde_json::{Value, json};

use crate::index::{NodeNames, PrefetchIndex};

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
const REVIEW_KIND: &str = "AdmissionReview";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    MutatePrefetch,
    ValidatePrefetch,
    MutateDeployment,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::MutatePrefetch => "/mutate/prefetch",
            Endpoint::ValidatePrefetch => "/validate/prefetch",
            Endpoint::MutateDeployment => "/mutate/deployment",
        }
    }
}

/// The request cannot be read as an AdmissionReview v1: answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("malformed AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "only {REVIEW_API_VERSION} {REVIEW_KIND} is supported, got apiVersion {api_version:?} kind {kind:?}"
    )]
    Version { api_version: String, kind: String },
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// What the webhook decided, before serialization.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub uid: String,
    pub allowed: bool,
    pub denial: Option<String>,
    pub patch: Option<Patch>,
    pub warnings: Vec<String>,
    /// Metrics label: allowed, patched, denied or error.
    pub result: &'static str,
    /// Why, for the decision log.
    pub why: String,
}

impl Answer {
    fn allow(uid: &str, why: impl Into<String>) -> Self {
        Self {
            uid: uid.into(),
            allowed: true,
            denial: None,
            patch: None,
            warnings: Vec::new(),
            result: "allowed",
            why: why.into(),
        }
    }

    fn with_patch(mut self, patch: Patch) -> Self {
        if !patch.0.is_empty() {
            self.patch = Some(patch);
            self.result = "patched";
        }
        self
    }

    /// The AdmissionReview v1 response body. The patch is base64 of the JSON patch, as the
    /// API server's Go types expect for a `[]byte` field.
    pub fn to_review_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Status<'a> {
            code: u16,
            reason: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Response<'a> {
            uid: &'a str,
            allowed: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<Status<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            patch: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            patch_type: Option<&'a str>,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            warnings: &'a [String],
        }
        let patch = match &self.patch {
            Some(patch) => {
                Some(base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(patch)?))
            }
            None => None,
        };
        let response = Response {
            uid: &self.uid,
            allowed: self.allowed,
            status: self.denial.as_deref().map(|message| Status {
                code: 422,
                reason: "Invalid",
                message,
            }),
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: &self.warnings,
        };
        serde_json::to_vec(
            &json!({"apiVersion": REVIEW_API_VERSION, "kind": REVIEW_KIND, "response": response}),
        )
    }
}

/// What the decisions may read beyond the request.
pub struct Caches<'a> {
    pub prefetches: &'a PrefetchIndex,
    pub nodes: &'a NodeNames,
    pub min_retry_after: i64,
}

/// Parses `body` and decides. `now` stamps rollout signals.
pub fn review(
    endpoint: Endpoint,
    body: &[u8],
    caches: &Caches<'_>,
    now: jiff::Timestamp,
) -> Result<Answer, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    if review.types.api_version != REVIEW_API_VERSION || review.types.kind != REVIEW_KIND {
        return Err(BadReview::Version {
            api_version: review.types.api_version,
            kind: review.types.kind,
        });
    }
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadReview::NoRequest)?;
    Ok(match endpoint {
        Endpoint::MutatePrefetch => mutate_prefetch(&request),
        Endpoint::ValidatePrefetch => validate(&request, caches),
        Endpoint::MutateDeployment => deployment_signal(&request, caches.prefetches, now),
    })
}

fn is_prefetch(request: &AdmissionRequest<DynamicObject>) -> bool {
    request.kind.group == API_GROUP && request.kind.kind == KIND
}

fn describe(request: &AdmissionRequest<DynamicObject>) -> String {
    let k = &request.kind;
    let group = if k.group.is_empty() {
        String::new()
    } else {
        format!("{}/", k.group)
    };
    format!("{group}{}/{}", k.version, k.kind)
}

/// The Prefetch a Prefetch endpoint is asked about, or the answer when there is none: a
/// misrouted kind is allowed with a warning (a misconfigured webhook must not block other
/// resources), and DELETE or CONNECT have nothing to check.
fn prefetch_object(
    request: &AdmissionRequest<DynamicObject>,
    endpoint: Endpoint,
) -> Result<&DynamicObject, Box<Answer>> {
    if !is_prefetch(request) {
        let mut answer = Answer::allow(
            &request.uid,
            format!("not a Prefetch ({})", describe(request)),
        );
        answer.warnings.push(format!(
            "prefetch-webhook: {} ignores {}; check the webhook configuration",
            endpoint.path(),
            describe(request)
        ));
        return Err(Box::new(answer));
    }
    request
        .object
        .as_ref()
        .filter(|_| matches!(request.operation, Operation::Create | Operation::Update))
        .ok_or_else(|| Box::new(Answer::allow(&request.uid, "no object to admit")))
}

fn mutate_prefetch(request: &AdmissionRequest<DynamicObject>) -> Answer {
    let object = match prefetch_object(request, Endpoint::MutatePrefetch) {
        Ok(object) => object,
        Err(answer) => return *answer,
    };
    let patch = default_patch(&object.data);
    let why = if patch.0.is_empty() {
        "all defaults present".to_string()
    } else {
        format!("defaulted {} field(s)", patch.0.len())
    };
    Answer::allow(&request.uid, why).with_patch(patch)
}

fn validate(request: &AdmissionRequest<DynamicObject>, caches: &Caches<'_>) -> Answer {
    let object = match prefetch_object(request, Endpoint::ValidatePrefetch) {
        Ok(object) => object,
        Err(answer) => return *answer,
    };
    let data = &object.data;
    // Ratcheting: an object admitted under a lower floor may still be updated (labels, other
    // fields) as long as it does not change retry_after.
    let unchanged_retry_after = request.operation == Operation::Update
        && request
            .old_object
            .as_ref()
            .map(|o| &o.data["spec"]["retry_after"])
            == Some(&data["spec"]["retry_after"]);
    let min_retry_after = if unchanged_retry_after {
        prefetch_common::limits::MIN_RETRY_AFTER
    } else {
        caches.min_retry_after
    };
    let verdict = caches.nodes.with_names(|node_names| {
        validate_prefetch(
            data,
            &ValidationContext {
                min_retry_after,
                node_names,
            },
        )
    });
    if verdict.is_allowed() {
        let mut answer = Answer::allow(&request.uid, "valid");
        answer.warnings = verdict.warnings;
        answer
    } else {
        let message = verdict.denial_message();
        Answer {
            uid: request.uid.clone(),
            allowed: false,
            denial: Some(message.clone()),
            patch: None,
            warnings: verdict.warnings,
            result: "denied",
            why: message,
        }
    }
}

/// Annotates a Deployment whose pod template brings images new to it, when a Prefetch in its
/// namespace selects it. Always allows: this hook must never block a Deployment.
fn deployment_signal(
    request: &AdmissionRequest<DynamicObject>,
    prefetches: &PrefetchIndex,
    now: jiff::Timestamp,
) -> Answer {
    let uid = &request.uid;
    if request.kind.group != "apps" || request.kind.kind != "Deployment" {
        return Answer::allow(uid, format!("not a Deployment ({})", describe(request)));
    }
    if request.sub_resource.is_some() {
        return Answer::allow(uid, "subresource");
    }
    let object = match (&request.operation, &request.object) {
        (Operation::Create | Operation::Update, Some(object)) => object,
        _ => return Answer::allow(uid, "no new object"),
    };
    let template_images =
        |o: &DynamicObject| pod_spec_json_images(&o.data["spec"]["template"]["spec"]).images;
    let new_images = template_images(object);
    let old_images = match (&request.operation, &request.old_object) {
        (Operation::Update, Some(old)) => template_images(old),
        _ => BTreeSet::new(),
    };
    let added: Vec<String> = new_images.difference(&old_images).cloned().collect();
    if added.is_empty() {
        return Answer::allow(uid, "no new images");
    }
    if !prefetches.is_synced() {
        let mut answer = Answer::allow(uid, "Prefetch cache not synced yet; no signal");
        answer.result = "error";
        return answer;
    }
    let namespace = request
        .namespace
        .as_deref()
        .or(object.metadata.namespace.as_deref())
        .unwrap_or("default");
    let selecting = prefetches.selecting(namespace, object.metadata.labels.as_ref());
    if selecting.is_empty() {
        return Answer::allow(uid, "no Prefetch in the namespace selects it");
    }
    let images_json = match serde_json::to_string(&added) {
        Ok(json) => json,
        Err(err) => {
            let mut answer = Answer::allow(uid, format!("could not encode images: {err}"));
            answer.result = "error";
            return answer;
        }
    };
    let requested_at = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let add = |path: PointerBuf, value: Value| PatchOperation::Add(AddOperation { path, value });
    let operations = if object.metadata.annotations.is_none() {
        vec![add(
            PointerBuf::from_tokens(["metadata", "annotations"]),
            json!({ PREFETCH_IMAGES: images_json, PREFETCH_REQUESTED_AT: requested_at }),
        )]
    } else {
        vec![
            add(
                PointerBuf::from_tokens(["metadata", "annotations", PREFETCH_IMAGES]),
                Value::String(images_json),
            ),
            add(
                PointerBuf::from_tokens(["metadata", "annotations", PREFETCH_REQUESTED_AT]),
                Value::String(requested_at),
            ),
        ]
    };
    let why = format!(
        "new images {added:?}, selected by Prefetch {}",
        selecting.join(", ")
    );
    Answer::allow(uid, why).with_patch(Patch(operations))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::DeserializeGuard;
    use kube::runtime::watcher::Event;
    use prefetch_common::{Prefetch, PrefetchSpec};

    fn synced_index(prefetches: &[(&str, &str, &str, &str)]) -> PrefetchIndex {
        let index = PrefetchIndex::default();
        index.apply(Event::Init);
        for (ns, name, key, value) in prefetches {
            let spec = PrefetchSpec {
                filter_by_labels: [(key.to_string(), value.to_string())].into(),
                ..Default::default()
            };
            let mut p = Prefetch::new(name, spec);
            p.metadata.namespace = Some(ns.to_string());
            index.apply(Event::InitApply(DeserializeGuard(Ok(p))));
        }
        index.apply(Event::InitDone);
        index
    }

    fn review_body(group: &str, kind: &str, op: &str, object: Value, old: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "uid-1", "kind": {"group": group, "version": "v1", "kind": kind},
                "resource": {"group": group, "version": "v1", "resource": "x"},
                "name": "x", "namespace": "default", "operation": op,
                "userInfo": {"username": "test"}, "object": object, "oldObject": old
            }
        }))
        .unwrap()
    }

    fn deployment(labels: Value, annotations: Option<Value>, images: &[&str]) -> Value {
        let containers: Vec<Value> = images
            .iter()
            .map(|i| json!({"name": "c", "image": i}))
            .collect();
        let mut metadata = json!({"name": "web", "namespace": "default", "labels": labels});
        if let Some(a) = annotations {
            metadata["annotations"] = a;
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
               "spec": {"template": {"spec": {"containers": containers}}}})
    }

    fn now() -> jiff::Timestamp {
        "2026-11-22T03:00:00Z".parse().unwrap()
    }

    fn decide(endpoint: Endpoint, body: &[u8], index: &PrefetchIndex) -> Answer {
        let nodes = NodeNames::default();
        let caches = Caches {
            prefetches: index,
            nodes: &nodes,
            min_retry_after: 30,
        };
        review(endpoint, body, &caches, now()).unwrap()
    }

    fn patch_json(answer: &Answer) -> Value {
        serde_json::to_value(answer.patch.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn image_change_on_a_selected_deployment_adds_both_annotations() {
        let index = synced_index(&[("default", "pf", "app", "nginx")]);
        let old = deployment(json!({"app": "nginx"}), None, &["nginx:1.7.9"]);
        let new = deployment(json!({"app": "nginx"}), None, &["nginx:1.25", "redis:7"]);
        let answer = decide(
            Endpoint::MutateDeployment,
            &review_body("apps", "Deployment", "UPDATE", new, old),
            &index,
        );
        assert!(answer.allowed);
        assert_eq!(answer.result, "patched");
        assert_eq!(
            patch_json(&answer),
            json!([{"op": "add", "path": "/metadata/annotations", "value": {
                "cache.techsquad.rocks/prefetch-images": "[\"docker.io/library/nginx:1.25\",\"docker.io/library/redis:7\"]",
                "cache.techsquad.rocks/prefetch-requested-at": "2026-11-22T03:00:00Z"
            }}])
        );
    }

    #[test]
    fn existing_annotations_get_escaped_keys_added() {
        let index = synced_index(&[("default", "pf", "app", "nginx")]);
        let new = deployment(
            json!({"app": "nginx"}),
            Some(json!({"team": "a"})),
            &["nginx:1.25"],
        );
        let answer = decide(
            Endpoint::MutateDeployment,
            &review_body("apps", "Deployment", "CREATE", new, Value::Null),
            &index,
        );
        let paths: Vec<String> = patch_json(&answer)
            .as_array()
            .unwrap()
            .iter()
            .map(|op| op["path"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/metadata/annotations/cache.techsquad.rocks~1prefetch-images",
                "/metadata/annotations/cache.techsquad.rocks~1prefetch-requested-at"
            ]
        );
    }

    #[test]
    fn no_signal_without_a_new_image_or_a_selecting_prefetch() {
        let index = synced_index(&[
            ("default", "pf", "app", "nginx"),
            ("other", "pf", "app", "web"),
        ]);
        let same = deployment(json!({"app": "nginx"}), None, &["nginx:1.7.9"]);
        let respelled = deployment(
            json!({"app": "nginx"}),
            None,
            &["docker.io/library/nginx:1.7.9"],
        );
        let answer = decide(
            Endpoint::MutateDeployment,
            &review_body("apps", "Deployment", "UPDATE", respelled, same.clone()),
            &index,
        );
        assert_eq!((answer.patch, answer.why.as_str()), (None, "no new images"));

        let web = deployment(json!({"app": "web"}), None, &["nginx:2"]);
        let answer = decide(
            Endpoint::MutateDeployment,
            &review_body("apps", "Deployment", "UPDATE", web, same),
            &index,
        );
        assert_eq!(
            (answer.patch, answer.why.as_str()),
            (None, "no Prefetch in the namespace selects it")
        );

        let unsynced = PrefetchIndex::default();
        let new = deployment(json!({"app": "nginx"}), None, &["nginx:2"]);
        let answer = decide(
            Endpoint::MutateDeployment,
            &review_body("apps", "Deployment", "CREATE", new, Value::Null),
            &unsynced,
        );
        assert!(answer.allowed && answer.patch.is_none());
        assert_eq!(answer.result, "error");
    }

    #[test]
    fn defaulting_and_validation_of_the_sample() {
        let index = PrefetchIndex::default();
        let sample = json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
            "metadata": {"name": "prefetch-sample", "namespace": "default"},
            "spec": {"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"}});
        let body = review_body(API_GROUP, KIND, "CREATE", sample, Value::Null);
        let mutated = decide(Endpoint::MutatePrefetch, &body, &index);
        assert_eq!(mutated.result, "patched");
        assert_eq!(patch_json(&mutated).as_array().unwrap().len(), 2);
        let validated = decide(Endpoint::ValidatePrefetch, &body, &index);
        assert!(
            validated.allowed && validated.patch.is_none(),
            "{validated:?}"
        );
    }

    #[test]
    fn raised_floor_ratchets_on_unchanged_retry_after() {
        let index = PrefetchIndex::default();
        let nodes = NodeNames::default();
        let caches = Caches {
            prefetches: &index,
            nodes: &nodes,
            min_retry_after: 120,
        };
        let obj = |retry: i64, label: &str| {
            json!({"metadata": {"name": "p", "labels": {"v": label}},
            "spec": {"filter_by_labels": {"app": "nginx"}, "retry_after": retry}})
        };
        let relabel = review_body(API_GROUP, KIND, "UPDATE", obj(60, "2"), obj(60, "1"));
        assert!(
            review(Endpoint::ValidatePrefetch, &relabel, &caches, now())
                .unwrap()
                .allowed
        );
        let change = review_body(API_GROUP, KIND, "UPDATE", obj(90, "2"), obj(60, "1"));
        let answer = review(Endpoint::ValidatePrefetch, &change, &caches, now()).unwrap();
        assert_eq!(
            answer.denial.as_deref(),
            Some("Prefetch is invalid: spec.retry_after: must be >= 120, got 90")
        );
        let create = review_body(API_GROUP, KIND, "CREATE", obj(60, "1"), Value::Null);
        assert!(
            !review(Endpoint::ValidatePrefetch, &create, &caches, now())
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn bad_reviews_are_rejected_with_a_reason() {
        let index = PrefetchIndex::default();
        let nodes = NodeNames::default();
        let caches = Caches {
            prefetches: &index,
            nodes: &nodes,
            min_retry_after: 30,
        };
        let err = |body: &[u8]| {
            review(Endpoint::ValidatePrefetch, body, &caches, now())
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"{not json").starts_with("malformed AdmissionReview"));
        let v1beta1 =
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#;
        assert!(err(v1beta1).starts_with("only admission.k8s.io/v1 AdmissionReview is supported"));
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        assert_eq!(err(empty), "AdmissionReview has no request");
    }

    #[test]
    fn response_carries_uid_base64_patch_and_denial_status() {
        let patched =
            Answer::allow("u", "x").with_patch(Patch(vec![PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["spec", "retry_after"]),
                value: json!(300),
            })]));
        let body: Value = serde_json::from_slice(&patched.to_review_json().unwrap()).unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["response"]["uid"], "u");
        assert_eq!(body["response"]["patchType"], "JSONPatch");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap(),
            json!([{"op": "add", "path": "/spec/retry_after", "value": 300}])
        );

        let denied = Answer {
            allowed: false,
            denial: Some("no".into()),
            result: "denied",
            ..Answer::allow("u", "x")
        };
        let body: Value = serde_json::from_slice(&denied.to_review_json().unwrap()).unwrap();
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(
            body["response"]["status"],
            json!({"code": 422, "reason": "Invalid", "message": "no"})
        );
        assert!(body["response"].get("patch").is_none());
    }
}
