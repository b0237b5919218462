"""The Python client against real emq-router / emq-jobmanager processes."""
import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import emq
from conftest import cli_json, free_port, start_router


def test_result_of_a_job(client):
    job = client.send("benchjobs.add", 2, 3)
    assert isinstance(job.msgid, str) and len(job.msgid) >= 32
    assert job.receipted
    assert job.result(timeout=30) == 5
    assert job.result() == 5  # kept
    assert job.done() and job.succeeded() and job.exception() is None


def test_the_short_send_path_sends_what_the_full_one_does(client):
    # send("pkg.mod.func", *args) with no option takes a shorter path
    # (Client.send's first branch, NativeClient.send_plain); kwargs={}
    # takes the full one with the same job. Same headers, payload, result.
    for guarantee in (False, True):
        short = client.send("benchjobs.add", 2, 3, guarantee=guarantee)
        full = client.send("benchjobs.add", 2, 3, guarantee=guarantee, kwargs={})
        assert short.result(30) == full.result(30) == 5
        h_short, h_full = short.status().raw["headers"], full.status().raw["headers"]
        assert h_short == h_full
        assert ("guarantee" in h_short.split(",")) == guarantee
    assert client.send("benchjobs.noop").result(30) is None
    with pytest.raises(TypeError):
        client.send("benchjobs.add", object(), 1)
    with pytest.raises(ValueError):
        client.send("benchjobs.add", 1, 2, queue="")
    with pytest.raises(ValueError):
        client.send("no_dot_here")


def test_values_kwargs_and_clashing_names(client):
    job = client.send("testjobs.echo", 1, [2, {"x": None}], kwargs={"queue": "q", "timeout": 9}, y="z")
    assert job.result(30) == {"args": [1, [2, {"x": None}]], "kwargs": {"queue": "q", "timeout": 9, "y": "z"}}


def test_class_method(client):
    job = client.send("pyclient_jobs:Counter.plus", 5, class_args=[10])
    assert job.result(30) == 15


def test_failure_carries_kind_and_traceback(client):
    job = client.send("testjobs.fail", "boom here")
    with pytest.raises(emq.JobFailed) as ei:
        job.result(30)
    e = ei.value
    assert e.kind == "ValueError"
    assert "boom here" in e.message
    assert "Traceback" in e.traceback and "testjobs.py" in e.traceback
    assert e.msgid == job.msgid
    assert "Remote traceback" in str(e)
    assert job.wait(0) and job.done() and not job.succeeded()
    assert isinstance(job.exception(), emq.JobFailed)


def test_job_past_its_timeout_fails_with_kind_timeout(client):
    job = client.send("testjobs.sleep", 30, timeout=1)
    with pytest.raises(emq.JobFailed) as ei:
        job.result(60)
    assert ei.value.kind == "timeout"


def test_waiting_past_the_given_timeout_raises_timeout(client):
    job = client.send("testjobs.sleep", 1.5)
    t0 = time.monotonic()
    with pytest.raises(emq.Timeout):
        job.result(timeout=0.2)
    assert time.monotonic() - t0 < 1.4
    assert not job.wait(0.01)
    assert job.wait(60)
    assert job.result(0) == 1.5


def test_status_after_the_job(client):
    job = client.send("benchjobs.add", 1, 1)
    assert job.result(30) == 2
    st = job.status()
    assert st.msgid == job.msgid
    assert st.state == "done" and st.done
    assert st.attempts == 1
    assert st.jobmanager
    assert st.received <= st.dispatched <= st.finished
    assert client.status("no-such-msgid").state == "unknown"


def test_delayed_job_waits_for_its_time(client):
    import datetime
    job = client.send("benchjobs.add", 4, 4, delay=datetime.timedelta(seconds=1.5))
    assert job.receipted
    assert job.status().state == "delayed"
    assert job.result(30) == 8
    st = job.status()
    assert st.dispatched >= st.received + 1.5
    later = client.send("benchjobs.add", 1, 2, eta=time.time() + 1.0)
    assert later.result(30) == 3
    with pytest.raises(ValueError):
        client.send("benchjobs.add", 1, 2, delay=-1)


