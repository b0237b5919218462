//! Time: the router's one ordered timer structure and what it drives —
//! delayed jobs (`delay:` / `eta:` headers), retries waiting for their
//! delay, and schedules (EventMQ's SCHEDULE / UNSCHEDULE, run by the router
//! itself unless `scheduler = "external"`).
//!
//! Every timer is an entry of one `BTreeMap` keyed by (due instant, a
//! sequence number): the poll loop sleeps until the first key, and a tick
//! takes only the entries that are due — nothing scans all timers, so a
//! million delayed jobs cost nothing per tick.
//!
//! A schedule is named by EventMQ's id (SHA-1 of its callable and
//! arguments); scheduling the same thing again replaces it. It fires at once
//! unless `nohaste`, then every interval (drift-free: the next run is the
//! previous due time plus the interval) or at each cron match in its time
//! zone; `run_count:N` stops it after N runs; `no-overlap` skips a run
//! while the previous one is unfinished. Each fired job is an ordinary job
//! (journaled, receipted to nobody) whose headers carry `schedule:ID` and
//! `fired:DUE`. Runs missed while the router was down follow the misfire
//! policy at the next start.

use super::{Action, JobRecord, JobState, Now, RouterState, SocketKind, WaitingJob};
use crate::schedule::cron::CronSchedule;
use emq_journal::{Record, ScheduleEntry};
use emq_protocol::{Command, Message, Misfire, Reply, Request, Schedule, ScheduleOptions, Timing, DEFAULT_QUEUE};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// The key of a timer: due instant, then arrival order.
pub type TimerKey = (Instant, u64);

/// One entry of the timer structure.
#[derive(Debug)]
pub enum Timer {
    /// A job waiting for its time in `queue`: a delayed job (no dispatch
    /// behind it) or a failed job waiting for its retry.
    Job { queue: String, job: WaitingJob },
    /// A schedule's next run.
    Fire(Arc<str>),
}

/// Missed runs fired at one start, at most (`misfire = "all"`).
const MAX_CATCH_UP: usize = 10_000;

/// Fire lateness samples kept for the percentiles in `ROUTER_SCHEDULES`.
const LATENESS_SAMPLES: usize = 10_000;

/// The identity of "no client": jobs a schedule fired have nobody to
/// receipt or answer (a ZeroMQ identity is never empty).
pub fn no_client() -> PeerId {
    PeerId::from(&b""[..])
}

/// How a schedule's times are computed.
#[derive(Debug, Clone)]
enum Parsed {
    Interval(u64),
    Cron(Box<CronSchedule>),
}

/// A schedule the router runs.
#[derive(Debug)]
pub struct ScheduleState {
    /// As journaled, kept current (`next_due`, `runs`, `runs_left`).
    pub entry: ScheduleEntry,
    timing: Parsed,
    pub options: ScheduleOptions,
    /// Its entry in the timers (none while being restored).
    key: Option<TimerKey>,
    /// Unix seconds of the last run and its job.
    pub last_fire: Option<f64>,
    pub last_msgid: Option<Arc<str>>,
    /// Fired jobs not finished yet (`no-overlap`).
    pub running: u32,
    /// Runs skipped because the previous was still running.
    pub skipped: u64,
    /// Missed runs (their due times) to fire at the next tick after a start.
    catch_up: Vec<f64>,
}

/// Shortest prefix of a schedule id taken in its place.
pub const MIN_ID_PREFIX: usize = 4;

impl ScheduleState {
    /// Reads a journaled schedule (the error says why it cannot run).
    fn from_entry(entry: ScheduleEntry) -> Result<Self, String> {
        let options = ScheduleOptions::parse(&entry.headers);
        let timing = if entry.interval_secs >= 0 {
            Parsed::Interval(entry.interval_secs.max(1) as u64)
        } else {
            Parsed::Cron(Box::new(CronSchedule::parse(&entry.cron, options.tz.as_deref())?))
        };
        if options.tz.is_some() && matches!(timing, Parsed::Interval(_)) {
            // An interval has no wall clock; the zone is still checked.
            let tz = options.tz.as_deref().unwrap_or_default();
            tz.parse::<chrono_tz::Tz>().map_err(|_| format!("unknown time zone {tz:?}"))?;
        }
        Ok(ScheduleState {
            entry,
            timing,
            options,
            key: None,
            last_fire: None,
            last_msgid: None,
            running: 0,
            skipped: 0,
            catch_up: Vec::new(),
        })
    }

