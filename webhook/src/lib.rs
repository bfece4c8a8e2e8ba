//! prefetch-webhook: admission for kube-prefetch.
//!
//! - `/mutate/prefetch` fills absent spec defaults (JSON patch).
//! - `/validate/prefetch` denies invalid specs with every violation named by field.
//! - `/mutate/deployment` annotates a Deployment whose rollout brings new images, when a
//!   Prefetch in its namespace selects it: the durable signal the reconciler acts on.

// Reviews come from any client in the cluster: no code of ours may be memory-unsafe.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod conn;
pub mod gate;
pub mod http;
pub mod index;
pub mod limits;
mod locks;
pub mod metrics;
pub mod review;
pub mod serve;
pub mod tls;
