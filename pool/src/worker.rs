//! The worker process: a reader thread takes [`ToWorker`] frames from stdin
//! into an inbox (so the job manager can queue a job behind the running one,
//! and take queued ones back with `Steal`); the main thread runs jobs from
//! the inbox in the embedded interpreter, one at a time, and answers
//! [`FromWorker`] frames on a private copy of its original stdout (what a
//! running job says about itself goes through [`crate::report`], whatever
//! is pending before the job's `Done`). Before Python starts, fd 1 is
//! pointed at stderr, so `print()` in a job cannot corrupt the frame
//! stream.

use crate::python::PythonRunner;
use crate::report::{Reporter, REPORT_EVERY};
use crate::wire::{read_frame, write_frame, FromWorker, ToWorker, WorkerConfig};
use emq_protocol::{JobErrorKind, JobReply, RunPayload};
use pyo3::prelude::*;
use std::collections::VecDeque;
use std::fs::File;
use std::io::BufWriter;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// A job received and not started yet.
struct InboxJob {
    msgid: String,
    payload: String,
    attempt: u32,
    /// The last checkpoint of an earlier attempt (JSON text).
    checkpoint: Option<String>,
}

/// Jobs received and not started, plus whether input has ended.
#[derive(Default)]
struct Inbox {
    jobs: VecDeque<InboxJob>,
    closed: bool,
    /// The main thread is waiting on the condvar: only then is it woken
    /// (a notify is a futex syscall even with nobody waiting, and with
    /// jobs queued behind the running one nobody is).
    waiting: bool,
}

type Shared<T> = Arc<(Mutex<T>, Condvar)>;

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
    tracing_subscriber_init(&cfg.log_level, &cfg.log_format);
    if std::env::var_os(crate::template::TEMPLATE_ENV).is_some() {
        // The warm template: Python up and modules imported once; each
        // worker is forked from here and goes on below as its own process.
        return Python::attach(|py| {
            PythonRunner::warm(py, &cfg);
            match crate::template::serve_forks() {
                Err(code) => code,
                Ok(()) => {
                    if let Some((uid, gid)) = cfg.run_as {
                        if let Err(e) = drop_privileges(uid, gid) {
                            eprintln!("emq worker: cannot switch to uid {uid}: {e}");
                            return 2;
                        }
                    }
                    let runner = PythonRunner::after_warm(py, &cfg);
                    match frame_channel() {
                        Ok(out) => serve(py, runner, out, &cfg),
                        Err(code) => code,
                    }
                }
            }
        });
    }
    let out = match frame_channel() {
        Ok(out) => out,
        Err(code) => return code,
    };
    Python::attach(|py| {
        let runner = PythonRunner::new(py, &cfg);
        serve(py, runner, out, &cfg)
    })
}

/// Private frame channel: a copy of the original stdout; fd 1 then goes to
/// stderr, so `print()` in a job cannot corrupt the frame stream.
fn frame_channel() -> Result<Arc<Mutex<BufWriter<File>>>, i32> {
    let frames_fd = match nix::fcntl::fcntl(std::io::stdout(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("emq worker: cannot dup stdout: {e}");
            return Err(2);
        }
    };
    // SAFETY: fd 1 and 2 are open for the whole process life.
    unsafe {
        nix::libc::dup2(2, 1);
    }
    // SAFETY: frames_fd was just created by F_DUPFD_CLOEXEC and is ours.
    Ok(Arc::new(Mutex::new(BufWriter::new(unsafe { File::from_raw_fd(frames_fd) }))))
}

/// A worker forked from a template running as root becomes `worker_user`.
fn drop_privileges(uid: u32, gid: u32) -> nix::Result<()> {
    nix::unistd::setgroups(&[])?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))
}

/// The worker's life: the reader thread, the reports' flusher thread,
/// `Ready`, then jobs one at a time.
fn serve(py: Python<'_>, mut runner: PythonRunner, out: Arc<Mutex<BufWriter<File>>>, cfg: &WorkerConfig) -> i32 {
    let inbox: Shared<Inbox> = Arc::new((Mutex::new(Inbox::default()), Condvar::new()));
    let pid = std::process::id();
    {
        let (inbox, out) = (inbox.clone(), out.clone());
        std::thread::spawn(move || read_commands(inbox, out));
    }
    let reporter = {
        let out = out.clone();
        Arc::new(Reporter::new(Box::new(move |m| send(&out, m)), REPORT_EVERY))
    };
    {
        let reporter = reporter.clone();
        std::thread::spawn(move || reporter.run_flusher());
    }
    runner.install_reporter(py, reporter.clone());
    {
        if send(&out, &FromWorker::Ready { pid }).is_err() {
            return 1;
        }
        loop {
            let next = py.detach(|| {
                let (lock, cv) = &*inbox;
                let mut g = lock.lock().expect("inbox lock");
                loop {
                    if let Some(job) = g.jobs.pop_front() {
                        return Some(job);
                    }
                    if g.closed {
                        return None;
                    }
                    g.waiting = true;
                    g = cv.wait(g).expect("inbox lock");
                    g.waiting = false;
                }
            });
            let Some(InboxJob { msgid, payload, attempt, checkpoint }) = next else {
                reporter.close();
                return 0;
            };
            let mut told_to_stop = false;
            let reply = if emq_protocol::payload_is_command(&payload) {
                let (reply, term) = py.detach(|| run_command(&msgid, &payload, cfg, &out));
                told_to_stop = term;
                reply
            } else {
                match RunPayload::parse(&payload) {
                    Ok(p) => {
                        reporter.job_started(&msgid);
                        runner.set_current_job(py, &msgid, attempt, checkpoint.as_deref());
                        runner.run(py, &p)
                    }
                    Err(e) => JobReply::failed(JobErrorKind::BadPayload, e.to_string(), ""),
                }
            };
            let error_type = reply.error.as_ref().map(|e| e.kind.clone());
            // What the job said and is not sent yet goes before its Done.
            let reported = reporter.job_ended(Instant::now());
            let done = FromWorker::Done { msgid, reply_json: reply.to_json(), error_type };
            if reported.is_err() || send(&out, &done).is_err() {
                return 1; // parent gone
            }
            if told_to_stop {
                // SIGTERM came while a command ran (it went to the
                // command's group too): now the worker goes as asked.
                reporter.close();
                return 143;
            }
        }
    }
}

