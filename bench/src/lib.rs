//! What the benchmarks share: the webhook's review workloads, and for the controller's,
//! reading a process's memory, a metric's value, and printing the test API server's request
//! counts.

pub mod workload;

use std::collections::BTreeMap;
use std::path::Path;

use prefetch_tests::apiserver::{RequestKey, TestApiServer};
use prefetch_tests::binaries::ControllerProcess;
use serde_json::{Value, json};

/// The kubelet, in process: every image of prefetch pod `pod` pulled, the pod Succeeded (the
/// write is not counted as a request). Returns the pod's node and its images, for the caller
/// to list on the node.
pub fn pod_pulled(api: &TestApiServer, pod: &Value) -> (String, Vec<String>) {
    let meta = &pod["metadata"];
    let node = meta["annotations"]["cache.techsquad.rocks/node"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let containers = pod["spec"]["containers"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({"name": c["name"], "image": c["image"],
                "imageID": format!("{}@sha256:{:064x}", c["image"].as_str().unwrap_or(""), 1),
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}})
        })
        .collect();
    let _ = api.merge_status_direct(
        "",
        "v1",
        "pods",
        meta["namespace"].as_str().unwrap_or(""),
        meta["name"].as_str().unwrap_or(""),
        &json!({"phase": "Succeeded", "containerStatuses": statuses}),
    );
    let images = containers
        .iter()
        .filter_map(|c| c["image"].as_str().map(String::from))
        .collect();
    (node, images)
}

/// The workload the controller benchmarks prefetch: namespace `shop`, Deployment `web`
/// (label `app: web`) running `images`, created in process (no request is counted).
pub fn create_web(api: &TestApiServer, images: &[&str]) -> anyhow::Result<()> {
    api.create_direct(
        "",
        "v1",
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    )?;
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    api.create_direct("apps", "v1", "deployments", json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}
    }))?;
    Ok(())
}

/// The real controller, alone (no leader election), creating at most `creates_per_second`
/// prefetch pods per second; `extra` flags are added.
pub async fn start_controller(
    kubeconfig: &Path,
    creates_per_second: f64,
    extra: &[&str],
) -> anyhow::Result<ControllerProcess> {
    let rate = creates_per_second.to_string();
    let mut args = vec![
        "--leader-elect",
        "false",
        "--noop-image",
        "x",
        "--max-pod-creates-per-second",
        &rate,
    ];
    args.extend_from_slice(extra);
    ControllerProcess::start(kubeconfig, &args, "controller").await
}

/// A `kB` field of `/proc/<pid>/status` (VmRSS, VmHWM), if readable.
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The sum of every sample whose line starts with `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prints request counts: the total, by verb, and by verb and resource.
pub fn print_counts(title: &str, counts: &BTreeMap<RequestKey, u64>) {
    let mut by_verb: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, n) in counts {
        *by_verb.entry(key.verb).or_default() += n;
    }
    println!("{title}: {} requests", counts.values().sum::<u64>());
    println!("  by verb: {by_verb:?}");
    for (key, n) in counts {
        println!("    {:<7} {:<28} {n}", key.verb, key.resource);
    }
}
