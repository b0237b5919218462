//! Command jobs (issue 28): a job manager with `allowed_commands` runs a
//! program (no shell) in a process group of its own with a small safe
//! environment; its result is `{exit_code, stdout, stderr, *_cut}`; a
//! non-zero exit is a failure that retries; a program not allowed is
//! refused and never runs; a timeout kills the whole group; output is cut
//! to `command_output_bytes`; a job manager that runs no commands (ours
//! without `allowed_commands`) is never sent one.

mod common;

use common::*;
use emq_client::{Client, CommandPayload, JobOutcome, Options};
use serde_json::Value;
use std::time::{Duration, Instant};

const ALLOWED: &str = "/bin/echo,/bin/false,/bin/sh,/usr/bin/seq";

fn start_jm(a: &RouterAddrs, env: &[(&str, &str)]) -> ChildGuard {
    start_jobmanager(&a.backend, "default", 2, env)
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn value(outcome: JobOutcome) -> Value {
    match outcome {
        JobOutcome::Value(v) => v,
        other => panic!("expected a value, got {other:?}"),
    }
}

fn failure(outcome: JobOutcome) -> emq_client::JobError {
    match outcome {
        JobOutcome::Failed(e) | JobOutcome::Timeout(e) | JobOutcome::Refused(e) | JobOutcome::WorkerDied(e) => e,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Processes on this machine (not zombies) whose environment holds
/// `marker` (`KEY=VALUE`): what a command job started, wherever it went.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !environ.split(|&b| b == 0).any(|kv| kv == marker.as_bytes()) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).unwrap_or("?");
        if state != "Z" && state != "?" {
            out.push(pid);
        }
    }
    out
}

#[test]
fn command_jobs_run_fail_are_refused_and_keep_their_output_tail() {
    let (_router, a) = start_router(&[]);
    let _jm = start_jm(&a, &[("EMQ_ALLOWED_COMMANDS", ALLOWED), ("EMQ_COMMAND_OUTPUT_BYTES", "65536")]);
    wait_slots(&a.admin, 2);
    let mut client = Client::connect(&a.frontend).unwrap();
    let opts = Options::default();

    // /bin/echo returns its stdout.
    let id = client.send_command("default", &CommandPayload::new(["/bin/echo", "hello", "world"]), &opts).unwrap();
    let v = value(client.wait(&id, deadline()));
    assert_eq!(v["stdout"], "hello world\n", "{v}");
    assert_eq!(v["stderr"], "");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["stdout_cut"], 0);

    // env over a safe base (nothing of the job manager's), cwd, stdin.
    let mut c = CommandPayload::new(["/bin/sh", "-c", "echo \"$MARK|$HOME|$PATH|$EMQ_ALLOWED_COMMANDS\"; pwd; cat"]);
    c.env.insert("MARK".into(), "m1".into());
    c.cwd = Some("/tmp".into());
    c.stdin = Some("from stdin".into());
    let id = client.send_command("default", &c, &opts).unwrap();
    let v = value(client.wait(&id, deadline()));
    assert_eq!(v["stdout"], "m1||/usr/local/bin:/usr/bin:/bin|\n/tmp\nfrom stdin", "{v}");

    // /bin/false fails; retries apply (one retry: two attempts).
    let retried = Options { retry_count: Some(1), ..Default::default() };
    let id = client.send_command("default", &CommandPayload::new(["/bin/false"]), &retried).unwrap();
    let e = failure(client.wait(&id, deadline()));
    assert_eq!(e.kind.as_str(), "command failed", "{e:?}");
    assert!(e.message.starts_with("exit code 1"), "{e:?}");
    let job = admin_job(&a, &id);
    assert_eq!(job["attempts"], 2, "retried once: {job}");
    // The stderr tail rides along.
    let c = CommandPayload::new(["/bin/sh", "-c", "echo 'it broke' >&2; exit 4"]);
    let id = client.send_command("default", &c, &opts).unwrap();
    let e = failure(client.wait(&id, deadline()));
    assert_eq!(e.message, "exit code 4: it broke");
    assert_eq!(e.traceback, "it broke\n");

    // Outside allowed_commands: refused, naming the setting, and nothing ran.
    let dir = std::env::temp_dir().join(format!("emq-cmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("must-not-exist");
    let _ = std::fs::remove_file(&trace);
    for argv in [
        vec!["/usr/bin/touch".to_owned(), trace.display().to_string()],
        vec!["touch".to_owned(), trace.display().to_string()],
    ] {
        let id = client.send_command("default", &CommandPayload::new(argv), &opts).unwrap();
        let e = failure(client.wait(&id, deadline()));
        assert_eq!(e.kind.as_str(), "refused", "{e:?}");
        assert!(e.message.contains("allowed_commands"), "{e:?}");
    }
    // A path walking out of an allowed one is refused too.
    let id = client.send_command("default", &CommandPayload::new(["/bin/../usr/bin/touch"]), &opts).unwrap();
    assert_eq!(failure(client.wait(&id, deadline())).kind.as_str(), "refused");
    assert!(!trace.exists(), "a refused command ran");

    // 10 MB of output is cut to the budget, keeping the tail.
    let n = 1_500_000u64;
    let total: u64 = (1..=n).map(|i| i.to_string().len() as u64 + 1).sum();
    let id =
        client.send_command("default", &CommandPayload::new(["/usr/bin/seq", "1", &n.to_string()]), &opts).unwrap();
    let v = value(client.wait(&id, deadline()));
    let out = v["stdout"].as_str().unwrap();
    assert!(out.len() <= 65536, "{} bytes kept", out.len());
    assert!(out.ends_with("1499999\n1500000\n"), "the tail is kept");
    assert_eq!(v["stdout_cut"].as_u64().unwrap() + out.len() as u64, total, "cut + kept = all {total} bytes");
    println!("seq printed {total} bytes; kept {}, cut {}", out.len(), v["stdout_cut"]);

    // Counted per command, like callables: in the health and emq-cli.
    let (ok, text) = eventually(Duration::from_secs(20), || {
        let (ok, text) = emq_cli_as_admin(&a, &["workers"]);
        (text.contains("command:/bin/echo") && text.contains("command:/bin/false")).then_some((ok, text))
    });
    assert!(ok, "{text}");
    let line = text.lines().find(|l| l.contains("command:/bin/false")).unwrap();
    println!("{line}");
}

#[test]
fn a_timed_out_command_is_killed_with_its_children() {
    let (_router, a) = start_router(&[]);
    let _jm = start_jm(&a, &[("EMQ_ALLOWED_COMMANDS", ALLOWED), ("EMQ_KILL_ESCALATION", "2")]);
    wait_slots(&a.admin, 2);
    let mut client = Client::connect(&a.frontend).unwrap();
    let marker = format!("EMQ_TEST_MARK={}", emq_protocol::new_msgid());
    let (k, v) = marker.split_once('=').unwrap();
    // A shell with two children, one of which ignores SIGTERM: the group's
    // SIGTERM, the grace, then SIGKILL must end them all.
    let mut c = CommandPayload::new(["/bin/sh", "-c", "sleep 37 & (trap '' TERM; sleep 37) & sleep 37; wait"]);
    c.env.insert(k.into(), v.into());
    let id = client.send_command("default", &c, &Options { timeout: Some(1), ..Default::default() }).unwrap();
    eventually(Duration::from_secs(20), || (processes_with(&marker).len() >= 3).then_some(()));
    let e = failure(client.wait(&id, deadline()));
    assert_eq!(e.kind.as_str(), "timeout", "{e:?}");
    let left = eventually(Duration::from_secs(30), || {
        let left = processes_with(&marker);
        left.is_empty().then_some(left)
    });
    assert!(left.is_empty());
    // The job manager goes on: a new worker runs the next command.
    let id = client.send_command("default", &CommandPayload::new(["/bin/echo", "after"]), &Options::default()).unwrap();
    assert_eq!(value(client.wait(&id, deadline()))["stdout"], "after\n");
}

#[test]
fn command_jobs_wait_for_a_job_manager_that_runs_them() {
    let (_router, a) = start_router(&[]);
    // Ours without allowed_commands: it says no `commands` at INFORM.
    let _plain = start_jm(&a, &[("EMQ_NAME", "plain")]);
    wait_slots(&a.admin, 2);
    let mut client = Client::connect(&a.frontend).unwrap();
    let cmd = client.send_command("default", &CommandPayload::new(["/bin/echo", "late"]), &Options::default()).unwrap();
    // Callables behind it still run there.
    let mut j = emq_client::job_for("testjobs.add").unwrap();
    j.args = vec![serde_json::json!(2), serde_json::json!(3)];
    let add = client.send_request("default", &j, &Options::default()).unwrap();
    assert_eq!(value(client.wait(&add, deadline())), serde_json::json!(5));
    let st = admin_job(&a, &cmd);
    assert_eq!(st["state"], "queued", "{st}");
    let status = wait_for_status(&a.admin);
    assert_eq!(status["waiting_not_allowed"]["default"]["waiting_for_commands"], 1, "{status}");
    let (ok, text) = emq_cli_as_admin(&a, &["status"]);
    assert!(ok && text.contains("command job(s) wait for a job manager that runs commands"), "{text}");
    // One that runs commands comes: the job runs there.
    let _runner = start_jm(&a, &[("EMQ_ALLOWED_COMMANDS", "/bin/*"), ("EMQ_NAME", "runner")]);
    assert_eq!(value(client.wait(&cmd, deadline()))["stdout"], "late\n");
    assert_eq!(admin_job(&a, &cmd)["job_manager_name"], "runner");
}

#[test]
fn emq_send_exec_runs_a_command() {
    let (_router, a) = start_router(&[]);
    let _jm = start_jm(&a, &[("EMQ_ALLOWED_COMMANDS", ALLOWED)]);
    wait_slots(&a.admin, 2);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-send"))
            .args(["--addr", &a.frontend])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["--exec", "--wait", "--env", "WHO=emq", "--", "/bin/sh", "-c", "echo hi $WHO"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["value"]["stdout"], "hi emq\n", "{v}");
    let (code, _, err) = run(&["--exec", "--wait", "--", "/bin/false"]);
    assert_eq!(code, Some(1), "a failing command exits 1: {err}");
    assert!(err.contains("command failed"), "{err}");
    let (code, _, err) = run(&["--exec", "--wait", "--", "/usr/bin/touch", "/tmp/x"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("allowed_commands"), "{err}");
    // Checked before sending.
    let (code, _, err) = run(&["--exec", "--env", "NOEQUALS", "--", "/bin/echo"]);
    assert_eq!(code, Some(2), "{err}");
}

/// As root with `worker_user`, a command runs as that user (it inherits
/// the worker's identity); cancelling a running command kills its group.
#[test]
fn commands_run_as_worker_user_and_a_cancel_kills_the_group() {
    let root = nix::unistd::geteuid().is_root();
    let Some(nobody) = nix::unistd::User::from_name("nobody").ok().flatten() else {
        eprintln!("SKIP: no user nobody here");
        return;
    };
    let (_router, a) = start_router(&[]);
    let mut env = vec![("EMQ_ALLOWED_COMMANDS", "/usr/bin/id,/bin/sh")];
    if root {
        env.push(("EMQ_WORKER_USER", "nobody"));
    }
    let _jm = start_jm(&a, &env);
    wait_slots(&a.admin, 2);
    let mut client = Client::connect(&a.frontend).unwrap();
    let id = client.send_command("default", &CommandPayload::new(["/usr/bin/id", "-u"]), &Options::default()).unwrap();
    let v = value(client.wait(&id, deadline()));
    let expected = if root { nobody.uid.as_raw() } else { nix::unistd::geteuid().as_raw() };
    assert_eq!(v["stdout"], format!("{expected}\n"), "{v}");

    let marker = format!("EMQ_TEST_MARK={}", emq_protocol::new_msgid());
    let (k, val) = marker.split_once('=').unwrap();
    let mut c = CommandPayload::new(["/bin/sh", "-c", "sleep 38 & sleep 38; wait"]);
    c.env.insert(k.into(), val.into());
    let id = client.send_command("default", &c, &Options::default()).unwrap();
    eventually(Duration::from_secs(20), || (processes_with(&marker).len() >= 3).then_some(()));
    let answer = client.cancel(&id, deadline()).unwrap();
    println!("cancel: {answer}");
    let e = failure(client.wait(&id, deadline()));
    assert_eq!(e.kind.as_str(), "cancelled", "{e:?}");
    eventually(Duration::from_secs(30), || processes_with(&marker).is_empty().then_some(()));
}
