//! What a running job says about itself — progress, checkpoint, extend —
//! on its way from Python to the job manager, coalesced in the worker so a
//! job calling `progress()` in a tight loop costs a lock and a clock read
//! per call, not a frame.
//!
//! The job's calls only record (last progress, last checkpoint and last
//! extend win). What is recorded leaves as one [`FromWorker::Update`] (and
//! an [`FromWorker::Extend`]) at most every [`REPORT_EVERY`]: at once from
//! the calling thread when the last report is older than that, else from
//! the flusher thread ([`Reporter::run_flusher`]) when it is due. Before a
//! job's `Done` the worker calls [`Reporter::job_ended`], which sends what
//! is still pending, so the job manager has it before the job's REPLY.
//! Sends happen under the reporter's lock: a report never overtakes the
//! `Done` that follows it.

use crate::wire::FromWorker;
use emq_protocol::Progress;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// At most one report per job this often (the last one recorded wins).
pub const REPORT_EVERY: Duration = Duration::from_millis(50);

/// Where reports go: the worker's frame channel (a `Vec` in tests).
pub type Sink = Box<dyn Fn(&FromWorker) -> io::Result<()> + Send + Sync>;

/// The call came for a job that is not the one running here (it ended,
/// or it never ran in this worker).
#[derive(Debug, Clone, PartialEq)]
pub struct NotRunning(pub String);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} is not running in this worker (it ended?)", self.0)
    }
}

/// What the running job said and has not been sent yet.
#[derive(Debug, Default)]
struct Pending {
    progress: Option<Progress>,
    checkpoint: Option<String>,
    /// When the job asked, and for how many seconds from then.
    extend: Option<(Instant, f64)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.progress.is_none() && self.checkpoint.is_none() && self.extend.is_none()
    }
}

#[derive(Debug, Default)]
struct State {
    /// The msgid of the job running now.
    running: Option<String>,
    pending: Pending,
    /// When the last report of the running job left.
    last_sent: Option<Instant>,
    /// The worker is going away: the flusher returns.
    closed: bool,
}

/// The running job's reports, shared by the job's Python calls, the
/// flusher thread and the worker's job loop.
pub struct Reporter {
    state: Mutex<State>,
    wake: Condvar,
    sink: Sink,
    every: Duration,
}

impl Reporter {
    pub fn new(sink: Sink, every: Duration) -> Reporter {
        Reporter { state: Mutex::new(State::default()), wake: Condvar::new(), sink, every }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `msgid` starts: its first report goes at once.
    pub fn job_started(&self, msgid: &str) {
        let mut g = self.lock();
        g.running = Some(msgid.to_owned());
        g.pending = Pending::default();
        g.last_sent = None;
    }

    /// The running job ended: what it said and is not sent yet goes now
    /// (before the caller sends its `Done`); later calls for it fail.
    pub fn job_ended(&self, now: Instant) -> io::Result<()> {
        let mut g = self.lock();
        let r = self.send_pending(&mut g, now);
        g.running = None;
        g.pending = Pending::default();
        r
    }

    /// The job's progress (last one wins).
    pub fn progress(&self, msgid: &str, p: Progress, now: Instant) -> Result<(), NotRunning> {
        self.record(msgid, now, |pending| pending.progress = Some(p))
    }

    /// The job's checkpoint, as JSON text (last one wins).
    pub fn checkpoint(&self, msgid: &str, json: String, now: Instant) -> Result<(), NotRunning> {
        self.record(msgid, now, |pending| pending.checkpoint = Some(json))
    }

    /// The job asks for `seconds` from `now` before its timeout.
    pub fn extend(&self, msgid: &str, seconds: f64, now: Instant) -> Result<(), NotRunning> {
        self.record(msgid, now, |pending| pending.extend = Some((now, seconds)))
    }

    fn record(&self, msgid: &str, now: Instant, set: impl FnOnce(&mut Pending)) -> Result<(), NotRunning> {
        let mut g = self.lock();
        if g.running.as_deref() != Some(msgid) {
            return Err(NotRunning(msgid.to_owned()));
        }
        let was_empty = g.pending.is_empty();
        set(&mut g.pending);
        if self.due(&g, now) {
            // A broken pipe is the job loop's to see (at `Done`).
            let _ = self.send_pending(&mut g, now);
        } else if was_empty {
            // The flusher sends it when it is due.
            self.wake.notify_one();
        }
        Ok(())
    }

    fn due(&self, g: &State, now: Instant) -> bool {
        g.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= self.every)
    }

    /// Sends what is pending for the running job (under the lock).
    fn send_pending(&self, g: &mut State, now: Instant) -> io::Result<()> {
        let Some(msgid) = g.running.clone() else { return Ok(()) };
        if g.pending.is_empty() {
            return Ok(());
        }
        let p = std::mem::take(&mut g.pending);
        g.last_sent = Some(now);
        if p.progress.is_some() || p.checkpoint.is_some() {
            (self.sink)(&FromWorker::Update { msgid: msgid.clone(), progress: p.progress, checkpoint: p.checkpoint })?;
        }
        if let Some((at, seconds)) = p.extend {
            // The time it waited here is taken off: the deadline is
            // `seconds` after the job asked, not after it was sent.
            let waited = now.saturating_duration_since(at).as_secs_f64();
            (self.sink)(&FromWorker::Extend { msgid, seconds: (seconds - waited).max(0.0) })?;
        }
        Ok(())
    }

    /// One flusher step: sends what is pending if it is due. Returns how
    /// long to wait before the next step (`None`: nothing pending).
    pub fn flush_due(&self, now: Instant) -> Option<Duration> {
        let mut g = self.lock();
        self.flush_locked(&mut g, now)
    }

