//! `--registry-budget` in the shell: one ledger for the process (it outlives terms of
//! leadership), a reconcile's decision taken under it, and the metrics. The decisions are
//! `core::budget`'s.
//!
//! Reconciles run concurrently (`--concurrency`): each decides while holding the ledger, so two
//! never spend the same pull. The lock is taken only when a budget is set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use crate::core::budget::{Allowance, BudgetLedger, REASON, RegistryBudget, host_of};
use crate::core::round::RoundDecision;
use crate::shell::context::{Context, lock};
use crate::shell::metrics::RegistryLabel;

/// The process's ledger, `None` without budgets.
pub fn ledger(budgets: &[RegistryBudget]) -> Option<Arc<Mutex<BudgetLedger>>> {
    if budgets.is_empty() {
        return None;
    }
    let list: Vec<String> = budgets.iter().map(ToString::to_string).collect();
    tracing::info!(budgets = %list.join(", "), "registry budgets: prefetch pods wait while their registry's pulls for the period are spent");
    Some(Arc::new(Mutex::new(BudgetLedger::new(budgets.to_vec()))))
}

/// `decide` given what the registries have left now, its pulls recorded as spent.
pub fn decide_within(
    ctx: &Context,
    now: Timestamp,
    decide: impl FnOnce(Allowance) -> RoundDecision,
) -> RoundDecision {
    let Some(budgets) = &ctx.budgets else {
        return decide(Allowance::default());
    };
    let mut ledger = lock(budgets);
    let decision = decide(ledger.allowance(now));
    ledger.spend(&decision.allowance, now);
    for budget in ledger.budgets().cloned().collect::<Vec<_>>() {
        let left = ledger.remaining(&budget.host, now).unwrap_or(0);
        ctx.metrics
            .budgets
            .remaining
            .get_or_create(&RegistryLabel {
                registry: budget.host.clone(),
            })
            .set(i64::try_from(left).unwrap_or(i64::MAX));
    }
    decision
}

/// Publishes how many pairs of the Prefetch `uid` wait for a budget, summed over Prefetches.
pub fn publish_waits(ctx: &Context, uid: &str, decision: Option<&RoundDecision>) {
    if ctx.budgets.is_none() {
        return;
    }
    let mut waits = lock(&ctx.budget_waits);
    let mine: BTreeMap<String, usize> = decision
        .into_iter()
        .flat_map(|d| &d.waiting)
        .filter(|w| w.reason == REASON)
        .filter_map(|w| host_of(&w.image))
        .fold(BTreeMap::new(), |mut by_host, host| {
            *by_host.entry(host).or_default() += 1;
            by_host
        });
    match decision {
        Some(_) => waits.insert(uid.to_string(), mine),
        None => waits.remove(uid),
    };
    let mut total: HashMap<&str, usize> = HashMap::new();
    for by_host in waits.values() {
        for (host, n) in by_host {
            *total.entry(host.as_str()).or_default() += n;
        }
    }
    if let Some(budgets) = &ctx.budgets {
        for budget in lock(budgets).budgets() {
            let waiting = total.get(budget.host.as_str()).copied().unwrap_or(0);
            ctx.metrics
                .budgets
                .waiting
                .get_or_create(&RegistryLabel {
                    registry: budget.host.clone(),
                })
                .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        }
    }
}
