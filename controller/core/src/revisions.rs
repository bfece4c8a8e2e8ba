//! A workload's older revisions that still run pods while a rollout is in progress (design:
//! docs/src/design.md#every-workload-and-every-image): a node that joins mid-rollout gets the old
//! revision's pods too, and they would start cold. Each is read as a workload of its owner (the
//! owner's kind and metadata, so selection and the image's source are the owner's; the revision's
//! pod template):
//! - a Deployment's ReplicaSets that want or have pods;
//! - a StatefulSet's `status.currentRevision` while it differs from `updateRevision` and still
//!   has pods;
//! - a DaemonSet's revision before its newest (the one being replaced) while some node runs
//!   one of its pods that is not of the newest. The DaemonSet's status does not say which revisions still have pods;
//!   the one a rollout replaces is the one that has them unless rollouts overlap.
//!
//! StatefulSets' and DaemonSets' revisions are ControllerRevisions, whose `data` holds the pod
//! template as the controllers wrote it (`{"spec": {"template": ...}}`).

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prefetch_common::WorkloadKind;

use crate::workload::Workload;

/// The older revisions of Deployments that still run pods, as workloads of their Deployment
/// (its kind, metadata and so selection, the ReplicaSet's pod template): while a rollout is in
/// progress a node that joins gets the old ReplicaSet's pods too, and they would start cold.
/// A ReplicaSet counts while it wants or has pods; the current one repeats the Deployment's
/// template, which costs nothing (images are de-duplicated).
pub fn deployment_revisions<'a>(
    deployments: &[&'a Deployment],
    replica_sets: &[&'a ReplicaSet],
) -> Vec<Workload<'a>> {
    let running = |rs: &ReplicaSet| {
        let wanted = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let has = rs.status.as_ref().map_or(0, |s| s.replicas);
        wanted > 0 || has > 0
    };
    // By uid, once: every reconcile joins the whole cluster's ReplicaSets to their owners.
    let by_uid: HashMap<&str, &'a Deployment> = deployments
        .iter()
        .filter_map(|d| Some((d.metadata.uid.as_deref()?, *d)))
        .collect();
    replica_sets
        .iter()
        .filter(|rs| running(rs))
        .filter_map(|rs| {
            let owner = rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")?;
            let deployment = by_uid
                .get(owner.uid.as_str())
                .filter(|d| d.metadata.namespace == rs.metadata.namespace)?;
            Some(Workload {
                kind: WorkloadKind::Deployment,
                meta: &deployment.metadata,
                pod_spec: rs.spec.as_ref()?.template.as_ref()?.spec.as_ref(),
            })
        })
        .collect()
}

/// An older revision of a StatefulSet or DaemonSet, owned: its owner's kind and metadata and
/// the revision's pod spec (parsed from the ControllerRevision).
#[derive(Debug, Clone, PartialEq)]
pub struct OlderRevision {
    pub kind: WorkloadKind,
    pub owner: ObjectMeta,
    pub pod_spec: PodSpec,
}

impl<'a> From<&'a OlderRevision> for Workload<'a> {
    fn from(revision: &'a OlderRevision) -> Self {
        Workload {
            kind: revision.kind,
            meta: &revision.owner,
            pod_spec: Some(&revision.pod_spec),
        }
    }
}

/// The older revisions of StatefulSets and DaemonSets that still run pods (see the module
/// comment), among `revisions`.
pub fn set_revisions(
    stateful_sets: &[&StatefulSet],
    daemon_sets: &[&DaemonSet],
    revisions: &[&ControllerRevision],
) -> Vec<OlderRevision> {
    let owned_by = |uid: Option<&String>| {
        let uid = uid.cloned();
        move |r: &&&ControllerRevision| {
            uid.is_some()
                && r.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        }
    };
    let mut older = Vec::new();
    for set in stateful_sets {
        let Some(name) = stateful_set_old_revision(set) else {
            continue;
        };
        let found = revisions
            .iter()
            .filter(owned_by(set.metadata.uid.as_ref()))
            .find(|r| r.metadata.name.as_deref() == Some(name));
        older.extend(
            found.and_then(|r| older_revision(WorkloadKind::StatefulSet, &set.metadata, r)),
        );
    }
    for set in daemon_sets.iter().filter(|d| daemon_set_rolling(d)) {
        let mut owned: Vec<&&ControllerRevision> = revisions
            .iter()
            .filter(owned_by(set.metadata.uid.as_ref()))
            .collect();
        owned.sort_by_key(|r| std::cmp::Reverse(r.revision));
        let replaced = owned.get(1);
        older.extend(
            replaced.and_then(|r| older_revision(WorkloadKind::DaemonSet, &set.metadata, r)),
        );
    }
    older
}

