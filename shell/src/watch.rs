//! One way of running a watch, for every watch cache of both binaries.
//!
//! [`run_watch`] drives a kube-runtime watcher and owns its retries, so that a watch that
//! keeps failing is visible and one whose API server comes back resumes at once:
//! - Retries back off from [`Backoff::INITIAL`] doubling to at most [`Backoff::MAX`], and the
//!   backoff resets as soon as the watch delivers again. (kube-runtime's `default_backoff`
//!   grows to 30 s and resets only on an item or after 120 s without errors, so a watch whose
//!   server returned could sleep half a minute, then hit 410 and sleep again.)
//! - After any failure the watcher starts afresh with a LIST, not a resumed WATCH: the list
//!   proves the watch healthy again (a resumed watch says nothing until something changes),
//!   and it cannot meet 410 Expired. A 410 met by a watch that resumed on its own (the server
//!   closed the stream) relists at once, without a backoff step.
//! - Each failure is logged at warn with the delay before the next try while the backoff
//!   grows; at the cap (3 s), the same error is repeated once a minute. Recovery is logged at info.
//! - [`WatchHealth`] says whether the watch has synced, since when it has been failing and
//!   with what error; a [`WatchSet`] gathers them for `/readyz` and the staleness metric.
//! - The watch stops when its [`CancellationToken`] is cancelled, in any state.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a failed watch request was, as far as retrying and reporting care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// 410: the resourceVersion is no longer in the server's history; relist.
    Expired,
    /// 404 on the resource itself: for a custom resource, its CRD is not installed.
    NotFound,
    /// 401/403: the credentials or RBAC do not allow it.
    Forbidden,
    /// No answer: connection refused or reset, timeout, DNS.
    Unreachable,
    Other,
}

/// A failure as reported: its kind and a message for logs and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

fn describe_status(code: u16, reason: &str, message: &str) -> (FailureKind, String) {
    let kind = match code {
        410 => FailureKind::Expired,
        404 => FailureKind::NotFound,
        401 | 403 => FailureKind::Forbidden,
        _ => FailureKind::Other,
    };
    let hint = match kind {
        FailureKind::NotFound => " — is the CRD installed?",
        FailureKind::Forbidden => " — check the ServiceAccount's RBAC",
        _ => "",
    };
    let reason = match http_reason(code) {
        "" => reason,
        known => known,
    };
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    };
    (kind, format!("{code} {reason}{hint}{detail}"))
}

fn http_reason(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        _ => "",
    }
}

impl Failure {
    pub fn classify(err: &watcher::Error) -> Self {
        let client = match err {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => e,
            watcher::Error::WatchError(status) => {
                let (kind, message) = describe_status(status.code, &status.reason, &status.message);
                return Self { kind, message };
            }
            watcher::Error::NoResourceVersion => {
                return Self {
                    kind: FailureKind::Other,
                    message: err.to_string(),
                };
            }
        };
        match client {
            kube::Error::Api(status) => {
                let (kind, message) = describe_status(status.code, &status.reason, &status.message);
                Self { kind, message }
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => Self {
                kind: FailureKind::Unreachable,
                message: format!("API server unreachable: {}", error_chain(client)),
            },
            other => Self {
                kind: FailureKind::Other,
                message: error_chain(other),
            },
        }
    }
}

/// An error and its sources on one line ("connection refused" is usually a source).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Retry delays: exponential, capped, reset by success. Pure: the runner sleeps.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// Failures since the watch last delivered.
    failures: u32,
    /// The last failure was 410 and nothing succeeded since.
    expired_pending: bool,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub delay: Duration,
    /// Log this failure (at warn).
    pub log: bool,
}

impl Backoff {
    pub const INITIAL: Duration = Duration::from_millis(500);
    /// A watch whose API server returns is back within this (plus one LIST).
    pub const MAX: Duration = Duration::from_secs(3);
    /// At the cap, a failure that repeats is logged once per this many tries (about a minute).
    const LOG_EVERY_AT_CAP: u32 = 20;

    pub fn reset(&mut self) {
        self.failures = 0;
        self.expired_pending = false;
    }

