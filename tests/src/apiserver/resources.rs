//! The resource types the test API server serves, with the properties the real one gives them.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Has a status subresource: the main resource ignores status, `/status` ignores the rest.
    pub status_subresource: bool,
    /// Spec changes bump metadata.generation.
    pub generation: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
    generation: bool,
) -> ResourceType {
    ResourceType {
        group,
        version,
        plural,
        kind,
        namespaced,
        status_subresource: status,
        generation,
    }
}

pub const RESOURCES: &[ResourceType] = &[
    rt("", "v1", "namespaces", "Namespace", false, true, false),
    rt("", "v1", "nodes", "Node", false, true, false),
    rt("", "v1", "pods", "Pod", true, true, false),
    rt("", "v1", "events", "Event", true, false, false),
    rt("", "v1", "secrets", "Secret", true, false, false),
    rt(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
        false,
    ),
    rt("apps", "v1", "deployments", "Deployment", true, true, true),
    rt(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        true,
        true,
    ),
    rt("apps", "v1", "daemonsets", "DaemonSet", true, true, true),
    rt("apps", "v1", "replicasets", "ReplicaSet", true, true, true),
    rt(
        "apps",
        "v1",
        "controllerrevisions",
        "ControllerRevision",
        true,
        false,
        false,
    ),
    rt("batch", "v1", "jobs", "Job", true, true, true),
    rt("batch", "v1", "cronjobs", "CronJob", true, true, true),
    rt(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
        false,
    ),
    rt("events.k8s.io", "v1", "events", "Event", true, false, false),
    rt(
        "cache.techsquad.rocks",
        "v1",
        "prefetches",
        "Prefetch",
        true,
        true,
        true,
    ),
];

pub fn lookup(group: &str, version: &str, plural: &str) -> Option<ResourceType> {
    RESOURCES
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}
