"""Issue 26 from the Python client: send(limit=...), Job.status().progress,
and emq.current_job()'s progress / extend / checkpoint (the worker imports
this venv's emq package, so the jobs use the package's CurrentJob)."""
import time

import pytest

import emq
from conftest import eventually, free_slots, start_jobmanager, start_router


@pytest.fixture(scope="module")
def limited(procs):
    """A router with one limit (``api``: one job at a time) and a job
    manager allowed to run the progress test jobs."""
    s = start_router(procs, {"EMQ_LIMITS": "api=concurrency:1", "EMQ_RETRY_DELAY": "0.1"})
    start_jobmanager(procs, s.backend, 1, {"EMQ_ALLOWED_PATHS": "progressjobs,benchjobs"})
    eventually(60, lambda: free_slots(s.admin) >= 1, "job manager slots")
    return s


@pytest.fixture
def lclient(limited):
    with emq.Client(limited.frontend) as c:
        yield c


def test_send_with_a_limit_puts_the_header(lclient):
    job = lclient.send("benchjobs.add", 2, 3, limit="api/customer-42")
    assert job.result(timeout=30) == 5
    assert "limit:api/customer-42" in job.status().raw["headers"].split(",")
    plain = lclient.send("benchjobs.add", 1, 1)
    assert plain.result(timeout=30) == 2
    assert "limit:" not in (plain.status().raw["headers"] or "")


def test_an_unknown_limit_is_refused_with_the_routers_reason(lclient):
    # send() does not wait for the receipt: the refusal comes at result().
    job = lclient.send("benchjobs.add", 2, 3, limit="nope/x")
    with pytest.raises(emq.Refused) as ei:
        job.result(timeout=30)
    assert "unknown limit" in str(ei.value) and "nope" in str(ei.value)
    assert ei.value.msgid == job.msgid


def test_a_malformed_limit_raises_before_sending(lclient):
    for bad in ("", "/x", "a,b", "n" * 129, "a/" + "p" * 257):
        with pytest.raises(ValueError, match="limit"):
            lclient.send("benchjobs.add", 1, 2, limit=bad)
    with pytest.raises(TypeError, match="limit"):
        lclient.send("benchjobs.add", 1, 2, limit=5)


def test_tasks_and_signatures_carry_the_limit():
    @emq.task(limit="api/x")
    def f():
        return 1

    assert f.options["limit"] == "api/x"
    assert emq.sig("benchjobs.add", 1, 2, limit="api").to_dict()["sig"]["limit"] == "api"
    assert "limit" not in emq.sig("benchjobs.add", 1, 2).to_dict()["sig"]
    with pytest.raises(ValueError):
        emq.sig("benchjobs.add", limit="a,b")


def test_status_progress_while_running_and_after(lclient):
    n = 6
    job = lclient.send("progressjobs.count_up", n, 0.4)
    seen = []
    end = time.monotonic() + 60
    while True:
        assert time.monotonic() < end, "the job never ended"
        st = job.status()
        if st.done:
            break
        if st.progress is not None and (not seen or seen[-1] != st.progress["done"]):
            assert st.progress["total"] == n
            seen.append(st.progress["done"])
        time.sleep(0.1)
    assert seen == sorted(seen) and len(set(seen)) == len(seen), seen
    assert len(seen) >= 2, "increasing values seen while it ran: %r" % (seen,)
    assert job.result(30) == n
    p = job.status().progress
    assert (p["done"], p["total"], p["message"]) == (n, n, "step %d" % n)
    assert p["at"] > 1e9


def test_status_progress_is_none_for_a_job_that_said_nothing(lclient):
    job = lclient.send("benchjobs.add", 1, 2)
    assert job.result(30) == 3
    assert job.status().progress is None


def test_a_retried_attempt_reads_the_last_checkpoint(lclient):
    job = lclient.send("progressjobs.checkpoint_then_fail", 7, retries=1)
    assert job.result(60) == {"step": 7}
    assert job.status().attempts == 2


def test_bad_calls_raise_in_the_job(lclient):
    assert len(lclient.send("progressjobs.bad_calls").result(30)) == 8


def test_current_job_outside_a_worker():
    assert emq.current_job() is None
    j = emq.CurrentJob("m", 2)
    msgid, attempt = j  # still the (msgid, attempt) tuple it was
    assert (msgid, attempt) == ("m", 2) and j == ("m", 2) and j.msgid == "m" and j.attempt == 2
    assert j.last_checkpoint is None
    assert emq.CurrentJob("m", 2, '{"step": 3}').last_checkpoint == {"step": 3}
    for call in (lambda: j.progress(1), lambda: j.extend(1), lambda: j.checkpoint({})):
        with pytest.raises(RuntimeError, match="not in an emq worker"):
            call()
