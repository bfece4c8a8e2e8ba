//! The Grafana dashboard and the alerts (docs/src/observability.md), as users install them:
//!
//! - every PromQL expression of the dashboard (panels and variables) and of the rules parses
//!   with a real PromQL parser, and names only metrics and labels that the binaries export,
//!   read from a `/metrics` scrape of the real controller and webhook after a gated rollout
//!   through them that gives every family named a series (warm, cold and failed pulls, pods
//!   the gate held, a pod the gate could not read);
//! - the dashboard reads the data source its `datasource` variable picks, with a unit on every
//!   panel; every alert has a severity, a `for`, a summary, a description and a runbook link
//!   to its section of the docs;
//! - the chart's copies and the kustomize component carry manifests/observability/'s files as
//!   they are, and kustomize (where kubectl is installed) adds the component to an install.
//!
//! The chart's golden renders are checked in tests/chart.rs.

use std::collections::BTreeSet;
use std::time::Duration;

use prefetch_tests::binaries::{http_get, metric_value};
use prefetch_tests::kubelet::{Pull, emit_pulled, present_message, pulled_message};
use prefetch_tests::manifests::{
    chart_dir, kubectl_for, kubectl_kustomize, manifests_dir, observability_dir, parse_documents,
    promtool_for, read_yaml, run_tool,
};
use prefetch_tests::promql::{Exported, check, from_grafana};
use prefetch_tests::rollout::{
    DEPLOYMENT, GateRig, NEW_IMAGE, RigOptions, create_replica_set_object,
};
use prefetch_tests::scenario::eventually;
use prefetch_tests::tls_client::{PinnedClient, Protocol};
use serde_json::Value;

const RUNBOOK_PAGE: &str = "docs/src/observability.md";
const RUNBOOK_URL: &str =
    "https://github.com/kainlite/kube-prefetch/blob/main/docs/src/observability.md#";

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&observability_dir().join("grafana-dashboard.json"))).unwrap()
}

fn rules() -> Value {
    read_yaml(&observability_dir().join("prometheus-rules.yaml")).unwrap()
}

/// Every panel of the dashboard, those inside rows included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        out.push(panel.clone());
        out.extend(panel["panels"].as_array().into_iter().flatten().cloned());
    }
    out
}

/// Every alerting rule.
fn alerts() -> Vec<Value> {
    rules()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// (where, PromQL) of every query: each dashboard target and query variable (made PromQL,
/// [`from_grafana`]) and each rule's expression.
fn queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut out = Vec::new();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target's expr");
            out.push((
                format!("panel {:?} {}", panel["title"], target["refId"]),
                from_grafana(expr),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .expect("a query variable's query");
            out.push((
                format!("variable {}", variable["name"]),
                from_grafana(query),
            ));
        }
    }
    for rule in alerts() {
        let expr = rule["expr"].as_str().expect("an alert's expr");
        out.push((format!("alert {}", rule["alert"]), expr.to_string()));
    }
    out
}

#[test]
fn every_query_parses_as_promql() {
    let queries = queries();
    assert!(queries.len() > 30, "{} queries", queries.len());
    let empty = Exported::default();
    let failed: Vec<String> = queries
        .iter()
        .filter_map(|(at, query)| {
            check(query, &empty)
                .err()
                .map(|e| format!("{at}: {e}\n  {query}"))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn the_dashboard_reads_the_chosen_data_source_with_units() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "kube-prefetch");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["datasource", "namespace", "prefetch", "registry"]);
    assert_eq!(variables[0]["type"], "datasource");
    assert_eq!(variables[0]["query"], "prometheus");
    let ds = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap().to_string();
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "{title}: id taken"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_i64().unwrap() + grid["w"].as_i64().unwrap() <= 24,
            "{title}: wider than the dashboard"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], ds, "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"], ds, "{title}");
        }
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
        assert!(unit.is_some_and(|u| !u.is_empty()), "{title}: no unit");
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: no description"
        );
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"], ds, "{}", variable["name"]);
    }
}

/// Headings of the runbook page, as the anchors GitHub and mdBook give a one-word heading.
fn runbook_anchors() -> BTreeSet<String> {
    read(&prefetch_tests::repo::root().join(RUNBOOK_PAGE))
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(|heading| heading.trim().to_lowercase())
        .collect()
}