/// The revision a StatefulSet's rollout replaces, while it still has pods.
fn stateful_set_old_revision(set: &StatefulSet) -> Option<&str> {
    let status = set.status.as_ref()?;
    let current = status.current_revision.as_deref()?;
    let rolling = status
        .update_revision
        .as_deref()
        .is_some_and(|u| u != current);
    (rolling && status.current_replicas.unwrap_or(0) > 0).then_some(current)
}

/// Whether a DaemonSet's rollout is in progress: some node runs one of its pods, but not of
/// the newest revision. (Not "fewer updated than desired": that also holds for a node that
/// just joined and has no pod yet, with no older revision running anywhere.)
fn daemon_set_rolling(set: &DaemonSet) -> bool {
    set.status
        .as_ref()
        .is_some_and(|s| s.updated_number_scheduled.unwrap_or(0) < s.current_number_scheduled)
}

fn older_revision(
    kind: WorkloadKind,
    owner: &ObjectMeta,
    revision: &ControllerRevision,
) -> Option<OlderRevision> {
    Some(OlderRevision {
        kind,
        owner: owner.clone(),
        pod_spec: revision_pod_spec(revision)?,
    })
}

/// The pod spec a ControllerRevision holds (`data.spec.template.spec`); `None` when it holds
/// none readable.
pub fn revision_pod_spec(revision: &ControllerRevision) -> Option<PodSpec> {
    let spec = revision.data.as_ref()?.0.pointer("/spec/template/spec")?;
    serde_json::from_value(spec.clone()).ok()
}

