//! Time, end to end: schedules made by EventMQ 0.3.13's unchanged Python
//! client (`schedule()` / `unschedule()`) run by our router itself, cron
//! on the minute, `run_count` and `nohaste`, delayed jobs from `emq-send`,
//! and both surviving a SIGKILL of the router.
//!
//! Timing is read from what the router computed (each run's due time, in
//! `ROUTER_SCHEDULES` and in job status), never from wall-clock thresholds.

mod common;
use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emq-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs scripts/eventmq_schedule.py (EventMQ's own `schedule()`).
fn eventmq_schedule(venv: &Path, frontend: &str, args: &[&str]) {
    let out = Command::new(venv.join("bin/python"))
        .arg(repo_root().join("scripts/eventmq_schedule.py"))
        .args(["--addr", frontend])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "eventmq_schedule failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn schedules(admin_addr: &str) -> Value {
    admin(admin_addr, "ROUTER_SCHEDULES")
}

/// The one schedule whose callable is `benchjobs.append_line` and whose
/// args name `file`.
fn find(admin_addr: &str, id: Option<&str>) -> Option<Value> {
    let s = schedules(admin_addr);
    s["schedules"].as_array()?.iter().find(|x| id.is_none_or(|id| x["id"] == id)).cloned()
}

fn emq_cli(a: &RouterAddrs, args: &[&str]) -> String {
    let (ok, out) = emq_cli_as_admin(a, args);
    assert!(ok, "emq-cli {args:?}: {out}");
    out
}

fn emq_send(frontend: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_emq-send")).args(["--addr", frontend]).args(args).output().unwrap();
    assert!(out.status.success(), "emq-send {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn eventmq_client_schedules_runs_every_second_and_unschedules() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let work = tempdir("sched");
    let file = work.join("ticks.txt");
    let args = serde_json::json!([file, "tick"]).to_string();
    eventmq_schedule(&venv, &a.frontend, &["--func", "benchjobs.append_line", "--args", &args, "--interval", "1"]);
    // Runs at once (haste), then once a second: 5 lines.
    let lines = eventually(Duration::from_secs(60), || {
        let l = read_lines(&file);
        (l.len() >= 5).then_some(l)
    });
    assert!(lines.iter().all(|l| l == "tick"));
    let s = find(&a.admin, None).expect("the schedule");
    assert_eq!(s["callable"], "benchjobs.append_line");
    assert_eq!(s["interval_secs"], 1);
    let runs = s["runs"].as_u64().unwrap();
    assert!(runs >= 5, "{s}");
    // Each run was due exactly a second after the one before it.
    let (created, last) = (s["created"].as_f64().unwrap(), s["last_run"].as_f64().unwrap());
    assert!(((last - created) - (runs - 1) as f64).abs() < 1e-6, "drift-free: {s}");
    // The last run's job says which schedule fired it and when.
    let job = admin_job(&a, s["last_msgid"].as_str().unwrap());
    assert_eq!(job["schedule"]["id"], s["id"]);
    assert_eq!(job["schedule"]["fired_at"].as_f64(), Some(last));
    // The human table.
    let table = emq_cli(&a, &["schedules"]);
    assert!(table.contains("benchjobs.append_line") && table.contains("every 1 s"), "{table}");
    println!("{table}");

    // EventMQ's unschedule() with the same callable and args stops it.
    eventmq_schedule(
        &venv,
        &a.frontend,
        &["--func", "benchjobs.append_line", "--args", &args, "--interval", "1", "--unschedule"],
    );
    eventually(Duration::from_secs(20), || (schedules(&a.admin)["total"] == 0).then_some(()));
    let settled = eventually(Duration::from_secs(20), || {
        let st = admin(&a.admin, "STATUS");
        (st["inflight_messages_by_queue"].as_object().is_none_or(|m| m.values().all(|v| v == 0))
            && st["waiting_messages_by_queue"]["default"].as_u64().unwrap_or(0) == 0)
            .then(|| read_lines(&file).len())
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(read_lines(&file).len(), settled, "no run after UNSCHEDULE");
}

#[test]
fn run_count_stops_after_three_and_nohaste_waits_one_interval() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let work = tempdir("runcount");
    let three = work.join("three.txt");
    let args = serde_json::json!([three, "x"]).to_string();
    eventmq_schedule(
        &venv,
        &a.frontend,
        &["--func", "benchjobs.append_line", "--args", &args, "--interval", "1", "--headers", "guarantee,run_count:3"],
    );
    let later = work.join("later.txt");
    let args2 = serde_json::json!([later, "y"]).to_string();
    eventmq_schedule(
        &venv,
        &a.frontend,
        &["--func", "benchjobs.append_line", "--args", &args2, "--interval", "2", "--headers", "guarantee,nohaste"],
    );
    // run_count:3: three runs, then the schedule is gone.
    eventually(Duration::from_secs(30), || (read_lines(&three).len() == 3).then_some(()));
    let nohaste = eventually(Duration::from_secs(30), || {
        let s = schedules(&a.admin);
        let list = s["schedules"].as_array().cloned().unwrap_or_default();
        (list.len() == 1 && list[0]["runs"].as_u64() >= Some(1)).then(|| list[0].clone())
    });
    // nohaste: the first run was due one interval after it was made.
    let first_job = admin_job(&a, nohaste["last_msgid"].as_str().unwrap());
    let fired = first_job["schedule"]["fired_at"].as_f64().unwrap();
    if nohaste["runs"] == 1 {
        assert!((fired - nohaste["created"].as_f64().unwrap() - 2.0).abs() < 1e-6, "{nohaste} {first_job}");
    }
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(read_lines(&three).len(), 3, "no fourth run");
}

#[test]
fn cron_every_minute_fires_on_the_minute() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let file = tempdir("cron").join("minute.txt");
    let args = serde_json::json!([file, "m"]).to_string();
    eventmq_schedule(
        &venv,
        &a.frontend,
        &["--func", "benchjobs.append_line", "--args", &args, "--cron", "* * * * *", "--headers", "guarantee,nohaste"],
    );
    let s = find(&a.admin, None).expect("the schedule");
    assert_eq!(s["cron"], "* * * * *");
    assert_eq!(s["next_run"].as_f64().unwrap() % 60.0, 0.0, "due on the minute: {s}");
    // The first run comes within a minute and a few seconds.
    eventually(Duration::from_secs(75), || (!read_lines(&file).is_empty()).then_some(()));
    let s = find(&a.admin, None).unwrap();
    assert_eq!(s["last_run"].as_f64().unwrap() % 60.0, 0.0, "{s}");
    assert_eq!(admin_job(&a, s["last_msgid"].as_str().unwrap())["state"], "done");
}

#[test]
fn delayed_jobs_and_schedules_survive_sigkill_of_the_router() {
    let (mut router, addrs) = start_router(&[]);
    let a = &addrs;
    let work = tempdir("timekill");
    let delayed_file = work.join("delayed.txt");
    // A delayed job: receipted at once, listed, not run before its time.
    let msgid =
        emq_send(&a.frontend, &["--delay", "9s", "benchjobs.append_line", delayed_file.to_str().unwrap(), "late"]);
    let status = admin_job(a, &msgid);
    assert_eq!(status["state"], "delayed", "{status}");
    let listed = emq_cli(a, &["delayed"]);
    assert!(listed.contains(&msgid) && listed.contains("benchjobs.append_line"), "{listed}");
    // A schedule from our own CLI, every second, catching up every missed run.
    let sched_file = work.join("sched.txt");
    let id = emq_send(
        &a.frontend,
        &["--every", "1s", "--misfire", "all", "benchjobs.append_line", sched_file.to_str().unwrap(), "s"],
    );
    assert_eq!(id.len(), 40, "EventMQ's schedule id: {id}");
    let before = find(&a.admin, Some(&id)).expect("listed");
    // No job manager yet: runs pile up in the buffer. SIGKILL the router.
    std::thread::sleep(Duration::from_millis(1200));
    let runs_before = find(&a.admin, Some(&id)).unwrap()["runs"].as_u64().unwrap();
    router.signal(Signal::SIGKILL);
    router.wait_exit(Duration::from_secs(10)).expect("killed");
    // Down for 3.5 s: at least three runs were due meanwhile.
    std::thread::sleep(Duration::from_millis(3500));
    let _router = start_router_at(&addrs, &[]).expect("router restarts on the same journal");
    let after = find(&a.admin, Some(&id)).expect("the schedule survived");
    assert_eq!(after["created"], before["created"]);
    let runs_after = after["runs"].as_u64().unwrap();
    assert!(runs_after >= runs_before + 3, "misfire all: missed runs fire at start ({runs_before} -> {runs_after})");
    assert_eq!(admin_job(a, &msgid)["state"], "delayed", "the delayed job survived, still waiting");
    // Both in /api/status (the dashboard's source) and /metrics.
    eventually(Duration::from_secs(20), || {
        let v: Value = serde_json::from_str(&http_get(&a.http, "/api/status").1).ok()?;
        (v["schedules"]["total"] == 1 && v["delayed"]["delayed"][0]["msgid"] == msgid.as_str()).then_some(())
    });
    let metrics = http_get(&a.http, "/metrics").1;
    for want in ["emq_schedules 1", "emq_jobs_delayed 1", "emq_schedule_fire_lateness_seconds_bucket"] {
        assert!(metrics.contains(want), "{want} in /metrics");
    }
    // A job manager: the delayed job runs once, when due; the schedule runs on.
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    eventually(Duration::from_secs(30), || (read_lines(&delayed_file).len() == 1).then_some(()));
    let done = admin_job(a, &msgid);
    assert_eq!(done["state"], "done");
    assert!(done["dispatched"].as_f64().unwrap() >= done["received"].as_f64().unwrap() + 9.0, "{done}");
    let n = read_lines(&sched_file).len();
    eventually(Duration::from_secs(30), || (read_lines(&sched_file).len() >= n + 2).then_some(()));
    // The operator removes it.
    let out = emq_cli(a, &["unschedule", &id]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(schedules(&a.admin)["total"], 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(read_lines(&delayed_file).len() == 1, "ran once");
}
