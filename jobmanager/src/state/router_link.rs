//! The router link: connecting (with failover), INFORM until ACK, what the
//! router sends us (REQUESTs above all), and the READY reconcile that keeps
//! the router's count of our free slots right.

use super::{Action, JobManagerState, QueuedJob, SlotState};
use emq_protocol::{Command, Inform, JobErrorKind, JobReply, Message, Request, RunPayload};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// INFORM sent, no ACK yet.
    Informing {
        sent_at: Instant,
    },
    Acked,
}

/// The conversation with the router, apart from the REPLYs it has yet to
/// confirm ([`super::reports::UnconfirmedReports`]).
///
/// Owns: the phase (INFORM sent at a time, or ACKed), which of the
/// router addresses is in use, when the router was last heard from and
/// when our last heartbeat went, how many free slots the router thinks we
/// have (`announced`), and whether it takes BATCH messages.
///
/// Keeps: `announced` counts READYs sent minus REQUESTs received since
/// the last ACK, is 0 until an ACK and again from every INFORM, and never
/// goes below 0; READYs go out only once ACKed; `batches` holds only
/// between an ACK and the next INFORM (the router says so in a heartbeat).
#[derive(Debug)]
pub(super) struct RouterLink {
    phase: Phase,
    /// Index into the router addresses, modulo their number.
    addr_index: usize,
    last_heard: Instant,
    last_heartbeat: Instant,
    announced: u64,
    /// The router takes BATCH messages (it said so in a heartbeat after our
    /// INFORM): the poll loop may coalesce our REPLYs and READYs.
    batches: bool,
}

impl RouterLink {
    /// Not connected yet: as if an INFORM went at `now`.
    pub(super) fn new(now: Instant) -> Self {
        RouterLink {
            phase: Phase::Informing { sent_at: now },
            addr_index: 0,
            last_heard: now,
            last_heartbeat: now,
            announced: 0,
            batches: false,
        }
    }

    /// The address in use among `addrs` (not empty).
    pub(super) fn addr<'a>(&self, addrs: &'a [String]) -> &'a str {
        &addrs[self.addr_index % addrs.len()]
    }

    /// Fail over to the next address.
    pub(super) fn next_addr(&mut self) {
        self.addr_index += 1;
    }

    /// Back to the first address (new addresses).
    pub(super) fn first_addr(&mut self) {
        self.addr_index = 0;
    }

    /// The router was heard from.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// How long the router has been silent.
    pub(super) fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// An INFORM went out at `now`: no ACK, no slot announced, no BATCH
    /// until the router says so again.
    pub(super) fn inform_sent(&mut self, now: Instant) {
        self.phase = Phase::Informing { sent_at: now };
        self.announced = 0;
        self.batches = false;
    }

    /// When the INFORM waiting for its ACK went (`None`: ACKed).
    pub(super) fn informing_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Informing { sent_at } => Some(sent_at),
            Phase::Acked => None,
        }
    }

    pub(super) fn is_acked(&self) -> bool {
        self.phase == Phase::Acked
    }

    /// An ACK arrived: whether it is the first since the INFORM (then the
    /// slots are announced from scratch and a heartbeat goes at once).
    pub(super) fn acked(&mut self, now: Instant) -> bool {
        if self.phase == Phase::Acked {
            return false;
        }
        self.phase = Phase::Acked;
        self.announced = 0;
        self.last_heartbeat = now;
        true
    }

    /// Whether a heartbeat is due (ACKed, `interval` since the last one);
    /// if so it counts as sent now.
    pub(super) fn heartbeat_due(&mut self, now: Instant, interval: Duration) -> bool {
        if self.phase == Phase::Acked && now.saturating_duration_since(self.last_heartbeat) >= interval {
            self.last_heartbeat = now;
            return true;
        }
        false
    }

    /// The router said (in a heartbeat) it takes BATCH messages; heeded
    /// only once ACKed.
    pub(super) fn router_takes_batches(&mut self) {
        if self.phase == Phase::Acked {
            self.batches = true;
        }
    }

    pub(super) fn batches(&self) -> bool {
        self.batches
    }

    /// A REQUEST arrived: the router counts one free slot fewer.
    pub(super) fn requested(&mut self) {
        self.announced = self.announced.saturating_sub(1);
    }

    /// READYs to send so the router counts `available` free slots: none
    /// before the ACK, none to take slots back (REQUESTs do that).
    pub(super) fn readies_for(&mut self, available: u64) -> u64 {
        if self.phase != Phase::Acked || self.announced >= available {
            return 0;
        }
        let n = available - self.announced;
        self.announced = available;
        n
    }
}

