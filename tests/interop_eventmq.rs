//! Interop with EventMQ 0.3.13 itself: its unmodified job manager and its
//! unmodified client against our router. The venv is installed by
//! `scripts/setup-venv.sh` (into `target/venv`); a failed install fails the
//! test unless `EMQ_SKIP_INTEROP=1` is set.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn eventmq_job_manager_and_client_work_against_our_router() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[]);
    let root = repo_root();
    let work = tempdir("interop");
    let out_file = work.join("lines.txt");

    let _jm = start_eventmq_jobmanager(&venv, &a.backend, &work);
    // Its two READYs arrive a few seconds after the ACK.
    eventually(Duration::from_secs(60), || (router_free_slots(&a.admin) == 2).then_some(()));

    // EventMQ's own client sends 5 jobs (one asks for a reply).
    let send = |count: &str, reply: bool| {
        let mut c = Command::new(venv.join("bin/python"));
        c.arg(root.join("scripts/eventmq_send.py"))
            .args(["--addr", &a.frontend, "--queue", "default", "--path", "benchjobs", "--callable", "append_line"])
            .args(["--args", &serde_json::json!([out_file, "from eventmq client"]).to_string(), "--count", count]);
        if reply {
            c.arg("--reply-requested");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "eventmq_send failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    println!("eventmq_send: {}", send("4", false).trim());
    println!("eventmq_send: {}", send("1", true).trim());

    let lines = eventually(Duration::from_secs(60), || {
        let l = read_lines(&out_file);
        (l.len() >= 5).then_some(l)
    });
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l == "from eventmq client"));
    println!("EventMQ job manager ran {} jobs sent by EventMQ's client through emq-router", lines.len());
    let status = eventually(Duration::from_secs(20), || {
        let s = admin(&a.admin, "STATUS");
        (s["processed_messages_by_queue"]["default"].as_u64() == Some(5)).then_some(s)
    });
    println!("router STATUS after interop: {status}");

    // EventMQ's own emq-cli (an interactive shell: commands on stdin) reads
    // our answers; it sends HELLO first, which must stay unanswered.
    let mut cli = Command::new(venv.join("bin/emq-cli"));
    cli.args(["-a", &a.admin]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cli.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"status\nshow_workers\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("EventMQ emq-cli against emq-router:\n{text}");
    assert!(text.contains("processed_messages_by_queue"), "{text}");
    assert!(text.contains("connected_workers"), "{text}");
}

