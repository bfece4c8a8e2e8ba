//! Prometheus metrics on the metrics address (`/metrics`), registered per concern: the
//! reconciles ([`RoundMetrics`]), the lease, warm nodes ([`WarmupMetrics`]), the watches, and
//! warm rollouts ([`GateMetrics`]), and what it saved ([`StartsMetrics`]).

use prefetch_shell::watch::WatchMetrics;
use prometheus_client::encoding::LabelValueEncoder;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::gate::Release;

/// How a reconcile ended: `reconciles_total{result}`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileResult {
    Ok,
    Error,
}

impl ReconcileResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
        }
    }
}

impl EncodeLabelValue for ReconcileResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: ReconcileResult,
}

/// Why a gated pod was released: `gate_releases_total{result}`, labelled by
/// [`Release::as_str`] (the core's enum, so the label set is encoded here).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ReleaseLabel {
    pub result: Release,
}

impl EncodeLabelSet for ReleaseLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelSet::encode(&[("result", self.result.as_str())], encoder)
    }
}

/// A failed pull's reason: the kubelet's (ErrImagePull, ImagePullBackOff, ...) or the
/// controller's, open-ended, so a string.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub rounds: RoundMetrics,
    pub leader: Gauge,
    pub warmup: WarmupMetrics,
    pub watches: WatchMetrics,
    pub gate: GateMetrics,
    pub starts: StartsMetrics,
    pub budgets: BudgetMetrics,
}

/// `--registry-budget`: what each budgeted registry has left, and the pairs waiting for it.
pub struct BudgetMetrics {
    pub remaining: Family<RegistryLabel, Gauge>,
    pub waiting: Family<RegistryLabel, Gauge>,
}

impl BudgetMetrics {
    fn register(registry: &mut Registry) -> Self {
        let remaining = Family::<RegistryLabel, Gauge>::default();
        registry.register(
            "registry_budget_remaining",
            "Pulls a budgeted registry has left in its period (--registry-budget)",
            remaining.clone(),
        );
        let waiting = Family::<RegistryLabel, Gauge>::default();
        registry.register(
            "registry_budget_waiting_pairs",
            "Node x image pairs waiting for their registry's budget, over every Prefetch",
            waiting.clone(),
        );
        Self { remaining, waiting }
    }
}

/// What the reconciles do.
pub struct RoundMetrics {
    pub reconciles: Family<ResultLabel, Counter>,
    pub pods_created: Counter,
    pub images_prefetched: Counter,
    pub pull_failures: Family<ReasonLabel, Counter>,
    pub inflight_pods: Gauge,
    pub rollout_latency: Histogram,
}

/// Warm nodes (the warm loop) and the ledger that outlives rounds for them.
pub struct WarmupMetrics {
    pub node_warmup: Histogram,
    pub node_warmup_timeouts: Counter,
    pub warming_nodes: Gauge,
    pub warming_nodes_past_timeout: Gauge,
    pub ledger_pairs: Gauge,
}

/// Warm rollouts (the gate loop).
pub struct GateMetrics {
    pub gated_pods: Gauge,
    pub rollout_gate: Histogram,
    pub gate_releases: Family<ReleaseLabel, Counter>,
    /// Namespaces carrying the gated-rollouts label (the namespace loop).
    pub gated_namespaces: Gauge,
    pub namespace_label_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("prefetch_controller");
        registry.register_collector(Box::new(prefetch_shell::telemetry::DroppedLogLines));
        let rounds = RoundMetrics::register(&mut registry);
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica holds the lease (1) or not (0)",
            leader.clone(),
        );
        let warmup = WarmupMetrics::register(&mut registry);
        let watches = WatchMetrics::register(&mut registry);
        let gate = GateMetrics::register(&mut registry);
        let starts = StartsMetrics::register(&mut registry);
        let budgets = BudgetMetrics::register(&mut registry);
        Self {
            registry,
            rounds,
            leader,
            warmup,
            watches,
            gate,
            starts,
            budgets,
        }
    }
}

impl RoundMetrics {
    fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            reconciles.clone(),
        );
        let pods_created = Counter::default();
        registry.register(
            "pods_created",
            "Prefetch pods created",
            pods_created.clone(),
        );
        let images_prefetched = Counter::default();
        registry.register(
            "images_prefetched",
            "Node x image pairs pulled by prefetch pods",
            images_prefetched.clone(),
        );
        let pull_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "pull_failures",
            "Failed pulls by reason",
            pull_failures.clone(),
        );
        let inflight_pods = Gauge::default();
        registry.register(
            "inflight_pods",
            "Prefetch pods in flight",
            inflight_pods.clone(),
        );
        let rollout_latency =
            Histogram::new([1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]);
        registry.register(
            "rollout_to_prefetched_seconds",
            "From a rollout signal to its images prefetched on every targeted node",
            rollout_latency.clone(),
        );
        Self {
            reconciles,
            pods_created,
            images_prefetched,
            pull_failures,
            inflight_pods,
            rollout_latency,
        }
    }
}

