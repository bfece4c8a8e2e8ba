//! The reviews the webhook benchmarks send: realistic in size and shape, one kind per
//! endpoint path worth measuring.

use anyhow::bail;
use axum::body::Bytes;
use prefetch_tests::fixtures::{
    deployment_review, pod_review, prefetch_review, realistic_deployment, realistic_pod,
    realistic_prefetch,
};
use serde_json::{Value, json};

/// The pod workloads' Deployments: one rolling out a signalled image, one quiet.
pub const GATED_DEPLOYMENT: &str = "shop-frontend";
pub const QUIET_DEPLOYMENT: &str = "shop-cart";

/// The image the benchmark Deployments run, at `tag`.
pub fn bench_image(tag: &str) -> String {
    format!("registry.example.com/shop/frontend:{tag}")
}

/// One kind of review: the requests, and what a correct answer from the webhook looks like
/// (so the benchmark measures the path it means to). Adding a kind is one entry here.
pub struct Workload {
    pub name: &'static str,
    pub path: &'static str,
    pub about: String,
    pub bodies: Vec<Bytes>,
    /// Whether `response` of the webhook's AdmissionReview is the answer this path gives.
    pub expect: fn(&Value) -> bool,
}

impl Workload {
    pub const NAMES: [&'static str; 5] = [
        "deployment",
        "prefetch-default",
        "prefetch-validate",
        "pod-gate",
        "pod-pass",
    ];

    /// Distinct request bodies (uids differ), built before the clock starts.
    pub fn build(name: &str) -> anyhow::Result<Self> {
        const N: usize = 256;
        let bodies = |review: &dyn Fn(String) -> Value| -> anyhow::Result<Vec<Bytes>> {
            (0..N)
                .map(|i| {
                    Ok(Bytes::from(serde_json::to_vec(&review(format!(
                        "bench-{i:06}"
                    )))?))
                })
                .collect()
        };
        let (name, path, about, bodies, expect): (_, _, _, _, fn(&Value) -> bool) = match name {
            "deployment" => {
                let image = bench_image;
                let old = realistic_deployment("default", "shop-frontend", &image("2026.11.1"));
                let new = realistic_deployment("default", "shop-frontend", &image("2026.11.2"));
                (
                    "deployment",
                    "/mutate/deployment",
                    "UPDATE of a Deployment (last-applied annotation, sidecar, init container, env, probes) whose image changed, selected by a Prefetch: the path that patches",
                    bodies(&|uid| deployment_review(&uid, "UPDATE", new.clone(), old.clone()))?,
                    (|r: &Value| r.get("patch").is_some()) as fn(&Value) -> bool,
                )
            }
            "prefetch-default" => {
                let object = realistic_prefetch("default", "shop", false);
                (
                    "prefetch-default",
                    "/mutate/prefetch",
                    "CREATE of a Prefetch (managedFields, last-applied annotation, status) missing four defaulted fields: the path that patches",
                    bodies(&|uid| prefetch_review(&uid, "CREATE", object.clone(), Value::Null))?,
                    (|r: &Value| r.get("patch").is_some()) as fn(&Value) -> bool,
                )
            }
            "prefetch-validate" => {
                let old = realistic_prefetch("default", "shop", true);
                let mut new = old.clone();
                new["spec"]["retry_after"] = json!(900);
                (
                    "prefetch-validate",
                    "/validate/prefetch",
                    "UPDATE of the same Prefetch, valid: every rule checked, allowed",
                    bodies(&|uid| prefetch_review(&uid, "UPDATE", new.clone(), old.clone()))?,
                    (|r: &Value| r["allowed"] == true && r.get("status").is_none())
                        as fn(&Value) -> bool,
                )
            }
            "pod-gate" => {
                let pod = realistic_pod(
                    "default",
                    GATED_DEPLOYMENT,
                    "7d4b9c8f6",
                    &bench_image("2026.11.2"),
                );
                (
                    "pod-gate",
                    "/mutate/pod",
                    "CREATE of a pod of a ReplicaSet whose Deployment rolls out a signalled image, selected by a Prefetch with gate_rollouts, a controller leading: the path that gates",
                    bodies(&|uid| pod_review(&uid, pod.clone()))?,
                    (|r: &Value| r.get("patch").is_some()) as fn(&Value) -> bool,
                )
            }
            "pod-pass" => {
                let pod = realistic_pod(
                    "default",
                    QUIET_DEPLOYMENT,
                    "5f6d7c8b9",
                    &bench_image("2026.11.1"),
                );
                (
                    "pod-pass",
                    "/mutate/pod",
                    "CREATE of a pod of a ReplicaSet whose Deployment has no rollout signal (most pods): allowed unchanged",
                    bodies(&|uid| pod_review(&uid, pod.clone()))?,
                    (|r: &Value| r["allowed"] == true && r.get("patch").is_none())
                        as fn(&Value) -> bool,
                )
            }
            other => bail!(
                "unknown workload {other:?}; known: {}",
                Workload::NAMES.join(", ")
            ),
        };
        Ok(Self {
            name,
            path,
            about: about.to_string(),
            bodies,
            expect,
        })
    }

    pub fn kib(&self) -> f64 {
        self.bodies[0].len() as f64 / 1024.0
    }
}
