"""Python-client throughput, in one run (docs/benchmarks.md, "From Python"):

1. emq's Python client with results: 1 thread, a window of outstanding jobs,
   ``send`` + ``result`` of ``benchjobs.add`` (bench/pyclient_emq.py);
2. EventMQ 0.3.13's client, fire-and-forget, into the same emq-router
   (bench/eventmq_driver.py, as scenario 1 of bench/run.py: timed until
   the job manager has written every line);
3. Celery 5 + Redis, ``apply_async`` + ``get`` with the same window
   (bench/pyclient_celery.py), when bench/celery/setup.sh can set it up.

emq 1 and 2 share one emq-router and one emq-jobmanager (2 workers, release
build); Celery runs 1 worker with concurrency 2. Each scenario runs --rounds
times, interleaved; prints a markdown table (median, min-max).

    cargo build --release --bins && python3 bench/pyclient.py [--n 20000] [--rounds 3]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python", "tests"))
try:
    import pytest  # noqa: F401  (the test fixtures below need it)
except ImportError:  # run again under the Python client's venv, which has it
    _venv = subprocess.run(["bash", os.path.join(ROOT, "scripts", "setup-pyclient.sh")], capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()[-1]
    os.execv(os.path.join(_venv, "bin", "python"), [os.path.join(_venv, "bin", "python")] + sys.argv)
from conftest import Procs, eventually, free_slots, start_router, start_jobmanager  # noqa: E402
import conftest  # noqa: E402


def log(*a):
    print("pyclient-bench:", *a, file=sys.stderr, flush=True)


def setup(script, *args):
    out = subprocess.run(["bash", script] + list(args), capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError("%s failed: %s" % (script, out.stderr[-2000:]))
    return out.stdout.strip().splitlines()[-1]


def run_json(cmd, timeout=900):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError("%s failed: %s %s" % (cmd[1], out.stdout[-500:], out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000, help="jobs per emq / EventMQ round")
    ap.add_argument("--celery-n", type=int, default=4000, help="jobs per Celery round")
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    conftest.BIN = os.environ.get("EMQTEST_BIN_DIR") or os.path.join(ROOT, "target", "release")
    pyvenv = setup(os.path.join(ROOT, "scripts", "setup-pyclient.sh"))
    emqvenv = setup(os.path.join(ROOT, "scripts", "setup-venv.sh"))
    celery = setup(os.path.join(HERE, "celery", "setup.sh"))
    celery = None if celery == "NO_REDIS" else celery
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started
    figures = {"emq": [], "eventmq": [], "celery": []}
    try:
        # A buffer for every fire-and-forget job (beyond hwm the router
        # refuses, and EventMQ's client never reads refusals).
        s = start_router(procs, {"EMQ_HWM": str(max(10000, 2 * a.n))})
        start_jobmanager(procs, s.backend, 2)
        eventually(60, lambda: free_slots(s.admin) >= 4, "job manager slots")
        for r in range(a.rounds):
            v = run_json([os.path.join(pyvenv, "bin", "python"), os.path.join(HERE, "pyclient_emq.py"),
                          "--addr", s.frontend, "--n", str(a.n), "--window", str(a.window)])
            log("round %d emq python client with results: %.0f jobs/s" % (r, v["jobs_per_sec"]))
            figures["emq"].append(v["jobs_per_sec"])
            out = os.path.join(tempfile.gettempdir(), "emq-pyclient-bench-%d.txt" % os.getpid())
            v = run_json([os.path.join(emqvenv, "bin", "python"), os.path.join(HERE, "eventmq_driver.py"),
                          "--addr", s.frontend, "--n", str(a.n), "--out", out, "--timeout", "300"])
            assert v.get("complete"), v
            os.unlink(out)
            log("round %d EventMQ client fire-and-forget: %.0f jobs/s" % (r, v["jobs_per_sec"]))
            figures["eventmq"].append(v["jobs_per_sec"])
            if celery:
                v = run_json([os.path.join(celery, "bin", "python"), os.path.join(HERE, "pyclient_celery.py"),
                              "--n", str(a.celery_n), "--window", str(a.window)])
                log("round %d Celery apply_async+get: %.0f jobs/s" % (r, v["jobs_per_sec"]))
                figures["celery"].append(v["jobs_per_sec"])
    finally:
        procs.stop_all()

    def cell(xs):
        if not xs:
            return "not run (no redis-server)"
        return "%.0f (%.0f–%.0f)" % (statistics.median(xs), min(xs), max(xs))
    print("| client (1 thread) | jobs | jobs/s, median (min–max of %d) |" % a.rounds)
    print("|---|---|---|")
    print("| emq Python client, `send` + `result`, window %d | %d | %s |" % (a.window, a.n, cell(figures["emq"])))
    print("| EventMQ 0.3.13 client → emq-router, fire-and-forget | %d | %s |" % (a.n, cell(figures["eventmq"])))
    print("| Celery 5 + Redis, `apply_async` + `get`, window %d | %d | %s |"
          % (a.window, a.celery_n, cell(figures["celery"])))


if __name__ == "__main__":
    main()
