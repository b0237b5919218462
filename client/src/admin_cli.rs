//! `emq-cli`: the admin tool. Talks to the router's administrative socket
//! (ours or EventMQ's: same frames) and prints readable tables, or raw JSON
//! with `--json`. A router that does not answer within `--deadline` is a
//! clear error, exit code 2.

use crate::admin::AdminClient;
use clap::{Parser, Subcommand};
use emq_protocol::{AdminCommand, Command, Reply};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Administer an emq (or EventMQ) router.
#[derive(Debug, Parser)]
#[command(name = "emq-cli", version)]
pub struct Args {
    /// Router admin address (default: administrative_addr from settings).
    #[arg(long, short = 'a', global = true)]
    pub addr: Option<String>,
    /// Settings file (TOML) to read administrative_addr and data_dir from.
    /// Default: ./settings.toml when present.
    #[arg(long, short = 'C', global = true)]
    pub config: Option<PathBuf>,
    /// Seconds to wait for the router's answer (0 up to ten years).
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "5",
        global = true,
        allow_negative_numbers = true,
        value_parser = crate::flags::seconds
    )]
    pub deadline: Duration,
    /// Print the router's raw JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// The router's admin token file, needed for commands that change
    /// something (and to read job results). Default: `admin.token` in the
    /// router's `data_dir` (from the same settings sources).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// The router's `data_dir` (its admin token, its HTTP client tokens).
    /// Default: the directory of --token-file, else `data_dir` from the
    /// settings, else the router's default.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The router's CURVE public key file (with --curve-key).
    #[arg(long, global = true, value_name = "FILE")]
    pub curve_server_key: Option<PathBuf>,
    /// This client's CURVE secret key file (NAME.pub beside it); an admin
    /// key (`admin_users`) may change things without the token.
    #[arg(long, global = true, value_name = "FILE")]
    pub curve_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Queues: waiting, in flight, processed.
    Status,
    /// Connected job managers.
    Workers,
    /// Connected schedulers.
    Schedulers,
    /// Stop the router (DISCONNECT).
    Shutdown,
    /// One job's record: state, job manager, timestamps, attempts, result.
    Job { msgid: String },
    /// A workflow's graph: every node with its state, parents and error
    /// handlers (ID: the workflow id, or any node's msgid).
    Workflow { id: String },
    /// Limits per key: each limit's concurrency and rate, jobs running and
    /// waiting, and its busiest partitions (running, waiting, rate used).
    Limits,
    /// Jobs that used up their retries.
    Dead,
    /// Run a dead letter again.
    Requeue { msgid: String },
    /// The router's schedules: callable, queue, interval or cron, time
    /// zone, next and last run, last outcome, runs so far.
    Schedules,
    /// Remove a schedule by its id (from `schedules`).
    Unschedule { id: String },
    /// Cancel a job (buffered, delayed, retrying: removed; running: its
    /// worker is stopped) or a schedule (by its id).
    Cancel { msgid: String },
    /// Remove every buffered job of a queue (prints the count).
    Purge { queue: String },
    /// Stop handing out a queue's jobs (still accepted and kept).
    Pause { queue: String },
    /// Hand out a paused queue's jobs again.
    Resume { queue: String },
    /// Jobs waiting for their delay / eta, the soonest first.
    Delayed {
        /// Show at most this many (the total is printed too).
        #[arg(long, default_value = "100")]
        limit: u32,
    },
    /// The admin token (kept across router restarts) and the HTTP API's
    /// client tokens (create, list, revoke: in the router's data_dir, with
    /// no router needed).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make a new admin token: the old one stops working at once; the
    /// router writes the new one to its token file (emq-cli reads it).
    Rotate,
    /// Make a client token for the HTTP API: printed once (only its hash is
    /// kept, in the router's data_dir).
    Create {
        /// Its name: 1 to 64 characters of A-Z a-z 0-9 _ . -
        name: String,
    },
    /// The client tokens: names and when they were made.
    List,
    /// End a client token (the router notices within a second).
    Revoke {
        /// Its name (from `token list`).
        name: String,
    },
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct AdminSetting {
    administrative_addr: Option<String>,
    data_dir: Option<String>,
}

