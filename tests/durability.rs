//! Accepted means durable: real routers killed and restarted on the same
//! journal, real job managers, real clients. A receipt (or a result) means
//! the job is on disk: it runs at least once whatever happens to the
//! router, and every `reply-requested` result reaches its client.

mod common;
use common::*;
use emq_client::{Client, JobOutcome, Options};
use nix::sys::signal::Signal;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emq-dur-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Restarts the router on the same addresses and journal (the ports were
/// ours a moment ago; retried while the old socket lingers).
fn restart(a: &RouterAddrs, env: &[(&str, &str)]) -> ChildGuard {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(g) = start_router_at(a, env) {
            return g;
        }
        assert!(Instant::now() < end, "router did not restart on its old ports");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Counts of each line in `path`.
fn line_counts(path: &Path) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in read_lines(path) {
        *m.entry(l).or_insert(0) += 1;
    }
    m
}

/// A small deterministic generator (the test must not depend on a crate
/// for randomness; the seed is printed so a failure can be replayed).
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// SIGKILL the router at random moments of a run (several times,
/// restarting it on the same journal): every job that got a receipt runs at
/// least once, every reply-requested result reaches the client.
#[test]
fn receipted_jobs_survive_router_sigkills() {
    let n: usize = std::env::var("EMQTEST_DURABILITY_JOBS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed: u64 = std::env::var("EMQTEST_DURABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("seed {seed} (EMQTEST_DURABILITY_SEED to replay), {n} jobs");
    let mut next = rng(seed);
    let env = [("EMQ_HEARTBEAT_INTERVAL", "0.5"), ("EMQ_HEARTBEAT_TIMEOUT", "2")];
    let (router, a) = start_router(&env);
    let mut router = Some(router);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let dir = tmp("kill");
    let ran = dir.join("ran.txt");
    let mut client = Client::connect(&a.frontend).unwrap();
    let opts = Options { guarantee: true, ..Default::default() };
    let kills: HashSet<usize> = (0..3).map(|_| 1 + (next() as usize) % (n - 1)).collect();
    let mut sent = Vec::with_capacity(n);
    let mut receipted: HashSet<String> = HashSet::new();
    let mut results: HashMap<String, JobOutcome> = HashMap::new();
    let collect = |client: &mut Client, receipted: &mut HashSet<String>, results: &mut HashMap<String, JobOutcome>| {
        let _ = client.pump(0);
        for (id, _) in client.drain_receipts() {
            receipted.insert(id);
        }
        while let Some((id, o)) = client.wait_any(Instant::now()) {
            receipted.insert(id.clone());
            results.insert(id, o);
        }
    };
    // A window of jobs waiting for their receipt, as a careful client keeps:
    // what the router never receipted (it died with the job in a socket
    // buffer) is given up after a while — it was never accepted.
    let window = 500;
    let mut given_up = 0;
    let mut last_progress = Instant::now();
    for i in 0..n {
        loop {
            let before = receipted.len();
            collect(&mut client, &mut receipted, &mut results);
            if receipted.len() > before {
                last_progress = Instant::now();
            }
            let outstanding = sent.len() - receipted.len() - given_up;
            if outstanding < window {
                break;
            }
            if last_progress.elapsed() > Duration::from_secs(5) {
                given_up += outstanding;
                last_progress = Instant::now();
                break;
            }
            let _ = client.pump(10);
        }
        let id = client
            .defer_job("default", "benchjobs.append_line", vec![json!(ran), json!(i)], Default::default(), &opts)
            .unwrap();
        sent.push(id);
        if kills.contains(&i) {
            let mut r = router.take().unwrap();
            r.signal(Signal::SIGKILL);
            r.wait_exit(Duration::from_secs(10)).expect("killed");
            println!("router SIGKILLed after {} sends ({} receipted so far)", i + 1, receipted.len());
            std::thread::sleep(Duration::from_millis(next() % 500));
            router = Some(restart(&a, &env));
        }
    }
    // Every receipted job's result, and every receipted job on disk.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        collect(&mut client, &mut receipted, &mut results);
        // Waiting a while lets the client ask the router's records for the
        // results sent while its connection was down.
        if let Some((id, o)) = client.wait_any(Instant::now() + Duration::from_secs(2)) {
            receipted.insert(id.clone());
            results.insert(id, o);
        }
        let missing = receipted.iter().filter(|id| !results.contains_key(*id)).count();
        if missing == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let lost: Vec<&String> = receipted.iter().filter(|id| !results.contains_key(*id)).take(5).collect();
            for id in &lost {
                println!(
                    "no result for {id}: {}",
                    client.job_status(id, Instant::now() + Duration::from_secs(5)).unwrap_or_default()
                );
            }
            println!("status: {}", admin(&a.admin, "STATUS"));
            panic!("{missing} receipted jobs without a result");
        }
    }
    let counts = line_counts(&ran);
    let index: HashMap<&str, usize> = sent.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut not_run = 0;
    let mut duplicates = 0;
    for id in &receipted {
        match counts.get(&index[id.as_str()].to_string()) {
            None => not_run += 1,
            Some(c) => duplicates += c - 1,
        }
    }
    let failed = results.values().filter(|o| !o.is_success()).count();
    println!(
        "{} sent, {} receipted, {} results ({failed} failed), {} ran, {duplicates} duplicate runs, {not_run} receipted but not run",
        n,
        receipted.len(),
        results.len(),
        counts.len()
    );
    assert_eq!(not_run, 0, "every receipted job runs");
    assert_eq!(failed, 0, "guarantee jobs end well: {:?}", results.values().find(|o| !o.is_success()));
    println!("{given_up} jobs never receipted (in a socket buffer when the router died) were given up");
}

