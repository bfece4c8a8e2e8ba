//! webhook-load: latency and CPU of prefetch-webhook under load, and how much load it
//! sustains, next to the ceiling of its stack (a bare axum + rustls server that reads the same
//! requests and answers a fixed AdmissionReview), for each kind of review it answers.
//!
//! Every request has a scheduled send time (a fixed arrival rate, independent of responses);
//! its latency is measured from that time, so queueing delay is counted, not hidden (no
//! coordinated omission). With `--rates`, both servers are measured at those rates, side by
//! side, and the webhook's p50, p99 and CPU per request are compared with bare's at each.
//! Without it, the benchmark first finds each server's saturation rate (the highest arrival
//! rate sustained with no errors and p99 under the target: doubling until a rate fails
//! `--tries` times, then bisecting) and compares them at rates up to the webhook's. With two or
//! more cores, the load generator runs on the first and each server on the others.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use clap::Parser;
use kube::Api;
use kube::api::PostParams;
use prefetch_bench::workload::{GATED_DEPLOYMENT, QUIET_DEPLOYMENT, Workload, bench_image};
use prefetch_common::Prefetch;
use prefetch_common::annotations::PREFETCH_REQUESTED_AT;
use prefetch_tests::apiserver::TestApiServer;
use prefetch_tests::binaries::{WebhookOptions, WebhookProcess};
use prefetch_tests::cluster::client_for;
use prefetch_tests::fixtures::{TempDir, issue_test_certs, prefetch, realistic_deployment};
use prefetch_tests::tls_client::{Connection, PinnedClient, Protocol, install_crypto_provider};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Open-loop load benchmark of prefetch-webhook against a bare axum + rustls server"
)]
struct Args {
    /// Workloads to run (see the list printed at start), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = Workload::NAMES.map(String::from))]
    workloads: Vec<String>,
    /// First arrival rate of the search, requests per second; doubled until it fails.
    #[arg(long, default_value_t = 1000)]
    start_rate: u32,
    /// Highest arrival rate tried.
    #[arg(long, default_value_t = 64_000)]
    max_rate: u32,
    /// The bisection stops when the failing rate is within this fraction of the sustained one.
    #[arg(long, default_value_t = 0.05)]
    resolution: f64,
    /// Measured seconds per rate (after the warm-up).
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Warm-up seconds per rate, not measured.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Keep-alive TLS connections the load is spread over.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// The p99 a rate must stay under to count as sustained, in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    target_p99_ms: f64,
    /// Tries a rate gets in the saturation search: it is sustained when one of them is (one
    /// stall of a shared machine fails a try).
    #[arg(long, default_value_t = 3)]
    tries: u32,
    /// A failed try whose load generator dispatched requests later than this at p99 (ms) is
    /// run again rather than counted (its own thread was disturbed; about 2 ms is usual).
    #[arg(long, default_value_t = 3.0)]
    max_generator_lag_ms: f64,
    /// Measure exactly these arrival rates (comma-separated) instead of searching for the
    /// saturation, e.g. 1000,5000.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u32>,
    /// Servers to measure: webhook, bare (comma-separated). The summary compares the two.
    #[arg(long, value_delimiter = ',', default_values_t = ["webhook".to_string(), "bare".to_string()])]
    servers: Vec<String>,
    /// Pin the load generator to the first core and the servers to the others.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pin: bool,
    /// Internal: serve the bare comparison server with the certificates in DIR.
    #[arg(long, hide = true)]
    serve_bare: Option<PathBuf>,
    /// Profiling: a command the bare server runs under (e.g. "valgrind --tool=callgrind");
    /// the webhook's is set with PREFETCH_BIN_DIR pointing at a wrapper.
    #[arg(long, hide = true)]
    bare_wrapper: Option<String>,
}

#[derive(Debug, Clone)]
struct RateResult {
    rate: u32,
    sent: usize,
    errors: usize,
    achieved: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    /// How late the load generator itself dispatched requests (p99): part of every latency.
    dispatch_lag_p99: Duration,
    /// CPU time (user and system, all threads) the server spent per request.
    cpu_per_request: Option<Duration>,
    /// The same for the load generator (this process).
    gen_cpu_per_request: Option<Duration>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    install_crypto_provider();
    if let Some(dir) = &args.serve_bare {
        // The comparison server gets a runtime of its own, in its own process.
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve_bare(dir));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = args.pin && cores >= 2;
    if pin {
        // Before any thread or child exists: they inherit it; servers are moved off later.
        pin_process(std::process::id(), &[0])?;
    }
    // One thread for the load generator (and the idle test API server).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args, cores, pin))
}