    /// The first run after `t` (unix seconds); `None`: never again.
    fn next_after(&self, t: f64) -> Option<f64> {
        match &self.timing {
            Parsed::Interval(secs) => Some(t + *secs as f64),
            Parsed::Cron(c) => c.next_after(t),
        }
    }

    /// The first run due after `now`, counting from the run due at `due`
    /// (interval schedules keep their phase).
    fn next_after_now(&self, due: f64, now: f64) -> Option<f64> {
        match &self.timing {
            Parsed::Interval(secs) => {
                let secs = *secs as f64;
                let k = ((now - due) / secs).floor().max(0.0) + 1.0;
                Some(due + k * secs)
            }
            Parsed::Cron(c) => c.next_after(now.max(due)),
        }
    }

    /// The misfire policy in force.
    fn misfire(&self, default: Misfire) -> Misfire {
        self.options.misfire.unwrap_or(default)
    }

    /// `module.callable` (or `module:Class.method`) of its payload.
    pub fn callable(&self) -> String {
        emq_protocol::payload_name(&self.entry.payload).unwrap_or_else(|| "?".into())
    }
}

/// The one ordered timer structure — delayed jobs, retries and schedules'
/// next runs, by due time — with the schedules and their figures.
#[derive(Default)]
pub(crate) struct Timers {
    pub(crate) by_due: BTreeMap<TimerKey, Timer>,
    /// Makes keys of timers due at the same instant unique.
    pub(crate) seq: u64,
    /// Delayed jobs in `by_due` (retries aside), and their bytes.
    pub(crate) delayed_jobs: usize,
    pub(crate) delayed_bytes: u64,
    /// Retries in `by_due`.
    pub(crate) retry_timers: usize,
    /// Schedules by EventMQ's id.
    pub(crate) schedules: HashMap<Arc<str>, ScheduleState>,
    /// Unfinished jobs a schedule fired: msgid → schedule id.
    pub(crate) fired: HashMap<Arc<str>, Arc<str>>,
    /// The last fire lateness samples (seconds).
    pub(crate) lateness: VecDeque<f32>,
}

impl Timers {
    /// Adds `timer`, due at `due`, and returns its key; the delayed-job and
    /// retry counts follow (a job never attempted is delayed, else it waits
    /// for a retry).
    pub(crate) fn insert(&mut self, due: Instant, timer: Timer) -> TimerKey {
        self.seq += 1;
        let key = (due, self.seq);
        match &timer {
            Timer::Job { job, .. } if job.attempts == 0 => {
                self.delayed_jobs += 1;
                self.delayed_bytes += job.memory_bytes();
            }
            Timer::Job { .. } => self.retry_timers += 1,
            Timer::Fire(_) => {}
        }
        self.by_due.insert(key, timer);
        key
    }

    /// Removes the timer under `key`, keeping the counts right.
    pub(crate) fn remove(&mut self, key: &TimerKey) -> Option<Timer> {
        let t = self.by_due.remove(key)?;
        match &t {
            Timer::Job { job, .. } if job.attempts == 0 => {
                self.delayed_jobs -= 1;
                self.delayed_bytes = self.delayed_bytes.saturating_sub(job.memory_bytes());
            }
            Timer::Job { .. } => self.retry_timers -= 1,
            Timer::Fire(_) => {}
        }
        Some(t)
    }

    /// The key of the job timer holding `msgid`, if any.
    pub(crate) fn find_job(&self, msgid: &str) -> Option<TimerKey> {
        self.by_due.iter().find_map(|(k, t)| matches!(t, Timer::Job { job, .. } if &*job.msgid == msgid).then_some(*k))
    }

    /// When the first timer is due.
    pub(crate) fn first_due(&self) -> Option<Instant> {
        self.by_due.keys().next().map(|k| k.0)
    }
}

impl RouterState {
    // ---- the timer structure ------------------------------------------------

