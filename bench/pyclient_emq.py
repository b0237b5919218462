"""Python client throughput with results (driver for bench/pyclient.py).

    python bench/pyclient_emq.py --addr tcp://127.0.0.1:P --n N --window W

One thread, one emq.Client: keeps up to W jobs ``benchjobs.add(i, 1)`` in
flight (send() returns after the router's receipt), takes each result in
order and checks it. Timed from the first send to the last result. Prints
one JSON line: {"n", "window", "secs", "jobs_per_sec"}.
"""
import argparse
import collections
import json
import time

import emq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--window", type=int, default=200)
    a = ap.parse_args()
    with emq.Client(a.addr) as c:
        for j in [c.send("benchjobs.add", i, 1) for i in range(200)]:  # warm-up, not timed
            j.result(60)
        pending = collections.deque()
        t0 = time.monotonic()
        for i in range(a.n):
            if len(pending) >= a.window:
                k, j = pending.popleft()
                assert j.result(60) == k + 1
            pending.append((i, c.send("benchjobs.add", i, 1)))
        while pending:
            k, j = pending.popleft()
            assert j.result(60) == k + 1
        secs = time.monotonic() - t0
    print(json.dumps({"n": a.n, "window": a.window, "secs": secs, "jobs_per_sec": a.n / secs}))


if __name__ == "__main__":
    main()
