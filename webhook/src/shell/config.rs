//! Command-line flags; each also reads `PREFETCH_<NAME>` from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::core::limits::Bounds;
use crate::shell::serve::ServeLimits;
use clap::Parser;
use prefetch_common::limits::{MAX_RETRY_AFTER, MIN_RETRY_AFTER};
use prefetch_shell::lease::LeaseArgs;
pub use prefetch_shell::telemetry::LogFormat;

/// Admission webhook for kube-prefetch: defaults and validates Prefetches, marks workloads
/// (Deployments, StatefulSets, DaemonSets, CronJobs; Jobs never roll out) whose rollout brings
/// new images so the reconciler prefetches them at once, and gates their new pods for
/// Prefetches with gate_rollouts.
#[derive(Parser, Debug, Clone)]
#[command(name = "prefetch-webhook", version = prefetch_common::version::LONG, about)]
// The shared Lease flags' help speaks for the controller, which holds the Lease; here it is read.
#[command(mut_arg("lease_namespace", |arg| arg.help(
    "Namespace of the controller's leader Lease: pods are gated only while it is fresh"
)))]
#[command(mut_arg("lease_name", |arg| arg.help("Name of the controller's leader Lease")))]
pub struct Args {
    /// HTTPS address for the admission endpoints.
    #[arg(long, env = "PREFETCH_LISTEN_ADDR", default_value = "0.0.0.0:8443")]
    pub listen_addr: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "PREFETCH_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// PEM certificate chain served to the API server (reloaded when the file changes).
    #[arg(long, env = "PREFETCH_TLS_CERT_FILE", default_value = "/tls/tls.crt")]
    pub tls_cert_file: PathBuf,
    /// PEM private key of the certificate (reloaded when the file changes).
    #[arg(long, env = "PREFETCH_TLS_KEY_FILE", default_value = "/tls/tls.key")]
    pub tls_key_file: PathBuf,
    /// How often to check the certificate files for changes, e.g. 5s or 500ms.
    #[arg(long, env = "PREFETCH_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// Lowest spec.retry_after this cluster accepts (30 to 86400).
    #[arg(long, env = "PREFETCH_MIN_RETRY_AFTER", default_value_t = MIN_RETRY_AFTER,
          value_parser = clap::value_parser!(i64).range(MIN_RETRY_AFTER..=MAX_RETRY_AFTER))]
    pub min_retry_after: i64,
    /// Warn when a Prefetch's node_filter matches no node (watches Node names).
    #[arg(long, env = "PREFETCH_WARN_UNMATCHED_NODE_FILTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub warn_unmatched_node_filter: bool,
    /// The controller's leader Lease, which the pod gate reads.
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Bound of the pod gate's one live read of a workload (Deployment, StatefulSet,
    /// DaemonSet, CronJob) its cache is behind on (the hook's timeoutSeconds is 2 s).
    #[arg(long, env = "PREFETCH_LIVE_READ_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    pub live_read_timeout: Duration,
    /// At most this many client connections at once. At the limit, a new connection closes
    /// one that is waiting on its client (never one being answered).
    #[arg(long, env = "PREFETCH_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// At most this many requests between their headers and their written response, over
    /// all connections. At the limit, the connection whose request has waited longest on its
    /// client is closed.
    #[arg(long, env = "PREFETCH_MAX_CONCURRENT_REQUESTS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// At most this many concurrent streams per HTTP/2 connection.
    #[arg(long, env = "PREFETCH_MAX_CONCURRENT_STREAMS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// A client must finish the TLS handshake within this.
    #[arg(long, env = "PREFETCH_TLS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// A request's headers must arrive within this: from the handshake for a connection's
    /// first request, from the request's first byte for later ones.
    #[arg(long, env = "PREFETCH_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A request's body must arrive (and be answered) within this after its headers.
    #[arg(long, env = "PREFETCH_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// The client must take the response within this.
    #[arg(long, env = "PREFETCH_RESPONSE_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub response_write_timeout: Duration,
    /// A kept-alive connection with no request open is closed after this.
    #[arg(long, env = "PREFETCH_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "PREFETCH_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// A watch cache down longer than this is named in /readyz's body, which stays 200 once
    /// the caches synced (see the book's webhook chapter, Readiness and stale caches). The
    /// staleness metric reports every watch always.
    #[arg(long, env = "PREFETCH_CACHE_STALE_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub cache_stale_after: Duration,
    /// Log format.
    #[arg(long, env = "PREFETCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// The accept loop's bounds, from the flags.
    pub fn serve_limits(&self) -> ServeLimits {
        ServeLimits {
            bounds: Bounds {
                handshake: self.tls_handshake_timeout,
                headers: self.header_read_timeout,
                body: self.body_read_timeout,
                response: self.response_write_timeout,
                idle: self.idle_timeout,
            },
            max_connections: self.max_connections as usize,
            max_requests: self.max_concurrent_requests as usize,
            max_streams: self.max_concurrent_streams,
            drain_timeout: self.shutdown_timeout,
        }
    }
}

