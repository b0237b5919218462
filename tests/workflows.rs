//! Workflows against the real binaries (issue 25): 1,000 chords of 10
//! members while the router is SIGKILLed twice and restarted on its
//! data_dir — every callback runs exactly once with every member's value,
//! no member is lost; a workflow sent again under its msgid after a
//! restart is one workflow; emq-send and emq-cli drive workflows too.
//!
//! Runs are counted from `testjobs.member` / `testjobs.chord_sum` lines in
//! a log file, not from what the router says.

mod common;
use common::*;
use emq_client::workflow::Canvas;
use emq_client::{Client, JobOutcome, Receipt};
use nix::sys::signal::Signal;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUTER_ENV: [(&str, &str); 2] = [("EMQ_HEARTBEAT_INTERVAL", "0.5"), ("EMQ_HEARTBEAT_TIMEOUT", "2")];
const JM_ENV: [(&str, &str); 2] = [("EMQ_HEARTBEAT_TIMEOUT", "1"), ("EMQ_HEARTBEAT_LIVENESS", "2")];

/// A chord of `members` jobs whose callback sums their values (member `k`
/// of chord `c` returns `k`); `guarantee`, so a member lost with a killed
/// router runs again rather than failing the chord.
fn chord(log: &Path, c: usize, members: usize) -> Canvas {
    let header: Vec<serde_json::Value> = (0..members)
        .map(|k| json!({"sig": {"fn": "testjobs.member", "args": [log, format!("c{c}m{k}"), k], "guarantee": true}}))
        .collect();
    let v = json!({"chord": header, "callback": {"sig": {"fn": "testjobs.chord_sum", "args": [log, format!("c{c}")],
                                                           "guarantee": true}}});
    Canvas::from_json(&v).unwrap()
}

/// How many times each tag was logged with `kind` (`member` / `callback`).
fn counts(log: &Path, kind: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for line in read_lines(log) {
        if let Some(tag) = line.strip_prefix(kind).and_then(|r| r.strip_prefix(' ')) {
            *m.entry(tag.to_owned()).or_insert(0) += 1;
        }
    }
    m
}

fn wait_callbacks(log: &Path, at_least: usize) {
    eventually(Duration::from_secs(300), || (counts(log, "callback").len() >= at_least).then_some(()));
}

#[test]
fn a_thousand_chords_through_two_router_kills_run_each_callback_once() {
    const CHORDS: usize = 1000;
    const MEMBERS: usize = 10;
    let (mut router, addrs) = start_router(&ROUTER_ENV);
    let _jm = start_jobmanager(&addrs.backend, "default", 2, &JM_ENV);
    wait_slots(&addrs.admin, 2);
    let log = std::env::temp_dir().join(format!("emq-chords-{}", uuid::Uuid::new_v4()));
    let mut client = Client::connect(&addrs.frontend).unwrap();
    let mut ids = Vec::new();
    let kill = |router: &mut ChildGuard, sent: usize| {
        router.signal(Signal::SIGKILL);
        router.wait_exit(Duration::from_secs(10)).expect("killed");
        println!("router killed with {} of {CHORDS} callbacks run, {sent} chords sent", counts(&log, "callback").len());
        *router = start_router_at(&addrs, &ROUTER_ENV).expect("router restarts");
    };
    let mut killed = 0;
    for c in 0..CHORDS {
        let id =
            client.submit_canvas_until(&chord(&log, c, MEMBERS), Instant::now() + Duration::from_secs(30)).unwrap();
        ids.push(id);
        if c % 100 == 99 {
            // Receipts in: the router has journaled these workflows.
            for id in &ids[c - 99..=c] {
                match client.wait_receipt(id, Instant::now() + Duration::from_secs(60)) {
                    Ok(Receipt::Accepted) => {}
                    other => panic!("workflow {id}: {other:?}"),
                }
            }
            // The first crash while chords are still being sent.
            if killed == 0 && counts(&log, "callback").len() >= 50 {
                kill(&mut router, ids.len());
                killed += 1;
            }
        }
    }
    // The second (or both) while they run.
    while killed < 2 {
        wait_callbacks(&log, if killed == 0 { CHORDS / 4 } else { CHORDS * 3 / 5 });
        kill(&mut router, ids.len());
        killed += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let expected: i64 = (0..MEMBERS as i64).sum();
    for (c, id) in ids.iter().enumerate() {
        match client.wait(id, deadline) {
            JobOutcome::Value(v) if v == json!(expected) => {}
            other => {
                println!("workflow {id}: {}", admin_job(&addrs, id));
                panic!("chord {c} ({id}): {other:?}");
            }
        }
    }
    let callbacks = counts(&log, "callback");
    let members = counts(&log, "member");
    assert_eq!(callbacks.len(), CHORDS, "every callback ran");
    let twice: Vec<_> = callbacks.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "callbacks run more than once: {twice:?}");
    assert_eq!(members.len(), CHORDS * MEMBERS, "no member lost");
    // Every node is dispatched once per attempt: a dispatch that was sent
    // is durable first, so a restart never sends it again.
    let reruns: Vec<_> = members.iter().filter(|(_, n)| **n > 1).collect();
    assert!(reruns.is_empty(), "members run more than once: {reruns:?}");
    println!("{CHORDS} chords of {MEMBERS}: every callback and every member ran once");
    let st = wait_for_status(&addrs.admin);
    assert_eq!((st["held"].as_u64(), st["workflows"].as_u64()), (Some(0), Some(0)), "nothing left waiting");
}

