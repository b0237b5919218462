"""Workflows (chain, group, chord, on_error), depends_on and unique keys,
end to end: the Python client against real emq-router / emq-jobmanager
processes. Runs are counted in files the jobs (pyclient_jobs.py) append to,
since they run in several worker processes."""
import asyncio
import json
import os
import subprocess
import tempfile
import threading

import pytest

import emq
from conftest import BIN, eventually, free_slots, start_jobmanager, start_router

J = "pyclient_jobs."


def lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


@pytest.fixture
def tmp():
    return tempfile.mkdtemp(prefix="emq-pytest-wf-")


@pytest.fixture
def gate(tmp):
    """A file the `gated` jobs wait for; created at the end whatever
    happens, so no worker stays blocked after a failed test."""
    path = os.path.join(tmp, "gate")
    yield path
    open(path, "w").close()


def open_gate(path):
    open(path, "w").close()


@pytest.fixture(scope="module")
def admin_stack(procs):
    """A router of its own whose data directory (so admin token) is known,
    with one job manager: for the administrative CANCEL."""
    data = tempfile.mkdtemp(prefix="emq-pytest-data-")
    s = start_router(procs, {"EMQ_DATA_DIR": data})
    start_jobmanager(procs, s.backend, 2)
    eventually(60, lambda: free_slots(s.admin) >= 2, "job manager slots")
    s.token_file = os.path.join(data, "admin.token")
    return s


@pytest.fixture
def admin_client(admin_stack):
    with emq.Client(admin_stack.frontend) as c:
        yield c


