//! No setting or flag value can panic a binary: `inf`, `NaN`, negative,
//! huge, zero where zero is meaningless, ports out of range — each is one
//! line on stderr naming the key (or flag) and exit status 2, never 101 (a
//! panic) and never a server that starts anyway. And a running router
//! survives a bad SIGHUP reload, keeping its old settings, then applies a
//! good one.

mod common;

use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A fresh, empty working directory: no stray `./settings.toml`.
fn empty_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emq-settings-validation-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `bin` with `args` and `env` in an empty directory; returns its exit
/// code and stderr. Hang guard: 20 s (a binary that starts despite a bad
/// value is killed by the guard and the test fails).
fn run(bin: &str, args: &[&str], env: &[(&str, &str)], dir: &PathBuf) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::piped()).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut g = ChildGuard::spawn(bin, cmd);
    let st = g.wait_exit(Duration::from_secs(20));
    assert!(st.is_some(), "{bin} {args:?} {env:?} did not exit: it started despite a bad value");
    let mut err = String::new();
    use std::io::Read;
    g.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (st.unwrap().code(), err)
}

/// Asserts exit status 2 and one line on stderr naming `key`.
fn refused(bin: &str, args: &[&str], env: &[(&str, &str)], key: &str, dir: &PathBuf) {
    let (code, err) = run(bin, args, env, dir);
    let name = bin.rsplit('/').next().unwrap();
    assert_eq!(code, Some(2), "{name} {args:?} {env:?}: want exit 2 (101 = panic); stderr:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "{name} {args:?} {env:?}: want one line:\n{err}");
    assert!(err.contains(key), "{name} {args:?} {env:?}: stderr does not name {key}: {err}");
}

#[test]
fn router_refuses_bad_values_with_one_line_naming_the_key() {
    let dir = empty_dir("router");
    let bin = env!("CARGO_BIN_EXE_emq-router");
    // Free ports, so a router that wrongly starts binds nothing shared.
    let a = RouterAddrs::fresh();
    let flags = ["--frontend-addr", &a.frontend, "--backend-addr", &a.backend, "--administrative-addr", &a.admin];
    let http = ("EMQ_HTTP_ADDR", a.http.as_str());
    for (k, v, key) in [
        ("EMQ_HEARTBEAT_INTERVAL", "inf", "heartbeat_interval"),
        ("EMQ_HEARTBEAT_INTERVAL", "0", "heartbeat_interval"),
        ("EMQ_HEARTBEAT_TIMEOUT", "NaN", "heartbeat_timeout"),
        ("EVENTMQ_HEARTBEAT_TIMEOUT", "-inf", "heartbeat_timeout"),
        ("EMQ_RETRY_DELAY", "-1", "retry_delay"),
        ("EMQ_RETRY_DELAY", "1e300", "retry_delay"),
        ("EMQ_RETRY_MULTIPLIER", "inf", "retry_multiplier"),
        ("EMQ_RETRY_MULTIPLIER", "0.5", "retry_multiplier"),
        ("EMQ_BUFFER_MEMORY", "0", "buffer_memory"),
        ("EMQ_LOG_LEVEL", "verbose", "log_level"),
        ("EMQ_HEARBEAT_INTERVAL", "1", "did you mean heartbeat_interval"),
        ("EMQ_ON_FULL", "sometimes", "on_full"),
        ("EMQ_HWM", "1e300", "hwm"),
        ("EMQ_SOCKET_HWM", "0", "socket_hwm"),
        ("EMQ_JOB_HISTORY", "1e300", "job_history"),
        ("EMQ_DEAD_LETTER_MAX", "1e300", "dead_letter_max"),
        ("EMQ_LOG_LEVEL", "info=bogus[", "log_level"),
    ] {
        refused(bin, &flags, &[(k, v), http], key, &dir);
    }
    // Addresses: through the environment (no flag overriding them) ...
    let (fe, be, ad) =
        (("--frontend-addr", &a.frontend), ("--backend-addr", &a.backend), ("--administrative-addr", &a.admin));
    refused(
        bin,
        &[be.0, be.1, ad.0, ad.1],
        &[("EMQ_FRONTEND_ADDR", "tcp://127.0.0.1:99999"), http],
        "frontend_addr",
        &dir,
    );
    refused(bin, &[fe.0, fe.1, ad.0, ad.1], &[("EMQ_BACKEND_ADDR", "tcp://127.0.0.1"), http], "backend_addr", &dir);
    refused(
        bin,
        &[fe.0, fe.1, be.0, be.1],
        &[("EVENTMQ_ADMINISTRATIVE_ADDR", "tcp://127.0.0.1:65536"), http],
        "administrative_addr",
        &dir,
    );
    refused(bin, &flags, &[("EMQ_HTTP_ADDR", "127.0.0.1:99999")], "http_addr", &dir);
    // ... and flags.
    refused(bin, &[fe.0, "tcp://127.0.0.1:0", be.0, be.1, ad.0, ad.1], &[http], "frontend_addr", &dir);
    // A settings file: TOML spells infinity `inf`.
    let file = dir.join("bad.toml");
    std::fs::write(&file, "heartbeat_timeout = inf\n").unwrap();
    let mut with_file = flags.to_vec();
    with_file.extend(["--config", file.to_str().unwrap()]);
    refused(bin, &with_file, &[http], "heartbeat_timeout", &dir);
}

#[test]
fn job_manager_refuses_bad_values_with_one_line_naming_the_key() {
    let dir = empty_dir("jm");
    let bin = env!("CARGO_BIN_EXE_emq-jobmanager");
    // Nobody listens there: a job manager that wrongly starts just waits
    // (and the hang guard fails the test).
    let nobody = tcp(free_port());
    let flags = ["-B", nobody.as_str()];
    for (k, v, key) in [
        ("EMQ_GLOBAL_TIMEOUT", "1e300", "global_timeout"),
        ("EMQ_GLOBAL_TIMEOUT", "0", "global_timeout"),
        ("EMQ_HEARTBEAT_INTERVAL", "inf", "heartbeat_interval"),
        ("EMQ_HEARTBEAT_TIMEOUT", "NaN", "heartbeat_timeout"),
        ("EMQ_HEARTBEAT_LIVENESS", "1e300", "heartbeat_liveness"),
        ("EMQ_KILL_GRACE_PERIOD", "-1", "kill_grace_period"),
        ("EMQ_KILL_ESCALATION", "inf", "kill_escalation"),
        ("EMQ_STEAL_AFTER", "NaN", "steal_after"),
        ("EMQ_REPLY_LINGER", "0.5", "reply_linger"),
        ("EMQ_REPLY_LINGER", "-0.001", "reply_linger"),
        ("EMQ_PREFETCH_BELOW", "-0.5", "prefetch_below"),
        ("EMQ_PREFETCH_SPAN", "0", "prefetch_span"),
        ("EMQ_PREFETCH_SPAN", "1e9", "prefetch_span"),
        ("EMQ_PREFETCH_BYTES", "1000", "prefetch_bytes"),
        ("EMQ_RECONNECT_TIMEOUT", "-inf", "reconnect_timeout"),
        ("EMQ_WORKER_PIPELINE", "0", "worker_pipeline"),
        ("EMQ_PREFETCH", "1e300", "prefetch"),
        ("EMQ_SPARE_WORKERS", "100000", "spare_workers"),
        ("EMQ_CONCURRENT_JOBS", "100000", "concurrent_jobs"),
        ("EMQ_MAX_JOB_COUNT", "0", "max_job_count"),
        ("EMQ_WORKER_ADDR_FAILOVER", "tcp://127.0.0.1:99999", "worker_addr_failover"),
    ] {
        refused(bin, &flags, &[(k, v)], key, &dir);
    }
    refused(bin, &[], &[("EMQ_WORKER_ADDR", "tcp://127.0.0.1:99999")], "worker_addr", &dir);
    refused(bin, &["-B", nobody.as_str(), "-J", "0"], &[], "concurrent_jobs", &dir);
}

#[test]
fn emq_send_refuses_bad_flags_with_one_line_naming_the_flag() {
    let dir = empty_dir("send");
    let bin = env!("CARGO_BIN_EXE_emq-send");
    let nobody = tcp(free_port());
    for (flag, v) in [
        ("--deadline", "inf"),
        ("--deadline", "NaN"),
        ("--deadline", "-1"),
        ("--deadline", "1e300"),
        ("--timeout", "-1"),
        ("--timeout", "1e300"),
        ("--retry", "-1"),
        ("--count", "0"),
        ("--window", "0"),
        ("--window", "1e300"),
    ] {
        refused(bin, &["--addr", &nobody, flag, v, "benchjobs.add", "1", "2"], &[], flag, &dir);
    }
    refused(bin, &["--addr", "tcp://127.0.0.1:99999", "benchjobs.add"], &[], "--addr", &dir);
    refused(bin, &["benchjobs.add"], &[("EMQ_FRONTEND_ADDR", "tcp://127.0.0.1:99999")], "frontend_addr", &dir);
}

#[test]
fn emq_cli_refuses_bad_flags_with_one_line_naming_the_flag() {
    let dir = empty_dir("cli");
    let bin = env!("CARGO_BIN_EXE_emq-cli");
    let nobody = tcp(free_port());
    for v in ["inf", "NaN", "-1", "1e300"] {
        refused(bin, &["--addr", &nobody, "--deadline", v, "status"], &[], "--deadline", &dir);
        refused(bin, &["status", "--addr", &nobody, "--deadline", v], &[], "--deadline", &dir);
    }
    refused(bin, &["status"], &[("EMQ_ADMINISTRATIVE_ADDR", "tcp://127.0.0.1:99999")], "administrative_addr", &dir);
}

#[test]
fn emq_up_refuses_bad_values_before_starting_anything() {
    let dir = empty_dir("up");
    let bin = env!("CARGO_BIN_EXE_emq");
    refused(bin, &["up"], &[("EMQ_HEARTBEAT_INTERVAL", "inf")], "heartbeat_interval", &dir);
    refused(bin, &["up"], &[("EMQ_KILL_GRACE_PERIOD", "-1")], "kill_grace_period", &dir);
    refused(bin, &["up", "-J", "0"], &[], "concurrent_jobs", &dir);
}

/// The router's settings file on the given addresses, plus `extra` lines.
fn router_file(a: &RouterAddrs, extra: &str) -> String {
    format!(
        "frontend_addr = \"{}\"\nbackend_addr = \"{}\"\nadministrative_addr = \"{}\"\nhttp_addr = \"\"\n{extra}\n",
        a.frontend, a.backend, a.admin
    )
}

#[test]
fn router_survives_a_bad_sighup_reload_and_applies_a_good_one() {
    use nix::sys::signal::Signal;
    let dir = empty_dir("sighup");
    let file = dir.join("emq.toml");
    let log = dir.join("router.log");
    // Free ports can be taken between picking and binding: retry a few times.
    let (mut router, a) = (0..5)
        .find_map(|_| {
            let a = RouterAddrs::fresh();
            std::fs::write(&file, router_file(&a, "")).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-router"));
            cmd.arg("--config")
                .arg(&file)
                .current_dir(&dir)
                .env("EMQ_DATA_DIR", &a.data_dir)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stderr(std::fs::File::create(&log).unwrap());
            let mut g = ChildGuard::spawn("emq-router", cmd);
            for _ in 0..100 {
                if let Ok(Some(_)) = g.child.try_wait() {
                    return None;
                }
                let d = Dealer::connect(&a.admin);
                d.send(&["", "eMQP/1.0", "STATUS", "admin:probe"]);
                if d.recv_timeout(200).is_some() {
                    return Some((g, a));
                }
            }
            panic!("router never answered STATUS");
        })
        .expect("router started");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // A bad value: logged with its key, old settings kept, still serving.
    std::fs::write(&file, router_file(&a, "heartbeat_interval = inf\nhwm = 3")).unwrap();
    router.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), || log_text().contains("heartbeat_interval = inf").then_some(()));
    assert!(log_text().contains("settings not reloaded"), "{}", log_text());
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(router.child.try_wait(), Ok(None)), "router died on a bad SIGHUP:\n{}", log_text());
    let status = admin(&a.admin, "STATUS");
    assert!(status.get("waiting_messages_by_queue").is_some(), "{status}");
    // No limit "new" yet: a job naming it is refused.
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested,limit:new", "benchjobs", "add", json!([1, 1]));
    let v = c.wait(&id, 30);
    assert!(v["error"]["message"].as_str().unwrap_or("").contains("unknown limit"), "{v}");

    // A good change (and an address change, which needs a restart): hwm
    // applies at once, the old frontend stays bound.
    let moved = RouterAddrs { frontend: tcp(free_port()), ..RouterAddrs::fresh() };
    let good = format!(
        "frontend_addr = \"{}\"\nbackend_addr = \"{}\"\nadministrative_addr = \"{}\"\nhttp_addr = \"\"\nhwm = 3\n[limits]\nnew = {{ concurrency = 1 }}\n",
        moved.frontend, a.backend, a.admin
    );
    std::fs::write(&file, good).unwrap();
    router.signal(Signal::SIGHUP);
    eventually(Duration::from_secs(10), || log_text().contains("SIGHUP: settings reloaded").then_some(()));
    assert!(log_text().contains("need a restart"), "{}", log_text());
    assert!(matches!(router.child.try_wait(), Ok(None)), "router died on SIGHUP:\n{}", log_text());

    // No job manager: three jobs wait, the fourth is refused as full.
    let mut c = TestClient::connect(&a.frontend);
    let ids: Vec<String> = (0..4).map(|i| c.send("default", "", "benchjobs", "add", json!([i, i]))).collect();
    let v = c.wait(&ids[3], 30);
    assert_eq!(v["error"]["type"], "refused", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("full"), "{v}");
    let s = admin(&a.admin, "STATUS");
    assert_eq!(s["waiting_messages_by_queue"]["default"], 3, "{s}");
    assert_eq!(s["limits"]["new"]["concurrency"], 1, "SIGHUP applied the new limit: {s}");
}