struct Server<'a> {
    name: &'static str,
    client: &'a PinnedClient,
    /// The server's process, whose CPU time each run reads.
    pid: Option<u32>,
}

async fn run(args: Args, cores: usize, pin: bool) -> anyhow::Result<()> {
    let workloads: Vec<Workload> = args
        .workloads
        .iter()
        .map(|name| Workload::build(name))
        .collect::<anyhow::Result<_>>()?;
    let dir = TempDir::new("webhook-load")?;
    let certs = issue_test_certs(&dir.path().join("certs"))?;
    let ca = std::fs::read(certs.join("ca.crt"))?;

    // The webhook, with a Prefetch selecting the benchmark's Deployment in its watch cache.
    let api = TestApiServer::start().await?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let client = client_for(&kubeconfig).await?;
    let object: Prefetch = serde_json::from_value(prefetch(
        "default",
        "bench",
        json!({"filter_by_labels": {"app": "nginx"}}),
    ))?;
    Api::<Prefetch>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &object)
        .await?;
    // The pod gate's world: a gating Prefetch, a Deployment mid-rollout (signalled now), a
    // quiet one, and a controller's Lease kept fresh while the benchmark runs.
    let gating: Prefetch = serde_json::from_value(prefetch(
        "default",
        "bench-gate",
        json!({"filter_by_labels": {"app": "nginx"}, "gate_rollouts": true}),
    ))?;
    Api::<Prefetch>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &gating)
        .await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    for (name, tag, signal) in [
        (GATED_DEPLOYMENT, "2026.11.2", true),
        (QUIET_DEPLOYMENT, "2026.11.1", false),
    ] {
        let mut d = realistic_deployment("default", name, &bench_image(tag));
        for field in ["uid", "resourceVersion", "generation"] {
            d["metadata"].as_object_mut().map(|m| m.remove(field));
        }
        if signal {
            d["metadata"]["annotations"]["cache.techsquad.rocks/prefetch-images"] =
                json!(serde_json::to_string(&[bench_image(tag)])?);
            d["metadata"]["annotations"]["cache.techsquad.rocks/prefetch-requested-at"] =
                json!(prefetch_common::annotations::rfc3339(jiff::Timestamp::now()));
        }
        deployments
            .create(&PostParams::default(), &serde_json::from_value(d)?)
            .await?;
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "default");
    let lease =
        |now: jiff::Timestamp| -> anyhow::Result<k8s_openapi::api::coordination::v1::Lease> {
            Ok(serde_json::from_value(json!({
                "metadata": {"name": "prefetch-controller"},
                "spec": {"holderIdentity": "bench", "leaseDurationSeconds": 15,
                         "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}
            }))?)
        };
    leases
        .create(&PostParams::default(), &lease(jiff::Timestamp::now())?)
        .await?;
    // The rollout signal is stamped again with the Lease: a signal older than the Prefetch's
    // gate_timeout (15 minutes) no longer gates, and a full run takes longer than that.
    let renewer = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = jiff::Timestamp::now();
            if let Ok(l) = lease(now) {
                let _ = leases
                    .patch(
                        "prefetch-controller",
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(json!({"spec": l.spec})),
                    )
                    .await;
            }
            let signal = json!({"metadata": {"annotations": {
                PREFETCH_REQUESTED_AT: prefetch_common::annotations::rfc3339(now)
            }}});
            let _ = deployments
                .patch(
                    GATED_DEPLOYMENT,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(signal),
                )
                .await;
        }
    });
    let mut options = WebhookOptions::with_cert_dir(&kubeconfig, &certs);
    options.extra_args = vec!["--lease-namespace".into(), "default".into()];
    let webhook = WebhookProcess::start(options).await?;
    let (bare_addr, bare) = start_bare(&certs, args.bare_wrapper.as_deref()).await?;
    let server_cpus: Vec<usize> = (1..cores).collect();
    if pin {
        for pid in [webhook.process.pid(), bare.id()].into_iter().flatten() {
            pin_process(pid, &server_cpus)?;
        }
    }

    let webhook_client =
        PinnedClient::new(&ca, webhook.admission_addr, "127.0.0.1", Protocol::Http1)?;
    let bare_client = PinnedClient::new(&ca, bare_addr, "127.0.0.1", Protocol::Http1)?;
    let servers: Vec<Server> = [
        Server {
            name: "webhook",
            client: &webhook_client,
            pid: webhook.process.pid(),
        },
        Server {
            name: "bare",
            client: &bare_client,
            pid: bare.id(),
        },
    ]
    .into_iter()
    .filter(|s| args.servers.iter().any(|n| n == s.name))
    .collect();
    if servers.len() != args.servers.len() {
        bail!("--servers takes webhook and bare");
    }

    println!(
        "webhook-load: open loop at fixed arrival rates over {} keep-alive TLS connections, {} s measured after {} s warm-up per rate.",
        args.connections, args.seconds, args.warmup_seconds
    );
    if pin {
        println!(
            "  {cores} cores: load generator pinned to cpu 0, each server to cpu {:?}.",
            server_cpus
        );
    } else {
        println!("  {cores} core(s), not pinned: generator and servers share them.");
    }
    println!(
        "  Sustained: no errors, achieved >= 97% of the rate, p99 < {} ms. Saturation: the highest rate sustained.",
        args.target_p99_ms
    );
    println!(
        "  The bare server (tokio-rustls + hyper + axum, same requests read in full, a fixed answer) is the stack's ceiling."
    );
    for w in &workloads {
        println!(
            "  {}: POST {} {:.1} KiB, {}",
            w.name,
            w.path,
            w.kib(),
            w.about
        );
    }
    println!();
    println!(
        "{:<18} {:<8} {:>7} {:>7} {:>10} {:>8} {:>8} {:>9} {:>8} {:>7} {:>12} {:>11} {:>11}",
        "workload",
        "server",
        "rate/s",
        "sent",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "gen lag p99",
        "cpu/req µs",
        "gen cpu µs"
    );

    let mut summaries = Vec::new();
    for workload in &workloads {
        check_answers(&webhook_client, workload).await?;
        let (saturation, rates) = if args.rates.is_empty() {
            let saturation = saturations(&servers, workload, &args).await?;
            let Some((webhook_sat, _)) = saturation else {
                continue;
            };
            (saturation, rates_up_to(args.start_rate, webhook_sat))
        } else {
            (None, args.rates.clone())
        };
        let pairs = side_by_side(&servers, workload, &rates, &args).await?;
        summaries.push((workload.name, saturation, pairs));
    }

    println!();
    for (name, saturation, pairs) in &summaries {
        let ceiling = |sat: u32| {
            if sat >= args.max_rate {
                format!(">= {sat}/s (--max-rate)")
            } else {
                format!("{sat}/s")
            }
        };
        println!("{name}:");
        if let Some((webhook_sat, bare_sat)) = saturation {
            // Shown as figures, not held to a target: on a shared machine saturation moves
            // between runs, and CPU per request at equal rates is the steadier comparison.
            println!(
                "  saturation: webhook {}, bare {}",
                ceiling(*webhook_sat),
                ceiling(*bare_sat)
            );
        }
        let mut worst: Option<(u32, f64)> = None;
        // Per rate, for the medians below.
        let mut cpu_vs_bare = Vec::new();
        for (w, b) in pairs {
            let p99 = ms(w.p99) / ms(b.p99).max(1e-9);
            let vs_bare = cpu_ratio(w, b);
            let cpu = match (w.cpu_per_request, vs_bare) {
                (Some(cpu), Some(ratio)) => {
                    format!(", CPU {:.1} µs = {ratio:.2}x bare", cpu.as_secs_f64() * 1e6)
                }
                _ => String::new(),
            };
            cpu_vs_bare.extend(vs_bare);
            println!(
                "  at {:>6}/s: webhook p50 {:.3} ms = {:.2}x bare, p99 {:.3} ms = {:.2}x bare{cpu}{}",
                w.rate,
                ms(w.p50),
                ms(w.p50) / ms(b.p50).max(1e-9),
                ms(w.p99),
                p99,
                if w.errors + b.errors > 0 {
                    " (errors)"
                } else {
                    ""
                }
            );
            if worst.is_none_or(|(_, x)| p99 > x) {
                worst = Some((w.rate, p99));
            }
        }
        if let Some(bare) = median(cpu_vs_bare) {
            println!("  CPU per request, median over the rates above: webhook {bare:.2}x bare");
        }
        if let Some((rate, p99)) = worst {
            println!(
                "  worst p99 webhook/bare over these rates: {p99:.2}x at {rate}/s (target <= 1.2: {})",
                if p99 <= 1.2 { "met" } else { "MISSED" }
            );
        }
    }
    renewer.abort();
    Ok(())
}

