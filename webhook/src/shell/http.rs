//! HTTP surface: the admission router (served over TLS) and the webhook's readiness and scrape
//! for the shared ops server (`prefetch_shell::ops`).
//!
//! Each admission handler hands the body to a decision of [`crate::core`] with the watch
//! caches and the time, and turns the [`Answer`] into a response, a log line and metrics. The
//! pod gate's one live read of a workload happens here. A panic in a decision costs that
//! request a 500, never the process.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prefetch_common::WorkloadKind;
use prefetch_common::owner::WorkloadRef;
use prefetch_common::workload::Workload;
use prefetch_shell::ops::{self, Readiness};
use prefetch_shell::watch::WatchSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::core::admission::{self, Caches};
use crate::core::answer::{Answer, Endpoint, MUTATE_POD, RequestResult};
use crate::core::facts::WorkloadFacts;
use crate::core::gate::{self, Decision, PodFacts, Read};
use crate::shell::index::{LeaderLease, NodeNames, PrefetchIndex, Workloads};
use crate::shell::metrics::{LiveRead, Metrics, PodGate, ReasonLabel};

/// Bodies above this get 413. The API server caps objects near 3 MiB; an AdmissionReview holds
/// two of them plus envelope, so 7 MiB admits every legitimate review.
pub const MAX_BODY_BYTES: usize = 7 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub prefetches: Arc<PrefetchIndex>,
    pub nodes: Arc<NodeNames>,
    pub metrics: Arc<Metrics>,
    pub min_retry_after: i64,
    /// False once shutdown begins.
    pub serving: Arc<AtomicBool>,
    /// The watch caches, for `/readyz` and the staleness metric.
    pub watches: Arc<WatchSet>,
    /// A watch down longer than this is named in `/readyz` (which stays 200: see README).
    pub stale_after: Duration,
    pub workloads: Arc<Workloads>,
    pub lease: Arc<LeaderLease>,
    /// For the pod gate's live read of a workload the cache is behind on.
    pub client: Option<kube::Client>,
    /// Bound of that live read.
    pub live_read_timeout: std::time::Duration,
}

impl AppState {
    /// When the controller's Lease was last renewed by a holder, once its cache is synced.
    fn leader_renewed(&self) -> Option<jiff::Timestamp> {
        self.lease
            .is_synced()
            .then(|| self.lease.renewed_at())
            .flatten()
    }
}

/// The handlers' state, shared: a request clones one `Arc`, not every cache handle and the API
/// client.
type Shared = State<Arc<AppState>>;

pub fn admission_router(state: AppState) -> Router {
    Router::new()
        .route(Endpoint::MutatePrefetch.path(), post(mutate_prefetch))
        .route(Endpoint::ValidatePrefetch.path(), post(validate_prefetch))
        .route(Endpoint::MutateDeployment.path(), post(mutate_deployment))
        .route(Endpoint::MutateWorkload.path(), post(mutate_workload))
        .route(MUTATE_POD, post(mutate_pod))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(state))
}

/// Health, readiness ([`readyz`]) and metrics, as the shared ops server serves them.
pub fn ops_router(state: AppState) -> Router {
    let state = Arc::new(state);
    let scraped = state.clone();
    ops::router(ops::Checks {
        ready: move || readyz(&state),
        scrape: move || {
            scraped.metrics.watches.refresh(&scraped.watches);
            scraped.metrics.encode()
        },
    })
}

async fn mutate_prefetch(State(state): Shared, json: JsonBody, body: Bytes) -> Response {
    handle(Endpoint::MutatePrefetch, &state, json, &body)
}

async fn validate_prefetch(State(state): Shared, json: JsonBody, body: Bytes) -> Response {
    handle(Endpoint::ValidatePrefetch, &state, json, &body)
}

async fn mutate_deployment(State(state): Shared, json: JsonBody, body: Bytes) -> Response {
    handle(Endpoint::MutateDeployment, &state, json, &body)
}

async fn mutate_workload(State(state): Shared, json: JsonBody, body: Bytes) -> Response {
    handle(Endpoint::MutateWorkload, &state, json, &body)
}

/// Whether the request's Content-Type is `application/json`, read from the headers in place
/// (axum's `HeaderMap` extractor would copy every header of every request).
#[derive(Clone, Copy)]
struct JsonBody(bool);

