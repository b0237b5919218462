//! Results a client was not there to take. A client's connection is gone
//! for a moment whenever the router restarts (its DEALER reconnects on its
//! own, a fraction of a second later) or its network blips; a job that
//! finishes in that moment used to have its result dropped ("client gone
//! before its reply"), and a client that only waits — EventMQ-style, never
//! asking JOB_STATUS — never got it. Now the result waits here and is sent
//! again at every tick until the client takes it, for up to `result_ttl`,
//! within a byte budget (past it the oldest are given up: their results
//! stay readable in the job records).
//!
//! A result kept here is journaled (`ResultPending`) and, once it went
//! out, marked again (`ResultDelivered`): a router that dies meanwhile
//! sends it again after its restart.
//!
//! Owns: [`UndeliveredResults`] and its bounds. Does not own: when ticks
//! come, or what a result is (the outcome room makes them).

use emq_protocol::{Command, Message, Reply};
use emq_receiver::PeerId;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long a result sent again after a restart waits for its client to
/// come back: it was most likely delivered before the stop (see
/// `recovery`), and a client connected then reconnects within moments —
/// one that does not is gone, so it does not hold memory for `result_ttl`.
pub const RESENT_TTL: Duration = Duration::from_secs(60);

/// Results waiting for one client.
#[derive(Debug)]
struct Backlog {
    /// When the oldest result still here first failed to go out.
    since: Instant,
    messages: VecDeque<Message>,
}

/// Results to send again, per client, with a byte budget.
#[derive(Debug, Default)]
pub struct UndeliveredResults {
    by_peer: HashMap<PeerId, Backlog>,
    bytes: usize,
    /// Results given up (budget or age) since the caller last took the count.
    given_up: u64,
    /// Msgids of the results here or sent again at the last tick (not
    /// known delivered yet).
    pending: HashSet<String>,
    /// Msgids sent again at the last tick.
    retried: Vec<String>,
    /// Msgids no longer pending (delivered, or given up), to journal.
    settled: Vec<String>,
    /// Msgids kept by [`Self::keep_resent`]: perhaps delivered before a
    /// restart; given up silently after [`RESENT_TTL`].
    resent: HashSet<String>,
}

/// Bytes of a result message as counted against the budget.
fn msgid_of(m: &Message) -> &str {
    match &m.command {
        Command::Reply(Reply::Result { orig_msgid, .. }) => orig_msgid,
        _ => "",
    }
}

fn size(m: &Message) -> usize {
    match &m.command {
        Command::Reply(Reply::Result { reply_json, orig_msgid }) => reply_json.len() + orig_msgid.len() + 64,
        _ => 64,
    }
}

impl UndeliveredResults {
    /// A result that could not reach `peer` now: kept to be sent again,
    /// unless that would go past `budget` bytes (the oldest are given up
    /// first) — a flood of vanished clients cannot grow the router.
    ///
    /// True when the result was not pending yet (the caller journals it).
    pub fn keep(&mut self, peer: PeerId, message: Message, now: Instant, budget: usize) -> bool {
        let newly = self.pending.insert(msgid_of(&message).to_owned());
        let n = size(&message);
        self.bytes += n;
        self.by_peer
            .entry(peer)
            .or_insert_with(|| Backlog { since: now, messages: VecDeque::new() })
            .messages
            .push_back(message);
        while self.bytes > budget {
            let Some(oldest) = self.by_peer.iter().min_by_key(|(_, b)| b.since).map(|(p, _)| p.clone()) else { break };
            let Some(b) = self.by_peer.get_mut(&oldest) else { break };
            match b.messages.pop_front() {
                Some(m) => {
                    self.bytes = self.bytes.saturating_sub(size(&m));
                    self.given_up += 1;
                    if self.pending.remove(msgid_of(&m)) {
                        self.settled.push(msgid_of(&m).to_owned());
                    }
                }
                None => {
                    self.by_peer.remove(&oldest);
                }
            }
        }
        newly
    }

    /// [`Self::keep`] for a result sent again after a restart, which may
    /// have reached its client before: if that client does not come back
    /// within [`RESENT_TTL`], it is dropped without counting as given up.
    pub fn keep_resent(&mut self, peer: PeerId, message: Message, now: Instant, budget: usize) -> bool {
        let id = msgid_of(&message).to_owned();
        let newly = self.keep(peer, message, now, budget);
        if newly {
            self.resent.insert(id);
        }
        newly
    }

