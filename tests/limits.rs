//! Limits per key with the real binaries: a router with `limits`, our job
//! manager running Python jobs that log when they ran. What is asserted is
//! what the jobs saw (how many ran at once) and what the router says
//! (dispatch times, slots in use) — never how long anything took.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const PATHS: &str = "testjobs,limitjobs";

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("emq-limits-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `(tag, start, end)` of each `span` run in the log.
fn spans(log: &Path) -> Vec<(String, f64, f64)> {
    let mut starts: std::collections::HashMap<String, f64> = Default::default();
    let mut out = Vec::new();
    for l in read_lines(log) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let [kind, tag, t] = w[..] else { continue };
        let t: f64 = t.parse().unwrap();
        match kind {
            "start" => {
                starts.insert(tag.to_owned(), t);
            }
            "end" => out.push((tag.to_owned(), starts.remove(tag).expect("start before end"), t)),
            _ => {}
        }
    }
    out
}

/// The most runs of `spans` matching `pick` at once.
fn most_at_once(spans: &[(String, f64, f64)], pick: impl Fn(&str) -> bool) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for (tag, s, e) in spans.iter().filter(|(t, _, _)| pick(t)) {
        let _ = tag;
        edges.push((*s, 1));
        edges.push((*e, -1));
    }
    // An end and a start at the same instant: the end first.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut n, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        n += d;
        most = most.max(n);
    }
    most as usize
}

fn limits_status(a: &RouterAddrs) -> Value {
    admin(&a.admin, "STATUS")["limits"].clone()
}

fn span_job(c: &TestClient, headers: &str, log: &Path, tag: &str, secs: f64) -> String {
    c.send("default", headers, "limitjobs", "span", json!([log.to_str().unwrap(), tag, secs]))
}

#[test]
fn concurrency_partitions_and_rate_are_held_while_other_jobs_run_beside() {
    let (_router, a) =
        start_router(&[("EMQ_LIMITS", "k=concurrency:2; r=rate:5/1s"), ("EMQ_HEARTBEAT_INTERVAL", "0.5")]);
    let _jm = start_jobmanager(&a.backend, "10:default", 4, &[("EMQ_ALLOWED_PATHS", PATHS)]);
    wait_slots(&a.admin, 4);
    let dir = TempDir::new();
    let log = dir.path().join("runs.log");
    let mut c = TestClient::connect(&a.frontend);

    // 20 jobs of k (two at once) sent first, then 8 without a limit.
    let mut ids: Vec<String> =
        (0..20).map(|i| span_job(&c, "reply-requested,limit:k", &log, &format!("k{i}"), 0.2)).collect();
    ids.extend((0..8).map(|i| span_job(&c, "reply-requested", &log, &format!("p{i}"), 0.2)));
    for id in &ids {
        let v = c.wait(id, 120);
        assert!(v.get("error").is_none(), "{v}");
    }
    let runs = spans(&log);
    assert_eq!(runs.len(), 28);
    let k_at_once = most_at_once(&runs, |t| t.starts_with('k'));
    assert_eq!(k_at_once, 2, "k ran {k_at_once} at once: {runs:?}");
    // The jobs without the limit did not wait behind k's backlog: all of
    // them were done before the last k job started.
    let last_plain_end = runs.iter().filter(|r| r.0.starts_with('p')).map(|r| r.2).fold(0.0, f64::max);
    let last_k_start = runs.iter().filter(|r| r.0.starts_with('k')).map(|r| r.1).fold(0.0, f64::max);
    assert!(last_plain_end < last_k_start, "plain jobs waited behind k: {runs:?}");
    let s = limits_status(&a);
    assert_eq!((s["k"]["running"].as_u64(), s["k"]["waiting"].as_u64()), (Some(0), Some(0)), "{s}");

    // Partitions count apart, side by side.
    std::fs::remove_file(&log).unwrap();
    let ids: Vec<String> = (0..8)
        .flat_map(|i| {
            [
                span_job(&c, "reply-requested,limit:k/x", &log, &format!("x{i}"), 0.3),
                span_job(&c, "reply-requested,limit:k/y", &log, &format!("y{i}"), 0.3),
            ]
        })
        .collect();
    for id in &ids {
        c.wait(id, 120);
    }
    let runs = spans(&log);
    assert_eq!(most_at_once(&runs, |t| t.starts_with('x')), 2, "{runs:?}");
    assert_eq!(most_at_once(&runs, |t| t.starts_with('y')), 2, "{runs:?}");
    let side_by_side = runs.iter().any(|(tx, s1, e1)| {
        tx.starts_with('x') && runs.iter().any(|(ty, s2, e2)| ty.starts_with('y') && s1 < e2 && s2 < e1)
    });
    assert!(side_by_side, "x and y never ran at the same time: {runs:?}");

    // Rate 5/1s: never more than five dispatches in any second (the
    // router's own dispatch times).
    let ids: Vec<String> =
        (0..12).map(|i| c.send("default", "reply-requested,limit:r", "testjobs", "add", json!([i, 1]))).collect();
    for id in &ids {
        c.wait(id, 120);
    }
    let mut at: Vec<f64> = ids.iter().map(|id| admin_job(&a, id)["dispatched"].as_f64().unwrap()).collect();
    at.sort_by(f64::total_cmp);
    for (i, t) in at.iter().enumerate() {
        let in_window = at[i..].iter().filter(|u| **u < t + 1.0).count();
        assert!(in_window <= 5, "{in_window} dispatches within a second of {t}: {at:?}");
    }
    assert!(at[11] - at[0] >= 2.0, "twelve jobs need three windows: {at:?}");
    let s = limits_status(&a);
    assert_eq!(s["r"]["rate"], "5/1s");
    // Metrics: one series per limit (bounded labels), no partition label.
    let (code, text) = eventually(Duration::from_secs(10), || {
        let (code, text) = http_get(&a.http, "/metrics");
        text.contains("emq_limit_running{limit=\"k\"}").then_some((code, text))
    });
    assert_eq!(code, 200);
    assert!(!text.contains("partition="), "partitions are never labels");
    let (_, body) = http_get(&a.http, "/api/status");
    assert!(body.contains("\"limits\""), "the dashboard's data has the limits");
}

