//! Every manifest parses into its typed k8s-openapi object, the kustomization lists exactly the
//! files there are, and the pieces refer to each other correctly (names, ports, paths, namespace,
//! the TLS Secret), with the webhook settings the design fixes
//! (docs/src/design.md#the-admission-webhook).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use prefetch_common::annotations::{GATED_NAMESPACE_LABEL, GATED_NAMESPACE_VALUE};
use prefetch_tests::manifests::{
    NAMESPACE, kubectl_for, kubectl_kustomize, kustomization_resources, manifests_dir,
    parse_documents, read_yaml,
};
use prefetch_webhook::core::answer::{Endpoint, MUTATE_POD};
use serde_json::Value;

/// (source path, kind, name, document) of every document in the base.
fn documents() -> Vec<(String, String, String, Value)> {
    kustomization_resources(&manifests_dir())
        .unwrap()
        .into_iter()
        .map(|d| (d.source, d.kind, d.name, d.value))
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(
    docs: &[(String, String, String, Value)],
    kind: &str,
    name: &str,
) -> T {
    let (_, _, _, doc) = docs
        .iter()
        .find(|(_, k, n, _)| k == kind && n == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"));
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{kind} {name} is not a valid {kind}: {e}"))
}

#[test]
fn kustomizations_list_exactly_the_manifest_files() {
    // The install is the base plus a certificate source; the base is every file under base/.
    let top = read_yaml(&manifests_dir().join("kustomization.yaml")).unwrap();
    assert_eq!(top["resources"], serde_json::json!(["base"]));
    let listed: BTreeSet<String> = documents().into_iter().map(|(rel, ..)| rel).collect();
    let mut present = BTreeSet::new();
    let mut stack = vec![manifests_dir().join("base")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(manifests_dir())
                .unwrap()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                stack.push(path);
            } else if rel.ends_with(".yaml") && !rel.ends_with("kustomization.yaml") {
                present.insert(rel);
            }
        }
    }
    assert_eq!(listed, present);
}

#[test]
fn every_document_parses_as_its_kind() {
    for (rel, kind, name, doc) in documents() {
        let ok = match kind.as_str() {
            "Namespace" => serde_json::from_value::<k8s_openapi::api::core::v1::Namespace>(doc).is_ok(),
            "CustomResourceDefinition" => serde_json::from_value::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>(doc).is_ok(),
            "ServiceAccount" => serde_json::from_value::<ServiceAccount>(doc).is_ok(),
            "ClusterRole" => serde_json::from_value::<k8s_openapi::api::rbac::v1::ClusterRole>(doc).is_ok(),
            "Role" => serde_json::from_value::<k8s_openapi::api::rbac::v1::Role>(doc).is_ok(),
            "ClusterRoleBinding" => serde_json::from_value::<ClusterRoleBinding>(doc).is_ok(),
            "RoleBinding" => serde_json::from_value::<RoleBinding>(doc).is_ok(),
            "Deployment" => serde_json::from_value::<Deployment>(doc).is_ok(),
            "Service" => serde_json::from_value::<Service>(doc).is_ok(),
            "PodDisruptionBudget" => serde_json::from_value::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(doc).is_ok(),
            "MutatingWebhookConfiguration" => serde_json::from_value::<MutatingWebhookConfiguration>(doc).is_ok(),
            "ValidatingWebhookConfiguration" => serde_json::from_value::<ValidatingWebhookConfiguration>(doc).is_ok(),
            "ValidatingAdmissionPolicy" => serde_json::from_value::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>(doc).is_ok(),
            "ValidatingAdmissionPolicyBinding" => serde_json::from_value::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>(doc).is_ok(),
            other => panic!("{rel}: unexpected kind {other}"),
        };
        assert!(ok, "{rel}: {kind} {name} does not parse as a {kind}");
    }
}

fn check_client(config: &WebhookClientConfig, service: &Service) -> String {
    let reference = config
        .service
        .as_ref()
        .expect("webhooks are reached through the Service");
    assert_eq!(
        Some(reference.name.as_str()),
        service.metadata.name.as_deref()
    );
    assert_eq!(
        Some(reference.namespace.as_str()),
        service.metadata.namespace.as_deref()
    );
    let port = reference.port.unwrap_or(443);
    assert!(
        service
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .any(|p| p.port == port),
        "Service has no port {port}"
    );
    reference.path.clone().expect("a path")
}

