//! Tests of `facts`, beside it so that the decisions read on their own.

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use prefetch_common::{PrefetchSpec, PrefetchStatus, RolloutRecord};

fn t(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

#[test]
fn prefetch_facts_keep_the_selector_the_gate_and_what_was_prefetched() {
    let mut prefetch = Prefetch::new(
        "pf",
        PrefetchSpec {
            filter_by_labels: [("app".to_string(), "web".to_string())].into(),
            gate_rollouts: Some(true),
            ..Default::default()
        },
    );
    let record = RolloutRecord {
        requested_at: Some(MicroTime(t("2026-11-22T03:00:00Z"))),
        ..Default::default()
    };
    prefetch.status = Some(PrefetchStatus {
        last_rollout: Some(record.clone()),
        ..Default::default()
    });
    let facts = PrefetchFacts::of(prefetch.clone());
    assert_eq!(facts.gate_timeout, Some(900));
    assert_eq!(facts.prefetched_through, None, "not prefetched yet");
    // An earlier signal (another workload's) done while this one pulls.
    let mut earlier_done = prefetch.clone();
    earlier_done.status.as_mut().unwrap().prefetched_through =
        Some(MicroTime(t("2026-11-22T02:50:00Z")));
    assert_eq!(
        PrefetchFacts::of(earlier_done).prefetched_through,
        Some(t("2026-11-22T02:50:00Z"))
    );

    prefetch.status = Some(PrefetchStatus {
        last_rollout: Some(RolloutRecord {
            prefetched_at: Some(MicroTime(t("2026-11-22T03:01:00Z"))),
            ..record
        }),
        ..Default::default()
    });
    let facts = PrefetchFacts::of(prefetch.clone());
    assert_eq!(facts.prefetched_through, Some(t("2026-11-22T03:00:00Z")));
    let web = |key: &str| (key == "app").then_some("web");
    assert_eq!(
        facts.gating("pf", WorkloadKind::Deployment, web),
        Some(GatingPrefetch {
            name: "pf".into(),
            gate_timeout: 900,
            prefetched_through: Some(t("2026-11-22T03:00:00Z")),
        })
    );
    assert_eq!(facts.gating("pf", WorkloadKind::Deployment, |_| None), None);

    prefetch.spec.gate_rollouts = None;
    let facts = PrefetchFacts::of(prefetch);
    assert!(facts.selects_by(WorkloadKind::Deployment, web));
    assert_eq!(
        facts.gating("pf", WorkloadKind::Deployment, web),
        None,
        "does not gate"
    );
    let empty = PrefetchFacts::default();
    assert!(
        !empty.selects_by(WorkloadKind::Deployment, web),
        "an empty selector selects nothing"
    );
}

#[test]
fn a_prefetch_signals_and_gates_only_the_kinds_it_selects() {
    let spec = |kinds: Option<Vec<WorkloadKind>>| PrefetchSpec {
        filter_by_labels: [("app".to_string(), "web".to_string())].into(),
        gate_rollouts: Some(true),
        kinds,
        ..Default::default()
    };
    let web = |key: &str| (key == "app").then_some("web");
    let cron_only = PrefetchFacts::of(Prefetch::new("pf", spec(Some(vec![WorkloadKind::CronJob]))));
    assert!(!cron_only.selects_by(WorkloadKind::Deployment, web));
    assert_eq!(cron_only.gating("pf", WorkloadKind::Deployment, web), None);
    assert!(cron_only.selects_by(WorkloadKind::CronJob, web));
    assert!(cron_only.gating("pf", WorkloadKind::CronJob, web).is_some());
    let all = PrefetchFacts::of(Prefetch::new("pf", spec(None)));
    for kind in WorkloadKind::ALL {
        assert!(all.selects_by(kind, web), "{kind:?}");
        assert!(all.gating("pf", kind, web).is_some(), "{kind:?}");
    }
    let two = PrefetchFacts::of(Prefetch::new(
        "pf",
        spec(Some(vec![WorkloadKind::Deployment, WorkloadKind::Job])),
    ));
    assert!(two.selects_by(WorkloadKind::Deployment, web));
    assert!(!two.selects_by(WorkloadKind::StatefulSet, web));
    assert!(two.gating("pf", WorkloadKind::DaemonSet, web).is_none());
}
