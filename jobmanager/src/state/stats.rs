//! The pool's figures, shown in its health: jobs done and failed, worker
//! replacements and anomalies by kind, jobs per worker pid, the average run
//! time (which drives prefetching) and per-callable figures.

use emq_protocol::{CallableHealth, RunPayload};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Worker pids whose job counts are kept at most.
pub(super) const PID_HISTORY: usize = 4096;
/// Callables tracked at most (others count under `other`).
pub(super) const MAX_CALLABLES: usize = 200;
/// Run times kept per callable.
pub(super) const CALLABLE_SAMPLES: usize = 512;

/// The pool's counters since the job manager started.
///
/// Owns: jobs done and failed, worker replacements (`restarts`) and
/// anomalies (`errors`) by kind, jobs per worker pid, the moving average of
/// run times, and the per-callable figures (`Callables`).
///
/// Keeps: counters only grow; `jobs_by_pid` holds at most `PID_HISTORY`
/// (4096) pids (past it the lowest pid goes: pids mostly grow, so that is
/// usually the oldest worker); `job_secs_avg` moves only with a finished
/// run.
#[derive(Debug, Default)]
pub struct PoolStats {
    jobs_by_pid: BTreeMap<u32, u64>,
    restarts: BTreeMap<&'static str, u64>,
    jobs_ok: u64,
    jobs_failed: u64,
    /// Moving average of job run time, seconds.
    job_secs_avg: f64,
    /// Runs finished (the first one sets the average).
    runs: u64,
    /// Moving average of received payloads' size, bytes (0: none yet).
    payload_bytes_avg: usize,
    errors: BTreeMap<&'static str, u64>,
    callables: Callables,
}

impl PoolStats {
    /// Jobs completed per worker pid (the most recent pids).
    pub fn jobs_by_pid(&self) -> &BTreeMap<u32, u64> {
        &self.jobs_by_pid
    }

    /// Worker replacements by reason: died, timeout, recycled...
    pub fn restarts(&self) -> &BTreeMap<&'static str, u64> {
        &self.restarts
    }

    pub fn jobs_ok(&self) -> u64 {
        self.jobs_ok
    }

    pub fn jobs_failed(&self) -> u64 {
        self.jobs_failed
    }

    /// Moving average of job run time, seconds (drives prefetch).
    pub fn job_secs_avg(&self) -> f64 {
        self.job_secs_avg
    }

    /// Runs finished so far.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// Moving average of received job payloads' size in bytes (bounds
    /// what prefetching may hold); 0 before the first.
    pub fn payload_bytes_avg(&self) -> usize {
        self.payload_bytes_avg
    }

    /// A job of `bytes` of payload arrived.
    pub(super) fn payload_received(&mut self, bytes: usize) {
        self.payload_bytes_avg = match self.payload_bytes_avg {
            0 => bytes,
            avg => avg - avg / 10 + bytes / 10,
        };
    }

    /// Anomalies by kind (bad frames, refusals...).
    pub fn errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.errors
    }

    /// A worker (pid 0: unknown) finished a run of `callable` in `secs`.
    pub(super) fn run_finished(&mut self, pid: u32, callable: &Arc<str>, secs: f64, failed: bool) {
        // The first run is the average (from 0 it would take ten runs of
        // long jobs to stop prefetching them).
        self.job_secs_avg = if self.runs == 0 { secs } else { 0.9 * self.job_secs_avg + 0.1 * secs };
        self.runs += 1;
        self.callables.count(callable, secs, failed);
        if failed {
            self.jobs_failed += 1;
        } else {
            self.jobs_ok += 1;
        }
        *self.jobs_by_pid.entry(pid).or_insert(0) += 1;
        if self.jobs_by_pid.len() > PID_HISTORY {
            let lowest = *self.jobs_by_pid.keys().next().expect("non-empty");
            self.jobs_by_pid.remove(&lowest);
        }
    }

    /// A job answered as failed without a run of its own (refused,
    /// cancelled, timed out, killed, its worker died).
    pub(super) fn job_failed(&mut self) {
        self.jobs_failed += 1;
    }

    /// A worker replaced, for `reason`.
    pub(super) fn restart(&mut self, reason: &'static str) {
        *self.restarts.entry(reason).or_insert(0) += 1;
    }

    /// One anomaly of `kind`.
    pub(super) fn error(&mut self, kind: &'static str) {
        self.errors_of(kind, 1);
    }

    /// `n` anomalies of `kind` (none: nothing recorded, not even the kind).
    pub(super) fn errors_of(&mut self, kind: &'static str, n: u64) {
        if n > 0 {
            *self.errors.entry(kind).or_insert(0) += n;
        }
    }

    /// The name a job's callable is counted under: see [`Callables::name_for`].
    pub(super) fn callable_name(&self, p: &RunPayload) -> Arc<str> {
        self.callables.name_for(&p.path, &p.callable)
    }

    /// The name a command job is counted under: `command:PROGRAM`, in the
    /// same table as callables (health, `emq-cli`, the dashboard).
    pub(super) fn command_name(&self, program: &str) -> Arc<str> {
        self.callables.named(format!("command:{program}"))
    }

    /// The per-callable figures, most run first.
    pub(super) fn callable_health(&self) -> Vec<CallableHealth> {
        self.callables.health()
    }
}

