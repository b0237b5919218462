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
