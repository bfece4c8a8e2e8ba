//! webhook-load: latency of prefetch-webhook under open-loop load, next to the ceiling of its
//! stack (a bare axum + rustls server answering a fixed AdmissionReview).
//!
//! Every request has a scheduled send time (a fixed arrival rate, independent of responses);
//! its latency is measured from that time, so queueing delay is counted, not hidden
//! (no coordinated omission). Load generator and servers share this machine.

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
use prefetch_common::Prefetch;
use prefetch_tests::apiserver::TestApiServer;
use prefetch_tests::binaries::{WebhookOptions, WebhookProcess};
use prefetch_tests::cluster::client_for;
use prefetch_tests::fixtures::{
    TempDir, deployment_review, issue_test_certs, prefetch, realistic_deployment,
};
use prefetch_tests::tls_client::{Connection, PinnedClient, Protocol, install_crypto_provider};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Open-loop latency benchmark of prefetch-webhook against a bare axum + rustls server"
)]
struct Args {
    /// Arrival rates to try, requests per second, in increasing order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,4000,6000,8000,10000,12000,16000"
    )]
    rates: Vec<u32>,
    /// Measured seconds per rate (after the warm-up).
    #[arg(long, default_value_t = 5)]
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
    /// Internal: serve the bare comparison server with the certificates in DIR.
    #[arg(long, hide = true)]
    serve_bare: Option<PathBuf>,
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
    // One thread for the load generator, leaving the other core to the server under test.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
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
    Api::<Prefetch>::namespaced(client, "default")
        .create(&PostParams::default(), &object)
        .await?;
    let webhook = WebhookProcess::start(WebhookOptions::with_cert_dir(&kubeconfig, &certs)).await?;
    let (bare_addr, _bare) = start_bare(&certs).await?;

    let bodies = review_bodies(256)?;
    let body_kib = bodies[0].len() as f64 / 1024.0;
    let webhook_client =
        PinnedClient::new(&ca, webhook.admission_addr, "127.0.0.1", Protocol::Http1)?;
    let bare_client = PinnedClient::new(&ca, bare_addr, "127.0.0.1", Protocol::Http1)?;
    check_signal(&webhook_client, &bodies[0]).await?;

    println!(
        "webhook-load: POST /mutate/deployment, AdmissionReview v1 UPDATE of a Deployment, {body_kib:.1} KiB each,"
    );
    println!(
        "  image changed and selected by a Prefetch (the path that patches). Open loop at fixed arrival rates,"
    );
    println!(
        "  {} keep-alive TLS connections, {} s measured after {} s warm-up per rate; load generator on one thread",
        args.connections, args.seconds, args.warmup_seconds
    );
    println!(
        "  of this {}-core machine, servers on the rest.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "{:<8} {:>7} {:>7} {:>10} {:>8} {:>8} {:>9} {:>8} {:>7} {:>12}",
        "server",
        "rate/s",
        "sent",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "gen lag p99"
    );

    let mut results: Vec<(&str, Vec<RateResult>)> = Vec::new();
    for (name, client) in [("webhook", &webhook_client), ("bare", &bare_client)] {
        let mut rows = Vec::new();
        let mut misses = 0;
        for &rate in &args.rates {
            let row = run_rate(client, &bodies, rate, &args).await?;
            println!(
                "{:<8} {:>7} {:>7} {:>10.1} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>7} {:>12.3}",
                name,
                row.rate,
                row.sent,
                row.achieved,
                ms(row.p50),
                ms(row.p99),
                ms(row.p999),
                ms(row.max),
                row.errors,
                ms(row.dispatch_lag_p99)
            );
            let sustained = sustained(&row, args.target_p99_ms);
            rows.push(row);
            // Two misses in a row: the server is past its knee; higher rates only queue.
            misses = if sustained { 0 } else { misses + 1 };
            if misses == 2 {
                break;
            }
        }
        results.push((name, rows));
    }

    println!();
    let best = |rows: &[RateResult]| {
        rows.iter()
            .filter(|r| sustained(r, args.target_p99_ms))
            .map(|r| r.rate)
            .max()
            .unwrap_or(0)
    };
    let (webhook_rows, bare_rows) = (&results[0].1, &results[1].1);
    let (webhook_best, bare_best) = (best(webhook_rows), best(bare_rows));
    let highest_tried = args.rates.iter().copied().max().unwrap_or(0);
    let (bound, caveat) = if bare_best == highest_tried {
        (
            "<=",
            " (bare never missed: its ceiling is above the highest rate tried)",
        )
    } else {
        ("=", "")
    };
    println!(
        "highest rate with p99 < {} ms and no errors: webhook {webhook_best}/s, bare {bare_best}/s (webhook/bare {bound} {:.2}){caveat}",
        args.target_p99_ms,
        webhook_best as f64 / bare_best.max(1) as f64
    );
    for row in webhook_rows {
        if let Some(bare) = bare_rows.iter().find(|b| b.rate == row.rate) {
            println!(
                "at {:>5}/s: webhook p50 {:.3} ms = {:.2}x bare, p99 {:.3} ms = {:.2}x bare",
                row.rate,
                ms(row.p50),
                ms(row.p50) / ms(bare.p50),
                ms(row.p99),
                ms(row.p99) / ms(bare.p99)
            );
        }
    }
    match webhook_rows.iter().find(|r| r.rate == 1000) {
        Some(r) => println!(
            "target p99 < 5 ms at 1000/s: {} (p99 {:.3} ms)",
            if sustained(r, 5.0) { "met" } else { "MISSED" },
            ms(r.p99)
        ),
        None => println!("target p99 < 5 ms at 1000/s: not measured (1000 not in --rates)"),
    }
    Ok(())
}