#[test]
fn no_slot_leaks_through_worker_kills_a_lost_job_manager_and_a_router_restart() {
    let env = [("EMQ_LIMITS", "k=concurrency:2"), ("EMQ_HEARTBEAT_INTERVAL", "0.3"), ("EMQ_HEARTBEAT_TIMEOUT", "1.5")];
    let (router, a) = start_router(&env);
    let mut router = Some(router);
    let jm_env = [("EMQ_ALLOWED_PATHS", PATHS), ("EMQ_HEARTBEAT_TIMEOUT", "1.5")];
    let jm1 = start_jobmanager(&a.backend, "10:default", 2, &jm_env);
    wait_slots(&a.admin, 2);
    let dir = TempDir::new();
    let log = dir.path().join("runs.log");
    let mut c = TestClient::connect(&a.frontend);
    let running = |a: &RouterAddrs| limits_status(a)["k"]["running"].as_u64().unwrap_or(0);

    // 1. Jobs that kill their own worker: each end frees its slot.
    let ids: Vec<String> =
        (0..4).map(|_| c.send("default", "reply-requested,limit:k", "limitjobs", "die", json!([]))).collect();
    for id in &ids {
        let v = c.wait(id, 60);
        assert!(v["error"].is_object(), "{v}");
    }
    assert_eq!(running(&a), 0);

    // 2. A job manager SIGKILLed with two k jobs running (its workers die
    // with it): they run again at the next job manager, within the limit.
    let ids: Vec<String> =
        (0..2).map(|i| span_job(&c, "reply-requested,guarantee,limit:k", &log, &format!("g{i}"), 1.5)).collect();
    eventually(Duration::from_secs(30), || (read_lines(&log).len() >= 2).then_some(()));
    jm1.signal(nix::sys::signal::Signal::SIGKILL);
    drop(jm1);
    let jm2 = start_jobmanager(&a.backend, "10:default", 3, &jm_env);
    for id in &ids {
        c.wait(id, 120);
    }
    eventually(Duration::from_secs(30), || (running(&a) == 0).then_some(()));

    // 3. The router SIGKILLed with two k jobs running and two waiting:
    // after its restart the running ones still count (the job manager
    // re-attaches and reports them), and no more than two run at once.
    let ids: Vec<String> =
        (0..4).map(|i| span_job(&c, "reply-requested,guarantee,limit:k", &log, &format!("r{i}"), 1.5)).collect();
    eventually(Duration::from_secs(30), || {
        (read_lines(&log).iter().filter(|l| l.starts_with("start r")).count() >= 2).then_some(())
    });
    let mut old = router.take().unwrap();
    old.signal(nix::sys::signal::Signal::SIGKILL);
    old.wait_exit(Duration::from_secs(10));
    drop(old);
    let mut restarted = None;
    for _ in 0..20 {
        restarted = start_router_at(&a, &env);
        if restarted.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _router = restarted.expect("router restarts on its ports");
    for id in &ids {
        eventually(Duration::from_secs(120), || (admin_job(&a, id)["state"] == "done").then_some(()));
    }
    let runs = spans(&log);
    assert_eq!(most_at_once(&runs, |t| t.starts_with('r')), 2, "{runs:?}");
    assert!(most_at_once(&runs, |t| t.starts_with('g')) <= 2, "{runs:?}");
    eventually(Duration::from_secs(30), || (running(&a) == 0).then_some(()));

    // 4. The limit's full concurrency is usable afterwards: two jobs that
    // each wait until two run at once both see it.
    let meet = TempDir::new();
    let mut c = TestClient::connect(&a.frontend);
    let ids: Vec<String> = (0..2)
        .map(|i| {
            c.send(
                "default",
                "reply-requested,limit:k",
                "limitjobs",
                "rendezvous",
                json!([meet.path().to_str().unwrap(), format!("m{i}"), 2, 30]),
            )
        })
        .collect();
    for id in &ids {
        assert_eq!(c.wait(id, 60)["value"], true, "both slots of k are free again");
    }
    drop(jm2);
}

#[test]
fn an_unknown_limit_is_refused_at_send_with_the_reason() {
    let (_router, a) = start_router(&[("EMQ_LIMITS", "api=concurrency:1")]);
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested,limit:nope/x", "testjobs", "add", json!([1, 2]));
    let v = c.wait(&id, 30);
    let why = v.to_string();
    assert!(why.contains("unknown limit") && why.contains("api"), "{why}");
    // emq-send says so too, and emq-cli limits lists the limit.
    let (ok, out) = emq_cli_as_admin(&a, &["limits"]);
    assert!(ok && out.contains("api") && out.contains("CONCURRENCY"), "{out}");
}
