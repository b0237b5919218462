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
mod error;
mod frame;
mod headers;
mod health;
mod parse;
mod payload;
mod queues;

pub use cmd::{Ack, AdminCommand, Command, Heartbeat, Inform, Publish, Reply, Request, Schedule, FEATURE_REPORTS_ALL};
pub use error::{DecodeError, DecodeErrorKind};
pub use frame::{Message, PROTOCOL_VERSION};
pub use parse::Parse;
pub use headers::{Headers, MAX_TIMEOUT_SECS};
pub use health::{HealthError, JobHealth, PoolHealth, WorkerHealth, WorkerSlotState, MAX_HEALTH_BYTES};
pub use payload::{JobError, JobErrorKind, JobReply, PayloadError, RunPayload};
pub use queues::{QueueSpec, QueueSpecError, DEFAULT_QUEUE, DEFAULT_WEIGHT};

/// A fresh message id. EventMQ uses UUID4 strings; any unique text works on
/// the wire, so ids are 128 random bits formatted like a UUID4.
pub fn new_msgid() -> String {
    let (a, b) = random_u128_halves();
    let v = ((a as u128) << 64) | b as u128;
    let v = (v & !(0xF000u128 << 64)) | (0x4000u128 << 64); // version 4
    let v = (v & !(0xC000_0000_0000_0000u128)) | 0x8000_0000_0000_0000u128; // variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (v >> 96) as u32,
        (v >> 80) as u16,
        (v >> 64) as u16,
        (v >> 48) as u16,
        v & 0xFFFF_FFFF_FFFF
    )
}

/// Two random 64-bit halves from a process-wide xorshift generator seeded
/// once from the OS hasher's per-process random keys plus the clock and pid.
/// Msgids need uniqueness, not secrecy; this keeps the hot path free of
/// syscalls.
fn random_u128_halves() -> (u64, u64) {
    use std::cell::Cell;
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = RandomState::new().build_hasher();
            h.write_u128(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
            h.write_u32(std::process::id());
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let next = || {
            // splitmix64: well distributed, cheap
            let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        (next(), next())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn msgids_are_uuid_shaped_and_unique() {
        let a = super::new_msgid();
        let b = super::new_msgid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
