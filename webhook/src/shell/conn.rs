//! Connection instrumentation: reports each connection's events to its [`Progress`] (see
//! `core/limits.rs` for the rules) and keeps the registry the shedding policy picks from.
//!
//! - [`WatchedIo`] wraps the TLS stream: on an idle HTTP/1.1 connection, the first byte of the
//!   next request starts that request's headers clock.
//! - [`TrackedService`] wraps the router: a request is in its `body` stage from its headers
//!   until the handler answers (axum reads the whole body first), then in `response` until
//!   [`TrackedBody`], the response body, is written out and dropped. It also takes a slot of
//!   the server-wide request limit.
//! - [`Registry`] holds every open connection; when a pool (connections, request slots) is
//!   full, [`Registry::shed_one`] closes the connection the policy picks.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::core::limits::{Bounds, Progress, RequestId, ShedRank, Stage, pick_victim};
use crate::shell::metrics::Metrics;
use prefetch_shell::locks;

/// One connection as its instrumentation, its watchdog and the shedding policy share it.
pub struct Tracked {
    progress: Mutex<Progress>,
    bounds: Bounds,
    /// Wakes the watchdog when the deadline moved earlier than the one it sleeps on.
    rearm: Notify,
    /// Cancelled to shed the connection.
    shed: CancellationToken,
    http1: AtomicBool,
    /// HTTP/1.1 and idle: the next byte read starts the next request's headers clock.
    watch_bytes: AtomicBool,
}

impl Tracked {
    pub fn new(accepted: Instant, bounds: Bounds) -> Self {
        Self {
            progress: Mutex::new(Progress::new(accepted)),
            bounds,
            rearm: Notify::new(),
            shed: CancellationToken::new(),
            http1: AtomicBool::new(false),
            watch_bytes: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        locks::lock(&self.progress)
    }

    /// Applies an event; wakes the watchdog when that moved the deadline earlier.
    fn apply<R>(&self, event: impl FnOnce(&mut Progress) -> R) -> R {
        let (result, earlier, idle_http1) = {
            let mut progress = self.lock();
            let before = progress.deadline(&self.bounds).1;
            let result = event(&mut progress);
            let earlier = progress.deadline(&self.bounds).1 < before;
            (result, earlier, progress.open_requests() == 0)
        };
        if idle_http1 && self.http1.load(Ordering::Relaxed) {
            self.watch_bytes.store(true, Ordering::Release);
        }
        if earlier {
            self.rearm.notify_one();
        }
        result
    }

    pub fn handshake_done(&self, http1: bool) {
        self.http1.store(http1, Ordering::Relaxed);
        self.apply(|p| p.handshake_done(Instant::now()));
    }

    /// The stage that expires first, and when.
    pub fn deadline(&self) -> (Stage, Instant) {
        self.lock().deadline(&self.bounds)
    }

    pub fn stage(&self) -> Stage {
        self.deadline().0
    }

    pub fn shed(&self) {
        self.shed.cancel();
    }

    /// Resolves when the connection is to be shed.
    pub async fn shed_requested(&self) {
        self.shed.cancelled().await
    }

    /// Resolves when the deadline may have moved earlier.
    pub async fn rearmed(&self) {
        self.rearm.notified().await
    }

    fn bytes_read(&self) {
        if self.watch_bytes.load(Ordering::Relaxed)
            && self.watch_bytes.swap(false, Ordering::AcqRel)
        {
            self.apply(|p| p.bytes_read(Instant::now()));
        }
    }
}

/// Every open connection, for the shedding policy.
#[derive(Default)]
pub struct Registry {
    connections: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_key: AtomicU64,
}

/// Removes its connection from the registry when dropped.
pub struct Registration {
    registry: Arc<Registry>,
    key: u64,
    metrics: Arc<Metrics>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
        self.metrics.open_connections.dec();
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        locks::lock(&self.connections)
    }

