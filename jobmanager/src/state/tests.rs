//! Job manager state-machine tests with a fake clock.

use super::*;
use emq_protocol::{Ack, Heartbeat, Message, Request};

fn cfg(workers: usize) -> JmConfig {
    JmConfig {
        queues: QueueSpec::default_queues(),
        workers,
        max_job_count: 3,
        max_memory_per_worker: 0,
        global_timeout: Duration::from_secs(300),
        max_runtime: Duration::from_secs(86_400),
        kill_grace: Duration::from_secs(10),
        kill_escalation: Duration::from_secs(1),
        heartbeat_interval: Duration::from_secs(3),
        router_silence_limit: Duration::from_secs(15),
        reconnect_timeout: Duration::from_secs(5),
        worker_pipeline: 1,
        prefetch: 0,
        prefetch_below: Duration::from_millis(5),
        prefetch_span: Duration::from_millis(250),
        prefetch_bytes: 64 << 20,
        spares: 0,
        steal_after: Duration::from_millis(10),
        reply_linger: Duration::ZERO,
        addrs: vec!["tcp://a".into(), "tcp://b".into()],
        allowed_paths: vec!["*".into()],
        allowed_commands: vec!["/bin/echo".into()],
        command_output_bytes: 1 << 20,
        labels: Vec::new(),
    }
}

struct H {
    s: JobManagerState,
    now: Instant,
}

impl H {
    fn new(workers: usize) -> Self {
        let now = Instant::now();
        H { s: JobManagerState::new(cfg(workers), now), now }
    }
    fn with(c: JmConfig) -> Self {
        let now = Instant::now();
        H { s: JobManagerState::new(c, now), now }
    }
    fn ev(&mut self, e: Event) -> Vec<Action> {
        self.s.handle_vec(e, self.now)
    }
    fn adv(&mut self, secs: f64) {
        self.now += Duration::from_secs_f64(secs);
    }
    /// Start, all workers up, ACK received.
    fn running(workers: usize) -> (Self, Vec<Action>) {
        H::running_with(cfg(workers))
    }
    /// [`H::running`] with `c`: what the ACK brought.
    fn running_with(c: JmConfig) -> (Self, Vec<Action>) {
        let workers = c.workers;
        let mut h = H::with(c);
        h.ev(Event::Start);
        for slot in 0..workers {
            h.ev(Event::WorkerUp { slot, pid: 100 + slot as u32 });
        }
        let out = h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "x".into() })))));
        (h, out)
    }
    fn request(&mut self, msgid: &str, headers: &str, payload: &str) -> Vec<Action> {
        let r = Request { queue: "default".into(), headers: headers.into(), payload: payload.into() };
        self.ev(Event::Router(Ok(Message::with_msgid(msgid, Command::Request(r)))))
    }
    /// One job of `secs` run on the idle worker `slot` (`msgid`): what its
    /// Done brought (prefetch starts once a job has finished).
    fn one_job(&mut self, slot: usize, msgid: &str, secs: f64) -> Vec<Action> {
        let out = self.request(msgid, "", ADD);
        assert!(names(&out).contains(&format!("run{slot}")), "{out:?}");
        self.adv(secs);
        self.ev(Event::WorkerDone { slot, msgid: msgid.into(), reply_json: "{}".into(), error_type: None })
    }
}

const ADD: &str = r#"["run", {"path": "benchjobs", "callable": "add", "args": [2, 3]}]"#;

fn names(out: &[Action]) -> Vec<String> {
    out.iter()
        .map(|a| match a {
            Action::Send(m) => m.command.name().to_owned(),
            Action::Heartbeat(_) => "HEARTBEAT".into(),
            Action::Connect { .. } => "connect".into(),
            Action::Spawn { slot } => format!("spawn{slot}"),
            Action::Run { slot, .. } => format!("run{slot}"),
            Action::Retire { slot } => format!("retire{slot}"),
            Action::Steal { slot } => format!("steal{slot}"),
            Action::Kill { slot, force } => format!("kill{slot}{}", if *force { "!" } else { "" }),
            Action::Exit(c) => format!("exit{c}"),
        })
        .collect()
}

fn reply_of(out: &[Action]) -> (String, JobReply) {
    out.iter()
        .find_map(|a| match a {
            Action::Send(Message { command: Command::Reply(Reply::Result { reply_json, orig_msgid }), .. }) => {
                Some((orig_msgid.clone(), JobReply::from_json(reply_json).unwrap()))
            }
            _ => None,
        })
        .expect("a REPLY")
}

#[test]
fn start_informs_spawns_and_announces_after_ack() {
    let mut h = H::new(2);
    assert_eq!(names(&h.ev(Event::Start)), vec!["connect", "INFORM", "spawn0", "spawn1"]);
    // Workers up before the ACK: nothing announced yet.
    assert!(h.ev(Event::WorkerUp { slot: 0, pid: 1 }).is_empty());
    assert_eq!(
        names(&h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))))),
        vec!["HEARTBEAT", "READY"],
        "a heartbeat at once: the router learns which jobs we hold"
    );
    assert_eq!(names(&h.ev(Event::WorkerUp { slot: 1, pid: 2 })), vec!["READY"]);
}

#[test]
fn one_address_reinform_until_ack_and_reconnect_when_router_is_silent() {
    let mut h = H::with(JmConfig { addrs: vec!["tcp://a".into()], ..cfg(1) });
    h.ev(Event::Start);
    h.adv(5.0);
    assert_eq!(names(&h.ev(Event::Tick)), vec!["INFORM"]);
    h.adv(10.0);
    let out = h.ev(Event::Tick);
    assert_eq!(out[0], Action::Connect { addr: "tcp://a".into() });
    assert_eq!(names(&out), vec!["connect", "INFORM"]);
    // A dropped connection: ZeroMQ reconnects to the one address by itself.
    assert!(h.ev(Event::RouterDisconnected).is_empty());
}

#[test]
fn with_standbys_an_address_without_ack_is_left_for_the_next() {
    let mut h = H::new(1);
    h.ev(Event::Start);
    // A standby binds nothing: no ACK within 2 s, the next address.
    h.adv(1.9);
    assert!(names(&h.ev(Event::Tick)).is_empty());
    h.adv(0.2);
    let out = h.ev(Event::Tick);
    assert_eq!(out[0], Action::Connect { addr: "tcp://b".into() }, "failover address next");
    assert_eq!(names(&out), vec!["connect", "INFORM"]);
    h.adv(2.1);
    assert_eq!(h.ev(Event::Tick)[0], Action::Connect { addr: "tcp://a".into() }, "and round again");
    // Once ACKed it stays; a dropped connection moves on at once (the
    // leader is likely gone), and so does a goodbye.
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))));
    h.adv(3.0);
    let out = h.ev(Event::Tick);
    assert!(!out.iter().any(|a| matches!(a, Action::Connect { .. })), "{out:?}");
    assert_eq!(h.ev(Event::RouterDisconnected)[0], Action::Connect { addr: "tcp://b".into() });
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))));
    assert_eq!(h.ev(Event::Router(Ok(Message::new(Command::Kbye))))[0], Action::Connect { addr: "tcp://a".into() });
}

