//! Slow is not dead: a job manager silent past heartbeat_timeout comes
//! back with late reports (fake clock).

use super::*;

fn named_health(name: &str, running: &[&str]) -> emq_protocol::PoolHealth {
    emq_protocol::PoolHealth {
        name: name.into(),
        in_flight: running
            .iter()
            .map(|m| emq_protocol::JobHealth { msgid: (*m).into(), ..Default::default() })
            .collect(),
        ..Default::default()
    }
}

fn results(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { socket: SocketKind::Frontend, message, .. } => match &message.command {
                Command::Reply(Reply::Result { orig_msgid, .. }) => Some(orig_msgid.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn late_reports_of_a_paused_job_manager_are_taken_and_nothing_runs_twice() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    heartbeat_with(&mut h, "jm", &named_health("w1", &[]));
    for _ in 0..4 {
        h.ready("jm");
    }
    for m in ["g1", "g2"] {
        h.request("c", m, "default", "reply-requested,guarantee");
    }
    for m in ["p1", "p2"] {
        h.request("c", m, "default", "reply-requested");
    }
    // Frozen for 6 s: suspected; guarantee jobs wait again, plain ones in doubt.
    h.advance(6.0);
    let out = h.tick();
    assert!(results(&out).is_empty(), "nobody is told 'lost' yet");
    assert_eq!(h.r.waiting("default"), 2);
    assert_eq!(h.r.in_doubt_count(), 2);
    // It wakes: the reports of the jobs that finished meanwhile arrive on its old connection.
    let out = h.done("jm", "g1", r#"{"value": 1}"#);
    assert_eq!(results(&out), vec!["g1"]);
    assert!(out.iter().any(|a| matches!(a, Action::Send { socket: SocketKind::Backend, message, .. } if message.command == Command::Disconnect)),
        "told to reconnect");
    assert_eq!(h.r.waiting("default"), 1, "g1 is not run again");
    assert_eq!(results(&h.done("jm", "p1", r#"{"value": 2}"#)), vec!["p1"]);
    // It reconnects under a new identity; its health says it still runs g2.
    h.inform_ours("jm-new");
    heartbeat_with(&mut h, "jm-new", &named_health("w1", &["g2"]));
    assert_eq!(h.r.waiting("default"), 0, "g2 is its again, not run twice");
    assert!(dispatched_to(&h.ready("jm-new")).is_empty());
    assert_eq!(results(&h.done("jm-new", "g2", r#"{"value": 3}"#)), vec!["g2"]);
    // p2's late report comes from the new identity (its resent reports).
    assert_eq!(results(&h.done("jm-new", "p2", r#"{"value": 4}"#)), vec!["p2"]);
    for (m, v) in [("g1", 1), ("g2", 3), ("p1", 2), ("p2", 4)] {
        let st: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json(m, true)).unwrap();
        assert_eq!((st["state"].as_str(), st["result"]["value"].as_i64()), (Some("done"), Some(v)), "{m}: {st}");
        assert_eq!(st["duplicate_runs"], 0);
    }
    // Reports sent again later change nothing and reach nobody.
    assert!(results(&h.done("jm-new", "g1", r#"{"value": 1}"#)).is_empty());
}

#[test]
fn a_job_that_ran_again_elsewhere_keeps_the_first_result_and_shows_the_duplicate() {
    let mut h = Harness::new();
    h.inform_ours("a");
    heartbeat_with(&mut h, "a", &named_health("a", &[]));
    h.ready("a");
    h.request("c", "g", "default", "reply-requested,guarantee");
    h.inform_ours("b");
    h.advance(6.0);
    h.recv(SocketKind::Backend, "b", Command::Heartbeat(Heartbeat { timestamp: "1".into(), health: None }));
    h.tick();
    // "a" is suspected; "g" runs again at "b".
    assert_eq!(dispatched_to(&h.ready("b")), vec![("b".to_string(), "g".to_string())]);
    // "a" comes back first with its result: the client gets it, once.
    assert_eq!(results(&h.done("a", "g", r#"{"value": "from a"}"#)), vec!["g"]);
    // "b" finishes too: a duplicate run, no second result.
    assert!(results(&h.done("b", "g", r#"{"value": "from b"}"#)).is_empty());
    let st: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json("g", true)).unwrap();
    assert_eq!(st["result"]["value"], "from a");
    assert_eq!(st["duplicate_runs"], 1, "{st}");
    assert_eq!(h.r.errors()["duplicate_runs"], 1);
    // "b" got its slot back and is not confused: the next job goes to it.
    h.ready("b");
    h.request("c", "next", "default", "");
    assert_eq!(h.r.in_flight().get("next").map(|j| j.job_manager.to_string()), Some("b".to_string()));
}

#[test]
fn a_stranger_cannot_pass_for_a_suspected_job_manager() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    heartbeat_with(&mut h, "jm", &named_health("w1", &[]));
    h.ready("jm");
    h.request("c", "g", "default", "reply-requested,guarantee");
    h.advance(6.0);
    h.tick();
    h.inform_ours("intruder");
    heartbeat_with(&mut h, "intruder", &named_health("other", &["g"]));
    assert_eq!(h.r.waiting("default"), 1, "not reclaimed by another name");
    assert!(results(&h.done("intruder", "g", r#"{"value": "forged"}"#)).is_empty());
}

/// Prefetch never makes a job wait while another job manager of its queue
/// has a free worker: a free slot that is only prefetch room behind a busy
/// worker comes after an idle worker elsewhere.
#[test]
fn an_idle_worker_elsewhere_comes_before_prefetch_room() {
    let one_worker = |name: &str| emq_protocol::PoolHealth {
        name: name.into(),
        workers: vec![emq_protocol::WorkerHealth::default()],
        ..Default::default()
    };
    let mut h = Harness::new();
    for jm in ["a", "b"] {
        h.inform_ours(jm);
        heartbeat_with(&mut h, jm, &one_worker(jm));
        for _ in 0..3 {
            h.ready(jm); // its worker plus two prefetch slots
        }
    }
    h.request("c", "j1", "default", "");
    h.request("c", "j2", "default", "");
    let at = |h: &Harness, m: &str| h.r.in_flight()[m].job_manager.to_string();
    let (first, second) = (at(&h, "j1"), at(&h, "j2"));
    assert_ne!(first, second, "one each");
    // The second one finishes: it is idle and the most recently used; the
    // first is busy and least recently used, with prefetch room left.
    h.done(&second, "j2", "{}");
    h.ready(&second);
    h.request("c", "j3", "default", "");
    assert_eq!(at(&h, "j3"), second, "the idle worker, not prefetch room behind a busy one");
    // Both busy now: prefetch room is used rather than buffering.
    h.request("c", "j4", "default", "");
    assert!(h.r.in_flight().contains_key("j4"));
}

/// A job manager of many queues stays in their free sets while busy; picks
/// skip it then, and take it again once it has a free slot.
#[test]
fn a_job_manager_of_many_queues_is_picked_right_through_full_and_free() {
    let mut h = Harness::new();
    let names: Vec<String> = (0..100).map(|i| format!("q{i}")).collect();
    let queues: Vec<(u32, &str)> = names.iter().map(|n| (10, n.as_str())).collect();
    h.inform("many", &queues);
    h.inform("few", &[(10, "q7")]);
    h.ready("many");
    assert_eq!(dispatched_to(&h.request("c", "a", "q5", "")), vec![("many".to_string(), "a".to_string())]);
    // "many" is full: q5 waits, q7 goes to "few".
    assert!(dispatched_to(&h.request("c", "b", "q5", "")).is_empty());
    h.ready("few");
    assert_eq!(dispatched_to(&h.request("c", "c", "q7", "")), vec![("few".to_string(), "c".to_string())]);
    // A free slot again: the waiting job goes, then new ones.
    assert_eq!(dispatched_to(&h.ready("many")), vec![("many".to_string(), "b".to_string())]);
    h.ready("many");
    assert_eq!(dispatched_to(&h.request("c", "d", "q99", "")), vec![("many".to_string(), "d".to_string())]);
    // Gone: out of every set.
    h.recv(SocketKind::Backend, "many", Command::Kbye);
    assert!(h.r.dispatch.queues.values().all(|q| q.free.iter().all(|(_, _, p)| p.to_string() != "many")));
}

/// Our job manager's BATCH: REPLYs in order, then READYs; asked for at
/// INFORM, granted at once in a heartbeat.
#[test]
fn a_batch_is_its_replies_then_its_readies() {
    let mut h = Harness::new();
    let inform = Inform {
        queues: QueueSpec::default_queues(),
        kind: "worker".into(),
        features: Some(format!("{},{}", emq_protocol::FEATURE_REPORTS_ALL, emq_protocol::FEATURE_BATCH)),
    };
    let out = h.recv(SocketKind::Backend, "jm", Command::Inform(inform));
    assert!(out.iter().any(|a| matches!(a, Action::Send { message, .. }
        if matches!(&message.command, Command::Heartbeat(hb) if hb.health.as_deref().is_some_and(|x| x.contains("\"batch\":true"))))));
    let batch = |ready: u32, replies: Vec<(&str, &str)>| {
        Command::Batch(emq_protocol::Batch {
            ready,
            replies: replies.into_iter().map(|(j, m)| (j.to_string(), m.to_string())).collect(),
        })
    };
    h.recv(SocketKind::Backend, "jm", batch(2, vec![]));
    h.request("c", "a", "default", "reply-requested");
    h.request("c", "b", "default", "reply-requested");
    h.request("c", "w", "default", "reply-requested");
    assert_eq!(h.r.waiting("default"), 1);
    // Both finish in one pass: both results, then the freed slots take "w".
    let out = h.recv(SocketKind::Backend, "jm", batch(2, vec![(r#"{"value": 1}"#, "a"), (r#"{"value": 2}"#, "b")]));
    assert_eq!(result_to(&out, "a").unwrap().value, serde_json::json!(1));
    assert_eq!(result_to(&out, "b").unwrap().value, serde_json::json!(2));
    assert_eq!(dispatched_to(&out), vec![("jm".to_string(), "w".to_string())]);
    assert_eq!(h.r.job_managers()[&PeerId::from("jm")].free_slots, 1);
    assert_eq!(h.r.job_managers()[&PeerId::from("jm")].reports_received, 2);
}

/// The router was silent to a job manager (a paused router, a cut
/// connection) while the router still lists it: the job manager reconnects
/// under a new identity before the router noticed anything. Its first
/// health names it: the earlier connection is retired without failing its
/// jobs, the jobs it still runs are its again, and their REPLYs through the
/// new identity are taken (not dropped as forged), once.
#[test]
fn a_job_manager_that_reconnects_while_still_listed_keeps_its_running_jobs() {
    let mut h = Harness::new();
    h.inform_ours("old");
    heartbeat_with(&mut h, "old", &named_health("vm:5620", &[]));
    for _ in 0..3 {
        h.ready("old");
    }
    for m in ["a", "b", "c"] {
        h.request("client", m, "default", "reply-requested");
    }
    assert_eq!(h.r.in_flight().len(), 3);
    // A stranger with another name claims nothing.
    h.inform_ours("stranger");
    heartbeat_with(&mut h, "stranger", &named_health("other:1", &["a"]));
    assert!(results(&h.done("stranger", "a", r#"{"value": "forged"}"#)).is_empty());
    assert_eq!(h.r.errors()["forged_reply"], 1);
    // The same job manager, new identity; "c" finished meanwhile and its
    // report comes among the resent ones.
    h.inform_ours("new");
    let out = heartbeat_with(&mut h, "new", &named_health("vm:5620", &["a", "b"]));
    assert!(results(&out).is_empty(), "nobody is told 'lost': {out:?}");
    assert!(!h.r.job_managers().contains_key(&PeerId::from("old")), "the earlier connection is retired");
    assert_eq!(h.r.in_flight().get("a").map(|j| j.job_manager.to_string()), Some("new".into()));
    assert_eq!(results(&h.done("new", "a", r#"{"value": 1}"#)), vec!["a"]);
    assert_eq!(results(&h.done("new", "c", r#"{"value": 3}"#)), vec!["c"]);
    // Long after every timeout, "b" is still running there: not lost.
    for _ in 0..40 {
        h.advance(1.0);
        heartbeat_with(&mut h, "new", &named_health("vm:5620", &["b"]));
        assert!(results(&h.tick()).is_empty());
    }
    assert_eq!(results(&h.done("new", "b", r#"{"value": 2}"#)), vec!["b"]);
    assert!(results(&h.done("new", "b", r#"{"value": 2}"#)).is_empty(), "once");
    assert_eq!(h.r.errors()["forged_reply"], 1, "no new forged reply");
    for m in ["a", "b", "c"] {
        let st: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json(m, true)).unwrap();
        assert_eq!(st["state"], "done", "{m}: {st}");
    }
}