/// SIGTERM with jobs buffered and no job manager: they are kept; after a
/// restart, a job manager runs every one of them.
#[test]
fn sigterm_keeps_buffered_jobs_for_the_next_start() {
    let n = 5000;
    let (mut router, a) = start_router(&[]);
    let dir = tmp("term");
    let ran = dir.join("ran.txt");
    let mut client = Client::connect(&a.frontend).unwrap();
    let opts = Options { reply_requested: false, ..Default::default() };
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            client
                .defer_job("default", "benchjobs.append_line", vec![json!(ran), json!(i)], Default::default(), &opts)
                .unwrap(),
        );
    }
    let dl = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        client.wait_receipt(id, dl).expect("receipt");
    }
    assert_eq!(admin(&a.admin, "STATUS")["waiting_messages_by_queue"]["default"], n);
    router.signal(Signal::SIGTERM);
    let st = router.wait_exit(Duration::from_secs(30)).expect("router exits on SIGTERM");
    assert!(st.success(), "{st}");
    let _router = restart(&a, &[]);
    assert_eq!(admin(&a.admin, "STATUS")["waiting_messages_by_queue"]["default"], n, "all kept");
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    eventually(Duration::from_secs(120), || (line_counts(&ran).len() == n).then_some(()));
    let counts = line_counts(&ran);
    assert!(counts.values().all(|c| *c == 1), "each ran once");
}

/// A job running when the router is killed is not run again: the job
/// manager re-attaches to the restarted router, reports it, and the client
/// gets its one result.
#[test]
fn a_running_job_survives_a_router_crash_without_running_twice() {
    let env = [("EMQ_HEARTBEAT_INTERVAL", "0.5"), ("EMQ_HEARTBEAT_TIMEOUT", "3")];
    let (mut router, a) = start_router(&env);
    let _jm = start_jobmanager(&a.backend, "default", 1, &[]);
    wait_slots(&a.admin, 1);
    let dir = tmp("doubt");
    let marks = dir.join("ran-on.txt");
    let mut client = Client::connect(&a.frontend).unwrap();
    let opts = Options { guarantee: true, ..Default::default() };
    let id = client
        .defer_job("default", "testjobs.ppid_then_sleep", vec![json!(marks), json!(3)], Default::default(), &opts)
        .unwrap();
    eventually(Duration::from_secs(30), || (read_lines(&marks).len() == 1).then_some(()));
    router.signal(Signal::SIGKILL);
    router.wait_exit(Duration::from_secs(10)).expect("killed");
    let started = Instant::now();
    let _router = restart(&a, &env);
    // The job manager re-attaches quickly (it watches its connection).
    eventually(Duration::from_secs(30), || {
        (admin(&a.admin, "STATUS")["connected_workers"].as_u64() == Some(1)).then_some(())
    });
    println!("job manager re-attached {:.2} s after the router restarted", started.elapsed().as_secs_f64());
    match client.wait(&id, Instant::now() + Duration::from_secs(60)) {
        JobOutcome::Value(_) => {}
        other => panic!("expected the job's result, got {other:?}"),
    }
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(read_lines(&marks).len(), 1, "ran once, not again after the restart");
    let status = client.job_status(&id, Instant::now() + Duration::from_secs(10)).unwrap();
    assert_eq!(status["state"], "done", "{status}");
}