#[test]
fn ready_only_after_the_reply_and_one_per_job() {
    let (mut h, out) = H::running(1);
    assert_eq!(names(&out), vec!["HEARTBEAT", "READY"]);
    assert_eq!(names(&h.request("j1", "", ADD)), vec!["run0"]);
    let out =
        h.ev(Event::WorkerDone { slot: 0, msgid: "j1".into(), reply_json: r#"{"value":5}"#.into(), error_type: None });
    assert_eq!(names(&out), vec!["REPLY", "READY"]);
    assert_eq!(h.s.stats().jobs_by_pid()[&100], 1);
}

#[test]
fn bad_payload_and_disallowed_module_are_refused_and_the_slot_reannounced() {
    let mut c = cfg(1);
    c.allowed_paths = vec!["benchjobs".into()];
    let mut h = H::with(c);
    h.ev(Event::Start);
    h.ev(Event::WorkerUp { slot: 0, pid: 1 });
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))));
    let out = h.request("bad", "", "not json");
    assert_eq!(names(&out), vec!["REPLY", "READY"]);
    assert_eq!(reply_of(&out).1.error.unwrap().kind.as_str(), "BadPayload");
    let out = h.request("evil", "", r#"["run", {"path": "os", "callable": "system", "args": ["true"]}]"#);
    assert_eq!(names(&out), vec!["REPLY", "READY"]);
    assert_eq!(reply_of(&out).1.error.unwrap().kind.as_str(), "refused");
    assert_eq!(names(&h.request("ok", "", r#"["run", {"path": "benchjobs.sub", "callable": "f"}]"#)), vec!["run0"]);
}

#[test]
fn worker_death_during_a_job_is_an_error_and_the_replacement_is_announced_when_up() {
    let (mut h, _) = H::running(1);
    h.request("j", "", ADD);
    let out = h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "exit status 1".into() });
    assert_eq!(names(&out), vec!["REPLY", "spawn0"]);
    let (id, r) = reply_of(&out);
    assert_eq!(id, "j");
    assert_eq!(r.error.unwrap().kind.as_str(), "worker died");
    assert_eq!(h.s.stats().restarts()["died"], 1);
    assert_eq!(names(&h.ev(Event::WorkerUp { slot: 0, pid: 101 })), vec!["READY"]);
}

#[test]
fn idle_worker_death_keeps_its_announced_slot() {
    let (mut h, _) = H::running(1);
    assert_eq!(names(&h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "killed".into() })), vec!["spawn0"]);
    // A job arriving meanwhile waits for the replacement.
    assert!(h.request("j", "", ADD).is_empty());
    assert_eq!(names(&h.ev(Event::WorkerUp { slot: 0, pid: 101 })), vec!["run0"]);
}

#[test]
fn timeout_replies_kills_and_escalates() {
    let (mut h, _) = H::running(1);
    h.request("slow", "timeout:1", ADD);
    h.adv(0.9);
    assert!(names(&h.ev(Event::Tick)).is_empty());
    h.adv(0.2);
    let out = h.ev(Event::Tick);
    assert_eq!(names(&out), vec!["REPLY", "kill0"]);
    assert_eq!(reply_of(&out).1.error.unwrap().kind.as_str(), "timeout");
    h.adv(1.0);
    assert_eq!(names(&h.ev(Event::Tick)), vec!["kill0!"]);
    assert_eq!(names(&h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "signal 9".into() })), vec!["spawn0"]);
    // A result racing the kill is ignored.
    assert!(h
        .ev(Event::WorkerDone { slot: 0, msgid: "slow".into(), reply_json: "{}".into(), error_type: None })
        .is_empty());
}

#[test]
fn recycles_after_max_job_count() {
    let (mut h, _) = H::running(1);
    for i in 0..3 {
        h.request(&format!("j{i}"), "", ADD);
        let out =
            h.ev(Event::WorkerDone { slot: 0, msgid: format!("j{i}"), reply_json: "{}".into(), error_type: None });
        if i < 2 {
            assert_eq!(names(&out), vec!["REPLY", "READY"]);
        } else {
            assert_eq!(names(&out), vec!["REPLY", "retire0"]);
        }
    }
    assert_eq!(h.s.stats().jobs_by_pid()[&100], 3);
    assert_eq!(names(&h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "exit status 0".into() })), vec!["spawn0"]);
    assert_eq!(names(&h.ev(Event::WorkerUp { slot: 0, pid: 101 })), vec!["READY"]);
    assert_eq!(h.s.stats().restarts()["recycled"], 1);
}

#[test]
fn stop_drains_running_jobs_then_exits() {
    let (mut h, _) = H::running(2);
    h.request("j", "", ADD);
    let out = h.ev(Event::Stop);
    assert_eq!(names(&out), vec!["KBYE", "retire1"]);
    assert!(h.ev(Event::WorkerExited { slot: 1, pid: 101, exit: "exit status 0".into() }).is_empty());
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "j".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out), vec!["REPLY", "retire0"]);
    assert_eq!(names(&h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "exit status 0".into() })), vec!["exit0"]);
}

#[test]
fn stop_kills_after_grace_and_second_stop_is_immediate() {
    let (mut h, _) = H::running(1);
    h.request("j", "", ADD);
    h.ev(Event::Stop);
    h.adv(10.0);
    let out = h.ev(Event::Tick);
    // It keeps heartbeating while it drains, so the router keeps it.
    assert_eq!(names(&out), vec!["HEARTBEAT", "REPLY", "kill0!"]);
    assert_eq!(reply_of(&out).1.error.unwrap().kind.as_str(), "killed");
    assert_eq!(names(&h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "signal 9".into() })), vec!["exit0"]);

    let (mut h, _) = H::running(1);
    h.request("j", "", ADD);
    h.ev(Event::Stop);
    assert_eq!(names(&h.ev(Event::Stop)), vec!["REPLY", "kill0!", "exit130"]);
}

#[test]
fn router_kbye_reconnects_and_reannounces() {
    let (mut h, _) = H::running(2);
    let out = h.ev(Event::Router(Ok(Message::new(Command::Kbye))));
    assert_eq!(names(&out), vec!["connect", "INFORM"]);
    let out = h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))));
    assert_eq!(names(&out), vec!["HEARTBEAT", "READY", "READY"]);
}