    /// Adds `timer`, due at `due` (unix seconds), and returns its key.
    pub(super) fn add_timer(&mut self, due: f64, timer: Timer, now: Now) -> TimerKey {
        let wait =
            Duration::try_from_secs_f64((due - now.unix).max(0.0)).unwrap_or(Duration::from_secs(10 * 365 * 86_400));
        self.timers.insert(now.mono + wait, timer)
    }

    /// Removes the timer under `key`, keeping the delayed-job counts right.
    pub(super) fn take_timer(&mut self, key: &TimerKey) -> Option<Timer> {
        self.timers.remove(key)
    }

    /// Tick step: every timer that is due, in due order — jobs go to the
    /// front of their queue, schedules fire.
    pub(super) fn release_due_timers(&mut self, now: Now, out: &mut Vec<Action>) {
        while let Some((&key, _)) = self.timers.by_due.first_key_value() {
            if key.0 > now.mono {
                return;
            }
            if matches!(self.timers.by_due.get(&key), Some(Timer::Fire(_))) && !self.dispatching() {
                // Stopping: schedules wait for the next start (misfire policy).
                return;
            }
            match self.take_timer(&key) {
                Some(Timer::Job { queue, job }) => {
                    let queue = self.release_queue(queue, &job);
                    self.requeue(queue, job, now, out)
                }
                Some(Timer::Fire(id)) => self.fire_due(id, key, now, out),
                None => {}
            }
        }
    }

    /// The queue a job waiting since it was accepted goes to now: its own
    /// queue if that became served meanwhile.
    fn release_queue(&self, queue: String, job: &WaitingJob) -> String {
        let own = job.request.queue(&queue);
        if queue == DEFAULT_QUEUE && own != queue && self.dispatch.queues.get(own).is_some_and(|q| q.ever_served) {
            return own.to_owned();
        }
        queue
    }

    /// The due time of the first timer, for the poll timeout.
    pub(super) fn first_timer(&self) -> Option<Instant> {
        self.timers.first_due()
    }

    // ---- delayed jobs -----------------------------------------------------

    /// An accepted job with `delay:` / `eta:` waits for `due` (unix seconds).
    pub(super) fn delay_job(&mut self, queue: String, job: WaitingJob, due: f64, now: Now, out: &mut Vec<Action>) {
        debug!(msgid = %job.msgid, %queue, due, "job delayed");
        self.outcomes.history.mark(&job.msgid, JobState::Delayed, now.unix);
        out.push(Action::Journal(Record::Delayed { msgid: job.msgid.to_string(), due }));
        self.add_timer(due, Timer::Job { queue, job }, now);
    }

    /// Failed jobs waiting for their retry.
    pub fn retrying_count(&self) -> usize {
        self.timers.retry_timers
    }

    /// Delayed jobs (no dispatch behind them) waiting for their time.
    pub fn delayed_count(&self) -> usize {
        self.timers.delayed_jobs
    }

    /// `ROUTER_DELAYED`: the soonest `limit` delayed jobs.
    pub fn delayed_json(&self, limit: usize, now: Now) -> String {
        let jobs: Vec<Value> = self
            .timers
            .by_due
            .iter()
            .filter_map(|(key, t)| match t {
                Timer::Job { queue, job } if job.attempts == 0 => Some(json!({
                    "msgid": &*job.msgid,
                    "queue": job.request.queue(queue),
                    "due": now.unix + key.0.saturating_duration_since(now.mono).as_secs_f64(),
                    "callable": emq_protocol::payload_name(job.request.payload()),
                })),
                _ => None,
            })
            .take(limit)
            .collect();
        json!({"delayed": jobs, "total": self.timers.delayed_jobs, "bytes": self.timers.delayed_bytes}).to_string()
    }

    // ---- schedules ----------------------------------------------------------

