"""Chaos run (issue #6): no accepted `guarantee` job is lost.

    python bench/chaos.py [--jobs 10000] [--kill-every 2] [--garbage 100000]

Starts our release router and two job managers (2 workers each) on free
loopback ports, sends N `guarantee` jobs that append their own msgid to a
file, and meanwhile SIGKILLs one of the two job managers every
--kill-every seconds (alternating; its workers die with it) and restarts it,
while three extra peers send --garbage random frames to the router's three
sockets. Waits (bounded) until every msgid is on disk, then prints one JSON
line: distinct msgids on disk (must be N), duplicates (at-least-once), wall
time, kills, garbage sent, router RSS at start / end, and whether the router
is still alive and answering. Every process it starts is stopped by pid.

Needs pyzmq: run it with the EventMQ venv's python (target/venv/bin/python).
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import REL, ROOT, free_port, rss_kb  # noqa: E402  (the benchmark's helpers)


def admin(addr, command="STATUS", timeout_ms=3000):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(addr)
    s.send_multipart([b"", b"eMQP/1.0", command.encode(), ("admin:" + uuid.uuid4().hex).encode()])
    try:
        if s.poll(timeout_ms):
            return json.loads(s.recv_multipart()[4])
        return None
    finally:
        s.close()


def admin_job(addr, msgid):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(addr)
    s.send_multipart([b"", b"eMQP/1.0", b"JOB_STATUS", ("admin:" + uuid.uuid4().hex).encode(), msgid.encode()])
    try:
        return json.loads(s.recv_multipart()[4]) if s.poll(3000) else None
    finally:
        s.close()


def main():
    # SIGTERM → SystemExit, so the finally below stops what we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--kill-every", type=float, default=2.0)
    ap.add_argument("--garbage", type=int, default=100000)
    ap.add_argument("--rate", type=float, default=500, help="jobs sent per second (spreads the run over many kills)")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="emq-chaos-")
    out = os.path.join(work, "msgids.txt")
    fe, be, ad = ("tcp://127.0.0.1:%d" % free_port() for _ in range(3))
    procs = {}
    logs = open(os.path.join(work, "processes.log"), "w")

    def start(name, cmd, env):
        e = dict(os.environ, RUST_LOG="error", **env)
        procs[name] = subprocess.Popen(cmd, env=e, stdout=logs, stderr=logs, cwd=work)
        return procs[name]

    router = start("router", [os.path.join(REL, "emq-router"), "--frontend-addr", fe, "--backend-addr", be,
                              "--administrative-addr", ad],
                   {"EMQ_HEARTBEAT_INTERVAL": "0.5", "EMQ_HEARTBEAT_TIMEOUT": "2", "EMQ_HWM": str(a.jobs * 2),
                    "EMQ_HTTP_ADDR": "", "EMQ_DATA_DIR": os.path.join(work, "data")})

    def start_jm(i):
        return start("jm%d" % i, [os.path.join(REL, "emq-jobmanager"), "-B", be, "-J", "2",
                                  "--python-path", os.path.join(ROOT, "jobs")], {"EMQ_HEARTBEAT_INTERVAL": "0.5",
                                                                                 "EMQ_ALLOWED_PATHS": "benchjobs"})

    try:
        deadline = time.time() + 20
        while admin(ad, timeout_ms=500) is None:
            if time.time() > deadline:
                raise SystemExit("router did not start")
        rss_start = rss_kb(router.pid)
        start_jm(0)
        start_jm(1)
        stop = threading.Event()
        kills = [0]
        garbage_sent = [0]

        def killer():
            i = 0
            while not stop.wait(a.kill_every):
                p = procs["jm%d" % i]
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills[0] += 1
                start_jm(i)
                i = 1 - i

        def garbage():
            ctx = zmq.Context.instance()
            socks = []
            for addr in (fe, be, ad):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDHWM, 1000)
                s.connect(addr)
                socks.append(s)
            rnd = random.Random(7)
            while garbage_sent[0] < a.garbage and not stop.is_set():
                s = socks[garbage_sent[0] % 3]
                frames = [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 12))) for _ in range(rnd.randrange(1, 8))]
                if rnd.random() < 0.3:  # plausible-looking envelopes too
                    frames = [b"", b"eMQP/1.0", rnd.choice([b"REQUEST", b"READY", b"REPLY", b"INFORM", b"HEARTBEAT", b"X"])] + frames
                try:
                    s.send_multipart(frames, zmq.NOBLOCK)
                    garbage_sent[0] += 1
                except zmq.Again:
                    time.sleep(0.001)
                # drain anything the router answered
                for sock in socks:
                    while sock.poll(0):
                        sock.recv_multipart()
            for s in socks:
                s.close()

        threads = [threading.Thread(target=killer, daemon=True), threading.Thread(target=garbage, daemon=True)]
        t0 = time.time()
        for t in threads:
            t.start()
        ctx = zmq.Context.instance()
        client = ctx.socket(zmq.DEALER)
        client.setsockopt(zmq.SNDHWM, 0)
        client.setsockopt(zmq.LINGER, 1000)
        client.connect(fe)
        ids = [uuid.uuid4().hex for _ in range(a.jobs)]
        receipts = 0
        for k, m in enumerate(ids):
            ahead = t0 + k / a.rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
            payload = json.dumps(["run", {"path": "benchjobs", "callable": "append_line", "args": [out, m]}])
            client.send_multipart([b"", b"eMQP/1.0", b"REQUEST", m.encode(), b"default", b"guarantee", payload.encode()])
            while client.poll(0):
                if len(client.recv_multipart()) == 5:
                    receipts += 1
        want = set(ids)
        seen = set()
        lines = 0
        rss_mid = None
        while time.time() - t0 < a.timeout:
            while client.poll(0):
                if len(client.recv_multipart()) == 5:
                    receipts += 1
            try:
                with open(out) as f:
                    got = f.read().split()
            except FileNotFoundError:
                got = []
            lines = len(got)
            seen = set(got)
            if rss_mid is None and time.time() - t0 > 5:
                rss_mid = rss_kb(router.pid)
            if want <= seen and (garbage_sent[0] >= a.garbage or not threads[1].is_alive()):
                break
            time.sleep(0.2)
        wall = time.time() - t0
        stop.set()
        for t in threads:
            t.join(5)
        status = admin(ad)
        missing = sorted(want - seen)
        with open(os.path.join(work, "sent.txt"), "w") as f:
            f.write("\n".join(ids))
        for m in missing[:5]:
            # The router's record of a job that never reached the file.
            print("missing %s: %s" % (m, json.dumps(admin_job(ad, m))), file=sys.stderr)
        result = {
            "jobs": a.jobs, "distinct_on_disk": len(seen & want), "missing": len(want - seen),
            "duplicates": lines - len(seen), "receipts": receipts, "wall_secs": round(wall, 1), "kills": kills[0],
            "garbage_sent": garbage_sent[0], "router_alive": router.poll() is None and status is not None,
            "router_rss_kb": {"start": rss_start, "after_5s": rss_mid, "end": rss_kb(router.pid)},
            "router_errors": (status or {}).get("errors"),
        }
        print(json.dumps(result))
        sys.exit(0 if result["missing"] == 0 and result["router_alive"] else 1)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


if __name__ == "__main__":
    main()
