//! State-machine tests with a fake clock: no sockets, no sleeping.

mod control;
mod limits;
mod progress;
mod slow;
mod time;
mod workflows;

use super::*;
use emq_protocol::{Ack, AdminCommand, Heartbeat, Inform, JobReply, Message, QueueSpec, Reply, Request};

fn cfg() -> RouterConfig {
    RouterConfig {
        heartbeat_interval: Duration::from_secs(3),
        heartbeat_timeout: Duration::from_secs(5),
        hwm: 3,
        job_history: 100,
        retry_delay: Duration::from_secs(1),
        retry_multiplier: 2.0,
        dead_letter_max: 100,
        reject_unknown_queues: false,
        stop_grace: Duration::from_secs(10),
        allowed_schedulers: vec![],
        admin_users: vec![],
        result_ttl: Duration::from_secs(3600),
        result_resend_window: Duration::from_secs(2),
        results_max_bytes: 256 << 20,
        buffer_memory: 1 << 30,
        journal_max_bytes: 1 << 34,
        refuse_when_full: false,
        scheduler_external: false,
        misfire: emq_protocol::Misfire::Once,
        max_schedules: 1000,
        delayed_max_bytes: 1 << 30,
        suspect_timeout: Duration::from_secs(60),
        limits: Vec::new(),
    }
}

struct Harness {
    r: RouterState,
    now: Now,
    /// Everything journaled so far.
    journal: Vec<emq_journal::Record>,
    /// The CURVE user the next messages come from (None: plaintext).
    user: Option<Arc<str>>,
}

/// The actions as the poll loop performs them once the journal is durable:
/// journal records set aside, durable sends as sends.
fn performed(actions: Vec<Action>, journal: &mut Vec<emq_journal::Record>) -> Vec<Action> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Journal(r) => {
                journal.push(r);
                None
            }
            Action::SendDurable { socket, peer, message } => Some(Action::Send { socket, peer, message }),
            other => Some(other),
        })
        .collect()
}

impl Harness {
    fn new() -> Self {
        let now = Now::real();
        Harness::with(RouterState::new(cfg(), now), now)
    }
    /// A harness around `r` where the admin peer "cli" is authenticated.
    fn with(mut r: RouterState, now: Now) -> Self {
        r.set_admin_token("t0ken".into());
        let mut h = Harness { r, now, journal: Vec::new(), user: None };
        h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Authenticate { token: "t0ken".into() }));
        h
    }
    fn advance(&mut self, secs: f64) {
        self.now = self.now.after(Duration::from_secs_f64(secs));
    }
    fn recv(&mut self, socket: SocketKind, peer: &str, command: Command) -> Vec<Action> {
        self.recv_id(socket, peer, Message::new(command))
    }
    fn recv_id(&mut self, socket: SocketKind, peer: &str, m: Message) -> Vec<Action> {
        self.event(Event::Received { socket, peer: PeerId::from(peer), message: Ok(m), user: self.user.clone() })
    }
    fn inform(&mut self, peer: &str, queues: &[(u32, &str)]) -> Vec<Action> {
        let q = QueueSpec(queues.iter().map(|(w, n)| (*w, n.to_string())).collect());
        self.recv(
            SocketKind::Backend,
            peer,
            Command::Inform(Inform { queues: q, kind: "worker".into(), features: None }),
        )
    }
    /// INFORM as our job manager does: `default`, reporting every job.
    fn inform_ours(&mut self, peer: &str) -> Vec<Action> {
        let inform = Inform {
            queues: QueueSpec::default_queues(),
            kind: "worker".into(),
            features: Some(emq_protocol::FEATURE_REPORTS_ALL.into()),
        };
        self.recv(SocketKind::Backend, peer, Command::Inform(inform))
    }
    fn ready(&mut self, peer: &str) -> Vec<Action> {
        self.recv(SocketKind::Backend, peer, Command::Ready)
    }
    fn request(&mut self, client: &str, msgid: &str, queue: &str, headers: &str) -> Vec<Action> {
        let r = Request { queue: queue.into(), headers: headers.into(), payload: "[\"run\", {}]".into() };
        self.recv_id(SocketKind::Frontend, client, Message::with_msgid(msgid, Command::Request(r)))
    }
    fn done(&mut self, worker: &str, msgid: &str, json: &str) -> Vec<Action> {
        self.recv(
            SocketKind::Backend,
            worker,
            Command::Reply(Reply::Result { reply_json: json.into(), orig_msgid: msgid.into() }),
        )
    }
    fn tick(&mut self) -> Vec<Action> {
        self.event(Event::Tick)
    }
    fn event(&mut self, e: Event) -> Vec<Action> {
        let out = self.r.handle_vec(e, self.now);
        performed(out, &mut self.journal)
    }
}

/// `(socket, peer, command name, msgid of a forwarded REQUEST)` per send.
fn sends(actions: &[Action]) -> Vec<(SocketKind, String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { socket, peer, message } => {
                Some((*socket, peer.to_string(), message.command.name().to_owned()))
            }
            _ => None,
        })
        .collect()
}

fn dispatched_to(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { socket: SocketKind::Backend, peer, message }
                if matches!(message.command, Command::Request(_)) =>
            {
                Some((peer.to_string(), message.msgid.clone()))
            }
            _ => None,
        })
        .collect()
}

fn is_receipt(a: &Action, msgid: &str) -> bool {
    matches!(a, Action::Send { socket: SocketKind::Frontend, message, .. }
        if message.command == Command::Reply(Reply::receipt(msgid)))
}

#[test]
fn inform_is_acked_with_its_msgid() {
    let mut h = Harness::new();
    let m = Message::with_msgid(
        "inf-1",
        Command::Inform(Inform { queues: QueueSpec::default(), kind: "worker".into(), features: None }),
    );
    let out = h.recv_id(SocketKind::Backend, "jm", m);
    assert_eq!(out.len(), 1);
    let Action::Send { socket, peer, message } = &out[0] else { panic!() };
    assert_eq!((*socket, peer.to_string()), (SocketKind::Backend, "jm".into()));
    assert_eq!(message.command, Command::Ack(Ack { acked_msgid: "inf-1".into() }));
    // Empty queue list means the default queues.
    assert_eq!(h.r.job_managers()[&PeerId::from("jm")].queues, QueueSpec::default_queues());
}

