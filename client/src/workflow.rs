//! Workflows on the client side: a [`Canvas`] (signatures composed into
//! chains, groups and chords) flattened into the router's
//! [`WorkflowGraph`] — nodes with parents — that one `WORKFLOW` message
//! carries. The Python client and `emq-send --workflow` give the canvas as
//! JSON ([`Canvas::from_json`]); the flattening is done here only.
//!
//! The rules (as Celery's canvas):
//! - `chain(a, b, c)`: each step's result is the next step's first
//!   argument; a step after a group (or a chord's header) gets the list of
//!   its results.
//! - `group(a, b)`: all at once; its result is the list of results, in order.
//! - `chord(header, callback)`: the callback gets the list of the header's
//!   results. A chain step that is a group followed by another step is
//!   a chord.
//! - `on_error=sig` on a chain, group or chord: runs once, with the failure
//!   as its first argument, when any job inside fails for good.

use crate::client::Options;
use emq_protocol::{OnParentFailure, Pass, ResultOf, RunPayload, WorkflowGraph, WorkflowNode, MAX_WORKFLOW_NODES};
use serde_json::{Map, Value};

/// One job not yet sent: what to run, where, how.
#[derive(Debug, Clone, PartialEq)]
pub struct Sig {
    pub queue: String,
    pub job: RunPayload,
    pub options: Options,
}

/// Jobs composed.
#[derive(Debug, Clone, PartialEq)]
pub enum Canvas {
    Sig(Sig),
    Chain { steps: Vec<Canvas>, on_error: Option<Sig> },
    Group { members: Vec<Canvas>, on_error: Option<Sig> },
    Chord { header: Vec<Canvas>, callback: Box<Canvas>, on_error: Option<Sig> },
}

impl Canvas {
    /// Reads a canvas: `{"sig": {"fn": "pkg.mod.func", "args": [], "kwargs":
    /// {}, "class_args": [], "class_kwargs": {}, "queue": "default",
    /// "retries": N, "timeout": S, "guarantee": bool, "unique": "KEY",
    /// "limit": "NAME/PARTITION"}}`,
    /// `{"chain": [...], "on_error": {sig}}`, `{"group": [...]}`,
    /// `{"chord": [...], "callback": {...}}`.
    pub fn from_json(v: &Value) -> Result<Canvas, String> {
        let obj = v.as_object().ok_or("a canvas item must be an object")?;
        let on_error = match obj.get("on_error") {
            None | Some(Value::Null) => None,
            Some(s) => Some(sig_of(s.get("sig").unwrap_or(s))?),
        };
        if let Some(s) = obj.get("sig") {
            return Ok(Canvas::Sig(sig_of(s)?));
        }
        let list = |key: &str| -> Result<Vec<Canvas>, String> {
            let items = obj[key].as_array().ok_or(format!("{key} must be a list"))?;
            if items.is_empty() {
                return Err(format!("an empty {key}"));
            }
            items.iter().map(Canvas::from_json).collect()
        };
        if obj.contains_key("chain") {
            return Ok(Canvas::Chain { steps: list("chain")?, on_error });
        }
        if obj.contains_key("group") {
            return Ok(Canvas::Group { members: list("group")?, on_error });
        }
        if obj.contains_key("chord") {
            let callback = Box::new(Canvas::from_json(obj.get("callback").ok_or("a chord needs a callback")?)?);
            return Ok(Canvas::Chord { header: list("chord")?, callback, on_error });
        }
        Err("a canvas item is one of sig, chain, group, chord".into())
    }

    /// The graph, with a fresh msgid for every node; `owner` (the client's
    /// owner token) goes in every node's headers.
    pub fn to_graph(&self, owner: &str) -> Result<WorkflowGraph, String> {
        let mut f = Flattener { nodes: Vec::new(), handlers: Vec::new(), owner };
        let (exits, list) = f.add(self, &[], Pass::None)?;
        let handlers = std::mem::take(&mut f.handlers);
        for (sig, watched) in handlers {
            let i = f.push(&sig, &[], Pass::None)?;
            f.nodes[i as usize].on_error_of = watched;
        }
        let result = if list { ResultOf::List(exits) } else { ResultOf::Node(exits[0]) };
        let graph = WorkflowGraph { nodes: f.nodes, result };
        graph.check()?;
        Ok(graph)
    }
}

fn sig_of(v: &Value) -> Result<Sig, String> {
    let name = v["fn"].as_str().ok_or("a sig needs fn: \"pkg.mod.func\"")?;
    let mut job = crate::client::job_for(name).map_err(|e| e.to_string())?;
    let list = |k: &str| -> Result<Vec<Value>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(_) => Err(format!("{k} must be a list")),
        }
    };
    let map = |k: &str| -> Result<Map<String, Value>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(m)) => Ok(m.clone()),
            Some(_) => Err(format!("{k} must be an object")),
        }
    };
    job.args = list("args")?;
    job.kwargs = map("kwargs")?;
    job.class_args = list("class_args")?;
    job.class_kwargs = map("class_kwargs")?;
    let options = Options {
        reply_requested: true,
        guarantee: v["guarantee"].as_bool().unwrap_or(false),
        retry_count: v["retries"].as_u64().map(|n| n.min(u32::MAX as u64) as u32),
        timeout: v["timeout"].as_f64().filter(|t| *t > 0.0).map(|t| t.ceil() as u64),
        unique: v["unique"].as_str().map(str::to_owned),
        run_on_dependency_failure: v["on_parent_failure"].as_str() == Some("run"),
        limit: match v.get("limit") {
            None | Some(Value::Null) => None,
            Some(Value::String(l)) => {
                crate::check_limit(l)?;
                Some(l.clone())
            }
            Some(_) => return Err("limit must be a string: NAME or NAME/PARTITION".into()),
        },
        ..Options::default()
    };
    Ok(Sig { queue: v["queue"].as_str().unwrap_or(emq_protocol::DEFAULT_QUEUE).to_owned(), job, options })
}

