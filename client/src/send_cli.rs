//! `emq-send`: submit a job (or N copies) from the shell.
//!
//! Exit codes: 0 success; 1 the job failed, timed out or was refused (the
//! error JSON on stdout); 2 usage or connection error (message on stderr);
//! 3 `--deadline` passed without a result.

use crate::client::job_for;
use crate::flags;
use crate::{Client, ClientError, JobOutcome, Options, Receipt, ScheduleSpec};
use clap::Parser;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Send a job to an emq (or EventMQ) router.
#[derive(Debug, Parser)]
#[command(name = "emq-send", version)]
pub struct Args {
    /// Router frontend (default: frontend_addr from settings).
    #[arg(long)]
    pub addr: Option<String>,
    /// Settings file for the default address.
    #[arg(long, short = 'C')]
    pub config: Option<PathBuf>,
    /// The router's CURVE public key file (with --curve-key: encrypted,
    /// authenticated by this client's key).
    #[arg(long, value_name = "FILE")]
    pub curve_server_key: Option<PathBuf>,
    /// This client's CURVE secret key file (`emq keygen`; NAME.pub beside it).
    #[arg(long, value_name = "FILE")]
    pub curve_key: Option<PathBuf>,
    #[arg(long, short = 'q', default_value = "default")]
    pub queue: String,
    /// Wait for the result and print it (asks for reply-requested).
    #[arg(long)]
    pub wait: bool,
    /// A failed job as JSON on stdout (error type, message, traceback), as
    /// a successful one is; without it the failure is written for people
    /// on stderr, traceback and all.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds (exit 3); 0 up to ten years.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = flags::seconds)]
    pub deadline: Option<Duration>,
    /// Job timeout in whole seconds (timeout:N header).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, value_parser = flags::timeout_secs)]
    pub timeout: Option<u64>,
    /// Retries allowed (retry-count:N header).
    #[arg(long, allow_negative_numbers = true, value_parser = flags::retries)]
    pub retry: Option<u32>,
    /// Requeue the job if its job manager is lost.
    #[arg(long)]
    pub guarantee: bool,
    /// Run no sooner than this long from now (30s, 5m, 1h30m, or seconds):
    /// the router keeps the job and queues it when due.
    #[arg(long, value_name = "DURATION", value_parser = flags::duration)]
    pub delay: Option<Duration>,
    /// Run no sooner than this time (RFC 3339, e.g. 2026-12-01T10:00:00Z,
    /// or unix seconds).
    #[arg(long, value_name = "TIME", value_parser = flags::time)]
    pub at: Option<std::time::SystemTime>,
    /// Schedule the job instead: every DURATION (EventMQ's interval_secs,
    /// whole seconds).
    #[arg(long, value_name = "DURATION", value_parser = flags::duration, conflicts_with_all = ["cron", "count", "delay", "at"])]
    pub every: Option<Duration>,
    /// Schedule the job at each match of a cron expression (5 fields, or 6
    /// with the seconds last, as EventMQ reads them).
    #[arg(long, value_name = "EXPR", conflicts_with_all = ["count", "delay", "at"])]
    pub cron: Option<String>,
    /// With --cron: the IANA time zone it is read in (default UTC).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
    /// With --every/--cron: stop after N runs.
    #[arg(long, value_name = "N", value_parser = flags::job_count)]
    pub run_count: Option<u64>,
    /// With --every/--cron: do not run at once.
    #[arg(long)]
    pub nohaste: bool,
    /// With --every/--cron: skip a run while the previous one is unfinished.
    #[arg(long)]
    pub no_overlap: bool,
    /// With --every/--cron: runs missed while the router was down: skip,
    /// once or all (default: the router's setting).
    #[arg(long, value_parser = ["skip", "once", "all"])]
    pub misfire: Option<String>,
    /// Remove the schedule of this callable and these arguments.
    #[arg(long, conflicts_with_all = ["every", "cron", "count", "wait"])]
    pub unschedule: bool,
    /// JSON list of constructor args for pkg.mod:Class.method.
    #[arg(long = "class-args")]
    pub class_args: Option<String>,
    /// JSON object of constructor kwargs for pkg.mod:Class.method.
    #[arg(long = "class-kwargs")]
    pub class_kwargs: Option<String>,
    /// Send N copies and report sent / succeeded / failed and the rate.
    #[arg(long, default_value = "1", allow_negative_numbers = true, value_parser = flags::job_count)]
    pub count: u64,
    /// With --count: most jobs outstanding at once (1 to 1000000).
    #[arg(long, default_value = "1000", allow_negative_numbers = true, value_parser = flags::window)]
    pub window: usize,
    /// `unique:KEY`: while a job with this key in this queue is not final,
    /// the router answers with that job (its msgid is printed) instead of
    /// making a new one.
    #[arg(long, value_name = "KEY")]
    pub unique: Option<String>,
    /// Run once this job (msgid) is done; repeat or comma-separate for
    /// several. If one fails for good the job is cancelled.
    #[arg(long = "depends-on", value_name = "MSGID", value_delimiter = ',')]
    pub depends_on: Vec<String>,
    /// `limit:NAME[/PARTITION]`: the router starts the job only within that
    /// limit (its concurrency / rate, per partition); a name the router
    /// does not know is refused.
    #[arg(long, value_name = "NAME[/PARTITION]", value_parser = flags::limit)]
    pub limit: Option<String>,
    /// `requires:LABEL;...`: only a job manager with all these labels
    /// (`--labels`) receives the job (`--requires gpu,eu`).
    #[arg(long, value_name = "LABEL", value_delimiter = ',')]
    pub requires: Vec<String>,
    /// `on:NAME`: only the job manager named NAME (`--name`) receives it.
    #[arg(long, value_name = "NAME")]
    pub on: Option<String>,
    /// With --depends-on: run even when a dependency failed.
    #[arg(long, value_parser = ["cancel", "run"], default_value = "cancel")]
    pub on_dependency_failure: String,
    /// Submit a workflow instead: a canvas as JSON from FILE (`-`: stdin),
    /// e.g. {"chain": [{"sig": {"fn": "m.f", "args": [1]}}, {"sig": {"fn":
    /// "m.g"}}]} (see docs/workflows.md). Prints the workflow id, or with
    /// --wait its result.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["every", "cron", "unschedule", "depends_on", "unique"])]
    pub workflow: Option<PathBuf>,
    /// Run a command instead of a callable: the words after `--` are the
    /// program and its arguments, run as they are (no shell) by a job
    /// manager whose `allowed_commands` allows it. Its result is
    /// {"exit_code", "stdout", "stderr", "stdout_cut", "stderr_cut"}; a
    /// non-zero exit is a failure. `emq-send --exec --wait -- /bin/echo hi`
    #[arg(long, conflicts_with_all = ["every", "cron", "unschedule", "workflow", "class_args", "class_kwargs"])]
    pub exec: bool,
    /// With --exec: a variable for the command (KEY=VALUE, repeatable),
    /// over the job manager's safe base (PATH).
    #[arg(long = "env", value_name = "KEY=VALUE", requires = "exec")]
    pub env: Vec<String>,
    /// With --exec: the absolute directory the command runs in.
    #[arg(long, value_name = "DIR", requires = "exec")]
    pub cwd: Option<String>,
    /// With --exec: a file whose text is the command's standard input
    /// (`-`: this program's standard input).
    #[arg(long = "stdin-file", value_name = "FILE", requires = "exec")]
    pub stdin_file: Option<PathBuf>,
    /// pkg.mod.func or pkg.mod:Class.method (with --exec: the program)
    #[arg(required_unless_present = "workflow")]
    pub callable: Option<String>,
    /// Positional ARGs and KEY=VALUE kwargs; each value is JSON when it
    /// parses as JSON, else a string.
    /// (Options may come anywhere before `--`; after it everything is a
    /// job argument, `--wait` included.)
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<String>,
}

