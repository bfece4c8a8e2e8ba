//! The controller's imperative shell: watches in, decisions from [`crate::core`], writes out.
//!
//! [`reconciler`] runs the kube-runtime Controller over Prefetches (reconcile, error policy)
//! and starts the loops beside it: [`warmer`] (lifts warmup taints), [`gate_loop`] (lifts
//! scheduling gates), [`namespaces`] (keeps the gated-rollouts label on the
//! namespaces that hold a gating Prefetch), [`records`] (ledger upkeep) and [`starts`] (warm and cold starts
//! counted from the kubelet's Events). They share a [`context::Context`].
//! [`budgets`] holds `--registry-budget`'s ledger. [`events`] records Events, [`leader`] holds the Lease, [`metrics`] serves Prometheus, [`ratelimit`] paces pod
//! creation, [`config`] reads flags, and [`plan_command`] is `prefetch-controller plan`.

pub mod budgets;
pub mod caches;
pub mod config;
pub mod context;
pub mod events;
pub mod gate_loop;
pub mod leader;
pub mod metrics;
pub mod namespaces;
pub mod plan_command;
pub mod ratelimit;
pub mod reconciler;
pub mod records;
pub mod starts;
pub mod warmer;