/// The connection drops and comes back (a restarted router): INFORM again
/// on the same identity; after the ACK, a heartbeat listing the jobs held,
/// then the recent reports again (a report may have died with the router).
#[test]
fn reconnect_reinforms_and_sends_recent_reports_again() {
    let (mut h, _) = H::running(1);
    h.request("j1", "", ADD);
    h.request("j2", "", ADD);
    h.ev(Event::WorkerDone { slot: 0, msgid: "j1".into(), reply_json: r#"{"value":5}"#.into(), error_type: None });
    let out = h.ev(Event::RouterReconnected);
    assert_eq!(names(&out), vec!["INFORM"], "same identity: no new socket");
    let out = h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i2".into() })))));
    assert_eq!(names(&out)[..2], ["HEARTBEAT", "REPLY"]);
    let Action::Heartbeat(health) = &out[0] else { panic!() };
    assert_eq!(health.in_flight.iter().map(|j| j.msgid.as_str()).collect::<Vec<_>>(), vec!["j2"]);
    assert_eq!(reply_of(&out).0, "j1", "the report the router may have missed");
    // Kept until the router confirms them: its heartbeat says it holds the
    // first REPLY sent since this INFORM (the j1 sent again), so only j2,
    // finished next, is sent again after the next reconnect.
    h.ev(Event::WorkerDone { slot: 0, msgid: "j2".into(), reply_json: "{}".into(), error_type: None });
    let confirm = Heartbeat { timestamp: "1".into(), health: Some(r#"{"reports":1}"#.into()) };
    h.ev(Event::Router(Ok(Message::new(Command::Heartbeat(confirm)))));
    h.ev(Event::RouterReconnected);
    let out = h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i3".into() })))));
    let resent: Vec<String> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send(Message { command: Command::Reply(Reply::Result { orig_msgid, .. }), .. }) => {
                Some(orig_msgid.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(resent, vec!["j2"]);
}

#[test]
fn heartbeats_carry_health() {
    let (mut h, _) = H::running(1);
    h.request("j", "", ADD);
    h.adv(3.0);
    let out = h.ev(Event::Tick);
    let Some(Action::Heartbeat(health)) = out.first() else { panic!("{out:?}") };
    assert_eq!(health.in_flight[0].msgid, "j");
    assert_eq!(health.workers[0].pid, Some(100));
}

fn pipelined(workers: usize) -> (H, Vec<Action>) {
    let mut c = cfg(workers);
    c.worker_pipeline = 2;
    c.max_job_count = 100;
    let mut h = H::with(c);
    h.ev(Event::Start);
    for slot in 0..workers {
        h.ev(Event::WorkerUp { slot, pid: 100 + slot as u32 });
    }
    let out = h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "x".into() })))));
    (h, out)
}

#[test]
fn pipelining_announces_depth_per_worker_and_queues_behind_short_jobs() {
    let (mut h, out) = pipelined(1);
    assert_eq!(names(&out), vec!["HEARTBEAT", "READY", "READY"]);
    assert_eq!(names(&h.request("a", "", ADD)), vec!["run0"]);
    assert_eq!(names(&h.request("b", "", ADD)), vec!["run0"], "queued behind a");
    // a done: the worker goes straight on with b; the freed place is re-announced.
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "a".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out), vec!["REPLY", "READY"]);
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "b".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out), vec!["REPLY", "READY"]);
    assert_eq!(h.s.stats().jobs_by_pid()[&100], 2);
}

#[test]
fn jobs_behind_a_long_job_are_stolen_back_and_run_elsewhere() {
    let (mut h, _) = pipelined(2);
    h.request("long", "", ADD); // worker 0
    h.request("short", "", ADD); // worker 1
    assert_eq!(names(&h.request("behind", "", ADD)), vec!["run0"], "queued behind the youngest");
    h.adv(0.02);
    assert_eq!(names(&h.ev(Event::Tick)), vec!["steal0"]);
    // Worker 1 frees up; then the stolen job comes back and goes there.
    h.ev(Event::WorkerDone { slot: 1, msgid: "short".into(), reply_json: "{}".into(), error_type: None });
    let out = h.ev(Event::WorkerStole { slot: 0, msgids: vec!["behind".into()] });
    assert_eq!(names(&out), vec!["run1"]);
}

#[test]
fn never_started_jobs_of_a_dead_worker_run_elsewhere() {
    let (mut h, _) = pipelined(2);
    h.request("a", "", ADD);
    h.request("b", "", ADD);
    h.request("queued", "", ADD); // behind a on worker 0
    let out = h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "signal 9".into() });
    let (id, r) = reply_of(&out);
    assert_eq!((id.as_str(), r.error.unwrap().kind.as_str()), ("a", "worker died"));
    // "queued" never started: it is not failed, it runs on worker 1 next.
    assert!(names(&out).contains(&"run1".to_string()), "{:?}", names(&out));
    let replies = out.iter().filter(|a| matches!(a, Action::Send(Message { command: Command::Reply(_), .. }))).count();
    assert_eq!(replies, 1);
}

#[test]
fn a_ready_spare_takes_over_at_once_when_a_worker_dies_or_is_recycled() {
    let mut c = cfg(1);
    c.spares = 1;
    c.max_job_count = 2;
    let mut h = H::with(c);
    assert_eq!(names(&h.ev(Event::Start)), vec!["connect", "INFORM", "spawn0", "spawn1"]);
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))));
    assert_eq!(names(&h.ev(Event::WorkerUp { slot: 1, pid: 201 })), Vec::<String>::new(), "the spare is not announced");
    assert_eq!(names(&h.ev(Event::WorkerUp { slot: 0, pid: 200 })), vec!["READY"]);
    h.request("j", "", ADD);
    // Its worker dies: the error goes out and the spare is announced at once.
    let out = h.ev(Event::WorkerExited { slot: 0, pid: 200, exit: "signal 9".into() });
    assert_eq!(names(&out), vec!["REPLY", "spawn0", "READY"]);
    assert_eq!(names(&h.request("k", "", ADD)), vec!["run1"]);
    // Slot 0 restarts as the new spare; recycling slot 1 hands over to it.
    h.ev(Event::WorkerUp { slot: 0, pid: 202 });
    h.ev(Event::WorkerDone { slot: 1, msgid: "k".into(), reply_json: "{}".into(), error_type: None });
    h.request("l", "", ADD);
    let out = h.ev(Event::WorkerDone { slot: 1, msgid: "l".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out), vec!["REPLY", "retire1", "READY"]);
    assert_eq!(names(&h.request("m", "", ADD)), vec!["run0"]);
}

#[test]
fn prefetch_only_while_jobs_are_short() {
    let mut c = cfg(1);
    c.prefetch = 3;
    c.max_job_count = 1000;
    let (mut h, out) = H::running_with(c);
    assert_eq!(names(&out), ["HEARTBEAT", "READY"], "no prefetch before a job has finished: their length is unknown");
    let out = h.one_job(0, "first", 0.001);
    assert_eq!(names(&out), ["REPLY", "READY", "READY", "READY", "READY"], "the worker's READY + 3 prefetched");
    // Jobs turn long: the average passes prefetch_below, no more prefetch READYs.
    for i in 0..30 {
        h.request(&format!("j{i}"), "", ADD);
        h.adv(0.05);
        h.ev(Event::WorkerDone { slot: 0, msgid: format!("j{i}"), reply_json: "{}".into(), error_type: None });
    }
    assert!(h.s.stats().job_secs_avg() > 0.005);
    let out = h.request("x", "", ADD);
    assert_eq!(names(&out), vec!["run0"]);
    h.adv(0.05);
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "x".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out), vec!["REPLY", "READY"], "one READY per freed worker, no prefetch ones");
}

