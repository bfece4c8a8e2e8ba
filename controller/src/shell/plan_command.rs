//! `prefetch-controller plan -f FILE...`: the planner run on objects from YAML files, printed
//! for people: which images each node would pull and why every other node is skipped.

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use prefetch_common::Prefetch;
use serde_json::Value;

use crate::core::fulllist::is_full;
use crate::core::ledger::PullLedger;
use crate::core::naming::pod_name;
use crate::core::plan::{ImagePlan, NodePlan, account_secrets, node_images, plan_images};
use crate::core::warmup::{self, Verdict, WarmupConfig};
use crate::core::workload::{Workload, job_finished};

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
    pub stateful_sets: Vec<StatefulSet>,
    pub daemon_sets: Vec<DaemonSet>,
    pub jobs: Vec<Job>,
    pub cron_jobs: Vec<CronJob>,
    pub nodes: Vec<Node>,
    /// Their pull secrets go on the prefetch pods of workloads whose templates list none.
    pub service_accounts: Vec<ServiceAccount>,
    /// Documents of other kinds, reported but not used.
    pub ignored: Vec<String>,
}

/// A namespaced object from a file, in `default` when the file names no namespace.
fn in_namespace<K: serde::de::DeserializeOwned + kube::Resource>(doc: Value) -> Result<K, String> {
    let mut object: K = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    object
        .meta_mut()
        .namespace
        .get_or_insert_with(|| "default".into());
    Ok(object)
}

impl Objects {
    /// Every workload the files hold, of every kind (but finished Jobs, as in the cluster).
    pub fn workloads(&self) -> impl Iterator<Item = Workload<'_>> {
        let deployments = self.deployments.iter().map(Workload::from);
        let stateful_sets = self.stateful_sets.iter().map(Workload::from);
        let daemon_sets = self.daemon_sets.iter().map(Workload::from);
        let jobs = self
            .jobs
            .iter()
            .filter(|job| !job_finished(job))
            .map(Workload::from);
        let cron_jobs = self.cron_jobs.iter().map(Workload::from);
        deployments
            .chain(stateful_sets)
            .chain(daemon_sets)
            .chain(jobs)
            .chain(cron_jobs)
    }

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
                "Deployment" => self.deployments.push(in_namespace(doc).map_err(err)?),
                "StatefulSet" => self.stateful_sets.push(in_namespace(doc).map_err(err)?),
                "DaemonSet" => self.daemon_sets.push(in_namespace(doc).map_err(err)?),
                "Job" => self.jobs.push(in_namespace(doc).map_err(err)?),
                "CronJob" => self.cron_jobs.push(in_namespace(doc).map_err(err)?),
                "ServiceAccount" => self.service_accounts.push(in_namespace(doc).map_err(err)?),
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

/// The plan of every Prefetch, as text, then the warming nodes (`warmup`: the controller's
/// warm-node settings, `None` when off) and what each still needs, judged at `now`.
/// `max_images` is `--node-status-max-images`: targets with a full image list are marked.
pub fn render(
    objects: &Objects,
    warmup: Option<&WarmupConfig>,
    max_images: u32,
    now: Timestamp,
) -> String {
    let warmup_taint = warmup.map(|w| w.taint.as_str());
    let mut out = String::new();
    if objects.prefetches.is_empty() {
        out.push_str("no Prefetch in the given files: nothing to plan\n");
    }
    for prefetch in &objects.prefetches {
        render_prefetch(&mut out, objects, prefetch, warmup_taint, max_images);
    }
    if let Some(warmup) = warmup {
        render_warming(&mut out, objects, warmup, now);
    }
    for ignored in &objects.ignored {
        let _ = writeln!(out, "ignored: {ignored}");
    }
    out
}

