//! The warm template (fork server): one process that has started Python,
//! set up `sys.path` and imported the modules workers will need
//! ([`crate::WorkerConfig::preload`] and the hooks' modules); new workers
//! are forked from it, so a replacement costs a fork (about a millisecond)
//! instead of starting an interpreter (about 100 ms of CPU).
//!
//! The job manager (a threaded, ZeroMQ-holding process) never forks
//! itself: it starts the template by fork+exec like any worker. The
//! template stays single-threaded — no reader thread, no ZeroMQ — so it may
//! fork safely. What must not be shared is done in each new worker, after
//! the fork: `PyOS_AfterFork_Child` (runs `os.register_at_fork` handlers;
//! `random` reseeds itself there), a fresh reader thread, the setup
//! function (its connections are the worker's own), its own process group.
//!
//! Control channel: a `SOCK_SEQPACKET` socket pair (one message per
//! packet). Job manager → template: `FORK` with two descriptors (the new
//! worker's stdin and stdout pipes) as `SCM_RIGHTS`. Template → job
//! manager: `READY` once warm, `PID k n` after `FORK k` (fork number k
//! made pid n; 0 when it failed), `EXIT n code
//! signal` when a worker it forked ends (it is their parent, so it reaps
//! them).

use crate::process::ExitInfo;
use crate::wire::WorkerConfig;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that makes a worker process the template.
pub const TEMPLATE_ENV: &str = "EMQ_WORKER_TEMPLATE";

/// The job manager's handle on its template process.
pub struct Template {
    child: Child,
    sock: OwnedFd,
    /// Exits reported and not yet collected, by pid.
    exits: HashMap<u32, ExitInfo>,
    /// Workers whose exit nobody will collect ([`Template::release`]):
    /// their report is dropped when it comes.
    released: std::collections::HashSet<u32>,
    /// `FORK`s sent (the next fork's number).
    forks_sent: u64,
    /// Answers not yet collected, by fork number (0: the fork failed);
    /// each answer names its fork, so a lost one cannot shift the others.
    pids: HashMap<u64, u32>,
}

