//! prefetch-controller: keeps the images of selected workloads pulled on matching nodes, lifts the
//! warmup taint of joining nodes once they hold them, and releases gated rollout pods once their
//! images are everywhere (design: docs/src/design.md#the-reconciler, docs/src/design.md#warm-nodes,
//! docs/src/design.md#warm-rollouts).
//!
//! Two halves, and the layout shows which is which: [`core`] decides (pure functions of what
//! the caches hold and the time; exhaustively unit-tested) and [`shell`] does (watches,
//! writes, loops, leader election, metrics). The core is the crate `prefetch-controller-core`
//! (controller/core), which has no kube client, no runtime and no way to reach this one, so
//! the compiler keeps it pure; `tests/import_graph.rs` also rejects a clock or a lock in it.

#![forbid(unsafe_code)]

pub use prefetch_controller_core as core;
pub mod shell;
