//! The `prefetch-webhook` process: loads the serving certificate (and reloads it when the
//! files change), connects to the cluster, starts the watch caches (Prefetches, the workloads
//! that roll out, the controller's Lease, and node names unless `--warn-unmatched-node-filter=false`), serves
//! the admission endpoints over TLS on `--listen-addr` and health and metrics over plain HTTP
//! on `--metrics-addr`, until SIGTERM or Ctrl-C: then it reports not ready, stops accepting,
//! lets in-flight requests finish and stops the watches.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;
use prefetch_shell::ops;
use prefetch_shell::watch::WatchSet;
use prefetch_webhook::shell::config::Args;
use prefetch_webhook::shell::http::{AppState, admission_router, ops_router};
use prefetch_webhook::shell::index::{
    LeaderLease, NodeNames, PrefetchIndex, Workloads, run_lease_watch, run_node_watch,
    run_prefetch_watch, run_workload_watch,
};
use prefetch_webhook::shell::metrics::Metrics;
use prefetch_webhook::shell::serve::serve_tls;
use prefetch_webhook::shell::tls::{CertFiles, ReloadingCert, server_config, watch_cert_files};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _log = prefetch_shell::telemetry::init(args.log_format);
    let (cert, tls) = load_tls(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG or in-cluster)")?;
    let state = app_state(&args, client.clone());
    let (admission_listener, ops_listener) = bind(&args).await?;

    // Cancelled on SIGTERM/SIGINT; every task below stops on it, whatever state it is in.
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone(), state.serving.clone()));
    let caches = start_caches(&args, client, &state, &shutdown);
    tokio::spawn(watch_cert_files(
        cert,
        args.tls_reload_interval,
        state.metrics.clone(),
        shutdown.clone(),
    ));
    let ops = ops::spawn(ops_listener, ops_router(state.clone()), shutdown.clone());
    let metrics = state.metrics.clone();
    let app = admission_router(state);
    serve_tls(
        admission_listener,
        tls,
        app,
        args.serve_limits(),
        metrics,
        shutdown,
    )
    .await;

    // Cancelled with `shutdown`: they end at once.
    for cache in caches {
        let _ = cache.await;
    }
    ops::stopped(ops).await;
    tracing::info!("prefetch-webhook stopped");
    Ok(())
}

/// The serving certificate (reloaded from its files while serving) and the TLS configuration
/// that serves it.
fn load_tls(args: &Args) -> anyhow::Result<(Arc<ReloadingCert>, Arc<ServerConfig>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // One process-wide backend, chosen explicitly (kube's client uses it too).
    let _ = provider.as_ref().clone().install_default();
    let files = CertFiles {
        cert_path: args.tls_cert_file.clone(),
        key_path: args.tls_key_file.clone(),
    };
    let cert = Arc::new(
        ReloadingCert::load(files, provider.clone()).context("loading the serving certificate")?,
    );
    let tls =
        Arc::new(server_config(cert.clone(), provider).context("building the TLS configuration")?);
    Ok((cert, tls))
}

/// What the handlers share: empty caches (the watches fill them), the metrics, the flags
/// they read.
fn app_state(args: &Args, client: kube::Client) -> AppState {
    AppState {
        prefetches: Arc::new(PrefetchIndex::default()),
        nodes: Arc::new(NodeNames::default()),
        metrics: Arc::new(Metrics::default()),
        min_retry_after: args.min_retry_after,
        serving: Arc::new(AtomicBool::new(true)),
        watches: Arc::new(WatchSet::default()),
        stale_after: args.cache_stale_after,
        workloads: Arc::new(Workloads::default()),
        lease: Arc::new(LeaderLease::default()),
        client: Some(client),
        live_read_timeout: args.live_read_timeout,
    }
}

/// The admission (TLS) and ops (plain HTTP) listeners.
async fn bind(args: &Args) -> anyhow::Result<(TcpListener, TcpListener)> {
    let admission = TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("binding {}", args.listen_addr))?;
    let ops = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(
        admission = %admission.local_addr()?,
        ops = %ops.local_addr()?,
        min_retry_after = args.min_retry_after,
        "prefetch-webhook listening"
    );
    Ok((admission, ops))
}

/// Starts the watches that fill the caches, each stopping on `shutdown`: Prefetches (which
/// readiness waits for), the workloads that roll out and the controller's Lease (the pod
/// gate's), and node names unless `--warn-unmatched-node-filter=false`.
fn start_caches(
    args: &Args,
    client: kube::Client,
    state: &AppState,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let (watches, workloads) = (&state.watches, &state.workloads);
    let mut caches = vec![
        tokio::spawn(run_prefetch_watch(
            client.clone(),
            state.prefetches.clone(),
            state.metrics.clone(),
            watches.register("prefetches"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.deployments.clone(),
            watches.register_optional("deployments"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.stateful_sets.clone(),
            watches.register_optional("statefulsets"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.daemon_sets.clone(),
            watches.register_optional("daemonsets"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.cron_jobs.clone(),
            watches.register_optional("cronjobs"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_lease_watch(
            client.clone(),
            args.lease.lease_namespace.clone(),
            args.lease.lease_name.clone(),
            state.lease.clone(),
            watches.register_optional("leases"),
            shutdown.child_token(),
        )),
    ];
    if args.warn_unmatched_node_filter {
        caches.push(tokio::spawn(run_node_watch(
            client,
            state.nodes.clone(),
            watches.register_optional("nodes"),
            shutdown.child_token(),
        )));
    }
    caches
}

/// SIGTERM or Ctrl-C: report not-ready, stop accepting, let in-flight requests finish.
async fn signal_shutdown(shutdown: CancellationToken, serving: Arc<AtomicBool>) {
    prefetch_shell::signals::shutdown_signal().await;
    serving.store(false, Ordering::Release);
    shutdown.cancel();
}
