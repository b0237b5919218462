//! Limits per key: `NAME = { concurrency = N, rate = "N/PERIOD" }` (the
//! router setting `limits`). A job names `NAME` or `NAME/PARTITION`
//! (header `limit:`); with a partition the limit counts per partition.
//!
//! Enforced where jobs are handed out: a job over its limit is not an
//! attempt and uses no retry — [`RouterState::dispatch`] parks it here
//! (out of its queue, so the jobs behind it and other partitions take the
//! free workers: no head-of-line blocking) and takes the next one. A
//! parked job goes back to the end of its queue when its key may start
//! again: when one of its running jobs ends (done, failed, retrying,
//! requeued, lost, cancelled: every end frees its slot, once) or when its
//! rate window opens (a wake-up timer). Partitions thereby take turns.
//!
//! Rate is a sliding window: at most N starts in any PERIOD (the start
//! times of the window kept, at most N per key). Concurrency counts the
//! jobs started and not ended, by msgid (a second start or end of the same
//! job changes nothing): jobs in doubt after a restart or failover count
//! until a job manager reports them or they end. Bounded: partitions with
//! nothing running, nothing parked and no start in their window are
//! dropped (`forget_idle`); at most [`MAX_PARTITIONS`] per limit; parked
//! jobs within a byte budget (`buffer_memory`; past it the queue waits).
//!
//! Parking is not journaled: a parked job is an accepted job (its
//! `Accepted` record) and is parked again after a restart if need be.

use super::{Action, Now, RouterState, WaitingJob};
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
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
    /// Jobs over the limit, oldest first, each with its queue.
    parked: VecDeque<(String, WaitingJob)>,
    /// A wake-up is set for this key (its rate window opens then).
    wake: Option<Instant>,
}

/// A parked job, as [`Limits::take_parked`] gives it back.
pub struct ParkedJob {
    pub key: LimitKey,
    pub queue: String,
    pub job: WaitingJob,
}

/// The limits room.
#[derive(Default)]
pub struct Limits {
    specs: HashMap<Arc<str>, LimitSpec>,
    keys: HashMap<LimitKey, KeyState>,
    partitions: HashMap<Arc<str>, usize>,
    /// Running limited jobs: msgid → key (an end frees the key's slot once).
    running_jobs: HashMap<Arc<str>, LimitKey>,
    /// Parked jobs: msgid → key (cancel, purge, reclaim find them here).
    parked_index: HashMap<Arc<str>, LimitKey>,
    /// Bytes of the parked jobs (within `buffer_memory`).
    pub(crate) parked_bytes: u64,
    /// Keys whose rate window opens, by time.
    wakes: BTreeMap<(Instant, u64), LimitKey>,
    wake_seq: u64,
    /// Keys that may start parked jobs now (a slot freed, a window opened,
    /// new settings): released after the event.
    pending: Vec<LimitKey>,
    /// Jobs released back into their queue and not handed out yet: they
    /// go before the parked jobs of their key (the others park behind).
    released: HashMap<Arc<str>, LimitKey>,
    /// Queues that stopped draining because the parked jobs were at their
    /// budget: drained again when parked jobs leave.
    blocked_queues: Vec<String>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("specs", &self.specs)
            .field("keys", &self.keys.len())
            .field("running", &self.running_jobs.len())
            .field("parked", &self.parked_index.len())
            .finish()
    }
}

impl Limits {
    /// The limits in force (a SIGHUP replaces them; counts of running jobs
    /// are kept, and every key with parked jobs is looked at again).
    pub fn set_specs(&mut self, specs: impl IntoIterator<Item = (String, LimitSpec)>) {
        self.specs = specs.into_iter().map(|(n, s)| (Arc::from(n.as_str()), s)).collect();
        self.pending.extend(self.keys.iter().filter(|(_, s)| !s.parked.is_empty()).map(|(k, _)| k.clone()));
    }

    /// Whether `name` is a configured limit.
    pub fn knows(&self, name: &str) -> bool {
        self.specs.contains_key(name)
    }

