//! Command line: the controller's flags (each also read from `PREFETCH_<NAME>`) and the
//! `plan` subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use prefetch_common::telemetry::LogFormat;

/// kube-prefetch reconciler: runs short-lived prefetch pods so matching nodes pull the images
/// of the Deployments each Prefetch selects.
#[derive(Parser, Debug)]
#[command(name = "prefetch-controller", version, about)]
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
        default_value = "kube-prefetch/noop:dev"
    )]
    pub noop_image: String,
    /// Elect a leader on a Lease, so only one replica acts.
    #[arg(long, env = "PREFETCH_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader election Lease.
    #[arg(
        long,
        env = "PREFETCH_LEASE_NAMESPACE",
        default_value = "prefetch-system"
    )]
    pub lease_namespace: String,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "PREFETCH_LEASE_NAME",
        default_value = "prefetch-controller"
    )]
    pub lease_name: String,
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
    /// Log format.
    #[arg(long, env = "PREFETCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print which prefetch pods the reconciler would create on which nodes, for the
    /// Prefetches, Deployments and Nodes in YAML files (no cluster needed).
    Plan {
        /// A YAML file (multi-document and List kinds are fine); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
}

impl RunArgs {
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
