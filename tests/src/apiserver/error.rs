//! The API server's errors: an HTTP status and a Status body, as kube-apiserver writes them.

use serde_json::Value;

use super::resources::ResourceType;
use super::status;

/// An API error: HTTP status and a Status body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            body: status(code, reason, message),
        }
    }
    pub(super) fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{}.{} \"{name}\" not found", rt.plural, rt.group).replace(". \"", " \""),
        )
    }
    pub(super) fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.plural
            ),
        )
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
}
