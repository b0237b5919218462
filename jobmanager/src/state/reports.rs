//! REPLYs the router has not confirmed yet: kept (within a byte budget) to
//! be sent again after a (re)INFORM is acknowledged, so a report lost with
//! a router that crashed, or in a dropped connection, still arrives (the
//! router ignores what it has).

use std::collections::VecDeque;

/// Bytes of unconfirmed REPLYs kept at most (oldest dropped first).
pub(super) const RECENT_REPORT_BYTES: usize = 16 << 20;

/// A REPLY kept until the router confirms it.
#[derive(Debug)]
struct RecentReport {
    /// Its number among the REPLYs sent since INFORM `epoch`.
    seq: u64,
    epoch: u64,
    msgid: String,
    reply_json: String,
}

/// The REPLYs sent and not yet confirmed by the router, oldest first, and
/// their numbering: the router's heartbeat confirms "the first N REPLYs
/// since your INFORM", so every INFORM starts a new epoch and the count
/// of REPLYs sent in it.
///
/// Keeps: `bytes` is the size (message id + reply) of the kept reports;
/// a new report drops the oldest until its reply fits the budget beside
/// the rest (one larger than the whole budget is kept alone); reports are
/// kept in the order sent, numbered 1, 2, ... within their epoch, so a
/// confirmation drops a prefix.
#[derive(Debug)]
pub(super) struct UnconfirmedReports {
    kept: VecDeque<RecentReport>,
    bytes: usize,
    budget: usize,
    /// REPLYs sent since the last INFORM (what the router counts).
    sent: u64,
    /// Bumped at every INFORM: confirmations count from there.
    epoch: u64,
}

impl UnconfirmedReports {
    /// Keeping at most `budget` bytes of reports.
    pub(super) fn with_budget(budget: usize) -> Self {
        UnconfirmedReports { kept: VecDeque::new(), bytes: 0, budget, sent: 0, epoch: 0 }
    }

    /// An INFORM went out: the router counts our REPLYs from here.
    pub(super) fn new_epoch(&mut self) {
        self.epoch += 1;
        self.sent = 0;
    }

    /// A REPLY went out: kept until confirmed. Returns how many older
    /// reports were dropped to make room (a router gone for very long).
    #[must_use]
    pub(super) fn sent(&mut self, msgid: &str, reply_json: &str) -> u64 {
        self.sent += 1;
        let mut dropped = 0;
        while self.bytes + reply_json.len() > self.budget {
            let Some(old) = self.kept.pop_front() else { break };
            self.bytes -= old.msgid.len() + old.reply_json.len();
            dropped += 1;
        }
        self.bytes += msgid.len() + reply_json.len();
        self.kept.push_back(RecentReport {
            seq: self.sent,
            epoch: self.epoch,
            msgid: msgid.to_owned(),
            reply_json: reply_json.to_owned(),
        });
        dropped
    }

    /// The router holds (durably) the first `n` REPLYs sent since our
    /// INFORM: those need not be kept any more.
    pub(super) fn confirmed(&mut self, n: u64) {
        while let Some(r) = self.kept.front() {
            if r.epoch != self.epoch || r.seq > n {
                break;
            }
            let r = self.kept.pop_front().expect("front exists");
            self.bytes -= r.msgid.len() + r.reply_json.len();
        }
    }

    /// Every kept report, oldest first, as `(msgid, reply_json)`, to be
    /// sent again now: they count as sent in this epoch again, in order.
    pub(super) fn resend(&mut self) -> impl Iterator<Item = (&str, &str)> {
        for r in self.kept.iter_mut() {
            self.sent += 1;
            r.seq = self.sent;
            r.epoch = self.epoch;
        }
        self.kept.iter().map(|r| (r.msgid.as_str(), r.reply_json.as_str()))
    }

    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgids(r: &mut UnconfirmedReports) -> Vec<String> {
        r.resend().map(|(m, _)| m.to_owned()).collect()
    }

    fn size(r: &UnconfirmedReports) -> usize {
        r.kept.iter().map(|k| k.msgid.len() + k.reply_json.len()).sum()
    }

    #[test]
    fn confirmation_drops_the_first_n_of_this_epoch_only() {
        let mut r = UnconfirmedReports::with_budget(1 << 20);
        r.new_epoch();
        for m in ["a", "b", "c"] {
            assert_eq!(r.sent(m, "{}"), 0);
        }
        r.confirmed(2);
        assert_eq!(r.len(), 1);
        assert_eq!(r.bytes, size(&r));
        // A new INFORM: a confirmation counts from it, not from before.
        r.new_epoch();
        r.confirmed(5);
        assert_eq!(r.len(), 1, "c was sent in the previous epoch");
        assert_eq!(msgids(&mut r), ["c"]);
        // Sent again, c is number 1 of this epoch.
        assert_eq!(r.sent("d", "{}"), 0);
        r.confirmed(1);
        assert_eq!(msgids(&mut r), ["d"]);
        r.confirmed(3);
        assert!(r.is_empty());
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn resend_renumbers_in_order_after_what_was_sent() {
        let mut r = UnconfirmedReports::with_budget(1 << 20);
        r.new_epoch();
        assert_eq!(r.sent("a", "1"), 0);
        assert_eq!(r.sent("b", "2"), 0);
        r.new_epoch();
        assert_eq!(r.sent("c", "3"), 0);
        let again: Vec<(String, String)> = r.resend().map(|(m, j)| (m.to_owned(), j.to_owned())).collect();
        assert_eq!(again, [("a".into(), "1".into()), ("b".into(), "2".into()), ("c".into(), "3".into())]);
        // c was 1 of this epoch, then a, b, c went again as 2, 3, 4.
        r.confirmed(3);
        assert_eq!(msgids(&mut r), ["c"]);
    }

    #[test]
    fn past_the_budget_the_oldest_are_dropped_and_counted() {
        let mut r = UnconfirmedReports::with_budget(10);
        r.new_epoch();
        assert_eq!(r.sent("a", "1234"), 0); // 5 bytes
        assert_eq!(r.sent("b", "1234"), 0); // 10 bytes
        assert_eq!(r.sent("c", "1234"), 1, "a goes to make room");
        assert_eq!(r.bytes, 10);
        assert_eq!(r.bytes, size(&r));
        // Bigger than the whole budget: kept alone.
        assert_eq!(r.sent("d", "0123456789abc"), 2);
        assert_eq!(r.bytes, 14);
        assert_eq!(r.bytes, size(&r));
        assert_eq!(msgids(&mut r), ["d"]);
        r.new_epoch();
        assert_eq!(r.sent("e", "1"), 1, "d goes: its reply no longer fits beside e's");
    }

    #[test]
    fn an_empty_store_confirms_and_resends_nothing() {
        let mut r = UnconfirmedReports::with_budget(RECENT_REPORT_BYTES);
        r.confirmed(10);
        assert!(r.is_empty());
        assert_eq!(r.resend().count(), 0);
        assert_eq!(r.sent, 0);
    }
}
