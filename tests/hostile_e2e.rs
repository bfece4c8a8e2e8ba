//! The real prefetch-webhook over TLS against clients that stall at every stage of a connection
//! (design: docs/src/design.md#hostile-clients), while a well-behaved client playing the API server
//! keeps sending reviews. Bounds are set short by flags so each test runs in seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prefetch_tests::binaries::{WebhookOptions, WebhookProcess};
use prefetch_tests::cluster::TestCluster;
use prefetch_tests::fixtures::{issue_test_certs, prefetch_review, sample_prefetch};
use prefetch_tests::stall::{Stall, Stalled, stall};
use prefetch_tests::tls_client::{PinnedClient, Protocol};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const JSON: &str = "application/json";
const PATH: &str = "/validate/prefetch";
/// The shortest hook timeout in the manifests (the Deployment hook's): the well-behaved
/// client's reviews must all be answered within it.
const HOOK_TIMEOUT: Duration = Duration::from_secs(2);

struct Setup {
    cluster: TestCluster,
    webhook: WebhookProcess,
    client: PinnedClient,
    ca: Vec<u8>,
    /// A valid review of the sample Prefetch.
    review: Vec<u8>,
}

async fn setup(test: &str, flags: &[&str]) -> Setup {
    let cluster = TestCluster::start(test).await.expect("test cluster");
    let certs = issue_test_certs(&cluster.dir.path().join("certs")).expect("certificates");
    let webhook = WebhookProcess::start(WebhookOptions {
        extra_args: flags.iter().map(|s| s.to_string()).collect(),
        echo_logs: true,
        ..WebhookOptions::with_cert_dir(&cluster.kubeconfig, &certs)
    })
    .await
    .expect("webhook starts");
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let client =
        PinnedClient::new(&ca, webhook.admission_addr, "127.0.0.1", Protocol::Http1).unwrap();
    let review = serde_json::to_vec(&prefetch_review(
        "steady",
        "CREATE",
        sample_prefetch(&cluster.namespace),
        Value::Null,
    ))
    .unwrap();
    Setup {
        cluster,
        webhook,
        client,
        ca,
        review,
    }
}

/// What the well-behaved client saw.
#[derive(Debug, Default)]
struct Served {
    answered: usize,
    failures: Vec<String>,
    slowest: Duration,
}

/// A client playing the API server: reviews back to back, one loop opening a connection per
/// review, one on a kept-alive connection.
struct WellBehaved {
    stop: Arc<AtomicBool>,
    loops: Vec<JoinHandle<Served>>,
}

impl WellBehaved {
    fn start(client: &PinnedClient, review: &[u8]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = [false, true]
            .into_iter()
            .map(|keep_alive| {
                let (client, review, stop) = (client.clone(), review.to_vec(), stop.clone());
                tokio::spawn(async move {
                    let mut served = Served::default();
                    let mut kept = None;
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let reply = async {
                            let mut conn = match kept.take() {
                                Some(conn) => conn,
                                None => client.connect().await?,
                            };
                            let reply = conn.post(PATH, JSON, review.clone()).await?;
                            if keep_alive {
                                kept = Some(conn);
                            }
                            anyhow::Ok(reply)
                        };
                        match tokio::time::timeout(HOOK_TIMEOUT, reply).await {
                            Ok(Ok(reply)) if reply.status == 200 => served.answered += 1,
                            Ok(Ok(reply)) => served.failures.push(format!("HTTP {}", reply.status)),
                            Ok(Err(err)) => served.failures.push(format!("{err:#}")),
                            Err(_) => served
                                .failures
                                .push(format!("no answer within {HOOK_TIMEOUT:?}")),
                        }
                        served.slowest = served.slowest.max(started.elapsed());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    served
                })
            })
            .collect();
        Self { stop, loops }
    }

    async fn stop(self) -> Served {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Served::default();
        for l in self.loops {
            let served = l.await.unwrap();
            all.answered += served.answered;
            all.failures.extend(served.failures);
            all.slowest = all.slowest.max(served.slowest);
        }
        all
    }
}

