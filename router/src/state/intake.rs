//! Intake: what arrives on the frontend (REQUESTs, a scheduler's INFORM,
//! SCHEDULE orders, JOB_STATUS from clients) and bad input on any socket.
//! A job is accepted here — recorded, then dispatched or buffered, then
//! receipted — or refused through the one [`RouterState::refuse`], which
//! answers the peer, counts, logs and records the refusal the same way
//! whatever the reason.

use super::{send, Action, JobRecord, Now, RouterState, SocketKind, StoredRequest, WaitingJob, OTHER_QUEUE};
use emq_journal::{AcceptedJob, Record};
use emq_protocol::{
    Ack, AdminCommand, Command, DecodeError, DecodeErrorKind, Inform, JobReply, Message, Reply, Request, DEFAULT_QUEUE,
};
use emq_receiver::PeerId;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Why the router will not take a message that wanted an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Frames that do not decode (the kind says how).
    Malformed(DecodeErrorKind),
    /// A SCHEDULE / UNSCHEDULE with no scheduler to hand it to.
    NoScheduler,
    /// A command that has no business on the frontend.
    UnexpectedCommand(String),
    /// `reject_unknown_queues`: nobody serves the queue nor `default`.
    UnknownQueue(String),
    /// The msgid of a job that is not finished yet.
    DuplicateMsgid,
    /// The queue's buffer holds `hwm` jobs already.
    QueueFull { queue: String, hwm: usize },
    /// A graceful stop is under way.
    Stopping,
    /// The journal and spilled buffers are past `journal_max_bytes`, and
    /// `on_full = "refuse"`.
    Full,
    /// A SCHEDULE / UNSCHEDULE the router cannot take (why).
    BadSchedule(String),
    /// Delayed jobs held are past `delayed_max_bytes`.
    DelayedFull,
    /// A workflow or `depends_on` the router cannot take (why).
    BadWorkflow(String),
    /// A `limit:` naming no configured limit, or malformed (why).
    BadLimit(String),
    /// A malformed `requires:` / `on:` header.
    BadPlacement,
}

impl Refusal {
    /// The anomaly counter for this reason (beside the total `refused`).
    fn counter(&self) -> Option<&'static str> {
        match self {
            Refusal::Malformed(_) => None, // counted by kind on decode
            Refusal::NoScheduler => Some("no_scheduler"),
            Refusal::UnexpectedCommand(_) => Some("unexpected_frontend_command"),
            Refusal::UnknownQueue(_) => Some("refused_unknown_queue"),
            Refusal::DuplicateMsgid => Some("refused_duplicate_msgid"),
            Refusal::QueueFull { .. } => None,
            Refusal::Stopping => Some("refused_stopping"),
            Refusal::Full => Some("refused_full"),
            Refusal::BadSchedule(_) => Some("refused_schedule"),
            Refusal::DelayedFull => Some("refused_delayed_full"),
            Refusal::BadWorkflow(_) => Some("refused_workflow"),
            Refusal::BadLimit(_) => Some("refused_limit"),
            Refusal::BadPlacement => Some("refused_placement"),
        }
    }

    /// The queue the refused job counts against in [`super::QueueStats`]:
    /// a served (or default) queue by name, anything else as `other`.
    fn queue(&self) -> Option<&str> {
        match self {
            Refusal::UnknownQueue(_) => Some(OTHER_QUEUE),
            Refusal::QueueFull { queue, .. } => Some(queue),
            _ => None,
        }
    }

    /// What the client is told.
    pub fn message(&self, msgid: &str) -> String {
        match self {
            Refusal::Malformed(kind) => format!("malformed message: {kind}"),
            Refusal::NoScheduler => "no scheduler connected".into(),
            Refusal::UnexpectedCommand(name) => format!("unexpected command {name} on the frontend"),
            Refusal::UnknownQueue(q) => format!("unknown queue {q:?} and no job manager serves {DEFAULT_QUEUE:?}"),
            Refusal::DuplicateMsgid => format!("msgid {msgid} is already in use by another client's job"),
            Refusal::QueueFull { queue, hwm } => format!("queue {queue:?} is full ({hwm} jobs waiting)"),
            Refusal::Stopping => "router stopping: not accepting jobs".into(),
            Refusal::Full => "router full: its journal and buffers are past journal_max_bytes".into(),
            Refusal::BadSchedule(why) => format!("schedule refused: {why}"),
            Refusal::DelayedFull => "router full: delayed and held jobs are past delayed_max_bytes".into(),
            Refusal::BadWorkflow(why) => format!("workflow refused: {why}"),
            Refusal::BadLimit(why) => format!("limit refused: {why}"),
            Refusal::BadPlacement => "placement refused: requires: takes labels (1-64 of A-Z a-z 0-9 _ - . :, at most 32, ; between) and on: a job manager name of the same characters".into(),
        }
    }
}

