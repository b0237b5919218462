//! `emq-bench`: the measuring pieces of `bench/run.py`. Each subcommand
//! prints one JSON line on stdout.
//!
//! - `stub-jm`: a minimal Rust job manager stand-in (no Python, no pool):
//!   INFORM, N READYs, and for every REQUEST an immediate REPLY + READY.
//! - `forwarder`: a bare ZeroMQ ROUTER→ROUTER broker for the same frames
//!   (REQUEST to a job manager, receipt and REPLY to the client) with no
//!   queues, slots or records: the ceiling the router is compared with.
//! - `throughput`: a client with W jobs outstanding, `reply-requested`,
//!   counting results (not receipts) until N are back.
//! - `latency`: one job at a time, submit → result at the client.
//! - `fill`: N fire-and-forget jobs of a given payload size, waiting for N
//!   receipts (for the router's memory per buffered job).
//! - `journal-store`: the journal's storage candidates (emq's own log, redb)
//!   committing accepted-job records in groups, as the router does.
//! - `http-throughput`, `sse-reader`: the HTTP API v1 and its event
//!   stream (`http.rs`).
//! - `recovery`: SIGKILL a busy worker, time until the job manager's READY
//!   for its replacement shows at the router.

mod http;
mod journal_store;
mod many;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use emq_protocol::{Command, Heartbeat, Inform, Message, QueueSpec, Reply, Request};
use serde_json::json;
use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The journal's storage candidates: emq's own log vs redb, group commits.
    JournalStore {
        #[arg(long, default_value_t = 20_000)]
        n: u64,
        #[arg(long, value_delimiter = ',', default_values_t = vec![1, 10, 100, 1000])]
        batches: Vec<u64>,
    },
    StubJm {
        #[arg(long)]
        backend: String,
        #[arg(long, default_value_t = 1000)]
        slots: usize,
        /// Print the lateness (receipt here minus the `fired:` due time)
        /// of scheduled jobs after every N of them, as one JSON line.
        #[arg(long, default_value_t = 0)]
        lateness_every: usize,
    },
    /// Many stub job managers in one process (the scale scenario): `peers`
    /// DEALERs, each serving `queues` queues with `slots` slots.
    ScaleJm {
        #[arg(long)]
        backend: String,
        #[arg(long, default_value_t = 1)]
        peers: usize,
        #[arg(long, default_value_t = 1000)]
        slots: usize,
        #[arg(long, default_value_t = 1)]
        queues: usize,
    },
    Forwarder {
        #[arg(long)]
        frontend: String,
        #[arg(long)]
        backend: String,
    },
    /// C clients (a DEALER each), each sending J jobs with results at
    /// once: total jobs/s, per-client completion times, the router's RSS
    /// per idle connected client.
    ManyClients {
        #[arg(long)]
        frontend: String,
        #[arg(long)]
        router_pid: u32,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 100)]
        jobs: u64,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// One REQUEST message per job even when the router takes
        /// REQUESTS (a client that sends its jobs one by one).
        #[arg(long)]
        one_by_one: bool,
    },
    Throughput {
        #[arg(long)]
        frontend: String,
        #[arg(long, default_value_t = 100_000)]
        n: u64,
        #[arg(long, default_value_t = 1000)]
        window: u64,
        #[arg(long, default_value = "benchjobs")]
        path: String,
        #[arg(long, default_value = "noop")]
        callable: String,
        /// Spread the jobs over this many queues (`q0`, `q1`, ...; 1 = `default`).
        #[arg(long, default_value_t = 1)]
        queues: usize,
        /// Pad each payload to about this many bytes.
        #[arg(long, default_value_t = 0)]
        size: usize,
        /// Send each job under this limit (`limit:NAME/PARTITION`)...
        #[arg(long)]
        limit: Option<String>,
        /// ... spread over this many partitions (hashed from the job's
        /// number: some jobs of a partition meet, and wait).
        #[arg(long, default_value_t = 1)]
        partitions: u64,
        /// The callable's positional arguments, a JSON array (e.g.
        /// `["/tmp/f", "x", 1.0]` for `spin_append`).
        #[arg(long)]
        args: Option<String>,
        /// One REQUEST message per job even when the router takes
        /// REQUESTS (as a client before this release did).
        #[arg(long)]
        one_by_one: bool,
    },
    /// N chords of M no-op members (the callback gets their results), W
    /// outstanding: workflows/s and jobs/s; then, for the last `sample`
    /// chords, the time from the last member's end to the callback's
    /// dispatch (the router's own timestamps, read over the admin socket).
    /// With `--fill`: only submit and wait for the receipts (no job
    /// manager: the router's memory per waiting node).
    Chords {
        #[arg(long)]
        frontend: String,
        #[arg(long)]
        admin: String,
        #[arg(long, default_value_t = 10_000)]
        n: u64,
        #[arg(long, default_value_t = 10)]
        members: usize,
        #[arg(long, default_value_t = 200)]
        window: u64,
        #[arg(long, default_value_t = 500)]
        sample: usize,
        #[arg(long)]
        fill: bool,
    },
    Latency {
        #[arg(long)]
        frontend: String,
        #[arg(long, default_value_t = 5000)]
        n: usize,
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Through the Rust client library (`emq_client::Client`:
        /// `send_request` + `wait`, as a Rust program uses emq) instead of
        /// hand-built frames on a bare DEALER (the floor of a client).
        #[arg(long)]
        api: bool,
    },
    Fill {
        #[arg(long)]
        frontend: String,
        #[arg(long, default_value_t = 1_000_000)]
        n: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, default_value = "nobody")]
        queue: String,
        /// REQUEST headers (e.g. `delay:86400` to fill the delayed jobs).
        #[arg(long, default_value = "")]
        headers: String,
    },
    /// Makes N schedules (distinct args) of benchjobs.noop, every
    /// `interval` seconds, `nohaste`; waits for every receipt.
    ScheduleLoad {
        #[arg(long)]
        frontend: String,
        #[arg(long, default_value_t = 1000)]
        n: u64,
        #[arg(long, default_value_t = 1)]
        interval: u64,
        #[arg(long, default_value = "default")]
        queue: String,
    },
    /// C keep-alive HTTP/1.1 connections: POST /v1/jobs, then
    /// GET /v1/jobs/{id}/result?wait=30 until 200 (P jobs at once per
    /// connection with --pipeline P), N jobs in all.
    HttpThroughput {
        /// host:port of the router's http_addr
        #[arg(long)]
        addr: String,
        /// The admin token file (data_dir/admin.token).
        #[arg(long)]
        token_file: String,
        #[arg(long, default_value_t = 8)]
        conns: usize,
        #[arg(long, default_value_t = 20_000)]
        n: u64,
        #[arg(long, default_value_t = 1)]
        pipeline: usize,
        #[arg(long, default_value = "benchjobs.noop")]
        callable: String,
    },
    /// One SSE reader of GET /v1/events?after=X: events/s and lag (receipt
    /// wall clock minus the event's `at`), until `stop_count` events of
    /// `stop_type` (or `idle_secs` without any).
    SseReader {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        token_file: String,
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value = "succeeded")]
        stop_type: String,
        #[arg(long, default_value_t = u64::MAX)]
        stop_count: u64,
        #[arg(long, default_value_t = 15)]
        idle_secs: u64,
    },
    Recovery {
        #[arg(long)]
        frontend: String,
        #[arg(long)]
        admin: String,
        /// The job manager whose workers are killed.
        #[arg(long)]
        jm_pid: i32,
        #[arg(long, default_value_t = 50)]
        kills: usize,
        #[arg(long)]
        pid_file: String,
        /// Pause between kills (failures are rare events; the pool's spare
        /// worker gets time to start again).
        #[arg(long, default_value_t = 300)]
        settle_ms: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::JournalStore { n, batches } => journal_store::run(n, &batches),
        Cmd::StubJm { backend, slots, lateness_every } => stub_jm(&backend, slots, lateness_every),
        Cmd::Forwarder { frontend, backend } => forwarder(&frontend, &backend),
        Cmd::ScaleJm { backend, peers, slots, queues } => scale_jm(&backend, peers, slots, queues),
        Cmd::Throughput { frontend, n, window, path, callable, queues, size, limit, partitions, args, one_by_one } => {
            throughput(
                &frontend,
                n,
                window,
                &path,
                &callable,
                queues,
                size,
                limit.as_deref(),
                partitions,
                args.as_deref(),
                one_by_one,
            )
        }
        Cmd::Latency { frontend, n, warmup, api: false } => latency(&frontend, n, warmup),
        Cmd::Latency { frontend, n, warmup, api: true } => latency_api(&frontend, n, warmup),
        Cmd::ManyClients { frontend, router_pid, clients, jobs, threads, one_by_one } => {
            many::run(&frontend, router_pid, clients, jobs, threads, one_by_one)
        }
        Cmd::Chords { frontend, admin, n, members, window, sample, fill } => {
            chords(&frontend, &admin, n, members, window, sample, fill)
        }
        Cmd::Fill { frontend, n, size, queue, headers } => fill(&frontend, n, size, &queue, &headers),
        Cmd::ScheduleLoad { frontend, n, interval, queue } => schedule_load(&frontend, n, interval, &queue),
        Cmd::HttpThroughput { addr, token_file, conns, n, pipeline, callable } => {
            http::throughput(&addr, &token_file, conns, n, pipeline.max(1), &callable)
        }
        Cmd::SseReader { addr, token_file, after, stop_type, stop_count, idle_secs } => {
            http::sse_reader(&addr, &token_file, after, &stop_type, stop_count, idle_secs)
        }
        Cmd::Recovery { frontend, admin, jm_pid, kills, pid_file, settle_ms } => {
            recovery(&frontend, &admin, jm_pid, kills, &pid_file, settle_ms)
        }
    }
}