/// The saturation rates of the webhook and of bare, each server's searched in turn; `None`
/// (each measured server's printed) when one of the two is not measured.
async fn saturations(
    servers: &[Server<'_>],
    workload: &Workload,
    args: &Args,
) -> anyhow::Result<Option<(u32, u32)>> {
    let mut found = std::collections::BTreeMap::new();
    for server in servers {
        found.insert(server.name, find_saturation(server, workload, args).await?);
    }
    match (found.get("webhook"), found.get("bare")) {
        (Some(webhook), Some(bare)) => Ok(Some((*webhook, *bare))),
        _ => {
            for (server, sat) in &found {
                println!("{}: {server} saturation {sat}/s", workload.name);
            }
            Ok(None)
        }
    }
}

/// `start`, doubled while under the webhook's saturation, then the saturation itself (at
/// `start` at least, so the CPU figures exist even on a busy machine).
fn rates_up_to(start: u32, webhook_sat: u32) -> Vec<u32> {
    let mut rates: Vec<u32> = std::iter::successors(Some(start), |r| r.checked_mul(2))
        .take_while(|r| *r < webhook_sat)
        .collect();
    rates.push(webhook_sat.max(start));
    rates.dedup();
    rates
}

/// Every server at each rate, interleaved so that they see the same machine; the webhook's
/// and bare's rows paired per rate when both are measured.
async fn side_by_side(
    servers: &[Server<'_>],
    workload: &Workload,
    rates: &[u32],
    args: &Args,
) -> anyhow::Result<Vec<(RateResult, RateResult)>> {
    let mut pairs = Vec::new();
    for &rate in rates {
        let mut rows = std::collections::BTreeMap::new();
        for server in servers {
            let row = run_rate(server, workload, rate, args).await?;
            print_row(workload, server, &row);
            rows.insert(server.name, row);
        }
        if let (Some(w), Some(b)) = (rows.remove("webhook"), rows.remove("bare")) {
            pairs.push((w, b));
        }
    }
    Ok(pairs)
}

/// CPU time per request of `a` over that of `b`, when both were read and `b`'s is not zero.
fn cpu_ratio(a: &RateResult, b: &RateResult) -> Option<f64> {
    let (a, b) = (a.cpu_per_request?, b.cpu_per_request?);
    (!b.is_zero()).then(|| a.as_secs_f64() / b.as_secs_f64())
}

/// The upper median (the middle of an odd count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

fn print_row(workload: &Workload, server: &Server<'_>, row: &RateResult) {
    println!(
        "{:<18} {:<8} {:>7} {:>7} {:>10.1} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>7} {:>12.3} {:>11} {:>11}",
        workload.name,
        server.name,
        row.rate,
        row.sent,
        row.achieved,
        ms(row.p50),
        ms(row.p99),
        ms(row.p999),
        ms(row.max),
        row.errors,
        ms(row.dispatch_lag_p99),
        micros(row.cpu_per_request),
        micros(row.gen_cpu_per_request)
    );
}

fn micros(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e6))
}

