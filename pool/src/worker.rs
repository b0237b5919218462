//! The worker process: reads [`ToWorker`] frames on stdin, runs each job in
//! the embedded interpreter, answers [`FromWorker`] frames on a private copy
//! of its original stdout. Before Python starts, fd 1 is pointed at stderr,
//! so `print()` in a job cannot corrupt the frame stream.

use crate::python::PythonRunner;
use crate::wire::{read_frame, write_frame, FromWorker, ToWorker, WorkerConfig};
use emq_protocol::{JobReply, RunPayload};
use pyo3::prelude::*;
use std::fs::File;
use std::os::fd::FromRawFd;

/// Entry point of a worker process; returns its exit code.
pub fn worker_main() -> i32 {
    let cfg: WorkerConfig = match std::env::var(crate::WORKER_CONFIG_ENV) {
        Ok(s) => match serde_json::from_str(&s) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("emq worker: bad {}: {e}", crate::WORKER_CONFIG_ENV);
                return 2;
            }
        },
        Err(_) => WorkerConfig::default(),
    };
    let _ = tracing_subscriber_init(&cfg.log_level);
    // Private frame channel: dup the original stdout, then send fd 1 to stderr.
    let frames_fd = match nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("emq worker: cannot dup stdout: {e}");
            return 2;
        }
    };
    // SAFETY: fd 1 and 2 are open for the whole process life.
    unsafe {
        nix::libc::dup2(2, 1);
    }
    // SAFETY: frames_fd was just created by F_DUPFD_CLOEXEC and is ours.
    let mut out = std::io::BufWriter::new(unsafe { File::from_raw_fd(frames_fd) });
    let mut input = std::io::stdin().lock();
    let pid = std::process::id();

    Python::attach(|py| {
        let mut runner = PythonRunner::new(py, &cfg);
        if write_frame(&mut out, &FromWorker::Ready { pid }).is_err() {
            return 1;
        }
        loop {
            match read_frame::<ToWorker>(&mut input) {
                Ok(Some(ToWorker::Run { msgid, payload })) => {
                    let reply = match RunPayload::parse(&payload) {
                        Ok(p) => runner.run(py, &p),
                        Err(e) => JobReply::failed("BadPayload", e.to_string(), ""),
                    };
                    let error_type = reply.error.as_ref().map(|e| e.kind.clone());
                    let done = FromWorker::Done { msgid, reply_json: reply.to_json(), error_type };
                    if write_frame(&mut out, &done).is_err() {
                        return 1; // parent gone
                    }
                }
                Ok(Some(ToWorker::Shutdown)) | Ok(None) => return 0,
                Err(e) => {
                    tracing::error!(pid, error = %e, "bad frame from job manager");
                    return 1;
                }
            }
        }
    })
}

fn tracing_subscriber_init(level: &str) -> Result<(), ()> {
    // The worker logs through the same stderr as its job manager.
    let filter =
        std::env::var("RUST_LOG").unwrap_or_else(|_| if level.is_empty() { "info".into() } else { level.into() });
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).finish(),
    )
    .map_err(|_| ())
}
