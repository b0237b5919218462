"""Client.events: the router's event stream (GET /v1/events, server-sent
events; docs/http.md, "Events") — against real emq-router processes with
their HTTP endpoint on, and (for what a real router does not do on demand:
split data lines, a 503, a dead connection) against a stand-in server."""
import http.server
import json
import os
import queue as queues
import signal
import socket
import tempfile
import threading
import time
import urllib.parse

import pytest

import emq
from conftest import BIN, Stack, cli_json, eventually, free_port, free_slots, start_jobmanager, tcp


# ---------------------------------------------------------------- real routers

class HttpRouter:
    """An emq-router with its HTTP endpoint on, its own data directory and
    ports: ``restart()`` (after a SIGKILL) starts it again on the same ones."""

    def __init__(self, procs, env=None):
        self.procs = procs
        self.env = dict(env or {})
        self.data = tempfile.mkdtemp(prefix="emq-pytest-data-")
        self.stack = Stack(tcp(), tcp(), tcp())
        self.http = "127.0.0.1:%d" % free_port()
        self.proc = None
        self.start()

    @property
    def token(self):
        with open(os.path.join(self.data, "admin.token")) as f:
            return f.read().strip()

    def start(self):
        s = self.stack
        env = dict({"EMQ_HTTP_ADDR": self.http, "EMQ_DATA_DIR": self.data, "RUST_LOG": "warn"}, **self.env)
        self.proc = self.procs.start("router", [os.path.join(BIN, "emq-router"), "--frontend-addr", s.frontend,
                                                "--backend-addr", s.backend, "--administrative-addr", s.admin], env)
        end = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < end:
            if cli_json(s.admin, "status", deadline=0.5) is not None and self._http_up():
                return
            time.sleep(0.05)
        raise AssertionError("emq-router (http %s) did not come up (exit status %s)" % (self.http, self.proc.poll()))

    def _http_up(self):
        host, port = self.http.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), 0.5).close()
            return True
        except OSError:
            return False

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self):
        self.kill()
        self.start()

    def events(self, client, after=None, types=None, **kw):
        """``client.events`` on this router (``client`` None: without a
        ZeroMQ connection)."""
        kw.setdefault("http", self.http)
        kw.setdefault("token", self.token)
        return (client or offline()).events(after, types, **kw)


def _has_events_endpoint(r):
    """Whether the router serves GET /v1/events (not the server side yet: skip)."""
    import http.client
    host, port = r.http.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", "/v1/events?wait=0", headers={"Authorization": "Bearer " + r.token})
        return c.getresponse().status != 404
    finally:
        c.close()


@pytest.fixture(scope="module")
def router(procs):
    for b in ("emq-router", "emq-jobmanager", "emq-cli"):
        assert os.path.exists(os.path.join(BIN, b)), "build the binaries first: %s/%s" % (BIN, b)
    r = HttpRouter(procs)
    if not _has_events_endpoint(r):
        pytest.skip("this emq-router has no GET /v1/events")
    start_jobmanager(procs, r.stack.backend, 2)
    eventually(60, lambda: free_slots(r.stack.admin) >= 2, "job manager slots")
    return r


@pytest.fixture
def client(router):
    with emq.Client(router.stack.frontend) as c:
        yield c


def take(stream, until, limit=60):
    """Events from ``stream`` until ``until(events)`` is true (hang guard: ``limit`` s)."""
    got = []
    end = time.monotonic() + limit
    for ev in stream:
        got.append(ev)
        if until(got):
            return got
        assert time.monotonic() < end, "no end to the events within %s s: %r" % (limit, got[-20:])
    raise AssertionError("the event stream ended early: %r" % (got[-20:],))


def succeeded_all(msgids):
    want = set(msgids)
    return lambda got: want <= {e.get("job") for e in got if e.get("type") == "succeeded"}


def offsets(events):
    return [e["offset"] if e["type"] != "gap" else e["to"] for e in events]


def assert_increasing(events):
    offs = offsets(events)
    assert all(a < b for a, b in zip(offs, offs[1:])), offs


