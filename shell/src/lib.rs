//! The shell both kube-prefetch binaries share: the watch runner that feeds every cache
//! ([`watch`]), logs and the metrics registry ([`telemetry`]), and shutdown signals
//! ([`signals`]). The pure logic they share is `prefetch-common`.

pub mod signals;
pub mod telemetry;
pub mod watch;