fn dealer(ctx: &zmq::Context, addr: &str) -> Result<zmq::Socket> {
    let s = ctx.socket(zmq::DEALER)?;
    s.set_identity(emq_protocol::new_msgid().as_bytes())?;
    s.set_sndhwm(0)?;
    s.set_rcvhwm(0)?;
    s.set_linger(1000)?;
    s.connect(addr)?;
    Ok(s)
}

fn send(s: &zmq::Socket, m: &Message) -> Result<()> {
    s.send_multipart(m.to_frames(), 0)?;
    Ok(())
}

/// Sends `jobs` as one REQUESTS (emptying it).
fn send_requests(s: &zmq::Socket, jobs: &mut Vec<(String, Request)>) -> Result<()> {
    send(s, &Message::new(Command::Requests(emq_protocol::Requests { jobs: std::mem::take(jobs) })))
}

fn request(queue: &str, headers: &str, payload: &str) -> Message {
    Message::new(Command::Request(Request { queue: queue.into(), headers: headers.into(), payload: payload.into() }))
}

/// The REQUEST headers of the load generators (throughput, latency, many
/// clients): results wanted, and — as emq's own client asks — receipts and
/// results of a router pass in one REPLIES.
const CLIENT_HEADERS: &str = "reply-requested,batch-replies";