/// What one job manager may hold back from the others is bounded in
/// time as well as in jobs: the prefetched jobs cover at most
/// `prefetch_span` of the workers' time at the average job length.
#[test]
fn prefetch_covers_at_most_prefetch_span_of_the_workers_time() {
    let mut c = cfg(2);
    c.prefetch = 1000;
    c.max_job_count = 1_000_000;
    let (mut h, out) = H::running_with(c);
    let readies = |out: &[Action]| names(out).iter().filter(|n| *n == "READY").count();
    assert_eq!(readies(&out), 2, "one per worker; no prefetch before a job has finished");
    // Jobs of 1 ms (the first run is the average): 2 × 0.25 s ÷ 1 ms = 500.
    let out = h.one_job(0, "j0", 0.001);
    let mut free = 2 - 1 + readies(&out);
    assert_eq!(free, 502, "1 ms jobs: 500 prefetched");
    // Jobs of 0.1 ms: 5,000 by time, `prefetch` (1,000) by count.
    for i in 1..60 {
        h.request(&format!("j{i}"), "", ADD);
        free -= 1;
        h.adv(0.0001);
        let out =
            h.ev(Event::WorkerDone { slot: 0, msgid: format!("j{i}"), reply_json: "{}".into(), error_type: None });
        free += readies(&out);
    }
    assert!(h.s.stats().job_secs_avg() < 0.00025);
    assert_eq!(free, 1002, "short jobs: `prefetch` at most");
    // Jobs turn long (≥ prefetch_below): no READY beyond the freed worker's.
    for i in 60..100 {
        h.request(&format!("j{i}"), "", ADD);
        h.adv(0.05);
        let out =
            h.ev(Event::WorkerDone { slot: 0, msgid: format!("j{i}"), reply_json: "{}".into(), error_type: None });
        assert!(readies(&out) <= 1, "{out:?}");
    }
}

/// A job manager's memory is bounded whatever size the jobs are: the
/// prefetched jobs take at most `prefetch_bytes` at the average payload
/// size, and none are prefetched while the local queue takes that much.
#[test]
fn prefetch_takes_at_most_prefetch_bytes_of_payload() {
    let mut c = cfg(2);
    c.prefetch = 1000;
    c.prefetch_bytes = 1 << 20;
    c.max_job_count = 1_000_000;
    let (mut h, _) = H::running_with(c);
    h.one_job(0, "j0", 0.001);
    assert_eq!(h.s.prefetch_in_force(), 500, "small payloads: the time bound (2 × 0.25 s ÷ 1 ms)");
    // Both workers busy, each with one queued behind (depth 2 while
    // prefetching): what comes next waits in the local queue.
    for id in ["a", "b", "c", "d"] {
        h.request(id, "", ADD);
    }
    assert!(h.s.workers.queued().is_empty());
    let big = format!(r#"["run", {{"path": "benchjobs", "callable": "add", "args": ["{}"]}}]"#, "x".repeat(100_000));
    for i in 0..10 {
        h.request(&format!("big{i}"), "", &big);
    }
    assert_eq!(h.s.workers.queued().len(), 10);
    let avg = h.s.stats().payload_bytes_avg();
    assert!((60_000..100_000).contains(&avg), "the average moves a tenth of the way per job: {avg}");
    assert_eq!(h.s.prefetch_in_force(), (1 << 20) / avg, "by bytes at the average payload size");
    h.request("big10", "", &big);
    assert!(h.s.workers.queued_bytes() >= 1 << 20);
    assert_eq!(h.s.prefetch_in_force(), 0, "the local queue holds prefetch_bytes: nothing more prefetched");
    let health = h.s.health(h.now);
    assert_eq!((health.queued_locally, health.prefetch), (11, 0), "the router's STATUS shows it");
    assert_eq!(health.queued_locally_bytes, h.s.workers.queued_bytes());
    // Worker 0 done with its two: a job leaves the local queue, which is
    // under the budget again.
    for id in ["a", "c"] {
        h.adv(0.001);
        h.ev(Event::WorkerDone { slot: 0, msgid: id.into(), reply_json: "{}".into(), error_type: None });
    }
    assert!(h.s.workers.queued().len() < 11);
    assert!(h.s.workers.queued_bytes() < 1 << 20);
    assert!(h.s.prefetch_in_force() > 0);
}

#[test]
fn a_job_given_back_that_we_took_for_started_is_not_lost() {
    let (mut h, _) = pipelined(1);
    h.request("a", "", ADD);
    h.request("b", "", ADD); // queued behind a
    h.adv(0.02);
    assert_eq!(names(&h.ev(Event::Tick)), vec!["steal0"]);
    // The worker wrote Done(a), then the reader gave b back before the
    // main thread picked it up.
    h.ev(Event::WorkerDone { slot: 0, msgid: "a".into(), reply_json: "{}".into(), error_type: None });
    let out = h.ev(Event::WorkerStole { slot: 0, msgids: vec!["b".into()] });
    assert_eq!(names(&out), vec!["run0"], "b is sent again");
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "b".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out)[0], "REPLY");
}

#[test]
fn a_huge_timeout_header_does_not_overflow() {
    let (mut h, _) = H::running(1);
    assert_eq!(names(&h.request("j", "timeout:1e19", ADD)), vec!["run0"]);
    h.adv(10.0);
    assert!(names(&h.ev(Event::Tick)).iter().all(|n| n != "REPLY"), "not timed out");
}

fn position(out: &[Action], name: &str) -> usize {
    names(out).iter().position(|n| n == name).unwrap_or_else(|| panic!("no {name} in {:?}", names(out)))
}

#[test]
fn settle_sends_the_reply_before_the_ready_that_frees_its_slot() {
    // Plain, pipelined and recycled-with-a-spare cases: the REPLY always
    // precedes the READY that re-announces the place it held.
    let (mut h, _) = H::running(1);
    h.request("j", "", ADD);
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "j".into(), reply_json: "{}".into(), error_type: None });
    assert!(position(&out, "REPLY") < position(&out, "READY"), "{:?}", names(&out));

    let (mut h, _) = pipelined(1);
    h.request("a", "", ADD);
    h.request("b", "", ADD);
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "a".into(), reply_json: "{}".into(), error_type: None });
    assert!(position(&out, "REPLY") < position(&out, "READY"), "{:?}", names(&out));

    // A refused job: its REPLY, then its slot again.
    let (mut h, _) = H::running(1);
    let out = h.request("bad", "", "not json");
    assert!(position(&out, "REPLY") < position(&out, "READY"), "{:?}", names(&out));
}

#[test]
fn settle_hands_out_before_announcing() {
    // A job that arrived while the only worker was restarting is handed to
    // it when it is up, and its slot is not announced as free.
    let (mut h, _) = H::running(1);
    h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "killed".into() });
    assert!(h.request("j", "", ADD).is_empty());
    assert_eq!(names(&h.ev(Event::WorkerUp { slot: 0, pid: 101 })), vec!["run0"]);
    // Nothing changed, nothing said: settling again is a no-op.
    assert!(h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "again".into() }))))).is_empty());
    assert!(h.ev(Event::Router(Ok(Message::new(Command::Heartbeat(emq_protocol::Heartbeat::now()))))).is_empty());
    assert!(h.ev(Event::Tick).is_empty());
}

