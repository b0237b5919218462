"""Jobs for the Python client's tests (on the job manager's python path;
the worker imports this venv's `emq` package)."""
import json
import os
import time

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


# ---- workflows (test_workflows.py). Runs are counted in files: the jobs
# run in several worker processes.

def _append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def _lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def add(a, b):
    return a + b


def double(x):
    return 2 * x


def total(values):
    return sum(values)


def boom(*args):
    raise ValueError("boom: %r" % (args,))


def fail_until(x, attempts_path, fails):
    """Fails the first `fails` runs (counted in `attempts_path`), then
    returns 2 * x."""
    _append(attempts_path, "attempt %r" % (x,))
    n = len(_lines(attempts_path))
    if n <= fails:
        raise RuntimeError("run %d of fail_until fails on purpose" % n)
    return 2 * x


def record(x, path, tag):
    """Appends `tag x time` to `path`; returns [tag, x]."""
    _append(path, "%s %s %r" % (tag, repr(time.time()), x))
    return [tag, x]


def on_failure(failure, path):
    """An on_error handler: appends the failure dict (JSON) to `path`."""
    _append(path, json.dumps(failure))
    return "handled"


def gated(gate, path, tag, value=None, fail=False):
    """Appends `start tag time`, waits (at most 60 s) until the file `gate`
    exists, appends `end tag time`; returns `value` or raises ValueError."""
    _append(path, "start %s %r" % (tag, time.time()))
    end = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.02)
    _append(path, "end %s %r" % (tag, time.time()))
    if fail:
        raise ValueError("%s fails on purpose" % tag)
    return value