/// Set by the SIGTERM handler installed while a command runs.
static TERM_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn note_term(_: nix::libc::c_int) {
    TERM_REQUESTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A command job, checked against `allowed_commands` again, run to its end.
/// While it runs a SIGTERM (a timeout, a cancel, a stop) is noted rather
/// than obeyed: the same signal reached the command's group, which gets the
/// job manager's grace before its SIGKILL; the worker waits for the command
/// instead of leaving it orphaned. Returns the reply and whether a SIGTERM
/// came.
fn run_command(msgid: &str, payload: &str, cfg: &WorkerConfig, out: &Mutex<BufWriter<File>>) -> (JobReply, bool) {
    let cmd = match emq_protocol::CommandPayload::parse(payload) {
        Ok(c) => c,
        Err(e) => return (JobReply::failed(JobErrorKind::BadPayload, e, ""), false),
    };
    let program = match crate::command::check(&cmd, &cfg.allowed_commands) {
        Ok(p) => p,
        Err(e) => return (JobReply::failed(JobErrorKind::Refused, e, ""), false),
    };
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    TERM_REQUESTED.store(false, std::sync::atomic::Ordering::SeqCst);
    let noting = SigAction::new(SigHandler::Handler(note_term), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler only stores to an atomic.
    let previous = unsafe { sigaction(Signal::SIGTERM, &noting) }.ok();
    let budget =
        if cfg.command_output_bytes == 0 { crate::wire::default_output_bytes() } else { cfg.command_output_bytes };
    let reply = crate::command::run(&cmd, &program, budget, |pgid| {
        tracing::debug!(%msgid, pgid, program = %program.display(), "command started");
        let _ = send(out, &FromWorker::CommandStarted { msgid: msgid.to_owned(), pgid });
    });
    if let Some(previous) = previous {
        // SAFETY: restoring the disposition that was in force.
        let _ = unsafe { sigaction(Signal::SIGTERM, &previous) };
    }
    (reply, TERM_REQUESTED.load(std::sync::atomic::Ordering::SeqCst))
}

fn send(out: &Mutex<BufWriter<File>>, msg: &FromWorker) -> std::io::Result<()> {
    write_frame(&mut *out.lock().expect("output lock"), msg)
}

/// The reader thread: stdin frames into the inbox; `Steal` answered here.
fn read_commands(inbox: Shared<Inbox>, out: Arc<Mutex<BufWriter<File>>>) {
    let mut input = std::io::stdin().lock();
    let (lock, cv) = &*inbox;
    loop {
        let frame = read_frame::<ToWorker>(&mut input);
        let mut g = lock.lock().expect("inbox lock");
        match frame {
            Ok(Some(ToWorker::Run { msgid, payload, attempt, checkpoint })) => {
                g.jobs.push_back(InboxJob { msgid, payload, attempt, checkpoint })
            }
            Ok(Some(ToWorker::RunInline { msgid, payload, attempt, checkpoint })) => {
                g.jobs.push_back(InboxJob { msgid, payload: payload.into_string(), attempt, checkpoint })
            }
            Ok(Some(ToWorker::Steal)) => {
                let msgids: Vec<String> = g.jobs.drain(..).map(|j| j.msgid).collect();
                drop(g);
                if send(&out, &FromWorker::Stolen { msgids }).is_err() {
                    std::process::exit(1);
                }
                continue;
            }
            Ok(Some(ToWorker::Shutdown)) | Ok(None) => g.closed = true,
            Err(e) => {
                tracing::error!(error = %e, "bad frame from job manager");
                g.closed = true;
            }
        }
        let (closed, wake) = (g.closed, g.waiting);
        drop(g);
        if wake {
            cv.notify_one();
        }
        if closed {
            return;
        }
    }
}

fn tracing_subscriber_init(level: &str, format: &str) {
    // The worker logs through the same stderr as its job manager, in its
    // format (no colour unless that stderr is a terminal).
    let filter =
        std::env::var("RUST_LOG").unwrap_or_else(|_| if level.is_empty() { "info".into() } else { level.into() });
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if format == "json" {
        tracing::subscriber::set_global_default(
            fmt.json().flatten_event(true).with_current_span(false).with_span_list(false).finish(),
        )
    } else {
        tracing::subscriber::set_global_default(fmt.with_target(false).with_ansi(emq_settings::log_colours()).finish())
    };
}
