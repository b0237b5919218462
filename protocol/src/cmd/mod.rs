//! One typed command per eMQP command name. [`Command::parse_frames`] reads
//! the name and delegates to that command's own `parse_frames`, which pulls
//! its body frames off a [`Parse`] cursor and calls [`Parse::finish`] so that
//! leftover frames are an error. A name nobody knows becomes
//! [`Command::Unknown`] — the caller decides how to answer it; decoding never
//! panics.

mod ack;
mod admin;
mod batch;
mod heartbeat;
mod inform;
mod publish;
mod reply;
mod request;
mod schedule;
mod update;
mod workflow;

pub use ack::Ack;
pub use admin::AdminCommand;
pub use batch::{Batch, Replies, Requests, FEATURE_BATCH, HEADER_BATCH_REPLIES, MAX_BATCH_REPLIES, MAX_REPLIES_BYTES};
pub use heartbeat::Heartbeat;
pub use inform::{
    allow_feature, path_allowed, placement_features, Inform, FEATURE_ALLOW_PREFIX, FEATURE_LABELS_PREFIX,
    FEATURE_NAME_PREFIX, FEATURE_REPORTS_ALL, MAX_ALLOWED_PATHS,
};
pub use publish::Publish;
pub use reply::Reply;
pub use request::Request;
pub use schedule::{schedule_id_of_payload, Misfire, Schedule, ScheduleError, ScheduleOptions, Timing};
pub use update::{
    decode_checkpoint_header, encode_checkpoint_header, JobUpdate, JobUpdates, Progress, MAX_CHECKPOINT_BYTES,
    MAX_JOB_UPDATES, MAX_PROGRESS_MESSAGE,
};
pub use workflow::{
    OnParentFailure, Pass, ResultOf, Workflow, WorkflowGraph, WorkflowNode, MAX_NODE_MSGID, MAX_WORKFLOW_NODES,
};

use crate::error::DecodeErrorKind;
use crate::parse::Parse;

/// Every eMQP command, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Job manager / scheduler announces itself and its queues.
    Inform(Inform),
    /// Router acknowledges an INFORM (or an admin DISCONNECT).
    Ack(Ack),
    /// One free worker slot at the job manager that sent it.
    Ready,
    /// A job: client → router, router → job manager (unchanged).
    Request(Request),
    /// Receipt, result, refusal or admin answer.
    Reply(Reply),
    /// Liveness, both directions; ours may carry a health JSON frame.
    Heartbeat(Heartbeat),
    /// Orderly goodbye.
    Kbye,
    /// Admin → router: shut down. Router → job manager: go away.
    Disconnect,
    /// Client → router → scheduler: run a job periodically.
    Schedule(Schedule),
    /// Client → router → scheduler: stop a periodic job.
    Unschedule(Schedule),
    /// Client → publisher.
    Publish(Publish),
    /// Admin-socket queries (STATUS, ROUTER_SHOW_WORKERS, ...).
    Admin(AdminCommand),
    /// Our job manager → our router: the REPLYs and READYs of one poll pass.
    Batch(Batch),
    /// Our router → our job manager: the REQUESTs of one poll pass.
    Requests(Requests),
    /// Our router → our client (one that asked): its receipts and results
    /// of one poll pass.
    Replies(Replies),
    /// Our client → our router: jobs that depend on each other.
    Workflow(Workflow),
    /// Our job manager → our router: running jobs' progress and checkpoints.
    JobUpdate(JobUpdates),
    /// A command name this crate does not know, with its raw body frames.
    Unknown { name: String, body: Vec<String> },
}

impl Command {
    /// Decodes the body of the command named `name`.
    pub fn parse_frames<F: AsRef<[u8]>>(name: &str, parse: &mut Parse<'_, F>) -> Result<Command, DecodeErrorKind> {
        let command = match name {
            "INFORM" => Command::Inform(Inform::parse_frames(parse)?),
            "ACK" => Command::Ack(Ack::parse_frames(parse)?),
            "READY" => Command::Ready,
            "REQUEST" => Command::Request(Request::parse_frames(parse)?),
            "REPLY" => Command::Reply(Reply::parse_frames(parse)?),
            "HEARTBEAT" => Command::Heartbeat(Heartbeat::parse_frames(parse)?),
            "KBYE" => Command::Kbye,
            "DISCONNECT" => Command::Disconnect,
            "SCHEDULE" => Command::Schedule(Schedule::parse_frames(parse)?),
            "UNSCHEDULE" => Command::Unschedule(Schedule::parse_frames(parse)?),
            "PUBLISH" => Command::Publish(Publish::parse_frames(parse)?),
            "BATCH" => Command::Batch(Batch::parse_frames(parse)?),
            "REQUESTS" => Command::Requests(Requests::parse_frames(parse)?),
            "REPLIES" => Command::Replies(Replies::parse_frames(parse)?),
            "WORKFLOW" => Command::Workflow(Workflow::parse_frames(parse)?),
            "JOB_UPDATE" => Command::JobUpdate(JobUpdates::parse_frames(parse)?),
            other => match AdminCommand::parse_frames(other, parse)? {
                Some(admin) => Command::Admin(admin),
                None => return Ok(Command::Unknown { name: other.to_owned(), body: parse.rest()? }),
            },
        };
        parse.finish()?;
        Ok(command)
    }

    /// The command name as it goes on the wire (frame 2).
    pub fn name(&self) -> &str {
        match self {
            Command::Inform(_) => "INFORM",
            Command::Ack(_) => "ACK",
            Command::Ready => "READY",
            Command::Request(_) => "REQUEST",
            Command::Reply(_) => "REPLY",
            Command::Heartbeat(_) => "HEARTBEAT",
            Command::Kbye => "KBYE",
            Command::Disconnect => "DISCONNECT",
            Command::Schedule(_) => "SCHEDULE",
            Command::Unschedule(_) => "UNSCHEDULE",
            Command::Publish(_) => "PUBLISH",
            Command::Batch(_) => "BATCH",
            Command::Requests(_) => "REQUESTS",
            Command::Replies(_) => "REPLIES",
            Command::Workflow(_) => "WORKFLOW",
            Command::JobUpdate(_) => "JOB_UPDATE",
            Command::Admin(a) => a.name(),
            Command::Unknown { name, .. } => name,
        }
    }

    /// Appends the body frames.
    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        match self {
            Command::Inform(c) => c.write_body(out),
            Command::Ack(c) => c.write_body(out),
            Command::Request(c) => c.write_body(out),
            Command::Reply(c) => c.write_body(out),
            Command::Heartbeat(c) => c.write_body(out),
            Command::Schedule(c) | Command::Unschedule(c) => c.write_body(out),
            Command::Publish(c) => c.write_body(out),
            Command::Batch(c) => c.write_body(out),
            Command::Requests(c) => c.write_body(out),
            Command::Replies(c) => c.write_body(out),
            Command::Workflow(c) => c.write_body(out),
            Command::JobUpdate(c) => c.write_body(out),
            Command::Admin(c) => c.write_body(out),
            Command::Unknown { body, .. } => out.extend(body.iter().map(|b| b.as_bytes().to_vec())),
            Command::Ready | Command::Kbye | Command::Disconnect => {}
        }
    }
}

#[cfg(test)]
mod tests;
