"""emq's Python client, one thread, one emq.Client (driver for
bench/pyclient.py).

    python bench/pyclient_emq.py --addr tcp://127.0.0.1:P --mode MODE --n N [--window W]

MODE:

- ``map``: ``Client.map("benchjobs.add", range(N), repeat(1), window=W)``
  (the builtin map's form: ``add(i, 1)``), every result checked;
- ``starmap``: ``Client.starmap("benchjobs.add", ((i, 1) for i in
  range(N)), window=W)``, checked;
- ``send_many``: ``Client.send_many("benchjobs.add", [(i, 1), ...])`` (all N
  at once) then ``Client.gather(jobs)``, checked;
- ``window``: ``send()`` + ``result()`` job by job, up to W in flight,
  results taken in order and checked (a loop of single calls);
- ``latency``: N round trips, one at a time, of ``send("benchjobs.noop")``
  + ``result()``: p50 / p99 in microseconds (as ``emq-bench latency``).

A warm-up of 200 jobs first (not timed). Throughput modes are timed from
the first send to the last result. Prints one JSON line: {"mode", "n",
"window", "secs", "jobs_per_sec"} or, for latency, {"mode", "n", "p50_us",
"p99_us", "min_us", "max_us"}.
"""
import argparse
import itertools
import json
import time

import emq


def check(values, n):
    bad = [i for i, v in enumerate(values) if v != i + 1]
    assert len(values) == n and not bad, "wrong results at %s" % bad[:5]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--mode", default="map", choices=("map", "starmap", "send_many", "window", "latency"))
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--window", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    a = ap.parse_args()
    with emq.Client(a.addr) as c:
        c.map("benchjobs.add", range(a.warmup), itertools.repeat(1), timeout=60)  # not timed
        for _ in range(min(a.warmup, 50)):
            c.send("benchjobs.noop").result(60)
        if a.mode == "latency":
            samples = []
            for _ in range(a.n):
                t = time.perf_counter()
                c.send("benchjobs.noop").result(60)
                samples.append((time.perf_counter() - t) * 1e6)
            samples.sort()

            def pct(p):
                return samples[int(round((len(samples) - 1) * p))]
            print(json.dumps({"mode": a.mode, "n": a.n, "p50_us": pct(0.5), "p99_us": pct(0.99),
                              "min_us": samples[0], "max_us": samples[-1]}))
            return
        t0 = time.perf_counter()
        if a.mode == "map":
            check(c.map("benchjobs.add", range(a.n), itertools.repeat(1), window=a.window, timeout=60), a.n)
        elif a.mode == "starmap":
            check(c.starmap("benchjobs.add", ((i, 1) for i in range(a.n)), window=a.window, timeout=60), a.n)
        elif a.mode == "send_many":
            jobs = c.send_many("benchjobs.add", [(i, 1) for i in range(a.n)])
            check(c.gather(jobs, timeout=600), a.n)
        else:
            pending = []
            done = 0
            for i in range(a.n):
                if len(pending) - done >= a.window:
                    assert pending[done].result(60) == done + 1
                    done += 1
                pending.append(c.send("benchjobs.add", i, 1))
            for k in range(done, a.n):
                assert pending[k].result(60) == k + 1
        secs = time.perf_counter() - t0
    print(json.dumps({"mode": a.mode, "n": a.n, "window": a.window, "secs": secs, "jobs_per_sec": a.n / secs}))


if __name__ == "__main__":
    main()
