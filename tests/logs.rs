//! Logs that fit where they go (issue 28, logs part): written to a file
//! (not a terminal) the router's and the job manager's lines carry no
//! colour escape; `log_format = "json"` makes every line one JSON object
//! with the fields (msgid among them).

mod common;

use common::*;
use nix::sys::signal::Signal;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A router and a job manager logging at `info` to files, with `format`;
/// one job run and failed (so there are lines about a job); both stopped.
/// Their logs.
fn logs_of_a_run(format: &str) -> (String, String) {
    let a = RouterAddrs::fresh();
    let dir = std::env::temp_dir().join(format!("emq-logs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (router_log, jm_log) = (dir.join("router.log"), dir.join("jm.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-router"));
    cmd.args(["--frontend-addr", &a.frontend, "--backend-addr", &a.backend, "--administrative-addr", &a.admin])
        .current_dir(std::env::temp_dir())
        .env("EMQ_HTTP_ADDR", &a.http)
        .env("EMQ_DATA_DIR", &a.data_dir)
        .env("RUST_LOG", "info")
        .env("EMQ_LOG_FORMAT", format)
        .stderr(Stdio::from(std::fs::File::create(&router_log).unwrap()));
    let mut router = ChildGuard::spawn("emq-router", cmd);
    wait_for_status(&a.admin);
    // The job manager as `start_jobmanager` starts it, its stderr to a file.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"));
    cmd.args(["-B", &a.backend, "-Q", "default", "-J", "1"])
        .arg("--python-path")
        .arg(repo_root().join("tests/pyjobs"))
        .arg("--python-path")
        .arg(repo_root().join("jobs"))
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "info")
        .env("EMQ_LOG_FORMAT", format)
        .env("EMQ_HEARTBEAT_INTERVAL", "0.5")
        .env("EMQ_ALLOWED_PATHS", "testjobs,benchjobs")
        .stderr(Stdio::from(std::fs::File::create(&jm_log).unwrap()));
    let mut jm = ChildGuard::spawn("emq-jobmanager", cmd);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let v = c.call("default", "testjobs", "add", serde_json::json!([2, 3]));
    assert_eq!(v["value"], 5, "{v}");
    let v = c.call("default", "testjobs", "fail", serde_json::json!(["on purpose"]));
    assert!(v.get("error").is_some(), "{v}");
    jm.signal(Signal::SIGTERM);
    let _ = jm.wait_exit(Duration::from_secs(30));
    router.signal(Signal::SIGTERM);
    let _ = router.wait_exit(Duration::from_secs(30));
    let out = (std::fs::read_to_string(&router_log).unwrap(), std::fs::read_to_string(&jm_log).unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn logs_to_a_file_have_no_colour_escapes() {
    let (router, jm) = logs_of_a_run("text");
    for (name, text) in [("router", &router), ("job manager", &jm)] {
        assert!(text.lines().count() >= 2, "{name} logged: {text}");
        assert!(!text.contains('\x1b'), "{name}'s log has escapes:\n{text}");
    }
    assert!(router.contains("router listening"), "{router}");
}

#[test]
fn json_logs_are_one_object_per_line_with_their_fields() {
    let (router, jm) = logs_of_a_run("json");
    let mut msgids = 0;
    for (name, text) in [("router", &router), ("job manager", &jm)] {
        assert!(text.lines().count() >= 2, "{name} logged: {text}");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
            for key in ["timestamp", "level", "target", "message"] {
                assert!(v.get(key).is_some(), "{name}: no {key} in {line}");
            }
            msgids += usize::from(v.get("msgid").is_some());
        }
    }
    assert!(router.contains("\"message\":\"router listening\""), "{router}");
    assert!(msgids > 0, "no line named a job's msgid:\n{router}\n{jm}");
}
