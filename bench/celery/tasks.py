"""Celery app for the Celery 5 + Redis column of benchmark scenario 1.

One task, ``append_line(path, line)``, which calls the very same function the
other systems run: ``append_line`` from <repo>/jobs/benchjobs.py (imported via
sys.path), so the job code is identical for emq, EventMQ and Celery.

Broker: ``redis://127.0.0.1:$BENCH_REDIS_PORT/0``; no result backend.
Settings are Celery's defaults except where noted below.
"""
import os
import sys

from celery import Celery

_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(_REPO, "jobs"))
import benchjobs  # noqa: E402  (the shared job module)

PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))

app = Celery("tasks", broker="redis://127.0.0.1:%d/0" % PORT)
app.conf.update(
    # No result backend (Celery's default is none; stated for clarity).
    result_backend=None,
    # Ack on receipt (the default): fire-and-forget, no redelivery.
    task_acks_late=False,
    # worker_prefetch_multiplier is left at its default (4 per process, i.e.
    # 8 unacked messages in flight for concurrency 2): good for throughput
    # with short tasks and not pathological.
    #
    # Only change: silence the Celery 5.x pending-deprecation warning about
    # retrying the broker connection at startup; True is the current default
    # behaviour, so this changes nothing measured.
    broker_connection_retry_on_startup=True,
)


@app.task(name="tasks.append_line")
def append_line(path, line):
    return benchjobs.append_line(path, line)


@app.task(name="tasks.spin_append")
def spin_append(path, line, ms):
    return benchjobs.spin_append(path, line, ms)
