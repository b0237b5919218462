//! Running a command job inside a worker: the program (no shell) in a
//! process group of its own, with a small safe environment, its output's
//! tails kept within a byte budget, and nothing of it left behind.
//!
//! The worker runs the command and waits for it; the job manager's kills
//! reach it because the worker tells the job manager the group
//! ([`crate::FromWorker::CommandStarted`]) and [`crate::WorkerProcess::signal`]
//! signals that group beside the worker's own: a timeout's SIGTERM, the
//! `kill_escalation` grace and the SIGKILL reach every process of the
//! command. When the program itself ends, whatever it left running in its
//! group is killed before the result goes out.
//!
//! What may run is decided twice, by the same [`check`]: by the job manager
//! before a job reaches a worker, and by the worker before it starts the
//! program (`allowed_commands`, absolute paths or globs).
//!
//! Not covered (documented in docs/commands.md): a process that leaves the
//! group (`setsid`) escapes the kill; a job manager killed with SIGKILL
//! takes its workers with it (`PR_SET_PDEATHSIG`) and the program's main
//! process too, not the rest of its group.

use emq_protocol::{CommandPayload, CommandResult, JobError, JobErrorKind, JobReply};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `PATH` a command gets unless its job sets one, and the only one a
/// bare program name is looked up on.
pub const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How much of standard error a failure's traceback carries.
pub const TRACEBACK_BYTES: usize = 4096;

/// How long output is still read after the program ended and its group was
/// killed (a process that left the group may hold the pipes open).
const DRAIN_AFTER_END: Duration = Duration::from_secs(2);

/// The program `argv[0]` names, as it will run: an absolute path as given
/// (normalised: no `.`, `..` or empty components, so a glob cannot be
/// walked out of), or a bare name found on [`SAFE_PATH`]. A relative path
/// with a `/` is refused.
pub fn resolve_program(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        if !program.starts_with('/') {
            return Err(format!("program {program:?} must be an absolute path or a bare name"));
        }
        if program[1..].split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(format!("program {program:?} is not a normalised absolute path (no ., .. or //)"));
        }
        return Ok(PathBuf::from(program));
    }
    for dir in SAFE_PATH.split(':') {
        let p = Path::new(dir).join(program);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    Err(format!("program {program:?} is not on PATH {SAFE_PATH}"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `program` (an absolute path) matches one of `allowed`: `*` alone
/// allows anything; in a pattern `*` is any run of characters but `/`, `**`
/// any run at all, `?` one character but `/`.
pub fn command_allowed(allowed: &[String], program: &str) -> bool {
    allowed.iter().any(|p| p == "*" || glob_match(p.as_bytes(), program.as_bytes()))
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) if rest.first() == Some(&b'*') => {
            let rest = &rest[1..];
            (0..=text.len()).any(|i| glob_match(rest, &text[i..]))
        }
        Some((b'*', rest)) => {
            let stop = text.iter().position(|&c| c == b'/').unwrap_or(text.len());
            (0..=stop).any(|i| glob_match(rest, &text[i..]))
        }
        Some((b'?', rest)) => text.first().is_some_and(|&c| c != b'/') && glob_match(rest, &text[1..]),
        Some((&c, rest)) => text.first() == Some(&c) && glob_match(rest, &text[1..]),
    }
}

/// Whether `cmd` may run under `allowed` (`allowed_commands`): valid, its
/// program resolved and allowed. The error is what the job's refusal says.
pub fn check(cmd: &CommandPayload, allowed: &[String]) -> Result<PathBuf, String> {
    cmd.validate()?;
    let program = resolve_program(cmd.program())?;
    let shown = program.to_string_lossy();
    if !command_allowed(allowed, &shown) {
        return Err(format!("command {shown:?} is not in allowed_commands {allowed:?}"));
    }
    Ok(program)
}

/// The last `cap` bytes of a stream, and how many came before them.
#[derive(Debug)]
pub struct OutputTail {
    cap: usize,
    kept: VecDeque<u8>,
    cut: u64,
}

impl OutputTail {
    pub fn new(cap: usize) -> OutputTail {
        OutputTail { cap, kept: VecDeque::new(), cut: 0 }
    }

    /// Appends bytes, dropping the oldest past the budget.
    pub fn push(&mut self, bytes: &[u8]) {
        let bytes = if bytes.len() > self.cap {
            self.cut += (bytes.len() - self.cap) as u64;
            &bytes[bytes.len() - self.cap..]
        } else {
            bytes
        };
        let over = (self.kept.len() + bytes.len()).saturating_sub(self.cap);
        self.kept.drain(..over);
        self.cut += over as u64;
        self.kept.extend(bytes);
    }

    /// The tail as text (invalid UTF-8 replaced; a character cut in half
    /// at the front is left out and counted as cut) and the bytes cut.
    pub fn text(&self) -> (String, u64) {
        let (a, b) = self.kept.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        let mut skip = 0;
        if self.cut > 0 {
            while skip < 3 && bytes.get(skip).is_some_and(|&c| c & 0xC0 == 0x80) {
                skip += 1;
            }
        }
        (String::from_utf8_lossy(&bytes[skip..]).into_owned(), self.cut + skip as u64)
    }
}

/// Runs `cmd` (already [`check`]ed into `program`) and waits for it.
/// `started(pgid)` is called once its process group exists, before any of
/// it runs the program. Each output stream keeps its last `output_budget`
/// bytes. The reply's value is the [`CommandResult`]; a non-zero exit or a
/// signal is a failure of kind [`JobErrorKind::CommandFailed`].
pub fn run(cmd: &CommandPayload, program: &Path, output_budget: usize, started: impl FnOnce(i32)) -> JobReply {
    let mut c = Command::new(program);
    c.arg0(cmd.program())
        .args(&cmd.argv[1..])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .envs(&cmd.env)
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &cmd.cwd {
        c.current_dir(cwd);
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            // A group of its own: a kill reaches its children too.
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                .map_err(std::io::Error::from)?;
            // It dies with the worker that waits for it.
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)?;
            // What the embedded interpreter may have ignored or blocked is
            // not the program's to inherit.
            for sig in [nix::libc::SIGPIPE, nix::libc::SIGXFSZ, nix::libc::SIGTERM, nix::libc::SIGINT] {
                nix::libc::signal(sig, nix::libc::SIG_DFL);
            }
            let empty: nix::libc::sigset_t = std::mem::zeroed();
            nix::libc::sigprocmask(nix::libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Nothing but its three streams crosses exec.
            nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 4u32);
            Ok(())
        });
    }
    let mut child = match c.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot start {}: {e}", program.display());
            return JobReply::failed(JobErrorKind::CommandFailed, message, "");
        }
    };
    let pid = child.id() as i32;
    started(pid);
    let stdin_writer = child.stdin.take().zip(cmd.stdin.clone()).map(|(mut pipe, text)| {
        std::thread::spawn(move || {
            // A program that does not read its input ends the write (EPIPE).
            let _ = pipe.write_all(text.as_bytes());
        })
    });
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        let tail = Arc::new(Mutex::new(OutputTail::new(output_budget)));
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        if let Some(mut pipe) = pipe {
            let tail = tail.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => tail.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                let _ = done_tx.send(());
            });
        }
        (tail, done_rx)
    })
    .collect();
    // The program's end, without reaping it: while it is a zombie its pid
    // (the group's id) cannot be reused, so sweeping the group below never
    // reaches anyone else.
    wait_exited_no_reap(pid);
    // What it left behind in its group goes with it.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    let status = child.wait();
    let until = Instant::now() + DRAIN_AFTER_END;
    for (_, done) in &readers {
        let _ = done.recv_deadline(until);
    }
    if let Some(w) = stdin_writer {
        if w.is_finished() {
            let _ = w.join();
        }
    }
    let (stdout, stdout_cut) = readers[0].0.lock().unwrap_or_else(|p| p.into_inner()).text();
    let (stderr, stderr_cut) = readers[1].0.lock().unwrap_or_else(|p| p.into_inner()).text();
    let (exit_code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let result = CommandResult { exit_code, signal, stdout, stderr, stdout_cut, stderr_cut };
    reply_for(result)
}

