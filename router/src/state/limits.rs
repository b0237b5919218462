//! Limits per key (issue 26, first part: the room alone, not yet wired to
//! dispatch or settings): `NAME = { concurrency = N, rate = "N/PERIOD" }`.
//! A job names `NAME` or `NAME/PARTITION`; with a partition the limit
//! counts per partition. The room answers "may a job of this key start
//! now?" and is told when one starts and ends; the dispatch room will skip
//! a job over its limit (it waits: not an attempt, no retry used) and take
//! the next one.
//!
//! Rate is a sliding window: at most N starts in any PERIOD (the start
//! times of the window kept, at most N per key). Concurrency counts jobs
//! started and not ended. Both bounded: partitions with nothing running
//! and no start in their window are dropped (`forget_idle`).

use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most partitions kept per limit (past it, a new partition is refused:
/// bounded memory whatever keys clients send).
pub const MAX_PARTITIONS: usize = 100_000;

/// One limit as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    /// Jobs of a key running at once.
    pub concurrency: Option<u32>,
    /// At most `.0` starts in any `.1`.
    pub rate: Option<(u32, Duration)>,
}

impl LimitSpec {
    /// Reads `"N/PERIOD"` (PERIOD: `500ms`, `1s`, `10s`, `1m`, `1h`, or a
    /// bare number of seconds).
    pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
        let (n, period) = s.split_once('/').ok_or_else(|| format!("rate {s:?}: expected N/PERIOD, e.g. 50/10s"))?;
        let n: u32 = n.trim().parse().map_err(|_| format!("rate {s:?}: {n:?} is not a count"))?;
        if n == 0 {
            return Err(format!("rate {s:?}: the count must be at least 1"));
        }
        let p = period.trim();
        let (num, unit) = p.find(|c: char| c.is_ascii_alphabetic()).map_or((p, "s"), |i| (&p[..i], &p[i..]));
        let num: f64 = if num.is_empty() { 1.0 } else { num.parse().map_err(|_| format!("rate {s:?}: bad period"))? };
        let secs = match unit {
            "ms" => num / 1000.0,
            "s" => num,
            "m" => num * 60.0,
            "h" => num * 3600.0,
            other => return Err(format!("rate {s:?}: unknown unit {other:?} (ms, s, m, h)")),
        };
        if !(0.001..=86_400.0).contains(&secs) {
            return Err(format!("rate {s:?}: the period must be 1 ms to 24 h"));
        }
        Ok((n, Duration::from_secs_f64(secs)))
    }
}

/// What a job names: the limit and its partition (empty: the whole limit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    pub name: Arc<str>,
    pub partition: Arc<str>,
}

impl LimitKey {
    /// `NAME` or `NAME/PARTITION` (the header's value).
    pub fn parse(s: &str) -> Option<LimitKey> {
        let (name, partition) = s.split_once('/').unwrap_or((s, ""));
        let name = name.trim();
        (!name.is_empty() && name.len() <= 128 && partition.len() <= 256)
            .then(|| LimitKey { name: Arc::from(name), partition: Arc::from(partition.trim()) })
    }
}

/// Why a job may not start now.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// Its key runs `concurrency` jobs already.
    Concurrency,
    /// Its key started `rate` jobs in the window; the next may start at
    /// this instant.
    Rate(Instant),
    /// No such limit (refused at send; a limit removed by SIGHUP lets its
    /// jobs go).
    Unknown,
    /// Too many partitions of this limit are active.
    TooManyPartitions,
}

#[derive(Debug, Default)]
struct KeyState {
    running: u32,
    /// Start times within the rate window, oldest first.
    starts: VecDeque<Instant>,
}

/// The limits room.
#[derive(Debug, Default)]
pub struct Limits {
    specs: HashMap<Arc<str>, LimitSpec>,
    keys: HashMap<LimitKey, KeyState>,
    partitions: HashMap<Arc<str>, usize>,
}

impl Limits {
    /// The limits in force (a SIGHUP replaces them; counts of running jobs
    /// are kept).
    pub fn set_specs(&mut self, specs: impl IntoIterator<Item = (String, LimitSpec)>) {
        self.specs = specs.into_iter().map(|(n, s)| (Arc::from(n.as_str()), s)).collect();
    }

    /// Whether `name` is a configured limit.
    pub fn knows(&self, name: &str) -> bool {
        self.specs.contains_key(name)
    }

    /// May a job of `key` start at `now`? An unknown limit: no (its job is
    /// refused at send).
    pub fn check(&mut self, key: &LimitKey, now: Instant) -> Result<(), Wait> {
        let Some(spec) = self.specs.get(&key.name).copied() else { return Err(Wait::Unknown) };
        let Some(state) = self.keys.get_mut(key) else {
            let n = self.partitions.get(&key.name).copied().unwrap_or(0);
            return if n >= MAX_PARTITIONS { Err(Wait::TooManyPartitions) } else { Ok(()) };
        };
        if spec.concurrency.is_some_and(|c| state.running >= c) {
            return Err(Wait::Concurrency);
        }
        if let Some((n, period)) = spec.rate {
            while state.starts.front().is_some_and(|t| now.saturating_duration_since(*t) >= period) {
                state.starts.pop_front();
            }
            if state.starts.len() >= n as usize {
                return Err(Wait::Rate(state.starts[0] + period));
            }
        }
        Ok(())
    }

    /// A job of `key` started at `now` (after [`Self::check`] said yes, or
    /// re-attached after a restart: counted whatever the limit).
    pub fn started(&mut self, key: &LimitKey, now: Instant) {
        let spec = self.specs.get(&key.name).copied();
        if !self.keys.contains_key(key) {
            *self.partitions.entry(key.name.clone()).or_insert(0) += 1;
        }
        let state = self.keys.entry(key.clone()).or_default();
        state.running += 1;
        if let Some((n, _)) = spec.and_then(|s| s.rate) {
            state.starts.push_back(now);
            while state.starts.len() > n as usize {
                state.starts.pop_front();
            }
        }
    }