    /// Whether any limit is configured (else a job's `limit:` is refused
    /// and nothing here is looked at).
    pub fn any(&self) -> bool {
        !self.specs.is_empty() || !self.running_jobs.is_empty() || !self.parked_index.is_empty()
    }

    /// May a job of `key` start at `now`? An unknown limit: no (its job is
    /// refused at send; the caller lets a job of a removed limit go).
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

    /// How many jobs of `key` may start at `now` (`usize::MAX`: no bound,
    /// e.g. its limit was removed).
    fn room(&mut self, key: &LimitKey, now: Instant) -> usize {
        let Some(spec) = self.specs.get(&key.name).copied() else { return usize::MAX };
        let Some(state) = self.keys.get_mut(key) else { return usize::MAX };
        let mut room = usize::MAX;
        if let Some(c) = spec.concurrency {
            room = room.min(c.saturating_sub(state.running) as usize);
        }
        if let Some((n, period)) = spec.rate {
            while state.starts.front().is_some_and(|t| now.saturating_duration_since(*t) >= period) {
                state.starts.pop_front();
            }
            room = room.min((n as usize).saturating_sub(state.starts.len()));
        }
        room
    }

    fn key_state(&mut self, key: &LimitKey) -> &mut KeyState {
        if !self.keys.contains_key(key) {
            *self.partitions.entry(key.name.clone()).or_insert(0) += 1;
        }
        self.keys.entry(key.clone()).or_default()
    }

    /// Job `msgid` of `key` started at `now` (after [`Self::check`] said
    /// yes, or re-attached after a restart: counted whatever the limit). A
    /// job already counted is not counted twice.
    pub fn started(&mut self, msgid: &Arc<str>, key: &LimitKey, now: Instant) {
        if !self.released.is_empty() {
            self.released.remove(msgid);
        }
        if self.running_jobs.contains_key(msgid) {
            return;
        }
        self.running_jobs.insert(msgid.clone(), key.clone());
        let spec = self.specs.get(&key.name).copied();
        let state = self.key_state(key);
        state.running += 1;
        if let Some((n, _)) = spec.and_then(|s| s.rate) {
            state.starts.push_back(now);
            while state.starts.len() > n as usize {
                state.starts.pop_front();
            }
        }
    }

    /// Job `msgid` ended (done, failed, retrying, requeued, timeout, worker
    /// died, job manager lost, cancelled): its slot is free. Nothing for a
    /// job not counted (or already ended). A key with parked jobs is
    /// released after the event.
    pub fn ended(&mut self, msgid: &str) {
        let Some(key) = self.running_jobs.remove(msgid) else { return };
        if let Some(state) = self.keys.get_mut(&key) {
            state.running = state.running.saturating_sub(1);
            if !state.parked.is_empty() {
                self.pending.push(key);
            }
        }
    }

    /// Whether job `msgid` is counted as running.
    pub fn is_running(&self, msgid: &str) -> bool {
        self.running_jobs.contains_key(msgid)
    }

    /// Running jobs of `key`.
    pub fn running(&self, key: &LimitKey) -> u32 {
        self.keys.get(key).map_or(0, |s| s.running)
    }

    /// Parks `job` (of `queue`) until `key` may start it: behind the older
    /// jobs of its key. `wake`: when its rate window opens. Gives the job
    /// back when the parked jobs are at `budget` bytes.
    pub fn park(
        &mut self,
        key: LimitKey,
        queue: String,
        job: WaitingJob,
        wake: Option<Instant>,
        budget: u64,
    ) -> Result<(), WaitingJob> {
        let size = job.memory_bytes();
        if self.parked_bytes + size > budget {
            return Err(job);
        }
        self.parked_bytes += size;
        let msgid = job.msgid.to_arc();
        // A job released earlier that lost its turn, or one that ran
        // before (a retry, a requeue): first, as in its queue.
        let front = self.released.remove(&msgid).is_some() || job.attempts > 0;
        self.parked_index.insert(msgid, key.clone());
        let state = self.key_state(&key);
        if front {
            state.parked.push_front((queue, job));
        } else {
            state.parked.push_back((queue, job));
        }
        if let Some(t) = wake {
            if state.wake.is_none_or(|w| w > t) {
                state.wake = Some(t);
                self.wake_seq += 1;
                self.wakes.insert((t, self.wake_seq), key);
            }
        }
        Ok(())
    }

