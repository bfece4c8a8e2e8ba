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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _log = prefetch_shell::telemetry::init(args.log_format);

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // One process-wide backend, chosen explicitly (kube's client uses it too).
    let _ = provider.as_ref().clone().install_default();

    let cert = Arc::new(
        ReloadingCert::load(
            CertFiles {
                cert_path: args.tls_cert_file.clone(),
                key_path: args.tls_key_file.clone(),
            },
            provider.clone(),
        )
        .context("loading the serving certificate")?,
    );
    let tls =
        Arc::new(server_config(cert.clone(), provider).context("building the TLS configuration")?);

    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(Metrics::default());
    let state = AppState {
        prefetches: Arc::new(PrefetchIndex::default()),
        nodes: Arc::new(NodeNames::default()),
        metrics: metrics.clone(),
        min_retry_after: args.min_retry_after,
        serving: Arc::new(AtomicBool::new(true)),
        watches: Arc::new(WatchSet::default()),
        stale_after: args.cache_stale_after,
        workloads: Arc::new(Workloads::default()),
        lease: Arc::new(LeaderLease::default()),
        client: Some(client.clone()),
        live_read_timeout: args.live_read_timeout,
    };

    let admission_listener = TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("binding {}", args.listen_addr))?;
    let ops_listener = TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(
        admission = %admission_listener.local_addr()?,
        ops = %ops_listener.local_addr()?,
        min_retry_after = args.min_retry_after,
        "prefetch-webhook listening"
    );

    // Cancelled on SIGTERM/SIGINT; every task below stops on it, whatever state it is in.
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone(), state.serving.clone()));
    let watches = tokio::spawn(run_prefetch_watch(
        client.clone(),
        state.prefetches.clone(),
        metrics.clone(),
        state.watches.register("prefetches"),
        shutdown.child_token(),
    ));
    let workloads = &state.workloads;
    let gate_watches = [
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.deployments.clone(),
            state.watches.register_optional("deployments"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.stateful_sets.clone(),
            state.watches.register_optional("statefulsets"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.daemon_sets.clone(),
            state.watches.register_optional("daemonsets"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_workload_watch(
            client.clone(),
            workloads.cron_jobs.clone(),
            state.watches.register_optional("cronjobs"),
            shutdown.child_token(),
        )),
        tokio::spawn(run_lease_watch(
            client.clone(),
            args.lease_namespace.clone(),
            args.lease_name.clone(),
            state.lease.clone(),
            state.watches.register_optional("leases"),
            shutdown.child_token(),
        )),
    ];
    let node_watch = args.warn_unmatched_node_filter.then(|| {
        tokio::spawn(run_node_watch(
            client,
            state.nodes.clone(),
            state.watches.register_optional("nodes"),
            shutdown.child_token(),
        ))
    });
    tokio::spawn(watch_cert_files(
        cert,
        args.tls_reload_interval,
        metrics.clone(),
        shutdown.clone(),
    ));
    let ops = {
        let shutdown = shutdown.clone();
        let app = ops_router(state.clone());
        tokio::spawn(async move {
            axum::serve(ops_listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    };

    serve_tls(
        admission_listener,
        tls,
        admission_router(state),
        args.serve_limits(),
        metrics,
        shutdown,
    )
    .await;

    // Cancelled with `shutdown`: they end at once.
    let _ = watches.await;
    for watch in gate_watches {
        let _ = watch.await;
    }
    if let Some(node_watch) = node_watch {
        let _ = node_watch.await;
    }
    match ops.await {
        Ok(Err(err)) => tracing::warn!(error = %err, "ops server ended with an error"),
        Err(err) => tracing::warn!(error = %err, "ops server task failed"),
        Ok(Ok(())) => {}
    }
    tracing::info!("prefetch-webhook stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C: report not-ready, stop accepting, let in-flight requests finish.
async fn signal_shutdown(shutdown: CancellationToken, serving: Arc<AtomicBool>) {
    prefetch_shell::signals::shutdown_signal().await;
    serving.store(false, Ordering::Release);
    shutdown.cancel();
}