impl WarmupMetrics {
    fn register(registry: &mut Registry) -> Self {
        let node_warmup = Histogram::new([
            5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
        ]);
        registry.register(
            "node_warmup_seconds",
            "From a node's creation to its warmup taint lifted (warm, untargeted or timed out)",
            node_warmup.clone(),
        );
        let node_warmup_timeouts = Counter::default();
        registry.register(
            "node_warmup_timeouts",
            "Warmup taints lifted by --warmup-timeout with images still missing",
            node_warmup_timeouts.clone(),
        );
        let warming_nodes = Gauge::default();
        registry.register(
            "warming_nodes",
            "Nodes carrying the warmup taint",
            warming_nodes.clone(),
        );
        let warming_nodes_past_timeout = Gauge::default();
        registry.register(
            "warming_nodes_past_timeout",
            "Nodes still carrying the warmup taint after --warmup-timeout: the controller cannot remove it",
            warming_nodes_past_timeout.clone(),
        );
        let ledger_pairs = Gauge::default();
        registry.register(
            "ledger_pairs",
            "Node x image outcomes kept beyond their round (warming nodes, full image lists)",
            ledger_pairs.clone(),
        );
        Self {
            node_warmup,
            node_warmup_timeouts,
            warming_nodes,
            warming_nodes_past_timeout,
            ledger_pairs,
        }
    }
}

impl GateMetrics {
    fn register(registry: &mut Registry) -> Self {
        let gated_pods = Gauge::default();
        registry.register(
            "gated_pods",
            "Pods held by the rollout scheduling gate",
            gated_pods.clone(),
        );
        let rollout_gate = Histogram::new([
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
        ]);
        registry.register(
            "rollout_gate_seconds",
            "Time a gated pod was held, from its creation to its release",
            rollout_gate.clone(),
        );
        let gate_releases = Family::<ReleaseLabel, Counter>::default();
        registry.register(
            "gate_releases",
            "Gated pods released, by reason (prefetched, node_prefetched, timed_out, prefetch_removed, gate_disabled)",
            gate_releases.clone(),
        );
        let gated_namespaces = Gauge::default();
        registry.register(
            "gated_namespaces",
            "Namespaces carrying the gated-rollouts label, whose workload pods reach the pod hook",
            gated_namespaces.clone(),
        );
        let namespace_label_errors = Counter::default();
        registry.register(
            "namespace_label_errors",
            "Failed writes of the gated-rollouts namespace label (retried)",
            namespace_label_errors.clone(),
        );
        Self {
            gated_pods,
            rollout_gate,
            gate_releases,
            gated_namespaces,
            namespace_label_errors,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    pub prefetch: String,
    pub namespace: String,
    pub result: StartResult,
}

impl StartLabels {
    pub fn of(prefetch: &PrefetchLabels, result: StartResult) -> StartLabels {
        StartLabels {
            prefetch: prefetch.prefetch.clone(),
            namespace: prefetch.namespace.clone(),
            result,
        }
    }
}

/// Whether a start found its image on the node.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StartResult {
    Warm,
    Cold,
}

impl StartResult {
    pub fn as_str(self) -> &'static str {
        match self {
            StartResult::Warm => "warm",
            StartResult::Cold => "cold",
        }
    }
}

impl EncodeLabelValue for StartResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrefetchLabels {
    pub prefetch: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabel {
    pub registry: String,
}

/// Warm and cold starts, and the prefetch pods' pulls (`starts.rs`).
pub struct StartsMetrics {
    pub starts: Family<StartLabels, Counter>,
    pub cold_wait: Family<PrefetchLabels, Histogram>,
    pub gated_cold: Family<PrefetchLabels, Counter>,
    pub seconds_saved: Family<PrefetchLabels, Counter<f64>>,
    pub pull_duration: Family<RegistryLabel, Histogram>,
    pub pulled_bytes: Family<RegistryLabel, Counter>,
}

/// Buckets for pull times, from a cached layer's fraction of a second to a large image's
/// minutes.
fn pull_buckets() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

impl StartsMetrics {
    pub fn register(registry: &mut Registry) -> StartsMetrics {
        let metrics = StartsMetrics {
            starts: Family::default(),
            cold_wait: Family::new_with_constructor(pull_buckets),
            gated_cold: Family::default(),
            seconds_saved: Family::default(),
            pull_duration: Family::new_with_constructor(pull_buckets),
            pulled_bytes: Family::default(),
        };
        registry.register(
            "workload_starts",
            "Container starts of the selected workloads, by result (warm: image on the node; cold: pulled)",
            metrics.starts.clone(),
        );
        registry.register(
            "cold_start_wait_seconds",
            "Time cold starts of the selected workloads waited on their pull, queueing included",
            metrics.cold_wait.clone(),
        );
        registry.register(
            "gated_cold_starts",
            "Cold starts of the selected workloads of Prefetches that gate rollouts (spec.gate_rollouts): pods the rollout gate did not keep from starting before their images",
            metrics.gated_cold.clone(),
        );
        registry.register(
            "pull_seconds_saved",
            "Pull time warm starts did not wait: per warm start, the median pull time prefetch pods measured for its image",
            metrics.seconds_saved.clone(),
        );
        registry.register(
            "pull_duration_seconds",
            "Pull times of prefetch pods, by registry host",
            metrics.pull_duration.clone(),
        );
        registry.register(
            "pulled_bytes",
            "Bytes of the images prefetch pods pulled, by registry host (the sizes the runtimes reported)",
            metrics.pulled_bytes.clone(),
        );
        metrics
    }

