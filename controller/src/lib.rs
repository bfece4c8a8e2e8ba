//! prefetch-controller: keeps the images of selected workloads pulled on matching nodes, lifts the
//! warmup taint of joining nodes once they hold them, and releases gated rollout pods once their
//! images are everywhere (design: docs/src/design.md#the-reconciler, docs/src/design.md#warm-nodes,
//! docs/src/design.md#warm-rollouts).
//!
//! Two halves, and the layout shows which is which: [`core`] decides (pure functions of what
//! the caches hold and the time; exhaustively unit-tested) and [`shell`] does (watches,
//! writes, loops, leader election, metrics). The shell calls the core; the core never calls
//! the shell (`tests/import_graph.rs` fails on an import circle or a core module reaching
//! into the shell).

#![forbid(unsafe_code)]

pub mod core;
pub mod shell;
