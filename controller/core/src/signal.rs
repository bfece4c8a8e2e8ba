//! The rollout signal a round acts on: the newest the webhook wrote (its `prefetch-images` and
//! `prefetch-requested-at` annotations) on a workload the Prefetch selects.

use jiff::Timestamp;
use std::collections::BTreeSet;

use prefetch_common::annotations::{Signal, rollout_signal};
use prefetch_common::owner::WorkloadRef;
use prefetch_common::{Prefetch, WorkloadKind};

use crate::workload::{Workload, selects_workload};

/// The newest rollout signal among the selected workloads (webhook annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSignal {
    pub workload: WorkloadRef,
    pub images: Vec<String>,
    pub requested_at: Timestamp,
    /// The images of the other selected workloads' signals that are newer than the last one
    /// recorded: the round owes them too. Marking the newest signal prefetched releases the
    /// pods of every earlier one (`prefetched_through`), so a Helm upgrade that changes two
    /// workloads before one reconcile must not have the first one's images skipped.
    pub unrecorded_images: BTreeSet<String>,
}

/// The newest rollout signal (webhook annotations) among the workloads `prefetch` selects,
/// with the images of the others not recorded yet (newer than `recorded`, the status's
/// `last_rollout.requested_at`). Jobs carry none: their CronJob does.
pub fn newest_rollout_signal<'a>(
    prefetch: &Prefetch,
    workloads: impl IntoIterator<Item = Workload<'a>>,
    recorded: Option<Timestamp>,
) -> Option<RolloutSignal> {
    let mut signals: Vec<(WorkloadRef, Signal)> = workloads
        .into_iter()
        .filter(|w| w.kind != WorkloadKind::Job && selects_workload(prefetch, w))
        .filter_map(|w| {
            let signal = rollout_signal(w.meta.annotations.as_ref())?;
            let workload = WorkloadRef {
                kind: w.kind,
                name: w.meta.name.clone().unwrap_or_default(),
            };
            Some((workload, signal))
        })
        .collect();
    signals.sort_by_key(|(_, signal)| signal.requested_at);
    let (workload, newest) = signals.pop()?;
    let unrecorded_images = signals
        .into_iter()
        .filter(|(_, s)| recorded.is_none_or(|seen| s.requested_at > seen))
        .flat_map(|(_, s)| s.images)
        .collect();
    Some(RolloutSignal {
        workload,
        images: newest.images,
        requested_at: newest.requested_at,
        unrecorded_images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use prefetch_common::annotations::{PREFETCH_IMAGES, PREFETCH_REQUESTED_AT};
    use serde_json::{Value, json};

    fn prefetch(kinds: Option<Value>) -> Prefetch {
        let mut spec = json!({"filter_by_labels": {"app": "nginx"}});
        if let Some(kinds) = kinds {
            spec["kinds"] = kinds;
        }
        let mut p = Prefetch::new("p", serde_json::from_value(spec).unwrap());
        p.metadata.namespace = Some("default".into());
        p
    }

    fn object<K: serde::de::DeserializeOwned>(name: &str, at: &str, images: &str) -> K {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default",
            "labels": {"app": "nginx"},
            "annotations": {PREFETCH_IMAGES: images, PREFETCH_REQUESTED_AT: at}}}))
        .unwrap()
    }

    #[test]
    fn the_newest_signal_of_any_kind_wins() {
        let deployment: Deployment = object(
            "a",
            "2026-11-22T10:00:00Z",
            r#"["docker.io/library/nginx:1"]"#,
        );
        let daemon_set: DaemonSet = object(
            "agent",
            "2026-11-22T10:05:00Z",
            r#"["docker.io/library/redis:7"]"#,
        );
        let broken: Deployment = object("c", "not a time", "[]");
        let workloads = || {
            [
                Workload::from(&deployment),
                Workload::from(&daemon_set),
                Workload::from(&broken),
            ]
        };
        let signal = newest_rollout_signal(&prefetch(None), workloads(), None).unwrap();
        assert_eq!(signal.workload.to_string(), "DaemonSet/agent");
        assert_eq!(signal.images, ["docker.io/library/redis:7"]);
        // A kind the Prefetch does not select brings no signal.
        let deployments_only = prefetch(Some(json!(["Deployment"])));
        let signal = newest_rollout_signal(&deployments_only, workloads(), None).unwrap();
        assert_eq!(signal.workload.to_string(), "Deployment/a");
    }

    #[test]
    fn a_cronjob_signals_and_its_jobs_do_not() {
        let cron_job: CronJob = object("report", "2026-11-22T10:00:00Z", r#"["r:2"]"#);
        let job: Job = object("report-29431260", "2026-11-22T11:00:00Z", r#"["r:3"]"#);
        let signal = newest_rollout_signal(
            &prefetch(None),
            [Workload::from(&cron_job), Workload::from(&job)],
            None,
        )
        .unwrap();
        assert_eq!(signal.workload.to_string(), "CronJob/report");
    }

    #[test]
    fn signals_not_recorded_yet_are_owed_with_the_newest() {
        let web: Deployment = object("web", "2026-11-22T10:00:00Z", r#"["web:2"]"#);
        let db: DaemonSet = object("agent", "2026-11-22T10:00:01Z", r#"["agent:2"]"#);
        let old: Deployment = object("api", "2026-11-22T09:00:00Z", r#"["api:1"]"#);
        let all = || {
            [
                Workload::from(&web),
                Workload::from(&db),
                Workload::from(&old),
            ]
        };
        let recorded = Some("2026-11-22T09:30:00Z".parse().unwrap());
        let signal = newest_rollout_signal(&prefetch(None), all(), recorded).unwrap();
        assert_eq!(signal.workload.to_string(), "DaemonSet/agent");
        assert_eq!(
            signal.unrecorded_images,
            ["web:2".to_string()].into(),
            "web's signal came after the last recorded one; api's before"
        );
        let none_recorded = newest_rollout_signal(&prefetch(None), all(), None).unwrap();
        assert_eq!(none_recorded.unrecorded_images.len(), 2);
    }
}
