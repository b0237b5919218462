//! Prometheus metrics (`emq_*`, labels `queue` / `jobmanager` / `pid` /
//! `kind` / `stage`), built with the `prometheus` crate. Counters and
//! latency histograms are updated as events happen (cheap atomics);
//! gauges (queue depth, heartbeat ages, worker RSS...) are computed from the
//! router state when a snapshot is rendered.

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// Seconds: from 1 ms to 10 minutes.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0];

/// The metrics that accumulate over the router's life.
pub struct RouterMetrics {
    registry: Registry,
    pub accepted: IntCounterVec,
    pub refused: IntCounterVec,
    pub processed: IntCounterVec,
    pub failed: IntCounterVec,
    pub retried: IntCounterVec,
    /// `stage="start"`: submit → handed to a job manager; `stage="finish"`:
    /// submit → result.
    pub latency: HistogramVec,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["queue"]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let accepted = counter("emq_jobs_accepted_total", "Jobs accepted from clients.");
        let refused = counter("emq_jobs_refused_total", "Jobs refused (queue full, malformed, unknown queue).");
        let processed = counter("emq_jobs_processed_total", "Jobs finished (any outcome, final attempt).");
        let failed = counter("emq_jobs_failed_total", "Jobs whose final attempt failed.");
        let retried = counter("emq_jobs_retried_total", "Failed attempts scheduled to run again.");
        let latency = HistogramVec::new(
            HistogramOpts::new("emq_job_latency_seconds", "Seconds from submit to start / to finish.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["queue", "stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        RouterMetrics { registry, accepted, refused, processed, failed, retried, latency }
    }
}

impl RouterMetrics {
    /// The accumulated metrics in Prometheus text format.
    pub fn render(&self) -> String {
        encode(&self.registry)
    }
}

/// Encodes a registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
