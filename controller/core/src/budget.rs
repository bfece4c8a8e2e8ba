//! Registry budgets (`--registry-budget docker.io=90/6h`; design: docs/src/design.md#the-reconciler):
//! at most so many pulls per period from a registry host, across all Prefetches. Docker Hub
//! allows an anonymous IPv4 address 10 pulls an hour, and a cluster behind one NAT shares
//! that; a prefetcher that ignores it spends the pods' allowance on its own pulls.
//!
//! A pull is one image in one prefetch pod created (what the registry counts: one manifest
//! request per node and image). The window slides: a pull counts for `period` after the pod
//! was created. A pod's images from a spent host wait, with the reason [`REASON`], until a
//! pull frees up; images of other hosts go ahead.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use prefetch_common::images::ImageRef;

/// The status reason of a (node, image) pair that waits for its registry's budget.
pub const REASON: &str = "RegistryBudget";

/// One `--registry-budget` entry: `host=pulls/period`, period in s, m, h or d.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryBudget {
    /// Registry host as image references name it after normalization (`docker.io`,
    /// `registry.local:5000`).
    pub host: String,
    pub pulls: usize,
    pub period: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error("{0:?}: expected host=pulls/period, such as docker.io=90/6h")]
    Shape(String),
    #[error("{0:?}: pulls must be a whole number of at least 1")]
    Pulls(String),
    #[error("{0:?}: period must be a whole number of s, m, h or d, at least 1s (such as 6h)")]
    Period(String),
}

impl FromStr for RegistryBudget {
    type Err = BudgetError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let shape = || BudgetError::Shape(entry.to_string());
        let (host, rest) = entry.split_once('=').ok_or_else(shape)?;
        let (pulls, period) = rest.split_once('/').ok_or_else(shape)?;
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ']) {
            return Err(shape());
        }
        let pulls = pulls
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| BudgetError::Pulls(entry.to_string()))?;
        let period =
            parse_period(period.trim()).ok_or_else(|| BudgetError::Period(entry.to_string()))?;
        // Image references name Docker Hub as docker.io once normalized.
        let host = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                "docker.io".to_string()
            }
            _ => host,
        };
        Ok(Self {
            host,
            pulls,
            period,
        })
    }
}

impl fmt::Display for RegistryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}s", self.host, self.pulls, self.period.as_secs())
    }
}

fn parse_period(text: &str) -> Option<Duration> {
    let split = text.len().checked_sub(1)?;
    let (number, unit) = text.split_at(split);
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return None,
    };
    let n: u64 = number.parse().ok().filter(|n| *n >= 1)?;
    Some(Duration::from_secs(n.checked_mul(seconds)?))
}

/// The registry host of a normalized image reference (`None` when it does not parse).
pub fn host_of(image: &str) -> Option<String> {
    ImageRef::parse(image).ok().map(|r| r.domain)
}

/// The pulls each budgeted host took within its period: the controller keeps one, for every
/// Prefetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetLedger {
    budgets: BTreeMap<String, RegistryBudget>,
    /// host -> when each of its pulls within the period started, oldest first.
    spent: BTreeMap<String, VecDeque<Timestamp>>,
}

impl BudgetLedger {
    pub fn new(budgets: impl IntoIterator<Item = RegistryBudget>) -> Self {
        Self {
            budgets: budgets.into_iter().map(|b| (b.host.clone(), b)).collect(),
            spent: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty()
    }

    pub fn budgets(&self) -> impl Iterator<Item = &RegistryBudget> {
        self.budgets.values()
    }

    /// Forgets pulls older than their host's period.
    fn expire(&mut self, now: Timestamp) {
        for (host, pulls) in &mut self.spent {
            let Some(budget) = self.budgets.get(host) else {
                continue;
            };
            while pulls
                .front()
                .is_some_and(|at| window_end(*at, budget.period) <= now)
            {
                pulls.pop_front();
            }
        }
    }

    /// What each budgeted host has left now, for one reconcile to spend from.
    pub fn allowance(&mut self, now: Timestamp) -> Allowance {
        self.expire(now);
        let remaining = self
            .budgets
            .values()
            .map(|b| {
                let spent = self.spent.get(&b.host).map_or(0, VecDeque::len);
                (b.host.clone(), b.pulls.saturating_sub(spent))
            })
            .collect();
        Allowance {
            remaining,
            ..Allowance::default()
        }
    }

    /// Records the pulls an allowance gave out, as started at `now`.
    pub fn spend(&mut self, allowance: &Allowance, now: Timestamp) {
        for (host, n) in &allowance.spent {
            let pulls = self.spent.entry(host.clone()).or_default();
            pulls.extend(std::iter::repeat_n(now, *n));
        }
    }

    /// Pulls `host` has left now (`None`: no budget).
    pub fn remaining(&mut self, host: &str, now: Timestamp) -> Option<usize> {
        self.expire(now);
        let budget = self.budgets.get(host)?;
        let spent = self.spent.get(host).map_or(0, VecDeque::len);
        Some(budget.pulls.saturating_sub(spent))
    }
}

fn window_end(at: Timestamp, period: Duration) -> Timestamp {
    let period = SignedDuration::try_from(period).unwrap_or(SignedDuration::MAX);
    at.checked_add(period).unwrap_or(Timestamp::MAX)
}

/// What one reconcile may spend: each budgeted host's pulls left, and what it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowance {
    remaining: BTreeMap<String, usize>,
    /// host -> pulls taken.
    pub spent: BTreeMap<String, usize>,
}

