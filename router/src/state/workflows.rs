//! Workflows: jobs that wait for other jobs. One rule drives everything —
//! a held job is released when its parents are final — and three shapes
//! use it:
//! - a `WORKFLOW` (chain, group, chord, flattened by the client into nodes
//!   with parents): every node is held until its parents are done; a node
//!   whose parent failed for good is cancelled ("upstream failed"); an
//!   error handler (`on_error`) runs once when a node it watches fails and
//!   is cancelled when none did; when every node is final the workflow's
//!   result goes to its client;
//! - a REQUEST with `depends_on:ID;ID`: held until those jobs are done
//!   (cancelled when one fails, or run anyway with
//!   `on_dependency_failure:run`);
//! - `unique:KEY`: while a job with that key in that queue is not final,
//!   another REQUEST with the key gets that job instead of a new one.
//!
//! Exactness comes from the journal. The room reacts to one thing only:
//! `Finished` records (live: the records a pass journals, read back by
//! [`RouterState::follow_ends`]; at start: the replayed records), so the
//! same records always rebuild the same state. A release is an ordinary
//! `Accepted` record — replayed, it marks the node released, so a node is
//! released once whatever crashes. What was due but not journaled when the
//! router stopped (a release, a cancel, a workflow's end) is left in
//! [`Workflows::steps`] after the replay and done at the first tick.
//!
//! The room's own records are `Record::Workflow` JSON: `flow` (a workflow
//! accepted, or its snapshot in a checkpoint), `held` (a `depends_on` job,
//! or its snapshot) and `flow_end`.

use super::{Action, JobRecord, JobState, Now, RouterState, SocketKind, StoredRequest, WaitingJob};
use emq_journal::{FinalState, Record};
#[cfg(test)]
use emq_protocol::WorkflowNode;
use emq_protocol::{
    Command, Headers, JobErrorKind, JobReply, Message, OnParentFailure, Pass, Reply, Request, ResultOf, WorkflowGraph,
};
use emq_receiver::PeerId;
use rustc_hash::FxHashMap as HashMap;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Ended workflows whose shape is kept for status (parents, children).
const ENDED_SHAPES: usize = 10_000;
/// ... and at most this many nodes in them all.
const ENDED_SHAPE_NODES: usize = 200_000;

/// A job waiting for its parents.
#[derive(Debug)]
pub(crate) struct HeldJob {
    /// The workflow it belongs to (none: a `depends_on` job).
    pub(crate) flow: Option<Arc<str>>,
    /// Its index in the workflow.
    pub(crate) index: u32,
    /// Who gets its result (empty for workflow nodes: the workflow's
    /// result goes to the client instead).
    pub(crate) client: PeerId,
    pub(crate) queue: String,
    pub(crate) headers: String,
    pub(crate) payload: String,
    pub(crate) received: f64,
    /// What it waits for (for an error handler: what it watches).
    pub(crate) parents: Vec<Arc<str>>,
    /// Its parents' values, in `parents` order (with `pass` one or list).
    pub(crate) inputs: Vec<Value>,
    /// Parents not final yet.
    pending: u32,
    pub(crate) pass: Pass,
    pub(crate) run_on_failure: bool,
    /// An error handler: `Some(failure)` once a watched node failed.
    pub(crate) handler: bool,
    pub(crate) failure: Option<Value>,
    /// A release or cancel is queued: nothing more changes it.
    settled: bool,
    /// Bytes of `inputs` (counted in the room's budget).
    input_bytes: u64,
}

impl HeldJob {
    fn bytes(&self) -> u64 {
        (std::mem::size_of::<Self>()
            + self.queue.len()
            + self.headers.len()
            + self.payload.len()
            + self.parents.iter().map(|p| p.len() + 16).sum::<usize>()) as u64
            + self.input_bytes
    }
}

/// The shape of a workflow: names and edges (kept after its end for
/// status, bounded).
#[derive(Debug)]
pub(crate) struct FlowShape {
    pub(crate) nodes: Vec<Arc<str>>,
    pub(crate) names: Vec<String>,
    pub(crate) after: Vec<Vec<u32>>,
    pub(crate) on_error_of: Vec<Vec<u32>>,
}

/// A workflow under way.
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) shape: Arc<FlowShape>,
    pub(crate) client: PeerId,
    pub(crate) owner: Option<String>,
    pub(crate) reply: bool,
    pub(crate) received: f64,
    pub(crate) result: ResultOf,
    /// Each node's final state, once it ended.
    pub(crate) ended: Vec<Option<FinalState>>,
    /// What ended nodes passed on, kept only where still needed: the value
    /// of a result node or of a node with children still held, and the
    /// error object of a node that did not succeed.
    pub(crate) kept: HashMap<u32, (Value, Value)>,
    /// Bytes of `kept` (in the room's budget until the workflow ends).
    kept_bytes: u64,
    /// Nodes released (their own jobs now).
    pub(crate) released: Vec<bool>,
    /// Nodes not final yet.
    open: u32,
}

/// What a job's end means for a watcher (a workflow's own nodes are found
/// through `member_of`).
#[derive(Debug, Clone)]
enum Watch {
    /// Held job `msgid`, whose parent number `i` this is.
    Child(Arc<str>, u32),
}

/// Work the router must do for the room.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Parents all final (or, for an error handler, a failure to handle):
    /// admit it as a job.
    Release(Arc<str>),
    /// End it `cancelled` with this reason, unrun.
    Cancel(Arc<str>, String),
    /// Every node is final: the workflow's result goes out.
    FlowEnd(Arc<str>),
}

/// How a job ended, as the room needs it.
#[derive(Debug, Clone)]
pub(crate) struct Ended {
    pub(crate) state: FinalState,
    /// The return value (null unless done).
    pub(crate) value: Value,
    /// The error object (`{"type", "message", "traceback"}`), null when done.
    pub(crate) error: Value,
}

impl Ended {
    /// From a `Finished` record's state and result (`reply_json`) and failure.
    pub(crate) fn from_record(state: FinalState, result: &str, failure: Option<&emq_journal::AttemptFailure>) -> Ended {
        let reply: Value = serde_json::from_str(result).unwrap_or(Value::Null);
        let value =
            if state == FinalState::Done { reply.get("value").cloned().unwrap_or(Value::Null) } else { Value::Null };
        let error = if state == FinalState::Done {
            Value::Null
        } else if let Some(e) = reply.get("error").filter(|e| e.is_object()) {
            e.clone()
        } else if let Some(f) = failure {
            json!({"type": f.kind, "message": f.message, "traceback": ""})
        } else {
            json!({"type": state_name(state), "message": state_name(state), "traceback": ""})
        };
        Ended { state, value, error }
    }

    /// Failed for good (not done, not cancelled).
    fn failed(&self) -> bool {
        !matches!(self.state, FinalState::Done | FinalState::Cancelled)
    }
}

fn state_name(s: FinalState) -> &'static str {
    match s {
        FinalState::Done => "done",
        FinalState::Failed => "failed",
        FinalState::Lost => "lost",
        FinalState::Dead => "dead",
        FinalState::Refused => "refused",
        FinalState::Cancelled => "cancelled",
    }
}

