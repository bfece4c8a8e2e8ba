//! controller-scale: prefetch-controller at scale against the test API server.
//!
//! 5,000 nodes, 500 Deployments and 50 Prefetches by default. Only the controller talks to
//! the API server over HTTP: setup, the simulated kubelet and node heartbeats act on the
//! server in process, so the request counts are the controller's own.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use clap::Parser;
use prefetch_bench::{metric, pod_pulled, print_counts, proc_status, start_controller};
use prefetch_tests::apiserver::TestApiServer;
use prefetch_tests::fixtures::TempDir;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Scale benchmark of prefetch-controller against the in-process test API server")]
struct Args {
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    #[arg(long, default_value_t = 500)]
    deployments: usize,
    #[arg(long, default_value_t = 50)]
    prefetches: usize,
    /// Nodes are split into zones; each Prefetch targets one zone (node_filter).
    #[arg(long, default_value_t = 10)]
    zones: usize,
    /// The controller's --max-pod-creates-per-second.
    #[arg(long, default_value_t = 250.0)]
    creates_per_second: f64,
    /// spec.max_parallel of every Prefetch (the product default).
    #[arg(long, default_value_t = 20)]
    max_parallel: i64,
    /// Length of the steady-state window (no changes but node heartbeats).
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Give up when not converged after this long.
    #[arg(long, default_value_t = 1200)]
    timeout_seconds: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    prefetch_tests::tls_client::install_crypto_provider();
    let dir = TempDir::new("controller-scale")?;
    let api = TestApiServer::start_with_history(20_000).await?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();

