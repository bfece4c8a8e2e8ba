//! Prometheus metrics, served on the plain-HTTP metrics address.

use std::hash::Hash;

use prefetch_shell::watch::WatchMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::answer::{Endpoint, MUTATE_POD, RequestResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    /// allowed, patched, denied, bad_request, error.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// handshake, headers, body, response, idle (see `core/limits.rs`).
    pub stage: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<EndpointLabel, Histogram>,
    /// `requests` and `duration` of each admission endpoint, resolved once.
    endpoints: Vec<EndpointMetrics>,
    pub rollout_signals: Counter,
    pub deployment_errors: Family<ReasonLabel, Counter>,
    pub cert_reloads: Family<ReasonLabel, Counter>,
    pub watches: WatchMetrics,
    pub watched_prefetches: Gauge,
    pub connection_timeouts: Family<StageLabel, Counter>,
    pub connections_shed: Family<StageLabel, Counter>,
    pub open_connections: Gauge,
    pub inflight_requests: Gauge,
    pub pod_gate: Family<ResultLabel, Counter>,
    /// `pod_gate` by result, resolved once, indexed by [`PodGate`].
    pod_gate_results: [Counter; 3],
    pub pod_gate_errors: Family<ReasonLabel, Counter>,
    pub deployment_live_reads: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// A pod review's result, as `pod_gate_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodGate {
    /// Allowed with the scheduling gate.
    Gated,
    /// Allowed unchanged.
    Passed,
    /// Allowed unchanged after an internal error.
    Errored,
}

impl PodGate {
    /// In the order of `Metrics::pod_gate_results`, which is indexed by the variant.
    pub const ALL: [PodGate; 3] = [PodGate::Gated, PodGate::Passed, PodGate::Errored];

    pub fn as_str(self) -> &'static str {
        match self {
            PodGate::Gated => "gated",
            PodGate::Passed => "passed",
            PodGate::Errored => "errored",
        }
    }
}

/// How a live read of a workload ended, as `deployment_live_reads_total` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveRead {
    Ok,
    Error,
    Timeout,
}

impl LiveRead {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveRead::Ok => "ok",
            LiveRead::Error => "error",
            LiveRead::Timeout => "timeout",
        }
    }
}

/// One endpoint's request counters and duration histogram, taken from their families once:
/// counting a request is then an atomic add, not a label hash and a lock per metric. (Every
/// series is exported from the start, at zero.)
struct EndpointMetrics {
    endpoint: &'static str,
    results: Vec<(&'static str, Counter)>,
    duration: Histogram,
}

impl EndpointMetrics {
    fn resolve(
        endpoint: &'static str,
        requests: &Family<RequestLabels, Counter>,
        duration: &Family<EndpointLabel, Histogram>,
    ) -> Self {
        Self {
            endpoint,
            results: resolve(
                requests,
                &RequestResult::ALL.map(RequestResult::as_str),
                |result| RequestLabels { endpoint, result },
            ),
            duration: duration.get_or_create(&EndpointLabel { endpoint }).clone(),
        }
    }

