//! # emq-jobmanager — connects to a router and feeds a supervised pool
//!
//! Owns: the job manager's behaviour as a pure state machine ([`state`]:
//! `JobManagerState::handle(event, now) -> actions`, injected clock, no
//! sockets or processes): the router conversation (INFORM until ACK, one
//! READY per free worker, REPLY for every finished job, heartbeats,
//! reconnect with failover), jobs in flight and per-pid counts, timeouts,
//! restarts, recycling, draining shutdown. Also its settings ([`settings`]),
//! and the thin poll loop ([`server`]) over the router socket, the workers'
//! output pipes and a signal self-pipe, which performs the actions.
//!
//! Does not own: how a worker process is started or runs Python
//! (`emq-pool`), the wire format (`emq-protocol`).

pub mod cli;
pub mod procstats;
pub mod server;
pub mod settings;
pub mod state;

pub use settings::JobManagerSettings;
pub use state::{Action, Event, JobManagerState};