    /// Tick step: every kept result, to send again now. Those that still
    /// cannot go come back through [`Self::keep`] and find their backlog
    /// (emptied, not removed), so they keep their age; backlogs emptied at
    /// the previous tick that nothing came back to are done. Backlogs older
    /// than `ttl` are given up instead.
    pub fn take_for_retry(&mut self, now: Instant, ttl: Duration) -> Vec<(PeerId, Message)> {
        self.by_peer.retain(|_, b| !b.messages.is_empty());
        // Sent again at the last tick and not back: delivered.
        let back: HashSet<&str> = self.by_peer.values().flat_map(|b| b.messages.iter().map(msgid_of)).collect();
        let delivered: Vec<String> = self.retried.drain(..).filter(|id| !back.contains(id.as_str())).collect();
        for id in delivered {
            if self.pending.remove(&id) {
                self.settled.push(id);
            }
        }
        let mut out = Vec::new();
        let mut given_up = Vec::new();
        let mut expired = Vec::new();
        let resent = &self.resent;
        self.by_peer.retain(|peer, b| {
            let age = now.saturating_duration_since(b.since);
            if age > ttl {
                given_up.extend(b.messages.drain(..));
                return false;
            }
            for m in b.messages.drain(..) {
                if age > RESENT_TTL && resent.contains(msgid_of(&m)) {
                    expired.push(m);
                } else {
                    out.push((peer.clone(), m));
                }
            }
            true
        });
        for m in expired {
            if self.pending.remove(msgid_of(&m)) {
                self.settled.push(msgid_of(&m).to_owned());
            }
        }
        self.given_up += given_up.len() as u64;
        for m in given_up {
            if self.pending.remove(msgid_of(&m)) {
                self.settled.push(msgid_of(&m).to_owned());
            }
        }
        self.retried = out.iter().map(|(_, m)| msgid_of(m).to_owned()).collect();
        self.bytes = 0;
        if !self.resent.is_empty() {
            let pending = &self.pending;
            self.resent.retain(|id| pending.contains(id));
        }
        out
    }

    /// Msgids no longer pending since the last call (to journal).
    pub fn take_settled(&mut self) -> Vec<String> {
        std::mem::take(&mut self.settled)
    }

    /// Msgids of the results still pending (for a checkpoint).
    pub fn pending_ids(&self) -> impl Iterator<Item = &String> {
        self.pending.iter()
    }

    /// Results given up since the last call (the caller counts them).
    pub fn take_given_up(&mut self) -> u64 {
        std::mem::take(&mut self.given_up)
    }

    /// Results waiting.
    pub fn len(&self) -> usize {
        self.by_peer.values().map(|b| b.messages.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, bytes: usize) -> Message {
        Message::new(Command::Reply(Reply::Result { reply_json: "x".repeat(bytes), orig_msgid: id.into() }))
    }

    #[test]
    fn kept_results_go_again_keep_their_age_and_are_bounded() {
        let t0 = Instant::now();
        let mut u = UndeliveredResults::default();
        assert!(u.keep(PeerId::from("c"), result("a", 10), t0, 10_000), "newly pending");
        u.keep(PeerId::from("c"), result("b", 10), t0, 10_000);
        let again = u.take_for_retry(t0 + Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(again.len(), 2);
        // One fails again: it keeps the backlog's age.
        assert!(!u.keep(PeerId::from("c"), again[1].1.clone(), t0 + Duration::from_secs(1), 10_000), "still pending");
        assert_eq!(u.len(), 1);
        // At the next round, the one that did not come back was delivered.
        let again = u.take_for_retry(t0 + Duration::from_secs(2), Duration::from_secs(60));
        assert_eq!(u.take_settled(), vec!["a".to_string()]);
        u.keep(PeerId::from("c"), again[0].1.clone(), t0 + Duration::from_secs(2), 10_000);
        // Past the ttl (counted from the first failure) it is given up.
        assert!(u.take_for_retry(t0 + Duration::from_secs(61), Duration::from_secs(60)).is_empty());
        assert_eq!((u.len(), u.take_given_up()), (0, 1));
        assert_eq!(u.take_settled(), vec!["b".to_string()], "given up: no longer pending");
        // The budget gives up the oldest first.
        for i in 0..10 {
            u.keep(PeerId::from(format!("p{i}").as_str()), result("r", 1000), t0 + Duration::from_secs(i), 5_000);
        }
        let given_up = u.take_given_up();
        assert!(u.len() <= 5 && given_up >= 5, "{} kept, {given_up} given up", u.len());
        let kept: Vec<String> = u
            .take_for_retry(t0 + Duration::from_secs(10), Duration::from_secs(60))
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert!(kept.contains(&"p9".to_string()) && !kept.contains(&"p0".to_string()), "{kept:?}");
    }

    /// A result sent again after a restart waits [`RESENT_TTL`] for its
    /// client, not the whole `result_ttl`, and is then dropped without
    /// counting as given up; a plain kept result of the same client stays.
    #[test]
    fn results_sent_again_after_a_restart_wait_a_minute_for_their_client() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3600);
        let mut u = UndeliveredResults::default();
        assert!(u.keep_resent(PeerId::from("c"), result("old", 10), t0, 10_000));
        assert!(u.keep(PeerId::from("c"), result("new", 10), t0, 10_000));
        let mut at = t0;
        let mut last = Vec::new();
        while at < t0 + RESENT_TTL + Duration::from_secs(2) {
            at += Duration::from_secs(1);
            last = u.take_for_retry(at, ttl);
            // The client is still away: every send fails and comes back.
            for (p, m) in last.clone() {
                u.keep(p, m, at, 10_000);
            }
        }
        let ids: Vec<&str> = last.iter().map(|(_, m)| msgid_of(m)).collect();
        assert_eq!(ids, vec!["new"], "the resent one is dropped after RESENT_TTL");
        assert_eq!(u.take_given_up(), 0, "not counted as given up");
        assert!(u.take_settled().contains(&"old".to_string()), "no longer pending (journaled)");
        assert!(u.resent.is_empty());
    }
}
