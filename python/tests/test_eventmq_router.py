"""The Python client against EventMQ 0.3.13's own router: sending works
(with or without a free worker), results and status raise
ResultsUnavailable instead of hanging."""
import os
import subprocess
import tempfile
import time

import pytest

import emq
from conftest import ROOT, Stack, cli_json, eventually, free_slots, start_jobmanager, tcp


@pytest.fixture(scope="module")
def eventmq_router(procs):
    if os.environ.get("EMQ_SKIP_INTEROP") == "1":
        pytest.skip("EMQ_SKIP_INTEROP=1: no EventMQ venv on this machine")
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup-venv.sh")], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, "scripts/setup-venv.sh failed (EMQ_SKIP_INTEROP=1 where PyPI is unreachable):\n" \
        + out.stderr
    venv = out.stdout.strip().splitlines()[-1]
    s = Stack(tcp(), tcp(), tcp())
    work = tempfile.mkdtemp(prefix="emq-pytest-eventmq-")
    procs.start("eventmq-router", [os.path.join(venv, "bin", "emq-router")],
                {"EVENTMQ_FRONTEND_ADDR": s.frontend, "EVENTMQ_BACKEND_ADDR": s.backend,
                 "EVENTMQ_ADMINISTRATIVE_ADDR": s.admin, "EVENTMQ_WAL": os.path.join(work, "wal.log")})
    eventually(30, lambda: cli_json(s.admin, "status", deadline=0.5) is not None, "EventMQ's router STATUS")
    s.work = work
    return s


def lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def test_send_through_eventmq_router_and_no_results(eventmq_router, procs):
    s = eventmq_router
    out = os.path.join(s.work, "lines.txt")
    with emq.Client(s.frontend, receipt_timeout=10) as c:
        # No job manager yet: EventMQ's router buffers the job without a
        # receipt; send() finds out it is EventMQ's router and returns.
        t0 = time.monotonic()
        buffered = c.send("benchjobs.append_line", out, "buffered")
        assert not buffered.receipted
        assert time.monotonic() - t0 < 10
        assert c.supports_results() is False
        t0 = time.monotonic()
        with pytest.raises(emq.ResultsUnavailable, match="does not send results"):
            buffered.result(timeout=60)
        with pytest.raises(emq.ResultsUnavailable):
            buffered.status()
        assert time.monotonic() - t0 < 1, "known once: no second wait"

        start_jobmanager(procs, s.backend, 1)
        eventually(60, lambda: free_slots(s.admin) >= 1, "job manager slots at EventMQ's router")
        eventually(60, lambda: lines(out) == ["buffered"], "the buffered job to run")
        sent = [c.send("benchjobs.append_line", out, "job%d" % i) for i in range(5)]
        with pytest.raises(emq.ResultsUnavailable):
            sent[0].result()
    eventually(60, lambda: len(lines(out)) == 6, "all jobs to run")
    assert sorted(lines(out)) == sorted(["buffered"] + ["job%d" % i for i in range(5)])


def test_first_result_request_at_eventmq_router_does_not_hang(eventmq_router):
    s = eventmq_router
    out = os.path.join(s.work, "lines2.txt")
    with emq.Client(s.frontend) as c:
        job = c.send("benchjobs.append_line", out, "x")  # a worker is free: a receipt
        assert job.receipted
        t0 = time.monotonic()
        with pytest.raises(emq.ResultsUnavailable):
            job.result()
        assert time.monotonic() - t0 < 10
    eventually(60, lambda: lines(out) == ["x"], "the job to run")