    /// Whether job `msgid` of `key` must park behind older parked jobs of
    /// its key (it is not one of them released, and some are parked).
    pub fn must_wait_behind(&mut self, key: &LimitKey, msgid: &str) -> bool {
        if self.released.remove(msgid).is_some() {
            return false;
        }
        self.keys.get(key).is_some_and(|s| !s.parked.is_empty())
    }

    /// A released job left its queue without starting (cancelled,
    /// purged): its key may start another.
    pub fn forget_released(&mut self, msgid: &str) {
        if let Some(key) = self.released.remove(msgid) {
            self.pending.push(key);
        }
    }

    /// `queue` stopped draining at the parked budget.
    pub fn blocked(&mut self, queue: &str) {
        if !self.blocked_queues.iter().any(|q| q == queue) && self.blocked_queues.len() < 1024 {
            self.blocked_queues.push(queue.to_owned());
        }
    }

    /// Parked jobs in all.
    pub fn parked(&self) -> usize {
        self.parked_index.len()
    }

    /// Takes parked job `msgid` out (cancel, reclaim).
    pub fn take_parked(&mut self, msgid: &str) -> Option<ParkedJob> {
        let key = self.parked_index.remove(msgid)?;
        let state = self.keys.get_mut(&key)?;
        let pos = state.parked.iter().position(|(_, j)| &*j.msgid == msgid)?;
        let (queue, job) = state.parked.remove(pos)?;
        self.parked_bytes = self.parked_bytes.saturating_sub(job.memory_bytes());
        Some(ParkedJob { key, queue, job })
    }

    /// Takes every parked job of `queue` out (purge).
    pub fn take_parked_of_queue(&mut self, queue: &str) -> Vec<WaitingJob> {
        let mut taken = Vec::new();
        for state in self.keys.values_mut() {
            if !state.parked.iter().any(|(q, _)| q == queue) {
                continue;
            }
            let (mine, rest): (VecDeque<_>, VecDeque<_>) =
                std::mem::take(&mut state.parked).into_iter().partition(|(q, _)| q == queue);
            state.parked = rest;
            taken.extend(mine.into_iter().map(|(_, j)| j));
        }
        for j in &taken {
            self.parked_index.remove(&*j.msgid);
            self.parked_bytes = self.parked_bytes.saturating_sub(j.memory_bytes());
        }
        taken
    }

    /// Every parked job, with its queue (checkpoint).
    pub fn parked_jobs(&self) -> impl Iterator<Item = (&str, &WaitingJob)> {
        self.keys.values().flat_map(|s| s.parked.iter().map(|(q, j)| (q.as_str(), j)))
    }

    /// The key job `msgid` is parked under.
    pub fn parked_key(&self, msgid: &str) -> Option<&LimitKey> {
        self.parked_index.get(msgid)
    }

    /// The first wake-up (for the poll timeout).
    pub fn first_wake(&self) -> Option<Instant> {
        self.wakes.first_key_value().map(|((t, _), _)| *t)
    }

    /// Whether anything is to be released at `now`.
    pub fn due(&self, now: Instant) -> bool {
        !self.pending.is_empty() || self.first_wake().is_some_and(|t| t <= now)
    }