    fn record(&self, result: RequestResult, seconds: f64, family: &Family<RequestLabels, Counter>) {
        let (endpoint, result) = (self.endpoint, result.as_str());
        count(&self.results, result, family, || RequestLabels {
            endpoint,
            result,
        });
        self.duration.observe(seconds);
    }
}

/// The counters of `family` for each of `values`, taken from it once.
fn resolve<L: Clone + Hash + Eq>(
    family: &Family<L, Counter>,
    values: &[&'static str],
    labels: impl Fn(&'static str) -> L,
) -> Vec<(&'static str, Counter)> {
    values
        .iter()
        .map(|&value| (value, family.get_or_create(&labels(value)).clone()))
        .collect()
}

/// Counts one under `value`: its resolved counter, or the family's for a value not resolved.
fn count<L: Clone + Hash + Eq>(
    resolved: &[(&'static str, Counter)],
    value: &'static str,
    family: &Family<L, Counter>,
    labels: impl FnOnce() -> L,
) {
    match resolved.iter().find(|(v, _)| *v == value) {
        Some((_, counter)) => {
            counter.inc();
        }
        None => {
            family.get_or_create(&labels()).inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("prefetch_webhook");
        registry.register_collector(Box::new(prefetch_shell::telemetry::DroppedLogLines));
        let (requests, duration) = register_requests(&mut registry);
        let (rollout_signals, deployment_errors) = register_rollout_signals(&mut registry);
        let cert_reloads = register_cert_reloads(&mut registry);
        let watches = WatchMetrics::register(&mut registry);
        let watched_prefetches = register_watched_prefetches(&mut registry);
        let (connection_timeouts, connections_shed, open_connections, inflight_requests) =
            register_connections(&mut registry);
        let (pod_gate, pod_gate_errors, deployment_live_reads) = register_pod_gate(&mut registry);
        let endpoints = Endpoint::ALL
            .map(Endpoint::path)
            .into_iter()
            .chain([MUTATE_POD])
            .map(|endpoint| EndpointMetrics::resolve(endpoint, &requests, &duration))
            .collect();
        let pod_gate_results = PodGate::ALL.map(|result| {
            pod_gate
                .get_or_create(&ResultLabel {
                    result: result.as_str(),
                })
                .clone()
        });
        Self {
            endpoints,
            pod_gate_results,
            pod_gate,
            pod_gate_errors,
            deployment_live_reads,
            registry,
            requests,
            duration,
            rollout_signals,
            deployment_errors,
            cert_reloads,
            watches,
            watched_prefetches,
            connection_timeouts,
            connections_shed,
            open_connections,
            inflight_requests,
        }
    }
}

/// Admission requests: counted by endpoint and result, timed by endpoint.
fn register_requests(
    registry: &mut Registry,
) -> (
    Family<RequestLabels, Counter>,
    Family<EndpointLabel, Histogram>,
) {
    let requests = Family::<RequestLabels, Counter>::default();
    registry.register(
        "requests",
        "Admission requests by endpoint and result",
        requests.clone(),
    );
    let duration = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
        Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
        ])
    });
    registry.register(
        "request_duration_seconds",
        "Time to answer an admission request",
        duration.clone(),
    );
    (requests, duration)
}

/// The rollout signal: workloads annotated, and reviews allowed without one after an error.
fn register_rollout_signals(registry: &mut Registry) -> (Counter, Family<ReasonLabel, Counter>) {
    let rollout_signals = Counter::default();
    registry.register(
        "rollout_signals",
        "Workload changes (Deployments, StatefulSets, DaemonSets, CronJobs) annotated with new images for the reconciler",
        rollout_signals.clone(),
    );
    let deployment_errors = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "deployment_errors",
        "Workload reviews (every kind, both signal endpoints) allowed without a signal because of an internal error",
        deployment_errors.clone(),
    );
    (rollout_signals, deployment_errors)
}

fn register_cert_reloads(registry: &mut Registry) -> Family<ReasonLabel, Counter> {
    let cert_reloads = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "cert_reloads",
        "Serving certificate reloads by result",
        cert_reloads.clone(),
    );
    cert_reloads
}

fn register_watched_prefetches(registry: &mut Registry) -> Gauge {
    let watched_prefetches = Gauge::default();
    registry.register(
        "watched_prefetches",
        "Prefetches in the watch cache",
        watched_prefetches.clone(),
    );
    watched_prefetches
}

/// The admission port's connections and requests as the accept loop bounds them: timeouts
/// and shedding by stage, connections and requests open.
fn register_connections(
    registry: &mut Registry,
) -> (
    Family<StageLabel, Counter>,
    Family<StageLabel, Counter>,
    Gauge,
    Gauge,
) {
    let connection_timeouts = Family::<StageLabel, Counter>::default();
    registry.register(
        "connection_timeouts",
        "Connections cut off because the client stalled, by the stage it stalled in",
        connection_timeouts.clone(),
    );
    let connections_shed = Family::<StageLabel, Counter>::default();
    registry.register(
        "connections_shed",
        "Connections waiting on their client that were closed to make room at the connection or request limit, by stage",
        connections_shed.clone(),
    );
    let open_connections = Gauge::default();
    registry.register(
        "open_connections",
        "Client connections open on the admission port",
        open_connections.clone(),
    );
    let inflight_requests = Gauge::default();
    registry.register(
        "inflight_requests",
        "Admission requests between their headers and their written response",
        inflight_requests.clone(),
    );
    (
        connection_timeouts,
        connections_shed,
        open_connections,
        inflight_requests,
    )
}

