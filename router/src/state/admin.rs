//! Admin answers, with EventMQ's JSON keys first and our extras after them.

use super::{Now, RouterState};
use serde_json::{json, Map, Value};

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
                    }),
                )
            })
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