def test_every_job_is_accepted_started_and_succeeded_in_offset_order(router, client):
    stream = router.events(client)  # from now on
    start = stream.last
    assert isinstance(start, int)
    jobs = [client.send("benchjobs.add", i, i) for i in range(8)]
    got = take(stream, succeeded_all(j.msgid for j in jobs))
    stream.close()
    assert_increasing(got)
    assert all(e["offset"] > start for e in got)
    assert stream.last == got[-1]["offset"]
    for j in jobs:
        mine = [e for e in got if e.get("job") == j.msgid]
        types = [e["type"] for e in mine]
        assert types[0] == "accepted" and types[-1] == "succeeded", types
        assert types.count("accepted") == types.count("succeeded") == 1 and "started" in types, types
        ok = mine[-1]
        assert ok["queue"] == "default" and ok["callable"] == "benchjobs.add"
        assert isinstance(ok["at"], (int, float)) and abs(ok["at"] - time.time()) < 120
        started = next(e for e in mine if e["type"] == "started")
        assert started["attempt"] == 1 and started["job_manager"]
    results = {e["job"]: e.get("result") for e in got if e["type"] == "succeeded"}
    assert [results[j.msgid] for j in jobs] == [2 * i for i in range(8)]


def test_types_queue_and_job_filters(router, client):
    start = router.events(client).last
    jobs = [client.send("benchjobs.add", i, 1) for i in range(5)]
    failing = client.send("testjobs.fail", "for the filter")
    assert [j.result(30) for j in jobs] == [i + 1 for i in range(5)]
    with pytest.raises(emq.JobFailed):
        failing.result(30)
    want = {j.msgid for j in jobs}

    only = take(router.events(client, after=start, types=["succeeded"]), succeeded_all(want))
    assert {e["type"] for e in only} == {"succeeded"}, only
    assert_increasing(only)

    both = take(router.events(client, after=start, types="failed,succeeded".split(",")),
                lambda got: succeeded_all(want)(got) and any(e["type"] == "failed" for e in got))
    assert {e["type"] for e in both} == {"succeeded", "failed"}
    failed = next(e for e in both if e["type"] == "failed")
    assert failed["job"] == failing.msgid and "for the filter" in json.dumps(failed["error"])

    one = list(router.events(client, after=start, job=jobs[2], timeout=1.5))
    assert {e["job"] for e in one} == {jobs[2].msgid}
    assert [e["type"] for e in one][0] == "accepted" and one[-1]["type"] == "succeeded"

    assert list(router.events(client, after=start, queue="no-such-queue", timeout=1)) == []


def test_resume_after_the_last_offset_gives_exactly_the_rest(router, client):
    start = router.events(client).last
    jobs = [client.send("benchjobs.add", i, 2) for i in range(6)]
    for j in jobs:
        j.result(30)
    whole = take(router.events(client, after=start), succeeded_all(j.msgid for j in jobs))
    # Whatever came after (nothing should) does not matter: compare the prefix.
    with router.events(client, after=start) as first:
        part = [next(first) for _ in range(7)]
        last = first.last
    assert last == part[-1]["offset"]
    rest = take(router.events(client, after=last), lambda got: len(part) + len(got) >= len(whole))
    assert part + rest == whole
    assert offsets(rest)[0] > last


def test_after_none_is_from_the_call_on(router, client):
    start = router.events(client).last
    before = client.send("benchjobs.add", 1, 1)
    before.result(30)
    # Its result may reach the client before its event is durable, so published.
    take(router.events(client, after=start, job=before), succeeded_all([before.msgid]))
    stream = router.events(client, types=["succeeded"])
    later = client.send("benchjobs.add", 2, 2)
    got = take(stream, succeeded_all([later.msgid]))
    assert before.msgid not in {e["job"] for e in got}


def test_timeout_ends_an_idle_stream(router, client):
    last = router.events(client).last
    t0 = time.monotonic()
    assert list(router.events(client, after=last, timeout=1.0)) == []
    assert 0.9 <= time.monotonic() - t0 < 10


