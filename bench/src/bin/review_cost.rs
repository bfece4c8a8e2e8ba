//! review-cost: the webhook's own work per review, in process and without the network: read
//! the request, decide (the pod gate from its caches as `webhook-load` fills them), encode the
//! AdmissionReview response. Made for instruction counts,
//! which load on the machine does not disturb:
//!
//! ```sh
//! valgrind --tool=callgrind --toggle-collect='*review_cost::answer_all*' \
//!     target/release/review-cost --workloads deployment --iterations 500
//! ```
//!
//! Callgrind's total instructions divided by the reviews answered (printed) is the cost of
//! one. Without valgrind it prints the wall time per review.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use kube::core::DeserializeGuard;
use kube::runtime::watcher::Event;
use prefetch_bench::workload::{GATED_DEPLOYMENT, QUIET_DEPLOYMENT, Workload, bench_image};
use prefetch_common::WorkloadKind;
use prefetch_common::annotations::{PREFETCH_IMAGES, PREFETCH_REQUESTED_AT, rfc3339};
use prefetch_common::{Prefetch, PrefetchSpec};
use prefetch_tests::fixtures::realistic_deployment;
use prefetch_webhook::core::admission::{self, Caches};
use prefetch_webhook::core::answer::{Answer, Endpoint, MUTATE_POD};
use prefetch_webhook::core::facts::{GatingPrefetch, Prefetches, WorkloadFacts};
use prefetch_webhook::core::gate::{self, Read};
use prefetch_webhook::core::review::BadReview;
use prefetch_webhook::shell::index::{NodeNames, PrefetchIndex};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "The webhook's work per review, in process (for callgrind)")]
struct Args {
    /// Workloads to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = Workload::NAMES.map(String::from))]
    workloads: Vec<String>,
    /// Reviews answered per workload (cycling through its distinct bodies).
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The watch cache as the webhook-load benchmark fills it: a Prefetch selecting the
    // benchmark's Deployment.
    let prefetches = PrefetchIndex::default();
    prefetches.apply(Event::Init);
    let mut prefetch = Prefetch::new(
        "bench",
        PrefetchSpec {
            filter_by_labels: [("app".to_string(), "nginx".to_string())].into(),
            ..Default::default()
        },
    );
    prefetch.metadata.namespace = Some("default".into());
    prefetches.apply(Event::InitApply(DeserializeGuard(Ok(prefetch))));
    prefetches.apply(Event::InitDone);
    let nodes = NodeNames::default();
    let caches = Caches {
        prefetches: &prefetches,
        nodes: &nodes,
        min_retry_after: 30,
        leader_renewed: None,
    };
    let pods = PodCaches::new()?;
    for name in &args.workloads {
        let workload = Workload::build(name)?;
        let endpoint = if workload.path == MUTATE_POD {
            Route::Pod
        } else {
            Endpoint::ALL
                .into_iter()
                .find(|e| e.path() == workload.path)
                .map(Route::Admission)
                .ok_or_else(|| anyhow::anyhow!("no endpoint serves {}", workload.path))?
        };
        // The path measured must be the one the workload names.
        let first = answer(endpoint, &workload.bodies[0], &caches, &pods)?;
        let reply: serde_json::Value = serde_json::from_slice(&first.to_review_json()?)?;
        anyhow::ensure!(
            (workload.expect)(&reply["response"]),
            "{}: unexpected answer {reply}",
            workload.name
        );
        let started = Instant::now();
        let bytes = answer_all(&workload, endpoint, &caches, &pods, args.iterations);
        let elapsed = started.elapsed();
        println!(
            "{}: {} reviews of {:.1} KiB answered ({} response bytes), {:.1} µs each",
            workload.name,
            args.iterations,
            workload.kib(),
            bytes,
            elapsed.as_secs_f64() * 1e6 / args.iterations.max(1) as f64
        );
    }
    Ok(())
}

