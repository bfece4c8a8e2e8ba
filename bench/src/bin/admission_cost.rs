//! admission-cost: what our hooks cost the pods a cluster creates. Pods are created through
//! the test API server's admission chain, which calls the real webhook binary over TLS as
//! kube-apiserver does (rules, the namespaceSelector on the namespace's labels, the
//! matchConditions, then the AdmissionReview and its JSON patch), with the install's hooks
//! registered and with none, in alternating rounds, and their creates per second compared.
//!
//! Two kinds of pod, each a realistic ReplicaSet pod (7 KiB, as `webhook-load` sends):
//! - unselected: of a Deployment that no Prefetch selects, in a namespace with no gating
//!   Prefetch (most pods of a cluster);
//! - gated: of a Deployment rolling out a signalled image, selected by a Prefetch with
//!   `gate_rollouts` whose namespace carries the gated-rollouts label, a controller leading
//!   (the Lease is renewed by the benchmark): every such pod is gated.
//!
//! `--pod-hook-selector every-namespace` registers the pod hook with the namespaceSelector of
//! the installs before the gated-rollouts label (the excluded namespaces only), for the figure
//! before it.
//!
//! ```sh
//! cargo build --release -p prefetch-webhook -p prefetch-bench
//! target/release/admission-cost
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prefetch_bench::workload::bench_image;
use prefetch_common::annotations::{
    GATED_NAMESPACE_LABEL, GATED_NAMESPACE_VALUE, PREFETCH_IMAGES, PREFETCH_REQUESTED_AT,
    SCHEDULING_GATE, rfc3339,
};
use prefetch_tests::apiserver::{MutatingWebhook, TestApiServer};
use prefetch_tests::binaries::{WebhookOptions, WebhookProcess};
use prefetch_tests::fixtures::{realistic_deployment, realistic_pod};
use prefetch_tests::rollout::{install_namespace_selector, install_pod_hooks};
use prefetch_tests::tls_client::{PinnedClient, Protocol};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Pod creates per second through the admission chain, with and without our hooks")]
struct Args {
    /// Pods created per kind and round.
    #[arg(long, default_value_t = 3000)]
    pods: usize,
    /// Rounds per setting (with hooks, without); the order alternates from round to round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The pod hook's namespaceSelector.
    #[arg(long, value_enum, default_value_t = Selector::Install)]
    pod_hook_selector: Selector,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Selector {
    /// The install's: the gated-rollouts label, and the excluded namespaces.
    Install,
    /// The excluded namespaces only, as installs had it before the label.
    EveryNamespace,
}

const GATED_NS: &str = "shop-gated";
const OPEN_NS: &str = "shop-open";
const DEPLOYMENT: &str = "shop-frontend";
const HASH: &str = "7d4b9c8f6";
const LEASE_NS: &str = "prefetch-system";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unselected,
    Gated,
}

impl Kind {
    fn namespace(self) -> &'static str {
        match self {
            Kind::Unselected => OPEN_NS,
            Kind::Gated => GATED_NS,
        }
    }
}

/// One batch: creates per second, the latencies (ms), p50 and p99, and the CPU time per
/// create (µs) of the API server and its client (this process) and of the webhook.
#[derive(Debug, Clone, Copy)]
struct Batch {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    /// Of `cpu_us`, the webhook's.
    webhook_us: f64,
}

/// CPU time of every thread of process `pid` so far (`/proc/PID/task/*/schedstat`, ns).
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let nanos: u64 = tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Duration::from_nanos(nanos)
}

/// The processes whose CPU time a create costs: this one (the API server, in process, and
/// the client creating pods) and the webhook.
#[derive(Clone, Copy)]
struct Processes {
    webhook: u32,
}