fn state_from_name(s: &str) -> Option<FinalState> {
    Some(match s {
        "done" => FinalState::Done,
        "failed" => FinalState::Failed,
        "lost" => FinalState::Lost,
        "dead" => FinalState::Dead,
        "refused" => FinalState::Refused,
        "cancelled" => FinalState::Cancelled,
        _ => return None,
    })
}

/// The workflows room: held jobs, workflows, watchers, unique keys.
#[derive(Default)]
pub(crate) struct Workflows {
    pub(crate) held: HashMap<Arc<str>, HeldJob>,
    watchers: HashMap<Arc<str>, Vec<Watch>>,
    pub(crate) flows: HashMap<Arc<str>, Flow>,
    /// Node → (workflow, index), for live and recently ended workflows.
    member_of: HashMap<Arc<str>, (Arc<str>, u32)>,
    /// Shapes of ended workflows (oldest first) for status.
    ended_shapes: VecDeque<(Arc<str>, Arc<FlowShape>)>,
    ended_index: HashMap<Arc<str>, Arc<FlowShape>>,
    /// Nodes in `ended_shapes`.
    ended_nodes: usize,
    /// (queue, key) → the job holding it, and back.
    unique: HashMap<(Arc<str>, Arc<str>), Arc<str>>,
    unique_of: HashMap<Arc<str>, (Arc<str>, Arc<str>)>,
    pub(crate) steps: VecDeque<Step>,
    /// Bytes of held jobs and their inputs.
    pub(crate) bytes: u64,
}

impl Workflows {
    /// Whether any job's end may matter here (else `Finished` records need
    /// not be read).
    pub(crate) fn watching(&self) -> bool {
        !self.watchers.is_empty() || !self.unique_of.is_empty() || !self.flows.is_empty()
    }

    /// Whether the end of job `msgid` changes anything here (cheap: the
    /// result is only parsed for these).
    pub(crate) fn cares(&self, msgid: &str) -> bool {
        self.watchers.contains_key(msgid)
            || self.unique_of.contains_key(msgid)
            || self.held.contains_key(msgid)
            || self.member_of.get(msgid).is_some_and(|(f, _)| self.flows.contains_key(f))
    }

    // ---- unique keys --------------------------------------------------------

    /// The job holding `key` in `queue`, if any.
    pub(crate) fn unique_holder(&self, queue: &str, key: &str) -> Option<&Arc<str>> {
        self.unique.get(&(Arc::from(queue), Arc::from(key)))
    }

    /// `msgid` holds `key` in `queue` until it is final.
    pub(crate) fn claim_unique(&mut self, queue: &str, key: &str, msgid: &Arc<str>) {
        let k: (Arc<str>, Arc<str>) = (Arc::from(queue), Arc::from(key));
        self.unique.entry(k.clone()).or_insert_with(|| msgid.clone());
        self.unique_of.entry(msgid.clone()).or_insert(k);
    }

    fn free_unique(&mut self, msgid: &str) {
        if let Some(k) = self.unique_of.remove(msgid) {
            if self.unique.get(&k).is_some_and(|m| &**m == msgid) {
                self.unique.remove(&k);
            }
        }
    }

    // ---- intake -------------------------------------------------------------

    /// A workflow accepted: every node held, its roots released (as steps).
    /// `graph` has been checked (or is a checkpoint's snapshot).
    pub(crate) fn accept_flow(
        &mut self,
        id: Arc<str>,
        graph: &WorkflowGraph,
        client: PeerId,
        owner: Option<String>,
        reply: bool,
        received: f64,
    ) {
        let nodes: Vec<Arc<str>> = graph.nodes.iter().map(|n| Arc::from(n.msgid.as_str())).collect();
        let shape = Arc::new(FlowShape {
            nodes: nodes.clone(),
            names: graph.nodes.iter().map(|n| n.name.clone()).collect(),
            after: graph.nodes.iter().map(|n| n.after.clone()).collect(),
            on_error_of: graph.nodes.iter().map(|n| n.on_error_of.clone()).collect(),
        });
        let n = nodes.len();
        self.flows.insert(
            id.clone(),
            Flow {
                shape,
                client,
                owner,
                reply,
                received,
                result: graph.result.clone(),
                ended: vec![None; n],
                kept: HashMap::default(),
                kept_bytes: 0,
                released: vec![false; n],
                open: n as u32,
            },
        );
        for (i, node) in graph.nodes.iter().enumerate() {
            let msgid = nodes[i].clone();
            self.member_of.insert(msgid.clone(), (id.clone(), i as u32));
            let handler = !node.on_error_of.is_empty();
            let parent_ix = if handler { &node.on_error_of } else { &node.after };
            let parents: Vec<Arc<str>> = parent_ix.iter().filter_map(|&p| nodes.get(p as usize).cloned()).collect();
            for (k, p) in parents.iter().enumerate() {
                self.watchers.entry(p.clone()).or_default().push(Watch::Child(msgid.clone(), k as u32));
            }
            let job = HeldJob {
                flow: Some(id.clone()),
                index: i as u32,
                client: PeerId::from(&b""[..]),
                queue: node.queue.clone(),
                headers: node.headers.clone(),
                payload: node.payload.clone(),
                received,
                inputs: vec![Value::Null; if node.pass == Pass::None { 0 } else { parents.len() }],
                pending: parents.len() as u32,
                parents,
                pass: node.pass,
                run_on_failure: node.on_parent_failure == OnParentFailure::Run,
                handler,
                failure: None,
                settled: false,
                input_bytes: 0,
            };
            self.bytes += job.bytes();
            if job.pending == 0 && !handler {
                self.steps.push_back(Step::Release(msgid.clone()));
            }
            self.held.insert(msgid, job);
        }
    }

    /// A `depends_on` job held: `settled` are the parents already final
    /// (their index and end); the others are watched.
    pub(crate) fn hold(&mut self, msgid: Arc<str>, mut job: HeldJob, settled: &[(u32, Ended)]) {
        job.pending = job.parents.len() as u32;
        if job.pass != Pass::None {
            job.inputs = vec![Value::Null; job.parents.len()];
        }
        let done: std::collections::HashSet<u32> = settled.iter().map(|(i, _)| *i).collect();
        for (k, p) in job.parents.iter().enumerate() {
            if !done.contains(&(k as u32)) {
                self.watchers.entry(p.clone()).or_default().push(Watch::Child(msgid.clone(), k as u32));
            }
        }
        self.bytes += job.bytes();
        self.held.insert(msgid.clone(), job);
        for (k, e) in settled {
            self.parent_ended(&msgid, *k, e);
        }
        if self.held.get(&msgid).is_some_and(|j| j.pending == 0 && !j.settled) {
            self.settle(&msgid, Step::Release(msgid.clone()));
        }
    }

    // ---- ends -----------------------------------------------------------------

    /// Job `msgid` is final: what waits for it moves on; its workflow
    /// counts it; its unique key is free.
    pub(crate) fn on_end(&mut self, msgid: &str, ended: &Ended) {
        if let Some(j) = self.held.remove(msgid) {
            self.bytes = self.bytes.saturating_sub(j.bytes());
        }
        self.free_unique(msgid);
        let watches = self.watchers.remove(msgid).unwrap_or_default();
        let feeds_held = !watches.is_empty();
        for Watch::Child(child, k) in watches {
            self.parent_ended(&child, k, ended);
        }
        if let Some((flow, i)) = self.member_of.get(msgid).cloned() {
            self.node_ended(&flow, i, ended, feeds_held);
        }
    }

