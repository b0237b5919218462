//! Heartbeat-driven health: pool health from a real job manager reaches
//! STATUS, Prometheus /metrics, /api/status, the dashboard, and stale
//! detection of a stopped job manager.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The worker processes of job manager `pid`: its children, and its warm
/// template's (the template itself aside).
fn children(pid: i32) -> Vec<u64> {
    let direct = direct_children(pid);
    let mut out = Vec::new();
    for c in direct {
        let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
        let is_template = std::fs::read(format!("/proc/{c}/environ"))
            .map(|e| e.windows(20).any(|w| w == b"EMQ_WORKER_TEMPLATE="))
            .unwrap_or(false);
        if is_template && cmdline.windows(12).any(|w| w == b"__emq_worker") {
            out.extend(direct_children(c as i32));
        } else {
            out.push(c);
        }
    }
    out.sort();
    out
}

/// Pids whose parent is `pid`.
fn direct_children(pid: i32) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{name}/stat")) {
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(pid) {
                out.push(name.parse().unwrap());
            }
        }
    }
    out.sort();
    out
}

/// Strict reading of the Prometheus text format: every sample line is
/// `name{label="value",...} number`, every sample's family has a TYPE.
fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    let mut types = std::collections::HashSet::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
            types.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line}");
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = key.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "bad name {line}");
        assert!(name.starts_with("emq_"), "{line}");
        if let Some(labels) = key.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    let _ = v;
                }
            }
        }
        let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(types.contains(name) || types.contains(family), "no TYPE for {name}");
        samples.insert(key.to_owned(), v);
    }
    samples
}

#[test]
fn health_reaches_status_and_metrics_move() {
    let (_r, a) = start_router(&[]);
    let jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    // Health from heartbeats: worker pids are the job manager's real children.
    let (id, health) = eventually(Duration::from_secs(30), || {
        let s = admin(&a.admin, "STATUS");
        let (id, jm_status) = s["job_managers"].as_object()?.iter().next().map(|(k, v)| (k.clone(), v.clone()))?;
        let h = jm_status["health"].clone();
        let pids: Vec<u64> = h["workers"].as_array()?.iter().filter_map(|w| w["pid"].as_u64()).collect();
        (pids.len() == 3 && h["rss_bytes"].as_u64().is_some()).then_some((id, h))
    });
    let mut pids: Vec<u64> = health["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    pids.sort();
    assert_eq!(pids, children(jm.pid()), "health pids are the real worker processes (2 + spare)");
    assert_eq!(health["pid"], json!(jm.pid()));
    assert!(!health["host"].as_str().unwrap().is_empty());
    assert_eq!(health["load_avg"].as_array().unwrap().len(), 3);
    assert!(health["workers"][0]["rss_bytes"].as_u64().unwrap() > 1_000_000);

    let processed = |m: &std::collections::HashMap<String, f64>| {
        m.get("emq_jobs_processed_total{queue=\"default\"}").copied().unwrap_or(0.0)
    };
    let (code, text) = http_get(&a.http, "/metrics");
    assert_eq!(code, 200);
    let before = parse_metrics(&text);
    let mut c = TestClient::connect(&a.frontend);
    for i in 0..5 {
        assert_eq!(c.call("default", "benchjobs", "add", json!([i, 1])), json!({"value": i + 1}));
    }
    let after = eventually(Duration::from_secs(10), || {
        let m = parse_metrics(&http_get(&a.http, "/metrics").1);
        (processed(&m) >= processed(&before) + 5.0).then_some(m)
    });
    // Labelled by the job manager's name (host:pid when unnamed), never by
    // its random connection identity: bounded series.
    let name = format!("{}:{}", health["host"].as_str().unwrap(), jm.pid());
    assert!(after.contains_key(&format!("emq_jobmanager_heartbeat_age_seconds{{jobmanager=\"{name}\"}}")), "{after:?}");
    assert!(!after.keys().any(|k| k.contains(&id)), "no series names the identity {id}");
    assert!(
        after.get("emq_job_latency_seconds_count{queue=\"default\",stage=\"finish\"}").copied().unwrap_or(0.0) >= 5.0
    );
    assert!(after.keys().any(|k| k.starts_with("emq_worker_rss_bytes{")));

    // /api/status is STATUS (and the workers view), from the same state.
    let api: Value = eventually(Duration::from_secs(10), || {
        let v: Value = serde_json::from_str(&http_get(&a.http, "/api/status").1).ok()?;
        (v["status"]["processed_messages_by_queue"]["default"] == 5).then_some(v)
    });
    let status = admin(&a.admin, "STATUS");
    for k in ["processed_messages_by_queue", "waiting_messages_by_queue", "accepted", "connected_workers"] {
        assert_eq!(api["status"][k], status[k], "{k}");
    }
    assert!(api["workers"]["connected_workers"][&id].is_object());

    // emq-cli shows the same health as tables.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["--addr", &a.admin, "workers"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for pid in &pids {
        assert!(text.contains(&pid.to_string()), "worker pid {pid} in emq-cli workers:\n{text}");
    }
    assert!(text.contains("RSS MB") && text.contains("(spare)"), "{text}");

    // The dashboard page is self-contained (no external scripts or styles).
    let (code, page) = http_get(&a.http, "/");
    assert_eq!(code, 200);
    assert!(page.contains("emq router") && page.contains("/api/status"));
    assert!(!page.contains("http://") && !page.contains("https://"), "no CDN");
    assert_eq!(http_get(&a.http, "/nope").0, 404);
}

#[test]
fn a_stopped_job_manager_turns_stale_then_gone() {
    // Stale for 4 heartbeat timeouts plus suspect_timeout, then gone.
    let (_r, a) = start_router(&[
        ("EMQ_HEARTBEAT_INTERVAL", "0.2"),
        ("EMQ_HEARTBEAT_TIMEOUT", "1"),
        ("EMQ_SUSPECT_TIMEOUT", "1"),
    ]);
    let jm = start_jobmanager(&a.backend, "default", 1, &[("EMQ_HEARTBEAT_INTERVAL", "0.2")]);
    wait_slots(&a.admin, 1);
    let state = || -> Option<String> {
        let s = admin(&a.admin, "STATUS");
        s["job_managers"].as_object()?.values().next()?["state"].as_str().map(str::to_owned)
    };
    assert_eq!(state().as_deref(), Some("ok"));
    jm.signal(nix::sys::signal::Signal::SIGSTOP);
    eventually(Duration::from_secs(20), || (state().as_deref() == Some("stale")).then_some(()));
    let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
    let entry = w["connected_workers"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!((entry["state"].as_str(), entry["available_slots"].as_u64()), (Some("stale"), Some(0)));
    // The HTTP snapshot is rebuilt at most once a second.
    eventually(Duration::from_secs(10), || {
        let (_, metrics) = http_get(&a.http, "/metrics");
        metrics.lines().any(|l| l.starts_with("emq_jobmanager_up{") && l.ends_with(" 0")).then_some(())
    });
    // Then gone.
    eventually(Duration::from_secs(20), || state().is_none().then_some(()));
    jm.signal(nix::sys::signal::Signal::SIGCONT);
}