/// The `emq-cli` binary.
pub fn main() -> ExitCode {
    let a = match crate::flags::parse::<Args>("emq-cli") {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emq-cli: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The router's `data_dir` from --data-dir, else the settings' `data_dir`,
/// else the router's default (none without a home directory).
fn settings_data_dir(a: &Args) -> anyhow::Result<Option<PathBuf>> {
    if let Some(d) = &a.data_dir {
        return Ok(Some(d.clone()));
    }
    Ok(emq_settings::load::<AdminSetting>(a.config.as_deref())?
        .data_dir
        .filter(|d| !d.trim().is_empty())
        .map(PathBuf::from)
        .or_else(emq_settings::default_data_dir))
}

/// Proves to the router that this connection holds its admin token.
/// Without a token file, changes are refused by the router (and job
/// results hidden), which says so.
fn authenticate(a: &Args, client: &AdminClient) -> anyhow::Result<()> {
    let path = match &a.token_file {
        Some(p) => p.clone(),
        None => match settings_data_dir(a)? {
            Some(d) => d.join(emq_settings::ADMIN_TOKEN_FILE),
            None => return Ok(()),
        },
    };
    let Ok(token) = std::fs::read_to_string(&path) else {
        if a.token_file.is_some() {
            anyhow::bail!("cannot read the admin token file {}", path.display());
        }
        return Ok(());
    };
    let answer =
        client.request(Command::Admin(AdminCommand::Authenticate { token: token.trim().to_owned() }), a.deadline)?;
    match answer.command {
        Command::Reply(Reply::Single { body }) if body.contains("\"authenticated\":true") => {}
        // Not fatal: a stale file from another router; what needs the
        // token will be refused by the router, which says so.
        _ => eprintln!("emq-cli: the router refused the admin token in {}", path.display()),
    }
    Ok(())
}

/// Where the client tokens are: --data-dir, else the directory of
/// --token-file, else as [`settings_data_dir`].
fn tokens_dir(a: &Args) -> anyhow::Result<PathBuf> {
    if a.data_dir.is_none() {
        if let Some(parent) = a.token_file.as_deref().and_then(std::path::Path::parent) {
            return Ok(if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() });
        }
    }
    settings_data_dir(a)?.ok_or_else(|| anyhow::anyhow!("no data_dir (no HOME nor XDG_STATE_HOME): pass --data-dir"))
}

/// `token create|list|revoke`: the client tokens in `dir`, with no router.
/// `out` gets the token (create), the table or JSON (list); `err` the
/// notes. (Rotate is the router's: not here.)
fn client_tokens(
    dir: &std::path::Path,
    action: &TokenAction,
    json: bool,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let file = dir.join(crate::tokens::TOKENS_FILE);
    match action {
        TokenAction::Rotate => anyhow::bail!("`token rotate` is done by the router"),
        TokenAction::Create { name } => {
            let token = crate::tokens::create(dir, name)?;
            writeln!(out, "{token}")?;
            writeln!(
                err,
                "emq-cli: client token {name:?} created (only its hash is kept, in {}): it is shown only this once",
                file.display()
            )?;
        }
        TokenAction::List => {
            let tokens = crate::tokens::load(dir)?;
            if json {
                let list: Vec<Value> =
                    tokens.iter().map(|t| serde_json::json!({"name": t.name, "created": t.created})).collect();
                writeln!(out, "{}", Value::Array(list))?;
            } else if tokens.is_empty() {
                writeln!(out, "no client tokens in {} (make one with `emq-cli token create NAME`)", file.display())?;
            } else {
                let now = now_unix();
                let rows: Vec<Vec<String>> =
                    tokens.iter().map(|t| vec![t.name.clone(), when(t.created, now)]).collect();
                write!(out, "{}", table(&["name", "created"], &rows))?;
            }
        }
        TokenAction::Revoke { name } => {
            if !crate::tokens::revoke(dir, name)? {
                anyhow::bail!("no client token named {name:?} in {}", file.display());
            }
            writeln!(out, "revoked client token {name:?}")?;
        }
    }
    Ok(())
}

fn run(a: &Args) -> anyhow::Result<()> {
    // Client tokens live in the router's data_dir: no router needed.
    if let Cmd::Token {
        action: action @ (TokenAction::Create { .. } | TokenAction::List | TokenAction::Revoke { .. }),
    } = &a.command
    {
        let dir = tokens_dir(a)?;
        client_tokens(&dir, action, a.json, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())?;
        return Ok(());
    }
    let (key, addr) = match &a.addr {
        Some(x) => ("--addr", x.clone()),
        None => (
            "administrative_addr",
            emq_settings::load::<AdminSetting>(a.config.as_deref())?
                .administrative_addr
                .unwrap_or_else(|| "tcp://127.0.0.1:47293".into()),
        ),
    };
    crate::flags::endpoint(key, &addr)?;
    let keys = crate::flags::curve_keys(a.curve_server_key.as_deref(), a.curve_key.as_deref())?;
    let client = AdminClient::connect_with(&addr, keys.as_ref())?;
    if matches!(
        a.command,
        Cmd::Shutdown
            | Cmd::Requeue { .. }
            | Cmd::Job { .. }
            | Cmd::Workflow { .. }
            | Cmd::Unschedule { .. }
            | Cmd::Cancel { .. }
            | Cmd::Purge { .. }
            | Cmd::Pause { .. }
            | Cmd::Resume { .. }
            | Cmd::Token { .. }
    ) {
        authenticate(a, &client)?;
    }
    let command = match &a.command {
        Cmd::Status | Cmd::Limits => Command::Admin(AdminCommand::Status),
        Cmd::Workers => Command::Admin(AdminCommand::RouterShowWorkers),
        Cmd::Schedulers => Command::Admin(AdminCommand::RouterShowSchedulers),
        Cmd::Shutdown => Command::Disconnect,
        Cmd::Job { msgid } => Command::Admin(AdminCommand::JobStatus { job_msgid: msgid.clone(), owner_token: None }),
        Cmd::Workflow { id } => Command::Admin(AdminCommand::JobStatus { job_msgid: id.clone(), owner_token: None }),
        Cmd::Dead => Command::Admin(AdminCommand::DeadLetters),
        Cmd::Requeue { msgid } => Command::Admin(AdminCommand::Requeue { job_msgid: msgid.clone() }),
        Cmd::Schedules => Command::Admin(AdminCommand::Schedules),
        Cmd::Cancel { msgid } => Command::Admin(AdminCommand::Cancel { job_msgid: msgid.clone() }),
        Cmd::Purge { queue } => Command::Admin(AdminCommand::Purge { queue: queue.clone() }),
        Cmd::Pause { queue } => Command::Admin(AdminCommand::Pause { queue: queue.clone() }),
        Cmd::Resume { queue } => Command::Admin(AdminCommand::Resume { queue: queue.clone() }),
        Cmd::Unschedule { id } => Command::Admin(AdminCommand::RemoveSchedule { schedule_id: id.clone() }),
        Cmd::Delayed { limit } => Command::Admin(AdminCommand::Delayed { limit: (*limit).max(1) }),
        Cmd::Token { action: TokenAction::Rotate } => Command::Admin(AdminCommand::RotateToken),
        Cmd::Token { .. } => unreachable!("client tokens are handled before connecting"),
    };
    let answer = client.request(command, a.deadline)?;
    let body = match answer.command {
        Command::Ack(_) => {
            println!("{}", if a.json { r#"{"ack": true}"# } else { "router acknowledged shutdown" });
            return Ok(());
        }
        Command::Reply(Reply::Single { body }) => body,
        Command::Reply(Reply::Result { reply_json, .. }) => reply_json,
        other => anyhow::bail!("unexpected answer {}", other.name()),
    };
    let mut v: Value =
        serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("router answered non-JSON {body:?}: {e}"))?;
    if let (Cmd::Workflow { .. }, Some(flow)) = (&a.command, v["workflow_id"].as_str().map(str::to_owned)) {
        // A node's msgid: show its workflow.
        let ask = Command::Admin(AdminCommand::JobStatus { job_msgid: flow, owner_token: None });
        if let Command::Reply(Reply::Single { body }) = client.request(ask, a.deadline)?.command {
            v = serde_json::from_str(&body).unwrap_or(v);
        }
    }
    if a.json {
        println!("{v}");
        return Ok(());
    }
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        anyhow::bail!("router: {e}");
    }
    match &a.command {
        Cmd::Status => print!("{}", render_status(&v)),
        Cmd::Limits => print!("{}", render_limits(&v)),
        Cmd::Workers => print!("{}", render_workers(&v)),
        Cmd::Schedulers => print!("{}", render_schedulers(&v)),
        Cmd::Job { .. } => print!("{}", render_job(&v)),
        Cmd::Workflow { id } => match v.get("workflow") {
            Some(_) => print!("{}", render_workflow(&v)),
            None => anyhow::bail!("{id} is not a workflow nor a node of one the router remembers"),
        },
        Cmd::Dead => print!("{}", render_dead(&v)),
        Cmd::Requeue { msgid } => println!("requeued {msgid}"),
        Cmd::Shutdown => println!("{v}"),
        Cmd::Schedules => print!("{}", render_schedules(&v, now_unix())),
        Cmd::Unschedule { id } => println!("removed schedule {}", v["removed"].as_str().unwrap_or(id)),
        Cmd::Cancel { msgid } => match v.get("cancelling") {
            Some(_) => println!("cancelling {msgid}: its worker is being stopped"),
            None => println!("cancelled {msgid} ({})", v["was"].as_str().unwrap_or("?")),
        },
        Cmd::Purge { queue } => println!("purged {} job(s) from {queue}", num(&v["purged"])),
        Cmd::Pause { queue } => println!("paused {queue} ({} job(s) waiting)", num(&v["waiting"])),
        Cmd::Resume { queue } => println!("resumed {queue}"),
        Cmd::Delayed { .. } => print!("{}", render_delayed(&v, now_unix())),
        Cmd::Token { .. } => {
            println!("admin token rotated: the old one no longer works; the router wrote the new one to its token file")
        }
    }
    Ok(())
}

/// Unix seconds as local wall-clock time with its age, for people:
/// `14:03:07, 3 s ago` (the date too when it is not today).
pub fn when(unix: f64, now: f64) -> String {
    let secs = unix as nix::libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which we own.
    let (tm, today) = unsafe {
        let mut tm: nix::libc::tm = std::mem::zeroed();
        let mut t2: nix::libc::tm = std::mem::zeroed();
        let n = now as nix::libc::time_t;
        nix::libc::localtime_r(&secs, &mut tm);
        nix::libc::localtime_r(&n, &mut t2);
        let today = tm.tm_year == t2.tm_year && tm.tm_yday == t2.tm_yday;
        (tm, today)
    };
    let clock = format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec);
    let clock =
        if today { clock } else { format!("{}-{:02}-{:02} {clock}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday) };
    let age = now - unix;
    let span = |a: f64| match a {
        a if a < 90.0 => format!("{a:.0} s"),
        a if a < 5400.0 => format!("{:.0} min", a / 60.0),
        a if a < 172_800.0 => format!("{:.0} h", a / 3600.0),
        a => format!("{:.0} days", a / 86_400.0),
    };
    let rel = if age < 0.0 { format!("in {}", span(-age)) } else { format!("{} ago", span(age)) };
    format!("{clock}, {rel}")
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "0".into(),
        Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    }
}

/// A plain text table with aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

/// A job's progress for people: `30 / 120 (25 %) "page 3" — 14:03:07, 2 s ago`.
pub fn progress_line(p: &Value, now: f64) -> String {
    let done = p["done"].as_f64().unwrap_or(0.0);
    let mut s = match p["total"].as_f64() {
        Some(t) if t > 0.0 => format!("{} / {} ({:.0} %)", fmt_num(done), fmt_num(t), 100.0 * done / t),
        _ => fmt_num(done),
    };
    if let Some(m) = p["message"].as_str() {
        s += &format!(" {m:?}");
    }
    if let Some(at) = p["at"].as_f64() {
        s += &format!(" — {}", when(at, now));
    }
    s
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.2}")
    }
}