    /// The delay before the next try after `failure`; whether to log it. `same_as_last` says
    /// the error is the one logged last.
    pub fn on_failure(&mut self, kind: &FailureKind, same_as_last: bool) -> Step {
        if *kind == FailureKind::Expired && !self.expired_pending {
            // Expired means "relist": do it now. A second 410 in a row backs off as usual.
            self.expired_pending = true;
            return Step {
                delay: Duration::ZERO,
                log: true,
            };
        }
        self.failures = self.failures.saturating_add(1);
        let delay = Self::INITIAL
            .saturating_mul(1u32 << (self.failures - 1).min(16))
            .min(Self::MAX);
        let at_cap = delay == Self::MAX && self.failures > 1 && {
            let previous = Self::INITIAL.saturating_mul(1u32 << (self.failures - 2).min(16));
            previous >= Self::MAX
        };
        let log = !same_as_last || !at_cap || self.failures.is_multiple_of(Self::LOG_EVERY_AT_CAP);
        Step { delay, log }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// How one watch is doing; read by `/readyz` and the metrics.
#[derive(Debug)]
pub struct WatchHealth {
    name: String,
    /// The process is not ready until this watch has synced.
    required: bool,
    state: Mutex<HealthState>,
}

#[derive(Debug, Clone)]
struct HealthState {
    /// Has completed a list at least once.
    synced: bool,
    /// Since when the watch has not been known healthy (`None`: healthy now).
    down_since: Option<Instant>,
    /// The latest failure, while down.
    error: Option<String>,
    /// Failures since the start.
    failures: u64,
}

/// A snapshot of one watch, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStatus {
    pub name: String,
    /// Readiness waits for this watch's first sync.
    pub required: bool,
    pub synced: bool,
    /// How long the watch has not been known healthy; zero when it is.
    pub stale_for: Duration,
    pub error: Option<String>,
    /// Failed requests since the start (a counter).
    pub failures: u64,
}

impl WatchStatus {
    /// What is wrong with this watch, if anything: not synced yet, or (given a `bound`) down
    /// for longer than that.
    pub fn problem(&self, bound: Option<Duration>) -> Option<String> {
        let error = self
            .error
            .as_deref()
            .unwrap_or("waiting for the first list");
        if !self.synced {
            return Some(format!("{}: not synced: {error}", self.name));
        }
        match bound {
            Some(bound) if self.stale_for > bound => Some(format!(
                "{}: down for {} s (more than {} s): {error}",
                self.name,
                self.stale_for.as_secs(),
                bound.as_secs()
            )),
            _ => None,
        }
    }
}

impl WatchHealth {
    pub fn new(name: impl Into<String>, required: bool) -> Self {
        Self {
            name: name.into(),
            required,
            state: Mutex::new(HealthState {
                synced: false,
                down_since: Some(Instant::now()),
                error: None,
                failures: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        crate::locks::lock(&self.state)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_synced(&self) -> bool {
        self.lock().synced
    }

    pub fn status(&self, now: Instant) -> WatchStatus {
        let state = self.lock().clone();
        WatchStatus {
            name: self.name.clone(),
            required: self.required,
            synced: state.synced,
            stale_for: state
                .down_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since)),
            error: state.error,
            failures: state.failures,
        }
    }

    /// A list completed: healthy.
    fn listed(&self) {
        let mut state = self.lock();
        state.synced = true;
        state.down_since = None;
        state.error = None;
    }

    /// The watch delivered an event: healthy, unless a relist is still under way.
    fn delivered(&self, relisting: bool) {
        let mut state = self.lock();
        if state.synced && !relisting {
            state.down_since = None;
            state.error = None;
        }
    }

    fn failed(&self, message: &str) {
        let mut state = self.lock();
        state.down_since.get_or_insert_with(Instant::now);
        state.error = Some(message.to_string());
        state.failures += 1;
    }
}

/// The watches of a process, for `/readyz` and metrics. Holds them weakly: a watch that has
/// stopped (a leadership term that ended) drops out.
#[derive(Debug, Default)]
pub struct WatchSet {
    watches: Mutex<Vec<Weak<WatchHealth>>>,
}

impl WatchSet {
    /// A new watch's health, registered here; the process is not ready until it has synced.
    pub fn register(&self, name: impl Into<String>) -> Arc<WatchHealth> {
        self.add(WatchHealth::new(name, true))
    }

    /// A watch that readiness does not wait for (a cache for warnings, say); it is reported
    /// all the same.
    pub fn register_optional(&self, name: impl Into<String>) -> Arc<WatchHealth> {
        self.add(WatchHealth::new(name, false))
    }

    fn add(&self, health: WatchHealth) -> Arc<WatchHealth> {
        let health = Arc::new(health);
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches.retain(|w| w.strong_count() > 0);
        watches.push(Arc::downgrade(&health));
        health
    }

    pub fn statuses(&self, now: Instant) -> Vec<WatchStatus> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches
            .iter()
            .filter_map(Weak::upgrade)
            .map(|w| w.status(now))
            .collect()
    }

    /// Why the process is not ready (a required watch has not synced), one line per watch;
    /// empty when ready.
    pub fn unready_reasons(&self) -> Vec<String> {
        self.statuses(Instant::now())
            .iter()
            .filter(|s| s.required)
            .filter_map(|s| s.problem(None))
            .collect()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

type Family<M> = prometheus_client::metrics::family::Family<ResourceLabel, M>;

/// The watch series both binaries export: `watch_errors_total{resource}` and
/// `watch_stale_seconds{resource}`, brought up to date from a [`WatchSet`] at scrape time.
#[derive(Debug, Default, Clone)]
pub struct WatchMetrics {
    errors: Family<prometheus_client::metrics::counter::Counter>,
    stale: Family<prometheus_client::metrics::gauge::Gauge>,
}

impl WatchMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "watch_errors",
            "Failed watch requests by resource (retried with backoff)",
            metrics.errors.clone(),
        );
        registry.register(
            "watch_stale_seconds",
            "Seconds since each watch cache was last known current (0 while its watch is healthy)",
            metrics.stale.clone(),
        );
        metrics
    }