/// A torn tail (the journal's last bytes cut at a random offset, as a crash
/// mid-write leaves it): the router starts, keeps every whole record, and
/// the jobs in them run.
#[test]
fn torn_journal_tail_is_truncated_and_the_rest_runs() {
    let mut next = rng(std::process::id() as u64);
    for round in 0..3 {
        let (mut router, a) = start_router(&[]);
        let dir = tmp("torn");
        let ran = dir.join("ran.txt");
        let mut client = Client::connect(&a.frontend).unwrap();
        let opts = Options { reply_requested: false, ..Default::default() };
        let ids: Vec<String> = (0..200)
            .map(|i| {
                client
                    .defer_job(
                        "default",
                        "benchjobs.append_line",
                        vec![json!(ran), json!(i)],
                        Default::default(),
                        &opts,
                    )
                    .unwrap()
            })
            .collect();
        let dl = Instant::now() + Duration::from_secs(60);
        for id in &ids {
            client.wait_receipt(id, dl).unwrap();
        }
        router.signal(Signal::SIGKILL);
        router.wait_exit(Duration::from_secs(10)).expect("killed");
        let mut segments: Vec<PathBuf> = std::fs::read_dir(&a.data_dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "journal") && std::fs::metadata(p).unwrap().len() > 8)
            .collect();
        segments.sort();
        let last = segments.last().expect("a segment with records");
        let len = std::fs::metadata(last).unwrap().len();
        let cut = 8 + next() % (len - 8);
        let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let _router = restart(&a, &[]);
        let kept = admin(&a.admin, "STATUS")["waiting_messages_by_queue"]["default"].as_u64().unwrap_or(0);
        println!("round {round}: segment of {len} bytes cut at {cut}: {kept} of 200 jobs kept");
        assert!(kept <= 200);
        let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
        eventually(Duration::from_secs(60), || (line_counts(&ran).len() as u64 == kept).then_some(()));
        // The kept ones are the first ones (a journal is cut at its end).
        let counts = line_counts(&ran);
        assert!((0..kept).all(|i| counts.contains_key(&i.to_string())), "the oldest {kept} ran");
    }
}