    /// A client's SCHEDULE: made (or replaced), journaled, receipted, and
    /// fired at once unless `nohaste`.
    pub(super) fn on_schedule(
        &mut self,
        client: PeerId,
        msgid: String,
        order: Schedule,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let made = (|| -> Result<ScheduleState, String> {
            let timing = order.timing().map_err(|e| e.to_string())?;
            let id = order.schedule_id().map_err(|e| e.to_string())?;
            let (interval_secs, cron) = match timing {
                Timing::Interval(s) => (s as i64, String::new()),
                Timing::Cron(c) => (-1, c),
            };
            let entry = ScheduleEntry {
                id,
                queue: order.queue.clone(),
                headers: order.headers.clone(),
                interval_secs,
                cron,
                payload: order.payload.clone(),
                next_due: 0.0,
                runs: 0,
                runs_left: None,
                created: now.unix,
                user: self.user.as_deref().map(str::to_owned),
            };
            ScheduleState::from_entry(entry)
        })();
        let mut s = match made {
            Ok(s) => s,
            Err(why) => return self.refuse(&client, msgid, super::Refusal::BadSchedule(why), out),
        };
        if self.lifecycle.stopping.is_some() {
            return self.refuse(&client, msgid, super::Refusal::Stopping, out);
        }
        let id: Arc<str> = Arc::from(s.entry.id.as_str());
        if let Some(old) = self.timers.schedules.get(&id) {
            if old.entry.user.is_some() && old.entry.user.as_deref() != self.user.as_deref() {
                let why = "a schedule with this id belongs to another user".to_owned();
                return self.refuse(&client, msgid, super::Refusal::BadSchedule(why), out);
            }
        } else if self.timers.schedules.len() >= self.cfg.max_schedules {
            return self.refuse(&client, msgid, super::Refusal::BadSchedule("max_schedules reached".into()), out);
        }
        if let Some(old) = self.timers.schedules.remove(&id) {
            info!(schedule = %id, "schedule replaced");
            if let Some(k) = old.key {
                self.take_timer(&k);
            }
            s.running = old.running;
        }
        s.entry.runs_left = s.options.run_count;
        let haste = !s.options.nohaste;
        // With haste the first run is now; either way the next is an
        // interval (or the next cron match) from now.
        s.entry.next_due = s.next_after(now.unix).unwrap_or(f64::INFINITY);
        info!(peer = %client, %msgid, schedule = %id, callable = %s.callable(), queue = %s.entry.queue,
              interval = s.entry.interval_secs, cron = %s.entry.cron, headers = %s.entry.headers, "schedule made");
        out.push(Action::Journal(Record::ScheduleSet(s.entry.clone())));
        self.timers.schedules.insert(id.clone(), s);
        if self.timers.schedules[&id].entry.runs_left == Some(0) {
            self.remove_schedule(&id, "run_count:0", out);
        } else if haste {
            let next = self.timers.schedules[&id].entry.next_due;
            self.fire(&id, now.unix, next, now, out);
            self.rearm(&id, now, out);
        } else {
            self.rearm(&id, now, out);
        }
        out.push(Action::SendDurable {
            socket: SocketKind::Frontend,
            peer: client,
            message: Message::new(Command::Reply(Reply::receipt(msgid))),
        });
    }

    /// A client's UNSCHEDULE: the schedule with the same id (callable and
    /// arguments) is removed. Receipted either way (EventMQ answers nothing).
    pub(super) fn on_unschedule(&mut self, client: PeerId, msgid: String, order: Schedule, out: &mut Vec<Action>) {
        let id = match order.schedule_id() {
            Ok(id) => id,
            Err(e) => return self.refuse(&client, msgid, super::Refusal::BadSchedule(e.to_string()), out),
        };
        match self.timers.schedules.get(id.as_str()) {
            Some(s) if s.entry.user.is_some() && s.entry.user.as_deref() != self.user.as_deref() => {
                let why = "a schedule with this id belongs to another user".to_owned();
                return self.refuse(&client, msgid, super::Refusal::BadSchedule(why), out);
            }
            Some(_) => {
                info!(peer = %client, %msgid, schedule = %id, "UNSCHEDULE");
                self.remove_schedule(&id, "unscheduled", out);
            }
            None => debug!(peer = %client, %msgid, schedule = %id, "UNSCHEDULE of no schedule"),
        }
        out.push(Action::SendDurable {
            socket: SocketKind::Frontend,
            peer: client,
            message: Message::new(Command::Reply(Reply::receipt(msgid))),
        });
    }

