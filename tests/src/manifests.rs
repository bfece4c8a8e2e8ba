//! The install manifests as data: the kustomize base and overlays read from their files, Helm
//! renders, the helm-only labels stripped so both can be compared, and the optional `helm` and
//! `kubectl` binaries the deeper checks run when a machine has them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// The namespace every install in the docs uses.
pub const NAMESPACE: &str = "prefetch-system";
/// The release name the golden chart render uses.
pub const RELEASE: &str = "kube-prefetch";

/// Labels the chart adds to every object's metadata on top of the base's.
pub const HELM_ONLY_LABELS: [&str; 4] = [
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "helm.sh/chart",
];

pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

pub fn chart_dir() -> PathBuf {
    manifests_dir().join("chart")
}

/// The committed render of the chart that CI (which has no helm) compares with the base.
pub fn golden_chart_render() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/chart-cert-manager.yaml")
}

/// The `--set` that produces [`golden_chart_render`]; `make chart-golden` renders the same.
pub const GOLDEN_CHART_SETS: [&str; 1] = ["tls.source=cert-manager"];

/// The committed render of the chart's opt-in dashboard ConfigMap and PrometheusRule, enabled
/// ([`OBSERVABILITY_CHART_SETS`], [`OBSERVABILITY_TEMPLATES`]).
pub fn golden_observability_render() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/chart-observability.yaml")
}

/// The `--set` that produces [`golden_observability_render`] (the Makefile's
/// `OBSERVABILITY_SETS`).
pub const OBSERVABILITY_CHART_SETS: [&str; 4] = [
    "tls.source=cert-manager",
    "grafanaDashboard.enabled=true",
    "prometheusRule.enabled=true",
    "prometheusRule.labels.release=kube-prometheus-stack",
];

/// The templates [`golden_observability_render`] shows (`--show-only`), in its order.
pub const OBSERVABILITY_TEMPLATES: [&str; 2] = [
    "templates/grafana-dashboard.yaml",
    "templates/prometheus-rule.yaml",
];

/// The observability files of the repository (manifests/observability/), the sources of the
/// chart's copies (manifests/chart/files/) and of the kustomize component.
pub fn observability_dir() -> PathBuf {
    manifests_dir().join("observability")
}

/// `helm template` of the chart as release [`RELEASE`] into `namespace`, with `--set` values
/// and `--set-file` files.
pub fn helm_template_args(namespace: &str, sets: &[&str], set_files: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "template",
        RELEASE,
        "manifests/chart",
        "--namespace",
        namespace,
    ]
    .map(String::from)
    .into();
    for set in sets {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    for set in set_files {
        args.extend(["--set-file".to_string(), set.clone()]);
    }
    args
}

/// One YAML document of a manifest file or a render.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    /// Where it came from (a path, or a render's description), for messages.
    pub source: String,
    pub kind: String,
    pub name: String,
    pub value: Value,
}

impl Doc {
    pub fn key(&self) -> (String, String) {
        (self.kind.clone(), self.name.clone())
    }
}

/// Every non-empty document of a multi-document YAML text.
pub fn parse_documents(source: &str, text: &str) -> anyhow::Result<Vec<Doc>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).with_context(|| format!("{source}: not YAML"))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|value| {
            let kind = value["kind"]
                .as_str()
                .with_context(|| format!("{source}: a document without kind"))?
                .to_string();
            let name = value["metadata"]["name"].as_str().unwrap_or("").to_string();
            Ok(Doc {
                source: source.to_string(),
                kind,
                name,
                value,
            })
        })
        .collect()
}

/// One YAML file as a value.
pub fn read_yaml(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    serde_saphyr::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// The `resources` of a kustomization, recursively: a directory entry is another
/// kustomization. Generators, patches and replacements are not applied; [`kubectl_kustomize`]
/// does that where kubectl is installed.
pub fn kustomization_resources(dir: &Path) -> anyhow::Result<Vec<Doc>> {
    let file = dir.join("kustomization.yaml");
    let kustomization = read_yaml(&file)?;
    let mut out = Vec::new();
    for entry in kustomization["resources"].as_array().into_iter().flatten() {
        let rel = entry.as_str().context("a resource that is not a string")?;
        let path = dir.join(rel);
        if path.is_dir() {
            out.extend(kustomization_resources(&path)?);
        } else {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
            let source = path
                .strip_prefix(manifests_dir())
                .unwrap_or(&path)
                .display()
                .to_string();
            out.extend(parse_documents(&source, &text)?);
        }
    }
    Ok(out)
}

/// The document with the helm-only labels removed (and `labels` itself when nothing is left).
pub fn without_helm_labels(mut value: Value) -> Value {
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut)
    {
        for label in HELM_ONLY_LABELS {
            labels.remove(label);
        }
        if labels.is_empty() {
            metadata.remove("labels");
        }
    }
    value
}

