//! Time: cron evaluation ([`cron`]). The router's schedules and delayed
//! jobs live in its state machine (`state/timers.rs`); this module holds the
//! pure calculations they use.

pub mod cron;
