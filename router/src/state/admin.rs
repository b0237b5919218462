//! Admin: every command of the admin socket (STATUS, ROUTER_SHOW_WORKERS,
//! ROUTER_SHOW_SCHEDULERS, JOB_STATUS, ROUTER_DEAD_LETTERS, REQUEUE,
//! DISCONNECT, HELLO) and the read-only views built from the same state:
//! `/api/status` and `/metrics`. EventMQ's JSON keys come first in each
//! answer; ours are added after them.

use super::history::constant_time_eq;
use super::{records::display_name, send, Action, Now, RouterState, SocketKind};
use emq_protocol::{Ack, AdminCommand, Command, Message, Reply};
use emq_receiver::PeerId;
use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::Instant;
use tracing::{info, warn};

/// The keys of EventMQ's STATUS answer, which ours keeps (and adds to).
pub const EVENTMQ_STATUS_KEYS: [&str; 6] = [
    "inflight_messages_by_queue",
    "latency_messages_by_queue",
    "max_latency_messages_by_queue",
    "waiting_messages_by_queue",
    "processed_messages_by_queue",
    "processed_messages_by_worker",
];

/// Authenticated admin connections remembered at once.
const MAX_ADMIN_SESSIONS: usize = 1024;

/// The `jobmanager` label of a job manager that never sent its name (an
/// EventMQ job manager): one bounded series for all of them.
const UNNAMED: &str = "unnamed";

/// Admin sessions: the token that authenticates them and the peers that
/// presented it (bounded, oldest forgotten first).
#[derive(Default)]
pub(crate) struct Admin {
    /// The token that authenticates admin connections (none: no admin
    /// command that changes anything is accepted).
    pub(crate) token: Option<String>,
    pub(crate) sessions: rustc_hash::FxHashSet<PeerId>,
    pub(crate) order: VecDeque<PeerId>,
}

impl Admin {
    /// `peer` proved it holds the token; the oldest session is forgotten
    /// past [`MAX_ADMIN_SESSIONS`].
    pub(crate) fn authorize(&mut self, peer: &PeerId) {
        if self.sessions.insert(peer.clone()) {
            self.order.push_back(peer.clone());
            while self.order.len() > MAX_ADMIN_SESSIONS {
                if let Some(old) = self.order.pop_front() {
                    self.sessions.remove(&old);
                }
            }
        }
    }

    /// A new token: every session authorized with the old one ends.
    pub(crate) fn rotate(&mut self, token: String) {
        self.token = Some(token);
        self.sessions.clear();
        self.order.clear();
    }

    /// Whether `token` is the admin token (constant time).
    pub(crate) fn token_matches(&self, token: &str) -> bool {
        self.token.as_deref().is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
    }
}