    /// Brings the series up to date (staleness grows by itself, so this runs at scrape time).
    pub fn refresh(&self, watches: &WatchSet) {
        for status in watches.statuses(Instant::now()) {
            let label = ResourceLabel {
                resource: status.name.clone(),
            };
            self.stale
                .get_or_create(&label)
                .set(status.stale_for.as_secs() as i64);
            let errors = self.errors.get_or_create(&label);
            errors.inc_by(status.failures.saturating_sub(errors.get()));
        }
    }
}

/// Runs a watch until `stop`: `connect` makes a fresh watcher stream (called again after
/// every failure), `on_event` receives its events.
pub async fn run_watch<K, S>(
    health: Arc<WatchHealth>,
    mut connect: impl FnMut() -> S,
    stop: CancellationToken,
    mut on_event: impl FnMut(Event<K>),
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let name = health.name().to_string();
    let mut backoff = Backoff::default();
    let mut last_logged: Option<String> = None;
    let mut failing_since: Option<Instant> = None;
    'connect: loop {
        let mut stream = std::pin::pin!(connect());
        let mut relisting = false;
        loop {
            let item = tokio::select! {
                _ = stop.cancelled() => break 'connect,
                item = stream.next() => item,
            };
            let Some(item) = item else {
                // A watcher stream does not end; if one does, start afresh (not in a hot loop).
                tokio::select! {
                    _ = stop.cancelled() => break 'connect,
                    _ = tokio::time::sleep(Backoff::INITIAL) => continue 'connect,
                }
            };
            match item {
                Ok(event) => {
                    match &event {
                        Event::Init => relisting = true,
                        Event::InitDone => {
                            relisting = false;
                            let first = !health.is_synced();
                            health.listed();
                            if first {
                                tracing::info!(watch = %name, "watch cache synced");
                            }
                        }
                        Event::InitApply(_) | Event::Apply(_) | Event::Delete(_) => {
                            health.delivered(relisting)
                        }
                    }
                    if !matches!(event, Event::Init) {
                        if let Some(since) = failing_since.take() {
                            tracing::info!(watch = %name, failures = backoff.failures(), down_for_s = since.elapsed().as_secs(), "watch recovered");
                        }
                        backoff.reset();
                        last_logged = None;
                    }
                    on_event(event);
                }
                Err(err) => {
                    let failure = Failure::classify(&err);
                    health.failed(&failure.message);
                    failing_since.get_or_insert_with(Instant::now);
                    let step = backoff.on_failure(
                        &failure.kind,
                        last_logged.as_deref() == Some(failure.message.as_str()),
                    );
                    if step.log {
                        tracing::warn!(watch = %name, error = %failure.message, failures = backoff.failures(), retry_in_ms = step.delay.as_millis() as u64, "watch failed; retrying");
                        last_logged = Some(failure.message);
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break 'connect,
                        _ = tokio::time::sleep(step.delay) => {}
                    }
                    continue 'connect;
                }
            }
        }
    }
}