/// The highest rate `server` sustains: doubling from `--start-rate` until a rate fails
/// `--tries` times, then bisecting between the last sustained and the first failed rate.
async fn find_saturation(
    server: &Server<'_>,
    workload: &Workload,
    args: &Args,
) -> anyhow::Result<u32> {
    let sustains = async |rate: u32| -> anyhow::Result<bool> {
        let (mut failed, mut generator_late) = (0, 0);
        while failed < args.tries.max(1) {
            let row = run_rate(server, workload, rate, args).await?;
            print_row(workload, server, &row);
            if sustained(&row, args.target_p99_ms) {
                return Ok(true);
            }
            // A try the load generator itself dispatched late measured the machine, not the
            // server: it is run again (a few times at most: a generator late at every try
            // has reached its own ceiling, and the rate counts as failed).
            if ms(row.dispatch_lag_p99) > args.max_generator_lag_ms && generator_late < 3 {
                generator_late += 1;
                println!("  (the load generator was late: this try does not count)");
            } else {
                failed += 1;
            }
        }
        Ok(false)
    };
    let (mut lo, mut hi) = (0, None);
    let mut rate = args.start_rate.min(args.max_rate);
    loop {
        if !sustains(rate).await? {
            hi = Some(rate);
            break;
        }
        lo = rate;
        if rate >= args.max_rate {
            break;
        }
        rate = rate.saturating_mul(2).min(args.max_rate);
    }
    if let Some(mut hi) = hi {
        while lo > 0 && f64::from(hi) > f64::from(lo) * (1.0 + args.resolution) {
            // Round to 100/s: finer steps are below the noise.
            let mid = ((lo + hi) / 2).div_ceil(100) * 100;
            if mid <= lo || mid >= hi {
                break;
            }
            if sustains(mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    Ok(lo)
}

fn sustained(row: &RateResult, target_ms: f64) -> bool {
    row.errors == 0 && ms(row.p99) < target_ms && row.achieved >= f64::from(row.rate) * 0.97
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The benchmark measures the path each workload names: make sure the webhook takes it.
async fn check_answers(client: &PinnedClient, workload: &Workload) -> anyhow::Result<()> {
    let mut last = Value::Null;
    for _ in 0..200 {
        let reply = client
            .post(
                workload.path,
                "application/json",
                workload.bodies[0].clone(),
            )
            .await?;
        last = reply.json()?;
        if (workload.expect)(&last["response"]) {
            return Ok(());
        }
        // The Prefetch watch cache may not have synced yet.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "the webhook never answered {} as the benchmark expects; last answer: {last}",
        workload.name
    )
}

async fn run_rate(
    server: &Server<'_>,
    workload: &Workload,
    rate: u32,
    args: &Args,
) -> anyhow::Result<RateResult> {
    let client = server.client;
    let bodies = &workload.bodies;
    let pool = Arc::new(Mutex::new(VecDeque::with_capacity(args.connections)));
    for _ in 0..args.connections {
        pool.lock().await.push_back(client.connect().await?);
    }
    let permits = Arc::new(Semaphore::new(args.connections));
    let warmup = Duration::from_secs(args.warmup_seconds);
    let total = ((args.warmup_seconds + args.seconds) * u64::from(rate)) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(20);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, bool)>();
    let mut lags = Vec::with_capacity(total);
    let cpu_before = server.pid.and_then(cpu_time);
    let gen_cpu_before = cpu_time(std::process::id());
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        if scheduled >= start + warmup {
            lags.push(Instant::now() - scheduled);
        }
        let (pool, permits, client, tx) =
            (pool.clone(), permits.clone(), client.clone(), tx.clone());
        let body = bodies[i % bodies.len()].clone();
        let path = workload.path;
        tokio::spawn(async move {
            let ok = send_one(&pool, &permits, &client, path, body).await;
            let _ = tx.send((scheduled, Instant::now(), ok));
        });
    }
    drop(tx);
    let measured_from = start + warmup;
    let mut latencies = Vec::with_capacity(total);
    let (mut errors, mut first, mut last) = (0, None::<Instant>, None::<Instant>);
    while let Some((scheduled, done, ok)) = rx.recv().await {
        if scheduled < measured_from {
            continue;
        }
        first = Some(first.map_or(scheduled, |f| f.min(scheduled)));
        last = Some(last.map_or(done, |l| l.max(done)));
        if ok {
            latencies.push(done - scheduled);
        } else {
            errors += 1;
        }
    }
    let per_request = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(before), Some(after)) => after.checked_sub(before).map(|d| d / total.max(1) as u32),
        _ => None,
    };
    let cpu_per_request = per_request(cpu_before, server.pid.and_then(cpu_time));
    let gen_cpu_per_request = per_request(gen_cpu_before, cpu_time(std::process::id()));
    latencies.sort_unstable();
    lags.sort_unstable();
    let pct_of = |v: &[Duration], p: f64| {
        v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    let pct = |p: f64| pct_of(&latencies, p);
    let sent = latencies.len() + errors;
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => 1.0,
    };
    Ok(RateResult {
        rate,
        sent,
        errors,
        achieved: latencies.len() as f64 / span.max(1e-9),
        p50: pct(0.50),
        p99: pct(0.99),
        p999: pct(0.999),
        max: latencies.last().copied().unwrap_or_default(),
        dispatch_lag_p99: pct_of(&lags, 0.99),
        cpu_per_request,
        gen_cpu_per_request,
    })
}