impl Processes {
    /// (all, the webhook's)
    fn cpu(self) -> (Duration, Duration) {
        let webhook = cpu_time(self.webhook);
        (cpu_time(std::process::id()) + webhook, webhook)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rounds >= 1 && args.pods >= 1,
        "--rounds and --pods must be at least 1"
    );
    prefetch_tests::tls_client::install_crypto_provider();
    let dir = prefetch_tests::fixtures::TempDir::new("prefetch-admission-cost")?;
    let api = TestApiServer::start_with_history(20_000).await?;
    seed(&api)?;
    let certs = prefetch_tests::fixtures::issue_test_certs(&dir.path().join("certs"))?;
    let webhook_kubeconfig = dir.path().join("webhook-kubeconfig");
    std::fs::write(&webhook_kubeconfig, api.kubeconfig_for("prefetch-webhook"))?;
    let webhook =
        WebhookProcess::start(WebhookOptions::with_cert_dir(&webhook_kubeconfig, &certs)).await?;
    let bench_kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&bench_kubeconfig, api.kubeconfig_for("bench"))?;
    let client = prefetch_tests::cluster::client_for(&bench_kubeconfig).await?;
    let ca = std::fs::read(certs.join("ca.crt"))?;
    let hooks = install_hooks(&ca, webhook.admission_addr, args.pod_hook_selector)?;
    let processes = Processes {
        webhook: webhook.process.pid().unwrap_or(0),
    };
    renew_lease(&client).await?;
    until_gating(&api, &client, &hooks).await?;
    println!(
        "admission-cost: {} pods per kind and round, {} rounds, {} in flight; pod hook namespaceSelector: {:?}",
        args.pods, args.rounds, args.concurrency, args.pod_hook_selector
    );
    let mut results: Vec<(usize, Kind, bool, Batch)> = Vec::new();
    // One kind at a time, so that each comparison is of batches side by side (the gated
    // batches leave work behind them, the webhook's and the server's, that would otherwise
    // fall on whichever batch follows). Round 0 warms up and is not counted.
    for kind in [Kind::Unselected, Kind::Gated] {
        for round in 0..=args.rounds {
            // Alternate which setting goes first, so that a drift of the machine cancels out.
            let order = if round % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for with_hooks in order {
                api.clear_mutating_webhooks();
                if with_hooks {
                    for hook in &hooks {
                        api.register_mutating_webhook(hook.clone());
                    }
                }
                renew_lease(&client).await?;
                let batch = batch(&api, &client, processes, kind, with_hooks, &args).await?;
                println!(
                    "round {round}{} {kind:?} {}: {:.0} creates/s, p50 {:.2} ms, p99 {:.2} ms, CPU {:.0} µs a create ({:.0} the webhook's)",
                    if round == 0 { " (warm-up)" } else { "" },
                    if with_hooks { "with hooks" } else { "without" },
                    batch.rate,
                    batch.p50,
                    batch.p99,
                    batch.cpu_us,
                    batch.webhook_us
                );
                if round > 0 {
                    results.push((round, kind, with_hooks, batch));
                }
            }
        }
    }
    report(&results);
    drop(webhook);
    Ok(())
}

/// The namespaces, the Lease, both Deployments (the gated one signalled) and the gating
/// Prefetch, created in process.
fn seed(api: &TestApiServer) -> anyhow::Result<()> {
    for (name, labels) in [
        (LEASE_NS, json!({})),
        (OPEN_NS, json!({})),
        (
            GATED_NS,
            json!({GATED_NAMESPACE_LABEL: GATED_NAMESPACE_VALUE}),
        ),
    ] {
        api.create_direct(
            "",
            "v1",
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
        )?;
    }
    api.create_direct(
        "coordination.k8s.io",
        "v1",
        "leases",
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "prefetch-controller", "namespace": LEASE_NS},
               "spec": {"holderIdentity": "bench", "leaseDurationSeconds": 15,
                        "renewTime": rfc3339(jiff::Timestamp::now())}}),
    )?;
    let image = bench_image("2026.11.2");
    for ns in [OPEN_NS, GATED_NS] {
        let mut deployment = realistic_deployment(ns, DEPLOYMENT, &image);
        if ns == GATED_NS {
            let normalized =
                prefetch_common::images::collect_images(std::iter::once(image.as_str())).images;
            deployment["metadata"]["annotations"][PREFETCH_IMAGES] =
                json!(serde_json::to_string(&normalized)?);
            deployment["metadata"]["annotations"][PREFETCH_REQUESTED_AT] =
                json!(rfc3339(jiff::Timestamp::now()));
        }
        api.create_direct("apps", "v1", "deployments", deployment)?;
    }
    api.create_direct(
        "cache.techsquad.rocks",
        "v1",
        "prefetches",
        json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
               "metadata": {"name": "shop", "namespace": GATED_NS},
               "spec": {"filter_by_labels": {"team": "payments"}, "node_filter": "",
                        "retry_after": 60, "max_parallel": 20, "pull_timeout": 600,
                        "gate_rollouts": true, "gate_timeout": 3600}}),
    )?;
    Ok(())
}