/// The job results (`reply_json` frames) one message from the router
/// carries: a REPLY with a result, or a REPLIES' non-empty items (empty
/// ones are receipts).
fn results_in(frames: &[Vec<u8>]) -> Vec<&[u8]> {
    match frames.get(2).map(Vec::as_slice) {
        Some(b"REPLY") if frames.len() == 6 => vec![frames[4].as_slice()],
        Some(b"REPLIES") => frames
            .get(4..)
            .unwrap_or_default()
            .chunks(2)
            .filter(|p| p.len() == 2 && !p[0].is_empty())
            .map(|p| p[0].as_slice())
            .collect(),
        _ => Vec::new(),
    }
}

/// Receives every message waiting, blocking up to `timeout_ms` for the first.
fn recv_batch(s: &zmq::Socket, timeout_ms: i64, mut f: impl FnMut(Vec<Vec<u8>>)) -> Result<usize> {
    if s.poll(zmq::POLLIN, timeout_ms)? == 0 {
        return Ok(0);
    }
    let mut n = 0;
    loop {
        match s.recv_multipart(zmq::DONTWAIT) {
            Ok(frames) => {
                f(frames);
                n += 1;
            }
            Err(zmq::Error::EAGAIN) => return Ok(n),
            Err(e) => return Err(e.into()),
        }
    }
}

// ---- stub job manager ------------------------------------------------------