/// EventMQ's own job manager, 2 workers on queue `default`, its log in
/// `work/jm.log` (its --queues flag is broken: the env says the queues).
fn start_eventmq_jobmanager(venv: &std::path::Path, backend: &str, work: &std::path::Path) -> ChildGuard {
    let mut jm = Command::new(venv.join("bin/emq-jobmanager"));
    jm.env("EVENTMQ_WORKER_ADDR", backend)
        .env("EVENTMQ_QUEUES", r#"[[10, "default"]]"#)
        .env("EVENTMQ_CONCURRENT_JOBS", "2")
        .env("PYTHONPATH", repo_root().join("jobs"))
        .current_dir(work)
        .stderr(std::fs::File::create(work.join("jm.log")).unwrap());
    ChildGuard::spawn("eventmq emq-jobmanager", jm)
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("emq-{tag}-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn our_job_manager_works_under_eventmq_router() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let root = repo_root();
    let work = tempdir("interop-rev");
    let out_file = work.join("lines.txt");
    let a = RouterAddrs::fresh();
    let mut router = Command::new(venv.join("bin/emq-router"));
    router
        .env("EVENTMQ_FRONTEND_ADDR", &a.frontend)
        .env("EVENTMQ_BACKEND_ADDR", &a.backend)
        .env("EVENTMQ_ADMINISTRATIVE_ADDR", &a.admin)
        .env("EVENTMQ_WAL", work.join("wal.log"))
        .current_dir(&work)
        .stderr(std::fs::File::create(work.join("router.log")).unwrap());
    let _router = ChildGuard::spawn("eventmq emq-router", router);
    wait_for_status(&a.admin);

    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    eventually(Duration::from_secs(60), || (router_free_slots(&a.admin) >= 2 * SLOTS_PER_WORKER).then_some(()));
    for reply in [false, true] {
        let mut c = Command::new(venv.join("bin/python"));
        c.arg(root.join("scripts/eventmq_send.py"))
            .args(["--addr", &a.frontend, "--queue", "default", "--path", "benchjobs", "--callable", "append_line"])
            .args(["--args", &serde_json::json!([out_file, "via eventmq router"]).to_string(), "--count", "3"]);
        if reply {
            c.arg("--reply-requested");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "eventmq_send: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lines = eventually(Duration::from_secs(60), || {
        let l = read_lines(&out_file);
        (l.len() >= 6).then_some(l)
    });
    assert_eq!(lines.len(), 6);
    println!("emq-jobmanager ran {} jobs from EventMQ's client through EventMQ's router", lines.len());
    // Slots come back after the jobs: the router can keep dispatching.
    eventually(Duration::from_secs(30), || (router_free_slots(&a.admin) >= 2 * SLOTS_PER_WORKER).then_some(()));
    // Our emq-cli reads EventMQ's router.
    for args in [vec!["status", "--json"], vec!["workers"], vec!["status"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_emq-cli")).args(["--addr", &a.admin]).args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        println!("emq-cli {args:?} against EventMQ's router:\n{text}");
        if args[0] == "status" && args.len() == 2 {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["processed_messages_by_queue"].is_object());
        }
    }
    let log = std::fs::read_to_string(work.join("router.log")).unwrap_or_default();
    assert!(!log.contains("Traceback"), "EventMQ's router raised:\n{log}");
}

/// `unique:KEY` from EventMQ's own client code (its `send_emqp_message`,
/// which `send_request` calls, with the extra header): three sends while no
/// job manager is up make one job, run once.
#[test]
fn eventmq_client_unique_header_makes_one_job() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[]);
    let root = repo_root();
    let work = tempdir("interop-unique");
    let out_file = work.join("lines.txt");
    for _ in 0..3 {
        let out = Command::new(venv.join("bin/python"))
            .arg(root.join("scripts/eventmq_send.py"))
            .args(["--addr", &a.frontend, "--queue", "default", "--path", "benchjobs", "--callable", "append_line"])
            .args(["--args", &serde_json::json!([out_file, "unique"]).to_string(), "--header", "unique:nightly"])
            .args(["--expect-replies", "1", "--wait", "30", "--connect-timeout", "30"])
            .output()
            .unwrap();
        assert!(out.status.success(), "eventmq_send: {}", String::from_utf8_lossy(&out.stderr));
    }
    let st = admin(&a.admin, "STATUS");
    assert_eq!(st["waiting_messages_by_queue"]["default"].as_u64(), Some(1), "one job held the key: {st}");
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    eventually(Duration::from_secs(60), || (read_lines(&out_file).len() == 1).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_lines(&out_file), ["unique"], "run once");
}

/// `limit:NAME` from EventMQ's own client code: the router holds the limit
/// (concurrency 1) for jobs EventMQ's client sent, while two workers are free.
#[test]
fn eventmq_client_limit_header_is_enforced() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[("EMQ_LIMITS", "one=concurrency:1")]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[("EMQ_ALLOWED_PATHS", "limitjobs")]);
    wait_slots(&a.admin, 2);
    let root = repo_root();
    let work = tempdir("interop-limit");
    let log = work.join("runs.log");
    for i in 0..4 {
        let out = Command::new(venv.join("bin/python"))
            .arg(root.join("scripts/eventmq_send.py"))
            .args(["--addr", &a.frontend, "--queue", "default", "--path", "limitjobs", "--callable", "span"])
            .args(["--args", &serde_json::json!([log, format!("e{i}"), 0.3]).to_string(), "--header", "limit:one"])
            .args(["--expect-replies", "1", "--wait", "30", "--connect-timeout", "30"])
            .output()
            .unwrap();
        assert!(out.status.success(), "eventmq_send: {}", String::from_utf8_lossy(&out.stderr));
    }
    eventually(Duration::from_secs(60), || {
        (read_lines(&log).iter().filter(|l| l.starts_with("end")).count() == 4).then_some(())
    });
    // Never two at once: each start comes after the previous end.
    let lines = read_lines(&log);
    let mut running = 0;
    for l in &lines {
        running += if l.starts_with("start") { 1 } else { -1 };
        assert!(running <= 1, "two jobs of limit one at once: {lines:?}");
    }
}

