//! CANCEL, PURGE, PAUSE / RESUME on the fake clock.

use super::*;

fn cancel(h: &mut Harness, msgid: &str) -> serde_json::Value {
    admin_json(h, AdminCommand::Cancel { job_msgid: msgid.into() })
}

#[test]
fn cancel_removes_a_waiting_job_and_tells_its_client() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.request("c", "b1", "default", "reply-requested");
    h.request("c", "b2", "default", "");
    h.request("c", "d1", "default", "reply-requested,delay:60");
    let out = h.r.handle_vec(
        Event::Received {
            socket: SocketKind::Admin,
            peer: PeerId::from("cli"),
            message: Ok(Message::new(Command::Admin(AdminCommand::Cancel { job_msgid: "b1".into() }))),
            user: None,
        },
        h.now,
    );
    let e = result_to(&out, "b1").expect("the client hears").error.unwrap();
    assert_eq!(e.kind, emq_protocol::JobErrorKind::Cancelled);
    assert!(out.iter().any(|a| matches!(a, Action::Journal(emq_journal::Record::Finished { msgid, state: emq_journal::FinalState::Cancelled, .. }) if msgid == "b1")));
    assert_eq!(h.r.waiting("default"), 1);
    assert_eq!(cancel(&mut h, "d1")["was"], "delayed");
    assert_eq!(h.r.delayed_count(), 0);
    let st: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json("b1", true)).unwrap();
    assert_eq!(st["state"], "cancelled");
    assert!(cancel(&mut h, "b1")["error"].as_str().unwrap().contains("already ended"));
    assert!(cancel(&mut h, "nope")["error"].is_string());
    // b2 still runs.
    assert_eq!(dispatched_to(&h.ready("jm")), vec![("jm".to_string(), "b2".to_string())]);
}

#[test]
fn cancel_of_a_running_job_asks_its_job_manager_and_ends_cancelled() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    h.request("c", "r1", "default", "reply-requested,guarantee,retry-count:3");
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Cancel { job_msgid: "r1".into() }));
    assert!(out.iter().any(|a| matches!(a, Action::Send { socket: SocketKind::Backend, peer, message }
        if peer.to_string() == "jm" && matches!(&message.command, Command::Admin(AdminCommand::Cancel { job_msgid }) if job_msgid == "r1"))));
    // The job manager stops it and reports it cancelled: no retry, no dead letter.
    let reply = JobReply::failed(emq_protocol::JobErrorKind::Cancelled, "cancelled by an operator", "").to_json();
    let out = h.done("jm", "r1", &reply);
    let e = result_to(&out, "r1").unwrap().error.unwrap();
    assert_eq!(e.kind, emq_protocol::JobErrorKind::Cancelled);
    assert_eq!(h.r.retrying_count(), 0);
    assert!(h.r.outcomes.dead.is_empty());
    let st: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json("r1", true)).unwrap();
    assert_eq!(st["state"], "cancelled");
    // EventMQ's job manager cannot stop one job: refused with the reason.
    h.inform("evq", &[(10, "default")]);
    h.ready("evq");
    h.request("c", "r2", "default", "");
    assert!(cancel(&mut h, "r2")["error"].as_str().unwrap().contains("EventMQ"));
}

#[test]
fn purge_empties_a_queue_and_pause_holds_jobs_until_resume() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    for i in 0..3 {
        h.request("c", &format!("p{i}"), "default", "");
    }
    let v = admin_json(&mut h, AdminCommand::Purge { queue: "default".into() });
    assert_eq!(v["purged"], 3);
    assert_eq!(h.r.waiting("default"), 0);
    // Paused: accepted and kept, not handed out, even with a free slot.
    admin_json(&mut h, AdminCommand::Pause { queue: "default".into() });
    h.ready("jm");
    let out = h.request("c", "held", "default", "");
    assert!(out.iter().any(|a| is_receipt(a, "held")));
    assert!(dispatched_to(&out).is_empty());
    assert_eq!(admin_json(&mut h, AdminCommand::Status)["paused_queues"], serde_json::json!(["default"]));
    // Survives a restart (journaled).
    let mut r = Harness::new();
    for rec in h.journal.iter().cloned() {
        r.r.restore(rec);
    }
    r.r.finish_restore(r.now);
    assert_eq!(r.r.paused_queues(), vec!["default".to_string()]);
    assert_eq!(r.r.waiting("default"), 1);
    // Resume: the waiting job goes to the free slot at once.
    let out = h.recv(SocketKind::Admin, "cli", Command::Admin(AdminCommand::Resume { queue: "default".into() }));
    assert_eq!(dispatched_to(&out), vec![("jm".to_string(), "held".to_string())]);
}

#[test]
fn control_needs_the_admin_token_and_a_client_may_cancel_only_its_own() {
    let mut h = Harness::new();
    h.request("owner", "mine", "default", "reply-requested");
    for cmd in [
        AdminCommand::Cancel { job_msgid: "mine".into() },
        AdminCommand::Purge { queue: "default".into() },
        AdminCommand::Pause { queue: "default".into() },
    ] {
        let out = h.recv(SocketKind::Admin, "stranger", Command::Admin(cmd));
        let body = match &out[0] {
            Action::Send { message, .. } => match &message.command {
                Command::Reply(Reply::Single { body }) => body.clone(),
                _ => panic!(),
            },
            _ => panic!(),
        };
        assert!(body.contains("not authorized"), "{body}");
    }
    assert_eq!(h.r.waiting("default"), 1);
    let ask = |h: &mut Harness, peer: &str| {
        let out = h.recv(SocketKind::Frontend, peer, Command::Admin(AdminCommand::Cancel { job_msgid: "mine".into() }));
        out.iter()
            .find_map(|a| match a {
                Action::Send { peer: p, message, .. } if p.to_string() == peer => match &message.command {
                    Command::Reply(Reply::Single { body }) => Some(body.clone()),
                    _ => None,
                },
                _ => None,
            })
            .unwrap()
    };
    assert!(ask(&mut h, "other").contains("not sent by this connection"));
    assert!(ask(&mut h, "owner").contains("\"cancelled\""));
    assert_eq!(h.r.waiting("default"), 0);
}

#[test]
fn job_status_shows_headers_but_not_the_owner_token() {
    let mut h = Harness::new();
    h.request("c", "j", "default", "reply-requested,owner:s3cret,timeout:5");
    let st: serde_json::Value = serde_json::from_str(&h.r.outcomes.history.status_json("j", true)).unwrap();
    assert_eq!(st["headers"], "reply-requested,owner:(hidden),timeout:5");
}
