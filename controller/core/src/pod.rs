//! The prefetch pod for one node (design: docs/src/design.md#the-prefetch-pod): one container per
//! image, each running the static `noop` binary, so the kubelet pulls the images and the pod exits.
//! An image that may have nothing to run (an artifact, see `image_volume.rs`) is mounted as an
//! image volume instead, in a container running `noop` from the noop image.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, ImageVolumeSource,
    LocalObjectReference, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    Pod, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube_core::Resource;
use prefetch_common::Prefetch;
use prefetch_common::annotations::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, PREFETCH_LABEL};
use prefetch_common::images::ImageRef;

use crate::naming::pod_name;
use crate::taint::toleration;

/// Annotation on a prefetch pod naming its node (node names can be longer than a label value).
pub const NODE_ANNOTATION: &str = "cache.techsquad.rocks/node";
/// Where the init container puts `noop`, and the volume that carries it.
pub const NOOP_DIR: &str = "/prefetch";
pub const NOOP_PATH: &str = "/prefetch/noop";
const NOOP_VOLUME: &str = "prefetch-noop";
/// Where the noop image (`--noop-image`, `FROM scratch`, see `Dockerfile.noop`) holds `noop`.
pub const NOOP_IMAGE_BINARY: &str = "/noop";
/// The init container: noop copies itself into the emptyDir (the image has nothing else, no
/// shell or `cp`).
pub const INSTALL_NOOP_COMMAND: [&str; 3] = [NOOP_IMAGE_BINARY, "--install-to", NOOP_PATH];
/// Cluster autoscaler: a prefetch pod must never keep a node from being scaled down (its
/// emptyDir volume would otherwise block eviction).
pub const SAFE_TO_EVICT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Any non-root uid works: noop needs no file but itself.
const RUN_AS: i64 = 65534;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("Prefetch has no {0} yet (not read from the API server?)")]
    MissingMetadata(&'static str),
    #[error("no images to prefetch on node {0}")]
    NoImages(String),
}

pub struct PodRequest<'a> {
    pub prefetch: &'a Prefetch,
    pub node: &'a str,
    /// Normalized references, in container order.
    pub images: &'a [String],
    /// imagePullSecrets of the selected Deployments.
    pub pull_secrets: &'a [String],
    /// Those of `images` to pull through an image volume (empty where the node has none).
    pub through_volumes: &'a BTreeSet<String>,
    /// The controller's own image, which carries `noop` (`--noop-image`).
    pub noop_image: &'a str,
    /// `--warmup-taint` (`None` when warm nodes are off): the pod tolerates exactly that.
    pub warmup_taint: Option<&'a str>,
}

/// The name of container `index` (containerStatuses report results by container name).
pub fn container_name(index: usize) -> String {
    format!("pull-{index}")
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    [
        ("cpu".to_string(), Quantity(cpu.into())),
        ("memory".to_string(), Quantity(memory.into())),
    ]
    .into()
}

fn restricted_container_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..Default::default()
    }
}

/// The spec's tolerations, plus the warmup taint's when warm nodes are on (once).
fn tolerations(spec: &[Toleration], warmup_taint: Option<&str>) -> Option<Vec<Toleration>> {
    let mut all = spec.to_vec();
    if let Some(warmup) = warmup_taint.map(toleration)
        && !all.contains(&warmup)
    {
        all.push(warmup);
    }
    (!all.is_empty()).then_some(all)
}

/// The prefetch pod for one node: one container per image, each running `noop` from the
/// emptyDir the init container fills, pinned to the node, owned by the Prefetch.
pub fn prefetch_pod(req: &PodRequest<'_>) -> Result<Pod, PodError> {
    let meta = req.prefetch.meta();
    let name = meta
        .name
        .as_deref()
        .ok_or(PodError::MissingMetadata("name"))?;
    let namespace = meta
        .namespace
        .as_deref()
        .ok_or(PodError::MissingMetadata("namespace"))?;
    let uid = meta
        .uid
        .as_deref()
        .ok_or(PodError::MissingMetadata("uid"))?;
    if req.images.is_empty() {
        return Err(PodError::NoImages(req.node.to_string()));
    }
    Ok(Pod {
        metadata: pod_metadata(name, namespace, uid, req.node),
        spec: Some(pod_spec(req)),
        status: None,
    })
}

