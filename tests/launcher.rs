//! `emq up`: router and job manager together, serving ./jobs; Ctrl-C stops
//! both in order.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

#[test]
fn emq_up_serves_the_example_module_and_stops_both_on_ctrl_c() {
    let a = RouterAddrs::fresh();
    let log = std::env::temp_dir().join(format!("emq-up-{}.log", uuid::Uuid::new_v4()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq"));
    cmd.arg("up")
        .args(["--jobs", "2"])
        .current_dir(repo_root()) // ./jobs holds benchjobs.py
        .env("EMQ_FRONTEND_ADDR", &a.frontend)
        // Only the router's backend address: emq up makes its job manager
        // dial it (it used to dial the default port).
        .env("EMQ_BACKEND_ADDR", &a.backend)
        .env("EMQ_ADMINISTRATIVE_ADDR", &a.admin)
        .env("EMQ_HTTP_ADDR", &a.http)
        .env("EMQ_DATA_DIR", &a.data_dir)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut up = ChildGuard::spawn("emq up", cmd);
    wait_for_status(&a.admin);
    wait_slots(&a.admin, 2);
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("default", "benchjobs", "add", json!([2, 3])), json!({"value": 5}));

    let text = std::fs::read_to_string(&log).unwrap();
    let pids: Vec<i32> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "pid")
        .filter_map(|w| w[1].parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "launcher names both pids: {text}");

    up.signal(nix::sys::signal::Signal::SIGINT);
    let st = up.wait_exit(Duration::from_secs(30)).expect("emq up exits");
    assert_eq!(st.code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    for pid in pids {
        // Both children are gone (reaped by the launcher).
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "pid {pid} still running");
    }
}