fn stub_jm(backend: &str, slots: usize, lateness_every: usize) -> Result<()> {
    let mut lateness: Vec<f64> = Vec::new();
    let ctx = zmq::Context::new();
    let s = dealer(&ctx, backend)?;
    let inform = Message::new(Command::Inform(Inform {
        queues: QueueSpec::default_queues(),
        kind: "worker".into(),
        features: None,
    }));
    send(&s, &inform)?;
    let mut acked = false;
    let mut last_hb = Instant::now();
    let value = r#"{"value":null}"#;
    loop {
        recv_batch(&s, 100, |frames| {
            let Ok(m) = Message::from_frames(&frames) else { return };
            match m.command {
                Command::Ack(_) if !acked => {
                    acked = true;
                    for _ in 0..slots {
                        let _ = send(&s, &Message::new(Command::Ready));
                    }
                }
                Command::Request(r) => {
                    if lateness_every > 0 {
                        if let Some(fired) = emq_protocol::Headers::parse(&r.headers).fired_at {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_secs_f64())
                                .unwrap_or(0.0);
                            lateness.push((now - fired) * 1000.0);
                            if lateness.len() >= lateness_every {
                                lateness.sort_by(f64::total_cmp);
                                let q = |p: f64| lateness[((lateness.len() - 1) as f64 * p).round() as usize];
                                println!(
                                    "{}",
                                    json!({"lateness_ms": {"n": lateness.len(), "p50": q(0.5), "p99": q(0.99), "max": q(1.0)}})
                                );
                                lateness.clear();
                            }
                        }
                    }
                    let reply = Reply::Result { reply_json: value.into(), orig_msgid: m.msgid };
                    let _ = send(&s, &Message::new(Command::Reply(reply)));
                    let _ = send(&s, &Message::new(Command::Ready));
                }
                Command::Kbye | Command::Disconnect => std::process::exit(0),
                _ => {}
            }
        })?;
        if last_hb.elapsed() > Duration::from_secs(1) {
            last_hb = Instant::now();
            send(&s, &Message::new(Command::Heartbeat(Heartbeat::now())))?;
        }
    }
}

// ---- many stub job managers (scale scenario) -----------------------------------

/// Queue `i` of `q` queues: `default` alone, else `q0`, `q1`, ...
fn queue_name(i: usize, q: usize) -> String {
    if q <= 1 {
        "default".into()
    } else {
        format!("q{}", i % q)
    }
}

fn scale_jm(backend: &str, peers: usize, slots: usize, queues: usize) -> Result<()> {
    let ctx = zmq::Context::new();
    let spec = QueueSpec((0..queues.max(1)).map(|i| (10, queue_name(i, queues))).collect());
    let mut socks = Vec::with_capacity(peers);
    for _ in 0..peers {
        let s = dealer(&ctx, backend)?;
        send(
            &s,
            &Message::new(Command::Inform(Inform { queues: spec.clone(), kind: "worker".into(), features: None })),
        )?;
        socks.push(s);
    }
    let value = r#"{"value":null}"#;
    let mut acked = vec![false; peers];
    let mut last_hb = Instant::now();
    loop {
        let mut items: Vec<zmq::PollItem> = socks.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
        zmq::poll(&mut items, 100)?;
        let ready: Vec<usize> = items.iter().enumerate().filter(|(_, i)| i.is_readable()).map(|(k, _)| k).collect();
        drop(items);
        for k in ready {
            let s = &socks[k];
            loop {
                let frames = match s.recv_multipart(zmq::DONTWAIT) {
                    Ok(f) => f,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                };
                let Ok(m) = Message::from_frames(&frames) else { continue };
                match m.command {
                    Command::Ack(_) if !acked[k] => {
                        acked[k] = true;
                        for _ in 0..slots {
                            send(s, &Message::new(Command::Ready))?;
                        }
                    }
                    Command::Request(_) => {
                        let reply = Reply::Result { reply_json: value.into(), orig_msgid: m.msgid };
                        send(s, &Message::new(Command::Reply(reply)))?;
                        send(s, &Message::new(Command::Ready))?;
                    }
                    Command::Kbye | Command::Disconnect => std::process::exit(0),
                    _ => {}
                }
            }
        }
        if last_hb.elapsed() > Duration::from_secs(1) {
            last_hb = Instant::now();
            for s in &socks {
                send(s, &Message::new(Command::Heartbeat(Heartbeat::now())))?;
            }
        }
    }
}

// ---- bare forwarder -----------------------------------------------------------