pub use prefetch_common::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_documented_defaults_and_bounds() {
        let args = Args::try_parse_from(["prefetch-webhook"]).unwrap();
        assert_eq!(args.listen_addr.to_string(), "0.0.0.0:8443");
        assert_eq!(args.metrics_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(args.min_retry_after, 30);
        assert_eq!(
            (
                args.lease.lease_namespace.as_str(),
                args.lease.lease_name.as_str()
            ),
            ("prefetch-system", "prefetch-controller")
        );
        assert_eq!(args.live_read_timeout, Duration::from_millis(500));
        assert_eq!(args.log_format, LogFormat::Text);
        assert!(Args::try_parse_from(["prefetch-webhook", "--min-retry-after", "10"]).is_err());
        assert!(Args::try_parse_from(["prefetch-webhook", "--min-retry-after", "600"]).is_ok());
        assert!(Args::try_parse_from(["prefetch-webhook", "--log-format", "xml"]).is_err());
        assert!(Args::try_parse_from(["prefetch-webhook", "--max-connections", "0"]).is_err());
        assert!(Args::try_parse_from(["prefetch-webhook", "--idle-timeout", "0s"]).is_err());
    }

    /// The Lease flags are shared with the controller; their help here says the webhook reads
    /// the controller's Lease.
    #[test]
    fn the_lease_flags_speak_of_the_controllers_lease() {
        use clap::CommandFactory;
        let command = Args::command();
        let help = |long: &str| {
            command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(long))
                .and_then(|arg| arg.get_help())
                .map(ToString::to_string)
                .unwrap()
        };
        assert_eq!(
            help("lease-namespace"),
            "Namespace of the controller's leader Lease: pods are gated only while it is fresh"
        );
        assert_eq!(help("lease-name"), "Name of the controller's leader Lease");
    }

    #[test]
    fn connection_bounds_default_to_what_the_api_server_needs() {
        let limits = Args::try_parse_from(["prefetch-webhook"])
            .unwrap()
            .serve_limits();
        assert_eq!(limits, ServeLimits::default());
        // The API server gives up on a hook after its timeoutSeconds (2 s and 5 s here):
        // every per-request bound leaves it that long.
        assert!(limits.bounds.headers >= Duration::from_secs(5));
        assert!(limits.bounds.body >= Duration::from_secs(5));
        let limits = Args::try_parse_from([
            "prefetch-webhook",
            "--tls-handshake-timeout=1s",
            "--header-read-timeout=2s",
            "--body-read-timeout=3s",
            "--response-write-timeout=4s",
            "--idle-timeout=500ms",
            "--max-connections=8",
            "--max-concurrent-requests=4",
            "--max-concurrent-streams=2",
        ])
        .unwrap()
        .serve_limits();
        assert_eq!(
            limits.bounds,
            Bounds {
                handshake: Duration::from_secs(1),
                headers: Duration::from_secs(2),
                body: Duration::from_secs(3),
                response: Duration::from_secs(4),
                idle: Duration::from_millis(500),
            }
        );
        assert_eq!(
            (
                limits.max_connections,
                limits.max_requests,
                limits.max_streams
            ),
            (8, 4, 2)
        );
    }
}
