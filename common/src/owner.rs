//! Which workload a pod belongs to, from its controller owner reference: the pod gate (webhook)
//! and the gate's release (controller) must agree on it. A ReplicaSet's pods belong to its
//! Deployment and a Job's pods to its CronJob; the name tells (`<deployment>-<pod-template-hash>`,
//! `<cronjob>-<scheduled minute>`), as the workload controllers name what they make.

use crate::WorkloadKind;

/// A workload in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// A pod's controller owner reference, as written.
#[derive(Debug, Clone, Copy)]
pub struct ControllerOwner<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
}

/// The workload whose rollout made a pod with controller owner `owner` and, for a ReplicaSet's
/// pod, the `pod-template-hash` label `template_hash`; or why it has none we gate.
///
/// A Job's pod belongs to a CronJob only when the Job is named `<cronjob>-<digits>`: a Job
/// created by hand has no rollout to wait for.
pub fn rollout_workload(
    owner: ControllerOwner<'_>,
    template_hash: Option<&str>,
) -> Result<WorkloadRef, String> {
    let made = |kind, name: &str| {
        Ok(WorkloadRef {
            kind,
            name: name.to_string(),
        })
    };
    match (owner.api_version, owner.kind) {
        ("apps/v1", "ReplicaSet") => {
            let hash = template_hash
                .filter(|h| !h.is_empty())
                .ok_or("no pod-template-hash label")?;
            match name_before_suffix(owner.name, |suffix| suffix == hash) {
                Some(deployment) => made(WorkloadKind::Deployment, deployment),
                None => Err(format!(
                    "ReplicaSet {} is not named <deployment>-{hash}: not a Deployment's",
                    owner.name
                )),
            }
        }
        ("apps/v1", "StatefulSet") => made(WorkloadKind::StatefulSet, owner.name),
        ("apps/v1", "DaemonSet") => made(WorkloadKind::DaemonSet, owner.name),
        ("batch/v1", "Job") => {
            let scheduled = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            match name_before_suffix(owner.name, scheduled) {
                Some(cron_job) => made(WorkloadKind::CronJob, cron_job),
                None => Err(format!(
                    "Job {} is not named <cronjob>-<minute>: not a CronJob's",
                    owner.name
                )),
            }
        }
        (api_version, kind) => Err(format!(
            "controlled by {api_version} {kind}, not a workload that rolls out"
        )),
    }
}

/// `name` less `-<suffix>`, when the suffix passes `is_suffix` and something precedes it.
fn name_before_suffix(name: &str, is_suffix: impl Fn(&str) -> bool) -> Option<&str> {
    let (prefix, suffix) = name.rsplit_once('-')?;
    (!prefix.is_empty() && is_suffix(suffix)).then_some(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner<'a>(api_version: &'a str, kind: &'a str, name: &'a str) -> ControllerOwner<'a> {
        ControllerOwner {
            api_version,
            kind,
            name,
        }
    }

    fn workload(kind: WorkloadKind, name: &str) -> Result<WorkloadRef, String> {
        Ok(WorkloadRef {
            kind,
            name: name.into(),
        })
    }

    #[test]
    fn each_workload_controller_leads_to_its_workload() {
        let rs = owner("apps/v1", "ReplicaSet", "web-app-7d4b9c8f6");
        assert_eq!(
            rollout_workload(rs, Some("7d4b9c8f6")),
            workload(WorkloadKind::Deployment, "web-app")
        );
        let sts = owner("apps/v1", "StatefulSet", "db");
        assert_eq!(
            rollout_workload(sts, Some("db-5f6c")),
            workload(WorkloadKind::StatefulSet, "db")
        );
        let ds = owner("apps/v1", "DaemonSet", "agent");
        assert_eq!(
            rollout_workload(ds, None),
            workload(WorkloadKind::DaemonSet, "agent")
        );
        let job = owner("batch/v1", "Job", "nightly-report-29431260");
        assert_eq!(
            rollout_workload(job, None),
            workload(WorkloadKind::CronJob, "nightly-report")
        );
        assert_eq!(
            rollout_workload(owner("apps/v1", "StatefulSet", "db"), None)
                .unwrap()
                .to_string(),
            "StatefulSet/db"
        );
    }

    #[test]
    fn owners_that_are_not_a_rollout_say_why() {
        let cases = [
            (
                owner("apps/v1", "ReplicaSet", "web-abc"),
                None,
                "no pod-template-hash",
            ),
            (
                owner("apps/v1", "ReplicaSet", "web-abc"),
                Some("xyz"),
                "not a Deployment's",
            ),
            (
                owner("apps/v1", "ReplicaSet", "-abc"),
                Some("abc"),
                "not a Deployment's",
            ),
            (owner("batch/v1", "Job", "migrate"), None, "not a CronJob's"),
            (
                owner("batch/v1", "Job", "migrate-v2"),
                None,
                "not a CronJob's",
            ),
            (owner("batch/v1", "Job", "-123"), None, "not a CronJob's"),
            (
                owner("v1", "ReplicationController", "old"),
                None,
                "not a workload",
            ),
            (
                owner("apps/v1beta1", "StatefulSet", "db"),
                None,
                "not a workload",
            ),
        ];
        for (owner, hash, why) in cases {
            let err = rollout_workload(owner, hash).expect_err("no rollout workload");
            assert!(err.contains(why), "{owner:?}: {err}");
        }
    }
}