    /// The parked jobs that may start now: for each key pending or whose
    /// wake-up is due, as many as its room, oldest first. Keys still
    /// parked behind a rate window get their next wake-up.
    pub fn take_released(&mut self, now: Instant) -> Vec<(String, WaitingJob)> {
        while let Some(entry) = self.wakes.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(s) = self.keys.get_mut(&key) {
                s.wake = None;
            }
            self.pending.push(key);
        }
        let mut out = Vec::new();
        let keys = std::mem::take(&mut self.pending);
        for key in keys {
            let room = self.room(&key, now);
            let Some(state) = self.keys.get_mut(&key) else { continue };
            let n = room.min(state.parked.len());
            for _ in 0..n {
                let (queue, job) = state.parked.pop_front().expect("counted");
                self.parked_bytes = self.parked_bytes.saturating_sub(job.memory_bytes());
                self.parked_index.remove(&*job.msgid);
                if self.released.len() < 1_000_000 {
                    self.released.insert(job.msgid.to_arc(), key.clone());
                }
                out.push((queue, job));
            }
            if state.parked.is_empty() || state.wake.is_some() {
                continue;
            }
            // Still parked: a rate window opens later (a concurrency slot
            // is freed by an end, which releases it then).
            let next = self.specs.get(&key.name).and_then(|s| s.rate).and_then(|(n, period)| {
                (state.starts.len() >= n as usize).then(|| state.starts.front().map(|t| *t + period)).flatten()
            });
            let partitions_full = self.partitions.get(&key.name).is_some_and(|n| *n >= MAX_PARTITIONS);
            if let Some(t) = next.or(partitions_full.then(|| now + Duration::from_secs(1))) {
                state.wake = Some(t);
                self.wake_seq += 1;
                self.wakes.insert((t, self.wake_seq), key);
            }
        }
        out
    }

    /// Drops keys with nothing running, nothing parked and no start in
    /// their rate window (a tick step): memory follows the active
    /// partitions only.
    pub fn forget_idle(&mut self, now: Instant) {
        let specs = &self.specs;
        let partitions = &mut self.partitions;
        let pending = &mut self.pending;
        self.keys.retain(|k, s| {
            if !s.parked.is_empty() && s.wake.is_none() {
                // A safety net: parked jobs of a key with room (a released
                // job that left its queue another way) are looked at again.
                let spec = specs.get(&k.name);
                let conc_room = spec.and_then(|sp| sp.concurrency).is_none_or(|c| s.running < c);
                let rate_room = spec.and_then(|sp| sp.rate).is_none_or(|(n, p)| {
                    s.starts.iter().filter(|t| now.saturating_duration_since(**t) < p).count() < n as usize
                });
                if conc_room && rate_room {
                    pending.push(k.clone());
                }
            }
            let window = specs.get(&k.name).and_then(|sp| sp.rate).map(|(_, p)| p).unwrap_or_default();
            let keep = s.running > 0
                || !s.parked.is_empty()
                || s.starts.back().is_some_and(|t| now.saturating_duration_since(*t) < window);
            if !keep {
                if let Some(n) = partitions.get_mut(&k.name) {
                    *n = n.saturating_sub(1);
                }
            }
            keep
        });
        self.partitions.retain(|_, n| *n > 0);
    }

    /// Keys tracked (for tests and STATUS).
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    /// Each limit with its partitions: running, waiting (parked), rate
    /// used in the current window. At most `max_partitions` partitions per
    /// limit are listed (the busiest first); the totals cover all.
    pub fn to_json(&self, now: Instant, max_partitions: usize) -> Value {
        // One pass over the keys, grouped by limit.
        let mut by_name: HashMap<&str, Vec<(&LimitKey, &KeyState)>> = HashMap::default();
        for (k, s) in &self.keys {
            by_name.entry(&*k.name).or_default().push((k, s));
        }
        let mut out = serde_json::Map::new();
        for (name, spec) in &self.specs {
            let mut parts = by_name.remove(&**name).unwrap_or_default();
            let used = |s: &KeyState| match spec.rate {
                Some((_, p)) => s.starts.iter().filter(|t| now.saturating_duration_since(**t) < p).count(),
                None => 0,
            };
            let (running, waiting) =
                parts.iter().fold((0u64, 0u64), |(r, w), (_, s)| (r + s.running as u64, w + s.parked.len() as u64));
            let busiest = |(k, s): &(&LimitKey, &KeyState)| {
                (std::cmp::Reverse(s.running as usize + s.parked.len()), k.partition.clone())
            };
            let active = parts.len();
            if parts.len() > max_partitions && max_partitions > 0 {
                parts.select_nth_unstable_by_key(max_partitions - 1, busiest);
            }
            parts.truncate(max_partitions);
            parts.sort_by_key(busiest);
            let partitions: Vec<Value> = parts
                .iter()
                .map(|(k, s)| {
                    json!({"partition": &*k.partition, "running": s.running, "waiting": s.parked.len(), "rate_used": used(s)})
                })
                .collect();
            out.insert(
                name.to_string(),
                json!({
                    "concurrency": spec.concurrency,
                    "rate": spec.rate.map(|(n, p)| format!("{n}/{}", fmt_period(p))),
                    "running": running,
                    "waiting": waiting,
                    "active_partitions": active,
                    "partitions": partitions,
                }),
            );
        }
        Value::Object(out)
    }
}