impl Template {
    /// Starts the template and waits (up to `limit`) until it is warm.
    pub fn start(exe: &Path, cfg: &WorkerConfig, limit: Duration) -> io::Result<Template> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut cmd = Command::new(exe);
        cmd.arg(crate::WORKER_ARG)
            .env(crate::WORKER_CONFIG_ENV, serde_json::to_string(cfg).expect("config serialises"))
            .env(TEMPLATE_ENV, "1")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)?;
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                    .map_err(io::Error::from)?;
                nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 4u32);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let mut t = Template {
            child,
            sock: ours,
            exits: HashMap::new(),
            released: Default::default(),
            forks_sent: 0,
            pids: HashMap::new(),
        };
        match t.recv_until(Instant::now() + limit, |m| m == "READY")? {
            Some(_) => Ok(t),
            None => Err(io::Error::new(io::ErrorKind::TimedOut, "the worker template did not get ready")),
        }
    }

    /// The template's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the template for a new worker and returns at once: the fork's
    /// number (for [`Template::pid_of`]) and the job manager's ends of the
    /// new worker's stdin and stdout pipes. The job manager's loop does not
    /// wait for the template to be scheduled and fork: the worker's `Ready`
    /// frame says when it is up (and its pid); a failed fork closes its
    /// pipes (end-of-stream, as a worker that died starting).
    pub fn fork(&mut self) -> io::Result<(u64, OwnedFd, OwnedFd)> {
        use nix::fcntl::OFlag;
        let (to_r, to_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let (from_r, from_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        let fds = [to_r.as_raw_fd(), from_w.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let n = self.forks_sent;
        let msg = format!("FORK {n}");
        sendmsg::<()>(self.sock.as_raw_fd(), &[IoSlice::new(msg.as_bytes())], &cmsg, MsgFlags::empty(), None)
            .map_err(io::Error::from)?;
        drop((to_r, from_w));
        self.forks_sent += 1;
        // Answers nobody asked for yet are kept; bounded like the exits.
        let _ = self.recv_until(Instant::now(), |_| false);
        Ok((n, to_w, from_r))
    }

    /// The pid of fork number `n`, waiting up to `wait` for the answer;
    /// `None` when it did not come or the fork failed.
    pub fn pid_of(&mut self, n: u64, wait: Duration) -> Option<u32> {
        if let Some(pid) = self.pids.remove(&n) {
            return Some(pid).filter(|p| *p > 0);
        }
        let want = format!("PID {n} ");
        let _ = self.recv_until(Instant::now() + wait, |m| m.starts_with(&want));
        self.pids.remove(&n).filter(|p| *p > 0)
    }

    /// The exit of worker `pid` (forked from here), waiting up to `wait`
    /// for the template to report it.
    pub fn exit_of(&mut self, pid: u32, wait: Duration) -> Option<ExitInfo> {
        if let Some(e) = self.exits.remove(&pid) {
            return Some(e);
        }
        let want = format!("EXIT {pid} ");
        let _ = self.recv_until(Instant::now() + wait, |m| m.starts_with(&want));
        self.exits.remove(&pid)
    }

    /// The exit of worker `pid` if it was reported already; else nobody
    /// waits for it (its report is dropped when it comes). Never blocks.
    pub fn release(&mut self, pid: u32) -> Option<ExitInfo> {
        let _ = self.recv_until(Instant::now(), |_| false);
        let e = self.exits.remove(&pid);
        if e.is_none() && self.released.len() < 4096 {
            self.released.insert(pid);
        }
        e
    }

    /// Whether the template process is still there.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Reads messages until one satisfies `want` (returned) or `end`;
    /// `EXIT` reports are kept on the way.
    fn recv_until(&mut self, end: Instant, want: impl Fn(&str) -> bool) -> io::Result<Option<String>> {
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let mut pfd = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&self.sock), nix::poll::PollFlags::POLLIN)];
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let n =
                nix::poll::poll(&mut pfd, nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::ZERO))
                    .map_err(io::Error::from)?;
            if n == 0 {
                return Ok(None);
            }
            let mut buf = [0u8; 256];
            let len = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg =
                    recvmsg::<()>(self.sock.as_raw_fd(), &mut iov, None, MsgFlags::empty()).map_err(io::Error::from)?;
                msg.bytes
            };
            if len == 0 {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the worker template exited"));
            }
            let m = String::from_utf8_lossy(&buf[..len]).into_owned();
            if let Some(rest) = m.strip_prefix("PID ") {
                let mut it = rest.split_whitespace().map(|x| x.parse::<u64>().ok());
                if let (Some(Some(n)), Some(Some(pid))) = (it.next(), it.next()) {
                    self.pids.insert(n, u32::try_from(pid).unwrap_or(0));
                }
                if self.pids.len() > 4096 {
                    // Answers nobody collected (the worker's Ready said its
                    // pid first): only old ones go.
                    let recent = self.forks_sent.saturating_sub(1024);
                    self.pids.retain(|k, _| *k >= recent);
                }
            }
            if let Some(rest) = m.strip_prefix("EXIT ") {
                let mut it = rest.split_whitespace().map(|x| x.parse::<i32>().ok());
                if let (Some(Some(pid)), Some(code), Some(signal)) = (it.next(), it.next(), it.next()) {
                    if self.released.remove(&(pid as u32)) {
                        continue;
                    }
                    self.exits.insert(
                        pid as u32,
                        ExitInfo { code: code.filter(|c| *c >= 0), signal: signal.filter(|s| *s > 0) },
                    );
                    if self.exits.len() > 4096 {
                        self.exits.clear(); // nobody collects them: bounded
                    }
                }
            }
            if want(&m) {
                return Ok(Some(m));
            }
        }
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The template's side: waits for `FORK` requests on fd 0 (the control
/// socket) and reaps the workers it forked. Returns `Ok(())` in a new
/// worker (its pipes on fds 0 and 1), or `Err(code)` when the template
/// should exit. Call with the GIL held.
pub(crate) fn serve_forks() -> Result<(), i32> {
    // The control socket came as fd 0; a copy of it is what the template
    // uses, so a new worker can take fd 0 for its own stdin.
    let ctl_fd = match nix::unistd::dup(std::io::stdin()) {
        Ok(fd) => fd,
        Err(_) => return Err(1),
    };
    // A worker's exit is reported the moment it happens (the job manager
    // waits for it when it reaps): SIGCHLD through a signalfd.
    let mut chld = nix::sys::signal::SigSet::empty();
    chld.add(nix::sys::signal::Signal::SIGCHLD);
    let old_mask = chld.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK).map_err(|_| 1)?;
    let sigfd = nix::sys::signalfd::SignalFd::with_flags(
        &chld,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )
    .map_err(|_| 1)?;
    send(ctl_fd.as_raw_fd(), "READY");
    loop {
        report_exits(ctl_fd.as_raw_fd());
        let mut pfd = [
            nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&ctl_fd), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&sigfd), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(1000u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return Err(1),
        }
        if pfd[1].revents().is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN)) {
            while let Ok(Some(_)) = sigfd.read_signal() {}
            report_exits(ctl_fd.as_raw_fd());
        }
        if !pfd[0].revents().is_some_and(|r| r.intersects(nix::poll::PollFlags::POLLIN | nix::poll::PollFlags::POLLHUP))
        {
            continue;
        }
        let mut buf = [0u8; 64];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(ctl_fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(m) => m,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Err(1),
            };
            let mut fds: Vec<RawFd> = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(f) = c {
                        fds.extend(f);
                    }
                }
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Err(0); // the job manager is gone
        }
        let fork_no = std::str::from_utf8(&buf[..len]).ok().and_then(|m| m.strip_prefix("FORK ")).map(str::to_owned);
        let Some(fork_no) = fork_no.filter(|_| fds.len() == 2) else {
            for fd in fds {
                // SAFETY: received descriptors are ours to close.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if let Some(k) = std::str::from_utf8(&buf[..len]).ok().and_then(|m| m.strip_prefix("FORK ")) {
                // Every FORK gets its answer (a truncated one: failed).
                send(ctl_fd.as_raw_fd(), &format!("PID {k} 0"));
            }
            continue;
        };
        // SAFETY: received descriptors are ours.
        let (stdin_r, stdout_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the template is single-threaded; Python is told around the fork.
        unsafe { pyo3::ffi::PyOS_BeforeFork() };
        // SAFETY: single-threaded process (see above).
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // SAFETY: in the new process, with the GIL held by this thread.
                unsafe { pyo3::ffi::PyOS_AfterFork_Child() };
                let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
                let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
                // SAFETY: plain descriptor juggling in our own process.
                unsafe {
                    nix::libc::dup2(stdin_r.as_raw_fd(), 0);
                    nix::libc::dup2(stdout_w.as_raw_fd(), 1);
                }
                drop((stdin_r, stdout_w, ctl_fd, sigfd));
                // The worker's signal mask is the job manager's, not the template's.
                let _ = old_mask.thread_set_mask();
                return Ok(());
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                // SAFETY: back in the template, GIL held.
                unsafe { pyo3::ffi::PyOS_AfterFork_Parent() };
                drop((stdin_r, stdout_w));
                send(ctl_fd.as_raw_fd(), &format!("PID {fork_no} {}", child.as_raw()));
            }
            Err(e) => {
                // SAFETY: as above.
                unsafe { pyo3::ffi::PyOS_AfterFork_Parent() };
                tracing::error!(error = %e, "template: fork failed");
                send(ctl_fd.as_raw_fd(), &format!("PID {fork_no} 0"));
            }
        }
    }
}

fn send(fd: RawFd, msg: &str) {
    // Python's signal handlers are installed without SA_RESTART.
    while let Err(nix::errno::Errno::EINTR) =
        sendmsg::<()>(fd, &[IoSlice::new(msg.as_bytes())], &[], MsgFlags::empty(), None)
    {}
}

/// Reaps every worker that ended and tells the job manager.
fn report_exits(fd: RawFd) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => send(fd, &format!("EXIT {} {} -1", pid.as_raw(), code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) => send(fd, &format!("EXIT {} -1 {}", pid.as_raw(), sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