impl JobManagerState {
    /// Replaces the router socket (a new identity) and INFORMs; the router
    /// forgets our slots with the old identity, so none is announced yet.
    pub(super) fn connect(&mut self, now: Instant, out: &mut Vec<Action>) {
        let addr = self.link.addr(&self.cfg.addrs).to_owned();
        info!(%addr, "connecting to router");
        out.push(Action::Connect { addr });
        self.link.heard(now);
        self.send_inform(now, out);
    }

    pub(super) fn send_inform(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.link.inform_sent(now);
        // The router counts our REPLYs from this INFORM on.
        self.reports.new_epoch();
        out.push(Action::Send(Message::new(Command::Inform(Inform {
            queues: self.cfg.queues.clone(),
            kind: "worker".into(),
            // We REPLY for every job: the router can track ours exactly.
            // And we send the REPLYs and READYs of a poll pass as one BATCH
            // once the router says it takes them.
            // And what we run (allowed_paths): the router hands us only
            // jobs we allow, instead of jobs we would refuse.
            // And where jobs sent `requires:` / `on:` may go: our labels
            // and name. And that we run command jobs, when some are allowed.
            features: Some({
                let mut f = vec![emq_protocol::FEATURE_REPORTS_ALL.to_owned(), emq_protocol::FEATURE_BATCH.to_owned()];
                f.extend(emq_protocol::allow_feature(&self.cfg.allowed_paths));
                if !self.cfg.allowed_commands.is_empty() {
                    f.push(emq_protocol::FEATURE_COMMANDS.to_owned());
                }
                f.extend(emq_protocol::placement_features(&self.cfg.labels, &self.name));
                f.join(",")
            }),
        }))));
    }

    /// The connection dropped and came back: the router may have
    /// restarted and not know us. INFORM again under the same identity (a
    /// router that does know us takes it as "still here, with these jobs").
    pub(super) fn on_router_reconnected(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.lifecycle.is_stopping() {
            return;
        }
        info!("connection to the router came back: INFORM again");
        self.link.heard(now);
        self.send_inform(now, out);
    }

    /// The connection dropped. With one address ZeroMQ reconnects to it by
    /// itself; with a leader and standbys the leader is likely gone: try
    /// the next address at once instead of waiting for the silence limit.
    pub(super) fn on_router_disconnected(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.lifecycle.is_stopping() || self.cfg.addrs.len() < 2 {
            return;
        }
        info!("connection to the router dropped: trying the next address");
        self.link.next_addr();
        self.connect(now, out);
    }

