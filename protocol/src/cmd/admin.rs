//! Admin-socket commands (what `emq-cli` sends). All but JOB_STATUS have no
//! body. HELLO must get no answer (EventMQ's emq-cli would read it as the
//! answer to its next command).

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// A query or order on the router's administrative socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// Queue counters.
    Status,
    /// Connected job managers and queues.
    RouterShowWorkers,
    /// Connected schedulers.
    RouterShowSchedulers,
    /// Sent by emq-cli on connect; never answered.
    Hello,
    /// Our extension: the record of one job, by msgid; with the owner
    /// token the job was sent with (its `owner:` header), the answer
    /// includes the result from any connection.
    JobStatus { job_msgid: String, owner_token: Option<String> },
    /// Our extension: proves this admin connection holds the router's
    /// admin token (`data_dir/admin.token`); commands that change
    /// anything need it.
    Authenticate { token: String },
    /// Our extension: jobs that used up their retries.
    DeadLetters,
    /// Our extension: run a dead letter again.
    Requeue { job_msgid: String },
    /// Our extension: the router's schedules.
    Schedules,
    /// Our extension: remove a schedule by its id (EventMQ's SHA-1 hex).
    RemoveSchedule { schedule_id: String },
    /// Our extension: cancel a job (buffered, delayed or retrying: removed;
    /// running: its worker is stopped) or a schedule (by its id). Also
    /// router → our job manager: stop that job.
    Cancel { job_msgid: String },
    /// Our extension: forget a dead letter (it is not run).
    DeleteDead { job_msgid: String },
    /// Our extension: remove every buffered job of a queue.
    Purge { queue: String },
    /// Our extension: keep accepting a queue's jobs but hand none out...
    Pause { queue: String },
    /// ... until this.
    Resume { queue: String },
    /// Our extension: jobs waiting for their time (`delay:` / `eta:`), the
    /// soonest first; at most `limit` of them (0: the router's default).
    Delayed { limit: u32 },
    /// Our extension: make a new admin token (the old one stops working;
    /// the router writes the new one to `data_dir/admin.token`).
    RotateToken,
}

impl AdminCommand {
    /// `Ok(None)` when `name` is not an admin command.
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(
        name: &str,
        p: &mut Parse<'_, F>,
    ) -> Result<Option<Self>, DecodeErrorKind> {
        Ok(Some(match name {
            "STATUS" => AdminCommand::Status,
            "ROUTER_SHOW_WORKERS" => AdminCommand::RouterShowWorkers,
            "ROUTER_SHOW_SCHEDULERS" => AdminCommand::RouterShowSchedulers,
            "HELLO" => AdminCommand::Hello,
            "JOB_STATUS" => {
                AdminCommand::JobStatus { job_msgid: p.next_string()?, owner_token: p.next_optional_string()? }
            }
            "AUTHENTICATE" => AdminCommand::Authenticate { token: p.next_string()? },
            "ROUTER_DEAD_LETTERS" => AdminCommand::DeadLetters,
            "REQUEUE" => AdminCommand::Requeue { job_msgid: p.next_string()? },
            "CANCEL" => AdminCommand::Cancel { job_msgid: p.next_string()? },
            "PURGE" => AdminCommand::Purge { queue: p.next_string()? },
            "DELETE_DEAD" => AdminCommand::DeleteDead { job_msgid: p.next_string()? },
            "PAUSE" => AdminCommand::Pause { queue: p.next_string()? },
            "RESUME" => AdminCommand::Resume { queue: p.next_string()? },
            "ROUTER_SCHEDULES" => AdminCommand::Schedules,
            "REMOVE_SCHEDULE" => AdminCommand::RemoveSchedule { schedule_id: p.next_string()? },
            "ROTATE_TOKEN" => AdminCommand::RotateToken,
            "ROUTER_DELAYED" => {
                AdminCommand::Delayed { limit: p.next_optional_string()?.and_then(|s| s.parse().ok()).unwrap_or(0) }
            }
            _ => return Ok(None),
        }))
    }

    /// The wire name.
    pub fn name(&self) -> &'static str {
        match self {
            AdminCommand::Status => "STATUS",
            AdminCommand::RouterShowWorkers => "ROUTER_SHOW_WORKERS",
            AdminCommand::RouterShowSchedulers => "ROUTER_SHOW_SCHEDULERS",
            AdminCommand::Hello => "HELLO",
            AdminCommand::JobStatus { .. } => "JOB_STATUS",
            AdminCommand::Authenticate { .. } => "AUTHENTICATE",
            AdminCommand::DeadLetters => "ROUTER_DEAD_LETTERS",
            AdminCommand::Requeue { .. } => "REQUEUE",
            AdminCommand::Cancel { .. } => "CANCEL",
            AdminCommand::Purge { .. } => "PURGE",
            AdminCommand::DeleteDead { .. } => "DELETE_DEAD",
            AdminCommand::Pause { .. } => "PAUSE",
            AdminCommand::Resume { .. } => "RESUME",
            AdminCommand::Schedules => "ROUTER_SCHEDULES",
            AdminCommand::RemoveSchedule { .. } => "REMOVE_SCHEDULE",
            AdminCommand::Delayed { .. } => "ROUTER_DELAYED",
            AdminCommand::RotateToken => "ROTATE_TOKEN",
        }
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        match self {
            AdminCommand::JobStatus { job_msgid, owner_token } => {
                out.push(job_msgid.as_bytes().to_vec());
                if let Some(t) = owner_token {
                    out.push(t.as_bytes().to_vec());
                }
            }
            AdminCommand::Requeue { job_msgid }
            | AdminCommand::Cancel { job_msgid }
            | AdminCommand::DeleteDead { job_msgid } => out.push(job_msgid.as_bytes().to_vec()),
            AdminCommand::Purge { queue } | AdminCommand::Pause { queue } | AdminCommand::Resume { queue } => {
                out.push(queue.as_bytes().to_vec())
            }
            AdminCommand::Authenticate { token } => out.push(token.as_bytes().to_vec()),
            AdminCommand::RemoveSchedule { schedule_id } => out.push(schedule_id.as_bytes().to_vec()),
            AdminCommand::Delayed { limit } => out.push(limit.to_string().into_bytes()),
            _ => {}
        }
    }
}