    pub fn register(
        self: &Arc<Self>,
        tracked: Arc<Tracked>,
        metrics: Arc<Metrics>,
    ) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, tracked);
        metrics.open_connections.inc();
        Registration {
            registry: self.clone(),
            key,
            metrics,
        }
    }

    /// Sheds the connection `rank` puts first (never `except`, never one already being shed).
    /// Returns whether one was found.
    pub fn shed_one(
        &self,
        rank: impl Fn(&Progress) -> Option<ShedRank>,
        except: Option<&Arc<Tracked>>,
    ) -> bool {
        let connections = self.lock();
        let candidates = connections.values().filter_map(|tracked| {
            let excluded = tracked.shed.is_cancelled()
                || except.is_some_and(|except| Arc::ptr_eq(except, tracked));
            (!excluded).then(|| (tracked, rank(&tracked.lock())))
        });
        match pick_victim(candidates) {
            Some(victim) => {
                victim.shed();
                true
            }
            None => false,
        }
    }
}

/// The server-wide limit on requests between their headers and their written response.
pub struct RequestSlots {
    slots: Arc<Semaphore>,
}

/// How often a request waiting for a slot re-runs the shedding policy (a busy connection may
/// have become sheddable since).
const SLOT_RETRY: Duration = Duration::from_millis(100);

impl RequestSlots {
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// A slot; when none is free, sheds the connection whose request has waited longest on
    /// its client, and waits for a slot to free up.
    async fn acquire(
        &self,
        registry: &Registry,
        requester: &Arc<Tracked>,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        loop {
            registry.shed_one(Progress::request_shed_rank, Some(requester));
            match tokio::time::timeout(SLOT_RETRY, self.slots.clone().acquire_owned()).await {
                Ok(permit) => return permit.ok(),
                Err(_) => continue,
            }
        }
    }
}

/// The TLS stream, reporting reads to its connection.
pub struct WatchedIo<T> {
    inner: T,
    tracked: Arc<Tracked>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, tracked: Arc<Tracked>) -> Self {
        Self { inner, tracked }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracked.bytes_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, reporting each request's stages to its connection.
#[derive(Clone)]
pub struct TrackedService {
    pub router: Router,
    pub tracked: Arc<Tracked>,
    pub registry: Arc<Registry>,
    pub slots: Arc<RequestSlots>,
    pub metrics: Arc<Metrics>,
}

/// One open request; reports its end when dropped (with the response body, or earlier).
struct RequestGuard {
    tracked: Arc<Tracked>,
    id: RequestId,
    completed: bool,
    metrics: Arc<Metrics>,
    /// Held until the request ends.
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let (id, completed) = (self.id, self.completed);
        self.tracked
            .apply(|p| p.request_done(id, Instant::now(), completed));
        self.metrics.inflight_requests.dec();
    }
}

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let id = self.tracked.apply(|p| p.request_started(Instant::now()));
        self.metrics.inflight_requests.inc();
        let mut guard = RequestGuard {
            tracked: self.tracked.clone(),
            id,
            completed: false,
            metrics: self.metrics.clone(),
            _slot: None,
        };
        let this = self.clone();
        Box::pin(async move {
            guard._slot = this.slots.acquire(&this.registry, &this.tracked).await;
            let response = match this.router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            this.tracked.apply(|p| p.responding(id, Instant::now()));
            Ok(response.map(|body| TrackedBody {
                inner: body,
                finished: false,
                guard,
            }))
        })
    }
}

/// The response body. Its request ends when hyper drops it: after handing the last bytes to
/// the connection (HTTP/2 keeps a polled chunk until the peer's flow-control window takes it,
/// so the end of the body alone does not mean it was sent), or unwritten on an error.
pub struct TrackedBody {
    inner: Body,
    /// Read to its end.
    finished: bool,
    guard: RequestGuard,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished = true;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // The guard, dropped right after, ends the request.
        self.guard.completed = self.finished;
    }
}