    fn flush_locked(&self, g: &mut State, now: Instant) -> Option<Duration> {
        if g.pending.is_empty() {
            return None;
        }
        if self.due(g, now) {
            let _ = self.send_pending(g, now);
            return None;
        }
        let last = g.last_sent.unwrap_or(now);
        Some((last + self.every).saturating_duration_since(now))
    }

    /// The flusher thread's loop: sleeps until something pending is due,
    /// sends it; returns once [`Self::close`] was called.
    pub fn run_flusher(&self) {
        let mut g = self.lock();
        loop {
            if g.closed {
                return;
            }
            g = match self.flush_locked(&mut g, Instant::now()) {
                None => self.wake.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(wait) => self.wake.wait_timeout(g, wait).unwrap_or_else(|p| p.into_inner()).0,
            };
        }
    }

    /// Ends the flusher thread.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn reporter() -> (Reporter, Arc<Mutex<Vec<FromWorker>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        let sink: Sink = Box::new(move |m| {
            s.lock().unwrap().push(m.clone());
            Ok(())
        });
        (Reporter::new(sink, REPORT_EVERY), sent)
    }

    fn progress(done: f64) -> Progress {
        Progress { done, total: Some(100.0), message: None, at: 1.0 }
    }

    fn take(sent: &Mutex<Vec<FromWorker>>) -> Vec<FromWorker> {
        std::mem::take(&mut *sent.lock().unwrap())
    }

    #[test]
    fn the_first_report_goes_at_once_then_at_most_one_per_interval_keeping_the_last() {
        let (r, sent) = reporter();
        let t0 = Instant::now();
        r.job_started("j");
        r.progress("j", progress(1.0), t0).unwrap();
        assert_eq!(
            take(&sent),
            [FromWorker::Update { msgid: "j".into(), progress: Some(progress(1.0)), checkpoint: None }]
        );
        // 100,000 calls within the interval: nothing sent, the last kept.
        for i in 0..100_000 {
            r.progress("j", progress(2.0 + i as f64), t0 + Duration::from_millis(10)).unwrap();
        }
        r.checkpoint("j", r#"{"step":1}"#.into(), t0 + Duration::from_millis(11)).unwrap();
        r.checkpoint("j", r#"{"step":2}"#.into(), t0 + Duration::from_millis(12)).unwrap();
        assert!(take(&sent).is_empty());
        assert_eq!(r.flush_due(t0 + Duration::from_millis(20)), Some(Duration::from_millis(30)), "due at 50 ms");
        assert_eq!(r.flush_due(t0 + REPORT_EVERY), None);
        assert_eq!(
            take(&sent),
            [FromWorker::Update {
                msgid: "j".into(),
                progress: Some(progress(100_001.0)),
                checkpoint: Some(r#"{"step":2}"#.into())
            }]
        );
        assert_eq!(r.flush_due(t0 + Duration::from_secs(1)), None, "nothing pending");
        assert!(take(&sent).is_empty());
    }

    #[test]
    fn what_is_pending_goes_when_the_job_ends_and_later_calls_are_refused() {
        let (r, sent) = reporter();
        let t0 = Instant::now();
        r.job_started("j");
        r.progress("j", progress(1.0), t0).unwrap();
        take(&sent);
        r.checkpoint("j", "[1]".into(), t0 + Duration::from_millis(1)).unwrap();
        r.job_ended(t0 + Duration::from_millis(2)).unwrap();
        assert_eq!(
            take(&sent),
            [FromWorker::Update { msgid: "j".into(), progress: None, checkpoint: Some("[1]".into()) }]
        );
        assert_eq!(r.progress("j", progress(2.0), t0), Err(NotRunning("j".into())));
        r.job_started("k");
        assert_eq!(r.checkpoint("j", "[2]".into(), t0), Err(NotRunning("j".into())), "another job runs now");
        assert!(take(&sent).is_empty());
    }

    #[test]
    fn an_extend_that_waited_counts_from_when_it_was_asked() {
        let (r, sent) = reporter();
        let t0 = Instant::now();
        r.job_started("j");
        r.progress("j", progress(1.0), t0).unwrap();
        take(&sent);
        r.extend("j", 5.0, t0 + Duration::from_millis(10)).unwrap();
        assert!(take(&sent).is_empty(), "within the interval");
        r.flush_due(t0 + Duration::from_millis(50));
        match take(&sent).as_slice() {
            [FromWorker::Extend { msgid, seconds }] => {
                assert_eq!(msgid, "j");
                assert!((seconds - 4.96).abs() < 1e-9, "{seconds}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_flusher_thread_sends_what_is_due_and_stops_when_closed() {
        let (r, sent) = reporter();
        let r = Arc::new(r);
        let t = {
            let r = r.clone();
            std::thread::spawn(move || r.run_flusher())
        };
        r.job_started("j");
        let now = Instant::now();
        r.progress("j", progress(1.0), now).unwrap();
        r.progress("j", progress(2.0), now).unwrap();
        let end = Instant::now() + Duration::from_secs(30);
        while take_len(&sent) < 2 {
            assert!(Instant::now() < end, "the flusher never sent the pending progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        r.close();
        t.join().unwrap();
        let got = take(&sent);
        assert!(matches!(&got[1], FromWorker::Update { progress: Some(p), .. } if p.done == 2.0), "{got:?}");
    }

    fn take_len(sent: &Mutex<Vec<FromWorker>>) -> usize {
        sent.lock().unwrap().len()
    }
}