/// Tiny: a prefetch container only runs `noop`.
fn pod_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities("1m", "4Mi")),
        limits: Some(quantities("20m", "16Mi")),
        ..Default::default()
    }
}

fn noop_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: NOOP_VOLUME.into(),
        mount_path: NOOP_DIR.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The kubelet re-pulls :latest on every start; a prefetch must refresh it too.
fn pull_policy(image: &str) -> &'static str {
    if ImageRef::parse(image).map_or(true, |r| r.pulls_always()) {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// The name of the image volume container `index` mounts.
pub fn image_volume_name(index: usize) -> String {
    format!("image-{index}")
}

/// Where a container mounts its image volume (nothing reads it: mounting is the pull).
const IMAGE_VOLUME_PATH: &str = "/prefetch-image";

/// The image volume that pulls `image` for container `index`.
fn image_volume(index: usize, image: &str) -> Volume {
    Volume {
        name: image_volume_name(index),
        image: Some(ImageVolumeSource {
            reference: Some(image.to_string()),
            pull_policy: Some(pull_policy(image).into()),
        }),
        ..Default::default()
    }
}

/// The container that pulls `image` by mounting it as image volume `index`: it runs `noop`
/// from the noop image, so nothing of `image` runs.
fn volume_container(index: usize, noop_image: &str) -> Container {
    let mut container = image_container(index, noop_image);
    container.image_pull_policy = Some("IfNotPresent".into());
    container.volume_mounts = Some(vec![
        noop_mount(true),
        VolumeMount {
            name: image_volume_name(index),
            mount_path: IMAGE_VOLUME_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ]);
    container
}

/// The container that pulls `image`: it runs `noop` and exits.
fn image_container(index: usize, image: &str) -> Container {
    Container {
        name: container_name(index),
        image: Some(image.to_string()),
        command: Some(vec![NOOP_PATH.into()]),
        image_pull_policy: Some(pull_policy(image).into()),
        resources: Some(pod_resources()),
        security_context: Some(restricted_container_context()),
        volume_mounts: Some(vec![noop_mount(true)]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The init container that copies `noop` into the emptyDir.
fn install_container(noop_image: &str) -> Container {
    Container {
        name: "install-noop".into(),
        image: Some(noop_image.into()),
        command: Some(INSTALL_NOOP_COMMAND.iter().map(|s| s.to_string()).collect()),
        image_pull_policy: Some("IfNotPresent".into()),
        resources: Some(pod_resources()),
        security_context: Some(restricted_container_context()),
        volume_mounts: Some(vec![noop_mount(false)]),
        ..Default::default()
    }
}

fn pod_metadata(prefetch: &str, namespace: &str, uid: &str, node: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(pod_name(prefetch, node)),
        namespace: Some(namespace.into()),
        labels: Some(
            [
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                (PREFETCH_LABEL.to_string(), prefetch.to_string()),
            ]
            .into(),
        ),
        annotations: Some(
            [
                (NODE_ANNOTATION.to_string(), node.to_string()),
                (SAFE_TO_EVICT_ANNOTATION.to_string(), "true".to_string()),
            ]
            .into(),
        ),
        owner_references: Some(vec![OwnerReference {
            api_version: Prefetch::api_version(&()).into_owned(),
            kind: Prefetch::kind(&()).into_owned(),
            name: prefetch.into(),
            uid: uid.into(),
            controller: Some(true),
            // Left unset: blocking owner deletion would need update on prefetches/finalizers.
            block_owner_deletion: None,
        }]),
        ..Default::default()
    }
}

fn pod_spec(req: &PodRequest<'_>) -> PodSpec {
    let spec = &req.prefetch.spec;
    let mut pull_secrets: Vec<String> = req.pull_secrets.to_vec();
    pull_secrets.sort();
    pull_secrets.dedup();
    PodSpec {
        init_containers: Some(vec![install_container(req.noop_image)]),
        containers: req
            .images
            .iter()
            .enumerate()
            .map(|(i, image)| match req.through_volumes.contains(image) {
                true => volume_container(i, req.noop_image),
                false => image_container(i, image),
            })
            .collect(),
        restart_policy: Some("Never".into()),
        active_deadline_seconds: Some(spec.pull_timeout_seconds()),
        termination_grace_period_seconds: Some(1),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
            pull_secrets
                .into_iter()
                .map(|name| LocalObjectReference { name })
                .collect()
        }),
        affinity: Some(pinned_to(req.node)),
        tolerations: tolerations(spec.tolerations.as_deref().unwrap_or(&[]), req.warmup_taint),
        priority_class_name: spec.priority_class_name.clone(),
        security_context: Some(restricted_pod_context()),
        volumes: Some(volumes(req)),
        ..Default::default()
    }
}

/// The emptyDir that carries `noop`, and an image volume per image pulled through one.
fn volumes(req: &PodRequest<'_>) -> Vec<Volume> {
    let noop = Volume {
        name: NOOP_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("1Mi".into())),
        }),
        ..Default::default()
    };
    let images = req.images.iter().enumerate();
    let through_volumes = images.filter(|(_, image)| req.through_volumes.contains(*image));
    std::iter::once(noop)
        .chain(through_volumes.map(|(i, image)| image_volume(i, image)))
        .collect()
}