#[test]
fn webhook_configurations_reach_the_webhook_as_designed() {
    let docs = documents();
    let service: Service = typed(&docs, "Service", "prefetch-webhook");
    assert_eq!(service.metadata.namespace.as_deref(), Some(NAMESPACE));
    let mutating: MutatingWebhookConfiguration =
        typed(&docs, "MutatingWebhookConfiguration", "prefetch-webhook");
    let validating: ValidatingWebhookConfiguration =
        typed(&docs, "ValidatingWebhookConfiguration", "prefetch-webhook");
    let mut paths = BTreeMap::new();
    for hook in mutating.webhooks.iter().flatten() {
        let path = check_client(&hook.client_config, &service);
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.admission_review_versions, ["v1"]);
        paths.insert(
            path,
            (hook.failure_policy.clone(), hook.timeout_seconds, hook),
        );
    }
    for hook in validating.webhooks.iter().flatten() {
        let path = check_client(&hook.client_config, &service);
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.admission_review_versions, ["v1"]);
        assert_eq!(
            (hook.failure_policy.as_deref(), hook.timeout_seconds),
            (Some("Fail"), Some(5))
        );
        assert_eq!(path, Endpoint::ValidatePrefetch.path());
    }
    let (policy, timeout, _) = &paths[Endpoint::MutatePrefetch.path()];
    assert_eq!((policy.as_deref(), *timeout), (Some("Fail"), Some(5)));
    let (policy, timeout, deployment_hook) = &paths[Endpoint::MutateDeployment.path()];
    assert_eq!((policy.as_deref(), *timeout), (Some("Ignore"), Some(2)));
    assert!(
        deployment_hook
            .match_conditions
            .as_ref()
            .is_some_and(|c| !c.is_empty()),
        "only image-changing requests may reach it"
    );
    let excluded: BTreeSet<String> = deployment_hook
        .namespace_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
        .filter(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .flat_map(|e| e.values.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        excluded,
        ["kube-node-lease", "kube-system", NAMESPACE]
            .map(String::from)
            .into()
    );
    // StatefulSets, DaemonSets and CronJobs are signalled as Deployments are.
    let mut signalled = BTreeSet::new();
    for hook in mutating.webhooks.iter().flatten() {
        if check_client(&hook.client_config, &service) != Endpoint::MutateWorkload.path() {
            continue;
        }
        assert_eq!(
            (hook.failure_policy.as_deref(), hook.timeout_seconds),
            (Some("Ignore"), Some(2))
        );
        assert_eq!(hook.namespace_selector, deployment_hook.namespace_selector);
        assert!(
            hook.match_conditions
                .as_ref()
                .is_some_and(|c| !c.is_empty())
        );
        for rule in hook.rules.iter().flatten() {
            signalled.extend(rule.resources.clone().unwrap_or_default());
        }
    }
    assert_eq!(
        signalled,
        ["cronjobs", "daemonsets", "statefulsets"]
            .map(String::from)
            .into()
    );
    // The rollout gate: fail-open, 2 s, the same exclusions, only the namespaces the
    // controller labels (those holding a gating Prefetch), pod CREATE only, and only pods a
    // workload controller made, told apart by their labels (which pods each hook admits:
    // tests/admission_policy.rs).
    let pod_hooks: Vec<_> = mutating
        .webhooks
        .iter()
        .flatten()
        .filter(|h| check_client(&h.client_config, &service) == MUTATE_POD)
        .collect();
    assert_eq!(pod_hooks.len(), 3);
    for pod_hook in &pod_hooks {
        assert_eq!(
            (pod_hook.failure_policy.as_deref(), pod_hook.timeout_seconds),
            (Some("Ignore"), Some(2)),
            "{}",
            pod_hook.name
        );
        assert_eq!(pod_hook.side_effects, "None");
        let pod_selector = pod_hook.namespace_selector.clone().unwrap_or_default();
        assert_eq!(
            pod_selector.match_expressions,
            deployment_hook
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_expressions.clone())
        );
        assert_eq!(
            pod_selector.match_labels,
            Some(
                [(
                    GATED_NAMESPACE_LABEL.to_string(),
                    GATED_NAMESPACE_VALUE.to_string()
                )]
                .into()
            )
        );
        let rules = pod_hook.rules.clone().unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_string()][..])
        );
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_string()][..])
        );
        assert!(
            pod_hook
                .object_selector
                .as_ref()
                .and_then(|s| s.match_expressions.as_ref())
                .is_some_and(|e| e.iter().any(|r| r.operator == "Exists")),
            "{}: selects pods by a workload controller's label",
            pod_hook.name
        );
    }
    assert_eq!(paths.len(), 4);
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

