//! What the webhook answers, before serialization: an [`Answer`] (allowed or denied, the JSON
//! patch, warnings, the metrics result and the why) and its AdmissionReview v1 response body;
//! and the [`Endpoint`]s, with the paths the routes, the metrics and the manifests share.

use base64::Engine;
use json_patch::Patch;
use serde::Serialize;

use crate::review::{REVIEW_API_VERSION, REVIEW_KIND};

/// Path of the pod gate (design: docs/src/design.md#warm-rollouts); decided by
/// [`crate::gate`], not by [`Endpoint`], whose reviews [`crate::admission::review`]
/// answers.
pub const MUTATE_POD: &str = "/mutate/pod";

/// The admission endpoints of Prefetches and Deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    MutatePrefetch,
    ValidatePrefetch,
    /// The rollout signal, at the path installs before 0.3 registered (Deployments only then);
    /// it answers every workload kind, like [`Endpoint::MutateWorkload`].
    MutateDeployment,
    /// The rollout signal for Deployments, StatefulSets, DaemonSets and CronJobs.
    MutateWorkload,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::MutatePrefetch,
        Endpoint::ValidatePrefetch,
        Endpoint::MutateDeployment,
        Endpoint::MutateWorkload,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::MutatePrefetch => "/mutate/prefetch",
            Endpoint::ValidatePrefetch => "/validate/prefetch",
            Endpoint::MutateDeployment => "/mutate/deployment",
            Endpoint::MutateWorkload => "/mutate/workload",
        }
    }

    /// A rollout-signal endpoint: it never blocks a workload, so its errors are counted apart.
    pub fn signals_rollouts(self) -> bool {
        matches!(self, Endpoint::MutateDeployment | Endpoint::MutateWorkload)
    }
}

/// Why a request was denied: `status` of the AdmissionResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// 422 (Invalid) for a Prefetch that breaks a rule; 400 (BadRequest) for a request the
    /// hook could not judge.
    pub code: u16,
    pub message: String,
}

impl Denial {
    fn reason(&self) -> &'static str {
        match self.code {
            422 => "Invalid",
            _ => "BadRequest",
        }
    }
}

/// What the webhook decided, before serialization.
/// How a request ended, as `requests_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestResult {
    /// Allowed unchanged.
    Allowed,
    /// Allowed with a patch.
    Patched,
    Denied,
    /// Not an AdmissionReview this endpoint reads (answered 400).
    BadRequest,
    /// An internal error: allowed unchanged (the pod gate), or answered 500.
    Error,
}

impl RequestResult {
    pub const ALL: [RequestResult; 5] = [
        RequestResult::Allowed,
        RequestResult::Patched,
        RequestResult::Denied,
        RequestResult::BadRequest,
        RequestResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Allowed => "allowed",
            RequestResult::Patched => "patched",
            RequestResult::Denied => "denied",
            RequestResult::BadRequest => "bad_request",
            RequestResult::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub uid: String,
    pub allowed: bool,
    pub denial: Option<Denial>,
    pub patch: Option<Patch>,
    pub warnings: Vec<String>,
    /// How it ended, for the metrics.
    pub result: RequestResult,
    /// Why, for the decision log.
    pub why: String,
}

impl Answer {
    /// Allowed unchanged, and why.
    pub(crate) fn allow(uid: &str, why: impl Into<String>) -> Self {
        Self {
            uid: uid.into(),
            allowed: true,
            denial: None,
            patch: None,
            warnings: Vec::new(),
            result: RequestResult::Allowed,
            why: why.into(),
        }
    }

    /// Denied with `code` (see [`Denial`]) and `message`.
    pub(crate) fn deny(uid: &str, code: u16, message: String) -> Self {
        Self {
            uid: uid.into(),
            allowed: false,
            why: message.clone(),
            denial: Some(Denial { code, message }),
            patch: None,
            warnings: Vec::new(),
            result: RequestResult::Denied,
        }
    }

    /// A pod gate answer: always allowed.
    pub fn allow_pod(uid: &str, why: impl Into<String>) -> Self {
        Self::allow(uid, why)
    }

    /// Allowed, counted as an error.
    pub fn errored(mut self) -> Self {
        self.result = RequestResult::Error;
        self
    }

    /// Allowed with the gate patch.
    pub fn gated(self, patch: Patch) -> Self {
        self.with_patch(patch)
    }