/// A WORKFLOW sent again under its msgid after a router restart (the
/// client did not see the receipt) is one workflow: receipt again, each
/// node runs once.
#[test]
fn a_workflow_sent_again_after_a_restart_is_one_workflow() {
    let (mut router, addrs) = start_router(&ROUTER_ENV);
    let log = std::env::temp_dir().join(format!("emq-wf-again-{}", uuid::Uuid::new_v4()));
    let graph = chord(&log, 0, 3).to_graph("tok").unwrap();
    let msg = emq_protocol::Message::with_msgid(
        "wf-once",
        emq_protocol::Command::Workflow(emq_protocol::Workflow { graph: graph.clone() }),
    );
    let frames: Vec<String> = msg.to_frames().into_iter().map(|f| String::from_utf8(f).unwrap()).collect();
    let refs: Vec<&str> = frames.iter().map(String::as_str).collect();
    let d = Dealer::connect(&addrs.frontend);
    d.send(&refs);
    let receipt = d.recv_skip_heartbeats(10_000).expect("receipt");
    assert_eq!(receipt.last().map(String::as_str), Some("wf-once"), "{receipt:?}");
    router.signal(Signal::SIGKILL);
    router.wait_exit(Duration::from_secs(10)).expect("killed");
    let _router = start_router_at(&addrs, &ROUTER_ENV).expect("router restarts");
    let d = Dealer::connect(&addrs.frontend);
    d.send(&refs);
    let again = d.recv_skip_heartbeats(10_000).expect("receipt again");
    assert_eq!(again.last().map(String::as_str), Some("wf-once"), "{again:?}");
    let _jm = start_jobmanager(&addrs.backend, "default", 2, &JM_ENV);
    // The result went to the first connection (gone): the record has it.
    let rec = eventually(Duration::from_secs(60), || {
        let r = admin_job(&addrs, "wf-once");
        (r["state"] == "done").then_some(r)
    });
    assert_eq!(rec["result"]["value"], json!(3), "{rec}");
    assert_eq!(rec["workflow"]["nodes"].as_array().map(Vec::len), Some(4), "{rec}");
    let members = counts(&log, "member");
    assert_eq!(members.len(), 3);
    assert!(members.values().all(|n| *n == 1), "{members:?}");
    assert_eq!(counts(&log, "callback").get("c0"), Some(&1));
}

/// `emq-send --workflow FILE --wait` prints the chain's result; `emq-cli
/// workflow ID` prints the graph with each node's state; `emq-send
/// --depends-on` waits for its dependency.
#[test]
fn emq_send_and_emq_cli_drive_workflows() {
    let (_router, addrs) = start_router(&ROUTER_ENV);
    let _jm = start_jobmanager(&addrs.backend, "default", 2, &JM_ENV);
    wait_slots(&addrs.admin, 2);
    let file = std::env::temp_dir().join(format!("emq-wf-{}.json", uuid::Uuid::new_v4()));
    let canvas = json!({"chain": [{"sig": {"fn": "testjobs.add", "args": [1, 2]}},
                                  {"group": [{"sig": {"fn": "testjobs.add", "args": [10]}},
                                             {"sig": {"fn": "testjobs.add", "args": [20]}}]},
                                  {"sig": {"fn": "testjobs.echo"}}]});
    std::fs::write(&file, canvas.to_string()).unwrap();
    let send = |args: &[&str]| {
        let out =
            Command::new(env!("CARGO_BIN_EXE_emq-send")).args(["--addr", &addrs.frontend]).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = send(&["--workflow", file.to_str().unwrap(), "--wait"]);
    assert_eq!(code, Some(0), "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // add(1,2)=3; the group gets 3 first: add(3,10)=13, add(3,20)=23; echo gets [13, 23].
    assert_eq!(v["value"]["args"], json!([[13, 23]]), "{v}");
    let (code, id, err) = send(&["--workflow", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let shown = eventually(Duration::from_secs(30), || {
        let (ok, text) = emq_cli_as_admin(&addrs, &["workflow", &id]);
        (ok && text.contains(" done ") && !text.contains("held")).then_some(text)
    });
    assert!(
        shown.contains(&format!("workflow {id}")) && shown.contains("after #1") && shown.contains("after #2,#3"),
        "{shown}"
    );
    // depends_on from the command line.
    let (code, first, _) = send(&["testjobs.sleep", "1"]);
    assert_eq!(code, Some(0));
    let (code, out, err) = send(&["--depends-on", &first, "--wait", "testjobs.add", "2", "2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["value"], json!(4), "{out}");
    let rec = admin_job(&addrs, &first);
    assert_eq!(rec["state"], "done", "the dependency finished first: {rec}");
}