def admin(s, *args):
    out = subprocess.run([os.path.join(BIN, "emq-cli"), "--addr", s.admin, "--json", "--deadline", "5",
                          "--token-file", s.token_file] + list(args), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def final_status(wf):
    """The workflow's status once every node is final (hang guard only)."""
    return eventually(30, lambda: (lambda st: st if st.all_final and st.nodes else None)(wf.status()),
                      "every node of %s final" % wf.id)


# ---------------------------------------------------------------- canvas (no router)

def test_canvas_json_and_checks():
    c = emq.chain(emq.sig(J + "add", 1, 2, retries=2, timeout=1.5), emq.sig(J + "double", queue="q"),
                  on_error=emq.sig(J + "on_failure", "/tmp/x"))
    d = json.loads(c.to_json())
    assert d["chain"][0] == {"sig": {"fn": J + "add", "args": [1, 2], "kwargs": {}, "queue": "default",
                                     "guarantee": False, "retries": 2, "timeout": 2}}
    assert d["chain"][1]["sig"]["queue"] == "q"
    assert d["on_error"]["sig"]["fn"] == J + "on_failure"
    # group(a, b) == group([a, b]) == group(generator); chord from a group or a list
    a, b = emq.sig(J + "double", 1), emq.sig(J + "double", 2)
    assert emq.group(a, b).to_json() == emq.group([a, b]).to_json() == emq.group(x for x in (a, b)).to_json()
    assert emq.chord(emq.group(a, b), emq.sig(J + "total")).to_json() \
        == emq.chord([a, b], emq.sig(J + "total")).to_json()
    assert json.loads((a | b | emq.sig(J + "total")).to_json())["chain"][2]["sig"]["fn"] == J + "total"
    # functions, tasks, class methods, options
    from pyclient_jobs import Counter, double, mul
    assert emq.sig(double, 3).name == J + "double"
    assert mul.s(2, 3).to_dict()["sig"]["timeout"] == 30
    assert emq.sig(Counter.plus, 1, class_args=[2]).to_dict()["sig"]["fn"] == "pyclient_jobs:Counter.plus"
    s = emq.sig(J + "add", kwargs={"queue": 1}, b=2, unique="k", on_dependency_failure="run")
    assert s.to_dict()["sig"]["kwargs"] == {"queue": 1, "b": 2}
    assert s.to_dict()["sig"]["unique"] == "k" and s.to_dict()["sig"]["on_parent_failure"] == "run"
    args = [1]
    s = emq.sig(J + "double", args)
    args.append(2)
    assert s.args == [[1]], "arguments are copied when the sig is made"
    with pytest.raises(TypeError):
        emq.sig(J + "double", object())
    with pytest.raises(TypeError):
        emq.sig(J + "double", float("nan"))
    with pytest.raises(ValueError):
        emq.sig(lambda: 1)
    with pytest.raises(ValueError):
        emq.sig("nodots")
    for bad in ({"delay": 1}, {"eta": 5}, {"result": False}, {"depends_on": ["x"]}, {"retries": -1},
                {"timeout": 0}, {"unique": "a,b"}, {"on_dependency_failure": "maybe"}):
        with pytest.raises(ValueError):
            emq.sig(J + "double", 1, **bad)
    with pytest.raises(ValueError):
        emq.chain()
    with pytest.raises(ValueError):
        emq.group([])
    with pytest.raises(TypeError):
        emq.chain(a, on_error=emq.group(a, b))
    with pytest.raises(TypeError):
        emq.chain(a, 42)


# ---------------------------------------------------------------- chains

def test_chain_with_a_retried_step_runs_the_next_step_once(client, tmp):
    attempts, runs = os.path.join(tmp, "attempts"), os.path.join(tmp, "runs")
    wf = client.submit(emq.chain(emq.sig(J + "add", 1, 2),
                                 emq.sig(J + "fail_until", attempts, 2, retries=2),  # fails twice, then 2 * 3
                                 emq.sig(J + "record", runs, "step3")))
    assert isinstance(wf, emq.Workflow) and wf.id == wf.msgid
    assert wf.result(timeout=60) == ["step3", 6]
    assert len(lines(attempts)) == 3
    assert len(lines(runs)) == 1 and lines(runs)[0].startswith("step3 ") and lines(runs)[0].endswith(" 6")
    st = wf.status()
    assert isinstance(st, emq.WorkflowStatus) and st.state == "done" and st.done
    assert [n["state"] for n in st.nodes] == ["done"] * 3
    assert client.status(st.nodes[1]["msgid"]).attempts == 3


def test_chain_whose_first_step_fails_runs_nothing_after_it(client, tmp):
    runs = os.path.join(tmp, "runs")
    wf = client.submit(emq.chain(emq.sig(J + "boom", "first"), emq.sig(J + "record", runs, "s2"),
                                 emq.sig(J + "record", runs, "s3")))
    with pytest.raises(emq.JobFailed) as ei:
        wf.result(timeout=60)
    e = ei.value
    st = wf.status()
    first = st.nodes[0]["msgid"]
    assert e.kind == "ValueError" and e.node == first and first in str(e) and first in e.message
    assert e.node_name == J + "boom" and e.msgid == wf.id
    assert "boom" in e.traceback
    assert lines(runs) == []
    assert st.state == "failed"
    assert [n["state"] for n in st.nodes] == ["failed", "cancelled", "cancelled"]
    assert isinstance(wf.exception(), emq.JobFailed)


def test_chain_with_a_group_step_is_a_chord_and_await_works(client):
    wf = client.submit(emq.chain(emq.sig(J + "add", 1, 1),
                                 emq.group(emq.sig(J + "double"), emq.sig(J + "add", 10)),
                                 emq.sig(J + "total")))

    async def main():
        return await wf

    assert asyncio.run(main()) == 4 + 12


# ---------------------------------------------------------------- groups and chords

def test_group_results_in_order(client):
    wf = client.submit(emq.group(emq.sig(J + "add", i, i) for i in range(8)))
    assert wf.result(timeout=60) == [2 * i for i in range(8)]
    one = client.submit(emq.sig(J + "double", 21))  # a single job is a workflow too
    assert one.result(timeout=60) == 42
    assert list(client.as_completed([wf, one], timeout=5)) == [wf, one]


def test_chord_callback_gets_every_result(client):
    wf = client.submit(emq.chord([emq.sig(J + "double", i) for i in range(10)], emq.sig(J + "total")))
    assert wf.result(timeout=60) == sum(2 * i for i in range(10))
    st = wf.status()
    callback = st.nodes[-1]
    assert callback["name"] == J + "total" and sorted(callback["parents"]) == sorted(n["msgid"] for n in st.nodes[:-1])
    elsewhere = client.workflow(wf.id, owner=wf.owner)  # as another process would, with the token
    assert elsewhere.result(timeout=30) == 90 and elsewhere.status().nodes == st.nodes


def test_chord_with_a_failed_member_runs_on_error_once_and_not_the_callback(client, tmp):
    runs, errors = os.path.join(tmp, "runs"), os.path.join(tmp, "errors")
    wf = client.submit(emq.chord([emq.sig(J + "double", 1), emq.sig(J + "boom", "member"), emq.sig(J + "double", 3)],
                                 emq.sig(J + "record", runs, "callback"),
                                 on_error=emq.sig(J + "on_failure", errors)))
    with pytest.raises(emq.JobFailed) as ei:
        wf.result(timeout=60)
    st = final_status(wf)
    by_name = {}
    for n in st.nodes:
        by_name.setdefault(n["name"], []).append(n)
    failed = by_name[J + "boom"][0]
    assert ei.value.node == failed["msgid"] and ei.value.kind == "ValueError"
    assert lines(runs) == [], "the callback never runs"
    assert by_name[J + "record"][0]["state"] == "cancelled"
    handler = by_name[J + "on_failure"][0]
    assert handler["state"] == "done"
    assert set(handler["on_error_of"]) >= {n["msgid"] for n in st.nodes if n is not handler}
    assert failed["state"] == "failed"
    assert [n["state"] for n in by_name[J + "double"]] == ["done", "done"]
    got = lines(errors)
    assert len(got) == 1, got
    failure = json.loads(got[0])
    assert {"type", "message", "traceback", "msgid", "state"} <= set(failure)
    assert failure["type"] == "ValueError" and failure["msgid"] == failed["msgid"]
    assert "member" in failure["message"]


def test_on_error_is_cancelled_when_nothing_fails(client, tmp):
    errors = os.path.join(tmp, "errors")
    wf = client.submit(emq.chain(emq.sig(J + "add", 1, 2), emq.sig(J + "double"),
                                 on_error=emq.sig(J + "on_failure", errors)))
    assert wf.result(timeout=60) == 6
    st = final_status(wf)
    assert [n["state"] for n in st.nodes] == ["done", "done", "cancelled"]
    assert lines(errors) == []


# ---------------------------------------------------------------- depends_on

def test_depends_on_runs_after_its_dependency(client, tmp, gate):
    log = os.path.join(tmp, "log")
    a = client.send(J + "gated", gate, log, "A", value="a")
    eventually(30, lambda: lines(log), "A to start")
    b = client.send(J + "record", "b", log, "B", depends_on=[a])
    c = client.send(J + "record", "c", log, "C", depends_on=[a.msgid, b])
    assert not b.deduplicated
    assert b.status().state == "held" and c.status().state == "held"
    assert b.status().parents == [a.msgid]
    open_gate(gate)
    assert c.result(timeout=60) == ["C", "c"]
    assert a.result(timeout=5) == "a" and b.result(timeout=5) == ["B", "b"]
    got = [line.split() for line in lines(log)]  # "start A t", "end A t", "B t 'b'", "C t 'c'"
    assert [g[0] if g[0] in ("B", "C") else " ".join(g[:2]) for g in got] == ["start A", "end A", "B", "C"]
    assert float(got[1][2]) <= float(got[2][1]) <= float(got[3][1])


def test_a_failed_dependency_cancels_the_dependant_unless_run(client, tmp, gate):
    log, runs = os.path.join(tmp, "log"), os.path.join(tmp, "runs")
    a = client.send(J + "gated", gate, log, "A", fail=True)
    b = client.send(J + "record", "b", runs, "B", depends_on=a)
    c = client.send(J + "record", "c", runs, "C", depends_on=[a], on_dependency_failure="run")
    open_gate(gate)
    with pytest.raises(emq.JobFailed) as ei:
        a.result(timeout=60)
    assert ei.value.kind == "ValueError"
    with pytest.raises(emq.JobFailed) as ei:
        b.result(timeout=60)
    assert ei.value.kind == "cancelled" and a.msgid in ei.value.message
    assert b.status().state == "cancelled"
    assert c.result(timeout=60) == ["C", "c"]
    assert [line.split()[0] for line in lines(runs)] == ["C"]


def test_an_unknown_dependency_is_refused(client):
    # send() does not wait for the receipt: the refusal comes at result() / wait().
    job = client.send(J + "double", 1, depends_on=["no-such-msgid-0000000000000000000000"])
    with pytest.raises(emq.Refused):
        job.result(timeout=30)
    with pytest.raises(emq.Refused):
        job.wait(30)
    with pytest.raises(TypeError):
        client.send(J + "double", 1, depends_on=[42])
    with pytest.raises(ValueError):
        client.send(J + "double", 1, depends_on=["x"], on_dependency_failure="sometimes")


# ---------------------------------------------------------------- unique

def test_unique_key_makes_one_job_for_500_concurrent_sends(client, tmp, gate):
    log = os.path.join(tmp, "log")
    first = client.send(J + "gated", gate, log, "U", value="u", unique="the-key")
    assert not first.deduplicated
    got, errors, dups = [], [], []

    def sender():
        try:
            for _ in range(100):
                j = client.send(J + "gated", gate, log, "U2", value="other", unique="the-key")
                got.append((j.msgid, j.deduplicated))
                dups.append(j)
        except Exception as e:  # noqa: BLE001 — said in the assertion below
            errors.append(e)

    threads = [threading.Thread(target=sender) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(got) == 500
    assert set(got) == {(first.msgid, True)}
    same_key_other_queue = client.send(J + "double", 4, unique="the-key", queue="default-other")
    assert not same_key_other_queue.deduplicated and same_key_other_queue.msgid != first.msgid
    open_gate(gate)
    assert first.result(timeout=60) == "u"
    assert dups[0].result(timeout=60) == "u", "a deduplicated job's result is the holder's"
    assert [line.split()[:2] for line in lines(log)] == [["start", "U"], ["end", "U"]], "exactly one job ran"
    again = client.send(J + "gated", gate, log, "U3", value="again", unique="the-key")
    assert not again.deduplicated and again.msgid != first.msgid
    assert again.result(timeout=60) == "again"
    assert len(lines(log)) == 4
    with pytest.raises(ValueError):
        client.send(J + "double", 1, unique="")


# ---------------------------------------------------------------- status and cancel

def test_workflow_status_lists_nodes_with_parents_and_cancel_ends_them(admin_stack, admin_client, tmp, gate):
    log = os.path.join(tmp, "log")
    client = admin_client
    wf = client.submit(emq.chain(emq.sig(J + "gated", gate, log, "W", value=1),
                                 emq.group(emq.sig(J + "double"), emq.sig(J + "add", 1)),
                                 emq.sig(J + "total")))
    eventually(30, lambda: lines(log), "the first step to start")
    st = wf.status()
    assert st.id == wf.id and st.state == "dispatched" and not st.done
    names = [n["name"] for n in st.nodes]
    assert names == [J + "gated", J + "double", J + "add", J + "total"]
    first, d, a, t = (n["msgid"] for n in st.nodes)
    assert [n["parents"] for n in st.nodes] == [[], [first], [first], [d, a]]
    assert st.nodes[0]["state"] == "dispatched"
    assert [n["state"] for n in st.nodes[1:]] == ["held"] * 3
    node = client.status(d)
    assert node.workflow_id == wf.id and node.parents == [first] and node.children == [t]
    assert node.state == "held"

    # No cancel in the Python client (CANCEL is an administrative command):
    # the operator's emq-cli cancels the workflow.
    out = admin(admin_stack, "cancel", wf.id)
    assert out.get("cancelled") == wf.id and out.get("was") == "workflow", out
    with pytest.raises(emq.JobFailed) as ei:
        wf.result(timeout=60)
    assert ei.value.kind == "cancelled"
    st = final_status(wf)
    assert st.state == "cancelled"
    assert [n["state"] for n in st.nodes] == ["cancelled"] * 4


def test_the_client_cancels_its_own_workflow_and_a_held_job(client, tmp, gate):
    log = os.path.join(tmp, "log")
    wf = client.submit(emq.chain(emq.sig(J + "gated", gate, log, "C", value=1), emq.sig(J + "double"),
                                 emq.sig(J + "double")))
    eventually(30, lambda: lines(log), "the first step to start")
    answer = wf.cancel()
    assert answer.get("cancelled") == wf.id and answer.get("was") == "workflow", answer
    with pytest.raises(emq.JobFailed) as ei:
        wf.result(timeout=60)
    assert ei.value.kind == "cancelled"
    st = final_status(wf)
    assert [n["state"] for n in st.nodes] == ["cancelled"] * 3
    # A plain job held by depends_on: cancelled while it waits.
    first = client.send(J + "gated", gate, log, "D", value=2)
    held = client.send(J + "double", 3, depends_on=[first])
    assert held.cancel().get("was") == "held"
    with pytest.raises(emq.JobFailed) as ei:
        held.result(timeout=30)
    assert ei.value.kind == "cancelled"
    open_gate(gate)
    assert first.result(timeout=60) == 2
    with pytest.raises(emq.Error):
        first.cancel()  # over: nothing to cancel


# ---------------------------------------------------------------- EventMQ's router

def test_submit_to_eventmq_router_raises_results_unavailable(eventmq_router):
    with emq.Client(eventmq_router.frontend) as c:
        with pytest.raises(emq.ResultsUnavailable, match="workflows"):
            c.submit(emq.chain(emq.sig(J + "add", 1, 2), emq.sig(J + "double")))
        with pytest.raises(emq.ResultsUnavailable):
            c.send(J + "double", 1, unique="k")


from test_eventmq_router import eventmq_router  # noqa: E402,F401 — the fixture, for the test above
