//! Heap bytes the router's state keeps per buffered job, counted exactly
//! with a counting allocator (no sockets, no RSS noise): 1,000,000
//! REQUESTs of a 100-byte payload from one client with no job manager
//! attached, at the default settings (`job_history` keeps the last
//! 100,000 records) — scenario 5 of `bench/run.sh` without the sockets.
//!
//! This is the state's share of scenario 5 (`bench/run.sh`), which
//! measures the whole process's RSS; this test keeps it from creeping up
//! unnoticed. The budget is on requested bytes (allocator rounding comes
//! on top), deterministic for a given build.

use emq_protocol::{Command, Message, Request};
use emq_receiver::PeerId;
use emq_router::{Event, Now, RouterSettings, RouterState, SocketKind};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to mimalloc (the router binary's allocator); only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout, passed through.
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same pointer and layout, passed through.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: passed through.
        unsafe { mimalloc::MiMalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Requested heap bytes per buffered job, after `n` jobs from one client
/// (the RSS growth is printed too: meaningful for the first call only).
fn bytes_per_buffered_job(n: usize, queue: &str) -> f64 {
    let cfg = RouterSettings::default().to_config().expect("defaults are valid");
    let now = Now::real();
    let mut r = RouterState::new(cfg, now);
    let client = PeerId::from("client-1");
    let shell =
        |k: usize| format!("[\"run\", {{\"path\": \"m\", \"callable\": \"f\", \"args\": [\"{}\"]}}]", "x".repeat(k));
    let payload = shell(100 - shell(0).len());
    assert_eq!(payload.len(), 100);
    // Warm up the shared parts (queue, stats, client) before counting.
    let send = |r: &mut RouterState, i: usize| {
        let m = Message::with_msgid(
            format!("{:08x}-0000-4000-8000-{:012x}", i, i),
            Command::Request(Request { queue: queue.into(), headers: String::new(), payload: payload.clone() }),
        );
        let out = r.handle_vec(
            Event::Received { socket: SocketKind::Frontend, peer: client.clone(), message: Ok(m), user: None },
            now,
        );
        drop(out);
    };
    send(&mut r, usize::MAX >> 16);
    let before = LIVE.load(Ordering::Relaxed);
    let rss0 = rss_kb();
    for i in 0..n {
        send(&mut r, i);
    }
    let after = LIVE.load(Ordering::Relaxed);
    println!("RSS growth per job (mimalloc, this process): {:.0} bytes", (rss_kb() - rss0) as f64 * 1024.0 / n as f64);
    assert_eq!(r.waiting(emq_protocol::DEFAULT_QUEUE), n + 1, "every job buffered");
    (after - before) as f64 / n as f64
}

#[test]
fn a_buffered_100_byte_job_costs_at_most_its_budget() {
    let n = 1_000_000;
    let served = bytes_per_buffered_job(n, "default");
    let fallback = bytes_per_buffered_job(n, "nobody");
    println!("heap bytes per buffered 100-byte job: {served:.0} (queue default), {fallback:.0} (unserved queue, falls back to default)");
    // 2026-11-26: 219 / 225 (a job: 104-byte request box, 80 bytes in its
    // queue with the msgid inline; the history's 100,000 records, with
    // their shared msgids, ~35 bytes a job).
    assert!(served <= 240.0, "{served:.0} bytes per buffered job");
    assert!(fallback <= 240.0, "{fallback:.0} bytes per buffered job");
}

fn rss_kb() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}
