//! Defaults and bounds of the Prefetch spec, in one place for the types, the validator, the
//! defaulter and the webhook's flags.

pub const DEFAULT_RETRY_AFTER: i64 = 300;
pub const MIN_RETRY_AFTER: i64 = 30;
pub const MAX_RETRY_AFTER: i64 = 86_400;

pub const DEFAULT_MAX_PARALLEL: i64 = 20;
pub const MIN_MAX_PARALLEL: i64 = 1;
pub const MAX_MAX_PARALLEL: i64 = 1_000;

pub const DEFAULT_PULL_TIMEOUT: i64 = 600;
pub const MIN_PULL_TIMEOUT: i64 = 30;
pub const MAX_PULL_TIMEOUT: i64 = 86_400;

pub const DEFAULT_GATE_TIMEOUT: i64 = 900;
pub const MIN_GATE_TIMEOUT: i64 = 60;
pub const MAX_GATE_TIMEOUT: i64 = 3_600;

/// `spec.seed.per_zone`: nodes per zone that pull an image first.
pub const MIN_SEED_PER_ZONE: i64 = 1;
pub const MAX_SEED_PER_ZONE: i64 = 100;

pub const MAX_NODE_FILTER_LEN: usize = 253;

/// `spec.images`: declared images, prefetched whether or not a workload uses them yet.
pub const MAX_DECLARED_IMAGES: usize = 100;

/// At most this many failures are kept in `status.failures`.
pub const MAX_STATUS_FAILURES: usize = 20;