/// Where an accepted job goes first.
pub(super) enum Placement {
    /// Waits for its time (`delay:` / `eta:`), unix seconds.
    Delayed(f64),
    /// To this job manager's free slot.
    Dispatch(PeerId),
    /// Into its queue's buffer.
    Buffer,
    /// Into the front of its queue's buffer (a released workflow node:
    /// work under way finishes before new work starts, as retries do).
    BufferFront,
}

impl RouterState {
    // ---- bad input -------------------------------------------------------

    pub(super) fn on_decode_error(&mut self, socket: SocketKind, peer: &PeerId, e: DecodeError, out: &mut Vec<Action>) {
        let kind = match &e.kind {
            DecodeErrorKind::TooFewFrames { .. } => "too_few_frames",
            DecodeErrorKind::MissingDelimiter => "missing_delimiter",
            DecodeErrorKind::BadVersion(_) => "bad_protocol_version",
            DecodeErrorKind::NotUtf8(_) => "not_utf8",
            DecodeErrorKind::TrailingFrames(_) => "trailing_frames",
            DecodeErrorKind::BadJson { .. } => "bad_json",
            DecodeErrorKind::EmptyMsgid => "empty_msgid",
        };
        self.count(kind);
        warn!(?socket, %peer, msgid = e.msgid.as_deref().unwrap_or("-"), command = e.command.as_deref().unwrap_or("-"),
              error = %e.kind, "malformed message");
        // Without a msgid there is nothing to answer to.
        let Some(msgid) = e.msgid else { return };
        match socket {
            SocketKind::Frontend => self.refuse(peer, msgid, Refusal::Malformed(e.kind), out),
            SocketKind::Admin => {
                let body = serde_json::json!({"error": format!("malformed message: {}", e.kind)}).to_string();
                out.push(send(socket, peer, Command::Reply(Reply::admin_answer(body))));
            }
            SocketKind::Backend => {}
        }
    }

    /// Refuses `msgid` from `client`: an error REPLY (type `refused`) to the
    /// client, the `refused` count and the reason's own, a warning with the
    /// peer and msgid. Nothing is stored per refused msgid (the msgid may
    /// even name another job's record): a flood of refusals cannot push
    /// real jobs out of the history.
    pub(super) fn refuse(&mut self, client: &PeerId, msgid: String, why: Refusal, out: &mut Vec<Action>) {
        self.count("refused");
        if let Some(c) = why.counter() {
            self.count(c);
        }
        if let Some(q) = why.queue() {
            self.telemetry.stats.refused(q);
        }
        let message = why.message(&msgid);
        warn!(peer = %client, user = self.user.as_deref().unwrap_or("-"), %msgid, reason = %message, "refused");
        let reply = JobReply::refused_by_router(message).to_json();
        out.push(send(
            SocketKind::Frontend,
            client,
            Command::Reply(Reply::Result { reply_json: reply, orig_msgid: msgid }),
        ));
    }

    // ---- frontend: clients and schedulers --------------------------------