#[test]
fn request_is_forwarded_unchanged_and_receipted() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    let out = h.request("c", "job-1", "default", "reply-requested");
    assert_eq!(dispatched_to(&out), vec![("jm".into(), "job-1".into())]);
    let Action::Send { message, .. } = &out[0] else { panic!() };
    assert_eq!(
        message.command,
        Command::Request(Request {
            queue: "default".into(),
            headers: "reply-requested".into(),
            payload: "[\"run\", {}]".into()
        })
    );
    assert!(is_receipt(&out[1], "job-1"));
    // Result goes back to the client.
    let out = h.done("jm", "job-1", r#"{"value": 5}"#);
    assert_eq!(out.len(), 1);
    let Action::Send { socket, peer, message } = &out[0] else { panic!() };
    assert_eq!((*socket, peer.to_string()), (SocketKind::Frontend, "c".into()));
    assert_eq!(
        message.command,
        Command::Reply(Reply::Result { reply_json: r#"{"value": 5}"#.into(), orig_msgid: "job-1".into() })
    );
    assert!(h.r.in_flight().is_empty());
}

#[test]
fn results_without_reply_requested_are_not_forwarded() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.request("c", "j", "default", "");
    assert!(h.done("jm", "j", r#"{"value": 1}"#).is_empty());
    assert!(h.r.job_managers()[&PeerId::from("jm")].reports_all_completions);
}

#[test]
fn one_ready_is_one_slot_and_buffered_jobs_drain_oldest_first() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    assert_eq!(dispatched_to(&h.request("c", "a", "default", "")).len(), 1);
    let out = h.request("c", "b", "default", "");
    assert!(dispatched_to(&out).is_empty(), "no slot left");
    assert!(is_receipt(&out[0], "b"), "buffered jobs get a receipt too");
    h.request("c", "c2", "default", "");
    assert_eq!(h.r.waiting("default"), 2);
    assert_eq!(dispatched_to(&h.ready("jm")), vec![("jm".into(), "b".into())]);
    assert_eq!(dispatched_to(&h.ready("jm")), vec![("jm".into(), "c2".into())]);
    assert!(dispatched_to(&h.ready("jm")).is_empty());
    assert_eq!(h.r.job_managers()[&PeerId::from("jm")].free_slots, 1);
}

#[test]
fn buffer_is_bounded_by_hwm_and_refusal_is_an_error_reply() {
    let mut h = Harness::new();
    for i in 0..3 {
        let out = h.request("c", &format!("j{i}"), "default", "");
        assert!(is_receipt(&out[0], &format!("j{i}")));
    }
    let out = h.request("c", "j3", "default", "");
    assert_eq!(out.len(), 1);
    let Action::Send { message, .. } = &out[0] else { panic!() };
    let Command::Reply(Reply::Result { reply_json, orig_msgid }) = &message.command else { panic!("{message:?}") };
    assert_eq!(orig_msgid, "j3");
    let r = JobReply::from_json(reply_json).unwrap();
    assert_eq!(r.error.unwrap().kind.as_str(), "refused");
    assert_eq!(h.r.waiting("default"), 3, "nothing buffered was lost");
    let status: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert_eq!(status["refused_messages_by_queue"]["default"], 1);
    assert_eq!(h.r.errors()["refused"], 1);
}

#[test]
fn highest_weight_first_then_least_recently_used() {
    let mut h = Harness::new();
    h.inform("low", &[(5, "q")]);
    h.inform("hi1", &[(20, "q")]);
    h.inform("hi2", &[(20, "q")]);
    for w in ["low", "hi1", "hi2"] {
        h.ready(w);
        h.ready(w);
    }
    let mut order = Vec::new();
    for i in 0..6 {
        let out = h.request("c", &format!("j{i}"), "q", "");
        order.push(dispatched_to(&out)[0].0.clone());
    }
    assert_eq!(order, vec!["hi1", "hi2", "hi1", "hi2", "low", "low"]);
}

#[test]
fn unknown_queue_falls_back_to_default_and_is_adopted_when_served() {
    let mut h = Harness::new();
    h.inform("d", &[(10, "default")]);
    h.ready("d");
    // Unknown queue → default, forwarded with its original queue name.
    let out = h.request("c", "x", "nosuch", "");
    assert_eq!(dispatched_to(&out), vec![("d".into(), "x".into())]);
    let Action::Send { message, .. } = &out[0] else { panic!() };
    assert!(matches!(&message.command, Command::Request(r) if r.queue == "nosuch"), "original queue name kept");
    // No slot: a job for a not-yet-served queue waits in default...
    h.request("c", "early", "emails", "");
    assert_eq!(h.r.waiting("default"), 1);
    // ...and moves to its own queue when a job manager for it arrives.
    h.inform("mail", &[(10, "emails")]);
    assert_eq!(h.r.waiting("default"), 0);
    assert_eq!(h.r.waiting("emails"), 1);
    assert_eq!(dispatched_to(&h.ready("mail")), vec![("mail".into(), "early".into())]);
}

#[test]
fn jobs_go_only_to_managers_of_their_queue() {
    let mut h = Harness::new();
    h.inform("a", &[(10, "qa")]);
    h.inform("b", &[(10, "qb")]);
    h.ready("a");
    h.ready("b");
    assert_eq!(dispatched_to(&h.request("c", "1", "qb", ""))[0].0, "b");
    assert_eq!(dispatched_to(&h.request("c", "2", "qa", ""))[0].0, "a");
    assert!(dispatched_to(&h.request("c", "3", "qa", "")).is_empty());
    assert_eq!(h.r.waiting("qa"), 1);
}

#[test]
fn silent_peer_expires_with_its_slots_and_heartbeats_go_out() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.tick(); // first tick sends heartbeats
    h.advance(3.0);
    let out = h.tick();
    assert_eq!(sends(&out), vec![(SocketKind::Backend, "jm".into(), "HEARTBEAT".into())]);
    h.advance(1.0);
    h.recv(SocketKind::Backend, "jm", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
    h.advance(4.9);
    h.tick();
    assert!(h.r.job_managers().contains_key(&PeerId::from("jm")), "4.9 s of silence is fine");
    h.advance(0.2);
    h.tick();
    assert!(h.r.job_managers().is_empty(), "5.1 s of silence is death");
    // Its slot is gone: a new job waits.
    h.request("c", "j", "default", "");
    assert_eq!(h.r.waiting("default"), 1);
}

#[test]
fn job_manager_reconnecting_under_new_identity() {
    let mut h = Harness::new();
    h.inform("old", &[(10, "default")]);
    h.ready("old");
    h.ready("old");
    h.request("c", "g", "default", "guarantee,reply-requested");
    h.request("c", "n", "default", "reply-requested");
    h.advance(6.0);
    h.inform("new", &[(10, "default")]);
    h.ready("new");
    let out = h.tick();
    // The old identity is forgotten (suspected); the guaranteed job went to
    // the new one at once; the other waits for a late report...
    assert!(!h.r.job_managers().contains_key(&PeerId::from("old")));
    assert_eq!(dispatched_to(&out), vec![("new".into(), "g".into())]);
    assert!(result_to(&out, "n").is_none(), "slow is not dead: no verdict yet");
    // ... for suspect_timeout, then fails with an error to its client.
    h.advance(30.0);
    h.recv(SocketKind::Backend, "new", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
    h.tick();
    h.advance(30.5);
    h.recv(SocketKind::Backend, "new", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
    let out = h.tick();
    let failed: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send { socket: SocketKind::Frontend, message, .. } => match &message.command {
                Command::Reply(Reply::Result { reply_json, orig_msgid }) => {
                    Some((orig_msgid.clone(), reply_json.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "n");
    assert_eq!(JobReply::from_json(&failed[0].1).unwrap().error.unwrap().kind.as_str(), "job manager lost");
    // A READY from the forgotten identity is counted, not obeyed; it is
    // told (once) to reconnect.
    assert_eq!(sends(&h.ready("old")), vec![(SocketKind::Backend, "old".into(), "DISCONNECT".into())]);
    assert!(h.ready("old").is_empty());
    assert_eq!(h.r.errors()["ready_from_unknown_peer"], 2);
}

#[test]
fn unreachable_job_manager_job_is_requeued() {
    let mut h = Harness::new();
    h.inform("gone", &[(10, "default")]);
    h.ready("gone");
    let out = h.request("c", "j", "default", "");
    let Action::Send { message, .. } = out[0].clone() else { panic!() };
    h.inform("alive", &[(10, "default")]);
    let out = h.event(Event::Unreachable { socket: SocketKind::Backend, peer: PeerId::from("gone"), message });
    assert!(dispatched_to(&out).is_empty());
    assert_eq!(h.r.waiting("default"), 1);
    assert_eq!(dispatched_to(&h.ready("alive")), vec![("alive".into(), "j".into())]);
}

#[test]
fn eventmq_job_manager_ready_retires_unreported_jobs() {
    let mut h = Harness::new();
    h.inform("legacy", &[(10, "default")]);
    // A job waits; the first of its start-up READYs hands it out...
    h.request("c", "j", "default", "");
    h.ready("legacy");
    assert_eq!(h.r.in_flight().len(), 1);
    // ...the second start-up READY does not finish it...
    h.ready("legacy");
    assert_eq!(h.r.in_flight().len(), 1, "a start-up READY must not retire a just-dispatched job");
    // ...the READY after the job does.
    h.ready("legacy");
    assert!(h.r.in_flight().is_empty());
    let status: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert_eq!(status["processed_messages_by_queue"]["default"], 1);
}

#[test]
fn admin_commands() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.request("c", "j", "default", "");
    assert!(h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Hello)).is_empty());
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Status));
    let Action::Send { message, .. } = &out[0] else { panic!() };
    let Command::Reply(Reply::Single { body }) = &message.command else { panic!() };
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    for k in EVENTMQ_STATUS_KEYS {
        assert!(v[k].is_object(), "{k} in {v}");
    }
    assert_eq!(v["inflight_messages_by_queue"]["default"], 1);
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::RouterShowWorkers));
    let Action::Send { message, .. } = &out[0] else { panic!() };
    let Command::Reply(Reply::Single { body }) = &message.command else { panic!() };
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["connected_workers"]["jm"]["available_slots"], 0);
    assert_eq!(v["connected_queues"]["default"][0][1], "jm");
    let out = h.recv(SocketKind::Admin, "cli", Command::Unknown { name: "FROB".into(), body: vec![] });
    let Action::Send { message, .. } = &out[0] else { panic!() };
    assert!(matches!(&message.command, Command::Reply(Reply::Single { body }) if body.contains("error")));
    // DISCONNECT: ACK at once, then a graceful stop — new jobs refused,
    // the running one may still report, then KBYE and shutdown.
    let out = h.recv_id(SocketKind::Admin, "cli", Message::with_msgid("admin:1", Command::Disconnect));
    assert_eq!(sends(&out), vec![(SocketKind::Admin, "cli".into(), "ACK".into())]);
    let out = h.request("c", "late", "default", "");
    let refusal = result_to(&out, "late").expect("refused");
    assert!(refusal.error.unwrap().message.contains("router stopping"));
    let out = h.done("jm", "j", r#"{"value": 1}"#);
    assert_eq!(sends(&out), vec![(SocketKind::Backend, "jm".into(), "KBYE".into())]);
    assert_eq!(out.last(), Some(&Action::Shutdown));
}