    /// Removes schedule `id` (journaled); false when there was none.
    /// The schedule a user means by `given`: its whole id, or — as git
    /// takes commit ids — a prefix of at least [`MIN_ID_PREFIX`] characters
    /// that only one schedule's id starts with (`emq-cli schedules` shows
    /// 12). `Err` says why not (none, or which ones it could be).
    pub(super) fn schedule_id_for(&self, given: &str) -> Result<Arc<str>, String> {
        if let Some((id, _)) = self.timers.schedules.get_key_value(given) {
            return Ok(id.clone());
        }
        if given.len() < MIN_ID_PREFIX {
            return Err(format!("no schedule {given} (give at least {MIN_ID_PREFIX} characters of its id)"));
        }
        let mut found = self.timers.schedules.keys().filter(|id| id.starts_with(given));
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id.clone()),
            (None, _) => Err(format!("no schedule {given}")),
            (Some(a), Some(b)) => Err(format!(
                "{given} is ambiguous: schedules {a}, {b} and maybe more start with it; give more of the id"
            )),
        }
    }

    pub(super) fn remove_schedule(&mut self, id: &str, why: &str, out: &mut Vec<Action>) -> bool {
        let Some(s) = self.timers.schedules.remove(id) else { return false };
        if let Some(k) = s.key {
            self.take_timer(&k);
        }
        info!(schedule = %id, runs = s.entry.runs, why, "schedule removed");
        out.push(Action::Journal(Record::ScheduleRemoved { id: id.to_owned() }));
        true
    }

    /// Puts schedule `id`'s next run (its `next_due`, or its catch-up runs
    /// at once) in the timers, or removes it when it has none left.
    fn rearm(&mut self, id: &Arc<str>, now: Now, out: &mut Vec<Action>) {
        let Some(s) = self.timers.schedules.get(id) else { return };
        if s.entry.runs_left == Some(0) || !s.entry.next_due.is_finite() {
            let why = if s.entry.runs_left == Some(0) { "run_count used up" } else { "no further cron match" };
            self.remove_schedule(id, why, out);
            return;
        }
        let due = if s.catch_up.is_empty() { s.entry.next_due } else { now.unix };
        let key = self.add_timer(due, Timer::Fire(id.clone()), now);
        if let Some(s) = self.timers.schedules.get_mut(id) {
            s.key = Some(key);
        }
    }

    /// Timer step: schedule `id`'s run is due.
    fn fire_due(&mut self, id: Arc<str>, key: TimerKey, now: Now, out: &mut Vec<Action>) {
        let Some(s) = self.timers.schedules.get_mut(&id) else { return };
        if s.key != Some(key) {
            return; // replaced meanwhile
        }
        s.key = None;
        let catch_up = std::mem::take(&mut s.catch_up);
        if !catch_up.is_empty() {
            let next = s.entry.next_due;
            for due in catch_up {
                if self.timers.schedules.get(&id).is_some_and(|s| s.entry.runs_left != Some(0)) {
                    self.fire(&id, due, next, now, out);
                }
            }
            return self.rearm(&id, now, out);
        }
        let due = s.entry.next_due;
        // Late by more than a period (a stalled process): one run now, the
        // next on the schedule's own phase.
        let next = s.next_after(due).filter(|n| *n > now.unix).or_else(|| s.next_after_now(due, now.unix));
        let next = next.unwrap_or(f64::INFINITY);
        self.record_lateness(now.unix - due);
        self.fire(&id, due, next, now, out);
        self.rearm(&id, now, out);
    }

    /// One run of schedule `id`, due at `due`; its next is due at `next`.
    /// A run is skipped (not counted) while the previous one is unfinished
    /// and the schedule says `no-overlap`, or when its queue is full.
    fn fire(&mut self, id: &Arc<str>, due: f64, next: f64, now: Now, out: &mut Vec<Action>) {
        let Some(s) = self.timers.schedules.get_mut(id) else { return };
        s.entry.next_due = next;
        let skip = if s.options.no_overlap && s.running > 0 {
            Some("the previous run is unfinished (no-overlap)")
        } else {
            None
        };
        let queue_name = s.entry.queue.clone();
        let queue = self.resolve_queue(&queue_name);
        let skip = skip.or_else(|| {
            (self.cfg.hwm > 0
                && self.pick_job_manager(&queue, None).is_none()
                && self.queue_len(&queue) >= self.cfg.hwm)
                .then_some("its queue is full (hwm)")
        });
        if let Some(why) = skip {
            let s = self.timers.schedules.get_mut(id).expect("exists");
            s.skipped += 1;
            self.count("schedule_runs_skipped");
            info!(schedule = %id, due, why, "schedule run skipped");
            out.push(Action::Journal(Record::ScheduleFired {
                id: id.to_string(),
                msgid: String::new(),
                at: due,
                next_due: next,
            }));
            return;
        }
        let s = self.timers.schedules.get_mut(id).expect("exists");
        let mut headers = s.options.job_headers.clone();
        for extra in [
            (!emq_protocol::Headers::parse(&headers).reply_requested).then(|| "reply-requested".to_owned()),
            Some(format!("schedule:{id}")),
            Some(format!("fired:{due}")),
        ]
        .into_iter()
        .flatten()
        {
            if !headers.is_empty() {
                headers.push(',');
            }
            headers.push_str(&extra);
        }
        let request = Request { queue: queue_name, headers, payload: s.entry.payload.clone() };
        s.entry.runs += 1;
        if let Some(n) = s.entry.runs_left.as_mut() {
            *n = n.saturating_sub(1);
        }
        s.running += 1;
        let msgid: Arc<str> = Arc::from(emq_protocol::new_msgid().as_str());
        s.last_fire = Some(due);
        s.last_msgid = Some(msgid.clone());
        self.timers.fired.insert(msgid.clone(), id.clone());
        self.count("schedule_runs");
        debug!(schedule = %id, msgid = %msgid, due, "schedule fired");
        self.accept_internal(msgid.clone(), request, &queue, Some((id.clone(), due)), now, out);
        out.push(Action::Journal(Record::ScheduleFired {
            id: id.to_string(),
            msgid: msgid.to_string(),
            at: due,
            next_due: next,
        }));
    }

    /// Accepts a job the router made itself (a schedule's run): like a
    /// client's, with nobody to receipt.
    fn accept_internal(
        &mut self,
        msgid: Arc<str>,
        request: Request,
        queue: &str,
        schedule: Option<(Arc<str>, f64)>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let mut record = JobRecord::queued(self.queue_name(queue), now.unix);
        if let Some((id, due)) = &schedule {
            record.extra_mut().schedule = Some((Box::from(&**id), *due));
        }
        if !request.headers.is_empty() {
            // Shown in its status, as a client's job's are.
            record.extra_mut().headers = Some(request.headers.as_str().into());
        }
        let placement = match self.pick_job_manager(queue, Some((&request.headers, &request.payload))) {
            Some(jm) => super::intake::Placement::Dispatch(jm),
            None => super::intake::Placement::Buffer,
        };
        self.admit(no_client(), msgid, request, queue.to_owned(), record, placement, now, out);
    }

    /// A job ended for good: if a schedule fired it, that schedule has one
    /// unfinished run fewer.
    pub(super) fn schedule_job_finished(&mut self, msgid: &str) {
        if let Some(id) = self.timers.fired.remove(msgid) {
            if let Some(s) = self.timers.schedules.get_mut(&id) {
                s.running = s.running.saturating_sub(1);
            }
        }
    }

    fn record_lateness(&mut self, secs: f64) {
        if self.timers.lateness.len() >= LATENESS_SAMPLES {
            self.timers.lateness.pop_front();
        }
        let secs = secs.max(0.0);
        self.timers.lateness.push_back(secs as f32);
        self.telemetry.metrics.observe_fire_lateness(secs);
    }

    /// Percentiles of the last fire lateness samples, in milliseconds.
    fn lateness_json(&self) -> Value {
        let mut v: Vec<f32> = self.timers.lateness.iter().copied().collect();
        if v.is_empty() {
            return json!({"samples": 0});
        }
        v.sort_by(f32::total_cmp);
        let q = |p: f64| (v[((v.len() - 1) as f64 * p).round() as usize] as f64 * 1000.0 * 1000.0).round() / 1000.0;
        json!({"samples": v.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)})
    }

    /// Schedules (for tests and the admin views).
    pub fn schedule_count(&self) -> usize {
        self.timers.schedules.len()
    }

    /// `ROUTER_SCHEDULES`: every schedule, soonest first, with its last
    /// run's outcome, and the fire lateness.
    pub fn schedules_json(&self, now: Now) -> String {
        self.schedules_value(now, usize::MAX).to_string()
    }

    pub(super) fn schedules_value(&self, _now: Now, limit: usize) -> Value {
        let mut list: Vec<&ScheduleState> = self.timers.schedules.values().collect();
        let by_due = |a: &&ScheduleState, b: &&ScheduleState| a.entry.next_due.total_cmp(&b.entry.next_due);
        if limit < list.len() {
            // The soonest `limit` without sorting them all.
            list.select_nth_unstable_by(limit, by_due);
            list.truncate(limit);
        }
        list.sort_by(by_due);
        let items: Vec<Value> = list
            .into_iter()
            .take(limit)
            .map(|s| {
                let last_state =
                    s.last_msgid.as_ref().and_then(|m| self.outcomes.history.get(m)).map(|r| r.state.as_str());
                json!({
                    "id": s.entry.id,
                    "callable": s.callable(),
                    "queue": s.entry.queue,
                    "interval_secs": (s.entry.interval_secs >= 0).then_some(s.entry.interval_secs),
                    "cron": (s.entry.interval_secs < 0).then_some(&s.entry.cron),
                    "tz": match &s.timing { Parsed::Cron(c) => c.tz_name(), Parsed::Interval(_) => "UTC" },
                    "next_run": s.entry.next_due.is_finite().then_some(s.entry.next_due),
                    "last_run": s.last_fire,
                    "last_msgid": s.last_msgid.as_deref(),
                    "last_state": last_state,
                    "runs": s.entry.runs,
                    "runs_left": s.entry.runs_left,
                    "running": s.running,
                    "skipped": s.skipped,
                    "no_overlap": s.options.no_overlap,
                    "misfire": s.misfire(self.cfg.misfire).as_str(),
                    "headers": s.options.job_headers,
                    "created": s.entry.created,
                    "user": s.entry.user,
                })
            })
            .collect();
        json!({"schedules": items, "total": self.timers.schedules.len(), "lateness": self.lateness_json()})
    }

    // ---- restart -------------------------------------------------------------

    /// Replay: a schedule as journaled.
    pub(super) fn restore_schedule(&mut self, entry: ScheduleEntry) {
        let id: Arc<str> = Arc::from(entry.id.as_str());
        match ScheduleState::from_entry(entry) {
            Ok(s) => {
                self.timers.schedules.insert(id, s);
            }
            Err(why) => {
                self.count("schedules_unreadable");
                warn!(schedule = %id, why, "journaled schedule cannot run any more: dropped");
                self.timers.schedules.remove(&id);
            }
        }
    }

    /// Replay: a run of a schedule (or a skipped one, without a msgid).
    pub(super) fn restore_fired(&mut self, id: &str, msgid: &str, at: f64, next_due: f64) {
        let Some(s) = self.timers.schedules.get_mut(id) else { return };
        s.entry.next_due = next_due;
        if msgid.is_empty() {
            return;
        }
        s.entry.runs += 1;
        if let Some(n) = s.entry.runs_left.as_mut() {
            *n = n.saturating_sub(1);
        }
        s.last_fire = Some(at);
        s.last_msgid = Some(Arc::from(msgid));
        if let Some(r) = self.outcomes.history.get_mut(msgid) {
            r.extra_mut().schedule = Some((Box::from(id), at));
        }
    }

    /// End of a restore: each live job a schedule fired counts as its
    /// unfinished run; each schedule gets its timer, and runs missed while
    /// the router was down are queued by the misfire policy.
    pub(super) fn finish_restore_schedules(&mut self, live_fired: Vec<(Arc<str>, String)>, now: Now) -> (usize, usize) {
        for (msgid, id) in live_fired {
            if let Some((key, _)) = self.timers.schedules.get_key_value(id.as_str()) {
                let key = key.clone();
                self.timers.fired.insert(msgid, key.clone());
                if let Some(s) = self.timers.schedules.get_mut(&key) {
                    s.running += 1;
                }
            }
        }
        let ids: Vec<Arc<str>> = self.timers.schedules.keys().cloned().collect();
        let mut missed_total = 0;
        let mut drop = Vec::new();
        for id in &ids {
            let s = self.timers.schedules.get_mut(id).expect("listed");
            if s.entry.next_due < now.unix {
                let mut missed = vec![s.entry.next_due];
                while missed.len() < MAX_CATCH_UP {
                    match s.next_after(*missed.last().expect("not empty")) {
                        Some(t) if t <= now.unix => missed.push(t),
                        _ => break,
                    }
                }
                let n = missed.len();
                let policy = s.misfire(self.cfg.misfire);
                s.catch_up = match policy {
                    Misfire::Skip => Vec::new(),
                    Misfire::Once => vec![*missed.last().expect("not empty")],
                    Misfire::All => missed.clone(),
                };
                if let Some(left) = s.entry.runs_left {
                    s.catch_up.truncate(left as usize);
                }
                let last = *missed.last().expect("not empty");
                s.entry.next_due = s.next_after_now(last, now.unix).unwrap_or(f64::INFINITY);
                missed_total += n;
                info!(schedule = %id, missed = n, policy = policy.as_str(), runs_now = s.catch_up.len(),
                      "schedule missed runs while the router was down");
            }
            if s.entry.runs_left == Some(0) || !s.entry.next_due.is_finite() {
                drop.push(id.clone());
            }
        }
        let mut sink = Vec::new();
        for id in drop {
            self.remove_schedule(&id, "nothing left to run", &mut sink);
        }
        for id in self.timers.schedules.keys().cloned().collect::<Vec<_>>() {
            self.rearm(&id, now, &mut sink);
        }
        // Journal records from here are re-created by the next checkpoint;
        // a removal is repeated at the next start if it was not journaled.
        (self.timers.schedules.len(), missed_total)
    }

    /// Checkpoint: every schedule as it stands.
    pub(super) fn schedule_checkpoint_records(&self, out: &mut Vec<Record>) {
        for s in self.timers.schedules.values() {
            out.push(Record::ScheduleSet(s.entry.clone()));
        }
    }
}