    /// Drops the series of a Prefetch that is gone.
    pub fn forget(&self, prefetch: &PrefetchLabels) {
        for result in [StartResult::Warm, StartResult::Cold] {
            self.starts.remove(&StartLabels {
                prefetch: prefetch.prefetch.clone(),
                namespace: prefetch.namespace.clone(),
                result,
            });
        }
        self.cold_wait.remove(prefetch);
        self.gated_cold.remove(prefetch);
        self.seconds_saved.remove(prefetch);
    }

    /// Counts a warm start, and the pull time it saved (if a pull of its image was measured).
    pub fn count_warm(&self, prefetch: &PrefetchLabels, saved: Option<f64>) {
        self.starts
            .get_or_create(&StartLabels::of(prefetch, StartResult::Warm))
            .inc();
        if let Some(saved) = saved {
            self.seconds_saved.get_or_create(prefetch).inc_by(saved);
        }
    }

    /// Counts a cold start that waited `waited_seconds` on its pull; `gated`: its Prefetch
    /// gates rollouts, so the gate should have held the pod until its images were on nodes.
    pub fn count_cold(&self, prefetch: &PrefetchLabels, waited_seconds: f64, gated: bool) {
        self.starts
            .get_or_create(&StartLabels::of(prefetch, StartResult::Cold))
            .inc();
        self.cold_wait
            .get_or_create(prefetch)
            .observe(waited_seconds);
        if gated {
            self.gated_cold.get_or_create(prefetch).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_the_ones_the_docs_name() {
        let metrics = Metrics::default();
        for result in [ReconcileResult::Ok, ReconcileResult::Error] {
            metrics
                .rounds
                .reconciles
                .get_or_create(&ResultLabel { result })
                .inc();
        }
        metrics
            .gate
            .gate_releases
            .get_or_create(&ReleaseLabel {
                result: Release::TimedOut,
            })
            .inc();
        let text = metrics.encode().unwrap();
        assert!(
            text.contains("prefetch_controller_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("prefetch_controller_reconciles_total{result=\"error\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("prefetch_controller_gate_releases_total{result=\"timed_out\"} 1"),
            "{text}"
        );
    }

    /// Cold starts of a Prefetch that gates rollouts are counted apart; a Prefetch that is
    /// gone leaves no series.
    #[test]
    fn gated_cold_starts_are_counted_apart_and_forgotten() {
        let metrics = Metrics::default();
        let label = |name: &str| PrefetchLabels {
            prefetch: name.into(),
            namespace: "shop".into(),
        };
        metrics.starts.count_cold(&label("gated"), 12.5, true);
        metrics.starts.count_cold(&label("plain"), 3.0, false);
        metrics.starts.count_warm(&label("plain"), Some(4.0));
        let text = metrics.encode().unwrap();
        for line in [
            r#"prefetch_controller_gated_cold_starts_total{prefetch="gated",namespace="shop"} 1"#,
            r#"prefetch_controller_workload_starts_total{prefetch="gated",namespace="shop",result="cold"} 1"#,
            r#"prefetch_controller_workload_starts_total{prefetch="plain",namespace="shop",result="cold"} 1"#,
            r#"prefetch_controller_workload_starts_total{prefetch="plain",namespace="shop",result="warm"} 1"#,
            r#"prefetch_controller_pull_seconds_saved_total{prefetch="plain",namespace="shop"} 4.0"#,
            r#"prefetch_controller_cold_start_wait_seconds_sum{prefetch="gated",namespace="shop"} 12.5"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(
            !text.contains(r#"prefetch_controller_gated_cold_starts_total{prefetch="plain""#),
            "{text}"
        );
        metrics.starts.forget(&label("gated"));
        let text = metrics.encode().unwrap();
        assert!(!text.contains(r#"prefetch="gated""#), "{text}");
    }

    #[test]
    fn nodes_warming_past_their_timeout_are_exported() {
        let metrics = Metrics::default();
        metrics.warmup.warming_nodes_past_timeout.set(2);
        let text = metrics.encode().unwrap();
        assert!(
            text.lines()
                .any(|l| l == "prefetch_controller_warming_nodes_past_timeout 2"),
            "{text}"
        );
    }
}