/// The pod gate: reviews by result, errors by reason, and its live reads of workloads.
fn register_pod_gate(
    registry: &mut Registry,
) -> (
    Family<ResultLabel, Counter>,
    Family<ReasonLabel, Counter>,
    Family<ResultLabel, Counter>,
) {
    let pod_gate = Family::<ResultLabel, Counter>::default();
    registry.register(
        "pod_gate",
        "Pod reviews of /mutate/pod by result: gated, passed (allowed unchanged), errored (allowed unchanged after an internal error)",
        pod_gate.clone(),
    );
    let pod_gate_errors = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "pod_gate_errors",
        "Pods allowed ungated because of an error, by reason",
        pod_gate_errors.clone(),
    );
    let deployment_live_reads = Family::<ResultLabel, Counter>::default();
    registry.register(
        "deployment_live_reads",
        "Live GETs of a workload (Deployment, StatefulSet, DaemonSet, CronJob) the watch cache was behind on, by result",
        deployment_live_reads.clone(),
    );
    (pod_gate, pod_gate_errors, deployment_live_reads)
}

impl Metrics {
    /// Counts one answered request of `endpoint` (a path) and observes its duration.
    pub fn record_request(&self, endpoint: &'static str, result: RequestResult, seconds: f64) {
        match self.endpoints.iter().find(|e| e.endpoint == endpoint) {
            Some(resolved) => resolved.record(result, seconds, &self.requests),
            None => {
                let result = result.as_str();
                self.requests
                    .get_or_create(&RequestLabels { endpoint, result })
                    .inc();
                self.duration
                    .get_or_create(&EndpointLabel { endpoint })
                    .observe(seconds);
            }
        }
    }

    /// Counts one pod review by its gate result.
    pub fn count_pod_gate(&self, result: PodGate) {
        self.pod_gate_results[result as usize].inc();
    }

    /// Counts one live read of a workload by how it ended.
    pub fn count_live_read(&self, result: LiveRead) {
        self.deployment_live_reads
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_log_lines_are_exposed() {
        let text = Metrics::default().encode().unwrap();
        assert!(
            text.lines()
                .any(|line| line.starts_with("prefetch_webhook_log_lines_dropped_total ")),
            "{text}"
        );
    }

    #[test]
    fn pod_gate_results_are_indexed_by_their_variant() {
        for (at, result) in PodGate::ALL.into_iter().enumerate() {
            assert_eq!(result as usize, at, "{result:?}");
        }
    }

    /// Resolved series and ones resolved on demand land in the same families.
    #[test]
    fn requests_are_counted_under_their_endpoint_and_result() {
        let metrics = Metrics::default();
        metrics.record_request("/mutate/deployment", RequestResult::Patched, 0.0002);
        metrics.record_request("/mutate/deployment", RequestResult::Patched, 0.0002);
        metrics.record_request("/mutate/deployment", RequestResult::Denied, 0.0002);
        metrics.record_request("/elsewhere", RequestResult::Allowed, 0.2);
        metrics.count_pod_gate(PodGate::Gated);
        let text = metrics.encode().unwrap();
        for line in [
            r#"prefetch_webhook_requests_total{endpoint="/mutate/deployment",result="patched"} 2"#,
            r#"prefetch_webhook_requests_total{endpoint="/mutate/deployment",result="denied"} 1"#,
            r#"prefetch_webhook_requests_total{endpoint="/mutate/deployment",result="allowed"} 0"#,
            r#"prefetch_webhook_requests_total{endpoint="/elsewhere",result="allowed"} 1"#,
            r#"prefetch_webhook_request_duration_seconds_count{endpoint="/mutate/deployment"} 3"#,
            r#"prefetch_webhook_request_duration_seconds_count{endpoint="/elsewhere"} 1"#,
            r#"prefetch_webhook_pod_gate_total{result="gated"} 1"#,
            r#"prefetch_webhook_pod_gate_total{result="passed"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
