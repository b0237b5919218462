//! Slow is not dead, end to end: a job manager paused with SIGSTOP past the
//! router's heartbeat timeout, with 20 jobs in hand (half `guarantee`), then
//! SIGCONT. Every client gets exactly one result, the job status tells the
//! truth (nothing that finished is marked lost; a job that ran twice says
//! so), and the job manager goes on serving.

mod common;
use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[test]
fn a_paused_job_manager_comes_back_and_every_client_gets_exactly_one_true_result() {
    let (_router, a) = start_router(&[]);
    let jm = start_jobmanager(&a.backend, "default", 2, &[("EMQ_NAME", "paused-jm")]);
    wait_slots(&a.admin, 2);
    let work = std::env::temp_dir().join(format!("emq-slow-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    let lines = work.join("runs.txt");
    let client = Dealer::connect(&a.frontend);
    let mut sent: Vec<(String, bool)> = Vec::new();
    for i in 0..20 {
        let guarantee = i % 2 == 0;
        let msgid = uuid::Uuid::new_v4().to_string();
        let headers = if guarantee { "reply-requested,guarantee" } else { "reply-requested" };
        let payload = json!(["run", {"path": "testjobs", "callable": "sleep_then_append",
            "args": [lines, msgid, 0.3]}]);
        client.send(&["", "eMQP/1.0", "REQUEST", &msgid, "default", headers, &payload.to_string()]);
        sent.push((msgid, guarantee));
    }
    // Let the job manager take some in hand, then freeze it past the
    // router's heartbeat timeout (5 s).
    eventually(Duration::from_secs(30), || {
        let s = admin(&a.admin, "STATUS");
        (s["inflight_messages_by_queue"]["default"].as_u64().unwrap_or(0) >= 4).then_some(())
    });
    jm.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_secs(8));
    let st = admin(&a.admin, "STATUS");
    assert!(st["errors"]["heartbeat_timeouts"].as_u64().unwrap_or(0) >= 1, "the router suspected it: {st}");
    jm.signal(Signal::SIGCONT);

    // Collect every result REPLY per msgid until all 20 are in, then a
    // little longer to catch a second one.
    let mut results: HashMap<String, Vec<Value>> = HashMap::new();
    let end = Instant::now() + Duration::from_secs(120);
    let mut settle_until: Option<Instant> = None;
    while Instant::now() < end && settle_until.is_none_or(|t| Instant::now() < t) {
        if let Some(f) = client.recv_timeout(200) {
            if f.len() == 6 && f[2] == "REPLY" {
                results.entry(f[5].clone()).or_default().push(serde_json::from_str(&f[4]).unwrap());
            }
        }
        if settle_until.is_none() && results.len() == sent.len() {
            settle_until = Some(Instant::now() + Duration::from_secs(3));
        }
    }
    assert_eq!(results.len(), 20, "every job has a result");
    let runs = read_lines(&lines);
    for (msgid, guarantee) in &sent {
        let got = &results[msgid];
        assert_eq!(got.len(), 1, "exactly one result for {msgid}: {got:?}");
        assert!(got[0].get("error").is_none(), "{msgid} (guarantee {guarantee}) succeeded: {:?}", got[0]);
        let status = admin_job(&a, msgid);
        assert_eq!(status["state"], "done", "job status tells the truth: {status}");
        // How often it really ran, as its status says.
        let ran = runs.iter().filter(|l| *l == msgid).count() as u64;
        let dup = status["duplicate_runs"].as_u64().unwrap_or(0);
        assert!(ran >= 1 && ran <= 1 + dup + u64::from(*guarantee), "{msgid}: ran {ran}, duplicate_runs {dup}");
    }
    let st = admin(&a.admin, "STATUS");
    println!("after the pause: {}", st["errors"]);
    // The job manager is not confused: it serves new jobs.
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("default", "testjobs", "add", json!([2, 3]))["value"], 5);
}
