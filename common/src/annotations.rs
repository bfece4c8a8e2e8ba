//! Names on the wire that other components (and users' tooling) rely on.

/// Set by the webhook on a Deployment: JSON array of the images new in the change.
pub const PREFETCH_IMAGES: &str = "cache.techsquad.rocks/prefetch-images";
/// Set by the webhook on a Deployment: RFC 3339 UTC time of the change.
pub const PREFETCH_REQUESTED_AT: &str = "cache.techsquad.rocks/prefetch-requested-at";

/// Label on every prefetch pod.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "prefetch-controller";
/// Label on every prefetch pod naming its Prefetch.
pub const PREFETCH_LABEL: &str = "cache.techsquad.rocks/prefetch";

pub const API_GROUP: &str = "cache.techsquad.rocks";
pub const API_VERSION: &str = "v1";
pub const KIND: &str = "Prefetch";
