//! Prometheus metrics (`emq_*`), built with the `prometheus` crate.
//!
//! Only the latency histograms accumulate here (cheap atomics, updated as
//! jobs start and finish). Every count — per queue (`QueueStats`) and per
//! anomaly — lives once, in the router state, and is turned into counters
//! and gauges when a snapshot is rendered (`RouterState::metrics_text`).
//!
//! Label values are bounded: `queue` is a queue some job manager serves,
//! `default`, or `other` (a queue name a client made up); `jobmanager` is a
//! job manager's name (`--name`, else `host:pid`), never its random
//! connection identity.

use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};
use std::time::Duration;

/// Seconds: from 1 ms to 10 minutes.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0];

/// The metrics that accumulate over the router's life.
pub struct RouterMetrics {
    registry: Registry,
    /// `stage="start"`: submit → handed to a job manager; `stage="finish"`:
    /// submit → result. Labelled by resolved queue (a bounded set).
    latency: HistogramVec,
    /// Seconds a schedule's run fired after it was due.
    fire_lateness: prometheus::Histogram,
}

/// Seconds: from 0.1 ms to 10 s.
const LATENESS_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0];

impl Default for RouterMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new("emq_job_latency_seconds", "Seconds from submit to start / to finish.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["queue", "stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(latency.clone())).expect("unique metric");
        let fire_lateness = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "emq_schedule_fire_lateness_seconds",
                "Seconds a schedule's run fired after it was due.",
            )
            .buckets(LATENESS_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry.register(Box::new(fire_lateness.clone())).expect("unique metric");
        RouterMetrics { registry, latency, fire_lateness }
    }
}

impl RouterMetrics {
    /// A job from resolved queue `queue` was handed out `wait` after submit.
    pub fn observe_start(&self, queue: &str, wait: Duration) {
        self.latency.with_label_values(&[queue, "start"]).observe(wait.as_secs_f64());
    }

    /// A job from resolved queue `queue` finished `total` after submit.
    pub fn observe_finish(&self, queue: &str, total: Duration) {
        self.latency.with_label_values(&[queue, "finish"]).observe(total.as_secs_f64());
    }

    /// A schedule's run fired `secs` after it was due.
    pub fn observe_fire_lateness(&self, secs: f64) {
        self.fire_lateness.observe(secs);
    }

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
