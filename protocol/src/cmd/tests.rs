//! Codec round trips for every command and never-panic decoding.

use super::*;
use crate::{DecodeErrorKind, Message, QueueSpec};
use proptest::prelude::*;

fn round_trip(command: Command) {
    let m = Message::with_msgid("m-1", command);
    let frames = m.to_frames();
    assert_eq!(Message::from_frames(&frames).unwrap(), m, "frames {frames:?}");
}

#[test]
fn every_command_round_trips() {
    round_trip(Command::Batch(Batch {
        ready: 3,
        replies: vec![("{}".into(), "m1".into()), ("{\"value\": 1}".into(), "m2".into())],
    }));
    round_trip(Command::Batch(Batch { ready: 1, replies: vec![] }));
    round_trip(Command::Replies(Replies {
        items: vec![("".into(), "m1".into()), ("{\"value\": 1}".into(), "m1".into()), ("".into(), "m2".into())],
    }));
    round_trip(Command::Requests(Requests {
        jobs: vec![
            ("m1".into(), Request { queue: "q".into(), headers: "".into(), payload: "[]".into() }),
            ("m2".into(), Request { queue: "default".into(), headers: "guarantee".into(), payload: "x".into() }),
        ],
    }));
    round_trip(Command::Inform(Inform { queues: QueueSpec::default_queues(), kind: "worker".into(), features: None }));
    round_trip(Command::Inform(Inform { queues: QueueSpec::default(), kind: "scheduler".into(), features: None }));
    round_trip(Command::Inform(Inform {
        queues: QueueSpec::default_queues(),
        kind: "worker".into(),
        features: Some("reports-all".into()),
    }));
    round_trip(Command::Ack(Ack { acked_msgid: "x".into() }));
    round_trip(Command::Ready);
    round_trip(Command::Request(Request {
        queue: "default".into(),
        headers: "reply-requested,timeout:5".into(),
        payload: r#"["run", {"path": "a", "callable": "b"}]"#.into(),
    }));
    round_trip(Command::Reply(Reply::receipt("orig")));
    round_trip(Command::Reply(Reply::Result { reply_json: r#"{"value": 5}"#.into(), orig_msgid: "o".into() }));
    round_trip(Command::Heartbeat(Heartbeat { timestamp: "1700000000.123".into(), health: None }));
    round_trip(Command::Heartbeat(Heartbeat { timestamp: "1.0".into(), health: Some("{}".into()) }));
    round_trip(Command::Kbye);
    round_trip(Command::Disconnect);
    let s = Schedule {
        queue: "q".into(),
        headers: "".into(),
        interval_secs: "-1".into(),
        payload: "[]".into(),
        cron: "* * * * *".into(),
    };
    round_trip(Command::Schedule(s.clone()));
    round_trip(Command::Unschedule(s));
    round_trip(Command::Publish(Publish { topic: "t".into(), payload: "p".into() }));
    for a in [
        AdminCommand::Status,
        AdminCommand::RouterShowWorkers,
        AdminCommand::RouterShowSchedulers,
        AdminCommand::Hello,
        AdminCommand::JobStatus { job_msgid: "j".into(), owner_token: None },
        AdminCommand::JobStatus { job_msgid: "j".into(), owner_token: Some("t".into()) },
        AdminCommand::Authenticate { token: "secret".into() },
        AdminCommand::DeadLetters,
        AdminCommand::Requeue { job_msgid: "j".into() },
        AdminCommand::Schedules,
        AdminCommand::Cancel { job_msgid: "j".into() },
        AdminCommand::Purge { queue: "q".into() },
        AdminCommand::DeleteDead { job_msgid: "d".into() },
        AdminCommand::Pause { queue: "q".into() },
        AdminCommand::Resume { queue: "q".into() },
        AdminCommand::RemoveSchedule { schedule_id: "abc".into() },
        AdminCommand::Delayed { limit: 20 },
        AdminCommand::RotateToken,
    ] {
        round_trip(Command::Admin(a));
    }
    round_trip(Command::Unknown { name: "FROB".into(), body: vec!["a".into()] });
}

#[test]
fn captured_eventmq_frames_decode() {
    let frames: Vec<&[u8]> = vec![
        b"",
        b"eMQP/1.0",
        b"REQUEST",
        b"3cd6",
        b"default",
        b"reply-requested,guarantee,retry-count:2,timeout:5",
        br#"["run", {"path": "benchjobs", "callable": "add", "args": [2, 3]}]"#,
    ];
    let m = Message::from_frames(&frames).unwrap();
    let Command::Request(r) = &m.command else { panic!("not a request: {m:?}") };
    assert_eq!(r.headers().timeout_secs, Some(5));
    // Forwarding is byte-identical.
    let out = m.to_frames();
    assert_eq!(out.iter().map(|f| f.as_slice()).collect::<Vec<_>>(), frames);
}

#[test]
fn typed_errors() {
    let e = Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"READY"]).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::TooFewFrames { needed: 4, got: 3 });
    let e = Message::from_frames(&[b"" as &[u8], b"eMQP/0.9", b"READY", b"m"]).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::BadVersion(_)));
    assert_eq!(e.msgid.as_deref(), Some("m"));
    let e = Message::from_frames(&[b"x" as &[u8], b"eMQP/1.0", b"READY", b"m"]).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::MissingDelimiter);
    let e = Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"REQUEST", b"m", b"q"]).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::TooFewFrames { .. }));
    assert_eq!(e.command.as_deref(), Some("REQUEST"));
    let e = Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"READY", b"m", b"extra"]).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::TrailingFrames(1));
    let e = Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"INFORM", b"m", b"[[", b"worker"]).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::BadJson { field: "queues", .. }));
    let e = Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"ACK", b"m", b"\xff"]).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::NotUtf8(4));
    let e = Message::from_frames(&[b"" as &[u8], b"eMQP/1.0", b"\xff", b"m"]).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::NotUtf8(2));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..9)) {
        let _ = Message::from_frames(&frames);
    }

    #[test]
    fn random_bodies_after_valid_header_never_panic(
        name in prop_oneof![Just("INFORM".to_string()), Just("REQUEST".to_string()), Just("REPLY".to_string()),
                            Just("HEARTBEAT".to_string()), Just("ACK".to_string()), Just("SCHEDULE".to_string()),
                            Just("JOB_STATUS".to_string()), Just("READY".to_string()), "[A-Z_]{1,12}"],
        body in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..7)
    ) {
        let mut frames: Vec<Vec<u8>> = vec![vec![], b"eMQP/1.0".to_vec(), name.as_bytes().to_vec(), b"id".to_vec()];
        frames.extend(body);
        if let Ok(m) = Message::from_frames(&frames) {
            // Whatever decodes re-encodes to something that decodes the same.
            prop_assert_eq!(Message::from_frames(&m.to_frames()).unwrap(), m);
        }
    }
}