def test_retries_and_current_job_attempt(client):
    path = os.path.join(tempfile.mkdtemp(), "attempts.txt")
    job = client.send("pyclient_jobs.fail_first_attempt", path, retries=2)
    assert job.result(60) == 2
    with open(path) as f:
        lines = f.read().split("\n")
    assert lines[:2] == ["%s 1" % job.msgid, "%s 2" % job.msgid]
    st = job.status()
    assert st.attempts == 2 and len(st.errors) == 1 and st.errors[0]["type"] == "RuntimeError"


def test_current_job_in_the_worker_is_the_installed_package(client):
    job = client.send("pyclient_jobs.whoami")
    r = job.result(30)
    assert r["msgid"] == job.msgid == r["attr_msgid"]
    assert r["attempt"] == 1
    assert r["has_client"], "the worker's emq module should be the installed package"
    assert r["module_file"] == emq.__file__


def test_current_job_outside_a_worker_is_none():
    assert emq.current_job() is None


def test_a_job_no_job_manager_allows_waits_at_the_router(client, stack):
    job = client.send("os.getcwd")  # in no job manager's allowed_paths
    with pytest.raises(emq.Timeout):
        job.result(2)
    assert job.status().state == "queued"
    st = cli_json(stack.admin, "status")
    assert "os" in st["waiting_not_allowed"]["default"]["modules"], st
    assert client.send("benchjobs.add", 1, 1).result(30) == 2, "the jobs behind it go on"


def test_refused_by_the_router(procs):
    s = start_router(procs, {"EMQ_HWM": "1"})  # no job manager: one job fits in the buffer
    with emq.Client(s.frontend) as c:
        first = c.send("benchjobs.add", 1, 2)
        assert first.receipted
        # send() does not wait for the receipt (python/README.md, "Sending
        # is pipelined"): the refusal is raised by result(), wait() and
        # receipted.
        second = c.send("benchjobs.add", 3, 4)
        with pytest.raises(emq.Refused) as ei:
            second.result(timeout=10)
        with pytest.raises(emq.Refused):
            second.wait(10)
        with pytest.raises(emq.Refused):
            second.receipted
        assert second.done() and not second.succeeded()
        # unique= keeps waiting for the receipt (it names the job holding
        # the key): refused at once.
        with pytest.raises(emq.Refused) as ei2:
            c.send("benchjobs.add", 5, 6, unique="k")
    assert ei.value.msgid == second.msgid != first.msgid
    assert "refused" in str(ei.value) and "benchjobs.add" in str(ei.value)
    assert ei2.value.msgid not in (first.msgid, second.msgid)


def test_errors_before_sending(client):
    with pytest.raises(ValueError, match="bad callable"):
        client.send("nodots")
    with pytest.raises(ValueError, match="__main__|import path"):
        client.send(lambda: 1)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        client.send("benchjobs.add", object(), 1)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        client.send("benchjobs.add", 1, b=float("nan"))
    with pytest.raises(ValueError):
        client.send("benchjobs.add", 1, 2, retries=-1)


def test_no_router_at_the_address():
    addr = "tcp://127.0.0.1:%d" % free_port()
    t0 = time.monotonic()
    with pytest.raises(emq.ConnectError, match="no router at " + addr):
        emq.Client(addr, connect_timeout=0.3)
    assert time.monotonic() - t0 < 5


def test_default_address_from_environment(stack, monkeypatch):
    monkeypatch.setenv("EMQ_FRONTEND_ADDR", stack.frontend)
    with emq.Client() as c:
        assert c.addr == stack.frontend
        assert c.send("benchjobs.add", 4, 4).result(30) == 8


def test_closed_client(stack):
    with emq.Client(stack.frontend) as c:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        c.send("benchjobs.add", 1, 1)


def test_many_jobs_from_several_threads_on_one_client(client):
    errors, results = [], {}

    def run(t):
        try:
            jobs = [(i, client.send("benchjobs.add", t * 1000, i)) for i in range(60)]
            results[t] = [(i, j.result(60)) for i, j in jobs]
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    for t in range(4):
        assert results[t] == [(i, t * 1000 + i) for i in range(60)]


