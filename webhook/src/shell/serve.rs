//! TLS accept loop (tokio-rustls + hyper) with every stage of a connection bounded in time
//! (see `core/limits.rs`), connections and requests bounded in number, and graceful shutdown
//! that lets in-flight requests finish.
//!
//! When `max_connections` are open, a new connection sheds one that is waiting on its client
//! (those that never completed a request first, then the longest waiting), so clients that
//! stall can hold connections only until the next well-behaved client arrives. The same goes
//! for request slots. Connections the server is answering on are never shed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::core::limits::{Bounds, Progress, Stage};
use crate::shell::conn::{Registry, RequestSlots, Tracked, TrackedService, WatchedIo};
use crate::shell::metrics::{Metrics, StageLabel};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    pub bounds: Bounds,
    pub max_connections: usize,
    /// Requests between their headers and their written response, over all connections.
    pub max_requests: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams: u32,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            bounds: Bounds::default(),
            max_connections: 1024,
            max_requests: 256,
            max_streams: 100,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// How often the accept loop, waiting for a free connection slot, re-runs the shedding policy.
const SHED_RETRY: Duration = Duration::from_millis(100);

/// What every connection task shares.
struct Shared {
    acceptor: TlsAcceptor,
    router: Router,
    limits: ServeLimits,
    registry: Arc<Registry>,
    slots: Arc<RequestSlots>,
    metrics: Arc<Metrics>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Serves `app` over TLS on `listener` until `shutdown`, then drains open connections.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: ServeLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // The watchdog times headers (and idle keep-alive) itself: hyper's timer would count the
    // idle wait into the header time.
    http1.timer(TokioTimer::new()).header_read_timeout(None);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams);
    let shared = Arc::new(Shared {
        acceptor: TlsAcceptor::from(tls),
        router: app,
        limits,
        registry: Arc::new(Registry::default()),
        slots: Arc::new(RequestSlots::new(limits.max_requests)),
        metrics,
        http1,
        http2,
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();

    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = connection_slot(&permits, &shared.registry, &shutdown).await else {
            break;
        };
        let _ = tcp.set_nodelay(true);
        let (shared, watcher, shutdown) = (shared.clone(), graceful.watcher(), shutdown.clone());
        tokio::spawn(async move {
            serve_connection(tcp, peer, &shared, watcher, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("no longer accepting connections; draining open ones");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout elapsed with connections still open; closing them");
    }
}

/// A connection slot for a new connection: at once when one is free; otherwise sheds a
/// connection that waits on its client and takes the slot it frees. `None` on shutdown.
async fn connection_slot(
    permits: &Arc<Semaphore>,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    loop {
        registry.shed_one(Progress::shed_rank, None);
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            permit = tokio::time::timeout(SHED_RETRY, permits.clone().acquire_owned()) => {
                if let Ok(permit) = permit {
                    return permit.ok();
                }
            }
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    watcher: Watcher,
    shutdown: CancellationToken,
) {
    let bounds = shared.limits.bounds;
    let tracked = Arc::new(Tracked::new(Instant::now(), bounds));
    let _registration = shared
        .registry
        .register(tracked.clone(), shared.metrics.clone());

    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tracked.shed_requested() => {
            closed(shared, peer, Stage::Handshake, Closed::Shed);
            return;
        }
        result = tokio::time::timeout(bounds.handshake, shared.acceptor.accept(tcp)) => result,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            closed(shared, peer, Stage::Handshake, Closed::TimedOut);
            return;
        }
    };
    // The API server negotiates HTTP/1.1 for admission webhooks; HTTP/2 is served on request.
    let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    tracked.handshake_done(!http2);
    let io = TokioIo::new(WatchedIo::new(stream, tracked.clone()));
    let service = TrackedService {
        router: shared.router.clone(),
        tracked: tracked.clone(),
        registry: shared.registry.clone(),
        slots: shared.slots.clone(),
        metrics: shared.metrics.clone(),
    };
    if http2 {
        let connection = shared.http2.serve_connection(io, service);
        watchdog(watcher.watch(connection), &tracked, shared, peer).await;
    } else {
        let connection = shared.http1.serve_connection(io, service);
        watchdog(watcher.watch(connection), &tracked, shared, peer).await;
    }
}

/// Drives `connection` until it ends, its stage's deadline passes, or it is shed.
async fn watchdog<E: std::fmt::Display>(
    connection: impl Future<Output = Result<(), E>>,
    tracked: &Tracked,
    shared: &Shared,
    peer: SocketAddr,
) {
    let mut connection = std::pin::pin!(connection);
    let sleep = tokio::time::sleep(Duration::ZERO);
    let mut sleep = std::pin::pin!(sleep);
    loop {
        sleep.as_mut().reset(tracked.deadline().1.into());
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                return;
            }
            _ = tracked.shed_requested() => {
                closed(shared, peer, tracked.stage(), Closed::Shed);
                return;
            }
            _ = tracked.rearmed() => {}
            _ = sleep.as_mut() => {
                // Progress may have been made since the deadline was read.
                let (stage, deadline) = tracked.deadline();
                if deadline <= Instant::now() {
                    closed(shared, peer, stage, Closed::TimedOut);
                    return;
                }
            }
        }
    }
}

/// Why the server closed a connection.
#[derive(Clone, Copy)]
enum Closed {
    /// The client stalled past its stage's bound.
    TimedOut,
    /// It was waiting on its client when a full pool needed room.
    Shed,
}

fn closed(shared: &Shared, peer: SocketAddr, stage: Stage, why: Closed) {
    let (family, message) = match why {
        Closed::TimedOut => (
            &shared.metrics.connection_timeouts,
            "cut off a connection that stalled",
        ),
        Closed::Shed => (
            &shared.metrics.connections_shed,
            "shed a connection waiting on its client to make room",
        ),
    };
    tracing::debug!(%peer, stage = stage.as_str(), "{message}");
    family
        .get_or_create(&StageLabel {
            stage: stage.as_str(),
        })
        .inc();
}
