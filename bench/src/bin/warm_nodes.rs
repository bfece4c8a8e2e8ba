//! warm-nodes: N nodes join at once with the warmup taint; how long until each is released.
//!
//! The real prefetch-controller runs against the in-process test API server. The benchmark
//! plays the provisioner (it creates the nodes, tainted) and the kubelet, in process, so the
//! request counts are the controller's own.
//!
//! Pull-time model: a node's kubelet pulls a pod's images one after another (the kubelet's
//! default `serializeImagePulls: true`), each taking `--pull-seconds`, starting when the pod
//! appears; then the pod succeeds and the node lists the images. Lower bound for the i-th node
//! to get its pod (0-based): the controller creates pods at `--creates-per-second` R, and keeps
//! at most `max_parallel` M nodes of a Prefetch in flight, so with k images of T seconds,
//! released(i) >= max(i / R, floor(i / M) * k * T) + k * T. Everything else (watch latency,
//! reconciles, the patch) is the controller's overhead on top.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use prefetch_bench::{create_web, metric, pod_pulled, print_counts, start_controller};
use prefetch_tests::apiserver::TestApiServer;
use prefetch_tests::fixtures::TempDir;
use serde_json::{Value, json};

const WARMING: &str = "cache.techsquad.rocks/warming";
const IMAGES: [&str; 2] = [
    "registry.example.com/shop/web:2.0",
    "docker.io/envoyproxy/envoy:v1.31.0",
];

