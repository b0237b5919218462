//! Issue 26 with the real binaries: a job's `extend()`, `progress()` and
//! `checkpoint()` (tests/pyjobs/progressjobs.py) through our job manager
//! and router, and `emq-send --limit`. What is asserted is how jobs ended
//! and what the router kept — wall-clock limits only stop hangs (the one
//! time compared is a lower bound: a job killed no sooner than its
//! extended timeout).

mod common;

use common::*;
use emq_client::{Client, JobOutcome, Options};
use serde_json::{json, Map, Value};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A router (with `router_env`) and one of our job managers (one worker,
/// `jm_env`) allowed to run the test jobs.
fn stack(router_env: &[(&str, &str)], jm_env: &[(&str, &str)]) -> (ChildGuard, ChildGuard, RouterAddrs) {
    let (r, a) = start_router(router_env);
    let mut env = vec![("EMQ_ALLOWED_PATHS", "progressjobs,benchjobs")];
    env.extend_from_slice(jm_env);
    let jm = start_jobmanager(&a.backend, "default", 1, &env);
    wait_slots(&a.admin, 1);
    (r, jm, a)
}

fn send(c: &mut Client, callable: &str, args: Value, options: &Options) -> String {
    let Value::Array(args) = args else { panic!("args must be a list") };
    c.defer_job("default", callable, args, Map::new(), options).unwrap()
}

/// A temporary file path, removed on drop.
struct TempPath(std::path::PathBuf);

impl TempPath {
    fn new() -> TempPath {
        TempPath(std::env::temp_dir().join(format!("emq-progress-{}", uuid::Uuid::new_v4())))
    }
    fn as_str(&self) -> &str {
        self.0.to_str().unwrap()
    }
    fn unix_time(&self) -> f64 {
        std::fs::read_to_string(&self.0).unwrap().trim().parse().unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_job_that_keeps_extending_runs_past_its_timeout() {
    let (_r, _jm, a) = stack(&[], &[]);
    let mut c = Client::connect(&a.frontend).unwrap();
    // timeout 2 s; extends by 2 s every second for 5 s.
    let id = send(
        &mut c,
        "progressjobs.extend_while",
        json!([5, 1, 2]),
        &Options { timeout: Some(2), ..Default::default() },
    );
    match c.wait(&id, deadline(60)) {
        JobOutcome::Value(v) => assert!(v.as_f64().unwrap() >= 5.0, "it ran its 5 s: {v}"),
        other => panic!("the job should succeed: {other:?}"),
    }
}

#[test]
fn a_job_that_stops_extending_is_killed_when_its_extended_timeout_runs_out() {
    let (_r, _jm, a) = stack(&[], &[]);
    let mut c = Client::connect(&a.frontend).unwrap();
    let last = TempPath::new();
    // timeout 2 s; two extends of 2 s a second apart, then it sleeps 600 s.
    let opts = Options { timeout: Some(2), ..Default::default() };
    let id = send(&mut c, "progressjobs.extend_then_stop", json!([2, 1, 2, last.as_str()]), &opts);
    let outcome = c.wait(&id, deadline(60));
    let ended = unix_now();
    let JobOutcome::Timeout(e) = outcome else { panic!("the job should end as a timeout: {outcome:?}") };
    assert!(e.message.contains("extended"), "{}", e.message);
    // Killed no sooner than 2 s after its last extend (which the job made
    // just before writing the time).
    let after_last = ended - last.unix_time();
    assert!(after_last >= 1.8, "killed {after_last:.3} s after its last extend(2)");
}

#[test]
fn max_runtime_kills_a_job_that_extends_for_ever() {
    let (_r, _jm, a) = stack(&[], &[("EMQ_MAX_RUNTIME", "3")]);
    let mut c = Client::connect(&a.frontend).unwrap();
    let start = TempPath::new();
    let opts = Options { timeout: Some(2), ..Default::default() };
    let id = send(&mut c, "progressjobs.extend_forever", json!([0.5, 2, start.as_str()]), &opts);
    // It would never end by itself: the hang guard is what "well before"
    // means here.
    let outcome = c.wait(&id, deadline(60));
    let JobOutcome::Timeout(e) = outcome else { panic!("the job should end as a timeout: {outcome:?}") };
    assert!(e.message.contains("max_runtime"), "{}", e.message);
    assert!(start.unix_time() > 0.0, "it ran");
}

#[test]
fn progress_shows_in_job_status_while_the_job_runs_and_after() {
    let (_r, _jm, a) = stack(&[], &[]);
    let mut c = Client::connect(&a.frontend).unwrap();
    let n = 8;
    let id = send(&mut c, "progressjobs.count_up", json!([n, 0.4]), &Options::default());
    let mut seen: Vec<f64> = Vec::new();
    let end = deadline(60);
    loop {
        assert!(Instant::now() < end, "the job never ended");
        let s = c.job_status(&id, deadline(10)).unwrap();
        let state = s["state"].as_str().unwrap_or_default().to_owned();
        if matches!(state.as_str(), "done" | "failed" | "dead" | "lost" | "cancelled") {
            break;
        }
        if let Some(done) = s["progress"]["done"].as_f64() {
            assert_eq!(s["progress"]["total"].as_f64(), Some(n as f64), "{s}");
            if seen.last() != Some(&done) {
                seen.push(done);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only goes up: {seen:?}");
    assert!(seen.len() >= 2, "increasing values seen while it ran: {seen:?}");
    assert_eq!(c.wait(&id, deadline(60)), JobOutcome::Value(json!(n)));
    let s = c.job_status(&id, deadline(10)).unwrap();
    let p = &s["progress"];
    assert_eq!(
        (p["done"].as_f64(), p["total"].as_f64()),
        (Some(n as f64), Some(n as f64)),
        "the last value is kept: {s}"
    );
    assert_eq!(p["message"], format!("step {n}"));
    assert!(p["at"].as_f64().is_some_and(|t| t > 1.0e9), "{s}");
}

#[test]
fn a_progress_storm_costs_little_and_its_last_value_is_kept() {
    let (_r, _jm, a) = stack(&[], &[]);
    let mut c = Client::connect(&a.frontend).unwrap();
    let n = 100_000;
    let id = send(&mut c, "progressjobs.progress_storm", json!([n]), &Options::default());
    assert_eq!(c.wait(&id, deadline(120)), JobOutcome::Value(json!(n)));
    let s = c.job_status(&id, deadline(10)).unwrap();
    assert_eq!(s["progress"]["done"].as_f64(), Some(n as f64), "the last one goes before the result: {s}");
}

#[test]
fn a_retried_attempt_reads_the_checkpoint_of_the_failed_one() {
    let (_r, _jm, a) = stack(&[("EMQ_RETRY_DELAY", "0.1")], &[]);
    let mut c = Client::connect(&a.frontend).unwrap();
    let opts = Options { retry_count: Some(1), ..Default::default() };
    let id = send(&mut c, "progressjobs.checkpoint_then_fail", json!([7]), &opts);
    assert_eq!(c.wait(&id, deadline(60)), JobOutcome::Value(json!({"step": 7})), "the last checkpoint of attempt 1");
    let s = c.job_status(&id, deadline(10)).unwrap();
    assert_eq!(s["attempts"], 2, "{s}");
}

#[test]
fn bad_arguments_raise_in_the_job() {
    let (_r, _jm, a) = stack(&[], &[]);
    let mut c = Client::connect(&a.frontend).unwrap();
    let id = send(&mut c, "progressjobs.bad_calls", json!([]), &Options::default());
    let JobOutcome::Value(v) = c.wait(&id, deadline(60)) else { panic!("bad_calls failed") };
    assert_eq!(v.as_array().map(Vec::len), Some(8), "each bad call raised its error: {v}");
}

#[test]
fn emq_send_limit_puts_the_header_and_an_unknown_limit_is_refused() {
    let (_r, _jm, a) = stack(&[("EMQ_LIMITS", "api=concurrency:1")], &[]);
    let emq_send = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_emq-send")).args(["--addr", &a.frontend]).args(args).output().unwrap()
    };
    let ok = emq_send(&["--wait", "--limit", "api/customer-1", "benchjobs.add", "2", "3"]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), r#"{"value":5}"#);
    let refused = emq_send(&["--wait", "--limit", "nope", "benchjobs.add", "2", "3"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown limit"), "{refused:?}");
    let bad = emq_send(&["--limit", "a,b", "benchjobs.add", "2", "3"]);
    assert_eq!(bad.status.code(), Some(2), "a malformed limit is a usage error: {bad:?}");
}
