//! The leader lease, as the router sees it: a pure state machine on an
//! injected clock ([`LeaseWindow`]), and the thread that renews the lease
//! row in PostgreSQL ([`LeaseKeeper`]).
//!
//! The database's clock alone decides who may take over (a standby's
//! `UPDATE ... WHERE expires_at < clock_timestamp()`); the leader's own
//! clock only decides when it must *stop*: the local window closes at
//! `sent + ttl * 4/5`, where `sent` is when the last successful renewal
//! left this process. The database set `expires_at = clock_timestamp() +
//! ttl` at some moment after `sent`, so the local window always closes
//! before any standby can take over — a fifth of the lease earlier, which
//! covers a poll pass and clock-rate drift.

use crate::db::Db;
use crate::schema;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Renewals per lease: one every `ttl / RENEWALS_PER_LEASE`.
pub const RENEWALS_PER_LEASE: u32 = 4;

/// What the leader knows of its lease, on an injected clock.
#[derive(Debug, Clone)]
pub struct LeaseWindow {
    ttl: Duration,
    /// The local window closes here (None: not held).
    valid_until: Option<Instant>,
    /// When the last successful renewal (or the acquisition) was sent.
    renewed_sent: Option<Instant>,
    /// Set once the lease is lost for sure (another epoch holds it, or
    /// the window ran out): the router must stop and stand by.
    lost: Option<String>,
}

impl LeaseWindow {
    /// Held since an acquisition sent at `sent`.
    pub fn acquired(ttl: Duration, sent: Instant) -> LeaseWindow {
        let mut w = LeaseWindow { ttl, valid_until: None, renewed_sent: None, lost: None };
        w.renewed(sent);
        w
    }

    /// The local window for a renewal (or acquisition) sent at `sent`.
    fn window(&self, sent: Instant) -> Instant {
        sent + self.ttl * 4 / 5
    }

    /// A renewal sent at `sent` succeeded. A late answer never shortens
    /// the window, and nothing revives a lost lease.
    pub fn renewed(&mut self, sent: Instant) {
        if self.lost.is_some() {
            return;
        }
        let until = self.window(sent);
        if self.valid_until.is_none_or(|v| until > v) {
            self.valid_until = Some(until);
            self.renewed_sent = Some(sent);
        }
    }

    /// The database answered that the lease is not ours (another epoch or
    /// holder): lost at once.
    pub fn refused(&mut self, why: impl Into<String>) {
        if self.lost.is_none() {
            self.lost = Some(why.into());
        }
    }

    /// A renewal could not reach the database: nothing is known, the
    /// window stays as it was (and runs out by itself).
    pub fn unreachable(&mut self) {}

    /// When the next renewal is due.
    pub fn renewal_due(&self) -> Option<Instant> {
        self.renewed_sent.map(|s| s + self.ttl / RENEWALS_PER_LEASE)
    }

    /// Whether the router may still act as the leader at `now`; records
    /// the loss when the window has run out.
    pub fn check(&mut self, now: Instant) -> bool {
        if self.lost.is_some() {
            return false;
        }
        match self.valid_until {
            Some(v) if now < v => true,
            _ => {
                self.lost = Some("the lease window ran out before a renewal succeeded".into());
                false
            }
        }
    }

    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }

    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }
}

/// Shared between the keeper thread and the router's loop.
#[derive(Debug)]
pub struct LeaseShared {
    base: Instant,
    /// Nanoseconds after `base` at which the local window closes.
    until_nanos: AtomicU64,
    lost: AtomicBool,
    why: Mutex<Option<String>>,
    stop: AtomicBool,
    pub epoch: i64,
    pub holder: String,
    /// Renewals that succeeded / could not reach the database.
    pub renewals: AtomicU64,
    pub renewal_errors: AtomicU64,
    /// What the database said lately: `failovers`, `routers` (JSON).
    info: Mutex<serde_json::Value>,
}

impl LeaseShared {
    /// What the database said lately (failovers, the routers seen), with
    /// this lease's renewal figures.
    pub fn info(&self) -> serde_json::Value {
        let mut v = self.info.lock().map(|i| i.clone()).unwrap_or_default();
        if !v.is_object() {
            v = serde_json::json!({});
        }
        v["renewals"] = serde_json::json!(self.renewals.load(Ordering::Relaxed));
        v["renewal_errors"] = serde_json::json!(self.renewal_errors.load(Ordering::Relaxed));
        v
    }