#[test]
fn settle_exits_last_after_the_last_worker_exits_while_stopping() {
    // b waits behind a at the worker when the stop comes; the worker dies:
    // a fails (worker died), b goes back to the local queue, and with no
    // worker left it is refused, then Exit(0) comes last.
    let (mut h, _) = pipelined(1);
    h.request("a", "", ADD);
    h.request("b", "", ADD);
    assert_eq!(names(&h.ev(Event::Stop)), vec!["KBYE"]);
    let out = h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "signal 9".into() });
    assert_eq!(names(&out), vec!["REPLY", "REPLY", "exit0"]);
    let kinds: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send(Message { command: Command::Reply(Reply::Result { reply_json, orig_msgid }), .. }) => {
                Some((orig_msgid.clone(), JobReply::from_json(reply_json).unwrap().error.unwrap().kind))
            }
            _ => None,
        })
        .collect();
    assert_eq!(kinds, vec![("a".into(), JobErrorKind::WorkerDied), ("b".into(), JobErrorKind::Refused)]);
    // Exit goes once.
    assert!(h.ev(Event::Tick).iter().all(|a| !matches!(a, Action::Exit(_))));

    // A second stop: the kills, then Exit(130) last, once.
    let (mut h, _) = H::running(2);
    h.request("j", "", ADD);
    h.ev(Event::Stop);
    let out = h.ev(Event::Stop);
    assert_eq!(names(&out).last().map(String::as_str), Some("exit130"), "{:?}", names(&out));
    assert!(h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "signal 9".into() }).is_empty());
    assert!(h.ev(Event::WorkerExited { slot: 1, pid: 101, exit: "signal 9".into() }).is_empty());
}

#[test]
fn health_lists_the_queues_of_the_current_settings_and_the_name() {
    let (mut h, _) = H::running(1);
    h.s.set_name("jm-a");
    h.adv(3.0);
    let out = h.ev(Event::Tick);
    let Some(Action::Heartbeat(health)) = out.first() else { panic!("{out:?}") };
    assert_eq!(health.queues, vec![(10, "default".to_string())]);
    assert_eq!(health.name, "jm-a");
    // SIGHUP with new queues: reconnect, and the next heartbeat lists them.
    let mut c = cfg(1);
    c.queues = QueueSpec(vec![(20, "after".into())]);
    assert_eq!(names(&h.ev(Event::Reloaded(c))), vec!["retire0", "connect", "INFORM"]);
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))));
    h.adv(3.0);
    let out = h.ev(Event::Tick);
    let Some(Action::Heartbeat(health)) = out.first() else { panic!("{out:?}") };
    assert_eq!(health.queues, vec![(20, "after".to_string())]);
    assert_eq!(health.workers[0].state, emq_protocol::WorkerSlotState::Retiring);
}

#[test]
fn health_counts_and_states_are_typed_with_todays_keys() {
    let (mut h, _) = H::running(2);
    h.request("j", "", ADD);
    h.ev(Event::WorkerExited { slot: 1, pid: 101, exit: "killed".into() });
    h.request("bad", "", "not json");
    let health = h.s.health(h.now);
    assert_eq!(health.restarts.get("died"), Some(&1));
    assert_eq!(health.errors.get("refused_jobs"), Some(&1));
    assert_eq!((health.jobs_ok, health.jobs_failed, health.queued_locally), (0, 1, 0));
    let v: serde_json::Value = serde_json::from_str(&health.to_json()).unwrap();
    assert_eq!(v["workers"][0]["state"], "busy");
    assert_eq!(v["workers"][1]["state"], "starting");
    assert_eq!(v["in_flight"][0]["msgid"], "j");
    assert_eq!(v["restarts"]["died"], 1);
}

/// Priorities hold through prefetching: with bulk jobs running, queued at
/// the worker and held here, an urgent job runs next — the bulk job queued
/// at the worker is taken back and goes after it.
#[test]
fn a_higher_weight_job_runs_next_despite_prefetched_ones() {
    let mut c = cfg(1);
    c.queues = QueueSpec(vec![(20, "urgent".into()), (10, "bulk".into())]);
    c.worker_pipeline = 2;
    c.prefetch = 64;
    c.max_job_count = 1000;
    let mut h = H::with(c);
    h.ev(Event::Start);
    h.ev(Event::WorkerUp { slot: 0, pid: 1 });
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "i".into() })))));
    h.one_job(0, "first", 0.001); // jobs are short: prefetch in force
    let req = |h: &mut H, id: &str, q: &str| {
        let r = Request { queue: q.into(), headers: "".into(), payload: ADD.into() };
        h.ev(Event::Router(Ok(Message::with_msgid(id, Command::Request(r)))))
    };
    for i in 0..5 {
        req(&mut h, &format!("b{i}"), "bulk");
    }
    // b0 runs, b1..b3 are queued at the worker (its pipeline of 2 is
    // twice as deep while prefetch is in force), b4 waits here.
    let queued_at_worker: Vec<String> = h.s.slots()[0].waiting.iter().map(|j| j.msgid.clone()).collect();
    assert_eq!(queued_at_worker, ["b1", "b2", "b3"]);
    let out = req(&mut h, "u", "urgent");
    assert!(
        out.contains(&Action::Steal { slot: 0 }),
        "the lower-weight jobs queued at the worker are taken back: {out:?}"
    );
    let out = h.ev(Event::WorkerStole { slot: 0, msgids: vec!["b1".into(), "b2".into(), "b3".into()] });
    let runs: Vec<String> = out
        .iter()
        .filter_map(|a| match a {
            Action::Run { msgid, .. } => Some(msgid.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec!["u", "b1", "b2"], "the urgent job is queued next at the worker, then the bulk ones in order");
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "b0".into(), reply_json: "{}".into(), error_type: None });
    assert!(
        out.iter().any(|a| matches!(a, Action::Run { msgid, .. } if msgid == "b3")),
        "then the bulk jobs, in order: {out:?}"
    );
    let SlotState::Busy(running) = &h.s.slots()[0].state else { panic!() };
    assert_eq!(running.msgid, "u", "the urgent job runs right after the one that was running");
}

fn cancel(h: &mut H, msgid: &str) -> Vec<Action> {
    let c = Command::Admin(emq_protocol::AdminCommand::Cancel { job_msgid: msgid.into() });
    h.ev(Event::Router(Ok(Message::new(c))))
}