    fn settle(&mut self, msgid: &Arc<str>, step: Step) {
        if let Some(j) = self.held.get_mut(msgid) {
            j.settled = true;
        }
        self.steps.push_back(step);
    }

    /// Parent number `k` of held job `child` ended.
    fn parent_ended(&mut self, child: &Arc<str>, k: u32, ended: &Ended) {
        let Some(j) = self.held.get_mut(child) else { return };
        if j.settled {
            return;
        }
        j.pending = j.pending.saturating_sub(1);
        if j.handler {
            if ended.failed() {
                let parent = j.parents.get(k as usize).map(|p| p.to_string()).unwrap_or_default();
                let mut failure = ended.error.clone();
                if let Some(o) = failure.as_object_mut() {
                    o.insert("msgid".into(), Value::String(parent));
                    o.insert("state".into(), Value::String(state_name(ended.state).into()));
                }
                j.failure = Some(failure);
                self.settle(child, Step::Release(child.clone()));
            } else if j.pending == 0 {
                self.settle(child, Step::Cancel(child.clone(), "not needed: nothing it watches failed".into()));
            }
            return;
        }
        if ended.state != FinalState::Done && !j.run_on_failure {
            let parent = j.parents.get(k as usize).map(|p| p.to_string()).unwrap_or_default();
            let why = match ended.state {
                FinalState::Cancelled => format!("upstream cancelled: {parent}"),
                _ => format!("upstream failed: {parent}"),
            };
            self.settle(child, Step::Cancel(child.clone(), why));
            return;
        }
        if let Some(slot) = j.inputs.get_mut(k as usize) {
            let extra = serde_json::to_string(&ended.value).map_or(0, |s| s.len()) as u64;
            *slot = ended.value.clone();
            j.input_bytes += extra;
            self.bytes += extra;
        }
        if j.pending == 0 {
            self.settle(child, Step::Release(child.clone()));
        }
    }

    /// Node `i` of workflow `id` ended (`feeds_held`: children of it were
    /// waiting for it).
    fn node_ended(&mut self, id: &Arc<str>, i: u32, ended: &Ended, feeds_held: bool) {
        let Some(f) = self.flows.get_mut(id) else { return };
        let result_node = match &f.result {
            ResultOf::Node(r) => *r == i,
            ResultOf::List(v) => v.contains(&i),
        };
        let Some(slot) = f.ended.get_mut(i as usize) else { return };
        if slot.is_some() {
            return;
        }
        *slot = Some(ended.state);
        let value = if result_node || feeds_held { ended.value.clone() } else { Value::Null };
        if !value.is_null() || !ended.error.is_null() {
            let size = (serde_json::to_string(&value).map_or(0, |s| s.len())
                + serde_json::to_string(&ended.error).map_or(0, |s| s.len())
                + 64) as u64;
            f.kept_bytes += size;
            self.bytes += size;
            f.kept.insert(i, (value, ended.error.clone()));
        }
        f.open = f.open.saturating_sub(1);
        if f.open == 0 {
            self.steps.push_back(Step::FlowEnd(id.clone()));
        }
    }

    // ---- steps ------------------------------------------------------------------

    /// Takes a held job out to run it (none if it is gone or was released).
    pub(crate) fn release(&mut self, msgid: &str) -> Option<HeldJob> {
        let j = self.held.remove(msgid)?;
        self.bytes = self.bytes.saturating_sub(j.bytes());
        if let Some(f) = j.flow.as_ref().and_then(|f| self.flows.get_mut(f)) {
            if let Some(r) = f.released.get_mut(j.index as usize) {
                *r = true;
            }
        }
        Some(j)
    }

    /// Replay: an `Accepted` record for `msgid` — a held job was released.
    pub(crate) fn mark_released(&mut self, msgid: &str) {
        if self.held.contains_key(msgid) {
            self.release(msgid);
        }
    }

    /// A workflow is over: taken out (its shape is kept for status).
    pub(crate) fn end_flow(&mut self, id: &str) -> Option<Flow> {
        let (id, f) = self.flows.remove_entry(id)?;
        self.bytes = self.bytes.saturating_sub(f.kept_bytes);
        self.ended_nodes += f.shape.nodes.len();
        self.ended_index.insert(id.clone(), f.shape.clone());
        self.ended_shapes.push_back((id, f.shape.clone()));
        while self.ended_shapes.len() > ENDED_SHAPES || self.ended_nodes > ENDED_SHAPE_NODES {
            let Some((old, shape)) = self.ended_shapes.pop_front() else { break };
            self.ended_nodes = self.ended_nodes.saturating_sub(shape.nodes.len());
            self.ended_index.remove(&old);
            for n in &shape.nodes {
                if self.member_of.get(n).is_some_and(|(fid, _)| *fid == old) {
                    self.member_of.remove(n);
                }
            }
        }
        Some(f)
    }

