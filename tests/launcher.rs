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

/// `emq up` takes the router's address and data-dir flags (no environment
/// needed), and starts the job manager only once the router listens.
#[test]
fn emq_up_takes_the_routers_address_and_data_dir_flags() {
    let a = RouterAddrs::fresh();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq"));
    cmd.arg("up")
        .args(["--jobs", "1", "--frontend-addr", &a.frontend, "--backend-addr", &a.backend])
        .args(["--administrative-addr", &a.admin, "--http-addr", &a.http])
        .arg("--data-dir")
        .arg(&a.data_dir)
        .current_dir(repo_root())
        .env("RUST_LOG", "warn");
    let _up = ChildGuard::spawn("emq up", cmd);
    wait_for_status(&a.admin);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("default", "benchjobs", "add", json!([2, 3])), json!({"value": 5}));
    assert!(a.data_dir.join("admin.token").exists(), "the journal is in --data-dir");
}

/// An address already taken: the router says which and never claims to
/// listen; `emq up` exits 2 without starting a job manager.
#[test]
fn emq_up_with_a_taken_port_says_so_and_never_claims_to_listen() {
    let a = RouterAddrs::fresh();
    let taken = std::net::TcpListener::bind(&a.http).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_emq"))
        .args(["up", "--jobs", "1", "--frontend-addr", &a.frontend, "--backend-addr", &a.backend])
        .args(["--administrative-addr", &a.admin, "--http-addr", &a.http])
        .arg("--data-dir")
        .arg(&a.data_dir)
        .current_dir(repo_root())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    drop(taken);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&a.http), "names the address: {err}");
    assert!(!err.contains("router listening"), "claimed to listen: {err}");
    assert!(!err.contains("job manager starting"), "no job manager without a router: {err}");
}
