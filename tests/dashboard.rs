//! The dashboard you can act on: actions are POSTs that need the admin
//! token and go through the admin socket; job detail shows headers, every
//! attempt with its error and traceback, and the result; the status feed
//! carries the last hour's series, dead letters and per-callable figures.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn post(a: &RouterAddrs, token: Option<&str>, action: &str, target: &str) -> (u16, Value) {
    let (code, body) =
        http_request(&a.http, "POST", "/api/action", token, &json!({"action": action, "target": target}).to_string());
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn dashboard_actions_need_the_token_and_job_detail_shows_every_attempt() {
    let (_router, a) = start_router(&[("EMQ_RETRY_DELAY", "0.1")]);
    let token = std::fs::read_to_string(a.data_dir.join("admin.token")).unwrap();
    let token = token.trim();
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    // A job that fails twice and becomes a dead letter.
    let bad = c.send("default", "reply-requested,retry-count:1", "testjobs", "fail", json!(["disk full"]));
    assert_eq!(c.wait(&bad, 60)["error"]["type"], "ValueError");
    assert_eq!(c.call("default", "testjobs", "add", json!([1, 2]))["value"], 3);

    // Without the token: refused; with a wrong one: refused; nothing changed.
    assert_eq!(post(&a, None, "pause", "default").0, 401);
    assert_eq!(post(&a, Some("wrong"), "pause", "default").0, 403);
    assert_eq!(post(&a, Some(token), "shutdown", "x").0, 400);
    assert!(admin(&a.admin, "STATUS")["paused_queues"].as_array().unwrap().is_empty());

    // Job detail: without the token the state only; with it, headers,
    // both attempts with error and traceback, and the result.
    let (code, body) = http_request(&a.http, "GET", &format!("/api/job/{bad}"), None, "");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, v["state"].as_str()), (200, Some("dead")));
    assert!(v["result"].is_null() && v["result_hidden"].is_string(), "{v}");
    let (_, body) = http_request(&a.http, "GET", &format!("/api/job/{bad}"), Some(token), "");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"], "reply-requested,retry-count:1");
    // What the dead letter runs, and on which job manager by its name.
    assert_eq!(v["job"], json!({"callable": "testjobs.fail", "args": ["disk full"], "kwargs": {}}), "{v}");
    assert!(v["job_manager_name"].as_str().is_some_and(|n| n.contains(':')), "host:pid: {v}");
    let attempts = v["attempt_errors"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{v}");
    for at in attempts {
        assert_eq!(at["type"], "ValueError");
        assert!(at["traceback"].as_str().unwrap().contains("Traceback"), "{at}");
    }
    assert_eq!(v["result"]["error"]["message"], "disk full");

    // Pause / resume.
    let (code, v) = post(&a, Some(token), "pause", "default");
    assert_eq!((code, &v["paused"]), (200, &json!(true)), "{v}");
    assert_eq!(admin(&a.admin, "STATUS")["paused_queues"], json!(["default"]));
    let held = c.send("default", "reply-requested", "testjobs", "add", json!([2, 2]));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!c.results.contains_key(&held));
    assert_eq!(post(&a, Some(token), "resume", "default").0, 200);
    assert_eq!(c.wait(&held, 30)["value"], 4);

    // Dead letters: retry runs it again (it fails again: a dead letter again), delete forgets it.
    assert_eq!(post(&a, Some(token), "requeue", &bad).0, 200);
    eventually(Duration::from_secs(30), || {
        let d = admin(&a.admin, "ROUTER_DEAD_LETTERS");
        (d["dead_letters"].as_array()?.iter().any(|x| x["msgid"] == bad.as_str())
            && http_json(&a, &bad, token)["attempt_errors"].as_array()?.len() == 4)
            .then_some(())
    });
    let (code, v) = post(&a, Some(token), "delete_dead", &bad);
    assert_eq!(code, 200, "{v}");
    assert_eq!(admin(&a.admin, "ROUTER_DEAD_LETTERS")["dead_letters"].as_array().unwrap().len(), 0);
    assert_eq!(post(&a, Some(token), "delete_dead", &bad).0, 404, "already gone: nothing by that id");

    // Cancel from the page.
    let long = c.send("default", "reply-requested", "testjobs", "sleep", json!([300]));
    eventually(Duration::from_secs(30), || (http_json(&a, &long, token)["state"] == "dispatched").then_some(()));
    assert_eq!(post(&a, Some(token), "cancel", &long).0, 200);
    assert_eq!(c.wait(&long, 30)["error"]["type"], "cancelled");

    // The status feed: series, dead letters, per-callable figures.
    let status = eventually(Duration::from_secs(20), || {
        let (_, body) = http_request(&a.http, "GET", "/api/status", None, "");
        let v: Value = serde_json::from_str(&body).ok()?;
        let calls = v["workers"]["connected_workers"].as_object()?.values().next()?["health"]["callables"].clone();
        (calls.as_array()?.iter().any(|c| c["name"] == "testjobs.fail" && c["failed"] == 4)).then_some(v)
    });
    assert!(!status["series"]["t"].as_array().unwrap().is_empty(), "{}", status["series"]);
    let page = http_get(&a.http, "/").1;
    for want in ["/api/action", "Authorization", "confirm(", "Callables", "Dead letters", "<svg"] {
        assert!(page.contains(want), "the page has {want}");
    }
}

fn http_json(a: &RouterAddrs, msgid: &str, token: &str) -> Value {
    let (_, body) = http_request(&a.http, "GET", &format!("/api/job/{msgid}"), Some(token), "");
    serde_json::from_str(&body).unwrap_or(Value::Null)
}