/// Which decision answers a workload's reviews.
#[derive(Clone, Copy)]
enum Route {
    Admission(Endpoint),
    Pod,
}

/// The pod gate's world as `webhook-load` sets it up: the gating Prefetch, the Deployment
/// rolling out a signalled image, the quiet one, and a controller leading.
struct PodCaches {
    deployments: Vec<(&'static str, WorkloadFacts)>,
}

impl PodCaches {
    fn new() -> anyhow::Result<Self> {
        let mut deployments = Vec::new();
        for (name, tag, signal) in [
            (GATED_DEPLOYMENT, "2026.11.2", true),
            (QUIET_DEPLOYMENT, "2026.11.1", false),
        ] {
            let mut d = realistic_deployment("default", name, &bench_image(tag));
            if signal {
                let annotations = &mut d["metadata"]["annotations"];
                annotations[PREFETCH_IMAGES] = json!(serde_json::to_string(&[bench_image(tag)])?);
                annotations[PREFETCH_REQUESTED_AT] = json!(rfc3339(jiff::Timestamp::now()));
            }
            let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(d)?;
            deployments.push((
                name,
                WorkloadFacts::from(prefetch_common::workload::Workload::from(&deployment)),
            ));
        }
        Ok(Self { deployments })
    }

    /// As `shell/http.rs` answers a pod review whose Deployment is in the cache.
    fn review(&self, body: &[u8]) -> Result<Answer, BadReview> {
        let pod = match gate::read(body)? {
            Read::Pod(pod) => pod,
            Read::NotForUs(uid, why) => return Ok(Answer::allow_pod(&uid, why)),
        };
        let cached = self
            .deployments
            .iter()
            .find(|(name, _)| pod.workload.as_ref().is_ok_and(|w| w.name == *name))
            .map(|(_, facts)| facts);
        let now = jiff::Timestamp::now();
        let inputs = gate::Inputs {
            workload: cached,
            live: false,
            prefetches: &BenchGate,
            leader_renewed: Some(now),
            now,
        };
        Ok(gate::answer(&pod.uid, gate::decide(&pod, &inputs)))
    }
}

/// The gating Prefetch of `webhook-load`: `bench-gate`, selecting `app: nginx`.
struct BenchGate;

impl Prefetches for BenchGate {
    fn is_synced(&self) -> bool {
        true
    }

    fn selecting_by<'l>(
        &self,
        _: &str,
        _: WorkloadKind,
        _: &dyn Fn(&str) -> Option<&'l str>,
    ) -> Vec<String> {
        Vec::new()
    }

    fn gating_by<'l>(
        &self,
        _: &str,
        _: WorkloadKind,
        label: &dyn Fn(&str) -> Option<&'l str>,
    ) -> Vec<GatingPrefetch> {
        if label("app") == Some("nginx") {
            vec![GatingPrefetch {
                name: "bench-gate".into(),
                gate_timeout: 900,
                prefetched_through: None,
            }]
        } else {
            Vec::new()
        }
    }
}

fn answer(
    route: Route,
    body: &[u8],
    caches: &Caches<'_>,
    pods: &PodCaches,
) -> Result<Answer, BadReview> {
    match route {
        Route::Admission(endpoint) => {
            admission::review(endpoint, body, caches, jiff::Timestamp::now())
        }
        Route::Pod => pods.review(body),
    }
}

/// What callgrind counts: `iterations` reviews read, decided and answered.
#[inline(never)]
fn answer_all(
    workload: &Workload,
    route: Route,
    caches: &Caches<'_>,
    pods: &PodCaches,
    iterations: usize,
) -> usize {
    let mut bytes = 0;
    for body in workload.bodies.iter().cycle().take(iterations) {
        if let Ok(answer) = answer(route, black_box(body), caches, pods)
            && let Ok(json) = answer.to_review_json()
        {
            bytes += black_box(json).len();
        }
    }
    bytes
}
