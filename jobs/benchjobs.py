"""Example job module shipped with emq, used by the quick start, the tests
and the benchmarks (the same module for emq, EventMQ and Celery).

Run with e.g. ``emq-send --wait benchjobs.add 2 3``; the job manager finds it
through ``python_path`` (the quick start adds ``jobs/``) or ``PYTHONPATH``.
"""
import os


def add(a, b):
    """Return a + b."""
    return a + b


def noop():
    """Do nothing (for measuring the system, not the job)."""
    return None


def count(values):
    """A chord callback that does next to nothing: how many results it got."""
    return len(values)


def append_line(path, line):
    """Append one line to ``path`` with O_APPEND: concurrent workers never
    interleave partial lines, so counting lines counts finished jobs."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (str(line) + "\n").encode())
    finally:
        os.close(fd)
    return True


def pid_then_sleep(path, secs):
    """Write this worker's pid to ``path``, then sleep (recovery benchmark:
    the worker is killed while it sleeps)."""
    import time
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(secs)
    return True


def progress_loop(secs, per_sec, report=True):
    """Runs ``secs`` seconds, ``per_sec`` steps a second; with ``report``,
    each step calls ``emq.current_job().progress`` (the progress benchmark:
    the same load with and without the calls)."""
    import time

    import emq

    job = emq.current_job() if report else None
    steps = int(secs * per_sec)
    start = time.time()
    for i in range(steps):
        if job is not None:
            job.progress(i + 1, steps, "step %d" % (i + 1))
        delay = start + (i + 1) / per_sec - time.time()
        if delay > 0:
            time.sleep(delay)
    return steps


def spin_append(path, line, ms):
    """CPU-bound work: spin for ``ms`` milliseconds of this thread's CPU
    time (not wall time: a busy machine does not shorten the work), then
    ``append_line`` — the "real work" benchmark's job (scenario 16)."""
    import time
    end = time.thread_time() + ms / 1000.0
    x = 0
    while time.thread_time() < end:
        for _ in range(200):
            x += 1
    return append_line(path, line)