fn assert_all_answered(served: &Served) {
    assert!(
        served.failures.is_empty(),
        "the well-behaved client failed {} of {} reviews: {:?}",
        served.failures.len(),
        served.answered + served.failures.len(),
        served.failures
    );
    assert!(
        served.answered > 0,
        "the well-behaved client was never answered"
    );
    assert!(
        served.slowest < HOOK_TIMEOUT,
        "slowest review took {:?}",
        served.slowest
    );
}

async fn stall_many(s: &Setup, kind: Stall, n: usize) -> Vec<Stalled> {
    let h2 = PinnedClient::new(
        &s.ca,
        s.webhook.admission_addr,
        "127.0.0.1",
        Protocol::Http2,
    )
    .unwrap();
    let client = if kind == Stall::ResponseNotRead {
        &h2
    } else {
        &s.client
    };
    let stalls = (0..n).map(|_| stall(client, kind, PATH, &s.review));
    futures::future::try_join_all(stalls)
        .await
        .expect("stalled clients")
}

async fn wait_for_metric(webhook: &WebhookProcess, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = webhook.metric(series).await.unwrap();
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now}, never {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn series(name: &str, stage: &str) -> String {
    format!("prefetch_webhook_{name}_total{{stage=\"{stage}\"}}")
}

const STAGES: [&str; 5] = ["handshake", "headers", "body", "response", "idle"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_at_each_stage_while_reviews_keep_being_answered() {
    // A different bound per stage, so a stage timed by another's bound shows. Idle is the
    // longest by far: a client that idles, then trickles its next request's headers, must be
    // cut by the headers bound counted from its first byte, not by the idle bound.
    let bound = |stage: &str| match stage {
        "handshake" => Duration::from_millis(1000),
        "headers" => Duration::from_millis(1200),
        "body" => Duration::from_millis(1500),
        "response" => Duration::from_millis(2000),
        "idle" => Duration::from_millis(6000),
        other => panic!("{other}"),
    };
    let s = setup(
        "stalls",
        &[
            "--tls-handshake-timeout=1000ms",
            "--header-read-timeout=1200ms",
            "--body-read-timeout=1500ms",
            "--response-write-timeout=2000ms",
            "--idle-timeout=6000ms",
        ],
    )
    .await;
    let steady = WellBehaved::start(&s.client, &s.review);

    const PER_KIND: usize = 20;
    let mut stalled = Vec::new();
    for kind in Stall::ALL {
        stalled.extend(stall_many(&s, kind, PER_KIND).await);
    }
    // Cut off within its stage's bound (timers never fire early; under load they fire late).
    let mut wrong = Vec::new();
    for client in stalled {
        let (kind, bound) = (client.kind, bound(client.kind.stage()));
        match client.cut_off_after(bound + Duration::from_secs(2)).await {
            Ok(took) if took + Duration::from_millis(250) >= bound => {}
            Ok(took) => wrong.push(format!(
                "{kind:?}: cut after {took:?}, before its {bound:?}"
            )),
            Err(err) => wrong.push(format!("{err:#}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    let served = steady.stop().await;
    eprintln!("well-behaved client: {served:?}");
    assert_all_answered(&served);
    for stage in STAGES {
        let expected = Stall::ALL.iter().filter(|k| k.stage() == stage).count() * PER_KIND;
        assert_eq!(
            s.webhook
                .metric(&series("connection_timeouts", stage))
                .await
                .unwrap(),
            expected as f64,
            "timeouts at stage {stage}"
        );
    }
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_at_the_connection_limit_are_shed_for_new_ones() {
    // Bounds far above the test's length: connections close here only by being shed.
    let s = setup(
        "shed-connections",
        &[
            "--max-connections=8",
            "--tls-handshake-timeout=60s",
            "--header-read-timeout=60s",
            "--body-read-timeout=60s",
            "--idle-timeout=60s",
        ],
    )
    .await;
    // A working client's kept-alive connection, idle after one review.
    let mut kept = s.client.connect().await.unwrap();
    assert_eq!(
        kept.post(PATH, JSON, s.review.clone())
            .await
            .unwrap()
            .status,
        200
    );
    // Stalled clients take the other seven connections.
    let mut stalled = Vec::new();
    for (kind, n) in [
        (Stall::TlsHandshake, 2),
        (Stall::NoRequest, 3),
        (Stall::BodyNeverSent, 2),
    ] {
        stalled.extend(stall_many(&s, kind, n).await);
    }
    wait_for_metric(&s.webhook, "prefetch_webhook_open_connections", 8.0).await;

    // Seven new clients, each keeping its connection: each is answered within the hook
    // timeout, by shedding a stalled client (never the working one).
    let mut fresh = Vec::new();
    for i in 0..7 {
        let started = Instant::now();
        let answered = async {
            let mut conn = s.client.connect().await?;
            let reply = conn.post(PATH, JSON, s.review.clone()).await?;
            anyhow::Ok((conn, reply.status))
        };
        let (conn, status) = tokio::time::timeout(HOOK_TIMEOUT, answered)
            .await
            .unwrap_or_else(|_| panic!("new client {i} not answered within {HOOK_TIMEOUT:?}"))
            .unwrap();
        assert_eq!(status, 200);
        eprintln!("new client {i} answered in {:?}", started.elapsed());
        fresh.push(conn);
    }
    for client in stalled {
        let kind = client.kind;
        client
            .cut_off_after(Duration::from_secs(10))
            .await
            .unwrap_or_else(|err| panic!("{kind:?} was not shed: {err:#}"));
    }
    for (stage, n) in [
        ("handshake", 2.0),
        ("headers", 3.0),
        ("body", 2.0),
        ("idle", 0.0),
    ] {
        assert_eq!(
            s.webhook
                .metric(&series("connections_shed", stage))
                .await
                .unwrap(),
            n,
            "shed at stage {stage}"
        );
    }
    for stage in STAGES {
        assert_eq!(
            s.webhook
                .metric(&series("connection_timeouts", stage))
                .await
                .unwrap(),
            0.0
        );
    }

    // Only working clients are left: the next newcomer sheds the one idle the longest.
    let mut newcomer = s.client.connect().await.unwrap();
    assert_eq!(
        newcomer
            .post(PATH, JSON, s.review.clone())
            .await
            .unwrap()
            .status,
        200
    );
    wait_for_metric(&s.webhook, &series("connections_shed", "idle"), 1.0).await;
    assert!(
        kept.post(PATH, JSON, s.review.clone()).await.is_err(),
        "the longest-idle connection was shed"
    );
    for conn in &mut fresh {
        assert_eq!(
            conn.post(PATH, JSON, s.review.clone())
                .await
                .unwrap()
                .status,
            200
        );
    }
    s.cluster.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_cannot_hold_every_request_slot() {
    let s = setup(
        "shed-requests",
        &[
            "--max-concurrent-requests=4",
            "--body-read-timeout=60s",
            "--header-read-timeout=60s",
        ],
    )
    .await;
    let stalled = stall_many(&s, Stall::BodyNeverSent, 4).await;
    wait_for_metric(&s.webhook, "prefetch_webhook_inflight_requests", 4.0).await;

    let started = Instant::now();
    let reply = tokio::time::timeout(HOOK_TIMEOUT, s.client.post(PATH, JSON, s.review.clone()))
        .await
        .expect("answered within the hook timeout")
        .unwrap();
    assert_eq!(reply.status, 200);
    eprintln!(
        "answered in {:?} with every request slot held",
        started.elapsed()
    );
    wait_for_metric(&s.webhook, &series("connections_shed", "body"), 1.0).await;
    // Exactly one stalled client made room; the others still wait for their bound.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stalled.iter().filter(|c| c.is_closed()).count() < 1 {
        assert!(Instant::now() < deadline, "no stalled client was closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stalled.iter().filter(|c| c.is_closed()).count(), 1);
    s.cluster.cleanup().await;
}
