//! A router and a standby address (issue 24, first parts, before the
//! PostgreSQL journal): clients and job managers given both addresses
//! follow the router that answers; requests that got no receipt are sent
//! again under their msgid; nothing runs twice. The "standby" here is a
//! router started on the second addresses with the same journal directory
//! — what a takeover on a shared journal will look like to peers.

mod common;
use common::*;
use emq_client::{Client, JobOutcome, Options};
use nix::sys::signal::Signal;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn clients_and_job_managers_given_two_addresses_follow_a_takeover() {
    let log = std::env::var("EMQTEST_LOG").unwrap_or_else(|_| "warn".into());
    let env = [("EMQ_HEARTBEAT_INTERVAL", "0.5"), ("EMQ_HEARTBEAT_TIMEOUT", "2"), ("RUST_LOG", log.as_str())];
    let (mut first, a) = start_router(&env);
    let b = RouterAddrs { data_dir: a.data_dir.clone(), ..RouterAddrs::fresh() };
    let _jm = start_jobmanager(
        &format!("{},{}", a.backend, b.backend),
        "default",
        1,
        &[("EMQ_HEARTBEAT_TIMEOUT", "1"), ("EMQ_HEARTBEAT_LIVENESS", "2")],
    );
    wait_slots(&a.admin, 1);
    let file = std::env::temp_dir().join(format!("emq-failover-{}", uuid::Uuid::new_v4()));
    let mut client = Client::connect(&format!("{},{}", a.frontend, b.frontend)).unwrap();
    let opts = Options { guarantee: true, ..Default::default() };
    // Running across the takeover.
    let running = client
        .defer_job(
            "default",
            "testjobs.sleep_then_append",
            vec![json!(file), json!("running"), json!(3)],
            Default::default(),
            &opts,
        )
        .unwrap();
    client.wait_receipt(&running, Instant::now() + Duration::from_secs(30)).unwrap();
    eventually(Duration::from_secs(30), || (admin_job(&a, &running)["state"] == "dispatched").then_some(()));
    // Sent to a router that never reads it: frozen, then killed.
    first.signal(Signal::SIGSTOP);
    let lost = client
        .defer_job(
            "default",
            "testjobs.sleep_then_append",
            vec![json!(file), json!("resent"), json!(0)],
            Default::default(),
            &opts,
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).expect("killed");
    let t = Instant::now();
    let _second = start_router_at(&b, &env).expect("the standby takes over on its addresses");
    for id in [&running, &lost] {
        let o = client.wait(id, Instant::now() + Duration::from_secs(30));
        if !matches!(o, JobOutcome::Value(_)) {
            println!("job {id}: {}", admin_job(&b, id));
            println!("status: {}", admin(&b.admin, "STATUS"));
            println!("file: {:?}", read_lines(&file));
        }
        assert!(matches!(o, JobOutcome::Value(_)), "{id}: {o:?}");
    }
    println!("takeover: both results {:.1} s after the standby started", t.elapsed().as_secs_f64());
    let mut lines = read_lines(&file);
    lines.sort();
    assert_eq!(lines, vec!["resent", "running"], "each ran once");
    let _ = std::fs::remove_file(file);
}