/// CPU time of every thread of process `pid` so far (`/proc/PID/task/*/schedstat`, ns).
fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Sends one review on a pooled keep-alive connection, as the API server's HTTP client does.
/// The pool is used in turn (first in, first out) so that every connection carries requests:
/// the webhook closes a connection that sends no request within its header bound (5 s from
/// the handshake), as Go's HTTP server does, and a connection left unused at the bottom of a
/// stack would be closed. A connection the server has closed is left for a new one, as Go's
/// client leaves it, rather than failing the request sent on it.
async fn send_one(
    pool: &Mutex<VecDeque<Connection>>,
    permits: &Semaphore,
    client: &PinnedClient,
    path: &str,
    body: Bytes,
) -> bool {
    let Ok(_permit) = permits.acquire().await else {
        return false;
    };
    let pooled = {
        let mut pool = pool.lock().await;
        std::iter::from_fn(|| pool.pop_front()).find(|conn| !conn.is_closed())
    };
    let mut conn = match pooled {
        Some(conn) => conn,
        None => match client.connect().await {
            Ok(conn) => conn,
            Err(_) => return false,
        },
    };
    match conn.post(path, "application/json", body).await {
        Ok(reply) if reply.status == 200 => {
            pool.lock().await.push_back(conn);
            true
        }
        // A failed connection is dropped; the next request opens a new one.
        _ => false,
    }
}

