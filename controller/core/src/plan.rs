//! Which images a Prefetch wants on which nodes: the selected workloads' images and the
//! declared ones (each with its sources), the nodes
//! that qualify (with the reason each other node is skipped), and per node the images it
//! still needs and those it already lists in `node.status.images`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PodSpec, ServiceAccount};
use prefetch_common::Prefetch;
use prefetch_common::images::{
    collect_images, normalize, pod_spec_container_images, pod_spec_volume_images,
};

use crate::eligibility::{SkipReason, skip_reason};
use crate::image_volume::{artifacts, pulls_through_image_volumes};
use crate::taint::is_warming;
use crate::workload::{Workload, selects_workload};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub node: String,
    /// Images the node still needs: a prefetch pod pulls these.
    pub pull: Vec<String>,
    /// Images the node already has: done without a pod.
    pub present: Vec<String>,
    /// Those of `present` the node does not list but counts as having by the full-list rule
    /// (`fulllist.rs`): its list is full and our pod pulled them in an earlier round.
    pub assumed: Vec<String>,
    /// Its `topology.kubernetes.io/zone` label (empty without one), for `spec.seed`.
    pub zone: String,
    /// The node carries the warmup taint: its pods come first, and tolerate that taint.
    pub warming: bool,
    /// The node supports image volumes: its prefetch pod mounts `ImagePlan::artifacts` as
    /// image volumes (see `image_volume.rs`).
    pub image_volumes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub node: String,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePlan {
    /// The selected workloads, as `Kind/name`, sorted.
    pub workloads: Vec<String>,
    /// Their images (containers, init containers, image volumes) and the declared ones,
    /// normalized, sorted, de-duplicated.
    pub images: Vec<String>,
    /// Image -> where it comes from: `Kind/name` of each workload using it, `declared`.
    pub sources: BTreeMap<String, BTreeSet<String>>,
    /// Images the selected workloads only mount as image volumes: they may have no runnable
    /// file, so they are pulled through an image volume where the node supports one.
    pub artifacts: BTreeSet<String>,
    /// Image references that do not parse, as "Kind/name: error" (never prefetched).
    pub invalid_images: Vec<String>,
    /// The pull secrets the selected workloads' pods are given (see [`pods_pull_secrets`]),
    /// sorted and de-duplicated, for the prefetch pods.
    pub pull_secrets: Vec<String>,
    /// ServiceAccounts the selected workloads name (to read their pull secrets) that do not
    /// exist: the workloads' pods could not be created either, so this is no error.
    pub missing_accounts: BTreeSet<String>,
    /// Targeted nodes, by name.
    pub targets: Vec<NodePlan>,
    /// Nodes not targeted, by name, with why.
    pub skipped: Vec<Skipped>,
}

impl ImagePlan {
    /// Node x image pairs of a round.
    pub fn total_pairs(&self) -> usize {
        self.targets.len() * self.images.len()
    }