/// A pod spec cut to what pulling its images reads: containers' and init containers' names
/// and images, image volumes, pull secrets and the ServiceAccount (whose pull secrets count
/// too). A watch cache keeps this of a revision, not the whole template.
pub fn for_pulls(spec: PodSpec) -> PodSpec {
    let image_only = |containers: Vec<Container>| -> Vec<Container> {
        containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                image: c.image,
                ..Default::default()
            })
            .collect()
    };
    let image_volumes = spec.volumes.map(|volumes| {
        volumes
            .into_iter()
            .filter(|v| v.image.is_some())
            .map(|v| Volume {
                name: v.name,
                image: v.image,
                ..Default::default()
            })
            .collect()
    });
    PodSpec {
        containers: image_only(spec.containers),
        init_containers: spec.init_containers.map(image_only),
        volumes: image_volumes,
        image_pull_secrets: spec.image_pull_secrets,
        service_account_name: spec.service_account_name,
        service_account: spec.service_account,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::selects_workload;
    use prefetch_common::Prefetch;
    use prefetch_common::images::pod_spec_images;
    use serde_json::{Value, json};

    fn template(image: &str) -> Value {
        json!({"spec": {"containers": [{"name": "c", "image": image}],
                        "initContainers": [{"name": "i", "image": "busybox:1.36"}]}})
    }

    fn images(workload: Workload<'_>) -> Vec<String> {
        pod_spec_images(workload.pod_spec.unwrap())
            .images
            .into_iter()
            .collect()
    }

    #[test]
    fn a_deployments_older_revisions_with_pods_are_its_workloads_too() {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-1", "labels": {"app": "web"}},
            "spec": {"selector": {}, "template": template("web:2")}}))
        .unwrap();
        let replica_set = |name: &str,
                           image: &str,
                           wanted: i32,
                           has: i32,
                           owner: &str|
         -> ReplicaSet {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default",
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                                  "uid": owner, "controller": true}]},
                "spec": {"replicas": wanted, "selector": {}, "template": template(image)},
                "status": {"replicas": has}}))
            .unwrap()
        };
        let old = replica_set("web-1", "web:1", 0, 2, "d-1");
        let older = replica_set("web-0", "web:0", 0, 0, "d-1");
        let foreign = replica_set("api-1", "api:1", 3, 3, "d-other");
        let revisions = deployment_revisions(&[&deployment], &[&old, &older, &foreign]);
        assert_eq!(
            revisions.len(),
            1,
            "scaled-down revisions and other owners' are not"
        );
        assert_eq!(revisions[0].source(), "Deployment/web");
        assert_eq!(
            images(revisions[0]),
            ["docker.io/library/busybox:1.36", "docker.io/library/web:1"]
        );
        // Selected as the Deployment is: by its labels.
        let prefetch = {
            let mut p = Prefetch::new(
                "p",
                serde_json::from_value(json!({"filter_by_labels": {"app": "web"}})).unwrap(),
            );
            p.metadata.namespace = Some("default".into());
            p
        };
        assert!(selects_workload(&prefetch, &revisions[0]));
    }

    fn set_meta(name: &str, uid: &str) -> Value {
        json!({"name": name, "namespace": "default", "uid": uid, "labels": {"app": "web"}})
    }

    /// A ControllerRevision `name` (number `number`) of owner `uid`, holding `image`'s template.
    /// (The owner's kind is not read: the uid tells the owner.)
    fn revision(name: &str, number: i64, uid: &str, image: &str) -> ControllerRevision {
        let mut data = json!({"spec": {"template": template(image)}});
        data["spec"]["template"]["$patch"] = json!("replace");
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                              "name": "x", "uid": uid, "controller": true}]},
            "revision": number, "data": data}))
        .unwrap()
    }

    #[test]
    fn a_statefulsets_current_revision_counts_while_it_is_being_replaced() {
        let set = |current: &str, update: &str, current_replicas: i32| -> StatefulSet {
            serde_json::from_value(json!({"metadata": set_meta("db", "s-1"),
                "spec": {"selector": {}, "serviceName": "db", "template": template("db:2")},
                "status": {"replicas": 3, "currentRevision": current, "updateRevision": update,
                           "currentReplicas": current_replicas}}))
            .unwrap()
        };
        let revisions = [
            revision("db-1", 1, "s-1", "db:1"),
            revision("db-2", 2, "s-1", "db:2"),
            revision("other-1", 1, "s-other", "other:1"),
        ];
        let refs: Vec<&ControllerRevision> = revisions.iter().collect();
        let rolling = set("db-1", "db-2", 2);
        let older = set_revisions(&[&rolling], &[], &refs);
        assert_eq!(older.len(), 1);
        let workload = Workload::from(&older[0]);
        assert_eq!(workload.source(), "StatefulSet/db");
        assert_eq!(
            images(workload),
            ["docker.io/library/busybox:1.36", "docker.io/library/db:1"]
        );
        for (done, why) in [
            (set("db-2", "db-2", 3), "rollout finished"),
            (set("db-1", "db-2", 0), "no pod of the old revision left"),
            (set("db-9", "db-2", 2), "revision not found"),
        ] {
            assert!(set_revisions(&[&done], &[], &refs).is_empty(), "{why}");
        }
    }

    #[test]
    fn a_daemonsets_replaced_revision_counts_while_the_rollout_runs() {
        let set = |updated: i32, desired: i32| -> DaemonSet {
            serde_json::from_value(json!({"metadata": set_meta("agent", "d-1"),
                "spec": {"selector": {}, "template": template("agent:3")},
                "status": {"desiredNumberScheduled": desired, "updatedNumberScheduled": updated,
                           "currentNumberScheduled": desired, "numberMisscheduled": 0,
                           "numberReady": 0}}))
            .unwrap()
        };
        let revisions = [
            revision("agent-a", 1, "d-1", "agent:1"),
            revision("agent-c", 3, "d-1", "agent:3"),
            revision("agent-b", 2, "d-1", "agent:2"),
        ];
        let refs: Vec<&ControllerRevision> = revisions.iter().collect();
        let older = set_revisions(&[], &[&set(1, 3)], &refs);
        assert_eq!(older.len(), 1, "only the revision the rollout replaces");
        assert_eq!(
            images(Workload::from(&older[0])),
            [
                "docker.io/library/agent:2",
                "docker.io/library/busybox:1.36"
            ]
        );
        assert_eq!(older[0].kind, WorkloadKind::DaemonSet);
        assert!(
            set_revisions(&[], &[&set(3, 3)], &refs).is_empty(),
            "rollout done"
        );
        let mut joined = set(3, 4);
        joined.status.as_mut().unwrap().current_number_scheduled = 3;
        assert!(
            set_revisions(&[], &[&joined], &refs).is_empty(),
            "a node joined, no pod on it yet: no rollout, no older revision"
        );
        assert!(
            set_revisions(&[], &[&set(0, 0)], &refs).is_empty(),
            "no node wanted"
        );
        let only_one = [revision("agent-c", 3, "d-1", "agent:3")];
        let refs: Vec<&ControllerRevision> = only_one.iter().collect();
        assert!(
            set_revisions(&[], &[&set(1, 3)], &refs).is_empty(),
            "nothing older"
        );
    }

    #[test]
    fn a_revision_is_kept_as_its_images() {
        let spec: PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "c", "image": "web:1", "env": [{"name": "A", "value": "b"}],
                            "resources": {"limits": {"cpu": "1"}}}],
            "volumes": [{"name": "w", "image": {"reference": "weights:1"}},
                        {"name": "tmp", "emptyDir": {}}],
            "serviceAccountName": "web"}))
        .unwrap();
        let slim = for_pulls(spec.clone());
        assert_eq!(pod_spec_images(&slim), pod_spec_images(&spec));
        assert_eq!(
            serde_json::to_value(&slim).unwrap(),
            json!({"containers": [{"name": "c", "image": "web:1"}],
                   "volumes": [{"name": "w", "image": {"reference": "weights:1"}}],
                   "serviceAccountName": "web"})
        );
    }
}
