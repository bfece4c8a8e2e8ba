//! AdmissionReview v1, read lean: one serde_json pass over the request body that deserializes
//! only the fields the decisions use, borrows strings from the body where it can, and skips
//! everything else (serde's ignored values: no tree is built). Each endpoint names the view of
//! `object`/`oldObject` it reads; the views here are the building blocks (metadata, pod-spec
//! images, a tolerant "is it an object at all" wrapper) for new endpoints to compose.

use std::borrow::{Borrow, Cow};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
pub const REVIEW_KIND: &str = "AdmissionReview";

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

/// The envelope; `O` and `P` are the endpoint's views of `request.object` and
/// `request.oldObject`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, O, P> {
    #[serde(borrow, default)]
    api_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(
        borrow,
        default = "none",
        bound(deserialize = "O: Deserialize<'de>, P: Deserialize<'de>")
    )]
    request: Option<Request<'a, O, P>>,
}

fn none<T>() -> Option<T> {
    None
}

/// `request` of an AdmissionReview: what the decisions read, nothing more. `P`, the view of
/// `oldObject`, may read less than `O` (or nothing: [`IgnoredAny`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request<'a, O, P = O> {
    #[serde(borrow)]
    pub uid: Str<'a>,
    #[serde(borrow)]
    pub kind: GroupVersionKind<'a>,
    #[serde(borrow, default)]
    pub sub_resource: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    pub operation: Operation,
    /// `None` when absent or `null`.
    #[serde(default = "none", bound(deserialize = "O: Deserialize<'de>"))]
    pub object: Option<O>,
    #[serde(default = "none", bound(deserialize = "P: Deserialize<'de>"))]
    pub old_object: Option<P>,
}

#[derive(Debug, Default, Deserialize)]
pub struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    pub group: Str<'a>,
    #[serde(borrow, default)]
    pub version: Str<'a>,
    #[serde(borrow, default)]
    pub kind: Str<'a>,
}

impl GroupVersionKind<'_> {
    pub fn is(&self, group: &str, version: &str, kind: &str) -> bool {
        self.group == group && self.version == version && self.kind == kind
    }
}

impl fmt::Display for GroupVersionKind<'_> {
    /// `apps/v1 Deployment`, `v1 Pod` for the core group.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.group.is_empty() {
            write!(f, "{}/", self.group)?;
        }
        write!(f, "{} {}", self.version, self.kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
    /// Anything else: no decision may treat it as one of the above.
    #[serde(other)]
    Other,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::Other => "an unknown operation",
        }
    }
}

/// Reads `body` as an AdmissionReview v1 whose object is read as `O`, its old object as `P`.
///
/// serde_json reads it in one pass: the views' strings borrow from the body (owned only when
/// escapes had to be decoded), and every field no view names is skipped as
/// [`IgnoredAny`], which serde_json walks without recursion (an iterative bracket stack), so
/// deep nesting in skipped fields costs no stack. What is read nests at most 127 levels.
pub fn parse<'a, O: Deserialize<'a>, P: Deserialize<'a>>(
    body: &'a [u8],
) -> Result<Request<'a, O, P>, BadReview> {
    // The whole body must be UTF-8, the strings skipped too (from_slice would check only the
    // strings read); from_str then trusts the checked text.
    let body =
        std::str::from_utf8(body).map_err(|err| malformed(format_args!("not UTF-8: {err}")))?;
    let envelope: Envelope<'a, O, P> = serde_json::from_str(body)?;
    let (api_version, kind) = (envelope.api_version, envelope.kind);
    if api_version.as_deref() != Some(REVIEW_API_VERSION) || kind.as_deref() != Some(REVIEW_KIND) {
        return Err(BadReview::Version {
            api_version: api_version.map(String::from).unwrap_or_default(),
            kind: kind.map(String::from).unwrap_or_default(),
        });
    }
    envelope.request.ok_or(BadReview::NoRequest)
}

fn malformed(message: impl fmt::Display) -> BadReview {
    BadReview::Json(<serde_json::Error as de::Error>::custom(message))
}

/// A string borrowed from the request body, or owned when JSON escapes had to be decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Str<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Str<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Str<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Display for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Str<'_>> for String {
    fn from(s: Str<'_>) -> String {
        s.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

/// Labels (or any string map) borrowed from the body; `get(&str)` works through `Borrow`.
pub type StrMap<'a> = BTreeMap<Str<'a>, Str<'a>>;

/// A field whose value is skipped: only whether it is there, and not `null`, is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Present;

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(deserializer).map(|_| Present)
    }
}