fn forwarder(frontend: &str, backend: &str) -> Result<()> {
    let ctx = zmq::Context::new();
    let bind = |addr: &str| -> Result<zmq::Socket> {
        let s = ctx.socket(zmq::ROUTER)?;
        s.set_router_mandatory(true)?;
        s.set_sndhwm(0)?;
        s.set_rcvhwm(0)?;
        s.bind(addr)?;
        Ok(s)
    };
    let fe = bind(frontend)?;
    let be = bind(backend)?;
    let mut jms: Vec<Vec<u8>> = Vec::new();
    let mut next = 0usize;
    let mut owner: HashMap<Vec<u8>, Vec<u8>> = HashMap::new(); // msgid -> client
    let proto = b"eMQP/1.0".to_vec();
    loop {
        let mut items = [fe.as_poll_item(zmq::POLLIN), be.as_poll_item(zmq::POLLIN)];
        zmq::poll(&mut items, 100)?;
        let (fe_ready, be_ready) = (items[0].is_readable(), items[1].is_readable());
        if be_ready {
            loop {
                let mut f = match be.recv_multipart(zmq::DONTWAIT) {
                    Ok(f) => f,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                };
                if f.len() < 5 {
                    continue;
                }
                match f[3].as_slice() {
                    b"INFORM" => {
                        jms.push(f[0].clone());
                        let ack =
                            vec![f[0].clone(), vec![], proto.clone(), b"ACK".to_vec(), b"a".to_vec(), f[4].clone()];
                        be.send_multipart(ack, 0)?;
                    }
                    b"REPLY" if f.len() == 7 => {
                        if let Some(client) = owner.remove(&f[6]) {
                            f[0] = client;
                            fe.send_multipart(f, 0)?;
                        }
                    }
                    _ => {} // READY, HEARTBEAT: no accounting here
                }
            }
        }
        if fe_ready {
            loop {
                let mut f = match fe.recv_multipart(zmq::DONTWAIT) {
                    Ok(f) => f,
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                };
                if f.len() != 8 || f[3] != b"REQUEST" || jms.is_empty() {
                    continue;
                }
                let client = std::mem::take(&mut f[0]);
                let msgid = f[4].clone();
                // Receipt, as the router sends one.
                let receipt =
                    vec![client.clone(), vec![], proto.clone(), b"REPLY".to_vec(), b"r".to_vec(), msgid.clone()];
                fe.send_multipart(receipt, 0)?;
                owner.insert(msgid, client);
                f[0] = jms[next % jms.len()].clone();
                next += 1;
                be.send_multipart(f, 0)?;
            }
        }
    }
}

// ---- throughput with results ----------------------------------------------------

fn chord_graph(members: usize) -> Result<emq_protocol::WorkflowGraph> {
    let sig = json!({"sig": {"fn": "benchjobs.noop"}});
    let v = json!({"chord": vec![sig.clone(); members], "callback": {"sig": {"fn": "benchjobs.count"}}});
    let canvas = emq_client::workflow::Canvas::from_json(&v).map_err(anyhow::Error::msg)?;
    canvas.to_graph("bench").map_err(anyhow::Error::msg)
}

