//! The shell both kube-prefetch binaries share: the watch runner that feeds every cache
//! ([`watch`]), logs and the metrics registry ([`telemetry`]), shutdown signals ([`signals`]) and
//! poison-tolerant lock access ([`locks`]). The pure logic they share is `prefetch-common`.

pub mod locks;
pub mod signals;
pub mod telemetry;
pub mod watch;
