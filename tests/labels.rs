//! Jobs pinned by labels and names (issue 28): job managers say their
//! `labels` and `name` at INFORM; a job sent `requires:` / `on:` goes only
//! to one that has them, waits (not failed) while none is connected, and
//! never holds up the jobs behind it.

mod common;

use common::*;
use emq_client::{Client, JobOutcome, Options};
use serde_json::json;
use std::time::{Duration, Instant};

fn start_jm(a: &RouterAddrs, extra: &[&str]) -> ChildGuard {
    let root = repo_root();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"));
    cmd.args(["-B", &a.backend, "-Q", "default", "-J", "2"])
        .args(extra)
        .arg("--python-path")
        .arg(root.join("tests/pyjobs"))
        .arg("--python-path")
        .arg(root.join("jobs"))
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "warn")
        .env("EMQ_HEARTBEAT_INTERVAL", "0.5")
        .env("EMQ_ALLOWED_PATHS", "testjobs,benchjobs");
    ChildGuard::spawn("emq-jobmanager", cmd)
}

fn add(client: &mut Client, i: i64, opts: &Options) -> String {
    let mut j = emq_client::job_for("testjobs.add").unwrap();
    j.args = vec![json!(i), json!(1)];
    client.send_request("default", &j, opts).unwrap()
}

/// The name of the job manager that ran `id`.
fn ran_on(a: &RouterAddrs, id: &str) -> String {
    admin_job(a, id)["job_manager_name"].as_str().unwrap_or("?").to_owned()
}

#[test]
fn pinned_jobs_go_only_where_they_fit_and_wait_for_a_fit() {
    let (_router, a) = start_router(&[]);
    let _gpu = start_jm(&a, &["--labels", "gpu,eu", "--name", "A"]);
    let _b = start_jm(&a, &["--name", "B"]);
    wait_slots(&a.admin, 4);
    let mut client = Client::connect(&a.frontend).unwrap();
    let deadline = || Instant::now() + Duration::from_secs(60);

    // First in the queue: a job nobody connected can run. It waits, and
    // the jobs behind it run.
    let tpu = add(&mut client, 100, &Options { requires: vec!["tpu".into()], ..Default::default() });
    let gpu: Vec<String> =
        (0..10).map(|i| add(&mut client, i, &Options { requires: vec!["gpu".into()], ..Default::default() })).collect();
    let on_b: Vec<String> =
        (0..10).map(|i| add(&mut client, i, &Options { on: Some("B".into()), ..Default::default() })).collect();
    let both = add(&mut client, 7, &Options { requires: vec!["gpu".into(), "eu".into()], ..Default::default() });
    let plain: Vec<String> = (0..6).map(|i| add(&mut client, i, &Options::default())).collect();
    for id in gpu.iter().chain(&on_b).chain(&plain).chain(std::iter::once(&both)) {
        assert!(matches!(client.wait(id, deadline()), JobOutcome::Value(_)), "{id}");
    }
    for id in gpu.iter().chain(std::iter::once(&both)) {
        assert_eq!(ran_on(&a, id), "A", "a requires:gpu job ran elsewhere");
    }
    for id in &on_b {
        assert_eq!(ran_on(&a, id), "B", "an on:B job ran elsewhere");
    }
    let ran: std::collections::HashSet<String> = plain.iter().map(|id| ran_on(&a, id)).collect();
    println!("plain jobs ran on {ran:?}");

    // The tpu job waits, and STATUS / emq-cli say what for.
    let st = admin_job(&a, &tpu);
    assert_eq!(st["state"], "queued", "{st}");
    let status = wait_for_status(&a.admin);
    let why = &status["waiting_not_allowed"]["default"];
    assert_eq!(why["waiting_for_labels"], 1, "{status}");
    assert_eq!(why["wants"], json!(["requires:tpu"]));
    let (ok, text) = emq_cli_as_admin(&a, &["status"]);
    assert!(ok && text.contains("requires:tpu"), "{text}");

    // A job manager with the label comes: the job runs there.
    let _tpu_jm = start_jm(&a, &["--labels", "tpu", "--name", "T"]);
    assert_eq!(client.wait(&tpu, deadline()), JobOutcome::Value(json!(101)));
    assert_eq!(ran_on(&a, &tpu), "T");

    // emq-send and the HTTP API pin too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-send"))
        .args(["--addr", &a.frontend, "--requires", "gpu", "--wait", "testjobs.add", "20", "22"])
        .output()
        .unwrap();
    assert!(out.status.success(), "emq-send: {}", String::from_utf8_lossy(&out.stderr));
    let token = std::fs::read_to_string(a.data_dir.join("admin.token")).unwrap().trim().to_owned();
    let (code, body) = http_request(
        &a.http,
        "POST",
        "/v1/jobs",
        Some(&token),
        r#"{"callable": "testjobs.add", "args": [1, 2], "on": "B"}"#,
    );
    assert_eq!(code, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), || (admin_job(&a, &id)["state"] == "done").then_some(()));
    assert_eq!(ran_on(&a, &id), "B");
    let (code, body) = http_request(
        &a.http,
        "POST",
        "/v1/jobs",
        Some(&token),
        r#"{"callable": "testjobs.add", "args": [1, 2], "requires": ["not a label"]}"#,
    );
    assert_eq!(code, 400, "{body}");
}
