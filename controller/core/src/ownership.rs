//! Which cached prefetch pods a round works with: the Prefetch's own, and the nodes where
//! another Prefetch's pod still pulls (busy: a round puts no second pod there meanwhile).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use prefetch_common::annotations::PREFETCH_LABEL;

use crate::outcome::read_pod;
use crate::pod::NODE_ANNOTATION;

/// The Prefetch a round runs for, as its pods name it.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// The prefetch pods of one round, sorted by [`sort_pods`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RoundPods {
    pub own: Vec<Pod>,
    pub busy_nodes: BTreeSet<String>,
}

/// Sorts every cached prefetch pod into `owner`'s own pods and the nodes other pods keep busy.
pub fn sort_pods<'p>(pods: impl IntoIterator<Item = &'p Pod>, owner: Owner<'_>) -> RoundPods {
    let mut sorted = RoundPods::default();
    for pod in pods {
        if is_own(pod, owner) {
            sorted.own.push(pod.clone());
        } else if let Some(node) = busy_node(pod) {
            sorted.busy_nodes.insert(node.to_string());
        }
    }
    sorted
}

/// Whether `pod` is `owner`'s: in its namespace, labelled with its name, and controlled by it.
/// Owned, not merely labelled like it: a pod someone else made with our labels is never
/// touched.
pub fn is_own(pod: &Pod, owner: Owner<'_>) -> bool {
    let meta = &pod.metadata;
    meta.namespace.as_deref() == Some(owner.namespace)
        && meta
            .labels
            .as_ref()
            .and_then(|labels| labels.get(PREFETCH_LABEL))
            .map(String::as_str)
            == Some(owner.name)
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == owner.uid)
}

/// The node a prefetch pod still pulls on: not being deleted, not finished, placed by us.
pub fn busy_node(pod: &Pod) -> Option<&str> {
    if pod.metadata.deletion_timestamp.is_some() || read_pod(pod, false).finished {
        return None;
    }
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(NODE_ANNOTATION))
        .map(String::as_str)
}

#[cfg(test)]
mod tests;
