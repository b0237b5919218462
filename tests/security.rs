//! Closed by default: each attack the security review found, tried against
//! the real binaries, and shown to fail now.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const HANG: i64 = 10_000;
const HANG_DURATION: Duration = Duration::from_secs(30);

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `os.system` and friends: refused unless a job manager allows them.
#[test]
fn callables_outside_allowed_paths_never_reach_the_job_manager() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[("EMQ_ALLOWED_PATHS", "benchjobs")]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested", "os", "system", json!(["echo pwned"]));
    assert_eq!(c.call("default", "benchjobs", "add", json!([1, 2])), json!({"value": 3}));
    // It waits at the router, which says why; the job manager never saw it.
    let st = admin(&a.admin, "STATUS");
    assert_eq!(st["waiting_not_allowed"]["default"]["modules"], json!(["os"]), "{st}");
    assert_eq!(admin_job(&a, &id)["state"], "queued");
}

/// Whatever router sends it a job (EventMQ's does not know `allowed_paths`),
/// the job manager refuses a callable outside them, without importing it,
/// and counts it. The router here is a bare ROUTER socket speaking frames.
#[test]
fn a_job_manager_refuses_callables_outside_allowed_paths_from_any_router() {
    let port = free_port();
    let ctx = zmq::Context::new();
    let router = ctx.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.bind(&tcp(port)).unwrap();
    let _jm = start_jobmanager(&tcp(port), "default", 1, &[("EMQ_ALLOWED_PATHS", "benchjobs")]);
    let recv = |want: &str| -> Vec<Vec<u8>> {
        let end = std::time::Instant::now() + HANG_DURATION;
        loop {
            assert!(std::time::Instant::now() < end, "no {want} from the job manager");
            if router.poll(zmq::POLLIN, 500).unwrap() == 0 {
                continue;
            }
            let f = router.recv_multipart(0).unwrap();
            if f.get(3).map(|c| c.as_slice()) == Some(want.as_bytes()) {
                return f;
            }
        }
    };
    let inform = recv("INFORM");
    let features = String::from_utf8_lossy(inform.get(7).map(|f| f.as_slice()).unwrap_or_default()).to_string();
    assert!(features.split(',').any(|t| t == "allow=benchjobs"), "it says what it allows: {features}");
    let id = inform[0].clone();
    router.send_multipart([id.as_slice(), b"", b"eMQP/1.0", b"ACK", b"ack-1", &inform[4]], 0).unwrap();
    recv("READY");
    let payload = json!(["run", {"path": "os", "callable": "system", "args": ["echo pwned"]}]).to_string();
    let job =
        [id.as_slice(), b"", b"eMQP/1.0", b"REQUEST", b"job-1", b"default", b"reply-requested", payload.as_bytes()];
    router.send_multipart(job, 0).unwrap();
    let reply = recv("REPLY");
    let v: serde_json::Value = serde_json::from_slice(&reply[5]).unwrap();
    assert_eq!((v["error"]["type"].as_str(), reply[6].as_slice()), (Some("refused"), b"job-1".as_slice()), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("allowed_paths"), "{v}");
}