    /// With `patch`, unless it is empty (then unchanged).
    pub(crate) fn with_patch(mut self, patch: Patch) -> Self {
        if !patch.0.is_empty() {
            self.patch = Some(patch);
            self.result = RequestResult::Patched;
        }
        self
    }

    /// The AdmissionReview v1 response body. The patch is base64 of the JSON patch, as the
    /// API server's Go types expect for a `[]byte` field.
    ///
    /// Written field by field rather than derived: the base64 patch is most of the answer, and
    /// serde_json would look at each of its bytes for an escape its alphabet cannot contain.
    /// Every other string goes through serde_json.
    pub fn to_review_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        #[derive(Serialize)]
        struct Status<'a> {
            code: u16,
            reason: &'a str,
            message: &'a str,
        }
        let patch = match &self.patch {
            Some(patch) => {
                // Sized for the pod gate's patch (about 400 bytes), so it is written in place.
                let mut bytes = Vec::with_capacity(512);
                serde_json::to_writer(&mut bytes, patch)?;
                Some(bytes)
            }
            None => None,
        };
        let encoded_len = patch
            .as_ref()
            .map_or(0, |patch| patch.len().div_ceil(3) * 4);
        let mut out = Vec::with_capacity(128 + self.uid.len() + encoded_len);
        out.extend_from_slice(b"{\"apiVersion\":");
        serde_json::to_writer(&mut out, REVIEW_API_VERSION)?;
        out.extend_from_slice(b",\"kind\":");
        serde_json::to_writer(&mut out, REVIEW_KIND)?;
        out.extend_from_slice(b",\"response\":{\"uid\":");
        serde_json::to_writer(&mut out, &self.uid)?;
        out.extend_from_slice(if self.allowed {
            b",\"allowed\":true"
        } else {
            b",\"allowed\":false"
        });
        if let Some(denial) = &self.denial {
            out.extend_from_slice(b",\"status\":");
            let status = Status {
                code: denial.code,
                reason: denial.reason(),
                message: &denial.message,
            };
            serde_json::to_writer(&mut out, &status)?;
        }
        if let Some(patch) = &patch {
            out.extend_from_slice(b",\"patch\":\"");
            let start = out.len();
            out.resize(start + encoded_len, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(patch, &mut out[start..])
                .map_err(<serde_json::Error as serde::ser::Error>::custom)?;
            out.truncate(start + written);
            out.extend_from_slice(b"\",\"patchType\":\"JSONPatch\"");
        }
        if !self.warnings.is_empty() {
            out.extend_from_slice(b",\"warnings\":");
            serde_json::to_writer(&mut out, &self.warnings)?;
        }
        out.extend_from_slice(b"}}");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::jsonptr::PointerBuf;
    use json_patch::{AddOperation, PatchOperation};
    use serde_json::{Value, json};

    #[test]
    fn response_carries_uid_base64_patch_and_denial_status() {
        let patched =
            Answer::allow("u", "x").with_patch(Patch(vec![PatchOperation::Add(AddOperation {
                path: PointerBuf::from_tokens(["spec", "retry_after"]),
                value: json!(300),
            })]));
        let body: Value = serde_json::from_slice(&patched.to_review_json().unwrap()).unwrap();
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], "u");
        assert_eq!(body["response"]["patchType"], "JSONPatch");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&decoded).unwrap(),
            json!([{"op": "add", "path": "/spec/retry_after", "value": 300}])
        );

        let denied = Answer::deny("u", 422, "no".into());
        let body: Value = serde_json::from_slice(&denied.to_review_json().unwrap()).unwrap();
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(
            body["response"]["status"],
            json!({"code": 422, "reason": "Invalid", "message": "no"})
        );
        assert!(body["response"].get("patch").is_none());
        let unjudged = Answer::deny("u", 400, "why".into());
        let body: Value = serde_json::from_slice(&unjudged.to_review_json().unwrap()).unwrap();
        assert_eq!(body["response"]["status"]["reason"], "BadRequest");

        // Every string that is not base64 is escaped.
        let odd = "a\"b\\c\u{1}\u{e9}\u{2028}";
        let mut warned = Answer::deny(odd, 422, odd.into());
        warned.warnings = vec![odd.into(), "plain".into()];
        let body: Value = serde_json::from_slice(&warned.to_review_json().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                "uid": odd, "allowed": false,
                "status": {"code": 422, "reason": "Invalid", "message": odd},
                "warnings": [odd, "plain"]}})
        );
    }
}
