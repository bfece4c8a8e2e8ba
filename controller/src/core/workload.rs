//! The workloads a Prefetch selects (DESIGN.md section 12): Deployments, StatefulSets,
//! DaemonSets, Jobs and CronJobs, each seen through what a selection and a plan read of it:
//! its kind, its metadata and its pod template (a CronJob's is its job template's).

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prefetch_common::labels::selects;
use prefetch_common::{Prefetch, WorkloadKind};

/// A workload as selection and planning read it, borrowed from the object.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub kind: WorkloadKind,
    pub meta: &'a ObjectMeta,
    pub pod_spec: Option<&'a PodSpec>,
}

impl Workload<'_> {
    /// `Kind/name`, as the status and `plan -f` name an image's source.
    pub fn source(&self) -> String {
        format!(
            "{}/{}",
            self.kind.as_str(),
            self.meta.name.as_deref().unwrap_or("")
        )
    }
}

impl<'a> From<&'a Deployment> for Workload<'a> {
    fn from(d: &'a Deployment) -> Self {
        Workload {
            kind: WorkloadKind::Deployment,
            meta: &d.metadata,
            pod_spec: d.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
        }
    }
}

impl<'a> From<&'a StatefulSet> for Workload<'a> {
    fn from(s: &'a StatefulSet) -> Self {
        Workload {
            kind: WorkloadKind::StatefulSet,
            meta: &s.metadata,
            pod_spec: s.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
        }
    }
}

impl<'a> From<&'a DaemonSet> for Workload<'a> {
    fn from(d: &'a DaemonSet) -> Self {
        Workload {
            kind: WorkloadKind::DaemonSet,
            meta: &d.metadata,
            pod_spec: d.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
        }
    }
}

impl<'a> From<&'a Job> for Workload<'a> {
    fn from(j: &'a Job) -> Self {
        Workload {
            kind: WorkloadKind::Job,
            meta: &j.metadata,
            pod_spec: j.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
        }
    }
}

impl<'a> From<&'a CronJob> for Workload<'a> {
    fn from(c: &'a CronJob) -> Self {
        Workload {
            kind: WorkloadKind::CronJob,
            meta: &c.metadata,
            pod_spec: c
                .spec
                .as_ref()
                .and_then(|s| s.job_template.spec.as_ref())
                .and_then(|s| s.template.spec.as_ref()),
        }
    }
}

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
    use prefetch_common::images::pod_spec_images;
    use serde_json::{Value, json};

    fn template(image: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "image": image}],
                        "initContainers": [{"name": "i", "image": "busybox:1.36"}]}})
    }

    fn meta(name: &str) -> Value {
        json!({"name": name, "namespace": "default", "labels": {"app": "web"}})
    }

    fn images(workload: Workload<'_>) -> Vec<String> {
        pod_spec_images(workload.pod_spec.unwrap())
            .images
            .into_iter()
            .collect()
    }

    #[test]
    fn each_kind_reads_its_pod_template() {
        let deployment: Deployment = serde_json::from_value(json!({"metadata": meta("d"),
            "spec": {"selector": {}, "template": template("web:1")}}))
        .unwrap();
        let stateful: StatefulSet = serde_json::from_value(json!({"metadata": meta("s"),
            "spec": {"selector": {}, "serviceName": "s", "template": template("db:1")}}))
        .unwrap();
        let daemon: DaemonSet = serde_json::from_value(json!({"metadata": meta("a"),
            "spec": {"selector": {}, "template": template("agent:1")}}))
        .unwrap();
        let job: Job = serde_json::from_value(json!({"metadata": meta("j"),
            "spec": {"template": template("batch:1")}}))
        .unwrap();
        let cron: CronJob = serde_json::from_value(json!({"metadata": meta("c"),
            "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template("report:1")}}}}))
        .unwrap();
        let busybox = "docker.io/library/busybox:1.36".to_string();
        for (workload, image, source) in [
            (Workload::from(&deployment), "web:1", "Deployment/d"),
            (Workload::from(&stateful), "db:1", "StatefulSet/s"),
            (Workload::from(&daemon), "agent:1", "DaemonSet/a"),
            (Workload::from(&job), "batch:1", "Job/j"),
            (Workload::from(&cron), "report:1", "CronJob/c"),
        ] {
            assert_eq!(workload.source(), source);
            let mut expected = vec![busybox.clone(), format!("docker.io/library/{image}")];
            expected.sort();
            assert_eq!(
                images(workload),
                expected,
                "{source}: containers and init containers"
            );
        }
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
