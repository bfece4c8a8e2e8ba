//! seed-zones: how many pulls of each image reach the registry, with and without
//! `spec.seed.per_zone`, when each zone runs a node-local mirror (Spegel, Dragonfly).
//!
//! The real prefetch-controller runs against the in-process test API server; the benchmark
//! plays the nodes' kubelets and the mirrors. Model: a prefetch pod's pull starts when the pod
//! appears. If a node of its zone already lists the image then, the zone's mirror serves it in
//! `--mirror-seconds`; otherwise it comes from the registry in `--registry-seconds` and counts
//! as a registry pull. Then the pod succeeds and the node lists the image.
//!
//! Without seeding every node starts at once, so every node pulls from the registry; with it,
//! registry pulls per image should equal zones x per_zone.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use clap::Parser;
use prefetch_bench::{create_web, pod_pulled, start_controller};
use prefetch_tests::apiserver::TestApiServer;
use prefetch_tests::fixtures::TempDir;
use serde_json::{Value, json};

const IMAGES: [&str; 2] = [
    "registry.example.com/shop/web:2.0",
    "docker.io/envoyproxy/envoy:v1.31.0",
];

#[derive(Parser, Debug)]
#[command(about = "Registry pulls per image with and without one pull per zone first")]
struct Args {
    #[arg(long, default_value_t = 3)]
    zones: usize,
    #[arg(long, default_value_t = 10)]
    nodes_per_zone: usize,
    /// Values of spec.seed.per_zone to run; 0 runs without `seed`.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    per_zone: Vec<usize>,
    #[arg(long, default_value_t = 3.0)]
    registry_seconds: f64,
    #[arg(long, default_value_t = 0.5)]
    mirror_seconds: f64,
}

fn node(name: &str, zone: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": format!("zone-{zone}")}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// One pull in progress: the pod, when it ends, and whether the registry serves it.
struct Pull {
    pod: Value,
    ends: Instant,
}

/// What a run measured.
struct Run {
    registry_pulls: BTreeMap<String, usize>,
    mirror_pulls: usize,
    round: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    prefetch_tests::tls_client::install_crypto_provider();
    let nodes = args.zones * args.nodes_per_zone;
    println!(
        "seed-zones: {} zones x {} nodes, {} images; registry pull {} s, mirror pull {} s",
        args.zones,
        args.nodes_per_zone,
        IMAGES.len(),
        args.registry_seconds,
        args.mirror_seconds
    );
    println!(
        "{:<10} {:>24} {:>12} {:>14} {:>10}",
        "per_zone", "registry pulls per image", "expected", "mirror pulls", "round s"
    );
    for &per_zone in &args.per_zone {
        let run = run(&args, per_zone).await?;
        let per_image: Vec<String> = run.registry_pulls.values().map(usize::to_string).collect();
        let expected = if per_zone == 0 {
            nodes
        } else {
            args.zones * per_zone
        };
        println!(
            "{:<10} {:>24} {:>12} {:>14} {:>10.1}",
            if per_zone == 0 {
                "unset".to_string()
            } else {
                per_zone.to_string()
            },
            per_image.join(", "),
            expected,
            run.mirror_pulls,
            run.round.as_secs_f64()
        );
    }
    Ok(())
}

async fn run(args: &Args, per_zone: usize) -> anyhow::Result<Run> {
    let dir = TempDir::new("seed-zones")?;
    let api = TestApiServer::start().await?;
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let mut zone_of = HashMap::new();
    for zone in 0..args.zones {
        for i in 0..args.nodes_per_zone {
            let name = format!("node-{zone}-{i:02}");
            api.create_direct("", "v1", "nodes", node(&name, zone))?;
            zone_of.insert(name, zone);
        }
    }
    create_web(&api, &IMAGES)?;
    let mut spec =
        json!({"filter_by_labels": {"app": "web"}, "retry_after": 3600, "max_parallel": 1000});
    if per_zone > 0 {
        spec["seed"] = json!({"per_zone": per_zone});
    }
    let start = Instant::now();
    api.create_direct(
        "cache.techsquad.rocks",
        "v1",
        "prefetches",
        json!({
            "apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": spec
        }),
    )?;
    let _controller = start_controller(&kubeconfig, 100.0, &[]).await?;

    let mut pulls: HashMap<String, Pull> = HashMap::new();
    let mut registry_pulls: BTreeMap<String, usize> =
        IMAGES.iter().map(|i| (i.to_string(), 0)).collect();
    let mut mirror_pulls = 0;
    // (zone, image) some node of the zone lists.
    let mut mirrored: std::collections::HashSet<(usize, String)> = Default::default();
    let mut listed: HashMap<String, Vec<Value>> = HashMap::new();
    loop {
        let now = Instant::now();
        for pod in api.objects_where("", "pods", |p| {
            p.pointer("/status/containerStatuses").is_none()
        }) {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_string();
            if pulls.contains_key(&uid) {
                continue;
            }
            let node = pod["metadata"]["annotations"]["cache.techsquad.rocks/node"]
                .as_str()
                .unwrap_or("");
            let zone = zone_of.get(node).copied().unwrap_or(usize::MAX);
            let mut seconds: f64 = 0.0;
            for image in pod["spec"]["containers"].as_array().into_iter().flatten() {
                let image = image["image"].as_str().unwrap_or("").to_string();
                if mirrored.contains(&(zone, image.clone())) {
                    mirror_pulls += 1;
                    seconds = seconds.max(args.mirror_seconds);
                } else {
                    *registry_pulls.entry(image).or_default() += 1;
                    seconds = seconds.max(args.registry_seconds);
                }
            }
            let ends = now + Duration::from_secs_f64(seconds);
            pulls.insert(uid, Pull { pod, ends });
        }
        for pull in pulls.values_mut().filter(|p| p.ends <= now) {
            let (node, images) = pod_pulled(&api, &pull.pod);
            let zone = zone_of.get(&node).copied().unwrap_or(usize::MAX);
            let on_node = listed.entry(node.clone()).or_default();
            for image in images {
                mirrored.insert((zone, image.clone()));
                on_node.push(json!({"names": [image], "sizeBytes": 50_000_000}));
            }
            let _ = api.merge_status_direct(
                "",
                "v1",
                "nodes",
                "",
                &node,
                &json!({"images": on_node.clone()}),
            );
            pull.ends = now + Duration::from_secs(86_400 * 365);
        }
        let done = api
            .objects("cache.techsquad.rocks", "prefetches")
            .iter()
            .all(|p| p["status"]["phase"] == "SUCCEEDED");
        if done {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "the round never ended: {}",
            api.objects("cache.techsquad.rocks", "prefetches")[0]["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Run {
        registry_pulls,
        mirror_pulls,
        round: start.elapsed(),
    })
}