/// A stop with a job still running waits for it up to `stop_grace`; a
/// second stop ends it at once. Nothing is dispatched meanwhile.
#[test]
fn graceful_stop_waits_for_running_jobs_up_to_the_grace() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.request("c", "running", "default", "");
    h.request("c", "buffered", "default", "");
    let out = h.event(Event::Stop);
    assert!(!out.contains(&Action::Shutdown), "a job is still running");
    let out = h.ready("jm");
    assert!(dispatched_to(&out).is_empty(), "nothing is handed out while stopping");
    h.advance(5.0);
    assert!(!h.tick().contains(&Action::Shutdown));
    h.advance(6.0);
    assert!(h.tick().contains(&Action::Shutdown), "grace over");
    assert_eq!(h.r.waiting("default"), 1, "the buffered job stays for the next start");
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.request("c", "running", "default", "");
    h.event(Event::Stop);
    assert!(h.event(Event::Stop).contains(&Action::Shutdown), "second stop: at once");
}

/// Journal, restart: every accepted job is where it was — buffered in
/// order, retrying with its due time, dead letters — and jobs that were
/// running are in doubt: a re-attached job manager's report settles them,
/// the rest run again (guarantee) or end as `router restarted`.
#[test]
fn restart_from_the_journal_puts_every_job_back() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.ready("jm");
    h.request("c", "reported", "default", "reply-requested");
    h.request("c", "lost", "default", "reply-requested");
    h.request("c", "b1", "default", "");
    h.request("c", "b2", "default", "guarantee");
    h.done("jm", "nothing", "{}");
    let journal: Vec<emq_journal::Record> = h
        .journal
        .iter()
        .cloned()
        .map(|rec| match rec {
            // The same job manager, seen under the name the rest of this
            // test uses for it.
            emq_journal::Record::Dispatched { msgid, attempt, at, .. } => {
                emq_journal::Record::Dispatched { msgid, job_manager: b"jm2".to_vec(), attempt, at }
            }
            other => other,
        })
        .collect();
    // The router restarts: a fresh state fed the journal.
    let mut r = Harness::new();
    for rec in journal.iter().cloned() {
        r.r.restore(rec);
    }
    let summary = r.r.finish_restore(r.now);
    assert_eq!((summary.buffered, summary.in_doubt), (2, 2), "{summary:?}");
    assert_eq!(r.r.waiting("default"), 2);
    // A stranger cannot claim the jobs in doubt.
    r.inform("intruder", &[(10, "default")]);
    let claim = emq_protocol::PoolHealth {
        in_flight: vec![emq_protocol::JobHealth { msgid: "reported".into(), ..Default::default() }],
        ..Default::default()
    };
    heartbeat_with(&mut r, "intruder", &claim);
    let out = r.done("intruder", "reported", r#"{"value": "forged"}"#);
    assert!(result_to(&out, "reported").is_none(), "a forged report reaches nobody");
    assert_eq!((r.r.errors()["forged_report"], r.r.in_doubt_count()), (2, 2));
    // The job manager re-attaches under its own identity; its health says
    // it still runs "reported", which then reports.
    r.inform("jm2", &[(10, "default")]);
    let health = emq_protocol::PoolHealth {
        in_flight: vec![emq_protocol::JobHealth { msgid: "reported".into(), ..Default::default() }],
        ..Default::default()
    };
    heartbeat_with(&mut r, "jm2", &health);
    assert_eq!(r.r.in_doubt_count(), 1);
    let out = r.done("jm2", "reported", r#"{"value": 7}"#);
    assert_eq!(result_to(&out, "reported").unwrap().value, serde_json::json!(7), "its result reaches the client");
    // Nobody reports "lost": after twice heartbeat_timeout (at least 5 s:
    // time for job managers to find a restarted or new router) it ends as
    // router restarted.
    for _ in 0..3 {
        r.advance(3.0);
        heartbeat_with(&mut r, "jm2", &emq_protocol::PoolHealth::default());
        assert!(result_to(&r.tick(), "lost").is_none(), "not before twice heartbeat_timeout");
    }
    r.advance(3.0);
    heartbeat_with(&mut r, "jm2", &emq_protocol::PoolHealth::default());
    let out = r.tick();
    let e = result_to(&out, "lost").expect("an error reply").error.unwrap();
    assert_eq!(e.kind, emq_protocol::JobErrorKind::RouterRestarted);
    // The buffered ones run, in their order.
    let out = r.ready("jm2");
    assert_eq!(dispatched_to(&out), vec![("jm2".to_string(), "b1".to_string())]);
    let status: serde_json::Value = serde_json::from_str(&r.r.outcomes.history.status_json("reported", true)).unwrap();
    assert_eq!(status["state"], "done");
}

/// A result ZeroMQ took just before a kill may never have left the
/// process: after a restart without a checkpoint, the results of the last
/// `result_resend_window` before the latest journaled moment go to their
/// clients again (journaled pending, then delivered); older ones, those of
/// jobs nobody waits for, and everything after a graceful stop's
/// checkpoint do not.
#[test]
fn results_of_the_last_moments_before_a_kill_go_again_after_the_restart() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    for _ in 0..3 {
        h.ready("jm");
    }
    h.request("c", "old", "default", "reply-requested");
    h.request("c", "recent", "default", "reply-requested");
    h.request("c", "quiet", "default", "");
    h.done("jm", "old", r#"{"value": 1}"#);
    h.advance(5.0);
    assert!(result_to(&h.done("jm", "recent", r#"{"value": 2}"#), "recent").is_some(), "sent once already");
    h.done("jm", "quiet", r#"{"value": 3}"#);
    let restart = |journal: &[emq_journal::Record], window: f64| {
        let mut c = cfg();
        c.result_resend_window = Duration::from_secs_f64(window);
        let now = Now::real();
        let mut r = Harness::with(RouterState::new(c, now), now);
        for rec in journal.iter().cloned() {
            r.r.restore(rec);
        }
        let summary = r.r.finish_restore(r.now);
        (r, summary)
    };
    // Killed: "recent" finished within 2 s of the last record, "old" 5 s
    // before it, "quiet" had no client waiting.
    let (mut r, summary) = restart(&h.journal, 2.0);
    assert_eq!(summary.results_resent, 1, "{summary:?}");
    assert_eq!(r.r.activity()["results_resent_after_restart"], 1, "shown in STATUS");
    let out = r.tick();
    assert_eq!(result_to(&out, "recent").unwrap().value, serde_json::json!(2), "sent again to its client");
    assert!(result_to(&out, "old").is_none() && result_to(&out, "quiet").is_none());
    let pending = emq_journal::Record::ResultPending { msgid: "recent".into() };
    assert!(r.journal.contains(&pending), "journaled: a second kill sends it again too");
    r.tick();
    assert!(r.journal.contains(&emq_journal::Record::ResultDelivered { msgid: "recent".into() }));
    // A second kill right after: the window still holds it (it went out
    // again, at the latest recorded time).
    let mut twice = h.journal.clone();
    twice.extend(r.journal.iter().cloned());
    assert_eq!(restart(&twice, 2.0).1.results_resent, 1);
    // A window of 10 s reaches "old" too; 0 turns it off.
    assert_eq!(restart(&h.journal, 10.0).1.results_resent, 2);
    assert_eq!(restart(&h.journal, 0.0).1.results_resent, 0);
    // A checkpoint (they come every 64 MiB of journal), then the kill: the
    // checkpoint names the recent result's client, so it still goes again.
    let checkpoint = h.r.checkpoint_records(h.now);
    let (mut r, summary) = restart(&checkpoint, 2.0);
    assert_eq!(summary.results_resent, 1, "{summary:?}");
    let out = r.tick();
    assert_eq!(sends(&out), vec![(SocketKind::Frontend, "c".into(), "REPLY".into())], "to its client");
    assert!(result_to(&out, "recent").is_some());
    // A result still waiting for its client keeps it across a checkpoint
    // too (history records do not name clients).
    h.ready("jm");
    h.request("c2", "away", "default", "reply-requested");
    let out = h.done("jm", "away", r#"{"value": 4}"#);
    let Some(Action::Send { message, .. }) = out.into_iter().find(|a| matches!(a, Action::Send { .. })) else {
        panic!("a result to send")
    };
    h.event(Event::Unreachable { socket: SocketKind::Frontend, peer: PeerId::from("c2"), message });
    let checkpoint = h.r.checkpoint_records(h.now);
    let (mut r, _) = restart(&checkpoint, 0.0);
    let out = r.tick();
    assert_eq!(sends(&out), vec![(SocketKind::Frontend, "c2".into(), "REPLY".into())], "the pending one, to c2");
    // A graceful stop ends with a checkpoint and flushed sockets: nothing
    // that went out goes again.
    h.event(Event::Stop);
    let checkpoint = h.r.checkpoint_records(h.now);
    let (mut r, summary) = restart(&checkpoint, 2.0);
    assert_eq!(summary.results_resent, 0, "{summary:?}");
    assert_eq!(sends(&r.tick()), vec![(SocketKind::Frontend, "c2".into(), "REPLY".into())], "only the pending one");
}

#[test]
fn decode_errors_are_counted_and_answered_where_due() {
    let mut h = Harness::new();
    let bad = Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"REQUEST", b"m1", b"q"]).unwrap_err();
    let out = h.r.handle_vec(
        Event::Received { socket: SocketKind::Frontend, peer: PeerId::from("c"), message: Err(bad), user: None },
        h.now,
    );
    assert_eq!(sends(&out), vec![(SocketKind::Frontend, "c".into(), "REPLY".into())]);
    let bad = Message::from_frames(&[b"" as &[u8], b"eMQP/9", b"READY", b"m2"]).unwrap_err();
    let out = h.r.handle_vec(
        Event::Received { socket: SocketKind::Backend, peer: PeerId::from("w"), message: Err(bad), user: None },
        h.now,
    );
    assert!(out.is_empty());
    assert_eq!(h.r.errors()["too_few_frames"], 1);
    assert_eq!(h.r.errors()["bad_protocol_version"], 1);
    // A reply for an unknown job is ignored and counted.
    assert!(h.done("w", "nope", "{}").is_empty());
    assert_eq!(h.r.activity()["reply_for_unknown_job"], 1);
}

#[test]
fn kbye_drains_running_jobs_then_forgets_the_job_manager() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.ready("jm");
    h.request("c", "a", "default", "reply-requested");
    h.request("c", "b", "default", "");
    h.done("jm", "b", r#"{"value": null}"#); // one of ours: reports every job
    h.ready("jm");
    h.recv(SocketKind::Backend, "jm", Command::Kbye);
    // No new jobs for it...
    h.request("c", "later", "default", "");
    assert_eq!(h.r.waiting("default"), 1);
    assert!(h.r.job_managers().contains_key(&PeerId::from("jm")));
    // ...but its running job's result still reaches the client.
    let out = h.done("jm", "a", r#"{"value": 1}"#);
    assert_eq!(sends(&out), vec![(SocketKind::Frontend, "c".into(), "REPLY".into())]);
    assert!(h.r.job_managers().is_empty());
}

#[test]
fn job_status_follows_a_job_from_queued_to_done() {
    let mut h = Harness::new();
    let status = |h: &mut Harness| -> serde_json::Value {
        let out = h.recv(
            SocketKind::Admin,
            "cli",
            Command::Admin(AdminCommand::JobStatus { job_msgid: "j".into(), owner_token: None }),
        );
        let Action::Send { message, .. } = &out[0] else { panic!() };
        let Command::Reply(Reply::Single { body }) = &message.command else { panic!() };
        serde_json::from_str(body).unwrap()
    };
    assert!(status(&mut h)["error"].is_string());
    h.request("c", "j", "default", "");
    assert_eq!(status(&mut h)["state"], "queued");
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    let s = status(&mut h);
    assert_eq!(
        (s["state"].as_str(), s["worker"].as_str(), s["attempts"].as_u64()),
        (Some("dispatched"), Some("jm"), Some(1))
    );
    h.done("jm", "j", r#"{"value": 5}"#);
    let s = status(&mut h);
    assert_eq!(s["state"], "done");
    assert_eq!(s["result"]["value"], 5);
    assert!(s["finished"].as_f64().unwrap() >= s["received"].as_f64().unwrap());
    // Failures are told apart; clients may ask on the frontend too.
    h.ready("jm");
    h.request("c", "f", "default", "");
    h.done("jm", "f", r#"{"value": "boom", "error": {"type": "ValueError", "message": "boom", "traceback": ""}}"#);
    let out = h.recv(
        SocketKind::Frontend,
        "c",
        Command::Admin(AdminCommand::JobStatus { job_msgid: "f".into(), owner_token: None }),
    );
    let Action::Send { message, .. } = &out[0] else { panic!() };
    let Command::Reply(Reply::Single { body }) = &message.command else { panic!() };
    assert!(body.contains("\"failed\""), "{body}");
}

#[test]
fn ticks_are_scheduled_ahead_never_in_the_past() {
    // A due tick that sends no heartbeat must still move the next tick on,
    // or the poll loop would spin with a zero timeout.
    let mut h = Harness::new();
    h.tick();
    let mut now = h.now;
    for _ in 0..20 {
        now = now.after(Duration::from_millis(300));
        h.now = now;
        h.tick();
        assert!(h.r.next_tick() > now.mono, "next tick not ahead of now");
    }
}

#[test]
fn our_job_manager_declares_it_reports_every_job() {
    let mut h = Harness::new();
    h.inform_ours("ours");
    h.request("c", "j", "default", "");
    h.ready("ours");
    h.ready("ours");
    h.ready("ours");
    assert_eq!(h.r.in_flight().len(), 1, "only its REPLY ends the job");
    h.done("ours", "j", "{}");
    assert!(h.r.in_flight().is_empty());
}

fn result_to(actions: &[Action], msgid: &str) -> Option<JobReply> {
    actions.iter().find_map(|a| match a {
        Action::Send { socket: SocketKind::Frontend, message, .. } => match &message.command {
            Command::Reply(Reply::Result { reply_json, orig_msgid }) if orig_msgid == msgid => {
                Some(JobReply::from_json(reply_json).unwrap())
            }
            _ => None,
        },
        _ => None,
    })
}

const FAIL: &str = r#"{"value": "boom", "error": {"type": "ValueError", "message": "boom", "traceback": ""}}"#;

fn admin_json(h: &mut Harness, cmd: AdminCommand) -> serde_json::Value {
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(cmd));
    let body = out
        .iter()
        .find_map(|a| match a {
            Action::Send { socket: SocketKind::Admin, message, .. } => match &message.command {
                Command::Reply(Reply::Single { body }) => Some(body.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("an admin answer");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn retries_with_growing_delay_and_only_the_final_outcome_reaches_the_client() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    for _ in 0..3 {
        h.ready("jm");
    }
    h.request("c", "j", "default", "reply-requested,retry-count:2");
    // Attempt 1 fails: nothing to the client; retry after 1 s.
    assert!(result_to(&h.done("jm", "j", FAIL), "j").is_none());
    h.advance(0.9);
    assert!(dispatched_to(&h.tick()).is_empty());
    h.advance(0.2);
    let out = h.tick();
    assert_eq!(dispatched_to(&out), vec![("jm".into(), "j".into())]);
    let Action::Send { message, .. } =
        out.iter().find(|a| matches!(a, Action::Send { socket: SocketKind::Backend, .. })).unwrap()
    else {
        panic!()
    };
    let Command::Request(r) = &message.command else { panic!() };
    assert_eq!(r.headers().attempt, Some(2), "a re-run carries its attempt number: {}", r.headers);
    // Attempt 2 fails: the next waits 2 s.
    h.done("jm", "j", FAIL);
    h.advance(1.5);
    assert!(dispatched_to(&h.tick()).is_empty());
    h.advance(0.6);
    assert_eq!(dispatched_to(&h.tick()).len(), 1);
    // Attempt 3 succeeds: one success reply.
    let r = result_to(&h.done("jm", "j", r#"{"value": 7}"#), "j").unwrap();
    assert_eq!(r, JobReply::ok(7.into()));
    let s = admin_json(&mut h, AdminCommand::JobStatus { job_msgid: "j".into(), owner_token: None });
    assert_eq!((s["state"].as_str(), s["attempts"].as_u64()), (Some("done"), Some(3)));
    assert_eq!(s["attempt_errors"].as_array().unwrap().len(), 2);
    assert_eq!(s["attempt_errors"][1]["type"], "ValueError");
    let status: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert_eq!(status["retried_messages_by_queue"]["default"], 2);
}

#[test]
fn a_job_that_always_fails_becomes_a_dead_letter_and_can_be_requeued() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    for _ in 0..4 {
        h.ready("jm");
    }
    h.request("c", "d", "default", "reply-requested,retry-count:1");
    h.done("jm", "d", FAIL);
    h.advance(1.1);
    h.tick();
    let out = h.done("jm", "d", FAIL);
    assert_eq!(result_to(&out, "d").unwrap().error.unwrap().kind.as_str(), "ValueError", "final failure to the client");
    let dead = admin_json(&mut h, AdminCommand::DeadLetters);
    assert_eq!(dead["count"], 1);
    assert_eq!(
        (dead["dead_letters"][0]["msgid"].as_str(), dead["dead_letters"][0]["attempts"].as_u64()),
        (Some("d"), Some(2))
    );
    assert_eq!(
        admin_json(&mut h, AdminCommand::JobStatus { job_msgid: "d".into(), owner_token: None })["state"],
        "dead"
    );
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Requeue { job_msgid: "d".into() }));
    assert_eq!(dispatched_to(&out), vec![("jm".into(), "d".into())]);
    assert_eq!(admin_json(&mut h, AdminCommand::DeadLetters)["count"], 0);
    assert!(admin_json(&mut h, AdminCommand::Requeue { job_msgid: "nope".into() })["error"].is_string());
}

#[test]
fn lost_job_manager_fails_plain_jobs_and_retries_retryable_ones() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.ready("jm");
    h.request("c", "plain", "default", "reply-requested");
    h.request("c", "retry", "default", "reply-requested,retry-count:1");
    h.advance(6.0);
    assert!(result_to(&h.tick(), "plain").is_none(), "suspected, not yet lost");
    h.inform("jm2", &[(10, "default")]);
    h.ready("jm2");
    h.advance(60.0);
    h.recv(SocketKind::Backend, "jm2", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
    let out = h.tick();
    assert_eq!(result_to(&out, "plain").unwrap().error.unwrap().kind.as_str(), "job manager lost");
    assert!(result_to(&out, "retry").is_none(), "it will run again");
    h.advance(1.1);
    h.recv(SocketKind::Backend, "jm2", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
    assert_eq!(dispatched_to(&h.tick()), vec![("jm2".into(), "retry".into())]);
    assert_eq!(
        admin_json(&mut h, AdminCommand::JobStatus { job_msgid: "plain".into(), owner_token: None })["state"],
        "lost"
    );
}

#[test]
fn unknown_queue_is_refused_when_asked_and_nobody_serves_default() {
    let now = Now::real();
    let mut c = cfg();
    c.reject_unknown_queues = true;
    let mut h = Harness::with(RouterState::new(c, now), now);
    let out = h.request("c", "x", "nosuch", "");
    assert_eq!(result_to(&out, "x").unwrap().error.unwrap().kind.as_str(), "refused");
    h.inform("d", &[(10, "default")]);
    let out = h.request("c", "y", "nosuch", "");
    assert!(is_receipt(&out[0], "y"), "default is served: falls back as EventMQ does");
}

/// Where an accepted job is: in how many of buffered / in flight / retrying
/// / dead, and whether it finished.
fn places(r: &RouterState, msgid: &str) -> (usize, bool) {
    let waiting =
        r.dispatch.queues.values().map(|q| q.waiting.iter().filter(|j| &*j.msgid == msgid).count()).sum::<usize>();
    let in_flight = usize::from(r.in_flight.contains_key(msgid));
    let retrying =
        r.timers.by_due.values().filter(|t| matches!(t, Timer::Job { job, .. } if &*job.msgid == msgid)).count();
    let dead = r.outcomes.dead.iter().filter(|d| &*d.msgid == msgid).count();
    let in_doubt = usize::from(r.suspects.in_doubt.contains_key(msgid));
    let finished = r
        .outcomes
        .history
        .get(msgid)
        .is_some_and(|rec| matches!(rec.state, JobState::Done | JobState::Failed | JobState::Lost));
    (waiting + in_flight + retrying + dead + in_doubt, finished)
}

/// Random event sequences against the state machine; after every event
/// every accepted job must be in exactly one place. Runs for `EMQTEST_FUZZ_SECS`
/// seconds (default 2; the 10-minute run is in docs/reliability.md).
#[test]
fn fuzz_every_accepted_job_is_in_exactly_one_place() {
    let secs: f64 = std::env::var("EMQTEST_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let mut seed: u64 = std::env::var("EMQTEST_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let mut rng = move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let started = std::time::Instant::now();
    let (mut sequences, mut events) = (0u64, 0u64);
    let workers = ["w0", "w1", "w2"];
    let queues = ["default", "q1", "q2"];
    let headers = ["", "reply-requested", "guarantee", "retry-count:2", "guarantee,retry-count:1,reply-requested"];
    while started.elapsed().as_secs_f64() < secs {
        sequences += 1;
        let now = Now::real();
        let mut c = cfg();
        c.hwm = 5;
        c.job_history = 1_000_000;
        c.dead_letter_max = 1_000_000;
        c.reject_unknown_queues = rng() % 2 == 0;
        let mut h = Harness::with(RouterState::new(c, now), now);
        let mut accepted: Vec<String> = Vec::new();
        let mut next_id = 0;
        for _ in 0..200 {
            events += 1;
            let w = workers[(rng() % 3) as usize];
            let out = match rng() % 12 {
                0 => {
                    let n = 1 + rng() % 3;
                    let qs: Vec<(u32, &str)> =
                        (0..n).map(|_| ((rng() % 3 * 10) as u32, queues[(rng() % 3) as usize])).collect();
                    h.inform(w, &qs)
                }
                1 | 2 => h.ready(w),
                3 | 4 => {
                    next_id += 1;
                    let id = format!("m{next_id}");
                    let out = h.request("c", &id, queues[(rng() % 3) as usize], headers[(rng() % 5) as usize]);
                    if out.iter().any(|a| is_receipt(a, &id)) {
                        accepted.push(id);
                    }
                    out
                }
                5 | 6 => {
                    // A job manager reports one of its jobs (ok or failed).
                    let mine: Vec<String> =
                        h.r.in_flight
                            .iter()
                            .filter(|(_, j)| j.job_manager.to_string() == w)
                            .map(|(id, _)| id.to_string())
                            .collect();
                    match mine.get((rng() as usize) % mine.len().max(1)) {
                        Some(id) => {
                            let json = if rng() % 3 == 0 { FAIL } else { r#"{"value": 1}"# };
                            h.done(w, id, json)
                        }
                        None => h.done(w, "unknown", "{}"),
                    }
                }
                7 => h.recv(SocketKind::Backend, w, Command::Kbye),
                8 => {
                    h.advance((rng() % 3000) as f64 / 1000.0);
                    h.tick()
                }
                9 => {
                    let mine: Vec<(String, String)> =
                        h.r.in_flight.iter().map(|(id, j)| (id.to_string(), j.job_manager.to_string())).collect();
                    match mine.get((rng() as usize) % mine.len().max(1)) {
                        Some((id, worker)) => {
                            let request = Request { queue: "default".into(), headers: "".into(), payload: "[]".into() };
                            let message = Message::with_msgid(id.clone(), Command::Request(request));
                            let peer = PeerId::from(worker.as_str());
                            h.event(Event::Unreachable { socket: SocketKind::Backend, peer, message })
                        }
                        None => vec![],
                    }
                }
                10 => {
                    let dead: Vec<String> = h.r.outcomes.dead.iter().map(|d| d.msgid.to_string()).collect();
                    let id = dead.get((rng() as usize) % dead.len().max(1)).cloned().unwrap_or_else(|| "none".into());
                    h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Requeue { job_msgid: id }))
                }
                _ => {
                    let frames: Vec<Vec<u8>> =
                        (0..rng() % 7).map(|_| (0..rng() % 9).map(|_| rng() as u8).collect()).collect();
                    let message = Message::from_frames(&frames);
                    h.r.handle_vec(
                        Event::Received { socket: SocketKind::Backend, peer: PeerId::from(w), message, user: None },
                        h.now,
                    )
                }
            };
            drop(out);
            for id in &accepted {
                let (n, finished) = places(&h.r, id);
                assert_eq!(
                    n + usize::from(finished),
                    1,
                    "job {id}: {n} places, finished {finished} (sequence {sequences})"
                );
            }
        }
    }
    println!(
        "router state machine fuzz: {sequences} sequences, {events} events in {:.0} s, invariant held",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn only_an_inform_of_kind_worker_makes_a_job_manager() {
    let mut h = Harness::new();
    let bad = Inform { queues: QueueSpec::default(), kind: "".into(), features: None };
    assert!(h.recv(SocketKind::Backend, "stray", Command::Inform(bad)).is_empty());
    h.ready("stray");
    h.request("c", "j", "default", "guarantee");
    assert!(h.r.job_managers().is_empty());
    assert_eq!(h.r.waiting("default"), 1, "no job goes to a peer that never said it was a job manager");
    assert_eq!(h.r.errors()["bad_inform_kind"], 1);
}

#[test]
fn unreachable_for_a_job_already_requeued_elsewhere_does_not_run_it_twice() {
    let mut h = Harness::new();
    h.inform("w", &[(10, "default")]);
    h.ready("w");
    h.ready("w");
    let a = h.request("c", "j1", "default", "guarantee");
    let b = h.request("c", "j2", "default", "guarantee");
    let msg = |out: &[Action]| match &out[0] {
        Action::Send { message, .. } => message.clone(),
        _ => panic!(),
    };
    let (m1, m2) = (msg(&a), msg(&b));
    h.inform("w2", &[(10, "default")]);
    h.ready("w2");
    h.ready("w2");
    // Both sends to w failed. The first event requeues j1 and forgets w
    // (j2 goes with it, requeued as guaranteed, to w2).
    let out1 = h.event(Event::Unreachable { socket: SocketKind::Backend, peer: PeerId::from("w"), message: m1 });
    let d1 = dispatched_to(&out1);
    assert!(out1.iter().any(|a| matches!(a, Action::Forget { .. })));
    // The second must not take j2's new entry away from w2.
    let out2 = h.event(Event::Unreachable { socket: SocketKind::Backend, peer: PeerId::from("w"), message: m2 });
    let all: Vec<(String, String)> = d1.into_iter().chain(dispatched_to(&out2)).collect();
    assert_eq!(all.iter().filter(|(_, id)| id == "j2").count(), 1, "j2 dispatched once: {all:?}");
    assert_eq!(all.iter().filter(|(_, id)| id == "j1").count(), 1, "j1 dispatched once: {all:?}");
}

#[test]
fn a_request_reusing_a_live_msgid_is_refused() {
    let mut h = Harness::new();
    h.request("c", "same", "default", "");
    let out = h.request("c2", "same", "default", "");
    assert_eq!(result_to(&out, "same").unwrap().error.unwrap().kind.as_str(), "refused");
    assert_eq!(h.r.waiting("default"), 1);
}

fn heartbeat_with(h: &mut Harness, peer: &str, health: &emq_protocol::PoolHealth) -> Vec<Action> {
    h.recv(
        SocketKind::Backend,
        peer,
        Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: Some(health.to_json()) }),
    )
}

/// Metric labels come from a bounded set: queue names a client makes up
/// are counted as `other`, never as series of their own; job managers are
/// labelled by name (`--name`, else `host:pid`), never by their random
/// connection identity.
#[test]
fn metric_labels_are_bounded() {
    let mut h = Harness::new();
    h.r.cfg.reject_unknown_queues = true;
    for i in 0..200 {
        h.request("c", &format!("m{i}"), &format!("random-{i}"), "");
    }
    h.inform("3f1c9a7e-identity", &[(10, "emails")]);
    h.ready("3f1c9a7e-identity");
    h.request("c", "e1", "emails", "");
    let named = emq_protocol::PoolHealth { name: "billing-1".into(), host: "h".into(), pid: 42, ..Default::default() };
    heartbeat_with(&mut h, "3f1c9a7e-identity", &named);
    h.inform("77aa-identity", &[(10, "emails")]);
    let unnamed = emq_protocol::PoolHealth { host: "box".into(), pid: 7, ..Default::default() };
    heartbeat_with(&mut h, "77aa-identity", &unnamed);
    let text = h.r.metrics_text(h.now);
    assert!(!text.contains("random-"), "client-made queue names are not labels");
    assert!(text.contains(r#"emq_jobs_refused_total{queue="other"} 200"#), "{text}");
    assert!(text.contains(r#"emq_jobs_accepted_total{queue="emails"} 1"#), "{text}");
    assert!(!text.contains("identity"), "connection identities are not labels");
    assert!(text.contains(r#"emq_jobmanager_up{jobmanager="billing-1"} 1"#), "{text}");
    assert!(text.contains(r#"emq_jobmanager_up{jobmanager="box:7"} 1"#), "{text}");
    // STATUS reads the same counts.
    let status: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert_eq!(status["refused_messages_by_queue"], serde_json::json!({"other": 200}));
}

/// Health is parsed once, on arrival: STATUS and ROUTER_SHOW_WORKERS show
/// the parsed value; a frame over the size limit is counted and ignored.
#[test]
fn health_is_parsed_once_and_bounded() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    let health = emq_protocol::PoolHealth { name: "n".into(), queued_locally: 3, ..Default::default() };
    heartbeat_with(&mut h, "jm", &health);
    assert_eq!(h.r.job_managers()[&PeerId::from("jm")].health.as_ref(), Some(&health));
    let w = admin_json(&mut h, AdminCommand::RouterShowWorkers);
    assert_eq!(w["connected_workers"]["jm"]["health"]["queued_locally"], 3);
    assert_eq!(w["connected_workers"]["jm"]["name"], "n");
    let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(emq_protocol::MAX_HEALTH_BYTES));
    h.recv(SocketKind::Backend, "jm", Command::Heartbeat(Heartbeat { timestamp: "2".into(), health: Some(huge) }));
    assert_eq!(h.r.errors()["bad_health"], 1);
    assert_eq!(h.r.job_managers()[&PeerId::from("jm")].health.as_ref(), Some(&health), "the last good one stays");
}

/// Every state change goes through `JobHistory::mark`, which keeps the
/// timestamps in step with the state.
#[test]
fn job_history_marks_keep_timestamps_consistent() {
    let mut hist = JobHistory::new(10);
    let rec = JobRecord::queued(Arc::from("q"), 1.0);
    hist.insert(Arc::from("a"), rec);
    assert_eq!(hist.mark("a", JobState::Dispatched, 2.0).unwrap().dispatched, Some(2.0));
    assert_eq!(hist.mark("a", JobState::Dead, 3.0).unwrap().finished, Some(3.0));
    let r = hist.mark("a", JobState::Queued, 4.0).unwrap();
    assert_eq!((r.state, r.finished), (JobState::Queued, None), "requeued: not finished any more");
    assert!(hist.mark("unknown", JobState::Done, 5.0).is_none());
}

/// Past `buffer_memory`, buffered jobs go to the queue's disk tail: memory
/// stays bounded, the order is kept, every job comes back when slots free,
/// and a checkpoint still describes all of them.
#[test]
fn buffers_spill_past_buffer_memory_and_keep_their_order() {
    let mut c = cfg();
    c.hwm = 0;
    c.buffer_memory = 64 << 10;
    let now = Now::real();
    let mut h = Harness::with(RouterState::new(c, now), now);
    for i in 0..5000 {
        let out = h.request("c", &format!("m{i}"), "default", "");
        assert!(is_receipt(&out[0], &format!("m{i}")), "all accepted, none refused");
    }
    assert_eq!(h.r.waiting("default"), 5000);
    assert!(h.r.buffered_bytes() <= 64 << 10, "memory part bounded: {}", h.r.buffered_bytes());
    assert!(h.r.spilled_bytes() > 0);
    let checkpoint = h.r.checkpoint_records(h.now);
    let accepted = checkpoint.iter().filter(|r| matches!(r, emq_journal::Record::Accepted { .. })).count();
    assert_eq!(accepted, 5000, "a checkpoint reads the disk tail too");
    h.inform("jm", &[(10, "default")]);
    let mut order = Vec::new();
    for _ in 0..5000 {
        let out = h.ready("jm");
        order.extend(dispatched_to(&out).into_iter().map(|(_, id)| id));
        let id = order.last().cloned().unwrap();
        h.done("jm", &id, "{}");
    }
    let want: Vec<String> = (0..5000).map(|i| format!("m{i}")).collect();
    assert_eq!(order, want, "first in, first out across memory and disk");
    assert_eq!((h.r.waiting("default"), h.r.spilled_bytes(), h.r.buffered_bytes()), (0, 0, 0));
}

/// Finished jobs are forgotten once `result_ttl` has passed; live ones stay.
#[test]
fn finished_jobs_expire_after_result_ttl() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.request("c", "done", "default", "reply-requested");
    h.done("jm", "done", "{}");
    h.request("c", "waiting", "default", "");
    h.advance(1800.0);
    heartbeat_with(&mut h, "jm", &emq_protocol::PoolHealth::default());
    h.tick();
    assert!(h.r.outcomes.history.get("done").is_some(), "kept for result_ttl");
    h.advance(1801.0);
    heartbeat_with(&mut h, "jm", &emq_protocol::PoolHealth::default());
    h.tick();
    assert!(h.r.outcomes.history.get("done").is_none(), "gone after result_ttl");
    assert!(h.r.outcomes.history.get("waiting").is_some(), "a live job's record stays");
}

/// Only the job manager a job was handed to may end it: a peer that
/// INFORMs on the backend cannot forge a result for another's job.
#[test]
fn a_forged_reply_from_another_job_manager_is_dropped() {
    let mut h = Harness::new();
    h.inform("real", &[(10, "default")]);
    h.ready("real");
    h.request("c", "j", "default", "reply-requested");
    h.inform("fake", &[(10, "default")]);
    let out = h.done("fake", "j", r#"{"value": "forged"}"#);
    assert!(result_to(&out, "j").is_none());
    assert_eq!(h.r.errors()["forged_reply"], 1);
    let out = h.done("real", "j", r#"{"value": "real"}"#);
    assert_eq!(result_to(&out, "j").unwrap().value, serde_json::json!("real"), "the real result still arrives");
}

/// A frontend peer that INFORMs as a scheduler would receive every
/// client's SCHEDULE orders: nobody may by default.
#[test]
fn schedulers_must_be_allowed() {
    let inform = Command::Inform(Inform { queues: QueueSpec::default(), kind: "scheduler".into(), features: None });
    let mut h = Harness::new();
    assert!(h.recv(SocketKind::Frontend, "sneaky", inform.clone()).is_empty(), "no ACK");
    assert_eq!(h.r.errors()["scheduler_refused"], 1);
    let order = Command::Schedule(emq_protocol::Schedule {
        queue: "default".into(),
        headers: "".into(),
        interval_secs: "60".into(),
        payload: "[]".into(),
        cron: String::new(),
    });
    let out = h.recv(SocketKind::Frontend, "client", order.clone());
    assert!(sends(&out).iter().all(|(_, peer, _)| peer != "sneaky"), "no SCHEDULE reaches it");
    let mut c = cfg();
    c.allowed_schedulers = vec!["*".into()];
    c.scheduler_external = true;
    let now = Now::real();
    let mut h = Harness::with(RouterState::new(c, now), now);
    assert_eq!(
        sends(&h.recv(SocketKind::Frontend, "sched", inform)),
        vec![(SocketKind::Frontend, "sched".into(), "ACK".into())]
    );
    let out = h.recv(SocketKind::Frontend, "client", order);
    assert_eq!(sends(&out)[0].1, "sched");
}

/// Whoever reaches the admin socket may look, not change anything, and
/// sees no job's result unless it sent the job (or holds its owner token)
/// or is an authenticated admin.
#[test]
fn admin_changes_need_the_token_and_results_are_owned() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.request("c", "j", "default", "reply-requested,owner:s3cret");
    h.done("jm", "j", r#"{"value": "private"}"#);
    // A stranger: no DISCONNECT, no REQUEUE, no result.
    let out = h.recv_id(SocketKind::Admin, "stranger", Message::with_msgid("d1", Command::Disconnect));
    assert!(!out.contains(&Action::Shutdown));
    assert_eq!(h.r.errors()["admin_refused"], 1);
    let wrong =
        h.recv(SocketKind::Admin, "stranger", Command::Admin(AdminCommand::Authenticate { token: "guess".into() }));
    assert!(!sends(&wrong).is_empty());
    assert_eq!(h.r.errors()["admin_auth_failed"], 1);
    let status = |h: &mut Harness, socket, peer: &str, token: Option<&str>| -> serde_json::Value {
        let cmd = AdminCommand::JobStatus { job_msgid: "j".into(), owner_token: token.map(str::to_owned) };
        let out = h.recv(socket, peer, Command::Admin(cmd));
        let Action::Send { message, .. } = &out[0] else { panic!() };
        let Command::Reply(Reply::Single { body }) = &message.command else { panic!() };
        serde_json::from_str(body).unwrap()
    };
    let v = status(&mut h, SocketKind::Admin, "stranger", None);
    assert_eq!((v["state"].as_str(), v.get("result")), (Some("done"), None), "{v}");
    let v = status(&mut h, SocketKind::Frontend, "other-client", Some("guess"));
    assert!(v.get("result").is_none(), "{v}");
    // The sending connection, the owner token from a new connection, an admin.
    assert_eq!(status(&mut h, SocketKind::Frontend, "c", None)["result"]["value"], "private");
    assert_eq!(status(&mut h, SocketKind::Frontend, "c-reconnected", Some("s3cret"))["result"]["value"], "private");
    assert_eq!(status(&mut h, SocketKind::Admin, "cli", None)["result"]["value"], "private");
}

/// Kept results have a byte budget: a huge one is not kept (a small
/// JOB_STATUS must not fetch it), the oldest are evicted first.
#[test]
fn kept_results_stay_within_their_budget() {
    let mut c = cfg();
    c.results_max_bytes = 40_000;
    let now = Now::real();
    let mut h = Harness::with(RouterState::new(c, now), now);
    h.inform("jm", &[(10, "default")]);
    let big = format!(r#"{{"value": "{}"}}"#, "x".repeat(2000));
    for i in 0..20 {
        h.ready("jm");
        h.request("c", &format!("j{i}"), "default", "reply-requested");
        let out = h.done("jm", &format!("j{i}"), &big);
        assert!(result_to(&out, &format!("j{i}")).is_some(), "the client gets it in full");
    }
    let kept = |h: &Harness, id: &str| h.r.outcomes.history.get(id).and_then(|r| r.result.clone()).unwrap();
    assert!(kept(&h, "j0").contains("result_not_kept"), "oldest evicted");
    assert_eq!(kept(&h, "j19"), big, "newest kept");
    h.ready("jm");
    h.request("c", "huge", "default", "");
    h.done("jm", "huge", &format!(r#"{{"value": "{}"}}"#, "y".repeat(5000)));
    assert!(kept(&h, "huge").contains("result_not_kept"));
}

/// Our job managers keep every report until the router confirms it: the
/// router's heartbeats to them carry how many REPLYs it received since
/// their INFORM, sent only once the journal holds them (SendDurable).
#[test]
fn heartbeats_confirm_reports_once_durable() {
    let mut h = Harness::new();
    h.inform_ours("ours");
    h.inform("eventmq", &[(10, "default")]);
    for jm in ["ours", "eventmq"] {
        h.ready(jm);
    }
    h.request("c", "a", "default", "reply-requested");
    h.request("c", "b", "default", "reply-requested");
    for (jm, id) in [("ours", "a"), ("eventmq", "b")] {
        h.done(jm, id, "{}");
    }
    h.advance(3.1);
    let raw = h.r.handle_vec(Event::Tick, h.now);
    let beat = |peer: &str| {
        raw.iter().find_map(|a| match a {
            Action::SendDurable { peer: p, message, .. } if p.to_string() == peer => Some(("durable", message.clone())),
            Action::Send { peer: p, message, .. } if p.to_string() == peer => Some(("now", message.clone())),
            _ => None,
        })
    };
    let (when, m) = beat("ours").expect("a heartbeat to ours");
    assert_eq!(when, "durable");
    assert_eq!(
        m.command,
        Command::Heartbeat(Heartbeat {
            timestamp: match &m.command {
                Command::Heartbeat(hb) => hb.timestamp.clone(),
                _ => unreachable!(),
            },
            health: Some(r#"{"reports":1}"#.into())
        })
    );
    let (when, m) = beat("eventmq").expect("a heartbeat to EventMQ's");
    assert_eq!(when, "now");
    assert!(matches!(m.command, Command::Heartbeat(Heartbeat { health: None, .. })), "EventMQ's gets a plain one");
}

/// A dead letter's msgid sent again is not a second job (by its sender: the
/// receipt again; by anyone else: refused), and `requeue` still runs it.
#[test]
fn a_dead_letters_msgid_sent_again_is_not_a_second_job() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    h.request("c", "m", "default", "guarantee");
    h.done("jm", "m", FAIL);
    assert_eq!(h.r.outcomes.dead.len(), 1);
    let out = h.request("c", "m", "default", "");
    assert!(out.iter().any(|a| is_receipt(a, "m")));
    let out = h.request("stranger", "m", "default", "");
    assert_eq!(result_to(&out, "m").unwrap().error.unwrap().kind.as_str(), "refused");
    assert_eq!(h.r.waiting("default"), 0, "no second job under the same msgid");
    let v = admin_json(&mut h, AdminCommand::Requeue { job_msgid: "m".into() });
    assert!(v.get("error").is_none(), "{v}");
    assert_eq!((h.r.waiting("default"), h.r.outcomes.dead.len()), (1, 0), "the dead letter runs again");
}

/// Job managers that say what they allow (`allowed_paths` at INFORM) get
/// only those jobs; a job no job manager allows waits (STATUS says why)
/// while the jobs behind it go on; a job manager that allows it takes it.
#[test]
fn jobs_go_only_to_job_managers_that_allow_their_module() {
    let mut h = Harness::new();
    let inform = |allow: &str| {
        Command::Inform(Inform {
            queues: QueueSpec::default_queues(),
            kind: "worker".into(),
            features: Some(format!("reports-all,allow={allow}")),
        })
    };
    h.recv(SocketKind::Backend, "bench", inform("benchjobs"));
    h.recv(SocketKind::Backend, "test", inform("testjobs|pkg"));
    let job = |h: &mut Harness, id: &str, module: &str| {
        let payload = format!(r#"["run", {{"path": "{module}", "callable": "f"}}]"#);
        let r = Request { queue: "default".into(), headers: "reply-requested".into(), payload };
        h.recv_id(SocketKind::Frontend, "c", Message::with_msgid(id, Command::Request(r)))
    };
    // Slots first: each job goes to the one that allows it, whatever the order.
    for _ in 0..2 {
        h.ready("bench");
        h.ready("test");
    }
    for (id, m) in [("t1", "testjobs"), ("b1", "benchjobs"), ("t2", "pkg.mod:C"), ("b2", "benchjobs.sub")] {
        job(&mut h, id, m);
    }
    let at = |h: &Harness, id: &str| h.r.in_flight().get(id).map(|j| j.job_manager.to_string());
    assert_eq!(at(&h, "t1").as_deref(), Some("test"));
    assert_eq!(at(&h, "t2").as_deref(), Some("test"));
    assert_eq!(at(&h, "b1").as_deref(), Some("bench"));
    assert_eq!(at(&h, "b2").as_deref(), Some("bench"));
    // Jobs first: "bench" is full; its job waits, and the test job behind it
    // goes to "test" when it frees a slot; an unknown module waits with why.
    h.ready("test");
    job(&mut h, "x", "elsewhere");
    job(&mut h, "b3", "benchjobs");
    assert_eq!(at(&h, "x"), None, "nobody allows it");
    assert_eq!(at(&h, "b3"), None, "bench is full");
    h.ready("bench");
    assert_eq!(at(&h, "b3").as_deref(), Some("bench"), "not stuck behind x");
    let st: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert_eq!(st["waiting_not_allowed"]["default"]["waiting"], 1, "{st}");
    assert_eq!(st["waiting_not_allowed"]["default"]["modules"], serde_json::json!(["elsewhere"]));
    // A job manager that allows everything (EventMQ's) takes it.
    h.inform("eventmq", &[(10, "default")]);
    h.ready("eventmq");
    assert_eq!(at(&h, "x").as_deref(), Some("eventmq"));
    let st: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert!(st["waiting_not_allowed"].as_object().unwrap().is_empty(), "{st}");
}

/// Command jobs go only to job managers that said `commands` at INFORM —
/// never to EventMQ's (no features) nor to ours without `allowed_commands`
/// — whether the job or the slot comes first, and do not hold up the jobs
/// behind them; STATUS says why one waits; its detail shows the command
/// (variable names, never their values).
#[test]
fn command_jobs_go_only_to_job_managers_that_run_commands() {
    let mut h = Harness::new();
    h.inform("eventmq", &[(10, "default")]);
    let ours = |features: &str| {
        Command::Inform(Inform {
            queues: QueueSpec::default_queues(),
            kind: "worker".into(),
            features: Some(features.into()),
        })
    };
    h.recv(SocketKind::Backend, "no-commands", ours("reports-all,allow=benchjobs"));
    let command = |h: &mut Harness, id: &str| {
        let mut c = emq_protocol::CommandPayload::new(["/bin/echo", id]);
        c.env.insert("SECRET".into(), "hunter2".into());
        let r = Request { queue: "default".into(), headers: "reply-requested".into(), payload: c.to_wire() };
        h.recv_id(SocketKind::Frontend, "c", Message::with_msgid(id, Command::Request(r)))
    };
    let callable = |h: &mut Harness, id: &str| {
        let payload = r#"["run", {"path": "benchjobs", "callable": "f"}]"#.to_owned();
        let r = Request { queue: "default".into(), headers: "reply-requested".into(), payload };
        h.recv_id(SocketKind::Frontend, "c", Message::with_msgid(id, Command::Request(r)))
    };
    let at = |h: &Harness, id: &str| h.r.in_flight().get(id).map(|j| j.job_manager.to_string());
    // Slots first: the command job takes none of them.
    h.ready("eventmq");
    h.ready("no-commands");
    command(&mut h, "c1");
    assert_eq!(at(&h, "c1"), None);
    // Jobs behind it run.
    callable(&mut h, "p1");
    callable(&mut h, "p2");
    assert!(at(&h, "p1").is_some() && at(&h, "p2").is_some());
    let st: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert_eq!(st["waiting_not_allowed"]["default"]["waiting_for_commands"], 1, "{st}");
    let detail = admin_json(&mut h, AdminCommand::JobStatus { job_msgid: "c1".into(), owner_token: None });
    println!("{detail}");
    // Freed slots of either do not take it.
    h.done("eventmq", "p1", r#"{"value": 1}"#);
    h.done("no-commands", "p2", r#"{"value": 1}"#);
    h.ready("eventmq");
    h.ready("no-commands");
    assert_eq!(at(&h, "c1"), None);
    // One that runs commands comes: it takes it, and a new one goes to it too.
    h.recv(SocketKind::Backend, "runner", ours("reports-all,allow=benchjobs,commands"));
    h.ready("runner");
    assert_eq!(at(&h, "c1").as_deref(), Some("runner"));
    command(&mut h, "c2");
    assert_eq!(at(&h, "c2"), None, "runner is full; the others never take it");
    h.done("runner", "c1", r#"{"value": 1}"#);
    h.ready("runner");
    assert_eq!(at(&h, "c2").as_deref(), Some("runner"));
    let st: serde_json::Value = serde_json::from_str(&h.r.status_json(h.now)).unwrap();
    assert!(st["waiting_not_allowed"].as_object().unwrap().is_empty(), "{st}");
}

/// A dead letter's detail says what it runs: callable and arguments (in
/// JOB_STATUS for its owner or an admin, and in the dead letter list).
#[test]
fn a_dead_letter_shows_its_callable_and_arguments() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.ready("jm");
    let payload =
        r#"["run", {"path": "billing.tasks", "callable": "charge", "args": [42, "eur"], "kwargs": {"retry": true}}]"#;
    let r =
        Request { queue: "default".into(), headers: "reply-requested,retry-count:0".into(), payload: payload.into() };
    h.recv_id(SocketKind::Frontend, "c", Message::with_msgid("d", Command::Request(r)));
    h.done("jm", "d", FAIL);
    let st = admin_json(&mut h, AdminCommand::JobStatus { job_msgid: "d".into(), owner_token: None });
    assert_eq!(st["state"], "dead", "{st}");
    assert_eq!(
        st["job"],
        serde_json::json!({"callable": "billing.tasks.charge", "args": [42, "eur"], "kwargs": {"retry": true}})
    );
    assert_eq!(st["headers"], "reply-requested,retry-count:0");
    let dead = admin_json(&mut h, AdminCommand::DeadLetters);
    assert_eq!(dead["dead_letters"][0]["job"]["callable"], "billing.tasks.charge");
    // A stranger sees neither.
    let v = h.recv(
        SocketKind::Admin,
        "stranger",
        Command::Admin(AdminCommand::JobStatus { job_msgid: "d".into(), owner_token: None }),
    );
    assert!(!format!("{v:?}").contains("charge"), "{v:?}");
}

/// A job manager whose best queue holds only jobs it does not allow takes
/// from its next queue instead of idling.
#[test]
fn an_allow_list_looks_past_a_queue_it_cannot_serve() {
    let mut h = Harness::new();
    let q = QueueSpec(vec![(20, "a".into()), (10, "b".into())]);
    h.recv(
        SocketKind::Backend,
        "other",
        Command::Inform(Inform {
            queues: q.clone(),
            kind: "worker".into(),
            features: Some("reports-all,allow=x".into()),
        }),
    );
    h.recv(
        SocketKind::Backend,
        "bench",
        Command::Inform(Inform { queues: q, kind: "worker".into(), features: Some("reports-all,allow=bench".into()) }),
    );
    for (id, queue, module) in [("xa", "a", "x"), ("bb", "b", "bench")] {
        let payload = format!(r#"["run", {{"path": "{module}", "callable": "f"}}]"#);
        let r = Request { queue: queue.into(), headers: String::new(), payload };
        h.recv_id(SocketKind::Frontend, "c", Message::with_msgid(id, Command::Request(r)));
    }
    assert_eq!(dispatched_to(&h.ready("bench")), vec![("bench".to_string(), "bb".to_string())]);
    assert_eq!(dispatched_to(&h.ready("other")), vec![("other".to_string(), "xa".to_string())]);
}

/// A REQUEST for a msgid the router holds, from its sender (a retry after
/// a lost receipt or a failover): the receipt again and never a second job;
/// once the job is over, its result again too. From anyone else: refused.
#[test]
fn a_request_sent_again_is_answered_with_its_receipt_never_a_second_job() {
    let mut h = Harness::new();
    h.inform("jm", &[(10, "default")]);
    h.request("c", "same", "default", "reply-requested,owner:tok");
    let out = h.request("c", "same", "default", "reply-requested,owner:tok");
    assert!(out.iter().any(|a| is_receipt(a, "same")), "the receipt again: {out:?}");
    assert!(result_to(&out, "same").is_none(), "not over: no result, no refusal");
    assert_eq!(h.r.waiting("default"), 1, "one job");
    // The same owner from another connection (a client after a failover).
    let out = h.request("c-new", "same", "default", "reply-requested,owner:tok");
    assert!(out.iter().any(|a| is_receipt(a, "same")));
    assert_eq!(h.r.waiting("default"), 1);
    h.ready("jm");
    h.done("jm", "same", r#"{"value": 7}"#);
    let out = h.request("c", "same", "default", "reply-requested,owner:tok");
    assert_eq!(result_to(&out, "same").unwrap().value, serde_json::json!(7), "the result again");
    assert!(dispatched_to(&h.ready("jm")).is_empty(), "never run twice");
    assert_eq!(h.r.activity()["duplicate_requests_answered"], 3);
}

/// A REPLIES that could not be delivered (its client gone, perhaps while it
/// waited in the client's outbox) is handled as its REPLYs: each result is
/// kept to go again (and journaled as pending), each item counted.
#[test]
fn an_undeliverable_replies_keeps_each_result() {
    let mut h = Harness::new();
    let items = vec![
        (String::new(), "a".to_string()),
        (r#"{"value": 1}"#.to_string(), "b".to_string()),
        (r#"{"value": 2}"#.to_string(), "c".to_string()),
    ];
    let message = Message::new(Command::Replies(emq_protocol::Replies { items }));
    h.event(Event::Unreachable { socket: SocketKind::Frontend, peer: PeerId::from("client"), message });
    let pending: Vec<String> = h
        .journal
        .iter()
        .filter_map(|r| match r {
            emq_journal::Record::ResultPending { msgid } => Some(msgid.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(pending, vec!["b".to_string(), "c".to_string()], "{:?}", h.journal);
    assert_eq!(h.r.errors()["client_gone"], 3);
}
