//! JOB_UPDATE through the state machine: progress shown while a job runs
//! and kept after, checkpoints handed to the retried attempt (also after a
//! restart), and updates only from the job manager running the job.

use super::*;
use emq_protocol::{JobUpdate, JobUpdates, Progress};

fn update(h: &mut Harness, jm: &str, msgid: &str, progress: Option<(f64, f64)>, checkpoint: Option<&str>) {
    let u = JobUpdate {
        msgid: msgid.into(),
        progress: progress.map(|(done, total)| Progress {
            done,
            total: Some(total),
            message: Some(format!("at {done}")),
            at: 1.0,
        }),
        checkpoint: checkpoint.map(str::to_owned),
    };
    h.recv(SocketKind::Backend, jm, Command::JobUpdate(JobUpdates { updates: vec![u] }));
}

fn status(h: &mut Harness, msgid: &str) -> serde_json::Value {
    admin_json(h, AdminCommand::JobStatus { job_msgid: msgid.into(), owner_token: None })
}

/// The REQUEST headers sent to job managers in `out`.
fn sent_headers(out: &[Action]) -> Vec<String> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { socket: SocketKind::Backend, message, .. } => match &message.command {
                Command::Request(r) => Some(r.headers.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn progress_shows_while_running_and_after_the_end() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.inform_ours("other");
    h.ready("jm");
    h.request("c", "j", "default", "reply-requested");
    update(&mut h, "jm", "j", Some((3.0, 10.0)), None);
    assert_eq!(status(&mut h, "j")["progress"]["done"], 3.0);
    update(&mut h, "jm", "j", Some((7.0, 10.0)), None);
    let s = status(&mut h, "j");
    assert_eq!((s["progress"]["done"].as_f64(), s["progress"]["message"].as_str()), (Some(7.0), Some("at 7")));
    // Another job manager cannot touch it.
    update(&mut h, "other", "j", Some((99.0, 10.0)), None);
    assert_eq!(status(&mut h, "j")["progress"]["done"], 7.0);
    assert_eq!(h.r.errors().get("update_for_unknown_job"), Some(&1));
    assert_eq!(h.r.running_progress()["j"]["done"], 7.0, "the dashboard's bars");
    h.done("jm", "j", r#"{"value": 1}"#);
    let s = status(&mut h, "j");
    assert_eq!((s["state"].as_str(), s["progress"]["done"].as_f64()), (Some("done"), Some(7.0)));
    assert_eq!(h.r.running_progress(), serde_json::json!({}), "not running any more");
}

#[test]
fn a_retried_attempt_gets_the_last_checkpoint_also_after_a_restart() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    h.request("c", "j", "default", "reply-requested,retry-count:2");
    update(&mut h, "jm", "j", None, Some(r#"{"step":1}"#));
    update(&mut h, "jm", "j", None, Some(r#"{"step":2,"note":"a,b"}"#));
    let failed = emq_protocol::JobReply::failed("ValueError", "boom", "").to_json();
    h.done("jm", "j", &failed);
    assert_eq!(h.r.checkpointed_jobs(), 1);
    // A restart replays the journal: the checkpoint is still there.
    let journal = h.journal.clone();
    let now = Now::real();
    let mut r = RouterState::new(cfg(), now);
    for rec in &journal {
        r.restore(rec.clone());
    }
    r.finish_restore(now);
    let mut h = Harness::with(r, now);
    h.inform_ours("jm");
    h.advance(5.0);
    h.tick();
    let out = h.ready("jm");
    let headers = sent_headers(&out);
    assert_eq!(headers.len(), 1, "{out:?}");
    let parsed = emq_protocol::Headers::parse(&headers[0]);
    assert_eq!(parsed.attempt, Some(2));
    assert_eq!(parsed.checkpoint.as_deref(), Some(r#"{"step":2,"note":"a,b"}"#));
    assert!(parsed.reply_requested, "{}", headers[0]);
    // Done: the checkpoint goes with the job.
    h.done("jm", "j", r#"{"value": 2}"#);
    assert_eq!(h.r.checkpointed_jobs(), 0);
    let cp = h.r.checkpoint_records(h.now);
    assert!(!cp.iter().any(|r| matches!(r, emq_journal::Record::JobCheckpoint { .. })));
}