/// Past its disk budget (`journal_max_bytes`) the router stops reading the
/// frontend: sends wait, nothing is refused; the admin socket still
/// answers; once a job manager drains the buffers every job is accepted
/// and runs. With `on_full = "refuse"` the same load gets refusals.
#[test]
fn a_full_router_makes_clients_wait_instead_of_refusing() {
    let budget = [("EMQ_JOURNAL_MAX_BYTES", "16777216"), ("EMQ_BUFFER_MEMORY", "1048576")];
    let (_router, a) = start_router(&budget);
    let dir = tmp("full");
    let ran = dir.join("ran.txt");
    let pad = "x".repeat(100_000);
    let n = 300; // ~30 MB of jobs for a 16 MiB budget
    let mut client = Client::connect(&a.frontend).unwrap();
    let opts = Options { reply_requested: false, ..Default::default() };
    let ids: Vec<String> = (0..n)
        .map(|i| {
            client
                .defer_job(
                    "default",
                    "benchjobs.append_line",
                    vec![json!(ran), json!(format!("{i} {pad}"))],
                    Default::default(),
                    &opts,
                )
                .unwrap()
        })
        .collect();
    // The router takes what fits, then waits: no refusals, STATUS answers.
    let taken = eventually(Duration::from_secs(60), || {
        let s = admin(&a.admin, "STATUS");
        let acc = s["accepted"].as_u64()?;
        std::thread::sleep(Duration::from_millis(500));
        let again = admin(&a.admin, "STATUS")["accepted"].as_u64()?;
        (acc > 0 && acc == again).then_some((acc, s))
    });
    println!("accepted {} of {n} before the router was full; status: journal {}", taken.0, taken.1["journal"]);
    assert!(taken.0 < n as u64, "the budget stopped intake");
    assert_eq!(taken.1["errors"]["refused"].as_u64().unwrap_or(0), 0, "nothing refused");
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    let dl = Instant::now() + Duration::from_secs(120);
    for id in &ids {
        client.wait_receipt(id, dl).expect("every job accepted in the end");
    }
    eventually(Duration::from_secs(120), || (read_lines(&ran).len() == n).then_some(()));
    let firsts: HashSet<String> =
        read_lines(&ran).iter().map(|l| l.split(' ').next().unwrap_or_default().to_owned()).collect();
    assert_eq!(firsts.len(), n, "each job ran");

    // on_full = "refuse": the same load is refused past the budget.
    let mut env = budget.to_vec();
    env.push(("EMQ_ON_FULL", "refuse"));
    let (_router, a) = start_router(&env);
    let mut client = Client::connect(&a.frontend).unwrap();
    let ids: Vec<String> = (0..n)
        .map(|i| {
            client
                .defer_job(
                    "default",
                    "benchjobs.append_line",
                    vec![json!(ran), json!(format!("{i} {pad}"))],
                    Default::default(),
                    &opts,
                )
                .unwrap()
        })
        .collect();
    let dl = Instant::now() + Duration::from_secs(60);
    let refused =
        ids.iter().filter(|id| matches!(client.wait_receipt(id, dl), Ok(emq_client::Receipt::Refused(_)))).count();
    println!("on_full = refuse: {refused} of {n} refused");
    assert!(refused > 0);
}

