"""Time figures (issue #14): fire lateness at 1,000 schedules firing every
second, router memory per schedule and per delayed job, idle CPU with many
timers, and the time to load 1,000,000 delayed jobs at start.

    python3 bench/timers.py [--schedules 1000] [--secs 20] [--mem-schedules 100000] [--delayed 1000000]

Needs release builds of emq-router, emq-cli and emq-bench (bench/run.sh
builds them; or `cargo build --release -p emq -p emq-bench`). Prints one
JSON object; every process it starts it stops again by pid.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (helpers: addrs, start, stop, run_json, rss_kb)

BENCH = os.path.join(R.REL, "emq-bench")


def router(a, data_dir, env=None):
    base = {"RUST_LOG": "error", "EMQ_HTTP_ADDR": "", "EMQ_DATA_DIR": data_dir}
    t0 = time.time()
    p = R.start([os.path.join(R.REL, "emq-router"), "--frontend-addr", a["frontend"], "--backend-addr", a["backend"],
                 "--administrative-addr", a["admin"]], env=dict(base, **(env or {})), log_name="timers-router")
    end = time.time() + 600
    while R.free_slots(a["admin"]) < 0:
        if time.time() > end or p.poll() is not None:
            raise RuntimeError("router did not start")
        time.sleep(0.05)
    return p, time.time() - t0


def admin_json(a, cmd):
    return R.run_json([os.path.join(R.REL, "emq-cli"), "--addr", a["admin"], "--json", "--deadline", "30"] + cmd, timeout=60)


def cpu_secs(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck


def idle_cpu(pid, secs=10.0):
    c0 = cpu_secs(pid)
    time.sleep(secs)
    return (cpu_secs(pid) - c0) / secs * 100.0


def lateness(args):
    a = R.addrs()
    data = tempfile.mkdtemp(prefix="emq-bench-timers-")
    r, _ = router(a, data)
    stub_log = os.path.join(tempfile.gettempdir(), "emq-bench-timers-stub.log")
    stub = subprocess.Popen([BENCH, "stub-jm", "--backend", a["backend"], "--slots", "5000",
                             "--lateness-every", str(args.schedules)], stdout=open(stub_log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    R.procs.append(stub)
    try:
        R.wait_slots(a["admin"], 1)
        load = R.run_json([BENCH, "schedule-load", "--frontend", a["frontend"], "--n", str(args.schedules),
                           "--interval", "1"])
        time.sleep(args.secs)
        cpu = idle_cpu(r.pid, 5.0)
        s = admin_json(a, ["schedules"])
        runs = sum(x["runs"] for x in s["schedules"])
    finally:
        R.stop(stub)
        R.stop(r)
    windows = []
    with open(stub_log) as f:
        for line in f:
            if line.startswith("{"):
                windows.append(json.loads(line)["lateness_ms"])
    windows = windows[2:]  # the first seconds: schedules still being made
    med = lambda xs: sorted(xs)[len(xs) // 2] if xs else None  # noqa: E731
    return {
        "schedules": args.schedules, "load_secs": load["secs"], "runs": runs, "router_cpu_percent": cpu,
        "router_lateness_ms": s["lateness"],
        "at_jobmanager_ms": {"windows": len(windows), "p50_median": med([w["p50"] for w in windows]),
                             "p99_median": med([w["p99"] for w in windows]),
                             "p99_max": max([w["p99"] for w in windows], default=None),
                             "max": max([w["max"] for w in windows], default=None)},
    }


def schedule_memory(args):
    a = R.addrs()
    data = tempfile.mkdtemp(prefix="emq-bench-timers-")
    r, _ = router(a, data)
    try:
        time.sleep(0.5)
        idle0 = idle_cpu(r.pid, 5.0)
        before = R.rss_kb(r.pid)
        load = R.run_json([BENCH, "schedule-load", "--frontend", a["frontend"], "--n", str(args.mem_schedules),
                           "--interval", "86400"])
        time.sleep(1.0)
        after = R.rss_kb(r.pid)
        idle1 = idle_cpu(r.pid, 5.0)
    finally:
        R.stop(r)
    return {"schedules": args.mem_schedules, "load_secs": load["secs"],
            "bytes_per_schedule": (after - before) * 1024 / args.mem_schedules,
            "idle_cpu_percent_empty": idle0, "idle_cpu_percent_loaded": idle1}


def delayed(args):
    a = R.addrs()
    data = tempfile.mkdtemp(prefix="emq-bench-timers-")
    r, _ = router(a, data, env={"EMQ_DELAYED_MAX_BYTES": str(8 << 30)})
    try:
        time.sleep(0.5)
        idle0 = idle_cpu(r.pid, 5.0)
        before = R.rss_kb(r.pid)
        fill = R.run_json([BENCH, "fill", "--frontend", a["frontend"], "--n", str(args.delayed), "--size", "100",
                           "--queue", "default", "--headers", "delay:86400"])
        time.sleep(1.0)
        after = R.rss_kb(r.pid)
        idle1 = idle_cpu(r.pid, 5.0)
        st = admin_json(a, ["status"])
        t0 = time.time()
        R.stop(r, grace=600)  # SIGTERM: a checkpoint, then exit
        graceful_stop = time.time() - t0
    finally:
        R.stop(r)
    # Start again on the same journal: time until it answers (replay done).
    r2, start_after_checkpoint = router(a, data)
    st2 = admin_json(a, ["status"])
    rss_restored = R.rss_kb(r2.pid)
    # And after a crash: SIGKILL, then start (replay without a final checkpoint).
    r2.send_signal(signal.SIGKILL)
    r2.wait()
    R.procs.remove(r2)
    r3, start_after_kill = router(a, data)
    st3 = admin_json(a, ["status"])
    R.stop(r3, grace=600)
    return {"delayed": args.delayed, "payload_bytes": fill["payload_bytes"], "accept_secs": fill["secs"],
            "refused": fill["refused"],
            "bytes_per_delayed_job": (after - before) * 1024 / args.delayed,
            "idle_cpu_percent_empty": idle0, "idle_cpu_percent_loaded": idle1,
            "delayed_before_stop": st["delayed"], "graceful_stop_secs": graceful_stop,
            "start_secs_after_checkpoint": start_after_checkpoint, "delayed_after_restart": st2["delayed"],
            "rss_mb_after_restart": rss_restored / 1024,
            "start_secs_after_sigkill": start_after_kill, "delayed_after_sigkill": st3["delayed"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schedules", type=int, default=1000)
    p.add_argument("--secs", type=float, default=20.0)
    p.add_argument("--mem-schedules", type=int, default=100_000)
    p.add_argument("--delayed", type=int, default=1_000_000)
    p.add_argument("--only", default="lateness,memory,delayed")
    args = p.parse_args()
    out = {}
    try:
        for part in args.only.split(","):
            R.log("timers: " + part)
            out[part] = {"lateness": lateness, "memory": schedule_memory, "delayed": delayed}[part](args)
    finally:
        R.stop_all()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