fn sustained(row: &RateResult, target_ms: f64) -> bool {
    row.errors == 0 && ms(row.p99) < target_ms && row.achieved >= row.rate as f64 * 0.95
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Distinct request bodies (uids differ), built before the clock starts.
fn review_bodies(n: usize) -> anyhow::Result<Vec<Bytes>> {
    let old = realistic_deployment(
        "default",
        "shop-frontend",
        "registry.example.com/shop/frontend:2026.11.1",
    );
    let new = realistic_deployment(
        "default",
        "shop-frontend",
        "registry.example.com/shop/frontend:2026.11.2",
    );
    (0..n)
        .map(|i| {
            let review =
                deployment_review(&format!("bench-{i:06}"), "UPDATE", new.clone(), old.clone());
            Ok(Bytes::from(serde_json::to_vec(&review)?))
        })
        .collect()
}

/// The benchmark measures the signalling path: make sure the webhook takes it.
async fn check_signal(client: &PinnedClient, body: &Bytes) -> anyhow::Result<()> {
    for _ in 0..200 {
        let reply = client
            .post("/mutate/deployment", "application/json", body.clone())
            .await?;
        if reply.json()?["response"].get("patch").is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the webhook never signalled the benchmark Deployment; its Prefetch cache did not sync")
}

async fn run_rate(
    client: &PinnedClient,
    bodies: &[Bytes],
    rate: u32,
    args: &Args,
) -> anyhow::Result<RateResult> {
    let pool = Arc::new(Mutex::new(Vec::with_capacity(args.connections)));
    for _ in 0..args.connections {
        pool.lock().await.push(client.connect().await?);
    }
    let permits = Arc::new(Semaphore::new(args.connections));
    let warmup = Duration::from_secs(args.warmup_seconds);
    let total = ((args.warmup_seconds + args.seconds) * u64::from(rate)) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(20);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, bool)>();
    let mut lags = Vec::with_capacity(total);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled).await;
        if scheduled >= start + warmup {
            lags.push(Instant::now() - scheduled);
        }
        let (pool, permits, client, tx) =
            (pool.clone(), permits.clone(), client.clone(), tx.clone());
        let body = bodies[i % bodies.len()].clone();
        tokio::spawn(async move {
            let ok = send_one(&pool, &permits, &client, body).await;
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
    })
}

async fn send_one(
    pool: &Mutex<Vec<Connection>>,
    permits: &Semaphore,
    client: &PinnedClient,
    body: Bytes,
) -> bool {
    let Ok(_permit) = permits.acquire().await else {
        return false;
    };
    let conn = pool.lock().await.pop();
    let mut conn = match conn {
        Some(conn) => conn,
        None => match client.connect().await {
            Ok(conn) => conn,
            Err(_) => return false,
        },
    };
    match conn
        .post("/mutate/deployment", "application/json", body)
        .await
    {
        Ok(reply) if reply.status == 200 => {
            pool.lock().await.push(conn);
            true
        }
        // A failed connection is dropped; the next request opens a new one.
        _ => false,
    }
}

/// Re-executes this binary as the bare server and reads the address it bound.
async fn start_bare(certs: &Path) -> anyhow::Result<(SocketAddr, tokio::process::Child)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--serve-bare")
        .arg(certs)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await??
        .context("bare server exited")?;
    let addr = line
        .strip_prefix("listening ")
        .context("unexpected bare server output")?
        .parse()?;
    Ok((addr, child))
}

/// The ceiling of the stack: tokio-rustls + hyper + axum answering a fixed AdmissionReview,
/// reading the same request bodies, with none of the webhook's logic.
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
    let app = axum::Router::new().route(
        "/mutate/deployment",
        axum::routing::post(move |_body: Bytes| {
            let answer = answer.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], answer) }
        }),
    );
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