/// The job's reply for a finished command.
pub fn reply_for(result: CommandResult) -> JobReply {
    if result.succeeded() {
        return JobReply::ok(serde_json::to_value(&result).expect("result serialises"));
    }
    let last_line = result.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let mut message = result.describe_end();
    if !last_line.is_empty() {
        let line: String = last_line.chars().take(200).collect();
        message = format!("{message}: {line}");
    }
    let traceback = {
        let s = &result.stderr;
        let mut from = s.len().saturating_sub(TRACEBACK_BYTES);
        while !s.is_char_boundary(from) {
            from += 1;
        }
        s[from..].to_owned()
    };
    JobReply {
        value: serde_json::to_value(&result).expect("result serialises"),
        error: Some(JobError {
            kind: JobErrorKind::CommandFailed,
            message,
            traceback,
            by_router: false,
            node: None,
            node_name: None,
        }),
    }
}

/// Blocks until process `pid` (a child) has exited, leaving it a zombie.
fn wait_exited_no_reap(pid: i32) {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter.
        let mut info: nix::libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child, with a valid siginfo pointer.
        let r = unsafe {
            nix::libc::waitid(
                nix::libc::P_PID,
                pid as nix::libc::id_t,
                &mut info,
                nix::libc::WEXITED | nix::libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(nix::libc::EINTR) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_paths() {
        let allowed =
            |pats: &[&str], p: &str| command_allowed(&pats.iter().map(|s| s.to_string()).collect::<Vec<_>>(), p);
        assert!(allowed(&["/bin/echo"], "/bin/echo"));
        assert!(!allowed(&["/bin/echo"], "/bin/echo2"));
        assert!(!allowed(&[], "/bin/echo"));
        assert!(allowed(&["*"], "/anything/at/all"));
        assert!(allowed(&["/usr/bin/*"], "/usr/bin/env"));
        assert!(!allowed(&["/usr/bin/*"], "/usr/bin/x/y"), "* stops at /");
        assert!(allowed(&["/opt/**"], "/opt/a/b/c"));
        assert!(allowed(&["/opt/tool-?"], "/opt/tool-1"));
        assert!(!allowed(&["/opt/tool-?"], "/opt/tool-12"));
        assert!(allowed(&["/srv/*/bin/run"], "/srv/app/bin/run"));
    }

    #[test]
    fn programs_resolve_safely() {
        assert_eq!(resolve_program("/bin/echo").unwrap(), PathBuf::from("/bin/echo"));
        assert!(resolve_program("echo").unwrap().is_absolute());
        assert!(resolve_program("bin/echo").is_err());
        assert!(resolve_program("/usr/bin/../../tmp/x").is_err());
        assert!(resolve_program("/usr/bin//env").is_err());
        assert!(resolve_program("/usr/bin/./env").is_err());
        assert!(resolve_program("no-such-program-here").unwrap_err().contains("PATH"));
        // A glob cannot be walked out of.
        let cmd = CommandPayload::new(["/usr/bin/../../tmp/evil"]);
        assert!(check(&cmd, &["/usr/bin/**".into()]).is_err());
        let e = check(&CommandPayload::new(["/bin/rm", "-rf", "/"]), &["/bin/echo".into()]).unwrap_err();
        assert!(e.contains("allowed_commands"), "{e}");
    }

    #[test]
    fn tails_keep_the_end_and_count_the_rest() {
        let mut t = OutputTail::new(4);
        t.push(b"ab");
        assert_eq!(t.text(), ("ab".into(), 0));
        t.push(b"cdef");
        assert_eq!(t.text(), ("cdef".into(), 2));
        t.push(b"0123456789");
        assert_eq!(t.text(), ("6789".into(), 12));
        // A character cut in half at the front is not shown.
        let mut u = OutputTail::new(3);
        u.push("xé!".as_bytes()); // x, c3 a9, !
        u.push(b"?");
        assert_eq!(u.text(), ("!?".into(), 3));
    }

    #[test]
    fn runs_a_program_and_reports_output_and_exit() {
        let mut pgid = 0;
        let mut cmd = CommandPayload::new(["/bin/sh", "-c", "echo out; echo err >&2; cat; echo \"$A:$PATH\""]);
        cmd.env.insert("A".into(), "1".into());
        cmd.stdin = Some("in\n".into());
        let r = run(&cmd, Path::new("/bin/sh"), 1024, |p| pgid = p);
        assert!(pgid > 0);
        assert!(r.error.is_none(), "{r:?}");
        assert_eq!(r.value["stdout"], format!("out\nin\n1:{SAFE_PATH}\n"));
        assert_eq!(r.value["stderr"], "err\n");
        assert_eq!(r.value["exit_code"], 0);

        let failing = CommandPayload::new(["/bin/sh", "-c", "echo first >&2; echo why >&2; exit 3"]);
        let r = run(&failing, Path::new("/bin/sh"), 1024, |_| {});
        let e = r.error.unwrap();
        assert_eq!(e.kind, JobErrorKind::CommandFailed);
        assert_eq!(e.message, "exit code 3: why");
        assert_eq!(e.traceback, "first\nwhy\n");
        assert_eq!(r.value["exit_code"], 3);

        let missing = CommandPayload::new(["/no/such/program"]);
        let r = run(&missing, Path::new("/no/such/program"), 1024, |_| panic!("never started"));
        assert!(r.error.unwrap().message.contains("cannot start"));
    }

    #[test]
    fn input_the_program_does_not_read_is_dropped() {
        // /bin/true exits without reading: the writer meets a closed pipe
        // (EPIPE, SIGPIPE ignored), the job is not harmed.
        let mut cmd = CommandPayload::new(["/bin/true"]);
        cmd.stdin = Some("x".repeat(4 << 20));
        let r = run(&cmd, Path::new("/bin/true"), 1024, |_| {});
        assert_eq!(r.value["exit_code"], 0, "{r:?}");
    }

    #[test]
    fn what_the_program_leaves_behind_is_killed_and_output_is_bounded() {
        // The background sleep holds stdout: without the sweep this would
        // wait for it.
        let cmd = CommandPayload::new(["/bin/sh", "-c", "sleep 30 & seq 1 100000"]);
        let mut pgid = 0;
        let r = run(&cmd, Path::new("/bin/sh"), 100, |p| pgid = p);
        assert_eq!(r.value["exit_code"], 0);
        let out = r.value["stdout"].as_str().unwrap();
        assert!(out.ends_with("99999\n100000\n") && out.len() <= 100, "{out:?}");
        assert!(r.value["stdout_cut"].as_u64().unwrap() > 500_000);
        // Nobody is left alive in its group (killed ones may wait to be
        // reaped by whoever adopted them).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !live_in_group(pgid).is_empty() {
            assert!(Instant::now() < deadline, "group {pgid} still has {:?}", live_in_group(pgid));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Processes of group `pgid` that are not zombies, from /proc.
    pub(crate) fn live_in_group(pgid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // pid (comm) state ppid pgrp ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" {
                out.push(pid);
            }
        }
        out
    }
}