/// Schedule ids as EventMQ 0.3.13's `Scheduler.schedule_hash` computed them
/// (read off its Python for these payloads, as its client serialises them).
#[test]
fn schedule_id_matches_eventmq() {
    for (payload, want) in [
        (
            r#"["run", {"callable": "add", "path": "emqjobs", "args": [1, 2], "kwargs": {}, "class_args": [], "class_kwargs": {}}]"#,
            "e037b3207577f260ad3c1dd8f4dd7db1acfb562f",
        ),
        (
            r#"["run", {"callable": "add", "path": "emqjobs", "args": ["\u00e9", 3.5, 1e+16], "kwargs": {"b": [1, {"z": 1, "a": 2}]}, "class_args": [], "class_kwargs": {}}]"#,
            "5a3770eb035f459231db6359d1440597e9b38013",
        ),
        (
            r#"["run", {"callable": "add", "path": "emqjobs", "args": [], "kwargs": {}, "class_args": [], "class_kwargs": {}}]"#,
            "d4c7943019a2eac8582e01ddc0477f4147c513ec",
        ),
    ] {
        assert_eq!(crate::schedule_id_of_payload(payload).unwrap(), want);
    }
    assert!(crate::schedule_id_of_payload("not json").is_err());
    assert!(crate::schedule_id_of_payload(r#"{"a":1}"#).is_err());
}

#[test]
fn schedule_options_and_timing() {
    use crate::{Misfire, Schedule, ScheduleOptions, Timing};
    let o = ScheduleOptions::parse(
        "guarantee,nohaste,run_count:3,tz:Europe/Paris,no-overlap,misfire:all,delay:5,timeout:9",
    );
    assert!(o.nohaste && o.no_overlap);
    assert_eq!(o.run_count, Some(3));
    assert_eq!(o.tz.as_deref(), Some("Europe/Paris"));
    assert_eq!(o.misfire, Some(Misfire::All));
    assert_eq!(o.job_headers, "guarantee,timeout:9");
    assert_eq!(ScheduleOptions::parse("run_count:-1").run_count, None, "EventMQ's for ever");
    assert_eq!(ScheduleOptions::parse("misfire:never").misfire, None);
    let s = |interval: &str, cron: &str| Schedule {
        queue: "default".into(),
        headers: String::new(),
        interval_secs: interval.into(),
        payload: String::new(),
        cron: cron.into(),
    };
    assert_eq!(s("5", "").timing(), Ok(Timing::Interval(5)));
    assert_eq!(s("0", "").timing(), Ok(Timing::Interval(1)), "no spinning");
    assert_eq!(s("-1", "* * * * *").timing(), Ok(Timing::Cron("* * * * *".into())));
    assert!(s("-1", "").timing().is_err());
    assert!(s("1.5", "").timing().is_err());
    assert!(s("abc", "* * * * *").timing().is_err());
}

#[test]
fn inform_carries_labels_and_name() {
    let features = crate::placement_features(&["gpu".into(), "eu".into(), "bad label".into()], "B");
    let inform = Inform {
        queues: Default::default(),
        kind: "worker".into(),
        features: Some(format!("reports-all,{}", features.join(","))),
    };
    assert_eq!(inform.labels(), vec!["gpu", "eu"], "invalid labels are not said");
    assert_eq!(inform.name().as_deref(), Some("B"));
    let eventmq = Inform { queues: Default::default(), kind: "worker".into(), features: None };
    assert!(eventmq.labels().is_empty());
    assert_eq!(eventmq.name(), None);
}

/// A REPLIES item is exactly the REPLY it stands for, both ways; admin
/// answers (one frame of JSON) never go in one; an empty or unpaired
/// REPLIES is a decode error, not a panic or an empty batch.
#[test]
fn replies_items_stand_for_their_replies() {
    for reply in
        [Reply::receipt("m-7"), Reply::Result { reply_json: r#"{"value": 1}"#.into(), orig_msgid: "m-7".into() }]
    {
        let (json, orig) = Replies::item_of(reply.clone()).expect("batchable");
        assert_eq!(Replies::reply_of(json, orig), reply);
    }
    let admin = Reply::admin_answer(r#"{"state": "done"}"#);
    assert_eq!(Replies::item_of(admin.clone()), Err(admin));
    assert!(Replies::item_of(Reply::receipt("")).is_err(), "an empty receipt body would read as a receipt of nothing");
    let frames = |body: &[&str]| {
        let mut f: Vec<Vec<u8>> = vec![b"".to_vec(), b"eMQP/1.0".to_vec(), b"REPLIES".to_vec(), b"m".to_vec()];
        f.extend(body.iter().map(|b| b.as_bytes().to_vec()));
        f
    };
    assert!(Message::from_frames(&frames(&[])).is_err(), "no items");
    assert!(Message::from_frames(&frames(&["", "a", "{}"])).is_err(), "an unpaired frame");
    let too_many: Vec<&str> = std::iter::repeat_n(["", "a"], MAX_BATCH_REPLIES + 1).flatten().collect();
    assert!(Message::from_frames(&frames(&too_many)).is_err(), "past MAX_BATCH_REPLIES");
    let m = Message::from_frames(&frames(&["", "a", "{}", "b"])).expect("two items");
    assert_eq!(
        m.command,
        Command::Replies(Replies { items: vec![("".into(), "a".into()), ("{}".into(), "b".into())] })
    );
}

/// A client's REQUESTS stands for its jobs' REQUESTs, each under its own
/// msgid; a job without a msgid makes the whole message undecodable (as a
/// REQUEST with an empty msgid frame is), so nothing of it is taken.
#[test]
fn requests_split_into_their_requests_and_need_msgids() {
    let f = |jobs: &[&[u8]]| {
        let mut frames: Vec<&[u8]> = vec![b"", b"eMQP/1.0", b"REQUESTS", b"batch-1"];
        frames.extend_from_slice(jobs);
        Message::from_frames(&frames)
    };
    let m = f(&[b"a", b"q", b"h", b"[1]", b"b", b"default", b"", b"[2]"]).unwrap();
    let Command::Requests(rs) = m.command else { panic!("not REQUESTS: {:?}", m.command) };
    let split: Vec<Message> = rs.into_messages().collect();
    assert_eq!(
        split,
        vec![
            Message::with_msgid(
                "a",
                Command::Request(Request { queue: "q".into(), headers: "h".into(), payload: "[1]".into() })
            ),
            Message::with_msgid(
                "b",
                Command::Request(Request { queue: "default".into(), headers: "".into(), payload: "[2]".into() })
            ),
        ]
    );
    let e = f(&[b"a", b"q", b"h", b"[1]", b"", b"q", b"h", b"[2]"]).unwrap_err();
    assert!(e.to_string().contains("empty msgid"), "{e}");
    assert!(f(&[b"a", b"q", b"h"]).is_err(), "a job of three frames");
}
