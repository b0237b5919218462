//! What a new user met in the first hour (issue 22), each as it was met:
//! the real router, job manager and clients on loopback, default settings
//! unless the case needs others.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

/// The live job managers the router lists (their connection identities;
/// ones removed for silence are listed as `stale` and left out here).
fn job_manager_ids(admin_addr: &str) -> BTreeSet<String> {
    let w = admin(admin_addr, "ROUTER_SHOW_WORKERS");
    w["connected_workers"]
        .as_object()
        .map(|m| m.iter().filter(|(_, v)| v["state"] != "stale").map(|(k, _)| k.clone()).collect())
        .unwrap_or_default()
}

/// One of the router's counters from STATUS (errors or activity), 0 when absent.
fn counter(admin_addr: &str, name: &str) -> u64 {
    let st = admin(admin_addr, "STATUS");
    ["errors", "activity"].iter().filter_map(|k| st[k][name].as_u64()).sum()
}

/// Default heartbeats for the job manager (the helper makes them fast).
const DEFAULT_HEARTBEATS: [(&str, &str); 1] = [("EMQ_HEARTBEAT_INTERVAL", "3")];

/// An idle router (default settings, journal synced) keeps heartbeating
/// its job manager: over 60 s, no reconnect, no heartbeat timeout.
#[test]
fn an_idle_router_keeps_its_job_manager_for_60_s() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &DEFAULT_HEARTBEATS);
    wait_slots(&a.admin, 1);
    let before = job_manager_ids(&a.admin);
    assert_eq!(before.len(), 1);
    std::thread::sleep(Duration::from_secs(60));
    let after = job_manager_ids(&a.admin);
    println!("idle 60 s: job manager identities before {before:?}, after {after:?}");
    assert_eq!(before, after, "the job manager reconnected under a new identity");
    assert_eq!(counter(&a.admin, "heartbeat_timeouts"), 0);
}

/// A 40 s job on an idle router: its result comes back from the job
/// manager it ran on, with no reconnect in between (it came at 51 s when
/// the router's heartbeats waited for an empty journal batch).
#[test]
fn a_40_s_job_on_an_idle_router_returns_without_a_reconnect() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &DEFAULT_HEARTBEATS);
    wait_slots(&a.admin, 1);
    let before = job_manager_ids(&a.admin);
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_emq-send"))
        .args(["--addr", &a.frontend, "--deadline", "300", "--wait", "testjobs.sleep", "40"])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!("40 s job: result after {secs:.1} s");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(job_manager_ids(&a.admin), before, "the job manager reconnected");
    assert_eq!(counter(&a.admin, "heartbeat_timeouts"), 0);
    assert_eq!(counter(&a.admin, "forged_reply"), 0);
}

/// A real silence: the router is paused (SIGSTOP, like a frozen VM) for
/// longer than the job manager waits for it, so the job manager reconnects
/// under a new identity while its job runs. When the router resumes, the
/// job's REPLY through the new identity is taken, and the client gets the
/// result once. `stop` below the router's heartbeat_timeout: the router
/// still lists the earlier connection; above it: it suspected it.
fn reconnect_with_a_running_job(stop: Duration) {
    let log = std::env::var("EMQTEST_LOG").unwrap_or_else(|_| "warn".into());
    let (r, a) = start_router(&[("EMQ_HEARTBEAT_INTERVAL", "0.5"), ("EMQ_HEARTBEAT_TIMEOUT", "5"), ("RUST_LOG", &log)]);
    let _jm = start_jobmanager(
        &a.backend,
        "default",
        1,
        &[("EMQ_HEARTBEAT_TIMEOUT", "1"), ("EMQ_HEARTBEAT_LIVENESS", "2"), ("EMQ_HEARTBEAT_INTERVAL", "0.5")],
    );
    wait_slots(&a.admin, 1);
    let before = job_manager_ids(&a.admin);
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested", "testjobs", "sleep", serde_json::json!([6 + stop.as_secs()]));
    eventually(Duration::from_secs(30), || (admin_job(&a, &id)["state"] == "dispatched").then_some(()));
    r.signal(nix::sys::signal::Signal::SIGSTOP);
    std::thread::sleep(stop);
    r.signal(nix::sys::signal::Signal::SIGCONT);
    let v = c.wait(&id, 60);
    assert_eq!(v["value"], serde_json::json!(6 + stop.as_secs()), "{v}");
    assert!(v.get("error").is_none(), "the job's result, not an error: {v}");
    // Once: no second result.
    assert!(c.dealer.recv_skip_heartbeats(3000).is_none(), "a second answer came");
    let after = job_manager_ids(&a.admin);
    assert_ne!(before, after, "the job manager did reconnect (the case under test)");
    assert_eq!(after.len(), 1, "one job manager listed: {after:?}");
    assert_eq!(counter(&a.admin, "forged_reply"), 0);
    let rec = admin_job(&a, &id);
    assert_eq!(rec["state"], "done", "{rec}");
    assert_eq!(rec["duplicate_runs"].as_u64().unwrap_or(0), 0, "{rec}");
}

