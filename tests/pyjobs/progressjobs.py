"""Jobs for the progress / extend / checkpoint tests (tests/progress.rs,
python/tests/test_progress.py): they use `emq.current_job()`, from the
client package or the worker's bare `emq` module alike."""

import time

import emq


def _mark(path):
    """Writes the unix time to `path` (replacing what was there)."""
    with open(path, "w") as f:
        f.write(repr(time.time()))


def extend_while(total, every, by):
    """Runs `total` seconds, calling extend(`by`) every `every` seconds;
    returns how long it ran."""
    job = emq.current_job()
    t0 = time.monotonic()
    while time.monotonic() - t0 < total:
        time.sleep(every)
        job.extend(by)
    return time.monotonic() - t0


def extend_then_stop(times, every, by, path):
    """Calls extend(`by`) `times` times, every `every` seconds, writes the
    time of the last one to `path`, then sleeps far past any timeout."""
    job = emq.current_job()
    for _ in range(times):
        time.sleep(every)
        job.extend(by)
    _mark(path)
    time.sleep(600)
    return "never killed"


def extend_forever(every, by, path):
    """Writes its start time to `path`, then extends by `by` every `every`
    seconds, for ever."""
    job = emq.current_job()
    _mark(path)
    while True:
        time.sleep(every)
        job.extend(by)


def count_up(n, pause):
    """Reports progress 1..n of n ("step i"), `pause` seconds apart."""
    job = emq.current_job()
    for i in range(1, n + 1):
        job.progress(i, n, "step %d" % i)
        time.sleep(pause)
    return n


def progress_storm(n):
    """Calls progress() n times in a loop (cheap: coalesced by the worker);
    returns n."""
    job = emq.current_job()
    for i in range(1, n + 1):
        job.progress(i, n)
    return n


def checkpoint_then_fail(k):
    """Attempt 1 checkpoints {"step": k} and raises; a later attempt returns
    its last_checkpoint."""
    job = emq.current_job()
    if job.attempt == 1:
        assert job.last_checkpoint is None, job.last_checkpoint
        job.checkpoint({"step": k - 1})
        job.checkpoint({"step": k})
        raise RuntimeError("attempt 1 fails after its checkpoint")
    return job.last_checkpoint


def bad_calls():
    """Each bad call raises ValueError / TypeError; returns their names."""
    job = emq.current_job()
    seen = []
    for name, exc, f in [
        ("nan progress", ValueError, lambda: job.progress(float("nan"))),
        ("negative progress", ValueError, lambda: job.progress(-1)),
        ("str progress", TypeError, lambda: job.progress("x")),
        ("negative extend", ValueError, lambda: job.extend(-1)),
        ("nan extend", ValueError, lambda: job.extend(float("nan"))),
        ("object checkpoint", TypeError, lambda: job.checkpoint(object())),
        ("nan checkpoint", ValueError, lambda: job.checkpoint(float("nan"))),
        ("huge checkpoint", ValueError, lambda: job.checkpoint("x" * (64 * 1024 + 1))),
    ]:
        try:
            f()
        except exc:
            seen.append(name)
    return seen