def test_a_bad_token_raises(router, client):
    with pytest.raises(emq.HttpError) as ei:
        router.events(client, token="emqc_" + "0" * 64)
    assert ei.value.status == 401 and isinstance(ei.value, emq.Error)
    # With an offset nothing is asked before the first next().
    stream = router.events(client, after=0, token="not-a-token")
    with pytest.raises(emq.HttpError) as ei:
        next(stream)
    assert ei.value.status == 401


def test_a_bad_parameter_raises(router, client):
    with pytest.raises(ValueError):
        router.events(client, after=-1)
    with pytest.raises(ValueError):
        router.events(client, types=["a,b"])


def test_defaults_from_the_environment_and_the_data_dir(router, client, monkeypatch):
    monkeypatch.delenv("EMQ_TOKEN", raising=False)
    monkeypatch.setenv("EMQ_HTTP_ADDR", router.http)
    monkeypatch.setenv("EMQ_DATA_DIR", router.data)  # the admin token file there
    last = client.events().last
    job = client.send("benchjobs.add", 3, 4)
    got = take(client.events(after=last, job=job.msgid), succeeded_all([job.msgid]))
    assert got[-1]["result"] == 7
    monkeypatch.setenv("EMQ_TOKEN", "wrong")
    with pytest.raises(emq.HttpError) as ei:
        client.events()
    assert ei.value.status == 401


def test_the_iterator_reconnects_across_a_router_restart(procs):
    r = HttpRouter(procs)
    if not _has_events_endpoint(r):
        pytest.skip("this emq-router has no GET /v1/events")
    start_jobmanager(procs, r.stack.backend, 2)
    eventually(60, lambda: free_slots(r.stack.admin) >= 2, "job manager slots")
    kinds = ["accepted", "succeeded"]
    stream = r.events(None, types=kinds, timeout=90)
    start = stream.last
    got, last_job, out, gate = [], [], queues.Queue(), threading.Event()

    def read():  # iterates while the router is killed under it
        try:
            for ev in stream:
                got.append(ev)
                out.put(ev)
                if len(got) == 5:
                    gate.wait(60)  # in the middle of the first jobs' events
                if ev["type"] == "succeeded" and last_job and ev["job"] == last_job[0]:
                    break
            out.put(None)
        except BaseException as e:  # reported below
            out.put(e)

    def wait_for(pred, what):
        end = time.monotonic() + 60
        while not pred():
            ev = out.get(timeout=max(0.01, end - time.monotonic()))
            assert not isinstance(ev, BaseException), ev
            assert ev is not None, "the stream ended before %s" % what

    def all_succeeded(jobs):
        return lambda: succeeded_all(j.msgid for j in jobs)(list(got))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with emq.Client(r.stack.frontend) as c:
        first = [c.send("benchjobs.add", i, 100) for i in range(10)]
        assert [j.result(30) for j in first] == [i + 100 for i in range(10)]
    wait_for(lambda: len(got) >= 5, "5 events")
    before = take(r.events(None, after=start, types=kinds), succeeded_all(j.msgid for j in first))
    r.restart()  # SIGKILL, then the same ports and data_dir
    gate.set()
    # The restarted router gives the same events the same offsets.
    assert take(r.events(None, after=start, types=kinds), succeeded_all(j.msgid for j in first)) == before
    eventually(60, lambda: free_slots(r.stack.admin) >= 2, "job manager back")
    with emq.Client(r.stack.frontend) as c:
        second = [c.send("benchjobs.add", i, 200) for i in range(10)]
        wait_for(all_succeeded(first + second), "every job's succeeded")
    # Once more while the stream waits for what comes next.
    r.restart()
    eventually(60, lambda: free_slots(r.stack.admin) >= 2, "job manager back")
    with emq.Client(r.stack.frontend) as c:
        third = c.send("benchjobs.add", 1, 300)
        last_job.append(third.msgid)
        assert third.result(30) == 301
    reader.join(60)
    assert not reader.is_alive()
    assert_increasing(got)  # so no offset repeats
    for j in first + second + [third]:
        kinds = [e["type"] for e in got if e.get("job") == j.msgid]
        assert kinds == ["accepted", "succeeded"], (j.msgid, kinds)
    assert stream.last == got[-1]["offset"]


