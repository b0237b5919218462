"""run_celery.py --n N --out OUTFILE -- benchmark scenario 1, Celery 5 + Redis.

Measures: N fire-and-forget jobs of ``append_line`` (tasks.py, which runs
jobs/benchjobs.py) through 1 Redis broker and 1 Celery worker (prefork,
concurrency 2), sent by Celery's own client (``apply_async`` in a plain loop,
no pipelining). The clock runs from just before the first send until OUTFILE
holds all N lines. Line i is ``str(i) + "\\n"`` and every append is a single
O_APPEND write of a whole line, so "N lines on disk" == "file size equals the
sum of the line lengths"; the file size is polled every 5 ms, and the content
is checked afterwards (each of 0..N-1 exactly once).

Run it with the venv made by setup.sh:
    $VENV/bin/python bench/celery/run_celery.py --n 20000 --out /tmp/out.txt
Prints ONE JSON line on stdout:
    {"system":"celery+redis","n":N,"secs":...,"jobs_per_sec":...,"send_secs":...}
It starts its own redis-server (free loopback port, no persistence, own temp
dir) and its own worker, and stops both by pid (SIGTERM, then SIGKILL after a
grace period) whatever happens. Logs go to the temp dir and, on failure, their
tails are printed to stderr.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)  # the venv's bin/ (celery lives there)


def log(msg):
    print("run_celery: " + msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc, name, grace=10.0):
    """SIGTERM the process, SIGKILL its process group after `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log("%s (pid %d) ignored SIGTERM, killing" % (name, proc.pid))
    try:  # also reaps leftover children (prefork pool) in its own group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def redis_ping(port):
    """Whether a redis-server answers PING on `port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(cond, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        for p, name in procs:
            if p.poll() is not None:
                raise RuntimeError("%s exited (rc %s) while waiting for %s" % (name, p.returncode, what))
        if cond():
            return
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(0.005)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the N-th line")
    ap.add_argument("--spin-ms", type=float, default=0,
                    help="CPU-bound jobs: tasks.spin_append(OUT, i, MS) instead of append_line")
    args = ap.parse_args()
    n, out = args.n, os.path.abspath(args.out)
    expected = sum(len(str(i)) + 1 for i in range(n))

    def raise_exit(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, raise_exit)

    tmp = tempfile.mkdtemp(prefix="emq-bench-celery-")
    port = free_port()
    os.environ["BENCH_REDIS_PORT"] = str(port)
    redis = worker = None
    ok = False
    try:
        redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", tmp, "--logfile", os.path.join(tmp, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)

        sys.path.insert(0, HERE)
        from tasks import app, append_line, spin_append  # reads BENCH_REDIS_PORT

        wait_until(lambda: redis_ping(port), 10, "redis-server", [(redis, "redis-server")])

        with open(os.path.join(tmp, "worker.log"), "wb") as wlog:
            worker = subprocess.Popen(
                [os.path.join(BIN, "celery"), "-A", "tasks", "worker", "--pool", "prefork",
                 "--concurrency", "2", "-Q", "celery", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-l", "warning"],
                cwd=HERE, stdin=subprocess.DEVNULL, stdout=wlog, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_until(lambda: bool(app.control.ping(timeout=0.2)), 60, "worker ready",
                   [(worker, "celery worker"), (redis, "redis-server")])

        if os.path.exists(out):
            os.unlink(out)
        t0 = time.perf_counter()
        for i in range(n):
            if args.spin_ms:
                spin_append.apply_async((out, i, args.spin_ms))
            else:
                append_line.apply_async((out, i))
        send_secs = time.perf_counter() - t0

        def done():
            try:
                size = os.stat(out).st_size
            except FileNotFoundError:
                return False
            if size > expected:
                raise RuntimeError("OUTFILE larger than expected (%d > %d)" % (size, expected))
            return size == expected
        wait_until(done, args.timeout, "%d lines in %s" % (n, out),
                   [(worker, "celery worker"), (redis, "redis-server")])
        secs = time.perf_counter() - t0

        with open(out) as f:
            got = sorted(int(x) for x in f)
        if got != list(range(n)):
            raise RuntimeError("OUTFILE content is not 0..N-1 exactly once")
        print(json.dumps({"system": "celery+redis", "n": n, "secs": round(secs, 4),
                          "jobs_per_sec": round(n / secs, 1), "send_secs": round(send_secs, 4)},
                         separators=(",", ":")),
              flush=True)
        ok = True
    finally:
        stop(worker, "celery worker")
        stop(redis, "redis-server")
        if not ok:
            for name in ("worker.log", "redis.log"):
                path = os.path.join(tmp, name)
                if os.path.exists(path):
                    with open(path, errors="replace") as f:
                        log("--- tail of %s ---\n%s" % (name, "".join(f.readlines()[-30:])))
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
