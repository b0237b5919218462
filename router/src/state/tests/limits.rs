//! Limits per key through the whole state machine (fake clock): a job over
//! its limit waits while others take the free slots, every end frees its
//! slot once, rate windows open on time, and restarts keep the counts.

use super::*;
use crate::state::limits::LimitSpec;
use emq_journal::Record;

/// A limit: name, concurrency, (jobs, per milliseconds).
type LimitRow<'a> = (&'a str, Option<u32>, Option<(u32, u64)>);

fn limited_cfg(limits: &[LimitRow]) -> RouterConfig {
    let mut c = cfg();
    c.hwm = 0;
    c.limits = limits
        .iter()
        .map(|(n, conc, rate)| {
            let spec = LimitSpec { concurrency: *conc, rate: rate.map(|(k, ms)| (k, Duration::from_millis(ms))) };
            (n.to_string(), spec)
        })
        .collect();
    c
}

fn harness(limits: &[LimitRow]) -> Harness {
    let now = Now::real();
    Harness::with(RouterState::new(limited_cfg(limits), now), now)
}

/// REQUESTs sent to job managers: msgids.
fn sent(out: &[Action]) -> Vec<String> {
    dispatched_to(out).into_iter().map(|(_, m)| m).collect()
}

/// A job manager "jm" of ours with `slots` free slots.
fn job_manager(h: &mut Harness, slots: usize) {
    h.inform_ours("jm");
    for _ in 0..slots {
        h.ready("jm");
    }
}

fn refusal(out: &[Action]) -> Option<String> {
    out.iter().find_map(|a| match a {
        Action::Send { socket: SocketKind::Frontend, message, .. } => match &message.command {
            Command::Reply(Reply::Result { reply_json, .. }) if reply_json.contains("refused") => {
                Some(reply_json.clone())
            }
            _ => None,
        },
        _ => None,
    })
}