# ---------------------------------------------------------------- a stand-in server

class StandIn:
    """An HTTP server answering each request with the next of ``script``:
    ``(status, body)``, or ``("sse", [chunks], hold)`` (text/event-stream,
    then close, or hold the connection ``hold`` seconds). Records
    ``(path, query, headers)``."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                outer.requests.append((u.path, dict(urllib.parse.parse_qsl(u.query)), dict(self.headers)))
                step = outer.script.pop(0) if outer.script else (404, {"error": "script over"})
                if step[0] == "sse":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for chunk in step[1]:
                        self.wfile.write(chunk.encode())
                        self.wfile.flush()
                        time.sleep(0.01)
                    time.sleep(step[2])
                    return
                status, body = step
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.addr = "127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def offline():
    """A Client without a router (events() needs none: only its address)."""
    c = emq.Client.__new__(emq.Client)
    c._config = None

    class Native:
        addr = "tcp://127.0.0.1:1"
        closed = False
    c._native = Native()
    return c


@pytest.fixture
def offline_client():
    return offline()


def test_sse_parsing_resume_and_retry_on_a_stand_in(offline_client):
    s = StandIn([
        (200, {"events": [], "next": 5}),
        ("sse", [": hello\n\n",
                 "id: 6\nevent: accepted\ndata: {\"offset\": 6,\r\ndata: \"type\": \"accepted\"}\r\n\r\n",
                 "retry: 10\nevent: started\ndata:{\"offset\":7,\"type\":\"started\"}\n\n",
                 "id: 8\ndata: {\"offset\": 8, \"type\": \"succ"], 0),  # cut short
        (503, {"error": "too many connections"}),
        ("sse", ["id: 7\ndata: {\"offset\": 7, \"type\": \"started\"}\n\n",  # seen: skipped
                 "id: 8\ndata: {\"offset\": 8, \"type\": \"succeeded\", \"result\": \"a\\nb\"}\n\n",
                 ": keepalive\n\n",
                 "id: 12\nevent: gap\ndata: {\"type\": \"gap\", \"from\": 9, \"to\": 12}\n\n",
                 "id: 13\ndata: {\"offset\": 13, \"type\": \"accepted\"}\n\n"], 30),
    ])
    try:
        t0 = time.monotonic()
        stream = offline_client.events(types=["accepted", "started"], queue="q", job="J", token="T", http=s.addr,
                                       timeout=1.5)
        assert stream.last == 5 and len(s.requests) == 1  # the position is taken at once
        got = list(stream)
        assert 1.4 < time.monotonic() - t0 < 10
    finally:
        s.close()
    assert got == [{"offset": 6, "type": "accepted"}, {"offset": 7, "type": "started"},
                   {"offset": 8, "type": "succeeded", "result": "a\nb"}, {"type": "gap", "from": 9, "to": 12},
                   {"offset": 13, "type": "accepted"}]
    assert stream.last == 13
    (p0, q0, h0), (p1, q1, h1), (_, q2, h2), (_, q3, h3) = s.requests
    assert p0 == p1 == "/v1/events"
    assert q0 == {"type": "accepted,started", "queue": "q", "job": "J"} and "application/json" in h0["Accept"]
    assert q1 == dict(q0, after="5") and h1["Accept"] == "text/event-stream" and h1["Last-Event-ID"] == "5"
    assert all(h["Authorization"] == "Bearer T" for h in (h0, h1, h2, h3))
    assert q2["after"] == q3["after"] == h3["Last-Event-ID"] == "7"


def test_refusals_raise_on_a_stand_in(offline_client):
    s = StandIn([(401, {"error": "unknown token"}), (403, {"error": "admin only"}),
                 (400, {"error": "type: unknown event type \"x\""})])
    try:
        with pytest.raises(emq.HttpError, match="unknown token") as ei:
            offline_client.events(http=s.addr, token="T")
        assert ei.value.status == 401
        with pytest.raises(emq.HttpError) as ei:
            next(offline_client.events(after=3, http=s.addr, token="T"))
        assert ei.value.status == 403 and ei.value.message.endswith("admin only")
        with pytest.raises(emq.HttpError, match="unknown event type") as ei:
            next(offline_client.events(after=3, types="x", http=s.addr, token="T"))
        assert ei.value.status == 400
    finally:
        s.close()


def test_a_rotated_admin_token_is_read_again_on_a_stand_in(offline_client, monkeypatch, tmp_path):
    (tmp_path / "admin.token").write_text("old\n")
    monkeypatch.delenv("EMQ_TOKEN", raising=False)
    monkeypatch.setenv("EMQ_DATA_DIR", str(tmp_path))
    s = StandIn([(401, {"error": "unknown token"}),
                 ("sse", ["id: 4\ndata: {\"offset\": 4, \"type\": \"accepted\"}\n\n"], 0),
                 (401, {"error": "unknown token"})])
    try:
        stream = offline_client.events(after=3, http=s.addr)
        (tmp_path / "admin.token").write_text("new\n")  # emq-cli token rotate
        assert next(stream)["offset"] == 4
        with pytest.raises(emq.HttpError, match="unknown token.*admin token from") as ei:
            next(stream)  # the stream ended; the new token is refused too: no third try
        assert ei.value.status == 401
    finally:
        s.close()
    assert [h["Authorization"] for _, _, h in s.requests] == ["Bearer old", "Bearer new", "Bearer new"]


def test_no_router_there_waits_until_the_timeout(offline_client):
    addr = "127.0.0.1:%d" % free_port()
    t0 = time.monotonic()
    assert list(offline_client.events(after=0, http=addr, token="T", timeout=0.8)) == []
    assert 0.7 < time.monotonic() - t0 < 5


def test_a_silent_connection_counts_as_lost_on_a_stand_in(offline_client, monkeypatch):
    monkeypatch.setattr(emq, "_KEEPALIVE_TIMEOUT", 0.5)
    s = StandIn([("sse", ["id: 1\ndata: {\"offset\": 1, \"type\": \"accepted\"}\n\n"], 30),  # then silent
                 ("sse", ["id: 2\ndata: {\"offset\": 2, \"type\": \"started\"}\n\n"], 30)])
    try:
        stream = offline_client.events(after=0, http=s.addr, token="T", timeout=5)
        assert [next(stream)["offset"], next(stream)["offset"]] == [1, 2]
        stream.close()
    finally:
        s.close()
    assert [q["after"] for _, q, _ in s.requests] == ["0", "1"]


def test_default_http_address(monkeypatch, tmp_path):
    monkeypatch.delenv("EMQ_HTTP_ADDR", raising=False)
    cfg = tmp_path / "settings.toml"
    cfg.write_text("")
    two = "tcp://10.0.0.7:47291,tcp://10.0.0.8:47291"
    assert emq._http_addrs(None, two, str(cfg)) == [("10.0.0.7", 47294), ("10.0.0.8", 47294)]
    assert emq._http_addrs(None, "ipc:///tmp/x", str(cfg)) == [("127.0.0.1", 47294)]
    # A settings file's loopback or wildcard host stands for the frontend's.
    cfg.write_text('http_addr = "127.0.0.1:9999"\n')
    assert emq._http_addrs(None, "tcp://10.0.0.7:47291", str(cfg)) == [("10.0.0.7", 9999)]
    cfg.write_text('http_addr = "192.168.1.1:9999"\n')
    assert emq._http_addrs(None, "tcp://10.0.0.7:47291", str(cfg)) == [("192.168.1.1", 9999)]
    assert emq._http_addrs("h:1,[::1]:2", "tcp://x:1", None) == [("h", 1), ("::1", 2)]
    monkeypatch.setenv("EMQ_HTTP_ADDR", "0.0.0.0:8080")
    assert emq._http_addrs(None, "tcp://10.0.0.7:47291", str(cfg)) == [("10.0.0.7", 8080)]
    with pytest.raises(ValueError):
        emq._http_addrs("h:x", "tcp://x:1", None)
