//! Command-line flags; each also reads `PREFETCH_<NAME>` from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use prefetch_common::limits::{MAX_RETRY_AFTER, MIN_RETRY_AFTER};
pub use prefetch_common::telemetry::LogFormat;

/// Admission webhook for kube-prefetch: defaults and validates Prefetches, and marks
/// Deployments whose rollout brings new images so the reconciler prefetches them at once.
#[derive(Parser, Debug, Clone)]
#[command(name = "prefetch-webhook", version, about)]
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
    /// At most this many client connections at once; more wait in the accept queue.
    #[arg(long, env = "PREFETCH_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "PREFETCH_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Log format.
    #[arg(long, env = "PREFETCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
        assert_eq!(args.log_format, LogFormat::Text);
        assert!(Args::try_parse_from(["prefetch-webhook", "--min-retry-after", "10"]).is_err());
        assert!(Args::try_parse_from(["prefetch-webhook", "--min-retry-after", "600"]).is_ok());
        assert!(Args::try_parse_from(["prefetch-webhook", "--log-format", "xml"]).is_err());
    }
}
