//! When the job manager's gathered REPLYs / READYs / updates go out
//! (`reply_linger`): at the end of every poll pass, unless the job manager is
//! backlogged ([`super::JobManagerState::backlogged`]: a job waiting per
//! worker and half of what it may hold) and the oldest of them is younger
//! than the linger — then the router's answer (more work) is not needed for
//! a while, and the next passes' REPLYs join the same BATCH. Under load
//! that is fewer messages, wake-ups and journal group commits per job (in
//! the job manager, the router's main, journal and events threads and both
//! sides' ZeroMQ I/O threads); an idle or draining job manager's REPLY never
//! waits. Pure: the caller passes the clock.

use std::time::{Duration, Instant};

/// What to do with the gathered batch at the end of a poll pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerDecision {
    /// Nothing is gathered.
    Nothing,
    /// Send it now.
    Send,
    /// Keep it; poll again at most this long before deciding anew.
    Wait(Duration),
}

/// The batch's age and the decision at each pass's end.
#[derive(Debug, Default)]
pub struct ReplyLinger {
    /// When the unsent batch got its first item.
    since: Option<Instant>,
}

impl ReplyLinger {
    /// Decides at the end of a pass: `pending` — something is gathered;
    /// `backlogged` — [`super::JobManagerState::backlogged`]; `linger` — the setting.
    pub fn decide(&mut self, pending: bool, backlogged: bool, linger: Duration, now: Instant) -> LingerDecision {
        if !pending {
            self.since = None;
            return LingerDecision::Nothing;
        }
        let since = *self.since.get_or_insert(now);
        let deadline = since.checked_add(linger).unwrap_or(now);
        if linger.is_zero() || !backlogged || now >= deadline {
            self.since = None;
            return LingerDecision::Send;
        }
        LingerDecision::Wait(deadline - now)
    }

    /// The batch went out for another reason (a message that must follow
    /// it, a reconnect, the exit).
    pub fn sent(&mut self) {
        self.since = None;
    }

    /// How long the next poll may wait before the lingering batch is due
    /// (`None`: nothing lingers).
    pub fn due_in(&self, linger: Duration, now: Instant) -> Option<Duration> {
        let since = self.since?;
        Some(since.checked_add(linger).unwrap_or(now).saturating_duration_since(now))
    }
}

/// When the workers' pipes are next read, while
/// [`super::JobManagerState::worker_read_holdoff`] lets them go unread:
/// polls alternate between one without the workers' pipes (waiting at most
/// the holdoff, still woken by the router and signals) and one with them,
/// which reads every `Done` that piled up in one wake-up.
#[derive(Debug, Default)]
pub struct WorkerReadHoldoff {
    /// The pipes are left out of polls until then.
    until: Option<Instant>,
}

impl WorkerReadHoldoff {
    /// Before a poll: `Some(wait)` — leave the workers' pipes out of it and
    /// wait at most `wait`; `None` — poll them. `holdoff` is what the state
    /// allows now: when it allows nothing any more (a worker went idle,
    /// the backlog is gone), the pipes are read at once.
    pub fn before_poll(&mut self, holdoff: Option<Duration>, now: Instant) -> Option<Duration> {
        match (self.until, holdoff) {
            (Some(t), Some(_)) if now < t => Some(t - now),
            (Some(_), _) => {
                self.until = None;
                None
            }
            (None, Some(d)) => {
                self.until = now.checked_add(d);
                self.until.map(|_| d)
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_millis(5);

    #[test]
    fn an_idle_job_managers_reply_goes_at_once() {
        let t0 = Instant::now();
        let mut l = ReplyLinger::default();
        assert_eq!(l.decide(true, false, L, t0), LingerDecision::Send);
        assert_eq!(l.due_in(L, t0), None);
    }

    #[test]
    fn a_backlogged_batch_waits_until_its_first_item_is_linger_old() {
        let t0 = Instant::now();
        let mut l = ReplyLinger::default();
        assert_eq!(l.decide(true, true, L, t0), LingerDecision::Wait(L));
        // Later passes add to it; the deadline stays the first item's.
        let t1 = t0 + Duration::from_millis(3);
        assert_eq!(l.decide(true, true, L, t1), LingerDecision::Wait(Duration::from_millis(2)));
        assert_eq!(l.due_in(L, t1), Some(Duration::from_millis(2)));
        assert_eq!(l.decide(true, true, L, t0 + L), LingerDecision::Send);
        // The next batch starts its own clock.
        let t2 = t0 + Duration::from_millis(7);
        assert_eq!(l.decide(true, true, L, t2), LingerDecision::Wait(L));
    }

    #[test]
    fn the_backlog_running_out_sends_a_waiting_batch_at_once() {
        let t0 = Instant::now();
        let mut l = ReplyLinger::default();
        assert_eq!(l.decide(true, true, L, t0), LingerDecision::Wait(L));
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(l.decide(true, false, L, t1), LingerDecision::Send);
    }

    #[test]
    fn zero_linger_never_waits_and_nothing_gathered_resets() {
        let t0 = Instant::now();
        let mut l = ReplyLinger::default();
        assert_eq!(l.decide(true, true, Duration::ZERO, t0), LingerDecision::Send);
        assert_eq!(l.decide(true, true, L, t0), LingerDecision::Wait(L));
        assert_eq!(l.decide(false, true, L, t0 + Duration::from_millis(1)), LingerDecision::Nothing);
        assert_eq!(l.due_in(L, t0), None);
        // Sent for another reason: the clock restarts with the next item.
        assert_eq!(l.decide(true, true, L, t0 + Duration::from_millis(2)), LingerDecision::Wait(L));
        l.sent();
        assert_eq!(l.due_in(L, t0), None);
    }

    #[test]
    fn a_huge_linger_cannot_overflow_the_clock() {
        let t0 = Instant::now();
        let mut l = ReplyLinger::default();
        assert!(matches!(l.decide(true, true, Duration::MAX, t0), LingerDecision::Send | LingerDecision::Wait(_)));
        let _ = l.due_in(Duration::MAX, t0);
    }

    const H: Duration = Duration::from_millis(2);

    #[test]
    fn worker_pipes_are_read_after_each_holdoff() {
        let t0 = Instant::now();
        let mut h = WorkerReadHoldoff::default();
        // Nothing allowed: read them.
        assert_eq!(h.before_poll(None, t0), None);
        // Allowed: a poll without them, at most the holdoff.
        assert_eq!(h.before_poll(Some(H), t0), Some(H));
        // Woken early (the router): the rest of it.
        let t1 = t0 + Duration::from_micros(500);
        assert_eq!(h.before_poll(Some(H), t1), Some(H - Duration::from_micros(500)));
        // Over: read them, once, whatever is allowed.
        assert_eq!(h.before_poll(Some(H), t0 + H), None);
        // Then the next holdoff starts.
        assert_eq!(h.before_poll(Some(H), t0 + H), Some(H));
    }

    #[test]
    fn a_holdoff_no_longer_allowed_ends_at_once() {
        let t0 = Instant::now();
        let mut h = WorkerReadHoldoff::default();
        assert_eq!(h.before_poll(Some(H), t0), Some(H));
        // A worker went idle, or the backlog is gone: read them now.
        assert_eq!(h.before_poll(None, t0 + Duration::from_micros(100)), None);
        assert_eq!(h.before_poll(None, t0 + Duration::from_micros(200)), None);
    }
}