/// The install's mutating hooks as the test API server runs them, pointed at the webhook.
fn install_hooks(
    ca: &[u8],
    addr: std::net::SocketAddr,
    selector: Selector,
) -> anyhow::Result<Vec<MutatingWebhook>> {
    let client = || -> anyhow::Result<Arc<PinnedClient>> {
        Ok(Arc::new(PinnedClient::new(
            ca,
            addr,
            "127.0.0.1",
            Protocol::Http1,
        )?))
    };
    let mut hooks = Vec::new();
    for (group, plural, path) in [
        ("apps", "deployments", "/mutate/deployment"),
        ("apps", "statefulsets", "/mutate/workload"),
        ("apps", "daemonsets", "/mutate/workload"),
        ("batch", "cronjobs", "/mutate/workload"),
    ] {
        hooks.push(MutatingWebhook {
            name: format!("{plural}.prefetch.cache.techsquad.rocks"),
            group,
            plural,
            operations: vec!["CREATE", "UPDATE"],
            client: client()?,
            path: path.into(),
            timeout: Duration::from_secs(2),
            ignore_failures: true,
            namespace_selector: install_namespace_selector(path, plural)?,
            object_selector: Default::default(),
            match_condition: None,
        });
    }
    let every_namespace = match selector {
        Selector::Install => None,
        Selector::EveryNamespace => Some(install_namespace_selector(
            "/mutate/deployment",
            "deployments",
        )?),
    };
    hooks.extend(install_pod_hooks(&client()?, every_namespace.as_ref())?);
    Ok(hooks)
}

/// A controller leading, as far as the webhook can tell.
async fn renew_lease(client: &Client) -> anyhow::Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NS);
    leases
        .patch(
            "prefetch-controller",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"renewTime": rfc3339(jiff::Timestamp::now())}})),
        )
        .await?;
    Ok(())
}

/// Waits (up to 30 s) until a gated pod created with the hooks comes back gated: the webhook's
/// caches hold the Prefetch, the signalled Deployment and the Lease.
async fn until_gating(
    api: &TestApiServer,
    client: &Client,
    hooks: &[MutatingWebhook],
) -> anyhow::Result<()> {
    for hook in hooks {
        api.register_mutating_webhook(hook.clone());
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), GATED_NS);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let created = pods
            .create(&PostParams::default(), &pod(Kind::Gated)?)
            .await?;
        api.delete_direct("", "v1", "pods", GATED_NS, &created.name_any())?;
        if gated(&created) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the webhook never gated a pod");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn gated(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.scheduling_gates.iter().flatten())
        .any(|g| g.name == SCHEDULING_GATE)
}

fn pod(kind: Kind) -> anyhow::Result<Pod> {
    let mut body: Value = realistic_pod(
        kind.namespace(),
        DEPLOYMENT,
        HASH,
        &bench_image("2026.11.2"),
    );
    if let Some(o) = body.as_object_mut() {
        o.remove("status");
    }
    Ok(serde_json::from_value(body)?)
}

