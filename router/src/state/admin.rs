//! Admin answers, with EventMQ's JSON keys first and our extras after them.

use super::{Now, RouterState};
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::{json, Map, Value};

/// The keys of EventMQ's STATUS answer, which ours keeps (and adds to).
pub const EVENTMQ_STATUS_KEYS: [&str; 6] = [
    "inflight_messages_by_queue",
    "latency_messages_by_queue",
    "max_latency_messages_by_queue",
    "waiting_messages_by_queue",
    "processed_messages_by_queue",
    "processed_messages_by_worker",
];

impl RouterState {
    /// `STATUS`: EventMQ's six maps, plus `errors`, `uptime_secs`,
    /// `accepted`, `connected_workers` and `free_slots`.
    pub fn status_json(&self, now: Now) -> String {
        let mut inflight: Map<String, Value> = Map::new();
        for job in self.in_flight.values() {
            let e = inflight.entry(job.queue.clone()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + 1);
        }
        let waiting: Map<String, Value> =
            self.queues.iter().map(|(name, q)| (name.clone(), json!(q.waiting.len()))).collect();
        let latency: Map<String, Value> = self
            .latency_by_queue
            .iter()
            .map(|(q, l)| (q.clone(), json!(if l.count > 0 { l.sum / l.count as f64 } else { 0.0 })))
            .collect();
        let max_latency: Map<String, Value> =
            self.latency_by_queue.iter().map(|(q, l)| (q.clone(), json!(l.max))).collect();
        let by_worker: Map<String, Value> =
            self.workers.iter().map(|(p, w)| (p.to_string(), json!(w.processed))).collect();
        json!({
            "inflight_messages_by_queue": inflight,
            "latency_messages_by_queue": latency,
            "max_latency_messages_by_queue": max_latency,
            "waiting_messages_by_queue": waiting,
            "processed_messages_by_queue": self.processed_by_queue,
            "processed_messages_by_worker": by_worker,
            "errors": self.errors,
            "accepted": self.accepted,
            "uptime_secs": now.mono.saturating_duration_since(self.started).as_secs_f64(),
            "connected_workers": self.workers.len(),
            "failed_messages_by_queue": self.failed_by_queue,
            "retried_messages_by_queue": self.retried_by_queue,
            "refused_messages_by_queue": self.refused_by_queue,
            "job_managers": self.job_managers_json(now),
            "retrying": self.delayed.len(),
            "dead_letters": self.dead.len(),
            "free_slots": self.workers.values().map(|w| w.free_slots as u64).sum::<u64>(),
        })
        .to_string()
    }