#[test]
fn cancel_stops_a_running_job_or_drops_a_queued_one() {
    let (mut h, _) = H::running(1);
    h.request("run", "", ADD);
    let out = cancel(&mut h, "run");
    assert_eq!(&names(&out)[..2], &["REPLY".to_string(), "kill0".to_string()]);
    assert_eq!(reply_of(&out).1.error.unwrap().kind.as_str(), "cancelled");
    assert_eq!(h.s.stats().restarts()["cancelled"], 1);
    // A result racing the kill is ignored.
    assert!(!names(&h.ev(Event::WorkerDone {
        slot: 0,
        msgid: "run".into(),
        reply_json: "{}".into(),
        error_type: None
    }))
    .contains(&"REPLY".to_string()));
    // Unknown: nothing.
    assert!(cancel(&mut h, "gone").is_empty());
}

#[test]
fn cancel_of_a_job_queued_at_a_worker_steals_it_back() {
    let (mut h, _) = H::running(1);
    h.request("first", "", ADD);
    h.request("second", "", ADD); // pipelined behind "first" (worker_pipeline 2)
    let out = cancel(&mut h, "second");
    if names(&out).contains(&"steal0".to_string()) {
        // The worker gives it back unstarted: answered cancelled, never run.
        let out = h.ev(Event::WorkerStole { slot: 0, msgids: vec!["second".into()] });
        let (msgid, reply) = reply_of(&out);
        assert_eq!((msgid.as_str(), reply.error.unwrap().kind.as_str()), ("second", "cancelled"));
    } else {
        // It was still in the local queue.
        let (msgid, reply) = reply_of(&out);
        assert_eq!((msgid.as_str(), reply.error.unwrap().kind.as_str()), ("second", "cancelled"));
    }
    // "first" goes on undisturbed.
    let out = h.ev(Event::WorkerDone {
        slot: 0,
        msgid: "first".into(),
        reply_json: "{\"value\": 5}".into(),
        error_type: None,
    });
    assert_eq!(reply_of(&out).0, "first");
}

#[test]
fn a_worker_past_max_memory_is_recycled_idle_now_busy_after_its_job() {
    let mut c = cfg(1);
    c.max_memory_per_worker = 100 << 20;
    let mut h = H::with(c);
    h.ev(Event::Start);
    h.ev(Event::WorkerUp { slot: 0, pid: 100 });
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "x".into() })))));
    // Idle: retired at once.
    let out = h.ev(Event::WorkerOverMemory { slot: 0, rss_bytes: 200 << 20 });
    assert!(names(&out).contains(&"retire0".to_string()), "{:?}", names(&out));
    assert_eq!(h.s.stats().restarts()["memory"], 1);
    // Busy: after its job.
    let (mut h, _) = H::running(1);
    h.s.cfg.max_memory_per_worker = 100 << 20;
    h.request("j", "", ADD);
    assert!(!names(&h.ev(Event::WorkerOverMemory { slot: 0, rss_bytes: 200 << 20 })).contains(&"retire0".to_string()));
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "j".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out), vec!["REPLY", "retire0"]);
}

#[test]
fn a_requests_batch_is_its_requests_in_order() {
    let (mut h, _) = H::running(1);
    let jobs = (1..=3)
        .map(|i| (format!("j{i}"), Request { queue: "default".into(), headers: String::new(), payload: ADD.into() }))
        .collect();
    let out = h.ev(Event::Router(Ok(Message::new(Command::Requests(emq_protocol::Requests { jobs })))));
    // The first runs; the others wait, in order.
    let mut runs: Vec<String> = out
        .iter()
        .filter_map(|a| match a {
            Action::Run { msgid, .. } => Some(msgid.clone()),
            _ => None,
        })
        .collect();
    runs.extend(h.s.health(h.now).held);
    assert_eq!(runs, vec!["j1".to_string(), "j2".to_string(), "j3".to_string()]);
}

#[test]
fn workers_started_together_are_recycled_at_different_counts() {
    let mut c = cfg(4);
    c.max_job_count = 1024;
    let mut h = H::with(c);
    h.ev(Event::Start);
    let limits: Vec<u64> = h.s.slots().iter().map(|s| super::workers::job_limit(1024, s)).collect();
    assert!(limits.iter().all(|l| (960..=1024).contains(l)), "{limits:?}");
    let distinct: std::collections::BTreeSet<_> = limits.iter().collect();
    assert!(distinct.len() >= 3, "spread: {limits:?}");
    // Small counts are exact; a huge one ("never") does not overflow.
    assert!(h.s.slots().iter().all(|s| super::workers::job_limit(3, s) == 3));
    assert!(h.s.slots().iter().all(|s| super::workers::job_limit(u64::MAX, s) >= u64::MAX - u64::MAX / 16));
}

// ---- issue 26: progress, checkpoint, extend

/// Our router: ACKed, and its heartbeat says it takes batches.
fn running_with_batches(workers: usize) -> H {
    let (mut h, _) = H::running(workers);
    let hb = Heartbeat { timestamp: "1".into(), health: Some(r#"{"batch":true}"#.into()) };
    h.ev(Event::Router(Ok(Message::new(Command::Heartbeat(hb)))));
    assert!(h.s.router_batches());
    h
}

fn progress(done: f64) -> Option<emq_protocol::Progress> {
    Some(emq_protocol::Progress { done, total: Some(10.0), message: None, at: 1.0 })
}

fn update(msgid: &str, done: Option<f64>, checkpoint: Option<&str>) -> Event {
    Event::WorkerUpdate {
        slot: 0,
        msgid: msgid.into(),
        progress: done.and_then(progress),
        checkpoint: checkpoint.map(str::to_owned),
    }
}

fn job_updates(out: &[Action]) -> Vec<emq_protocol::JobUpdate> {
    out.iter()
        .flat_map(|a| match a {
            Action::Send(Message { command: Command::JobUpdate(u), .. }) => u.updates.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn replied(out: &[Action]) -> bool {
    names(out).iter().any(|n| n == "REPLY")
}

fn extend(msgid: &str, seconds: f64) -> Event {
    Event::WorkerExtend { slot: 0, msgid: msgid.into(), seconds }
}

#[test]
fn extend_restarts_the_timeout_never_past_max_runtime() {
    let mut h = H::with(JmConfig { max_runtime: Duration::from_secs(10), ..cfg(1) });
    h.ev(Event::Start);
    h.ev(Event::WorkerUp { slot: 0, pid: 100 });
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "x".into() })))));
    h.request("j", "timeout:2", ADD);
    h.adv(1.5);
    assert!(h.ev(extend("j", 2.0)).is_empty());
    assert!(h.ev(extend("other", 0.1)).is_empty(), "another job's extend is ignored");
    h.adv(1.9); // 3.4 s: past the first timeout, within the extended one
    assert!(!replied(&h.ev(Event::Tick)));
    h.ev(extend("j", 1.0)); // a shorter one counts too: now 4.4 s
    h.adv(0.9);
    assert!(!replied(&h.ev(Event::Tick)));
    h.ev(extend("j", 3600.0)); // capped at start + 10 s
    h.adv(5.6); // 9.9 s
    assert!(!replied(&h.ev(Event::Tick)));
    h.adv(0.1);
    let out = h.ev(Event::Tick);
    assert_eq!(names(&out).iter().filter(|n| *n != "HEARTBEAT").collect::<Vec<_>>(), ["REPLY", "kill0"]);
    let e = reply_of(&out).1.error.unwrap();
    assert_eq!(e.kind.as_str(), "timeout");
    assert!(e.message.contains("max_runtime"), "{}", e.message);
}