impl RouterState {
    pub(super) fn on_admin(&mut self, peer: PeerId, m: Message, now: Now, out: &mut Vec<Action>) {
        let answer = |body: String| send(SocketKind::Admin, &peer, Command::Reply(Reply::admin_answer(body)));
        match m.command {
            Command::Admin(AdminCommand::Hello) => {} // must stay unanswered (emq-cli quirk)
            Command::Admin(AdminCommand::Status) => out.push(answer(self.status_json(now))),
            Command::Admin(AdminCommand::RouterShowWorkers) => out.push(answer(self.workers_json(now))),
            Command::Admin(AdminCommand::RouterShowSchedulers) => out.push(answer(self.schedulers_json(now))),
            Command::Admin(AdminCommand::Authenticate { token }) => {
                let ok = self.admin.token_matches(&token);
                if ok {
                    self.authorize_admin(&peer);
                } else {
                    self.count("admin_auth_failed");
                    warn!(%peer, msgid = %m.msgid, "AUTHENTICATE with a wrong admin token");
                }
                out.push(answer(json!({"authenticated": ok}).to_string()));
            }
            Command::Admin(AdminCommand::JobStatus { job_msgid, owner_token }) => {
                let full = self.is_admin(&peer)
                    || self
                        .outcomes
                        .history
                        .get(&job_msgid)
                        .is_some_and(|r| r.readable_by(&peer, owner_token.as_deref()));
                let status = self.job_status_json(&job_msgid, full);
                let status = if full { self.with_job_detail(&job_msgid, status) } else { status };
                out.push(answer(status))
            }
            Command::Admin(AdminCommand::DeadLetters) => out.push(answer(self.dead_letters_json())),
            Command::Admin(AdminCommand::Schedules) => out.push(answer(self.schedules_json(now))),
            Command::Admin(AdminCommand::Delayed { limit }) => {
                let limit = match limit {
                    0 => 100,
                    n => (n as usize).min(10_000),
                };
                out.push(answer(self.delayed_json(limit, now)))
            }
            Command::Admin(
                AdminCommand::Requeue { .. }
                | AdminCommand::RemoveSchedule { .. }
                | AdminCommand::Cancel { .. }
                | AdminCommand::Purge { .. }
                | AdminCommand::DeleteDead { .. }
                | AdminCommand::Pause { .. }
                | AdminCommand::Resume { .. }
                | AdminCommand::RotateToken,
            )
            | Command::Disconnect
                if !self.is_admin(&peer) =>
            {
                // Changing anything needs the admin token (or, with CURVE,
                // the admin key): whoever reaches the socket may only look.
                self.count("admin_refused");
                warn!(%peer, msgid = %m.msgid, command = m.command.name(), "admin command without authentication: refused");
                let body = json!({"error": "not authorized: authenticate with the router's admin token (data_dir/admin.token) first"});
                out.push(answer(body.to_string()));
            }
            Command::Admin(AdminCommand::RotateToken) => {
                // A new token (OS CSPRNG): every session that proved the old
                // one is forgotten, except the one asking.
                let token = emq_protocol::random_hex(32);
                self.admin.rotate(token.clone());
                self.authorize_admin(&peer);
                info!(%peer, "admin token rotated");
                out.push(Action::WriteAdminToken(token));
                out.push(answer(json!({"rotated": true}).to_string()));
            }
            Command::Admin(AdminCommand::Requeue { job_msgid }) => {
                let body = self.requeue_dead_letter(&job_msgid, now, out);
                out.push(answer(body));
            }
            Command::Admin(AdminCommand::Cancel { job_msgid }) => {
                let body = self.cancel_json(&job_msgid, now, out);
                out.push(answer(body.to_string()));
            }
            Command::Admin(AdminCommand::DeleteDead { job_msgid }) => {
                let body = self.delete_dead_letter(&job_msgid, now, out);
                out.push(answer(body.to_string()));
            }
            Command::Admin(AdminCommand::Purge { queue }) => {
                let body = self.purge(&queue, now, out);
                out.push(answer(body.to_string()));
            }
            Command::Admin(AdminCommand::Pause { queue }) => {
                let body = self.set_paused(&queue, true, now, out);
                out.push(answer(body.to_string()));
            }
            Command::Admin(AdminCommand::Resume { queue }) => {
                let body = self.set_paused(&queue, false, now, out);
                out.push(answer(body.to_string()));
            }
            Command::Admin(AdminCommand::RemoveSchedule { schedule_id }) => {
                let body = match self.schedule_id_for(&schedule_id) {
                    Ok(id) => {
                        self.remove_schedule(&id, "removed by an admin", out);
                        json!({"removed": &*id})
                    }
                    Err(why) => json!({"error": why}),
                };
                out.push(answer(body.to_string()));
            }
            Command::Disconnect => {
                // EventMQ's answer first (ACK), then the same graceful stop
                // as SIGTERM: KBYE to peers and exit once running jobs report.
                info!(%peer, msgid = %m.msgid, "DISCONNECT from admin: stopping");
                out.push(send(SocketKind::Admin, &peer, Command::Ack(Ack { acked_msgid: m.msgid })));
                if self.lifecycle.stopping.is_none() {
                    self.begin_stop(now);
                }
                self.finish_stop(now, out);
            }
            other => {
                self.count("unknown_admin_command");
                warn!(%peer, msgid = %m.msgid, command = other.name(), "unknown admin command");
                let body = json!({"error": format!("unknown admin command {}", other.name())}).to_string();
                out.push(answer(body));
            }
        }
    }

