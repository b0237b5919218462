//! Peers: job managers on the backend (INFORM, READY, HEARTBEAT with pool
//! health, KBYE), peer loss (silence past `heartbeat_timeout`, a send that
//! finds the peer gone) and the router's own heartbeats. A job manager that
//! is lost takes its unfinished jobs with it: `guarantee` ones go back to
//! the front of their queue, the others end as `job manager lost`.

use super::SchedulerPeer;
use super::{send, Action, JobManagerPeer, JobState, Now, RouterState, SocketKind, StaleJobManager, StoredRequest};
use emq_journal::{FinalState, Record};
use emq_protocol::{
    Ack, Command, Heartbeat, Inform, JobErrorKind, JobReply, Message, PoolHealth, QueueSpec, Reply, DEFAULT_QUEUE,
};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};

/// The peers: connected job managers and schedulers, and job managers
/// lost recently (shown as stale for a while).
#[derive(Default)]
pub(crate) struct Peers {
    pub(crate) job_managers: HashMap<PeerId, JobManagerPeer>,
    pub(crate) schedulers: HashMap<PeerId, SchedulerPeer>,
    /// Job managers that stopped heartbeating: shown as stale for a while
    /// after they were removed, then gone.
    pub(crate) stale: HashMap<PeerId, StaleJobManager>,
}

impl RouterState {
    pub(super) fn on_backend(&mut self, peer: PeerId, m: Message, now: Now, out: &mut Vec<Action>) {
        match self.peers.job_managers.get_mut(&peer) {
            Some(jm) => jm.last_seen = now.mono,
            None if !matches!(m.command, Command::Inform(_)) => self.wake_stale(&peer, out),
            None => {}
        }
        match m.command {
            Command::Inform(inform) if inform.kind != "worker" => {
                // EventMQ's router ignores other kinds too; only a job
                // manager that says so gets slots and jobs.
                self.count("bad_inform_kind");
                warn!(%peer, msgid = %m.msgid, kind = %inform.kind, "INFORM on the backend without kind \"worker\": ignored");
            }
            Command::Inform(inform) => self.on_inform(peer, m.msgid, inform, now, out),
            Command::Ready => self.on_ready(peer, m.msgid, now, out),
            Command::Reply(Reply::Result { reply_json, orig_msgid }) => {
                if let Some(jm) = self.peers.job_managers.get_mut(&peer) {
                    jm.reports_received += 1;
                }
                self.on_job_done(&peer, m.msgid, reply_json, orig_msgid, now, out)
            }
            Command::Batch(batch) => {
                // Exactly as its REPLYs in order, then its READYs.
                for (reply_json, orig_msgid) in batch.replies {
                    if let Some(jm) = self.peers.job_managers.get_mut(&peer) {
                        jm.reports_received += 1;
                    }
                    self.on_job_done(&peer, m.msgid.clone(), reply_json, orig_msgid, now, out);
                }
                for _ in 0..batch.ready {
                    self.on_ready(peer.clone(), m.msgid.clone(), now, out);
                }
            }
            Command::Heartbeat(hb) => self.on_heartbeat(&peer, hb, now, out),
            Command::JobUpdate(updates) => self.on_job_updates(&peer, updates, out),
            Command::Kbye => self.on_job_manager_kbye(&peer, now, out),
            other => {
                self.count("unexpected_backend_command");
                warn!(%peer, msgid = %m.msgid, command = other.name(), "unexpected command on backend");
            }
        }
    }