    pub(super) fn on_router(&mut self, m: Message, now: Instant, out: &mut Vec<Action>) {
        self.link.heard(now);
        match m.command {
            Command::Ack(_) => {
                // Announced from scratch by the reconcile that follows.
                if self.link.acked(now) {
                    info!(msgid = %m.msgid, "router acknowledged INFORM");
                    // At once: the health says which jobs we hold, so a
                    // router that restarted settles them instead of running
                    // them again; then the reports it may have missed.
                    out.push(Action::Heartbeat(self.health(now)));
                    self.resend_recent_reports(out);
                }
            }
            Command::Request(request) => self.on_request(m.msgid, request, out),
            // Our router: a poll pass's REQUESTs in one message.
            Command::Requests(batch) => {
                for (msgid, request) in batch.jobs {
                    self.on_request(msgid, request, out);
                }
            }
            Command::Admin(emq_protocol::AdminCommand::Cancel { job_msgid }) => self.on_cancel(&job_msgid, now, out),
            Command::Heartbeat(hb) => {
                // Our router says how many of our REPLYs it holds durably.
                if self.link.is_acked() {
                    if let Some(n) = hb.health.as_deref().and_then(confirmed_reports) {
                        self.reports.confirmed(n);
                    }
                    if hb.health.as_deref().is_some_and(|h| h.contains(r#""batch":true"#)) {
                        self.link.router_takes_batches();
                    }
                }
            }
            Command::Kbye | Command::Disconnect if !self.lifecycle.is_stopping() => {
                // A router that says goodbye is going away: with several
                // addresses (a leader and standbys), try the next one.
                self.link.next_addr();
                info!(command = m.command.name(), "router said goodbye: reconnecting");
                self.connect(now, out);
            }
            Command::Kbye | Command::Disconnect => {}
            other => {
                self.stats.error("unexpected_router_command");
                warn!(msgid = %m.msgid, command = other.name(), "unexpected command from router");
            }
        }
    }

    /// A job from the router: refused at once (answered here, its slot
    /// announced again), or queued locally to be handed out.
    fn on_request(&mut self, msgid: String, request: Request, out: &mut Vec<Action>) {
        self.link.requested();
        self.stats.payload_received(request.payload.len());
        let (callable, refusal) = if emq_protocol::payload_is_command(&request.payload) {
            self.check_command(&request.payload)
        } else {
            let parsed = RunPayload::parse(&request.payload);
            let callable = match &parsed {
                Ok(p) => self.stats.callable_name(p),
                Err(_) => std::sync::Arc::from("?"),
            };
            let refusal = match parsed {
                Err(e) => Some((JobErrorKind::BadPayload, e.to_string())),
                Ok(p) if !self.cfg.allowed(&p) => Some((
                    JobErrorKind::Refused,
                    format!("module {:?} is not in allowed_paths {:?}", p.module_and_class().0, self.cfg.allowed_paths),
                )),
                Ok(_) => None,
            };
            (callable, refusal)
        };
        let refusal = refusal.or_else(|| {
            (self.lifecycle.is_stopping() && self.workers.idle_slot().is_none())
                .then(|| (JobErrorKind::Refused, "job manager is shutting down".into()))
        });
        if let Some((kind, message)) = refusal {
            self.stats.error("refused_jobs");
            self.stats.job_failed();
            warn!(%msgid, queue = %request.queue, error = %message, "job refused");
            self.send_reply(&msgid, JobReply::failed(kind, message, ""), out);
            return;
        }
        debug!(%msgid, queue = %request.queue, "job received");
        let headers = request.headers();
        let queue = request.queue.clone();
        let job = QueuedJob {
            msgid,
            queue: request.queue,
            callable,
            payload: request.payload,
            timeout: self.cfg.timeout_for(&headers),
            attempt: headers.attempt.unwrap_or(1),
            checkpoint: headers.checkpoint,
        };
        self.enqueue(job, false);
        self.steal_for_priority(&queue, out);
    }

    /// A command job: the name it is counted under (`command:/bin/echo`)
    /// and why it may not run here, if so — not valid, or its program not
    /// in `allowed_commands` (nothing runs; the worker checks again).
    fn check_command(&mut self, payload: &str) -> (std::sync::Arc<str>, Option<(JobErrorKind, String)>) {
        let cmd = match emq_protocol::CommandPayload::parse(payload) {
            Ok(c) => c,
            Err(e) => return (std::sync::Arc::from("?"), Some((JobErrorKind::BadPayload, e))),
        };
        match emq_pool::command::check(&cmd, &self.cfg.allowed_commands) {
            Ok(program) => (self.stats.command_name(&program.to_string_lossy()), None),
            Err(e) => (self.stats.command_name(cmd.program()), Some((JobErrorKind::Refused, e))),
        }
    }

    /// Sends READYs until the router's count of our free slots matches the
    /// idle workers not spoken for by locally queued jobs. Idempotent;
    /// nothing before the ACK or while stopping.
    pub(super) fn reconcile(&mut self, out: &mut Vec<Action>) {
        if !self.link.is_acked() || self.lifecycle.is_stopping() {
            return;
        }
        let depth = self.cfg.worker_pipeline.max(1) as u64;
        let mut capacity = self.prefetch_in_force() as u64;
        let mut held = self.workers.queued().len() as u64;
        for s in self.workers.slots.iter().filter(|s| !s.spare) {
            match s.state {
                SlotState::Idle => capacity += depth,
                SlotState::Busy(_) => {
                    capacity += depth;
                    held += 1 + s.waiting.len() as u64;
                }
                _ => held += s.waiting.len() as u64,
            }
        }
        let available = capacity.saturating_sub(held);
        for _ in 0..self.link.readies_for(available) {
            out.push(Action::Send(Message::new(Command::Ready)));
        }
    }
}

/// `{"reports": N}` in a router heartbeat's extra frame.
fn confirmed_reports(frame: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(frame).ok()?.get("reports")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readies_only_once_acked_and_up_to_what_is_available() {
        let now = Instant::now();
        let mut l = RouterLink::new(now);
        assert_eq!(l.informing_since(), Some(now));
        assert_eq!(l.readies_for(3), 0, "no READY before the ACK");
        assert!(l.acked(now));
        assert!(!l.acked(now), "a second ACK is no news");
        assert_eq!(l.informing_since(), None);
        assert_eq!(l.readies_for(3), 3);
        assert_eq!(l.readies_for(3), 0, "idempotent");
        assert_eq!(l.readies_for(1), 0, "slots are not taken back");
        l.requested();
        assert_eq!(l.readies_for(3), 1);
        for _ in 0..5 {
            l.requested();
        }
        assert_eq!(l.readies_for(1), 1, "REQUESTs past the count stop at 0");
    }

    #[test]
    fn an_inform_forgets_the_announced_slots_and_batches() {
        let t0 = Instant::now();
        let mut l = RouterLink::new(t0);
        assert!(l.acked(t0));
        assert_eq!(l.readies_for(2), 2);
        l.router_takes_batches();
        assert!(l.batches());
        let t1 = t0 + Duration::from_secs(1);
        l.inform_sent(t1);
        assert!(!l.batches() && !l.is_acked());
        assert_eq!(l.informing_since(), Some(t1));
        l.router_takes_batches();
        assert!(!l.batches(), "only once ACKed");
        assert!(l.acked(t1));
        assert_eq!(l.readies_for(2), 2, "announced from scratch");
    }

    #[test]
    fn heartbeats_are_due_every_interval_once_acked() {
        let t0 = Instant::now();
        let every = Duration::from_secs(3);
        let mut l = RouterLink::new(t0);
        assert!(!l.heartbeat_due(t0 + every, every), "not before the ACK");
        assert!(l.acked(t0 + every));
        assert!(!l.heartbeat_due(t0 + every * 2 - Duration::from_millis(1), every), "the ACK's heartbeat counts");
        assert!(l.heartbeat_due(t0 + every * 2, every));
        assert!(!l.heartbeat_due(t0 + every * 2, every));
    }

    #[test]
    fn addresses_fail_over_in_turn_and_silence_is_measured_from_the_last_word() {
        let t0 = Instant::now();
        let addrs: Vec<String> = vec!["a".into(), "b".into()];
        let mut l = RouterLink::new(t0);
        assert_eq!(l.addr(&addrs), "a");
        l.next_addr();
        assert_eq!(l.addr(&addrs), "b");
        l.next_addr();
        assert_eq!(l.addr(&addrs), "a");
        l.next_addr();
        l.first_addr();
        assert_eq!(l.addr(&addrs), "a");
        assert_eq!(l.silent_for(t0 + Duration::from_secs(4)), Duration::from_secs(4));
        l.heard(t0 + Duration::from_secs(3));
        assert_eq!(l.silent_for(t0 + Duration::from_secs(4)), Duration::from_secs(1));
        assert_eq!(l.silent_for(t0), Duration::ZERO);
    }
}
