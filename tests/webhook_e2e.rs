//! The real prefetch-webhook binary over TLS on 127.0.0.1, verified as the API server would:
//! CA pinned, AdmissionReview v1. Its Prefetch watch cache is fed by the test API server (or
//! the real cluster named by PREFETCH_E2E_KUBECONFIG) through a kubeconfig.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use prefetch_common::Prefetch;
use prefetch_tests::binaries::{WebhookOptions, WebhookProcess, http_get};
use prefetch_tests::cluster::TestCluster;
use prefetch_tests::fixtures::{
    deployment_review, issue_test_certs, nginx_deployment, prefetch, prefetch_review,
    sample_prefetch,
};
use prefetch_tests::tls_client::{PinnedClient, Protocol, Reply};
use serde_json::{Value, json};

const JSON: &str = "application/json";

struct Setup {
    cluster: TestCluster,
    webhook: WebhookProcess,
    client: PinnedClient,
    ca: Vec<u8>,
}

async fn setup(test: &str, extra_args: &[&str]) -> Setup {
    let cluster = TestCluster::start(test).await.expect("test cluster");
    let certs = issue_test_certs(&cluster.dir.path().join("certs")).expect("certificates");
    setup_with_cert_paths(
        cluster,
        &certs.join("tls.crt"),
        &certs.join("tls.key"),
        &certs.join("ca.crt"),
        extra_args,
    )
    .await
}

async fn setup_with_cert_paths(
    cluster: TestCluster,
    cert: &Path,
    key: &Path,
    ca: &Path,
    extra_args: &[&str],
) -> Setup {
    if !cluster.is_real() {
        // The walkthrough's nodes, so node_filter warnings have something to match.
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        for name in [
            "kind-control-plane",
            "kind-worker",
            "kind-worker2",
            "kind-worker3",
        ] {
            let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            nodes
                .create(&PostParams::default(), &node)
                .await
                .expect("node");
        }
    }
    let webhook = WebhookProcess::start(WebhookOptions {
        kubeconfig: cluster.kubeconfig.clone(),
        cert_file: cert.to_path_buf(),
        key_file: key.to_path_buf(),
        extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        echo_logs: true,
        launcher: None,
    })
    .await
    .expect("webhook starts");
    let ca = std::fs::read(ca).unwrap();
    let client =
        PinnedClient::new(&ca, webhook.admission_addr, "127.0.0.1", Protocol::Http1).unwrap();
    Setup {
        cluster,
        webhook,
        client,
        ca,
    }
}

async fn post_review(client: &PinnedClient, path: &str, review: &Value) -> Value {
    let reply = client
        .post(path, JSON, serde_json::to_vec(review).unwrap())
        .await
        .expect("request");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json().unwrap();
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(
        body["response"]["uid"], review["request"]["uid"],
        "uid must be echoed"
    );
    body["response"].clone()
}

/// The decoded JSON patch of a response, or `None`.
fn patch_of(response: &Value) -> Option<Value> {
    let encoded = response
        .get("patch")?
        .as_str()
        .expect("patch is a base64 string");
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("patch is base64");
    Some(serde_json::from_slice(&bytes).expect("patch is JSON"))
}

