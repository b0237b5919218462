//! `journal-store`: the storage candidates for the router's journal, side
//! by side on the work the router gives them — N accepted-job records of a
//! realistic size, committed durably in groups of B (one group per poll
//! pass). Candidates: emq's own segment log (`emq-journal`, fdatasync per
//! group) and `redb` (one write transaction per group, durable commit).

use anyhow::Result;
use emq_journal::{AcceptedJob, JobLog, Journal, JournalOptions, Record, SyncPolicy};
use serde_json::json;
use std::time::{Duration, Instant};

fn record(i: u64) -> Record {
    Record::Accepted {
        job: AcceptedJob {
            msgid: format!("{:08x}-0000-4000-8000-{:012x}", i, i),
            client: b"0f3c1e2a-5b6d-4c7e-8f90-a1b2c3d4e5f6".to_vec(),
            queue: "default".into(),
            requested_queue: None,
            headers: "reply-requested,guarantee".into(),
            payload: format!(r#"["run", {{"path": "benchjobs", "callable": "add", "args": [{i}, 1]}}]"#),
            received: 1.8e9,
        },
        attempts: 0,
    }
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "emq-bench-store-{tag}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn emq_log(n: u64, batch: u64) -> Result<Duration> {
    let dir = tmpdir("emq");
    let opts = JournalOptions { dir: dir.clone(), sync: SyncPolicy::Fsync, segment_bytes: 64 << 20, repair: false };
    let (mut j, _) = Journal::open(&opts, |_| {})?;
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        for _ in 0..batch.min(n - i) {
            j.append(&record(i));
            i += 1;
        }
        let id = j.current_batch();
        j.submit();
        // As the router does for receipts: wait until the group is durable.
        while j.durable() < id {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    let took = t.elapsed();
    j.close();
    drop(j);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(took)
}

fn redb_store(n: u64, batch: u64) -> Result<Duration> {
    const JOBS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("jobs");
    let dir = tmpdir("redb");
    let db = redb::Database::create(dir.join("jobs.redb"))?;
    let t = Instant::now();
    let mut i = 0;
    let mut buf = Vec::new();
    while i < n {
        let tx = db.begin_write()?;
        {
            let mut table = tx.open_table(JOBS)?;
            for _ in 0..batch.min(n - i) {
                let r = record(i);
                buf.clear();
                r.encode(&mut buf);
                table.insert(r.msgid().unwrap_or_default(), buf.as_slice())?;
                i += 1;
            }
        }
        tx.commit()?;
    }
    let took = t.elapsed();
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(took)
}

/// Prints one JSON line per (store, batch size).
pub fn run(n: u64, batches: &[u64]) -> Result<()> {
    for &b in batches {
        for (name, f) in [("emq-journal", emq_log as fn(u64, u64) -> Result<Duration>), ("redb", redb_store)] {
            let took = f(n, b)?;
            let secs = took.as_secs_f64();
            println!(
                "{}",
                json!({"store": name, "records": n, "batch": b, "secs": secs,
                       "records_per_sec": n as f64 / secs, "commits_per_sec": (n as f64 / b as f64) / secs})
            );
        }
    }
    Ok(())
}