/// `requires:` from EventMQ's own client code: a job it sends with
/// `requires:gpu` runs on the job manager with that label; one with
/// `requires:tpu` waits (queued) while none has it.
#[test]
fn eventmq_client_requires_header_pins_the_job() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[("EMQ_LABELS", "gpu")]);
    wait_slots(&a.admin, 1);
    let root = repo_root();
    let work = tempdir("interop-requires");
    let out_file = work.join("lines.txt");
    let send = |label: &str, expect_replies: &str| {
        let out = Command::new(venv.join("bin/python"))
            .arg(root.join("scripts/eventmq_send.py"))
            .args(["--addr", &a.frontend, "--queue", "default", "--path", "benchjobs", "--callable", "append_line"])
            .args([
                "--args",
                &serde_json::json!([out_file, label]).to_string(),
                "--header",
                &format!("requires:{label}"),
            ])
            .args(["--expect-replies", expect_replies, "--wait", "30", "--connect-timeout", "30"])
            .output()
            .unwrap();
        assert!(out.status.success(), "eventmq_send: {}", String::from_utf8_lossy(&out.stderr));
    };
    send("tpu", "1");
    send("gpu", "1");
    eventually(Duration::from_secs(60), || (read_lines(&out_file) == ["gpu"]).then_some(()));
    let st = admin(&a.admin, "STATUS");
    assert_eq!(st["waiting_messages_by_queue"]["default"].as_u64(), Some(1), "the tpu job waits: {st}");
    assert_eq!(st["waiting_not_allowed"]["default"]["wants"], serde_json::json!(["requires:tpu"]), "{st}");
}

/// Command jobs never reach EventMQ's job manager (it says no `commands`
/// at INFORM): with only it connected a command job waits (STATUS says
/// why) while callables sent after it run there; our job manager with
/// `allowed_commands` comes and runs it.
#[test]
fn command_jobs_never_reach_eventmq_job_manager() {
    let Some(venv) = eventmq_venv() else {
        eprintln!("SKIP: EMQ_SKIP_INTEROP=1");
        return;
    };
    let (_router, a) = start_router(&[]);
    let work = tempdir("interop-commands");
    let out_file = work.join("lines.txt");
    let _jm = start_eventmq_jobmanager(&venv, &a.backend, &work);
    eventually(Duration::from_secs(60), || (router_free_slots(&a.admin) == 2).then_some(()));

    let mut client = emq_client::Client::connect(&a.frontend).unwrap();
    let deadline = || std::time::Instant::now() + Duration::from_secs(60);
    let marker = work.join("ran-by-command");
    let cmd = emq_client::CommandPayload::new(["/usr/bin/touch".to_owned(), marker.display().to_string()]);
    let cmd_id = client.send_command("default", &cmd, &emq_client::Options::default()).unwrap();
    // Callables behind it run on EventMQ's job manager.
    let mut job = emq_client::job_for("benchjobs.append_line").unwrap();
    job.args = vec![serde_json::json!(out_file), serde_json::json!("callable")];
    for _ in 0..3 {
        client.send_request("default", &job, &emq_client::Options::default()).unwrap();
    }
    eventually(Duration::from_secs(60), || (read_lines(&out_file).len() == 3).then_some(()));
    let st = admin(&a.admin, "STATUS");
    assert_eq!(st["waiting_messages_by_queue"]["default"].as_u64(), Some(1), "the command job waits: {st}");
    assert_eq!(st["waiting_not_allowed"]["default"]["waiting_for_commands"], 1, "{st}");
    assert!(!marker.exists());
    let log = std::fs::read_to_string(work.join("jm.log")).unwrap_or_default();
    assert!(!log.contains("touch"), "EventMQ's job manager saw the command: {log}");

    let _ours = start_jobmanager(&a.backend, "default", 1, &[("EMQ_ALLOWED_COMMANDS", "/usr/bin/touch")]);
    match client.wait(&cmd_id, deadline()) {
        emq_client::JobOutcome::Value(v) => assert_eq!(v["exit_code"], 0, "{v}"),
        other => panic!("{other:?}"),
    }
    assert!(marker.exists(), "our job manager ran it");
}
