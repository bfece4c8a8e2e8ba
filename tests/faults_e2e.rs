//! Faults, with the real binaries and the test API server: SIGTERM in every state of both
//! binaries (caches not synced because the API server is unreachable, the CRD missing or RBAC
//! forbidding; waiting for or holding the Lease; mid-round; during an outage), `/readyz`
//! saying why while not synced, and watches that come back at once after an outage.
//!
//! These tests stop the API server or make it answer errors, so they need the test API
//! server: against a real cluster (PREFETCH_E2E_KUBECONFIG) they are skipped.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use prefetch_common::{Phase, Prefetch};
use prefetch_tests::apiserver::{Fault, TestApiServer};
use prefetch_tests::binaries::{
    ControllerProcess, WebhookOptions, WebhookProcess, metric_value, until_http,
};
use prefetch_tests::cluster::TestCluster;
use prefetch_tests::fixtures::{deployment_review, issue_test_certs, nginx_deployment, prefetch};
use prefetch_tests::kubelet::Pull;
use prefetch_tests::scenario::{
    CONTROLLER_TOKEN, Scenario, controller, eventually, scenario, until_phase, wait_for_status,
};
use prefetch_tests::tls_client::{PinnedClient, Protocol};
use serde_json::{Value, json};

/// Far longer than any test waits: a process that exits within [`EXIT_BOUND`] shut down
/// cleanly; it was not the hard deadline that ended it.
const SHUTDOWN_TIMEOUT: &str = "60s";
const EXIT_BOUND: Duration = Duration::from_secs(5);

fn api(s: &Scenario) -> &TestApiServer {
    s.cluster
        .api
        .as_ref()
        .expect("scenarios run on the test API server")
}

async fn controller_with(s: &Scenario, extra: &[&str], label: &'static str) -> ControllerProcess {
    let mut args = vec!["--shutdown-timeout", SHUTDOWN_TIMEOUT];
    args.extend_from_slice(extra);
    controller(s, &args, label).await
}

/// `/readyz` of the controller until it is 503 and its body contains `why`.
async fn unready_because(addr: std::net::SocketAddr, why: &str) -> String {
    until_http(addr, "/readyz", Duration::from_secs(10), |status, body| {
        status == 503 && body.contains(why)
    })
    .await
    .expect("readyz says why")
    .1
}

/// SIGTERM; the process must exit 0 within [`EXIT_BOUND`].
async fn terminates(process: ControllerProcess) {
    let started = Instant::now();
    let status = process
        .terminate(EXIT_BOUND)
        .await
        .expect("exits within the bound after SIGTERM");
    assert!(status.success(), "exit status {status}");
    eprintln!("exited in {:?}", started.elapsed());
}