#[test]
fn an_extended_job_that_stops_extending_times_out_and_the_base_timeout_is_capped_too() {
    let mut h = H::with(JmConfig { max_runtime: Duration::from_secs(10), ..cfg(1) });
    h.ev(Event::Start);
    h.ev(Event::WorkerUp { slot: 0, pid: 100 });
    h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "x".into() })))));
    h.request("j", "timeout:2", ADD);
    h.adv(1.0);
    h.ev(extend("j", 2.0));
    h.adv(1.99);
    assert!(!replied(&h.ev(Event::Tick)));
    h.adv(0.01);
    let out = h.ev(Event::Tick);
    let e = reply_of(&out).1.error.unwrap();
    assert_eq!(e.kind.as_str(), "timeout");
    assert!(e.message.contains("extended"), "{}", e.message);
    // A timeout header past max_runtime is cut to it.
    h.ev(Event::WorkerExited { slot: 0, pid: 100, exit: "signal 15".into() });
    h.ev(Event::WorkerUp { slot: 0, pid: 101 });
    h.request("k", "timeout:100", ADD);
    h.adv(9.9);
    assert!(!replied(&h.ev(Event::Tick)));
    h.adv(0.1);
    assert_eq!(reply_of(&h.ev(Event::Tick)).1.error.unwrap().kind.as_str(), "timeout");
}

