//! The rollout signal a round acts on: the newest the webhook wrote (its `prefetch-images` and
//! `prefetch-requested-at` annotations) on a workload the Prefetch selects.

use jiff::Timestamp;
use prefetch_common::annotations::rollout_signal;
use prefetch_common::owner::WorkloadRef;
use prefetch_common::{Prefetch, WorkloadKind};

use crate::core::workload::{Workload, selects_workload};

/// The newest rollout signal among the selected workloads (webhook annotations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSignal {
    pub workload: WorkloadRef,
    pub images: Vec<String>,
    pub requested_at: Timestamp,
}

/// The newest rollout signal (webhook annotations) among the workloads `prefetch` selects.
/// Jobs carry none: their CronJob does.
pub fn newest_rollout_signal<'a>(
    prefetch: &Prefetch,
    workloads: impl IntoIterator<Item = Workload<'a>>,
) -> Option<RolloutSignal> {
    workloads
        .into_iter()
        .filter(|w| w.kind != WorkloadKind::Job && selects_workload(prefetch, w))
        .filter_map(|w| {
            let signal = rollout_signal(w.meta.annotations.as_ref())?;
            Some(RolloutSignal {
                workload: WorkloadRef {
                    kind: w.kind,
                    name: w.meta.name.clone().unwrap_or_default(),
                },
                images: signal.images,
                requested_at: signal.requested_at,
            })
        })
        .max_by_key(|s| s.requested_at)
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
        let signal = newest_rollout_signal(&prefetch(None), workloads()).unwrap();
        assert_eq!(signal.workload.to_string(), "DaemonSet/agent");
        assert_eq!(signal.images, ["docker.io/library/redis:7"]);
        // A kind the Prefetch does not select brings no signal.
        let deployments_only = prefetch(Some(json!(["Deployment"])));
        let signal = newest_rollout_signal(&deployments_only, workloads()).unwrap();
        assert_eq!(signal.workload.to_string(), "Deployment/a");
    }

    #[test]
    fn a_cronjob_signals_and_its_jobs_do_not() {
        let cron_job: CronJob = object("report", "2026-11-22T10:00:00Z", r#"["r:2"]"#);
        let job: Job = object("report-29431260", "2026-11-22T11:00:00Z", r#"["r:3"]"#);
        let signal = newest_rollout_signal(
            &prefetch(None),
            [Workload::from(&cron_job), Workload::from(&job)],
        )
        .unwrap();
        assert_eq!(signal.workload.to_string(), "CronJob/report");
    }
}