#[test]
fn deployments_match_their_service_secret_and_accounts() {
    let docs = documents();
    let webhook: Deployment = typed(&docs, "Deployment", "prefetch-webhook");
    let service: Service = typed(&docs, "Service", "prefetch-webhook");
    let spec = pod_spec(&webhook);
    let container = &spec.containers[0];
    let target = service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .target_port
        .clone()
        .unwrap();
    let named = match target {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => name,
        other => panic!("target port should be named, got {other:?}"),
    };
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(named.as_str()))
        .expect("the Service's target port exists");
    assert!(
        container
            .args
            .iter()
            .flatten()
            .any(|a| a == &format!("--listen-addr=0.0.0.0:{}", port.container_port))
    );
    // The TLS Secret that `make certs` feeds the kustomization.
    let kustomization = read_yaml(&manifests_dir().join("kustomization.yaml")).unwrap();
    let secret = kustomization["secretGenerator"][0]["name"]
        .as_str()
        .unwrap();
    assert_eq!(mounted_tls_secret(&docs), secret);

    let controller: Deployment = typed(&docs, "Deployment", "prefetch-controller");
    let container = &pod_spec(&controller).containers[0];
    // The install names the images the release publishes for this version (images/build.sh
    // tags its archives with the same names), and prefetch pods pull the noop image, not the
    // controller's.
    let version = prefetch_common::version::VERSION;
    let published = |name: &str| format!("ghcr.io/kainlite/kube-prefetch-{name}:{version}");
    assert_eq!(container.image.as_deref(), Some(&*published("controller")));
    let webhook_image = pod_spec(&webhook).containers[0].image.clone();
    assert_eq!(webhook_image.as_deref(), Some(&*published("webhook")));
    let noop_image = &*published("noop");
    let noop_arg = format!("--noop-image={noop_image}");
    assert!(
        container.args.iter().flatten().any(|a| a == &noop_arg),
        "the controller must pass {noop_arg}"
    );
    assert_ne!(container.image.as_deref(), Some(noop_image));

    for deployment in [&webhook, &controller] {
        assert_eq!(deployment.metadata.namespace.as_deref(), Some(NAMESPACE));
        let spec = pod_spec(deployment);
        let account = spec.service_account_name.as_deref().unwrap();
        let sa: ServiceAccount = typed(&docs, "ServiceAccount", account);
        assert_eq!(sa.metadata.namespace.as_deref(), Some(NAMESPACE));
        // Replicas spread over nodes, so one node's loss never takes both.
        let anti = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref());
        assert!(anti.is_some(), "{account}: pod anti-affinity");
        let pod_sc = spec.security_context.as_ref().unwrap();
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert_eq!(
            pod_sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_string()])
            );
            assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
            assert!(
                c.resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .is_some(),
                "memory limits"
            );
            assert!(
                c.resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .is_some()
            );
        }
    }
    // Bindings name roles and accounts that exist.
    for (_, kind, name, doc) in docs
        .iter()
        .filter(|(_, k, ..)| k == "ClusterRoleBinding" || k == "RoleBinding")
    {
        let role_kind = doc["roleRef"]["kind"].as_str().unwrap();
        let role_name = doc["roleRef"]["name"].as_str().unwrap();
        assert!(
            docs.iter()
                .any(|(_, k, n, _)| k == role_kind && n == role_name),
            "{kind} {name}: no {role_kind} {role_name}"
        );
        for subject in doc["subjects"].as_array().unwrap() {
            let account = subject["name"].as_str().unwrap();
            assert!(
                docs.iter()
                    .any(|(_, k, n, _)| k == "ServiceAccount" && n == account),
                "{kind} {name}: no ServiceAccount {account}"
            );
        }
    }
}

#[test]
fn samples_are_the_originals_walkthrough_and_pass_validation() {
    let dir = manifests_dir().join("samples");
    let prefetch = read_yaml(&dir.join("prefetch-sample.yaml")).unwrap();
    let verdict = prefetch_common::validation::validate_prefetch(&prefetch, &Default::default());
    assert!(
        verdict.is_allowed() && verdict.warnings.is_empty(),
        "{verdict:?}"
    );
    let typed: prefetch_common::Prefetch = serde_json::from_value(prefetch).unwrap();
    let deployment: Deployment =
        serde_json::from_value(read_yaml(&dir.join("nginx-deployment.yaml")).unwrap()).unwrap();
    assert!(
        prefetch_common::labels::selects(
            &typed.spec.filter_by_labels,
            deployment.metadata.labels.as_ref()
        ),
        "the sample selects the sample"
    );
}

