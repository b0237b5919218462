"""The scale scenario (issue 17): how the router's cost grows as work grows,
each on a curve — job managers attached (1, 10, 100, 1,000), distinct queues
(1, 100, 10,000), jobs buffered before the run (0, 10^4, 10^6: dispatch rate
while draining), payload size (100 B, 10 KiB, 1 MiB). Stub job managers
(`emq-bench scale-jm`, no Python) so the router is what is measured; router
CPU per job from /proc. Prints one JSON object and, with matplotlib, draws
the curves into a PNG.

    python3 bench/scale.py [--png docs/scale.png] [--quick]

Needs release builds of emq-router, emq-cli and emq-bench.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402
import timers as T  # noqa: E402

BENCH = os.path.join(R.REL, "emq-bench")
ARGS = None  # the command line, once parsed


def cpu(pid):
    return T.cpu_secs(pid)


def status(a):
    return R.run_json([os.path.join(R.REL, "emq-cli"), "--addr", a["admin"], "--json", "--deadline", "30", "status"], timeout=60)


def wait_slots(a, want, limit=120):
    end = time.time() + limit
    while time.time() < end:
        s = status(a)
        if s.get("free_slots", 0) >= want:
            return
        time.sleep(0.2)
    raise RuntimeError("stub job managers never announced %d slots" % want)


def measure(a, r, n, window=1000, queues=1, size=0):
    c0 = cpu(r.pid)
    out = R.run_json([BENCH, "throughput", "--frontend", a["frontend"], "--n", str(n), "--window", str(window),
                      "--queues", str(queues), "--size", str(size)], timeout=1800)
    out["router_cpu_us_per_job"] = (cpu(r.pid) - c0) / n * 1e6
    return out


def with_stub(peers=1, slots=1000, queues=1, router_env=None):
    a = R.addrs()
    r, _ = T.router(a, tempfile.mkdtemp(prefix="emq-bench-scale-"), env=router_env)
    stub = R.start([BENCH, "scale-jm", "--backend", a["backend"], "--peers", str(peers), "--slots", str(slots),
                    "--queues", str(queues)], log_name="scale-jm")
    wait_slots(a, peers * slots)
    return a, r, stub


def stub_curve(name, points, stub_kwargs, measure_kwargs):
    """One curve against stub job managers: at each point, a fresh router
    and stub, then the throughput run."""
    out = []
    for x in points:
        a, r, stub = with_stub(**stub_kwargs(x))
        try:
            m = measure(a, r, ARGS.n, **measure_kwargs(x))
            m[name] = x
            out.append(m)
            R.log("scale %s=%d: %.0f jobs/s, %.1f us router CPU/job" % (name, x, m["jobs_per_sec"], m["router_cpu_us_per_job"]))
        finally:
            R.stop(stub)
            R.stop(r)
    return out


def peers_curve(args):
    return stub_curve("peers", args.peers, lambda k: {"peers": k, "slots": max(2, 1000 // k)}, lambda k: {})


def queues_curve(args):
    return stub_curve("queues", args.queues, lambda q: {"queues": q}, lambda q: {"queues": q})


def backlog_curve(args):
    out = []
    for b in args.backlog:
        a = R.addrs()
        r, _ = T.router(a, tempfile.mkdtemp(prefix="emq-bench-scale-"))
        try:
            if b == 0:
                stub = R.start([BENCH, "scale-jm", "--backend", a["backend"], "--slots", "1000"], log_name="scale-jm")
                wait_slots(a, 1000)
                m = measure(a, r, args.n)
                out.append({"backlog": 0, "jobs_per_sec": m["jobs_per_sec"], "router_cpu_us_per_job": m["router_cpu_us_per_job"]})
            else:
                R.run_json([BENCH, "fill", "--frontend", a["frontend"], "--n", str(b), "--size", "100", "--queue", "default"])
                c0 = cpu(r.pid)
                t0 = time.time()
                stub = R.start([BENCH, "scale-jm", "--backend", a["backend"], "--slots", "1000"], log_name="scale-jm")
                while True:
                    s = status(a)
                    if (s.get("processed_messages_by_queue") or {}).get("default", 0) >= b:
                        break
                    time.sleep(0.05)
                secs = time.time() - t0
                out.append({"backlog": b, "jobs_per_sec": b / secs, "secs": secs, "router_cpu_us_per_job": (cpu(r.pid) - c0) / b * 1e6})
            R.log("scale backlog=%d: %.0f jobs/s" % (b, out[-1]["jobs_per_sec"]))
            R.stop(stub)
        finally:
            R.stop(r)
    return out


def payload_curve(args):
    out = []
    for size in args.sizes:
        n = args.n if size <= 16384 else max(200, args.n // 100)
        window = 1000 if size <= 16384 else 20
        a, r, stub = with_stub(peers=1, slots=1000, router_env={"EMQ_MAX_MESSAGE_BYTES": str(8 << 20)})
        try:
            m = measure(a, r, n, window=window, size=size)
            m["size"] = size
            m["mb_per_sec"] = m["jobs_per_sec"] * m["payload_bytes"] / 1e6
            out.append(m)
            R.log("scale size=%d: %.0f jobs/s, %.1f MB/s" % (size, m["jobs_per_sec"], m["mb_per_sec"]))
        finally:
            R.stop(stub)
            R.stop(r)
    return out


def plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        R.log("matplotlib not installed: no plot")
        return False
    fig, ax = plt.subplots(1, 4, figsize=(16, 3.8))
    panels = [
        ("peers", "job managers attached", res.get("peers", []), "peers"),
        ("queues", "distinct queues", res.get("queues", []), "queues"),
        ("backlog", "jobs buffered before the run", res.get("backlog", []), "backlog"),
        ("payload", "payload bytes", res.get("payload", []), "payload_bytes"),
    ]
    for i, (name, xlabel, rows, key) in enumerate(panels):
        if not rows:
            continue
        xs = [max(1, r[key]) for r in rows]
        ax[i].plot(xs, [r["jobs_per_sec"] for r in rows], "o-", color="#1a7f37", label="jobs/s")
        ax[i].set_xscale("log")
        ax[i].set_xlabel(xlabel)
        ax[i].set_ylim(bottom=0)
        ax[i].set_title(name)
        if i == 0:
            ax[i].set_ylabel("router jobs/s")
        t = ax[i].twinx()
        t.plot(xs, [r.get("router_cpu_us_per_job", 0) for r in rows], "s--", color="#9a6700", label="router CPU µs/job")
        t.set_ylim(bottom=0)
        if i == 3:
            t.set_ylabel("router CPU µs per job")
    fig.suptitle("router jobs/s (green, left axis) and router CPU µs per job (brown, dashed, right axis); stub job managers, no Python", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--png", default=os.path.join(R.ROOT, "docs", "scale.png"))
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--only", default="peers,queues,backlog,payload")
    p.add_argument("--plot-from", help="only draw the plot from a JSON this script printed")
    args = p.parse_args()
    global ARGS
    ARGS = args
    if args.plot_from:
        with open(args.plot_from) as f:
            plot(json.load(f), args.png)
        return
    args.peers = [1, 10, 100, 1000]
    args.queues = [1, 100, 10_000]
    args.backlog = [0, 10_000, 1_000_000]
    args.sizes = [100, 10240, 1 << 20]
    if args.quick:
        args.n = 10_000
        args.backlog = [0, 10_000, 100_000]
    res = {}
    try:
        for part in args.only.split(","):
            res[part] = {"peers": peers_curve, "queues": queues_curve, "backlog": backlog_curve, "payload": payload_curve}[part](args)
    finally:
        R.stop_all()
    res["plot"] = args.png if plot(res, args.png) else None
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
