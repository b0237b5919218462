"""A burst from EventMQ's unchanged client into emq-router with no job
manager attached, at default settings; then a job manager drains it.

    python bench/burst.py --eventmq-venv target/venv --n 1000000

Prints one JSON line: jobs sent, accepted by the router, send and accept
times, the router's peak RSS while holding the backlog and after the drain,
the journal's size on disk, and the drain time (every job's line on disk).
Processes it starts are stopped by pid at the end.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (the orchestrator's helpers)


def status_field(admin, key):
    try:
        return bench.router_status(admin).get(key)
    except Exception:
        return None


def vm(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eventmq-venv", required=True)
    ap.add_argument("--n", type=int, default=1000000)
    a = ap.parse_args()
    addrs = bench.addrs()
    data = tempfile.mkdtemp(prefix="emq-burst-data-")
    out = os.path.join(tempfile.mkdtemp(prefix="emq-burst-"), "ran.txt")
    router = bench.start([os.path.join(bench.REL, "emq-router"), "--frontend-addr", addrs["frontend"],
                          "--backend-addr", addrs["backend"], "--administrative-addr", addrs["admin"]],
                         env={"RUST_LOG": "warn", "EMQ_HTTP_ADDR": "", "EMQ_DATA_DIR": data}, log_name="burst-router")
    try:
        while status_field(addrs["admin"], "accepted") is None:
            time.sleep(0.1)
        sender = subprocess.Popen([os.path.join(a.eventmq_venv, "bin", "python"), "-c", SEND, addrs["frontend"], str(a.n), out],
                                  stdout=subprocess.PIPE, text=True)
        bench.procs.append(sender)
        t0 = time.monotonic()
        peak = 0
        while True:
            acc = status_field(addrs["admin"], "accepted") or 0
            peak = max(peak, vm(router.pid, "VmRSS"))
            if acc >= a.n:
                break
            if time.monotonic() - t0 > 3600:
                raise RuntimeError("only %d accepted" % acc)
            time.sleep(0.5)
        accept_secs = time.monotonic() - t0
        send_secs = json.loads(sender.communicate(timeout=600)[0].strip().splitlines()[-1])["send_secs"]
        backlog_rss = vm(router.pid, "VmRSS")
        hwm = vm(router.pid, "VmHWM")
        disk = du(data)
        # Restart with the backlog: a graceful stop (checkpoint), then the
        # time until the new router answers STATUS with every job back.
        t2 = time.monotonic()
        bench.stop(router, grace=600)
        stop_secs = time.monotonic() - t2
        disk_after_checkpoint = du(data)
        t3 = time.monotonic()
        router = bench.start([os.path.join(bench.REL, "emq-router"), "--frontend-addr", addrs["frontend"],
                              "--backend-addr", addrs["backend"], "--administrative-addr", addrs["admin"]],
                             env={"RUST_LOG": "warn", "EMQ_HTTP_ADDR": "", "EMQ_DATA_DIR": data}, log_name="burst-router2")
        while True:
            w = status_field(addrs["admin"], "waiting_messages_by_queue")
            if w is not None:
                break
            time.sleep(0.05)
        replay_secs = time.monotonic() - t3
        restored = w.get("default", 0)
        jm = bench.emq_jm(addrs)
        t1 = time.monotonic()
        want = 9 * a.n
        while (os.path.getsize(out) if os.path.exists(out) else 0) < want:
            if time.monotonic() - t1 > 7200:
                raise RuntimeError("drain did not finish")
            time.sleep(0.5)
        drain_secs = time.monotonic() - t1
        lines = open(out).read().split()
        print(json.dumps({"n": a.n, "accepted": acc, "send_secs": send_secs,
                          "accept_secs": accept_secs, "router_rss_with_backlog_mb": backlog_rss / 2**20,
                          "router_peak_rss_mb": hwm / 2**20, "journal_disk_mb": disk / 2**20,
                          "graceful_stop_secs": stop_secs, "journal_disk_after_checkpoint_mb": disk_after_checkpoint / 2**20,
                          "restart_replay_secs": replay_secs, "restored_buffered": restored,
                          "drain_secs": drain_secs, "drain_jobs_per_sec": a.n / drain_secs,
                          "ran": len(lines), "distinct": len(set(lines)),
                          "router_rss_after_drain_mb": vm(router.pid, "VmRSS") / 2**20}))
        bench.stop(jm)
    finally:
        bench.stop_all()


# EventMQ 0.3.13's own client code, fire-and-forget, default settings (its
# send high-water mark raised as in scenario 1: at EventMQ's default the
# client itself drops sends).
SEND = r'''
import json, sys, time, zmq
from eventmq.client.messages import send_request
from eventmq.sender import Sender
addr, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = Sender()
s.zsocket.setsockopt(zmq.SNDHWM, 0)
s.connect(addr)
time.sleep(0.3)
t0 = time.monotonic()
for i in range(n):
    send_request(s, ["run", {"path": "benchjobs", "callable": "append_line", "args": [out, "%08d" % i]}], queue="default")
print(json.dumps({"send_secs": time.monotonic() - t0}))
s.zsocket.close(linger=-1)
'''

if __name__ == "__main__":
    main()
