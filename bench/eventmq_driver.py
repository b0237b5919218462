"""Scenario 1 client: EventMQ 0.3.13's own, unmodified client code.

    python bench/eventmq_driver.py --addr tcp://127.0.0.1:P --n N --out FILE

Sends N fire-and-forget jobs ``benchjobs.append_line(FILE, "%08d" % i)``
with eventmq's ``Sender`` + ``send_request`` (SNDHWM=0: EventMQ's client
silently drops sends at its default high-water mark) to whatever router
listens at --addr (EventMQ's or ours: the drop-in case), and times from just
before the first send until FILE holds all N lines (each line is 9 bytes,
written with one O_APPEND write, so N lines == 9*N bytes; polled every 2 ms).
Prints one JSON line: {"n", "secs", "jobs_per_sec", "send_secs"}.
"""
import argparse
import json
import os
import sys
import time

import zmq
from eventmq.client.messages import send_request
from eventmq.sender import Sender


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--spin-ms", type=float, default=0,
                    help="CPU-bound jobs: benchjobs.spin_append(FILE, line, MS) instead of append_line")
    a = ap.parse_args()
    if os.path.exists(a.out):
        os.unlink(a.out)
    s = Sender()
    s.zsocket.setsockopt(zmq.SNDHWM, 0)
    s.connect(a.addr)
    time.sleep(0.3)  # let the connection come up; not timed
    want = 9 * a.n
    t0 = time.monotonic()
    for i in range(a.n):
        if a.spin_ms:
            job = {"path": "benchjobs", "callable": "spin_append", "args": [a.out, "%08d" % i, a.spin_ms]}
        else:
            job = {"path": "benchjobs", "callable": "append_line", "args": [a.out, "%08d" % i]}
        send_request(s, ["run", job], queue="default")
    sent = time.monotonic() - t0
    while True:
        try:
            size = os.stat(a.out).st_size
        except FileNotFoundError:
            size = 0
        if size >= want:
            break
        if time.monotonic() - t0 > a.timeout:
            print(json.dumps({"n": a.n, "error": "timeout", "bytes": size}))
            sys.exit(1)
        time.sleep(0.002)
    secs = time.monotonic() - t0
    with open(a.out) as f:
        lines = f.read().split()
    ok = len(lines) == a.n and len(set(lines)) == a.n
    print(json.dumps({"n": a.n, "secs": secs, "jobs_per_sec": a.n / secs, "send_secs": sent, "complete": ok}))
    s.zsocket.close(linger=1000)


if __name__ == "__main__":
    main()
