"""Celery 5 + Redis with results: ``apply_async`` + ``get`` from one thread
with a window of outstanding jobs (driver for bench/pyclient.py; run with the
venv made by bench/celery/setup.sh).

    python bench/pyclient_celery.py --n N --window W

Starts its own redis-server (free port, no persistence) as broker and result
backend, and one Celery worker (prefork, concurrency 2) running
``benchjobs.add`` from jobs/; stops both by pid. Prints one JSON line:
{"n", "window", "secs", "jobs_per_sec"}.
"""
import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "celery"))
from run_celery import free_port, redis_ping, stop, wait_until  # noqa: E402  (the same helpers as scenario 1)
BIN = os.path.dirname(sys.executable)

APP = '''
import os, sys
sys.path.insert(0, %(jobs)r)
import benchjobs
from celery import Celery
url = "redis://127.0.0.1:%%s/0" %% os.environ["BENCH_REDIS_PORT"]
app = Celery("pyclient_tasks", broker=url, backend=url)
app.conf.update(task_acks_late=False, result_expires=600)

@app.task(name="add")
def add(a, b):
    return benchjobs.add(a, b)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--window", type=int, default=200)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="emq-bench-pyclient-celery-")
    with open(os.path.join(tmp, "pyclient_tasks.py"), "w") as f:
        f.write(APP % {"jobs": os.path.join(os.path.dirname(HERE), "jobs")})
    port = free_port()
    os.environ["BENCH_REDIS_PORT"] = str(port)
    redis = worker = None
    try:
        redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                  "--appendonly", "no", "--dir", tmp], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, start_new_session=True)
        sys.path.insert(0, tmp)
        from pyclient_tasks import add, app

        wait_until(lambda: redis_ping(port), 10, "redis", [(redis, "redis-server")])
        with open(os.path.join(tmp, "worker.log"), "wb") as wlog:
            worker = subprocess.Popen([os.path.join(BIN, "celery"), "-A", "pyclient_tasks", "worker", "--pool",
                                       "prefork", "--concurrency", "2", "--without-gossip", "--without-mingle",
                                       "--without-heartbeat", "-l", "warning"], cwd=tmp,
                                      stdin=subprocess.DEVNULL, stdout=wlog, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        wait_until(lambda: bool(app.control.ping(timeout=0.2)), 60, "celery worker")
        for r in [add.apply_async((i, 1)) for i in range(200)]:  # warm-up, not timed
            r.get(timeout=60)
        pending = collections.deque()
        t0 = time.monotonic()
        for i in range(a.n):
            if len(pending) >= a.window:
                k, r = pending.popleft()
                assert r.get(timeout=60) == k + 1
            pending.append((i, add.apply_async((i, 1))))
        while pending:
            k, r = pending.popleft()
            assert r.get(timeout=60) == k + 1
        secs = time.monotonic() - t0
        print(json.dumps({"n": a.n, "window": a.window, "secs": secs, "jobs_per_sec": a.n / secs}))
    finally:
        stop(worker, "celery worker")
        stop(redis, "redis-server")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