/// Issue 23 (9): a client that only waits — it never asks JOB_STATUS, as
/// EventMQ-style clients do not — gets the result of every receipted
/// `guarantee` + `reply-requested` job across four router SIGKILLs. Results
/// that finished while its connection was down (the router restarting)
/// used to be dropped ("client gone before its reply").
#[test]
fn every_receipted_result_reaches_a_client_that_only_waits_across_four_kills() {
    let n: usize = std::env::var("EMQTEST_RESULT_JOBS").ok().and_then(|s| s.parse().ok()).unwrap_or(4_000);
    let env = [("EMQ_HEARTBEAT_INTERVAL", "0.5"), ("EMQ_HEARTBEAT_TIMEOUT", "2")];
    let (router, a) = start_router(&env);
    let mut router = Some(router);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let client = Dealer::connect(&a.frontend);
    let mut receipted: HashSet<String> = HashSet::new();
    let mut results: HashMap<String, usize> = HashMap::new();
    let read = |client: &Dealer, receipted: &mut HashSet<String>, results: &mut HashMap<String, usize>, ms: i64| {
        let mut first = true;
        while let Some(f) = client.recv_timeout(if first { ms } else { 0 }) {
            first = false;
            match (f.get(2).map(String::as_str), f.len()) {
                (Some("REPLY"), 5) => {
                    receipted.insert(f[4].clone());
                }
                (Some("REPLY"), 6) => {
                    receipted.insert(f[5].clone());
                    *results.entry(f[5].clone()).or_insert(0) += 1;
                }
                _ => {}
            }
        }
    };
    let kills: Vec<usize> = (1..=4).map(|k| k * n / 5).collect();
    for i in 0..n {
        let payload = json!(["run", {"path": "benchjobs", "callable": "add", "args": [i, 1]}]).to_string();
        let id = format!("r{i}-{}", uuid::Uuid::new_v4());
        client.send(&["", "eMQP/1.0", "REQUEST", &id, "default", "reply-requested,guarantee", &payload]);
        if i % 50 == 0 {
            read(&client, &mut receipted, &mut results, 1);
        }
        if kills.contains(&i) {
            let mut r = router.take().unwrap();
            r.signal(Signal::SIGKILL);
            r.wait_exit(Duration::from_secs(10)).expect("killed");
            println!(
                "router SIGKILLed after {} sends ({} receipted, {} results)",
                i + 1,
                receipted.len(),
                results.len()
            );
            router = Some(restart(&a, &env));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        read(&client, &mut receipted, &mut results, 500);
        let missing = receipted.iter().filter(|id| !results.contains_key(*id)).count();
        if missing == 0 {
            break;
        }
        if Instant::now() >= deadline {
            println!("status: {}", admin(&a.admin, "STATUS"));
            panic!("{missing} of {} receipted jobs: no result reached the client", receipted.len());
        }
    }
    let twice = results.values().filter(|c| **c > 1).count();
    println!(
        "{n} sent, {} receipted, {} results reached the client, 0 missing, {twice} results sent twice",
        receipted.len(),
        results.len()
    );
}

/// A result the router sent just before it was killed may never have left
/// it: ZeroMQ took it into the client's pipe, and its I/O thread had not
/// written it yet. The client here reads nothing while its jobs run (a
/// receive high-water mark of 1), so 80 results of 512 KiB — more than
/// the kernel's socket buffers hold — pile up in the router's pipe to it;
/// the router finishes every job (its status says so), is SIGKILLed, and
/// restarts. Every result still reaches the client: the restarted router
/// sends the results of its last moments (`result_resend_window`, here
/// wide enough for a slow machine) again. Without that, the results in
/// the killed router's pipe were lost for a client that only waits.
#[test]
fn results_still_in_a_killed_routers_pipe_reach_a_client_that_only_waits() {
    let n = 80;
    let env = [("EMQ_HEARTBEAT_INTERVAL", "0.5"), ("EMQ_RESULT_RESEND_WINDOW", "120")];
    let (router, a) = start_router(&env);
    let mut router = Some(router);
    let _jm = start_jobmanager(&a.backend, "default", 2, &[]);
    wait_slots(&a.admin, 2);
    let ctx = zmq::Context::new();
    let client = ctx.socket(zmq::DEALER).unwrap();
    client.set_identity(uuid::Uuid::new_v4().to_string().as_bytes()).unwrap();
    client.set_rcvhwm(1).unwrap();
    client.set_rcvbuf(64 << 10).unwrap();
    client.set_linger(0).unwrap();
    client.connect(&a.frontend).unwrap();
    let mut sent = HashSet::new();
    for i in 0..n {
        let id = format!("big{i}-{}", uuid::Uuid::new_v4());
        let payload =
            json!(["run", {"path": "testjobs", "callable": "blob", "args": [format!("{id}:"), 512 << 10]}]).to_string();
        let frames = ["", "eMQP/1.0", "REQUEST", &id, "default", "reply-requested", &payload];
        client.send_multipart(frames.iter().map(|f| f.as_bytes()), 0).unwrap();
        sent.insert(id);
    }
    eventually(Duration::from_secs(120), || {
        let s = admin(&a.admin, "STATUS");
        (s["processed_messages_by_queue"]["default"].as_u64() == Some(n as u64)).then_some(())
    });
    // Its `Finished` records durable (the journal syncs within a moment).
    std::thread::sleep(Duration::from_millis(500));
    let mut r = router.take().unwrap();
    r.signal(Signal::SIGKILL);
    r.wait_exit(Duration::from_secs(10)).expect("killed");
    router = Some(restart(&a, &env));
    let mut results: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while results.len() < n && Instant::now() < deadline {
        if client.poll(zmq::POLLIN, 500).unwrap() == 0 {
            continue;
        }
        let f = client.recv_multipart(0).unwrap();
        if f.len() == 6 && f[2] == b"REPLY" {
            let msgid = String::from_utf8_lossy(&f[5]).into_owned();
            let reply: serde_json::Value = serde_json::from_slice(&f[4]).unwrap();
            let value = reply["value"].as_str().unwrap_or_default();
            assert!(
                value.starts_with(&format!("{msgid}:")) && value.len() > 512 << 10,
                "{msgid}: another job's result"
            );
            *results.entry(msgid).or_insert(0) += 1;
        }
    }
    let missing = sent.iter().filter(|id| !results.contains_key(*id)).count();
    let status = admin(&a.admin, "STATUS");
    println!(
        "{n} jobs: {} results reached the client, {missing} missing, {} twice; results_waiting_for_clients {}",
        results.len(),
        results.values().filter(|c| **c > 1).count(),
        status["results_waiting_for_clients"]
    );
    assert_eq!(missing, 0, "results lost with the killed router");
    drop(router);
}
