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
//! Owns: [`UndeliveredResults`] and its bounds. Does not own: when ticks
//! come, or what a result is (the outcome room makes them).

use emq_protocol::{Command, Message, Reply};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

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
}

/// Bytes of a result message as counted against the budget.
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
    pub fn keep(&mut self, peer: PeerId, message: Message, now: Instant, budget: usize) {
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
                }
                None => {
                    self.by_peer.remove(&oldest);
                }
            }
        }
    }

    /// Tick step: every kept result, to send again now. Those that still
    /// cannot go come back through [`Self::keep`] and find their backlog
    /// (emptied, not removed), so they keep their age; backlogs emptied at
    /// the previous tick that nothing came back to are done. Backlogs older
    /// than `ttl` are given up instead.
    pub fn take_for_retry(&mut self, now: Instant, ttl: Duration) -> Vec<(PeerId, Message)> {
        self.by_peer.retain(|_, b| !b.messages.is_empty());
        let mut out = Vec::new();
        let mut given_up = 0;
        self.by_peer.retain(|peer, b| {
            if now.saturating_duration_since(b.since) > ttl {
                given_up += b.messages.len() as u64;
                return false;
            }
            out.extend(b.messages.drain(..).map(|m| (peer.clone(), m)));
            true
        });
        self.given_up += given_up;
        self.bytes = 0;
        out
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
        u.keep(PeerId::from("c"), result("a", 10), t0, 10_000);
        u.keep(PeerId::from("c"), result("b", 10), t0, 10_000);
        let again = u.take_for_retry(t0 + Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(again.len(), 2);
        // One fails again: it keeps the backlog's age.
        u.keep(PeerId::from("c"), again[1].1.clone(), t0 + Duration::from_secs(1), 10_000);
        assert_eq!(u.len(), 1);
        // Past the ttl (counted from the first failure) it is given up.
        assert!(u.take_for_retry(t0 + Duration::from_secs(61), Duration::from_secs(60)).is_empty());
        assert_eq!((u.len(), u.take_given_up()), (0, 1));
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
}
