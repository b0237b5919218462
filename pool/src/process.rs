//! One worker process as the job manager sees it: spawned by re-executing
//! the current binary with [`crate::WORKER_ARG`], in its own process group
//! (signals to the job manager's terminal do not reach it; a timeout kill
//! reaches anything the job started), dying with its parent
//! (`PR_SET_PDEATHSIG`), with every inherited descriptor ≥ 3 closed on exec
//! (the bundled libzmq's epoll fds must not leak into workers).
//!
//! Reads are non-blocking so the job manager's poll loop never waits on one
//! worker; end-of-stream on the worker's output means it died, and
//! [`WorkerProcess::reap`] collects its exit status at once.

use crate::template::Template;
use crate::wire::{encode, FrameBuffer, FromWorker, ToWorker, WorkerConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (None, Some(s)) => {
                let name = Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
            _ => f.write_str("unknown exit"),
        }
    }
}

/// What one non-blocking read produced.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub frames: Vec<FromWorker>,
    /// The worker's output closed: it exited (or is about to).
    pub eof: bool,
    /// Garbage on the frame stream (the worker is then treated as broken).
    pub error: Option<String>,
}

/// How a worker process came to be, which says who reaps it.
enum Proc {
    /// fork+exec of our own binary: our child.
    Exec(Child),
    /// Forked from the warm template: the template's child, which reports
    /// its exit. `pid` is 0 until known (the template's answer to fork
    /// number `fork_no`, or the worker's `Ready`).
    Forked { pid: std::cell::Cell<u32>, fork_no: u64, template: Arc<Mutex<Template>>, reaped: bool },
}

/// A running worker process.
pub struct WorkerProcess {
    proc: Proc,
    stdin: File,
    stdout: File,
    buf: FrameBuffer,
    /// What one read of its output takes at most (allocated once: a fresh
    /// zeroed 64 KiB per read cost a memset at every wake-up).
    chunk: Box<[u8]>,
    /// Commands queued by [`WorkerProcess::queue`], written by
    /// [`WorkerProcess::flush`].
    pending: Vec<u8>,
    /// It was told to finish and exit (`Shutdown`).
    retiring: bool,
    /// The process group of the command job it runs (from its
    /// `CommandStarted` until that job's `Done`): signalled with the
    /// worker, swept when the worker is reaped.
    command_group: Option<i32>,
}

/// Bytes one read of a worker's output takes at most (a pipe's default
/// capacity).
const READ_CHUNK: usize = 64 * 1024;

fn set_nonblocking(f: &File) -> io::Result<()> {
    let fl = nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(io::Error::from)?;
    Ok(())
}

