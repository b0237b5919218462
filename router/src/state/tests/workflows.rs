//! Workflows through the whole state machine: nodes released in order with
//! their parents' results, and exactly once whatever prefix of the journal
//! a restart replays.

use super::*;
use crate::state::workflows::test_node;
use emq_protocol::{Pass, ResultOf, Workflow, WorkflowGraph};

/// REQUESTs sent to job managers in `out`: (msgid, payload).
fn dispatched(out: &[Action]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for a in out {
        if let Action::Send { socket: SocketKind::Backend, message, .. } = a {
            match &message.command {
                Command::Request(r) => v.push((message.msgid.clone(), r.payload.clone())),
                Command::Requests(rs) => {
                    for (m, r) in &rs.jobs {
                        v.push((m.clone(), r.payload.clone()))
                    }
                }
                _ => {}
            }
        }
    }
    v
}

/// The workflow result sent to `client`, if any.
fn result_for(out: &[Action], id: &str) -> Option<serde_json::Value> {
    out.iter().find_map(|a| match a {
        Action::Send { message, .. } => match &message.command {
            Command::Reply(Reply::Result { reply_json, orig_msgid }) if orig_msgid == id => {
                serde_json::from_str(reply_json).ok()
            }
            _ => None,
        },
        _ => None,
    })
}

fn chain3() -> WorkflowGraph {
    WorkflowGraph {
        nodes: vec![
            test_node("s1", &[], Pass::None),
            test_node("s2", &[0], Pass::One),
            test_node("s3", &[1], Pass::One),
        ],
        result: ResultOf::Node(2),
    }
}

fn chord(n: usize) -> WorkflowGraph {
    let mut nodes: Vec<_> = (0..n).map(|i| test_node(&format!("m{i}"), &[], Pass::None)).collect();
    let after: Vec<u32> = (0..n as u32).collect();
    nodes.push(test_node("cb", &after, Pass::List));
    let mut h = test_node("err", &[], Pass::None);
    h.on_error_of = (0..=n as u32).collect();
    nodes.push(h);
    WorkflowGraph { nodes, result: ResultOf::Node(n as u32) }
}

fn submit(h: &mut Harness, id: &str, g: WorkflowGraph) -> Vec<Action> {
    h.recv_id(SocketKind::Frontend, "client", Message::with_msgid(id, Command::Workflow(Workflow { graph: g })))
}

