"""Fixtures: real emq-router / emq-jobmanager processes (and EventMQ's
router) on free loopback ports, stopped by pid at the end even when a test
fails. Binaries come from $EMQTEST_BIN_DIR, else <repo>/target/debug (built by
`cargo test --workspace` / `cargo build --bins`)."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("EMQTEST_BIN_DIR") or os.path.join(ROOT, "target", "debug")
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    """A free loopback port for a server a test starts, picked at random
    below the kernel's ephemeral range: a port from that range can become
    the source port of an outgoing connection — or of a client reconnecting
    to it while its server is down, which connects to itself and holds it —
    and a restarted router could then not bind it (tests/common/mod.rs)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(1000 if low > 11000 else 0):
        p = 10000 + secrets.randbelow(low - 10000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def tcp():
    return "tcp://127.0.0.1:%d" % free_port()


class Procs:
    """Started processes, killed (SIGTERM, then SIGKILL) by pid at the end."""

    def __init__(self):
        self.procs = []
        self.logs = []

    def start(self, name, cmd, env=None):
        e = dict(os.environ)
        e.update(env or {})
        log = tempfile.NamedTemporaryFile(prefix="emq-pytest-%s-" % name, suffix=".log", delete=False)
        p = subprocess.Popen(cmd, env=e, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             cwd=tempfile.gettempdir())
        self.procs.append(p)
        self.logs.append((name, log.name))
        return p

    def stop_all(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def cli_json(admin, *args, deadline=2):
    out = subprocess.run([os.path.join(BIN, "emq-cli"), "--addr", admin, "--json", "--deadline", str(deadline)]
                         + list(args), capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


def eventually(limit, f, what):
    """Polls f() until truthy (hang guard only)."""
    end = time.monotonic() + limit
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("%s not reached within %s s" % (what, limit))
        time.sleep(0.1)


def free_slots(admin):
    v = cli_json(admin, "workers")
    if not v:
        return 0
    return sum(w.get("available_slots", 0) for w in v.get("connected_workers", {}).values())


class Stack:
    def __init__(self, frontend, backend, admin):
        self.frontend, self.backend, self.admin = frontend, backend, admin


def start_router(procs, env=None):
    for _ in range(5):
        s = Stack(tcp(), tcp(), tcp())
        p = procs.start("router", [os.path.join(BIN, "emq-router"), "--frontend-addr", s.frontend,
                                   "--backend-addr", s.backend, "--administrative-addr", s.admin],
                        # Its own journal directory: no test sees another's jobs.
                        dict({"EMQ_HTTP_ADDR": "", "RUST_LOG": "warn",
                              "EMQ_DATA_DIR": tempfile.mkdtemp(prefix="emq-pytest-data-")}, **(env or {})))
        end = time.monotonic() + 20
        while p.poll() is None and time.monotonic() < end:
            if cli_json(s.admin, "status", deadline=0.5) is not None:
                return s
        if p.poll() is None:
            raise AssertionError("emq-router never answered STATUS")
    raise AssertionError("emq-router did not start on five sets of ports")


def start_jobmanager(procs, backend, jobs=2, env=None):
    e = {"RUST_LOG": "warn", "EMQ_HEARTBEAT_INTERVAL": "0.5",
         # The worker imports this venv's packages, the installed emq among
         # them: jobs see the client package as their `emq` module.
         "VIRTUAL_ENV": sys.prefix,
         # Closed by default: the test modules, nothing else.
         "EMQ_ALLOWED_PATHS": "benchjobs,testjobs,pyclient_jobs"}
    e.update(env or {})
    return procs.start("jobmanager", [os.path.join(BIN, "emq-jobmanager"), "-B", backend, "-Q", "default",
                                      "-J", str(jobs), "--python-path", os.path.join(ROOT, "tests", "pyjobs"),
                                      "--python-path", os.path.join(ROOT, "jobs"), "--python-path", HERE], e)


@pytest.fixture(scope="session")
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.stop_all()


JOBS = 2


@pytest.fixture(scope="session")
def stack(procs):
    """One emq-router and one emq-jobmanager (2 workers) for the session;
    only these modules may be run (anything else is refused)."""
    for b in ("emq-router", "emq-jobmanager", "emq-cli"):
        assert os.path.exists(os.path.join(BIN, b)), "build the binaries first: %s/%s" % (BIN, b)
    s = start_router(procs)
    start_jobmanager(procs, s.backend, JOBS,
                     {"EMQ_ALLOWED_PATHS": "benchjobs,testjobs,pyclient_jobs", "EMQ_GLOBAL_TIMEOUT": "60"})
    eventually(60, lambda: free_slots(s.admin) >= 2 * JOBS, "job manager slots")
    return s


@pytest.fixture
def client(stack):
    import emq
    with emq.Client(stack.frontend) as c:
        yield c
