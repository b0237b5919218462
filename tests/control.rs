//! Control for operators, end to end: `emq-cli cancel` of a running job
//! (its worker is stopped, the job ends `cancelled`, the client hears), of a
//! buffered and a delayed job; `purge`; `pause` / `resume`, kept across a
//! restart.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[test]
fn cancel_stops_a_running_job_and_the_worker_is_replaced() {
    let (_router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let first = c.call("default", "testjobs", "pid", json!([]));
    let before = first["value"]["pid"].as_i64().unwrap_or_else(|| panic!("{first}"));
    let long = c.send("default", "reply-requested,guarantee,retry-count:3", "testjobs", "sleep", json!([300]));
    eventually(Duration::from_secs(30), || (admin_job(&a, &long)["state"] == "dispatched").then_some(()));
    std::thread::sleep(Duration::from_millis(300)); // started in the worker
    let (ok, out) = emq_cli_as_admin(&a, &["cancel", &long]);
    assert!(ok && out.contains("cancelling"), "{out}");
    let r = c.wait(&long, 30);
    assert_eq!(r["error"]["type"], "cancelled", "{r}");
    let st = admin_job(&a, &long);
    assert_eq!(st["state"], "cancelled", "{st}");
    assert_eq!(st["attempts"], 1, "no retry after a cancel: {st}");
    // The worker was stopped and replaced: the next job runs in a new process.
    let after = c.call("default", "testjobs", "pid", json!([]))["value"]["pid"].as_i64().unwrap();
    assert_ne!(before, after);
    let dead = admin(&a.admin, "ROUTER_DEAD_LETTERS");
    assert_eq!(dead["dead_letters"].as_array().map_or(0, |d| d.len()), 0, "not a dead letter");
}

#[test]
fn cancel_purge_pause_and_resume_of_waiting_jobs() {
    let (router, addrs) = start_router(&[]);
    let a = &addrs;
    let mut c = TestClient::connect(&a.frontend);
    // No job manager: jobs wait.
    let b1 = c.send("default", "reply-requested", "testjobs", "add", json!([1, 1]));
    let b2 = c.send("default", "reply-requested", "testjobs", "add", json!([2, 2]));
    let d1 = c.send("default", "reply-requested,delay:600", "testjobs", "add", json!([3, 3]));
    eventually(Duration::from_secs(10), || (admin_job(a, &d1)["state"] == "delayed").then_some(()));
    let (ok, out) = emq_cli_as_admin(a, &["cancel", &b1]);
    assert!(ok && out.contains("cancelled") && out.contains("buffered"), "{out}");
    assert_eq!(c.wait(&b1, 10)["error"]["type"], "cancelled");
    let (ok, out) = emq_cli_as_admin(a, &["cancel", &d1]);
    assert!(ok && out.contains("delayed"), "{out}");
    assert_eq!(c.wait(&d1, 10)["error"]["type"], "cancelled");
    // Cancelling needs the token.
    let no_token = Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["-a", &a.admin, "--token-file", "/nonexistent", "cancel", &b2])
        .output()
        .unwrap();
    assert!(!no_token.status.success());
    // Purge takes what is left.
    let (ok, out) = emq_cli_as_admin(a, &["purge", "default"]);
    assert!(ok && out.contains("purged 1 job(s)"), "{out}");
    assert_eq!(c.wait(&b2, 10)["error"]["type"], "cancelled");
    // Pause: accepted, kept, not run, also across a restart.
    let (ok, out) = emq_cli_as_admin(a, &["pause", "default"]);
    assert!(ok && out.contains("paused default"), "{out}");
    let held = c.send("default", "reply-requested", "testjobs", "add", json!([20, 22]));
    eventually(Duration::from_secs(10), || (admin_job(a, &held)["state"] == "queued").then_some(()));
    let mut router = router;
    router.signal(nix::sys::signal::Signal::SIGTERM);
    router.wait_exit(Duration::from_secs(30)).expect("router stops");
    let _router = start_router_at(a, &[]).expect("router restarts");
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let status = admin(&a.admin, "STATUS");
    assert_eq!(status["paused_queues"], json!(["default"]), "{status}");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(admin_job(a, &held)["state"], "queued", "paused: not handed out");
    let (ok, out) = emq_cli_as_admin(a, &["resume", "default"]);
    assert!(ok, "{out}");
    eventually(Duration::from_secs(30), || (admin_job(a, &held)["state"] == "done").then_some(()));
    assert_eq!(admin_job(a, &held)["result"]["value"], 42);
}