/// Creates `args.pods` pods of `kind`, `args.concurrency` at a time; then deletes them (not
/// timed). Every gated pod created with the hooks must come back gated, and no other.
async fn batch(
    api: &TestApiServer,
    client: &Client,
    processes: Processes,
    kind: Kind,
    with_hooks: bool,
    args: &Args,
) -> anyhow::Result<Batch> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), kind.namespace());
    let body = pod(kind)?;
    let cpu = processes.cpu();
    let started = Instant::now();
    let results: Vec<anyhow::Result<(Duration, Pod)>> = futures::stream::iter(0..args.pods)
        .map(|_| {
            let (pods, body) = (pods.clone(), body.clone());
            async move {
                let began = Instant::now();
                let created = pods.create(&PostParams::default(), &body).await?;
                Ok((began.elapsed(), created))
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let (cpu, webhook_cpu) = {
        let (all, webhook) = processes.cpu();
        (all.saturating_sub(cpu.0), webhook.saturating_sub(cpu.1))
    };
    let mut latencies = Vec::with_capacity(results.len());
    let mut names = Vec::with_capacity(results.len());
    let mut held = 0;
    for result in results {
        let (latency, created) = result?;
        latencies.push(latency.as_secs_f64() * 1e3);
        held += usize::from(gated(&created));
        names.push(created.name_any());
    }
    let expected = if kind == Kind::Gated && with_hooks {
        args.pods
    } else {
        0
    };
    anyhow::ensure!(
        held == expected,
        "{kind:?} with hooks {with_hooks}: {held} of {} pods gated, expected {expected}",
        args.pods
    );
    for name in names {
        api.delete_direct("", "v1", "pods", kind.namespace(), &name)?;
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Batch {
        rate: args.pods as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        cpu_us: cpu.as_secs_f64() * 1e6 / args.pods as f64,
        webhook_us: webhook_cpu.as_secs_f64() * 1e6 / args.pods as f64,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn report(results: &[(usize, Kind, bool, Batch)]) {
    println!();
    println!(
        "kind        creates/s with hooks / without   ratio   paired   CPU µs a create with / without   ratio   p99 ms with / without"
    );
    for kind in [Kind::Unselected, Kind::Gated] {
        let of = |hooks: bool, f: fn(&Batch) -> f64| {
            median(
                results
                    .iter()
                    .filter(|(_, k, h, _)| *k == kind && *h == hooks)
                    .map(|(_, _, _, b)| f(b))
                    .collect(),
            )
        };
        let (with, without) = (of(true, |b| b.rate), of(false, |b| b.rate));
        let (cpu_with, cpu_without) = (of(true, |b| b.cpu_us), of(false, |b| b.cpu_us));
        println!(
            "{:<11} {:>8.0} / {:<8.0}               {:.2}x   {:.2}x    {:>6.0} / {:<6.0}                    {:.2}x   {:.2} / {:.2}",
            format!("{kind:?}").to_lowercase(),
            with,
            without,
            with / without,
            paired_ratio(results, kind),
            cpu_with,
            cpu_without,
            cpu_without / cpu_with,
            of(true, |b| b.p99),
            of(false, |b| b.p99)
        );
    }
    println!(
        "(medians over the rounds after the warm-up; paired: the median of each round's own ratio, which a drift of the machine between rounds does not move; the CPU ratio, without / with, is the create rate the hooks leave when the machine's cores are the limit)"
    );
}

/// The median over rounds of creates/s with hooks over creates/s without, both of one round.
fn paired_ratio(results: &[(usize, Kind, bool, Batch)], kind: Kind) -> f64 {
    let rate = |round: usize, hooks: bool| {
        results
            .iter()
            .find(|(r, k, h, _)| *r == round && *k == kind && *h == hooks)
            .map(|(_, _, _, b)| b.rate)
    };
    let rounds = results.iter().map(|(r, ..)| *r).max().unwrap_or(0);
    median(
        (1..=rounds)
            .filter_map(|round| Some(rate(round, true)? / rate(round, false)?))
            .collect(),
    )
}
