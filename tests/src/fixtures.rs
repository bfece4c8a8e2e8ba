//! Objects and AdmissionReviews shared by the end-to-end tests, the demo and the benchmark.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The original operator's sample Prefetch (design: docs/src/design.md#the-prefetch-api).
pub fn sample_prefetch(namespace: &str) -> Value {
    json!({
        "apiVersion": "cache.techsquad.rocks/v1",
        "kind": "Prefetch",
        "metadata": {"name": "prefetch-sample", "namespace": namespace},
        "spec": {"filter_by_labels": {"app": "nginx"}, "retry_after": 60, "node_filter": "worker"}
    })
}

pub fn prefetch(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// The original walkthrough's nginx Deployment.
pub fn nginx_deployment(namespace: &str, name: &str, labels: Value, images: &[&str]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image, "ports": [{"containerPort": 80}]}))
        .collect();
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}
        }
    })
}

/// A Deployment as real clusters hold them: a last-applied-configuration annotation, a sidecar
/// and an init container, env vars, probes, resources and status. About 10 KB of JSON, so an
/// UPDATE review (old and new object) is about 20 KB.
pub fn realistic_deployment(namespace: &str, name: &str, image: &str) -> Value {
    let env: Vec<Value> = (0..9)
        .map(|i| json!({"name": format!("FEATURE_FLAG_{i:03}"), "value": format!("enabled-for-tenant-group-{i:03}")}))
        .collect();
    let container = |cname: &str, image: &str| {
        json!({
            "name": cname, "image": image, "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "env": env,
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}, "periodSeconds": 10},
            "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                 "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]
        })
    };
    let mut deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": name, "namespace": namespace, "uid": "7d1c7c1e-0000-4000-8000-000000000001",
            "resourceVersion": "123456", "generation": 7,
            "labels": {"app": "nginx", "team": "payments", "tier": "frontend", "app.kubernetes.io/part-of": "shop"},
            "annotations": {"deployment.kubernetes.io/revision": "7", "team.example.com/owner": "payments@example.com"}
        },
        "spec": {
            "replicas": 12, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": name, "tier": "frontend"}, "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "serviceAccountName": name,
                    "imagePullSecrets": [{"name": "registry-credentials"}],
                    "initContainers": [container("migrate", image)],
                    "containers": [container("app", image), container("proxy", "envoyproxy/envoy:v1.31.0")],
                    "volumes": [{"name": "config", "configMap": {"name": format!("{name}-config")}}],
                    "terminationGracePeriodSeconds": 30
                }
            }
        },
        "status": {"observedGeneration": 7, "replicas": 12, "readyReplicas": 12, "availableReplicas": 12, "updatedReplicas": 12}
    });
    let applied = deployment.to_string();
    deployment["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!(applied);
    deployment
}

/// A pod of `deployment`'s ReplicaSet `<deployment>-<hash>` as the API server hands it to a
/// mutating webhook on CREATE: the template of [`realistic_deployment`] with the defaults the
/// API server has filled in, the ReplicaSet's controller reference, and the
/// kube-controller-manager's managedFields. About 8 KB of JSON.
pub fn realistic_pod(namespace: &str, deployment: &str, hash: &str, image: &str) -> Value {
    let d = realistic_deployment(namespace, deployment, image);
    let mut spec = d["spec"]["template"]["spec"].clone();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            c["terminationMessagePath"] = json!("/dev/termination-log");
            c["terminationMessagePolicy"] = json!("File");
            c["volumeMounts"].as_array_mut().unwrap().push(json!({
                "name": "kube-api-access-x7k2p", "readOnly": true,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}));
        }
    }
    spec["restartPolicy"] = json!("Always");
    spec["dnsPolicy"] = json!("ClusterFirst");
    spec["schedulerName"] = json!("default-scheduler");
    spec["serviceAccount"] = spec["serviceAccountName"].clone();
    spec["securityContext"] = json!({});
    spec["enableServiceLinks"] = json!(true);
    spec["preemptionPolicy"] = json!("PreemptLowerPriority");
    spec["priority"] = json!(0);
    spec["tolerations"] = json!([
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    ]);
    spec["volumes"].as_array_mut().unwrap().push(json!({"name": "kube-api-access-x7k2p", "projected": {
        "defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
        ]}}));
    let mut labels = d["spec"]["template"]["metadata"]["labels"].clone();
    labels["pod-template-hash"] = json!(hash);
    let fields: Vec<Value> = ["app", "proxy", "migrate"]
        .iter()
        .map(|c| json!({format!("k:{{\"name\":\"{c}\"}}"): {".": {}, "f:env": {}, "f:image": {}, "f:imagePullPolicy": {}, "f:livenessProbe": {}, "f:name": {}, "f:ports": {}, "f:readinessProbe": {}, "f:resources": {}, "f:securityContext": {}, "f:terminationMessagePath": {}, "f:terminationMessagePolicy": {}, "f:volumeMounts": {}}}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{deployment}-{hash}-"),
            "namespace": namespace,
            "labels": labels,
            "annotations": d["spec"]["template"]["metadata"]["annotations"].clone(),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{deployment}-{hash}"),
                                 "uid": "5b0c9a52-0000-4000-8000-000000000002", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-11-22T10:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {}, "f:ownerReferences": {}},
                                            "f:spec": {"f:containers": fields, "f:volumes": {}}}}]
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "Burstable"}
    })
}

pub const POD_GVR: (&str, &str, &str, &str) = ("", "v1", "Pod", "pods");

/// A pod CREATE review (no name yet: the ReplicaSet's pods are generateName'd).
pub fn pod_review(uid: &str, object: Value) -> Value {
    review_of(POD_GVR, uid, "CREATE", object, Value::Null)
}

