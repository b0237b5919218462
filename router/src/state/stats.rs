//! [`QueueStats`]: the per-queue counts (accepted, processed, failed,
//! retried, refused, latency), held in one place. STATUS and `/metrics`
//! both read them from here; nothing else counts per queue.
//!
//! Keys are bounded: a count is kept under a queue's resolved name (a queue
//! some job manager serves, or `default`), or under [`OTHER_QUEUE`] when the
//! client named a queue nobody serves and the job was refused — so a client
//! sending random queue names cannot grow this map (or the metric series
//! made from it).

use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Map, Value};

/// Where counts for queue names that no job manager serves go.
pub const OTHER_QUEUE: &str = "other";

/// Seconds from receipt to done, for STATUS.
#[derive(Debug, Default, Clone)]
pub struct LatencyStats {
    pub count: u64,
    pub sum: f64,
    pub max: f64,
}

/// The counts of one queue.
#[derive(Debug, Default, Clone)]
pub struct QueueCounts {
    pub accepted: u64,
    /// Finished (final attempt, any outcome).
    pub processed: u64,
    /// Finished with an error.
    pub failed: u64,
    /// Failed attempts scheduled to run again.
    pub retried: u64,
    pub refused: u64,
    pub latency: LatencyStats,
}

/// Per-queue counts.
#[derive(Debug, Default)]
pub struct QueueStats {
    by_queue: HashMap<String, QueueCounts>,
}

impl QueueStats {
    fn entry(&mut self, queue: &str) -> &mut QueueCounts {
        if !self.by_queue.contains_key(queue) {
            self.by_queue.insert(queue.to_owned(), QueueCounts::default());
        }
        self.by_queue.get_mut(queue).expect("just inserted")
    }

    pub fn accepted(&mut self, queue: &str) {
        self.entry(queue).accepted += 1;
    }

    pub fn refused(&mut self, queue: &str) {
        self.entry(queue).refused += 1;
    }

    pub fn retried(&mut self, queue: &str) {
        self.entry(queue).retried += 1;
    }

    /// A job's final outcome, `secs` after it was received.
    pub fn finished(&mut self, queue: &str, secs: f64, failed: bool) {
        let c = self.entry(queue);
        c.processed += 1;
        c.failed += u64::from(failed);
        c.latency.count += 1;
        c.latency.sum += secs;
        c.latency.max = c.latency.max.max(secs);
    }

    /// Every queue with counts.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &QueueCounts)> {
        self.by_queue.iter().map(|(q, c)| (q.as_str(), c))
    }

    /// `{queue: value}` for the queues where `pick` is not zero (as the
    /// STATUS maps have always been: a queue appears once it has a count).
    pub fn map(&self, pick: impl Fn(&QueueCounts) -> Option<Value>) -> Map<String, Value> {
        self.by_queue.iter().filter_map(|(q, c)| pick(c).map(|v| (q.clone(), v))).collect()
    }

    /// A STATUS map of one counter.
    pub fn counter_map(&self, pick: impl Fn(&QueueCounts) -> u64) -> Map<String, Value> {
        self.map(|c| Some(pick(c)).filter(|n| *n > 0).map(|n| json!(n)))
    }
}

/// Anomalies and normal activity, by kind, and jobs accepted.
#[derive(Default)]
pub(crate) struct Counters {
    /// Bad input and other anomalies, by kind (shown in STATUS `errors`).
    pub(crate) errors: std::collections::BTreeMap<&'static str, u64>,
    /// Normal activity worth counting (retries, schedule runs, cancels...),
    /// kept apart from `errors` so nobody reads them as anomalies (STATUS
    /// `activity`).
    pub(crate) activity: std::collections::BTreeMap<&'static str, u64>,
    /// Jobs accepted from clients.
    pub(crate) accepted: u64,
}

impl Counters {
    /// Counts one event of kind `what`: normal activity (see
    /// [`super::ACTIVITY_COUNTERS`]) or an anomaly.
    pub(crate) fn count(&mut self, what: &'static str) {
        let map = if super::ACTIVITY_COUNTERS.contains(&what) { &mut self.activity } else { &mut self.errors };
        *map.entry(what).or_insert(0) += 1;
    }
}

/// What the router shows about itself: per-queue counts, latency
/// histograms, the last hour's series, the journal's and leadership's
/// figures.
#[derive(Default)]
pub(crate) struct Telemetry {
    /// Per-queue counts, the one place they are kept.
    pub(crate) stats: QueueStats,
    /// Latency histograms (the counts are in `stats`).
    pub(crate) metrics: crate::metrics::RouterMetrics,
    /// Throughput and queue depth every [`super::SERIES_STEP`] over the
    /// last hour (the dashboard's charts).
    pub(crate) series: std::collections::VecDeque<super::SeriesPoint>,
    /// The journal's figures (shown in STATUS), when there is a journal.
    pub(crate) journal_stats: Option<std::sync::Arc<emq_journal::JournalStats>>,
    /// Leadership (with a shared journal), for STATUS and metrics.
    pub(crate) ha: Option<serde_json::Value>,
}

#[cfg(test)]
mod room_tests {
    use super::Counters;

    #[test]
    fn activity_is_never_counted_as_an_error() {
        let mut c = Counters::default();
        c.count("retried");
        c.count("retried");
        c.count("bad_frames");
        assert_eq!(c.activity.get("retried"), Some(&2));
        assert_eq!(c.errors.get("bad_frames"), Some(&1));
        assert!(!c.errors.contains_key("retried") && !c.activity.contains_key("bad_frames"));
    }
}