/// Documents by (kind, name); a duplicate is an error.
pub fn by_key(docs: &[Doc]) -> anyhow::Result<BTreeMap<(String, String), &Doc>> {
    let mut map = BTreeMap::new();
    for doc in docs {
        if let Some(previous) = map.insert(doc.key(), doc) {
            bail!(
                "{} {} is defined twice: {} and {}",
                doc.kind,
                doc.name,
                previous.source,
                doc.source
            );
        }
    }
    Ok(map)
}

/// JSON paths at which two documents differ, for readable assertion messages.
pub fn differences(left: &Value, right: &Value) -> Vec<String> {
    fn walk(path: String, left: &Value, right: &Value, out: &mut Vec<String>) {
        match (left, right) {
            (Value::Object(l), Value::Object(r)) => {
                for key in l.keys().chain(r.keys().filter(|k| !l.contains_key(*k))) {
                    let null = Value::Null;
                    walk(
                        format!("{path}.{key}"),
                        l.get(key).unwrap_or(&null),
                        r.get(key).unwrap_or(&null),
                        out,
                    );
                }
            }
            (Value::Array(l), Value::Array(r)) if l.len() == r.len() => {
                for (i, (l, r)) in l.iter().zip(r).enumerate() {
                    walk(format!("{path}[{i}]"), l, r, out);
                }
            }
            (l, r) if l != r => out.push(format!("{path}: {l} != {r}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(String::new(), left, right, &mut out);
    out
}

/// An optional tool: `$env_var` if set, else `name` on PATH if `name <probe_args>` runs. None
/// when absent or not working, and `test` says it was skipped: the checks that need the tool
/// run only on machines that have it (CI may not).
fn optional_tool(test: &str, name: &str, env_var: &str, probe_args: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Some(PathBuf::from(path));
    }
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    let Some(found) = found else {
        eprintln!("{test}: skipped, no {name} on PATH (or {env_var})");
        return None;
    };
    let works = Command::new(&found)
        .args(probe_args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!(
            "{test}: skipped, {} is on PATH but `{name} {}` fails",
            found.display(),
            probe_args.join(" ")
        );
        return None;
    }
    Some(found)
}

/// helm (`PREFETCH_HELM`, else on PATH), for `test`; None (and a skip message) without it.
pub fn helm_for(test: &str) -> Option<PathBuf> {
    optional_tool(test, "helm", "PREFETCH_HELM", &["version"])
}

/// kubectl (`PREFETCH_KUBECTL`, else on PATH), for `test`; None (and a skip message) without it.
pub fn kubectl_for(test: &str) -> Option<PathBuf> {
    optional_tool(
        test,
        "kubectl",
        "PREFETCH_KUBECTL",
        &["version", "--client"],
    )
}

/// promtool (`PREFETCH_PROMTOOL`, else on PATH), for `test`; None (and a skip message) without
/// it.
pub fn promtool_for(test: &str) -> Option<PathBuf> {
    optional_tool(test, "promtool", "PREFETCH_PROMTOOL", &["--version"])
}

/// Runs a tool in the workspace root; Ok(stdout) on success, Err(stderr) on failure.
pub fn run_tool(tool: &Path, args: &[String]) -> anyhow::Result<Result<String, String>> {
    let output = Command::new(tool)
        .args(args)
        .current_dir(manifests_dir().join(".."))
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    Ok(if output.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    })
}

/// `kubectl kustomize <dir>`, rendered.
pub fn kubectl_kustomize(kubectl: &Path, dir: &Path) -> anyhow::Result<Vec<Doc>> {
    let args = ["kustomize".to_string(), dir.display().to_string()];
    match run_tool(kubectl, &args)? {
        Ok(text) => parse_documents(&format!("kubectl kustomize {}", dir.display()), &text),
        Err(stderr) => bail!("kubectl kustomize {} failed: {stderr}", dir.display()),
    }
}