    /// A job manager (re)announces itself and its queues.
    fn on_inform(&mut self, peer: PeerId, msgid: String, inform: Inform, now: Now, out: &mut Vec<Action>) {
        if self.peers.job_managers.contains_key(&peer) {
            // Same identity again: it reconnected (a network blip, or it
            // noticed a router restart) and may still be running our jobs.
            // They are in doubt until its health or its reports say.
            self.put_in_doubt(&peer, now);
            self.leave_free_sets(&peer);
            self.peers.job_managers.remove(&peer);
            for q in self.dispatch.queues.values_mut() {
                q.job_managers.retain(|(_, p)| p != &peer);
            }
        }
        self.peers.stale.remove(&peer);
        let reports_all = inform.has_feature(emq_protocol::FEATURE_REPORTS_ALL);
        let batches = inform.has_feature(emq_protocol::FEATURE_BATCH);
        let runs_commands = inform.has_feature(emq_protocol::FEATURE_COMMANDS);
        let allowed: Option<Arc<[Box<str>]>> =
            inform.allowed_paths().map(|v| v.into_iter().map(String::into_boxed_str).collect());
        let labels: Arc<[Box<str>]> = inform.labels().into_iter().map(String::into_boxed_str).collect();
        let jm_name = inform.name().map(String::into_boxed_str);
        let queues = if inform.queues.is_empty() { QueueSpec::default_queues() } else { inform.queues };
        info!(%peer, user = self.user.as_deref().unwrap_or("-"), %msgid, queues = %queues.to_wire(), "job manager connected");
        let names: Vec<&str> = queues.0.iter().map(|(_, n)| n.as_str()).collect();
        let ev = serde_json::json!({"t": "jobmanager_online", "job_manager": peer.to_string(), "queues": names, "at": now.unix});
        out.push(Action::Journal(Record::Event(ev.to_string())));
        for (weight, name) in &queues.0 {
            let newly_served = !self.dispatch.queues.get(name).is_some_and(|q| q.ever_served);
            let q = self.dispatch.queues.entry(name.clone()).or_default();
            q.ever_served = true;
            q.job_managers.push((*weight, peer.clone()));
            if newly_served && name != DEFAULT_QUEUE {
                self.adopt_from_default(name);
            }
        }
        let mut jm = JobManagerPeer::new(queues, reports_all, now.mono, self.dispatch.lru_clock);
        jm.user = self.user.clone();
        jm.batches = batches;
        jm.allowed = allowed;
        jm.labels = labels;
        jm.name = jm_name;
        jm.runs_commands = runs_commands;
        self.peers.job_managers.insert(peer.clone(), jm);
        out.push(send(SocketKind::Backend, &peer, Command::Ack(Ack { acked_msgid: msgid })));
        if batches {
            // At once, not at the next heartbeat: it may batch from now on.
            let hb = Heartbeat {
                timestamp: format!("{:.3}", now.unix),
                health: Some(r#"{"reports":0,"batch":true}"#.into()),
            };
            out.push(send(SocketKind::Backend, &peer, Command::Heartbeat(hb)));
        }
    }

    /// One more free slot at `peer`; it takes the oldest waiting job of its
    /// best queue. For EventMQ's job manager, a READY is also the only sign
    /// that a job without `reply-requested` ended.
    fn on_ready(&mut self, peer: PeerId, msgid: String, now: Now, out: &mut Vec<Action>) {
        let Some(jm) = self.peers.job_managers.get_mut(&peer) else {
            self.count("ready_from_unknown_peer");
            warn!(%peer, %msgid, "READY from unknown job manager (no INFORM yet): ignored");
            return;
        };
        if !jm.leaving {
            jm.free_slots += 1;
            if jm.free_slots == 1 {
                self.join_free_sets(&peer);
            }
        }
        let Some(jm) = self.peers.job_managers.get_mut(&peer) else { return };
        let mut retired = None;
        if !jm.reports_all_completions {
            // Only a job handed out before its previous READY can be the
            // one this READY reports (its first READYs announce workers).
            while let Some(id) = jm.unreported.front() {
                match self.in_flight.get(id) {
                    Some(j) if j.job_manager == peer && j.dispatch_seq <= jm.last_ready_seq => {
                        jm.in_flight = jm.in_flight.saturating_sub(1);
                        jm.processed += 1;
                        retired = jm.unreported.pop_front();
                        break;
                    }
                    Some(j) if j.job_manager == peer => break,
                    _ => {
                        jm.unreported.pop_front();
                    }
                }
            }
        }
        jm.last_ready_seq = self.dispatch.lru_clock;
        let (leaving, idle) = (jm.leaving, jm.in_flight == 0);
        if let Some(id) = retired {
            if let Some(job) = self.in_flight.remove(&id) {
                self.telemetry.stats.finished(
                    &job.queue,
                    now.mono.saturating_duration_since(job.received).as_secs_f64(),
                    false,
                );
            }
            self.outcomes.history.mark(&id, JobState::Done, now.unix);
            self.limits.ended(&id);
            out.push(Action::Journal(Record::Finished {
                msgid: id.to_string(),
                state: FinalState::Done,
                at: now.unix,
                result: String::new(),
                failure: None,
            }));
        }
        if leaving {
            if idle {
                self.remove_job_manager(&peer, "finished its last job after KBYE", now, out);
            }
            return;
        }
        self.drain_to(&peer, now, out);
    }

    /// Liveness and, from our job managers, pool health — parsed once here
    /// (bounded in size) and read as a value by STATUS, metrics and the
    /// dashboard.
    fn on_heartbeat(&mut self, peer: &PeerId, hb: Heartbeat, now: Now, out: &mut Vec<Action>) {
        let health = match hb.health.as_deref().map(PoolHealth::from_json) {
            None => None,
            Some(Ok(h)) => Some(h),
            Some(Err(e)) => {
                self.count("bad_health");
                warn!(%peer, error = %e, "heartbeat health not taken");
                None
            }
        };
        let Some(jm) = self.peers.job_managers.get_mut(peer) else {
            self.count("heartbeat_from_unknown_peer");
            debug!(%peer, "heartbeat from unknown job manager");
            return;
        };
        jm.last_heartbeat = Some(hb.timestamp);
        if let Some(h) = health {
            let named_now = jm.display_name().is_none() && super::records::display_name(Some(&h)).is_some();
            // Its name first: the same job manager under a new identity is
            // recognised by it.
            jm.health = Some(h);
            if named_now {
                // Its first health on this connection: an earlier
                // connection of the same job manager hands its jobs over.
                self.retire_earlier_connections(peer, now, out);
            }
            let held: Vec<String> = match self.peers.job_managers.get(peer).and_then(|jm| jm.health.as_ref()) {
                Some(h) if !(self.suspects.in_doubt.is_empty() && self.suspects.runs.is_empty()) => {
                    h.in_flight.iter().map(|j| j.msgid.clone()).chain(h.held.iter().cloned()).collect()
                }
                _ => Vec::new(),
            };
            // Jobs it holds that were running when the router last stopped
            // (or when it went silent) are its again: settled when it
            // reports them, nothing re-run.
            for msgid in &held {
                self.adopt_in_doubt(msgid, peer, now, out);
            }
            if !self.suspects.runs.is_empty() {
                self.reclaim_suspects(peer, &held, now);
            }
        }
    }

    /// KBYE from a job manager: no new jobs for it, but the jobs it is
    /// running may still report (a draining shutdown); it is forgotten once
    /// they have, or when it stops heartbeating.
    fn on_job_manager_kbye(&mut self, peer: &PeerId, now: Now, out: &mut Vec<Action>) {
        let Some(jm) = self.peers.job_managers.get_mut(peer) else { return };
        info!(%peer, jobs_in_flight = jm.in_flight, "job manager said goodbye");
        jm.leaving = true;
        jm.free_slots = 0;
        let idle = jm.in_flight == 0;
        self.leave_free_sets(peer);
        for q in self.dispatch.queues.values_mut() {
            q.job_managers.retain(|(_, p)| p != peer);
        }
        if idle {
            self.remove_job_manager(peer, "said KBYE", now, out);
        }
    }

    /// Forgets a job manager and its slots. Its unfinished jobs: `guarantee`
    /// ones go back to the front of their queue; the others fail (or retry),
    /// with an error to the client when it asked for a reply.
    pub(super) fn remove_job_manager(&mut self, peer: &PeerId, why: &str, now: Now, out: &mut Vec<Action>) {
        self.leave_free_sets(peer);
        let Some(jm) = self.peers.job_managers.remove(peer) else { return };
        out.push(Action::Forget { socket: SocketKind::Backend, peer: peer.clone() });
        for q in self.dispatch.queues.values_mut() {
            q.job_managers.retain(|(_, p)| p != peer);
        }
        info!(%peer, why, jobs_in_flight = jm.in_flight, "job manager removed");
        let ev =
            serde_json::json!({"t": "jobmanager_offline", "job_manager": peer.to_string(), "why": why, "at": now.unix});
        out.push(Action::Journal(Record::Event(ev.to_string())));
        let mut mine: Vec<(Instant, Arc<str>)> = if jm.in_flight == 0 {
            Vec::new()
        } else {
            self.in_flight
                .iter()
                .filter(|(_, j)| j.job_manager == *peer)
                .map(|(id, j)| (j.dispatched, id.clone()))
                .collect()
        };
        // Oldest first, so requeued jobs keep their order at the queue front.
        mine.sort();
        for (_, id) in mine.into_iter().rev() {
            let Some(mut job) = self.in_flight.remove(&id) else { continue };
            match job.request.take() {
                Some(request) if job.guarantee => {
                    self.count("requeued");
                    info!(msgid = %id, queue = %job.queue, "guaranteed job requeued after its job manager was lost");
                    let waiting = self.waiting_again(id, &job, request, job.attempts);
                    self.requeue(job.queue, waiting, now, out);
                }
                request => {
                    job.request = request;
                    self.count("lost_with_job_manager");
                    warn!(msgid = %id, queue = %job.queue, job_manager = %peer, "job manager lost with the job");
                    let message = format!("job manager {peer} {why} before the job finished");
                    let reply = JobReply::failed(JobErrorKind::JobManagerLost, message.clone(), "");
                    self.conclude(id, job, reply.to_json(), Some((JobErrorKind::JobManagerLost, message)), now, out);
                }
            }
        }
    }

    /// A send to `peer` failed: the peer is gone.
    pub(super) fn on_unreachable(
        &mut self,
        socket: SocketKind,
        peer: PeerId,
        message: Message,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        // A REPLIES (gathered receipts and results, perhaps stuck in the
        // client's outbox before it went) stands for its REPLYs: each is
        // handled as if it had been sent alone — a result is kept to go
        // again.
        let message = match message {
            Message { command: Command::Replies(r), .. } if socket == SocketKind::Frontend => {
                for (reply_json, orig_msgid) in r.items {
                    let reply = emq_protocol::Replies::reply_of(reply_json, orig_msgid);
                    self.on_unreachable(socket, peer.clone(), Message::new(Command::Reply(reply)), now, out);
                }
                return;
            }
            m => m,
        };
        // A client that left before its receipt is normal; a job manager or
        // scheduler that vanished is not.
        self.count(if socket == SocketKind::Backend { "unreachable_job_manager" } else { "client_gone" });
        match (socket, message.command) {
            (SocketKind::Backend, Command::Request(request)) => {
                // Never delivered: it goes back to the queue whatever its
                // headers, and the vanished job manager is forgotten.
                let msgid = message.msgid;
                warn!(%peer, %msgid, "job manager unreachable: job requeued");
                // Only when this job manager still owns the job: else it was
                // requeued (and perhaps re-dispatched) when it was forgotten.
                let owned = self.in_flight.get(msgid.as_str()).is_some_and(|j| j.job_manager == peer);
                let job = if owned { self.in_flight.remove_entry(msgid.as_str()) } else { None };
                if let Some(jm) = self.peers.job_managers.get_mut(&peer).filter(|_| job.is_some()) {
                    jm.in_flight = jm.in_flight.saturating_sub(1);
                }
                self.suspect_job_manager(&peer, "became unreachable", now, out);
                if let Some((key, job)) = job {
                    let request = StoredRequest::new(request, &job.queue);
                    let waiting = self.waiting_again(key, &job, request, job.attempts - 1);
                    self.requeue(job.queue, waiting, now, out);
                }
            }
            (SocketKind::Backend, _) => self.suspect_job_manager(&peer, "became unreachable", now, out),
            (SocketKind::Frontend, Command::Reply(reply @ Reply::Result { .. }))
                if !self.peers.schedulers.contains_key(&peer) =>
            {
                // The client is away for a moment (a router restart, a
                // blip): its result waits and goes again at the next ticks.
                debug!(%peer, msgid = %message.msgid, "client not connected: its result is kept to be sent again");
                let msgid = match &reply {
                    Reply::Result { orig_msgid, .. } => orig_msgid.clone(),
                    _ => String::new(),
                };
                let m = Message::with_msgid(message.msgid, Command::Reply(reply));
                let budget = self.undelivered_budget();
                if self.outcomes.undelivered.keep(peer, m, now.mono, budget) {
                    // Kept across a restart too.
                    out.push(Action::Journal(Record::ResultPending { msgid }));
                }
            }
            (SocketKind::Frontend, cmd) => {
                if self.peers.schedulers.remove(&peer).is_some() {
                    info!(%peer, "scheduler unreachable: removed");
                } else {
                    debug!(%peer, msgid = %message.msgid, command = cmd.name(), "client gone before its reply");
                }
            }
            (SocketKind::Admin, _) => debug!(%peer, "admin client gone before its answer"),
        }
    }

    // ---- tick steps --------------------------------------------------------

    /// Job managers silent past `heartbeat_timeout` are suspected (see
    /// `suspects.rs`) and removed (shown as stale for a while).
    pub(super) fn expire_silent_job_managers(&mut self, now: Now, out: &mut Vec<Action>) {
        let timeout = self.cfg.heartbeat_timeout;
        let silent: Vec<PeerId> = self
            .peers
            .job_managers
            .iter()
            .filter(|(_, jm)| now.mono.saturating_duration_since(jm.last_seen) > timeout)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in silent {
            self.count("heartbeat_timeouts");
            warn!(%peer, "job manager silent past heartbeat_timeout: removed");
            if let Some(jm) = self.peers.job_managers.get(&peer) {
                let stale = StaleJobManager {
                    queues: jm.queues.clone(),
                    last_seen: jm.last_seen,
                    health: jm.health.clone(),
                    processed: jm.processed,
                    told_to_reconnect: false,
                };
                self.peers.stale.insert(peer.clone(), stale);
            }
            self.suspect_job_manager(&peer, "stopped heartbeating", now, out);
        }
    }

    /// Stale job managers are shown for three more timeouts plus
    /// `suspect_timeout` (while their late reports are awaited), then gone.
    pub(super) fn forget_old_stale_job_managers(&mut self, now: Now) {
        let keep_for = self.cfg.heartbeat_timeout * 4 + self.cfg.suspect_timeout;
        self.peers.stale.retain(|_, s| now.mono.saturating_duration_since(s.last_seen) < keep_for);
    }

    pub(super) fn expire_silent_schedulers(&mut self, now: Now) {
        let timeout = self.cfg.heartbeat_timeout;
        self.peers.schedulers.retain(|peer, s| {
            let alive = now.mono.saturating_duration_since(s.last_seen) <= timeout;
            if !alive {
                warn!(%peer, "scheduler silent past heartbeat_timeout: removed");
            }
            alive
        });
    }

    /// Every `heartbeat_interval`, a HEARTBEAT to every job manager and
    /// scheduler (none once shutting down).
    pub(super) fn send_heartbeats(&mut self, now: Now, out: &mut Vec<Action>) {
        let due = self
            .lifecycle
            .last_heartbeat_sent
            .is_none_or(|t| now.mono.saturating_duration_since(t) >= self.cfg.heartbeat_interval);
        if !due || self.lifecycle.shutting_down {
            return;
        }
        self.lifecycle.last_heartbeat_sent = Some(now.mono);
        let hb = Heartbeat { timestamp: format!("{:.3}", now.unix), health: None };
        for (peer, jm) in &self.peers.job_managers {
            if jm.reports_all_completions {
                // Ours: with how many of its REPLYs we hold. Sent once this
                // pass's journal batch is durable, so the count is durable.
                let extra = if jm.batches {
                    format!(r#"{{"reports":{},"batch":true}}"#, jm.reports_received)
                } else {
                    format!(r#"{{"reports":{}}}"#, jm.reports_received)
                };
                let confirm = Heartbeat { health: Some(extra), ..hb.clone() };
                out.push(Action::SendDurable {
                    socket: SocketKind::Backend,
                    peer: peer.clone(),
                    message: Message::new(Command::Heartbeat(confirm)),
                });
            } else {
                out.push(send(SocketKind::Backend, peer, Command::Heartbeat(hb.clone())));
            }
        }
        for peer in self.peers.schedulers.keys() {
            out.push(send(SocketKind::Frontend, peer, Command::Heartbeat(hb.clone())));
        }
    }
}
