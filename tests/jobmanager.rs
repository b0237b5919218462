//! End-to-end tests of `emq-jobmanager` and its pool: our router, our job
//! manager, real Python jobs from `tests/pyjobs`, raw-frame clients.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn error_kind(v: &serde_json::Value) -> &str {
    v["error"]["type"].as_str().unwrap_or_else(|| panic!("no error in {v}"))
}

#[test]
fn add_result_reaches_a_reply_requested_client() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("default", "benchjobs", "add", json!([2, 3])), json!({"value": 5}));
    // Class job with class args / kwargs.
    let id = c.send_payload(
        "default",
        "reply-requested",
        &json!(["run", {"path": "pkg.mod:Counter", "callable": "bump", "args": [2],
                        "class_args": [10], "class_kwargs": {"step": 5}}]),
    );
    assert_eq!(c.wait(&id, 60), json!({"value": 20}));
    // kwargs and nested values survive the JSON ⇄ Python trip.
    let id = c.send_payload(
        "default",
        "reply-requested",
        &json!(["run", {"path": "testjobs", "callable": "echo", "args": [1, [2, {"x": null}]], "kwargs": {"k": true}}]),
    );
    assert_eq!(c.wait(&id, 60)["value"], json!({"args": [1, [2, {"x": null}]], "kwargs": {"k": true}}));
    // print() in a job does not corrupt the worker's frame stream.
    assert_eq!(c.call("default", "testjobs", "noisy", json!(["still fine"])), json!({"value": "still fine"}));
}

#[test]
fn failures_are_error_replies_and_the_pool_keeps_serving() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);

    let v = c.call("default", "testjobs", "fail", json!(["boom"]));
    assert_eq!(error_kind(&v), "ValueError");
    assert_eq!(v["value"], "boom", "EventMQ-era readers still see the message");
    let tb = v["error"]["traceback"].as_str().unwrap();
    assert!(tb.contains("Traceback") && tb.contains("testjobs.py") && tb.contains("raise ValueError"), "{tb}");

    let v = c.call("default", "no_such_module", "f", json!([]));
    assert_eq!(error_kind(&v), "ModuleNotFoundError");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("no_such_module") && msg.contains("sys.path") && msg.contains("pyjobs"), "{msg}");

    let v = c.call("default", "testjobs", "unserialisable", json!([]));
    assert_eq!(error_kind(&v), "TypeError");
    assert!(v["error"]["message"].as_str().unwrap().contains("not JSON serializable"));

    let id = c.send_payload("default", "reply-requested", &json!(["walk", {}]));
    assert_eq!(error_kind(&c.wait(&id, 60)), "BadPayload");

    // All of that on one worker process, which still serves.
    assert_eq!(c.call("default", "benchjobs", "add", json!([1, 1])), json!({"value": 2}));
    wait_slots(&a.admin, 1);
}

#[test]
fn dead_worker_is_replaced_and_its_job_fails_visibly() {
    let (_r, a) = start_router(&[]);
    let jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let mut c = TestClient::connect(&a.frontend);
    // Two concurrent slow jobs occupy both workers: their pids.
    let pids = |c: &mut TestClient| -> std::collections::HashSet<u64> {
        let ids: Vec<String> =
            (0..2).map(|_| c.send("default", "reply-requested", "testjobs", "slow_pid", json!([0.3]))).collect();
        ids.iter().map(|id| c.wait(id, 60)["value"].as_u64().unwrap()).collect()
    };
    let before = pids(&mut c);
    assert_eq!(before.len(), 2);

    let v = c.call("default", "testjobs", "crash", json!([1]));
    assert_eq!(error_kind(&v), "worker died");
    assert!(v["error"]["message"].as_str().unwrap().contains("exit status 1"), "{v}");
    let v = c.call("default", "testjobs", "segfault", json!([]));
    assert_eq!(error_kind(&v), "worker died");
    assert!(v["error"]["message"].as_str().unwrap().contains("SIGSEGV"), "{v}");

    // Back to full size at the router, with new pids; later jobs run.
    wait_slots(&a.admin, 2);
    let v = c.call("default", "testjobs", "pid", json!([]));
    assert_eq!(
        v["value"]["ppid"].as_u64().unwrap() as i32,
        jm.pid(),
        "workers belong to the job manager (its children, or its warm template's)"
    );
    let after = pids(&mut c);
    assert_eq!(after.len(), 2, "two workers serve: {after:?}");
    assert!(after.is_disjoint(&before), "both crashed workers were replaced: before {before:?}, after {after:?}");
    let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
    let health = w["connected_workers"].as_object().unwrap().values().next().unwrap()["health"].clone();
    println!("health after crashes: {health}");
}

