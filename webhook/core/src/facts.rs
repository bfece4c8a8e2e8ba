//! What the decisions read besides the request: plain data slimmed from cluster objects
//! ([`PrefetchFacts`], [`GatingPrefetch`], [`WorkloadFacts`]), and the views of the watch
//! caches that hold them ([`Prefetches`], [`NodeNamesView`]). The shell's caches implement the
//! views; the core's tests implement them with fakes.
//!
//! The views are object-safe (lookups are `&dyn Fn` closures) so that a decision takes
//! `&dyn Prefetches` and is compiled once, whatever feeds it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prefetch_common::annotations::{Signal, rollout_signal};
use prefetch_common::images::{pod_spec_images, pod_spec_references};
use prefetch_common::labels::selects_by;
use prefetch_common::workload::Workload;
use prefetch_common::{Prefetch, WorkloadKind};

/// The Prefetches of the cluster, as the decisions read them.
pub trait Prefetches {
    /// Whether the view has been filled once (a first list completed).
    fn is_synced(&self) -> bool;

    /// The names of the Prefetches in `namespace` that select a workload of `kind` whose
    /// labels `label` looks up (labels may be borrowed from a request body), for logs.
    fn selecting_by<'l>(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        label: &dyn Fn(&str) -> Option<&'l str>,
    ) -> Vec<String>;

    /// The Prefetches in `namespace` with `gate_rollouts` that select a workload of `kind`
    /// whose labels `label` looks up, by name.
    fn gating_by<'l>(
        &self,
        namespace: &str,
        kind: WorkloadKind,
        label: &dyn Fn(&str) -> Option<&'l str>,
    ) -> Vec<GatingPrefetch>;
}

/// The names of the cluster's nodes, for the "node_filter matches no node" warning.
pub trait NodeNamesView {
    /// Runs `read` once over the names, `None` while they are not known (no list completed):
    /// validation needs one substring check, not a copy of every node name.
    fn with_names(&self, read: &mut dyn FnMut(Option<&BTreeSet<String>>));
}

/// What the webhook keeps of one Prefetch: its selector, and what the pod gate reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchFacts {
    /// `spec.filter_by_labels`.
    pub selector: BTreeMap<String, String>,
    /// `spec.gate_rollouts`, with `spec.gate_timeout` in seconds.
    pub gate_timeout: Option<i64>,
    /// The newest signal whose images, and every earlier signal's, are prefetched
    /// (`status.prefetched_through`, or `last_rollout.requested_at` once prefetched).
    pub prefetched_through: Option<jiff::Timestamp>,
    /// The workload kinds it selects (`spec.kinds`): the controller reads no other, so their
    /// rollouts are neither signalled nor gated for it (nobody would lift the gate).
    pub kinds: BTreeSet<WorkloadKind>,
}

impl PrefetchFacts {
    pub fn of(prefetch: Prefetch) -> Self {
        // `status.prefetched_through`, or the last rollout when it is prefetched (a status
        // written before the field existed), whichever is newer.
        let status = prefetch.status.unwrap_or_default();
        let last_prefetched = status
            .last_rollout
            .filter(|r| r.prefetched_at.is_some())
            .and_then(|r| r.requested_at)
            .map(|t| t.0);
        let prefetched_through = status.prefetched_through.map(|t| t.0).max(last_prefetched);
        Self {
            gate_timeout: prefetch
                .spec
                .gate_rollouts()
                .then(|| prefetch.spec.gate_timeout_seconds()),
            kinds: WorkloadKind::ALL
                .into_iter()
                .filter(|kind| prefetch.spec.selects_kind(*kind))
                .collect(),
            selector: prefetch.spec.filter_by_labels,
            prefetched_through,
        }
    }

    /// Whether it selects a workload of `kind` whose labels `label` looks up (an empty
    /// selector selects nothing, and neither does a Prefetch whose `kinds` leaves `kind` out).
    pub fn selects_by<'l>(
        &self,
        kind: WorkloadKind,
        label: impl Fn(&str) -> Option<&'l str>,
    ) -> bool {
        self.kinds.contains(&kind) && !self.selector.is_empty() && selects_by(&self.selector, label)
    }

    /// As the pod gate reads it, when it has `gate_rollouts` and selects that workload.
    pub fn gating<'l>(
        &self,
        name: &str,
        kind: WorkloadKind,
        label: impl Fn(&str) -> Option<&'l str>,
    ) -> Option<GatingPrefetch> {
        let gate_timeout = self.gate_timeout?;
        self.selects_by(kind, label).then(|| GatingPrefetch {
            name: name.to_string(),
            gate_timeout,
            prefetched_through: self.prefetched_through,
        })
    }
}