impl<S: Send + Sync> FromRequestParts<S> for JsonBody {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(JsonBody(is_json(&parts.headers)))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn not_json(path: &'static str) -> (RequestResult, Response) {
    tracing::info!(
        endpoint = path,
        "rejected: Content-Type is not application/json"
    );
    (
        RequestResult::BadRequest,
        (
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json\n",
        )
            .into_response(),
    )
}

fn record(state: &AppState, path: &'static str, started: Instant, result: RequestResult) {
    state
        .metrics
        .record_request(path, result, started.elapsed().as_secs_f64());
}

fn handle(endpoint: Endpoint, state: &AppState, JsonBody(json): JsonBody, body: &[u8]) -> Response {
    let started = Instant::now();
    let path = endpoint.path();
    let (result, response) = if !json {
        not_json(path)
    } else {
        let caches = Caches {
            prefetches: &*state.prefetches,
            nodes: &*state.nodes,
            min_retry_after: state.min_retry_after,
            leader_renewed: state.leader_renewed(),
        };
        // Belt and braces: a bug must cost one request, never the process or a Deployment.
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            admission::review(endpoint, body, &caches, jiff::Timestamp::now())
        })) {
            Ok(Ok(answer)) => respond(endpoint, state, answer),
            Ok(Err(bad)) => {
                tracing::info!(endpoint = path, error = %bad, "rejected a malformed review");
                (
                    RequestResult::BadRequest,
                    (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response(),
                )
            }
            Err(_) => {
                tracing::error!(endpoint = path, "review handler panicked; answering 500");
                if endpoint.signals_rollouts() {
                    state
                        .metrics
                        .deployment_errors
                        .get_or_create(&ReasonLabel { reason: "panic" })
                        .inc();
                }
                (
                    RequestResult::Error,
                    StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                )
            }
        }
    };
    record(state, path, started, result);
    response
}

async fn mutate_pod(State(state): Shared, JsonBody(json): JsonBody, body: Bytes) -> Response {
    let started = Instant::now();
    let (result, response) = if !json {
        pod_error(&state, "unreadable");
        not_json(MUTATE_POD)
    } else {
        pod_review(&state, &body).await
    };
    record(&state, MUTATE_POD, started, result);
    response
}

/// The span of one pod-gate decision, which every line logged for it carries: the pod (its
/// review's uid and namespace), its workload and, once gated, the Prefetch. Made only when a
/// line is logged, with every field at once: the JSON formatter writes a span's fields when it
/// is made and again at each `record`, which cost a gated pod more than its decision did, and
/// a pod that passes (a debug line) none at all.
fn pod_span(uid: &str, pod: Option<&PodFacts>, prefetch: Option<&str>) -> tracing::Span {
    let workload = pod.and_then(|p| p.workload.as_ref().ok());
    tracing::info_span!(
        "pod_gate",
        endpoint = MUTATE_POD,
        uid,
        namespace = pod.map(|p| p.namespace.as_str()),
        workload = workload.map(tracing::field::display),
        prefetch,
    )
}

fn pod_error(state: &AppState, reason: &'static str) {
    state.metrics.count_pod_gate(PodGate::Errored);
    state
        .metrics
        .pod_gate_errors
        .get_or_create(&ReasonLabel { reason })
        .inc();
}

/// The pod gate, fail-open: whatever goes wrong, the pod is allowed unchanged (or, for a body
/// that is no AdmissionReview, answered 400, which the API server's `failurePolicy: Ignore`
/// admits), and counted.
async fn pod_review(state: &AppState, body: &[u8]) -> (RequestResult, Response) {
    let now = jiff::Timestamp::now();
    let pod = match std::panic::catch_unwind(AssertUnwindSafe(|| gate::read(body))) {
        Ok(Ok(Read::Pod(pod))) => pod,
        Ok(Ok(Read::NotForUs(uid, why))) => {
            return pod_answer(state, "internal", Answer::allow_pod(&uid, why), None, None);
        }
        Ok(Err(bad)) => {
            pod_error(state, "unreadable");
            tracing::info!(endpoint = MUTATE_POD, error = %bad, "rejected a malformed review");
            return (
                RequestResult::BadRequest,
                (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response(),
            );
        }
        Err(_) => return pod_panicked(state, None),
    };
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| first_decision(state, &pod, now)));
    let decision = match first {
        Ok(First::Decided(decision)) => decision,
        Ok(First::Unsynced(answer)) => {
            return pod_answer(state, "caches_not_synced", answer, Some(&pod), None);
        }
        Err(_) => return pod_panicked(state, Some(&pod)),
    };
    let decision = match decision {
        Decision::ReadLive { workload } => {
            // Only the namespace is held across the read: `PodFacts` is not `Sync`.
            let live = read_workload(state, &pod.namespace, &workload).await;
            match live_decision(state, &pod, &workload, live, now) {
                Live::Decided(decision) => decision,
                Live::Answered(result, response) => return (result, response),
            }
        }
        decision => decision,
    };
    let prefetch = match &decision {
        Decision::Gate { prefetch, .. } => Some(prefetch.clone()),
        _ => None,
    };
    let answer = gate::answer(&pod.uid, decision);
    pod_answer(state, "internal", answer, Some(&pod), prefetch.as_deref())
}

