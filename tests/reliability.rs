//! Reliability end to end: nothing accepted is lost silently — guarantee
//! survives a SIGKILLed job manager, retries, dead letters, refusals.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("emq-rel-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `emq-cli` against the router at `a`, with its admin token.
fn cli(a: &RouterAddrs, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["--addr", &a.admin, "--token-file"])
        .arg(a.data_dir.join("admin.token"))
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn guarantee_job_of_a_sigkilled_job_manager_runs_on_another() {
    let (_r, a) = start_router(&[("EMQ_HEARTBEAT_INTERVAL", "0.2"), ("EMQ_HEARTBEAT_TIMEOUT", "1")]);
    let mut first = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let dir = tmp("guarantee");
    let marks = dir.join("ran-on.txt");
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested,guarantee", "testjobs", "ppid_then_sleep", json!([marks, 2]));
    eventually(Duration::from_secs(30), || (read_lines(&marks).len() == 1).then_some(()));
    assert_eq!(read_lines(&marks)[0].parse::<i32>().unwrap(), first.pid());
    let second = start_jobmanager(&a.backend, "default", 1, &[]);
    // The first's three free slots beside its running job, and the second's four.
    eventually(Duration::from_secs(60), || (router_free_slots(&a.admin) >= 2 * SLOTS_PER_WORKER - 1).then_some(()));
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).expect("killed");
    let v = c.wait(&id, 60);
    assert_eq!(v, json!({"value": second.pid()}), "ran to completion on the other job manager");
    let lines = read_lines(&marks);
    assert_eq!(lines, vec![first.pid().to_string(), second.pid().to_string()]);
    let (_, out) = cli(&a, &["--json", "job", &id]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((s["state"].as_str(), s["attempts"].as_u64()), (Some("done"), Some(2)));
}

#[test]
fn retries_then_success_then_dead_letters_and_requeue() {
    let (_r, a) = start_router(&[("EMQ_RETRY_DELAY", "0.2")]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let dir = tmp("retry");
    let mut c = TestClient::connect(&a.frontend);

    // Fails twice, then succeeds: one success reply, 3 attempts recorded,
    // and the job saw its attempt number.
    let counter = dir.join("flaky.count");
    let id = c.send("default", "reply-requested,retry-count:2", "testjobs", "flaky", json!([counter, 2]));
    let v = c.wait(&id, 60);
    assert_eq!(v["value"]["calls"], 3);
    assert_eq!(v["value"]["attempt"], 3, "emq.attempt in the job");
    assert_eq!(v["value"]["msgid"], id.as_str());
    assert!(c.dealer.recv_timeout(300).filter(|f| f.len() == 6).is_none(), "only the final outcome is sent");
    let (_, out) = cli(&a, &["--json", "job", &id]);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((s["state"].as_str(), s["attempts"].as_u64()), (Some("done"), Some(3)));
    assert_eq!(s["attempt_errors"].as_array().unwrap().len(), 2);
    let (_, human) = cli(&a, &["job", &id]);
    assert!(human.contains("flaky failure 1"), "{human}");

    // Always fails: after 1 + 1 attempts it is a dead letter.
    let counter = dir.join("hopeless.count");
    let id = c.send("default", "reply-requested,retry-count:1", "testjobs", "flaky", json!([counter, 100]));
    let v = c.wait(&id, 60);
    assert_eq!(v["error"]["type"], "RuntimeError");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "2");
    let (code, out) = cli(&a, &["--json", "dead"]);
    assert_eq!(code, 0);
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["dead_letters"][0]["msgid"], id.as_str());
    assert_eq!(d["dead_letters"][0]["attempts"], 2);
    let (_, table) = cli(&a, &["dead"]);
    assert!(table.contains(&id) && table.contains("RuntimeError"), "{table}");
    // Requeued, it runs again (twice more: its retries start afresh).
    let (code, out) = cli(&a, &["requeue", &id]);
    assert_eq!((code, out.trim()), (0, format!("requeued {id}").as_str()));
    eventually(Duration::from_secs(30), || (std::fs::read_to_string(&counter).ok()? == "4").then_some(()));
    let status = admin(&a.admin, "STATUS");
    assert!(status["activity"]["retried"].as_u64().unwrap() >= 3, "{status}");
    assert_eq!(status["dead_letters"], 1);
}

#[test]
fn full_buffer_is_an_explicit_refusal() {
    let (_r, a) = start_router(&[("EMQ_HWM", "2")]);
    let mut c = TestClient::connect(&a.frontend);
    let ids: Vec<String> = (0..3).map(|i| c.send("default", "", "benchjobs", "add", json!([i, i]))).collect();
    let v = c.wait(&ids[2], 30);
    assert_eq!(v["error"]["type"], "refused");
    assert!(v["error"]["message"].as_str().unwrap().contains("full"), "{v}");
    let s = admin(&a.admin, "STATUS");
    assert_eq!(s["waiting_messages_by_queue"]["default"], 2);
    assert_eq!(s["errors"]["refused"], 1);
}