fn chords(frontend: &str, admin: &str, n: u64, members: usize, window: u64, sample: usize, fill: bool) -> Result<()> {
    let ctx = zmq::Context::new();
    let s = dealer(&ctx, frontend)?;
    let wf = |g: emq_protocol::WorkflowGraph| Message::new(Command::Workflow(emq_protocol::Workflow { graph: g }));
    let start = Instant::now();
    let (mut sent, mut done, mut failed) = (0u64, 0u64, 0u64);
    let mut ids: Vec<String> = Vec::with_capacity(n as usize);
    let window = if fill { 5000 } else { window };
    while done < n {
        while sent < n && sent - done < window {
            let m = wf(chord_graph(members)?);
            ids.push(m.msgid.clone());
            send(&s, &m)?;
            sent += 1;
        }
        let got = recv_batch(&s, 60_000, |f| {
            // A receipt has 5 frames, a result 6.
            let result = f.len() == 6 && f[2] == b"REPLY";
            if (fill && f.len() == 5 && f[2] == b"REPLY") || (!fill && result) {
                done += 1;
            }
            if f.len() == 6 && f[4].windows(7).any(|w| w == b"\"error\"") {
                failed += 1;
                if fill {
                    done += 1;
                }
            }
        })?;
        if got == 0 {
            bail!("stalled: {done}/{n} after {:?}", start.elapsed());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let jobs = n * (members as u64 + 1);
    if fill {
        println!("{}", json!({"chords": n, "nodes": jobs, "secs": secs, "refused": failed}));
        return Ok(());
    }
    // The router's timestamps: last member finished → callback dispatched.
    let a = dealer(&ctx, admin)?;
    let status = |id: &str| -> Result<serde_json::Value> {
        let m = Message::new(Command::Admin(emq_protocol::AdminCommand::JobStatus {
            job_msgid: id.to_owned(),
            owner_token: None,
        }));
        send(&a, &m)?;
        loop {
            let f = a.recv_multipart(0)?;
            if f.len() >= 5 && f[2] == b"REPLY" {
                return Ok(serde_json::from_slice(&f[4])?);
            }
        }
    };
    let mut gaps = Vec::new();
    for id in ids.iter().rev().take(sample) {
        let st = status(id)?;
        let Some(nodes) = st["workflow"]["nodes"].as_array() else { continue };
        let mut last_member = f64::MIN;
        let mut cb_dispatched = None;
        for node in nodes {
            let msgid = node["msgid"].as_str().unwrap_or_default();
            let rec = status(msgid)?;
            if node["parents"].as_array().is_some_and(|p| !p.is_empty()) {
                cb_dispatched = rec["dispatched"].as_f64();
            } else if let Some(t) = rec["finished"].as_f64() {
                last_member = last_member.max(t);
            }
        }
        if let Some(d) = cb_dispatched {
            if last_member > f64::MIN {
                gaps.push((d - last_member) * 1e6);
            }
        }
    }
    gaps.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| gaps.get(((gaps.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        json!({"chords": n, "members": members, "secs": secs, "chords_per_sec": n as f64 / secs,
               "jobs_per_sec": jobs as f64 / secs, "failed": failed, "sampled": gaps.len(),
               "release_p50_us": pct(0.5), "release_p99_us": pct(0.99), "release_max_us": pct(1.0)})
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn throughput(
    frontend: &str,
    n: u64,
    window: u64,
    path: &str,
    callable: &str,
    queues: usize,
    size: usize,
    limit: Option<&str>,
    partitions: u64,
    args: Option<&str>,
    one_by_one: bool,
) -> Result<()> {
    let ctx = zmq::Context::new();
    let s = dealer(&ctx, frontend)?;
    let base = match args {
        None => json!(["run", {"path": path, "callable": callable}]).to_string(),
        Some(a) => {
            let a: serde_json::Value = serde_json::from_str(a).context("--args: not JSON")?;
            if !a.is_array() {
                bail!("--args: a JSON array");
            }
            json!(["run", {"path": path, "callable": callable, "args": a}]).to_string()
        }
    };
    let payload = if size > base.len() + 20 {
        json!(["run", {"path": path, "callable": callable, "args": ["x".repeat(size - base.len() - 20)]}]).to_string()
    } else {
        base
    };
    let names: Vec<String> = (0..queues.max(1)).map(|i| queue_name(i, queues)).collect();
    // Warm-up: one job through, so connection set-up is not timed.
    send(&s, &request(&names[0], CLIENT_HEADERS, &payload))?;
    // As emq's client does: once the router has sent a REPLIES (it takes
    // REQUESTS too), the jobs of one refill go as one REQUESTS message.
    let mut router_batches = wait_results(&s, 1, Duration::from_secs(60))?;
    let start = Instant::now();
    let (mut sent, mut done, mut failed) = (0u64, 0u64, 0u64);
    let mut refill: Vec<(String, Request)> = Vec::new();
    let mut messages = 0u64;
    while done < n {
        while sent < n && sent - done < window {
            let queue = &names[sent as usize % names.len()];
            let m = match limit {
                None => request(queue, CLIENT_HEADERS, &payload),
                Some(l) => {
                    let p = (sent.wrapping_mul(2_654_435_761) >> 7) % partitions.max(1);
                    request(queue, &format!("{CLIENT_HEADERS},limit:{l}/p{p}"), &payload)
                }
            };
            match m {
                Message { msgid, command: Command::Request(r) } if router_batches && !one_by_one => {
                    refill.push((msgid, r));
                    if refill.len() >= emq_protocol::MAX_BATCH_REPLIES {
                        send_requests(&s, &mut refill)?;
                        messages += 1;
                    }
                }
                m => {
                    send(&s, &m)?;
                    messages += 1;
                }
            }
            sent += 1;
        }
        if !refill.is_empty() {
            send_requests(&s, &mut refill)?;
            messages += 1;
        }
        let got = recv_batch(&s, 30_000, |f| {
            router_batches |= f.get(2).is_some_and(|c| c == b"REPLIES");
            for result in results_in(&f) {
                done += 1;
                if result.windows(7).any(|w| w == b"\"error\"") {
                    failed += 1;
                }
            }
        })?;
        if got == 0 {
            bail!("stalled: {done}/{n} results after {:?}", start.elapsed());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"n": n, "window": window, "secs": secs, "jobs_per_sec": n as f64 / secs, "failed": failed,
               "payload_bytes": payload.len(), "queues": names.len(), "limit": limit, "partitions": partitions,
               "jobs_per_message": sent as f64 / messages.max(1) as f64})
    );
    Ok(())
}

/// Waits for `k` results; whether a REPLIES came meanwhile (the router
/// takes REQUESTS).
fn wait_results(s: &zmq::Socket, k: u64, limit: Duration) -> Result<bool> {
    let end = Instant::now() + limit;
    let mut got = 0;
    let mut replies = false;
    while got < k {
        if Instant::now() > end {
            bail!("no result within {limit:?} (is a job manager connected?)");
        }
        recv_batch(s, 100, |f| {
            replies |= f.get(2).is_some_and(|c| c == b"REPLIES");
            got += results_in(&f).len() as u64
        })?;
    }
    Ok(replies)
}

// ---- latency -----------------------------------------------------------------------

fn latency(frontend: &str, n: usize, warmup: usize) -> Result<()> {
    let ctx = zmq::Context::new();
    let s = dealer(&ctx, frontend)?;
    let payload = json!(["run", {"path": "benchjobs", "callable": "noop"}]).to_string();
    time_round_trips(n, warmup, || {
        send(&s, &request("default", CLIENT_HEADERS, &payload))?;
        wait_results(&s, 1, Duration::from_secs(60)).map(|_| ())
    })
}

/// One job's round trip through the Rust client library, as `latency`
/// measures it on a bare DEALER: `send_request` then `wait` for its result.
fn latency_api(frontend: &str, n: usize, warmup: usize) -> Result<()> {
    let mut c = emq_client::Client::connect(frontend)?;
    let job = emq_client::job_for("benchjobs.noop")?;
    let options = emq_client::Options::default();
    time_round_trips(n, warmup, || {
        let msgid = c.send_request("default", &job, &options)?;
        let outcome = c.wait(&msgid, Instant::now() + Duration::from_secs(60));
        if !outcome.is_success() {
            bail!("job {msgid}: {outcome:?}");
        }
        Ok(())
    })
}

/// Runs `round_trip` `warmup` times untimed, then `n` times timed; prints
/// `{"n", "p50_us", "p99_us", "max_us", "min_us"}`.
fn time_round_trips(n: usize, warmup: usize, mut round_trip: impl FnMut() -> Result<()>) -> Result<()> {
    if n == 0 {
        bail!("--n must be at least 1");
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = Instant::now();
        round_trip()?;
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{}",
        json!({"n": n, "p50_us": pct(0.5), "p99_us": pct(0.99), "max_us": samples[samples.len() - 1], "min_us": samples[0]})
    );
    Ok(())
}

// ---- fill (memory) ------------------------------------------------------------------

fn fill(frontend: &str, n: u64, size: usize, queue: &str, headers: &str) -> Result<()> {
    let ctx = zmq::Context::new();
    let s = dealer(&ctx, frontend)?;
    // A payload frame of exactly `size` bytes.
    let base = json!(["run", {"path": "benchjobs", "callable": "noop", "args": [""]}]).to_string();
    let pad = size.saturating_sub(base.len());
    let payload = json!(["run", {"path": "benchjobs", "callable": "noop", "args": ["x".repeat(pad)]}]).to_string();
    let start = Instant::now();
    let (mut sent, mut receipts, mut refused) = (0u64, 0u64, 0u64);
    while receipts + refused < n {
        while sent < n && sent - (receipts + refused) < 10_000 {
            send(&s, &request(queue, headers, &payload))?;
            sent += 1;
        }
        let got = recv_batch(&s, 10_000, |f| match f.len() {
            5 => receipts += 1,
            6 => refused += 1,
            _ => {}
        })?;
        if got == 0 {
            bail!("stalled at {receipts} receipts");
        }
    }
    println!(
        "{}",
        json!({"n": n, "payload_bytes": payload.len(), "receipts": receipts, "refused": refused, "secs": start.elapsed().as_secs_f64()})
    );
    Ok(())
}

// ---- schedules --------------------------------------------------------------------------

fn schedule_load(frontend: &str, n: u64, interval: u64, queue: &str) -> Result<()> {
    let ctx = zmq::Context::new();
    let s = dealer(&ctx, frontend)?;
    let start = Instant::now();
    let (mut sent, mut answers, mut refused) = (0u64, 0u64, 0u64);
    while answers < n {
        while sent < n && sent - answers < 10_000 {
            let payload = json!(["run", {"path": "benchjobs", "callable": "noop", "args": [sent],
                "kwargs": {}, "class_args": [], "class_kwargs": {}}])
            .to_string();
            let order = emq_protocol::Schedule {
                queue: queue.into(),
                headers: "nohaste".into(),
                interval_secs: interval.to_string(),
                payload,
                cron: String::new(),
            };
            send(&s, &Message::new(Command::Schedule(order)))?;
            sent += 1;
        }
        let got = recv_batch(&s, 10_000, |f| match f.len() {
            5 => answers += 1,
            6 => {
                answers += 1;
                refused += 1
            }
            _ => {}
        })?;
        if got == 0 {
            bail!("stalled at {answers} answers");
        }
    }
    println!("{}", json!({"schedules": n, "refused": refused, "secs": start.elapsed().as_secs_f64()}));
    Ok(())
}

// ---- recovery -------------------------------------------------------------------------

fn admin_free_slots(admin: &zmq::Socket) -> Result<u64> {
    let m = Message::with_msgid(
        format!("admin:{}", emq_protocol::new_msgid()),
        Command::Admin(emq_protocol::AdminCommand::RouterShowWorkers),
    );
    send(admin, &m)?;
    if admin.poll(zmq::POLLIN, 5000)? == 0 {
        bail!("router admin did not answer");
    }
    let f = admin.recv_multipart(0)?;
    let v: serde_json::Value = serde_json::from_slice(f.get(4).context("short answer")?)?;
    Ok(v["connected_workers"]
        .as_object()
        .map(|m| m.values().filter_map(|w| w["available_slots"].as_u64()).sum())
        .unwrap_or(0))
}

fn recovery(frontend: &str, admin_addr: &str, jm_pid: i32, kills: usize, pid_file: &str, settle_ms: u64) -> Result<()> {
    let ctx = zmq::Context::new();
    let client = dealer(&ctx, frontend)?;
    let admin = dealer(&ctx, admin_addr)?;
    let full = admin_free_slots(&admin)?;
    if full == 0 {
        bail!("no free slots at the router");
    }
    let mut samples = Vec::new();
    let (mut teardown, mut after_exit) = (Vec::new(), Vec::new());
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(settle_ms));
        let _ = std::fs::remove_file(pid_file);
        // Occupy one worker with a job that names its pid and sleeps.
        let payload =
            json!(["run", {"path": "benchjobs", "callable": "pid_then_sleep", "args": [pid_file, 30]}]).to_string();
        send(&client, &request("default", "reply-requested", &payload))?;
        let end = Instant::now() + Duration::from_secs(30);
        let pid: i32 = loop {
            if let Ok(s) = std::fs::read_to_string(pid_file) {
                if let Ok(p) = s.trim().parse() {
                    break p;
                }
            }
            if Instant::now() > end {
                bail!("worker never wrote its pid");
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        while admin_free_slots(&admin)? != full - 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let parent = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
                s.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<i32>().ok())
            })
        };
        // Its job manager's child, or its warm template's.
        let ppid = parent(pid);
        if ppid != Some(jm_pid) && ppid.and_then(parent) != Some(jm_pid) {
            bail!("pid {pid} is not a worker of job manager {jm_pid}");
        }
        // A pidfd turns readable when the process has exited: after the
        // kernel has torn it down (its memory, then its descriptors — the
        // job manager learns of the death from its pipe closing, not
        // before), so "exit → READY" is the part the job manager and the
        // router spend, "kill → READY" includes the kernel's teardown.
        // SAFETY: pidfd_open has no memory arguments.
        let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a new descriptor, ours alone.
        let pidfd = (raw >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(raw as i32) });
        let exited = |wait_ms: u16| {
            pidfd.as_ref().is_some_and(|fd| {
                let mut pfd = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
                nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(wait_ms)).unwrap_or(0) > 0
            })
        };
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
        let mut exit_at = None;
        loop {
            if exit_at.is_none() && exited(0) {
                exit_at = Some(t.elapsed());
            }
            if admin_free_slots(&admin)? == full {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("replacement never became ready");
            }
        }
        let ready_at = t.elapsed();
        if exit_at.is_none() && exited(5000) {
            exit_at = Some(t.elapsed());
        }
        samples.push(ready_at.as_secs_f64() * 1e3);
        if let Some(e) = exit_at {
            teardown.push(e.as_secs_f64() * 1e3);
            after_exit.push(ready_at.saturating_sub(e).as_secs_f64() * 1e3);
        }
        // Drain the job's error reply and receipts.
        recv_batch(&client, 0, |_| {})?;
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    };
    let (exit_p50, after_exit_p50) = (p50(&mut teardown), p50(&mut after_exit));
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{}",
        json!({"kills": kills, "settle_ms": settle_ms, "p50_ms": samples[samples.len() / 2], "min_ms": samples[0],
               "max_ms": samples[samples.len() - 1], "kill_to_exit_p50_ms": exit_p50,
               "exit_to_ready_p50_ms": after_exit_p50})
    );
    Ok(())
}
