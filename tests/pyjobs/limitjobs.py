"""Jobs for the limits tests (tests/limits.rs): each logs when it ran so a
test can tell how many ran at once."""

import os
import signal
import time


def _append(path, line):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def span(path, tag, secs):
    """Appends ``start TAG T`` and, ``secs`` later, ``end TAG T`` (T: unix
    seconds)."""
    _append(path, "start %s %.6f" % (tag, time.time()))
    time.sleep(secs)
    _append(path, "end %s %.6f" % (tag, time.time()))
    return tag


def rendezvous(directory, tag, n, timeout):
    """Marks ``tag`` as running, then waits until ``n`` jobs are running at
    once (True) or ``timeout`` seconds pass (False)."""
    open(os.path.join(directory, tag), "w").close()
    end = time.time() + timeout
    while time.time() < end:
        if len(os.listdir(directory)) >= n:
            return True
        time.sleep(0.02)
    return False


def die():
    """Kills its own worker process."""
    os.kill(os.getpid(), signal.SIGKILL)