impl Allowance {
    /// Takes a pull of `image` if its host has one left (or no budget): true when it may be
    /// pulled now.
    pub fn take(&mut self, image: &str) -> bool {
        let Some(host) = host_of(image) else {
            return true;
        };
        let Some(left) = self.remaining.get_mut(&host) else {
            return true;
        };
        if *left == 0 {
            return false;
        }
        *left -= 1;
        *self.spent.entry(host).or_default() += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn budget(entry: &str) -> RegistryBudget {
        entry.parse().unwrap()
    }

    #[test]
    fn entries_read_as_host_pulls_and_period() {
        assert_eq!(
            budget("docker.io=90/6h"),
            RegistryBudget {
                host: "docker.io".into(),
                pulls: 90,
                period: Duration::from_secs(6 * 3600)
            }
        );
        assert_eq!(
            budget("registry.local:5000=5/30s").host,
            "registry.local:5000"
        );
        assert_eq!(budget("Index.Docker.io=10/1h").host, "docker.io");
        assert_eq!(budget("ghcr.io=1/1d").period, Duration::from_secs(86_400));
        assert_eq!(budget("quay.io=7/15m").period, Duration::from_secs(900));
    }

    #[test]
    fn malformed_entries_say_what_is_expected() {
        let err = |entry: &str| entry.parse::<RegistryBudget>().unwrap_err().to_string();
        assert_eq!(
            err("docker.io"),
            "\"docker.io\": expected host=pulls/period, such as docker.io=90/6h"
        );
        assert_eq!(
            err("=1/1h"),
            "\"=1/1h\": expected host=pulls/period, such as docker.io=90/6h"
        );
        assert_eq!(
            err("docker.io/library=1/1h"),
            "\"docker.io/library=1/1h\": expected host=pulls/period, such as docker.io=90/6h"
        );
        assert_eq!(
            err("docker.io=0/1h"),
            "\"docker.io=0/1h\": pulls must be a whole number of at least 1"
        );
        assert_eq!(
            err("docker.io=x/1h"),
            "\"docker.io=x/1h\": pulls must be a whole number of at least 1"
        );
        for period in ["6", "6w", "0h", "h", "-1h", "1.5h"] {
            let entry = format!("docker.io=1/{period}");
            assert!(
                err(&entry).ends_with(
                    "period must be a whole number of s, m, h or d, at least 1s (such as 6h)"
                ),
                "{entry}"
            );
        }
    }

    #[test]
    fn an_allowance_spends_only_budgeted_hosts() {
        let mut ledger = BudgetLedger::new([budget("docker.io=2/1h")]);
        let now = t("2026-12-07T10:00:00Z");
        let mut allowance = ledger.allowance(now);
        assert!(allowance.take("docker.io/library/nginx:1.27"));
        assert!(allowance.take("ghcr.io/org/app:1"), "no budget: always");
        assert!(allowance.take("docker.io/library/redis:7"));
        assert!(!allowance.take("docker.io/library/nginx:1.27"), "spent");
        assert!(
            allowance.take("not a reference"),
            "unparsable: not ours to hold"
        );
        assert_eq!(
            allowance.spent,
            BTreeMap::from([("docker.io".to_string(), 2)])
        );
        ledger.spend(&allowance, now);
        assert_eq!(ledger.remaining("docker.io", now), Some(0));
        assert_eq!(ledger.remaining("ghcr.io", now), None);
    }

    #[test]
    fn pulls_free_up_one_period_after_they_started() {
        let mut ledger = BudgetLedger::new([budget("docker.io=2/1h")]);
        let first = t("2026-12-07T10:00:00Z");
        let mut a = ledger.allowance(first);
        assert!(a.take("docker.io/library/nginx:1.27"));
        ledger.spend(&a, first);
        let second = t("2026-12-07T10:30:00Z");
        let mut b = ledger.allowance(second);
        assert!(b.take("docker.io/library/nginx:1.27"));
        assert!(!b.take("docker.io/library/nginx:1.27"));
        ledger.spend(&b, second);
        assert_eq!(
            ledger.remaining("docker.io", t("2026-12-07T10:59:59Z")),
            Some(0)
        );
        assert_eq!(
            ledger.remaining("docker.io", t("2026-12-07T11:00:00Z")),
            Some(1)
        );
        assert_eq!(
            ledger.remaining("docker.io", t("2026-12-07T11:30:00Z")),
            Some(2)
        );
    }

    #[test]
    fn without_budgets_nothing_waits() {
        let mut ledger = BudgetLedger::new([]);
        assert!(ledger.is_empty());
        let mut allowance = ledger.allowance(t("2026-12-07T10:00:00Z"));
        for _ in 0..1000 {
            assert!(allowance.take("docker.io/library/nginx:1.27"));
        }
        assert!(allowance.spent.is_empty());
    }
}