    /// A job record as its owner or an admin sees it: the job manager also
    /// by the name `emq-cli workers` shows (`--name`, else host:pid), and
    /// what the job runs (callable, arguments) while the router still
    /// holds its request (a dead letter, a retry, a delayed job).
    pub(super) fn with_job_detail(&self, msgid: &str, status: String) -> String {
        let Ok(mut v) = serde_json::from_str::<Value>(&status) else { return status };
        if let Some(id) = v.get("worker").and_then(Value::as_str) {
            let peer = PeerId::from(id);
            let name =
                self.peers.job_managers.get(&peer).and_then(|jm| jm.display_name()).or_else(|| {
                    self.peers.stale.get(&peer).and_then(|s| super::records::display_name(s.health.as_ref()))
                });
            if let Some(n) = name {
                v["job_manager_name"] = json!(n);
            }
        }
        let payload =
            self.outcomes.dead.iter().find(|d| &*d.msgid == msgid).map(|d| d.request.payload()).or_else(|| {
                self.timers.by_due.values().find_map(|t| match t {
                    super::Timer::Job { job, .. } if &*job.msgid == msgid => Some(job.request.payload()),
                    _ => None,
                })
            });
        let payload =
            payload.or_else(|| self.in_flight.get(msgid).and_then(|j| j.request.as_ref()).map(|r| r.payload()));
        if let Some(p) = payload {
            v["job"] = job_summary(p);
        }
        v.to_string()
    }

    /// Admin connections that proved they hold the token (bounded: the
    /// oldest is forgotten first; `emq-cli` connects anew for each call).
    fn authorize_admin(&mut self, peer: &PeerId) {
        self.admin.authorize(peer);
    }

    /// A connection that proved it holds the admin token, or a message
    /// signed with an admin's CURVE key.
    fn is_admin(&self, peer: &PeerId) -> bool {
        self.admin.sessions.contains(peer)
            || self.user.as_deref().is_some_and(|u| self.cfg.admin_users.iter().any(|a| a == u))
    }

    /// The admin token the router wrote to `data_dir/admin.token`.
    pub fn set_admin_token(&mut self, token: String) {
        self.admin.token = Some(token);
    }

    /// `STATUS`: EventMQ's six maps, plus `errors`, `uptime_secs`,
    /// `accepted`, `connected_workers`, `free_slots` and more.
    pub fn status_json(&self, now: Now) -> String {
        self.status_value(now).to_string()
    }

    fn status_value(&self, now: Now) -> Value {
        let mut inflight: Map<String, Value> = Map::new();
        for job in self.in_flight.values() {
            let e = inflight.entry(job.queue.clone()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + 1);
        }
        let waiting: Map<String, Value> =
            self.dispatch.queues.keys().map(|name| (name.clone(), json!(self.queue_len(name)))).collect();
        let s = &self.telemetry.stats;
        let latency = s.map(|c| (c.latency.count > 0).then(|| json!(c.latency.sum / c.latency.count as f64)));
        let max_latency = s.map(|c| (c.latency.count > 0).then(|| json!(c.latency.max)));
        let by_job_manager: Map<String, Value> =
            self.peers.job_managers.iter().map(|(p, jm)| (p.to_string(), json!(jm.processed))).collect();
        json!({
            "inflight_messages_by_queue": inflight,
            "latency_messages_by_queue": latency,
            "max_latency_messages_by_queue": max_latency,
            "waiting_messages_by_queue": waiting,
            "processed_messages_by_queue": s.counter_map(|c| c.processed),
            "processed_messages_by_worker": by_job_manager,
            "errors": self.counters.errors,
            "activity": self.counters.activity,
            "accepted": self.counters.accepted,
            "uptime_secs": now.mono.saturating_duration_since(self.lifecycle.started).as_secs_f64(),
            "connected_workers": self.peers.job_managers.len(),
            "failed_messages_by_queue": s.counter_map(|c| c.failed),
            "retried_messages_by_queue": s.counter_map(|c| c.retried),
            "refused_messages_by_queue": s.counter_map(|c| c.refused),
            "job_managers": self.job_managers_value(now),
            "retrying": self.retrying_count(),
            "delayed": self.delayed_count(),
            "delayed_bytes": self.timers.delayed_bytes,
            "held": self.held_count(),
            "workflows": self.workflow_count(),
            "held_bytes": self.workflows.bytes,
            "limits": self.limits_json(now, 50),
            "limit_waiting": self.limit_waiting(),
            "limit_waiting_bytes": self.limits.parked_bytes,
            "checkpointed_jobs": self.checkpointed_jobs(),
            "running_progress": self.running_progress(),
            "schedules": self.timers.schedules.len(),
            "paused_queues": self.paused_queues(),
            "dead_letters": self.outcomes.dead.len(),
            "free_slots": self.peers.job_managers.values().map(|jm| jm.free_slots as u64).sum::<u64>(),
            "in_doubt": self.suspects.in_doubt.len(),
            "stopping": self.lifecycle.stopping.is_some(),
            "journal": self.telemetry.journal_stats.as_ref().map(|j| j.to_json()),
            "ha": self.telemetry.ha,
            "buffered_bytes_in_memory": self.dispatch.buffered_bytes,
            "buffered_bytes_on_disk": self.dispatch.spill.bytes(),
            "buffered_jobs_on_disk": self.dispatch.spill.total(),
            "waiting_not_allowed": self.waiting_not_allowed(),
            "results_waiting_for_clients": self.outcomes.undelivered.len(),
        })
    }