/// A peer on the backend that INFORMs for a queue cannot end another job
/// manager's job: its forged REPLY is dropped and counted; the client gets
/// the real result.
#[test]
fn a_fake_job_manager_cannot_forge_results() {
    let (_r, a) = start_router(&[]);
    let real = fake_job_manager(&a.backend, r#"[[10, "default"]]"#, 1);
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested", "benchjobs", "add", json!([2, 2]));
    let req = real.recv_skip_heartbeats(HANG).expect("the job reaches the real job manager");
    assert_eq!((req[2].as_str(), req[3].as_str()), ("REQUEST", id.as_str()));
    let fake = fake_job_manager(&a.backend, r#"[[10, "default"]]"#, 0);
    fake.send(&["", "eMQP/1.0", "REPLY", "forged-1", r#"{"value": "forged"}"#, &id]);
    std::thread::sleep(Duration::from_millis(300));
    real.send(&["", "eMQP/1.0", "REPLY", "real-1", r#"{"value": 4}"#, &id]);
    assert_eq!(c.wait(&id, 10), json!({"value": 4}), "the real result, not the forged one");
    assert_eq!(admin(&a.admin, "STATUS")["errors"]["forged_reply"], 1);
}

/// A frontend peer that INFORMs as a scheduler gets no ACK and none of the
/// clients' SCHEDULE orders.
#[test]
fn an_unallowed_scheduler_gets_nothing() {
    let (_r, a) = start_router(&[]);
    let sneaky = Dealer::connect(&a.frontend);
    sneaky.send(&["", "eMQP/1.0", "INFORM", "s-1", "", "scheduler"]);
    assert!(sneaky.recv_skip_heartbeats(1000).is_none(), "no ACK");
    let client = Dealer::connect(&a.frontend);
    client.send(&[
        "",
        "eMQP/1.0",
        "SCHEDULE",
        "sch-1",
        "default",
        "",
        "60",
        r#"["run", {"path": "a", "callable": "b"}]"#,
        "",
    ]);
    assert!(sneaky.recv_skip_heartbeats(1000).is_none(), "no SCHEDULE reaches it");
    assert_eq!(admin(&a.admin, "STATUS")["errors"]["scheduler_refused"], 1);
}

/// Whoever reaches the admin socket: no shutdown, no requeue, no job
/// results; the admin token (written by the router, mode 0600) allows them.
#[test]
fn the_admin_socket_needs_the_token_to_change_or_read_results() {
    let (mut router, a) = start_router(&[]);
    let token_file = a.data_dir.join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only the router's user may read the admin token");
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested", "testjobs", "echo", json!(["private data"]));
    c.wait(&id, 30);
    let stranger = Dealer::connect(&a.admin);
    stranger.send(&["", "eMQP/1.0", "JOB_STATUS", "q-1", &id]);
    let answer = stranger.recv_timeout(HANG).unwrap();
    assert!(!answer[4].contains("private data"), "{answer:?}");
    assert!(answer[4].contains("\"state\":\"done\""), "the state is no secret: {answer:?}");
    stranger.send(&["", "eMQP/1.0", "DISCONNECT", "d-1"]);
    assert!(stranger.recv_timeout(HANG).unwrap()[4].contains("not authorized"));
    stranger.send(&["", "eMQP/1.0", "AUTHENTICATE", "auth-1", "0000"]);
    assert!(stranger.recv_timeout(HANG).unwrap()[4].contains("false"));
    let status = admin(&a.admin, "STATUS");
    assert!(router.child.try_wait().unwrap().is_none(), "still running");
    assert_eq!(
        (status["errors"]["admin_refused"].as_u64(), status["errors"]["admin_auth_failed"].as_u64()),
        (Some(1), Some(1))
    );
    // The real admin.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["--addr", &a.admin, "--json", "--token-file"])
        .arg(&token_file)
        .args(["job", &id])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("private data"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["--addr", &a.admin, "--token-file"])
        .arg(&token_file)
        .arg("shutdown")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    router.wait_exit(Duration::from_secs(20)).expect("shut down by the admin");
}

/// Oversized messages (beyond `max_message_bytes`, 16 MiB) drop their
/// sender's connection before the router holds them: 40 × 20 MB requests
/// leave the router's memory where it was, and it goes on serving.
#[test]
fn oversized_messages_cannot_exhaust_the_router() {
    let (router, a) = start_router(&[]);
    let before = rss_kb(router.pid());
    let big = "x".repeat(20 << 20);
    for i in 0..40 {
        let attacker = Dealer::connect(&a.frontend);
        let id = format!("big-{i}");
        attacker.send(&["", "eMQP/1.0", "REQUEST", &id, "default", "", &big]);
        assert!(attacker.recv_timeout(200).is_none(), "no receipt for an oversized job");
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kb(router.pid());
    println!("router RSS before {} kB, after 40 × 20 MB requests {} kB", before, after);
    assert!(after < before + 100 * 1024, "RSS grew by {} kB", after - before);
    let status = admin(&a.admin, "STATUS");
    assert_eq!(status["accepted"], 0, "none of them was accepted");
    // Still serving.
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("default", "benchjobs", "add", json!([1, 1])), json!({"value": 2}));
}

/// A flood of refused REQUESTs is counted, not stored: it cannot push real
/// jobs out of the job history.
#[test]
fn a_refusal_flood_leaves_job_history_intact() {
    let (_r, a) = start_router(&[("EMQ_JOB_HISTORY", "100"), ("EMQ_REJECT_UNKNOWN_QUEUES", "true")]);
    let _jm = start_jobmanager(&a.backend, "jobs", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("jobs", "reply-requested", "benchjobs", "add", json!([5, 5]));
    c.wait(&id, 30);
    let flood = Dealer::connect(&a.frontend);
    for i in 0..5000 {
        flood.send(&["", "eMQP/1.0", "REQUEST", &format!("flood-{i}"), "nosuchqueue", "", "[]"]);
    }
    let end = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    while refused < 5000 && Instant::now() < end {
        if flood.recv_timeout(1000).is_some_and(|f| f[4].contains("refused")) {
            refused += 1;
        }
    }
    assert_eq!(refused, 5000, "each one answered with a refusal");
    let d = Dealer::connect(&a.frontend);
    d.send(&["", "eMQP/1.0", "JOB_STATUS", "q", &id]);
    let answer = d.recv_timeout(HANG).unwrap();
    assert!(answer[4].contains("\"state\":\"done\""), "the real job is still known: {answer:?}");
    assert_eq!(admin(&a.admin, "STATUS")["errors"]["refused"], 5000);
}

/// A peer that connects under a live client's identity takes nothing over:
/// no handover, so the victim's results still reach the victim, and the
/// impostor gets none.
#[test]
fn an_identity_takeover_gets_nothing() {
    let (_r, a) = start_router(&[]);
    let jm = fake_job_manager(&a.backend, r#"[[10, "default"]]"#, 1);
    let ctx = zmq::Context::new();
    let dealer = |identity: &str| {
        let s = ctx.socket(zmq::DEALER).unwrap();
        s.set_identity(identity.as_bytes()).unwrap();
        s.set_linger(0).unwrap();
        s.connect(&a.frontend).unwrap();
        s
    };
    let victim = dealer("victim-identity");
    let frames = [
        "",
        "eMQP/1.0",
        "REQUEST",
        "job-1",
        "default",
        "reply-requested",
        r#"["run", {"path": "a", "callable": "b"}]"#,
    ];
    victim.send_multipart(frames.iter().map(|f| f.as_bytes()), 0).unwrap();
    let req = jm.recv_skip_heartbeats(HANG).expect("dispatched");
    assert_eq!(req[3], "job-1");
    // The impostor connects under the same identity and says something.
    let impostor = dealer("victim-identity");
    std::thread::sleep(Duration::from_millis(300));
    impostor.send_multipart(["", "eMQP/1.0", "HEARTBEAT", "hb-1", "0"].iter().map(|f| f.as_bytes()), 0).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    jm.send(&["", "eMQP/1.0", "REPLY", "r-1", r#"{"value": "secret"}"#, "job-1"]);
    let mut got_victim = false;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && !got_victim {
        if victim.poll(zmq::POLLIN, 200).unwrap() > 0 {
            let f = victim.recv_multipart(0).unwrap();
            got_victim |= String::from_utf8_lossy(&f[4]).contains("secret");
        }
    }
    assert!(got_victim, "the victim still gets its result");
    if impostor.poll(zmq::POLLIN, 500).unwrap() > 0 {
        let f = impostor.recv_multipart(0).unwrap();
        assert!(!f.iter().any(|x| String::from_utf8_lossy(x).contains("secret")), "the impostor got the result");
    }
}
