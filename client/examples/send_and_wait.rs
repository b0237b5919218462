//! Send jobs and read their results with the Rust client.
//!
//! With `emq up` running (router + job manager serving `jobs/benchjobs.py`):
//!
//!     cargo run -p emq-client --example send_and_wait -- tcp://127.0.0.1:47291
//!
//! Prints `add(2, 3) = 5`, then runs 100 jobs concurrently on one client and
//! matches every result to its own msgid.

use emq_client::{Client, Job, JobOutcome, Options};
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "tcp://127.0.0.1:47291".into());
    let mut client = Client::connect(&addr)?;
    let deadline = || Instant::now() + Duration::from_secs(30);

    let job = Job::new("benchjobs", "add", vec![2.into(), 3.into()]);
    let msgid = client.send_request("default", &job, &Options::default())?;
    match client.wait(&msgid, deadline()) {
        JobOutcome::Value(v) => println!("add(2, 3) = {v}"),
        other => println!("add failed: {other:?}"),
    }

    // Many in flight: results arrive in any order, matched by msgid.
    let mut expected = HashMap::new();
    for i in 0..100 {
        let id = client.defer_job(
            "default",
            "benchjobs.add",
            vec![i.into(), 1000.into()],
            Default::default(),
            &Options::default(),
        )?;
        expected.insert(id, i + 1000);
    }
    let mut right = 0;
    while let Some((id, outcome)) = client.wait_any(deadline()) {
        if outcome == JobOutcome::Value(expected[&id].into()) {
            right += 1;
        }
        expected.remove(&id);
        if expected.is_empty() {
            break;
        }
    }
    println!("{right}/100 concurrent results matched their own job");
    println!("status of the first job: {}", client.job_status(&msgid, deadline())?);
    Ok(())
}