#[cfg(test)]
mod room_tests {
    //! The [`Timers`] room alone: its counts follow what it holds.
    use super::{Timer, Timers};
    use crate::state::{StoredRequest, WaitingJob};
    use emq_protocol::Request;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn job(msgid: &str, attempts: u32) -> Timer {
        let request = Request { queue: "q".into(), headers: String::new(), payload: "x".repeat(100) };
        let job = WaitingJob {
            client: emq_receiver::PeerId::from("c"),
            msgid: msgid.into(),
            request: StoredRequest::new(request, "q"),
            received_ms: 0,
            attempts,
        };
        Timer::Job { queue: "q".into(), job }
    }

    #[test]
    fn counts_follow_inserts_and_removals() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let a = t.insert(t0 + Duration::from_secs(2), job("delayed", 0));
        let b = t.insert(t0 + Duration::from_secs(1), job("retry", 1));
        let c = t.insert(t0, Timer::Fire(Arc::from("sched")));
        assert_eq!((t.delayed_jobs, t.retry_timers, t.by_due.len()), (1, 1, 3));
        assert!(t.delayed_bytes >= 100);
        assert_eq!(t.first_due(), Some(t0));
        assert_eq!(t.find_job("retry"), Some(b));
        assert_eq!(t.find_job("sched"), None, "a schedule is not a job");
        assert!(t.remove(&c).is_some());
        assert!(t.remove(&c).is_none(), "a key is removed once");
        assert!(t.remove(&a).is_some());
        assert_eq!((t.delayed_jobs, t.delayed_bytes), (0, 0));
        assert!(t.remove(&b).is_some());
        assert_eq!((t.retry_timers, t.by_due.len(), t.first_due()), (0, 0, None));
    }

    #[test]
    fn timers_due_at_the_same_instant_keep_their_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let keys: Vec<_> = (0..5).map(|i| t.insert(t0, job(&format!("j{i}"), 0))).collect();
        let order: Vec<_> = t.by_due.keys().copied().collect();
        assert_eq!(keys, order);
    }
}