    pub(super) fn on_frontend(&mut self, peer: PeerId, m: Message, now: Now, out: &mut Vec<Action>) {
        if let Some(s) = self.peers.schedulers.get_mut(&peer) {
            s.last_seen = now.mono;
        }
        match m.command {
            Command::Request(request) => self.on_request(peer, m.msgid, request, now, out),
            Command::Workflow(w) => self.on_workflow(peer, m.msgid, w.graph, now, out),
            Command::Inform(Inform { kind, .. }) if kind == "scheduler" && !self.may_schedule() => {
                // It would receive every client's SCHEDULE orders.
                self.count("scheduler_refused");
                warn!(%peer, msgid = %m.msgid, "INFORM as a scheduler from a peer not in allowed_schedulers: ignored");
            }
            Command::Inform(Inform { kind, .. }) if kind == "scheduler" && !self.cfg.scheduler_external => {
                // Two schedulers would fire everything twice.
                self.count("scheduler_refused");
                warn!(%peer, msgid = %m.msgid,
                      "INFORM as a scheduler, but the router runs schedules itself (scheduler = \"internal\"): ignored");
            }
            Command::Inform(Inform { kind, .. }) if kind == "scheduler" => {
                info!(%peer, msgid = %m.msgid, "scheduler connected");
                self.peers.schedulers.insert(peer.clone(), super::SchedulerPeer { last_seen: now.mono });
                out.push(send(SocketKind::Frontend, &peer, Command::Ack(Ack { acked_msgid: m.msgid })));
            }
            Command::Heartbeat(_) => {}
            Command::Admin(AdminCommand::JobStatus { job_msgid, owner_token }) => {
                // Clients may ask too; the answer is one JSON frame (a receipt's
                // body is a msgid, never JSON, so the two cannot be confused).
                // The result only to the connection that sent the job or the
                // holder of its owner token.
                let full =
                    self.outcomes.history.get(&job_msgid).is_some_and(|r| r.readable_by(&peer, owner_token.as_deref()));
                let body = self.job_status_json(&job_msgid, full);
                out.push(send(SocketKind::Frontend, &peer, Command::Reply(Reply::admin_answer(body))));
            }
            Command::Admin(AdminCommand::Cancel { job_msgid }) => {
                // A client may cancel its own jobs (the connection that sent them).
                let own = self.outcomes.history.get(&job_msgid).is_some_and(|r| r.client.as_ref() == Some(&peer))
                    || self.workflows.flows.get(job_msgid.as_str()).is_some_and(|f| f.client == peer);
                let mut body = if own {
                    self.cancel_json(&job_msgid, now, out)
                } else {
                    serde_json::json!({"error": format!("job {job_msgid} was not sent by this connection")})
                };
                // Which CANCEL this answers (a client may have several out).
                body["cancel"] = serde_json::Value::String(job_msgid.clone());
                out.push(send(SocketKind::Frontend, &peer, Command::Reply(Reply::admin_answer(body.to_string()))));
            }
            Command::Kbye => {
                if self.peers.schedulers.remove(&peer).is_some() {
                    info!(%peer, "scheduler said goodbye");
                }
            }
            Command::Schedule(_) | Command::Unschedule(_) if self.cfg.scheduler_external => {
                // Hand the order to a scheduler, unchanged, as EventMQ does.
                match self.peers.schedulers.keys().min().cloned() {
                    Some(s) => out.push(Action::Send { socket: SocketKind::Frontend, peer: s, message: m }),
                    None => self.refuse(&peer, m.msgid, Refusal::NoScheduler, out),
                }
            }
            Command::Schedule(order) => self.on_schedule(peer, m.msgid, order, now, out),
            Command::Unschedule(order) => self.on_unschedule(peer, m.msgid, order, out),
            other => self.refuse(&peer, m.msgid, Refusal::UnexpectedCommand(other.name().to_owned()), out),
        }
    }