/// `2` → 2, `hello` → "hello", `'"2"'` → "2".
pub fn parse_value(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

/// Splits CLI arguments into positional args and `KEY=VALUE` kwargs (KEY a
/// Python identifier).
pub fn split_args(raw: &[String]) -> (Vec<Value>, Map<String, Value>) {
    let mut args = Vec::new();
    let mut kwargs = Map::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) if is_identifier(k) => {
                kwargs.insert(k.to_owned(), parse_value(v));
            }
            _ => args.push(parse_value(a)),
        }
    }
    (args, kwargs)
}

fn is_identifier(k: &str) -> bool {
    let mut c = k.chars();
    matches!(c.next(), Some(ch) if ch.is_alphabetic() || ch == '_') && c.all(|ch| ch.is_alphanumeric() || ch == '_')
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct FrontendSetting {
    frontend_addr: Option<String>,
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("emq-send: {msg}");
    ExitCode::from(2)
}

/// The `emq-send` binary.
pub fn main() -> ExitCode {
    let a = match flags::parse::<Args>("emq-send") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (key, addr) = match &a.addr {
        Some(x) => ("--addr", x.clone()),
        None => match emq_settings::load::<FrontendSetting>(a.config.as_deref()) {
            Ok(s) => ("frontend_addr", s.frontend_addr.unwrap_or_else(|| "tcp://127.0.0.1:47291".into())),
            Err(e) => return usage(e),
        },
    };
    if let Err(e) = flags::endpoint(key, &addr) {
        return usage(e);
    }
    let canvas = match &a.workflow {
        None => None,
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
            } else {
                std::fs::read_to_string(path)
            };
            let parsed = text
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|t| {
                    serde_json::from_str::<Value>(&t).map_err(|e| format!("{}: not JSON: {e}", path.display()))
                })
                .and_then(|v| crate::workflow::Canvas::from_json(&v));
            match parsed {
                Ok(c) => Some(c),
                Err(e) => return usage(e),
            }
        }
    };
    let command = if a.exec {
        match command_of(&a) {
            Ok(c) => Some(c),
            Err(e) => return usage(e),
        }
    } else {
        None
    };
    let callable =
        if a.exec { "emq.command".into() } else { a.callable.clone().unwrap_or_else(|| "emq.workflow".into()) };
    let mut job = match job_for(&callable) {
        Ok(j) => j,
        Err(e) => return usage(e),
    };
    if !a.exec {
        let (args, kwargs) = split_args(&a.args);
        job.args = args;
        job.kwargs = kwargs;
    }
    if let Some(ca) = &a.class_args {
        match serde_json::from_str::<Value>(ca) {
            Ok(Value::Array(v)) => job.class_args = v,
            _ => return usage("--class-args must be a JSON list"),
        }
    }
    if let Some(ck) = &a.class_kwargs {
        match serde_json::from_str::<Value>(ck) {
            Ok(Value::Object(m)) => job.class_kwargs = m,
            _ => return usage("--class-kwargs must be a JSON object"),
        }
    }
    let options = Options {
        reply_requested: a.wait,
        guarantee: a.guarantee,
        retry_count: a.retry,
        timeout: a.timeout,
        delay: a.delay,
        at: a.at,
        unique: a.unique.clone(),
        depends_on: a.depends_on.iter().map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).collect(),
        run_on_dependency_failure: a.on_dependency_failure == "run",
        limit: a.limit.clone(),
        requires: a.requires.iter().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect(),
        on: a.on.clone(),
    };
    let keys = match flags::curve_keys(a.curve_server_key.as_deref(), a.curve_key.as_deref()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("emq-send: {e}");
            return ExitCode::from(2);
        }
    };
    // A wrong address is said at once, before anything is sent (exit 2).
    // Several addresses (a leader and its standbys) may all refuse for a
    // few seconds during a failover: then only once none answered for a
    // while (the job manager's rule).
    let several = addr.split(',').filter(|x| !x.trim().is_empty()).count() > 1;
    let refused_for = if several { Duration::from_secs(10) } else { Duration::ZERO };
    let checking_since = Instant::now();
    loop {
        match emq_sender::refuses_connections(&addr) {
            Ok(()) => break,
            Err(why) if checking_since.elapsed() >= refused_for => {
                eprintln!("emq-send: {why}");
                return ExitCode::from(2);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let connected = match &keys {
        Some(k) => Client::connect_curve(&addr, k),
        None => Client::connect(&addr),
    };
    let mut client = match connected {
        Ok(c) => c,
        Err(e) => return usage(format!("cannot connect to {addr}: {e}")),
    };
    // A router that stops answering while we wait is said once (and its
    // return), not waited on in silence.
    let notice_addr = addr.clone();
    client.on_router_notice(move |n| eprintln!("emq-send: router at {notice_addr}: {n}"));
    let start = Instant::now();
    // At most ten years (checked by the flag's parser): cannot overflow.
    let deadline = a.deadline.map(|d| start + d);
    if let Some(canvas) = &canvas {
        return send_workflow(&mut client, &addr, canvas, a.wait, a.json, deadline);
    }
    if a.every.is_some() || a.cron.is_some() || a.unschedule {
        return schedule(&mut client, &a, &job, deadline);
    }
    let what = match &command {
        Some(c) => What::Command(c),
        None => What::Call(&job),
    };
    if a.count == 1 {
        send_one(&mut client, &addr, &a.queue, what, &options, a.wait, a.json, deadline)
    } else {
        send_many(&mut client, &a, what, &options, deadline)
    }
}

/// What a REQUEST runs: a callable or a command (`--exec`).
#[derive(Clone, Copy)]
enum What<'a> {
    Call(&'a crate::Job),
    Command(&'a emq_protocol::CommandPayload),
}

impl What<'_> {
    fn send_until(
        self,
        client: &mut Client,
        queue: &str,
        options: &Options,
        until: Instant,
    ) -> Result<String, ClientError> {
        match self {
            What::Call(job) => client.send_request_until(queue, job, options, until),
            What::Command(c) => client.send_command_until(queue, c, options, until),
        }
    }
}

/// `--exec -- PROGRAM ARGS...` with `--env`, `--cwd`, `--stdin-file`.
fn command_of(a: &Args) -> Result<emq_protocol::CommandPayload, String> {
    let Some(program) = &a.callable else { return Err("--exec needs a program after --".into()) };
    let mut argv = vec![program.clone()];
    argv.extend(a.args.iter().cloned());
    let mut c = emq_protocol::CommandPayload::new(argv);
    for kv in &a.env {
        let Some((k, v)) = kv.split_once('=') else { return Err(format!("--env {kv:?}: expected KEY=VALUE")) };
        c.env.insert(k.to_owned(), v.to_owned());
    }
    c.cwd = a.cwd.clone();
    if let Some(path) = &a.stdin_file {
        let mut text = String::new();
        let read = if path.as_os_str() == "-" {
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        } else {
            std::fs::File::open(path).and_then(|mut f| std::io::Read::read_to_string(&mut f, &mut text))
        };
        read.map_err(|e| format!("--stdin-file {}: {e}", path.display()))?;
        c.stdin = Some(text);
    }
    c.validate()?;
    Ok(c)
}

/// `--every` / `--cron` / `--unschedule`: prints the schedule id.
fn schedule(client: &mut Client, a: &Args, job: &crate::Job, deadline: Option<Instant>) -> ExitCode {
    let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(10));
    let done = if a.unschedule {
        client.unschedule(&a.queue, job, deadline)
    } else {
        let mut spec = match (&a.every, &a.cron) {
            (Some(d), _) => ScheduleSpec::every(d.as_secs().max(1)),
            (None, Some(c)) => ScheduleSpec::cron(c),
            (None, None) => unreachable!("checked by the caller"),
        };
        spec.guarantee = true;
        spec.tz = a.tz.clone();
        spec.run_count = a.run_count;
        spec.nohaste = a.nohaste;
        spec.no_overlap = a.no_overlap;
        spec.misfire = a.misfire.as_deref().and_then(emq_protocol::Misfire::parse);
        spec.timeout = a.timeout;
        spec.retry_count = a.retry;
        client.schedule(&a.queue, job, &spec, deadline)
    };
    match done {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(ClientError::Refused(why)) => {
            eprintln!("emq-send: {why}");
            ExitCode::from(1)
        }
        Err(e) => usage(e),
    }
}

#[allow(clippy::too_many_arguments)]
fn send_one(
    client: &mut Client,
    addr: &str,
    queue: &str,
    what: What<'_>,
    options: &Options,
    wait: bool,
    json: bool,
    deadline: Option<Instant>,
) -> ExitCode {
    // With several addresses (a leader and standbys) during a failover no
    // router may be up for a few seconds: keep trying, within the deadline.
    let send_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
    let msgid = match what.send_until(client, queue, options, send_until) {
        Ok(id) => id,
        Err(e) => return usage(e),
    };
    // The receipt proves the router is there; without one it is a
    // connection problem, unless the user's own deadline ran out first.
    let receipt_limit = Instant::now() + Duration::from_secs(10);
    let receipt_deadline = deadline.map_or(receipt_limit, |d| d.min(receipt_limit));
    let mut msgid = msgid;
    match client.wait_receipt(&msgid, receipt_deadline) {
        Ok(Receipt::Accepted) => {}
        Ok(Receipt::Deduplicated(holder)) => {
            eprintln!("emq-send: deduplicated: job {holder} holds this unique key; no new job");
            msgid = holder;
            client.expect(&msgid);
        }
        Ok(Receipt::Refused(e)) => {
            report_failure(&JobOutcome::Refused(e), json);
            return ExitCode::from(1);
        }
        Err(ClientError::Deadline) if deadline.is_some_and(|d| Instant::now() >= d) => {
            eprintln!("emq-send: deadline passed before the router's receipt for {msgid}");
            return ExitCode::from(3);
        }
        Err(ClientError::Deadline) => {
            return usage(format!("no receipt from the router at {addr} within 10 s; is it running?"))
        }
        Err(e) => return usage(format!("no receipt from the router at {addr}: {e}")),
    }
    print_outcome(client, &msgid, wait, json, deadline)
}

/// Prints the msgid, or with `wait` the job's (or workflow's) result:
/// exit 0 on a value, 1 on a failure, 3 past the deadline.
fn print_outcome(client: &mut Client, msgid: &str, wait: bool, json: bool, deadline: Option<Instant>) -> ExitCode {
    if !wait {
        println!("{msgid}");
        return ExitCode::SUCCESS;
    }
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    match client.wait(msgid, deadline.unwrap_or(far)) {
        JobOutcome::NoReply => {
            eprintln!("emq-send: no result for {msgid} before the deadline");
            ExitCode::from(3)
        }
        o if o.is_success() => {
            println!("{}", o.to_json().expect("an outcome with JSON"));
            ExitCode::SUCCESS
        }
        o => {
            report_failure(&o, json);
            ExitCode::from(1)
        }
    }
}

/// `--workflow`: submits the canvas; prints its id, or with `--wait` its
/// result (exit codes as for a job).
fn send_workflow(
    client: &mut Client,
    addr: &str,
    canvas: &crate::workflow::Canvas,
    wait: bool,
    json: bool,
    deadline: Option<Instant>,
) -> ExitCode {
    let send_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
    let id = match client.submit_canvas_until(canvas, send_until) {
        Ok(id) => id,
        Err(e) => return usage(e),
    };
    let receipt_deadline = Instant::now() + Duration::from_secs(10);
    match client.wait_receipt(&id, deadline.map_or(receipt_deadline, |d| d.min(receipt_deadline))) {
        Ok(Receipt::Accepted) | Ok(Receipt::Deduplicated(_)) => {}
        Ok(Receipt::Refused(e)) => {
            report_failure(&JobOutcome::Refused(e), json);
            return ExitCode::from(1);
        }
        Err(e) => {
            return usage(format!(
                "no receipt from the router at {addr} for the workflow: {e} (EventMQ's router does not take workflows)"
            ))
        }
    }
    print_outcome(client, &id, wait, json, deadline)
}

/// A failed (or refused) job: its JSON on stdout with `--json`, else for
/// people on stderr — `emq-send: job failed: TYPE: MESSAGE`, then the
/// traceback as Python printed it (real lines, not `\n` escapes).
fn report_failure(o: &JobOutcome, json: bool) {
    let v = o.to_json().unwrap_or(Value::Null);
    if json {
        println!("{v}");
        return;
    }
    eprintln!("{}", failure_text(&v));
}

fn failure_text(v: &Value) -> String {
    let e = &v["error"];
    let kind = e["type"].as_str().unwrap_or("error");
    let message = e["message"].as_str().unwrap_or("");
    let mut text = format!("emq-send: job failed: {kind}: {message}");
    if let Some(tb) = e["traceback"].as_str().filter(|t| !t.trim().is_empty()) {
        text.push('\n');
        text.push_str(tb.trim_end());
    }
    text
}

fn send_many(client: &mut Client, a: &Args, what: What<'_>, options: &Options, deadline: Option<Instant>) -> ExitCode {
    let start = Instant::now();
    let (mut sent, mut ok, mut failed) = (0u64, 0u64, 0u64);
    let mut outstanding = 0usize;
    let mut first_error: Option<Value> = None;
    let mut deadline_passed = false;
    while sent < a.count || outstanding > 0 {
        while outstanding < a.window && sent < a.count {
            let send_until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(30));
            if let Err(e) = what.send_until(client, &a.queue, options, send_until) {
                return usage(e);
            }
            sent += 1;
            outstanding += 1;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            deadline_passed = true;
            break;
        }
        let slice = Instant::now() + Duration::from_millis(200);
        let slice = deadline.map_or(slice, |d| d.min(slice));
        if a.wait {
            if let Some((_, o)) = client.wait_any(slice) {
                outstanding -= 1;
                if o.is_success() {
                    ok += 1;
                } else {
                    failed += 1;
                    first_error.get_or_insert_with(|| o.to_json().unwrap_or(Value::Null));
                }
                // Collect everything else already here without waiting.
                while let Some((_, o)) = client.wait_any(Instant::now()) {
                    outstanding -= 1;
                    if o.is_success() {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
        } else {
            let _ = client.pump(slice.saturating_duration_since(Instant::now()).as_millis().max(1) as i64);
            for (_, r) in client.drain_receipts() {
                outstanding = outstanding.saturating_sub(1);
                match r {
                    Receipt::Accepted | Receipt::Deduplicated(_) => ok += 1,
                    Receipt::Refused(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| JobOutcome::Refused(e).to_json().unwrap_or(Value::Null));
                    }
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "sent": sent,
        "succeeded": ok,
        "failed": failed,
        "no_reply": outstanding,
        "counted": if a.wait { "results" } else { "receipts" },
        "secs": secs,
        "jobs_per_sec": (ok + failed) as f64 / secs.max(1e-9),
        "first_error": first_error,
    });
    println!("{summary}");
    if deadline_passed && outstanding > 0 {
        ExitCode::from(3)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failure_reads_as_python_printed_it() {
        let v = json!({"value": null, "error": {"type": "ValueError", "message": "bad",
            "traceback": "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad\n"}});
        let t = failure_text(&v);
        assert_eq!(t.lines().next(), Some("emq-send: job failed: ValueError: bad"));
        assert_eq!(t.lines().nth(2), Some("  File \"x.py\", line 1"), "{t}");
        assert!(!t.contains("\\n"), "no escapes: {t}");
    }

    #[test]
    fn args_are_json_when_they_parse() {
        let raw: Vec<String> =
            ["2", "hello", "\"2\"", "[1,2]", "n=3", "name=bob", "a-b=c", "=x"].iter().map(|s| s.to_string()).collect();
        let (args, kwargs) = split_args(&raw);
        assert_eq!(args, vec![json!(2), json!("hello"), json!("2"), json!([1, 2]), json!("a-b=c"), json!("=x")]);
        assert_eq!(kwargs["n"], json!(3));
        assert_eq!(kwargs["name"], json!("bob"));
    }
}
