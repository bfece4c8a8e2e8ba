//! The shell around the [`PullLedger`]: what the reconciles put in it, how the planner reads it
//! for the full-list rule, and the upkeep that keeps it bounded. The rules themselves are pure
//! and live in `ledger.rs` ([`worth_recording`], [`PullLedger::prune`], [`node_use`]) and
//! `fulllist.rs`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{ObjectRef, Store};
use prefetch_common::Prefetch;
use tokio_util::sync::CancellationToken;

use crate::core::fulllist::{counts_present, is_full};
use crate::core::ledger::{NodeUse, node_use, worth_recording};
use crate::core::round::Observed;
use crate::shell::context::{Context, lock};

/// How often the ledger drops what can no longer matter (nodes gone, lists no longer full,
/// images no Prefetch wants). A stale entry meanwhile costs memory only: lookups check the
/// node's uid, and the rule reads records only on full lists.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// How many images a *cached* node listed. `slim_node` folds a node's `status.images` into one
/// entry holding every name, and keeps the number of entries the kubelet listed in that entry's
/// `sizeBytes` (no other field holds it, and the real sizes are not needed).
pub fn cached_listed(node: &Node) -> usize {
    node.status
        .as_ref()
        .and_then(|s| s.images.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.size_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

fn uid(node: &Node) -> &str {
    node.metadata.uid.as_deref().unwrap_or("")
}

/// How the ledger treats a cached node.
fn use_of(ctx: &Context, node: Option<&Node>, uid: &str) -> NodeUse {
    let taint = ctx.warmup.as_ref().map(|w| w.taint.as_str());
    node_use(node, uid, taint, |n| {
        is_full(cached_listed(n), ctx.node_status_max_images)
    })
}

/// Whether `image`, which the cached `node` does not list, counts as present there by the
/// full-list rule, for `prefetch` (whose status holds the digests it last saw).
pub fn assumed_present(ctx: &Context, prefetch: &Prefetch, node: &Node, image: &str) -> bool {
    if !is_full(cached_listed(node), ctx.node_status_max_images) {
        return false;
    }
    let known = prefetch
        .status
        .as_ref()
        .and_then(|s| s.digests.get(image))
        .map(String::as_str);
    let ledger = lock(&ctx.ledger);
    let name = node.metadata.name.as_deref().unwrap_or("");
    counts_present(ledger.get(name, uid(node), image), known)
}

/// Puts the outcomes a reconcile observed in the ledger, by [`worth_recording`]. When one on a
/// warming node went in, wakes the warm loop, and every Prefetch: another may be waiting for
/// this node to be free of our pod, and goes now rather than at its next poll.
pub fn record_outcomes(ctx: &Context, observed: &[Observed]) {
    let mut warming = false;
    {
        let mut ledger = lock(&ctx.ledger);
        for o in observed {
            let node = ctx.nodes.get(&ObjectRef::new(&o.node));
            let Some(node) = node.as_deref() else {
                continue;
            };
            let node_use = use_of(ctx, Some(node), uid(node));
            if worth_recording(node_use, &o.outcome) {
                ledger.record(&o.node, uid(node), &o.image, &o.outcome);
                warming |= node_use == NodeUse::Warming;
            }
        }
        ctx.metrics.warmup.ledger_pairs.set(ledger.len() as i64);
    }
    if warming {
        ctx.warm_wake.notify_one();
        let _ = ctx.reconcile_all.try_send(());
    }
}

/// One pruning pass over the ledger, from the caches.
pub fn prune(ctx: &Context, prefetches: &Store<Prefetch>) {
    // What some Prefetch wants: the images of its last plan, as its status holds them.
    let prefetches = prefetches.state();
    let wanted: HashSet<&str> = prefetches
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| s.images.iter().map(String::as_str))
        .collect();
    let mut ledger = lock(&ctx.ledger);
    let before = ledger.len();
    ledger.prune(
        |name, uid| use_of(ctx, ctx.nodes.get(&ObjectRef::new(name)).as_deref(), uid),
        |image| wanted.contains(image),
    );
    if ledger.len() != before {
        tracing::debug!(
            dropped = before - ledger.len(),
            kept = ledger.len(),
            "pruned the pull ledger"
        );
    }
    ctx.metrics.warmup.ledger_pairs.set(ledger.len() as i64);
}

/// Prunes every [`PRUNE_EVERY`] until `stop`, once the Prefetch cache has synced (on a
/// half-filled one, images some Prefetch wants would look unwanted).
pub async fn upkeep(ctx: Arc<Context>, prefetches: Store<Prefetch>, stop: CancellationToken) {
    if !crate::shell::context::prefetches_synced(&prefetches, &stop).await {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => prune(&ctx, &prefetches),
        }
    }
}