    /// A client's job: refused, or recorded, handed out or buffered, and
    /// receipted.
    fn on_request(&mut self, client: PeerId, msgid: String, request: Request, now: Now, out: &mut Vec<Action>) {
        if self.cfg.reject_unknown_queues
            && !self.dispatch.queues.get(request.queue.as_str()).is_some_and(|q| q.ever_served)
            && self.dispatch.queues.get(DEFAULT_QUEUE).is_none_or(|q| q.job_managers.is_empty())
        {
            return self.refuse(&client, msgid, Refusal::UnknownQueue(request.queue), out);
        }
        if self.lifecycle.stopping.is_some() {
            return self.refuse(&client, msgid, Refusal::Stopping, out);
        }
        let headers = request.headers();
        // A msgid the router holds: never a second job. Its sender sending
        // it again (a retry after a failover or a lost receipt) gets the
        // receipt again — and the result, when the job is over and it
        // asks for one; anyone else is refused.
        let held = self.outcomes.history.get(&msgid).map(|rec| {
            let same_sender = rec.readable_by(&client, headers.owner.as_deref());
            let result = (rec.state.is_final() && headers.reply_requested).then(|| rec.result.clone()).flatten();
            (same_sender, result)
        });
        if let Some((same_sender, result)) = held {
            if same_sender {
                self.count("duplicate_requests_answered");
                debug!(%msgid, peer = %client, "REQUEST for a msgid already held: receipt again, no second job");
                out.push(Action::SendDurable {
                    socket: SocketKind::Frontend,
                    peer: client.clone(),
                    message: Message::new(Command::Reply(Reply::receipt(msgid.clone()))),
                });
                if let Some(reply_json) = result {
                    out.push(send(
                        SocketKind::Frontend,
                        &client,
                        Command::Reply(Reply::Result { reply_json, orig_msgid: msgid }),
                    ));
                }
                return;
            }
            return self.refuse(&client, msgid, Refusal::DuplicateMsgid, out);
        }
        if self.in_flight.contains_key(msgid.as_str())
            || self.suspects.in_doubt.contains_key(msgid.as_str())
            || self.workflows.held.contains_key(msgid.as_str())
            || self.workflows.flows.contains_key(msgid.as_str())
        {
            return self.refuse(&client, msgid, Refusal::DuplicateMsgid, out);
        }
        if let Err(why) = self.check_limit(headers.limit.as_deref()) {
            return self.refuse(&client, msgid, Refusal::BadLimit(why), out);
        }
        if headers.requires.iter().chain(headers.on.iter()).any(|l| !emq_protocol::valid_label(l)) {
            return self.refuse(&client, msgid, Refusal::BadPlacement, out);
        }
        // `unique:KEY`: while a job holds the key in this queue, the
        // sender gets that job (its msgid), not a second one.
        if let Some(key) = &headers.unique {
            if let Some(holder) = self.workflows.unique_holder(&request.queue, key).cloned() {
                self.count("deduplicated");
                let reply = serde_json::json!({"value": null, "deduplicated": &*holder}).to_string();
                debug!(%msgid, existing = %holder, %key, "unique key held: answered with the existing job");
                let mut ev = serde_json::json!({"t": "deduplicated", "job": &msgid, "queue": &request.queue,
                    "duplicate_of": &*holder, "at": now.unix});
                if let Some(o) = &headers.owner {
                    ev["o"] = o.as_str().into();
                }
                out.push(Action::Journal(Record::Event(ev.to_string())));
                out.push(Action::SendDurable {
                    socket: SocketKind::Frontend,
                    peer: client,
                    message: Message::new(Command::Reply(Reply::Result { reply_json: reply, orig_msgid: msgid })),
                });
                return;
            }
        }
        if !headers.depends_on.is_empty() {
            return self.hold_request(client, msgid, request, now, out);
        }
        // `delay:` / `eta:` in the future: the job waits for its time first.
        let due = headers.due_at(now.unix);
        let queue = self.resolve_queue(&request.queue);
        let target = if due.is_some() {
            None
        } else {
            self.pick_job_manager(&queue, Some((&request.headers, &request.payload)))
        };
        let hwm = self.cfg.hwm;
        if target.is_none() && due.is_none() && hwm > 0 && self.queue_len(&queue) >= hwm {
            return self.refuse(&client, msgid, Refusal::QueueFull { queue, hwm }, out);
        }
        if target.is_none() && self.cfg.refuse_when_full && self.dispatch.disk_full {
            return self.refuse(&client, msgid, Refusal::Full, out);
        }
        if due.is_some() && self.timers.delayed_bytes >= self.cfg.delayed_max_bytes {
            return self.refuse(&client, msgid, Refusal::DelayedFull, out);
        }
        let msgid_shared: Arc<str> = Arc::from(msgid.as_str());
        let queue_name = self.queue_name(&queue);
        let mut record = JobRecord::queued(queue_name, now.unix);
        record.client = Some(client.clone());
        record.set_sender(self.user.clone(), headers.owner);
        if !request.headers.is_empty() {
            record.extra_mut().headers = Some(request.headers.as_str().into());
        }
        let placement = match (due, target) {
            (Some(due), _) => Placement::Delayed(due),
            (None, Some(jm)) => Placement::Dispatch(jm),
            (None, None) => {
                debug!(%msgid, %queue, "no free slot: job buffered");
                Placement::Buffer
            }
        };
        self.admit(client.clone(), msgid_shared, request, queue, record, placement, now, out);
        // The receipt leaves once the Accepted record is durable.
        out.push(Action::SendDurable {
            socket: SocketKind::Frontend,
            peer: client,
            message: Message::new(Command::Reply(Reply::receipt(msgid))),
        });
    }

