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