/// Sets the CPU affinity of every thread of process `pid`.
// libc's affinity calls are unsafe; the benchmark pins load and server to separate cores.
#[allow(unsafe_code)]
fn pin_process(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: as above; cpu < CPU_SETSIZE on any machine this runs on.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
        // SAFETY: a valid cpu_set_t of the size passed.
        let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            bail!(
                "sched_setaffinity({tid}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Re-executes this binary as the bare server and reads the address it bound.
async fn start_bare(
    certs: &Path,
    wrapper: Option<&str>,
) -> anyhow::Result<(SocketAddr, tokio::process::Child)> {
    let exe = std::env::current_exe()?;
    let mut command = match wrapper {
        Some(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut command = tokio::process::Command::new(words.next().context("empty wrapper")?);
            command.args(words).arg(exe);
            command
        }
        None => tokio::process::Command::new(exe),
    };
    let mut child = command
        .arg("--serve-bare")
        .arg(certs)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await??
        .context("bare server exited")?;
    let addr = line
        .strip_prefix("listening ")
        .context("unexpected bare server output")?
        .parse()?;
    Ok((addr, child))
}

/// The ceiling of the stack: tokio-rustls + hyper + axum answering a fixed AdmissionReview on
/// every path, reading the same request bodies in full, with none of the webhook's logic.
async fn serve_bare(certs: &Path) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::pem::PemObject;

    let chain = rustls::pki_types::CertificateDer::pem_file_iter(certs.join("tls.crt"))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(certs.join("tls.key"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let answer: Value = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": {"uid": "fixed", "allowed": true}});
    let answer = Bytes::from(serde_json::to_vec(&answer)?);
    let app = axum::Router::new().fallback(axum::routing::post(move |_body: Bytes| {
        let answer = answer.clone();
        async move { ([(http::header::CONTENT_TYPE, "application/json")], answer) }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            }
        });
    }
}
