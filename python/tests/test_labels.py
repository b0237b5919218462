"""requires= and on= from Python (issue 28): a job goes only to a job
manager with the labels / name it asks for; bad values are refused before
sending."""
import pytest

import emq
from conftest import eventually, free_slots, start_jobmanager, start_router


@pytest.fixture(scope="module")
def pinned(procs):
    s = start_router(procs)
    start_jobmanager(procs, s.backend, 1, {"EMQ_LABELS": "gpu,eu", "EMQ_NAME": "A"})
    start_jobmanager(procs, s.backend, 1, {"EMQ_NAME": "B"})
    eventually(60, lambda: free_slots(s.admin) >= 2, "both job managers' slots")
    return s


def test_requires_and_on_pick_the_job_manager(pinned):
    with emq.Client(pinned.frontend) as c:
        gpu = [c.send("testjobs.add", i, 1, requires=["gpu"]) for i in range(6)]
        on_b = [c.send("testjobs.add", i, 2, on="B") for i in range(6)]
        both = c.send("testjobs.add", 1, 1, requires=["gpu", "eu"])
        for i, j in enumerate(gpu):
            assert j.result(timeout=60) == i + 1
        for i, j in enumerate(on_b):
            assert j.result(timeout=60) == i + 2
        assert both.result(timeout=60) == 2
        # A job manager's identity at the router starts with its name.
        ran_on = lambda j: j.status().jobmanager.split(":")[0]  # noqa: E731
        assert {ran_on(j) for j in gpu + [both]} == {"A"}
        assert {ran_on(j) for j in on_b} == {"B"}


def test_bad_labels_are_refused_before_sending(pinned):
    with emq.Client(pinned.frontend) as c:
        with pytest.raises(ValueError):
            c.send("testjobs.add", 1, 1, requires=["not a label"])
        with pytest.raises(ValueError):
            c.send("testjobs.add", 1, 1, on="")