    /// A job the router takes — a client's, or one a schedule fired: its
    /// record, the journal's `Accepted`, the counts, then its first place.
    /// The one way in for every job.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn admit(
        &mut self,
        client: PeerId,
        msgid: Arc<str>,
        request: Request,
        queue: String,
        record: JobRecord,
        placement: Placement,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        self.outcomes.history.insert(msgid.clone(), record);
        if request.headers.contains("unique:") {
            if let Some(key) = request.headers().unique {
                self.workflows.claim_unique(&request.queue, &key, &msgid);
            }
        }
        let stored = StoredRequest::new(request, &queue);
        out.push(Action::Journal(Record::Accepted {
            job: AcceptedJob {
                msgid: msgid.to_string(),
                client: client.as_bytes().to_vec(),
                queue: queue.clone(),
                requested_queue: stored.requested_queue().map(str::to_owned),
                headers: stored.headers_str().to_owned(),
                payload: stored.payload().to_owned(),
                received: now.unix,
            },
            attempts: 0,
        }));
        let job =
            WaitingJob { client, msgid: msgid.into(), request: stored, received_ms: self.stamp(now.mono), attempts: 0 };
        self.counters.accepted += 1;
        self.telemetry.stats.accepted(&queue);
        match placement {
            Placement::Delayed(due) => self.delay_job(queue, job, due, now, out),
            Placement::Dispatch(jm) => {
                if let super::limits::Handed::Blocked(job) = self.dispatch(jm, queue.clone(), job, now, out) {
                    self.buffer(queue, job, false);
                }
            }
            Placement::Buffer => self.buffer(queue, job, false),
            Placement::BufferFront => self.buffer(queue, job, true),
        }
    }

    /// Whether a frontend peer may be a scheduler. Without CURVE users
    /// only `allowed_schedulers = ["*"]` lets one in.
    fn may_schedule(&self) -> bool {
        self.cfg.allowed_schedulers.iter().any(|u| u == "*" || self.user.as_deref() == Some(u.as_str()))
    }

    /// The queue a REQUEST for `name` goes to: its own when it is (or was)
    /// served by a job manager, else `default` (EventMQ's fallback).
    pub(super) fn resolve_queue(&self, name: &str) -> String {
        match self.dispatch.queues.get(name) {
            Some(q) if q.ever_served => name.to_owned(),
            _ => DEFAULT_QUEUE.to_owned(),
        }
    }

    /// The shared name of a resolved queue (served queues and `default`:
    /// a bounded set).
    pub(super) fn queue_name(&mut self, queue: &str) -> Arc<str> {
        if let Some(n) = self.dispatch.queue_names.get(queue) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(queue);
        self.dispatch.queue_names.insert(queue.to_owned(), n.clone());
        n
    }
}
