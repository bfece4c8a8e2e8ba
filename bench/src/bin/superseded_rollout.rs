//! superseded-rollout: two gated rollouts of one Deployment within a second (`set image` v2,
//! then v3 before v2's pulls end), on the in-process test API server with the real webhook
//! (as the API server's mutating admission) and the real controller; the benchmark plays the
//! Deployment controller, the scheduler and the kubelets (`prefetch_tests::rollout`), with the
//! pull-time model of `rollout-gate`.
//!
//! The Deployment controller's part in the second rollout is played as the real one does it:
//! the first rollout's ReplicaSet, whose pods are all unavailable (gated), is scaled down, so
//! its pods are deleted. From then on no workload wants v2, and the controller drops its
//! pulls rather than waiting for them.
//!
//! Figure: from the first `set image` to the last v3 pod Running, against one pull time, and
//! against a single rollout measured the same way.

use std::time::{Duration, Instant};

use clap::Parser;
use kube::ResourceExt;
use kube::api::DeleteParams;
use prefetch_tests::kubelet::Pull;
use prefetch_tests::rollout::{DEPLOYMENT, GateRig, RigOptions};

#[derive(Parser, Debug)]
#[command(about = "Two rollouts within a second: is the first one's pull waited for?")]
struct Args {
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Seconds to pull an image a node lacks.
    #[arg(long, default_value_t = 6.0)]
    pull_seconds: f64,
    /// Seconds between the two `set image`.
    #[arg(long, default_value_t = 0.5)]
    gap_seconds: f64,
    /// Runs per mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

const FIRST: &str = "nginx:1.28";
const SECOND: &str = "nginx:1.29";

/// Seconds from the first `set image` to every pod of the last rollout Running.
async fn run(args: &Args, superseded: bool, i: usize) -> anyhow::Result<f64> {
    let pull_time = Duration::from_secs_f64(args.pull_seconds);
    let options = RigOptions {
        gate: true,
        workers: args.workers,
        replicas: args.replicas,
        pull_time,
        ..Default::default()
    };
    let mode = if superseded { "two" } else { "one" };
    let rig = GateRig::start(&format!("superseded-{mode}-{i}"), options)
        .await?
        .ok_or_else(|| anyhow::anyhow!("needs the in-process test API server"))?;
    for worker in 1..=args.workers {
        for image in [FIRST, SECOND] {
            let image = format!("docker.io/library/{image}");
            rig.rules.set_image(
                &format!("worker-{worker}"),
                &image,
                Pull::SucceedAfter(pull_time),
            );
        }
    }
    rig.until_leader_seen().await?;
    let began = Instant::now();
    if superseded {
        rig.set_image(DEPLOYMENT, FIRST).await?;
        let first = rig.create_pods().await?;
        tokio::time::sleep(Duration::from_secs_f64(args.gap_seconds)).await;
        rig.set_image(DEPLOYMENT, SECOND).await?;
        // The real Deployment controller scales the unavailable new ReplicaSet down.
        for pod in &first {
            rig.pods()
                .delete(&pod.name_any(), &DeleteParams::default())
                .await?;
        }
    } else {
        rig.set_image(DEPLOYMENT, SECOND).await?;
    }
    let last = rig.create_pods().await?;
    let within = Duration::from_secs_f64(args.pull_seconds * 4.0 + 60.0);
    rig.until_running(&last, within).await?;
    let seconds = began.elapsed().as_secs_f64();
    let cold = rig.starts_of(&last).iter().filter(|s| s.cold()).count();
    anyhow::ensure!(cold == 0, "{cold} pod(s) of the last rollout started cold");
    Ok(seconds)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    prefetch_tests::tls_client::install_crypto_provider();
    println!(
        "superseded-rollout: {} replicas over {} workers, pull time {} s, second set image {} s after the first, {} run(s) per mode",
        args.replicas, args.workers, args.pull_seconds, args.gap_seconds, args.runs
    );
    let mut medians = Vec::new();
    for superseded in [false, true] {
        let mut runs = Vec::new();
        for i in 0..args.runs {
            let seconds = run(&args, superseded, i).await?;
            println!(
                "{:<14} run {} {:>7.2} s ({:.2}x one pull)",
                if superseded {
                    "two rollouts"
                } else {
                    "one rollout"
                },
                i + 1,
                seconds,
                seconds / args.pull_seconds
            );
            runs.push(seconds);
        }
        medians.push(median(runs));
    }
    println!(
        "median: one rollout {:.2} s ({:.2}x one pull); two rollouts {:.2} s ({:.2}x one pull)",
        medians[0],
        medians[0] / args.pull_seconds,
        medians[1],
        medians[1] / args.pull_seconds
    );
    Ok(())
}