#[test]
fn timeout_kills_the_job_and_a_fresh_worker_takes_the_slot() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let old = c.call("default", "testjobs", "pid", json!([]))["value"]["pid"].as_u64().unwrap();
    let t0 = Instant::now();
    let id = c.send("default", "reply-requested,timeout:1", "testjobs", "sleep", json!([10]));
    let v = c.wait(&id, 30);
    let took = t0.elapsed();
    assert_eq!(error_kind(&v), "timeout");
    // Killed, not finished: it came back before the job's own 10 s sleep.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    println!("timeout:1 on a 10 s job answered after {took:?}");
    let new = c.call("default", "testjobs", "pid", json!([]))["value"]["pid"].as_u64().unwrap();
    assert_ne!(old, new, "a fresh worker took the slot");
    wait_slots(&a.admin, 1);
}

#[test]
fn workers_are_recycled_after_max_job_count() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[("EMQ_MAX_JOB_COUNT", "3")]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let mut per_pid: HashMap<u64, u32> = HashMap::new();
    for _ in 0..10 {
        let pid = c.call("default", "testjobs", "pid", json!([]))["value"]["pid"].as_u64().unwrap();
        *per_pid.entry(pid).or_default() += 1;
    }
    println!("jobs per pid with max_job_count=3: {per_pid:?}");
    assert!(per_pid.values().all(|&n| n <= 3), "{per_pid:?}");
    assert_eq!(per_pid.len(), 4, "10 jobs at 3 per worker need 4 workers: {per_pid:?}");
}

#[test]
fn jobs_go_only_to_managers_of_their_queue() {
    let (_r, a) = start_router(&[]);
    let jm_a = start_jobmanager(&a.backend, "qa", 1, &[]);
    let jm_b = start_jobmanager(&a.backend, "qb", 1, &[]);
    wait_slots(&a.admin, 2);
    let mut c = TestClient::connect(&a.frontend);
    for _ in 0..4 {
        let pa = c.call("qa", "testjobs", "pid", json!([]))["value"]["ppid"].as_u64().unwrap() as i32;
        let pb = c.call("qb", "testjobs", "pid", json!([]))["value"]["ppid"].as_u64().unwrap() as i32;
        assert_eq!((pa, pb), (jm_a.pid(), jm_b.pid()));
    }
}

#[test]
fn jobs_sent_before_the_job_manager_starts_run_once_it_connects() {
    let (_r, a) = start_router(&[]);
    let mut c = TestClient::connect(&a.frontend);
    let ids: Vec<String> =
        (0..5).map(|i| c.send("emails", "reply-requested", "benchjobs", "add", json!([i, 100]))).collect();
    std::thread::sleep(Duration::from_millis(300));
    let _jm = start_jobmanager(&a.backend, "emails", 2, &[]);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(c.wait(id, 60), json!({"value": i + 100}));
    }
}

#[test]
fn sigterm_lets_the_running_job_finish_then_exits_zero() {
    let (_r, a) = start_router(&[]);
    // No prefetch: the free-slot count tells exactly when the job started.
    let mut jm = start_jobmanager(&a.backend, "default", 2, &[("EMQ_PREFETCH", "0")]);
    wait_slots(&a.admin, 2);
    let mut c = TestClient::connect(&a.frontend);
    let id = c.send("default", "reply-requested", "testjobs", "sleep", json!([1.5]));
    // Let it start, then ask the job manager to stop.
    eventually(Duration::from_secs(10), || (router_free_slots(&a.admin) == 2 * SLOTS_PER_WORKER - 1).then_some(()));
    jm.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(c.wait(&id, 30), json!({"value": 1.5}), "the running job completed");
    let st = jm.wait_exit(Duration::from_secs(30)).expect("job manager exits");
    assert_eq!(st.code(), Some(0));
    // Its workers went with it.
    eventually(Duration::from_secs(10), || {
        admin(&a.admin, "ROUTER_SHOW_WORKERS")["connected_workers"].as_object().unwrap().is_empty().then_some(())
    });
}