#[test]
fn a_job_over_its_limit_waits_while_others_take_the_free_slots() {
    let mut h = harness(&[("k", Some(2), None)]);
    job_manager(&mut h, 4);
    let mut running = Vec::new();
    for i in 0..6 {
        running.extend(sent(&h.request("c", &format!("k{i}"), "default", "limit:k")));
    }
    assert_eq!(running, ["k0", "k1"], "two of k at once");
    for i in 0..3 {
        running.extend(sent(&h.request("c", &format!("p{i}"), "default", "")));
    }
    assert_eq!(running, ["k0", "k1", "p0", "p1"], "jobs without the limit take the other slots");
    assert_eq!(h.r.limit_waiting(), 4);
    // k0 ends: its slot is free; the next k job goes to the end of the
    // queue (behind p2) and the freed job manager slot takes p2 first.
    let mut out = h.done("jm", "k0", r#"{"value": 1}"#);
    out.extend(h.ready("jm"));
    assert_eq!(sent(&out), ["p2"]);
    let out = h.done("jm", "p0", r#"{"value": 1}"#);
    assert!(sent(&out).is_empty());
    let out = h.ready("jm");
    assert_eq!(sent(&out), ["k2"], "then the waiting k job, in order");
    // Every end frees exactly one slot: never more than two running.
    let mut ended = vec!["k1", "k2"];
    let mut started = vec![];
    while let Some(m) = ended.pop() {
        h.done("jm", m, r#"{"value": 1}"#);
        let s = sent(&h.ready("jm"));
        started.extend(s.clone());
        ended.extend(s.iter().map(|m| Box::leak(m.clone().into_boxed_str()) as &str));
        let k_running = h.r.in_flight().keys().filter(|m| m.starts_with('k')).count();
        assert!(k_running <= 2, "{k_running} k jobs running");
    }
    assert_eq!(started, ["k3", "k4", "k5"]);
    assert_eq!(h.r.limit_waiting(), 0);
    let k = crate::state::limits::LimitKey::parse("k").unwrap();
    assert_eq!(h.r.limits.running(&k), 0, "no slot leaked");
}

#[test]
fn partitions_count_apart_and_side_by_side() {
    let mut h = harness(&[("k", Some(2), None)]);
    job_manager(&mut h, 8);
    let mut running = Vec::new();
    for i in 0..4 {
        running.extend(sent(&h.request("c", &format!("x{i}"), "default", "limit:k/x")));
        running.extend(sent(&h.request("c", &format!("y{i}"), "default", "limit:k/y")));
    }
    running.sort();
    assert_eq!(running, ["x0", "x1", "y0", "y1"]);
    let status = h.r.limits_json(h.now, 10);
    assert_eq!(status["k"]["running"], 4);
    assert_eq!(status["k"]["waiting"], 4);
    assert_eq!(status["k"]["active_partitions"], 2);
    let out = h.done("jm", "y0", r#"{"value": 1}"#);
    assert_eq!(sent(&out), ["y2"], "a free job manager slot takes the released job at once");
}

#[test]
fn a_rate_window_opens_on_time() {
    let mut h = harness(&[("api", None, Some((5, 1000)))]);
    job_manager(&mut h, 100);
    let mut starts: Vec<(f64, String)> = Vec::new();
    let t0 = h.now;
    for i in 0..12 {
        for m in sent(&h.request("c", &format!("a{i}"), "default", "limit:api")) {
            starts.push((0.0, m));
        }
    }
    assert_eq!(starts.len(), 5, "five starts in the first second");
    for m in starts.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>() {
        h.done("jm", &m, r#"{"value": 1}"#);
        h.ready("jm");
    }
    // The router asks to be woken when the window opens.
    let wake = h.r.next_tick();
    assert!(wake <= t0.mono + Duration::from_secs(1));
    while starts.len() < 12 {
        let dt = h.r.next_tick().saturating_duration_since(h.now.mono).max(Duration::from_millis(1));
        h.now = h.now.after(dt);
        let out = h.event(Event::Timers);
        for m in sent(&out) {
            starts.push((h.now.mono.duration_since(t0.mono).as_secs_f64(), m.clone()));
            h.done("jm", &m, r#"{"value": 1}"#);
            h.ready("jm");
        }
        assert!(h.now.mono < t0.mono + Duration::from_secs(10), "stuck: {starts:?}");
    }
    // Never more than five starts in any one-second window.
    for (i, (t, _)) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().filter(|(u, _)| *u < t + 1.0).count();
        assert!(in_window <= 5, "{in_window} starts within a second of {t}: {starts:?}");
    }
    let last = starts.last().unwrap().0;
    assert!((2.0..2.1).contains(&last), "the 11th and 12th start when the third window opens: {last}");
}

#[test]
fn every_end_frees_the_slot_once() {
    let mut h = harness(&[("k", Some(1), None)]);
    job_manager(&mut h, 4);
    let k = crate::state::limits::LimitKey::parse("k").unwrap();
    // A failure with a retry left: the slot is free while it waits.
    let mut out = h.request("c", "r", "default", "limit:k,retry-count:1");
    out.extend(h.request("c", "w", "default", "limit:k"));
    assert_eq!(sent(&out), ["r"]);
    let failed = emq_protocol::JobReply::failed("ValueError", "boom", "").to_json();
    let out = h.done("jm", "r", &failed);
    assert_eq!(sent(&out), ["w"], "the retrying job left its slot");
    assert_eq!(h.r.limits.running(&k), 1);
    // Its retry comes due: it waits for w.
    h.advance(1.5);
    assert!(sent(&h.event(Event::Timers)).is_empty());
    assert_eq!(h.r.limit_waiting(), 1);
    let out = h.done("jm", "w", r#"{"value": 1}"#);
    assert_eq!(sent(&out), ["r"]);
    // A cancelled waiting job frees nothing it did not hold; a running job
    // cancelled frees its slot when its job manager reports it.
    h.request("c", "x", "default", "limit:k");
    assert_eq!(h.r.limit_waiting(), 1);
    h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Cancel { job_msgid: "x".into() }));
    assert_eq!(h.r.limit_waiting(), 0);
    assert_eq!(h.r.limits.running(&k), 1);
    let cancelled = emq_protocol::JobReply::failed(emq_protocol::JobErrorKind::Cancelled, "stop", "").to_json();
    h.done("jm", "r", &cancelled);
    assert_eq!(h.r.limits.running(&k), 0);
    // A job manager lost: its job (guarantee) is requeued, its slot freed,
    // and it runs again at the next job manager.
    let out = h.request("c", "g", "default", "limit:k,guarantee");
    assert_eq!(sent(&out), ["g"]);
    h.request("c", "g2", "default", "limit:k,guarantee");
    h.advance(6.0);
    h.tick();
    assert_eq!(h.r.limits.running(&k), 0, "its job manager went silent: requeued, slot free");
    h.inform_ours("jm2");
    let out = h.ready("jm2");
    assert_eq!(sent(&out), ["g"]);
    assert_eq!(h.r.limits.running(&k), 1);
    // Purging the queue ends the waiting one.
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Purge { queue: "default".into() }));
    assert!(format!("{out:?}").contains("\\\"purged\\\":1"), "{out:?}");
    assert_eq!(h.r.limit_waiting(), 0);
}

#[test]
fn unknown_and_malformed_limits_are_refused_at_send() {
    let mut h = harness(&[("api", Some(1), None)]);
    job_manager(&mut h, 1);
    let why = refusal(&h.request("c", "u", "default", "limit:nope/x")).expect("refused");
    assert!(why.contains("unknown limit \\\"nope\\\"") && why.contains("configured: api"), "{why}");
    let why = refusal(&h.request("c", "m", "default", "limit:/x")).expect("refused");
    assert!(why.contains("NAME or NAME/PARTITION"), "{why}");
    assert_eq!(h.r.errors().get("refused_limit"), Some(&2));
    assert!(h.r.in_flight().is_empty());
    let mut h = harness(&[]);
    let why = refusal(&h.request("c", "u", "default", "limit:api")).expect("refused");
    assert!(why.contains("no limits configured"), "{why}");
}

#[test]
fn a_reload_applies_changed_limits_to_waiting_jobs() {
    let mut h = harness(&[("k", Some(1), None), ("gone", Some(1), None)]);
    job_manager(&mut h, 10);
    for i in 0..4 {
        h.request("c", &format!("k{i}"), "default", "limit:k");
        h.request("c", &format!("g{i}"), "default", "limit:gone");
    }
    assert_eq!(h.r.in_flight().len(), 2);
    h.r.reload(limited_cfg(&[("k", Some(3), None)]));
    let out = h.tick();
    let mut s = sent(&out);
    s.sort();
    assert_eq!(s, ["g1", "g2", "g3", "k1", "k2"], "k may run three; a removed limit lets its jobs go");
}

#[test]
fn jobs_in_doubt_after_a_restart_hold_their_slots() {
    let mut h = harness(&[("k", Some(2), None)]);
    job_manager(&mut h, 4);
    for i in 0..5 {
        h.request("c", &format!("k{i}"), "default", "limit:k,guarantee");
    }
    assert_eq!(h.r.in_flight().len(), 2);
    let journal = h.journal.clone();
    // A restart: k0, k1 are in doubt and count; the others wait.
    let now = Now::real();
    let mut r = RouterState::new(limited_cfg(&[("k", Some(2), None)]), now);
    for rec in &journal {
        r.restore(rec.clone());
    }
    r.finish_restore(now);
    let mut h2 = Harness::with(r, now);
    h2.inform_ours("jm2");
    let mut started = Vec::new();
    for _ in 0..4 {
        started.extend(sent(&h2.ready("jm2")));
    }
    assert!(started.is_empty(), "in-doubt k0, k1 hold both slots: {started:?}");
    // The first job manager re-attaches and reports k0 done: one slot.
    h2.inform_ours("jm");
    let out = h2.done("jm", "k0", r#"{"value": 1}"#);
    assert_eq!(sent(&out), ["k2"]);
    // k1 is never reported: when its doubt expires it runs again
    // (guarantee), within the limit.
    let mut out = Vec::new();
    for _ in 0..30 {
        h2.advance(1.0);
        for jm in ["jm", "jm2"] {
            h2.recv(SocketKind::Backend, jm, Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
        }
        out.extend(h2.tick());
    }
    assert_eq!(sent(&out), ["k1"]);
    let k = crate::state::limits::LimitKey::parse("k").unwrap();
    assert_eq!(h2.r.limits.running(&k), 2);
    assert!(journal.iter().any(|r| matches!(r, Record::Dispatched { .. })));
}

#[test]
fn a_checkpoint_keeps_the_waiting_jobs() {
    let mut h = harness(&[("k", Some(1), None)]);
    job_manager(&mut h, 2);
    for i in 0..3 {
        h.request("c", &format!("k{i}"), "default", "limit:k");
    }
    assert_eq!(h.r.limit_waiting(), 2);
    let records = h.r.checkpoint_records(h.now);
    let accepted: Vec<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Accepted { job, .. } => Some(job.msgid.as_str()),
            _ => None,
        })
        .collect();
    for m in ["k0", "k1", "k2"] {
        assert!(accepted.contains(&m), "{m} missing from the checkpoint: {accepted:?}");
    }
}

#[test]
fn waiting_partitions_take_turns() {
    // One partition sent its jobs first: once both wait for their limit,
    // the free slots go to each in turn, not to the one that came first.
    let mut h = harness(&[("k", Some(1), None)]);
    job_manager(&mut h, 2);
    for i in 0..5 {
        h.request("c", &format!("a{i}"), "default", "limit:k/a");
    }
    for i in 0..5 {
        h.request("c", &format!("b{i}"), "default", "limit:k/b");
    }
    let mut order: Vec<String> = h.r.in_flight().keys().map(|k| k.to_string()).collect();
    order.sort();
    assert_eq!(order, ["a0", "b0"], "b0 did not wait behind a's backlog");
    // Whichever ends, both partitions keep one job running each.
    for step in 0..8 {
        let running: Vec<String> = h.r.in_flight().keys().map(|k| k.to_string()).collect();
        let mut kinds: Vec<&str> = running.iter().map(|m| &m[..1]).collect();
        kinds.sort();
        assert_eq!(kinds, ["a", "b"], "step {step}: {running:?}");
        let ending = if step % 3 == 0 { running.iter().max() } else { running.iter().min() }.unwrap().clone();
        order.extend(sent(&h.done("jm", &ending, r#"{"value": 1}"#)));
        order.extend(sent(&h.ready("jm")));
    }
    while let Some(m) = h.r.in_flight().keys().next().map(|k| k.to_string()) {
        order.extend(sent(&h.done("jm", &m, r#"{"value": 1}"#)));
        order.extend(sent(&h.ready("jm")));
    }
    assert_eq!(order.len(), 10, "every job ran once: {order:?}");
}

#[test]
fn a_cancelled_job_in_doubt_frees_its_slot() {
    let mut h = harness(&[("k", Some(1), None)]);
    job_manager(&mut h, 2);
    h.request("c", "a", "default", "limit:k");
    h.request("c", "b", "default", "limit:k");
    // A checkpoint (the journal starts again from it), then a restart.
    let records = h.r.checkpoint_records(h.now);
    let now = Now::real();
    let mut r = RouterState::new(limited_cfg(&[("k", Some(1), None)]), now);
    for rec in records {
        r.restore(rec);
    }
    r.finish_restore(now);
    let mut h = Harness::with(r, now);
    let k = crate::state::limits::LimitKey::parse("k").unwrap();
    assert_eq!(h.r.limits.running(&k), 1, "a (no guarantee, no retries) is in doubt and holds the slot");
    job_manager(&mut h, 2);
    assert!(h.r.in_flight().is_empty(), "b waits");
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Cancel { job_msgid: "a".into() }));
    assert_eq!(sent(&out), ["b"], "cancelling a frees its slot");
}

#[test]
fn a_released_job_goes_to_a_job_manager_that_allows_it() {
    let mut h = harness(&[("k", Some(1), None)]);
    // A job manager of higher weight that only allows `reports`, and one
    // that allows anything.
    let inform = |paths: &str| Inform {
        queues: QueueSpec(vec![(if paths.is_empty() { 10 } else { 20 }, "default".into())]),
        kind: "worker".into(),
        features: Some(if paths.is_empty() {
            emq_protocol::FEATURE_REPORTS_ALL.to_owned()
        } else {
            format!(
                "{},{}",
                emq_protocol::FEATURE_REPORTS_ALL,
                emq_protocol::allow_feature(&[paths.to_owned()]).unwrap()
            )
        }),
    };
    h.recv(SocketKind::Backend, "narrow", Command::Inform(inform("reports")));
    h.recv(SocketKind::Backend, "wide", Command::Inform(inform("")));
    for _ in 0..2 {
        h.ready("narrow");
        h.ready("wide");
    }
    let api = |h: &mut Harness, m: &str| {
        let r = Request {
            queue: "default".into(),
            headers: "limit:k".into(),
            payload: r#"["run", {"path": "api", "callable": "call"}]"#.into(),
        };
        h.recv_id(SocketKind::Frontend, "c", Message::with_msgid(m, Command::Request(r)))
    };
    let out = api(&mut h, "a");
    let out2 = api(&mut h, "b");
    assert_eq!(dispatched_to(&out), [("wide".to_owned(), "a".to_owned())]);
    assert!(sent(&out2).is_empty());
    let out = h.done("wide", "a", r#"{"value": 1}"#);
    assert_eq!(dispatched_to(&out), [("wide".to_owned(), "b".to_owned())], "not stuck behind narrow");
}

#[test]
fn a_released_job_cancelled_in_its_queue_lets_the_next_one_go() {
    let mut h = harness(&[("k", Some(1), None)]);
    job_manager(&mut h, 1);
    for m in ["a", "b", "c"] {
        h.request("c", m, "default", "limit:k");
    }
    // The job manager is busy with a: when a ends, b is released into the
    // queue, but no slot is free (no READY yet).
    h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Pause { queue: "default".into() }));
    h.done("jm", "a", r#"{"value": 1}"#);
    h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Cancel { job_msgid: "b".into() }));
    h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Resume { queue: "default".into() }));
    let mut out = h.ready("jm");
    out.extend(h.tick());
    assert_eq!(sent(&out), ["c"], "c is not stranded");
}
