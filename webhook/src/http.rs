//! HTTP surface: the admission router (served over TLS) and the ops router (health, metrics).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prefetch_common::watch::WatchSet;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::admission::{self, Caches, Endpoint};
use crate::index::{NodeNames, PrefetchIndex};
use crate::metrics::{EndpointLabel, Metrics, ReasonLabel, RequestLabels};

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
}

pub fn admission_router(state: AppState) -> Router {
    Router::new()
        .route(Endpoint::MutatePrefetch.path(), post(mutate_prefetch))
        .route(Endpoint::ValidatePrefetch.path(), post(validate_prefetch))
        .route(Endpoint::MutateDeployment.path(), post(mutate_deployment))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn mutate_prefetch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(Endpoint::MutatePrefetch, &state, &headers, &body)
}

async fn validate_prefetch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(Endpoint::ValidatePrefetch, &state, &headers, &body)
}

async fn mutate_deployment(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(Endpoint::MutateDeployment, &state, &headers, &body)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn handle(endpoint: Endpoint, state: &AppState, headers: &HeaderMap, body: &[u8]) -> Response {
    let started = Instant::now();
    let path = endpoint.path();
    let (result, response) = if !is_json(headers) {
        tracing::info!(
            endpoint = path,
            "rejected: Content-Type is not application/json"
        );
        (
            "bad_request",
            (
                StatusCode::BAD_REQUEST,
                "Content-Type must be application/json\n",
            )
                .into_response(),
        )
    } else {
        let caches = Caches {
            prefetches: &state.prefetches,
            nodes: &state.nodes,
            min_retry_after: state.min_retry_after,
        };
        // Belt and braces: a bug must cost one request, never the process or a Deployment.
        match std::panic::catch_unwind(AssertUnwindSafe(|| {
            admission::review(endpoint, body, &caches, jiff::Timestamp::now())
        })) {
            Ok(Ok(answer)) => respond(endpoint, state, answer),
            Ok(Err(bad)) => {
                tracing::info!(endpoint = path, error = %bad, "rejected a malformed review");
                (
                    "bad_request",
                    (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response(),
                )
            }
            Err(_) => {
                tracing::error!(endpoint = path, "review handler panicked; answering 500");
                if endpoint == Endpoint::MutateDeployment {
                    state
                        .metrics
                        .deployment_errors
                        .get_or_create(&ReasonLabel { reason: "panic" })
                        .inc();
                }
                ("error", StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
        }
    };
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint: path,
            result,
        })
        .inc();
    state
        .metrics
        .duration
        .get_or_create(&EndpointLabel { endpoint: path })
        .observe(started.elapsed().as_secs_f64());
    response
}

fn respond(
    endpoint: Endpoint,
    state: &AppState,
    answer: admission::Answer,
) -> (&'static str, Response) {
    let path = endpoint.path();
    match answer.result {
        "denied" => {
            tracing::info!(endpoint = path, uid = %answer.uid, reason = %answer.why, "denied")
        }
        "patched" if endpoint == Endpoint::MutateDeployment => {
            state.metrics.rollout_signals.inc();
            tracing::info!(endpoint = path, uid = %answer.uid, reason = %answer.why, "rollout signalled");
        }
        "error" => {
            state
                .metrics
                .deployment_errors
                .get_or_create(&ReasonLabel { reason: "internal" })
                .inc();
            tracing::warn!(endpoint = path, uid = %answer.uid, reason = %answer.why, "allowed without signal");
        }
        _ => {
            tracing::debug!(endpoint = path, uid = %answer.uid, result = answer.result, reason = %answer.why, "answered")
        }
    }
    match answer.to_review_json() {
        Ok(body) => (
            answer.result,
            ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        ),
        Err(err) => {
            tracing::error!(endpoint = path, error = %err, "could not encode the response");
            ("error", StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
    }
}

/// 503 while shutting down or while the Prefetch cache has not synced yet, saying which watch
/// and why. A cache that synced once and then went stale keeps the webhook ready (it is named
/// in the body once down longer than `--cache-stale-after`): every replica is stale alike in
/// an API outage, and an unready webhook would fail every Prefetch write (failurePolicy Fail)
/// and drop every rollout signal, not just the few the stale cache misses. The node cache
/// (warnings only) never holds readiness.
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.serving.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let problems: Vec<String> = state
        .watches
        .statuses(tokio::time::Instant::now())
        .iter()
        .filter_map(|s| s.problem(Some(state.stale_after)))
        .collect();
    if !state.watches.unready_reasons().is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", problems.join("\n")),
        )
            .into_response()
    } else if problems.is_empty() {
        "ok".into_response()
    } else {
        format!("ok, but:\n{}\n", problems.join("\n")).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.watches.refresh(&state.watches);
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
