//! Many clients (issue 29): C connected clients (each a DEALER of its own,
//! as C separate programs would have), each sending J jobs with results at
//! once, J outstanding. Reports the total jobs/s from the first send to the
//! last result, each client's completion time (max / min: nobody starved),
//! and the router's memory per idle connected client (its RSS before the
//! clients connect, and after they connected and each ran one job).
//!
//! As emq's client does (`Client::send_payloads_until`, Python's
//! `send_many` / `map`): a client whose router sent it a REPLIES sends its
//! J jobs as REQUESTS (at most 1,024 per message); `--one-by-one`: one
//! REQUEST each.

use anyhow::{bail, Context, Result};
use emq_protocol::{Command, Message};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use serde_json::json;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("router's /proc status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

/// One client's socket and what it has seen.
struct OneClient {
    socket: zmq::Socket,
    /// The router sent it a REPLIES (it takes REQUESTS).
    router_batches: bool,
    sent: u64,
    done: u64,
    finished_at: Option<Duration>,
}

pub fn run(frontend: &str, router_pid: u32, clients: usize, jobs: u64, threads: usize, one_by_one: bool) -> Result<()> {
    // A ZeroMQ context holds at most 1,023 sockets: one per 500 clients.
    let contexts: Vec<zmq::Context> = (0..clients.div_ceil(500)).map(|_| zmq::Context::new()).collect();
    let payload = json!(["run", {"path": "benchjobs", "callable": "noop"}]).to_string();
    let rss_before = rss_bytes(router_pid)?;
    let mut all: Vec<OneClient> = Vec::with_capacity(clients);
    for i in 0..clients {
        let socket = crate::dealer(&contexts[i / 500], frontend)?;
        all.push(OneClient { socket, router_batches: false, sent: 0, done: 0, finished_at: None });
    }
    // Each runs one job first: connected, known to the router, idle.
    for c in &all {
        crate::send(&c.socket, &crate::request("default", crate::CLIENT_HEADERS, &payload))?;
    }
    for c in &mut all {
        c.router_batches = crate::wait_results(&c.socket, 1, Duration::from_secs(120))?;
    }
    let batched = all.iter().filter(|c| c.router_batches && !one_by_one).count();
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_bytes(router_pid)?;
    let per_client = rss_idle.saturating_sub(rss_before) as f64 / clients as f64;

    // All at once: every client sends its J jobs, then takes its results.
    let threads = threads.clamp(1, clients);
    // For profilers sampling the processes around the measured phase.
    eprintln!("phase: all at once");
    let start = Instant::now();
    let chunks: Vec<Vec<OneClient>> = {
        let mut chunks: Vec<Vec<OneClient>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, c) in all.into_iter().enumerate() {
            chunks[i % threads].push(c);
        }
        chunks
    };
    let handles: Vec<std::thread::JoinHandle<Result<Vec<Duration>>>> = chunks
        .into_iter()
        .map(|mut mine| {
            let payload = payload.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut together = Vec::new();
                for c in mine.iter_mut() {
                    while c.sent < jobs {
                        let m = crate::request("default", crate::CLIENT_HEADERS, &payload);
                        c.sent += 1;
                        match m {
                            Message { msgid, command: Command::Request(r) } if c.router_batches && !one_by_one => {
                                together.push((msgid, r));
                                if together.len() >= emq_protocol::MAX_BATCH_REPLIES || c.sent == jobs {
                                    crate::send_requests(&c.socket, &mut together)?;
                                }
                            }
                            m => crate::send(&c.socket, &m)?,
                        }
                    }
                }
                // Results: an epoll set over the sockets' ZMQ_FDs, so each
                // wake-up costs what is ready, not a zmq_poll over all of
                // this thread's sockets (which made the generator itself
                // take ~40 % of the two cores). ZMQ_FD only says "look
                // again": a socket is drained to EAGAIN and its ZMQ_EVENTS
                // checked before it is waited for again.
                let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
                for (i, c) in mine.iter().enumerate() {
                    let fd = c.socket.get_fd()?;
                    // SAFETY: the socket (and so its fd) outlives the epoll set.
                    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                    epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
                }
                let mut left = mine.len();
                let mut ready: Vec<usize> = (0..mine.len()).collect();
                let mut events = vec![EpollEvent::empty(); mine.len().min(1024)];
                loop {
                    for i in ready.drain(..) {
                        let c = &mut mine[i];
                        loop {
                            match c.socket.recv_multipart(zmq::DONTWAIT) {
                                Ok(f) => c.done += crate::results_in(&f).len() as u64,
                                Err(zmq::Error::EAGAIN) => {
                                    if !c.socket.get_events()?.contains(zmq::POLLIN) {
                                        break;
                                    }
                                }
                                Err(e) => return Err(e.into()),
                            }
                        }
                        if c.done >= jobs && c.finished_at.is_none() {
                            c.finished_at = Some(start.elapsed());
                            left -= 1;
                        }
                    }
                    if left == 0 {
                        break;
                    }
                    let n = epoll.wait(&mut events, 60_000u16)?;
                    if n == 0 {
                        bail!("stalled: {left} clients not done after {:?}", start.elapsed());
                    }
                    ready.extend(events[..n].iter().map(|e| e.data() as usize));
                }
                Ok(mine.iter().filter_map(|c| c.finished_at).collect())
            })
        })
        .collect();
    let mut times: Vec<Duration> = Vec::new();
    for h in handles {
        times.extend(h.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??);
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("phase: done");
    times.sort();
    let (min, max) = (times[0].as_secs_f64(), times[times.len() - 1].as_secs_f64());
    let median = times[times.len() / 2].as_secs_f64();
    let total = clients as u64 * jobs;
    println!(
        "{}",
        json!({"clients": clients, "jobs_per_client": jobs, "n": total, "secs": secs,
               "jobs_per_sec": total as f64 / secs, "client_done_min_secs": min, "client_done_median_secs": median,
               "client_done_max_secs": max, "max_over_min": max / min.max(1e-9),
               "max_over_median": max / median.max(1e-9),
               "router_rss_before": rss_before, "router_rss_idle_clients": rss_idle,
               "router_bytes_per_idle_client": per_client, "clients_sending_requests": batched})
    );
    Ok(())
}