/// `metadata`, as far as the decisions read it.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetaView<'a> {
    #[serde(borrow, default)]
    pub name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub labels: Option<StrMap<'a>>,
    /// Only whether there are annotations (values such as last-applied-configuration are
    /// skipped, not copied).
    #[serde(default)]
    pub annotations: Option<Present>,
    #[serde(borrow, default)]
    pub owner_references: Option<Vec<OwnerReferenceView<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReferenceView<'a> {
    #[serde(borrow, default)]
    pub api_version: Str<'a>,
    #[serde(borrow, default)]
    pub kind: Str<'a>,
    #[serde(borrow, default)]
    pub name: Str<'a>,
    #[serde(default)]
    pub controller: Option<bool>,
}

/// The images of a pod spec (containers, initContainers and image volumes); every other field
/// is skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecImages<'a> {
    #[serde(borrow, default)]
    pub containers: Option<Vec<ContainerImage<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<ContainerImage<'a>>>,
    #[serde(borrow, default)]
    pub volumes: Option<Vec<VolumeImage<'a>>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ContainerImage<'a> {
    #[serde(borrow, default)]
    pub image: Option<Str<'a>>,
}

/// A volume, as far as an image volume (`image.reference`) goes.
#[derive(Debug, Default, Deserialize)]
pub struct VolumeImage<'a> {
    #[serde(borrow, default)]
    pub image: Option<ImageVolumeSource<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ImageVolumeSource<'a> {
    #[serde(borrow, default)]
    pub reference: Option<Str<'a>>,
}

impl PodSpecImages<'_> {
    /// Every image reference as written, containers first.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        image_references(&self.containers, &self.init_containers, &self.volumes)
    }
}

/// The image references of containers, then initContainers, then image volumes, as written:
/// the kubelet pulls an image volume like a container's image.
fn image_references<'s>(
    containers: &'s Option<Vec<ContainerImage<'_>>>,
    init_containers: &'s Option<Vec<ContainerImage<'_>>>,
    volumes: &'s Option<Vec<VolumeImage<'_>>>,
) -> impl Iterator<Item = &'s str> {
    let volumes = volumes
        .iter()
        .flatten()
        .filter_map(|v| v.image.as_ref()?.reference.as_deref());
    containers
        .iter()
        .flatten()
        .chain(init_containers.iter().flatten())
        .filter_map(|c| c.image.as_deref())
        .chain(volumes)
}

/// A workload that rolls out (apps/v1 Deployment, StatefulSet or DaemonSet; batch/v1 CronJob):
/// its metadata and its pod template's images (a CronJob's in its job template).
#[derive(Debug, Default, Deserialize)]
pub struct WorkloadView<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<MetaView<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<WorkloadSpecView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpecView<'a> {
    #[serde(borrow, default)]
    pub template: Option<PodTemplateView<'a>>,
    #[serde(borrow, default)]
    pub job_template: Option<JobTemplateView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JobTemplateView<'a> {
    #[serde(borrow, default)]
    pub spec: Option<JobSpecView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JobSpecView<'a> {
    #[serde(borrow, default)]
    pub template: Option<PodTemplateView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PodTemplateView<'a> {
    #[serde(borrow, default)]
    pub spec: Option<PodSpecImages<'a>>,
}

impl<'a> WorkloadView<'a> {
    /// The pod template's images: `spec.template`, or a CronJob's
    /// `spec.jobTemplate.spec.template`.
    pub fn template_images(&self) -> Option<&PodSpecImages<'a>> {
        let spec = self.spec.as_ref()?;
        let template = match &spec.template {
            Some(template) => template,
            None => spec
                .job_template
                .as_ref()?
                .spec
                .as_ref()?
                .template
                .as_ref()?,
        };
        template.spec.as_ref()
    }
}

/// A Pod as the pod gate reads it: metadata (owner, labels), images, scheduling gates and
/// whether it is already bound. Everything else (most of an ~8 KB pod) is skipped.
#[derive(Debug, Default, Deserialize)]
pub struct PodView<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<MetaView<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<PodSpecView<'a>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecView<'a> {
    #[serde(borrow, default)]
    pub containers: Option<Vec<ContainerImage<'a>>>,
    #[serde(borrow, default)]
    pub init_containers: Option<Vec<ContainerImage<'a>>>,
    #[serde(borrow, default)]
    pub volumes: Option<Vec<VolumeImage<'a>>>,
    #[serde(borrow, default)]
    pub scheduling_gates: Option<Vec<SchedulingGateView<'a>>>,
    #[serde(borrow, default)]
    pub node_name: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SchedulingGateView<'a> {
    #[serde(borrow, default)]
    pub name: Str<'a>,
}

