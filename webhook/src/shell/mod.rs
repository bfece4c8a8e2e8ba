//! The webhook's imperative shell: requests in, decisions from [`crate::core`], answers out.
//!
//! [`serve`] accepts TLS connections and bounds them ([`conn`] instruments each connection and
//! request; [`tls`] reloads the certificate from disk); [`http`] routes the admission endpoints
//! to the decisions and says when the webhook is ready (the ops server itself is
//! `prefetch_shell::ops`); [`index`] keeps the watch caches the
//! decisions read (Prefetches, Deployments, node names, the controller's Lease) and
//! implements the core's views of them. [`metrics`] is the Prometheus registry, [`config`]
//! reads flags.

pub mod config;
pub mod conn;
pub mod http;
pub mod index;
pub mod metrics;
pub mod serve;
pub mod tls;
