//! The ops server both binaries serve over plain HTTP on `--metrics-addr`: `/healthz`,
//! `/readyz` and `/metrics`. What readiness means differs between them (the controller holds
//! readiness on every watch of its term, the webhook only until its caches first synced), so
//! each passes its own check; the routes, the liveness answer and the OpenMetrics response are
//! written here once.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The content type of a Prometheus scrape in the OpenMetrics text format, which
/// `prometheus_client` encodes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A `/readyz` answer: 200 or 503, with a body saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready(String),
    Unready(String),
}

impl Readiness {
    /// Once shutdown began: load balancers stop sending before the listeners close.
    pub fn shutting_down() -> Self {
        Readiness::Unready("shutting down\n".into())
    }
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        match self {
            Readiness::Ready(body) => body.into_response(),
            Readiness::Unready(body) => (StatusCode::SERVICE_UNAVAILABLE, body).into_response(),
        }
    }
}

/// What a binary plugs into the ops server: its readiness check and its scrape (the metrics
/// exposition, after whatever refresh the binary does before a scrape).
pub struct Checks<R, S> {
    pub ready: R,
    pub scrape: S,
}

/// The ops routes over `checks`.
pub fn router<R, S>(checks: Checks<R, S>) -> Router
where
    R: Fn() -> Readiness + Send + Sync + 'static,
    S: Fn() -> Result<String, std::fmt::Error> + Send + Sync + 'static,
{
    let (ready, scrape) = (Arc::new(checks.ready), Arc::new(checks.scrape));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let answer = ready();
                async move { answer }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let response = metrics_response(scrape());
                async move { response }
            }),
        )
}

/// A scrape as the response Prometheus reads; 500 when the registry could not be encoded.
pub fn metrics_response(exposition: Result<String, std::fmt::Error>) -> Response {
    match exposition {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets requests in flight finish.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    })
}

/// Waits for the server [`spawn`] started to end, logging how if not cleanly.
pub async fn stopped(server: JoinHandle<std::io::Result<()>>) {
    match server.await {
        Ok(Err(err)) => tracing::warn!(error = %err, "ops server ended with an error"),
        Err(err) => tracing::warn!(error = %err, "ops server task failed"),
        Ok(Ok(())) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn get(app: &Router, path: &str) -> (u16, Option<String>, String) {
        use tower::ServiceExt;
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics_as_each_check_says() {
        let ready = Arc::new(AtomicBool::new(false));
        let app = router(Checks {
            ready: {
                let ready = ready.clone();
                move || match ready.load(Ordering::Acquire) {
                    true => Readiness::Ready("ok".into()),
                    false => Readiness::Unready("watch x: not synced\n".into()),
                }
            },
            scrape: || Ok("# EOF\n".to_string()),
        });
        let text = Some("text/plain; charset=utf-8".to_string());
        assert_eq!(
            get(&app, "/healthz").await,
            (200, text.clone(), "ok".into())
        );
        assert_eq!(
            get(&app, "/readyz").await,
            (503, text.clone(), "watch x: not synced\n".into())
        );
        ready.store(true, Ordering::Release);
        assert_eq!(get(&app, "/readyz").await, (200, text, "ok".into()));
        assert_eq!(
            get(&app, "/metrics").await,
            (200, Some(OPENMETRICS.to_string()), "# EOF\n".into())
        );
        let failing = router(Checks {
            ready: Readiness::shutting_down,
            scrape: || Err(std::fmt::Error),
        });
        assert_eq!(get(&failing, "/metrics").await.0, 500);
        assert_eq!(get(&failing, "/readyz").await.2, "shutting down\n");
    }
}