#[test]
fn every_alert_says_what_and_how_bad_and_links_its_runbook() {
    let anchors = runbook_anchors();
    let mut names = BTreeSet::new();
    for rule in alerts() {
        let name = rule["alert"].as_str().expect("alerting rules only");
        assert!(names.insert(name.to_string()), "{name} twice");
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        let wait = rule["for"].as_str().unwrap_or("");
        assert!(
            wait.ends_with('m') && wait[..wait.len() - 1].parse::<u32>().is_ok(),
            "{name}: for {wait:?}"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|t| t.len() > 20),
                "{name}: {annotation}"
            );
        }
        let runbook = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        let anchor = runbook
            .strip_prefix(RUNBOOK_URL)
            .unwrap_or_else(|| panic!("{name}: the runbook {runbook:?} is not {RUNBOOK_URL}..."));
        assert_eq!(anchor, name.to_lowercase(), "{name}: runbook anchor");
        assert!(
            anchors.contains(anchor),
            "{name}: {RUNBOOK_PAGE} has no `### {name}` section"
        );
    }
    // The five the issue asks for (issue 25), among others.
    for wanted in [
        "PrefetchGatedColdStarts",
        "PrefetchPullsFailing",
        "PrefetchNodeStuckWarming",
        "PrefetchNoLeader",
        "PrefetchWebhookErrors",
    ] {
        assert!(names.contains(wanted), "{wanted} missing");
    }
}

#[test]
fn the_chart_and_the_component_carry_the_files_as_they_are() {
    for file in ["grafana-dashboard.json", "prometheus-rules.yaml"] {
        assert!(
            read(&chart_dir().join("files").join(file)) == read(&observability_dir().join(file)),
            "manifests/chart/files/{file} is not manifests/observability/{file}: run `make observability`"
        );
    }
    let component = manifests_dir().join("components/prometheus-rule");
    let kustomization = read_yaml(&component.join("kustomization.yaml")).unwrap();
    assert_eq!(kustomization["kind"], "Component");
    assert_eq!(
        kustomization["resources"],
        serde_json::json!(["prometheus-rule.yaml"])
    );
    let docs = parse_documents(
        "prometheus-rule.yaml",
        &read(&component.join("prometheus-rule.yaml")),
    )
    .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].kind, "PrometheusRule");
    assert_eq!(docs[0].value["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        docs[0].value["metadata"]["namespace"],
        prefetch_tests::manifests::NAMESPACE
    );
    assert!(
        docs[0].value["spec"] == rules(),
        "the component's PrometheusRule is not manifests/observability/prometheus-rules.yaml: run `make observability`"
    );
}

/// Prometheus's own check of the rule file (where promtool is installed: Debian's
/// `prometheus` package has it): the expressions, durations and annotation templates.
#[test]
fn promtool_accepts_the_rule_file() {
    let Some(promtool) = promtool_for("promtool_accepts_the_rule_file") else {
        return;
    };
    let args = [
        "check",
        "rules",
        "manifests/observability/prometheus-rules.yaml",
    ]
    .map(String::from);
    if let Err(stderr) = run_tool(&promtool, &args).unwrap() {
        panic!("promtool check rules: {stderr}");
    }
}

