//! prefetch-webhook: admission for kube-prefetch (design: docs/src/design.md#the-admission-webhook,
//! docs/src/design.md#warm-rollouts, docs/src/design.md#hostile-clients).
//!
//! - `/mutate/prefetch` fills absent spec defaults (JSON patch).
//! - `/validate/prefetch` denies invalid specs with every violation named by field.
//! - `/mutate/deployment` annotates a Deployment whose rollout brings new images, when a
//!   Prefetch in its namespace selects it: the durable signal the reconciler acts on.
//! - `/mutate/pod` holds a rollout's new pods with a scheduling gate until the controller has
//!   their images on the nodes.
//!
//! Two halves, and the layout shows which is which: [`core`] decides (pure functions of the
//! request, what the caches hold and the time; exhaustively unit-tested) and [`shell`] does
//! (TLS, connection bounds, routes, watch caches, metrics). The shell calls the core; the core
//! reads the caches only through views it defines ([`core::facts`]). The core is the crate
//! `prefetch-webhook-core` (webhook/core), which has no kube client, no runtime and no way to
//! reach this one, so the compiler keeps it pure; `tests/import_graph.rs` also rejects a clock
//! or a lock in it.

// Reviews come from any client in the cluster: no code of ours may be memory-unsafe.
#![forbid(unsafe_code)]

pub use prefetch_webhook_core as core;
pub mod shell;
