//! `prefetch-controller`: the process. Reads flags ([`shell::config`]), then either prints a
//! plan for cluster files (`plan -f`, no cluster needed) or runs: metrics and health on
//! `--metrics-addr`, the Lease campaign, and, while leading, the reconciler and its loops
//! (`prefetch_controller::shell::reconciler::run`); SIGTERM stops taking work, finishes
//! writes, hands the Lease back and exits.
//!
//! [`shell::config`]: prefetch_controller::shell::config

#![forbid(unsafe_code)]

use std::sync::Arc;

use anyhow::Context;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use prefetch_controller::core::taint::WarmupConfig;
use prefetch_controller::shell::config::{Cli, Command, RunArgs};
use prefetch_controller::shell::metrics::Metrics;
use prefetch_controller::shell::plan_command::{Objects, render};
use prefetch_controller::shell::{leader, reconciler};
use prefetch_shell::watch::WatchSet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Plan {
            files,
            warmup_taint,
            warmup_timeout,
            node_status_max_images,
        }) => {
            let mut objects = Objects::default();
            for file in &files {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                objects.load(&file.display().to_string(), &text)?;
            }
            let warmup = WarmupConfig::new(&warmup_taint, warmup_timeout);
            print!(
                "{}",
                render(
                    &objects,
                    warmup.as_ref(),
                    node_status_max_images,
                    jiff::Timestamp::now()
                )
            );
            Ok(())
        }
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(cli.run)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _log = prefetch_shell::telemetry::init(args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The root of every wait in the process: cancelled on SIGTERM/SIGINT, whatever state the
    // process is in, and from then on the process exits within --shutdown-timeout.
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone(), args.shutdown_timeout));
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG or in-cluster)")?;
    let identity = args.identity();
    let metrics = Arc::new(Metrics::default());
    let watches = Arc::new(WatchSet::default());

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(metrics = %listener.local_addr()?, identity = %identity, leader_elect = args.leader_elect, warmup_taint = %args.warmup_taint, shutdown_timeout_s = args.shutdown_timeout.as_secs_f64(), "prefetch-controller starting");
    let ops = {
        let (metrics, scraped) = (metrics.clone(), watches.clone());
        let ready = (watches.clone(), shutdown.clone());
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || {
                    let (watches, shutdown) = ready.clone();
                    async move { readyz(&watches, &shutdown) }
                }),
            )
            .route(
                "/metrics",
                get(move || {
                    let metrics = metrics.clone();
                    metrics.watches.refresh(&scraped);
                    async move {
                        match metrics.encode() {
                            Ok(text) => (
                                [(
                                    header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )],
                                text,
                            )
                                .into_response(),
                            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                        }
                    }
                }),
            );
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    };

    let settings = || reconciler::Settings {
        noop_image: args.noop_image.clone(),
        warmup: args.warmup(),
        max_pod_creates_per_second: args.max_pod_creates_per_second,
        identity: identity.clone(),
        concurrency: args.concurrency,
        node_status_max_images: args.node_status_max_images,
    };
    if args.leader_elect {
        let (leading_tx, mut leading) = watch::channel(false);
        let campaign = tokio::spawn(leader::run(
            client.clone(),
            args.lease_namespace.clone(),
            args.lease_name.clone(),
            identity.clone(),
            leading_tx,
            shutdown.clone(),
        ));
        // Follow until elected; lead until the lease is lost or we are told to stop.
        while !shutdown.is_cancelled() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
            }
            metrics.leader.set(1);
            // This term ends on shutdown (a child token) or when the lease is lost.
            let term = shutdown.child_token();
            let lost = {
                let (term, mut leading) = (term.clone(), leading.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = term.cancelled() => {}
                        _ = leading.wait_for(|l| !*l) => term.cancel(),
                    }
                })
            };
            reconciler::run(
                client.clone(),
                settings(),
                metrics.clone(),
                &watches,
                term.clone(),
            )
            .await;
            term.cancel();
            let _ = lost.await;
            metrics.leader.set(0);
            if !shutdown.is_cancelled() {
                tracing::warn!("leadership lost; stopped acting and rejoining the election");
            }
        }
        // Ends the campaign, releasing the lease if we hold it.
        shutdown.cancel();
        let _ = campaign.await;
    } else {
        metrics.leader.set(1);
        reconciler::run(
            client.clone(),
            settings(),
            metrics.clone(),
            &watches,
            shutdown.child_token(),
        )
        .await;
    }
    let _ = ops.await;
    tracing::info!("prefetch-controller stopped");
    Ok(())
}

/// 503 while shutting down or while a watch cache of this term has not synced, saying which
/// and why. A standby replica (no term, no watches) is ready.
fn readyz(watches: &WatchSet, shutdown: &CancellationToken) -> axum::response::Response {
    if shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let reasons = watches.unready_reasons();
    if reasons.is_empty() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", reasons.join("\n")),
        )
            .into_response()
    }
}

/// SIGTERM or Ctrl-C: stop taking work, let reconciles in progress finish, release the lease;
/// past `timeout`, exit anyway (whatever is still waiting has had its chance).
async fn signal_shutdown(shutdown: CancellationToken, timeout: std::time::Duration) {
    prefetch_shell::signals::shutdown_signal().await;
    shutdown.cancel();
    tokio::time::sleep(timeout).await;
    tracing::warn!(
        timeout_s = timeout.as_secs_f64(),
        "shutdown timeout reached; exiting with work still in flight"
    );
    prefetch_shell::telemetry::finish();
    std::process::exit(0);
}