impl WorkerProcess {
    /// Starts `exe WORKER_ARG` with `cfg` in the environment.
    pub fn spawn(exe: &Path, cfg: &WorkerConfig) -> io::Result<WorkerProcess> {
        let mut cmd = Command::new(exe);
        cmd.arg(crate::WORKER_ARG)
            .env(crate::WORKER_CONFIG_ENV, serde_json::to_string(cfg).expect("config serialises"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some((uid, gid)) = cfg.run_as {
            // std sets the group, drops supplementary groups (setgroups)
            // and sets the user in the child before exec.
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
                // Own process group: terminal signals stay with the job
                // manager, and a kill reaches the job's own children.
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(io::Error::from)?;
                // close_range(3, ~0, CLOSE_RANGE_CLOEXEC): nothing but the
                // three pipes crosses exec.
                nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 4u32);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let stdin = File::from(OwnedFd::from(child.stdin.take().expect("piped stdin")));
        let stdout = File::from(OwnedFd::from(child.stdout.take().expect("piped stdout")));
        WorkerProcess::with_pipes(Proc::Exec(child), stdin, stdout)
    }

    /// A started worker and its two pipes (its output read without blocking).
    fn with_pipes(proc: Proc, stdin: File, stdout: File) -> io::Result<WorkerProcess> {
        set_nonblocking(&stdout)?;
        Ok(WorkerProcess {
            proc,
            stdin,
            stdout,
            buf: FrameBuffer::default(),
            chunk: vec![0u8; READ_CHUNK].into_boxed_slice(),
            pending: Vec::new(),
            retiring: false,
            command_group: None,
        })
    }

    /// Forks a worker from the warm template (see [`Template`]).
    pub fn fork_from(template: &Arc<Mutex<Template>>) -> io::Result<WorkerProcess> {
        let (fork_no, stdin, stdout) = template.lock().map_err(|_| io::Error::other("template lock"))?.fork()?;
        let proc = Proc::Forked { pid: Default::default(), fork_no, template: template.clone(), reaped: false };
        WorkerProcess::with_pipes(proc, File::from(stdin), File::from(stdout))
    }

    /// Its pid; 0 while a forked worker's is not known yet (never waits).
    pub fn pid(&self) -> u32 {
        self.resolve_pid(std::time::Duration::ZERO)
    }

    /// Its pid, waiting up to `wait` for the template's answer; 0 when
    /// there is none (the fork failed).
    fn resolve_pid(&self, wait: std::time::Duration) -> u32 {
        match &self.proc {
            Proc::Exec(child) => child.id(),
            Proc::Forked { pid, fork_no, template, .. } => {
                if pid.get() == 0 {
                    if let Some(p) = template.lock().ok().and_then(|mut t| t.pid_of(*fork_no, wait)) {
                        pid.set(p);
                    }
                }
                pid.get()
            }
        }
    }

    /// The descriptor to poll for readability.
    pub fn output_fd(&self) -> RawFd {
        self.stdout.as_raw_fd()
    }

    /// Sends a command. Commands are small and a worker only gets one when
    /// it is idle and reading, so this does not stall the poll loop.
    pub fn send(&mut self, msg: &ToWorker) -> io::Result<()> {
        self.queue(msg);
        self.flush()
    }

    /// Queues a command for the next [`WorkerProcess::flush`]: the jobs a
    /// poll pass hands one worker (its pipeline) go in one write, waking
    /// its reader once instead of once per job.
    pub fn queue(&mut self, msg: &ToWorker) {
        self.retiring |= matches!(msg, ToWorker::Shutdown);
        self.pending.extend_from_slice(&encode(msg));
    }

    /// Whether it was told to finish and exit.
    pub fn retiring(&self) -> bool {
        self.retiring
    }

    /// Writes what was queued.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let r = self.stdin.write_all(&self.pending);
        self.pending.clear();
        r
    }

    /// Reads whatever is available without blocking.
    pub fn read_available(&mut self) -> ReadOutcome {
        let mut out = ReadOutcome::default();
        loop {
            match self.stdout.read(&mut self.chunk) {
                Ok(0) => {
                    out.eof = true;
                    break;
                }
                Ok(n) => self.buf.extend(&self.chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    out.error = Some(e.to_string());
                    out.eof = true;
                    break;
                }
            }
        }
        while let Some(frame) = self.buf.next_frame::<FromWorker>() {
            match frame {
                Ok(f) => {
                    if let (FromWorker::Ready { pid: p }, Proc::Forked { pid, .. }) = (&f, &self.proc) {
                        if *p > 0 {
                            // Collect the template's answer too (no wait);
                            // the worker's own word is the one kept.
                            let answered = self.resolve_pid(std::time::Duration::ZERO);
                            if answered != 0 && answered != *p {
                                tracing::warn!(template_said = answered, worker_said = *p, "worker pid mismatch");
                            }
                            pid.set(*p);
                        }
                    }
                    match &f {
                        FromWorker::CommandStarted { pgid, .. } if *pgid > 1 => self.command_group = Some(*pgid),
                        FromWorker::Done { .. } => self.command_group = None,
                        _ => {}
                    }
                    out.frames.push(f)
                }
                Err(e) => {
                    out.error = Some(format!("bad frame from worker: {e}"));
                    break;
                }
            }
        }
        out
    }

    /// Signals the worker's whole process group.
    pub fn signal(&self, sig: Signal) {
        let pid = self.resolve_pid(std::time::Duration::from_secs(2)) as i32;
        if pid <= 0 {
            return; // a fork that failed: nothing to signal (and -0 is us)
        }
        if kill(Pid::from_raw(-pid), sig).is_err() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
        if let Some(group) = self.command_group {
            // The command job's own group (its program and children).
            let _ = kill(Pid::from_raw(-group), sig);
        }
    }

    /// The process group of the command job it runs, if any.
    pub fn command_group(&self) -> Option<i32> {
        self.command_group
    }

    /// A worker gone with a command job running: what is left of the
    /// command's group is killed (the worker can no longer sweep it).
    fn sweep_command_group(&mut self) {
        if let Some(group) = self.command_group.take() {
            let _ = kill(Pid::from_raw(-group), Signal::SIGKILL);
        }
    }

    /// For a worker that was told to stop and closed its output: its exit
    /// status when already known, without waiting for a forked worker's
    /// template to report it (that wait is a scheduling round of a busy
    /// machine, in the job manager's loop, at every recycling); an
    /// exec'd worker is reaped as by [`WorkerProcess::reap`].
    pub fn reap_retired(&mut self) -> Option<ExitInfo> {
        self.sweep_command_group();
        match &mut self.proc {
            Proc::Exec(_) => Some(self.reap()),
            Proc::Forked { .. } => {
                let pid = self.resolve_pid(std::time::Duration::ZERO);
                let Proc::Forked { template, reaped, .. } = &mut self.proc else { return None };
                *reaped = true;
                if pid == 0 {
                    return None;
                }
                template.lock().ok()?.release(pid)
            }
        }
    }

    /// Collects the exit status; a worker that is somehow still alive is
    /// SIGKILLed first, so this never waits long.
    pub fn reap(&mut self) -> ExitInfo {
        self.sweep_command_group();
        let child = match &mut self.proc {
            Proc::Exec(child) => child,
            Proc::Forked { .. } => {
                let pid = self.resolve_pid(std::time::Duration::from_secs(2));
                let Proc::Forked { template, reaped, .. } = &mut self.proc else {
                    return ExitInfo { code: None, signal: None };
                };
                *reaped = true;
                if pid == 0 {
                    // The fork failed: its pipes closed, nothing ran.
                    return ExitInfo { code: None, signal: None };
                }
                let template = template.clone();
                let mut t = match template.lock() {
                    Ok(t) => t,
                    Err(_) => return ExitInfo { code: None, signal: None },
                };
                if let Some(e) = t.exit_of(pid, std::time::Duration::from_millis(200)) {
                    return e;
                }
                let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                return t
                    .exit_of(pid, std::time::Duration::from_secs(2))
                    .unwrap_or(ExitInfo { code: None, signal: None });
            }
        };
        let status = match child.try_wait() {
            Ok(Some(s)) => Ok(s),
            _ => {
                // Output closed but not yet exited: give it a moment, then kill.
                let end = Instant::now() + std::time::Duration::from_millis(200);
                loop {
                    match child.try_wait() {
                        Ok(Some(s)) => break Ok(s),
                        Ok(None) if Instant::now() < end => std::thread::sleep(std::time::Duration::from_millis(2)),
                        _ => {
                            let pid = child.id() as i32;
                            if kill(Pid::from_raw(-pid), Signal::SIGKILL).is_err() {
                                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                            }
                            break child.wait();
                        }
                    }
                }
            }
        };
        match status {
            Ok(s) => ExitInfo { code: s.code(), signal: s.signal() },
            Err(_) => ExitInfo { code: None, signal: None },
        }
    }
}

impl Drop for WorkerProcess {
    /// A worker never outlives its handle.
    fn drop(&mut self) {
        match &mut self.proc {
            Proc::Exec(child) => {
                if let Ok(None) = child.try_wait() {
                    let pid = child.id() as i32;
                    if kill(Pid::from_raw(-pid), Signal::SIGKILL).is_err() {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    let _ = child.wait();
                }
            }
            // The template reaps it.
            Proc::Forked { reaped: false, .. } => {
                let pid = self.resolve_pid(std::time::Duration::from_secs(1)) as i32;
                if pid > 0 {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                }
            }
            Proc::Forked { .. } => {}
        }
    }
}
