//! The router link: connecting (with failover), INFORM until ACK, what the
//! router sends us (REQUESTs above all), and the READY reconcile that keeps
//! the router's count of our free slots right.

use super::{Action, JobManagerState, Phase, QueuedJob, SlotState};
use emq_protocol::{Command, Inform, JobErrorKind, JobReply, Message, Request, RunPayload};
use std::time::Instant;
use tracing::{debug, info, warn};

impl JobManagerState {
    /// Replaces the router socket (a new identity) and INFORMs; the router
    /// forgets our slots with the old identity, so none is announced yet.
    pub(super) fn connect(&mut self, now: Instant, out: &mut Vec<Action>) {
        let addr = self.cfg.addrs[self.addr_index % self.cfg.addrs.len()].clone();
        info!(%addr, "connecting to router");
        out.push(Action::Connect { addr });
        self.announced = 0;
        self.last_heard = now;
        self.send_inform(now, out);
    }

    pub(super) fn send_inform(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.phase = Phase::Informing { sent_at: now };
        self.router_batches = false;
        // The router counts our REPLYs from this INFORM on.
        self.inform_epoch += 1;
        self.reports_sent = 0;
        out.push(Action::Send(Message::new(Command::Inform(Inform {
            queues: self.cfg.queues.clone(),
            kind: "worker".into(),
            // We REPLY for every job: the router can track ours exactly.
            // And we send the REPLYs and READYs of a poll pass as one BATCH
            // once the router says it takes them.
            // And what we run (allowed_paths): the router hands us only
            // jobs we allow, instead of jobs we would refuse.
            features: Some(match emq_protocol::allow_feature(&self.cfg.allowed_paths) {
                Some(allow) => format!("{},{},{allow}", emq_protocol::FEATURE_REPORTS_ALL, emq_protocol::FEATURE_BATCH),
                None => format!("{},{}", emq_protocol::FEATURE_REPORTS_ALL, emq_protocol::FEATURE_BATCH),
            }),
        }))));
    }

    /// The connection dropped and came back: the router may have
    /// restarted and not know us. INFORM again under the same identity (a
    /// router that does know us takes it as "still here, with these jobs").
    pub(super) fn on_router_reconnected(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        info!("connection to the router came back: INFORM again");
        self.announced = 0;
        self.last_heard = now;
        self.send_inform(now, out);
    }

    /// The connection dropped. With one address ZeroMQ reconnects to it by
    /// itself; with a leader and standbys the leader is likely gone: try
    /// the next address at once instead of waiting for the silence limit.
    pub(super) fn on_router_disconnected(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.stopping.is_some() || self.cfg.addrs.len() < 2 {
            return;
        }
        info!("connection to the router dropped: trying the next address");
        self.addr_index += 1;
        self.connect(now, out);
    }

    pub(super) fn on_router(&mut self, m: Message, now: Instant, out: &mut Vec<Action>) {
        self.last_heard = now;
        match m.command {
            Command::Ack(_) => {
                if self.phase != Phase::Acked {
                    info!(msgid = %m.msgid, "router acknowledged INFORM");
                    self.phase = Phase::Acked;
                    // Announced from scratch by the reconcile that follows.
                    self.announced = 0;
                    // At once: the health says which jobs we hold, so a
                    // router that restarted settles them instead of running
                    // them again; then the reports it may have missed.
                    self.last_heartbeat = now;
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
                if self.phase == Phase::Acked {
                    if let Some(n) = hb.health.as_deref().and_then(confirmed_reports) {
                        self.reports_confirmed(n);
                    }
                    if hb.health.as_deref().is_some_and(|h| h.contains(r#""batch":true"#)) {
                        self.router_batches = true;
                    }
                }
            }
            Command::Kbye | Command::Disconnect if self.stopping.is_none() => {
                // A router that says goodbye is going away: with several
                // addresses (a leader and standbys), try the next one.
                self.addr_index += 1;
                info!(command = m.command.name(), "router said goodbye: reconnecting");
                self.connect(now, out);
            }
            Command::Kbye | Command::Disconnect => {}
            other => {
                *self.errors.entry("unexpected_router_command").or_insert(0) += 1;
                warn!(msgid = %m.msgid, command = other.name(), "unexpected command from router");
            }
        }
    }

    /// A job from the router: refused at once (answered here, its slot
    /// announced again), or queued locally to be handed out.
    fn on_request(&mut self, msgid: String, request: Request, out: &mut Vec<Action>) {
        self.announced = self.announced.saturating_sub(1);
        let parsed = RunPayload::parse(&request.payload);
        let callable = match &parsed {
            Ok(p) => self.callable_name(p),
            Err(_) => std::sync::Arc::from("?"),
        };
        let refusal = match parsed {
            Err(e) => Some((JobErrorKind::BadPayload, e.to_string())),
            Ok(p) if !self.cfg.allowed(&p) => Some((
                JobErrorKind::Refused,
                format!("module {:?} is not in allowed_paths {:?}", p.module_and_class().0, self.cfg.allowed_paths),
            )),
            Ok(_) if self.stopping.is_some() && self.idle_slot().is_none() => {
                Some((JobErrorKind::Refused, "job manager is shutting down".into()))
            }
            Ok(_) => None,
        };
        if let Some((kind, message)) = refusal {
            *self.errors.entry("refused_jobs").or_insert(0) += 1;
            self.jobs_failed += 1;
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
        };
        self.enqueue(job, false);
        self.steal_for_priority(&queue, out);
    }

    /// Sends READYs until the router's count of our free slots matches the
    /// idle workers not spoken for by locally queued jobs. Idempotent;
    /// nothing before the ACK or while stopping.
    pub(super) fn reconcile(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Acked || self.stopping.is_some() {
            return;
        }
        let depth = self.cfg.worker_pipeline.max(1) as u64;
        let prefetching = self.job_secs_avg < self.cfg.prefetch_below.as_secs_f64();
        let mut capacity = if prefetching { self.cfg.prefetch as u64 } else { 0 };
        let mut held = self.local_queue.len() as u64;
        for s in self.slots.iter().filter(|s| !s.spare) {
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
        while self.announced < available {
            self.announced += 1;
            out.push(Action::Send(Message::new(Command::Ready)));
        }
    }
}

/// `{"reports": N}` in a router heartbeat's extra frame.
fn confirmed_reports(frame: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(frame).ok()?.get("reports")?.as_u64()
}