    let per_zone = args.nodes / args.zones;
    let node_name = |z: usize, i: usize| format!("node-{z}-{i:04}");
    for z in 0..args.zones {
        for i in 0..per_zone {
            api.create_direct("", "v1", "nodes", json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node_name(z, i), "labels": {"kubernetes.io/os": "linux", "topology.kubernetes.io/zone": format!("zone-{z}")}},
                "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now}],
                           "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 300000}]}
            }))?;
        }
    }
    let per_ns = args.deployments / args.prefetches;
    for p in 0..args.prefetches {
        let ns = format!("team-{p:02}");
        api.create_direct(
            "",
            "v1",
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )?;
        for d in 0..per_ns {
            api.create_direct("apps", "v1", "deployments", json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("app-{d:02}"), "namespace": ns, "labels": {"prefetch": "yes", "app": format!("app-{d:02}")}},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": format!("app-{d:02}")}},
                         "template": {"metadata": {"labels": {"app": format!("app-{d:02}")}}, "spec": {"containers": [
                             {"name": "app", "image": format!("registry.example.com/{ns}/app-{d:02}:1.0")},
                             {"name": "proxy", "image": "envoyproxy/envoy:v1.31.0"}]}}}
            }))?;
        }
    }
    let images_per_prefetch = per_ns + 1;
    let expected_pairs = (per_zone * images_per_prefetch) as i64;
    println!(
        "cluster: {} nodes in {} zones, {} Deployments, {} Prefetches (each: one zone = {per_zone} nodes, {images_per_prefetch} images, {expected_pairs} node x image pairs)",
        per_zone * args.zones,
        args.zones,
        per_ns * args.prefetches,
        args.prefetches
    );

    let controller = start_controller(&kubeconfig, args.creates_per_second, &[]).await?;
    let pid = controller.process.pid().unwrap_or(0);
    // Let the controller list and sync its caches before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.reset_request_counts();

    let started = Instant::now();
    for p in 0..args.prefetches {
        let ns = format!("team-{p:02}");
        api.create_direct("cache.techsquad.rocks", "v1", "prefetches", json!({
            "apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
            "metadata": {"name": "warm", "namespace": ns},
            "spec": {"filter_by_labels": {"prefetch": "yes"}, "node_filter": format!("node-{}-", p % args.zones),
                     "retry_after": 3600, "max_parallel": args.max_parallel}
        }))?;
    }

    // The kubelet: every prefetch pod pulls at once; pulled images appear in node status.
    let mut handled: HashSet<String> = HashSet::new();
    let mut node_images: HashMap<String, Vec<Value>> = HashMap::new();
    let mut last_pod_at = Duration::ZERO;
    let mut peak_rss_kib = 0;
    let converged_at = loop {
        // Only pods the kubelet has not run yet (no container statuses) are copied out.
        let pods = api.objects_where("", "pods", |p| {
            p.pointer("/status/containerStatuses").is_none()
        });
        for (n, pod) in pods.into_iter().enumerate() {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if !handled.insert(uid) {
                continue;
            }
            if n % 64 == 0 {
                // The API server shares this runtime: let it serve the controller.
                tokio::task::yield_now().await;
            }
            last_pod_at = started.elapsed();
            let (node, images) = pod_pulled(&api, &pod);
            let list = node_images.entry(node.clone()).or_insert_with(|| {
                vec![json!({"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 300000})]
            });
            list.extend(
                images
                    .iter()
                    .map(|i| json!({"names": [i], "sizeBytes": 50_000_000})),
            );
            let _ = api.merge_status_direct("", "v1", "nodes", "", &node, &json!({"images": list}));
        }
        peak_rss_kib = peak_rss_kib.max(proc_status(pid, "VmRSS:").unwrap_or(0));
        let done = api
            .objects("cache.techsquad.rocks", "prefetches")
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "SUCCEEDED"
                    && p["status"]["ready"] == expected_pairs
                    && p["status"]["total"] == expected_pairs
            })
            .count();
        if done == args.prefetches {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(args.timeout_seconds) {
            anyhow::bail!(
                "not converged after {} s: {done} of {} Prefetches correct",
                args.timeout_seconds,
                args.prefetches
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!();
    println!(
        "converged: every prefetch pod created after {:.1} s; every status correct (SUCCEEDED, {expected_pairs}/{expected_pairs}) after {:.1} s",
        last_pod_at.as_secs_f64(),
        converged_at.as_secs_f64()
    );
    println!(
        "prefetch pods created: {} (one per targeted node and Prefetch: {})",
        handled.len(),
        per_zone * args.prefetches
    );
    print_counts(
        "API requests by the controller from Prefetches created to converged",
        &api.request_counts(),
    );

    // Steady state: nothing changes but node heartbeats (every node, every 10 s).
    api.reset_request_counts();
    let reconciles_before = metric(
        &controller.metrics().await?,
        "prefetch_controller_reconciles_total",
    );
    let window = Instant::now();
    let mut beats = 0usize;
    while window.elapsed() < Duration::from_secs(args.steady_seconds) {
        let at = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        for z in 0..args.zones {
            for i in 0..per_zone {
                let _ = api.merge_status_direct("", "v1", "nodes", "", &node_name(z, i), &json!({"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": at}]}));
                beats += 1;
            }
        }
        peak_rss_kib = peak_rss_kib.max(proc_status(pid, "VmRSS:").unwrap_or(0));
        tokio::time::sleep(
            Duration::from_secs(10)
                .min(Duration::from_secs(args.steady_seconds).saturating_sub(window.elapsed())),
        )
        .await;
    }
    let reconciles_after = metric(
        &controller.metrics().await?,
        "prefetch_controller_reconciles_total",
    );
    let counts = api.request_counts();
    let lists: u64 = counts
        .iter()
        .filter(|(k, _)| k.verb == "list")
        .map(|(_, n)| *n)
        .sum();
    println!();
    println!(
        "steady state: {} s with {beats} node heartbeats and no other change",
        args.steady_seconds
    );
    print_counts(
        "API requests by the controller in the steady-state window",
        &counts,
    );
    println!("LIST requests in the steady-state window: {lists} (target 0)");
    println!(
        "reconciles in the steady-state window: {}",
        reconciles_after - reconciles_before
    );
    let peak = proc_status(pid, "VmHWM:").unwrap_or(peak_rss_kib);
    println!(
        "controller peak RSS: {:.1} MiB (VmHWM; target < 150 MiB)",
        peak as f64 / 1024.0
    );
    Ok(())
}