fn apply(object: &Value, patch: &Value) -> Value {
    let mut out = object.clone();
    let patch: json_patch::Patch = serde_json::from_value(patch.clone()).unwrap();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_prefetch_is_defaulted_and_allowed() {
    let s = setup("defaulting", &[]).await;
    let ns = &s.cluster.namespace;

    // The original sample: retry_after and node_filter kept, the other defaults filled.
    let sample = sample_prefetch(ns);
    let response = post_review(
        &s.client,
        "/mutate/prefetch",
        &prefetch_review("u1", "CREATE", sample.clone(), Value::Null),
    )
    .await;
    assert_eq!(response["allowed"], true);
    let patch = patch_of(&response).expect("defaults patch");
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/spec/max_parallel", "value": 20}, {"op": "add", "path": "/spec/pull_timeout", "value": 600},
               {"op": "add", "path": "/spec/gate_rollouts", "value": false}, {"op": "add", "path": "/spec/gate_timeout", "value": 900}])
    );
    let defaulted = apply(&sample, &patch);
    let again = post_review(
        &s.client,
        "/mutate/prefetch",
        &prefetch_review("u2", "CREATE", defaulted.clone(), Value::Null),
    )
    .await;
    assert_eq!(
        patch_of(&again),
        None,
        "defaulting its own output must give no patch"
    );

    // Without retry_after and node_filter: 300 and "" are filled in.
    let bare = prefetch(ns, "bare", json!({"filter_by_labels": {"app": "nginx"}}));
    let response = post_review(
        &s.client,
        "/mutate/prefetch",
        &prefetch_review("u3", "CREATE", bare.clone(), Value::Null),
    )
    .await;
    let filled = apply(&bare, &patch_of(&response).expect("patch"));
    assert_eq!(
        filled["spec"],
        json!({"filter_by_labels": {"app": "nginx"}, "retry_after": 300, "node_filter": "", "max_parallel": 20, "pull_timeout": 600,
               "gate_rollouts": false, "gate_timeout": 900})
    );
    let again = post_review(
        &s.client,
        "/mutate/prefetch",
        &prefetch_review("u4", "UPDATE", filled, bare),
    )
    .await;
    assert_eq!(patch_of(&again), None);

    // Validation allows the sample and its defaulted form.
    for (uid, object) in [("u5", sample), ("u6", defaulted)] {
        let response = post_review(
            &s.client,
            "/validate/prefetch",
            &prefetch_review(uid, "CREATE", object, Value::Null),
        )
        .await;
        assert_eq!(response["allowed"], true, "{response}");
        if !s.cluster.is_real() {
            assert!(response.get("warnings").is_none(), "{response}");
        }
    }

    // HTTP/2, which the API server negotiates when it can, is served too.
    let h2 = PinnedClient::new(
        &s.ca,
        s.webhook.admission_addr,
        "127.0.0.1",
        Protocol::Http2,
    )
    .unwrap();
    let mut conn = h2.connect().await.unwrap();
    assert!(conn.is_http2());
    let review = prefetch_review("u7", "CREATE", sample_prefetch(ns), Value::Null);
    let reply = conn
        .post(
            "/validate/prefetch",
            JSON,
            serde_json::to_vec(&review).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(reply.json().unwrap()["response"]["allowed"], true);

    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_denied_naming_the_field() {
    let s = setup("validation", &[]).await;
    let ns = &s.cluster.namespace;
    let with = |extra: Value| {
        let mut spec = json!({"filter_by_labels": {"app": "nginx"}});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        prefetch(ns, "bad", spec)
    };
    let cases = [
        (
            prefetch(ns, "bad", json!({"filter_by_labels": {}})),
            "spec.filter_by_labels: must have at least one entry",
        ),
        (
            prefetch(ns, "bad", json!({"filter_by_labels": {"bad key!": "x"}})),
            "spec.filter_by_labels[bad key!]: invalid label key",
        ),
        (
            with(json!({"retry_after": 5})),
            "spec.retry_after: must be >= 30, got 5",
        ),
        (
            with(json!({"retry_after": 100000})),
            "spec.retry_after: must be <= 86400, got 100000",
        ),
        (
            with(json!({"node_filter": "Worker_1"})),
            "spec.node_filter: \"Worker_1\" may contain only a-z, 0-9, '.' and '-'",
        ),
        (
            with(json!({"max_parallel": 0})),
            "spec.max_parallel: must be >= 1, got 0",
        ),
    ];
    for (i, (object, expected)) in cases.into_iter().enumerate() {
        let response = post_review(
            &s.client,
            "/validate/prefetch",
            &prefetch_review(&format!("bad-{i}"), "CREATE", object, Value::Null),
        )
        .await;
        assert_eq!(response["allowed"], false, "{expected}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
        assert_eq!(response["status"]["code"], 422);
    }

    // Several violations come back together, each naming its field.
    let all = prefetch(
        ns,
        "bad",
        json!({"filter_by_labels": {}, "retry_after": 5, "node_filter": "Worker_1", "max_parallel": 0}),
    );
    let response = post_review(
        &s.client,
        "/validate/prefetch",
        &prefetch_review("bad-all", "CREATE", all, Value::Null),
    )
    .await;
    let message = response["status"]["message"].as_str().unwrap();
    for field in [
        "spec.filter_by_labels",
        "spec.retry_after",
        "spec.node_filter",
        "spec.max_parallel",
    ] {
        assert!(message.contains(field), "{field} missing from {message:?}");
    }

    // Legal but suspicious: allowed with a warning.
    if !s.cluster.is_real() {
        let gpu = with(json!({"node_filter": "gpu"}));
        let response = post_review(
            &s.client,
            "/validate/prefetch",
            &prefetch_review("warn", "CREATE", gpu, Value::Null),
        )
        .await;
        assert_eq!(response["allowed"], true);
        assert_eq!(
            response["warnings"],
            json!(["spec.node_filter: \"gpu\" matches none of the cluster's 4 nodes now"])
        );
    }
    s.cluster.cleanup().await;
}

/// Creates a Prefetch through the API and waits until the webhook's watch cache selects with it.
async fn create_prefetch_and_wait(s: &Setup, namespace: &str, name: &str, labels: Value) {
    let api: Api<Prefetch> = Api::namespaced(s.cluster.client.clone(), namespace);
    let object: Prefetch = serde_json::from_value(prefetch(
        namespace,
        name,
        json!({"filter_by_labels": labels.clone()}),
    ))
    .unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .expect("create Prefetch");
    let probe = nginx_deployment(namespace, "probe", labels, &["probe:1"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = post_review(
            &s.client,
            "/mutate/deployment",
            &deployment_review("probe", "CREATE", probe.clone(), Value::Null),
        )
        .await;
        if patch_of(&response).is_some() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhook cache never saw Prefetch {namespace}/{name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rollouts_are_signalled_only_when_selected_and_changed() {
    let s = setup("rollout", &[]).await;
    let ns = s.cluster.namespace.clone();
    create_prefetch_and_wait(&s, &ns, "prefetch-sample", json!({"app": "nginx"})).await;

    // UPDATE that changes the image of a selected Deployment: exactly the two annotations.
    let old = nginx_deployment(&ns, "nginx", json!({"app": "nginx"}), &["nginx:1.7.9"]);
    let new = nginx_deployment(&ns, "nginx", json!({"app": "nginx"}), &["nginx:1.25"]);
    let before = unix_now();
    let response = post_review(
        &s.client,
        "/mutate/deployment",
        &deployment_review("roll-1", "UPDATE", new.clone(), old.clone()),
    )
    .await;
    assert_eq!(response["allowed"], true);
    let patch = patch_of(&response).expect("rollout signal");
    let ops = patch.as_array().unwrap();
    assert_eq!(ops.len(), 1, "{patch}");
    assert_eq!(ops[0]["op"], "add");
    assert_eq!(ops[0]["path"], "/metadata/annotations");
    let annotations = ops[0]["value"].as_object().unwrap();
    assert_eq!(annotations.len(), 2, "exactly two annotations: {patch}");
    assert_eq!(
        annotations["cache.techsquad.rocks/prefetch-images"],
        "[\"docker.io/library/nginx:1.25\"]"
    );
    let requested_at: jiff::Timestamp = annotations["cache.techsquad.rocks/prefetch-requested-at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(requested_at.as_second() >= before - 1 && requested_at.as_second() <= unix_now() + 1);
    let patched = apply(&new, &patch);
    assert_eq!(
        patched["spec"], new["spec"],
        "the pod template must never change"
    );

    // Annotations present already: keys added one by one, the others kept.
    let mut annotated = new.clone();
    annotated["metadata"]["annotations"] = json!({"owner": "payments"});
    let response = post_review(
        &s.client,
        "/mutate/deployment",
        &deployment_review("roll-2", "UPDATE", annotated.clone(), old.clone()),
    )
    .await;
    let applied = apply(&annotated, &patch_of(&response).expect("signal"));
    assert_eq!(
        applied["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(applied["metadata"]["annotations"]["owner"], "payments");

    // Unchanged images (even respelled), an unselected Deployment: no patch.
    let respelled = nginx_deployment(
        &ns,
        "nginx",
        json!({"app": "nginx"}),
        &["docker.io/library/nginx:1.7.9"],
    );
    let response = post_review(
        &s.client,
        "/mutate/deployment",
        &deployment_review("same", "UPDATE", respelled, old.clone()),
    )
    .await;
    assert_eq!(
        (response["allowed"].clone(), patch_of(&response)),
        (json!(true), None)
    );
    let other_old = nginx_deployment(&ns, "redis", json!({"app": "redis"}), &["redis:7.0"]);
    let other_new = nginx_deployment(&ns, "redis", json!({"app": "redis"}), &["redis:7.2"]);
    let response = post_review(
        &s.client,
        "/mutate/deployment",
        &deployment_review("unsel", "UPDATE", other_new, other_old),
    )
    .await;
    assert_eq!(
        (response["allowed"].clone(), patch_of(&response)),
        (json!(true), None)
    );

    // A Prefetch in another namespace does not select this namespace's Deployments.
    let elsewhere = nginx_deployment(
        "kube-public",
        "nginx",
        json!({"app": "nginx"}),
        &["nginx:1.25"],
    );
    let elsewhere_old = nginx_deployment(
        "kube-public",
        "nginx",
        json!({"app": "nginx"}),
        &["nginx:1.7.9"],
    );
    let response = post_review(
        &s.client,
        "/mutate/deployment",
        &deployment_review("ns", "UPDATE", elsewhere, elsewhere_old),
    )
    .await;
    assert_eq!(patch_of(&response), None);

    // CREATE signals all its images, init containers included.
    let mut created = nginx_deployment(
        &ns,
        "web",
        json!({"app": "nginx"}),
        &["nginx:1.25", "redis:7"],
    );
    created["spec"]["template"]["spec"]["initContainers"] =
        json!([{"name": "init", "image": "busybox:1.36"}]);
    let response = post_review(
        &s.client,
        "/mutate/deployment",
        &deployment_review("create", "CREATE", created, Value::Null),
    )
    .await;
    let patch = patch_of(&response).expect("signal on create");
    assert_eq!(
        patch[0]["value"]["cache.techsquad.rocks/prefetch-images"],
        "[\"docker.io/library/busybox:1.36\",\"docker.io/library/nginx:1.25\",\"docker.io/library/redis:7\"]"
    );

    // Deleting the Prefetch stops the signals (the watch cache follows deletes).
    let api: Api<Prefetch> = Api::namespaced(s.cluster.client.clone(), &ns);
    api.delete("prefetch-sample", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = post_review(
            &s.client,
            "/mutate/deployment",
            &deployment_review("after", "UPDATE", new.clone(), old.clone()),
        )
        .await;
        if patch_of(&response).is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "signal continued after the Prefetch was deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The webhook writes its log lines in batches (every 20 ms): wait for the line, briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !s
        .webhook
        .logs()
        .iter()
        .any(|l| l.contains("rollout signalled"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "decisions are logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.cluster.cleanup().await;
}

fn unix_now() -> i64 {
    jiff::Timestamp::now().as_second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_http_errors_and_the_server_keeps_serving() {
    let s = setup("malformed", &[]).await;
    let valid = serde_json::to_vec(&prefetch_review(
        "ok",
        "CREATE",
        sample_prefetch(&s.cluster.namespace),
        Value::Null,
    ))
    .unwrap();
    let status = |r: Reply| r.status.as_u16();

    assert_eq!(
        status(
            s.client
                .post("/validate/prefetch", JSON, "{not json")
                .await
                .unwrap()
        ),
        400
    );
    assert_eq!(
        status(
            s.client
                .post("/validate/prefetch", "text/plain", valid.clone())
                .await
                .unwrap()
        ),
        400
    );
    let v1beta1 =
        json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}});
    assert_eq!(
        status(
            s.client
                .post(
                    "/validate/prefetch",
                    JSON,
                    serde_json::to_vec(&v1beta1).unwrap()
                )
                .await
                .unwrap()
        ),
        400
    );
    let huge = vec![b' '; 8 * 1024 * 1024];
    assert_eq!(
        status(
            s.client
                .post("/mutate/deployment", JSON, huge)
                .await
                .unwrap()
        ),
        413
    );
    assert_eq!(
        status(s.client.post("/nope", JSON, valid.clone()).await.unwrap()),
        404
    );

    // Still serving, on new and kept-alive connections alike.
    let mut conn = s.client.connect().await.unwrap();
    for _ in 0..3 {
        let reply = conn
            .post("/validate/prefetch", JSON, valid.clone())
            .await
            .unwrap();
        assert_eq!(reply.json().unwrap()["response"]["allowed"], true);
    }
    let (code, _) = http_get(s.webhook.ops_addr, "/healthz").await.unwrap();
    assert_eq!(code, 200);
    let (code, metrics) = http_get(s.webhook.ops_addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("prefetch_webhook_requests_total{endpoint=\"/validate/prefetch\",result=\"bad_request\"} 3"), "{metrics}");
    assert!(
        metrics.contains(
            "prefetch_webhook_requests_total{endpoint=\"/validate/prefetch\",result=\"allowed\"} 3"
        ),
        "{metrics}"
    );
    s.cluster.cleanup().await;
}

/// Kubernetes updates a mounted Secret by writing a new timestamped directory and swapping
/// the `..data` symlink; the key files are symlinks through `..data`.
fn kubelet_style_write(dir: &Path, generation: &str, cert: &[u8], key: &[u8]) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tls.crt"), cert).unwrap();
    std::fs::write(data.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        if !dir.join(file).exists() {
            std::os::unix::fs::symlink(format!("..data/{file}"), dir.join(file)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_without_failed_requests() {
    let cluster = TestCluster::start("rotation").await.expect("cluster");
    let issuing = cluster.dir.path().join("issuing");
    issue_test_certs(&issuing).unwrap();
    let mounted = cluster.dir.path().join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    let read = |f: &str| std::fs::read(issuing.join(f)).unwrap();
    kubelet_style_write(
        &mounted,
        "2026_11_22_first",
        &read("tls.crt"),
        &read("tls.key"),
    );
    let s = setup_with_cert_paths(
        cluster,
        &mounted.join("tls.crt"),
        &mounted.join("tls.key"),
        &issuing.join("ca.crt"),
        &["--tls-reload-interval", "100ms"],
    )
    .await;
    let ns = s.cluster.namespace.clone();
    let body = serde_json::to_vec(&prefetch_review(
        "rot",
        "CREATE",
        sample_prefetch(&ns),
        Value::Null,
    ))
    .unwrap();
    let old_leaf = s.client.connect().await.unwrap().peer_certificate;

    // Two clients in a loop: one opens a connection per request, one keeps its connection.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for keep_alive in [false, true] {
        let (client, body, stop, ok, failed) = (
            s.client.clone(),
            body.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut conn = if keep_alive {
                Some(client.connect().await.unwrap())
            } else {
                None
            };
            while !stop.load(Ordering::Relaxed) {
                let reply = match conn.as_mut() {
                    Some(conn) => conn.post("/validate/prefetch", JSON, body.clone()).await,
                    None => client.post("/validate/prefetch", JSON, body.clone()).await,
                };
                match reply {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Renew the leaf from the same CA and swap it in the way the kubelet does.
    let mut renew =
        prefetch_certs::CertRequest::new(&issuing, "prefetch-system", "prefetch-webhook");
    renew.extra_sans = vec!["127.0.0.1".into(), "localhost".into()];
    renew.renew_before = time_days(400);
    let outcome = prefetch_certs::ensure_certs(&renew).unwrap();
    assert_eq!(outcome.ca, prefetch_certs::Action::Kept);
    kubelet_style_write(
        &mounted,
        "2026_11_22_second",
        &read("tls.crt"),
        &read("tls.key"),
    );
    let new_leaf_pem = read("tls.crt");
    let new_leaf = rustls::pki_types::pem::PemObject::from_pem_slice(&new_leaf_pem)
        .map(|c: rustls::pki_types::CertificateDer| c.into_owned())
        .unwrap();
    assert_ne!(new_leaf, old_leaf);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // A fresh client: a resumed TLS session would report the certificate of the first.
        let fresh = PinnedClient::new(
            &s.ca,
            s.webhook.admission_addr,
            "127.0.0.1",
            Protocol::Http1,
        )
        .unwrap();
        if fresh.connect().await.unwrap().peer_certificate == new_leaf {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections never presented the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served_before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during rotation",
        ok + failed
    );
    assert!(
        ok > served_before && served_before > 0,
        "the loop kept serving across the rotation ({served_before} then {ok})"
    );
    let (_, metrics) = http_get(s.webhook.ops_addr, "/metrics").await.unwrap();
    assert!(
        metrics.contains("prefetch_webhook_cert_reloads_total{reason=\"success\"} 1"),
        "{metrics}"
    );
    s.cluster.cleanup().await;
}

fn time_days(days: i64) -> time::Duration {
    time::Duration::days(days)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let s = setup("sigterm", &[]).await;
    let body = serde_json::to_vec(&prefetch_review(
        "t",
        "CREATE",
        sample_prefetch(&s.cluster.namespace),
        Value::Null,
    ))
    .unwrap();
    let mut conn = s.client.connect().await.unwrap();
    assert_eq!(
        conn.post("/validate/prefetch", JSON, body)
            .await
            .unwrap()
            .status,
        200
    );
    let logs_before_exit = s.webhook.logs().len();
    assert!(logs_before_exit > 0);
    let status = s
        .webhook
        .terminate(Duration::from_secs(20))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    s.cluster.cleanup().await;
}

/// The webhook's RBAC is derived from its calls: run it under its own token, exercise it, and
/// compare what it called with what the manifests grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_grant_exactly_what_the_webhook_calls() {
    let cluster = TestCluster::start("webhook-rbac").await.expect("cluster");
    let Some(api) = cluster.api.as_ref() else {
        eprintln!("skipped against a real cluster: it counts requests in the test API server");
        return;
    };
    let kubeconfig = cluster.dir.path().join("webhook-kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig_for("prefetch-webhook")).unwrap();
    let certs = issue_test_certs(&cluster.dir.path().join("certs")).unwrap();
    let options = WebhookOptions {
        echo_logs: true,
        ..WebhookOptions::with_cert_dir(&kubeconfig, &certs)
    };
    let webhook = WebhookProcess::start(options)
        .await
        .expect("webhook starts");
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let client =
        PinnedClient::new(&ca, webhook.admission_addr, "127.0.0.1", Protocol::Http1).unwrap();
    for path in ["/mutate/prefetch", "/validate/prefetch"] {
        let review = prefetch_review(
            "rbac",
            "CREATE",
            sample_prefetch(&cluster.namespace),
            Value::Null,
        );
        post_review(&client, path, &review).await;
    }
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/base/webhook/rbac.yaml");
    prefetch_tests::rbac::assert_exact(
        &prefetch_tests::rbac::called(api, "prefetch-webhook"),
        &prefetch_tests::rbac::granted(&manifest).unwrap(),
        // The pod gate's one live read of a pod's workload, only when the cache is behind a
        // rollout while a controller leads (tests/gate_e2e.rs reaches it for a Deployment,
        // tests/gate_kinds_e2e.rs for a StatefulSet).
        &[
            ("apps", "deployments", "get"),
            ("apps", "statefulsets", "get"),
            ("apps", "daemonsets", "get"),
            ("batch", "cronjobs", "get"),
        ],
    );
    cluster.cleanup().await;
}
