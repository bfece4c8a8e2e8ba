//! Shared core of kube-prefetch: the `Prefetch` API types, validation and defaulting, image
//! reference normalization and the pod-template logic. Pure functions, plus the small shells
//! both binaries share (signals, telemetry, the watch runner in `watch`).

#![forbid(unsafe_code)]

pub mod annotations;
pub mod api;
pub mod crd;
pub mod defaulting;
pub mod duration;
pub mod images;
pub mod labels;
pub mod limits;
pub mod owner;
pub mod signals;
pub mod telemetry;
pub mod validation;
pub mod version;
pub mod watch;
pub mod workload;

pub use api::{
    Phase, Prefetch, PrefetchSpec, PrefetchStatus, PullFailure, RolloutRecord, WorkloadKind,
};