    /// A job of `key` ended (done, failed, timeout, worker died, job
    /// manager lost, cancelled): its slot is free.
    pub fn ended(&mut self, key: &LimitKey) {
        if let Some(state) = self.keys.get_mut(key) {
            state.running = state.running.saturating_sub(1);
        }
    }

    /// Running jobs of `key`.
    pub fn running(&self, key: &LimitKey) -> u32 {
        self.keys.get(key).map_or(0, |s| s.running)
    }

    /// Drops keys with nothing running and no start in their rate window
    /// (a tick step): memory follows the active partitions only.
    pub fn forget_idle(&mut self, now: Instant) {
        let specs = &self.specs;
        let partitions = &mut self.partitions;
        self.keys.retain(|k, s| {
            let window = specs.get(&k.name).and_then(|sp| sp.rate).map(|(_, p)| p).unwrap_or_default();
            let keep = s.running > 0 || s.starts.back().is_some_and(|t| now.saturating_duration_since(*t) < window);
            if !keep {
                if let Some(n) = partitions.get_mut(&k.name) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
    }

    /// Keys tracked (for tests and STATUS).
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> LimitKey {
        LimitKey::parse(s).unwrap()
    }

    fn limits(spec: LimitSpec) -> Limits {
        let mut l = Limits::default();
        l.set_specs([("k".to_owned(), spec)]);
        l
    }

    #[test]
    fn rates_parse_with_their_units_and_bad_ones_say_why() {
        assert_eq!(LimitSpec::parse_rate("5/1s"), Ok((5, Duration::from_secs(1))));
        assert_eq!(LimitSpec::parse_rate("50/10s"), Ok((50, Duration::from_secs(10))));
        assert_eq!(LimitSpec::parse_rate("3/m"), Ok((3, Duration::from_secs(60))));
        assert_eq!(LimitSpec::parse_rate("100/500ms"), Ok((100, Duration::from_millis(500))));
        assert_eq!(LimitSpec::parse_rate("2/1h"), Ok((2, Duration::from_secs(3600))));
        for (bad, why) in
            [("5", "N/PERIOD"), ("x/1s", "count"), ("0/1s", "at least 1"), ("5/1d", "unit"), ("5/0s", "1 ms")]
        {
            let e = LimitSpec::parse_rate(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(key("api/customer-7").partition.as_ref(), "customer-7");
        assert_eq!(key("api").partition.as_ref(), "");
        assert!(LimitKey::parse("/x").is_none());
    }

    #[test]
    fn concurrency_counts_per_partition_and_frees_on_every_end() {
        let mut l = limits(LimitSpec { concurrency: Some(2), rate: None });
        let t = Instant::now();
        let (x, y) = (key("k/x"), key("k/y"));
        for _ in 0..2 {
            assert_eq!(l.check(&x, t), Ok(()));
            l.started(&x, t);
        }
        assert_eq!(l.check(&x, t), Err(Wait::Concurrency));
        assert_eq!(l.check(&y, t), Ok(()), "another partition is not held up");
        l.ended(&x);
        assert_eq!(l.check(&x, t), Ok(()));
        assert_eq!(l.check(&key("nope/x"), t), Err(Wait::Unknown));
        l.ended(&x);
        l.ended(&x);
        l.ended(&x);
        assert_eq!(l.running(&x), 0, "never below zero");
        l.forget_idle(t);
        assert_eq!(l.tracked(), 0, "idle partitions are dropped");
    }

    #[test]
    fn rate_is_a_sliding_window() {
        let mut l = limits(LimitSpec { concurrency: None, rate: Some((5, Duration::from_secs(1))) });
        let t0 = Instant::now();
        let k = key("k");
        for i in 0..5 {
            let t = t0 + Duration::from_millis(100 * i);
            assert_eq!(l.check(&k, t), Ok(()));
            l.started(&k, t);
            l.ended(&k);
        }
        let t = t0 + Duration::from_millis(900);
        assert_eq!(
            l.check(&k, t),
            Err(Wait::Rate(t0 + Duration::from_secs(1))),
            "the sixth waits for the first to age out"
        );
        assert_eq!(l.check(&k, t0 + Duration::from_secs(1)), Ok(()));
        l.forget_idle(t0 + Duration::from_millis(1300));
        assert_eq!(l.tracked(), 1, "starts still in the window are kept");
        l.forget_idle(t0 + Duration::from_secs(3));
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn restarted_jobs_are_counted_and_partitions_are_bounded() {
        let mut l = limits(LimitSpec { concurrency: Some(1), rate: None });
        let t = Instant::now();
        // Re-attached after a restart: counted even past the limit.
        l.started(&key("k/a"), t);
        l.started(&key("k/a"), t);
        assert_eq!(l.running(&key("k/a")), 2);
        assert_eq!(l.check(&key("k/a"), t), Err(Wait::Concurrency));
        // A SIGHUP that raises the limit keeps the counts.
        l.set_specs([("k".to_owned(), LimitSpec { concurrency: Some(3), rate: None })]);
        assert_eq!(l.check(&key("k/a"), t), Ok(()));
        *l.partitions.get_mut("k").unwrap() = MAX_PARTITIONS;
        assert_eq!(l.check(&key("k/new"), t), Err(Wait::TooManyPartitions));
        assert_eq!(l.check(&key("k/a"), t), Ok(()), "a known partition still goes");
    }
}