    /// Why jobs wait although job managers of their queue are there: none
    /// of them allows the job's module (`allowed_paths`). Per queue: how
    /// many (of the first 1,000 waiting) and which modules (up to five).
    fn waiting_not_allowed(&self) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, q) in &self.dispatch.queues {
            if q.waiting.is_empty() {
                continue;
            }
            let jms: Vec<&super::JobManagerPeer> =
                q.job_managers.iter().filter_map(|(_, p)| self.peers.job_managers.get(p)).collect();
            if jms.is_empty() {
                continue;
            }
            let (mut n, mut pinned, mut commands) = (0u64, 0u64, 0u64);
            let mut modules: Vec<String> = Vec::new();
            let mut wants: Vec<String> = Vec::new();
            for job in q.waiting.iter().take(1000) {
                let (headers, payload) = (job.request.headers_str(), job.request.payload());
                if jms.iter().any(|jm| jm.accepts(headers, payload)) {
                    continue;
                }
                if emq_protocol::payload_is_command(payload) && !jms.iter().any(|jm| jm.runs_commands) {
                    commands += 1;
                } else if !jms.iter().any(|jm| jm.allows_payload(payload)) {
                    n += 1;
                    if let Some(m) = emq_protocol::payload_module(payload) {
                        if modules.len() < 5 && !modules.iter().any(|x| *x == *m) {
                            modules.push(m.into_owned());
                        }
                    }
                } else if let Some(p) = emq_protocol::Placement::of(headers) {
                    pinned += 1;
                    let d = p.describe();
                    if wants.len() < 5 && !wants.contains(&d) {
                        wants.push(d);
                    }
                }
            }
            let mut why = Map::new();
            if n > 0 {
                why.insert("waiting".into(), n.into());
                why.insert("modules".into(), json!(modules));
                why.insert(
                    "why".into(),
                    "no job manager of this queue allows these modules (allowed_paths): they wait for one that does"
                        .into(),
                );
            }
            if commands > 0 {
                why.insert("waiting_for_commands".into(), commands.into());
                why.insert(
                    "why_commands".into(),
                    "no job manager of this queue runs command jobs (allowed_commands): they wait for one that does"
                        .into(),
                );
            }
            if pinned > 0 {
                why.insert("waiting_for_labels".into(), pinned.into());
                why.insert("wants".into(), json!(wants));
                why.insert(
                    "why_pinned".into(),
                    "no job manager connected has the labels or name these jobs ask for (requires: / on:): they wait for one".into(),
                );
            }
            if !why.is_empty() {
                out.insert(name.clone(), Value::Object(why));
            }
        }
        out
    }

    /// `ROUTER_SHOW_WORKERS`: EventMQ's `connected_workers` (with `queues`,
    /// `hb`, `available_slots`) and `connected_queues`; extras per job
    /// manager: `name`, `last_seen_secs_ago`, `in_flight`, `processed`,
    /// `health`, `state`.
    pub fn workers_json(&self, now: Now) -> String {
        self.workers_value(now).to_string()
    }

    fn workers_value(&self, now: Now) -> Value {
        let since_start = |t: Instant| t.saturating_duration_since(self.lifecycle.started).as_secs_f64();
        let age = |t: Instant| now.mono.saturating_duration_since(t).as_secs_f64();
        let live = self.peers.job_managers.iter().map(|(peer, jm)| {
            let v = json!({
                "queues": jm.queues.0,
                "hb": since_start(jm.last_seen),
                "available_slots": jm.free_slots,
                "name": jm.display_name(),
                "user": jm.user.as_deref(),
                "last_seen_secs_ago": age(jm.last_seen),
                "in_flight": jm.in_flight,
                "processed": jm.processed,
                "health": jm.health,
                "state": self.liveness(now, jm.last_seen),
            });
            (peer.to_string(), v)
        });
        let stale = self.peers.stale.iter().map(|(peer, s)| {
            let v = json!({
                "queues": s.queues.0,
                "hb": since_start(s.last_seen),
                "available_slots": 0,
                "name": display_name(s.health.as_ref()),
                "last_seen_secs_ago": age(s.last_seen),
                "in_flight": 0,
                "processed": s.processed,
                "health": s.health,
                "state": "stale",
            });
            (peer.to_string(), v)
        });
        let workers: Map<String, Value> = live.chain(stale).collect();
        let queues: Map<String, Value> = self
            .dispatch
            .queues
            .iter()
            .filter(|(_, q)| !q.job_managers.is_empty())
            .map(|(name, q)| {
                let list: Vec<Value> = q.job_managers.iter().map(|(w, p)| json!([w, p.to_string()])).collect();
                (name.clone(), Value::Array(list))
            })
            .collect();
        json!({"connected_workers": workers, "connected_queues": queues})
    }

    /// `ok`, or `late` when heartbeats are overdue (more than two intervals)
    /// but the job manager is not yet past `heartbeat_timeout`.
    fn liveness(&self, now: Now, last_seen: Instant) -> &'static str {
        if now.mono.saturating_duration_since(last_seen) > self.cfg.heartbeat_interval * 2 {
            "late"
        } else {
            "ok"
        }
    }

    /// Per job manager: state (ok / late / stale), heartbeat age, health.
    fn job_managers_value(&self, now: Now) -> Map<String, Value> {
        let age = |t: Instant| now.mono.saturating_duration_since(t).as_secs_f64();
        let live = self.peers.job_managers.iter().map(|(p, jm)| {
            let v = json!({
                "state": self.liveness(now, jm.last_seen),
                "heartbeat_age_secs": age(jm.last_seen),
                "health": jm.health,
            });
            (p.to_string(), v)
        });
        let stale = self.peers.stale.iter().map(|(p, s)| {
            let v = json!({"state": "stale", "heartbeat_age_secs": age(s.last_seen), "health": s.health});
            (p.to_string(), v)
        });
        live.chain(stale).collect()
    }

    /// `GET /api/status`: STATUS, ROUTER_SHOW_WORKERS and recent failures.
    pub fn api_status_json(&self, now: Now) -> String {
        json!({
            "status": self.status_value(now),
            "workers": self.workers_value(now),
            "recent_failures": self.outcomes.recent_failures,
            "schedules": self.schedules_value(now, 200),
            "series": self.series_json(),
            "dead_letters": serde_json::from_str::<Value>(&self.dead_letters_json()).unwrap_or(Value::Null),
            "delayed": serde_json::from_str::<Value>(&self.delayed_json(50, now)).unwrap_or(Value::Null),
            "generated_at": now.unix,
        })
        .to_string()
    }

    /// `ROUTER_SHOW_SCHEDULERS`.
    pub fn schedulers_json(&self, _now: Now) -> String {
        let s: Map<String, Value> = self
            .peers
            .schedulers
            .iter()
            .map(|(p, s)| {
                (
                    p.to_string(),
                    json!({"hb": s.last_seen.saturating_duration_since(self.lifecycle.started).as_secs_f64()}),
                )
            })
            .collect();
        json!({ "connected_schedulers": s }).to_string()
    }

    /// `ROUTER_DEAD_LETTERS`.
    pub fn dead_letters_json(&self) -> String {
        let list: Vec<Value> = self
            .outcomes
            .dead
            .iter()
            .map(|d| {
                json!({
                    "msgid": &*d.msgid, "queue": d.queue, "attempts": d.attempts,
                    "error": {"type": d.error_type, "message": d.error_message},
                    "at": d.at, "payload": d.request.payload(),
                    "job": job_summary(d.request.payload()),
                })
            })
            .collect();
        json!({"dead_letters": list, "count": list.len()}).to_string()
    }

    /// `GET /metrics`: the latency histograms plus counters and gauges
    /// computed now from the state (see `crate::metrics` for the labels).
    pub fn metrics_text(&self, now: Now) -> String {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        // Per queue, from QueueStats.
        let accepted = counter("emq_jobs_accepted_total", "Jobs accepted from clients.", &["queue"]);
        let refused = counter("emq_jobs_refused_total", "Jobs refused (queue full, unknown queue, ...).", &["queue"]);
        let processed = counter("emq_jobs_processed_total", "Jobs finished (any outcome, final attempt).", &["queue"]);
        let failed = counter("emq_jobs_failed_total", "Jobs whose final attempt failed.", &["queue"]);
        let retried = counter("emq_jobs_retried_total", "Failed attempts scheduled to run again.", &["queue"]);
        for (q, c) in self.telemetry.stats.iter() {
            for (metric, n) in [
                (&accepted, c.accepted),
                (&refused, c.refused),
                (&processed, c.processed),
                (&failed, c.failed),
                (&retried, c.retried),
            ] {
                if n > 0 {
                    metric.with_label_values(&[q]).inc_by(n);
                }
            }
        }
        let waiting = gauge("emq_queue_waiting_jobs", "Jobs buffered, waiting for a free slot.", &["queue"]);
        for q in self.dispatch.queues.keys() {
            waiting.with_label_values(&[q.as_str()]).set(self.queue_len(q) as f64);
        }
        let in_flight = gauge("emq_queue_in_flight_jobs", "Jobs handed to job managers, not finished.", &["queue"]);
        for job in self.in_flight.values() {
            in_flight.with_label_values(&[job.queue.as_str()]).inc();
        }
        // Per job manager, by name.
        let age = gauge(
            "emq_jobmanager_heartbeat_age_seconds",
            "Seconds since the job manager was last heard (the longest, for unnamed ones).",
            &["jobmanager"],
        );
        let up = gauge(
            "emq_jobmanager_up",
            "Job managers heartbeating under this name (0 when only a stale one is left).",
            &["jobmanager"],
        );
        let slots = gauge("emq_jobmanager_free_slots", "READYs not yet used by a job.", &["jobmanager"]);
        let workers = gauge("emq_jobmanager_workers", "Worker processes reported in its health.", &["jobmanager"]);
        let rss = gauge("emq_worker_rss_bytes", "Resident memory of a worker process.", &["jobmanager", "pid"]);
        let jobs = gauge("emq_worker_jobs_completed", "Jobs completed by a worker process.", &["jobmanager", "pid"]);
        let mut ages: BTreeMap<String, f64> = BTreeMap::new();
        for jm in self.peers.job_managers.values() {
            let name = jm.display_name().unwrap_or_else(|| UNNAMED.to_owned());
            let a = ages.entry(name.clone()).or_insert(0.0);
            *a = a.max(now.mono.saturating_duration_since(jm.last_seen).as_secs_f64());
            up.with_label_values(&[name.as_str()]).add(1.0);
            slots.with_label_values(&[name.as_str()]).add(jm.free_slots as f64);
            if let Some(h) = &jm.health {
                workers.with_label_values(&[name.as_str()]).add(h.workers.len() as f64);
                for wk in &h.workers {
                    let pid = wk.pid.map_or_else(|| "none".to_owned(), |p| p.to_string());
                    rss.with_label_values(&[name.as_str(), pid.as_str()]).set(wk.rss_bytes.unwrap_or(0) as f64);
                    jobs.with_label_values(&[name.as_str(), pid.as_str()]).set(wk.jobs as f64);
                }
            }
        }
        for s in self.peers.stale.values() {
            let name = display_name(s.health.as_ref()).unwrap_or_else(|| UNNAMED.to_owned());
            if !ages.contains_key(&name) {
                ages.insert(name.clone(), now.mono.saturating_duration_since(s.last_seen).as_secs_f64());
                up.with_label_values(&[name.as_str()]).set(0.0);
            }
        }
        for (name, a) in &ages {
            age.with_label_values(&[name.as_str()]).set(*a);
        }
        let retrying = gauge("emq_jobs_retrying", "Failed jobs waiting for their retry.", &[]);
        retrying.with_label_values::<&str>(&[]).set(self.retrying_count() as f64);
        let delayed = gauge("emq_jobs_delayed", "Jobs waiting for their delay: / eta: time.", &[]);
        delayed.with_label_values::<&str>(&[]).set(self.delayed_count() as f64);
        let held = gauge("emq_jobs_held", "Jobs waiting for other jobs (workflow nodes, depends_on).", &[]);
        held.with_label_values::<&str>(&[]).set(self.held_count() as f64);
        let flows = gauge("emq_workflows", "Workflows under way.", &[]);
        flows.with_label_values::<&str>(&[]).set(self.workflow_count() as f64);
        let limits = self.limits_json(now, 0);
        if let Some(limits) = limits.as_object().filter(|l| !l.is_empty()) {
            let running = gauge("emq_limit_running", "Jobs of a limit running (all its partitions).", &["limit"]);
            let waiting = gauge("emq_limit_waiting", "Jobs waiting for their limit.", &["limit"]);
            let parts =
                gauge("emq_limit_partitions", "Partitions of a limit with jobs running or waiting.", &["limit"]);
            for (name, l) in limits {
                let num = |k: &str| l.get(k).and_then(Value::as_f64).unwrap_or(0.0);
                running.with_label_values(&[name.as_str()]).set(num("running"));
                waiting.with_label_values(&[name.as_str()]).set(num("waiting"));
                parts.with_label_values(&[name.as_str()]).set(num("active_partitions"));
            }
        }
        let schedules = gauge("emq_schedules", "Schedules the router runs.", &[]);
        schedules.with_label_values::<&str>(&[]).set(self.timers.schedules.len() as f64);
        let dead = gauge("emq_dead_letters", "Jobs that used up their retries.", &[]);
        dead.with_label_values::<&str>(&[]).set(self.outcomes.dead.len() as f64);
        let errors = counter("emq_router_anomalies_total", "Bad input and other anomalies, by kind.", &["kind"]);
        for (k, n) in &self.counters.errors {
            errors.with_label_values(&[*k]).inc_by(*n);
        }
        let activity = counter(
            "emq_router_activity_total",
            "Normal activity (retries, schedule runs, cancels...), by kind.",
            &["kind"],
        );
        for (k, n) in &self.counters.activity {
            activity.with_label_values(&[*k]).inc_by(*n);
        }
        let uptime = gauge("emq_router_uptime_seconds", "Seconds since the router started.", &[]);
        uptime
            .with_label_values::<&str>(&[])
            .set(now.mono.saturating_duration_since(self.lifecycle.started).as_secs_f64());
        if let Some(ha) = &self.telemetry.ha {
            let num = |k: &str| ha.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            let leader = gauge("emq_leader", "1 when this router leads (shared journal), else 0.", &[]);
            leader.with_label_values::<&str>(&[]).set(if ha.get("role").and_then(Value::as_str) == Some("leader") {
                1.0
            } else {
                0.0
            });
            gauge("emq_epoch", "The lease epoch this router leads under (the fencing token).", &[])
                .with_label_values::<&str>(&[])
                .set(num("epoch"));
            let failovers = counter("emq_failovers_total", "Times the lease passed to another router.", &[]);
            failovers.with_label_values::<&str>(&[]).inc_by(num("failovers") as u64);
        }
        let mut text = self.telemetry.metrics.render();
        text.push_str(&crate::metrics::encode(&r));
        text
    }

    /// Leadership as STATUS shows it (`ha`): role, epoch, lease, the other
    /// routers. None: no shared journal.
    pub fn set_ha_status(&mut self, ha: Option<Value>) {
        self.telemetry.ha = ha;
    }

    pub fn ha_status(&self) -> Option<&Value> {
        self.telemetry.ha.as_ref()
    }
}

