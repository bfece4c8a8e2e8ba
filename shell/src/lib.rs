//! The shell both kube-prefetch binaries share: the watch runner that feeds every cache
//! ([`watch`]), logs and the metrics registry ([`telemetry`]), the ops server with health,
//! readiness and metrics ([`ops`]), the Lease flags ([`lease`]), shutdown signals
//! ([`signals`]) and poison-tolerant lock access ([`locks`]). The pure logic they share is
//! `prefetch-common`.

pub mod lease;
pub mod locks;
pub mod ops;
pub mod signals;
pub mod telemetry;
pub mod watch;
