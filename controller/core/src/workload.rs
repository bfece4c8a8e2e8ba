//! The workloads a Prefetch selects (design: docs/src/design.md#every-workload-and-every-image):
//! Deployments, StatefulSets, DaemonSets, Jobs and CronJobs, each seen as a [`Workload`]
//! (`prefetch_common::workload`): which of them a Prefetch selects, and which Jobs are finished.

use k8s_openapi::api::batch::v1::Job;
use prefetch_common::Prefetch;
use prefetch_common::labels::selects;
pub use prefetch_common::workload::Workload;

/// Whether a Job has finished (a `Complete` or `Failed` condition is true): it runs no pod
/// again, so its images are no longer wanted. A CronJob keeps its last Jobs for their history;
/// their images are the CronJob's old ones.
pub fn job_finished(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
}

/// Whether `prefetch` selects `workload`: a kind it reads (`spec.kinds`), its namespace, its
/// labels, and not being deleted.
pub fn selects_workload(prefetch: &Prefetch, workload: &Workload<'_>) -> bool {
    let selector = &prefetch.spec.filter_by_labels;
    !selector.is_empty()
        && prefetch.spec.selects_kind(workload.kind)
        && workload.meta.namespace == prefetch.metadata.namespace
        && workload.meta.deletion_timestamp.is_none()
        && selects(selector, workload.meta.labels.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::CronJob;
    use serde_json::{Value, json};

    fn template(image: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "image": image}],
                        "initContainers": [{"name": "i", "image": "busybox:1.36"}]}})
    }

    fn meta(name: &str) -> Value {
        json!({"name": name, "namespace": "default", "labels": {"app": "web"}})
    }

    #[test]
    fn a_finished_job_is_no_longer_wanted() {
        let job = |conditions: Value| -> Job {
            serde_json::from_value(
                json!({"metadata": meta("j"), "spec": {"template": template("batch:1")},
                "status": {"conditions": conditions}}),
            )
            .unwrap()
        };
        let condition = |type_: &str, status: &str| json!([{"type": type_, "status": status}]);
        assert!(!job_finished(&job(json!([]))), "running");
        assert!(!job_finished(&job(condition("Suspended", "True"))));
        assert!(!job_finished(&job(condition("Complete", "False"))));
        assert!(job_finished(&job(condition("Complete", "True"))));
        assert!(job_finished(&job(condition("Failed", "True"))));
    }

    #[test]
    fn kinds_narrow_the_selection() {
        let cron: CronJob = serde_json::from_value(json!({"metadata": meta("c"),
            "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template("r:1")}}}}))
        .unwrap();
        let prefetch = |spec: Value| {
            let mut p = Prefetch::new("p", serde_json::from_value(spec).unwrap());
            p.metadata.namespace = Some("default".into());
            p
        };
        let all = prefetch(json!({"filter_by_labels": {"app": "web"}}));
        let deployments_only =
            prefetch(json!({"filter_by_labels": {"app": "web"}, "kinds": ["Deployment"]}));
        let other_labels = prefetch(json!({"filter_by_labels": {"app": "db"}}));
        let workload = Workload::from(&cron);
        assert!(selects_workload(&all, &workload), "unset kinds: every kind");
        assert!(!selects_workload(&deployments_only, &workload));
        assert!(!selects_workload(&other_labels, &workload));
        let mut elsewhere = all.clone();
        elsewhere.metadata.namespace = Some("other".into());
        assert!(!selects_workload(&elsewhere, &workload));
    }
}