/// A Prefetch with `gate_rollouts` that selects a workload, as the pod gate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatingPrefetch {
    pub name: String,
    /// `spec.gate_timeout`, seconds.
    pub gate_timeout: i64,
    /// The newest rollout signal (`requested_at`) its status shows prefetched.
    pub prefetched_through: Option<jiff::Timestamp>,
}

/// What the pod gate reads of a workload (Deployment, StatefulSet, DaemonSet or CronJob): its
/// labels (which Prefetches select it), its rollout signal, and its pod template's normalized
/// images. Nothing else is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadFacts {
    pub labels: BTreeMap<String, String>,
    pub signal: Option<Signal>,
    pub template_images: BTreeSet<String>,
    /// The template's image references as written (a pod's are compared with these first).
    pub template_references: BTreeSet<String>,
}

impl WorkloadFacts {
    /// From a workload's metadata and its pod template's spec.
    pub fn of(meta: &ObjectMeta, spec: Option<&PodSpec>) -> Self {
        let template_references = spec
            .into_iter()
            .flat_map(pod_spec_references)
            .map(String::from)
            .collect();
        Self {
            labels: meta.labels.clone().unwrap_or_default(),
            signal: rollout_signal(meta.annotations.as_ref()),
            template_images: spec
                .map(|spec| pod_spec_images(spec).images)
                .unwrap_or_default(),
            template_references,
        }
    }
}

/// Any kind's facts, read through its pod template (see `prefetch_common::workload`).
impl From<Workload<'_>> for WorkloadFacts {
    fn from(workload: Workload<'_>) -> Self {
        Self::of(workload.meta, workload.pod_spec)
    }
}

/// Fakes of the views for the core's tests: a list of Prefetches and a set of node names,
/// nothing cached.
#[cfg(test)]
pub(crate) mod fakes {
    use super::*;

    /// Prefetches as (namespace, name, facts), in the order given.
    #[derive(Debug, Default)]
    pub struct FakePrefetches {
        pub synced: bool,
        pub prefetches: Vec<(String, String, PrefetchFacts)>,
    }

    impl FakePrefetches {
        /// Synced, with Prefetches (namespace, name, label key, label value).
        pub fn selecting(prefetches: &[(&str, &str, &str, &str)]) -> Self {
            Self {
                synced: true,
                prefetches: prefetches
                    .iter()
                    .map(|(ns, name, key, value)| {
                        let facts = PrefetchFacts {
                            selector: [(key.to_string(), value.to_string())].into(),
                            kinds: WorkloadKind::ALL.into(),
                            ..Default::default()
                        };
                        (ns.to_string(), name.to_string(), facts)
                    })
                    .collect(),
            }
        }

        fn in_namespace<'s>(
            &'s self,
            namespace: &'s str,
        ) -> impl Iterator<Item = (&'s str, &'s PrefetchFacts)> {
            self.prefetches
                .iter()
                .filter(move |(ns, _, _)| ns == namespace)
                .map(|(_, name, facts)| (name.as_str(), facts))
        }
    }

    impl Prefetches for FakePrefetches {
        fn is_synced(&self) -> bool {
            self.synced
        }

        fn selecting_by<'l>(
            &self,
            namespace: &str,
            kind: WorkloadKind,
            label: &dyn Fn(&str) -> Option<&'l str>,
        ) -> Vec<String> {
            self.in_namespace(namespace)
                .filter(|(_, facts)| facts.selects_by(kind, label))
                .map(|(name, _)| name.to_string())
                .collect()
        }

        fn gating_by<'l>(
            &self,
            namespace: &str,
            kind: WorkloadKind,
            label: &dyn Fn(&str) -> Option<&'l str>,
        ) -> Vec<GatingPrefetch> {
            self.in_namespace(namespace)
                .filter_map(|(name, facts)| facts.gating(name, kind, label))
                .collect()
        }
    }

    /// Node names, `None` while unknown.
    #[derive(Debug, Default)]
    pub struct FakeNodes(pub Option<BTreeSet<String>>);

    impl NodeNamesView for FakeNodes {
        fn with_names(&self, read: &mut dyn FnMut(Option<&BTreeSet<String>>)) {
            read(self.0.as_ref())
        }
    }
}

#[cfg(test)]
mod tests;
