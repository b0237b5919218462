"""Job functions for the end-to-end tests, some deliberately misbehaving."""
import os
import random
import sys
import time


def add(a, b):
    return a + b


def _job_manager_pid():
    """The job manager this worker belongs to: its parent, or its parent's
    parent when the worker was forked from the job manager's warm template."""
    parent = os.getppid()
    try:
        with open("/proc/%d/cmdline" % parent, "rb") as f:
            is_template = b"__emq_worker" in f.read()
        if is_template:
            with open("/proc/%d/stat" % parent) as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        pass
    return parent


def pid():
    """The worker's pid and its job manager's (``ppid``)."""
    return {"pid": os.getpid(), "ppid": _job_manager_pid(), "parent": os.getppid()}


def random_after(secs):
    """A random number from this worker's generator (imported before the
    warm template forked it: each worker must have its own state)."""
    time.sleep(secs)
    return {"pid": os.getpid(), "r": random.random()}


def job_manager_after(secs):
    """The pid of the job manager this worker belongs to, after a pause."""
    time.sleep(secs)
    return _job_manager_pid()


def slow_pid(secs):
    """The worker's pid, after a pause (so concurrent calls use every worker)."""
    time.sleep(secs)
    return os.getpid()


def fail(message):
    raise ValueError(message)


def crash(code=1):
    os._exit(code)


def segfault():
    import ctypes
    ctypes.string_at(0)


def sleep(secs):
    time.sleep(secs)
    return secs


def unserialisable():
    return object()


def noisy(value):
    print("this goes to stderr, not into the frame stream")
    sys.stdout.flush()
    return value


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def blob(tag, n):
    """A result of about n bytes: the tag, then n characters."""
    return tag + "x" * n


from benchjobs import append_line  # noqa: E402,F401  (the repo's jobs/ is on the path too)


def _mark(kind):
    path = os.environ.get("EMQTEST_HOOK_FILE")
    if path:
        append_line(path, "%s %d" % (kind, os.getpid()))


def setup():
    _mark("setup")


def broken_setup():
    raise RuntimeError("setup exploded")


def entry():
    _mark("entry")


def exit_():
    _mark("exit")


def flaky(counter_path, fail_times):
    """Fails the first `fail_times` calls (counted in a file), then returns
    the attempt number the worker was told (emq.attempt)."""
    import emq
    n = 0
    if os.path.exists(counter_path):
        with open(counter_path) as f:
            n = int(f.read() or 0)
    n += 1
    with open(counter_path, "w") as f:
        f.write(str(n))
    if n <= fail_times:
        raise RuntimeError("flaky failure %d" % n)
    return {"calls": n, "attempt": emq.attempt, "msgid": emq.msgid}


def ppid_then_sleep(path, secs):
    """Record which job manager runs this, then sleep."""
    jm = _job_manager_pid()
    append_line(path, str(jm))
    time.sleep(secs)
    return jm


def sleep_then_append(path, line, secs):
    """Sleep, then append one line to ``path`` (job order tests)."""
    time.sleep(secs)
    return append_line(path, line)


def run_log(path, tag, secs):
    """Append ``start TAG PID``, sleep, append ``end TAG PID``: a test reads
    the file to tell whether a job ever ran twice at the same time."""
    append_line(path, "start %s %d" % (tag, os.getpid()))
    time.sleep(secs)
    append_line(path, "end %s %d" % (tag, os.getpid()))
    return tag


def member(path, tag, value, secs=0):
    """A chord member: logs ``member TAG``, sleeps ``secs`` and returns
    ``value``."""
    append_line(path, "member %s" % tag)
    if secs:
        time.sleep(secs)
    return value


def chord_sum(values, path, tag):
    """A chord callback: logs ``callback TAG`` and returns the sum of the
    members' values (the list the router passes first)."""
    append_line(path, "callback %s" % tag)
    return sum(values)
