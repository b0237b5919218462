"""Pipelined sending and batch results (issue 29): send() without waiting for
the receipt (refusals raised at result() / wait()), Client.map / starmap /
send_many / gather, results collected in batches."""
import itertools
import threading
import time

import pytest

import emq
from conftest import start_router

J = "pyclient_jobs."


def test_map_of_10000_jobs_gives_every_value_in_order(client):
    out = client.map(J + "double", range(10000), timeout=120)
    assert out == [2 * i for i in range(10000)]


def test_map_keeps_the_input_order_when_jobs_finish_out_of_order(client):
    secs = [0.6, 0.0, 0.3, 0.1, 0.0, 0.45]
    assert client.map("testjobs.sleep", secs, window=3, timeout=60) == secs
    # A generator, a window far smaller than the batch: many refills.
    assert client.map(J + "double", (i for i in range(500)), window=7, timeout=60) == [2 * i for i in range(500)]
    assert client.map(J + "double", [], timeout=5) == []


def test_map_of_several_iterables_and_starmap(client):
    # As the builtin map: one job per tuple, the shortest iterable ends it.
    assert client.map(J + "add", [1, 2, 3], itertools.repeat(10), timeout=60) == [11, 12, 13]
    assert client.map(J + "add", [1, 2, 3], [10, 20], timeout=60) == [11, 22]
    assert client.starmap(J + "add", [(1, 2), [3, 4], ("a", "b")], timeout=60) == [3, 7, "ab"]
    assert client.starmap(J + "add", iter([]), timeout=5) == []
    # One item is one argument for map, even a tuple (a JSON list there).
    assert client.map("testjobs.echo", [(1, 2)], timeout=60) == [{"args": [[1, 2]], "kwargs": {}}]
    # Shared keyword arguments and options, as send()'s.
    got = client.starmap("testjobs.echo", [(1,), (2, 3), ()], y="z", kwargs={"queue": "q"}, job_timeout=30,
                         retries=1, timeout=60)
    assert got == [{"args": a, "kwargs": {"queue": "q", "y": "z"}} for a in ([1], [2, 3], [])]


def test_map_raises_a_failure_or_returns_it(client):
    with pytest.raises(emq.JobFailed) as ei:
        client.map(J + "double", [1, None, 3], timeout=60)
    assert ei.value.kind == "TypeError" and ei.value.msgid
    out = client.map(J + "double", [1, None, 3], return_exceptions=True, timeout=60)
    assert out[0] == 2 and out[2] == 6
    assert isinstance(out[1], emq.JobFailed) and out[1].kind == "TypeError" and "Traceback" in out[1].traceback
    # The client goes on as before.
    assert client.send(J + "double", 21).result(30) == 42
    assert client.map(J + "double", range(20), timeout=60) == [2 * i for i in range(20)]


def test_map_timeout_when_no_result_comes(client):
    t0 = time.monotonic()
    with pytest.raises(emq.Timeout):
        client.map("testjobs.sleep", [3], timeout=0.3)
    assert time.monotonic() - t0 < 2.5
    assert client.map(J + "double", [5], timeout=30) == [10]


def test_batches_check_their_items_and_options(client):
    with pytest.raises(TypeError, match="item 1 .*JSON-serialisable"):
        client.map(J + "double", [1, object()])
    with pytest.raises(TypeError, match="item 1 is not a tuple"):
        client.starmap(J + "add", [(1, 2), 3])
    with pytest.raises(TypeError, match="item 0 is not a tuple"):
        client.send_many(J + "add", [5])
    with pytest.raises(TypeError, match="item 2 .*JSON-serialisable"):
        client.send_many(J + "add", [(1, 2), (3, 4), (float("nan"), 1)])
    with pytest.raises(ValueError, match="unique"):
        client.map(J + "double", [1], unique="k")
    with pytest.raises(ValueError, match="unique"):
        client.send_many(J + "add", [(1, 2)], unique="k")
    with pytest.raises(ValueError, match="result=False"):
        client.map(J + "double", [1], result=False)
    with pytest.raises(ValueError, match="window"):
        client.map(J + "double", [1], window=0)
    with pytest.raises(TypeError):
        client.map(J + "double")
    with pytest.raises(ValueError, match="bad callable"):
        client.starmap("nodots", [(1,)])