#[test]
fn a_chain_runs_step_by_step_with_each_result_first_in_the_next_args() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    let out = submit(&mut h, "wf", chain3());
    assert!(
        out.iter().any(|a| matches!(a, Action::Send { message, .. }
        if matches!(&message.command, Command::Reply(Reply::Single { body }) if body == "wf"))),
        "receipt"
    );
    assert_eq!(dispatched(&out).iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), ["s1"]);
    let mut out = h.done("jm", "s1", r#"{"value": 5}"#);
    out.extend(h.ready("jm"));
    let d = dispatched(&out);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].0, "s2");
    let p: serde_json::Value = serde_json::from_str(&d[0].1).unwrap();
    assert_eq!(p[1]["args"], serde_json::json!([5, 1]), "the parent's value first");
    let status: serde_json::Value = serde_json::from_str(&h.r.job_status_json("s3", true)).unwrap();
    assert_eq!(status["state"], "held");
    assert_eq!(status["parents"], serde_json::json!(["s2"]));
    let mut out = h.done("jm", "s2", r#"{"value": [1, 2]}"#);
    out.extend(h.ready("jm"));
    assert_eq!(dispatched(&out)[0].0, "s3");
    let out = h.done("jm", "s3", r#"{"value": "end"}"#);
    assert_eq!(result_for(&out, "wf").unwrap()["value"], "end");
    assert!(result_for(&out, "s3").is_none(), "node results are not sent to the client");
    let st: serde_json::Value = serde_json::from_str(&h.r.job_status_json("wf", true)).unwrap();
    assert_eq!(st["state"], "done");
    assert_eq!(st["workflow"]["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(h.r.held_count() + h.r.workflow_count(), 0);
}

#[test]
fn a_failed_step_cancels_the_rest_and_the_result_names_it() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    submit(&mut h, "wf", chain3());
    let err = r#"{"value": "boom", "error": {"type": "ValueError", "message": "boom", "traceback": ""}}"#;
    let out = h.done("jm", "s1", err);
    let r = result_for(&out, "wf").expect("the workflow ends at once");
    assert_eq!(r["error"]["type"], "ValueError");
    assert!(r["error"]["message"].as_str().unwrap().contains("s1"), "{r}");
    for n in ["s2", "s3"] {
        let st: serde_json::Value = serde_json::from_str(&h.r.job_status_json(n, true)).unwrap();
        assert_eq!(st["state"], "cancelled", "{n}: {st}");
    }
    assert!(dispatched(&h.ready("jm")).is_empty());
}

#[test]
fn depends_on_and_unique_through_the_router() {
    let mut h = Harness::new();
    h.request("client", "a", "default", "reply-requested");
    let out = h.request("client", "b", "default", "reply-requested,depends_on:a");
    assert!(out.iter().any(|a| matches!(a, Action::Send { message, .. }
        if matches!(&message.command, Command::Reply(Reply::Single { body }) if body == "b"))));
    let out = h.request("client", "c", "default", "depends_on:nosuch");
    assert!(result_for(&out, "c").unwrap()["error"]["message"].as_str().unwrap().contains("unknown dependency"));
    h.inform_ours("jm");
    let out = h.ready("jm");
    assert_eq!(dispatched(&out)[0].0, "a");
    let mut out = h.done("jm", "a", r#"{"value": 1}"#);
    out.extend(h.ready("jm"));
    assert_eq!(dispatched(&out)[0].0, "b", "released once a is done");
    // unique: a second send gets the first job.
    h.request("client", "u1", "default", "unique:k");
    let out = h.request("client", "u2", "default", "unique:k");
    assert_eq!(result_for(&out, "u2").unwrap()["deduplicated"], "u1");
    let mut out = h.done("jm", "b", r#"{"value": 2}"#);
    out.extend(h.ready("jm"));
    assert_eq!(dispatched(&out)[0].0, "u1");
    h.done("jm", "u1", r#"{"value": 3}"#);
    let out = h.request("client", "u3", "default", "unique:k");
    assert!(result_for(&out, "u3").is_none(), "the key is free once u1 is final");
}

/// Runs a chord of 3 to its end, journaling everything; then, for every
/// prefix of that journal (a crash after each record), restores a new
/// router from it and runs it to the end: the callback is admitted once
/// and the workflow ends once in every case, with every member's result.
#[test]
fn every_crash_point_releases_the_callback_exactly_once() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    h.ready("jm");
    h.ready("jm");
    submit(&mut h, "wf", chord(3));
    for (i, m) in ["m0", "m1", "m2"].iter().enumerate() {
        h.done("jm", m, &format!(r#"{{"value": {i}}}"#));
    }
    h.ready("jm");
    h.done("jm", "cb", r#"{"value": "sum"}"#);
    let journal = h.journal.clone();
    let admitted = |recs: &[Record], id: &str| {
        recs.iter().filter(|r| matches!(r, Record::Accepted { job, .. } if job.msgid == id)).count()
    };
    let ended =
        |recs: &[Record]| recs.iter().filter(|r| matches!(r, Record::Workflow(b) if b.contains("flow_end"))).count();
    assert_eq!((admitted(&journal, "cb"), ended(&journal)), (1, 1));
    for cut in 0..=journal.len() {
        let now = Now::real();
        let mut r = RouterState::new(cfg(), now);
        for rec in &journal[..cut] {
            r.restore(rec.clone());
        }
        r.finish_restore(now);
        let mut h2 = Harness::with(r, now);
        h2.tick();
        // The job manager re-attaches and reports what it ran (a job in
        // doubt is its again); then whatever it is handed, it runs.
        let value =
            |m: &str| if m == "cb" { r#"{"value": "sum"}"#.to_owned() } else { format!(r#"{{"value": "{m}"}}"#) };
        let mut out = h2.inform_ours("jm");
        for m in ["m0", "m1", "m2", "cb"] {
            out.extend(h2.done("jm", m, &value(m)));
        }
        for _ in 0..4 {
            out.extend(h2.ready("jm"));
        }
        for _ in 0..6 {
            let mut next = Vec::new();
            for (m, _) in dispatched(&out) {
                next.extend(h2.done("jm", &m, &value(&m)));
                next.extend(h2.ready("jm"));
            }
            out = next;
        }
        let accepted = journal[..cut].iter().any(|r| matches!(r, Record::Workflow(b) if b.contains(r#""t":"flow""#)));
        if !accepted {
            // Never journaled: no receipt went out; the client sends it again.
            assert_eq!((admitted(&h2.journal, "cb"), ended(&h2.journal), h2.r.workflow_count()), (0, 0, 0));
            continue;
        }
        let all: Vec<Record> = journal[..cut].iter().cloned().chain(h2.journal.iter().cloned()).collect();
        assert!(admitted(&all, "cb") <= 1, "cut {cut}: callback admitted {} times", admitted(&all, "cb"));
        assert_eq!(ended(&all), 1, "cut {cut}: the workflow ends once");
        assert_eq!(admitted(&all, "cb"), 1, "cut {cut}: the callback ran");
        assert_eq!(h2.r.held_count() + h2.r.workflow_count(), 0, "cut {cut}: nothing left waiting");
    }
}

/// A checkpoint taken mid-chord rebuilds the same state: the callback
/// still gets every member's value.
#[test]
fn a_checkpoint_mid_workflow_keeps_the_members_values() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    h.ready("jm");
    submit(&mut h, "wf", chord(2));
    h.done("jm", "m0", r#"{"value": 10}"#);
    let now = h.now;
    let snapshot = h.r.checkpoint_records(now);
    let mut r = RouterState::new(cfg(), now);
    for rec in snapshot {
        r.restore(rec);
    }
    r.finish_restore(now);
    let mut h2 = Harness::with(r, now);
    h2.inform_ours("jm");
    let mut out = h2.done("jm", "m1", r#"{"value": 20}"#);
    out.extend(h2.ready("jm"));
    out.extend(h2.ready("jm"));
    let d = dispatched(&out);
    let cb = d.iter().find(|(m, _)| m == "cb").expect("callback dispatched");
    let p: serde_json::Value = serde_json::from_str(&cb.1).unwrap();
    assert_eq!(p[1]["args"][0], serde_json::json!([10, 20]));
}

/// A node's REQUEST leaves only once its Dispatched record is durable (a
/// crash cannot forget a dispatch that ran); a plain job's goes at once.
#[test]
fn a_node_is_dispatched_after_its_record_is_durable() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    h.ready("jm");
    let m = Message::with_msgid("wf", Command::Workflow(Workflow { graph: chain3() }));
    let raw = h.r.handle_vec(
        Event::Received { socket: SocketKind::Frontend, peer: PeerId::from("client"), message: Ok(m), user: None },
        h.now,
    );
    assert!(
        raw.iter().any(|a| matches!(a, Action::SendDurable { socket: SocketKind::Backend, message, .. }
        if message.msgid == "s1")),
        "{raw:?}"
    );
    let r = Request { queue: "default".into(), headers: String::new(), payload: "[\"run\", {}]".into() };
    let m = Message::with_msgid("plain", Command::Request(r));
    let raw = h.r.handle_vec(
        Event::Received { socket: SocketKind::Frontend, peer: PeerId::from("client"), message: Ok(m), user: None },
        h.now,
    );
    assert!(
        raw.iter().any(|a| matches!(a, Action::Send { socket: SocketKind::Backend, message, .. }
        if message.msgid == "plain")),
        "{raw:?}"
    );
}

/// A job that `depends_on` a workflow runs once the workflow is done.
#[test]
fn depends_on_a_workflow_waits_for_its_end() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    submit(&mut h, "wf", chain3());
    h.request("client", "after", "default", "reply-requested,depends_on:wf");
    for (step, v) in [("s1", "1"), ("s2", "2")] {
        h.done("jm", step, &format!(r#"{{"value": {v}}}"#));
        h.ready("jm");
    }
    let mut out = h.done("jm", "s3", r#"{"value": 3}"#);
    out.extend(h.ready("jm"));
    assert_eq!(dispatched(&out).first().map(|d| d.0.as_str()), Some("after"), "{out:?}");
}

/// A node whose payload cannot take its parent's result fails (it is not
/// "cancelled"): the workflow fails naming it.
#[test]
fn a_node_that_cannot_take_its_inputs_fails_the_workflow() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    let mut g = chain3();
    g.nodes[1].payload = r#"["run", {"path": "m", "callable": "f", "args": "not a list"}]"#.into();
    submit(&mut h, "wf", g);
    let out = h.done("jm", "s1", r#"{"value": 1}"#);
    let r = result_for(&out, "wf").expect("the workflow ends");
    assert_eq!(r["error"]["type"], "BadPayload", "{r}");
    let st: serde_json::Value = serde_json::from_str(&h.r.job_status_json("s2", true)).unwrap();
    assert_eq!(st["state"], "failed");
}

/// A running job's unique key survives a checkpoint and restart (its
/// rebuilt Accepted record may not carry its headers).
#[test]
fn a_unique_key_survives_a_checkpoint() {
    let mut h = Harness::new();
    h.inform_ours("jm");
    h.ready("jm");
    h.request("client", "u1", "default", "unique:k");
    let now = h.now;
    let mut r = RouterState::new(cfg(), now);
    for rec in h.r.checkpoint_records(now) {
        r.restore(rec);
    }
    r.finish_restore(now);
    let mut h2 = Harness::with(r, now);
    let out = h2.request("client", "u2", "default", "unique:k");
    assert_eq!(result_for(&out, "u2").map(|v| v["deduplicated"].clone()), Some(serde_json::json!("u1")));
}