    /// The skipped nodes counted by reason, in check order: `DiskPressure: 2, NotReady: 1`
    /// (empty when none is skipped).
    pub fn skipped_by_reason(&self) -> String {
        let mut counts: Vec<(&SkipReason, usize)> = Vec::new();
        for skipped in &self.skipped {
            match counts
                .iter_mut()
                .find(|(r, _)| r.kind() == skipped.reason.kind())
            {
                Some((_, n)) => *n += 1,
                None => counts.push((&skipped.reason, 1)),
            }
        }
        counts.sort_by_key(|(r, _)| check_order(r));
        counts
            .iter()
            .map(|(r, n)| format!("{}: {n}", r.kind()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Position of a reason's check in `skip_reason`.
fn check_order(reason: &SkipReason) -> u8 {
    match reason {
        SkipReason::NameFilter { .. } => 0,
        SkipReason::NodeSelector => 1,
        SkipReason::Deleting => 2,
        SkipReason::NotLinux { .. } => 3,
        SkipReason::Unschedulable => 4,
        SkipReason::NotReady => 5,
        SkipReason::DiskPressure => 6,
        SkipReason::Taint { .. } => 7,
    }
}

/// The images a node reports, normalized like the Deployments' images.
pub fn node_images(node: &Node) -> BTreeSet<String> {
    node.status
        .as_ref()
        .and_then(|s| s.images.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|image| image.names.iter().flatten())
        .filter_map(|name| normalize(name).ok())
        .collect()
}

/// Whether `deployment` is selected by `prefetch`: same namespace, labels match, not deleted.
pub fn selects_deployment(prefetch: &Prefetch, deployment: &Deployment) -> bool {
    selects_workload(prefetch, &Workload::from(deployment))
}

/// The source of an image listed in `spec.images`.
pub const DECLARED: &str = "declared";

/// Entries per image in `status.sources`: a namespace with a thousand Deployments sharing one
/// image must not make the status (an etcd object) that large.
pub const MAX_STATUS_SOURCES: usize = 10;
/// At most this many sources are named in the whole status (a Prefetch selecting many
/// workloads of many images must stay far below the object size limit): past it, an image's
/// sources are only counted.
pub const MAX_STATUS_SOURCES_TOTAL: usize = 1000;

/// `status.sources` for every image of `sources`: each image's list (see [`status_sources`])
/// while the whole-status budget lasts, then only `+N more`.
pub fn all_status_sources(
    sources: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, Vec<String>> {
    let mut left = MAX_STATUS_SOURCES_TOTAL;
    sources
        .iter()
        .map(|(image, of_image)| {
            let listed = status_sources(of_image);
            let listed = if listed.len() <= left {
                left -= listed.len();
                listed
            } else {
                vec![format!("+{} more", of_image.len())]
            };
            (image.clone(), listed)
        })
        .collect()
}

/// An image's sources as the status lists them: all of them, sorted, when they fit in
/// [`MAX_STATUS_SOURCES`]; otherwise the first workloads by name, `declared` if it is one (it
/// says the image stays wanted with no workload), and `+N more` counting the workloads left out.
pub fn status_sources(sources: &BTreeSet<String>) -> Vec<String> {
    if sources.len() <= MAX_STATUS_SOURCES {
        return sources.iter().cloned().collect();
    }
    let declared = sources.contains(DECLARED);
    let workloads: Vec<&String> = sources.iter().filter(|s| *s != DECLARED).collect();
    let kept = MAX_STATUS_SOURCES - 1 - usize::from(declared);
    let mut listed: Vec<String> = workloads[..kept].iter().map(|s| s.to_string()).collect();
    if declared {
        listed.push(DECLARED.into());
    }
    listed.push(format!("+{} more", workloads.len() - kept));
    listed
}

/// The imagePullSecrets of the ServiceAccounts in one namespace, by account name.
pub type AccountSecrets = BTreeMap<String, Vec<String>>;

/// The pull secrets of the ServiceAccounts in `namespace`, from every cached account.
pub fn account_secrets<'a>(
    accounts: impl IntoIterator<Item = &'a ServiceAccount>,
    namespace: &str,
) -> AccountSecrets {
    accounts
        .into_iter()
        .filter(|a| a.metadata.namespace.as_deref() == Some(namespace))
        .map(|a| {
            let secrets = a.image_pull_secrets.iter().flatten();
            let names = secrets.map(|s| s.name.clone()).filter(|n| !n.is_empty());
            (a.metadata.name.clone().unwrap_or_default(), names.collect())
        })
        .collect()
}

/// The ServiceAccount a pod template runs as: `serviceAccountName`, else its deprecated alias
/// `serviceAccount`, else `default` (as the API server defaults them).
pub fn service_account_name(pod_spec: &PodSpec) -> &str {
    [&pod_spec.service_account_name, &pod_spec.service_account]
        .into_iter()
        .filter_map(|name| name.as_deref())
        .find(|name| !name.is_empty())
        .unwrap_or("default")
}

/// The pull secrets the pods of a template are given: its own `imagePullSecrets`, or, when it
/// lists none, its ServiceAccount's (the ServiceAccount admission plugin adds the account's
/// only to a pod that lists none). `Err(account)` when that account is not in `accounts`.
pub fn pods_pull_secrets<'s>(
    pod_spec: &'s PodSpec,
    accounts: &'s AccountSecrets,
) -> Result<Vec<&'s str>, &'s str> {
    match pod_spec.image_pull_secrets.as_deref() {
        Some(listed) if !listed.is_empty() => Ok(listed
            .iter()
            .map(|s| s.name.as_str())
            .filter(|s| !s.is_empty())
            .collect()),
        _ => {
            let account = service_account_name(pod_spec);
            let secrets = accounts.get(account).ok_or(account)?;
            Ok(secrets.iter().map(String::as_str).collect())
        }
    }
}

/// The plan of `prefetch`. `warmup_taint` is `--warmup-taint` (`None` when warm nodes are off):
/// nodes carrying it are targeted as if it were tolerated, and marked warming. `accounts` holds
/// the pull secrets of the ServiceAccounts in the Prefetch's namespace.
pub fn plan_images<'a, W: Into<Workload<'a>>>(
    prefetch: &Prefetch,
    workloads: impl IntoIterator<Item = W>,
    accounts: &AccountSecrets,
    nodes: impl IntoIterator<Item = &'a Node>,
    warmup_taint: Option<&str>,
) -> ImagePlan {
    plan_images_with(
        prefetch,
        workloads,
        accounts,
        nodes,
        warmup_taint,
        |node| Cow::Owned(node_images(node).into_iter().collect()),
        |_, _| false,
    )
}

/// [`plan_images`] with each node's images given by `images_on` as a sorted list of
/// normalized references (the controller's cache stores nodes that way, so a reconcile
/// neither parses nor allocates per image), and `assumed(node, image)` saying whether an
/// image the node does not list counts as present by the full-list rule.
pub fn plan_images_with<'a, W: Into<Workload<'a>>>(
    prefetch: &Prefetch,
    workloads: impl IntoIterator<Item = W>,
    accounts: &AccountSecrets,
    nodes: impl IntoIterator<Item = &'a Node>,
    warmup_taint: Option<&str>,
    images_on: impl Fn(&'a Node) -> Cow<'a, [String]>,
    assumed: impl Fn(&'a Node, &str) -> bool,
) -> ImagePlan {
    let mut plan = ImagePlan::default();
    let pulls = add_workloads(&mut plan, prefetch, workloads, accounts);
    add_images(&mut plan, prefetch, pulls);
    let mut nodes: Vec<&'a Node> = nodes.into_iter().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        match skip_reason(node, &prefetch.spec, warmup_taint) {
            Some(reason) => plan.skipped.push(Skipped { node: name, reason }),
            None => {
                let warming = warmup_taint.is_some_and(|key| is_warming(node, key));
                let on_node = images_on(node);
                let mut target = node_plan(name, warming, &plan.images, |image| {
                    if on_node
                        .binary_search_by(|listed| listed.as_str().cmp(image))
                        .is_ok()
                    {
                        Some(false)
                    } else {
                        assumed(node, image).then_some(true)
                    }
                });
                target.image_volumes = pulls_through_image_volumes(node);
                target.zone = zone_of(node);
                plan.targets.push(target);
            }
        }
    }
    plan
}

/// What the selected workloads pull: images run as containers, images only mounted as
/// volumes, and the pull secrets of their pods.
#[derive(Default)]
struct WorkloadPulls {
    run: BTreeSet<String>,
    mounted: BTreeSet<String>,
    secrets: BTreeSet<String>,
}

/// Adds to `plan` the workloads `prefetch` selects, where each of their images comes from,
/// their invalid references and missing ServiceAccounts; returns what they pull.
fn add_workloads<'a, W: Into<Workload<'a>>>(
    plan: &mut ImagePlan,
    prefetch: &Prefetch,
    workloads: impl IntoIterator<Item = W>,
    accounts: &AccountSecrets,
) -> WorkloadPulls {
    let mut pulls = WorkloadPulls::default();
    for workload in workloads.into_iter().map(Into::into) {
        if !selects_workload(prefetch, &workload) {
            continue;
        }
        let source = workload.source();
        let Some(pod_spec) = workload.pod_spec else {
            continue;
        };
        // Each reference normalized once: run as a container's image, or only mounted.
        let containers = pod_spec_container_images(pod_spec);
        let volumes = pod_spec_volume_images(pod_spec);
        for image in containers.images.iter().chain(&volumes.images) {
            plan.sources
                .entry(image.clone())
                .or_default()
                .insert(source.clone());
        }
        let invalid = containers.invalid.iter().chain(&volumes.invalid);
        plan.invalid_images
            .extend(invalid.map(|e| format!("{source}: {e}")));
        pulls.run.extend(containers.images);
        pulls.mounted.extend(volumes.images);
        match pods_pull_secrets(pod_spec, accounts) {
            Ok(names) => pulls.secrets.extend(names.into_iter().map(String::from)),
            Err(account) => {
                plan.missing_accounts.insert(account.to_string());
            }
        }
        plan.workloads.push(source);
    }
    plan.workloads.sort();
    pulls
}

/// Completes `plan`'s images with the ones `prefetch` declares, and its artifacts and pull
/// secrets with what the workloads pull.
fn add_images(plan: &mut ImagePlan, prefetch: &Prefetch, pulls: WorkloadPulls) {
    let WorkloadPulls {
        mut run,
        mounted,
        secrets,
    } = pulls;
    // Declared images are wanted whether or not a workload uses them yet.
    let declared = collect_images(prefetch.spec.declared_images().iter().map(String::as_str));
    run.extend(declared.images.iter().cloned());
    plan.artifacts = artifacts(&mounted, &run);
    for image in declared.images {
        plan.sources
            .entry(image)
            .or_default()
            .insert(DECLARED.into());
    }
    plan.invalid_images
        .extend(declared.invalid.iter().map(|e| format!("{DECLARED}: {e}")));
    plan.images = plan.sources.keys().cloned().collect();
    plan.pull_secrets = secrets.into_iter().collect();
}

/// The well-known label a node's zone is read from (for `spec.seed`, see `seed.rs`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// A node's zone label, empty when it has none (those nodes form one zone).
fn zone_of(node: &Node) -> String {
    node.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(ZONE_LABEL))
        .cloned()
        .unwrap_or_default()
}

/// One targeted node's plan: each image is present (`has(image)` is `Some(false)`), assumed
/// present by the full-list rule (`Some(true)`), or to pull (`None`).
fn node_plan(
    node: String,
    warming: bool,
    images: &[String],
    has: impl Fn(&str) -> Option<bool>,
) -> NodePlan {
    let mut target = NodePlan {
        node,
        warming,
        ..NodePlan::default()
    };
    for image in images {
        match has(image) {
            Some(assumed) => {
                target.present.push(image.clone());
                if assumed {
                    target.assumed.push(image.clone());
                }
            }
            None => target.pull.push(image.clone()),
        }
    }
    target
}

#[cfg(test)]
mod tests;
