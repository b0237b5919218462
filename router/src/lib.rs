//! # emq-router — brokers eMQP jobs between clients and job managers
//!
//! Owns: the router's behaviour as a pure state machine ([`state`]:
//! `RouterState::handle(event, now) -> actions`, with an injected clock, no
//! sockets), its settings ([`settings`]), and a thin ZeroMQ poll loop
//! ([`server`]) that drains every readable socket, feeds the state machine,
//! and performs the sends it asks for — keeping (never dropping) messages for
//! peers whose pipe is full.
//!
//! Does not own: the wire format (`emq-protocol`), socket mechanics
//! (`emq-receiver`), or running jobs (`emq-jobmanager`).

pub mod api;
pub mod cli;
pub mod events;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod schedule;
pub mod server;
pub mod settings;
pub mod state;

pub use settings::RouterSettings;
pub use state::{Action, Event, Now, RouterState, SocketKind, EVENTMQ_STATUS_KEYS};