    /// Whether this router may act as the leader now. Cheap (one atomic
    /// load and a clock read): called before every dispatch and receipt.
    pub fn valid(&self) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return false;
        }
        if (self.base.elapsed().as_nanos() as u64) < self.until_nanos.load(Ordering::Acquire) {
            return true;
        }
        // Lost for good: a renewal answered late must never reopen it
        // (the router may already have acted on the loss).
        self.lost.store(true, Ordering::Release);
        false
    }

    /// Why the lease is gone (None while it holds).
    pub fn why_lost(&self) -> Option<String> {
        if self.valid() {
            return None;
        }
        Some(self.why.lock().ok().and_then(|w| w.clone()).unwrap_or_else(|| "the lease window ran out".into()))
    }

    /// The local window's end.
    pub fn valid_until(&self) -> Instant {
        self.base + Duration::from_nanos(self.until_nanos.load(Ordering::Acquire))
    }

    fn publish(&self, w: &LeaseWindow) {
        if let Some(v) = w.valid_until() {
            let n = v.saturating_duration_since(self.base).as_nanos() as u64;
            self.until_nanos.store(n, Ordering::Release);
        }
        if let Some(why) = w.lost() {
            if let Ok(mut g) = self.why.lock() {
                g.get_or_insert_with(|| why.to_owned());
            }
            self.lost.store(true, Ordering::Release);
        }
    }
}

/// Renews the lease on its own connection until told to stop or the lease
/// is lost; on a planned stop it gives the lease up (`expires_at =
/// '-infinity'`) so a standby takes over at its next attempt.
pub struct LeaseKeeper {
    shared: Arc<LeaseShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Starts renewing a lease acquired (epoch `epoch`) by a statement sent
    /// at `sent`. `client` is a connection the keeper owns from now on.
    pub fn start(
        db: Db,
        epoch: i64,
        holder: String,
        ttl: Duration,
        sent: Instant,
        presence: (String, String),
    ) -> std::io::Result<LeaseKeeper> {
        let window = LeaseWindow::acquired(ttl, sent);
        let base = sent;
        let shared = Arc::new(LeaseShared {
            base,
            until_nanos: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            why: Mutex::new(None),
            stop: AtomicBool::new(false),
            epoch,
            holder,
            renewals: AtomicU64::new(0),
            renewal_errors: AtomicU64::new(0),
            info: Mutex::new(serde_json::json!({})),
        });
        shared.publish(&window);
        let s = shared.clone();
        let thread =
            std::thread::Builder::new().name("emq-lease".into()).spawn(move || keep(db, window, ttl, s, presence))?;
        Ok(LeaseKeeper { shared, thread: Some(thread) })
    }

    pub fn shared(&self) -> Arc<LeaseShared> {
        self.shared.clone()
    }

