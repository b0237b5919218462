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

use crate::wire::{encode, FrameBuffer, FromWorker, ToWorker, WorkerConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
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

/// A running worker process.
pub struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    buf: FrameBuffer,
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
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let fl = nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETFL(fl)).map_err(io::Error::from)?;
        Ok(WorkerProcess { child, stdin, stdout, buf: FrameBuffer::default() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The descriptor to poll for readability.
    pub fn output_fd(&self) -> RawFd {
        self.stdout.as_raw_fd()
    }

    /// Sends a command. Commands are small and a worker only gets one when
    /// it is idle and reading, so this does not stall the poll loop.
    pub fn send(&mut self, msg: &ToWorker) -> io::Result<()> {
        self.stdin.write_all(&encode(msg))?;
        self.stdin.flush()
    }

    /// Reads whatever is available without blocking.
    pub fn read_available(&mut self) -> ReadOutcome {
        let mut out = ReadOutcome::default();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stdout.read(&mut chunk) {
                Ok(0) => {
                    out.eof = true;
                    break;
                }
                Ok(n) => self.buf.extend(&chunk[..n]),
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
                Ok(f) => out.frames.push(f),
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
        let pid = self.child.id() as i32;
        if kill(Pid::from_raw(-pid), sig).is_err() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// Collects the exit status; a worker that is somehow still alive is
    /// SIGKILLed first, so this never waits long.
    pub fn reap(&mut self) -> ExitInfo {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => Ok(s),
            _ => {
                // Output closed but not yet exited: give it a moment, then kill.
                let end = Instant::now() + std::time::Duration::from_millis(200);
                loop {
                    match self.child.try_wait() {
                        Ok(Some(s)) => break Ok(s),
                        Ok(None) if Instant::now() < end => std::thread::sleep(std::time::Duration::from_millis(2)),
                        _ => {
                            self.signal(Signal::SIGKILL);
                            break self.child.wait();
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
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