/// [`run_watch`] over `watcher(api, config)`, spawned.
pub fn spawn_watch<K>(
    health: Arc<WatchHealth>,
    api: kube::Api<K>,
    config: watcher::Config,
    stop: CancellationToken,
    on_event: impl FnMut(Event<K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(run_watch(
        health,
        move || watcher::watcher(api.clone(), config.clone()),
        stop,
        on_event,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7)
            .map(|_| {
                b.on_failure(&FailureKind::Unreachable, true)
                    .delay
                    .as_millis() as u64
            })
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(
            b.on_failure(&FailureKind::Unreachable, true).delay,
            Backoff::INITIAL
        );
    }

    #[test]
    fn expired_relists_at_once_but_not_in_a_loop() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.on_failure(&FailureKind::Unreachable, true);
        }
        assert_eq!(
            b.on_failure(&FailureKind::Expired, false).delay,
            Duration::ZERO
        );
        assert_eq!(
            b.on_failure(&FailureKind::Expired, true).delay,
            Backoff::MAX,
            "a second 410 without a success in between backs off"
        );
        b.reset();
        assert_eq!(
            b.on_failure(&FailureKind::Expired, true).delay,
            Duration::ZERO
        );
    }

    #[test]
    fn logs_each_step_then_once_a_minute_at_the_cap() {
        let mut b = Backoff::default();
        let logged: Vec<bool> = (0..45)
            .map(|_| b.on_failure(&FailureKind::Unreachable, true).log)
            .collect();
        // Growing: 500 ms .. 2 s, then the first 3 s step; at the cap every 20th try.
        assert!(logged[..4].iter().all(|l| *l), "{logged:?}");
        let at_cap: Vec<usize> = (4..45).filter(|i| logged[*i]).collect();
        assert_eq!(at_cap, [19, 39], "failures 20 and 40");
        assert!(
            b.on_failure(&FailureKind::Unreachable, false).log,
            "a new error is always logged"
        );
    }

    #[test]
    fn failures_are_described_for_readyz() {
        let status = |code: u16, reason: &str| {
            watcher::Error::InitialListFailed(kube::Error::Api(Box::new(
                kube::core::Status::failure(
                    "the server could not find the requested resource",
                    reason,
                )
                .with_code(code),
            )))
        };
        let f = Failure::classify(&status(404, "NotFound"));
        assert_eq!(f.kind, FailureKind::NotFound);
        assert!(
            f.message
                .starts_with("404 Not Found — is the CRD installed? (the server could not"),
            "{}",
            f.message
        );
        let f = Failure::classify(&status(403, "Forbidden"));
        assert_eq!(f.kind, FailureKind::Forbidden);
        assert!(f.message.contains("RBAC"), "{}", f.message);
        let f = Failure::classify(&status(410, ""));
        assert_eq!(f.kind, FailureKind::Expired);
        assert!(f.message.starts_with("410 Gone"), "{}", f.message);
    }

    #[test]
    fn status_reports_staleness_and_reasons() {
        let health = WatchHealth::new("prefetches", true);
        let t0 = Instant::now();
        let s = health.status(t0 + Duration::from_secs(3));
        assert!(!s.synced);
        assert_eq!(
            s.problem(None).as_deref(),
            Some("prefetches: not synced: waiting for the first list")
        );
        health.failed("404 Not Found — is the CRD installed?");
        assert_eq!(
            health.status(Instant::now()).problem(None).as_deref(),
            Some("prefetches: not synced: 404 Not Found — is the CRD installed?")
        );
        health.listed();
        let s = health.status(Instant::now() + Duration::from_secs(100));
        assert_eq!((s.synced, s.stale_for), (true, Duration::ZERO));
        health.failed("API server unreachable: connection refused");
        let later = Instant::now() + Duration::from_secs(40);
        let s = health.status(later);
        assert!(s.stale_for >= Duration::from_secs(40));
        assert_eq!(s.problem(None), None, "no bound: synced is ready");
        assert_eq!(s.problem(Some(Duration::from_secs(60))), None);
        assert!(
            s.problem(Some(Duration::from_secs(30)))
                .is_some_and(|r| r.starts_with("prefetches: down for 40 s (more than 30 s)")),
        );
        // Events during a relist do not count as healthy; its end does.
        health.delivered(true);
        assert!(health.status(later).stale_for > Duration::ZERO);
        health.delivered(false);
        assert_eq!(health.status(later).stale_for, Duration::ZERO);
    }

    #[test]
    fn the_set_forgets_stopped_watches() {
        let set = WatchSet::default();
        let a = set.register("a");
        {
            let _b = set.register_optional("b");
            assert_eq!(set.statuses(Instant::now()).len(), 2);
            assert_eq!(
                set.unready_reasons(),
                ["a: not synced: waiting for the first list"],
                "an optional watch does not hold readiness"
            );
        }
        let names: Vec<String> = set
            .statuses(Instant::now())
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a"]);
        drop(a);
    }
}
