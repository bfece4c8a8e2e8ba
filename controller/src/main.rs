//! `prefetch-controller`: the process. Reads flags ([`shell::config`]), then either prints a
//! plan for cluster files (`plan -f`, no cluster needed) or runs: metrics and health on
//! `--metrics-addr`, the Lease campaign, and, while leading, the reconciler and its loops
//! (`prefetch_controller::shell::reconciler::run`); SIGTERM stops taking work, finishes
//! writes, hands the Lease back and exits.
//!
//! [`shell::config`]: prefetch_controller::shell::config

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prefetch_controller::core::budget::BudgetLedger;
use prefetch_controller::core::taint::WarmupConfig;
use prefetch_controller::shell::config::{Cli, Command, RunArgs};
use prefetch_controller::shell::metrics::Metrics;
use prefetch_controller::shell::plan_command::{Objects, render};
use prefetch_controller::shell::{budgets, leader, reconciler};
use prefetch_shell::ops::{self, Readiness};
use prefetch_shell::watch::WatchSet;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Plan {
            files,
            warmup_taint,
            warmup_timeout,
            node_status_max_images,
        }) => plan(
            &files,
            WarmupConfig::new(&warmup_taint, warmup_timeout),
            node_status_max_images,
        ),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(cli.run)),
    }
}

/// `plan -f`: prints what the reconciler would do for the objects in `files`.
fn plan(
    files: &[PathBuf],
    warmup: Option<WarmupConfig>,
    node_status_max_images: u32,
) -> anyhow::Result<()> {
    let mut objects = Objects::default();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        objects.load(&file.display().to_string(), &text)?;
    }
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

/// What every part of a running controller shares.
struct Process {
    args: RunArgs,
    client: kube::Client,
    identity: String,
    metrics: Arc<Metrics>,
    watches: Arc<WatchSet>,
    /// `--registry-budget`'s pulls, kept across terms of leadership (`None`: no budget).
    budgets: Option<Arc<Mutex<BudgetLedger>>>,
    /// The root of every wait in the process: cancelled on SIGTERM/SIGINT, whatever state the
    /// process is in, and from then on the process exits within --shutdown-timeout.
    shutdown: CancellationToken,
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _log = prefetch_shell::telemetry::init(args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone(), args.shutdown_timeout));
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (KUBECONFIG or in-cluster)")?;
    let budgets = budgets::ledger(&args.registry_budgets);
    let process = Process {
        identity: args.identity(),
        args,
        client,
        metrics: Arc::new(Metrics::default()),
        watches: Arc::new(WatchSet::default()),
        budgets,
        shutdown,
    };
    let ops = serve_ops(&process).await?;
    if process.args.leader_elect {
        campaign(&process).await;
    } else {
        process.metrics.leader.set(1);
        reconcile(&process, process.shutdown.child_token()).await;
    }
    ops::stopped(ops).await;
    tracing::info!("prefetch-controller stopped");
    Ok(())
}

/// Binds `--metrics-addr` and serves health, readiness and metrics on it until shutdown.
async fn serve_ops(process: &Process) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let args = &process.args;
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(metrics = %listener.local_addr()?, identity = %process.identity, leader_elect = args.leader_elect, warmup_taint = %args.warmup_taint, shutdown_timeout_s = args.shutdown_timeout.as_secs_f64(), "prefetch-controller starting");
    let (watches, shutdown) = (process.watches.clone(), process.shutdown.clone());
    let (metrics, scraped) = (process.metrics.clone(), process.watches.clone());
    let app = ops::router(ops::Checks {
        ready: move || readyz(&watches, &shutdown),
        scrape: move || {
            metrics.watches.refresh(&scraped);
            metrics.encode()
        },
    });
    Ok(ops::spawn(listener, app, process.shutdown.clone()))
}

/// Campaigns for the Lease until shutdown: follows until elected, leads until the Lease is
/// lost or we are told to stop, and rejoins the election after a lost term.
async fn campaign(process: &Process) {
    let shutdown = &process.shutdown;
    let (leading_tx, mut leading) = watch::channel(false);
    let campaign = tokio::spawn(leader::run(
        process.client.clone(),
        process.args.lease.lease_namespace.clone(),
        process.args.lease.lease_name.clone(),
        process.identity.clone(),
        leading_tx,
        shutdown.clone(),
    ));
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        lead(process, &leading).await;
    }
    // Ends the campaign, releasing the lease if we hold it.
    shutdown.cancel();
    let _ = campaign.await;
}

/// One term of leadership: reconciles until shutdown or until `leading` turns false.
async fn lead(process: &Process, leading: &watch::Receiver<bool>) {
    process.metrics.leader.set(1);
    // This term ends on shutdown (a child token) or when the lease is lost.
    let term = process.shutdown.child_token();
    let lost = {
        let (term, mut leading) = (term.clone(), leading.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = term.cancelled() => {}
                _ = leading.wait_for(|l| !*l) => term.cancel(),
            }
        })
    };
    reconcile(process, term.clone()).await;
    term.cancel();
    let _ = lost.await;
    process.metrics.leader.set(0);
    if !process.shutdown.is_cancelled() {
        tracing::warn!("leadership lost; stopped acting and rejoining the election");
    }
}

/// The reconciler and its loops, until `term` ends.
async fn reconcile(process: &Process, term: CancellationToken) {
    let args = &process.args;
    let settings = reconciler::Settings {
        noop_image: args.noop_image.clone(),
        warmup: args.warmup(),
        max_pod_creates_per_second: args.max_pod_creates_per_second,
        identity: process.identity.clone(),
        concurrency: args.concurrency,
        node_status_max_images: args.node_status_max_images,
        budgets: process.budgets.clone(),
    };
    reconciler::run(
        process.client.clone(),
        settings,
        process.metrics.clone(),
        &process.watches,
        term,
    )
    .await;
}

/// 503 while shutting down or while a watch cache of this term has not synced, saying which
/// and why. A standby replica (no term, no watches) is ready.
fn readyz(watches: &WatchSet, shutdown: &CancellationToken) -> Readiness {
    if shutdown.is_cancelled() {
        return Readiness::shutting_down();
    }
    let reasons = watches.unready_reasons();
    if reasons.is_empty() {
        Readiness::Ready("ok".into())
    } else {
        Readiness::Unready(format!("{}\n", reasons.join("\n")))
    }
}

/// SIGTERM or Ctrl-C: stop taking work, let reconciles in progress finish, release the lease;
/// past `timeout`, exit anyway (whatever is still waiting has had its chance).
async fn signal_shutdown(shutdown: CancellationToken, timeout: Duration) {
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