/// A Prefetch as a cluster holds it after `kubectl apply` and a few rounds: last-applied
/// annotation, managedFields, every spec field, and a full status. About 6 KB of JSON.
/// `defaults`: whether the spec carries the fields the webhook defaults.
pub fn realistic_prefetch(namespace: &str, name: &str, defaults: bool) -> Value {
    let nodes: Vec<String> = (0..20).map(|i| format!("worker-pool-a-{i:03}")).collect();
    let images: Vec<String> = (0..10)
        .map(|i| format!("registry.example.com/shop/service-{i:02}:2026.11.{i}"))
        .collect();
    let digests: serde_json::Map<String, Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            (
                image.clone(),
                json!(format!("{image}@sha256:{:064x}", i + 1)),
            )
        })
        .collect();
    let mut spec = json!({
        "filter_by_labels": {"app.kubernetes.io/part-of": "shop", "tier": "frontend"},
        "node_selector": {"node.kubernetes.io/pool": "a"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ],
        "priority_class_name": "low-priority"
    });
    if defaults {
        for (field, value) in [
            ("node_filter", json!("worker")),
            ("retry_after", json!(600)),
            ("max_parallel", json!(20)),
            ("pull_timeout", json!(600)),
        ] {
            spec[field] = value;
        }
    }
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": format!("{reason}: 200 of 200 node x image pairs"),
               "lastTransitionTime": "2026-11-20T10:00:00Z", "observedGeneration": 3})
    };
    let mut prefetch = json!({
        "apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
        "metadata": {
            "name": name, "namespace": namespace, "uid": "5f0c7c1e-0000-4000-8000-000000000002",
            "resourceVersion": "987654", "generation": 3, "creationTimestamp": "2026-11-01T09:00:00Z",
            "labels": {"team": "payments"},
            "annotations": {},
            "managedFields": [
                {"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "cache.techsquad.rocks/v1",
                 "time": "2026-11-20T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}, "f:labels": {".": {}, "f:team": {}}},
                              "f:spec": {".": {}, "f:filter_by_labels": {".": {}, "f:app.kubernetes.io/part-of": {}, "f:tier": {}},
                                         "f:node_selector": {".": {}, "f:node.kubernetes.io/pool": {}}, "f:tolerations": {}, "f:priority_class_name": {}}}},
                {"manager": "prefetch-controller", "operation": "Update", "apiVersion": "cache.techsquad.rocks/v1",
                 "time": "2026-11-20T10:05:00Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {".": {}, "f:phase": {}, "f:images": {}, "f:nodes": {}, "f:total": {}, "f:ready": {},
                                           "f:failed": {}, "f:digests": {}, "f:conditions": {}, "f:last_round_start": {}, "f:last_round_end": {}}}}
            ]
        },
        "spec": spec,
        "status": {
            "phase": "SUCCEEDED", "observed_generation": 3, "images": images, "nodes": nodes,
            "total": 200, "ready": 200, "failed": 0, "failures": [], "digests": digests,
            "last_round_start": "2026-11-20T10:04:00Z", "last_round_end": "2026-11-20T10:05:00Z",
            "next_round": "2026-11-20T10:15:00Z",
            "conditions": [condition("Ready", "True", "Prefetched"), condition("Progressing", "False", "RoundDone"), condition("Degraded", "False", "NoFailures")]
        }
    });
    let applied = json!({"apiVersion": "cache.techsquad.rocks/v1", "kind": "Prefetch",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "payments"}}, "spec": prefetch["spec"].clone()});
    prefetch["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!(applied.to_string());
    prefetch
}

/// An AdmissionReview v1 request as the API server sends it.
#[allow(clippy::too_many_arguments)]
pub fn admission_review(
    uid: &str,
    (group, version, kind, resource): (&str, &str, &str, &str),
    operation: &str,
    namespace: &str,
    name: &str,
    object: Value,
    old_object: Value,
) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": old_object,
            "dryRun": false,
            "options": {"kind": if operation == "CREATE" { "CreateOptions" } else { "UpdateOptions" }, "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

pub const PREFETCH_GVR: (&str, &str, &str, &str) =
    ("cache.techsquad.rocks", "v1", "Prefetch", "prefetches");
pub const DEPLOYMENT_GVR: (&str, &str, &str, &str) = ("apps", "v1", "Deployment", "deployments");

pub fn prefetch_review(uid: &str, operation: &str, object: Value, old: Value) -> Value {
    review_of(PREFETCH_GVR, uid, operation, object, old)
}

pub fn deployment_review(uid: &str, operation: &str, object: Value, old: Value) -> Value {
    review_of(DEPLOYMENT_GVR, uid, operation, object, old)
}

/// A review whose namespace and name come from the object's metadata.
fn review_of(
    gvr: (&str, &str, &str, &str),
    uid: &str,
    operation: &str,
    object: Value,
    old: Value,
) -> Value {
    let meta = |field: &str, default: &str| {
        object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string()
    };
    let (ns, name) = (meta("namespace", "default"), meta("name", ""));
    admission_review(uid, gvr, operation, &ns, &name, object, old)
}

/// Issues a CA and a serving certificate for 127.0.0.1/localhost with the `certs` code, into
/// `dir`. Returns the certificate directory.
pub fn issue_test_certs(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut request = prefetch_certs::CertRequest::new(dir, "prefetch-system", "prefetch-webhook");
    request.extra_sans = vec!["127.0.0.1".into(), "localhost".into()];
    prefetch_certs::ensure_certs(&request)?;
    Ok(dir.to_path_buf())
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