#[test]
fn a_reconnect_before_the_router_noticed_keeps_the_running_job() {
    reconnect_with_a_running_job(Duration::from_secs(4));
}

#[test]
fn a_reconnect_after_the_router_suspected_keeps_the_running_job() {
    reconnect_with_a_running_job(Duration::from_secs(7));
}

/// `emq-send ARGS` against `frontend`, stdout and stderr read line by line
/// as they come (stderr lines through the returned channel).
fn spawn_emq_send(frontend: &str, args: &[&str]) -> (ChildGuard, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-send"));
    cmd.args(["--addr", frontend]).args(args).current_dir(std::env::temp_dir());
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut g = ChildGuard::spawn("emq-send", cmd);
    let stderr = g.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[emq-send] {line}");
            let _ = tx.send(line);
        }
    });
    (g, rx)
}

fn waiting_jobs(admin_addr: &str) -> u64 {
    let st = admin(admin_addr, "STATUS");
    st["waiting_messages_by_queue"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0)
}

/// `emq-send --wait --deadline DEADLINE` on a buffered job (no job manager)
/// whose router then stops gracefully (SIGTERM), after answering its status
/// questions for a while.
fn emq_send_waiting_when_its_router_stops(
    deadline: &str,
) -> (RouterAddrs, ChildGuard, std::sync::mpsc::Receiver<String>) {
    let (mut r, a) = start_router(&[]);
    let (send, lines) = spawn_emq_send(&a.frontend, &["--wait", "--deadline", deadline, "benchjobs.add", "2", "3"]);
    eventually(Duration::from_secs(30), || (waiting_jobs(&a.admin) == 1).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    r.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(r.wait_exit(Duration::from_secs(30)).is_some_and(|s| s.success()), "router stops");
    (a, send, lines)
}

/// `emq up` stopped (SIGTERM) while `emq-send --wait` waited on a buffered
/// job: the client says once that its router is gone (the job is kept),
/// keeps waiting, and gets the result when the router is back.
#[test]
fn a_waiting_emq_send_says_once_that_its_router_is_gone_and_gets_the_result_when_it_is_back() {
    let (a, mut send, lines) = emq_send_waiting_when_its_router_stops("120");
    let gone = Instant::now();
    let said = lines.recv_timeout(Duration::from_secs(30)).expect("emq-send says its router is gone");
    println!("router gone noticed after {:.1} s: {said}", gone.elapsed().as_secs_f64());
    assert!(said.contains("has not answered") && said.contains(&a.frontend), "{said}");
    // Still waiting, and quiet while the router stays away.
    assert!(lines.recv_timeout(Duration::from_secs(4)).is_err(), "said once");
    assert!(send.child.try_wait().unwrap().is_none(), "still waiting");
    // The router comes back with the job from its journal; a job manager runs it.
    let _r2 = start_router_at(&a, &[]).expect("router restarts on its addresses");
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    let st = send.wait_exit(Duration::from_secs(60)).expect("emq-send ends");
    let mut out = String::new();
    std::io::Read::read_to_string(send.child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(st.success(), "exit {st}: {out}");
    assert_eq!(out.trim(), r#"{"value":5}"#);
    let rest: Vec<String> = lines.try_iter().collect();
    assert_eq!(rest.iter().filter(|l| l.contains("has not answered")).count(), 0, "said once: {rest:?}");
    assert!(rest.iter().any(|l| l.contains("answers again")), "{rest:?}");
}

/// The same with `--deadline`: it gives up then (exit 3), having said once
/// why it heard nothing.
#[test]
fn a_waiting_emq_send_gives_up_at_its_deadline_when_the_router_stays_away() {
    let (_a, mut send, lines) = emq_send_waiting_when_its_router_stops("12");
    let st = send.wait_exit(Duration::from_secs(60)).expect("emq-send ends at its deadline");
    assert_eq!(st.code(), Some(3));
    let all: Vec<String> = lines.try_iter().collect();
    assert_eq!(all.iter().filter(|l| l.contains("has not answered")).count(), 1, "{all:?}");
}

/// Nothing listens at the address: said at once, exit 2, no talk of a
/// deadline that was never set.
#[test]
fn emq_send_to_an_address_where_nothing_listens_fails_at_once() {
    let addr = tcp(free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_emq-send"))
        .args(["--addr", &addr, "--wait", "benchjobs.add", "1", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim(), format!("emq-send: no router at {addr}: connection refused"));
}

/// Two job managers on one queue with different `allowed_paths`: every job
/// goes to one that allows it (none refused), and a job neither allows
/// waits, with STATUS saying why.
#[test]
fn job_managers_with_different_allow_lists_share_a_queue_without_refusals() {
    let (_r, a) = start_router(&[]);
    let _bench = start_jobmanager(&a.backend, "default", 1, &[("EMQ_ALLOWED_PATHS", "benchjobs")]);
    let _test = start_jobmanager(&a.backend, "default", 1, &[("EMQ_ALLOWED_PATHS", "testjobs")]);
    wait_slots(&a.admin, 2);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_emq-send"))
            .args(["--addr", &a.frontend, "--deadline", "120"])
            .args(args)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        v
    };
    let bench = run(&["--count", "40", "--wait", "benchjobs.add", "1", "2"]);
    println!("mixed allow-lists, 40 x benchjobs.add: {bench}");
    assert_eq!((bench["succeeded"].as_u64(), bench["failed"].as_u64()), (Some(40), Some(0)), "{bench}");
    let test = run(&["--count", "40", "--wait", "testjobs.add", "1", "2"]);
    println!("mixed allow-lists, 40 x testjobs.add: {test}");
    assert_eq!((test["succeeded"].as_u64(), test["failed"].as_u64()), (Some(40), Some(0)), "{test}");
    // Allowed nowhere: it waits (not refused), and STATUS says why.
    let c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested", "pkg.mod", "f", serde_json::json!([]));
    let st = eventually(Duration::from_secs(30), || {
        let st = admin(&a.admin, "STATUS");
        (st["waiting_not_allowed"]["default"]["waiting"] == 1).then_some(st)
    });
    assert_eq!(st["waiting_not_allowed"]["default"]["modules"], serde_json::json!(["pkg.mod"]));
    assert_eq!(admin_job(&a, &id)["state"], "queued");
    let (ok, text) = emq_cli_as_admin(&a, &["status"]);
    assert!(ok && text.contains("no job manager of it allows pkg.mod"), "{text}");
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Job arguments and results are this user's only (data_dir 0700, files
/// 0600, also when an earlier version left them open); the admin token is
/// kept across restarts and changes only with `emq-cli token rotate`.
#[test]
fn the_data_dir_is_private_and_the_admin_token_lasts_until_rotated() {
    use std::os::unix::fs::PermissionsExt;
    let a = RouterAddrs::fresh();
    std::fs::create_dir_all(&a.data_dir).unwrap();
    std::fs::set_permissions(&a.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old_file = a.data_dir.join("left-by-an-old-version");
    std::fs::write(&old_file, "x").unwrap();
    std::fs::set_permissions(&old_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut r = start_router_at(&a, &[]).expect("router starts");
    let c = TestClient::connect(&a.frontend);
    c.send("default", "", "benchjobs", "add", serde_json::json!([1, 2]));
    eventually(Duration::from_secs(30), || (waiting_jobs(&a.admin) == 1).then_some(()));
    assert_eq!(mode_of(&a.data_dir), 0o700);
    let mut files = 0;
    for e in std::fs::read_dir(&a.data_dir).unwrap().flatten() {
        if e.metadata().unwrap().is_file() {
            files += 1;
            assert_eq!(mode_of(&e.path()) & 0o077, 0, "{} is {:o}", e.path().display(), mode_of(&e.path()));
        }
    }
    assert!(files >= 3, "journal segment, lock, token, ...");
    let token_path = a.data_dir.join("admin.token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    r.signal(nix::sys::signal::Signal::SIGTERM);
    r.wait_exit(Duration::from_secs(30)).expect("router stops");
    let _r = start_router_at(&a, &[]).expect("router restarts");
    assert_eq!(std::fs::read_to_string(&token_path).unwrap(), token, "the token is kept across a restart");
    // The old token, kept by a script, works until rotated.
    let kept = std::env::temp_dir().join(format!("emq-kept-token-{}", uuid::Uuid::new_v4()));
    std::fs::write(&kept, &token).unwrap();
    let with_kept = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_emq-cli"))
            .args(["-a", &a.admin, "--token-file"])
            .arg(&kept)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(with_kept(&["pause", "q"]).status.success());
    let (ok, text) = emq_cli_as_admin(&a, &["token", "rotate"]);
    assert!(ok, "{text}");
    let new = std::fs::read_to_string(&token_path).unwrap();
    assert_ne!(new, token);
    assert_eq!((new.len(), mode_of(&token_path)), (64, 0o600));
    let out = with_kept(&["resume", "q"]);
    assert!(!out.status.success(), "the old token no longer works");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authorized"), "{out:?}");
    let (ok, text) = emq_cli_as_admin(&a, &["resume", "q"]);
    assert!(ok, "the new one does: {text}");
    let _ = std::fs::remove_file(kept);
}

/// `@emq.task` in a job module, in a worker whose Python cannot import the
/// emq package: the job fails saying so and naming `python_venv` (it said
/// `module 'emq' has no attribute 'task'`).
#[test]
fn a_job_module_needing_the_emq_package_says_how_to_get_it() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[("EMQ_ALLOWED_PATHS", "taskjobs,benchjobs")]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let v = c.call("default", "taskjobs", "double", serde_json::json!([2]));
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("emq package is not importable") && message.contains("python_venv"), "{v}");
}

/// The HTTP API: an unknown job is 404 (was 409), a huge URL is 414 at
/// once (was 504 after the admin socket timed out), and the `Bearer`
/// scheme is case-insensitive.
#[test]
fn http_unknown_job_is_404_a_huge_url_414_and_bearer_any_case() {
    let (_r, a) = start_router(&[]);
    let (code, body) = http_get(&a.http, "/api/job/no-such-job");
    assert_eq!(code, 404, "{body}");
    let huge = format!("/api/job/{}", "a".repeat(20 << 20));
    let mut s = std::net::TcpStream::connect(&a.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = std::io::Write::write_all(&mut s, format!("GET {huge} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes());
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut raw);
    let head = String::from_utf8_lossy(&raw[..raw.len().min(64)]).to_string();
    assert!(head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("414"), "{head}");
    let token = std::fs::read_to_string(a.data_dir.join("admin.token")).unwrap();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let mut s = std::net::TcpStream::connect(&a.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"action": "pause", "target": "q"}"#;
        let req = format!(
            "POST /api/action HTTP/1.0\r\nHost: x\r\nAuthorization: {scheme} {token}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        let mut raw = String::new();
        std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"), "{scheme}: {raw}");
    }
}

/// An `EVENTMQ_*` variable EventMQ knows and emq does not use is named in
/// one log line at start (it was ignored without a word).
#[test]
fn an_unused_eventmq_variable_is_named_at_start() {
    let a = RouterAddrs::fresh();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-router"));
    cmd.args(["--frontend-addr", &a.frontend, "--backend-addr", &a.backend, "--administrative-addr", &a.admin])
        .arg("--data-dir")
        .arg(&a.data_dir)
        .args(["--http-addr", ""])
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "warn")
        .env("EVENTMQ_REDIS_HOST", "redis.example")
        .stderr(std::process::Stdio::piped());
    let mut r = ChildGuard::spawn("emq-router", cmd);
    wait_for_status(&a.admin);
    r.signal(nix::sys::signal::Signal::SIGTERM);
    r.wait_exit(Duration::from_secs(30)).expect("router stops");
    let mut err = String::new();
    std::io::Read::read_to_string(r.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("EVENTMQ_REDIS_HOST")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("does not use"), "{err}");
}

/// A job manager pointed at an address where nothing listens says so and
/// exits 2 (it logged `router silent` for ever).
#[test]
fn a_job_manager_pointed_at_nothing_exits_2_saying_so() {
    let addr = tcp(free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"));
    cmd.args(["-B", &addr, "-Q", "default", "-J", "1"])
        .current_dir(std::env::temp_dir())
        .env("EMQ_ALLOWED_PATHS", "benchjobs")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped());
    let mut jm = ChildGuard::spawn("emq-jobmanager", cmd);
    let st = jm.wait_exit(Duration::from_secs(60)).expect("it exits");
    let mut err = String::new();
    std::io::Read::read_to_string(jm.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains(&format!("emq-jobmanager: no router at {addr}: connection refused")), "{err}");
}
