//! `WORKFLOW graph_json` (our client → our router, frontend): jobs that
//! depend on each other, sent as one message so the router accepts all of
//! them or none. The graph is flat: the client turns chains, groups and
//! chords into nodes with parents ([`WorkflowNode::after`]), so the router
//! needs one rule only — a node is released when its parents are final.
//!
//! The router answers like a REQUEST: a receipt (`REPLY msgid`) once the
//! whole graph is journaled, or a refusal; then one result (`REPLY
//! reply_json msgid`) when every node is final. EventMQ's router does not
//! know the command and answers nothing; our clients ask first whether the
//! router sends results (JOB_STATUS) and raise `ResultsUnavailable`.

use crate::error::DecodeErrorKind;
use crate::parse::Parse;
use serde::{Deserialize, Serialize};

/// Most nodes in one workflow.
pub const MAX_WORKFLOW_NODES: usize = 10_000;
/// Longest node msgid.
pub const MAX_NODE_MSGID: usize = 128;

/// A workflow as it travels: the graph, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub graph: WorkflowGraph,
}

/// How a node gets its parents' results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pass {
    /// Not at all (`depends_on`).
    #[default]
    None,
    /// Its one parent's result, as the first argument (a chain's step).
    One,
    /// The list of its parents' results, in `after` order, as the first
    /// argument (a chord's callback, a step after a group).
    List,
}

/// What a node does when a parent fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnParentFailure {
    /// It ends `cancelled` ("upstream failed: <msgid>").
    #[default]
    Cancel,
    /// It runs anyway (a failed parent passes `null`).
    Run,
}

/// One job of the graph: a REQUEST's three frames, its msgid (chosen by
/// the client, so a resent workflow names the same jobs) and its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowNode {
    pub msgid: String,
    #[serde(default = "default_queue")]
    pub queue: String,
    #[serde(default)]
    pub headers: String,
    pub payload: String,
    /// Indexes of its parents (each smaller than its own: the graph is
    /// acyclic by construction).
    #[serde(default)]
    pub after: Vec<u32>,
    #[serde(default)]
    pub pass: Pass,
    #[serde(default)]
    pub on_parent_failure: OnParentFailure,
    /// An error handler (`on_error=`): runs once, with the failure as its
    /// first argument, when any of these nodes fails for good; cancelled
    /// when all of them end without failing. Has no `after`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_error_of: Vec<u32>,
    /// The callable's name, for status and logs.
    #[serde(default)]
    pub name: String,
}

fn default_queue() -> String {
    crate::DEFAULT_QUEUE.to_owned()
}

/// Which nodes make the workflow's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultOf {
    /// This node's result (a chain's last step, a chord's callback).
    Node(u32),
    /// The list of these nodes' results (a group).
    List(Vec<u32>),
}

/// The whole graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowGraph {
    pub nodes: Vec<WorkflowNode>,
    pub result: ResultOf,
}

impl WorkflowGraph {
    /// Parses and checks a graph (see [`Self::check`]).
    pub fn from_json(s: &str) -> Result<WorkflowGraph, DecodeErrorKind> {
        let g: WorkflowGraph = serde_json::from_str(s)
            .map_err(|e| DecodeErrorKind::BadJson { field: "workflow", reason: e.to_string() })?;
        g.check().map_err(|reason| DecodeErrorKind::BadJson { field: "workflow", reason })?;
        Ok(g)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a graph serialises")
    }