def test_results_in_completion_order(client):
    jobs = [client.send("testjobs.sleep", s) for s in (1.2, 0.1, 0.6)]
    done = list(client.as_completed(jobs, timeout=60))
    assert [j.msgid for j in done] == [jobs[1].msgid, jobs[2].msgid, jobs[0].msgid]
    more = [client.send("benchjobs.add", i, i) for i in range(30)]
    assert sorted(client.results(more, timeout=60)) == [2 * i for i in range(30)]
    failing = [client.send("testjobs.fail", "x")]
    with pytest.raises(emq.JobFailed):
        list(client.results(failing, timeout=60))
    assert client.map("benchjobs.noop", [], timeout=5) == []


def test_asyncio(client):
    async def main():
        jobs = [client.send("benchjobs.add", i, 1) for i in range(10)]
        values = await asyncio.gather(*jobs)
        failed = client.send("testjobs.fail", "async")
        try:
            await failed
        except emq.JobFailed as e:
            return values, e.kind
        return values, None

    values, kind = asyncio.run(main())
    assert values == [i + 1 for i in range(10)]
    assert kind == "ValueError"


def test_task_decorator(stack, monkeypatch):
    import pyclient_jobs
    assert pyclient_jobs.mul(6, 7) == 42  # runs here
    assert pyclient_jobs.mul.path == "pyclient_jobs.mul"
    monkeypatch.setenv("EMQ_FRONTEND_ADDR", stack.frontend)
    monkeypatch.setattr(emq, "_default", None)
    job = pyclient_jobs.mul.send(4, 5)
    assert job.result(30) == 20
    assert emq.default_client().addr == stack.frontend
    with emq.Client(stack.frontend) as c:
        assert c.send(pyclient_jobs.mul, 2, b=8).result(30) == 16
        assert pyclient_jobs.mul.send_with(3, 3, client=c, timeout=5).result(30) == 9
    emq.default_client().close()


def test_a_refused_connection_is_said_at_once():
    addr = "tcp://127.0.0.1:%d" % free_port()
    # Not after the whole connect_timeout, and not as a time-out.
    with pytest.raises(emq.ConnectError, match=re.escape("no router at %s: connection refused" % addr) + "$"):
        emq.Client(addr, connect_timeout=60)


_OTHER_PROCESS = r'''
import emq, sys
addr, msgid, owner = sys.argv[1], sys.argv[2], (sys.argv[3] or None)
with emq.Client(addr) as c:
    job = c.job(msgid, owner=owner)
    try:
        print("RESULT", job.result(30))
        print("STATE", job.status().state)
    except emq.Error as e:
        print("ERROR", e)
'''


def test_a_job_read_from_another_process_with_its_owner_token(stack):
    with emq.Client(stack.frontend) as c:
        job = c.send("benchjobs.add", 20, 22)
        assert isinstance(job.owner, str) and len(job.owner) >= 32
        owner = job.owner

    def other(token):
        out = subprocess.run([sys.executable, "-c", _OTHER_PROCESS, stack.frontend, job.msgid, token],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split("\n")

    assert other(owner)[:2] == ["RESULT 42", "STATE done"]
    for token in ("", "0" * len(owner)):
        lines = other(token)
        assert lines[0].startswith("ERROR ") and "not shown to this client" in lines[0], lines
        assert not any(line.startswith("RESULT") for line in lines), lines


def test_a_waiting_client_says_once_that_its_router_is_gone(procs, caplog):
    s = start_router(procs)  # no job manager: the job stays buffered
    router = procs.procs[-1]
    with emq.Client(s.frontend) as c:
        job = c.send("benchjobs.add", 1, 2)
        threading.Timer(3.0, router.send_signal, (signal.SIGTERM,)).start()
        with caplog.at_level(logging.INFO, logger="emq"):
            with pytest.raises(emq.Timeout):
                job.result(timeout=12)
    said = [r for r in caplog.records if "has not answered" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert said[0].levelno == logging.WARNING and s.frontend in said[0].getMessage()
    assert router.wait(10) == 0


def test_a_router_and_its_standby_address(stack):
    # The standby binds nothing: the client uses whichever router answers.
    standby = "tcp://127.0.0.1:%d" % free_port()
    with emq.Client("%s,%s" % (standby, stack.frontend)) as c:
        assert c.send("benchjobs.add", 40, 2).result(30) == 42
