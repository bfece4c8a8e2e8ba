//! rollout-gate: a Deployment rollout with and without `gate_rollouts`, on the in-process test
//! API server with the real webhook (as the API server's mutating admission) and the real
//! controller; the benchmark plays the Deployment controller, the scheduler and the kubelets
//! (`prefetch_tests::rollout`).
//!
//! Pull-time model: an image a node does not list in `status.images` takes `--pull-seconds` to
//! pull, from when the first pod needing it (a prefetch pod or a workload pod) lands there; a
//! pull in progress is shared by the pods waiting on it; then the node lists the image. A
//! workload pod that starts on a node lacking one of its images "starts cold" (it waits on the
//! pull after it was scheduled). The new image is on no node before the rollout.
//!
//! Rollout duration: from the Deployment's image change to the last new pod Running. Without
//! the gate it is about one pull (every node pulls at once, cold); with it, one pull plus the
//! controller's reaction (the gate lifts when the round records the rollout prefetched).

use std::time::{Duration, Instant};

use clap::Parser;
use prefetch_tests::rollout::{GateRig, RigOptions};

#[derive(Parser, Debug)]
#[command(about = "A rollout with and without the scheduling gate, with a simulated kubelet")]
struct Args {
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 6)]
    replicas: usize,
    /// Seconds to pull an image a node lacks.
    #[arg(long, default_value_t = 3.0)]
    pull_seconds: f64,
    /// Runs per mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

struct Run {
    duration: Duration,
    cold: usize,
    gated: usize,
}

async fn run(args: &Args, gate: bool, i: usize) -> anyhow::Result<Run> {
    let options = RigOptions {
        gate,
        workers: args.workers,
        replicas: args.replicas,
        pull_time: Duration::from_secs_f64(args.pull_seconds),
        ..Default::default()
    };
    let name = format!("rollout-{}-{i}", if gate { "gated" } else { "open" });
    let rig = GateRig::start(&name, options)
        .await?
        .ok_or_else(|| anyhow::anyhow!("needs the in-process test API server"))?;
    rig.until_leader_seen().await?;
    let began = Instant::now();
    let created = rig.roll_out().await?;
    let within = Duration::from_secs_f64(args.pull_seconds * 4.0 + 60.0);
    rig.until_running(&created, within).await?;
    let duration = began.elapsed();
    let starts = rig.starts_of(&created);
    Ok(Run {
        duration,
        cold: starts.iter().filter(|s| s.cold()).count(),
        gated: starts.iter().filter(|s| s.was_gated).count(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    prefetch_tests::tls_client::install_crypto_provider();
    println!(
        "rollout-gate: {} replicas over {} workers, pull time {} s per missing image, {} run(s) per mode",
        args.replicas, args.workers, args.pull_seconds, args.runs
    );
    println!(
        "{:<8} {:>4} {:>12} {:>12} {:>12}",
        "mode", "run", "rollout s", "cold starts", "gated pods"
    );
    for gate in [false, true] {
        let mut durations = Vec::new();
        for i in 0..args.runs {
            let r = run(&args, gate, i).await?;
            println!(
                "{:<8} {:>4} {:>12.2} {:>12} {:>12}",
                if gate { "gated" } else { "ungated" },
                i + 1,
                r.duration.as_secs_f64(),
                format!("{}/{}", r.cold, args.replicas),
                r.gated
            );
            durations.push(r.duration.as_secs_f64());
        }
        durations.sort_by(f64::total_cmp);
        println!(
            "{:<8} median rollout {:.2} s (min {:.2}, max {:.2})",
            if gate { "gated" } else { "ungated" },
            durations[durations.len() / 2],
            durations[0],
            durations[durations.len() - 1]
        );
    }
    Ok(())
}