/// One Prefetch's plan: what it selects and pulls, then each node's part, then the totals.
fn render_prefetch(
    out: &mut String,
    objects: &Objects,
    prefetch: &Prefetch,
    warmup_taint: Option<&str>,
    max_images: u32,
) {
    let ns = prefetch.metadata.namespace.as_deref().unwrap_or("default");
    let name = prefetch.metadata.name.as_deref().unwrap_or("");
    let accounts = account_secrets(&objects.service_accounts, ns);
    let plan = plan_images(
        prefetch,
        objects.workloads(),
        &accounts,
        &objects.nodes,
        warmup_taint,
    );
    let _ = writeln!(out, "Prefetch {ns}/{name}");
    render_selection(out, prefetch, &plan);
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
        render_target(out, objects, name, target, width, max_images);
    }
    for skipped in &plan.skipped {
        let _ = writeln!(
            out,
            "  {:<width$}  skipped: {}",
            skipped.node, skipped.reason
        );
    }
    let parallel = prefetch.spec.max_parallel();
    render_savings(out, prefetch);
    let _ = writeln!(
        out,
        "  => {pods} prefetch pod(s), at most {parallel} in flight; {} of {} node x image pairs already done; next round after {} s\n",
        plan.targets.iter().map(|t| t.present.len()).sum::<usize>(),
        plan.total_pairs(),
        prefetch.spec.retry_after_seconds()
    );
}

/// What the status says the prefetches saved, when the file holds a status with starts or
/// pulls (`kubectl get pf -o yaml` does): the starts counted from the kubelet's Events, and
/// each image's pull times measured across nodes.
fn render_savings(out: &mut String, prefetch: &Prefetch) {
    let Some(status) = &prefetch.status else {
        return;
    };
    if let Some(starts) = &status.starts {
        let share = starts.warm_percent_last_hour.map_or_else(
            || "no start in the last hour".into(),
            |p| format!("{p}% warm in the last hour"),
        );
        let _ = writeln!(
            out,
            "  starts (kubelet Events): {} warm, {} cold; {share}",
            starts.warm, starts.cold
        );
        if let Some(cold) = &starts.last_cold {
            let _ = writeln!(
                out,
                "    last cold start: pod {} on {} waited {:.1} s pulling {}",
                cold.pod, cold.node, cold.seconds, cold.image
            );
        }
    }
    for (image, pulls) in &status.pulls {
        let _ = writeln!(
            out,
            "  pulls of {image}: median {:.1} s, slowest {:.1} s over {} node(s), {} bytes; each warm start counts the median as saved",
            pulls.median_seconds, pulls.slowest_seconds, pulls.nodes, pulls.size_bytes
        );
    }
}

/// The workloads a Prefetch selects, their images and where each comes from, and the pull
/// secrets its pods carry.
fn render_selection(out: &mut String, prefetch: &Prefetch, plan: &ImagePlan) {
    let _ = writeln!(
        out,
        "  selects {} workload(s) by {:?}: {}",
        plan.workloads.len(),
        prefetch.spec.filter_by_labels,
        if plan.workloads.is_empty() {
            "(none)".to_string()
        } else {
            plan.workloads.join(", ")
        }
    );
    let _ = writeln!(out, "  images ({}):", plan.images.len());
    for (image, sources) in &plan.sources {
        let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
        let _ = writeln!(out, "    {image}  ({})", sources.join(", "));
    }
    for invalid in &plan.invalid_images {
        let _ = writeln!(out, "    skipped, not a valid reference: {invalid}");
    }
    if !plan.pull_secrets.is_empty() {
        let _ = writeln!(out, "  pull secrets: {}", plan.pull_secrets.join(", "));
    }
    for account in &plan.missing_accounts {
        let _ = writeln!(
            out,
            "  ServiceAccount {account} not in the given files: its pull secrets are unknown"
        );
    }
}