struct Flattener<'a> {
    nodes: Vec<WorkflowNode>,
    handlers: Vec<(Sig, Vec<u32>)>,
    owner: &'a str,
}

impl Flattener<'_> {
    fn push(&mut self, sig: &Sig, after: &[u32], pass: Pass) -> Result<u32, String> {
        if self.nodes.len() >= MAX_WORKFLOW_NODES {
            return Err(format!("a workflow has at most {MAX_WORKFLOW_NODES} jobs"));
        }
        let mut headers = sig.options.headers();
        if !headers.is_empty() {
            headers.push(',');
        }
        headers.push_str("owner:");
        headers.push_str(self.owner);
        self.nodes.push(WorkflowNode {
            msgid: emq_protocol::new_msgid(),
            queue: sig.queue.clone(),
            headers,
            payload: sig.job.to_wire(),
            after: after.to_vec(),
            pass: if after.is_empty() { Pass::None } else { pass },
            on_parent_failure: if sig.options.run_on_dependency_failure {
                OnParentFailure::Run
            } else {
                OnParentFailure::Cancel
            },
            on_error_of: Vec::new(),
            name: format!("{}.{}", sig.job.path, sig.job.callable),
        });
        Ok(self.nodes.len() as u32 - 1)
    }

    /// Adds `c` after `parents` (which pass as `pass`); returns its exits
    /// (the nodes whose results are its result) and whether that result
    /// is a list.
    fn add(&mut self, c: &Canvas, parents: &[u32], pass: Pass) -> Result<(Vec<u32>, bool), String> {
        let start = self.nodes.len();
        let out = match c {
            Canvas::Sig(s) => (vec![self.push(s, parents, pass)?], false),
            Canvas::Chain { steps, .. } => {
                let (mut exits, mut list) = (parents.to_vec(), pass == Pass::List);
                let mut first = true;
                for step in steps {
                    let p = if first {
                        pass
                    } else if list {
                        Pass::List
                    } else {
                        Pass::One
                    };
                    first = false;
                    (exits, list) = self.add(step, &exits, p)?;
                }
                (exits, list)
            }
            Canvas::Group { members, .. } => {
                let mut exits = Vec::new();
                for m in members {
                    let (e, _) = self.add(m, parents, pass)?;
                    exits.extend(e);
                }
                (exits, true)
            }
            Canvas::Chord { header, callback, .. } => {
                let mut exits = Vec::new();
                for m in header {
                    let (e, _) = self.add(m, parents, pass)?;
                    exits.extend(e);
                }
                self.add(callback, &exits, Pass::List)?
            }
        };
        let on_error = match c {
            Canvas::Sig(_) => None,
            Canvas::Chain { on_error, .. } | Canvas::Group { on_error, .. } | Canvas::Chord { on_error, .. } => {
                on_error.as_ref()
            }
        };
        if let Some(h) = on_error {
            self.handlers.push((h.clone(), (start as u32..self.nodes.len() as u32).collect()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sig(f: &str) -> Value {
        json!({"sig": {"fn": format!("m.{f}")}})
    }

    #[test]
    fn a_chain_passes_one_result_and_a_group_step_makes_a_chord() {
        let c = Canvas::from_json(&json!({"chain": [sig("a"), {"group": [sig("b"), sig("c")]}, sig("d")],
                                          "on_error": sig("e")}))
        .unwrap();
        let g = c.to_graph("tok").unwrap();
        let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["m.a", "m.b", "m.c", "m.d", "m.e"]);
        assert_eq!((g.nodes[1].after.as_slice(), g.nodes[1].pass), (&[0][..], Pass::One));
        assert_eq!((g.nodes[3].after.as_slice(), g.nodes[3].pass), (&[1, 2][..], Pass::List));
        assert_eq!(g.nodes[4].on_error_of, [0, 1, 2, 3]);
        assert_eq!(g.result, ResultOf::Node(3));
        assert!(g.nodes.iter().all(|n| n.headers.contains("owner:tok") && n.headers.contains("reply-requested")));
    }

    #[test]
    fn a_group_returns_a_list_and_a_chord_feeds_its_callback() {
        let g = Canvas::from_json(&json!({"group": [sig("a"), sig("b")]})).unwrap().to_graph("t").unwrap();
        assert_eq!(g.result, ResultOf::List(vec![0, 1]));
        let g = Canvas::from_json(&json!({"chord": [sig("a"), sig("b"), sig("c")], "callback": sig("s")}))
            .unwrap()
            .to_graph("t")
            .unwrap();
        assert_eq!(g.nodes[3].after, [0, 1, 2]);
        assert_eq!(g.nodes[3].pass, Pass::List);
        assert_eq!(g.result, ResultOf::Node(3));
    }

    #[test]
    fn bad_canvases_say_why() {
        for (v, why) in [
            (json!({"chain": []}), "empty"),
            (json!({"sig": {"args": []}}), "fn"),
            (json!({"nothing": 1}), "one of"),
            (json!({"chord": [sig("a")]}), "callback"),
        ] {
            let e = Canvas::from_json(&v).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }
}
