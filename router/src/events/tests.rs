//! The deriver, the window and the event log alone (no sockets).

use super::store::{window_for_tests, Filter, Item};
use super::*;
use emq_journal::{AcceptedJob, AttemptFailure};
use std::time::Duration;

fn accepted(msgid: &str, owner: Option<&str>) -> Record {
    Record::Accepted {
        job: AcceptedJob {
            msgid: msgid.into(),
            client: b"c".to_vec(),
            queue: "q".into(),
            requested_queue: None,
            headers: owner.map(|o| format!("guarantee,owner:{o}")).unwrap_or_default(),
            payload: r#"["run", {"path": "pkg.mod", "callable": "add", "args": [1, 2]}]"#.into(),
            received: 100.0,
        },
        attempts: 0,
    }
}

fn dispatched(msgid: &str, attempt: u32) -> Record {
    Record::Dispatched { msgid: msgid.into(), job_manager: b"jm1".to_vec(), attempt, at: 101.0 }
}

fn done(msgid: &str) -> Record {
    Record::Finished {
        msgid: msgid.into(),
        state: FinalState::Done,
        at: 102.0,
        result: r#"{"value": 3}"#.into(),
        failure: None,
    }
}

/// A job's life, as the router journals it.
fn life(msgid: &str) -> Vec<Record> {
    vec![
        accepted(msgid, Some("tok")),
        dispatched(msgid, 1),
        Record::Retrying {
            msgid: msgid.into(),
            failure: AttemptFailure { attempt: 1, kind: "ValueError".into(), message: "no".into(), at: 101.5 },
            due: 103.0,
            result: String::new(),
        },
        Record::Event(r#"{"t":"progress","job":"m1","done":5,"total":10,"at":101.7}"#.into()),
        dispatched(msgid, 2),
        done(msgid),
    ]
}

fn derive(records: &[Record]) -> Vec<StoredEvent> {
    let mut d = Deriver::default();
    let mut out = Vec::new();
    for r in records {
        d.on_record(r, &mut out);
    }
    out.iter().map(NewEvent::render).collect()
}

#[test]
fn a_jobs_records_become_numbered_events_the_same_each_time() {
    let events = derive(&life("m1"));
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["accepted", "started", "retrying", "progress", "started", "succeeded"]);
    let offsets: Vec<u64> = events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6]);
    let last: serde_json::Value = serde_json::from_str(&events[5].line).unwrap();
    assert_eq!(last["result"], 3);
    assert_eq!(last["callable"], "pkg.mod.add");
    assert_eq!(last["queue"], "q");
    assert_eq!(events[5].owner.as_deref(), Some("tok"), "the owner is kept for filtering, never shown");
    assert!(!events[5].line.contains("tok"));
    let progress: serde_json::Value = serde_json::from_str(&events[3].line).unwrap();
    assert_eq!((progress["done"].as_f64(), progress["total"].as_f64()), (Some(5.0), Some(10.0)));
    // Replaying the same records gives the same events, byte for byte.
    let again = derive(&life("m1"));
    assert_eq!(
        events.iter().map(|e| e.line.clone()).collect::<Vec<_>>(),
        again.iter().map(|e| e.line.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn a_checkpoint_gives_no_events_but_keeps_the_cursor_and_the_names() {
    let records = vec![
        Record::CheckpointBegin { id: 1 },
        accepted("m1", None),
        Record::Event(r#"{"t":"cursor","next":500}"#.into()),
        Record::CheckpointEnd { id: 1 },
        done("m1"),
    ];
    let events = derive(&records);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].offset, 500);
    assert_eq!(events[0].queue.as_deref(), Some("q"), "the checkpoint's Accepted named the job");
    // A cursor outside a checkpoint only moves forward.
    let mut d = Deriver::default();
    d.advance_to(10);
    d.advance_to(4);
    assert_eq!(d.next_offset(), 10);
}

#[test]
fn large_results_are_left_out_of_the_event() {
    let mut r = done("m1");
    if let Record::Finished { result, .. } = &mut r {
        *result = format!(r#"{{"value": "{}"}}"#, "x".repeat(EVENT_RESULT_BYTES));
    }
    let e = derive(&[accepted("m1", None), r]);
    let v: serde_json::Value = serde_json::from_str(&e[1].line).unwrap();
    assert_eq!(v["result_truncated"], true);
    assert!(v.get("result").is_none());
}

fn stored(offset: u64, kind: &'static str, at: f64) -> StoredEvent {
    StoredEvent {
        offset,
        at,
        kind,
        job: Some(format!("j{offset}").into()),
        queue: Some(Arc::from("q")),
        owner: None,
        line: Arc::from(format!(r#"{{"offset":{offset},"type":"{kind}"}}"#)),
    }
}

#[test]
fn readers_are_told_of_gaps_pruned_or_never_held() {
    let w = window_for_tests(Retention { bytes: 64 << 10, max_age: None });
    for o in 1..=5 {
        w.push_for_tests(stored(o, "accepted", 1.0), 2.0);
    }
    // A hole (a standby's window after a failover): 6..=9 never held.
    for o in 10..=12 {
        w.push_for_tests(stored(o, "succeeded", 1.0), 2.0);
    }
    let page = w.read(3, 100, &Filter::default(), Duration::ZERO);
    let offsets: Vec<u64> = page.items.iter().map(Item::offset).collect();
    assert_eq!(offsets, [4, 5, 9, 10, 11, 12]);
    assert_eq!(page.items[2], Item::Gap { from: 6, to: 9 });
    assert_eq!(page.next, 12);
    // Filters skip events, never gaps.
    let only = Filter { types: Some(vec!["succeeded".into()]), ..Default::default() };
    let page = w.read(0, 100, &only, Duration::ZERO);
    assert_eq!(page.items.iter().map(Item::offset).collect::<Vec<_>>(), [9, 10, 11, 12]);
    // Pruned by age: the oldest go, and a reader from before is told.
    let w = window_for_tests(Retention { bytes: 64 << 10, max_age: Some(60.0) });
    w.push_for_tests(stored(1, "accepted", 1000.0), 1000.0);
    w.push_for_tests(stored(2, "accepted", 1100.0), 1100.0);
    let page = w.read(0, 100, &Filter::default(), Duration::ZERO);
    assert_eq!(page.items[0], Item::Gap { from: 1, to: 1 });
    assert_eq!(page.items[1].offset(), 2);
    // Nothing new: an empty page at once (wait 0), `next` unchanged.
    let page = w.read(2, 100, &Filter::default(), Duration::ZERO);
    assert!(page.items.is_empty());
    assert_eq!(page.next, 2);
}

#[test]
fn retention_parses_sizes_and_ages_and_refuses_nonsense() {
    assert_eq!("64MiB 7d".parse::<Retention>(), Ok(Retention { bytes: 64 << 20, max_age: Some(604800.0) }));
    assert_eq!("1GB".parse::<Retention>().map(|r| (r.bytes, r.max_age)), Ok((1_000_000_000, None)));
    assert_eq!("12h".parse::<Retention>().map(|r| r.bytes), Ok(64 << 20), "a size always bounds it");
    for bad in ["", "7", "7x", "-1d", "0MiB", "1B", "1s", "100GiB", "NaNd"] {
        assert!(bad.parse::<Retention>().is_err(), "{bad}");
    }
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("emq-events-{}", emq_protocol::new_msgid()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Everything `after` offset 0 in the window.
fn all(w: &EventWindow) -> Vec<Item> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = w.read(after, 10_000, &Filter::default(), Duration::ZERO);
        if page.items.is_empty() && page.next == after {
            return out;
        }
        after = page.next;
        out.extend(page.items);
    }
}

/// A crash at each point of a run: the journal holds the records up to
/// that point (all durable), the window's files hold what was published
/// before it (or less: they are not synced per event). After a restart
/// the window has every event exactly once, in order, no offset reused.
#[test]
fn every_crash_point_keeps_each_event_once_with_its_offset() {
    let mut journal: Vec<Record> = Vec::new();
    for i in 0..6 {
        journal.extend(life(&format!("m{i}")));
    }
    let total = derive(&journal).len() as u64;
    for cut in [0, 1, 5, 13, 20, journal.len()] {
        for files_keep in [false, true] {
            let dir = temp_dir();
            // First run: records 0..cut journaled and published.
            {
                let mut log = EventLog::open(&dir, NO_AGE).unwrap();
                for (n, r) in journal[..cut].iter().enumerate() {
                    log.on_live(r, n as u64 + 1);
                }
                log.release(cut as u64);
                if files_keep {
                    log.close();
                } else {
                    // The crash took the files' tail: the writer dies unsynced;
                    // simulate by deleting what it wrote.
                    log.close();
                    for f in std::fs::read_dir(&dir).unwrap() {
                        std::fs::remove_file(f.unwrap().path()).unwrap();
                    }
                }
            }
            // Restart: replay the journal, then go on with the rest.
            let mut log = EventLog::open(&dir, NO_AGE).unwrap();
            for r in &journal[..cut] {
                log.on_replay(r);
            }
            let cursor = log.finish_replay();
            log.on_live(&cursor, 1);
            for r in &journal[cut..] {
                log.on_live(r, 1);
            }
            log.release(1);
            log.writer_sync_for_tests();
            let items = all(&log.window());
            let offsets: Vec<u64> = items.iter().map(Item::offset).collect();
            assert_eq!(offsets, (1..=total).collect::<Vec<_>>(), "cut {cut}, files kept {files_keep}");
            log.close();
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// A checkpoint forgets the records before it: the events not yet on disk
/// (still waiting for their batch) are kept in it, and come back at a
/// restart even when the files lost them.
#[test]
fn a_checkpoint_keeps_the_events_its_records_took_with_them() {
    let dir = temp_dir();
    let mut checkpoint = Vec::new();
    {
        let mut log = EventLog::open(&dir, NO_AGE).unwrap();
        for r in life("m1") {
            log.on_live(&r, 1);
        }
        // Batch 1 is not durable yet when the checkpoint is written.
        checkpoint.push(Record::CheckpointBegin { id: 1 });
        checkpoint.extend(log.checkpoint_records());
        checkpoint.push(Record::CheckpointEnd { id: 1 });
        assert_eq!(log.pending(), 6);
        // The crash: nothing published, nothing on disk.
    }
    let mut log = EventLog::open(&dir, NO_AGE).unwrap();
    for r in &checkpoint {
        log.on_replay(r);
    }
    let cursor = log.finish_replay();
    log.on_live(&cursor, 1);
    log.on_live(&done("m2"), 1);
    log.release(1);
    log.writer_sync_for_tests();
    let offsets: Vec<u64> = all(&log.window()).iter().map(Item::offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6, 7]);
    log.close();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The test records are from 1970: no age limit here.
const NO_AGE: Retention = Retention { bytes: 64 << 20, max_age: None };

#[test]
fn a_requeued_dead_letter_keeps_its_names_and_its_owner() {
    let dead = Record::Finished {
        msgid: "m1".into(),
        state: FinalState::Dead,
        at: 102.0,
        result: String::new(),
        failure: Some(AttemptFailure { attempt: 3, kind: "E".into(), message: "no".into(), at: 102.0 }),
    };
    let events =
        derive(&[accepted("m1", Some("tok")), dead, Record::Requeued { msgid: "m1".into(), attempts: 0 }, done("m1")]);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["accepted", "dead", "requeued", "succeeded"]);
    assert!(events.iter().all(|e| e.owner.as_deref() == Some("tok") && e.queue.as_deref() == Some("q")));
    // A requeue has no time of its own: the last record's, the same on replay.
    assert_eq!(events[2].at, 102.0);
}

#[test]
fn field_by_field_rendering_is_byte_for_byte_the_maps() {
    // Every kind of job event, with and without its optional parts, odd
    // strings (quotes, control characters, non-ASCII), odd numbers (NaN,
    // huge, negative zero) and results (not JSON, no `value`, past the
    // budget): the fast rendering must be the map's, byte for byte —
    // offsets and bytes of events must not change across a replay.
    let long = "é".repeat(EVENT_RESULT_BYTES);
    let strings = ["plain", "quote \" and \\ backslash", "ctl \u{1}\n\t", "ünïcødé ☃", ""];
    let results = [
        r#"{"value": 5}"#.to_string(),
        r#"{"value": {"b": 1, "a": [1, 2.5, null]}}"#.to_string(),
        r#"{"no_value": true}"#.to_string(),
        "not json".to_string(),
        format!("{{\"value\": \"{}\"}}", "x".repeat(EVENT_RESULT_BYTES + 1)),
        r#"[1, 2]"#.to_string(),
    ];
    let mut details = vec![
        Detail::Accepted,
        Detail::Started { attempt: 1, job_manager: "jm-1".into() },
        Detail::Requeued { attempts: 3 },
    ];
    for s in strings {
        details.push(Detail::Retrying { attempt: 2, kind: s.into(), message: s.into(), due: 1.5e9 + 0.25 });
        details.push(Detail::Started { attempt: u32::MAX, job_manager: s.into() });
    }
    details.push(Detail::Retrying { attempt: 2, kind: "E".into(), message: long.clone(), due: f64::NAN });
    for state in [
        FinalState::Done,
        FinalState::Failed,
        FinalState::Lost,
        FinalState::Refused,
        FinalState::Dead,
        FinalState::Cancelled,
    ] {
        for r in &results {
            details.push(Detail::Finished { state, result: r.clone(), failure: None });
            details.push(Detail::Finished {
                state,
                result: r.clone(),
                failure: Some(("ValueError".into(), "bad \"x\"\n".into())),
            });
        }
        details.push(Detail::Finished { state, result: String::new(), failure: Some(("K".into(), long.clone())) });
    }
    let mut checked = 0;
    for (i, detail) in details.into_iter().enumerate() {
        for (job, queue, callable) in
            [(Some("job-1"), Some("default"), Some("pkg.mod.f")), (None, None, None), (Some("j\"2"), None, Some("ünï"))]
        {
            for at in [1_733_212_345.123_456, 0.0, -0.0, f64::NAN, 1e300, 1.0 / 3.0] {
                let e = NewEvent {
                    offset: i as u64 * 7 + 1,
                    kind: "succeeded",
                    job: job.map(Into::into),
                    queue: queue.map(Into::into),
                    callable: callable.map(Into::into),
                    owner: None,
                    at,
                    detail: detail.clone(),
                };
                assert_eq!(e.render_fields(), e.render_via_map(), "{e:?}");
                assert_eq!(&*e.render().line, e.render_via_map().as_str());
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}