/// Figures of one callable.
#[derive(Debug, Default)]
struct CallableStats {
    runs: u64,
    failed: u64,
    /// The last run times, seconds.
    recent: VecDeque<f32>,
}

/// Per callable (`module.func`): runs, failures, the last run times.
///
/// Keeps: each callable holds at most [`CALLABLE_SAMPLES`] run times (the
/// last ones); a new name is handed out ([`Self::name_for`]) only while
/// fewer than [`MAX_CALLABLES`] are tracked, later ones count under
/// `other`. (Names handed out before the table filled are still counted,
/// so it may hold a few more.)
#[derive(Debug, Default)]
struct Callables(HashMap<Arc<str>, CallableStats>);

impl Callables {
    /// The name `path.callable` is counted under: shared with the table
    /// (one allocation per callable); `other` once [`MAX_CALLABLES`] are
    /// tracked.
    fn name_for(&self, path: &str, callable: &str) -> Arc<str> {
        self.named(format!("{path}.{callable}"))
    }

    /// The shared name `name` is counted under (`other` past the limit).
    fn named(&self, name: String) -> Arc<str> {
        if let Some((k, _)) = self.0.get_key_value(name.as_str()) {
            return k.clone();
        }
        if self.0.len() >= MAX_CALLABLES {
            return Arc::from("other");
        }
        Arc::from(name.as_str())
    }

    /// One finished run of `callable`.
    fn count(&mut self, callable: &Arc<str>, secs: f64, failed: bool) {
        let s = self.0.entry(callable.clone()).or_default();
        s.runs += 1;
        s.failed += u64::from(failed);
        if s.recent.len() >= CALLABLE_SAMPLES {
            s.recent.pop_front();
        }
        s.recent.push_back(secs as f32);
    }