#[derive(Parser, Debug)]
#[command(about = "Nodes joining with the warmup taint, against the in-process test API server")]
struct Args {
    /// How many nodes join at once, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    joining: Vec<usize>,
    /// Nodes already in the cluster, holding the images.
    #[arg(long, default_value_t = 200)]
    existing: usize,
    /// Seconds each image pull takes (pulls of one pod run one after another).
    #[arg(long, default_value_t = 3.0)]
    pull_seconds: f64,
    /// The controller's --max-pod-creates-per-second (the product default).
    #[arg(long, default_value_t = 10.0)]
    creates_per_second: f64,
    /// spec.max_parallel of the Prefetch.
    #[arg(long, default_value_t = 100)]
    max_parallel: usize,
    /// Give up on a run after this long.
    #[arg(long, default_value_t = 900)]
    timeout_seconds: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn node(name: &str, warming: bool, images: &[&str]) -> Value {
    let taints = if warming {
        json!([{"key": WARMING, "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    let images: Vec<Value> = images
        .iter()
        .map(|i| json!({"names": [i], "sizeBytes": 50_000_000}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "images": images}
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    prefetch_tests::tls_client::install_crypto_provider();
    println!(
        "model: {} images per node, pulled one after another, {:.1} s each; controller --max-pod-creates-per-second {}; Prefetch max_parallel {}; {} nodes already warm",
        IMAGES.len(),
        args.pull_seconds,
        args.creates_per_second,
        args.max_parallel,
        args.existing
    );
    for &joining in &args.joining {
        run(&args, joining).await?;
    }
    Ok(())
}

async fn run(args: &Args, joining: usize) -> anyhow::Result<()> {
    let dir = TempDir::new("warm-nodes")?;
    let api = TestApiServer::start_with_history(50_000).await?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    for i in 0..args.existing {
        api.create_direct(
            "",
            "v1",
            "nodes",
            node(&format!("node-warm-{i:04}"), false, &IMAGES),
        )?;
    }
    create_web(&api, &IMAGES)?;
    api.create_direct("cache.techsquad.rocks", "v1", "prefetches", json!({
        "apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"filter_by_labels": {"app": "web"}, "retry_after": 3600, "max_parallel": args.max_parallel}
    }))?;
    let controller = start_controller(
        &kubeconfig,
        args.creates_per_second,
        &["--warmup-timeout", "1h"],
    )
    .await?;
    // The first round over the warm nodes (nothing to pull) ends before the clock starts.
    let settled = Instant::now();
    while !api
        .objects("cache.techsquad.rocks", "prefetches")
        .iter()
        .all(|p| p["status"]["phase"] == "SUCCEEDED")
    {
        anyhow::ensure!(
            settled.elapsed() < Duration::from_secs(60),
            "the first round never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.reset_request_counts();

    // N nodes join at once.
    let mut joined_at: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    for i in 0..joining {
        let name = format!("node-join-{i:04}");
        api.create_direct("", "v1", "nodes", node(&name, true, &[]))?;
        joined_at.insert(name, Instant::now());
    }
    let created_in = start.elapsed();

    // The kubelet, and the watch for released nodes.
    let pull = Duration::from_secs_f64(args.pull_seconds * IMAGES.len() as f64);
    let mut first_seen: HashMap<String, Instant> = HashMap::new();
    let mut done_pods: HashSet<String> = HashSet::new();
    let mut released: HashMap<String, Duration> = HashMap::new();
    loop {
        let now = Instant::now();
        let pending = api.objects_where("", "pods", |p| {
            p.pointer("/status/containerStatuses").is_none()
        });
        for pod in pending {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if done_pods.contains(&uid) {
                continue;
            }
            let seen = *first_seen.entry(uid.clone()).or_insert(now);
            if now < seen + pull {
                continue;
            }
            let (node, images) = pod_pulled(&api, &pod);
            let listed: Vec<Value> = images
                .iter()
                .map(|i| json!({"names": [i], "sizeBytes": 50_000_000}))
                .collect();
            let _ =
                api.merge_status_direct("", "v1", "nodes", "", &node, &json!({"images": listed}));
            done_pods.insert(uid);
        }
        // Nodes whose taint is gone, noted without copying any node.
        let lifted = Mutex::new(Vec::new());
        api.objects_where("", "nodes", |n| {
            let name = n["metadata"]["name"].as_str().unwrap_or("");
            let tainted = n["spec"]["taints"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["key"] == WARMING));
            if name.starts_with("node-join-") && !tainted {
                lifted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(name.to_string());
            }
            false
        });
        for name in lifted.into_inner().unwrap_or_default() {
            if let Some(at) = joined_at.get(&name) {
                released.entry(name).or_insert_with(|| at.elapsed());
            }
        }
        if released.len() == joining {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(args.timeout_seconds),
            "{} of {joining} nodes released after {} s",
            released.len(),
            args.timeout_seconds
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_released = start.elapsed();
    let counts = api.request_counts();
    let metrics = controller.metrics().await?;

    let mut times: Vec<f64> = released.values().map(Duration::as_secs_f64).collect();
    times.sort_by(f64::total_cmp);
    let (k, t) = (IMAGES.len() as f64, args.pull_seconds);
    let mut bounds: Vec<f64> = (0..joining)
        .map(|i| {
            let by_rate = i as f64 / args.creates_per_second;
            let by_parallel = (i / args.max_parallel) as f64 * k * t;
            by_rate.max(by_parallel) + k * t
        })
        .collect();
    bounds.sort_by(f64::total_cmp);
    let total: u64 = counts.values().sum();
    println!();
    println!(
        "{joining} nodes joined at once (created in {:.2} s); every taint lifted after {:.1} s",
        created_in.as_secs_f64(),
        all_released.as_secs_f64()
    );
    println!(
        "  node creation -> taint lifted:  p50 {:>6.1} s   p99 {:>6.1} s   max {:>6.1} s",
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  lower bound of the model:       p50 {:>6.1} s   p99 {:>6.1} s   max {:>6.1} s",
        percentile(&bounds, 50.0),
        percentile(&bounds, 99.0),
        bounds.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  controller's node_warmup_seconds: {} observations, mean {:.1} s (whole-second creation times)",
        metric(&metrics, "prefetch_controller_node_warmup_seconds_count"),
        metric(&metrics, "prefetch_controller_node_warmup_seconds_sum")
            / metric(&metrics, "prefetch_controller_node_warmup_seconds_count")
    );
    println!(
        "  API requests by the controller: {total}, {:.2} per joining node",
        total as f64 / joining as f64
    );
    print_counts("  from the nodes joining to the last taint lifted", &counts);
    Ok(())
}