/// `limits`: one row per limit, then its busiest partitions.
pub fn render_limits(v: &Value) -> String {
    let Some(limits) = v.get("limits").and_then(Value::as_object).filter(|l| !l.is_empty()) else {
        return "no limits configured (router setting `limits`)\n".into();
    };
    let mut rows = Vec::new();
    for (name, l) in limits {
        let opt = |k: &str| l[k].as_u64().map(|n| n.to_string()).or(l[k].as_str().map(str::to_owned));
        rows.push(vec![
            name.clone(),
            String::new(),
            opt("concurrency").unwrap_or_else(|| "-".into()),
            opt("rate").unwrap_or_else(|| "-".into()),
            num(&l["running"]),
            num(&l["waiting"]),
            String::new(),
        ]);
        let parts = l["partitions"].as_array().cloned().unwrap_or_default();
        let shown = parts.len();
        for p in parts {
            let part = p["partition"].as_str().unwrap_or("");
            rows.push(vec![
                String::new(),
                if part.is_empty() { "(all)".into() } else { part.to_owned() },
                String::new(),
                String::new(),
                num(&p["running"]),
                num(&p["waiting"]),
                num(&p["rate_used"]),
            ]);
        }
        let active = l["active_partitions"].as_u64().unwrap_or(0) as usize;
        if active > shown {
            rows.push(vec![
                String::new(),
                format!("… {} more", active - shown),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
        }
    }
    table(&["LIMIT", "PARTITION", "CONCURRENCY", "RATE", "RUNNING", "WAITING", "RATE USED"], &rows)
}

/// `status` as a table of queues.
pub fn render_status(v: &Value) -> String {
    let mut queues: Vec<String> = Vec::new();
    for k in ["waiting_messages_by_queue", "inflight_messages_by_queue", "processed_messages_by_queue"] {
        if let Some(m) = v[k].as_object() {
            queues.extend(m.keys().cloned());
        }
    }
    queues.sort();
    queues.dedup();
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            vec![
                q.clone(),
                num(&v["waiting_messages_by_queue"][q]),
                num(&v["inflight_messages_by_queue"][q]),
                num(&v["processed_messages_by_queue"][q]),
                num(&v["latency_messages_by_queue"][q]),
                num(&v["max_latency_messages_by_queue"][q]),
            ]
        })
        .collect();
    let mut out = table(&["queue", "waiting", "in flight", "processed", "avg latency", "max latency"], &rows);
    // Jobs that wait because no job manager allows them: say so.
    if let Some(m) = v["waiting_not_allowed"].as_object() {
        for (queue, w) in m {
            let list = |k: &str| -> String {
                w[k].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
            };
            if w.get("waiting").is_some() {
                out += &format!(
                    "\nqueue {queue}: {} job(s) wait: no job manager of it allows {} (allowed_paths)\n",
                    num(&w["waiting"]),
                    list("modules")
                );
            }
            if w.get("waiting_for_commands").is_some() {
                out += &format!(
                    "\nqueue {queue}: {} command job(s) wait for a job manager that runs commands (allowed_commands)\n",
                    num(&w["waiting_for_commands"])
                );
            }
            if w.get("waiting_for_labels").is_some() {
                out += &format!(
                    "\nqueue {queue}: {} job(s) wait for a job manager with {} (none connected has it)\n",
                    num(&w["waiting_for_labels"]),
                    list("wants")
                );
            }
        }
    }
    // Normal activity apart from anomalies: a retry is not an error.
    for key in ["activity", "errors"] {
        if let Some(e) = v[key].as_object().filter(|e| !e.is_empty()) {
            out += &format!("\n{key}: ");
            out += &e.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ");
            out += "\n";
        }
    }
    if v.get("connected_workers").is_some() {
        out += &format!(
            "job managers: {}  free slots: {}  accepted: {}  uptime: {} s\n",
            num(&v["connected_workers"]),
            num(&v["free_slots"]),
            num(&v["accepted"]),
            num(&v["uptime_secs"])
        );
    }
    // A shared journal: who leads, under which epoch, and the other routers.
    if let Some(ha) = v.get("ha").filter(|h| h.is_object()) {
        out += &format!(
            "role: {}  epoch: {}  lease expires in: {:.1} s  failovers: {}\n",
            ha["role"].as_str().unwrap_or("-"),
            num(&ha["epoch"]),
            ha["lease_expires_in"].as_f64().unwrap_or(0.0),
            num(&ha["failovers"])
        );
        for r in ha["routers"].as_array().into_iter().flatten() {
            out += &format!(
                "  router {} ({}): frontend {}  http {}  seen {:.1} s ago\n",
                r["holder"].as_str().unwrap_or("-"),
                r["role"].as_str().unwrap_or("-"),
                r["frontend_addr"].as_str().unwrap_or("-"),
                r["http_addr"].as_str().unwrap_or("-"),
                r["seen_secs_ago"].as_f64().unwrap_or(0.0)
            );
        }
    }
    out
}