def test_send_many_returns_the_jobs_in_order(client):
    jobs = client.send_many(J + "add", [(i, i) for i in range(300)])
    assert len(jobs) == 300 and len({j.msgid for j in jobs}) == 300
    assert all(j.name == J + "add" and j.queue == "default" for j in jobs)
    assert client.gather(jobs, timeout=60) == [2 * i for i in range(300)]
    assert jobs[7].result(0) == 14 and jobs[7].receipted and jobs[7].done()
    # Shared keyword arguments; each job is a Job like send()'s.
    a, b = client.send_many("testjobs.echo", ((i,) for i in range(2)), k="v")
    assert b.result(30) == {"args": [1], "kwargs": {"k": "v"}}
    assert a.wait(30) and a.result(0) == {"args": [0], "kwargs": {"k": "v"}}
    assert client.send_many(J + "add", []) == []


def test_gather_and_as_completed_collect_in_batches(client):
    jobs = client.send_many(J + "double", [(i,) for i in range(1000)])
    seen = [j.msgid for j in client.as_completed(jobs, timeout=120)]
    assert sorted(seen) == sorted(j.msgid for j in jobs)
    failing = client.send_many(J + "double", [(1,), (None,), (3,)])
    out = client.gather(failing, timeout=60, return_exceptions=True)
    assert out[0] == 2 and isinstance(out[1], emq.JobFailed) and out[2] == 6
    with pytest.raises(emq.JobFailed):
        client.gather(failing, timeout=60)
    # The same job twice: one wait, both places filled.
    j = client.send(J + "double", 4)
    assert client.gather([j, j], timeout=60) == [8, 8]
    with pytest.raises(emq.Timeout):
        client.gather([client.send("testjobs.sleep", 3)], timeout=0.2)


def test_as_completed_sees_a_result_taken_meanwhile(client):
    a, b = client.send("testjobs.sleep", 0.2), client.send("testjobs.sleep", 0.6)
    seen = []
    for j in client.as_completed([a, b], timeout=30):
        seen.append(j.msgid)
        if j is a:
            assert b.result(30) == 0.6  # taken here, not by as_completed
    assert seen == [a.msgid, b.msgid]


def test_send_many_without_results_waits_for_the_receipts(client):
    jobs = client.send_many(J + "double", [(i,) for i in range(50)], result=False)
    assert len(jobs) == 50 and all(j.receipted for j in jobs)
    with pytest.raises(emq.ResultsUnavailable):
        jobs[0].result(1)


def test_send_does_not_wait_for_the_receipt(client):
    job = client.send(J + "double", 8)
    assert job._receipted is None  # sent; the receipt is read when asked for
    assert job.result(30) == 16
    assert job.receipted  # a result means the router accepted it
    other = client.send(J + "double", 9)
    assert other.receipted is True and other.receipt() is True
    assert other.result(30) == 18


def test_map_from_several_threads_on_one_client(client):
    out, errors = {}, []

    def run(t):
        try:
            out[t] = client.map(J + "add", range(400), itertools.repeat(t * 1000), window=50, timeout=120)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(3)]
    for th in threads:
        th.start()
    single = [client.send(J + "double", i) for i in range(30)]
    for th in threads:
        th.join(180)
    assert not errors, errors
    for t in range(3):
        assert out[t] == [t * 1000 + i for i in range(400)]
    assert [j.result(60) for j in single] == [2 * i for i in range(30)]


def test_refusals_of_pipelined_sends_are_raised_at_result_wait_and_by_batches(procs):
    s = start_router(procs, {"EMQ_HWM": "1"})  # no job manager: one job fits in the buffer
    with emq.Client(s.frontend) as c:
        first = c.send("benchjobs.add", 1, 2)
        assert first.receipted
        t0 = time.monotonic()
        later = [c.send("benchjobs.add", i, 1) for i in range(20)]  # not raised here
        assert time.monotonic() - t0 < 5
        for j in later:
            with pytest.raises(emq.Refused) as ei:
                j.result(timeout=10)
            assert ei.value.msgid == j.msgid and "router refused benchjobs.add" in str(ei.value)
            with pytest.raises(emq.Refused):
                j.wait(10)
        assert not first.wait(0.1), "the buffered job is still waiting"
        # map raises the first refusal as it arrives (does not wait for the
        # buffered job).
        with pytest.raises(emq.Refused):
            c.map("benchjobs.add", range(5), itertools.repeat(1), timeout=10)
        out = c.starmap("benchjobs.add", [(1, 1), (2, 2)], return_exceptions=True, timeout=10)
        assert all(isinstance(e, emq.Refused) for e in out)
        jobs = c.send_many("benchjobs.add", [(1, 1), (2, 2)])
        out = c.gather(jobs, timeout=10, return_exceptions=True)
        assert all(isinstance(e, emq.Refused) for e in out)
        with pytest.raises(emq.Refused) as ei:
            c.send_many("benchjobs.add", [(1, 1), (2, 2)], result=False)
        assert len(ei.value.jobs) == 2 and "2 of 2" in str(ei.value)
