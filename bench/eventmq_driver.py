"""Scenario 1 client: EventMQ 0.3.13's own, unmodified client code.

    python bench/eventmq_driver.py --addr tcp://127.0.0.1:P --n N --out FILE

Sends N fire-and-forget jobs ``benchjobs.append_line(FILE, "%08d" % i)``
with eventmq's ``Sender`` + ``send_request`` (SNDHWM=0: EventMQ's client
silently drops sends at its default high-water mark) to whatever router
listens at --addr (EventMQ's or ours: the drop-in case), and times from just
before the first send until FILE holds all N lines (each line is 9 bytes,
written with one O_APPEND write, so N lines == 9*N bytes; polled every 2 ms).
Prints one JSON line: {"n", "secs", "jobs_per_sec", "send_secs"}.

CURVE (scenario 18): ``--curve-server-key FILE`` (the router's ``.pub``) and
``--curve-key FILE`` (this client's ``.key``; its public key is derived from
it). EventMQ 0.3.13 has no CURVE support of its own (no setting, nothing in
``Sender`` or its client code), so the driver sets pyzmq's
``curve_serverkey``, ``curve_publickey`` and ``curve_secretkey`` on
``Sender().zsocket`` before ``connect`` (as ``tests/curve.rs`` does); the
sending is still EventMQ's own ``Sender`` + ``send_request``, unmodified.
Key files as ``emq keygen`` writes them: the first line that is neither
empty nor a ``#`` comment, 40 Z85 characters.

``--handshake-timeout S`` (> 0): before the timed part, wait up to S seconds
for the connection's handshake (a socket monitor, removed again before
timing) and exit 1 with a JSON error otherwise: a refused or wrong key fails
loudly instead of the jobs waiting unsent forever (ZeroMQ retries a refused
CURVE handshake silently). ``--stall-timeout S`` (> 0): exit 1 if FILE stops
growing for S seconds.
"""
import argparse
import json
import os
import sys
import time

import zmq
from eventmq.client.messages import send_request
from eventmq.sender import Sender
from zmq.utils.monitor import recv_monitor_message

HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def read_key(path):
    """A key file as `emq keygen` writes it: the first line that is neither
    empty nor a `#` comment (40 Z85 characters)."""
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(b"#"):
                if len(line) != 40:
                    sys.exit("%s: not a 40-character Z85 key" % path)
                return line
    sys.exit("%s: no key in it" % path)


def fail(sock, what, **extra):
    print(json.dumps(dict({"error": what}, **extra)))
    sys.stdout.flush()
    sock.close(linger=0)
    os._exit(1)


def wait_handshake(sock, mon, timeout):
    """Waits for the first successful handshake on `sock` (events from its
    monitor socket `mon`), then removes the monitor; exits 1 (JSON error
    with the events seen) on a failed handshake or after `timeout` s."""
    seen = []
    end = time.monotonic() + timeout
    ok = False
    while True:
        left = end - time.monotonic()
        if left <= 0 or not mon.poll(int(left * 1000) + 1):
            break
        ev = recv_monitor_message(mon)
        try:
            name = zmq.Event(ev["event"]).name
        except ValueError:
            name = str(ev["event"])
        if ev["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            ok = True
            break
        if len(seen) < 20:
            seen.append(name if ev["event"] not in HANDSHAKE_FAILED else "%s(%s)" % (name, ev["value"]))
        if ev["event"] in HANDSHAKE_FAILED:
            break
    sock.disable_monitor()
    mon.close(linger=0)
    if not ok:
        failed = seen and seen[-1].startswith("HANDSHAKE_FAILED")
        fail(sock, "handshake failed" if failed else "no handshake within %gs" % timeout, events=seen,
             hint="CURVE: is this client's .pub in the router's frontend allow-list, and --curve-server-key the router's .pub?")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--spin-ms", type=float, default=0,
                    help="CPU-bound jobs: benchjobs.spin_append(FILE, line, MS) instead of append_line")
    ap.add_argument("--curve-server-key", help="the router's CURVE public key file (NAME.pub); with --curve-key")
    ap.add_argument("--curve-key", help="this client's CURVE secret key file (NAME.key); with --curve-server-key")
    ap.add_argument("--handshake-timeout", type=float, default=0,
                    help="> 0: exit 1 unless the connection's handshake succeeds within this many seconds")
    ap.add_argument("--stall-timeout", type=float, default=0,
                    help="> 0: exit 1 if the output file does not grow for this many seconds")
    a = ap.parse_args()
    if bool(a.curve_server_key) != bool(a.curve_key):
        ap.error("--curve-server-key and --curve-key go together")
    if os.path.exists(a.out):
        os.unlink(a.out)
    s = Sender()
    s.zsocket.setsockopt(zmq.SNDHWM, 0)
    if a.curve_key:
        if not zmq.has("curve"):
            sys.exit("this libzmq has no CURVE")
        secret = read_key(a.curve_key)
        s.zsocket.curve_serverkey = read_key(a.curve_server_key)
        s.zsocket.curve_publickey = zmq.curve_public(secret)
        s.zsocket.curve_secretkey = secret
    mon = s.zsocket.get_monitor_socket(zmq.EVENT_ALL) if a.handshake_timeout > 0 else None
    s.connect(a.addr)
    if mon is not None:
        wait_handshake(s.zsocket, mon, a.handshake_timeout)
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
    last_size, last_change = -1, time.monotonic()
    while True:
        try:
            size = os.stat(a.out).st_size
        except FileNotFoundError:
            size = 0
        if size >= want:
            break
        now = time.monotonic()
        if size != last_size:
            last_size, last_change = size, now
        if now - t0 > a.timeout:
            fail(s.zsocket, "timeout", n=a.n, bytes=size)
        if a.stall_timeout > 0 and now - last_change > a.stall_timeout:
            fail(s.zsocket, "no progress for %gs" % a.stall_timeout, n=a.n, bytes=size)
        time.sleep(0.002)
    secs = time.monotonic() - t0
    with open(a.out) as f:
        lines = f.read().split()
    ok = len(lines) == a.n and len(set(lines)) == a.n
    print(json.dumps({"n": a.n, "secs": secs, "jobs_per_sec": a.n / secs, "send_secs": sent, "complete": ok}))
    s.zsocket.close(linger=1000)


if __name__ == "__main__":
    main()
