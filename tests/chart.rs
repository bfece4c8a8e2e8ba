//! The Helm chart defines what the kustomize install defines.
//!
//! CI has no helm binary, so the comparison with the base runs on a committed render of the
//! chart (`tests/golden/chart-cert-manager.yaml`, from `make chart-golden`). Where helm is
//! installed (or named by PREFETCH_HELM), the other tests render the chart for real: the
//! golden file must be current, `helm lint --strict` must pass, every certificate source must
//! produce a certificate the webhook loads and the caBundle trusts, values must reach the
//! objects, and bad values must fail with a message naming them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use prefetch_tests::manifests::{
    Doc, GOLDEN_CHART_SETS, NAMESPACE, OBSERVABILITY_CHART_SETS, OBSERVABILITY_TEMPLATES, RELEASE,
    by_key, chart_dir, differences, golden_chart_render, golden_observability_render, helm_for,
    helm_template_args, kustomization_resources, manifests_dir, observability_dir, parse_documents,
    read_yaml, run_tool, without_helm_labels,
};
use serde_json::{Value, json};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn values() -> Value {
    read_yaml(&chart_dir().join("values.yaml")).unwrap()
}

fn golden() -> Vec<Doc> {
    parse_documents("golden chart render", &read(&golden_chart_render())).unwrap()
}

/// The golden render of the dashboard ConfigMap and the PrometheusRule, both enabled.
fn golden_observability() -> Vec<Doc> {
    parse_documents(
        "golden observability render",
        &read(&golden_observability_render()),
    )
    .unwrap()
}

/// What the cert-manager install defines, built from the kustomize sources by hand: the base
/// (less the Namespace, which `helm install --create-namespace` makes, and the CRD, which the
/// chart carries in crds/), the overlay's Issuers and Certificates, and the overlay's CA
/// injection annotation on both webhook configurations.
fn kustomize_cert_manager_install() -> Vec<Doc> {
    let inject = json!({"cert-manager.io/inject-ca-from": format!("{NAMESPACE}/prefetch-webhook")});
    let mut docs: Vec<Doc> = kustomization_resources(&manifests_dir().join("base"))
        .unwrap()
        .into_iter()
        .filter(|d| d.kind != "Namespace" && d.kind != "CustomResourceDefinition")
        .map(|mut d| {
            if d.kind.ends_with("WebhookConfiguration") {
                d.value["metadata"]["annotations"] = inject.clone();
            }
            d
        })
        .collect();
    docs.extend(
        parse_documents(
            "cert-manager/certificates.yaml",
            &read(&manifests_dir().join("cert-manager/certificates.yaml")),
        )
        .unwrap(),
    );
    docs
}