/// Most bytes of a job's arguments shown in its detail (the rest is cut,
/// and said so): a status answer stays small whatever the job carries.
const SHOWN_ARGS_BYTES: usize = 4096;

/// What a payload runs, for people: `callable` (`pkg.mod.func` or
/// `pkg.mod:Class.method`), `args`, `kwargs` (cut past
/// [`SHOWN_ARGS_BYTES`] each, with `args_cut: true`).
fn job_summary(payload: &str) -> Value {
    if emq_protocol::payload_is_command(payload) {
        // A command job: its argv (cut like arguments), cwd, and the names
        // of the variables it sets (their values may be secrets).
        return match emq_protocol::CommandPayload::parse(payload) {
            Ok(c) => {
                let argv = Value::from(c.argv.clone()).to_string();
                let mut v = if argv.len() <= SHOWN_ARGS_BYTES {
                    json!({"command": c.argv})
                } else {
                    let mut end = SHOWN_ARGS_BYTES;
                    while !argv.is_char_boundary(end) {
                        end -= 1;
                    }
                    json!({"command": format!("{}…", &argv[..end]), "args_cut": true})
                };
                if let Some(cwd) = &c.cwd {
                    v["cwd"] = json!(cwd);
                }
                if !c.env.is_empty() {
                    v["env_names"] = json!(c.env.keys().collect::<Vec<_>>());
                }
                v
            }
            Err(e) => json!({"unreadable_payload": e}),
        };
    }
    match emq_protocol::RunPayload::parse(payload) {
        Ok(p) => {
            let mut cut = false;
            let mut shown = |v: Value| -> Value {
                let text = v.to_string();
                if text.len() <= SHOWN_ARGS_BYTES {
                    return v;
                }
                cut = true;
                let mut end = SHOWN_ARGS_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                Value::String(format!("{}…", &text[..end]))
            };
            let args = shown(Value::Array(p.args.clone()));
            let kwargs = shown(Value::Object(p.kwargs.clone()));
            let mut v = json!({"callable": format!("{}.{}", p.path, p.callable), "args": args, "kwargs": kwargs});
            if cut {
                v["args_cut"] = json!(true);
            }
            v
        }
        Err(e) => json!({"unreadable_payload": e.to_string()}),
    }
}

#[cfg(test)]
mod room_tests {
    //! The [`Admin`] room alone.
    use super::{Admin, MAX_ADMIN_SESSIONS};
    use emq_receiver::PeerId;

    #[test]
    fn sessions_are_bounded_oldest_first_and_end_with_the_token() {
        let mut a = Admin::default();
        assert!(!a.token_matches(""), "no token: nothing matches");
        a.rotate("t1".into());
        assert!(a.token_matches("t1") && !a.token_matches("t2") && !a.token_matches("t"));
        let peers: Vec<PeerId> =
            (0..MAX_ADMIN_SESSIONS + 3).map(|i| PeerId::from(format!("p{i}").as_bytes())).collect();
        for p in &peers {
            a.authorize(p);
            a.authorize(p);
        }
        assert_eq!(a.sessions.len(), MAX_ADMIN_SESSIONS);
        assert_eq!(a.order.len(), MAX_ADMIN_SESSIONS);
        assert!(!a.sessions.contains(&peers[0]) && a.sessions.contains(peers.last().unwrap()));
        a.rotate("t2".into());
        assert!(a.sessions.is_empty() && a.order.is_empty() && a.token_matches("t2"));
    }
}