fn persistent(resource: &'static str, code: u16) -> Fault {
    Fault {
        verb: None,
        resource: Some(resource),
        client: Some(CONTROLLER_TOKEN),
        code,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_stops_on_sigterm_while_the_api_server_is_unreachable() {
    let Some(s) = scenario("faults-unreachable", json!({})).await else {
        return;
    };
    api(&s).go_down().await;
    // Without leader election: waiting for caches that cannot sync.
    let solo = controller_with(&s, &[], "solo").await;
    let body = unready_because(solo.metrics_addr, "API server unreachable").await;
    assert!(body.contains("nodes: not synced"), "{body}");
    // With leader election: campaigning for a Lease it cannot read.
    let candidate = controller_with(
        &s,
        &["--leader-elect", "true", "--lease-namespace", &s.ns],
        "candidate",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (solo_exit, candidate_exit) = tokio::join!(terminates(solo), terminates(candidate));
    let _ = (solo_exit, candidate_exit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_without_the_crd_says_so_stops_on_sigterm_and_converges_once_installed() {
    let Some(s) = scenario("faults-no-crd", json!({})).await else {
        return;
    };
    api(&s).inject(persistent("prefetches", 404), u32::MAX);
    let first = controller_with(&s, &[], "no-crd").await;
    let body = unready_because(
        first.metrics_addr,
        "prefetches: not synced: 404 Not Found — is the CRD installed?",
    )
    .await;
    eprintln!("readyz: {body}");
    // /readyz reports the failure before its log line has been read from the pipe.
    eventually(
        Duration::from_secs(10),
        "the failing watch is logged at warn",
        || async {
            let logs = first.process.logs().join("\n");
            logs.contains("\"level\":\"WARN\"") && logs.contains("is the CRD installed?")
        },
    )
    .await;
    terminates(first).await;

    // The CRD is installed while a second controller waits for it: it converges within
    // seconds (its backoff is capped and resets), creating each pod once.
    let second = controller_with(&s, &[], "crd-later").await;
    unready_because(second.metrics_addr, "is the CRD installed?").await;
    api(&s).clear_faults();
    let started = Instant::now();
    until_http(
        second.metrics_addr,
        "/readyz",
        Duration::from_secs(10),
        |status, _| status == 200,
    )
    .await
    .expect("ready once the CRD is there");
    until_phase(&s, Phase::Succeeded).await;
    eprintln!("converged {:?} after the CRD appeared", started.elapsed());
    assert_eq!(s.kubelet.seen_pods(), 3, "one pod per worker, none twice");
    terminates(second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_forbidden_by_rbac_says_so_and_stops_on_sigterm() {
    let Some(s) = scenario("faults-forbidden", json!({})).await else {
        return;
    };
    api(&s).inject(persistent("pods", 403), u32::MAX);
    let process = controller_with(&s, &[], "forbidden").await;
    let started = Instant::now();
    let body = unready_because(process.metrics_addr, "pods: not synced: 403 Forbidden").await;
    assert!(body.contains("RBAC"), "{body}");
    assert!(
        body.contains("cannot list resource \"pods\""),
        "the server's message is kept: {body}"
    );
    // Retries at 0.5, 1, 2, 3, 3 s: at most five tries in 7 s, each logged once at warn.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(started.elapsed())).await;
    let warnings = process
        .process
        .logs()
        .iter()
        // Per watch: the gated-pods watch (issue 9) is refused as well and warns on its own.
        .filter(|l| {
            l.contains("\"level\":\"WARN\"")
                && l.contains("403")
                && l.contains("\"watch\":\"pods\"")
        })
        .count();
    eprintln!("{warnings} warnings in 7 s");
    assert!(
        (1..=6).contains(&warnings),
        "one warning per backoff step: {warnings} in 7 s"
    );
    terminates(process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_mid_round_stops_on_sigterm_releases_the_lease_and_a_successor_converges() {
    let Some(s) = scenario("faults-mid-round", json!({})).await else {
        return;
    };
    for worker in ["kind-worker", "kind-worker2", "kind-worker3"] {
        s.rules.set(worker, Pull::Hang);
    }
    let lease_args = ["--leader-elect", "true", "--lease-namespace", s.ns.as_str()];
    let leader = controller_with(&s, &lease_args, "leader").await;
    wait_for_status(
        &s.prefetches,
        "prefetch-sample",
        Duration::from_secs(30),
        |st| st.phase == Phase::Running,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.kubelet.seen_pods() < 3 {
        assert!(Instant::now() < deadline, "three pods in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    terminates(leader).await;
    let leases: Api<Lease> = Api::namespaced(s.cluster.client.clone(), &s.ns);
    let lease = leases.get("prefetch-controller").await.expect("the lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "released on the way out"
    );

    // A successor takes over at once (released lease) and finishes the round with the pods
    // already there: none created twice.
    for worker in ["kind-worker", "kind-worker2", "kind-worker3"] {
        s.rules.set(worker, Pull::Succeed);
    }
    let successor = controller_with(&s, &lease_args, "successor").await;
    until_phase(&s, Phase::Succeeded).await;
    assert_eq!(s.kubelet.seen_pods(), 3, "no pod created twice");
    terminates(successor).await;
}

/// A pod creation that never gets an answer holds shutdown for `--shutdown-timeout`, no
/// longer: the process waits for it, then exits 0 anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_hangs_holds_shutdown_only_until_the_timeout() {
    let Some(s) = scenario("faults-hung-write", json!({})).await else {
        return;
    };
    let api = api(&s);
    api.inject(
        Fault {
            verb: Some("create"),
            resource: Some("pods"),
            client: Some(CONTROLLER_TOKEN),
            code: Fault::HANG,
        },
        u32::MAX,
    );
    let process = controller(&s, &["--shutdown-timeout", "2s"], "hung-write").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api
        .request_counts()
        .iter()
        .any(|(k, _)| k.verb == "create" && k.resource == "pods" && k.client == CONTROLLER_TOKEN)
    {
        assert!(Instant::now() < deadline, "the controller creates a pod");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let status = process
        .process
        .terminate(Duration::from_secs(6))
        .await
        .expect("exits after the shutdown timeout");
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(1800),
        "the write in flight was given its chance: exited after {took:?}"
    );
    api.clear_faults();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_resumes_at_once_after_an_outage_and_stops_on_sigterm_during_one() {
    let Some(s) = scenario("faults-outage", json!({})).await else {
        return;
    };
    let process = controller_with(&s, &[], "outage").await;
    until_phase(&s, Phase::Succeeded).await;
    let api = api(&s);

    // Down for 4 s (long enough for the backoff to grow), back with the history compacted.
    api.go_down().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.create_direct(
        "",
        "v1",
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "moved-on", "namespace": s.ns}}),
    )
    .expect("a write while the watchers are away");
    api.compact();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Stale from the watch's first failed request: on a loaded machine that can come later
    // than the outage's start, so the report is waited for rather than read at a fixed time.
    eventually(
        Duration::from_secs(15),
        "the node cache reported stale",
        || async {
            let text = process.metrics().await.unwrap_or_default();
            metric_value(
                &text,
                "prefetch_controller_watch_stale_seconds{resource=\"nodes\"}",
            ) >= 2.0
        },
    )
    .await;
    api.come_back().await.expect("listening again");
    let back = Instant::now();
    let second: Prefetch = serde_json::from_value(prefetch(
        &s.ns,
        "second",
        json!({"filter_by_labels": {"app": "nginx"}}),
    ))
    .unwrap();
    s.prefetches
        .create(&PostParams::default(), &second)
        .await
        .expect("create a Prefetch right after the outage");
    wait_for_status(&s.prefetches, "second", Duration::from_secs(8), |st| {
        st.phase == Phase::Succeeded
    })
    .await;
    eprintln!(
        "a Prefetch created on return converged in {:?}",
        back.elapsed()
    );
    let metrics = process.metrics().await.unwrap();
    for resource in ["nodes", "pods", "deployments", "prefetches"] {
        let series = format!("prefetch_controller_watch_stale_seconds{{resource=\"{resource}\"}}");
        assert_eq!(
            metric_value(&metrics, &series),
            0.0,
            "{series} after the outage"
        );
    }

    api.go_down().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    terminates(process).await;
}

/// A Deployment review for `labels` (a probe): whether the webhook signals it.
async fn signalled(client: &PinnedClient, ns: &str, labels: Value) -> bool {
    let probe = nginx_deployment(ns, "probe", labels, &["probe:1"]);
    let review = deployment_review("probe", "CREATE", probe, Value::Null);
    let Ok(reply) = client
        .post(
            "/mutate/deployment",
            "application/json",
            serde_json::to_vec(&review).unwrap(),
        )
        .await
    else {
        return false;
    };
    reply
        .json()
        .is_ok_and(|body| body["response"].get("patch").is_some())
}

async fn create_prefetch(cluster: &TestCluster, name: &str, labels: Value) {
    let api: Api<Prefetch> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let object: Prefetch = serde_json::from_value(prefetch(
        &cluster.namespace,
        name,
        json!({"filter_by_labels": labels}),
    ))
    .unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .expect("create Prefetch");
}

struct Webhook {
    cluster: TestCluster,
    webhook: WebhookProcess,
    client: PinnedClient,
}

/// The state the API server is in when the webhook starts.
enum Start {
    Up,
    Down,
    Failing(Fault),
}

async fn webhook(test: &str, start: Start) -> Option<Webhook> {
    let cluster = TestCluster::start(test).await.expect("test cluster");
    let Some(api) = cluster.api.as_ref() else {
        eprintln!("skipped against a real cluster: it stops the API server");
        return None;
    };
    let ready = matches!(start, Start::Up);
    match start {
        Start::Up => {}
        Start::Down => api.go_down().await,
        Start::Failing(fault) => api.inject(fault, u32::MAX),
    }
    let certs = issue_test_certs(&cluster.dir.path().join("certs")).expect("certificates");
    let mut options = WebhookOptions::with_cert_dir(&cluster.kubeconfig, &certs);
    options.extra_args = vec!["--cache-stale-after".into(), "5s".into()];
    options.echo_logs = true;
    let webhook = if ready {
        WebhookProcess::start(options).await
    } else {
        WebhookProcess::spawn(options).await
    }
    .expect("webhook starts");
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let client =
        PinnedClient::new(&ca, webhook.admission_addr, "127.0.0.1", Protocol::Http1).unwrap();
    Some(Webhook {
        cluster,
        webhook,
        client,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_not_synced_says_why_and_stops_on_sigterm() {
    // The CRD missing: 404 on prefetches.
    let Some(w) = webhook(
        "webhook-no-crd",
        Start::Failing(Fault {
            verb: None,
            resource: Some("prefetches"),
            client: None,
            code: 404,
        }),
    )
    .await
    else {
        return;
    };
    let (_, body) = until_http(
        w.webhook.ops_addr,
        "/readyz",
        Duration::from_secs(10),
        |status, body| {
            status == 503
                && body.contains("prefetches: not synced: 404 Not Found — is the CRD installed?")
        },
    )
    .await
    .expect("readyz names the watch and the error");
    eprintln!("readyz: {body}");
    // Installed: ready within seconds.
    w.cluster.api.as_ref().unwrap().clear_faults();
    until_http(
        w.webhook.ops_addr,
        "/readyz",
        Duration::from_secs(8),
        |status, _| status == 200,
    )
    .await
    .expect("ready once the CRD is there");

    let status = w.webhook.terminate(EXIT_BOUND).await.expect("exits");
    assert!(status.success(), "exit status {status}");

    // The node cache (warnings only) forbidden: ready all the same, and says so.
    let Some(nodes) = webhook(
        "webhook-nodes-forbidden",
        Start::Failing(Fault {
            verb: None,
            resource: Some("nodes"),
            client: None,
            code: 403,
        }),
    )
    .await
    else {
        return;
    };
    until_http(
        nodes.webhook.ops_addr,
        "/readyz",
        Duration::from_secs(10),
        |status, body| {
            status == 200 && body.starts_with("ok, but:\nnodes: not synced: 403 Forbidden")
        },
    )
    .await
    .expect("ready without the node cache, saying so");
    let status = nodes.webhook.terminate(EXIT_BOUND).await.expect("exits");
    assert!(status.success(), "exit status {status}");

    // The API server unreachable from the start.
    let Some(down) = webhook("webhook-unreachable", Start::Down).await else {
        return;
    };
    until_http(
        down.webhook.ops_addr,
        "/readyz",
        Duration::from_secs(10),
        |status, body| {
            status == 503 && body.contains("prefetches: not synced: API server unreachable")
        },
    )
    .await
    .expect("readyz says the API server is unreachable");
    let status = down.webhook.terminate(EXIT_BOUND).await.expect("exits");
    assert!(status.success(), "exit status {status}");
}

/// The issue's scenario: the API server refuses connections for 20 s, then returns with the
/// watch history compacted (the webhook's resourceVersion expired); a Prefetch created right
/// after is seen by the webhook (its Deployment hook signals a rollout) within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sees_a_prefetch_within_5s_of_a_20s_outage() {
    let Some(w) = webhook("webhook-outage", Start::Up).await else {
        return;
    };
    let (api, ns) = (w.cluster.api.as_ref().unwrap(), w.cluster.namespace.clone());
    create_prefetch(&w.cluster, "before", json!({"app": "before"})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !signalled(&w.client, &ns, json!({"app": "before"})).await {
        assert!(
            Instant::now() < deadline,
            "the webhook never saw the first Prefetch"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    api.go_down().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Stale past --cache-stale-after (5 s): still ready (see the README for why), says so,
    // and the metric counts.
    let (status, body) = prefetch_tests::binaries::http_get(w.webhook.ops_addr, "/readyz")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ok, but:") && body.contains("prefetches: down for"),
        "{body}"
    );
    let stale = w
        .webhook
        .metric("prefetch_webhook_watch_stale_seconds{resource=\"prefetches\"}")
        .await
        .unwrap();
    assert!(stale >= 8.0, "staleness metric: {stale}");
    assert!(
        signalled(&w.client, &ns, json!({"app": "before"})).await,
        "a stale cache keeps answering"
    );
    // The cluster moves on while the webhook cannot see it, and the history is compacted.
    api.create_direct(
        "",
        "v1",
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "moved-on", "namespace": ns}}),
    )
    .expect("a write while the watchers are away");
    api.compact();
    tokio::time::sleep(Duration::from_secs(10)).await;

    api.come_back().await.expect("listening again");
    let back = Instant::now();
    create_prefetch(&w.cluster, "after", json!({"app": "after"})).await;
    while !signalled(&w.client, &ns, json!({"app": "after"})).await {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "the webhook did not see a Prefetch created after the outage within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("seen {:?} after the API server returned", back.elapsed());
    let stale = w
        .webhook
        .metric("prefetch_webhook_watch_stale_seconds{resource=\"prefetches\"}")
        .await
        .unwrap();
    assert_eq!(stale, 0.0, "healthy again");
    let logs = w.webhook.logs().join("\n");
    assert!(logs.contains("watch recovered"), "{logs}");
    let status = w.webhook.terminate(EXIT_BOUND).await.expect("exits");
    assert!(status.success(), "exit status {status}");
}
