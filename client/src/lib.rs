//! # emq-client — submitting jobs and reading their outcome
//!
//! Owns: the Rust client API ([`Client`]: `send_request` / `defer_job` →
//! msgid, `wait` → [`JobOutcome`], many jobs in flight on one socket with
//! results matched by msgid, `job_status`), a small admin client
//! ([`admin::AdminClient`]), the HTTP API's client tokens ([`tokens`]), and
//! the logic of the `emq-send` and `emq-cli` command lines ([`send_cli`],
//! [`admin_cli`]).
//!
//! Does not own: the wire format (`emq-protocol`) or the socket
//! (`emq-sender`).
//!
//! ```no_run
//! use emq_client::{Client, Job, Options, JobOutcome};
//! use std::time::{Duration, Instant};
//! let mut client = Client::connect("tcp://127.0.0.1:47291").unwrap();
//! let job = Job::new("benchjobs", "add", vec![2.into(), 3.into()]);
//! let msgid = client.send_request("default", &job, &Options::default()).unwrap();
//! match client.wait(&msgid, Instant::now() + Duration::from_secs(10)) {
//!     JobOutcome::Value(v) => println!("{v}"),
//!     other => eprintln!("job did not succeed: {other:?}"),
//! }
//! ```

pub mod admin;
pub mod admin_cli;
mod client;
pub mod flags;
pub mod send_cli;
pub mod tokens;
pub mod workflow;

pub use client::{
    check_limit, job_for, outcome_from_status, schedule_payload, Client, ClientError, JobOutcome, Options, Receipt,
    RouterNotice, ScheduleSpec, ROUTER_SILENT_AFTER,
};
/// What to run: `path` (`pkg.mod` or `pkg.mod:Class`), `callable`, `args`,
/// `kwargs`, `class_args`, `class_kwargs`.
pub use emq_protocol::RunPayload as Job;
pub use emq_protocol::{CommandPayload, CommandResult, JobError, JobReply};