    /// Unfinished nodes of workflow `id` (to cancel it).
    pub(crate) fn unfinished(&self, id: &str) -> Vec<(Arc<str>, bool)> {
        let Some(f) = self.flows.get(id) else { return Vec::new() };
        f.shape
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| f.ended[*i].is_none())
            .map(|(i, m)| (m.clone(), f.released[i]))
            .collect()
    }

    /// The shape of workflow `id` (live or recently ended).
    pub(crate) fn shape(&self, id: &str) -> Option<&Arc<FlowShape>> {
        self.flows.get(id).map(|f| &f.shape).or_else(|| self.ended_index.get(id))
    }

    /// The workflow `msgid` is a node of, with its index.
    pub(crate) fn node_of(&self, msgid: &str) -> Option<&(Arc<str>, u32)> {
        self.member_of.get(msgid)
    }

    /// Cancels held job `msgid` (operator or owner): queued as a step.
    pub(crate) fn cancel_held(&mut self, msgid: &str, why: &str) -> bool {
        let Some((k, j)) = self.held.get_key_value(msgid) else { return false };
        if j.settled {
            return false;
        }
        let k = k.clone();
        self.settle(&k, Step::Cancel(k.clone(), why.to_owned()));
        true
    }

    // ---- checkpoints --------------------------------------------------------------

    /// The room's live state as its own records (a checkpoint).
    pub(crate) fn snapshot(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (id, f) in &self.flows {
            let nodes: Vec<Value> = f
                .shape
                .nodes
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let held = self.held.get(m);
                    json!({
                        "msgid": &**m,
                        "name": f.shape.names[i],
                        "after": f.shape.after[i],
                        "on_error_of": f.shape.on_error_of[i],
                        "queue": held.map_or("default", |h| h.queue.as_str()),
                        "headers": held.map_or("", |h| h.headers.as_str()),
                        "payload": held.map_or("", |h| h.payload.as_str()),
                        "pass": held.map_or(Pass::None, |h| h.pass),
                        "on_parent_failure": if held.is_some_and(|h| h.run_on_failure) { "run" } else { "cancel" },
                    })
                })
                .collect();
            let ended: Vec<Value> = f
                .ended
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let (v, err) = f.kept.get(&(i as u32)).cloned().unwrap_or((Value::Null, Value::Null));
                    e.map(|s| json!([i, state_name(s), v, err]))
                })
                .collect();
            let released: Vec<usize> = (0..f.released.len()).filter(|i| f.released[*i]).collect();
            out.push(
                json!({
                    "t": "flow", "id": &**id, "client": hex(f.client.as_bytes()), "owner": f.owner, "reply": f.reply,
                    "received": f.received, "graph": {"nodes": nodes, "result": f.result},
                    "ended": ended, "released": released,
                })
                .to_string(),
            );
        }
        for (msgid, j) in &self.held {
            if j.flow.is_some() {
                continue;
            }
            out.push(held_record(msgid, j, &self.settled_of(msgid, j)).to_string());
        }
        // The keys held (a running job's rebuilt Accepted record may not
        // carry its headers).
        for ((queue, key), msgid) in &self.unique {
            out.push(json!({"t": "unique", "queue": &**queue, "key": &**key, "msgid": &**msgid}).to_string());
        }
        out
    }

    /// The parents of a standalone held job that already ended (those no
    /// longer watched), with what they passed.
    fn settled_of(&self, msgid: &str, j: &HeldJob) -> Vec<(u32, Ended)> {
        j.parents
            .iter()
            .enumerate()
            .filter(|(k, p)| {
                !self.watchers.get(*p).is_some_and(|ws| {
                    ws.iter().any(|w| matches!(w, Watch::Child(c, i) if &**c == msgid && *i as usize == *k))
                })
            })
            .map(|(k, _)| {
                let value = j.inputs.get(k).cloned().unwrap_or(Value::Null);
                (k as u32, Ended { state: FinalState::Done, value, error: Value::Null })
            })
            .collect()
    }

    /// Replays one of the room's records; `Some(..)` for what the router
    /// must also know (history records to make).
    pub(crate) fn replay(&mut self, body: &str) -> Replayed {
        let Ok(v) = serde_json::from_str::<Value>(body) else { return Replayed::Nothing };
        match v["t"].as_str() {
            Some("flow") => {
                let Ok(graph) = serde_json::from_value::<WorkflowGraph>(v["graph"].clone()) else {
                    return Replayed::Nothing;
                };
                let id: Arc<str> = Arc::from(v["id"].as_str().unwrap_or_default());
                let client = PeerId::from(unhex(v["client"].as_str().unwrap_or_default()).as_slice());
                let owner = v["owner"].as_str().map(str::to_owned);
                let received = v["received"].as_f64().unwrap_or(0.0);
                self.accept_flow(
                    id.clone(),
                    &graph,
                    client.clone(),
                    owner.clone(),
                    v["reply"].as_bool().unwrap_or(true),
                    received,
                );
                // A snapshot: what was released and what ended.
                for r in v["released"].as_array().into_iter().flatten() {
                    if let Some(m) = r.as_u64().and_then(|i| graph.nodes.get(i as usize)) {
                        self.mark_released(&m.msgid);
                    }
                }
                for e in v["ended"].as_array().into_iter().flatten() {
                    let (Some(i), Some(state)) = (e[0].as_u64(), e[1].as_str().and_then(state_from_name)) else {
                        continue;
                    };
                    let Some(node) = graph.nodes.get(i as usize) else { continue };
                    self.on_end(&node.msgid, &Ended { state, value: e[2].clone(), error: e[3].clone() });
                }
                Replayed::Flow { id, graph, client, owner, received }
            }
            Some("held") => {
                let msgid: Arc<str> = Arc::from(v["msgid"].as_str().unwrap_or_default());
                let job = HeldJob {
                    flow: None,
                    index: 0,
                    client: PeerId::from(unhex(v["client"].as_str().unwrap_or_default()).as_slice()),
                    queue: v["queue"].as_str().unwrap_or("default").to_owned(),
                    headers: v["headers"].as_str().unwrap_or_default().to_owned(),
                    payload: v["payload"].as_str().unwrap_or_default().to_owned(),
                    received: v["received"].as_f64().unwrap_or(0.0),
                    parents: v["parents"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.as_str().map(Arc::from))
                        .collect(),
                    inputs: Vec::new(),
                    pending: 0,
                    pass: serde_json::from_value(v["pass"].clone()).unwrap_or_default(),
                    run_on_failure: v["run"].as_bool().unwrap_or(false),
                    handler: false,
                    failure: None,
                    settled: false,
                    input_bytes: 0,
                };
                let settled: Vec<(u32, Ended)> = v["settled"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| {
                        let state = e[1].as_str().and_then(state_from_name)?;
                        Some((e[0].as_u64()? as u32, Ended { state, value: e[2].clone(), error: e[3].clone() }))
                    })
                    .collect();
                let (queue, headers, received, client) =
                    (job.queue.clone(), job.headers.clone(), job.received, job.client.clone());
                self.hold(msgid.clone(), job, &settled);
                Replayed::Held { msgid, queue, headers, received, client }
            }
            Some("unique") => {
                if let (Some(q), Some(k), Some(m)) = (v["queue"].as_str(), v["key"].as_str(), v["msgid"].as_str()) {
                    self.claim_unique(q, k, &Arc::from(m));
                }
                Replayed::Nothing
            }
            Some("flow_end") => {
                let id = v["id"].as_str().unwrap_or_default();
                self.end_flow(id);
                let state = v["state"].as_str().and_then(state_from_name).unwrap_or(FinalState::Failed);
                Replayed::FlowEnd {
                    id: id.to_owned(),
                    state,
                    result: v["result"].as_str().unwrap_or_default().to_owned(),
                    at: v["at"].as_f64().unwrap_or(0.0),
                }
            }
            _ => Replayed::Nothing,
        }
    }
}

/// What the router learns from a replayed record of the room.
pub(crate) enum Replayed {
    Nothing,
    Flow { id: Arc<str>, graph: WorkflowGraph, client: PeerId, owner: Option<String>, received: f64 },
    Held { msgid: Arc<str>, queue: String, headers: String, received: f64, client: PeerId },
    FlowEnd { id: String, state: FinalState, result: String, at: f64 },
}

