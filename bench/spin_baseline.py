"""Scenario 16's ceiling: the same CPU-bound jobs with no job system at all.

    python bench/spin_baseline.py --n N --out FILE --spin-ms MS [--procs P]

P processes (default: the machine's cores), forked once, each calling
``benchjobs.spin_append(FILE, line, MS)`` N/P times in a plain loop;
timed from the fork to the last process's end. What this reaches on the
machine is the most any job system can: the rest of 100 % is the
machine's own (other processes, interrupts, the VM), not a job system's.
Prints one JSON line: {"n", "secs", "jobs_per_sec", "procs"}.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "jobs"))
import benchjobs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--spin-ms", type=float, required=True)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    if os.path.exists(a.out):
        os.unlink(a.out)
    start = time.monotonic()
    pids = []
    for k in range(a.procs):
        pid = os.fork()
        if pid == 0:
            for i in range(k, a.n, a.procs):
                benchjobs.spin_append(a.out, "%08d" % i, a.spin_ms)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    secs = time.monotonic() - start
    print(json.dumps({"n": a.n, "secs": secs, "jobs_per_sec": a.n / secs, "procs": a.procs}))


if __name__ == "__main__":
    main()