/// An install's kustomization that adds the component, rendered by kubectl.
#[test]
fn kustomize_adds_the_component_to_an_install() {
    let Some(kubectl) = kubectl_for("kustomize_adds_the_component_to_an_install") else {
        return;
    };
    let scratch = std::env::temp_dir().join(format!("prefetch-component-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    for dir in ["base", "cert-manager", "components"] {
        copy_dir(&manifests_dir().join(dir), &scratch.join(dir));
    }
    std::fs::write(
        scratch.join("kustomization.yaml"),
        "resources:\n  - cert-manager\ncomponents:\n  - components/prometheus-rule\n",
    )
    .unwrap();
    let rendered = kubectl_kustomize(&kubectl, &scratch);
    let plain = kubectl_kustomize(&kubectl, &manifests_dir().join("cert-manager"));
    let _ = std::fs::remove_dir_all(&scratch);
    let (rendered, plain) = (rendered.unwrap(), plain.unwrap());
    let rule: Vec<_> = rendered
        .iter()
        .filter(|d| d.kind == "PrometheusRule")
        .collect();
    assert_eq!(rule.len(), 1);
    assert!(rule[0].value["spec"] == rules());
    assert_eq!(
        rendered.len(),
        plain.len() + 1,
        "the component adds one object"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

// --- What the binaries export ---

/// Until the text at `addr`'s `/metrics` has a series of each of `families` (`name{`).
async fn until_series(addr: std::net::SocketAddr, families: &[&str]) {
    for family in families {
        eventually(
            Duration::from_secs(30),
            &format!("a series of {family} at {addr}"),
            || async {
                http_get(addr, "/metrics")
                    .await
                    .is_ok_and(|(_, text)| text.contains(&format!("{family}{{")))
            },
        )
        .await;
    }
}

/// A gated rollout through the real webhook and controller, two of its pods starting (one
/// warm, one cold), a rollout whose pull fails on one node, and a pod review the webhook
/// cannot read: then every family the dashboard and the alerts name has series.
async fn drive(rig: &GateRig) {
    rig.until_leader_seen().await.unwrap();
    let created = rig.roll_out().await.unwrap();
    let pods = rig
        .until_running(&created, Duration::from_secs(30))
        .await
        .unwrap();
    let client = rig.client();
    create_replica_set_object(&client, rig.namespace(), DEPLOYMENT, &pods)
        .await
        .unwrap();
    let node = |p: &k8s_openapi::api::core::v1::Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("a running pod has a node")
    };
    let container = Some("spec.containers{c0}");
    let (warm, cold) = (&pods[0], &pods[1]);
    let present = present_message(NEW_IMAGE);
    emit_pulled(&client, warm, container, &node(warm), &present)
        .await
        .unwrap();
    let pulled = pulled_message(NEW_IMAGE, 42.5, 5_000);
    emit_pulled(&client, cold, container, &node(cold), &pulled)
        .await
        .unwrap();
    // A later rollout whose image one node cannot pull.
    let failing = "nginx:1.27";
    rig.rules.set_image(
        "worker-1",
        "docker.io/library/nginx:1.27",
        Pull::Fail("ErrImagePull"),
    );
    rig.set_image(DEPLOYMENT, failing).await.unwrap();
    // A pod review that is no AdmissionReview: allowed ungated, counted as unreadable.
    let ca = std::fs::read(rig.cluster.dir.path().join("certs").join("ca.crt")).unwrap();
    let pinned = PinnedClient::new(
        &ca,
        rig.webhook.admission_addr,
        "127.0.0.1",
        Protocol::Http1,
    )
    .unwrap();
    pinned
        .post("/mutate/pod", "text/plain", b"not a review".to_vec())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_name_only_what_the_binaries_export() {
    let Some(rig) = GateRig::start("observability", RigOptions::default())
        .await
        .unwrap()
    else {
        return;
    };
    drive(&rig).await;
    let controller = rig.controllers[0].as_ref().unwrap();
    until_series(
        controller.metrics_addr,
        &[
            "prefetch_controller_workload_starts_total",
            "prefetch_controller_gated_cold_starts_total",
            "prefetch_controller_pull_seconds_saved_total",
            "prefetch_controller_cold_start_wait_seconds_bucket",
            "prefetch_controller_pull_duration_seconds_bucket",
            "prefetch_controller_pulled_bytes_total",
            "prefetch_controller_pull_failures_total",
            "prefetch_controller_gate_releases_total",
        ],
    )
    .await;
    until_series(
        rig.webhook.ops_addr,
        &["prefetch_webhook_pod_gate_errors_total"],
    )
    .await;
    let controller_text = controller.metrics().await.unwrap();
    let webhook_text = http_get(rig.webhook.ops_addr, "/metrics").await.unwrap().1;
    // The Prefetch gates rollouts: its one cold start is a gated cold start.
    let gated = format!(
        r#"prefetch_controller_gated_cold_starts_total{{prefetch="prefetch-sample",namespace="{}"}}"#,
        rig.namespace()
    );
    assert_eq!(metric_value(&controller_text, &gated), 1.0, "{gated}");
    for result in ["warm", "cold"] {
        assert!(
            controller_text.contains(&format!("result=\"{result}\"")),
            "no {result} start counted:\n{controller_text}"
        );
    }
    let exported = Exported::from_scrapes(&[&controller_text, &webhook_text]).unwrap();
    let problems: Vec<String> = queries()
        .into_iter()
        .flat_map(|(at, query)| {
            check(&query, &exported)
                .unwrap_or_else(|e| vec![format!("does not parse: {e}")])
                .into_iter()
                .map(move |p| format!("{at}: {p}"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "queries name what the binaries do not export:\n{}\n\ncontroller:\n{controller_text}\nwebhook:\n{webhook_text}",
        problems.join("\n")
    );
}
