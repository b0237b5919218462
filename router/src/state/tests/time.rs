//! Schedules, delayed jobs and the timer structure, on the fake clock.

use super::*;
use emq_protocol::Schedule;

const PAYLOAD: &str = r#"["run", {"callable": "add", "path": "emqjobs", "args": [1, 2], "kwargs": {}, "class_args": [], "class_kwargs": {}}]"#;
/// EventMQ's id of [`PAYLOAD`] (tested against its Python in emq-protocol).
const ID: &str = "e037b3207577f260ad3c1dd8f4dd7db1acfb562f";

fn order(headers: &str, interval: &str, cron: &str) -> Schedule {
    Schedule {
        queue: "default".into(),
        headers: headers.into(),
        interval_secs: interval.into(),
        payload: PAYLOAD.into(),
        cron: cron.into(),
    }
}

fn schedule(h: &mut Harness, headers: &str, interval: &str, cron: &str) -> Vec<Action> {
    h.recv_id(SocketKind::Frontend, "c", Message::with_msgid("s1", Command::Schedule(order(headers, interval, cron))))
}

/// Forwarded REQUESTs: (msgid, headers).
fn fired(actions: &[Action]) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { socket: SocketKind::Backend, message, .. } => match &message.command {
                Command::Request(r) => Some((message.msgid.clone(), r.headers.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A job manager with `n` free slots that finishes each job it gets at once.
fn harness_with_slots(n: usize) -> Harness {
    let mut h = Harness::new();
    h.inform_ours("jm");
    for _ in 0..n {
        h.ready("jm");
    }
    h
}

/// Advances the clock in `step`s to `secs` later, ticking at each, and
/// returns the jobs fired, each finished at once (with a READY after it).
fn run_for(h: &mut Harness, secs: f64, step: f64) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut t = 0.0;
    while t < secs - 1e-9 {
        h.advance(step);
        t += step;
        h.recv(SocketKind::Backend, "jm", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
        let out = h.tick();
        for (msgid, headers) in fired(&out) {
            h.done("jm", &msgid, r#"{"value": 3}"#);
            h.ready("jm");
            all.push((msgid, headers));
        }
    }
    all
}

#[test]
fn an_interval_schedule_fires_at_once_then_every_interval() {
    let mut h = harness_with_slots(1);
    let out = schedule(&mut h, "guarantee", "10", "");
    assert!(out.iter().any(|a| is_receipt(a, "s1")), "the client gets a receipt");
    let first = fired(&out);
    assert_eq!(first.len(), 1, "haste: runs at once");
    let (msgid, headers) = &first[0];
    assert!(headers.starts_with("guarantee,reply-requested,schedule:"), "{headers}");
    assert!(headers.contains(&format!("schedule:{ID}")) && headers.contains(",fired:"));
    h.done("jm", msgid, r#"{"value": 3}"#);
    h.ready("jm");
    let status: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json(msgid, true)).unwrap();
    assert_eq!(status["schedule"]["id"], ID);
    assert_eq!(status["state"], "done");
    // Exactly one run per 10 s over a minute.
    let runs = run_for(&mut h, 60.0, 0.5);
    assert_eq!(runs.len(), 6, "{runs:?}");
    let s = admin_json(&mut h, AdminCommand::Schedules);
    assert_eq!(s["total"], 1);
    assert_eq!(s["schedules"][0]["runs"], 7);
    assert_eq!(s["schedules"][0]["last_state"], "done");
    assert_eq!(s["schedules"][0]["callable"], "emqjobs.add");
    assert!(h.journal.iter().any(|r| matches!(r, emq_journal::Record::ScheduleSet(e) if e.id == ID)));
}

#[test]
fn nohaste_waits_one_interval_and_run_count_stops_it() {
    let mut h = harness_with_slots(1);
    let out = schedule(&mut h, "nohaste,run_count:3", "5", "");
    assert!(fired(&out).is_empty(), "nohaste: nothing at once");
    let runs = run_for(&mut h, 4.5, 0.5);
    assert!(runs.is_empty());
    let runs = run_for(&mut h, 60.0, 0.5);
    assert_eq!(runs.len(), 3, "run_count:3");
    assert_eq!(h.r.schedule_count(), 0, "removed once used up");
    assert!(h.journal.iter().any(|r| matches!(r, emq_journal::Record::ScheduleRemoved { id } if id == ID)));
    // EventMQ counts the hasty run as one of the N.
    let mut h = harness_with_slots(1);
    let first = fired(&schedule(&mut h, "run_count:2", "5", ""));
    assert_eq!(first.len(), 1);
    h.done("jm", &first[0].0, "{}");
    h.ready("jm");
    assert_eq!(run_for(&mut h, 60.0, 1.0).len(), 1);
}

#[test]
fn unschedule_by_the_same_callable_and_args_and_rescheduling_replaces() {
    let mut h = harness_with_slots(1);
    schedule(&mut h, "nohaste", "5", "");
    schedule(&mut h, "nohaste", "5", "");
    assert_eq!(h.r.schedule_count(), 1, "the same id replaces");
    assert_eq!(run_for(&mut h, 10.0, 0.5).len(), 2, "one timer, not two");
    let out = h.recv_id(SocketKind::Frontend, "c", Message::with_msgid("u1", Command::Unschedule(order("", "-1", ""))));
    assert!(out.iter().any(|a| is_receipt(a, "u1")));
    assert_eq!(h.r.schedule_count(), 0);
    assert!(run_for(&mut h, 30.0, 1.0).is_empty(), "no runs after UNSCHEDULE");
}

#[test]
fn no_overlap_skips_a_run_while_the_previous_is_running() {
    let mut h = harness_with_slots(4);
    let out = schedule(&mut h, "no-overlap", "1", "");
    let (first, _) = fired(&out).remove(0);
    // The first run does not finish for 3.5 s: three runs are skipped.
    let mut runs = Vec::new();
    for _ in 0..7 {
        h.advance(0.5);
        runs.extend(fired(&h.tick()));
    }
    assert!(runs.is_empty(), "{runs:?}");
    h.done("jm", &first, "{}");
    h.ready("jm");
    h.advance(1.0);
    assert_eq!(fired(&h.tick()).len(), 1, "runs again once the previous finished");
    assert_eq!(admin_json(&mut h, AdminCommand::Schedules)["schedules"][0]["skipped"], 3);
    // Without no-overlap they pile up.
    let mut h = harness_with_slots(4);
    schedule(&mut h, "", "1", "");
    let mut n = 0;
    for _ in 0..6 {
        h.advance(0.5);
        n += fired(&h.tick()).len();
    }
    assert_eq!(n, 3);
}

#[test]
fn cron_fires_on_the_minute_in_its_time_zone() {
    let mut h = harness_with_slots(1);
    // Start at a known instant: 2024-03-30 23:59:30 UTC.
    h.now.unix = 1_711_843_170.0;
    let out = schedule(&mut h, "nohaste", "-1", "* * * * *");
    assert!(fired(&out).is_empty());
    let runs = run_for(&mut h, 29.0, 1.0);
    assert!(runs.is_empty());
    let runs = run_for(&mut h, 2.0, 1.0);
    assert_eq!(runs.len(), 1, "fires at 00:00:00");
    assert!(runs[0].1.contains("fired:1711843200"), "{:?}", runs[0]);
    // A daily 02:30 in Paris across the spring-forward night fires at 03:00 CEST.
    let mut h = harness_with_slots(1);
    h.now.unix = 1_711_843_170.0;
    let other =
        Schedule { payload: PAYLOAD.replace("[1, 2]", "[3]"), ..order("nohaste,tz:Europe/Paris", "-1", "30 2 * * *") };
    h.recv(SocketKind::Frontend, "c", Command::Schedule(other));
    let s = admin_json(&mut h, AdminCommand::Schedules);
    assert_eq!(s["schedules"][0]["tz"], "Europe/Paris");
    assert_eq!(s["schedules"][0]["next_run"], 1_711_846_800.0);
}

#[test]
fn bad_schedules_are_refused_with_a_reason() {
    let mut h = Harness::new();
    for (o, why) in [
        (order("", "-1", "61 * * * *"), "cron"),
        (order("", "-1", ""), "neither"),
        (order("tz:Mars/Base", "-1", "* * * * *"), "time zone"),
        (Schedule { payload: "nope".into(), ..order("", "5", "") }, "payload"),
    ] {
        let out = h.recv_id(SocketKind::Frontend, "c", Message::with_msgid("bad", Command::Schedule(o)));
        let e = result_to(&out, "bad").expect("a refusal").error.unwrap();
        assert!(e.message.contains(why), "{}", e.message);
    }
    assert_eq!(h.r.schedule_count(), 0);
    assert_eq!(h.r.errors()["refused_schedule"], 4);
}

#[test]
fn a_delayed_job_is_receipted_at_once_and_runs_when_due() {
    let mut h = harness_with_slots(1);
    let out = h.request("c", "later", "default", "reply-requested,delay:30");
    assert!(out.iter().any(|a| is_receipt(a, "later")), "receipt now");
    assert!(dispatched_to(&out).is_empty(), "not run yet although a slot is free");
    assert!(matches!(h.journal.last(), Some(emq_journal::Record::Delayed { .. })));
    let status: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json("later", true)).unwrap();
    assert_eq!(status["state"], "delayed");
    let d = admin_json(&mut h, AdminCommand::Delayed { limit: 0 });
    assert_eq!(d["total"], 1);
    assert_eq!(d["delayed"][0]["msgid"], "later");
    // A plain job meanwhile runs at once.
    assert_eq!(dispatched_to(&h.request("c", "now", "default", "")).len(), 1);
    h.done("jm", "now", "{}");
    h.ready("jm");
    h.advance(29.0);
    h.recv(SocketKind::Backend, "jm", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
    assert!(dispatched_to(&h.tick()).is_empty());
    assert_eq!(h.r.next_tick().saturating_duration_since(h.now.mono), Duration::from_secs(1), "sleeps until due");
    h.advance(1.0);
    assert_eq!(dispatched_to(&h.tick()), vec![("jm".to_string(), "later".to_string())]);
    assert_eq!(h.r.delayed_count(), 0);
    // eta in the past: at once.
    let past = format!("eta:{}", h.now.unix - 5.0);
    h.done("jm", "later", "{}");
    h.ready("jm");
    assert_eq!(dispatched_to(&h.request("c", "late", "default", &past)).len(), 1);
    // A msgid that is waiting for its time is live: sent again, it is
    // receipted again (its sender) or refused (anyone else), never doubled.
    h.request("c", "d2", "default", "eta:99999999999");
    let out = h.request("c", "d2", "default", "");
    assert!(out.iter().any(|a| is_receipt(a, "d2")) && result_to(&out, "d2").is_none());
    let out = h.request("c2", "d2", "default", "");
    assert!(result_to(&out, "d2").unwrap().error.is_some(), "another client's msgid refused");
    assert_eq!(h.r.delayed_count(), 1);
}

#[test]
fn delayed_jobs_are_bounded_in_bytes() {
    let mut c = cfg();
    c.delayed_max_bytes = 1000;
    let now = Now::real();
    let mut h = Harness::with(RouterState::new(c, now), now);
    let mut refused = 0;
    for i in 0..20 {
        let out = h.request("c", &format!("d{i}"), "default", "delay:60");
        refused += usize::from(result_to(&out, &format!("d{i}")).is_some_and(|r| r.error.is_some()));
    }
    assert!(refused > 0 && refused < 20, "{refused}");
    assert!(h.r.timers.delayed_bytes <= 1000 + 200);
}

/// Restart with the schedule's next run `missed` seconds in the past.
fn restart_after(h: &Harness, down_secs: f64, misfire: emq_protocol::Misfire) -> Harness {
    let mut c = cfg();
    c.misfire = misfire;
    let now = h.now.after(Duration::from_secs_f64(down_secs));
    let mut r = Harness::with(RouterState::new(c, now), now);
    for rec in h.journal.iter().cloned() {
        r.r.restore(rec);
    }
    r.r.finish_restore(r.now);
    r.inform_ours("jm");
    for _ in 0..20 {
        r.ready("jm");
    }
    r
}

#[test]
fn schedules_and_delayed_jobs_survive_a_restart_with_the_misfire_policy() {
    use emq_protocol::Misfire;
    let mut h = harness_with_slots(1);
    schedule(&mut h, "nohaste", "10", "");
    h.request("c", "later", "default", "delay:100");
    // The router dies at t=0 and is back 35 s later: runs due at 10, 20, 30 were missed.
    for (policy, want) in [(Misfire::Skip, 0), (Misfire::Once, 1), (Misfire::All, 3)] {
        let mut r = restart_after(&h, 35.0, policy);
        assert_eq!(r.r.schedule_count(), 1, "{policy:?}");
        assert_eq!(r.r.delayed_count(), 1, "{policy:?}");
        let out = r.tick();
        assert_eq!(fired(&out).len(), want, "{policy:?}");
        // The next run keeps the schedule's phase: at t=40.
        r.advance(4.5);
        assert!(fired(&r.tick()).is_empty());
        r.advance(0.5);
        assert_eq!(fired(&r.tick()).len(), 1, "{policy:?}");
        // The delayed job runs at t=100, not before.
        r.advance(59.0);
        r.recv(SocketKind::Backend, "jm", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
        assert!(!dispatched_to(&r.tick()).iter().any(|(_, m)| m == "later"));
        // (a hair past: the due time went through unix seconds and back)
        r.advance(1.001);
        assert!(dispatched_to(&r.tick()).iter().any(|(_, m)| m == "later"), "{policy:?}");
    }
    // A per-schedule header overrides the router's policy.
    let mut h = harness_with_slots(1);
    schedule(&mut h, "nohaste,misfire:all", "10", "");
    let mut r = restart_after(&h, 35.0, Misfire::Skip);
    assert_eq!(fired(&r.tick()).len(), 3);
}

#[test]
fn a_checkpoint_keeps_schedules_delayed_jobs_and_run_counts() {
    let mut h = harness_with_slots(1);
    let out = schedule(&mut h, "run_count:3", "10", "");
    let (m, _) = fired(&out).remove(0);
    h.done("jm", &m, "{}");
    h.ready("jm");
    h.request("c", "later", "default", "delay:100");
    let records = h.r.checkpoint_records(h.now);
    let mut r = Harness::new();
    r.now = h.now;
    for rec in records {
        r.r.restore(rec);
    }
    let summary = r.r.finish_restore(r.now);
    assert_eq!((summary.schedules, summary.delayed), (1, 1), "{summary:?}");
    let s = admin_json(&mut r, AdminCommand::Schedules);
    assert_eq!((s["schedules"][0]["runs"].as_u64(), s["schedules"][0]["runs_left"].as_u64()), (Some(1), Some(2)));
}

#[test]
fn an_external_scheduler_gets_the_orders_and_the_router_fires_nothing() {
    let mut c = cfg();
    c.allowed_schedulers = vec!["*".into()];
    c.scheduler_external = true;
    let now = Now::real();
    let mut h = Harness::with(RouterState::new(c, now), now);
    let inform = Command::Inform(Inform { queues: QueueSpec::default(), kind: "scheduler".into(), features: None });
    h.recv(SocketKind::Frontend, "sched", inform.clone());
    let out = schedule(&mut h, "", "1", "");
    assert_eq!(sends(&out), vec![(SocketKind::Frontend, "sched".into(), "SCHEDULE".into())]);
    assert_eq!(h.r.schedule_count(), 0);
    // Internal (the default): a scheduler's INFORM is ignored, so nothing fires twice.
    let mut h = Harness::new();
    assert!(h.recv(SocketKind::Frontend, "sched", inform).is_empty());
    assert_eq!(h.r.errors()["scheduler_refused"], 1);
}

#[test]
fn many_timers_cost_nothing_until_due() {
    let mut h = harness_with_slots(1);
    for i in 0..20_000 {
        h.request("c", &format!("d{i}"), "default", &format!("delay:{}", 1000 + i));
    }
    for i in 0..1000 {
        let o = Schedule { payload: PAYLOAD.replace("[1, 2]", &format!("[{i}]")), ..order("nohaste", "3600", "") };
        h.recv(SocketKind::Frontend, "c", Command::Schedule(o));
    }
    assert_eq!((h.r.delayed_count(), h.r.schedule_count()), (20_000, 1000));
    // Ticks before anything is due release nothing.
    for _ in 0..100 {
        h.advance(1.0);
        assert!(dispatched_to(&h.tick()).is_empty());
    }
    assert_eq!(h.r.timers.by_due.len(), 21_000);
    // The poll loop sleeps until the first is due (d0 at +1000 s), capped by the tick period.
    assert!(h.r.next_tick() <= h.now.mono + Duration::from_secs(1));
}

/// `emq-cli schedules` shows 12 characters of an id: that (any unique
/// prefix of at least 4) works for unschedule and cancel, as git takes
/// commit ids; too short or ambiguous is a clear refusal.
#[test]
fn a_schedule_is_named_by_a_unique_prefix_of_its_id() {
    let mut h = harness_with_slots(1);
    schedule(&mut h, "nohaste", "5", "");
    let remove = |h: &mut Harness, id: &str| admin_json(h, AdminCommand::RemoveSchedule { schedule_id: id.into() });
    let v = remove(&mut h, &ID[..3]);
    assert!(v["error"].as_str().unwrap().contains("at least 4"), "{v}");
    assert_eq!(h.r.schedule_count(), 1);
    let v = remove(&mut h, "ffff");
    assert_eq!(v["error"], "no schedule ffff");
    let v = remove(&mut h, &ID[..12]);
    assert_eq!(v["removed"], ID, "{v}");
    assert_eq!(h.r.schedule_count(), 0);
    // CANCEL takes the short id too.
    schedule(&mut h, "nohaste", "5", "");
    let v = admin_json(&mut h, AdminCommand::Cancel { job_msgid: ID[..12].into() });
    assert_eq!(v["was"], "schedule", "{v}");
    assert_eq!(h.r.schedule_count(), 0);
}

/// A scheduled run's record shows its headers (it showed `null`).
#[test]
fn a_scheduled_run_shows_its_headers() {
    let mut h = harness_with_slots(1);
    schedule(&mut h, "nohaste", "5", "");
    let runs = run_for(&mut h, 6.0, 0.5);
    let (msgid, _) = runs.first().expect("a run").clone();
    let st = admin_json(&mut h, AdminCommand::JobStatus { job_msgid: msgid, owner_token: None });
    let headers = st["headers"].as_str().unwrap_or_else(|| panic!("headers: {st}"));
    assert!(headers.contains(&format!("schedule:{ID}")), "{headers}");
}