fn held_record(msgid: &str, j: &HeldJob, settled: &[(u32, Ended)]) -> Value {
    json!({
        "t": "held", "msgid": msgid, "client": hex(j.client.as_bytes()), "queue": j.queue, "headers": j.headers,
        "payload": j.payload, "received": j.received, "parents": j.parents.iter().map(|p| &**p).collect::<Vec<_>>(),
        "pass": j.pass, "run": j.run_on_failure,
        "settled": settled.iter().map(|(k, e)| json!([k, state_name(e.state), e.value, e.error])).collect::<Vec<_>>(),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// The payload `payload` with `first` put before its arguments.
fn with_first_arg(payload: &str, first: Value) -> Result<String, String> {
    let mut v: Value = serde_json::from_str(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let body = v.get_mut(1).and_then(Value::as_object_mut).ok_or("payload is not [\"run\", {...}]")?;
    let args = body.entry("args").or_insert_with(|| Value::Array(Vec::new()));
    let Some(list) = args.as_array_mut() else { return Err("args is not a list".into()) };
    list.insert(0, first);
    Ok(v.to_string())
}

impl RouterState {
    /// Reads the `Finished` records journaled since `start` (and those the
    /// steps they cause journal in turn): each job's end moves what waits
    /// for it. Then the due steps run.
    pub(super) fn follow_ends(&mut self, start: usize, now: Now, out: &mut Vec<Action>) {
        let mut i = start;
        loop {
            while i < out.len() {
                if let Action::Journal(Record::Finished { msgid, state, result, failure, .. }) = &out[i] {
                    if self.workflows.cares(msgid) {
                        let ended = Ended::from_record(*state, result, failure.as_ref());
                        let msgid = msgid.clone();
                        self.workflows.on_end(&msgid, &ended);
                    }
                }
                i += 1;
            }
            if self.workflows.steps.is_empty() {
                return;
            }
            self.run_workflow_steps(now, out);
        }
    }

    /// Does what the room asks: releases, cancels, workflow ends.
    pub(super) fn run_workflow_steps(&mut self, now: Now, out: &mut Vec<Action>) {
        while let Some(step) = self.workflows.steps.pop_front() {
            match step {
                Step::Release(msgid) => self.release_held(msgid, now, out),
                Step::Cancel(msgid, why) => {
                    let Some(j) = self.workflows.release(&msgid) else { continue };
                    debug!(%msgid, reason = %why, "held job cancelled");
                    let queue = j.queue.clone();
                    let job = self.held_as_waiting(&msgid, j, now);
                    self.end_unrun(queue, job, JobErrorKind::Cancelled, &why, now, out);
                }
                Step::FlowEnd(id) => self.finish_flow(id, now, out),
            }
        }
    }

    /// Ends a held job `failed` without running it (its payload cannot take
    /// its parents' results): what depends on it is cancelled, `on_error`
    /// runs, the workflow fails.
    fn fail_unrun(&mut self, msgid: &Arc<str>, j: &HeldJob, why: &str, now: Now, out: &mut Vec<Action>) {
        let reply = JobReply::failed(JobErrorKind::BadPayload, why, "").to_json();
        self.outcomes.history.mark(msgid, JobState::Failed, now.unix);
        self.outcomes.history.set_result(msgid, reply.clone());
        out.push(Action::Journal(Record::Finished {
            msgid: msgid.to_string(),
            state: FinalState::Failed,
            at: now.unix,
            result: reply.clone(),
            failure: Some(emq_journal::AttemptFailure {
                attempt: 0,
                kind: JobErrorKind::BadPayload.to_string(),
                message: why.to_owned(),
                at: now.unix,
            }),
        }));
        if !j.client.as_bytes().is_empty() && Headers::parse(&j.headers).reply_requested {
            out.push(Action::Send {
                socket: SocketKind::Frontend,
                peer: j.client.clone(),
                message: Message::new(Command::Reply(Reply::Result {
                    reply_json: reply,
                    orig_msgid: msgid.to_string(),
                })),
            });
        }
    }

    fn held_as_waiting(&self, msgid: &Arc<str>, j: HeldJob, now: Now) -> WaitingJob {
        let request =
            StoredRequest::new(Request { queue: j.queue.clone(), headers: j.headers, payload: j.payload }, &j.queue);
        let _ = now;
        WaitingJob { client: j.client, msgid: msgid.into(), request, received_ms: 0, attempts: 0 }
    }

    /// A held job's parents are final: it becomes an ordinary job, its
    /// parents' results (or the failure it handles) first in its arguments.
    fn release_held(&mut self, msgid: Arc<str>, now: Now, out: &mut Vec<Action>) {
        let Some(j) = self.workflows.release(&msgid) else { return };
        let first = if j.handler {
            j.failure.clone()
        } else {
            match j.pass {
                Pass::None => None,
                Pass::One => Some(j.inputs.first().cloned().unwrap_or(Value::Null)),
                Pass::List => Some(Value::Array(j.inputs.clone())),
            }
        };
        let payload = match first {
            None => Ok(j.payload.clone()),
            Some(v) => with_first_arg(&j.payload, v),
        };
        let payload = match payload {
            Ok(p) => p,
            Err(why) => {
                warn!(%msgid, error = %why, "held job cannot take its parents' results: failed");
                self.count("workflow_bad_payload");
                self.fail_unrun(&msgid, &j, &why, now, out);
                return;
            }
        };
        let request = Request { queue: j.queue.clone(), headers: j.headers.clone(), payload };
        let headers = request.headers();
        let queue = self.resolve_queue(&request.queue);
        let queue_name = self.queue_name(&queue);
        let mut record = JobRecord::queued(queue_name, j.received);
        record.client = self.outcomes.history.get(&msgid).and_then(|r| r.client.clone());
        record.set_sender(None, headers.owner.clone());
        if !request.headers.is_empty() {
            record.extra_mut().headers = Some(request.headers.as_str().into());
        }
        let due = headers.due_at(now.unix);
        let target = if due.is_some() {
            None
        } else {
            self.pick_job_manager(&queue, Some((&request.headers, &request.payload)))
        };
        let placement = match (due, target) {
            (Some(due), _) => super::intake::Placement::Delayed(due),
            (None, Some(jm)) => super::intake::Placement::Dispatch(jm),
            (None, None) => super::intake::Placement::BufferFront,
        };
        debug!(%msgid, %queue, "held job released");
        self.count("workflow_released");
        self.admit(j.client, msgid, request, queue, record, placement, now, out);
    }

    /// Every node of workflow `id` is final: its state and result are
    /// recorded and journaled, and go to its client.
    fn finish_flow(&mut self, id: Arc<str>, now: Now, out: &mut Vec<Action>) {
        let Some(f) = self.workflows.end_flow(&id) else { return };
        let is_handler = |i: usize| !f.shape.on_error_of[i].is_empty();
        let failed = (0..f.ended.len())
            .filter(|i| !is_handler(*i))
            .find(|i| f.ended[*i].is_some_and(|s| !matches!(s, FinalState::Done | FinalState::Cancelled)));
        let cancelled =
            (0..f.ended.len()).filter(|i| !is_handler(*i)).find(|i| f.ended[*i] == Some(FinalState::Cancelled));
        let value_of = |i: u32| f.kept.get(&i).map_or(Value::Null, |(v, _)| v.clone());
        let (state, reply) = match (failed, cancelled) {
            (None, None) => {
                let value = match &f.result {
                    ResultOf::Node(i) => value_of(*i),
                    ResultOf::List(v) => Value::Array(v.iter().map(|i| value_of(*i)).collect()),
                };
                (FinalState::Done, JobReply::ok(value).to_json())
            }
            (Some(i), _) | (None, Some(i)) => {
                let state = f.ended[i].expect("ended");
                let err = f.kept.get(&(i as u32)).map_or(Value::Null, |(_, e)| e.clone());
                let node = &f.shape.nodes[i];
                let name = &f.shape.names[i];
                let kind = err["type"].as_str().unwrap_or(state_name(state)).to_owned();
                let message = format!(
                    "node {node} ({name}) {}: {}",
                    if state == FinalState::Cancelled { "was cancelled" } else { "failed" },
                    err["message"].as_str().unwrap_or("")
                );
                let reply = json!({
                    "value": message,
                    "error": {"type": kind, "message": message, "traceback": err["traceback"].as_str().unwrap_or(""),
                              "node": &**node, "node_name": name},
                });
                let state = if state == FinalState::Cancelled { FinalState::Cancelled } else { FinalState::Failed };
                (state, reply.to_string())
            }
        };
        info!(workflow = %id, state = state_name(state), nodes = f.shape.nodes.len(), "workflow finished");
        self.count("workflows_finished");
        let js = match state {
            FinalState::Done => JobState::Done,
            FinalState::Cancelled => JobState::Cancelled,
            _ => JobState::Failed,
        };
        self.outcomes.history.mark(&id, js, now.unix);
        self.outcomes.history.set_result(&id, reply.clone());
        out.push(Action::Journal(Record::Workflow(
            json!({"t": "flow_end", "id": &*id, "state": state_name(state), "result": reply, "at": now.unix})
                .to_string(),
        )));
        // Also an ordinary job end: jobs that `depends_on` the workflow move on
        // (live through follow_ends, on replay through restore).
        out.push(Action::Journal(Record::Finished {
            msgid: id.to_string(),
            state,
            at: now.unix,
            result: reply.clone(),
            failure: None,
        }));
        if f.reply && !f.client.as_bytes().is_empty() {
            out.push(Action::Send {
                socket: SocketKind::Frontend,
                peer: f.client.clone(),
                message: Message::new(Command::Reply(Reply::Result { reply_json: reply, orig_msgid: id.to_string() })),
            });
        }
    }

    /// A client's WORKFLOW: refused, or journaled whole, its roots
    /// released, and receipted.
    pub(super) fn on_workflow(
        &mut self,
        client: PeerId,
        msgid: String,
        graph: WorkflowGraph,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        use super::intake::Refusal;
        if self.lifecycle.stopping.is_some() {
            return self.refuse(&client, msgid, Refusal::Stopping, out);
        }
        let owner = graph.nodes.first().and_then(|n| {
            Request { queue: String::new(), headers: n.headers.clone(), payload: String::new() }.headers().owner
        });
        let held = self.outcomes.history.get(&msgid).map(|rec| {
            (rec.readable_by(&client, owner.as_deref()), rec.state.is_final().then(|| rec.result.clone()).flatten())
        });
        let held = held.or_else(|| {
            // A live workflow whose history record was evicted.
            self.workflows
                .flows
                .get(msgid.as_str())
                .map(|f| (f.client == client || (f.owner.is_some() && f.owner == owner), None))
        });
        if let Some((same_sender, result)) = held {
            if same_sender {
                self.count("duplicate_requests_answered");
                out.push(Action::SendDurable {
                    socket: SocketKind::Frontend,
                    peer: client.clone(),
                    message: Message::new(Command::Reply(Reply::receipt(msgid.clone()))),
                });
                if let Some(reply_json) = result {
                    out.push(Action::Send {
                        socket: SocketKind::Frontend,
                        peer: client,
                        message: Message::new(Command::Reply(Reply::Result { reply_json, orig_msgid: msgid })),
                    });
                }
                return;
            }
            return self.refuse(&client, msgid, Refusal::DuplicateMsgid, out);
        }
        let taken = graph.nodes.iter().find(|n| {
            self.outcomes.history.get(&n.msgid).is_some()
                || self.in_flight.contains_key(n.msgid.as_str())
                || self.workflows.held.contains_key(n.msgid.as_str())
                || n.msgid == msgid
        });
        if let Some(n) = taken {
            let why = format!("node msgid {} is already in use", n.msgid);
            return self.refuse(&client, msgid, Refusal::BadWorkflow(why), out);
        }
        for n in &graph.nodes {
            if let Err(why) = self.check_limit(emq_protocol::Headers::parse(&n.headers).limit.as_deref()) {
                return self.refuse(&client, msgid, super::Refusal::BadLimit(format!("node {}: {why}", n.msgid)), out);
            }
        }
        let size: u64 = graph.nodes.iter().map(|n| (n.payload.len() + n.headers.len() + 256) as u64).sum();
        if self.workflows.bytes + size > self.cfg.delayed_max_bytes {
            return self.refuse(&client, msgid, Refusal::DelayedFull, out);
        }
        let id: Arc<str> = Arc::from(msgid.as_str());
        // The workflow's own record: its state and, at the end, its result.
        let first_queue = graph.nodes.first().map_or(emq_protocol::DEFAULT_QUEUE, |n| n.queue.as_str()).to_owned();
        self.record_flow(&id, &first_queue, &client, owner.clone(), now.unix);
        for node in &graph.nodes {
            self.record_held(&node.msgid, &node.queue, &node.headers, &client, now.unix);
        }
        out.push(Action::Journal(Record::Workflow(
            json!({
                "t": "flow", "id": &*id, "client": hex(client.as_bytes()), "owner": owner, "reply": true,
                "received": now.unix, "graph": graph,
            })
            .to_string(),
        )));
        info!(workflow = %id, nodes = graph.nodes.len(), peer = %client, "workflow accepted");
        self.count("workflows_accepted");
        self.workflows.accept_flow(id, &graph, client.clone(), owner, true, now.unix);
        self.run_workflow_steps(now, out);
        out.push(Action::SendDurable {
            socket: SocketKind::Frontend,
            peer: client,
            message: Message::new(Command::Reply(Reply::receipt(msgid))),
        });
    }

    /// The history record of a workflow (state `dispatched` while it runs).
    fn record_flow(&mut self, id: &Arc<str>, queue: &str, client: &PeerId, owner: Option<String>, received: f64) {
        let queue = self.queue_name(&self.resolve_queue(queue));
        let mut record = JobRecord::queued(queue, received);
        record.client = Some(client.clone());
        record.set_sender(self.user.clone(), owner);
        record.state = JobState::Dispatched;
        self.outcomes.history.insert(id.clone(), record);
    }

    /// The history record of a held job.
    fn record_held(&mut self, msgid: &str, queue: &str, headers: &str, client: &PeerId, received: f64) {
        let h = Request { queue: String::new(), headers: headers.to_owned(), payload: String::new() }.headers();
        let queue = self.queue_name(&self.resolve_queue(queue));
        let mut record = JobRecord::queued(queue, received);
        record.client = Some(client.clone());
        record.set_sender(self.user.clone(), h.owner);
        record.state = JobState::Held;
        if !headers.is_empty() {
            record.extra_mut().headers = Some(headers.into());
        }
        self.outcomes.history.insert(Arc::from(msgid), record);
    }

    /// A REQUEST with `depends_on`: refused when a dependency is unknown,
    /// else held (or released at once when all are final already).
    pub(super) fn hold_request(
        &mut self,
        client: PeerId,
        msgid: String,
        request: Request,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        use super::intake::Refusal;
        let headers = request.headers();
        if headers.depends_on.len() > emq_protocol::MAX_DEPENDS_ON {
            let why = format!(
                "depends_on names {} jobs (at most {})",
                headers.depends_on.len(),
                emq_protocol::MAX_DEPENDS_ON
            );
            return self.refuse(&client, msgid, Refusal::BadWorkflow(why), out);
        }
        let mut settled = Vec::new();
        for (k, dep) in headers.depends_on.iter().enumerate() {
            if *dep == msgid {
                return self.refuse(&client, msgid, Refusal::BadWorkflow("a job cannot depend on itself".into()), out);
            }
            let live = self.in_flight.contains_key(dep.as_str())
                || self.workflows.held.contains_key(dep.as_str())
                || self.suspects.in_doubt.contains_key(dep.as_str());
            match self.outcomes.history.get(dep) {
                Some(r) if r.state.is_final() && !live => {
                    let state = super::outcome::final_state(r.state);
                    let ended = Ended::from_record(state, r.result.as_deref().unwrap_or(""), None);
                    settled.push((k as u32, ended));
                }
                Some(_) => {}
                None if live => {}
                None => {
                    let why = format!("unknown dependency {dep} (never seen, or older than job_history)");
                    return self.refuse(&client, msgid, Refusal::BadWorkflow(why), out);
                }
            }
        }
        let size = (request.payload.len() + request.headers.len() + 256) as u64;
        if self.workflows.bytes + size > self.cfg.delayed_max_bytes {
            return self.refuse(&client, msgid, Refusal::DelayedFull, out);
        }
        let id: Arc<str> = Arc::from(msgid.as_str());
        self.record_held(&msgid, &request.queue, &request.headers, &client, now.unix);
        let job = HeldJob {
            flow: None,
            index: 0,
            client: client.clone(),
            queue: request.queue.clone(),
            headers: request.headers.clone(),
            payload: request.payload.clone(),
            received: now.unix,
            parents: headers.depends_on.iter().map(|d| Arc::from(d.as_str())).collect(),
            inputs: Vec::new(),
            pending: 0,
            pass: Pass::None,
            run_on_failure: headers.run_on_dependency_failure,
            handler: false,
            failure: None,
            settled: false,
            input_bytes: 0,
        };
        out.push(Action::Journal(Record::Workflow(held_record(&msgid, &job, &settled).to_string())));
        if let Some(key) = &headers.unique {
            self.workflows.claim_unique(&request.queue, key, &id);
        }
        debug!(%msgid, deps = headers.depends_on.len(), "job held until its dependencies are done");
        self.workflows.hold(id, job, &settled);
        self.run_workflow_steps(now, out);
        out.push(Action::SendDurable {
            socket: SocketKind::Frontend,
            peer: client,
            message: Message::new(Command::Reply(Reply::receipt(msgid))),
        });
    }

    /// Replay of one of the room's records.
    pub(super) fn restore_workflow(&mut self, body: &str) {
        match self.workflows.replay(body) {
            Replayed::Nothing => {}
            Replayed::Flow { id, graph, client, owner, received } => {
                let first_queue = graph.nodes.first().map_or("default", |n| n.queue.as_str()).to_owned();
                self.record_flow(&id, &first_queue, &client, owner, received);
                for node in &graph.nodes {
                    if self.workflows.held.contains_key(node.msgid.as_str()) {
                        self.record_held(&node.msgid, &node.queue, &node.headers, &client, received);
                    }
                    // A node's unique key is claimed when it is released (its
                    // Accepted record), live and on replay alike.
                }
            }
            Replayed::Held { msgid, queue, headers, received, client } => {
                if self.workflows.held.contains_key(&msgid) {
                    self.record_held(&msgid, &queue, &headers, &client, received);
                    if let Some(key) = emq_protocol::Headers::parse(&headers).unique {
                        self.workflows.claim_unique(&queue, &key, &msgid);
                    }
                }
            }
            Replayed::FlowEnd { id, state, result, at } => {
                let js = match state {
                    FinalState::Done => JobState::Done,
                    FinalState::Cancelled => JobState::Cancelled,
                    _ => JobState::Failed,
                };
                self.outcomes.history.mark(&id, js, at);
                if !result.is_empty() {
                    self.outcomes.history.set_result(&id, result);
                }
            }
        }
    }

    /// `CANCEL` of a workflow (every unfinished node) or of a held job
    /// (what depends on it follows). None: `msgid` is neither.
    pub(super) fn cancel_in_workflows(&mut self, msgid: &str, now: Now, out: &mut Vec<Action>) -> Option<Value> {
        if self.workflows.flows.contains_key(msgid) {
            let nodes = self.workflows.unfinished(msgid);
            let mut n = 0;
            for (node, released) in &nodes {
                if *released {
                    let _ = self.cancel_json(node, now, out);
                    n += 1;
                } else if self.workflows.cancel_held(node, &format!("workflow {msgid} cancelled")) {
                    n += 1;
                }
            }
            info!(workflow = %msgid, nodes = n, "workflow cancelled");
            return Some(json!({"cancelled": msgid, "was": "workflow", "nodes": n}));
        }
        if self.workflows.cancel_held(msgid, "cancelled while waiting for its dependencies") {
            return Some(json!({"cancelled": msgid, "was": "held"}));
        }
        None
    }

    /// JOB_STATUS of a workflow or a node, with the graph: a workflow's
    /// nodes (msgid, name, state, parents, error handlers), a node's
    /// workflow, parents and children.
    pub(super) fn workflow_status(&self, msgid: &str, status: &mut Value) {
        let node_state = |m: &str| -> &'static str {
            if self.workflows.held.contains_key(m) {
                return "held";
            }
            self.outcomes.history.get(m).map_or("unknown", |r| r.state.as_str())
        };
        if let Some(shape) = self.workflows.shape(msgid) {
            let nodes: Vec<Value> = (0..shape.nodes.len())
                .map(|i| {
                    json!({
                        "msgid": &*shape.nodes[i],
                        "name": shape.names[i],
                        "state": node_state(&shape.nodes[i]),
                        "parents": shape.after[i].iter().filter_map(|p| shape.nodes.get(*p as usize).map(|n| &**n)).collect::<Vec<_>>(),
                        "on_error_of": shape.on_error_of[i].iter().filter_map(|p| shape.nodes.get(*p as usize).map(|n| &**n)).collect::<Vec<_>>(),
                    })
                })
                .collect();
            status["workflow"] = json!({"id": msgid, "nodes": nodes});
            if status.get("error").is_some() {
                status["state"] =
                    json!(if self.workflows.flows.contains_key(msgid) { "dispatched" } else { "unknown" });
            }
            return;
        }
        if let Some((flow, i)) = self.workflows.node_of(msgid) {
            if let Some(shape) = self.workflows.shape(flow) {
                let i = *i as usize;
                let children: Vec<&str> = (0..shape.nodes.len())
                    .filter(|k| shape.after[*k].contains(&(i as u32)))
                    .map(|k| &*shape.nodes[k])
                    .collect();
                status["workflow_id"] = json!(&**flow);
                status["parents"] = json!(shape.after[i]
                    .iter()
                    .filter_map(|p| shape.nodes.get(*p as usize).map(|n| &**n))
                    .collect::<Vec<_>>());
                status["children"] = json!(children);
            }
        } else if let Some(j) = self.workflows.held.get(msgid) {
            status["parents"] = json!(j.parents.iter().map(|p| &**p).collect::<Vec<_>>());
        }
        if self.workflows.held.contains_key(msgid) {
            status["state"] = json!("held");
        }
    }

    /// JOB_STATUS: the job's record, with its place in a workflow.
    pub(super) fn job_status_json(&self, msgid: &str, full: bool) -> String {
        let raw = self.outcomes.history.status_json(msgid, full);
        if !self.workflows.watching()
            && self.workflows.shape(msgid).is_none()
            && self.workflows.node_of(msgid).is_none()
        {
            return raw;
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&raw) else { return raw };
        self.workflow_status(msgid, &mut v);
        v.to_string()
    }

    /// The room's records for a checkpoint.
    pub(super) fn workflow_checkpoint_records(&self) -> Vec<Record> {
        self.workflows.snapshot().into_iter().map(Record::Workflow).collect()
    }

    /// Held jobs (STATUS).
    pub fn held_count(&self) -> usize {
        self.workflows.held.len()
    }

    /// Workflows under way (STATUS).
    pub fn workflow_count(&self) -> usize {
        self.workflows.flows.len()
    }
}

/// A workflow node as the room's tests build it.
#[cfg(test)]
pub(crate) fn test_node(msgid: &str, after: &[u32], pass: Pass) -> WorkflowNode {
    WorkflowNode {
        msgid: msgid.into(),
        queue: "default".into(),
        headers: String::new(),
        payload: r#"["run", {"path": "m", "callable": "f", "args": [1]}]"#.into(),
        after: after.to_vec(),
        pass,
        on_parent_failure: OnParentFailure::Cancel,
        on_error_of: vec![],
        name: msgid.into(),
    }
}

#[cfg(test)]
mod room_tests {
    //! The [`Workflows`] room alone: ends in, steps out.
    use super::*;

    fn done(v: Value) -> Ended {
        Ended { state: FinalState::Done, value: v, error: Value::Null }
    }

    fn failed() -> Ended {
        Ended { state: FinalState::Failed, value: Value::Null, error: json!({"type": "ValueError", "message": "boom"}) }
    }

    fn chord(w: &mut Workflows) {
        let mut nodes = vec![
            test_node("a", &[], Pass::None),
            test_node("b", &[], Pass::None),
            test_node("cb", &[0, 1], Pass::List),
        ];
        let mut h = test_node("err", &[], Pass::None);
        h.on_error_of = vec![0, 1, 2];
        nodes.push(h);
        let g = WorkflowGraph { nodes, result: ResultOf::Node(2) };
        g.check().unwrap();
        w.accept_flow(Arc::from("f"), &g, PeerId::from("c"), None, true, 0.0);
    }

    fn take(w: &mut Workflows) -> Vec<Step> {
        w.steps.drain(..).collect()
    }

    #[test]
    fn a_chord_releases_its_callback_once_with_every_result_in_order() {
        let mut w = Workflows::default();
        chord(&mut w);
        assert_eq!(take(&mut w), [Step::Release("a".into()), Step::Release("b".into())]);
        w.release("a");
        w.release("b");
        w.on_end("b", &done(json!(2)));
        assert!(take(&mut w).is_empty(), "the callback waits for every member");
        w.on_end("a", &done(json!(1)));
        w.on_end("a", &done(json!(1)));
        assert_eq!(take(&mut w), [Step::Release("cb".into())], "released once");
        let cb = w.release("cb").unwrap();
        assert_eq!(cb.inputs, [json!(1), json!(2)], "in the header's order");
        w.on_end("cb", &done(json!(3)));
        assert_eq!(take(&mut w), [Step::Cancel("err".into(), "not needed: nothing it watches failed".into())]);
        w.release("err");
        w.on_end("err", &Ended { state: FinalState::Cancelled, value: Value::Null, error: Value::Null });
        assert_eq!(take(&mut w), [Step::FlowEnd("f".into())]);
        let f = w.end_flow("f").unwrap();
        assert_eq!(f.kept[&2].0, json!(3));
        assert!(w.held.is_empty() && !w.watching() && w.bytes == 0, "nothing left: {} bytes", w.bytes);
    }

    #[test]
    fn a_failed_member_cancels_the_callback_and_runs_the_handler_once() {
        let mut w = Workflows::default();
        chord(&mut w);
        take(&mut w);
        w.release("a");
        w.release("b");
        w.on_end("a", &failed());
        let steps = take(&mut w);
        assert_eq!(steps, [Step::Cancel("cb".into(), "upstream failed: a".into()), Step::Release("err".into())]);
        let h = w.release("err").unwrap();
        assert_eq!(h.failure.as_ref().unwrap()["msgid"], "a");
        w.on_end("b", &failed());
        assert!(take(&mut w).is_empty(), "the handler runs once");
    }

    #[test]
    fn depends_on_with_settled_parents_and_unique_keys() {
        let mut w = Workflows::default();
        let job = |parents: &[&str], run: bool| HeldJob {
            flow: None,
            index: 0,
            client: PeerId::from("c"),
            queue: "q".into(),
            headers: String::new(),
            payload: "[]".into(),
            received: 0.0,
            parents: parents.iter().map(|p| Arc::from(*p)).collect(),
            inputs: vec![],
            pending: 0,
            pass: Pass::None,
            run_on_failure: run,
            handler: false,
            failure: None,
            settled: false,
            input_bytes: 0,
        };
        w.hold("x".into(), job(&["p1", "p2"], false), &[(0, done(json!(null)))]);
        assert!(take(&mut w).is_empty());
        w.on_end("p2", &done(json!(null)));
        assert_eq!(take(&mut w), [Step::Release("x".into())]);
        w.hold("y".into(), job(&["p3"], true), &[]);
        w.on_end("p3", &failed());
        assert_eq!(take(&mut w), [Step::Release("y".into())], "on_dependency_failure=run");
        w.hold("z".into(), job(&["p4"], false), &[]);
        w.on_end("p4", &failed());
        assert_eq!(take(&mut w), [Step::Cancel("z".into(), "upstream failed: p4".into())]);
        let m: Arc<str> = "u1".into();
        w.claim_unique("q", "k", &m);
        w.claim_unique("q", "k", &"u2".into());
        assert_eq!(w.unique_holder("q", "k").map(|a| &**a), Some("u1"));
        assert_eq!(w.unique_holder("other", "k"), None, "keys are per queue");
        w.on_end("u1", &done(json!(1)));
        assert_eq!(w.unique_holder("q", "k"), None, "free again once final");
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_state() {
        let mut w = Workflows::default();
        chord(&mut w);
        take(&mut w);
        w.release("a");
        w.on_end("a", &done(json!(7)));
        let snap = w.snapshot();
        let mut back = Workflows::default();
        for r in &snap {
            back.replay(r);
        }
        // "b" was released before the checkpoint: not released again.
        assert!(back.held.contains_key("b"), "b was never released");
        assert!(!back.held.contains_key("a"));
        back.steps.clear();
        back.release("b");
        back.on_end("b", &done(json!(8)));
        assert_eq!(take(&mut back), [Step::Release("cb".into())]);
        assert_eq!(back.release("cb").unwrap().inputs, [json!(7), json!(8)]);
    }
}
