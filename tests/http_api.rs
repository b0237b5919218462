//! The HTTP API v1 and the event stream (docs/http.md), against the real
//! router and job manager on loopback: submit / status / result / cancel,
//! 404 / 401 / 403, Idempotency-Key (same job, 422, 409, after a restart),
//! a reader that resumes across a router SIGKILL, a pruned offset's gap,
//! server-sent events with Last-Event-ID, command jobs (`"command"`
//! instead of `"callable"`).

mod common;

use common::*;
use emq_client::{Client, JobOutcome, Options};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const JM_ENV: [(&str, &str); 0] = [];

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> (u16, HashMap<String, String>, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let code = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())))
}

fn admin_token(a: &RouterAddrs) -> String {
    std::fs::read_to_string(a.data_dir.join("admin.token")).unwrap().trim().to_owned()
}

fn client_token(a: &RouterAddrs, name: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .arg("--data-dir")
        .arg(&a.data_dir)
        .args(["token", "create", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn submit(a: &RouterAddrs, token: &str, body: Value) -> String {
    let (code, headers, v) = http(&a.http, "POST", "/v1/jobs", Some(token), &[], &body.to_string());
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(headers.get("location").map(String::as_str), Some(format!("/v1/jobs/{id}").as_str()));
    id
}

fn result(a: &RouterAddrs, token: &str, id: &str) -> Value {
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{id}/result?wait=30"), Some(token), &[], "");
    assert_eq!(code, 200, "{v}");
    v
}

#[test]
fn jobs_over_http_submit_status_result_cancel_and_who_may_see_them() {
    let (_router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &JM_ENV);
    wait_slots(&a.admin, 2);
    let admin = admin_token(&a);
    let alice = client_token(&a, "alice");
    let bob = client_token(&a, "bob");

    // Submit and read back.
    let id = submit(&a, &alice, json!({"callable": "testjobs.add", "args": [2, 3]}));
    assert_eq!(result(&a, &alice, &id), json!({"id": id, "state": "done", "result": 5}));
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{id}"), Some(&alice), &[], "");
    assert_eq!((code, v["state"].as_str(), v["id"].as_str()), (200, Some("done"), Some(id.as_str())));
    // A failure is a 200 with the error object once final.
    let failing = submit(&a, &alice, json!({"callable": "testjobs.fail", "args": ["boom"]}));
    let v = result(&a, &alice, &failing);
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("boom"), "{v}");
    // While not final: 202.
    let slow = submit(&a, &alice, json!({"callable": "testjobs.sleep", "args": [30]}));
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{slow}/result?wait=0.2"), Some(&alice), &[], "");
    assert_eq!(code, 202, "{v}");
    assert_ne!(v["state"], "done");
    // Another client's job does not exist for bob; the admin sees it.
    let (code, _, _) = http(&a.http, "GET", &format!("/v1/jobs/{id}"), Some(&bob), &[], "");
    assert_eq!(code, 404);
    let (code, _, _) = http(&a.http, "POST", &format!("/v1/jobs/{slow}/cancel"), Some(&bob), &[], "");
    assert_eq!(code, 404, "bob cannot cancel alice's job");
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{id}"), Some(&admin), &[], "");
    assert_eq!((code, v["state"].as_str()), (200, Some("done")));
    // Cancel by its owner.
    let (code, _, v) = http(&a.http, "POST", &format!("/v1/jobs/{slow}/cancel"), Some(&alice), &[], "");
    assert_eq!((code, v["cancelled"].as_bool()), (200, Some(true)), "{v}");
    let v = result(&a, &alice, &slow);
    assert_eq!(v["state"], "cancelled", "{v}");
    let (code, _, _) = http(&a.http, "POST", &format!("/v1/jobs/{id}/cancel"), Some(&alice), &[], "");
    assert_eq!(code, 409, "a final job is not cancelled");
    // Unknown ids: 404, never "pending".
    for path in ["/v1/jobs/no-such-job", "/v1/jobs/no-such-job/result?wait=0"] {
        let (code, _, v) = http(&a.http, "GET", path, Some(&admin), &[], "");
        assert_eq!(code, 404, "{path}: {v}");
    }
    // 401: no token, an unknown one, a revoked one.
    let (code, headers, _) = http(&a.http, "GET", &format!("/v1/jobs/{id}"), None, &[], "");
    assert_eq!(code, 401);
    assert!(headers.contains_key("www-authenticate"));
    let (code, _, _) = http(&a.http, "POST", "/v1/jobs", Some("emqc_nope"), &[], r#"{"callable":"a.b"}"#);
    assert_eq!(code, 401);
    // 403: a client token on an admin path; the admin may.
    for path in ["/v1/queues", "/v1/schedules"] {
        let (code, _, _) = http(&a.http, "GET", path, Some(&alice), &[], "");
        assert_eq!(code, 403, "{path}");
        let (code, _, v) = http(&a.http, "GET", path, Some(&admin), &[], "");
        assert_eq!(code, 200, "{path}: {v}");
    }
    let (_, _, v) = http(&a.http, "GET", "/v1/queues", Some(&admin), &[], "");
    let default = v["queues"].as_array().unwrap().iter().find(|q| q["name"] == "default").cloned().unwrap();
    assert!(default["processed"].as_u64().unwrap() >= 2, "{v}");
    // Bad bodies: 400 naming the field; a refusal: 422 with the reason.
    let (code, _, v) = http(&a.http, "POST", "/v1/jobs", Some(&alice), &[], r#"{"callable":"a.b","retries":-1}"#);
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("retries"), "{v}");
    let (code, _, _) = http(&a.http, "POST", "/v1/jobs", Some(&alice), &[], "not json");
    assert_eq!(code, 400);
    let (code, _, v) =
        http(&a.http, "POST", "/v1/jobs", Some(&alice), &[], r#"{"callable":"a.b","limit":"no_such_limit"}"#);
    assert_eq!(code, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("unknown limit"), "{v}");
    // Schedules: create, list, delete.
    let (code, _, v) = http(
        &a.http,
        "POST",
        "/v1/schedules",
        Some(&admin),
        &[],
        &json!({"callable": "testjobs.add", "args": [1, 1], "every": 3600}).to_string(),
    );
    assert_eq!(code, 201, "{v}");
    let sid = v["id"].as_str().unwrap().to_owned();
    let (_, _, v) = http(&a.http, "GET", "/v1/schedules", Some(&admin), &[], "");
    assert!(v["schedules"].as_array().unwrap().iter().any(|s| s["id"] == sid.as_str()), "{v}");
    let (code, _, _) = http(&a.http, "DELETE", &format!("/v1/schedules/{sid}"), Some(&admin), &[], "");
    assert_eq!(code, 200);
    let (code, _, _) = http(&a.http, "DELETE", &format!("/v1/schedules/{sid}"), Some(&admin), &[], "");
    assert_eq!(code, 404);
    // Workflows: a chain, its result and status.
    let chain = json!({"chain": [{"sig": {"fn": "testjobs.add", "args": [1, 2]}}, {"sig": {"fn": "testjobs.add", "args": [10]}}]});
    let (code, headers, v) = http(&a.http, "POST", "/v1/workflows", Some(&alice), &[], &chain.to_string());
    assert_eq!(code, 202, "{v}");
    let wid = v["id"].as_str().unwrap().to_owned();
    assert!(headers["location"].starts_with("/v1/workflows/"));
    assert_eq!(result(&a, &alice, &wid)["result"], 13);
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/workflows/{wid}"), Some(&alice), &[], "");
    assert_eq!(code, 200, "{v}");
    // A revoked token stops working.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .arg("--data-dir")
        .arg(&a.data_dir)
        .args(["token", "revoke", "bob"])
        .output()
        .unwrap();
    assert!(out.status.success());
    eventually(Duration::from_secs(10), || {
        (http(&a.http, "GET", &format!("/v1/jobs/{id}"), Some(&bob), &[], "").0 == 401).then_some(())
    });
}

/// Programs the command job manager of these tests may run.
const JM_COMMANDS: [(&str, &str); 1] = [("EMQ_ALLOWED_COMMANDS", "/bin/echo,/bin/false,/bin/cat")];

#[test]
fn command_jobs_over_http_are_checked_and_wait_for_a_job_manager_that_runs_them() {
    let (_router, a) = start_router(&[]);
    let alice = client_token(&a, "alice");
    // 400, naming the field.
    for (body, names) in [
        (json!({"callable": "testjobs.add", "command": ["/bin/echo"]}), "\"command\""),
        (json!({"args": [1]}), "\"command\""),
        (json!({"callable": "testjobs.add", "env": {"K": "V"}}), "\"env\""),
        (json!({"callable": "testjobs.add", "cwd": "/tmp"}), "\"cwd\""),
        (json!({"callable": "testjobs.add", "stdin": "x"}), "\"stdin\""),
        (json!({"command": ["/bin/echo"], "args": ["hi"]}), "\"args\""),
        (json!({"command": ["/bin/echo"], "kwargs": {}}), "\"kwargs\""),
        (json!({"command": []}), "\"command\""),
        (json!({"command": [""]}), "\"command\""),
        (json!({"command": "/bin/echo hi"}), "\"command\""),
        (json!({"command": ["/bin/echo", 1]}), "\"command\""),
        (json!({"command": ["/bin/echo", "a\u{0}b"]}), "\"command\"[1]"),
        (json!({"command": ["/bin/echo"], "env": {"A=B": "1"}}), "\"env\""),
        (json!({"command": ["/bin/echo"], "env": {"A": 1}}), "\"env\""),
        (json!({"command": ["/bin/echo"], "cwd": "tmp"}), "\"cwd\""),
        (json!({"command": ["/bin/echo"], "stdin": 1}), "\"stdin\""),
        (json!({"command": ["/bin/echo"], "shell": true}), "\"shell\""),
        (json!({"command": ["/bin/echo"], "retries": -1}), "\"retries\""),
    ] {
        let (code, _, v) = http(&a.http, "POST", "/v1/jobs", Some(&alice), &[], &body.to_string());
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(names), "{body}: {v} should name {names}");
    }
    // Accepted; with no job manager that runs commands it waits.
    let body = json!({"command": ["/bin/echo", "hi"], "env": {"K": "V"}, "cwd": "/tmp", "stdin": "x",
                      "queue": "default", "timeout": 30, "retries": 1});
    let id = submit(&a, &alice, body);
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{id}"), Some(&alice), &[], "");
    assert_eq!((code, v["state"].as_str(), v["queue"].as_str()), (200, Some("queued"), Some("default")), "{v}");
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{id}/result?wait=1"), Some(&alice), &[], "");
    assert_eq!((code, v["state"].as_str()), (202, Some("queued")), "{v}");
    // Delayed: its record says what it runs without breaking.
    let delayed =
        submit(&a, &alice, json!({"command": ["/bin/echo", "later"], "env": {"SECRET": "s3cr3t"}, "delay": 600}));
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{delayed}"), Some(&alice), &[], "");
    assert_eq!((code, v["state"].as_str()), (200, Some("delayed")), "{v}");
    assert_eq!(v["job"]["command"], json!(["/bin/echo", "later"]), "{v}");
    assert_eq!(v["job"]["env_names"], json!(["SECRET"]), "{v}");
    assert!(!v.to_string().contains("s3cr3t"), "env values are not shown: {v}");
    let (code, _, v) = http(&a.http, "POST", &format!("/v1/jobs/{delayed}/cancel"), Some(&alice), &[], "");
    assert_eq!((code, v["cancelled"].as_bool()), (200, Some(true)), "{v}");
}

#[test]
fn command_jobs_over_http_run_fail_and_are_refused() {
    let (_router, a) = start_router(&[]);
    // A job manager that runs no commands first: the command job waits.
    let _python_only = start_jobmanager(&a.backend, "default", 1, &JM_ENV);
    wait_slots(&a.admin, 1);
    let alice = client_token(&a, "alice");
    let echo = submit(&a, &alice, json!({"command": ["/bin/echo", "hi", "there"], "timeout": 30}));
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{echo}/result?wait=2"), Some(&alice), &[], "");
    assert_eq!((code, v["state"].as_str()), (202, Some("queued")), "no job manager here runs commands: {v}");
    // Python jobs still run meanwhile.
    let add = submit(&a, &alice, json!({"callable": "testjobs.add", "args": [2, 3]}));
    assert_eq!(result(&a, &alice, &add)["result"], 5);

    let _commands = start_jobmanager(&a.backend, "default", 2, &JM_COMMANDS);
    let v = result(&a, &alice, &echo);
    assert_eq!(
        v,
        json!({"id": echo, "state": "done", "result":
            {"exit_code": 0, "stdout": "hi there\n", "stderr": "", "stdout_cut": 0, "stderr_cut": 0}}),
        "{v}"
    );
    let (code, _, v) = http(&a.http, "GET", &format!("/v1/jobs/{echo}"), Some(&alice), &[], "");
    assert_eq!((code, v["state"].as_str(), v["id"].as_str()), (200, Some("done"), Some(echo.as_str())), "{v}");
    // stdin, env and cwd reach it.
    let cat = submit(
        &a,
        &alice,
        json!({"command": ["/bin/cat"], "stdin": "line 1\nline 2\n", "env": {"K": "V"}, "cwd": "/", "timeout": 30}),
    );
    let v = result(&a, &alice, &cat);
    assert_eq!((v["state"].as_str(), v["result"]["stdout"].as_str()), (Some("done"), Some("line 1\nline 2\n")), "{v}");

    // A non-zero exit: failed, "command failed", and its result still there.
    let fails = submit(&a, &alice, json!({"command": ["/bin/false"], "timeout": 30}));
    let v = result(&a, &alice, &fails);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"]["kind"], "command failed", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("exit code 1"), "{v}");
    assert_eq!(v["result"]["exit_code"], 1, "{v}");

    // A program outside allowed_commands: refused, nothing runs.
    let sh = submit(&a, &alice, json!({"command": ["/bin/sh", "-c", "echo no"], "timeout": 30}));
    let v = result(&a, &alice, &sh);
    assert!(matches!(v["state"].as_str(), Some("refused" | "failed")), "{v}");
    assert_eq!(v["error"]["kind"], "refused", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("allowed_commands"), "{v}");
}

#[test]
fn idempotency_keys_give_the_same_job_refuse_another_body_and_outlive_a_restart() {
    let (mut router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &JM_ENV);
    wait_slots(&a.admin, 2);
    let token = client_token(&a, "shop");
    let body = json!({"callable": "testjobs.add", "args": [20, 22]}).to_string();
    let key = [("Idempotency-Key", "order-1234")];
    let (code, _, first) = http(&a.http, "POST", "/v1/jobs", Some(&token), &key, &body);
    assert_eq!(code, 202, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    let (code, headers, again) = http(&a.http, "POST", "/v1/jobs", Some(&token), &key, &body);
    assert_eq!((code, again["id"].as_str()), (202, Some(id.as_str())));
    assert_eq!(headers.get("idempotency-replayed").map(String::as_str), Some("true"));
    let (code, _, v) =
        http(&a.http, "POST", "/v1/jobs", Some(&token), &key, r#"{"callable":"testjobs.add","args":[1,1]}"#);
    assert_eq!(code, 422, "{v}");
    assert_eq!(result(&a, &token, &id)["result"], 42);
    // The same key from another client is its own.
    let other = client_token(&a, "other");
    let (code, _, v) = http(&a.http, "POST", "/v1/jobs", Some(&other), &key, &body);
    assert_eq!(code, 202);
    assert_ne!(v["id"].as_str(), Some(id.as_str()));

    // 409: requests with one key at the same moment: one job; the others
    // get it, or 409 while the first is still being answered.
    let mut saw_409 = false;
    let mut k409 = (String::new(), String::new());
    for round in 0..20 {
        let k = format!("k-409-{round}");
        let answers: Vec<(u16, Value)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let (addr, t, b, k) = (a.http.clone(), token.clone(), body.clone(), k.clone());
                    sc.spawn(move || {
                        let (c, _, v) = http(&addr, "POST", "/v1/jobs", Some(&t), &[("Idempotency-Key", &k)], &b);
                        (c, v)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ids: std::collections::HashSet<&str> =
            answers.iter().filter(|(c, _)| *c == 202).map(|(_, v)| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 1, "one job for one key: {answers:?}");
        assert!(answers.iter().all(|(c, _)| *c == 202 || *c == 409), "{answers:?}");
        k409 = (k.clone(), ids.into_iter().next().unwrap().to_owned());
        if answers.iter().any(|(c, _)| *c == 409) {
            saw_409 = true;
            break;
        }
    }
    assert!(saw_409, "20 rounds of 8 simultaneous requests and never one in progress");

    // After a SIGKILL and a restart: the same job again, another body 422.
    router.signal(Signal::SIGKILL);
    router.wait_exit(Duration::from_secs(10)).expect("killed");
    let _router = start_router_at(&a, &[]).expect("router restarts");
    let (code, _, v) = http(&a.http, "POST", "/v1/jobs", Some(&token), &key, &body);
    assert_eq!((code, v["id"].as_str()), (202, Some(id.as_str())), "{v}");
    let (code, _, _) = http(&a.http, "POST", "/v1/jobs", Some(&token), &key, r#"{"callable":"testjobs.add"}"#);
    assert_eq!(code, 422);
    let (code, _, v) = http(&a.http, "POST", "/v1/jobs", Some(&token), &[("Idempotency-Key", &k409.0)], &body);
    assert_eq!((code, v["id"].as_str()), (202, Some(k409.1.as_str())));
}

/// Reads JSON pages after `after` until `done` says so; every item.
fn read_events(
    a: &RouterAddrs,
    token: &str,
    after: u64,
    query: &str,
    mut done: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut after = after;
    let end = Instant::now() + Duration::from_secs(300);
    while !done(&out) {
        assert!(Instant::now() < end, "events did not come: {} read", out.len());
        let path = format!("/v1/events?after={after}&limit=1000&wait=1{query}");
        let (code, _, v) = http(&a.http, "GET", &path, Some(token), &[], "");
        if code != 200 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        out.extend(v["events"].as_array().unwrap().iter().cloned());
        after = v["next"].as_u64().unwrap();
    }
    out
}

#[test]
fn a_reader_resumes_across_a_router_sigkill_and_sees_each_success_once_in_order() {
    const JOBS: usize = 1000;
    let (mut router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &JM_ENV);
    wait_slots(&a.admin, 2);
    let token = admin_token(&a);
    let mut client = Client::connect(&a.frontend).unwrap();
    let opts = Options { guarantee: true, ..Default::default() };
    let job = |i: usize| {
        let mut j = emq_client::job_for("testjobs.add").unwrap();
        j.args = vec![json!(i), json!(1)];
        j
    };
    // The reader reads the first jobs' events, then goes away.
    let first: Vec<String> = (0..10).map(|i| client.send_request("default", &job(i), &opts).unwrap()).collect();
    for id in &first {
        assert!(client.wait(id, Instant::now() + Duration::from_secs(30)).is_success());
    }
    let seen = read_events(&a, &token, 0, "", |ev| ev.iter().filter(|e| e["type"] == "succeeded").count() >= 10);
    let resume_at = seen.last().unwrap()["offset"].as_u64().unwrap();
    // 1,000 jobs, the router SIGKILLed while they run.
    let mut ids: Vec<String> = Vec::new();
    for i in 0..JOBS {
        ids.push(
            client.send_request_until("default", &job(i), &opts, Instant::now() + Duration::from_secs(60)).unwrap(),
        );
        if i == JOBS / 2 {
            std::thread::sleep(Duration::from_millis(200));
            router.signal(Signal::SIGKILL);
            router.wait_exit(Duration::from_secs(10)).expect("killed");
            router = start_router_at(&a, &[]).expect("router restarts");
        }
    }
    for (i, id) in ids.iter().enumerate() {
        match client.wait(id, Instant::now() + Duration::from_secs(120)) {
            JobOutcome::Value(v) => assert_eq!(v, json!(i + 1)),
            other => panic!("job {i} ({id}): {other:?}"),
        }
    }
    // The reader comes back: from its last offset, every success once.
    let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let events = read_events(&a, &token, resume_at, "", |ev| {
        ev.iter().filter(|e| e["type"] == "succeeded" && wanted.contains(e["job"].as_str().unwrap_or(""))).count()
            >= JOBS
    });
    let offsets: Vec<u64> = events.iter().filter_map(|e| e["offset"].as_u64()).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets only grow, none repeated");
    assert!(offsets.first().copied().unwrap_or(u64::MAX) > resume_at);
    assert!(
        events.iter().all(|e| e["type"] != "gap"),
        "nothing missed: {:?}",
        events.iter().find(|e| e["type"] == "gap")
    );
    let mut succeeded: HashMap<&str, usize> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "succeeded") {
        *succeeded.entry(e["job"].as_str().unwrap()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(succeeded.get(id.as_str()), Some(&1), "job {id} succeeded once");
    }
    // Each success comes after that job's acceptance.
    let mut accepted_at: HashMap<&str, u64> = HashMap::new();
    for e in &events {
        let j = e["job"].as_str().unwrap_or("");
        match e["type"].as_str() {
            Some("accepted") => {
                accepted_at.insert(j, e["offset"].as_u64().unwrap());
            }
            Some("succeeded") if accepted_at.contains_key(j) => assert!(accepted_at[j] < e["offset"].as_u64().unwrap()),
            _ => {}
        }
    }
    let newest = *offsets.last().unwrap();
    eventually(Duration::from_secs(10), || {
        let (_, text) = http_get(&a.http, "/metrics");
        let v = text.lines().find_map(|l| l.strip_prefix("emq_events_offset ")).and_then(|v| v.parse::<u64>().ok());
        v.filter(|v| *v >= newest)
    });
    println!("{} events after offset {resume_at}, {JOBS} successes each once, router SIGKILLed once", events.len());
}

#[test]
fn a_pruned_offset_gives_a_gap_and_sse_honours_last_event_id() {
    let (_router, a) = start_router(&[("EMQ_EVENTS_RETENTION", "64KiB")]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &JM_ENV);
    wait_slots(&a.admin, 2);
    let token = admin_token(&a);
    let mut client = Client::connect(&a.frontend).unwrap();
    let ids: Vec<String> = (0..300)
        .map(|i| {
            let mut j = emq_client::job_for("testjobs.add").unwrap();
            j.args = vec![json!(i), json!(0)];
            client.send_request("default", &j, &Options::default()).unwrap()
        })
        .collect();
    for id in &ids {
        assert!(client.wait(id, Instant::now() + Duration::from_secs(60)).is_success());
    }
    // The writer thread publishes (and prunes) just after the results
    // went out: the window is cut to its budget within moments.
    let events = eventually(Duration::from_secs(20), || {
        let events = read_events(&a, &token, 0, "", |ev| ev.len() > 2);
        (events[0]["type"] == "gap").then_some(events)
    });
    assert_eq!(events[0]["from"], 1);
    let to = events[0]["to"].as_u64().unwrap();
    assert_eq!(events[1]["offset"].as_u64(), Some(to + 1), "events go on right after the gap");

    // Server-sent events: Last-Event-ID takes the place of `after`; a
    // filter on the type; `id:` is the offset.
    let last = to + 10;
    let mut s = TcpStream::connect(&a.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET /v1/events?after=0&type=succeeded HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\nLast-Event-ID: {last}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut ids_seen = Vec::new();
    let mut line = String::new();
    while ids_seen.len() < 5 {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(id) = line.strip_prefix("id: ") {
            ids_seen.push(id.trim().parse::<u64>().unwrap());
        }
        if let Some(data) = line.strip_prefix("data: ") {
            // A gap when the window moved on since (events are still
            // being pruned): said, never skipped silently.
            let v: Value = serde_json::from_str(data).unwrap();
            assert!(v["type"] == "succeeded" || v["type"] == "gap", "{v}");
        }
    }
    assert!(ids_seen[0] > last, "{ids_seen:?} after {last}");
    assert!(ids_seen.windows(2).all(|w| w[0] < w[1]));
    // A new job's events arrive on the open stream.
    let id = client
        .send_request(
            "default",
            &emq_client::job_for("testjobs.add")
                .map(|mut j| {
                    j.args = vec![json!(1), json!(1)];
                    j
                })
                .unwrap(),
            &Options::default(),
        )
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < end, "the new job's success never came on the stream");
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("stream ended");
        }
        if line.starts_with("data: ") && line.contains(&id) {
            break;
        }
    }
}

/// Sends raw bytes, reads the answer's status code (the server may close
/// before reading everything: that is its right).
fn raw_status(addr: &str, bytes: &[u8]) -> u16 {
    // With few connection places, the thread of the previous connection
    // may still hold one for a moment: 503 until it is gone.
    eventually(Duration::from_secs(10), || Some(raw_status_once(addr, bytes)).filter(|c| *c != 503))
}

fn raw_status_once(addr: &str, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let _ = s.write_all(bytes);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn the_http_server_bounds_bodies_heads_and_connections() {
    let (_router, a) = start_router(&[("EMQ_HTTP_MAX_CONNECTIONS", "2")]);
    let token = admin_token(&a);
    let auth = format!("Authorization: Bearer {token}\r\n");
    // A body announced past 1 MiB: 413 before any of it is read.
    let head = format!("POST /v1/jobs HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 2000000\r\n\r\n");
    assert_eq!(raw_status(&a.http, head.as_bytes()), 413);
    // Chunked request bodies: 411. A malformed head: 400. A huge head: 431.
    let chunked = format!("POST /v1/jobs HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(raw_status(&a.http, chunked.as_bytes()), 411);
    assert_eq!(raw_status(&a.http, b"GET /v1/jobs HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    let huge = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(raw_status(&a.http, huge.as_bytes()), 431);
    // Two idle connections take the two places: a third is answered 503.
    // (A connection turned away gets its 503 at once; one let in hears
    // nothing: retried until two are in.)
    let mut idle: Vec<TcpStream> = Vec::new();
    eventually(Duration::from_secs(20), || {
        let mut s = TcpStream::connect(&a.http).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut b = [0u8; 64];
        if matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
        {
            idle.push(s);
        }
        (idle.len() == 2).then_some(())
    });
    eventually(Duration::from_secs(10), || {
        (raw_status_once(&a.http, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 503).then_some(())
    });
    drop(idle);
    eventually(Duration::from_secs(10), || {
        (raw_status_once(&a.http, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") == 200).then_some(())
    });
    // The router itself never noticed.
    wait_for_status(&a.admin);
}