#[test]
fn updates_are_coalesced_last_wins_and_flushed_at_most_every_100_ms() {
    let mut h = running_with_batches(1);
    h.request("j", "", ADD);
    for (done, cp) in [(Some(1.0), None), (None, Some(r#"{"step":1}"#)), (Some(2.0), Some(r#"{"step":2}"#))] {
        assert!(h.ev(update("j", done, cp)).is_empty(), "nothing sent at once");
    }
    h.ev(update("j", Some(3.0), None));
    let out = h.ev(Event::Tick);
    assert_eq!(names(&out), ["JOB_UPDATE"]);
    assert_eq!(
        job_updates(&out),
        [emq_protocol::JobUpdate {
            msgid: "j".into(),
            progress: progress(3.0),
            checkpoint: Some(r#"{"step":2}"#.into())
        }]
    );
    assert!(job_updates(&h.ev(Event::Tick)).is_empty(), "nothing new");
    h.ev(update("j", Some(4.0), None));
    h.adv(0.05);
    assert!(job_updates(&h.ev(Event::Tick)).is_empty(), "50 ms after the last flush");
    h.adv(0.05);
    assert_eq!(job_updates(&h.ev(Event::Tick)).iter().map(|u| u.progress.clone()).collect::<Vec<_>>(), [progress(4.0)]);
}

#[test]
fn a_jobs_pending_update_goes_before_its_reply_also_on_a_timeout() {
    let mut h = running_with_batches(1);
    h.request("j", "", ADD);
    h.ev(Event::Tick); // the flush clock starts
    h.ev(update("j", Some(5.0), Some(r#"{"step":5}"#)));
    let out = h.ev(Event::WorkerDone { slot: 0, msgid: "j".into(), reply_json: "{}".into(), error_type: None });
    assert_eq!(names(&out), ["JOB_UPDATE", "REPLY", "READY"], "before the REPLY, not 100 ms later");
    assert_eq!(job_updates(&out)[0].checkpoint.as_deref(), Some(r#"{"step":5}"#));
    h.request("slow", "timeout:1", ADD);
    h.ev(update("slow", None, Some("[1]")));
    h.adv(1.0);
    let out = h.ev(Event::Tick);
    assert_eq!(names(&out), ["JOB_UPDATE", "REPLY", "kill0"]);
    assert_eq!(job_updates(&out)[0].msgid, "slow");
    assert_eq!(reply_of(&out).1.error.unwrap().kind.as_str(), "timeout");
}

#[test]
fn updates_of_a_job_that_ended_or_never_ran_here_are_dropped() {
    let mut h = running_with_batches(1);
    h.request("j", "", ADD);
    h.ev(Event::WorkerDone { slot: 0, msgid: "j".into(), reply_json: "{}".into(), error_type: None });
    h.ev(update("j", Some(9.0), Some("[9]")));
    h.ev(update("nope", Some(1.0), None));
    h.adv(1.0);
    assert!(job_updates(&h.ev(Event::Tick)).is_empty());
    h.ev(extend("j", 100.0));
    assert!(h.ev(Event::Tick).is_empty(), "an extend of an ended job changes nothing");
}

#[test]
fn an_eventmq_router_never_gets_a_job_update() {
    let (mut h, _) = H::running(1);
    assert!(!h.s.router_batches());
    h.request("j", "", ADD);
    h.ev(update("j", Some(1.0), Some("[1]")));
    let mut all = Vec::new();
    for _ in 0..3 {
        h.adv(0.2);
        all.extend(h.ev(Event::Tick));
    }
    all.extend(h.ev(Event::WorkerDone { slot: 0, msgid: "j".into(), reply_json: "{}".into(), error_type: None }));
    assert!(!names(&all).iter().any(|n| n == "JOB_UPDATE"), "{:?}", names(&all));
    assert!(names(&all).iter().any(|n| n == "REPLY"));
}

#[test]
fn a_retried_attempt_gets_the_checkpoint_header_in_its_run() {
    let (mut h, _) = H::running(1);
    let header = format!("attempt:2,checkpoint:{}", emq_protocol::encode_checkpoint_header(r#"{"a":1,"b":"50%"}"#));
    let out = h.request("j", &header, ADD);
    let run = out.iter().find_map(|a| match a {
        Action::Run { attempt, checkpoint, .. } => Some((*attempt, checkpoint.clone())),
        _ => None,
    });
    assert_eq!(run, Some((2, Some(r#"{"a":1,"b":"50%"}"#.to_owned()))));
}

#[test]
fn replies_linger_only_while_half_of_what_it_may_hold_waits_here() {
    // 2 workers, pipeline 1, prefetch 8 (in force: a job of 1 ms has
    // finished): it may hold 10 jobs, so REPLYs may linger only while 5
    // wait here.
    let (mut h, _) = H::running_with(JmConfig { prefetch: 8, max_job_count: 1000, ..cfg(2) });
    h.one_job(0, "first", 0.001);
    assert!(!h.s.backlogged(), "nothing here");
    for i in 0..6 {
        h.request(&format!("j{i}"), "", ADD);
    }
    assert!(!h.s.backlogged(), "2 running, 4 waiting: fewer than half of 10");
    h.request("j6", "", ADD);
    assert!(h.s.backlogged(), "5 waiting");
    // Without prefetch it may hold 2: one waiting job per worker suffices.
    let (mut h, _) = H::running(2);
    for i in 0..3 {
        h.request(&format!("k{i}"), "", ADD);
    }
    assert!(!h.s.backlogged(), "2 running, 1 waiting");
    h.request("k3", "", ADD);
    assert!(h.s.backlogged(), "2 running, 2 waiting");
}

/// Two workers with 4 jobs each (one running, three queued behind it), no
/// prefetch (backlogged from 4 waiting), `reply_linger` as given; the
/// router sends one job per job done, so every pipeline stays full.
struct Steady {
    h: H,
    /// Each worker's jobs in the order it got them (the first runs).
    queued: [VecDeque<String>; 2],
    next: u32,
}

impl Steady {
    fn new(reply_linger: Duration) -> Self {
        let mut h = H::with(JmConfig { worker_pipeline: 4, reply_linger, max_job_count: 1_000_000, ..cfg(2) });
        h.ev(Event::Start);
        for slot in 0..2 {
            h.ev(Event::WorkerUp { slot, pid: 100 + slot as u32 });
        }
        h.ev(Event::Router(Ok(Message::new(Command::Ack(Ack { acked_msgid: "x".into() })))));
        let mut st = Steady { h, queued: Default::default(), next: 0 };
        for _ in 0..8 {
            st.send_one();
        }
        st
    }

    fn send_one(&mut self) {
        self.next += 1;
        let out = self.h.request(&format!("j{}", self.next), "", ADD);
        self.track(&out);
    }

    fn track(&mut self, out: &[Action]) {
        for a in out {
            if let Action::Run { slot, msgid, .. } = a {
                self.queued[*slot].push_back(msgid.clone());
            }
        }
    }

    /// A job of `slot` done after `secs`.
    fn done(&mut self, slot: usize, secs: f64) {
        let msgid = self.queued[slot].pop_front().expect("a job at the worker");
        self.h.adv(secs);
        let out = self.h.ev(Event::WorkerDone { slot, msgid, reply_json: "{}".into(), error_type: None });
        self.track(&out);
    }

    /// `rounds` rounds of jobs of `secs`: each worker finishes one (the
    /// two half a job apart) and the router sends one more for it.
    fn run(&mut self, rounds: u32, secs: f64) {
        for _ in 0..rounds {
            for slot in 0..2 {
                self.done(slot, secs / 2.0);
                self.send_one();
            }
        }
    }
}

#[test]
fn workers_pipes_go_unread_only_while_none_can_run_dry() {
    let mut st = Steady::new(Duration::from_millis(5));
    assert!(st.h.s.backlogged());
    assert_eq!(st.h.s.worker_read_holdoff(), None, "no job has finished yet: no average to go by");
    // Jobs of 3.5 ms: once the average has learnt it, a worker with three
    // queued lasts over 10 ms; the pipes may wait 3.5 ms × 2 − 1 ms, at
    // most the linger (5 ms).
    st.run(40, 0.0035);
    assert_eq!(st.h.s.worker_read_holdoff(), Some(Duration::from_millis(5)));
    // Jobs of 1.7 ms: 1.7 × 2 − 1 = 2.4 ms, in whole milliseconds.
    st.run(60, 0.0017);
    assert_eq!(st.h.s.worker_read_holdoff(), Some(Duration::from_millis(2)));
    // Short jobs (0.5 ms): no holdoff worth a poll.
    st.run(60, 0.0005);
    assert_eq!(st.h.s.worker_read_holdoff(), None);
    st.run(60, 0.003);
    assert!(st.h.s.worker_read_holdoff().is_some());
    // A worker with only one job queued behind its running one could run
    // dry within a job: its Done is read at once.
    st.done(0, 0.003);
    st.done(0, 0.0);
    assert_eq!(st.queued[0].len(), 2, "the router sent nothing new: slot 0 runs one job with one queued");
    assert!(st.h.s.backlogged(), "still: 1 + 3 jobs wait here");
    assert_eq!(st.h.s.worker_read_holdoff(), None);
}

#[test]
fn no_holdoff_without_reply_linger() {
    let mut st = Steady::new(Duration::ZERO);
    st.run(40, 0.003);
    assert!(st.h.s.backlogged());
    assert_eq!(st.h.s.worker_read_holdoff(), None);
}

#[test]
fn replies_linger_half_the_queue_wait_at_least_the_base_at_most_the_setting() {
    let near = |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() < 0.05;
    let extra = |st: &mut Steady| {
        for i in 0..10 {
            st.h.request(&format!("extra{i}"), "", ADD);
        }
    };
    let mut st = Steady::new(Duration::from_millis(50));
    assert_eq!(st.h.s.reply_linger(), BASE_LINGER, "no job has finished: the base");
    // Jobs of 4 ms; 6 wait here (3 behind each running one): they take
    // 6 × 4 / 2 = 12 ms to start; half of that.
    st.run(60, 0.004);
    assert_eq!(st.h.s.workers.not_started(), 6);
    assert!(near(st.h.s.reply_linger(), 6.0), "{:?}", st.h.s.reply_linger());
    // 10 more arrive (held here): 16 × 4 / 2 / 2 = 16 ms.
    extra(&mut st);
    assert!(near(st.h.s.reply_linger(), 16.0), "{:?}", st.h.s.reply_linger());
    // Short jobs: the base.
    let mut st = Steady::new(Duration::from_millis(50));
    st.run(60, 0.0002);
    assert_eq!(st.h.s.reply_linger(), BASE_LINGER);
    // The setting caps it, also below the base; 0 is never.
    for (cap, want) in [(10, 10.0), (2, 2.0), (0, 0.0)] {
        let mut st = Steady::new(Duration::from_millis(cap));
        st.run(60, 0.004);
        extra(&mut st);
        assert!(near(st.h.s.reply_linger(), want), "cap {cap} ms: {:?}", st.h.s.reply_linger());
    }
}

#[test]
fn a_steal_ends_the_holdoff() {
    let mut st = Steady::new(Duration::from_millis(50));
    st.run(40, 0.0035);
    assert!(st.h.s.worker_read_holdoff().is_some());
    // The running jobs outlast steal_after (10 ms): the job manager asks for
    // the jobs queued behind them back, so each worker keeps only its
    // running one and could go idle any moment — its pipe is read as it
    // comes (20 ms jobs ran at 80 % efficiency before this).
    st.h.adv(0.011);
    let out = st.h.ev(Event::Tick);
    assert!(out.contains(&Action::Steal { slot: 0 }), "{out:?}");
    assert_eq!(st.h.s.worker_read_holdoff(), None);
}

#[test]
fn a_stopping_job_manager_neither_lingers_nor_holds_off() {
    let mut st = Steady::new(Duration::from_millis(50));
    st.run(40, 0.0035);
    assert!(st.h.s.backlogged());
    assert!(st.h.s.worker_read_holdoff().is_some());
    // Stopping: the jobs queued at the workers still run, but it drains —
    // each REPLY goes at once and each Done is read as it comes.
    st.h.ev(Event::Stop);
    assert!(st.h.s.workers.not_started() >= 4, "the workers keep what they hold");
    assert!(!st.h.s.backlogged());
    assert_eq!(st.h.s.worker_read_holdoff(), None);
}