    /// Runs, failures and p50 / p99 of the recent run times, most run first.
    fn health(&self) -> Vec<CallableHealth> {
        let mut v: Vec<CallableHealth> = self
            .0
            .iter()
            .map(|(name, s)| {
                let mut t: Vec<f32> = s.recent.iter().copied().collect();
                t.sort_by(f32::total_cmp);
                let q = |p: f64| {
                    t.get(((t.len().max(1) - 1) as f64 * p).round() as usize).map_or(0.0, |x| *x as f64 * 1000.0)
                };
                CallableHealth {
                    name: name.to_string(),
                    runs: s.runs,
                    failed: s.failed,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                }
            })
            .collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.runs));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_count_ok_failed_per_pid_and_move_the_average() {
        let mut s = PoolStats::default();
        let f: Arc<str> = Arc::from("m.f");
        s.run_finished(7, &f, 1.0, false);
        s.run_finished(7, &f, 1.0, true);
        s.run_finished(0, &f, 1.0, false);
        s.job_failed();
        assert_eq!((s.jobs_ok(), s.jobs_failed()), (2, 2));
        assert_eq!(s.jobs_by_pid().get(&7), Some(&2));
        assert_eq!(s.jobs_by_pid().get(&0), Some(&1));
        assert!((s.job_secs_avg() - 1.0).abs() < 1e-9, "the first run sets the average");
        assert_eq!(s.runs(), 3);
        s.run_finished(7, &f, 0.0, false);
        assert!((s.job_secs_avg() - 0.9).abs() < 1e-9, "then it moves a tenth of the way");
        let h = s.callable_health();
        assert_eq!((h.len(), h[0].runs, h[0].failed), (1, 4, 1));
    }

    #[test]
    fn jobs_by_pid_keeps_the_most_recent_pids() {
        let mut s = PoolStats::default();
        let f: Arc<str> = Arc::from("m.f");
        for pid in 1..=(PID_HISTORY as u32 + 10) {
            s.run_finished(pid, &f, 0.0, false);
        }
        assert_eq!(s.jobs_by_pid().len(), PID_HISTORY);
        assert_eq!(s.jobs_by_pid().keys().next(), Some(&11), "the lowest pids went");
        assert_eq!(s.jobs_ok(), PID_HISTORY as u64 + 10, "counted all the same");
    }

    #[test]
    fn restarts_and_errors_count_by_kind_and_zero_errors_record_nothing() {
        let mut s = PoolStats::default();
        s.restart("died");
        s.restart("died");
        s.error("refused_jobs");
        s.errors_of("unconfirmed_reports_dropped", 0);
        s.errors_of("unconfirmed_reports_dropped", 3);
        s.errors_of("router_lost", 0);
        assert_eq!(s.restarts().get("died"), Some(&2));
        assert_eq!(s.errors().get("refused_jobs"), Some(&1));
        assert_eq!(s.errors().get("unconfirmed_reports_dropped"), Some(&3));
        assert!(!s.errors().contains_key("router_lost"));
    }

    #[test]
    fn callable_names_are_shared_and_past_the_limit_are_other() {
        let mut c = Callables::default();
        let a = c.name_for("m", "a");
        c.count(&a, 0.1, false);
        assert!(Arc::ptr_eq(&a, &c.name_for("m", "a")), "one allocation per callable");
        for i in 1..MAX_CALLABLES {
            let n = c.name_for("m", &format!("f{i}"));
            c.count(&n, 0.1, false);
        }
        assert_eq!(c.0.len(), MAX_CALLABLES);
        assert_eq!(&*c.name_for("m", "new"), "other");
        assert_eq!(&*c.name_for("m", "a"), "m.a", "a tracked one keeps its name");
    }

    #[test]
    fn callable_samples_are_bounded_and_give_percentiles() {
        let mut c = Callables::default();
        let f: Arc<str> = Arc::from("m.f");
        for i in 0..(CALLABLE_SAMPLES + 100) {
            c.count(&f, i as f64 / 1000.0, i % 2 == 1);
        }
        assert_eq!(c.0[&f].recent.len(), CALLABLE_SAMPLES);
        assert_eq!(c.0[&f].recent.front(), Some(&0.1), "the oldest went");
        let h = c.health();
        assert_eq!((h[0].runs, h[0].failed), (CALLABLE_SAMPLES as u64 + 100, (CALLABLE_SAMPLES as u64 + 100) / 2));
        assert!((h[0].p50_ms - 356.0).abs() < 1.0, "{}", h[0].p50_ms);
        assert!(h[0].p99_ms > h[0].p50_ms);
    }

    #[test]
    fn callable_health_lists_the_most_run_first() {
        let mut c = Callables::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("m.a"), Arc::from("m.b"));
        c.count(&a, 0.0, false);
        c.count(&b, 0.0, false);
        c.count(&b, 0.0, false);
        let names: Vec<String> = c.health().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["m.b", "m.a"]);
        assert!(Callables::default().health().is_empty());
    }
}
