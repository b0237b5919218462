//! The clients: the Rust `Client` API, `emq-send` and `emq-cli`, against
//! our router and job manager.

mod common;
use common::*;
use emq_client::{Client, Job, JobOutcome, Options};
use serde_json::json;
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits in these tests end here at the latest (hang guards, not timings).
const HANG: i64 = 10_000;

/// Runs one of our CLIs against `addr`: (exit code, stdout, stderr), trimmed.
fn run_cli(bin: &str, addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(["--addr", addr]).args(args).current_dir(std::env::temp_dir()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn emq_send(frontend: &str, args: &[&str]) -> (i32, String, String) {
    run_cli(env!("CARGO_BIN_EXE_emq-send"), frontend, args)
}

/// `emq-cli` against the router at `a`, with its admin token.
fn emq_cli(a: &RouterAddrs, args: &[&str]) -> (i32, String, String) {
    let token = a.data_dir.join("admin.token");
    let mut all = vec!["--token-file", token.to_str().unwrap()];
    all.extend_from_slice(args);
    run_cli(env!("CARGO_BIN_EXE_emq-cli"), &a.admin, &all)
}

#[test]
fn emq_send_wait_prints_results_and_exit_codes() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let (code, out, err) = emq_send(&a.frontend, &["--wait", "benchjobs.add", "2", "3"]);
    assert_eq!((code, out.as_str()), (0, r#"{"value":5}"#), "{err}");
    // Args: JSON when valid, else strings; KEY=VALUE kwargs; class jobs.
    let (code, out, _) = emq_send(&a.frontend, &["--wait", "testjobs.echo", "2", "hello", "\"2\"", "k=[1]"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["value"], json!({"args": [2, "hello", "2"], "kwargs": {"k": [1]}}));
    let (code, out, _) = emq_send(&a.frontend, &["--wait", "--class-args", "[1]", "pkg.mod:Counter.bump", "4"]);
    assert_eq!((code, out.as_str()), (0, r#"{"value":5}"#));
    // A failing job: exit 1, the traceback in the JSON.
    let (code, out, _) = emq_send(&a.frontend, &["--wait", "--json", "testjobs.fail", "bad things"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["type"], "ValueError");
    assert!(v["error"]["traceback"].as_str().unwrap().contains("Traceback"), "{v}");
    // Without --json: for people, on stderr, the traceback as Python printed it.
    let (code, out, err) = emq_send(&a.frontend, &["--wait", "testjobs.fail", "bad things"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with("emq-send: job failed: ValueError: bad things\nTraceback (most recent call last):"),
        "{err}"
    );
    assert!(!err.contains("\\n") && err.lines().count() > 3, "real lines: {err}");
    // A job timeout is a failure too.
    let (code, out, _) = emq_send(&a.frontend, &["--wait", "--json", "--timeout", "1", "testjobs.sleep", "10"]);
    assert_eq!(code, 1);
    assert!(out.contains("\"timeout\""), "{out}");
    // Without --wait: the msgid, once the receipt is in.
    let (code, out, _) = emq_send(&a.frontend, &["benchjobs.add", "1", "1"]);
    assert_eq!(code, 0);
    assert_eq!(out.len(), 36, "a msgid: {out}");
    // Usage errors: exit 2.
    let (code, _, err) = emq_send(&a.frontend, &["nodots"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = emq_send(&a.frontend, &["--class-args", "{}", "a.b"]);
    assert_eq!(code, 2);
}

#[test]
fn emq_send_deadline_without_job_manager_exits_3_and_no_router_exits_2() {
    let (_r, a) = start_router(&[]);
    let (code, _, err) = emq_send(&a.frontend, &["--wait", "--deadline", "1", "benchjobs.add", "2", "3"]);
    assert_eq!(code, 3, "{err}");
    let nobody = tcp(free_port());
    // Nothing listens there: said at once, before anything is sent (exit 2).
    let (code, _, err) = emq_send(&nobody, &["--deadline", "1", "benchjobs.add", "2", "3"]);
    assert_eq!((code, err), (2, format!("emq-send: no router at {nobody}: connection refused")));
    let out = Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["--addr", &nobody, "--deadline", "0.5", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
}

#[test]
fn emq_send_count_reports_rate() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let (code, out, err) = emq_send(&a.frontend, &["--wait", "--count", "300", "--window", "50", "benchjobs.noop"]);
    assert_eq!(code, 0, "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["sent"].as_u64(), v["succeeded"].as_u64(), v["failed"].as_u64()), (Some(300), Some(300), Some(0)));
    assert!(v["jobs_per_sec"].as_f64().unwrap() > 0.0);
    println!("emq-send --count 300 --wait (debug build): {out}");
}

#[test]
fn one_client_many_concurrent_requests_each_get_their_own_result() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let mut client = Client::connect(&a.frontend).unwrap();
    let mut expected: HashMap<String, i64> = HashMap::new();
    for i in 0..1000i64 {
        let job = Job::new("benchjobs", "add", vec![i.into(), (i * 7).into()]);
        expected.insert(client.send_request("default", &job, &Options::default()).unwrap(), i * 8);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = 0;
    while !expected.is_empty() {
        let (id, outcome) = client.wait_any(deadline).expect("all 1000 results before the hang guard");
        let want = expected.remove(&id).unwrap_or_else(|| panic!("result for unknown or repeated msgid {id}"));
        assert_eq!(outcome, JobOutcome::Value(want.into()), "msgid {id}");
        got += 1;
    }
    assert_eq!(got, 1000);
}

/// Many clients sending at once, each a burst: the router groups a poll
/// pass's messages by client (ZeroMQ hands them over one per client in
/// turn). Each client must still get every receipt and every result once,
/// its receipts in the order it sent, each result with its own value.
#[test]
fn many_clients_sending_at_once_each_get_every_receipt_in_order_and_every_result_once() {
    const CLIENTS: usize = 60;
    const JOBS: usize = 50;
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let clients: Vec<Dealer> = (0..CLIENTS).map(|_| Dealer::connect(&a.frontend)).collect();
    // Every client's burst, one client after another, as fast as it goes.
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); CLIENTS];
    for (c, d) in clients.iter().enumerate() {
        for i in 0..JOBS {
            let msgid = uuid::Uuid::new_v4().to_string();
            let payload = json!(["run", {"path": "benchjobs", "callable": "add", "args": [i, c * 1000]}]);
            d.send(&["", "eMQP/1.0", "REQUEST", &msgid, "default", "reply-requested", &payload.to_string()]);
            sent[c].push(msgid);
        }
    }
    let mut receipts: Vec<Vec<String>> = vec![Vec::new(); CLIENTS];
    let mut results: Vec<HashMap<String, serde_json::Value>> = vec![HashMap::new(); CLIENTS];
    let end = Instant::now() + Duration::from_secs(180);
    let done = |r: &Vec<Vec<String>>, v: &Vec<HashMap<String, serde_json::Value>>| {
        r.iter().all(|x| x.len() >= JOBS) && v.iter().all(|x| x.len() >= JOBS)
    };
    while !done(&receipts, &results) {
        assert!(Instant::now() < end, "hang guard: receipts/results missing after 180 s");
        let mut items: Vec<zmq::PollItem> = clients.iter().map(|d| d.socket.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, 500).unwrap();
        let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        drop(items);
        for (c, d) in clients.iter().enumerate().filter(|(c, _)| ready[*c]) {
            while let Ok(f) = d.socket.recv_multipart(zmq::DONTWAIT) {
                let f: Vec<String> = f.into_iter().map(|b| String::from_utf8_lossy(&b).into_owned()).collect();
                match (f.get(2).map(String::as_str), f.len()) {
                    (Some("REPLY"), 5) => receipts[c].push(f[4].clone()),
                    (Some("REPLY"), 6) => {
                        let v: serde_json::Value = serde_json::from_str(&f[4]).unwrap();
                        let again = results[c].insert(f[5].clone(), v);
                        assert!(again.is_none(), "client {c}: a second result for {}", f[5]);
                    }
                    _ => {}
                }
            }
        }
    }
    for c in 0..CLIENTS {
        assert_eq!(receipts[c], sent[c], "client {c}: one receipt per job, in the order sent");
        for (i, msgid) in sent[c].iter().enumerate() {
            let v = results[c].get(msgid).unwrap_or_else(|| panic!("client {c}: no result for job {i}"));
            assert_eq!(v["value"], json!(i + c * 1000), "client {c} job {i}: {v}");
        }
    }
    // Nothing more comes: no receipt or result twice.
    std::thread::sleep(Duration::from_millis(300));
    for (c, d) in clients.iter().enumerate() {
        while let Ok(f) = d.socket.recv_multipart(zmq::DONTWAIT) {
            assert_ne!(f.get(2).map(|b| &b[..]), Some(&b"REPLY"[..]), "client {c}: an extra REPLY {f:?}");
        }
    }
}

#[test]
fn client_outcomes_status_and_results_kept_across_reconnect() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut client = Client::connect(&a.frontend).unwrap();
    let dl = || Instant::now() + Duration::from_secs(60);
    let id = client
        .defer_job("default", "testjobs.fail", vec!["x".into()], Default::default(), &Options::default())
        .unwrap();
    let JobOutcome::Failed(e) = client.wait(&id, dl()) else { panic!("expected a failure") };
    assert_eq!(e.kind.as_str(), "ValueError");
    let slow = Options { timeout: Some(1), ..Options::default() };
    let id = client.defer_job("default", "testjobs.sleep", vec![5.into()], Default::default(), &slow).unwrap();
    assert!(matches!(client.wait(&id, dl()), JobOutcome::Timeout(_)));
    let id = client.defer_job("default", "testjobs.crash", vec![], Default::default(), &Options::default()).unwrap();
    assert!(matches!(client.wait(&id, dl()), JobOutcome::WorkerDied(_)));
    let id =
        client.defer_job("default", "testjobs.sleep", vec![3.into()], Default::default(), &Options::default()).unwrap();
    assert_eq!(client.wait(&id, Instant::now() + Duration::from_millis(300)), JobOutcome::NoReply);
    // A result that arrived while the client waited for another job, or
    // that went to a dropped connection, is not lost.
    let a1 = client
        .defer_job("default", "benchjobs.add", vec![1.into(), 1.into()], Default::default(), &Options::default())
        .unwrap();
    client.reconnect().unwrap();
    assert_eq!(client.wait(&id, dl()), JobOutcome::Value(3.into()));
    assert_eq!(client.wait(&a1, dl()), JobOutcome::Value(2.into()));
    let b =
        client.defer_job("default", "testjobs.sleep", vec![1.into()], Default::default(), &Options::default()).unwrap();
    let identity = client.identity().to_owned();
    let token = client.owner_token().to_owned();
    drop(client);
    // A stranger cannot read the result; the holder of the owner token can.
    let mut stranger = Client::connect(&a.frontend).unwrap();
    let s = stranger.job_status(&b, dl()).unwrap();
    assert!(s.get("result").is_none(), "{s}");
    let mut again = Client::connect(&a.frontend).unwrap();
    again.set_owner_token(&token);
    assert_ne!(again.identity(), identity);
    assert_eq!(again.wait(&b, dl()), JobOutcome::Value(1.into()), "recovered from the router's job record");
    let s = again.job_status(&b, dl()).unwrap();
    assert_eq!(s["state"], "done");
}

#[test]
fn emq_cli_status_workers_and_job_lifecycle() {
    let (_r, a) = start_router(&[]);
    // Queued before any job manager exists...
    let (code, msgid, err) = emq_send(&a.frontend, &["-q", "default", "testjobs.sleep", "2"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = emq_cli(&a, &["--json", "job", &msgid]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "queued");
    let (_, human, _) = emq_cli(&a, &["job", &msgid]);
    assert!(human.contains("queued"), "{human}");
    // ...dispatched, then done.
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    eventually(Duration::from_secs(60), || {
        let (_, out, _) = emq_cli(&a, &["--json", "job", &msgid]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["state"] == "dispatched").then_some(())
    });
    let v = eventually(Duration::from_secs(60), || {
        let (_, out, _) = emq_cli(&a, &["--json", "job", &msgid]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        (v["state"] == "done").then_some(v)
    });
    assert_eq!(v["result"], json!({"value": 2}));
    assert_eq!(v["attempts"], 1);

    let (code, out, _) = emq_cli(&a, &["status", "--json"]);
    assert_eq!(code, 0);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in EVENTMQ_STATUS_KEYS {
        assert!(s[k].is_object(), "{k}: {s}");
    }
    let (_, table, _) = emq_cli(&a, &["status"]);
    assert!(table.lines().next().unwrap().starts_with("queue"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("default")), "{table}");
    let (_, workers, _) = emq_cli(&a, &["workers"]);
    assert!(workers.contains("10:default"), "{workers}");
    println!("emq-cli status:\n{table}\nemq-cli workers:\n{workers}");
    let (code, out, _) = emq_cli(&a, &["shutdown"]);
    assert_eq!((code, out.as_str()), (0, "router acknowledged shutdown"));
}

/// A `guarantee` job that fails for good becomes a dead letter; a client
/// that missed its reply (it reconnected under a new identity) learns the
/// outcome from the job record. It used to be taken for "not over yet",
/// so `wait` ran into its deadline with `NoReply`.
#[test]
fn dead_lettered_job_reaches_a_client_that_missed_its_reply() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut client = Client::connect(&a.frontend).unwrap();
    let opts = Options { guarantee: true, ..Default::default() };
    let id = client.defer_job("default", "testjobs.fail", vec!["for good".into()], Default::default(), &opts).unwrap();
    let token = client.owner_token().to_owned();
    drop(client);
    let mut again = Client::connect(&a.frontend).unwrap();
    again.set_owner_token(&token);
    let dl = Instant::now() + Duration::from_secs(60);
    let status = eventually(Duration::from_secs(60), || {
        let s = again.job_status(&id, dl).ok()?;
        (s["state"] == "dead").then_some(s)
    });
    assert_eq!(status["attempts"], 1);
    match again.wait(&id, dl) {
        JobOutcome::Failed(e) => {
            assert_eq!(e.kind.as_str(), "ValueError");
            assert_eq!(e.message, "for good");
        }
        other => panic!("a dead letter's outcome is its last error, got {other:?}"),
    }
}

/// `emq-send` options may come anywhere before `--`; after it everything
/// is a job argument (`--wait` included).
#[test]
fn emq_send_options_anywhere_before_the_double_dash() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let (code, out, err) = emq_send(&a.frontend, &["benchjobs.add", "2", "3", "--wait"]);
    assert_eq!((code, out.as_str()), (0, r#"{"value":5}"#), "{err}");
    let (code, out, err) = emq_send(&a.frontend, &["--wait", "testjobs.echo", "-7", "--", "--wait"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["value"]["args"], json!([-7, "--wait"]), "{v}");
}

/// Jobs sent together (`send_payloads_until`, what Python's `send_many` and
/// `map` use) go one REQUEST each until the router has sent a REPLIES —
/// which our router does from a client's first receipt, even one job's —
/// then as REQUESTS; every job still gets its own result, in any order.
#[test]
fn jobs_sent_together_go_as_requests_once_the_router_shows_replies() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let mut client = Client::connect(&a.frontend).unwrap();
    let payload = |i: i64| Job::new("benchjobs", "add", vec![i.into(), (i * 7).into()]).to_wire();
    let deadline = Instant::now() + Duration::from_secs(120);
    assert!(!client.sends_requests(), "not before the router showed it");
    let mut ids = Vec::new();
    client.send_payloads_until("default", &[payload(-1)], &Options::default(), deadline, &mut ids).unwrap();
    assert_eq!(client.wait(&ids[0], deadline), JobOutcome::Value((-8).into()));
    assert!(client.sends_requests(), "our router sends REPLIES to our client, even for one job");
    let payloads: Vec<String> = (0..1500).map(payload).collect();
    let mut ids = Vec::new();
    client.send_payloads_until("default", &payloads, &Options::default(), deadline, &mut ids).unwrap();
    assert_eq!(ids.len(), 1500);
    let mut expected: HashMap<String, i64> = ids.iter().cloned().zip((0..1500).map(|i| i * 8)).collect();
    while !expected.is_empty() {
        let (id, outcome) = client.wait_any(deadline).expect("all 1500 results before the hang guard");
        let want = expected.remove(&id).unwrap_or_else(|| panic!("result for unknown or repeated msgid {id}"));
        assert_eq!(outcome, JobOutcome::Value(want.into()), "msgid {id}");
    }
    assert!(client.sends_requests());
}

/// A router that sends REPLIES but refuses a client's REQUESTS (an emq
/// router older than REQUESTS from clients; here a bare ROUTER socket
/// playing it): the client sends that REQUESTS' jobs again one REQUEST
/// each, under the same msgids, and sends later jobs one by one.
#[test]
fn a_refused_requests_goes_again_one_request_each() {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let addr = router.get_last_endpoint().unwrap().unwrap();
    router.set_rcvtimeo(HANG as i32).unwrap();
    let recv = || {
        let f = router.recv_multipart(0).expect("a message from the client before the hang guard");
        f.into_iter().map(|b| String::from_utf8(b).unwrap()).collect::<Vec<String>>()
    };
    let send = |f: &[&str]| router.send_multipart(f.iter().map(|s| s.as_bytes()), 0).unwrap();
    let mut client = Client::connect(&addr).unwrap();
    let payload = |i: i64| Job::new("benchjobs", "add", vec![i.into()]).to_wire();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ids = Vec::new();
    client.send_payloads_until("default", &[payload(0)], &Options::default(), deadline, &mut ids).unwrap();
    // [identity, "", protocol, command, msgid, ...]
    let first = recv();
    assert_eq!((first[3].as_str(), first[4].as_str()), ("REQUEST", ids[0].as_str()), "{first:?}");
    send(&[&first[0], "", "eMQP/1.0", "REPLIES", "rs-1", "", &ids[0], r#"{"value": 0}"#, &ids[0]]);
    assert_eq!(client.wait(&ids[0], deadline), JobOutcome::Value(0.into()));
    assert!(client.sends_requests());
    let mut ids = Vec::new();
    client
        .send_payloads_until("default", &[payload(1), payload(2), payload(3)], &Options::default(), deadline, &mut ids)
        .unwrap();
    let batch = recv();
    assert_eq!(batch[3], "REQUESTS", "{batch:?}");
    assert_eq!(batch.len(), 5 + 3 * 4, "{batch:?}");
    let in_batch: Vec<&str> = batch[5..].chunks(4).map(|j| j[0].as_str()).collect();
    assert_eq!(in_batch, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let refusal = emq_protocol::JobReply::refused_by_router("unexpected command REQUESTS on the frontend").to_json();
    send(&[&batch[0], "", "eMQP/1.0", "REPLY", "rf-1", &refusal, &batch[4]]);
    let _ = client.pump(500);
    assert!(!client.sends_requests(), "a refused REQUESTS: one by one from now on");
    let again: Vec<String> = (0..3).map(|_| recv()).map(|f| format!("{} {}", f[3], f[4])).collect();
    assert_eq!(again, ids.iter().map(|id| format!("REQUEST {id}")).collect::<Vec<_>>(), "the same jobs, one each");
    // Their receipts as one REPLIES (such a router sends them): REQUESTS
    // stay off all the same.
    send(&[&batch[0], "", "eMQP/1.0", "REPLIES", "rs-2", "", &ids[0], "", &ids[1], "", &ids[2]]);
    let _ = client.pump(500);
    assert!(!client.sends_requests(), "a REPLIES after a refusal does not turn REQUESTS on again");
    let mut later = Vec::new();
    client
        .send_payloads_until("default", &[payload(4), payload(5)], &Options::default(), deadline, &mut later)
        .unwrap();
    let singles: Vec<String> = (0..2).map(|_| recv()).map(|f| format!("{} {}", f[3], f[4])).collect();
    assert_eq!(singles, later.iter().map(|id| format!("REQUEST {id}")).collect::<Vec<_>>());
    for id in &ids {
        assert!(client.take_result(id).is_none(), "the refusal of the REQUESTS is no job's result");
    }
}

/// A result comes twice around a router crash (the restarted router sends
/// its last moments' results again; a job in doubt may run twice): the
/// client hands out the first and drops the others — `wait_any` does not
/// give a job's result a second time, and a result of a job no longer
/// waited on is not kept. A router played by the test.
#[test]
fn a_result_that_comes_twice_is_handed_out_once() {
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.bind(&format!("tcp://127.0.0.1:{}", free_port())).unwrap();
    let addr = router.get_last_endpoint().unwrap().unwrap();
    router.set_rcvtimeo(HANG as i32).unwrap();
    let mut client = Client::connect(&addr).unwrap();
    let deadline = Instant::now() + Duration::from_millis(HANG as u64);
    let job = Job::new("benchjobs", "add", vec![1.into()]);
    let a = client.send_request("default", &job, &Options::default()).unwrap();
    let b = client.send_request("default", &job, &Options::default()).unwrap();
    let mut peer = Vec::new();
    for _ in 0..2 {
        let f = router.recv_multipart(0).expect("a REQUEST before the hang guard");
        peer = f[0].clone();
    }
    let result = |msgid: &str, v: i64| {
        let json = format!(r#"{{"value": {v}}}"#);
        let frames: [&[u8]; 6] = [&peer, b"", b"eMQP/1.0", b"REPLY", json.as_bytes(), msgid.as_bytes()];
        let mut frames: Vec<&[u8]> = frames.to_vec();
        let id = format!("r-{msgid}-{v}");
        frames.insert(4, id.as_bytes());
        router.send_multipart(frames, 0).unwrap();
    };
    result(&a, 1);
    result(&a, 2);
    let (id, first) = client.wait_any(deadline).expect("a's result");
    assert_eq!((id.as_str(), first), (a.as_str(), JobOutcome::Value(1.into())), "the first one counts");
    // Once taken, a's result again (a restarted router's resend) is no
    // second result; b's comes next.
    result(&a, 3);
    result(&b, 4);
    let (id, second) = client.wait_any(deadline).expect("b's result");
    assert_eq!((id.as_str(), second), (b.as_str(), JobOutcome::Value(4.into())));
    result(&b, 5);
    assert_eq!(client.wait_any(Instant::now() + Duration::from_millis(500)), None, "nothing is handed out twice");
    assert!(client.take_result(&a).is_none() && client.take_result(&b).is_none(), "nor kept");
}