    /// `ROUTER_SHOW_WORKERS`: EventMQ's `connected_workers` (with `queues`,
    /// `hb`, `available_slots`) and `connected_queues`; extras per worker:
    /// `last_seen_secs_ago`, `in_flight`, `processed`, `health`.
    pub fn workers_json(&self, now: Now) -> String {
        let workers: Map<String, Value> = self
            .workers
            .iter()
            .map(|(peer, w)| {
                let hb = w.last_seen.saturating_duration_since(self.started).as_secs_f64();
                let health = w.health.as_deref().and_then(|h| serde_json::from_str::<Value>(h).ok());
                (
                    peer.to_string(),
                    json!({
                        "queues": w.queues.0,
                        "hb": hb,
                        "available_slots": w.free_slots,
                        "last_seen_secs_ago": now.mono.saturating_duration_since(w.last_seen).as_secs_f64(),
                        "in_flight": w.in_flight,
                        "processed": w.processed,
                        "health": health,
                        "state": self.liveness(now, w.last_seen),
                    }),
                )
            })
            .chain(self.stale.iter().map(|(peer, s)| {
                (
                    peer.to_string(),
                    json!({
                        "queues": s.queues.0,
                        "hb": s.last_seen.saturating_duration_since(self.started).as_secs_f64(),
                        "available_slots": 0,
                        "last_seen_secs_ago": now.mono.saturating_duration_since(s.last_seen).as_secs_f64(),
                        "in_flight": 0,
                        "processed": s.processed,
                        "health": s.health.as_deref().and_then(|h| serde_json::from_str::<Value>(h).ok()),
                        "state": "stale",
                    }),
                )
            }))
            .collect();
        let queues: Map<String, Value> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.workers.is_empty())
            .map(|(name, q)| {
                let list: Vec<Value> = q.workers.iter().map(|(w, p)| json!([w, p.to_string()])).collect();
                (name.clone(), Value::Array(list))
            })
            .collect();
        json!({"connected_workers": workers, "connected_queues": queues}).to_string()
    }

    /// `ok`, or `late` when heartbeats are overdue (more than two intervals)
    /// but the job manager is not yet past `heartbeat_timeout`.
    fn liveness(&self, now: Now, last_seen: std::time::Instant) -> &'static str {
        if now.mono.saturating_duration_since(last_seen) > self.cfg.heartbeat_interval * 2 {
            "late"
        } else {
            "ok"
        }
    }

    /// Per job manager: state (ok / late / stale), heartbeat age, health.
    fn job_managers_json(&self, now: Now) -> Map<String, Value> {
        let live = self.workers.iter().map(|(p, w)| {
            (
                p.to_string(),
                json!({
                    "state": self.liveness(now, w.last_seen),
                    "heartbeat_age_secs": now.mono.saturating_duration_since(w.last_seen).as_secs_f64(),
                    "health": w.health.as_deref().and_then(|h| serde_json::from_str::<Value>(h).ok()),
                }),
            )
        });
        let stale = self.stale.iter().map(|(p, s)| {
            (
                p.to_string(),
                json!({
                    "state": "stale",
                    "heartbeat_age_secs": now.mono.saturating_duration_since(s.last_seen).as_secs_f64(),
                    "health": s.health.as_deref().and_then(|h| serde_json::from_str::<Value>(h).ok()),
                }),
            )
        });
        live.chain(stale).collect()
    }

    /// `GET /api/status`: STATUS, ROUTER_SHOW_WORKERS and recent failures.
    pub fn api_status_json(&self, now: Now) -> String {
        let status: Value = serde_json::from_str(&self.status_json(now)).unwrap_or(Value::Null);
        let workers: Value = serde_json::from_str(&self.workers_json(now)).unwrap_or(Value::Null);
        json!({"status": status, "workers": workers, "recent_failures": self.recent_failures, "generated_at": now.unix})
            .to_string()
    }

    /// `GET /metrics`: the accumulated counters and histograms plus gauges
    /// computed now.
    pub fn metrics_text(&self, now: Now) -> String {
        let r = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let waiting = gauge("emq_queue_waiting_jobs", "Jobs buffered, waiting for a free slot.", &["queue"]);
        for (q, st) in &self.queues {
            waiting.with_label_values(&[q.as_str()]).set(st.waiting.len() as f64);
        }
        let in_flight = gauge("emq_queue_in_flight_jobs", "Jobs handed to job managers, not finished.", &["queue"]);
        for job in self.in_flight.values() {
            in_flight.with_label_values(&[job.queue.as_str()]).inc();
        }
        let age = gauge(
            "emq_jobmanager_heartbeat_age_seconds",
            "Seconds since the job manager was last heard.",
            &["jobmanager"],
        );
        let up = gauge(
            "emq_jobmanager_up",
            "1 when heartbeating, 0 when stale (removed, shown for a while).",
            &["jobmanager"],
        );
        let slots = gauge("emq_jobmanager_free_slots", "READYs not yet used by a job.", &["jobmanager"]);
        let workers = gauge("emq_jobmanager_workers", "Worker processes reported in its health.", &["jobmanager"]);
        let rss = gauge("emq_worker_rss_bytes", "Resident memory of a worker process.", &["jobmanager", "pid"]);
        let jobs = gauge("emq_worker_jobs_completed", "Jobs completed by a worker process.", &["jobmanager", "pid"]);
        for (p, w) in &self.workers {
            let id = p.to_string();
            age.with_label_values(&[id.as_str()]).set(now.mono.saturating_duration_since(w.last_seen).as_secs_f64());
            up.with_label_values(&[id.as_str()]).set(1.0);
            slots.with_label_values(&[id.as_str()]).set(w.free_slots as f64);
            if let Some(h) = w.health.as_deref().and_then(|h| serde_json::from_str::<Value>(h).ok()) {
                let list = h["workers"].as_array().cloned().unwrap_or_default();
                workers.with_label_values(&[id.as_str()]).set(list.len() as f64);
                for wk in list {
                    let pid = wk["pid"].to_string();
                    rss.with_label_values(&[id.as_str(), pid.as_str()]).set(wk["rss_bytes"].as_f64().unwrap_or(0.0));
                    jobs.with_label_values(&[id.as_str(), pid.as_str()]).set(wk["jobs"].as_f64().unwrap_or(0.0));
                }
            }
        }
        for (p, s) in &self.stale {
            let id = p.to_string();
            age.with_label_values(&[id.as_str()]).set(now.mono.saturating_duration_since(s.last_seen).as_secs_f64());
            up.with_label_values(&[id.as_str()]).set(0.0);
        }
        let retrying = IntGaugeVec::new(Opts::new("emq_jobs_retrying", "Failed jobs waiting for their retry."), &[])
            .expect("valid");
        r.register(Box::new(retrying.clone())).expect("unique");
        retrying.with_label_values::<&str>(&[]).set(self.delayed.len() as i64);
        let dead =
            IntGaugeVec::new(Opts::new("emq_dead_letters", "Jobs that used up their retries."), &[]).expect("valid");
        r.register(Box::new(dead.clone())).expect("unique");
        dead.with_label_values::<&str>(&[]).set(self.dead.len() as i64);
        let errors = IntCounterVec::new(
            Opts::new("emq_router_anomalies_total", "Bad input and other anomalies, by kind."),
            &["kind"],
        )
        .expect("valid");
        r.register(Box::new(errors.clone())).expect("unique");
        for (k, n) in &self.errors {
            errors.with_label_values(&[*k]).inc_by(*n);
        }
        let uptime = gauge("emq_router_uptime_seconds", "Seconds since the router started.", &[]);
        uptime.with_label_values::<&str>(&[]).set(now.mono.saturating_duration_since(self.started).as_secs_f64());
        let mut text = self.metrics.render();
        text.push_str(&crate::metrics::encode(&r));
        text
    }

    /// `ROUTER_SHOW_SCHEDULERS`.
    pub fn schedulers_json(&self, _now: Now) -> String {
        let s: Map<String, Value> = self
            .schedulers
            .iter()
            .map(|(p, s)| {
                (p.to_string(), json!({"hb": s.last_seen.saturating_duration_since(self.started).as_secs_f64()}))
            })
            .collect();
        json!({ "connected_schedulers": s }).to_string()
    }
}
