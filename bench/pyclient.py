"""Python-client figures against the Rust client, in one run
(docs/benchmarks.md, "From Python"):

1. the Rust client: ``emq-bench throughput --n N --window 1000`` (jobs/s
   with results, hand-built frames on a bare DEALER: the fastest a client
   can be) and, for one job's round trip, both ``emq-bench latency --api``
   (the Rust client library, ``emq_client::Client::send_request`` +
   ``wait``: what a Rust program using emq does, and what the Python
   client wraps) and ``emq-bench latency`` (the bare DEALER); the three
   round-trip clients take turns, in blocks;
2. emq's Python client, 1 thread (bench/pyclient_emq.py):
   ``Client.map("benchjobs.add", range(N), repeat(1))``,
   ``Client.starmap("benchjobs.add", ((i, 1) ...))``, ``send()`` +
   ``result()`` job by job with a window, and ``send()`` + ``result()``
   round trips one at a time (p50 / p99); the round trips again with every
   process of the run (router, job manager, workers, client) on one CPU
   (``--one-cpu-blocks``): there a round trip takes the CPU time of all it
   goes through, so the ratio measures what each client costs, free of
   where this 2-vCPU machine happens to place the threads (which moves the
   two-CPU p50 by up to ±30 % between processes);
3. EventMQ 0.3.13's client, fire-and-forget, into the same emq-router
   (bench/eventmq_driver.py, as scenario 1 of bench/run.py: timed until
   the job manager has written every line);
4. Celery 5 + Redis, ``apply_async`` + ``get`` with a window
   (bench/pyclient_celery.py), when bench/celery/setup.sh can set it up.

1 to 3 share one emq-router and one emq-jobmanager (defaults, 2 workers,
release build, ``EMQ_ALLOWED_PATHS=benchjobs``, python path jobs/);
Celery runs 1 worker with concurrency 2. Each scenario runs --rounds
times, interleaved; prints markdown tables (median, min-max) with each
Python figure as a share of the Rust client's from the same run.

    cargo build --release -q --bins -p emq -p emq-bench && python3 bench/pyclient.py [--n 100000] [--rounds 3]
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile

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


def descendants(pid):
    """Every process below `pid` (its workers), from /proc."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open("/proc/%s/stat" % d).read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


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
    ap.add_argument("--n", type=int, default=100000, help="jobs per throughput round (Rust client, map, starmap)")
    ap.add_argument("--window-n", type=int, default=20000, help="jobs per send()+result() window round")
    ap.add_argument("--latency-n", type=int, default=5000, help="round trips per client per latency round")
    ap.add_argument("--latency-blocks", type=int, default=10, help="turns the three round-trip clients take per latency round")
    ap.add_argument("--eventmq-n", type=int, default=20000, help="jobs per EventMQ round")
    ap.add_argument("--celery-n", type=int, default=4000, help="jobs per Celery round")
    ap.add_argument("--window", type=int, default=1000, help="jobs in flight (Rust client, map, starmap)")
    ap.add_argument("--send-window", type=int, default=200, help="jobs in flight, send()+result() and Celery")
    ap.add_argument("--one-cpu-blocks", type=int, default=6,
                    help="turns the three round-trip clients take per round with every process on one CPU (0: none)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    conftest.BIN = os.environ.get("EMQTEST_BIN_DIR") or os.path.join(ROOT, "target", "release")
    bench_bin = os.path.join(conftest.BIN, "emq-bench")
    assert os.path.exists(bench_bin), "build it: cargo build --release -q --bins -p emq -p emq-bench"
    pyvenv = setup(os.path.join(ROOT, "scripts", "setup-pyclient.sh"))
    emqvenv = setup(os.path.join(ROOT, "scripts", "setup-venv.sh"))
    celery = setup(os.path.join(HERE, "celery", "setup.sh"))
    celery = None if celery == "NO_REDIS" else celery
    pyth = os.path.join(pyvenv, "bin", "python")
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what we started
    tp = {k: [] for k in ("rust", "map", "starmap", "send", "eventmq", "celery")}
    lat = {k: [] for k in ("rust", "rust_api", "python")}
    lat1 = {k: [] for k in ("rust", "rust_api", "python")}
    ratios = {k: [] for k in ("map", "starmap", "send", "p50", "p50_raw", "api_raw", "p50_1cpu", "api_raw_1cpu")}
    try:
        # A buffer for every fire-and-forget job (beyond hwm the router
        # refuses, and EventMQ's client never reads refusals).
        s = start_router(procs, {"EMQ_HWM": str(max(10000, 2 * a.eventmq_n))})
        jm = start_jobmanager(procs, s.backend, 2, {"EMQ_ALLOWED_PATHS": "benchjobs"})
        eventually(60, lambda: free_slots(s.admin) >= 4, "job manager slots")

        def py(mode, n, window):
            return run_json([pyth, os.path.join(HERE, "pyclient_emq.py"), "--addr", s.frontend, "--mode", mode,
                             "--n", str(n), "--window", str(window)])

        def latency_blocks(nblocks, into, pin=None):
            # The three round-trip clients take turns, in blocks, so a
            # change in the machine's load weighs on all alike; a round's
            # figure is the median of its blocks'. The order turns each
            # block, so no client always follows the same one.
            blocks = {"rust": [], "rust_api": [], "python": []}
            n = max(1, a.latency_n // max(1, a.latency_blocks))
            pre = ["taskset", "-c", str(pin)] if pin is not None else []
            turn = {"rust": lambda: run_json(pre + [bench_bin, "latency", "--frontend", s.frontend, "--n", str(n)]),
                    "rust_api": lambda: run_json(pre + [bench_bin, "latency", "--api", "--frontend", s.frontend,
                                                        "--n", str(n)]),
                    "python": lambda: run_json(pre + [pyth, os.path.join(HERE, "pyclient_emq.py"), "--addr",
                                                      s.frontend, "--mode", "latency", "--n", str(n), "--window", "1"])}
            order = list(turn)
            for b in range(nblocks):
                for k in order[b % 3:] + order[:b % 3]:
                    blocks[k].append(turn[k]())
            for k in blocks:
                into[k].append({q: statistics.median(b[q] for b in blocks[k]) for q in ("p50_us", "p99_us")})
            return into["rust"][-1], into["rust_api"][-1], into["python"][-1]

        def pin_server(cpus):
            # Every thread of the router, the job manager and its workers
            # (workers started later inherit the job manager's mask).
            for pid in [s_proc.pid, jm.pid] + descendants(jm.pid):
                try:
                    tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
                except OSError:
                    continue
                for tid in tids:
                    try:
                        os.sched_setaffinity(tid, cpus)
                    except OSError:
                        pass

        s_proc = procs.procs[procs.procs.index(jm) - 1]  # the router that answered (start_router may retry)
        all_cpus = os.sched_getaffinity(0)
        for r in range(a.rounds):
            v = run_json([bench_bin, "throughput", "--frontend", s.frontend, "--n", str(a.n), "--window",
                          str(a.window)])
            assert v["failed"] == 0, v
            rust = v["jobs_per_sec"]
            tp["rust"].append(rust)
            log("round %d Rust client: %.0f jobs/s" % (r, rust))
            for mode, n, window in (("map", a.n, a.window), ("starmap", a.n, a.window),
                                    ("window", a.window_n, a.send_window)):
                key = "send" if mode == "window" else mode
                v = py(mode, n, window)
                tp[key].append(v["jobs_per_sec"])
                ratios[key].append(v["jobs_per_sec"] / rust)
                log("round %d Python %s: %.0f jobs/s (%.0f %% of the Rust client)"
                    % (r, mode, v["jobs_per_sec"], 100 * v["jobs_per_sec"] / rust))
            v, api, p = latency_blocks(a.latency_blocks, lat)
            ratios["p50"].append(p["p50_us"] / api["p50_us"])
            ratios["p50_raw"].append(p["p50_us"] / v["p50_us"])
            ratios["api_raw"].append(api["p50_us"] / v["p50_us"])
            log("round %d round trip p50: Rust client %.0f us, bare DEALER %.0f us, Python %.0f us (%.2fx the Rust "
                "client, %.2fx the bare DEALER)" % (r, api["p50_us"], v["p50_us"], p["p50_us"],
                                                   p["p50_us"] / api["p50_us"], p["p50_us"] / v["p50_us"]))
            if a.one_cpu_blocks > 0:
                cpu = min(all_cpus)
                pin_server({cpu})
                try:
                    v1, api1, p1 = latency_blocks(a.one_cpu_blocks, lat1, pin=cpu)
                finally:
                    pin_server(all_cpus)
                ratios["p50_1cpu"].append(p1["p50_us"] / api1["p50_us"])
                ratios["api_raw_1cpu"].append(api1["p50_us"] / v1["p50_us"])
                log("round %d round trip p50, all on one CPU: Rust client %.0f us, bare DEALER %.0f us, Python %.0f us "
                    "(%.2fx the Rust client)" % (r, api1["p50_us"], v1["p50_us"], p1["p50_us"],
                                                 p1["p50_us"] / api1["p50_us"]))
            out = os.path.join(tempfile.gettempdir(), "emq-pyclient-bench-%d.txt" % os.getpid())
            v = run_json([os.path.join(emqvenv, "bin", "python"), os.path.join(HERE, "eventmq_driver.py"),
                          "--addr", s.frontend, "--n", str(a.eventmq_n), "--out", out, "--timeout", "300"])
            assert v.get("complete"), v
            os.unlink(out)
            log("round %d EventMQ client fire-and-forget: %.0f jobs/s" % (r, v["jobs_per_sec"]))
            tp["eventmq"].append(v["jobs_per_sec"])
            if celery:
                v = run_json([os.path.join(celery, "bin", "python"), os.path.join(HERE, "pyclient_celery.py"),
                              "--n", str(a.celery_n), "--window", str(a.send_window)])
                log("round %d Celery apply_async+get: %.0f jobs/s" % (r, v["jobs_per_sec"]))
                tp["celery"].append(v["jobs_per_sec"])
    finally:
        procs.stop_all()

    def cell(xs, fmt="%.0f"):
        if not xs:
            return "not run (no redis-server)"
        return (fmt + " (" + fmt + "–" + fmt + ")") % (statistics.median(xs), min(xs), max(xs))

    def pct(xs):
        return "%.0f %% (%.0f–%.0f)" % tuple(100 * x for x in (statistics.median(xs), min(xs), max(xs)))

    print("| client (1 thread) | jobs | jobs/s, median (min–max of %d) | share of the Rust client, same round |"
          % a.rounds)
    print("|---|---|---|---|")
    print("| Rust client (`emq-bench throughput`, `benchjobs.noop`), window %d | %d | %s | 100 %% |"
          % (a.window, a.n, cell(tp["rust"])))
    print("| emq Python `Client.map(\"benchjobs.add\", range(n), repeat(1))`, window %d | %d | %s | %s |"
          % (a.window, a.n, cell(tp["map"]), pct(ratios["map"])))
    print("| emq Python `Client.starmap(\"benchjobs.add\", ((i, 1) ...))`, window %d | %d | %s | %s |"
          % (a.window, a.n, cell(tp["starmap"]), pct(ratios["starmap"])))
    print("| emq Python `send` + `result` job by job, window %d | %d | %s | %s |"
          % (a.send_window, a.window_n, cell(tp["send"]), pct(ratios["send"])))
    print("| EventMQ 0.3.13 client → emq-router, fire-and-forget | %d | %s | |" % (a.eventmq_n, cell(tp["eventmq"])))
    print("| Celery 5 + Redis, `apply_async` + `get`, window %d | %d | %s | |"
          % (a.send_window, a.celery_n, cell(tp["celery"])))
    print()
    print("| one job's round trip (`benchjobs.noop`), %d in a row per round (%d turns) | p50 µs, median (min–max "
          "of %d) | p99 µs, median | / Rust client p50, same round | / bare DEALER p50, same round |"
          % (a.latency_n, a.latency_blocks, a.rounds))
    print("|---|---|---|---|---|")
    print("| Rust client library (`emq-bench latency --api`: `send_request` + `wait`) | %s | %.0f | 1.00 | %s |"
          % (cell([v["p50_us"] for v in lat["rust_api"]]), statistics.median(v["p99_us"] for v in lat["rust_api"]),
             cell(ratios["api_raw"], "%.2f")))
    print("| bare DEALER, hand-built frames (`emq-bench latency`) | %s | %.0f | | 1.00 |"
          % (cell([v["p50_us"] for v in lat["rust"]]), statistics.median(v["p99_us"] for v in lat["rust"])))
    print("| emq Python `send()` + `result()` | %s | %.0f | %s | %s |"
          % (cell([v["p50_us"] for v in lat["python"]]), statistics.median(v["p99_us"] for v in lat["python"]),
             cell(ratios["p50"], "%.2f"), cell(ratios["p50_raw"], "%.2f")))
    if lat1["python"]:
        print()
        print("| the same round trips, every process on one CPU (%d turns per round) | p50 µs, median (min–max of %d) "
              "| p99 µs, median | / Rust client p50, same round |" % (a.one_cpu_blocks, a.rounds))
        print("|---|---|---|---|")
        print("| Rust client library | %s | %.0f | 1.00 |" % (cell([v["p50_us"] for v in lat1["rust_api"]]),
                                                          statistics.median(v["p99_us"] for v in lat1["rust_api"])))
        print("| bare DEALER | %s | %.0f | %s |" % (cell([v["p50_us"] for v in lat1["rust"]]),
                                                 statistics.median(v["p99_us"] for v in lat1["rust"]),
                                                 cell([1 / x for x in ratios["api_raw_1cpu"]], "%.2f")))
        print("| emq Python `send()` + `result()` | %s | %.0f | %s |"
              % (cell([v["p50_us"] for v in lat1["python"]]), statistics.median(v["p99_us"] for v in lat1["python"]),
                 cell(ratios["p50_1cpu"], "%.2f")))


if __name__ == "__main__":
    main()