#[test]
fn a_job_outside_allowed_paths_waits_for_a_job_manager_that_allows_it() {
    let (_r, a) = start_router(&[]);
    let work = std::env::temp_dir().join(format!("emq-allowed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    let marker = work.join("should-not-exist");
    let _jm = start_jobmanager(&a.backend, "default", 1, &[("EMQ_ALLOWED_PATHS", "benchjobs,pkg")]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    // Our router hands it only what it allows (said at INFORM): the other
    // job waits for a job manager that allows it, and does not run here.
    let id = c.send("default", "reply-requested", "testjobs", "append_line", json!([marker, "x"]));
    assert_eq!(c.call("default", "benchjobs", "add", json!([2, 2])), json!({"value": 4}), "not stuck behind it");
    let st = admin(&a.admin, "STATUS");
    assert_eq!(st["waiting_not_allowed"]["default"]["modules"], json!(["testjobs"]), "{st}");
    assert_eq!(admin_job(&a, &id)["state"], "queued");
    assert!(!marker.exists(), "the job did not run");
    let _other = start_jobmanager(&a.backend, "default", 1, &[("EMQ_ALLOWED_PATHS", "testjobs")]);
    assert_eq!(c.wait(&id, 60)["error"], serde_json::Value::Null);
    assert!(marker.exists(), "it ran on the job manager that allows it");
}

#[test]
fn setup_entry_and_exit_hooks_run() {
    let (_r, a) = start_router(&[]);
    let work = std::env::temp_dir().join(format!("emq-hooks-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    let hooks = work.join("hooks.txt");
    let _jm = start_jobmanager(
        &a.backend,
        "default",
        1,
        &[
            ("EMQTEST_HOOK_FILE", hooks.to_str().unwrap()),
            ("EMQ_SUBPROCESS_SETUP_FUNC", "testjobs.setup"),
            ("EMQ_JOB_ENTRY_FUNC", "testjobs.entry"),
            ("EMQ_JOB_EXIT_FUNC", "testjobs.exit_"),
        ],
    );
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    c.call("default", "benchjobs", "add", json!([1, 2]));
    c.call("default", "benchjobs", "add", json!([1, 2]));
    let kinds: Vec<String> = eventually(Duration::from_secs(30), || {
        let k: Vec<String> = read_lines(&hooks).iter().map(|l| l.split(' ').next().unwrap().to_owned()).collect();
        (k.iter().filter(|x| *x == "setup").count() == 2).then_some(k)
    });
    // Setup once per started worker (the one serving and the spare), before
    // any job; entry and exit around each job.
    assert_eq!(kinds.iter().filter(|k| *k == "setup").count(), 2, "{kinds:?}");
    assert_eq!(kinds[0], "setup");
    let around: Vec<&String> = kinds.iter().filter(|k| *k != "setup").collect();
    assert_eq!(around, vec!["entry", "exit", "entry", "exit"]);

    // A failing setup function is logged; the worker keeps serving.
    let _jm2 = start_jobmanager(&a.backend, "broken", 1, &[("EMQ_SUBPROCESS_SETUP_FUNC", "testjobs.broken_setup")]);
    wait_slots(&a.admin, 2);
    assert_eq!(c.call("broken", "benchjobs", "add", json!([3, 4])), json!({"value": 7}));
}

#[test]
fn bad_settings_exit_with_code_2() {
    for args in [vec!["-Q", "x:y"], vec!["-J", "0"], vec!["-B", "nowhere"], vec!["--config", "/nonexistent.toml"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"))
            .args(&args)
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1, "{args:?}");
    }
    // Closed by default: no allowed_paths, no job manager.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"))
        .current_dir(std::env::temp_dir())
        .env_remove("EMQ_ALLOWED_PATHS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("allowed_paths") && err.contains("[\"*\"]"), "says how to set it: {err}");
}

#[test]
fn sighup_reloads_settings_and_reinforms() {
    let (_r, a) = start_router(&[]);
    let dir = std::env::temp_dir().join(format!("emq-hup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("jm.toml");
    let write = |queue: &str| {
        std::fs::write(
            &cfg,
            format!(
                "worker_addr = {:?}\nqueues = \"{queue}\"\nconcurrent_jobs = 1\nname = \"hup\"\nheartbeat_interval = 0.5\nallowed_paths = [\"benchjobs\"]\n",
                a.backend
            ),
        )
        .unwrap()
    };
    write("before");
    let root = repo_root();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"));
    cmd.arg("--config").arg(&cfg).arg("--python-path").arg(root.join("jobs")).env("RUST_LOG", "warn");
    let jm = ChildGuard::spawn("emq-jobmanager", cmd);
    let queues_served = || -> Vec<String> {
        let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
        w["connected_queues"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    };
    eventually(Duration::from_secs(30), || (queues_served() == ["before"]).then_some(()));
    // The health the job manager heartbeats, as the router shows it.
    let health_queues = || -> Vec<serde_json::Value> {
        let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
        let workers = w["connected_workers"].as_object().cloned().unwrap_or_default();
        workers.values().filter_map(|v| v["health"]["queues"].as_array().cloned()).flatten().collect()
    };
    eventually(Duration::from_secs(30), || (health_queues() == [json!([10, "before"])]).then_some(()));
    write("after");
    jm.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(30), || (queues_served() == ["after"]).then_some(()));
    // Its health lists the new queues too (it kept the old list before).
    eventually(Duration::from_secs(30), || (health_queues() == [json!([10, "after"])]).then_some(()));
    let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
    let (id, entry) = w["connected_workers"].as_object().unwrap().iter().next().unwrap();
    assert!(id.starts_with("hup:"), "{id}");
    let health = &entry["health"];
    assert_eq!((health["name"].as_str(), health["pid"].as_u64()), (Some("hup"), Some(jm.pid() as u64)), "{health}");
    assert!(!health["host"].as_str().unwrap_or("").is_empty(), "{health}");
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("after", "benchjobs", "add", json!([20, 22])), json!({"value": 42}));
}

/// `-Q qa qb` (EventMQ's space-separated form) serves both queues; it used
/// to be read as the default queue.
#[test]
fn space_separated_queues_are_served() {
    let (_r, a) = start_router(&[]);
    let root = repo_root();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"));
    cmd.args(["-B", &a.backend, "-Q", "qa", "qb", "-J", "1"])
        .arg("--python-path")
        .arg(root.join("jobs"))
        .env("EMQ_ALLOWED_PATHS", "benchjobs")
        .env("RUST_LOG", "warn")
        .current_dir(std::env::temp_dir());
    let _jm = ChildGuard::spawn("emq-jobmanager", cmd);
    let served = eventually(Duration::from_secs(30), || {
        let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
        let mut q: Vec<String> = w["connected_queues"].as_object()?.keys().cloned().collect();
        q.sort();
        (!q.is_empty()).then_some(q)
    });
    assert_eq!(served, vec!["qa", "qb"]);
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("qb", "benchjobs", "add", json!([1, 2])), json!({"value": 3}));
}

/// Priorities hold end to end, with `worker_pipeline` and `prefetch` at
/// their defaults: one worker busy with a backlog of `bulk` jobs (weight
/// 10) prefetched and queued at the worker; an `urgent` job (weight 20)
/// starts before every bulk job that was not already running.
#[test]
fn an_urgent_job_overtakes_prefetched_bulk_jobs() {
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "20:urgent,10:bulk", 1, &[]);
    wait_slots(&a.admin, 1);
    let dir = std::env::temp_dir().join(format!("emq-prio-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let order = dir.join("order.txt");
    let c = TestClient::connect(&a.frontend);
    for i in 0..30 {
        c.send("bulk", "", "testjobs", "sleep_then_append", json!([order, format!("bulk-{i}"), 0.1]));
    }
    eventually(Duration::from_secs(30), || (read_lines(&order).len() >= 2).then_some(()));
    let done_before = read_lines(&order).len();
    c.send("urgent", "", "testjobs", "sleep_then_append", json!([order, "urgent", 0]));
    eventually(Duration::from_secs(60), || (read_lines(&order).len() == 31).then_some(()));
    let lines = read_lines(&order);
    let at = lines.iter().position(|l| l == "urgent").unwrap();
    println!("{done_before} bulk jobs done when the urgent one was sent; it ran as job #{}", at + 1);
    // At most the bulk job running then (and one that may have started
    // while the urgent one was on its way) ran before it.
    assert!(at <= done_before + 2, "urgent ran after {at} jobs; {done_before} were done when it was sent: {lines:?}");
}

/// A job manager that connects first does not keep a backlog of long
/// jobs from one that connects later: it prefetches nothing until a job
/// has finished (the jobs' length unknown; prefetched jobs are not handed
/// back). Before, it announced `prefetch` (128) extra slots at once and
/// took all 12 jobs of 0.3 s; the second job manager ran none.
#[test]
fn a_job_manager_started_first_leaves_long_jobs_to_one_started_later() {
    let (_r, a) = start_router(&[]);
    let first = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let ids: Vec<String> =
        (0..12).map(|_| c.send("default", "reply-requested", "testjobs", "job_manager_after", json!([0.3]))).collect();
    std::thread::sleep(Duration::from_millis(200));
    let second = start_jobmanager(&a.backend, "default", 1, &[]);
    let ran_by: Vec<i64> = ids.iter().map(|id| c.wait(id, 60)["value"].as_i64().unwrap_or(-1)).collect();
    let by_first = ran_by.iter().filter(|p| **p == first.pid() as i64).count();
    let by_second = ran_by.iter().filter(|p| **p == second.pid() as i64).count();
    println!("first job manager ran {by_first}, the one started later {by_second}");
    assert_eq!(by_first + by_second, 12, "{ran_by:?}");
    // The first holds at most its worker's pipeline (4) beyond what it
    // runs; the second takes the rest as its worker frees.
    assert!(by_second >= 3, "the later job manager ran {by_second} of 12: {ran_by:?}");
}

#[test]
fn workers_are_forked_from_a_warm_template_each_with_its_own_random_state() {
    let (_r, a) = start_router(&[]);
    let jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let mut c = TestClient::connect(&a.frontend);
    let v = c.call("default", "testjobs", "pid", json!([]))["value"].clone();
    assert_eq!(v["ppid"].as_u64().unwrap() as i32, jm.pid());
    assert_ne!(v["parent"].as_u64().unwrap() as i32, jm.pid(), "forked from the template, not exec'd: {v}");
    // Two workers at once: different processes, different random numbers
    // (the template's generator was reseeded after each fork).
    let ids: Vec<String> =
        (0..2).map(|_| c.send("default", "reply-requested", "testjobs", "random_after", json!([0.3]))).collect();
    let got: Vec<Value> = ids.iter().map(|id| c.wait(id, 60)["value"].clone()).collect();
    assert_ne!(got[0]["pid"], got[1]["pid"], "{got:?}");
    assert_ne!(got[0]["r"], got[1]["r"], "each worker has its own random state: {got:?}");
    // worker_start = exec: each worker is the job manager's own child.
    let (_r2, b) = start_router(&[]);
    let jm2 = start_jobmanager(&b.backend, "default", 1, &[("EMQ_WORKER_START", "exec")]);
    wait_slots(&b.admin, 1);
    let mut c2 = TestClient::connect(&b.frontend);
    let v = c2.call("default", "testjobs", "pid", json!([]))["value"].clone();
    assert_eq!(v["parent"].as_u64().unwrap() as i32, jm2.pid(), "{v}");
}

#[test]
fn a_killed_template_is_replaced_and_jobs_go_on() {
    // The warm template dies (its workers die with it: PR_SET_PDEATHSIG):
    // the job manager sees its workers' pipes close, starts a new template
    // and forks new workers from it; jobs keep running, none is lost.
    let (_r, a) = start_router(&[]);
    let jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let v = c.call("default", "testjobs", "pid", json!([]))["value"].clone();
    let template = v["parent"].as_u64().unwrap() as i32;
    assert_ne!(template, jm.pid(), "forked from the template: {v}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(template), nix::sys::signal::Signal::SIGKILL).unwrap();
    // A job that reaches a worker dying with the template fails visibly
    // ("worker died"); once the job manager has replaced them, jobs run on
    // workers of a new template.
    let end = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = c.call("default", "testjobs", "pid", json!([]));
        if v["value"]["parent"].as_u64().is_some_and(|p| p as i32 != template) {
            break v["value"].clone();
        }
        assert!(Instant::now() < end, "no worker of a new template: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let parent = v["parent"].as_u64().unwrap() as i32;
    let parent_of = |pid: i32| -> Option<i32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
    };
    assert!(
        parent == jm.pid() || parent_of(parent) == Some(jm.pid()),
        "the new worker belongs to the job manager: {v}"
    );
    for i in 0..20 {
        let v = c.call("default", "testjobs", "add", json!([i, 1]));
        assert_eq!(v["value"], json!(i + 1), "{v}");
    }
}

#[test]
fn workers_past_max_memory_per_worker_are_replaced() {
    let (_r, a) = start_router(&[]);
    // Every worker is past one byte: each is replaced after its job.
    let _jm = start_jobmanager(&a.backend, "default", 1, &[("EMQ_MAX_MEMORY_PER_WORKER", "1")]);
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    let mut pids = std::collections::HashSet::new();
    for _ in 0..4 {
        pids.insert(c.call("default", "testjobs", "slow_pid", json!([1.2]))["value"].as_u64().unwrap());
    }
    assert!(pids.len() >= 3, "workers replaced for memory: {pids:?}");
    let w = admin(&a.admin, "ROUTER_SHOW_WORKERS");
    let health = w["connected_workers"].as_object().unwrap().values().next().unwrap()["health"].clone();
    assert!(health["restarts"]["memory"].as_u64().unwrap_or(0) >= 2, "{}", health["restarts"]);
}

/// `--broker-addr A,B`: a router and its standby, tried in turn — the job
/// manager finds the one that answers (here the second) and serves it.
#[test]
fn a_job_manager_given_several_router_addresses_serves_the_one_that_answers() {
    let (_r, a) = start_router(&[]);
    let nobody = tcp(free_port());
    let _jm = start_jobmanager(
        &format!("{nobody},{}", a.backend),
        "default",
        1,
        &[("EMQ_HEARTBEAT_TIMEOUT", "1"), ("EMQ_HEARTBEAT_LIVENESS", "2")],
    );
    wait_slots(&a.admin, 1);
    let mut c = TestClient::connect(&a.frontend);
    assert_eq!(c.call("default", "benchjobs", "add", json!([2, 5])), json!({"value": 7}));
}

/// Listens half a second more: no job in `seen` (REPLYs counted by
/// msgid) may be answered a second time.
fn assert_no_second_reply(c: &TestClient, seen: &mut HashMap<String, u32>) {
    let quiet_until = Instant::now() + Duration::from_millis(500);
    while let Some(f) =
        c.dealer.recv_timeout(quiet_until.saturating_duration_since(Instant::now()).as_millis() as i64 + 1)
    {
        if f.len() == 6 && f[2] == "REPLY" {
            *seen.entry(f[5].clone()).or_default() += 1;
        }
        if Instant::now() >= quiet_until {
            break;
        }
    }
    assert!(
        seen.values().all(|k| *k == 1),
        "a job answered twice: {:?}",
        seen.iter().filter(|(_, k)| **k > 1).collect::<Vec<_>>()
    );
}

#[test]
fn done_jobs_read_in_bursts_all_arrive_once_and_a_crash_meanwhile_is_seen() {
    // Jobs of 4 ms, 2 workers with 4 jobs each and a long linger: once the
    // job manager has learnt the jobs' length, its workers' pipes are read
    // every few milliseconds instead of at each Done (`worker_read_holdoff`).
    // Every job must still be answered exactly once with its own value; a
    // worker that dies meanwhile (one job calls os._exit) is seen: that
    // job fails, the ones queued behind it run elsewhere, the pool goes on.
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[("EMQ_REPLY_LINGER", "0.05"), ("EMQ_WORKER_PIPELINE", "4")]);
    wait_slots(&a.admin, 2);
    let c = TestClient::connect(&a.frontend);
    let n = 400;
    let mut ids: HashMap<String, Option<f64>> = HashMap::new();
    let mut crash_id = String::new();
    for i in 0..n {
        if i == 250 {
            crash_id = c.send("default", "reply-requested", "testjobs", "crash", json!([3]));
            ids.insert(crash_id.clone(), None);
        }
        let secs = (4000 + i) as f64 / 1e6;
        ids.insert(c.send("default", "reply-requested", "testjobs", "sleep", json!([secs])), Some(secs));
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    let end = Instant::now() + Duration::from_secs(120);
    while seen.len() < ids.len() {
        assert!(Instant::now() < end, "{} of {} results after 120 s", seen.len(), ids.len());
        let Some(f) = c.dealer.recv_timeout(500) else { continue };
        if f.len() == 6 && f[2] == "REPLY" {
            let v: Value = serde_json::from_str(&f[4]).expect("reply JSON");
            match ids.get(&f[5]).unwrap_or_else(|| panic!("a reply for a job never sent: {f:?}")) {
                Some(secs) => assert_eq!(v["value"], json!(secs), "{f:?}"),
                None => assert!(v.get("error").is_some(), "the crashing job must fail: {f:?}"),
            }
            *seen.entry(f[5].clone()).or_default() += 1;
        }
    }
    assert_no_second_reply(&c, &mut seen);
    assert_eq!(seen.get(&crash_id), Some(&1));
    let mut c = c;
    assert_eq!(c.call("default", "testjobs", "sleep", json!([0.001])), json!({"value": 0.001}));
}

#[test]
fn replies_that_linger_under_load_all_arrive_once_and_the_pool_serves_on() {
    // The longest linger there is: while the workers are backlogged the job
    // manager holds its REPLYs up to 0.1 s to send them as one BATCH; each
    // must still reach the client exactly once with its own value, and a
    // held batch must go at its deadline or when the backlog runs out (a
    // batch never sent would hang this test). Whether an idle job
    // manager's REPLY goes at once is `ReplyLinger`'s unit test.
    let (_r, a) = start_router(&[]);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[("EMQ_REPLY_LINGER", "0.1")]);
    wait_slots(&a.admin, 2);
    let c = TestClient::connect(&a.frontend);
    let n = 400;
    let ids: HashMap<String, i64> =
        (0..n).map(|i| (c.send("default", "reply-requested", "benchjobs", "add", json!([i, 1])), i + 1)).collect();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let end = Instant::now() + Duration::from_secs(120);
    while seen.len() < ids.len() {
        assert!(Instant::now() < end, "{} of {n} results after 120 s", seen.len());
        let Some(f) = c.dealer.recv_timeout(500) else { continue };
        if f.len() == 6 && f[2] == "REPLY" {
            let v: Value = serde_json::from_str(&f[4]).expect("reply JSON");
            let want = ids.get(&f[5]).unwrap_or_else(|| panic!("a reply for a job never sent: {f:?}"));
            assert_eq!(v["value"], json!(want), "{f:?}");
            *seen.entry(f[5].clone()).or_default() += 1;
        }
    }
    // No second REPLY for any of them comes later.
    assert_no_second_reply(&c, &mut seen);
    // Idle again: one job alone comes back.
    let mut c = c;
    assert_eq!(c.call("default", "benchjobs", "add", json!([40, 2])), json!({"value": 42}));
}