    /// Whether the graph can be run as given: 1 to [`MAX_WORKFLOW_NODES`]
    /// nodes; distinct non-empty msgids; parents before children; `pass`
    /// fitting the parents; error handlers watching ordinary nodes; a
    /// result naming ordinary nodes; payloads that are JSON arrays.
    pub fn check(&self) -> Result<(), String> {
        let n = self.nodes.len();
        if n == 0 || n > MAX_WORKFLOW_NODES {
            return Err(format!("a workflow has 1 to {MAX_WORKFLOW_NODES} nodes, not {n}"));
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        for (i, node) in self.nodes.iter().enumerate() {
            let at = |what: String| format!("node {i} ({}): {what}", node.msgid);
            if node.msgid.is_empty() || node.msgid.len() > MAX_NODE_MSGID || node.msgid.contains([',', ';']) {
                return Err(at(format!("msgid must be 1 to {MAX_NODE_MSGID} characters without , or ;")));
            }
            if !seen.insert(node.msgid.as_str()) {
                return Err(at("msgid used twice".into()));
            }
            if node.queue.is_empty() {
                return Err(at("empty queue name".into()));
            }
            if !node.payload.trim_start().starts_with('[') {
                return Err(at("payload is not an eMQP run payload".into()));
            }
            let mut parents = std::collections::HashSet::new();
            for &p in &node.after {
                if p as usize >= i {
                    return Err(at(format!("parent {p} is not an earlier node")));
                }
                if !parents.insert(p) {
                    return Err(at(format!("parent {p} named twice")));
                }
                if !self.nodes[p as usize].on_error_of.is_empty() {
                    return Err(at(format!("parent {p} is an error handler")));
                }
            }
            match (node.pass, node.after.len()) {
                (Pass::One, 1) | (Pass::List, 1..) | (Pass::None, _) => {}
                (Pass::One, k) => return Err(at(format!("pass one needs one parent, not {k}"))),
                (Pass::List, _) => return Err(at("pass list needs parents".into())),
            }
            if !node.on_error_of.is_empty() {
                if !node.after.is_empty() {
                    return Err(at("an error handler has no parents".into()));
                }
                for &w in &node.on_error_of {
                    let Some(watched) = self.nodes.get(w as usize) else {
                        return Err(at(format!("watches node {w}, which does not exist")));
                    };
                    if w as usize == i || !watched.on_error_of.is_empty() {
                        return Err(at(format!("watches node {w}, an error handler")));
                    }
                }
            }
        }
        let results = match &self.result {
            ResultOf::Node(i) => std::slice::from_ref(i),
            ResultOf::List(v) => v.as_slice(),
        };
        for &r in results {
            match self.nodes.get(r as usize) {
                Some(node) if node.on_error_of.is_empty() => {}
                _ => return Err(format!("result names node {r}, which is not an ordinary node")),
            }
        }
        Ok(())
    }
}

impl Workflow {
    pub(crate) fn parse_frames<F: AsRef<[u8]>>(p: &mut Parse<'_, F>) -> Result<Self, DecodeErrorKind> {
        Ok(Workflow { graph: WorkflowGraph::from_json(&p.next_string()?)? })
    }

    pub(crate) fn write_body(&self, out: &mut Vec<Vec<u8>>) {
        out.push(self.graph.to_json().into_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(msgid: &str, after: &[u32], pass: Pass) -> WorkflowNode {
        WorkflowNode {
            msgid: msgid.into(),
            queue: "default".into(),
            headers: String::new(),
            payload: r#"["run", {"path": "m", "callable": "f"}]"#.into(),
            after: after.to_vec(),
            pass,
            on_parent_failure: OnParentFailure::Cancel,
            on_error_of: vec![],
            name: "m.f".into(),
        }
    }

    #[test]
    fn a_chord_round_trips() {
        let mut nodes = vec![node("a", &[], Pass::None), node("b", &[], Pass::None), node("cb", &[0, 1], Pass::List)];
        let mut handler = node("err", &[], Pass::None);
        handler.on_error_of = vec![0, 1, 2];
        nodes.push(handler);
        let g = WorkflowGraph { nodes, result: ResultOf::Node(2) };
        let back = WorkflowGraph::from_json(&g.to_json()).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn bad_graphs_are_refused_with_the_reason() {
        let bad = |g: WorkflowGraph, why: &str| {
            let e = g.check().unwrap_err();
            assert!(e.contains(why), "{e:?} should say {why:?}");
        };
        bad(WorkflowGraph { nodes: vec![], result: ResultOf::Node(0) }, "1 to");
        bad(WorkflowGraph { nodes: vec![node("a", &[0], Pass::One)], result: ResultOf::Node(0) }, "not an earlier");
        bad(
            WorkflowGraph {
                nodes: vec![node("a", &[], Pass::None), node("a", &[], Pass::None)],
                result: ResultOf::Node(0),
            },
            "twice",
        );
        bad(
            WorkflowGraph {
                nodes: vec![node("a", &[], Pass::None), node("b", &[], Pass::None), node("c", &[0, 1], Pass::One)],
                result: ResultOf::Node(2),
            },
            "pass one",
        );
        bad(WorkflowGraph { nodes: vec![node("a", &[], Pass::None)], result: ResultOf::List(vec![3]) }, "result");
        let mut h = node("h", &[], Pass::None);
        h.on_error_of = vec![1];
        bad(WorkflowGraph { nodes: vec![node("a", &[], Pass::None), h], result: ResultOf::Node(0) }, "error handler");
        assert!(WorkflowGraph::from_json("{").is_err());
        assert!(WorkflowGraph::from_json(r#"{"nodes": 3, "result": {"node": 0}}"#).is_err());
    }
}