/// A job manager as people know it: its name (`--name`, else host:pid),
/// else its connection identity (EventMQ's, which sends no name).
fn display(id: &str, w: &Value) -> String {
    w["name"].as_str().map(str::to_owned).unwrap_or_else(|| id.to_owned())
}

/// `workers` as a table of job managers.
pub fn render_workers(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["connected_workers"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(id, w)| {
                    let queues = w["queues"]
                        .as_array()
                        .map(|qs| {
                            qs.iter()
                                .map(|q| format!("{}:{}", num(&q[0]), q[1].as_str().unwrap_or("?")))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    let since = if w.get("last_seen_secs_ago").is_some() {
                        format!("{:.1}", w["last_seen_secs_ago"].as_f64().unwrap_or(0.0))
                    } else {
                        format!("hb {}", num(&w["hb"])) // EventMQ: a monotonic clock value
                    };
                    let workers =
                        w["health"]["workers"].as_array().map(|a| a.len().to_string()).unwrap_or_else(|| "-".into());
                    vec![
                        display(id, w),
                        w["state"].as_str().unwrap_or("ok").to_owned(),
                        queues,
                        num(&w["available_slots"]),
                        since,
                        w.get("in_flight").map(num).unwrap_or_else(|| "-".into()),
                        w.get("processed").map(num).unwrap_or_else(|| "-".into()),
                        workers,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = table(
        &["job manager", "state", "queues", "free slots", "secs since heard", "in flight", "processed", "workers"],
        &rows,
    );
    // Per worker process, from the health its job manager sends on heartbeats.
    let mut detail: Vec<Vec<String>> = Vec::new();
    for (id, w) in v["connected_workers"].as_object().into_iter().flatten() {
        let h = &w["health"];
        let in_flight = h["in_flight"].as_array().cloned().unwrap_or_default();
        for wk in h["workers"].as_array().into_iter().flatten() {
            let job = in_flight
                .iter()
                .find(|j| j["pid"] == wk["pid"])
                .map(|j| {
                    format!("{} ({:.1} s)", j["msgid"].as_str().unwrap_or("?"), j["age_secs"].as_f64().unwrap_or(0.0))
                })
                .unwrap_or_default();
            let state = format!(
                "{}{}",
                wk["state"].as_str().unwrap_or("?"),
                if wk["spare"].as_bool().unwrap_or(false) { " (spare)" } else { "" }
            );
            detail.push(vec![
                display(id, w),
                num(&wk["pid"]),
                state,
                num(&wk["jobs"]),
                format!("{:.1}", wk["rss_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0),
                format!("{:.1}", wk["cpu_percent"].as_f64().unwrap_or(0.0)),
                job,
            ]);
        }
    }
    if !detail.is_empty() {
        out += "\n";
        out += &table(&["job manager", "pid", "state", "jobs", "RSS MB", "CPU %", "running"], &detail);
    }
    // Per callable (and per command: `command:/bin/echo`), summed over job
    // managers, as the dashboard shows them; percentiles: the worst one's.
    let mut calls: std::collections::BTreeMap<String, (u64, u64, f64, f64)> = Default::default();
    for w in v["connected_workers"].as_object().into_iter().flatten().map(|(_, w)| w) {
        for c in w["health"]["callables"].as_array().into_iter().flatten() {
            let e = calls.entry(c["name"].as_str().unwrap_or("?").to_owned()).or_default();
            e.0 += c["runs"].as_u64().unwrap_or(0);
            e.1 += c["failed"].as_u64().unwrap_or(0);
            e.2 = e.2.max(c["p50_ms"].as_f64().unwrap_or(0.0));
            e.3 = e.3.max(c["p99_ms"].as_f64().unwrap_or(0.0));
        }
    }
    if !calls.is_empty() {
        let mut rows: Vec<(String, (u64, u64, f64, f64))> = calls.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .take(50)
            .map(|(n, (runs, failed, p50, p99))| {
                vec![n, runs.to_string(), failed.to_string(), format!("{p50:.2}"), format!("{p99:.2}")]
            })
            .collect();
        out += "\n";
        out += &table(&["callable / command", "runs", "failed", "p50 ms", "p99 ms"], &rows);
    }
    out
}

pub fn render_schedulers(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["connected_schedulers"]
        .as_object()
        .map(|m| m.iter().map(|(id, s)| vec![id.clone(), num(&s["hb"])]).collect())
        .unwrap_or_default();
    table(&["scheduler", "hb"], &rows)
}

/// `emq-cli schedules`.
pub fn render_schedules(v: &Value, now: f64) -> String {
    let at = |t: &Value| t.as_f64().map(|t| when(t, now)).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = v["schedules"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let timing = match s["interval_secs"].as_u64() {
                        Some(n) => format!("every {n} s"),
                        None => format!("cron {}", s["cron"].as_str().unwrap_or("?")),
                    };
                    let runs = match s["runs_left"].as_u64() {
                        Some(left) => format!("{} ({left} left)", num(&s["runs"])),
                        None => num(&s["runs"]),
                    };
                    vec![
                        s["id"].as_str().unwrap_or("?").chars().take(12).collect(),
                        s["callable"].as_str().unwrap_or("?").to_owned(),
                        s["queue"].as_str().unwrap_or("?").to_owned(),
                        timing,
                        s["tz"].as_str().unwrap_or("UTC").to_owned(),
                        at(&s["next_run"]),
                        at(&s["last_run"]),
                        s["last_state"].as_str().unwrap_or("-").to_owned(),
                        runs,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out =
        table(&["id", "callable", "queue", "when", "tz", "next run", "last run", "last outcome", "runs"], &rows);
    let l = &v["lateness"];
    if l["samples"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "fire lateness over the last {} runs: p50 {} ms, p99 {} ms, max {} ms\n",
            l["samples"], l["p50_ms"], l["p99_ms"], l["max_ms"]
        ));
    }
    out
}

/// `emq-cli delayed`.
pub fn render_delayed(v: &Value, now: f64) -> String {
    let rows: Vec<Vec<String>> = v["delayed"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    vec![
                        d["msgid"].as_str().unwrap_or("?").to_owned(),
                        d["queue"].as_str().unwrap_or("?").to_owned(),
                        d["callable"].as_str().unwrap_or("?").to_owned(),
                        d["due"].as_f64().map(|t| when(t, now)).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = table(&["msgid", "queue", "callable", "due"], &rows);
    out.push_str(&format!("{} delayed job(s) in all\n", num(&v["total"])));
    out
}

pub fn render_dead(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["dead_letters"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    vec![
                        d["msgid"].as_str().unwrap_or("?").to_owned(),
                        d["queue"].as_str().unwrap_or("?").to_owned(),
                        call_line(&d["job"]),
                        num(&d["attempts"]),
                        d["at"].as_f64().map(|t| when(t, now_unix())).unwrap_or_else(|| "-".into()),
                        format!(
                            "{}: {}",
                            d["error"]["type"].as_str().unwrap_or("?"),
                            d["error"]["message"].as_str().unwrap_or("")
                        ),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["msgid", "queue", "job", "attempts", "dead since", "last error"], &rows)
}

/// `pkg.mod.func(1, "a", k=2)` from a job detail (`callable`, `args`,
/// `kwargs`), "-" when the router no longer holds it.
fn call_line(job: &Value) -> String {
    if let Some(argv) = job["command"].as_array() {
        // A command job: `$ /bin/echo 'a b'`.
        let words: Vec<String> = argv
            .iter()
            .map(|a| {
                let a = a.as_str().unwrap_or("?");
                if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c)) {
                    a.to_owned()
                } else {
                    format!("'{}'", a.replace('\'', "'\\''"))
                }
            })
            .collect();
        return format!("$ {}", words.join(" "));
    }
    if let Some(cut) = job["command"].as_str() {
        return format!("$ {cut}");
    }
    let Some(callable) = job["callable"].as_str() else { return "-".into() };
    let mut parts: Vec<String> = match &job["args"] {
        Value::Array(a) => a.iter().map(Value::to_string).collect(),
        Value::String(cut) => vec![cut.clone()],
        _ => Vec::new(),
    };
    match &job["kwargs"] {
        Value::Object(m) => parts.extend(m.iter().map(|(k, v)| format!("{k}={v}"))),
        Value::String(cut) => parts.push(cut.clone()),
        _ => {}
    }
    format!("{callable}({})", parts.join(", "))
}

/// `emq-cli workflow`: the workflow's state, then one line per node —
/// state, name, msgid — with its parents (by line number) and what an
/// error handler watches.
pub fn render_workflow(v: &Value) -> String {
    let mut out = String::new();
    let w = &v["workflow"];
    let nodes = w["nodes"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "workflow {}  {}  ({} nodes)\n",
        w["id"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        nodes.len()
    ));
    let index: std::collections::HashMap<&str, usize> =
        nodes.iter().enumerate().filter_map(|(i, n)| n["msgid"].as_str().map(|m| (m, i + 1))).collect();
    let refs = |key: &str, n: &Value| -> String {
        n[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str())
                    .map(|p| index.get(p).map_or(p.to_owned(), |i| format!("#{i}")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    for (i, n) in nodes.iter().enumerate() {
        let parents = refs("parents", n);
        let watches = refs("on_error_of", n);
        let mut line = format!(
            "#{:<3} {:<10} {:<30} {}",
            i + 1,
            n["state"].as_str().unwrap_or("?"),
            n["name"].as_str().unwrap_or("?"),
            n["msgid"].as_str().unwrap_or("?")
        );
        if !parents.is_empty() {
            line.push_str(&format!("  after {parents}"));
        }
        if !watches.is_empty() {
            line.push_str(&format!("  on error of {watches}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if let Some(e) = v["result"].get("error").filter(|e| e.is_object()) {
        out.push_str(&format!(
            "error: {}: {}\n",
            e["type"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        ));
    }
    out
}

pub fn render_job(v: &Value) -> String {
    let mut out = String::new();
    let now = now_unix();
    // The job manager by the name `emq-cli workers` shows.
    let mut v = v.clone();
    if let Some(name) = v.get("job_manager_name").cloned() {
        v["worker"] = name;
    }
    if v.get("job").is_some() {
        v["job"] = Value::String(call_line(&v["job"]));
    }
    let v = &v;
    for k in [
        "msgid",
        "state",
        "queue",
        "job",
        "headers",
        "user",
        "worker",
        "attempts",
        "received",
        "dispatched",
        "finished",
    ] {
        if (k == "job" || k == "headers") && v[k].is_null() {
            continue;
        }
        let val = match &v[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            Value::Number(n) if matches!(k, "received" | "dispatched" | "finished") => {
                when(n.as_f64().unwrap_or(0.0), now)
            }
            other => num(other),
        };
        out += &format!("{k:<11}{val}\n");
    }
    if let Some(p) = v.get("progress").filter(|p| p.is_object()) {
        out += &format!("{:<11}{}\n", "progress", progress_line(p, now));
    }
    if let Some(w) = v["workflow_id"].as_str() {
        out += &format!("{:<11}{w}\n", "workflow");
    }
    for k in ["parents", "children"] {
        if let Some(list) = v[k].as_array().filter(|l| !l.is_empty()) {
            let ids: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
            out += &format!("{k:<11}{}\n", ids.join(", "));
        }
    }
    if !v["result"].is_null() {
        out += &format!("{:<11}{}\n", "result", v["result"]);
    }
    for e in v["attempt_errors"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<11}#{} {}: {}\n",
            "failed",
            num(&e["attempt"]),
            e["type"].as_str().unwrap_or("?"),
            e["message"].as_str().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_jobs_read_as_a_command_line() {
        assert_eq!(
            call_line(&json!({"command": ["/bin/echo", "a b", "it's", "x=1"]})),
            "$ /bin/echo 'a b' 'it'\\''s' x=1"
        );
        assert_eq!(
            call_line(&json!({"command": "[\"/bin/echo\", \"aaa…", "args_cut": true})),
            "$ [\"/bin/echo\", \"aaa…"
        );
        assert_eq!(call_line(&json!({"callable": "m.f", "args": [1]})), "m.f(1)");
    }

    #[test]
    fn times_are_local_with_their_age() {
        let now = 1_800_000_000.0;
        let s = when(now - 3.0, now);
        assert!(s.ends_with(", 3 s ago") && s.len() == "14:03:07, 3 s ago".len(), "{s}");
        assert!(when(now - 600.0, now).ends_with("10 min ago"));
        assert!(when(now - 3.0 * 86_400.0, now).contains("3 days ago"));
        assert!(when(now + 180.0, now).ends_with("in 3 min"), "{}", when(now + 180.0, now));
        let sched = render_schedules(
            &json!({"schedules": [{"id": "e037b3207577f260ad3c", "callable": "emqjobs.add", "queue": "default",
                "interval_secs": null, "cron": "*/5 * * * *", "tz": "Europe/Paris", "next_run": now + 180.0,
                "last_run": now - 120.0, "last_state": "done", "runs": 7, "runs_left": 3}],
                "lateness": {"samples": 7, "p50_ms": 0.4, "p99_ms": 1.2, "max_ms": 1.3}}),
            now,
        );
        for want in [
            "e037b3207577 ",
            "cron */5 * * * *",
            "Europe/Paris",
            "in 3 min",
            "2 min ago",
            "done",
            "7 (3 left)",
            "p99 1.2 ms",
        ] {
            assert!(sched.contains(want), "{want:?} in\n{sched}");
        }
        let d = render_delayed(
            &json!({"delayed": [{"msgid": "m1", "queue": "q", "callable": "a.b", "due": now + 30.0}], "total": 5}),
            now,
        );
        assert!(d.contains("in 30 s") && d.contains("5 delayed job(s)"), "{d}");
        let job = render_job(&json!({"msgid": "m", "state": "done", "received": 1.0e9}));
        assert!(job.contains("ago") && !job.contains("1000000000"), "no epoch seconds: {job}");
        let job =
            render_job(&json!({"msgid": "m", "state": "dead", "worker": "3f1c-uuid", "job_manager_name": "vm:5620",
            "job": {"callable": "billing.charge", "args": [42, "eur"], "kwargs": {"retry": true}}}));
        assert!(job.contains("vm:5620") && !job.contains("3f1c-uuid"), "the name workers shows: {job}");
        assert!(job.contains(r#"billing.charge(42, "eur", retry=true)"#), "{job}");
        let w = render_workers(&json!({"connected_workers": {"3f1c-uuid": {"name": "billing-1", "queues": []}}}));
        assert!(w.contains("billing-1") && !w.contains("3f1c-uuid"), "{w}");
    }

    #[test]
    fn client_token_commands_need_no_router() {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let root = std::env::temp_dir().join(format!("emq-cli-tokens-{}", u64::from_le_bytes(r)));
        let dir = root.join("data");
        let dir_s = dir.to_str().unwrap();
        // An address nothing listens on, a deadline of nothing: any attempt
        // to reach a router would fail.
        let args = |cmd: &[&str]| {
            let mut v = vec!["emq-cli", "--addr", "tcp://127.0.0.1:1", "--deadline", "0", "--data-dir", dir_s, "token"];
            v.extend_from_slice(cmd);
            Args::try_parse_from(v).unwrap()
        };
        let call = |cmd: &[&str]| {
            let a = args(cmd);
            let Cmd::Token { action } = &a.command else { unreachable!() };
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let r = client_tokens(&tokens_dir(&a).unwrap(), action, a.json, &mut out, &mut err);
            (r, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
        };
        let (r, out, err) = call(&["create", "ci-bot"]);
        r.unwrap();
        let token = out.trim_end();
        assert!(out.lines().count() == 1 && token.starts_with("emqc_") && token.len() == 69, "{out:?}");
        assert!(err.lines().count() == 1 && err.contains("only"), "{err:?}");
        let (r, out, _) = call(&["list"]);
        r.unwrap();
        assert!(out.starts_with("name") && out.contains("ci-bot") && out.contains("s ago"), "{out}");
        assert!(!out.contains(&crate::tokens::hash(token)), "no hashes: {out}");
        let (r, out, _) = call(&["--json", "list"]);
        r.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()[0]["name"], "ci-bot");
        assert!(call(&["create", "ci-bot"]).0.is_err(), "a name is made once");
        assert!(run(&args(&["revoke", "ci-bot"])).is_ok(), "run() handles it without a router");
        let e = call(&["revoke", "ci-bot"]).0.unwrap_err().to_string();
        assert!(e.contains("no client token named \"ci-bot\""), "{e}");
        assert!(run(&args(&["revoke", "ci-bot"])).is_err());
        assert!(call(&["list"]).1.starts_with("no client tokens"));
        // --token-file's directory stands for the data_dir.
        let a = Args::try_parse_from(["emq-cli", "--token-file", "/srv/emq/admin.token", "token", "list"]).unwrap();
        assert_eq!(tokens_dir(&a).unwrap(), PathBuf::from("/srv/emq"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn status_table_lists_every_queue() {
        let v = json!({
            "waiting_messages_by_queue": {"a": 2}, "inflight_messages_by_queue": {"b": 1},
            "processed_messages_by_queue": {"a": 7}, "latency_messages_by_queue": {}, "max_latency_messages_by_queue": {},
            "errors": {"refused": 1}, "activity": {"retried": 4}
        });
        let t = render_status(&v);
        let line_of = |k: &str| t.lines().find(|l| l.contains(k)).unwrap_or("").to_owned();
        assert!(line_of("retried=4").starts_with("activity:"), "a retry is activity, not an error: {t}");
        assert!(line_of("refused=1").starts_with("errors:"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("queue"));
        assert!(lines[2].starts_with("a ") && lines[2].contains('7'), "{t}");
        assert!(lines[3].starts_with("b "), "{t}");
        assert!(t.contains("refused=1"));
    }
}
