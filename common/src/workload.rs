//! A workload of any kind that rolls out or runs pods (Deployment, StatefulSet, DaemonSet, Job,
//! CronJob), seen through what both binaries read of it: its kind, its metadata and its pod
//! template (a CronJob's is its job template's). Each kind's template path is written here
//! once.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::WorkloadKind;

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

/// `From<&K>` for each kind `K`, from the kind (its `WorkloadKind` variant has the type's name)
/// and the path from the object's spec to its pod template's spec: the one place each path is
/// written.
macro_rules! workload_from {
    ($($kind:ident => |$spec:ident| $pod_spec:expr;)*) => {$(
        impl<'a> From<&'a $kind> for Workload<'a> {
            fn from(object: &'a $kind) -> Self {
                Workload {
                    kind: WorkloadKind::$kind,
                    meta: &object.metadata,
                    pod_spec: object.spec.as_ref().and_then(|$spec| $pod_spec),
                }
            }
        }
    )*};
}

workload_from! {
    Deployment => |spec| spec.template.spec.as_ref();
    StatefulSet => |spec| spec.template.spec.as_ref();
    DaemonSet => |spec| spec.template.spec.as_ref();
    Job => |spec| spec.template.spec.as_ref();
    CronJob => |spec| spec.job_template.spec.as_ref().and_then(|job| job.template.spec.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::pod_spec_images;
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
}
