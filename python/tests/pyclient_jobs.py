"""Jobs for the Python client's tests (on the job manager's python path;
the worker imports this venv's `emq` package)."""
import os

import emq


@emq.task(timeout=30)
def mul(a, b):
    return a * b


@emq.task(queue="default", retries=1)
def whoami():
    """The running job as the worker told it, and which `emq` module that is."""
    j = emq.current_job()
    return {"msgid": j.msgid, "attempt": j.attempt, "attr_msgid": emq.msgid,
            "module_file": getattr(emq, "__file__", None), "has_client": hasattr(emq, "Client")}


def fail_first_attempt(path):
    """Fails on attempt 1, returns the attempt number after (retries)."""
    j = emq.current_job()
    with open(path, "a") as f:
        f.write("%s %d\n" % (j.msgid, j.attempt))
    if j.attempt < 2:
        raise RuntimeError("attempt %d fails on purpose" % j.attempt)
    return j.attempt


class Counter:
    def __init__(self, start):
        self.start = start

    def plus(self, n):
        return self.start + n


def worker_pid():
    return os.getpid()
