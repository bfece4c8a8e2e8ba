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
mod tests;
