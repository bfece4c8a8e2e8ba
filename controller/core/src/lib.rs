//! The controller's decisions, pure: no kube client, no clock, no locks. Each takes what the
//! shell read from its watch caches (and the time, as a value) and returns what to do.
//!
//! From the leaves up: [`taint`] and [`naming`]; [`eligibility`] (which nodes a Prefetch may
//! target), [`image_volume`] (which images and nodes pull through image volumes) and [`pod`]
//! (the prefetch pod for a node); [`outcome`] (what a pod reports) and [`ownership`] (which
//! cached pods a round works with); [`workload`] (what a Prefetch selects) and [`revisions`]
//! (their older revisions that still run pods); [`signal`] (the rollout a round acts on);
//! [`plan`] (nodes x images still to pull); [`ledger`] and [`fulllist`] (outcomes remembered
//! beyond a round); [`round`] (one reconcile: pods to create and delete, the status);
//! [`seed`] (which nodes of a zone pull an image first); [`budget`] (pulls per registry host
//! and period); [`warmup`] (when a warming node's taint comes off); [`gate`] (when a gated pod
//! is released); [`gated_namespaces`] (which namespaces the pod hook sees); [`status_patch`]
//! (how a status is written so the server holds exactly it);
//! [`severity`] (which events warn). [`kubelet_events`] reads what the kubelet's `Pulled`
//! Events say of a start, and [`starts`] attributes starts to workloads and keeps the warm
//! share and pull times.

pub mod budget;
pub mod eligibility;
pub mod fulllist;
pub mod gate;
pub mod gated_namespaces;
pub mod image_volume;
pub mod kubelet_events;
pub mod ledger;
pub mod naming;
pub mod outcome;
pub mod ownership;
pub mod plan;
pub mod pod;
pub mod revisions;
pub mod round;
pub mod seed;
pub mod severity;
pub mod signal;
pub mod starts;
pub mod starts_book;
pub mod status_patch;
pub mod taint;
pub mod warmup;
pub mod workload;
