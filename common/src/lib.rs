//! Shared core of kube-prefetch: the `Prefetch` API types, validation and defaulting, image
//! reference normalization, labels, annotations and the pod-template logic. Pure: this crate
//! has no kube client, no runtime and no clock (its dependencies say so), so the compiler keeps
//! it that way. The shell both binaries share (watch runner, telemetry, signals) is
//! `prefetch-shell`.

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
pub mod validation;
pub mod version;
pub mod workload;

pub use api::{
    ColdStart, ImagePullStatus, Phase, Prefetch, PrefetchSpec, PrefetchStatus, PullFailure,
    RolloutRecord, Seed, StartsStatus, WaitingPull, WorkloadKind,
};