    /// Stops renewing and gives the lease up (a planned switchover).
    pub fn release(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn keep(mut db: Db, mut window: LeaseWindow, ttl: Duration, s: Arc<LeaseShared>, presence: (String, String)) {
    db.timeout = ttl / RENEWALS_PER_LEASE;
    let mut reachable = true;
    let mut presence_at: Option<Instant> = None;
    loop {
        if s.stop.load(Ordering::Acquire) {
            if window.check(Instant::now()) {
                let (epoch, holder) = (s.epoch, s.holder.clone());
                let r = db.call(None, |c| async move {
                    let r = c.execute(schema::RELEASE, &[&epoch, &holder]).await;
                    (c, r)
                });
                match r {
                    Ok(_) => info!(epoch = s.epoch, "lease given up for a standby"),
                    Err(e) => warn!(error = %e, "could not give the lease up; it expires by itself"),
                }
            }
            return;
        }
        let now = Instant::now();
        if !window.check(now) {
            s.publish(&window);
            warn!(epoch = s.epoch, why = window.lost().unwrap_or("-"), "leader lease lost");
            return;
        }
        let due = window.renewal_due().unwrap_or(now);
        if now < due {
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
            continue;
        }
        let sent = Instant::now();
        let (epoch, holder, secs) = (s.epoch, s.holder.clone(), ttl.as_secs_f64());
        let answer = db.prepared(schema::RENEW).and_then(|renew| {
            db.call(None, |c| async move {
                let r = c.query_opt(&renew, &[&epoch, &holder, &secs]).await;
                (c, r)
            })
        });
        match answer {
            // An answer that comes after the window closed is too late:
            // the router may already have stopped acting.
            Ok(Some(_)) if !window.check(Instant::now()) => {}
            Ok(Some(_)) => {
                window.renewed(sent);
                s.renewals.fetch_add(1, Ordering::Relaxed);
                if !reachable {
                    info!(epoch = s.epoch, "lease renewed again: the database answers");
                    reachable = true;
                }
                if presence_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
                    presence_at = Some(Instant::now());
                    // Housekeeping on a short leash: a slow database must
                    // not eat the time the next renewal needs.
                    db.timeout = ttl / (RENEWALS_PER_LEASE * 4);
                    let _ = crate::present(&mut db, &s.holder, &presence.0, &presence.1, "leader");
                    if let (Ok(l), Ok(r)) = (crate::leader(&mut db), crate::routers(&mut db)) {
                        if let Ok(mut i) = s.info.lock() {
                            *i = crate::ha_json(&l, &r);
                        }
                    }
                    db.timeout = ttl / RENEWALS_PER_LEASE;
                }
            }
            Ok(None) => {
                window.refused("another router holds the lease (a newer epoch)");
            }
            Err(e) => {
                s.renewal_errors.fetch_add(1, Ordering::Relaxed);
                window.unreachable();
                if reachable {
                    warn!(error = %e, epoch = s.epoch, "lease renewal failed; retrying until the lease window runs out");
                    reachable = false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        s.publish(&window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    #[test]
    fn renewals_keep_the_window_open_and_it_closes_before_the_database_lease() {
        let t0 = Instant::now();
        let mut w = LeaseWindow::acquired(TTL, t0);
        assert!(w.check(t0 + Duration::from_secs(3)));
        // The database's lease runs to at least t0 + 5 s; ours closes at 4 s.
        assert!(!w.clone().check(t0 + Duration::from_secs(4)));
        assert_eq!(w.renewal_due(), Some(t0 + TTL / RENEWALS_PER_LEASE));
        w.renewed(t0 + Duration::from_secs(2));
        assert!(w.check(t0 + Duration::from_millis(5900)));
        assert!(!w.check(t0 + Duration::from_secs(6)));
        assert!(w.lost().is_some(), "a closed window is lost for good");
    }

    #[test]
    fn a_late_renewal_answer_never_shortens_the_window_and_never_revives_it() {
        let t0 = Instant::now();
        let mut w = LeaseWindow::acquired(TTL, t0);
        w.renewed(t0 + Duration::from_secs(2));
        // An older renewal's answer arriving late counts from when it was sent.
        w.renewed(t0 + Duration::from_secs(1));
        assert_eq!(w.valid_until(), Some(t0 + Duration::from_secs(2) + TTL * 4 / 5));
        assert!(!w.check(t0 + Duration::from_secs(10)));
        // A renewal that was sent before the window closed but answered after: still lost.
        w.renewed(t0 + Duration::from_secs(9));
        assert!(!w.check(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn a_failed_renewal_keeps_the_window_until_it_runs_out() {
        let t0 = Instant::now();
        let mut w = LeaseWindow::acquired(TTL, t0);
        w.unreachable();
        w.unreachable();
        assert!(w.check(t0 + Duration::from_millis(3999)));
        assert!(!w.check(t0 + Duration::from_millis(4000)));
    }

    #[test]
    fn a_refused_renewal_loses_the_lease_at_once() {
        let t0 = Instant::now();
        let mut w = LeaseWindow::acquired(TTL, t0);
        w.refused("taken over");
        assert!(!w.check(t0));
        w.renewed(t0 + Duration::from_secs(1));
        assert!(!w.check(t0 + Duration::from_secs(1)));
        assert_eq!(w.lost(), Some("taken over"));
    }

    #[test]
    fn a_closed_window_never_reopens_for_the_router() {
        // The router saw the window closed (and may have acted on it): a
        // renewal answered later must not make it leader again.
        let t0 = Instant::now() - Duration::from_secs(10);
        let s = shared(t0);
        s.publish(&LeaseWindow::acquired(TTL, t0));
        assert!(!s.valid(), "closed 6 s ago");
        s.publish(&LeaseWindow::acquired(TTL, Instant::now()));
        assert!(!s.valid(), "lost for good");
    }

    fn shared(base: Instant) -> LeaseShared {
        LeaseShared {
            base,
            until_nanos: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            why: Mutex::new(None),
            stop: AtomicBool::new(false),
            epoch: 3,
            holder: "a".into(),
            renewals: AtomicU64::new(0),
            renewal_errors: AtomicU64::new(0),
            info: Mutex::new(serde_json::json!({})),
        }
    }

    #[test]
    fn lease_lost_during_a_commit_is_seen_by_the_next_check() {
        // The shared view the poll loop reads: the keeper publishes a loss
        // while the loop is between checks (mid-commit); the next check sees it.
        let t0 = Instant::now();
        let w = LeaseWindow::acquired(TTL, t0);
        let s = shared(t0);
        s.publish(&w);
        assert!(s.valid());
        let mut w2 = w.clone();
        w2.refused("epoch 4 holds it");
        s.publish(&w2);
        assert!(!s.valid());
        assert_eq!(s.why_lost().as_deref(), Some("epoch 4 holds it"));
    }
}
