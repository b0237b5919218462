//! HTTP load generators for the router's HTTP API v1 (scenarios 14 and 15):
//! plain `std::net` HTTP/1.1 keep-alive, no client library, so the figures
//! are the router's and not a client's.
//!
//! - `http-throughput`: C keep-alive connections, each submitting
//!   `POST /v1/jobs` and fetching `GET /v1/jobs/{id}/result?wait=30` until
//!   `200`; with `--pipeline P` each connection writes P POSTs at once,
//!   reads the P answers, then writes the P GETs at once and reads those.
//! - `sse-reader`: one `GET /v1/events?after=X` with
//!   `Accept: text/event-stream`, reading every event; lag per event = the
//!   wall clock at its receipt minus its `at`.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn read_token(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?.trim().to_owned())
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    host: String,
    token: String,
}

impl Conn {
    fn open(addr: &str, token: &str) -> Result<Conn> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(90)))?;
        Ok(Conn { s, buf: Vec::with_capacity(16 << 10), host: addr.to_owned(), token: token.to_owned() })
    }

    fn post(&self, out: &mut Vec<u8>, path: &str, body: &str) {
        let _ = write!(
            out,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.token,
            body.len()
        );
    }

    fn get(&self, out: &mut Vec<u8>, path: &str) {
        let _ =
            write!(out, "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n", self.host, self.token);
    }

    fn send(&mut self, out: &[u8]) -> Result<()> {
        self.s.write_all(out)?;
        Ok(())
    }

    /// One response: (status, body). Needs Content-Length (the router
    /// always sends it, except on the event stream).
    fn response(&mut self) -> Result<(u16, Vec<u8>)> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            if let Some(h) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..h]).context("response head is not UTF-8")?;
                let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status")?;
                let len = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .context("no Content-Length")?;
                let total = h + 4 + len;
                while self.buf.len() < total {
                    let n = self.s.read(&mut chunk)?;
                    if n == 0 {
                        bail!("connection closed mid-body");
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = self.buf[h + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[derive(Default)]
struct Tally {
    jobs: u64,
    failed: u64,
    polls: u64,
    /// Time spent writing POSTs and reading their answers / on the results.
    post_secs: f64,
    result_secs: f64,
}

/// Submits `k` jobs on `c` (pipelined when k > 1) and fetches each result.
fn batch(c: &mut Conn, k: usize, body: &str, t: &mut Tally) -> Result<()> {
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(512 * k);
    for _ in 0..k {
        c.post(&mut out, "/v1/jobs", body);
    }
    c.send(&out)?;
    let mut ids = Vec::with_capacity(k);
    for _ in 0..k {
        let (status, b) = c.response()?;
        if status != 202 {
            bail!("POST /v1/jobs answered {status}: {}", String::from_utf8_lossy(&b));
        }
        let v: Value = serde_json::from_slice(&b)?;
        ids.push(v["id"].as_str().context("no id")?.to_owned());
    }
    let t1 = Instant::now();
    t.post_secs += (t1 - t0).as_secs_f64();
    while !ids.is_empty() {
        out.clear();
        for id in &ids {
            c.get(&mut out, &format!("/v1/jobs/{id}/result?wait=30"));
        }
        c.send(&out)?;
        t.polls += ids.len() as u64;
        let mut again = Vec::new();
        for id in ids {
            let (status, b) = c.response()?;
            match status {
                200 => {
                    t.jobs += 1;
                    let v: Value = serde_json::from_slice(&b)?;
                    if v["state"] != "done" {
                        t.failed += 1;
                    }
                }
                202 => again.push(id),
                s => bail!("GET result answered {s}: {}", String::from_utf8_lossy(&b)),
            }
        }
        ids = again;
    }
    t.result_secs += t1.elapsed().as_secs_f64();
    Ok(())
}

pub fn throughput(addr: &str, token_file: &str, conns: usize, n: u64, pipeline: usize, callable: &str) -> Result<()> {
    let token = read_token(token_file)?;
    let body = json!({"callable": callable}).to_string();
    let left = Arc::new(AtomicU64::new(n));
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut handles = Vec::new();
    for _ in 0..conns {
        let (addr, token, body, left, barrier) =
            (addr.to_owned(), token.clone(), body.clone(), left.clone(), barrier.clone());
        handles.push(std::thread::spawn(move || -> Result<Tally> {
            // Warm-up: one job per connection, not timed; every thread
            // reaches the barrier, failed or not.
            let warm = Conn::open(&addr, &token).and_then(|mut c| {
                batch(&mut c, 1, &body, &mut Tally::default())?;
                Ok(c)
            });
            barrier.wait();
            let mut c = warm?;
            let mut t = Tally::default();
            loop {
                let k = left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| (l > 0).then(|| l - l.min(pipeline as u64)))
                    .map(|l| l.min(pipeline as u64))
                    .unwrap_or(0);
                if k == 0 {
                    return Ok(t);
                }
                batch(&mut c, k as usize, &body, &mut t)?;
            }
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut total = Tally::default();
    for h in handles {
        let t = h.join().map_err(|_| anyhow::anyhow!("a connection thread panicked"))??;
        total.jobs += t.jobs;
        total.failed += t.failed;
        total.polls += t.polls;
        total.post_secs += t.post_secs;
        total.result_secs += t.result_secs;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"n": total.jobs, "conns": conns, "pipeline": pipeline, "secs": secs,
               "jobs_per_sec": total.jobs as f64 / secs, "failed": total.failed,
               "result_requests": total.polls,
               // Per batch (one job unless pipelined), mean over connections.
               "post_ms_mean": 1e3 * total.post_secs * pipeline as f64 / total.jobs.max(1) as f64,
               "result_ms_mean": 1e3 * total.result_secs * pipeline as f64 / total.jobs.max(1) as f64})
    );
    Ok(())
}

/// Reads the event stream from `after` until `stop_count` events of type
/// `stop_type` have come (or nothing came for `idle_secs`).
pub fn sse_reader(
    addr: &str,
    token_file: &str,
    after: u64,
    stop_type: &str,
    stop_count: u64,
    idle_secs: u64,
) -> Result<()> {
    let token = read_token(token_file)?;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(idle_secs)))?;
    write!(
        s,
        "GET /v1/events?after={after} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    let mut head_done = false;
    let mut lags: Vec<f64> = Vec::new();
    let (mut events, mut stops, mut gaps, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let (mut first, mut last) = (None::<Instant>, Instant::now());
    let mut last_offset = 0u64;
    let mut complete = false;
    'read: loop {
        let n = match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e.into()),
        };
        let at_recv = now_unix();
        let t = Instant::now();
        bytes += n as u64;
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buf[..h]).into_owned();
            if !head.starts_with("HTTP/1.1 200") {
                bail!("event stream answered: {head}");
            }
            buf.drain(..h + 4);
            head_done = true;
        }
        let mut used = 0;
        while let Some(end) = buf[used..].windows(2).position(|w| w == b"\n\n") {
            let block = &buf[used..used + end];
            used += end + 2;
            let Some(data) = block.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(b"data: ")) else { continue };
            let v: Value = serde_json::from_slice(data)?;
            events += 1;
            first.get_or_insert(t);
            last = t;
            if let Some(o) = v["offset"].as_u64() {
                last_offset = o;
            }
            let kind = v["type"].as_str().unwrap_or("");
            if kind == "gap" {
                gaps += 1;
                continue;
            }
            if let Some(at) = v["at"].as_f64() {
                lags.push((at_recv - at) * 1e3);
            }
            if kind == stop_type {
                stops += 1;
                if stops >= stop_count {
                    complete = true;
                    break 'read;
                }
            }
        }
        buf.drain(..used);
    }
    let secs = first.map(|f| last.duration_since(f).as_secs_f64()).unwrap_or(0.0);
    lags.sort_by(f64::total_cmp);
    let pct = |p: f64| lags.get(((lags.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    println!(
        "{}",
        json!({"events": events, "secs": secs, "events_per_sec": if secs > 0.0 { events as f64 / secs } else { 0.0 },
               "lag_p50_ms": pct(0.5), "lag_p99_ms": pct(0.99), "lag_max_ms": pct(1.0),
               "stop_type": stop_type, "stop_seen": stops, "complete": complete, "gaps": gaps,
               "bytes": bytes, "last_offset": last_offset})
    );
    Ok(())
}