/// The decision from the caches, or the answer while they have not synced.
enum First {
    Decided(Decision),
    Unsynced(Answer),
}

/// The decision from the caches; an answer at once while they have not synced.
fn first_decision(state: &AppState, pod: &PodFacts, now: jiff::Timestamp) -> First {
    let workload_synced = pod
        .workload
        .as_ref()
        .is_ok_and(|w| state.workloads.is_synced(w.kind));
    if pod.workload.is_ok()
        && !(state.prefetches.is_synced() && workload_synced && state.lease.is_synced())
    {
        return First::Unsynced(Answer::allow_pod(&pod.uid, "caches not synced yet").errored());
    }
    let cached = match &pod.workload {
        Ok(workload) => state.workloads.get(&pod.namespace, workload),
        Err(_) => None,
    };
    First::Decided(decide(state, pod, cached.as_deref(), false, now))
}

/// The decision after a live read, or the answer already made.
enum Live {
    Decided(Decision),
    Answered(RequestResult, Response),
}

/// The decision again after one live read of the workload the cache is behind on; the
/// answer already made when the read failed or the decision panicked.
fn live_decision(
    state: &AppState,
    pod: &PodFacts,
    workload: &WorkloadRef,
    read: Result<Option<WorkloadFacts>, String>,
    now: jiff::Timestamp,
) -> Live {
    let live = match read {
        Ok(live) => live,
        Err(why) => {
            let answer =
                Answer::allow_pod(&pod.uid, format!("live read of {workload} failed: {why}"))
                    .errored();
            let (result, response) = pod_answer(state, "live_read", answer, Some(pod), None);
            return Live::Answered(result, response);
        }
    };
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        decide(state, pod, live.as_ref(), true, now)
    })) {
        Ok(decision) => Live::Decided(decision),
        Err(_) => {
            let (result, response) = pod_panicked(state, Some(pod));
            Live::Answered(result, response)
        }
    }
}

fn decide(
    state: &AppState,
    pod: &PodFacts,
    workload: Option<&WorkloadFacts>,
    live: bool,
    now: jiff::Timestamp,
) -> Decision {
    gate::decide(
        pod,
        &gate::Inputs {
            workload,
            live,
            prefetches: &*state.prefetches,
            leader_renewed: state.leader_renewed(),
            now,
        },
    )
}

/// One GET of a workload of kind `K`, slimmed.
async fn get_facts<K>(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<WorkloadFacts>, kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
    for<'k> &'k K: Into<Workload<'k>>,
{
    let api: kube::Api<K> = kube::Api::namespaced(client, namespace);
    let found = api.get_opt(name).await?;
    Ok(found.as_ref().map(|w| WorkloadFacts::from(w.into())))
}

/// One GET of a workload, bounded by `live_read_timeout`; `Ok(None)` when it does not exist.
async fn read_workload(
    state: &AppState,
    namespace: &str,
    workload: &WorkloadRef,
) -> Result<Option<WorkloadFacts>, String> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::batch::v1::CronJob;
    let count = |result| state.metrics.count_live_read(result);
    let Some(client) = state.client.clone() else {
        count(LiveRead::Error);
        return Err("no API client".into());
    };
    let name = workload.name.as_str();
    let read = async {
        match workload.kind {
            WorkloadKind::Deployment => get_facts::<Deployment>(client, namespace, name).await,
            WorkloadKind::StatefulSet => get_facts::<StatefulSet>(client, namespace, name).await,
            WorkloadKind::DaemonSet => get_facts::<DaemonSet>(client, namespace, name).await,
            WorkloadKind::CronJob => get_facts::<CronJob>(client, namespace, name).await,
            WorkloadKind::Job => Ok(None),
        }
    };
    match tokio::time::timeout(state.live_read_timeout, read).await {
        Ok(Ok(found)) => {
            count(LiveRead::Ok);
            Ok(found)
        }
        Ok(Err(err)) => {
            count(LiveRead::Error);
            Err(err.to_string())
        }
        Err(_) => {
            count(LiveRead::Timeout);
            Err(format!("no answer within {:?}", state.live_read_timeout))
        }
    }
}

