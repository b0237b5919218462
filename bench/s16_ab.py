"""Scenario 16 (1 ms CPU-bound jobs, emq + its Rust client) for two builds
taking turns, on the same host in the same minutes: tells a change from the
host's drift. Each build is a directory holding `emq-router`,
`emq-jobmanager` and `emq-bench` (a `target/release`).

    python3 bench/s16_ab.py --a /tmp/old/target/release --b target/release --rounds 6

Prints each round's efficiency and CPU per job, then the medians.
"""
import argparse
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (bench/run.py: its s16 scenario)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="the first build's binaries")
    ap.add_argument("--b", required=True, help="the second build's binaries")
    ap.add_argument("--rounds", type=int, default=6, help="runs of each build (the order turns every round)")
    ap.add_argument("--secs", type=float, default=8.0, help="seconds of jobs per run")
    ap.add_argument("--ms", type=float, default=1.0, help="job CPU time (ms)")
    a = ap.parse_args()
    builds = {"a": os.path.abspath(a.a), "b": os.path.abspath(a.b)}
    args = types.SimpleNamespace(s16_secs=a.secs, s16_eventmq_n=100, eventmq_venv=None)
    res = {k: [] for k in builds}
    for i in range(a.rounds):
        for k in (["a", "b"] if i % 2 == 0 else ["b", "a"]):
            R.REL = builds[k]
            v = R.s16(args, "emq-rust", a.ms)
            res[k].append(v["efficiency_pct"])
            cpu = {x: round(y) for x, y in v.get("cpu_us_per_job", {}).items()}
            print("%s %.1f %% %s" % (k, v["efficiency_pct"], cpu), flush=True)
    for k, v in res.items():
        v.sort()
        print("%s (%s): median %.1f %% (%.1f–%.1f)" % (k, builds[k], v[len(v) // 2], v[0], v[-1]))


if __name__ == "__main__":
    main()
