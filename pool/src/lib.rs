//! # emq-pool — supervised worker processes that run Python callables
//!
//! Owns:
//! - [`wire`]: the parent ⇄ worker frames (length-prefixed JSON over pipes);
//! - [`process`]: starting a worker by re-executing the current binary in
//!   its hidden worker mode (fork+exec, never a bare fork of a threaded,
//!   ZeroMQ-holding parent), in its own process group, dying with its parent
//!   (`PR_SET_PDEATHSIG`), non-blocking reads of its frames, SIGTERM/SIGKILL
//!   and reaping;
//! - [`worker`]: the worker process's main loop;
//! - [`report`]: what a running job says about itself (progress,
//!   checkpoint, extend), coalesced and rate-limited on its way out;
//! - [`python`]: running `path` + `callable` through pyo3, with JSON ⇄
//!   Python conversion, tracebacks, and the setup/entry/exit hooks.
//!
//! Does not own: which worker gets which job, timeouts, restarts policy or
//! the router connection — that is the job manager's state machine.

pub mod command;
pub mod process;
pub mod python;
pub mod report;
pub mod template;
pub mod wire;
pub mod worker;

pub use process::{ExitInfo, ReadOutcome, WorkerProcess};
pub use template::Template;
pub use wire::{FromWorker, ToWorker, WorkerConfig};

/// The hidden first argument that turns the job manager binary into a
/// worker process.
pub const WORKER_ARG: &str = "__emq_worker";
/// Environment variable carrying the worker's [`WorkerConfig`] as JSON.
pub const WORKER_CONFIG_ENV: &str = "EMQ_WORKER_CONFIG";