fn pod_panicked(state: &AppState, pod: Option<&PodFacts>) -> (RequestResult, Response) {
    let uid = pod.map_or("", |p| p.uid.as_str());
    let _span = pod_span(uid, pod, None).entered();
    tracing::error!("pod gate panicked; answering 500");
    pod_error(state, "panic");
    (
        RequestResult::Error,
        StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    )
}

/// Counts and logs a pod answer (in the decision's span, see [`pod_span`]); an `errored`
/// answer under `error_reason`.
fn pod_answer(
    state: &AppState,
    error_reason: &'static str,
    answer: Answer,
    pod: Option<&PodFacts>,
    prefetch: Option<&str>,
) -> (RequestResult, Response) {
    let span = || pod_span(&answer.uid, pod, prefetch).entered();
    match answer.result {
        RequestResult::Patched => {
            // Debug, as passes: a rollout of N pods is one "rollout signalled" line at info,
            // not N more; each gated pod carries its gated-by, gated-for and gated-until, and
            // `pod_gate_total{result="gated"}` counts it. At info, the line and its span were
            // a fifth of a gated pod's instructions (45,000 of 242,000).
            state.metrics.count_pod_gate(PodGate::Gated);
            if tracing::enabled!(tracing::Level::DEBUG) {
                let _span = span();
                tracing::debug!(reason = answer.why.as_str(), "pod gated");
            }
        }
        RequestResult::Error => {
            pod_error(state, error_reason);
            let _span = span();
            tracing::warn!(
                reason = answer.why.as_str(),
                "pod allowed ungated after an error"
            );
        }
        _ => {
            state.metrics.count_pod_gate(PodGate::Passed);
            if tracing::enabled!(tracing::Level::DEBUG) {
                let _span = span();
                tracing::debug!(reason = answer.why.as_str(), "pod passed");
            }
        }
    }
    match answer.to_review_json() {
        Ok(body) => (
            answer.result,
            ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        ),
        Err(err) => {
            tracing::error!(error = %err, "could not encode the response");
            (
                RequestResult::Error,
                StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            )
        }
    }
}

fn respond(endpoint: Endpoint, state: &AppState, answer: Answer) -> (RequestResult, Response) {
    let path = endpoint.path();
    match answer.result {
        RequestResult::Denied => {
            tracing::info!(
                endpoint = path,
                uid = answer.uid.as_str(),
                reason = answer.why.as_str(),
                "denied"
            )
        }
        RequestResult::Patched if endpoint.signals_rollouts() => {
            state.metrics.rollout_signals.inc();
            tracing::info!(
                endpoint = path,
                uid = answer.uid.as_str(),
                reason = answer.why.as_str(),
                "rollout signalled"
            );
        }
        RequestResult::Error => {
            state
                .metrics
                .deployment_errors
                .get_or_create(&ReasonLabel { reason: "internal" })
                .inc();
            tracing::warn!(
                endpoint = path,
                uid = answer.uid.as_str(),
                reason = answer.why.as_str(),
                "allowed without signal"
            );
        }
        _ => {
            tracing::debug!(
                endpoint = path,
                uid = answer.uid.as_str(),
                result = answer.result.as_str(),
                reason = answer.why.as_str(),
                "answered"
            )
        }
    }
    match answer.to_review_json() {
        Ok(body) => (
            answer.result,
            ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        ),
        Err(err) => {
            tracing::error!(endpoint = path, error = %err, "could not encode the response");
            (
                RequestResult::Error,
                StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            )
        }
    }
}

/// 503 while shutting down or while the Prefetch cache has not synced yet, saying which watch
/// and why. A cache that synced once and then went stale keeps the webhook ready (it is named
/// in the body once down longer than `--cache-stale-after`): every replica is stale alike in
/// an API outage, and an unready webhook would fail every Prefetch write (failurePolicy Fail)
/// and drop every rollout signal, not just the few the stale cache misses. The node cache
/// (warnings only) never holds readiness.
fn readyz(state: &AppState) -> Readiness {
    if !state.serving.load(Ordering::Acquire) {
        return Readiness::shutting_down();
    }
    let problems: Vec<String> = state
        .watches
        .statuses(tokio::time::Instant::now())
        .iter()
        .filter_map(|s| s.problem(Some(state.stale_after)))
        .collect();
    if !state.watches.unready_reasons().is_empty() {
        Readiness::Unready(format!("{}\n", problems.join("\n")))
    } else if problems.is_empty() {
        Readiness::Ready("ok".into())
    } else {
        Readiness::Ready(format!("ok, but:\n{}\n", problems.join("\n")))
    }
}
