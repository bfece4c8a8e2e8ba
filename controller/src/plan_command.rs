//! `prefetch-controller plan -f FILE...`: the planner run on objects from YAML files, printed
//! for people: which images each node would pull and why every other node is skipped.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use prefetch_common::Prefetch;
use serde_json::Value;

use crate::naming::pod_name;
use crate::plan::plan_images;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: not YAML: {reason}")]
    Yaml { file: String, reason: String },
    #[error("{file}: document {index} ({kind} {name}): {reason}")]
    Object {
        file: String,
        index: usize,
        kind: String,
        name: String,
        reason: String,
    },
}

/// The objects the planner reads.
#[derive(Debug, Default)]
pub struct Objects {
    pub prefetches: Vec<Prefetch>,
    pub deployments: Vec<Deployment>,
    pub nodes: Vec<Node>,
    /// Documents of other kinds, reported but not used.
    pub ignored: Vec<String>,
}

impl Objects {
    /// Adds every document of one file (multi-document YAML; `List` kinds are unpacked).
    pub fn load(&mut self, file: &str, text: &str) -> Result<(), LoadError> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| LoadError::Yaml {
            file: file.into(),
            reason: e.to_string(),
        })?;
        let mut queue: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
        let mut index = 0;
        while !queue.is_empty() {
            let doc = queue.remove(0);
            index += 1;
            let kind = doc
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let name = doc
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let err = |reason: String| LoadError::Object {
                file: file.into(),
                index,
                kind: kind.clone(),
                name: name.clone(),
                reason,
            };
            match kind.as_str() {
                "Prefetch" => {
                    let mut prefetch: Prefetch =
                        serde_json::from_value(doc).map_err(|e| err(e.to_string()))?;
                    prefetch
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    self.prefetches.push(prefetch);
                }
                "Deployment" => {
                    let mut deployment: Deployment =
                        serde_json::from_value(doc).map_err(|e| err(e.to_string()))?;
                    deployment
                        .metadata
                        .namespace
                        .get_or_insert_with(|| "default".into());
                    self.deployments.push(deployment);
                }
                "Node" => self
                    .nodes
                    .push(serde_json::from_value(doc).map_err(|e| err(e.to_string()))?),
                kind if kind.ends_with("List") => {
                    queue.extend(
                        doc.get("items")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                _ => self.ignored.push(format!("{file}: {kind} {name}")),
            }
        }
        Ok(())
    }
}

/// The plan of every Prefetch, as text.
pub fn render(objects: &Objects) -> String {
    let mut out = String::new();
    if objects.prefetches.is_empty() {
        out.push_str("no Prefetch in the given files: nothing to plan\n");
    }
    for prefetch in &objects.prefetches {
        let ns = prefetch.metadata.namespace.as_deref().unwrap_or("default");
        let name = prefetch.metadata.name.as_deref().unwrap_or("");
        let plan = plan_images(prefetch, &objects.deployments, &objects.nodes);
        let _ = writeln!(out, "Prefetch {ns}/{name}");
        let _ = writeln!(
            out,
            "  selects {} Deployment(s) by {:?}: {}",
            plan.deployments.len(),
            prefetch.spec.filter_by_labels,
            if plan.deployments.is_empty() {
                "(none)".to_string()
            } else {
                plan.deployments.join(", ")
            }
        );
        let _ = writeln!(out, "  images ({}):", plan.images.len());
        for image in &plan.images {
            let _ = writeln!(out, "    {image}");
        }
        for invalid in &plan.invalid_images {
            let _ = writeln!(out, "    skipped, not a valid reference: {invalid}");
        }
        let pods = plan.targets.iter().filter(|t| !t.pull.is_empty()).count();
        let width = objects
            .nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .map(str::len)
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(out, "  {:<width$}  PLAN", "NODE");
        for target in &plan.targets {
            if target.pull.is_empty() {
                let _ = writeln!(
                    out,
                    "  {:<width$}  nothing to pull: already has {}",
                    target.node,
                    target.present.join(", ")
                );
            } else {
                let _ = writeln!(
                    out,
                    "  {:<width$}  pod {} pulls {}",
                    target.node,
                    pod_name(name, &target.node),
                    target.pull.join(", ")
                );
                if !target.present.is_empty() {
                    let _ = writeln!(
                        out,
                        "  {:<width$}    (already has {})",
                        "",
                        target.present.join(", ")
                    );
                }
            }
        }
        for skipped in &plan.skipped {
            let _ = writeln!(
                out,
                "  {:<width$}  skipped: {}",
                skipped.node, skipped.reason
            );
        }
        let parallel = prefetch.spec.max_parallel();
        let _ = writeln!(
            out,
            "  => {pods} prefetch pod(s), at most {parallel} in flight; {} of {} node x image pairs already done; next round after {} s\n",
            plan.targets.iter().map(|t| t.present.len()).sum::<usize>(),
            plan.total_pairs(),
            prefetch.spec.retry_after_seconds()
        );
    }
    for ignored in &objects.ignored {
        let _ = writeln!(out, "ignored: {ignored}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = include_str!("../../examples/cluster.yaml");

    #[test]
    fn the_sample_cluster_plans_like_the_walkthrough() {
        let mut objects = Objects::default();
        objects.load("cluster.yaml", CLUSTER).unwrap();
        assert_eq!(
            (
                objects.prefetches.len(),
                objects.deployments.len(),
                objects.nodes.len()
            ),
            (1, 1, 4)
        );
        let text = render(&objects);
        for line in [
            "Prefetch default/prefetch-sample",
            "docker.io/library/nginx:1.7.9",
            "kind-worker         pod prefetch-prefetch-sample-kind-worker pulls docker.io/library/nginx:1.7.9",
            "kind-worker2        pod prefetch-prefetch-sample-kind-worker2 pulls docker.io/library/nginx:1.7.9",
            "kind-worker3        pod prefetch-prefetch-sample-kind-worker3 pulls docker.io/library/nginx:1.7.9",
            "kind-control-plane  skipped: name does not contain node_filter \"worker\"",
            "=> 3 prefetch pod(s), at most 20 in flight; 0 of 3 node x image pairs already done",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn lists_and_other_kinds() {
        let mut objects = Objects::default();
        let text = "kind: List\nitems:\n- {kind: Node, metadata: {name: a}}\n- {kind: Service, metadata: {name: s}}\n---\n";
        objects.load("f.yaml", text).unwrap();
        assert_eq!(objects.nodes.len(), 1);
        assert_eq!(objects.ignored, ["f.yaml: Service s"]);
        assert!(render(&objects).starts_with("no Prefetch in the given files"));
    }

    #[test]
    fn errors_name_the_file_and_document() {
        let mut objects = Objects::default();
        let err = objects
            .load(
                "bad.yaml",
                "kind: Prefetch\nmetadata: {name: p}\nspec: {retry_after: 60}\n",
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("bad.yaml: document 1 (Prefetch p): "),
            "{text}"
        );
        assert!(text.contains("filter_by_labels"), "{text}");
        assert!(
            objects
                .load("x.yaml", "a: [")
                .unwrap_err()
                .to_string()
                .starts_with("x.yaml: not YAML")
        );
    }
}