/// A period as a setting writes it (`500ms`, `10s`, `1m`, `1h`).
fn fmt_period(p: Duration) -> String {
    let ms = p.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// What became of a job handed to [`RouterState::dispatch`].
#[derive(Debug)]
pub(crate) enum Handed {
    /// Sent to the job manager.
    Sent,
    /// Over its limit: parked until its key may start it.
    Parked,
    /// Over its limit and the parked jobs are at their byte budget: given
    /// back (the caller puts it at the front of its queue and stops
    /// draining it).
    Blocked(WaitingJob),
}

/// Rounds of releases in one event (a release may free room that parks
/// and releases again; bounded so an event always ends).
const MAX_RELEASE_ROUNDS: usize = 8;

impl RouterState {
    /// The limit `job` names, when limits are in use (a cheap test first:
    /// most jobs name none).
    pub(super) fn limit_key_of(&self, job: &WaitingJob) -> Option<LimitKey> {
        if !self.limits.any() || !job.request.headers_str().contains("limit:") {
            return None;
        }
        job.request.headers().limit.as_deref().and_then(LimitKey::parse)
    }

    /// Before a job is handed out: `Ok` when it may start now (no limit,
    /// within it, or its limit was removed); else it is parked (or given
    /// back when the parked jobs are at their budget).
    pub(super) fn limit_gate(&mut self, queue: &str, job: WaitingJob, now: Now) -> Result<WaitingJob, Handed> {
        let Some(key) = self.limit_key_of(&job) else { return Ok(job) };
        // New jobs do not overtake the parked ones; a retried or requeued
        // job goes first, as it does in its queue.
        let behind = self.limits.must_wait_behind(&key, &job.msgid) && job.attempts == 0;
        let wake = match self.limits.check(&key, now.mono) {
            Ok(()) | Err(Wait::Unknown) if !behind => return Ok(job),
            Ok(()) | Err(Wait::Unknown) => {
                // Room, but older jobs of the key are parked: they go first.
                self.limits.pending.push(key.clone());
                None
            }
            Err(Wait::Concurrency) => None,
            Err(Wait::Rate(t)) => Some(t),
            Err(Wait::TooManyPartitions) => Some(now.mono + Duration::from_secs(1)),
        };
        let msgid = job.msgid.to_arc();
        match self.limits.park(key.clone(), queue.to_owned(), job, wake, self.cfg.buffer_memory) {
            Ok(()) => {
                tracing::debug!(%msgid, %queue, limit = %key.name, partition = %key.partition, "over its limit: waits");
                Err(Handed::Parked)
            }
            Err(job) => {
                self.count("limit_waiting_full");
                self.limits.blocked(queue);
                Err(Handed::Blocked(job))
            }
        }
    }

    /// A job's `limit:` at send: a configured limit (else the job is
    /// refused with why).
    pub(super) fn check_limit(&self, limit: Option<&str>) -> Result<(), String> {
        let Some(raw) = limit else { return Ok(()) };
        let Some(key) = LimitKey::parse(raw) else {
            return Err(format!("{raw:?} is not NAME or NAME/PARTITION (name ≤ 128 bytes, partition ≤ 256)"));
        };
        if !self.limits.knows(&key.name) {
            let mut known: Vec<&str> = self.cfg.limits.iter().map(|(n, _)| n.as_str()).take(20).collect();
            known.sort_unstable();
            return Err(if known.is_empty() {
                format!("unknown limit {:?}: this router has no limits configured", &*key.name)
            } else {
                format!("unknown limit {:?} (configured: {})", &*key.name, known.join(", "))
            });
        }
        Ok(())
    }

    /// A job was handed out (or re-attached): its limit counts it.
    pub(super) fn limit_started(&mut self, msgid: &Arc<str>, limit: Option<&str>, now: Now) {
        let Some(key) = limit.and_then(LimitKey::parse) else { return };
        if self.limits.knows(&key.name) {
            self.limits.started(msgid, &key, now.mono);
        }
    }

    /// After an event: parked jobs whose key may start again go to the end
    /// of their queue (partitions take turns), and free job managers take
    /// them.
    pub(super) fn release_limited(&mut self, now: Now, out: &mut Vec<Action>) {
        for _ in 0..MAX_RELEASE_ROUNDS {
            if !self.limits.due(now.mono) {
                return;
            }
            let released = self.limits.take_released(now.mono);
            let mut queues: Vec<String> =
                if released.is_empty() { Vec::new() } else { std::mem::take(&mut self.limits.blocked_queues) };
            for (queue, job) in released {
                if !queues.contains(&queue) {
                    queues.push(queue.clone());
                }
                self.buffer(queue, job, false);
            }
            for queue in queues {
                self.fill_free_slots(&queue, now, out);
            }
        }
    }

    /// Free job managers of `queue` take waiting jobs (jobs may wait while
    /// slots are free once limits park some): each of them in turn, as a
    /// job manager that allows only some callables may take none.
    fn fill_free_slots(&mut self, queue: &str, now: Now, out: &mut Vec<Action>) {
        if !self.dispatching() || self.is_paused(queue) {
            return;
        }
        let Some(q) = self.dispatch.queues.get(queue) else { return };
        let free: Vec<emq_receiver::PeerId> = q
            .free
            .iter()
            .map(|(_, _, p)| p)
            .filter(|p| self.peers.job_managers.get(*p).is_some_and(|jm| jm.free_slots > 0))
            .take(64)
            .cloned()
            .collect();
        for jm in free {
            if self.queue_len(queue) == 0 {
                return;
            }
            self.drain_to(&jm, now, out);
        }
    }

    /// Tick step: partitions with nothing running or waiting are dropped.
    pub(super) fn forget_idle_limits(&mut self, now: Now) {
        if self.limits.tracked() > 0 {
            self.limits.forget_idle(now.mono);
        }
    }

    /// `emq-cli limits` / STATUS `limits`.
    pub fn limits_json(&self, now: Now, max_partitions: usize) -> Value {
        self.limits.to_json(now.mono, max_partitions)
    }

    /// Jobs waiting for their limit.
    pub fn limit_waiting(&self) -> usize {
        self.limits.parked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> LimitKey {
        LimitKey::parse(s).unwrap()
    }

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
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
        for i in 0..2 {
            assert_eq!(l.check(&x, t), Ok(()));
            l.started(&id(&format!("x{i}")), &x, t);
        }
        l.started(&id("x1"), &x, t);
        assert_eq!(l.running(&x), 2, "a job counted once");
        assert_eq!(l.check(&x, t), Err(Wait::Concurrency));
        assert_eq!(l.check(&y, t), Ok(()), "another partition is not held up");
        l.ended("x0");
        assert_eq!(l.check(&x, t), Ok(()));
        assert_eq!(l.check(&key("nope/x"), t), Err(Wait::Unknown));
        l.ended("x1");
        l.ended("x1");
        l.ended("x0");
        assert_eq!(l.running(&x), 0, "an end counted once");
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
            l.started(&id(&format!("j{i}")), &k, t);
            l.ended(&format!("j{i}"));
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
        l.started(&id("a1"), &key("k/a"), t);
        l.started(&id("a2"), &key("k/a"), t);
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