/// One targeted node's line: the pod and what it pulls, or that the node has everything, and
/// whether its image list is full.
fn render_target(
    out: &mut String,
    objects: &Objects,
    prefetch_name: &str,
    target: &NodePlan,
    width: usize,
    max_images: u32,
) {
    let warming = if target.warming { " (warming)" } else { "" };
    if target.pull.is_empty() {
        let _ = writeln!(
            out,
            "  {:<width$}  nothing to pull: already has {}{warming}",
            target.node,
            target.present.join(", ")
        );
    } else {
        let _ = writeln!(
            out,
            "  {:<width$}  pod {} pulls {}{}",
            target.node,
            pod_name(prefetch_name, &target.node),
            target.pull.join(", "),
            if target.warming {
                " (warming: ahead of the other nodes)"
            } else {
                ""
            }
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
    let listed = objects
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(target.node.as_str()))
        .and_then(|n| n.status.as_ref()?.images.as_ref())
        .map_or(0, Vec::len);
    if is_full(listed, max_images) {
        let _ = writeln!(
            out,
            "  {:<width$}    (image list full: {listed} listed, cap {max_images}; the controller \
             counts an image its pod pulled here in an earlier round as present)",
            ""
        );
    }
}

/// The warming nodes, and what the controller would do about each now (with no prefetch pod
/// run yet: the files hold no outcomes).
fn render_warming(out: &mut String, objects: &Objects, warmup: &WarmupConfig, now: Timestamp) {
    let warming: Vec<&Node> = objects
        .nodes
        .iter()
        .filter(|n| warmup::is_warming(n, &warmup.taint))
        .collect();
    if warming.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Warming nodes (taint {}:{}; lifted when every image the Prefetches want there is done, \
         when none targets the node, or {} s after its creation)",
        warmup.taint,
        warmup::WARMUP_EFFECT,
        warmup.timeout.as_secs()
    );
    let prefetches: Vec<&Prefetch> = objects.prefetches.iter().collect();
    let workloads: Vec<Workload<'_>> = objects.workloads().collect();
    let wishes = warmup::wishes(
        &prefetches,
        &workloads,
        &warming,
        &warmup.taint,
        |node| std::borrow::Cow::Owned(node_images(node).into_iter().collect()),
        &PullLedger::default(),
    );
    let width = warming
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .map(str::len)
        .max()
        .unwrap_or(4);
    for node in warming {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let wanted = wishes.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let verdict = warmup::decide(
            node.metadata.creation_timestamp.as_ref().map(|t| t.0),
            warmup::held_back(node, &warmup.taint),
            wanted,
            now,
            warmup.timeout,
        );
        let action = match &verdict {
            Verdict::Warming { .. } => "keeps the taint",
            _ => "taint lifted now",
        };
        let _ = writeln!(
            out,
            "  {name:<width$}  {}: {action}",
            warmup::describe(&verdict)
        );
        for wish in wanted.iter().filter(|w| !w.open.is_empty()) {
            let _ = writeln!(
                out,
                "  {:<width$}    {} needs {}",
                "",
                wish.prefetch,
                wish.open.join(", ")
            );
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = include_str!("../../../examples/cluster.yaml");
    const WORKLOADS: &str = include_str!("../../../examples/workloads.yaml");
    const GATED: &str = include_str!("../../../examples/gated-rollouts.yaml");

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
        let text = render(&objects, None, 50, Timestamp::now());
        for line in [
            "Prefetch default/prefetch-sample",
            "docker.io/library/nginx:1.27",
            "kind-worker         pod prefetch-prefetch-sample-kind-worker pulls docker.io/library/nginx:1.27",
            "kind-worker2        pod prefetch-prefetch-sample-kind-worker2 pulls docker.io/library/nginx:1.27",
            "kind-worker3        pod prefetch-prefetch-sample-kind-worker3 pulls docker.io/library/nginx:1.27",
            "kind-control-plane  skipped: name does not contain node_filter \"worker\"",
            "=> 3 prefetch pod(s), at most 20 in flight; 0 of 3 node x image pairs already done",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_status_with_starts_and_pulls_says_what_was_saved() {
        let mut objects = Objects::default();
        objects.load("cluster.yaml", CLUSTER).unwrap();
        let status = serde_json::json!({
            "starts": {"warm": 12, "cold": 1, "warm_percent_last_hour": 92,
                       "last_cold": {"pod": "web-5f6c7-x2k4q", "node": "kind-worker2",
                                     "image": "nginx:1.27", "seconds": 62.5}},
            "pulls": {"docker.io/library/nginx:1.27": {"size_bytes": 72187654,
                      "median_seconds": 6.0, "slowest_seconds": 9.5, "nodes": 3}}
        });
        objects.prefetches[0].status = Some(serde_json::from_value(status).unwrap());
        let text = render(&objects, None, 50, Timestamp::now());
        for line in [
            "starts (kubelet Events): 12 warm, 1 cold; 92% warm in the last hour",
            "last cold start: pod web-5f6c7-x2k4q on kind-worker2 waited 62.5 s pulling nginx:1.27",
            "pulls of docker.io/library/nginx:1.27: median 6.0 s, slowest 9.5 s over 3 node(s), 72187654 bytes",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        objects.prefetches[0].status = None;
        let text = render(&objects, None, 50, Timestamp::now());
        assert!(!text.contains("starts (kubelet Events)"), "{text}");
    }

    #[test]
    fn the_gated_rollouts_sample_plans_its_three_kinds() {
        let mut objects = Objects::default();
        objects.load("gated-rollouts.yaml", GATED).unwrap();
        objects.load("cluster.yaml", CLUSTER).unwrap();
        assert!(objects.ignored.is_empty(), "{:?}", objects.ignored);
        let text = render(&objects, None, 50, Timestamp::now());
        for line in [
            "Prefetch default/shop-gated",
            "CronJob/report, DaemonSet/logs, StatefulSet/db",
            "docker.io/library/postgres:16  (StatefulSet/db)",
            "docker.io/fluent/fluent-bit:3.1  (DaemonSet/logs)",
            "docker.io/library/busybox:1.36  (CronJob/report)",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn the_sample_workloads_plan_every_kind_and_the_declared_image() {
        let mut objects = Objects::default();
        objects.load("workloads.yaml", WORKLOADS).unwrap();
        objects.load("cluster.yaml", CLUSTER).unwrap();
        assert!(objects.ignored.is_empty(), "{:?}", objects.ignored);
        let text = render(&objects, None, 50, Timestamp::now());
        for line in [
            "Prefetch default/shop",
            "selects 5 workload(s) by {\"app\": \"shop\"}: CronJob/report, DaemonSet/logs, Deployment/web, Job/backfill, StatefulSet/db",
            "docker.io/flyway/flyway:10  (StatefulSet/db)",
            "docker.io/library/python:3.12  (CronJob/report)",
            "ghcr.io/example/log-rules:7  (DaemonSet/logs)",
            "ghcr.io/example/shop-web:2.1.0  (declared)",
            "=> 3 prefetch pod(s), at most 20 in flight; 0 of 24 node x image pairs already done",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn warming_nodes_show_what_they_still_need() {
        let mut objects = Objects::default();
        objects.load("cluster.yaml", CLUSTER).unwrap();
        objects
            .load(
                "warming-nodes.yaml",
                include_str!("../../../examples/warming-nodes.yaml"),
            )
            .unwrap();
        let warmup = WarmupConfig::new(
            crate::core::warmup::DEFAULT_WARMUP_TAINT,
            std::time::Duration::from_secs(900),
        );
        let text = render(&objects, warmup.as_ref(), 50, Timestamp::now());
        for line in [
            "kind-worker4        pod prefetch-prefetch-sample-kind-worker4 pulls docker.io/library/nginx:1.27 (warming: ahead of the other nodes)",
            "kind-worker5        skipped: not Ready",
            "Warming nodes (taint cache.techsquad.rocks/warming:NoSchedule;",
            "  kind-worker4  still needs docker.io/library/nginx:1.27: keeps the taint",
            "                  default/prefetch-sample needs docker.io/library/nginx:1.27",
            "  kind-gpu      warm: no Prefetch targets it: taint lifted now",
            "  kind-worker5  held back (not Ready): keeps the taint",
            "=> 4 prefetch pod(s)",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Warm nodes off: the taint is a taint like any other, and no warming section.
        let off = render(&objects, None, 50, Timestamp::now());
        assert!(
            off.contains("kind-worker4        skipped: taint cache.techsquad.rocks/warming:NoSchedule not tolerated"),
            "{off}"
        );
        assert!(!off.contains("Warming nodes"), "{off}");
    }

    #[test]
    fn disk_pressure_and_full_lists_are_shown() {
        let mut objects = Objects::default();
        objects.load("cluster.yaml", CLUSTER).unwrap();
        let node = |name: &str, pressure: &str, images: usize| {
            let images: Vec<String> = (0..images)
                .map(|i| {
                    format!(
                        "  - {{names: [\"docker.io/library/big-{i}:1\"], sizeBytes: {}}}",
                        1_000_000 + i
                    )
                })
                .collect();
            format!(
                "kind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/os: linux}}}}\nstatus:\n  \
                 conditions: [{{type: Ready, status: \"True\"}}, {{type: DiskPressure, status: \"{pressure}\"}}]\n  \
                 images:\n{}\n",
                if images.is_empty() {
                    "  - {names: [\"docker.io/library/pause:3.10\"], sizeBytes: 1}".to_string()
                } else {
                    images.join("\n")
                }
            )
        };
        let text = [
            node("kind-worker6", "True", 0),
            node("kind-worker7", "False", 50),
            node("kind-worker8", "False", 49),
        ]
        .join("---\n");
        objects.load("nodes.yaml", &text).unwrap();
        let out = render(&objects, None, 50, Timestamp::now());
        for line in [
            "kind-worker6        skipped: DiskPressure: the node is low on disk, a pull would only trigger image garbage collection",
            "kind-worker7        pod prefetch-prefetch-sample-kind-worker7 pulls docker.io/library/nginx:1.27",
            "                      (image list full: 50 listed, cap 50; the controller counts an image its pod pulled here in an earlier round as present)",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert_eq!(out.matches("image list full").count(), 1, "{out}");
        let off = render(&objects, None, 0, Timestamp::now());
        assert!(!off.contains("image list full"), "{off}");
    }

    #[test]
    fn pull_secrets_include_the_service_accounts() {
        let mut objects = Objects::default();
        objects.load("cluster.yaml", CLUSTER).unwrap();
        let text = "kind: ServiceAccount\nmetadata: {name: builder}\nimagePullSecrets: [{name: sa-regcred}]\n---\n\
                    kind: Deployment\nmetadata: {name: api, labels: {app: nginx}}\nspec:\n  selector: {}\n  \
                    template: {spec: {serviceAccountName: builder, containers: [{name: c, image: redis:7}]}}\n---\n\
                    kind: Deployment\nmetadata: {name: cron, labels: {app: nginx}}\nspec:\n  selector: {}\n  \
                    template: {spec: {serviceAccountName: absent, containers: [{name: c, image: redis:7}]}}\n";
        objects.load("accounts.yaml", text).unwrap();
        let out = render(&objects, None, 50, Timestamp::now());
        for line in [
            "  pull secrets: sa-regcred\n",
            "  ServiceAccount absent not in the given files",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
    }

    #[test]
    fn lists_and_other_kinds() {
        let mut objects = Objects::default();
        let text = "kind: List\nitems:\n- {kind: Node, metadata: {name: a}}\n- {kind: Service, metadata: {name: s}}\n---\n";
        objects.load("f.yaml", text).unwrap();
        assert_eq!(objects.nodes.len(), 1);
        assert_eq!(objects.ignored, ["f.yaml: Service s"]);
        assert!(
            render(&objects, None, 50, Timestamp::now())
                .starts_with("no Prefetch in the given files")
        );
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
