//! End-to-end tests of `emq-router`: the real binary on free loopback ports,
//! driven by plain ZeroMQ DEALER sockets sending raw eMQP frames.

mod common;
use common::*;
use std::time::Duration;

const HANG: i64 = 10_000;

#[test]
fn inform_ready_request_receipt_and_result() {
    let (_router, a) = start_router(&[]);
    let jm = fake_job_manager(&a.backend, r#"[[10, "default"]]"#, 1);
    let client = Dealer::connect(&a.frontend);
    let payload = r#"["run", {"path": "benchjobs", "callable": "add", "args": [2, 3]}]"#;
    let headers = "reply-requested,guarantee,retry-count:2,timeout:5";
    client.send(&["", "eMQP/1.0", "REQUEST", "job-1", "default", headers, payload]);

    // Forwarded byte-identical, same msgid.
    let got = jm.recv_skip_heartbeats(HANG).expect("job at the job manager");
    assert_eq!(got, vec!["", "eMQP/1.0", "REQUEST", "job-1", "default", headers, payload]);
    // Receipt: REPLY with one body frame, the job's msgid.
    let receipt = client.recv_skip_heartbeats(HANG).expect("receipt");
    assert_eq!(receipt.len(), 5, "{receipt:?}");
    assert_eq!((receipt[2].as_str(), receipt[4].as_str()), ("REPLY", "job-1"));
    // Result: the job manager's REPLY goes to the client, two body frames.
    jm.send(&["", "eMQP/1.0", "REPLY", "r-1", r#"{"value": 5}"#, "job-1"]);
    jm.send(&["", "eMQP/1.0", "READY", "rd-2"]);
    let result = client.recv_skip_heartbeats(HANG).expect("result");
    assert_eq!(result.len(), 6, "{result:?}");
    assert_eq!(&result[2..], &["REPLY".to_string(), result[3].clone(), r#"{"value": 5}"#.into(), "job-1".into()]);

    let status = admin(&a.admin, "STATUS");
    assert_eq!(status["processed_messages_by_queue"]["default"], 1);
    assert_eq!(status["inflight_messages_by_queue"].get("default").map_or(0, |v| v.as_u64().unwrap()), 0);
}

#[test]
fn jobs_wait_in_the_buffer_until_ready() {
    let (_router, a) = start_router(&[]);
    let client = Dealer::connect(&a.frontend);
    // Sent before any job manager exists.
    for i in 0..3 {
        client.send(&["", "eMQP/1.0", "REQUEST", &format!("early-{i}"), "default", "", r#"["run", {}]"#]);
    }
    for i in 0..3 {
        let r = client.recv_skip_heartbeats(HANG).expect("receipt for buffered job");
        assert_eq!(r[4], format!("early-{i}"));
    }
    let status = admin(&a.admin, "STATUS");
    assert_eq!(status["waiting_messages_by_queue"]["default"], 3);
    let jm = fake_job_manager(&a.backend, r#"[[10, "default"]]"#, 0);
    assert!(jm.recv_skip_heartbeats(300).is_none(), "no READY, no job");
    for i in 0..3 {
        jm.send(&["", "eMQP/1.0", "READY", &format!("rd-{i}")]);
        let got = jm.recv_skip_heartbeats(HANG).expect("buffered job after READY");
        assert_eq!(got[3], format!("early-{i}"), "oldest first");
    }
    assert!(jm.recv_skip_heartbeats(300).is_none());
}

#[test]
fn admin_status_workers_hello_and_unknown() {
    let (_router, a) = start_router(&[]);
    let jm = fake_job_manager(&a.backend, r#"[[20, "heavy"], [10, "default"]]"#, 2);
    let cli = Dealer::connect(&a.admin);
    // HELLO gets no answer: the next frame is STATUS's answer.
    cli.send(&["", "eMQP/1.0", "HELLO", "admin:1"]);
    cli.send(&["", "eMQP/1.0", "STATUS", "admin:2"]);
    let s = cli.recv_timeout(HANG).unwrap();
    assert_eq!(s[2], "REPLY");
    let v: serde_json::Value = serde_json::from_str(&s[4]).unwrap();
    for k in EVENTMQ_STATUS_KEYS {
        assert!(v[k].is_object(), "STATUS lacks {k}: {v}");
    }
    let w = eventually(Duration::from_secs(10), || {
        let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
        (w["connected_workers"][&jm.identity]["available_slots"] == 2).then_some(w)
    });
    assert_eq!(w["connected_workers"][&jm.identity]["queues"], serde_json::json!([[20, "heavy"], [10, "default"]]));
    assert_eq!(w["connected_queues"]["heavy"][0], serde_json::json!([20, jm.identity]));
    let s = admin(&a.admin, "ROUTER_SHOW_SCHEDULERS");
    assert!(s["connected_schedulers"].is_object());
    cli.send(&["", "eMQP/1.0", "FROBNICATE", "admin:3"]);
    let e = cli.recv_timeout(HANG).unwrap();
    assert!(e[4].contains("error"), "{e:?}");
}

#[test]
fn disconnect_acks_says_kbye_and_exits_cleanly() {
    let (mut router, a) = start_router(&[]);
    let jm = fake_job_manager(&a.backend, "", 1);
    let cli = Dealer::connect(&a.admin);
    // Changing anything needs the admin token first.
    cli.send(&["", "eMQP/1.0", "DISCONNECT", "admin:early"]);
    let refused = cli.recv_timeout(HANG).unwrap();
    assert!(refused[4].contains("not authorized"), "{refused:?}");
    let token = std::fs::read_to_string(a.data_dir.join("admin.token")).unwrap();
    cli.send(&["", "eMQP/1.0", "AUTHENTICATE", "admin:auth", &token]);
    assert!(cli.recv_timeout(HANG).unwrap()[4].contains("true"));
    cli.send(&["", "eMQP/1.0", "DISCONNECT", "admin:bye"]);
    let ack = cli.recv_timeout(HANG).unwrap();
    assert_eq!((ack[2].as_str(), ack[4].as_str()), ("ACK", "admin:bye"));
    let kbye = jm.recv_skip_heartbeats(HANG).expect("KBYE to job manager");
    assert_eq!(kbye[2], "KBYE");
    let st = router.wait_exit(Duration::from_secs(10)).expect("router exits");
    assert!(st.success(), "{st:?}");
}

#[test]
fn silent_job_manager_is_removed_with_its_slots() {
    let (_router, a) = start_router(&[
        ("EMQ_HEARTBEAT_INTERVAL", "0.2"),
        ("EMQ_HEARTBEAT_TIMEOUT", "1"),
        ("EMQ_SUSPECT_TIMEOUT", "1"),
    ]);
    let jm = fake_job_manager(&a.backend, "", 2);
    // It heartbeats for a while and stays...
    for _ in 0..6 {
        jm.send(&["", "eMQP/1.0", "HEARTBEAT", "hb", "1700000000.0"]);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(admin(&a.admin, "ROUTER_SHOW_WORKERS")["connected_workers"].get(&jm.identity).is_some());
    // ...then goes silent and is removed.
    eventually(Duration::from_secs(10), || {
        admin(&a.admin, "ROUTER_SHOW_WORKERS")["connected_workers"].get(&jm.identity).is_none().then_some(())
    });
    let s = admin(&a.admin, "STATUS");
    assert_eq!(s["free_slots"], 0);
    assert!(s["errors"]["heartbeat_timeouts"].as_u64().unwrap() >= 1);
    // And the router heartbeated it meanwhile.
    let mut saw_hb = false;
    while let Some(f) = jm.recv_timeout(10) {
        saw_hb |= f[2] == "HEARTBEAT";
    }
    assert!(saw_hb);
}

#[test]
fn garbage_on_every_socket_does_not_stop_a_valid_job() {
    let (_router, a) = start_router(&[]);
    let jm = fake_job_manager(&a.backend, "", 1);
    let client = Dealer::connect(&a.frontend);
    let cli = Dealer::connect(&a.admin);
    let garbage: Vec<Vec<&[u8]>> = vec![
        vec![b"only one frame"],
        vec![b"", b"eMQP/9.9", b"REQUEST", b"g1", b"default", b"", b"[]"],
        vec![b"", b"eMQP/1.0", b"REQUEST", b"g2", b"default"],
        vec![b"", b"eMQP/1.0", b"\xff\xfe", b"g3"],
        vec![b"", b"eMQP/1.0", b"INFORM", b"g4", b"[[not json", b"worker"],
        vec![b"", b"eMQP/1.0", b"NOSUCHCOMMAND", b"g5"],
        vec![b"", b"eMQP/1.0", b"REPLY", b"g6", b"{}", b"no-such-job"],
        vec![b"", b"eMQP/1.0", b"READY", b"g7", b"extra"],
    ];
    for g in &garbage {
        client.send_bytes(g);
        jm.send_bytes(g);
        cli.send_bytes(g);
    }
    // A stranger's READY (no INFORM) is ignored too.
    let stranger = Dealer::connect(&a.backend);
    stranger.send(&["", "eMQP/1.0", "READY", "s1"]);
    // Malformed REQUEST with a msgid gets a refusal naming it.
    let mut refused = Vec::new();
    while let Some(f) = client.recv_timeout(500) {
        if f.len() == 6 {
            refused.push(f[5].clone());
        }
    }
    assert!(refused.contains(&"g2".to_string()), "refusals: {refused:?}");
    // The valid job still goes through, to the real job manager.
    client.send(&["", "eMQP/1.0", "REQUEST", "good", "default", "reply-requested", r#"["run", {}]"#]);
    let got = jm.recv_skip_heartbeats(HANG).expect("valid job after garbage");
    assert_eq!(got[3], "good");
    jm.send(&["", "eMQP/1.0", "REPLY", "r", r#"{"value": 1}"#, "good"]);
    let r = eventually(Duration::from_secs(10), || client.recv_timeout(100).filter(|f| f.len() == 6));
    assert_eq!(r[5], "good");
    let errors = &admin(&a.admin, "STATUS")["errors"];
    for k in
        ["bad_protocol_version", "too_few_frames", "not_utf8", "bad_json", "trailing_frames", "ready_from_unknown_peer"]
    {
        assert!(errors[k].as_u64().unwrap_or(0) >= 1, "{k} not counted: {errors}");
    }
}

#[test]
fn bad_settings_exit_with_code_2() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_emq-router"));
        c.args(args)
            .current_dir(std::env::temp_dir())
            .env("EMQ_HTTP_ADDR", "")
            .env("EMQ_DATA_DIR", &RouterAddrs::fresh().data_dir);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&["--config", "/nonexistent/emq.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = run(&["--frontend-addr", "nonsense"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let p = free_port();
    let out = run(
        &[
            "--frontend-addr",
            "tcp://256.0.0.1:1",
            "--backend-addr",
            &tcp(p),
            "--administrative-addr",
            &tcp(free_port()),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    let out = run(&[], &[("EMQ_HWM", "many")]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn http_addr_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = RouterAddrs::fresh();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-router"))
        .args(["--frontend-addr", &a.frontend, "--backend-addr", &a.backend, "--administrative-addr", &a.admin])
        .env("EMQ_HTTP_ADDR", taken.local_addr().unwrap().to_string())
        .env("EMQ_DATA_DIR", &a.data_dir)
        .env("RUST_LOG", "off")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A REQUEST sent again under the same msgid — a client retrying after a
/// lost receipt or a failover, EventMQ's included — gets the receipt again
/// (and, once the job is over, its result) and never makes a second job.
#[test]
fn a_request_sent_again_under_its_msgid_runs_once() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let file = std::env::temp_dir().join(format!("emq-once-{}", uuid::Uuid::new_v4()));
    let payload =
        serde_json::json!(["run", {"path": "benchjobs", "callable": "append_line", "args": [file, "ran"]}]).to_string();
    let c = Dealer::connect(&a.frontend);
    let send = || c.send(&["", "eMQP/1.0", "REQUEST", "retry-1", "default", "reply-requested", &payload]);
    let (mut receipts, mut results) = (0, 0);
    let mut read = |ms: i64| {
        while let Some(f) = c.recv_timeout(ms) {
            match f.len() {
                5 if f[4] == "retry-1" => receipts += 1,
                6 if f[5] == "retry-1" => results += 1,
                _ => {}
            }
        }
    };
    send();
    send();
    read(2000);
    send(); // after it finished: receipt and result again
    read(2000);
    assert_eq!((receipts, results), (3, 2), "a receipt per send; the result when over (and again on request)");
    assert_eq!(read_lines(&file), vec!["ran"], "ran once");
    let _ = std::fs::remove_file(file);
}

/// The router runs without transparent huge pages (its heap would grow by
/// zeroed 2 MiB pages in page faults on the poll loop: `router/src/cli.rs`).
#[test]
fn the_router_opts_out_of_transparent_huge_pages() {
    let (router, _addrs) = start_router(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", router.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"));
    // Kernels before 5.0 do not say; there is nothing to check then.
    if let Some(line) = line {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}

/// A client whose REQUESTs carry `batch-replies` gets its receipts and
/// results of a pass as REPLIES messages — only REPLIES, even for one
/// (its first receipt tells it the router takes REQUESTS): every job's
/// receipt and result exactly once (a result may come before its receipt,
/// as with REPLYs: the receipt waits for its journal commit); an admin
/// answer still alone as a REPLY; a client that did not ask never sees a
/// REPLIES.
#[test]
fn a_client_that_asks_gets_receipts_and_results_in_replies() {
    let (_router, a) = start_router(&[]);
    let jm = fake_job_manager(&a.backend, r#"[[10, "default"]]"#, 0);
    let batch = Dealer::connect(&a.frontend);
    let plain = Dealer::connect(&a.frontend);
    let payload = r#"["run", {"path": "benchjobs", "callable": "noop"}]"#;
    let jobs: Vec<String> = (0..60).map(|i| format!("b-{i}")).collect();
    let mut replies_messages = 0;
    let mut seen: std::collections::HashMap<String, Vec<&'static str>> = Default::default();
    let mut note =
        |frames: Vec<String>, seen: &mut std::collections::HashMap<String, Vec<&'static str>>| match frames[2].as_str()
        {
            "REPLIES" => {
                replies_messages += 1;
                assert!(frames.len() >= 6 && frames.len().is_multiple_of(2), "{frames:?}");
                for pair in frames[4..].chunks(2) {
                    let kind = if pair[0].is_empty() { "receipt" } else { "result" };
                    seen.entry(pair[1].clone()).or_default().push(kind);
                }
            }
            _ => panic!("a batch client's receipt or result not in a REPLIES: {frames:?}"),
        };
    for round in jobs.chunks(20) {
        for id in round {
            batch.send(&["", "eMQP/1.0", "REQUEST", id, "default", "reply-requested,batch-replies", payload]);
        }
        // The job manager takes them all and answers in a burst.
        for i in 0..round.len() {
            jm.send(&["", "eMQP/1.0", "READY", &format!("rd-{i}")]);
        }
        for _ in round {
            let got = jm.recv_skip_heartbeats(HANG).expect("job at the job manager");
            assert_eq!(got[2], "REQUEST");
            jm.send(&["", "eMQP/1.0", "REPLY", &format!("r-{}", got[3]), r#"{"value": null}"#, &got[3]]);
        }
        let end = std::time::Instant::now() + Duration::from_millis(HANG as u64);
        while round.iter().any(|id| seen.get(id).map_or(0, Vec::len) < 2) {
            assert!(std::time::Instant::now() < end, "replies missing: {seen:?}");
            if let Some(f) = batch.recv_skip_heartbeats(100) {
                note(f, &mut seen);
            }
        }
    }
    for id in &jobs {
        let mut kinds = seen[id].clone();
        kinds.sort();
        assert_eq!(kinds, vec!["receipt", "result"], "{id}: exactly one receipt and one result");
    }
    assert!(replies_messages > 0, "60 jobs in bursts of 20 and not one REPLIES");
    assert!(batch.recv_skip_heartbeats(300).is_none(), "nothing more");
    // An admin answer to that client: one JSON frame, never in a REPLIES.
    batch.send(&["", "eMQP/1.0", "JOB_STATUS", "st-1", "b-0"]);
    let answer = batch.recv_skip_heartbeats(HANG).expect("status answer");
    assert_eq!((answer[2].as_str(), answer.len()), ("REPLY", 5), "{answer:?}");
    assert!(answer[4].starts_with('{'), "{answer:?}");
    // A client that did not ask: REPLYs only.
    plain.send(&["", "eMQP/1.0", "REQUEST", "p-1", "default", "reply-requested", payload]);
    jm.send(&["", "eMQP/1.0", "READY", "rd-p"]);
    let got = jm.recv_skip_heartbeats(HANG).expect("plain job");
    jm.send(&["", "eMQP/1.0", "REPLY", "r-p", r#"{"value": 1}"#, &got[3]]);
    let mut got: Vec<(String, usize, String)> = (0..2)
        .map(|_| plain.recv_skip_heartbeats(HANG).expect("receipt and result"))
        .map(|f| (f[2].clone(), f.len(), f.last().cloned().unwrap_or_default()))
        .collect();
    got.sort();
    assert_eq!(got, vec![("REPLY".into(), 5, "p-1".into()), ("REPLY".into(), 6, "p-1".into())]);
}

/// A client's REQUESTS (emq's client sends one, once it has had a
/// REPLIES, for jobs sent together) is its jobs' REQUESTs, each taken as if
/// alone: each job gets its receipt and its result; one the router refuses
/// (a limit it does not know) gets its own error and harms none of the
/// others; the same msgid twice is one job; a REQUESTS that does not decode
/// is answered under its own msgid, and the next one still runs.
#[test]
fn a_client_requests_is_each_of_its_jobs_alone() {
    let (_router, a) = start_router(&[]);
    let jm = fake_job_manager(&a.backend, r#"[[10, "default"]]"#, 0);
    let c = Dealer::connect(&a.frontend);
    let payload = r#"["run", {"path": "benchjobs", "callable": "noop"}]"#;
    let h = "reply-requested,batch-replies";
    let unknown_limit = "reply-requested,batch-replies,limit:nope/p";
    #[rustfmt::skip]
    c.send(&["", "eMQP/1.0", "REQUESTS", "batch-1",
        "j-1", "default", h, payload,
        "j-2", "default", unknown_limit, payload,
        "j-1", "default", h, payload,
        "j-3", "default", h, payload]);
    c.send(&["", "eMQP/1.0", "REQUESTS", "batch-bad", "j-9", "default", h]);
    c.send(&["", "eMQP/1.0", "REQUESTS", "batch-2", "j-4", "default", h, payload]);
    for i in 0..4 {
        jm.send(&["", "eMQP/1.0", "READY", &format!("rd-{i}")]);
    }
    let mut ran = Vec::new();
    for _ in 0..3 {
        let got = jm.recv_skip_heartbeats(HANG).expect("a job at the job manager");
        assert_eq!(got[2], "REQUEST", "{got:?}");
        jm.send(&["", "eMQP/1.0", "REPLY", &format!("r-{}", got[3]), r#"{"value": 7}"#, &got[3]]);
        ran.push(got[3].clone());
    }
    assert_eq!(ran, vec!["j-1", "j-3", "j-4"], "each accepted job once, in order");
    assert!(jm.recv_skip_heartbeats(300).is_none(), "nothing more for the job manager");
    // (msgid, "receipt" | result JSON) as they come, REPLY or REPLIES.
    let mut seen: Vec<(String, String)> = Vec::new();
    let complete = |seen: &Vec<(String, String)>| {
        let results = seen.iter().filter(|(_, k)| k != "receipt").count();
        results == 5 && seen.iter().filter(|(_, k)| k == "receipt").count() >= 4
    };
    let end = std::time::Instant::now() + Duration::from_millis(HANG as u64);
    while !complete(&seen) {
        assert!(std::time::Instant::now() < end, "answers missing: {seen:?}");
        let Some(f) = c.recv_skip_heartbeats(100) else { continue };
        match (f[2].as_str(), f.len()) {
            ("REPLIES", _) => {
                for pair in f[4..].chunks(2) {
                    let kind = if pair[0].is_empty() { "receipt".to_owned() } else { pair[0].clone() };
                    seen.push((pair[1].clone(), kind));
                }
            }
            ("REPLY", 5) => seen.push((f[4].clone(), "receipt".to_owned())),
            ("REPLY", 6) => seen.push((f[5].clone(), f[4].clone())),
            _ => panic!("unexpected {f:?}"),
        }
    }
    let of = |id: &str| seen.iter().filter(|(m, _)| m == id).map(|(_, k)| k.as_str()).collect::<Vec<_>>();
    for id in ["j-1", "j-3", "j-4"] {
        let kinds = of(id);
        assert_eq!(kinds.iter().filter(|k| k.contains("\"value\": 7")).count(), 1, "{id}: one result: {seen:?}");
        let receipts = kinds.iter().filter(|k| **k == "receipt").count();
        assert_eq!(receipts, if id == "j-1" { 2 } else { 1 }, "{id}: a receipt per send: {seen:?}");
    }
    let refused = of("j-2");
    assert!(refused.len() == 1 && refused[0].contains("limit"), "j-2 refused for its limit: {seen:?}");
    let bad = of("batch-bad");
    assert!(bad.len() == 1 && bad[0].contains("malformed"), "the bad REQUESTS answered under its msgid: {seen:?}");
    assert!(of("j-9").is_empty() && of("batch-1").is_empty() && of("batch-2").is_empty(), "{seen:?}");
    assert!(c.recv_skip_heartbeats(300).is_none(), "nothing more");
}
