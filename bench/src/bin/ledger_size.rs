//! ledger-size: the heap the controller's pull ledger takes when every node's image list is
//! full and every pair was pulled by a prefetch pod (the full-list rule's worst case), measured
//! with a counting allocator: bytes allocated and not freed while the ledger is built.
//!
//! Image names follow a registry-like pattern; each image has one digest, as a kubelet reports
//! it (`repository@sha256:<64 hex>`); node names and uids have the shape of a cloud provider's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use prefetch_controller::core::ledger::{NodeUse, PullLedger, worth_recording};
use prefetch_controller::core::outcome::Outcome;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, counting the bytes it hands out and takes back.
// Counting allocations needs a global allocator, which only unsafe code can be.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[derive(Parser, Debug)]
#[command(about = "Heap of the pull ledger with every node's image list full")]
struct Args {
    /// Nodes, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    nodes: Vec<usize>,
    /// Prefetched images per node (each one recorded).
    #[arg(long, default_value_t = 50)]
    per_node: usize,
    /// Distinct images across the cluster.
    #[arg(long, default_value_t = 500)]
    distinct: usize,
}

fn main() {
    let args = Args::parse();
    let images: Vec<String> = (0..args.distinct)
        .map(|i| {
            format!(
                "registry.example.com/team-{}/service-{i}:v1.{}.{}",
                i % 40,
                i % 7,
                i % 13
            )
        })
        .collect();
    let digests: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let repository = image.rsplit_once(':').map_or(image.as_str(), |(r, _)| r);
            format!(
                "{repository}@sha256:{:064x}",
                i as u128 * 0x9e37_79b9_7f4a_7c15
            )
        })
        .collect();
    println!(
        "{:>6} {:>10} {:>12} {:>14}",
        "nodes", "pairs", "heap MiB", "bytes a pair"
    );
    for &nodes in &args.nodes {
        let before = LIVE.load(Ordering::Relaxed);
        let mut ledger = PullLedger::default();
        for n in 0..nodes {
            let name = format!(
                "ip-10-{}-{}-{}.eu-west-1.compute.internal",
                n / 65536,
                (n / 256) % 256,
                n % 256
            );
            let uid = format!("{n:08x}-5c1e-4d2a-9b7f-{n:012x}");
            for k in 0..args.per_node {
                let i = (n * 7 + k * 13) % args.distinct;
                let outcome = Outcome::Pulled {
                    image_id: Some(digests[i].clone()),
                };
                if worth_recording(NodeUse::Listed { full: true }, &outcome) {
                    ledger.record(&name, &uid, &images[i], &outcome);
                }
            }
        }
        let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        let pairs = ledger.len();
        println!(
            "{nodes:>6} {pairs:>10} {:>12.1} {:>14.1}",
            bytes as f64 / (1024.0 * 1024.0),
            bytes as f64 / pairs.max(1) as f64
        );
        drop(ledger);
    }
}
