//! # emq-protocol — eMQP/1.0 frames ⇄ typed commands
//!
//! Owns: the wire format of eMQP/1.0 as EventMQ 0.3.13 speaks it (see
//! `docs/protocol.md` and the project's `emqp.md`): the frame layout
//! (`"" / "eMQP/1.0" / COMMAND / MSGID / body...`), one typed [`Command`]
//! per command name, REQUEST header parsing ([`Headers`]), the `run` payload
//! ([`RunPayload`]), job results ([`JobReply`]) and queue lists
//! ([`QueueSpec`]). Decoding arbitrary bytes never panics; it returns a typed
//! [`DecodeError`] that keeps the msgid when one could be read, so a server
//! can log and answer the peer.
//!
//! Does not own: sockets, peer identities, timing, or any policy of what to
//! do with a command — those live in `emq-receiver`, `emq-sender` and the
//! router / job manager state machines.

pub mod cmd;
mod command;
mod error;
mod frame;
mod headers;
mod health;
mod parse;
mod payload;
pub mod pyjson;
mod queues;

pub use cmd::{allow_feature, path_allowed, placement_features, FEATURE_ALLOW_PREFIX, MAX_ALLOWED_PATHS};
pub use cmd::{
    decode_checkpoint_header, encode_checkpoint_header, JobUpdate, JobUpdates, Progress, MAX_CHECKPOINT_BYTES,
    MAX_JOB_UPDATES, MAX_PROGRESS_MESSAGE,
};
pub use cmd::{
    schedule_id_of_payload, Ack, AdminCommand, Command, Heartbeat, Inform, Misfire, Publish, Reply, Request, Schedule,
    ScheduleError, ScheduleOptions, Timing, FEATURE_REPORTS_ALL,
};
pub use cmd::{Batch, Replies, Requests, FEATURE_BATCH, HEADER_BATCH_REPLIES, MAX_BATCH_REPLIES, MAX_REPLIES_BYTES};
pub use cmd::{
    OnParentFailure, Pass, ResultOf, Workflow, WorkflowGraph, WorkflowNode, MAX_NODE_MSGID, MAX_WORKFLOW_NODES,
};
pub use command::{
    payload_is_command, payload_name, CommandPayload, CommandResult, FEATURE_COMMANDS, MAX_ARGV, MAX_ENV,
};
pub use error::{DecodeError, DecodeErrorKind};
pub use frame::{Message, PROTOCOL_VERSION};
pub use headers::{valid_label, Headers, Placement, MAX_DELAY_SECS, MAX_DEPENDS_ON, MAX_LABELS, MAX_TIMEOUT_SECS};
pub use health::{CallableHealth, HealthError, JobHealth, PoolHealth, WorkerHealth, WorkerSlotState, MAX_HEALTH_BYTES};
pub use parse::Parse;
pub use payload::{payload_module, JobError, JobErrorKind, JobReply, PayloadError, RunPayload};
pub use queues::{QueueSpec, QueueSpecError, DEFAULT_QUEUE, DEFAULT_WEIGHT};

/// A fresh message id: a UUID4 string, as EventMQ uses, whose 122 random
/// bits come from the operating system's CSPRNG (`getrandom`). Identities
/// and msgids must not be guessable: a peer that could compute the next
/// client identity could connect under it and take that client's results.
pub fn new_msgid() -> String {
    let mut b = random_16();
    b[6] = (b[6] & 0x0F) | 0x40; // version 4
    b[8] = (b[8] & 0x3F) | 0x80; // variant
    uuid_text(&b)
}

/// `8-4-4-4-12` lowercase hex, by table: `format!` of five integers was
/// 1 % of the router's CPU in scenario 2 (a msgid per receipt and reply).
fn uuid_text(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut o = 0;
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[(x >> 4) as usize];
        out[o + 1] = HEX[(x & 0xF) as usize];
        o += 2;
    }
    out.iter().map(|&c| c as char).collect()
}

/// `n` random bytes from the OS CSPRNG as lowercase hex (tokens).
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    fill_random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 16 bytes from the OS CSPRNG. Read 4 KiB at a time per thread (one
/// syscall per 256 ids keeps the hot path cheap); never from a seeded
/// generator. The buffer is dropped after a `fork` (see
/// [`fork_generation`]), so a forked child never reuses its parent's bytes.
fn random_16() -> [u8; 16] {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(u64, Vec<u8>)> = const { RefCell::new((0, Vec::new())) };
    }
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let generation = fork_generation();
        if p.0 != generation || p.1.len() < 16 {
            p.0 = generation;
            p.1 = vec![0u8; 4096];
            fill_random(&mut p.1);
        }
        let at = p.1.len() - 16;
        let mut out = [0u8; 16];
        out.copy_from_slice(&p.1[at..]);
        p.1.truncate(at);
        out
    })
}

/// How many times this process is a `fork` away from the one that first
/// asked (a child handler registered with `pthread_atfork` counts them).
/// This used to be `std::process::id()` compared with the pid the buffer
/// was filled in: a `getpid` system call per msgid, 1.5 per job in the
/// router and again in the job manager (glibc does not cache the pid).
/// Generation 0 is never stored with bytes taken before the handler was
/// registered: the handler is registered before the first fill.
fn fork_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static GENERATION: AtomicU64 = AtomicU64::new(1);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn forked_child() {
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    REGISTERED.call_once(|| {
        // SAFETY: registers a handler that only touches an atomic
        // (async-signal-safe, as a child handler after fork must be).
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        if rc != 0 {
            panic!("pthread_atfork failed ({rc}): cannot tell a forked child's ids from its parent's");
        }
    });
    GENERATION.load(Ordering::Relaxed)
}

/// Fills `buf` from the OS CSPRNG. Without one the process cannot make
/// safe ids at all, so it stops rather than go on with guessable ones.
fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random source failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn msgids_do_not_repeat_and_tokens_are_hex() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| super::new_msgid()).collect();
        assert_eq!(ids.len(), 10_000);
        let t = super::random_hex(32);
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn msgids_are_uuid_shaped_and_unique() {
        let a = super::new_msgid();
        let b = super::new_msgid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_eq!([8, 13, 18, 23].map(|i| &a[i..i + 1]), ["-"; 4]);
    }

    /// A forked child must not hand out the ids its parent's buffer still
    /// holds: the parent's next ids and the child's first ones differ.
    #[test]
    fn a_forked_child_never_reuses_its_parents_random_bytes() {
        let _ = super::new_msgid(); // the parent's buffer is full
        let (mut r, mut w) = std::io::pipe().unwrap();
        // SAFETY: the child only makes ids, writes them and `_exit`s.
        match unsafe { libc::fork() } {
            0 => {
                use std::io::Write;
                let ids: Vec<String> = (0..4).map(|_| super::new_msgid()).collect();
                let _ = w.write_all(ids.join("\n").as_bytes());
                unsafe { libc::_exit(0) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                drop(w);
                let parent: Vec<String> = (0..4).map(|_| super::new_msgid()).collect();
                let mut text = String::new();
                std::io::Read::read_to_string(&mut r, &mut text).unwrap();
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                let child: Vec<&str> = text.lines().collect();
                assert_eq!(child.len(), 4, "the child wrote {text:?}");
                for id in &parent {
                    assert!(!child.contains(&id.as_str()), "the child repeated the parent's {id}");
                }
            }
        }
    }

    #[test]
    fn uuid_text_is_the_standard_layout() {
        let b: [u8; 16] = std::array::from_fn(|i| (i as u8) * 17);
        assert_eq!(super::uuid_text(&b), "00112233-4455-6677-8899-aabbccddeeff");
    }
}