/// The serving certificate's expected DNS names: the Service's, as the API server dials it.
fn service_dns_names() -> BTreeSet<String> {
    [
        format!("prefetch-webhook.{NAMESPACE}.svc"),
        format!("prefetch-webhook.{NAMESPACE}.svc.cluster.local"),
    ]
    .into()
}

fn mounted_tls_secret(docs: &[(String, String, String, Value)]) -> String {
    let webhook: Deployment = typed(docs, "Deployment", "prefetch-webhook");
    pod_spec(&webhook)
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref()?.secret_name.clone())
        .expect("the webhook mounts its TLS Secret")
}

#[test]
fn the_cert_manager_overlay_issues_the_mounted_secret_and_injects_the_ca() {
    let overlay = manifests_dir().join("cert-manager");
    let kustomization = read_yaml(&overlay.join("kustomization.yaml")).unwrap();
    assert_eq!(
        kustomization["resources"],
        serde_json::json!(["../base", "certificates.yaml"])
    );
    let certificates = parse_documents(
        "cert-manager/certificates.yaml",
        &std::fs::read_to_string(overlay.join("certificates.yaml")).unwrap(),
    )
    .unwrap();
    let serving = certificates
        .iter()
        .find(|d| d.kind == "Certificate" && d.name == "prefetch-webhook")
        .expect("a Certificate for the webhook");
    assert_eq!(serving.value["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        serving.value["spec"]["secretName"].as_str(),
        Some(mounted_tls_secret(&documents()).as_str())
    );
    let dns: BTreeSet<String> =
        serde_json::from_value(serving.value["spec"]["dnsNames"].clone()).unwrap();
    assert_eq!(dns, service_dns_names());
    assert_eq!(
        serving.value["spec"]["usages"],
        serde_json::json!(["server auth", "digital signature"])
    );
    // Issuer chain: every issuerRef names an Issuer defined here, and the CA Issuer signs
    // with the CA Certificate's Secret.
    for cert in certificates.iter().filter(|d| d.kind == "Certificate") {
        let issuer = cert.value["spec"]["issuerRef"]["name"].as_str().unwrap();
        assert!(
            certificates
                .iter()
                .any(|d| d.kind == "Issuer" && d.name == issuer),
            "{}: no Issuer {issuer}",
            cert.name
        );
    }
    let ca_issuer = &certificates
        .iter()
        .find(|d| d.kind == "Issuer" && d.name == serving.value["spec"]["issuerRef"]["name"])
        .unwrap()
        .value;
    let ca_secret = ca_issuer["spec"]["ca"]["secretName"].as_str().unwrap();
    assert!(certificates.iter().any(|d| d.kind == "Certificate"
        && d.value["spec"]["isCA"] == true
        && d.value["spec"]["secretName"] == ca_secret));

    // Both webhook configurations are annotated to take their caBundle from that Certificate.
    let patched: BTreeSet<String> = kustomization["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["target"]["name"], "prefetch-webhook");
            let ops: Value = serde_saphyr::from_str(p["patch"].as_str().unwrap()).unwrap();
            assert_eq!(
                ops,
                serde_json::json!([{
                    "op": "add",
                    "path": "/metadata/annotations",
                    "value": {"cert-manager.io/inject-ca-from": format!("{NAMESPACE}/{}", serving.name)},
                }])
            );
            p["target"]["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        patched,
        [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration"
        ]
        .map(String::from)
        .into()
    );
}

/// Copies the manifests into a scratch directory, with throwaway `make certs` outputs.
fn manifests_with_certs(scratch: &std::path::Path) -> std::path::PathBuf {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let root = scratch.join("manifests");
    copy(&manifests_dir(), &root);
    let certs = scratch.join("certs");
    prefetch_certs::ensure_certs(&prefetch_certs::CertRequest::new(
        &certs,
        NAMESPACE,
        "prefetch-webhook",
    ))
    .unwrap();
    let _ = std::fs::remove_dir_all(root.join("certs"));
    prefetch_certs::write_kustomize_inputs(&certs, &root.join("certs")).unwrap();
    root
}

#[test]
fn kustomize_renders_the_make_certs_install() {
    let Some(kubectl) = kubectl_for("kustomize_renders_the_make_certs_install") else {
        return;
    };
    let scratch = std::env::temp_dir().join(format!("prefetch-kustomize-{}", std::process::id()));
    let root = manifests_with_certs(&scratch);
    let rendered = kubectl_kustomize(&kubectl, &root).unwrap();
    let ca_pem = std::fs::read(root.join("certs/ca.crt")).unwrap();
    let _ = std::fs::remove_dir_all(&scratch);

    let secret = rendered
        .iter()
        .find(|d| d.kind == "Secret" && d.name == "prefetch-webhook-tls")
        .expect("the TLS Secret");
    assert_eq!(secret.value["metadata"]["namespace"], NAMESPACE);
    assert_eq!(secret.value["type"], "kubernetes.io/tls");
    let ca_b64 = secret.value["data"]["ca.crt"].as_str().unwrap();
    // kustomize wraps base64 at 76 columns; the API server's decoder skips the newlines.
    use base64::Engine as _;
    let unwrapped: String = ca_b64.split_whitespace().collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(unwrapped)
        .unwrap();
    assert_eq!(decoded, ca_pem, "the Secret's ca.crt is make certs' CA");
    // Every webhook trusts that CA, and nothing else changed from the base.
    let mut hooks = 0;
    for doc in rendered
        .iter()
        .filter(|d| d.kind.ends_with("WebhookConfiguration"))
    {
        for hook in doc.value["webhooks"].as_array().unwrap() {
            assert_eq!(hook["clientConfig"]["caBundle"], ca_b64, "{}", hook["name"]);
            hooks += 1;
        }
    }
    assert_eq!(hooks, 8);
    let base: BTreeSet<(String, String)> = documents()
        .into_iter()
        .map(|(_, kind, name, _)| (kind, name))
        .collect();
    let mut expected = base;
    expected.insert(("Secret".into(), "prefetch-webhook-tls".into()));
    let got: BTreeSet<(String, String)> = rendered.iter().map(|d| d.key()).collect();
    assert_eq!(got, expected);
}

#[test]
fn kustomize_renders_the_cert_manager_install() {
    let Some(kubectl) = kubectl_for("kustomize_renders_the_cert_manager_install") else {
        return;
    };
    let rendered = kubectl_kustomize(&kubectl, &manifests_dir().join("cert-manager")).unwrap();
    for doc in rendered
        .iter()
        .filter(|d| d.kind.ends_with("WebhookConfiguration"))
    {
        assert_eq!(
            doc.value["metadata"]["annotations"],
            serde_json::json!({"cert-manager.io/inject-ca-from": format!("{NAMESPACE}/prefetch-webhook")}),
            "{}",
            doc.kind
        );
        for hook in doc.value["webhooks"].as_array().unwrap() {
            assert!(hook["clientConfig"].get("caBundle").is_none());
        }
    }
    let kinds: Vec<&str> = rendered.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Certificate").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "Issuer").count(), 2);
    assert!(!kinds.contains(&"Secret"), "cert-manager writes the Secret");
}

/// SIGTERM must end both binaries before the kubelet's SIGKILL: each one's `--shutdown-timeout`
/// (from its args, else its default) is below its pod's terminationGracePeriodSeconds (the
/// Kubernetes default, 30 s, when unset). The chart renders the same Deployments (chart.rs).
#[test]
fn shutdown_timeouts_fit_in_the_grace_periods() {
    use clap::Parser;
    let docs = documents();
    for (name, binary) in [
        ("prefetch-controller", "prefetch-controller"),
        ("prefetch-webhook", "prefetch-webhook"),
    ] {
        let deployment: Deployment = typed(&docs, "Deployment", name);
        let spec = pod_spec(&deployment);
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        let args: Vec<String> = std::iter::once(binary.to_string())
            .chain(spec.containers[0].args.iter().flatten().cloned())
            .collect();
        let timeout = match binary {
            "prefetch-controller" => {
                prefetch_controller::shell::config::Cli::try_parse_from(&args)
                    .unwrap()
                    .run
                    .shutdown_timeout
            }
            _ => {
                prefetch_webhook::shell::config::Args::try_parse_from(&args)
                    .unwrap()
                    .shutdown_timeout
            }
        };
        assert!(
            timeout.as_secs() + 5 <= grace as u64,
            "{name}: --shutdown-timeout {timeout:?} leaves less than 5 s of its {grace} s grace period"
        );
    }
}