/// `matchFields metadata.name In [node]`: the scheduler places the pod on that node only.
fn pinned_to(node: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.into()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn restricted_pod_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefetch_common::PrefetchSpec;
    use serde_json::{Value, json};

    fn prefetch(spec: Value) -> Prefetch {
        let mut base = json!({"filter_by_labels": {"app": "nginx"}});
        for (k, v) in spec.as_object().unwrap() {
            base[k] = v.clone();
        }
        let spec: PrefetchSpec = serde_json::from_value(base).unwrap();
        let mut p = Prefetch::new("prefetch-sample", spec);
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn build(p: &Prefetch, images: &[&str], secrets: &[&str]) -> Pod {
        let images: Vec<String> = images.iter().map(|s| s.to_string()).collect();
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        prefetch_pod(&PodRequest {
            prefetch: p,
            node: "kind-worker",
            images: &images,
            pull_secrets: &secrets,
            through_volumes: &BTreeSet::new(),
            noop_image: "kube-prefetch/noop:dev",
            warmup_taint: None,
        })
        .unwrap()
    }

    #[test]
    fn shape_follows_the_design() {
        let p = prefetch(json!({"pull_timeout": 120, "priority_class_name": "low",
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]}));
        let pod = build(
            &p,
            &[
                "docker.io/library/nginx:1.25",
                "docker.io/library/redis:latest",
            ],
            &["regcred", "other", "regcred"],
        );
        let v = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            v["metadata"]["name"],
            "prefetch-prefetch-sample-kind-worker"
        );
        assert_eq!(v["metadata"]["namespace"], "default");
        assert_eq!(
            v["metadata"]["labels"],
            json!({"app.kubernetes.io/managed-by": "prefetch-controller", "cache.techsquad.rocks/prefetch": "prefetch-sample"})
        );
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch", "name": "prefetch-sample", "uid": "uid-1", "controller": true}])
        );
        let spec = &v["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["activeDeadlineSeconds"], 120);
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["enableServiceLinks"], false);
        assert_eq!(spec["priorityClassName"], "low");
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "k", "operator": "Exists", "effect": "NoSchedule"}])
        );
        assert_eq!(
            spec["imagePullSecrets"],
            json!([{"name": "other"}, {"name": "regcred"}])
        );
        assert_eq!(
            spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["kind-worker"]}]}])
        );
        let containers = spec["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0]["name"], "pull-0");
        assert_eq!(containers[0]["image"], "docker.io/library/nginx:1.25");
        assert_eq!(containers[0]["command"], json!(["/prefetch/noop"]));
        assert_eq!(containers[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            containers[1]["imagePullPolicy"], "Always",
            ":latest is always pulled"
        );
        assert!(containers[0]["resources"]["limits"]["memory"].is_string());
        let init = &spec["initContainers"][0];
        assert_eq!(init["image"], "kube-prefetch/noop:dev");
        assert_eq!(
            init["command"],
            json!(["/noop", "--install-to", "/prefetch/noop"])
        );
        assert_eq!(
            v["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
            "true"
        );
        assert_eq!(spec["volumes"][0]["emptyDir"]["sizeLimit"], "1Mi");
    }

    #[test]
    fn tolerates_the_warmup_taint_and_nothing_more() {
        let key = crate::taint::DEFAULT_WARMUP_TAINT;
        let build = |p: &Prefetch| {
            let images = vec!["docker.io/library/nginx:1.25".to_string()];
            let pod = prefetch_pod(&PodRequest {
                prefetch: p,
                node: "kind-worker4",
                images: &images,
                pull_secrets: &[],
                through_volumes: &BTreeSet::new(),
                noop_image: "x",
                warmup_taint: Some(key),
            })
            .unwrap();
            serde_json::to_value(pod).unwrap()["spec"]["tolerations"].clone()
        };
        let warming = json!({"key": key, "operator": "Exists", "effect": "NoSchedule"});
        assert_eq!(build(&prefetch(json!({}))), json!([warming]));
        let own = json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"});
        assert_eq!(
            build(&prefetch(json!({"tolerations": [own]}))),
            json!([own, warming])
        );
        assert_eq!(
            build(&prefetch(json!({"tolerations": [warming]}))),
            json!([warming]),
            "not twice"
        );
    }

    #[test]
    fn refuses_incomplete_requests() {
        let mut p = prefetch(json!({}));
        let err = prefetch_pod(&PodRequest {
            prefetch: &p,
            node: "n",
            images: &[],
            pull_secrets: &[],
            through_volumes: &BTreeSet::new(),
            noop_image: "x",
            warmup_taint: None,
        })
        .unwrap_err();
        assert_eq!(err, PodError::NoImages("n".into()));
        p.metadata.uid = None;
        let images = vec!["docker.io/library/nginx:1".to_string()];
        let err = prefetch_pod(&PodRequest {
            prefetch: &p,
            node: "n",
            images: &images,
            pull_secrets: &[],
            through_volumes: &BTreeSet::new(),
            noop_image: "x",
            warmup_taint: None,
        })
        .unwrap_err();
        assert_eq!(err, PodError::MissingMetadata("uid"));
    }

    /// The Pod Security Standards' baseline and restricted controls
    /// (kubernetes.io/docs/concepts/security/pod-security-standards), as far as a pod spec
    /// shows them. Returns each violated control.
    fn restricted_violations(pod: &Pod) -> Vec<String> {
        let mut v = Vec::new();
        let spec = pod.spec.as_ref().unwrap();
        if spec.host_network == Some(true)
            || spec.host_pid == Some(true)
            || spec.host_ipc == Some(true)
        {
            v.push("host namespaces".into());
        }
        let pod_sc = spec.security_context.clone().unwrap_or_default();
        if pod_sc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
            v.push("sysctls".into());
        }
        if pod_sc.run_as_user == Some(0) {
            v.push("runAsUser 0".into());
        }
        for volume in spec.volumes.iter().flatten() {
            let allowed = volume.config_map.is_some()
                || volume.csi.is_some()
                || volume.downward_api.is_some()
                || volume.empty_dir.is_some()
                || volume.ephemeral.is_some()
                || volume.persistent_volume_claim.is_some()
                || volume.projected.is_some()
                || volume.secret.is_some();
            if !allowed {
                v.push(format!("volume type of {}", volume.name));
            }
        }
        let all = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in all {
            let sc = c.security_context.clone().unwrap_or_default();
            if sc.privileged == Some(true) {
                v.push(format!("{}: privileged", c.name));
            }
            if c.ports
                .iter()
                .flatten()
                .any(|p| p.host_port.is_some_and(|h| h != 0))
            {
                v.push(format!("{}: hostPort", c.name));
            }
            if sc.allow_privilege_escalation != Some(false) {
                v.push(format!(
                    "{}: allowPrivilegeEscalation must be false",
                    c.name
                ));
            }
            if sc.run_as_non_root.or(pod_sc.run_as_non_root) != Some(true) {
                v.push(format!("{}: runAsNonRoot must be true", c.name));
            }
            if sc.run_as_user == Some(0) {
                v.push(format!("{}: runAsUser 0", c.name));
            }
            let seccomp = sc
                .seccomp_profile
                .or(pod_sc.seccomp_profile.clone())
                .map(|p| p.type_);
            if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
                v.push(format!(
                    "{}: seccompProfile must be RuntimeDefault or Localhost",
                    c.name
                ));
            }
            let caps = sc.capabilities.unwrap_or_default();
            if !caps.drop.iter().flatten().any(|d| d == "ALL") {
                v.push(format!("{}: capabilities must drop ALL", c.name));
            }
            if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
                v.push(format!(
                    "{}: capabilities may add only NET_BIND_SERVICE",
                    c.name
                ));
            }
            if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
                v.push(format!("{}: procMount", c.name));
            }
        }
        v
    }

    #[test]
    fn passes_pod_security_restricted() {
        let p = prefetch(json!({}));
        let pod = build(&p, &["docker.io/library/nginx:1.25", "ghcr.io/a/b:1"], &[]);
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        // The checker itself catches what it should.
        let mut bad = pod.clone();
        let spec = bad.spec.as_mut().unwrap();
        spec.host_network = Some(true);
        spec.containers[0].security_context = None;
        spec.security_context = None;
        let found = restricted_violations(&bad);
        assert!(found.contains(&"host namespaces".to_string()), "{found:?}");
        assert!(
            found.contains(&"pull-0: allowPrivilegeEscalation must be false".to_string()),
            "{found:?}"
        );
        assert!(
            found.contains(
                &"pull-0: seccompProfile must be RuntimeDefault or Localhost".to_string()
            ),
            "{found:?}"
        );
    }

    #[test]
    fn an_artifact_is_mounted_as_an_image_volume_and_nothing_of_it_runs() {
        let p = prefetch(json!({}));
        let images = vec![
            "docker.io/library/nginx:1.25".to_string(),
            "registry.example/models/llama:v1".to_string(),
        ];
        let through_volumes: BTreeSet<String> = [images[1].clone()].into();
        let pod = prefetch_pod(&PodRequest {
            prefetch: &p,
            node: "n",
            images: &images,
            pull_secrets: &[],
            through_volumes: &through_volumes,
            noop_image: "kube-prefetch/noop:dev",
            warmup_taint: None,
        })
        .unwrap();
        let v = serde_json::to_value(&pod).unwrap();
        let weights = &v["spec"]["containers"][1];
        assert_eq!(weights["name"], "pull-1");
        assert_eq!(
            weights["image"], "kube-prefetch/noop:dev",
            "runs noop, not the artifact"
        );
        assert_eq!(weights["command"], json!([NOOP_PATH]));
        assert_eq!(
            weights["volumeMounts"][1],
            json!({"name": "image-1", "mountPath": "/prefetch-image", "readOnly": true})
        );
        assert_eq!(
            v["spec"]["volumes"][1],
            json!({"name": "image-1", "image": {"reference": "registry.example/models/llama:v1", "pullPolicy": "IfNotPresent"}})
        );
        assert_eq!(
            v["spec"]["containers"][0]["image"],
            "docker.io/library/nginx:1.25"
        );
        assert_eq!(v["spec"]["volumes"].as_array().unwrap().len(), 2);
        // The restricted profile still holds: the container is the same but for its image.
        assert_eq!(
            weights["securityContext"],
            v["spec"]["containers"][0]["securityContext"]
        );
    }
}