impl PodSpecView<'_> {
    /// Every image reference as written, containers first.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        image_references(&self.containers, &self.init_containers, &self.volumes)
    }
}

/// A Prefetch as the Prefetch endpoints judge it: `spec` as a tree (validation reports
/// wrongly typed fields by name, so it cannot be typed), `apiVersion` and `kind` as whatever
/// JSON they are; metadata and status are skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefetchView {
    #[serde(default)]
    pub api_version: Option<Value>,
    #[serde(default)]
    pub kind: Option<Value>,
    /// `None` when absent; `Some(Value::Null)` when `null`.
    #[serde(default, deserialize_with = "present_value")]
    pub spec: Option<Value>,
}

/// Only `spec.retry_after` of a Prefetch (the old object, for ratcheting), tolerating any
/// shape: whatever is not an object reads as absent.
#[derive(Debug, Default, Deserialize)]
pub struct RetryAfterView {
    #[serde(default)]
    spec: Option<ObjectOr<RetryAfterSpec>>,
}

#[derive(Debug, Default, Deserialize)]
struct RetryAfterSpec {
    #[serde(default)]
    retry_after: Option<Value>,
}

impl RetryAfterView {
    /// `spec.retry_after`; `Null` when absent, null, or under a spec that is not an object.
    pub fn retry_after(&self) -> &Value {
        match &self.spec {
            Some(ObjectOr::Object(RetryAfterSpec {
                retry_after: Some(value),
            })) => value,
            _ => &Value::Null,
        }
    }
}

