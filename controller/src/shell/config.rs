//! Command line: the controller's flags (each also read from `PREFETCH_<NAME>`) and the
//! `plan` subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use prefetch_common::duration::parse_duration;
use prefetch_common::labels::label_key_error;
use prefetch_shell::lease::LeaseArgs;
use prefetch_shell::telemetry::LogFormat;

use crate::core::budget::RegistryBudget;
use crate::core::fulllist::DEFAULT_NODE_STATUS_MAX_IMAGES;
use crate::core::taint::{DEFAULT_WARMUP_TAINT, DEFAULT_WARMUP_TIMEOUT, WarmupConfig};

/// kube-prefetch reconciler: runs short-lived prefetch pods so matching nodes pull the images
/// of the workloads (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs) each Prefetch
/// selects.
#[derive(Parser, Debug)]
#[command(name = "prefetch-controller", version = prefetch_common::version::LONG, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Plain-HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "PREFETCH_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Image holding only the static noop binary at /noop (`Dockerfile.noop`, a few KiB): the
    /// prefetch pods' init container copies it into the pod.
    #[arg(
        long,
        env = "PREFETCH_NOOP_IMAGE",
        default_value = concat!("ghcr.io/kainlite/kube-prefetch-noop:", env!("CARGO_PKG_VERSION"))
    )]
    pub noop_image: String,
    /// Elect a leader on a Lease, so only one replica acts.
    #[arg(long, env = "PREFETCH_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// The Lease this replica campaigns for (shared with the webhook, which reads it).
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "PREFETCH_IDENTITY")]
    pub identity: Option<String>,
    /// Controller-wide cap on prefetch pod creations per second.
    #[arg(
        long,
        env = "PREFETCH_MAX_POD_CREATES_PER_SECOND",
        default_value_t = 10.0
    )]
    pub max_pod_creates_per_second: f64,
    /// Prefetches reconciled at once. Reconciles are mostly CPU (planning over every node),
    /// so more than a few only multiplies memory.
    #[arg(long, env = "PREFETCH_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Startup taint (effect NoSchedule) that joining nodes are registered with: prefetch pods
    /// tolerate it, and the controller lifts it once the node holds the images the Prefetches
    /// want there. Empty turns warm nodes off.
    #[arg(long, env = "PREFETCH_WARMUP_TAINT", default_value = DEFAULT_WARMUP_TAINT, value_parser = parse_taint_key)]
    pub warmup_taint: String,
    /// Lift the warmup taint at the latest this long after the node's creation (e.g. 15m, 90s).
    #[arg(long, env = "PREFETCH_WARMUP_TIMEOUT", default_value = DEFAULT_WARMUP_TIMEOUT, value_parser = parse_duration)]
    pub warmup_timeout: Duration,
    /// The kubelets' `--node-status-max-images`: a node listing this many images has a full
    /// list, on which an image our pod pulled in an earlier round counts as present though not
    /// listed. 0 turns that off (for kubelets running with -1, no cap).
    #[arg(long, env = "PREFETCH_NODE_STATUS_MAX_IMAGES", default_value_t = DEFAULT_NODE_STATUS_MAX_IMAGES)]
    pub node_status_max_images: u32,
    /// Pulls a registry host may take per period, across all Prefetches: host=pulls/period
    /// with the period in s, m, h or d (docker.io=90/6h). Repeat the flag, or separate entries
    /// with commas in the environment variable. Prefetch pods wait while their registry's
    /// budget is spent. Unset: no limit.
    #[arg(long = "registry-budget", env = "PREFETCH_REGISTRY_BUDGET", value_delimiter = ',', value_parser = parse_budget)]
    pub registry_budgets: Vec<RegistryBudget>,
    /// On SIGTERM/SIGINT, how long writes in flight (pod creations, status and Lease writes)
    /// may take to finish before the process exits anyway. Below the pod's
    /// terminationGracePeriodSeconds (30 s by default), so the kubelet never has to kill it.
    #[arg(long, env = "PREFETCH_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Log format.
    #[arg(long, env = "PREFETCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_budget(s: &str) -> Result<RegistryBudget, String> {
    s.parse()
        .map_err(|e: crate::core::budget::BudgetError| e.to_string())
}

/// A taint key (the syntax of a label key), or empty.
fn parse_taint_key(s: &str) -> Result<String, String> {
    match label_key_error(s) {
        Some(why) if !s.is_empty() => Err(why.replace("label key", "taint key")),
        _ => Ok(s.to_string()),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print which prefetch pods the reconciler would create on which nodes, for the
    /// Prefetches, workloads (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs),
    /// ServiceAccounts and Nodes in YAML files (no cluster needed).
    Plan {
        /// A YAML file (multi-document and List kinds are fine); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// The warmup taint, as the controller's flag (empty: warm nodes off).
        #[arg(long, env = "PREFETCH_WARMUP_TAINT", default_value = DEFAULT_WARMUP_TAINT, value_parser = parse_taint_key)]
        warmup_taint: String,
        /// The warmup timeout, as the controller's flag.
        #[arg(long, env = "PREFETCH_WARMUP_TIMEOUT", default_value = DEFAULT_WARMUP_TIMEOUT, value_parser = parse_duration)]
        warmup_timeout: Duration,
        /// The kubelets' image list cap, as the controller's flag (0: off).
        #[arg(long, env = "PREFETCH_NODE_STATUS_MAX_IMAGES", default_value_t = DEFAULT_NODE_STATUS_MAX_IMAGES)]
        node_status_max_images: u32,
    },
}

impl RunArgs {
    /// Warm nodes' settings, `None` when `--warmup-taint` is empty.
    pub fn warmup(&self) -> Option<WarmupConfig> {
        WarmupConfig::new(&self.warmup_taint, self.warmup_timeout)
    }

    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("prefetch-controller-{}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([&["prefetch-controller"], args].concat())
    }

    #[test]
    fn warm_nodes_are_on_by_default_and_off_with_an_empty_taint() {
        let on = parse(&[]).unwrap().run.warmup().unwrap();
        assert_eq!(on.taint, "cache.techsquad.rocks/warming");
        assert_eq!(on.timeout, Duration::from_secs(900));
        let custom = parse(&[
            "--warmup-taint",
            "example.com/cold",
            "--warmup-timeout",
            "90s",
        ])
        .unwrap()
        .run
        .warmup()
        .unwrap();
        assert_eq!(
            (custom.taint.as_str(), custom.timeout),
            ("example.com/cold", Duration::from_secs(90))
        );
        assert_eq!(parse(&["--warmup-taint", ""]).unwrap().run.warmup(), None);
        let err = parse(&["--warmup-taint", "not a key"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid taint key"), "{err}");
        assert!(parse(&["--warmup-timeout", "0s"]).is_err());
        assert!(parse(&["--warmup-timeout", "soon"]).is_err());
    }

    #[test]
    fn the_image_list_cap_defaults_to_the_kubelets() {
        assert_eq!(parse(&[]).unwrap().run.node_status_max_images, 50);
        assert_eq!(
            parse(&["--node-status-max-images", "0"])
                .unwrap()
                .run
                .node_status_max_images,
            0
        );
        assert!(parse(&["--node-status-max-images", "-1"]).is_err());
    }
}
