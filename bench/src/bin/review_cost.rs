//! review-cost: the webhook's own work per review, in process and without the network: read
//! the request, decide, encode the AdmissionReview response. Made for instruction counts,
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
use prefetch_bench::workload::Workload;
use prefetch_common::{Prefetch, PrefetchSpec};
use prefetch_webhook::admission::{self, Caches, Endpoint};
use prefetch_webhook::index::{NodeNames, PrefetchIndex};

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
    for name in &args.workloads {
        let workload = Workload::build(name)?;
        let endpoint = Endpoint::ALL
            .into_iter()
            .find(|e| e.path() == workload.path)
            .ok_or_else(|| anyhow::anyhow!("no endpoint serves {}", workload.path))?;
        // The path measured must be the one the workload names.
        let first = admission::review(
            endpoint,
            &workload.bodies[0],
            &caches,
            jiff::Timestamp::now(),
        )?;
        let reply: serde_json::Value = serde_json::from_slice(&first.to_review_json()?)?;
        anyhow::ensure!(
            (workload.expect)(&reply["response"]),
            "{}: unexpected answer {reply}",
            workload.name
        );
        let started = Instant::now();
        let bytes = answer_all(&workload, endpoint, &caches, args.iterations);
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

/// What callgrind counts: `iterations` reviews read, decided and answered.
#[inline(never)]
fn answer_all(
    workload: &Workload,
    endpoint: Endpoint,
    caches: &Caches<'_>,
    iterations: usize,
) -> usize {
    let mut bytes = 0;
    for body in workload.bodies.iter().cycle().take(iterations) {
        let answer = admission::review(endpoint, black_box(body), caches, jiff::Timestamp::now());
        if let Ok(answer) = answer
            && let Ok(json) = answer.to_review_json()
        {
            bytes += black_box(json).len();
        }
    }
    bytes
}