fn present_value<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Any JSON value where an object is expected: the object read as `V`, or the JSON type it
/// was instead, so a decision can name what is wrong rather than fail the whole review.
#[derive(Debug)]
pub enum ObjectOr<V> {
    Object(V),
    /// "a string", "a number", "a boolean", "a list" (`null` is the surrounding `None`).
    NotAnObject(&'static str),
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for ObjectOr<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for ObjectVisitor<V> {
            type Value = ObjectOr<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                V::deserialize(de::value::MapAccessDeserializer::new(map)).map(ObjectOr::Object)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ObjectOr::NotAnObject("a list"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ObjectOr::NotAnObject("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ObjectOr::NotAnObject("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ObjectOr::NotAnObject("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ObjectOr::NotAnObject("a number"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ObjectOr::NotAnObject("a string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ObjectOr::NotAnObject("null"))
            }
        }
        deserializer.deserialize_any(ObjectVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request
        }))
        .unwrap()
    }

    #[test]
    fn reads_only_what_it_needs_and_borrows_plain_strings() {
        let bytes = body(json!({
            "uid": "u-1", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "namespace": "shop", "operation": "UPDATE", "userInfo": {"username": "x", "extra": {"a": ["b"]}},
            "object": {"metadata": {"name": "web", "labels": {"app": "nginx", "tier": "f\u{e9}"},
                                    "annotations": {"big": "x".repeat(1000)},
                                    "managedFields": [{"manager": "kubectl"}]},
                       "spec": {"replicas": 3, "template": {"spec": {
                           "containers": [{"name": "a", "image": "nginx:1.25", "env": [{"name": "X"}]}, {"name": "b"}],
                           "initContainers": [{"image": "busybox"}]}}},
                       "status": {"replicas": 3}},
            "oldObject": null,
            "options": {"kind": "UpdateOptions"}
        }));
        let request: Request<WorkloadView> = parse(&bytes).unwrap();
        assert_eq!(request.uid, "u-1");
        assert!(request.kind.is("apps", "v1", "Deployment"));
        assert_eq!(request.kind.to_string(), "apps/v1 Deployment");
        assert_eq!(request.operation, Operation::Update);
        assert!(request.old_object.is_none());
        let object = request.object.unwrap();
        let meta = object.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels.get("app").map(|v| &**v), Some("nginx"));
        assert!(matches!(labels.get("app").unwrap().0, Cow::Borrowed(_)));
        assert_eq!(meta.annotations, Some(Present));
        let images: Vec<&str> = object.template_images().unwrap().references().collect();
        assert_eq!(images, ["nginx:1.25", "busybox"]);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let bytes = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"a\"b","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE"}}"#;
        let request: Request<WorkloadView> = parse(bytes).unwrap();
        assert_eq!(request.uid, "a\"b");
        assert_eq!(request.kind.to_string(), "v1 Pod");
        assert!(request.object.is_none());
    }

    /// Every string a decision reads may be written with `\u` escapes (`\u0078` is `x`), the
    /// envelope's own keys and values too: read as the plain text they stand for, owned.
    #[test]
    fn unicode_escapes_are_decoded_everywhere_a_decision_reads() {
        let bytes = br#"{"api\u0056ersion":"admission.k8s.io\/v1","kind":"Admission\u0052eview",
            "request":{"uid":"u\u0078","kind":{"group":"app\u0073","version":"v1","kind":"Deployment"},
            "namespace":"sho\u0070","operation":"UPD\u0041TE",
            "object":{"metadata":{"labels":{"\u0061pp":"ngin\u0078"}},
                      "spec":{"template":{"spec":{"containers":[{"image":"ngin\u0078:1.25"}]}}}}}}"#;
        let request: Request<WorkloadView> = parse(bytes).unwrap();
        assert_eq!(request.uid, "ux");
        assert!(matches!(request.uid.0, Cow::Owned(_)));
        assert!(request.kind.is("apps", "v1", "Deployment"));
        assert_eq!(request.namespace.as_deref(), Some("shop"));
        assert_eq!(request.operation, Operation::Update);
        let object = request.object.unwrap();
        let labels = object.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels.get("app").map(|v| &**v), Some("nginx"));
        let images: Vec<&str> = object.template_images().unwrap().references().collect();
        assert_eq!(images, ["nginx:1.25"]);
    }

    /// The pod gate's view too: owner, images, gates and node name as the text they spell.
    #[test]
    fn unicode_escapes_are_decoded_in_pods() {
        let bytes = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{
            "uid":"u","kind":{"group":"","version":"v1","kind":"P\u006fd"},"operation":"CREATE",
            "object":{"metadata":{"ownerReferences":[{"apiVersion":"apps/v1","kind":"Replica\u0053et",
                                   "name":"web-\u0061bc","controller":true}]},
                      "spec":{"containers":[{"image":"ngin\u0078"}],"initContainers":[{"image":"b\u0075sybox"}],
                              "schedulingGates":[{"name":"g\u0061te"}],"nodeName":"n\u006fde-1"}}}}"#;
        let request: Request<PodView, IgnoredAny> = parse(bytes).unwrap();
        assert!(request.kind.is("", "v1", "Pod"));
        let pod = request.object.unwrap();
        let owner = &pod
            .metadata
            .as_ref()
            .unwrap()
            .owner_references
            .as_ref()
            .unwrap()[0];
        assert_eq!((&*owner.kind, &*owner.name), ("ReplicaSet", "web-abc"));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.references().collect::<Vec<_>>(), ["nginx", "busybox"]);
        assert_eq!(spec.scheduling_gates.unwrap()[0].name, "gate");
        assert_eq!(spec.node_name.as_deref(), Some("node-1"));
    }

    #[test]
    fn unknown_operations_are_kept_apart() {
        let bytes = body(json!({"uid": "u", "kind": {}, "operation": "PATCH"}));
        let request: Request<WorkloadView> = parse(&bytes).unwrap();
        assert_eq!(request.operation, Operation::Other);
    }

    #[test]
    fn object_or_names_the_json_type() {
        for (object, expected) in [
            (json!("x"), Some("a string")),
            (json!(1), Some("a number")),
            (json!(-1), Some("a number")),
            (json!(1.5), Some("a number")),
            (json!(true), Some("a boolean")),
            (json!([1, {"a": 2}]), Some("a list")),
            (json!({"spec": null}), None),
        ] {
            let bytes =
                body(json!({"uid": "u", "kind": {}, "operation": "CREATE", "object": object}));
            let request: Request<ObjectOr<PrefetchView>> = parse(&bytes).unwrap();
            match (request.object.unwrap(), expected) {
                (ObjectOr::NotAnObject(got), Some(expected)) => assert_eq!(got, expected),
                (ObjectOr::Object(view), None) => assert_eq!(view.spec, Some(Value::Null)),
                (other, _) => panic!("{other:?} for {expected:?}"),
            }
        }
        let bytes =
            body(json!({"uid": "u", "kind": {}, "operation": "CREATE", "object": {"kind": 7}}));
        let request: Request<ObjectOr<PrefetchView>> = parse(&bytes).unwrap();
        let Some(ObjectOr::Object(view)) = request.object else {
            panic!("an object")
        };
        assert_eq!((view.kind, view.spec), (Some(json!(7)), None));
    }

    /// Any depth in what is skipped (serde_json skips without recursion, so a few MiB of
    /// brackets cost no stack), 127 levels in what is read: deeper is a malformed review, not
    /// a stack overflow.
    #[test]
    fn nesting_is_bounded_where_read_and_free_where_skipped() {
        let review = |field: &str, depth: usize| {
            format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{}},"operation":"CREATE","{field}":{}0{}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let outcome = |body: &str| {
            parse::<ObjectOr<PrefetchView>, IgnoredAny>(body.as_bytes())
                .map(|_| ())
                .map_err(|err| err.to_string())
        };
        let deep = review("userInfo", 1 << 20);
        assert_eq!(outcome(&deep), Ok(()));
        assert!(outcome(&deep[..deep.len() / 2]).is_err());
        assert!(outcome(&"[".repeat(4 << 20)).is_err());
        // `object` is the 3rd level; a list there reads as "not an object", its elements
        // skipped. Read deeper: a spec the validating hook reads as a tree.
        for depth in [100, 124, 125, 126, 200, 1 << 16] {
            let body = review("object", 1).replace(
                "[0]",
                &format!(r#"{{"spec":{}0{}}}"#, "[".repeat(depth), "]".repeat(depth)),
            );
            let read = outcome(&body);
            assert_eq!(read.is_ok(), depth <= 124, "depth {depth}: {read:?}");
        }
    }

    #[test]
    fn envelope_errors() {
        let parse = |b: &[u8]| {
            parse::<WorkloadView, WorkloadView>(b)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        assert!(parse(b"{not json").starts_with("malformed AdmissionReview"));
        assert!(parse(b"42").starts_with("malformed AdmissionReview"));
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#),
            "only admission.k8s.io/v1 AdmissionReview is supported, got apiVersion \"admission.k8s.io/v1beta1\" kind \"AdmissionReview\""
        );
        assert_eq!(
            parse(
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#
            ),
            "AdmissionReview has no request"
        );
        assert!(
            parse(&body(json!({"kind": {}, "operation": "CREATE"})))
                .contains("missing field `uid`")
        );
    }

    /// A body is JSON throughout or it is refused, even where the broken part is one no
    /// decision reads (a skipped field, a string's bytes), and so is one that is not UTF-8.
    #[test]
    fn malformed_anywhere_is_malformed() {
        let good = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{},"operation":"CREATE","userInfo":{"username":"x"}}}"#;
        assert!(parse::<IgnoredAny, IgnoredAny>(good).is_ok());
        let text = std::str::from_utf8(good).unwrap();
        for (broken, with) in [
            (r#"{"username":"x"}"#, r#"{"username" "x"}"#),
            (r#"{"username":"x"}"#, r#"{"username":"x",}"#),
            (r#"{"username":"x"}"#, r#"{"username":"\q"}"#),
            (r#"{"username":"x"}"#, "{\"username\":\"a\u{1}b\"}"),
            (r#"{"username":"x"}"#, r#"[1 2]"#),
            (r#"{"username":"x"}"#, r#"tru"#),
            (r#"{"username":"x"}"#, r#"01"#),
            ("}}", "}}}"),
            ("}}", "} }x"),
        ] {
            let body = text.replace(broken, with);
            let read = parse::<IgnoredAny, IgnoredAny>(body.as_bytes()).map(|_| ());
            let err = read.map_err(|err| err.to_string()).unwrap_err();
            assert!(
                err.starts_with("malformed AdmissionReview"),
                "{body}: {err}"
            );
        }
        let mut latin1 = text.replace(r#""x""#, "\"x\u{e9}\"").into_bytes();
        assert!(parse::<IgnoredAny, IgnoredAny>(&latin1).is_ok());
        let at = latin1.iter().position(|&b| b == 0xc3).unwrap();
        latin1.remove(at);
        let err = parse::<IgnoredAny, IgnoredAny>(&latin1)
            .map(|_| ())
            .unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