fn assert_same_objects(chart: &[Doc], kustomize: &[Doc]) {
    let chart = by_key(chart).unwrap();
    let kustomize = by_key(kustomize).unwrap();
    let chart_keys: BTreeSet<_> = chart.keys().collect();
    let kustomize_keys: BTreeSet<_> = kustomize.keys().collect();
    assert_eq!(
        chart_keys, kustomize_keys,
        "the chart and the kustomize install define different objects"
    );
    let mut mismatches = Vec::new();
    for (key, doc) in &chart {
        let diff = differences(
            &without_helm_labels(doc.value.clone()),
            &kustomize[key].value,
        );
        if !diff.is_empty() {
            mismatches.push(format!(
                "{} {} ({} vs {}):\n  {}",
                key.0,
                key.1,
                doc.source,
                kustomize[key].source,
                diff.join("\n  ")
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn the_chart_renders_what_the_kustomize_install_defines() {
    // Names, namespaces, ports, paths, RBAC rules, webhook settings, probes, resources and
    // security contexts: every field, beyond the helm-only labels.
    assert_same_objects(&golden(), &kustomize_cert_manager_install());
}

#[test]
fn the_chart_carries_every_object_with_the_helm_labels() {
    for doc in golden().into_iter().chain(golden_observability()) {
        let labels = &doc.value["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/managed-by"], "Helm",
            "{}",
            doc.kind
        );
        assert_eq!(
            labels["app.kubernetes.io/instance"], RELEASE,
            "{}",
            doc.kind
        );
    }
}

#[test]
fn the_chart_ships_the_generated_crd() {
    // Helm installs crds/ before the templates (and never deletes it on uninstall).
    assert_eq!(
        read(&chart_dir().join("crds/prefetches.cache.techsquad.rocks.yaml")),
        read(&manifests_dir().join("base/crd/prefetches.cache.techsquad.rocks.yaml"))
    );
}

/// The dashboard and the alerts are opt-in: a default install renders neither.
#[test]
fn the_chart_renders_no_dashboard_or_alerts_by_default() {
    let values = values();
    assert_eq!(values["grafanaDashboard"]["enabled"], false);
    assert_eq!(values["prometheusRule"]["enabled"], false);
    let kinds: BTreeSet<String> = golden().into_iter().map(|d| d.kind).collect();
    assert!(!kinds.contains("ConfigMap"), "{kinds:?}");
    assert!(!kinds.contains("PrometheusRule"), "{kinds:?}");
}

/// Enabled, the chart renders the dashboard in a ConfigMap the Grafana sidecar loads (its
/// label, `grafana_dashboard: "1"` by default) and the alerts in a PrometheusRule carrying the
/// labels asked for; both hold exactly the files under manifests/observability/.
#[test]
fn enabled_the_chart_renders_the_dashboard_and_the_alerts() {
    let docs = golden_observability();
    let keys: Vec<(String, String)> = docs.iter().map(Doc::key).collect();
    assert_eq!(
        keys,
        [
            (
                "ConfigMap".to_string(),
                "kube-prefetch-dashboard".to_string()
            ),
            ("PrometheusRule".to_string(), "kube-prefetch".to_string()),
        ]
    );
    let values = values();
    let (config_map, rule) = (&docs[0].value, &docs[1].value);
    let sidecar_label = values["grafanaDashboard"]["label"].as_str().unwrap();
    assert_eq!(sidecar_label, "grafana_dashboard");
    assert_eq!(
        config_map["metadata"]["labels"][sidecar_label],
        values["grafanaDashboard"]["labelValue"]
    );
    assert_eq!(config_map["metadata"]["labels"][sidecar_label], "1");
    let dashboard: Value = serde_json::from_str(
        config_map["data"]["kube-prefetch.json"]
            .as_str()
            .expect("the dashboard as a string"),
    )
    .expect("the ConfigMap's dashboard is JSON");
    let source: Value =
        serde_json::from_str(&read(&observability_dir().join("grafana-dashboard.json"))).unwrap();
    assert!(
        dashboard == source,
        "the ConfigMap's dashboard is not the file's"
    );

    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        rule["metadata"]["labels"]["release"], "kube-prometheus-stack",
        "prometheusRule.labels reach the PrometheusRule"
    );
    let groups = read_yaml(&observability_dir().join("prometheus-rules.yaml")).unwrap();
    assert!(
        rule["spec"] == groups,
        "the PrometheusRule's spec is not the rule file"
    );
    for doc in &docs {
        assert_eq!(
            doc.value["metadata"]["namespace"], NAMESPACE,
            "{}",
            doc.kind
        );
    }
}

/// values.yaml's defaults are the base's settings, so `helm install` with no values installs
/// what `kubectl apply -k` does.
#[test]
fn chart_defaults_are_the_kustomize_settings() {
    let values = values();
    let base = by_key(&kustomize_cert_manager_install())
        .unwrap()
        .into_iter()
        .map(|(k, d)| (k, d.value.clone()))
        .collect::<BTreeMap<_, _>>();
    let deployment = |name: &str| base[&("Deployment".to_string(), name.to_string())].clone();
    for (component, name) in [
        ("webhook", "prefetch-webhook"),
        ("controller", "prefetch-controller"),
    ] {
        let d = deployment(name);
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let v = &values[component];
        assert_eq!(
            container["image"],
            format!(
                "{}:{}",
                v["image"]["repository"].as_str().unwrap(),
                v["image"]["tag"].as_str().unwrap()
            )
        );
        assert_eq!(container["imagePullPolicy"], v["image"]["pullPolicy"]);
        assert_eq!(d["spec"]["replicas"], v["replicas"]);
        assert_eq!(container["resources"], v["resources"]);
        let log_arg = format!("--log-format={}", v["logFormat"].as_str().unwrap());
        assert!(
            container["args"]
                .as_array()
                .unwrap()
                .contains(&json!(log_arg))
        );
    }
    let controller = deployment("prefetch-controller");
    let rate = format!(
        "--max-pod-creates-per-second={}",
        values["controller"]["maxPodCreatesPerSecond"]
    );
    let warmup = &values["controller"]["warmup"];
    assert_eq!(warmup["enabled"], true);
    for arg in [
        rate,
        format!("--warmup-taint={}", warmup["taint"].as_str().unwrap()),
        format!("--warmup-timeout={}", warmup["timeout"].as_str().unwrap()),
    ] {
        assert!(
            controller["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .unwrap()
                .contains(&json!(arg)),
            "{arg}"
        );
    }
    let mutating = &base[&(
        "MutatingWebhookConfiguration".to_string(),
        "prefetch-webhook".to_string(),
    )];
    let hooks = mutating["webhooks"].as_array().unwrap();
    let prefetch_hooks = &values["webhook"]["prefetchHooks"];
    let deployment_hook = &values["webhook"]["deploymentHook"];
    assert_eq!(hooks[0]["failurePolicy"], prefetch_hooks["failurePolicy"]);
    assert_eq!(hooks[0]["timeoutSeconds"], prefetch_hooks["timeoutSeconds"]);
    assert_eq!(hooks[1]["failurePolicy"], deployment_hook["failurePolicy"]);
    assert_eq!(
        hooks[1]["timeoutSeconds"],
        deployment_hook["timeoutSeconds"]
    );
    let mut excluded: Vec<Value> = deployment_hook["excludedNamespaces"]
        .as_array()
        .unwrap()
        .clone();
    excluded.push(json!(NAMESPACE));
    assert_eq!(
        hooks[1]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(excluded)
    );
}

// --- Checks that render the chart with helm, where a machine has it. ---

/// [`helm_template_args`], rendered.
fn helm_template(
    helm: &Path,
    namespace: &str,
    sets: &[&str],
    set_files: &[String],
) -> Result<Vec<Doc>, String> {
    let text = run_tool(helm, &helm_template_args(namespace, sets, set_files)).unwrap()?;
    Ok(parse_documents(&format!("helm template {sets:?}"), &text).unwrap())
}

#[test]
fn the_golden_render_is_current() {
    let Some(helm) = helm_for("the_golden_render_is_current") else {
        return;
    };
    let rendered = run_tool(
        &helm,
        &helm_template_args(NAMESPACE, &GOLDEN_CHART_SETS, &[]),
    )
    .unwrap()
    .unwrap();
    assert!(
        rendered == read(&golden_chart_render()),
        "tests/golden/chart-cert-manager.yaml is not what the chart renders: run `make chart-golden`"
    );
    let rendered = run_tool(&helm, &observability_template_args())
        .unwrap()
        .unwrap();
    assert!(
        rendered == read(&golden_observability_render()),
        "tests/golden/chart-observability.yaml is not what the chart renders: run `make chart-golden`"
    );
}

/// `helm template` of the golden observability render: [`OBSERVABILITY_CHART_SETS`], showing
/// only [`OBSERVABILITY_TEMPLATES`].
fn observability_template_args() -> Vec<String> {
    let mut args = helm_template_args(NAMESPACE, &OBSERVABILITY_CHART_SETS, &[]);
    for template in OBSERVABILITY_TEMPLATES {
        args.extend(["--show-only".to_string(), template.to_string()]);
    }
    args
}

#[test]
fn the_chart_lints_strict() {
    let Some(helm) = helm_for("the_chart_lints_strict") else {
        return;
    };
    for (source, observability) in [("chart", false), ("cert-manager", true)] {
        let mut args: Vec<String> = [
            "lint",
            "--strict",
            "manifests/chart",
            "--namespace",
            NAMESPACE,
            "--set",
            &format!("tls.source={source}"),
        ]
        .map(String::from)
        .into();
        if observability {
            for set in [
                "grafanaDashboard.enabled=true",
                "prometheusRule.enabled=true",
            ] {
                args.extend(["--set".to_string(), set.to_string()]);
            }
        }
        if let Err(stderr) = run_tool(&helm, &args).unwrap() {
            panic!(
                "helm lint (tls.source={source}, dashboard and alerts {observability}): {stderr}"
            );
        }
    }
}

fn secret_pem(secret: &Doc, key: &str) -> Vec<u8> {
    let b64 = secret.value["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the Secret has no {key}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// The serving pair loads in the webhook, and a client trusting only `ca_pem` (as the API
/// server does with the caBundle) accepts it under the Service's DNS names.
fn assert_serves_the_service(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8], namespace: &str) {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let dir = std::env::temp_dir().join(format!(
        "prefetch-chart-tls-{}-{namespace}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tls.crt"), cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), key_pem).unwrap();
    let loaded = prefetch_webhook::shell::tls::ReloadingCert::load(
        prefetch_webhook::shell::tls::CertFiles {
            cert_path: dir.join("tls.crt"),
            key_path: dir.join("tls.key"),
        },
        provider.clone(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(loaded.is_ok(), "the webhook rejects the pair: {loaded:?}");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).unwrap())
        .unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    let leaf = CertificateDer::from_pem_slice(cert_pem).unwrap();
    for name in [
        format!("prefetch-webhook.{namespace}.svc"),
        format!("prefetch-webhook.{namespace}.svc.cluster.local"),
    ] {
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from(name.clone()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn ca_bundles(docs: &[Doc]) -> Vec<String> {
    docs.iter()
        .filter(|d| d.kind.ends_with("WebhookConfiguration"))
        .flat_map(|d| d.value["webhooks"].as_array().unwrap().clone())
        .map(|hook| {
            hook["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// Apart from the certificate source, a render defines what the golden render does.
fn assert_same_apart_from_certificates(rendered: &[Doc]) {
    let strip = |docs: &[Doc]| -> Vec<Doc> {
        docs.iter()
            .filter(|d| !matches!(d.kind.as_str(), "Secret" | "Issuer" | "Certificate"))
            .cloned()
            .map(|mut d| {
                d.value = without_helm_labels(d.value);
                if d.kind.ends_with("WebhookConfiguration") {
                    if let Some(m) = d.value["metadata"].as_object_mut() {
                        m.remove("annotations");
                    }
                    for hook in d.value["webhooks"].as_array_mut().unwrap() {
                        hook["clientConfig"]
                            .as_object_mut()
                            .unwrap()
                            .remove("caBundle");
                    }
                }
                d
            })
            .collect()
    };
    assert_same_objects(&strip(rendered), &strip(&golden()));
}

#[test]
fn chart_generated_certificates_serve_the_webhook_service() {
    let Some(helm) = helm_for("chart_generated_certificates_serve_the_webhook_service") else {
        return;
    };
    for namespace in [NAMESPACE, "other-namespace"] {
        let rendered = helm_template(&helm, namespace, &[], &[]).unwrap();
        let secrets: Vec<&Doc> = rendered.iter().filter(|d| d.kind == "Secret").collect();
        assert_eq!(secrets.len(), 1);
        let secret = secrets[0];
        assert_eq!(secret.name, "prefetch-webhook-tls");
        assert_eq!(secret.value["type"], "kubernetes.io/tls");
        let ca_b64 = secret.value["data"]["ca.crt"].as_str().unwrap();
        assert_eq!(ca_bundles(&rendered), vec![ca_b64.to_string(); 4]);
        assert_serves_the_service(
            &secret_pem(secret, "tls.crt"),
            &secret_pem(secret, "tls.key"),
            &secret_pem(secret, "ca.crt"),
            namespace,
        );
        if namespace == NAMESPACE {
            assert_same_apart_from_certificates(&rendered);
        }
    }
}

#[test]
fn make_certs_files_become_the_secret_and_the_ca_bundle() {
    let Some(helm) = helm_for("make_certs_files_become_the_secret_and_the_ca_bundle") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("prefetch-chart-certs-{}", std::process::id()));
    prefetch_certs::ensure_certs(&prefetch_certs::CertRequest::new(
        &dir,
        NAMESPACE,
        "prefetch-webhook",
    ))
    .unwrap();
    let file = |name: &str| dir.join(name).display().to_string();
    let sets = [
        format!("tls.makeCerts.cert={}", file("tls.crt")),
        format!("tls.makeCerts.key={}", file("tls.key")),
        format!("tls.makeCerts.ca={}", file("ca.crt")),
    ];
    let rendered = helm_template(&helm, NAMESPACE, &["tls.source=make-certs"], &sets);
    let (cert, key, ca) = (
        std::fs::read(dir.join("tls.crt")).unwrap(),
        std::fs::read(dir.join("tls.key")).unwrap(),
        std::fs::read(dir.join("ca.crt")).unwrap(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let rendered = rendered.unwrap();
    let secret = rendered
        .iter()
        .find(|d| d.kind == "Secret")
        .expect("the Secret");
    assert_eq!(secret_pem(secret, "tls.crt"), cert);
    assert_eq!(secret_pem(secret, "tls.key"), key);
    assert_eq!(secret_pem(secret, "ca.crt"), ca);
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(&ca);
    assert_eq!(ca_bundles(&rendered), vec![ca_b64; 4]);
    assert_serves_the_service(&cert, &key, &ca, NAMESPACE);
    assert_same_apart_from_certificates(&rendered);
}

#[test]
fn values_reach_the_objects() {
    let Some(helm) = helm_for("values_reach_the_objects") else {
        return;
    };
    let rendered = helm_template(
        &helm,
        "prefetch",
        &[
            "webhook.image.repository=registry.example/prefetch/webhook",
            "webhook.image.tag=1.2.3",
            "webhook.replicas=3",
            "webhook.logFormat=text",
            "webhook.resources.limits.memory=512Mi",
            "webhook.extraArgs={--min-retry-after=60}",
            "webhook.nodeSelector.pool=system",
            "webhook.priorityClassName=system-cluster-critical",
            "webhook.prefetchHooks.timeoutSeconds=10",
            "webhook.deploymentHook.failurePolicy=Fail",
            "webhook.deploymentHook.excludedNamespaces={kube-system,monitoring}",
            "controller.image.repository=registry.example/prefetch/controller",
            "controller.image.tag=1.2.3",
            "controller.noopImage.repository=registry.example/prefetch/noop",
            "controller.noopImage.tag=1.2.4",
            "controller.replicas=1",
            "controller.maxPodCreatesPerSecond=2.5",
            "controller.tolerations[0].key=dedicated",
            "controller.tolerations[0].operator=Exists",
            "controller.warmup.taint=example.com/cold",
            "controller.warmup.timeout=5m",
        ],
        &[],
    )
    .unwrap();
    let docs = by_key(&rendered).unwrap();
    let get = |kind: &str, name: &str| &docs[&(kind.to_string(), name.to_string())].value;
    let webhook = get("Deployment", "prefetch-webhook");
    let pod = &webhook["spec"]["template"]["spec"];
    assert_eq!(webhook["metadata"]["namespace"], "prefetch");
    assert_eq!(webhook["spec"]["replicas"], 3);
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example/prefetch/webhook:1.2.3"
    );
    assert_eq!(
        pod["containers"][0]["resources"]["limits"]["memory"],
        "512Mi"
    );
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&json!("--log-format=text")));
    assert!(args.contains(&json!("--min-retry-after=60")));
    assert_eq!(pod["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");

    let controller = get("Deployment", "prefetch-controller");
    let pod = &controller["spec"]["template"]["spec"];
    let image = "registry.example/prefetch/controller:1.2.3";
    assert_eq!(pod["containers"][0]["image"], image);
    let args = pod["containers"][0]["args"].as_array().unwrap();
    assert!(args.contains(&json!("--noop-image=registry.example/prefetch/noop:1.2.4")));
    assert!(args.contains(&json!("--lease-namespace=prefetch")));
    assert!(args.contains(&json!("--max-pod-creates-per-second=2.5")));
    assert!(args.contains(&json!("--warmup-taint=example.com/cold")));
    assert!(args.contains(&json!("--warmup-timeout=5m")));
    // The admission policy lets exactly that account remove exactly that taint.
    let policy = get("ValidatingAdmissionPolicy", "prefetch-controller");
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:prefetch:prefetch-controller'"
    );
    assert_eq!(
        policy["spec"]["variables"][0],
        json!({"name": "warmupTaint", "expression": "'example.com/cold'"})
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );
    // One controller replica: no PodDisruptionBudget (it could only block drains).
    assert!(!docs.contains_key(&("PodDisruptionBudget".into(), "prefetch-controller".into())));
    assert!(docs.contains_key(&("PodDisruptionBudget".into(), "prefetch-webhook".into())));

    let mutating = get("MutatingWebhookConfiguration", "prefetch-webhook");
    let hooks = mutating["webhooks"].as_array().unwrap();
    assert_eq!(hooks[0]["timeoutSeconds"], 10);
    assert_eq!(hooks[1]["failurePolicy"], "Fail");
    assert_eq!(
        hooks[1]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(["kube-system", "monitoring", "prefetch"])
    );
    for hook in hooks {
        assert_eq!(hook["clientConfig"]["service"]["namespace"], "prefetch");
    }
    let validating = get("ValidatingWebhookConfiguration", "prefetch-webhook");
    assert_eq!(validating["webhooks"][0]["timeoutSeconds"], 10);
    for (kind, name) in [
        ("ClusterRoleBinding", "prefetch-webhook"),
        ("ClusterRoleBinding", "prefetch-controller"),
        ("RoleBinding", "prefetch-controller-leader-election"),
    ] {
        assert_eq!(get(kind, name)["subjects"][0]["namespace"], "prefetch");
    }
}

/// The dashboard's and the alerts' values reach their objects: namespaces, the sidecar's
/// label (a number given with --set too), labels and annotations.
#[test]
fn observability_values_reach_the_objects() {
    let Some(helm) = helm_for("observability_values_reach_the_objects") else {
        return;
    };
    let rendered = helm_template(
        &helm,
        NAMESPACE,
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.label=dashboards.example.com/load",
            "grafanaDashboard.labelValue=1",
            "grafanaDashboard.labels.team=platform",
            "grafanaDashboard.annotations.grafana_folder=kube-prefetch",
            "prometheusRule.enabled=true",
            "prometheusRule.namespace=monitoring",
            "prometheusRule.labels.release=prometheus",
        ],
        &[],
    )
    .unwrap();
    let docs = by_key(&rendered).unwrap();
    let get = |kind: &str, name: &str| &docs[&(kind.to_string(), name.to_string())].value;
    let config_map = get("ConfigMap", "kube-prefetch-dashboard");
    assert_eq!(config_map["metadata"]["namespace"], "monitoring");
    let labels = &config_map["metadata"]["labels"];
    assert_eq!(labels["dashboards.example.com/load"], "1");
    assert_eq!(labels["team"], "platform");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    assert_eq!(
        config_map["metadata"]["annotations"],
        json!({"grafana_folder": "kube-prefetch"})
    );
    let rule = get("PrometheusRule", "kube-prefetch");
    assert_eq!(rule["metadata"]["namespace"], "monitoring");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    // Everything else as without them.
    let without = helm_template(&helm, NAMESPACE, &[], &[]).unwrap();
    let extra: BTreeSet<_> = rendered
        .iter()
        .map(Doc::key)
        .collect::<BTreeSet<_>>()
        .difference(&without.iter().map(Doc::key).collect())
        .cloned()
        .collect();
    assert_eq!(extra.len(), 2, "{extra:?}");
}

#[test]
fn warm_nodes_off_drops_the_node_rbac_and_the_policys_node_rule() {
    let Some(helm) = helm_for("warm_nodes_off_drops_the_node_rbac_and_the_policys_node_rule")
    else {
        return;
    };
    let rendered =
        helm_template(&helm, NAMESPACE, &["controller.warmup.enabled=false"], &[]).unwrap();
    let docs = by_key(&rendered).unwrap();
    let get = |kind: &str, name: &str| &docs[&(kind.to_string(), name.to_string())].value;
    let args = get("Deployment", "prefetch-controller")["spec"]["template"]["spec"]["containers"]
        [0]["args"]
        .as_array()
        .unwrap()
        .clone();
    assert!(args.contains(&json!("--warmup-taint=")), "{args:?}");
    let node_verbs: BTreeSet<String> = get("ClusterRole", "prefetch-controller")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"] == json!(["nodes"]))
        .flat_map(|r| r["verbs"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(node_verbs, ["list", "watch"].map(String::from).into());
    // The policy stays for the rollout gate's pod rule; its node rule goes.
    let rules = get("ValidatingAdmissionPolicy", "prefetch-controller")["spec"]["matchConstraints"]
        ["resourceRules"]
        .clone();
    assert_eq!(
        rules
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["resources"].clone())
            .collect::<Vec<_>>(),
        [json!(["pods"])]
    );
    // Everything else as with warm nodes on.
    let on = helm_template(&helm, NAMESPACE, &[], &[]).unwrap();
    let on_keys: BTreeSet<_> = on.iter().map(Doc::key).collect();
    let off_keys: BTreeSet<_> = rendered.iter().map(Doc::key).collect();
    assert_eq!(on_keys, off_keys);
}

#[test]
fn bad_values_fail_naming_the_value() {
    let Some(helm) = helm_for("bad_values_fail_naming_the_value") else {
        return;
    };
    for (sets, expected) in [
        (&["tls.source=vault"][..], "tls.source"),
        (
            &["tls.source=make-certs"][..],
            "--set-file tls.makeCerts.cert",
        ),
        (
            &["webhook.prefetchHooks.failurePolicy=Sometimes"][..],
            "failurePolicy",
        ),
        (
            &["webhook.deploymentHook.timeoutSeconds=60"][..],
            "timeoutSeconds",
        ),
        (&["controller.logFormat=xml"][..], "logFormat"),
        (&["controller.noopImage.repository="][..], "noopImage"),
        (&["webhook.replicas=0"][..], "replicas"),
        (
            &["controller.maxPodCreatesPerSecond=fast"][..],
            "maxPodCreatesPerSecond",
        ),
        (&["controller.warmup.taint=not a key"][..], "taint"),
        (&["controller.warmup.taint="][..], "taint"),
        (&["controller.warmup.timeout=soon"][..], "timeout"),
        (&["grafanaDashboard.label=not a key"][..], "label"),
        (
            &["grafanaDashboard.labelValue=not a value"][..],
            "labelValue",
        ),
    ] {
        match helm_template(&helm, NAMESPACE, sets, &[]) {
            Ok(_) => panic!("{sets:?} rendered"),
            Err(stderr) => assert!(
                stderr.contains(expected),
                "{sets:?}: the error does not name {expected}: {stderr}"
            ),
        }
    }
}

/// A release publishes the chart and the images under one version: the workspace's.
#[test]
fn the_chart_is_the_workspace_version_and_names_the_published_images() {
    let version = prefetch_common::version::VERSION;
    let chart = read_yaml(&chart_dir().join("Chart.yaml")).unwrap();
    assert_eq!(chart["version"], version);
    assert_eq!(chart["appVersion"], version);
    let workspace = read(&manifests_dir().join("../Cargo.toml"));
    let home = chart["home"].as_str().unwrap();
    assert!(
        workspace.contains(&format!("repository = \"{home}\"")),
        "the chart's home must be Cargo.toml's repository: {home}"
    );
    let values = values();
    for (image, name) in [
        (&values["webhook"]["image"], "webhook"),
        (&values["controller"]["image"], "controller"),
        (&values["controller"]["noopImage"], "noop"),
    ] {
        assert_eq!(
            image["repository"],
            format!("ghcr.io/kainlite/kube-prefetch-{name}")
        );
        assert_eq!(image["tag"], version, "{name}");
    }
}
