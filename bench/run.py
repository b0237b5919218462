"""Benchmark orchestrator (called by bench/run.sh after the builds).

Runs each scenario of issue #5 several times on this machine, in one run,
and prints one markdown table with median and min-max, plus the ratios
against EventMQ 0.3.13 and Celery measured in the same run. Every process it
starts it stops again by pid. Raw results: target/bench/raw.jsonl.
"""
import argparse
import atexit
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import resource
import shutil
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
JOBS = os.path.join(ROOT, "jobs")
RAW = os.path.join(ROOT, "target", "bench", "raw.jsonl")
procs = []


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def addrs():
    return {k: "tcp://127.0.0.1:%d" % free_port() for k in ("frontend", "backend", "admin")}


def start(cmd, env=None, log_name="proc"):
    e = dict(os.environ)
    e.update(env or {})
    f = open(os.path.join(tempfile.gettempdir(), "emq-bench-%s.log" % log_name), "w")
    p = subprocess.Popen(cmd, env=e, stdout=f, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
                         start_new_session=True)
    procs.append(p)
    return p


# Temporary directories of this run (journals, WALs, keys): removed when it
# ends; a router's data directory as soon as that router is stopped.
SCRATCH = []


def scratch_dir(prefix):
    d = tempfile.mkdtemp(prefix=prefix)
    SCRATCH.append(d)
    return d


atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in SCRATCH])


def stop(p, grace=10):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL) if False else p.kill()
            p.wait()
    if p in procs:
        procs.remove(p)
    if getattr(p, "scratch", None):
        shutil.rmtree(p.scratch, ignore_errors=True)


def stop_all():
    for p in list(procs):
        stop(p, 5)


def run_json(cmd, env=None, timeout=3600):
    e = dict(os.environ)
    e.update(env or {})
    out = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError("%s failed: %s %s" % (cmd[0], out.stdout[-500:], out.stderr[-2000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_slots(admin):
    try:
        v = run_json([os.path.join(REL, "emq-cli"), "--addr", admin, "--json", "--deadline", "2", "workers"], timeout=10)
    except Exception:
        return -1
    return sum(w.get("available_slots", 0) for w in v.get("connected_workers", {}).values())


def wait_slots(admin, want, limit=60):
    end = time.time() + limit
    while time.time() < end:
        if free_slots(admin) >= want:
            return
        time.sleep(0.2)
    raise RuntimeError("job manager never announced %d slots" % want)


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def emq_router(a, env=None):
    # A fresh journal directory per router: no run replays another's jobs.
    own_dir = "EMQ_DATA_DIR" not in (env or {})
    data_dir = scratch_dir("emq-bench-data-") if own_dir else env["EMQ_DATA_DIR"]
    base = {"RUST_LOG": "error", "EMQ_HTTP_ADDR": "", "EMQ_DATA_DIR": data_dir}
    p = start([os.path.join(REL, "emq-router"), "--frontend-addr", a["frontend"], "--backend-addr", a["backend"],
               "--administrative-addr", a["admin"]], env=dict(base, **(env or {})), log_name="router")
    if own_dir:
        p.scratch = data_dir
    end = time.time() + 20
    while free_slots(a["admin"]) < 0:
        if time.time() > end:
            raise RuntimeError("router did not start")
        time.sleep(0.1)
    return p


def emq_jm(a, workers=2, env=None):
    return start([os.path.join(REL, "emq-jobmanager"), "-B", a["backend"], "-J", str(workers), "--python-path", JOBS],
                 env=dict({"RUST_LOG": "error", "EMQ_ALLOWED_PATHS": "benchjobs"}, **(env or {})), log_name="jobmanager")


# ---- scenarios --------------------------------------------------------------

def s1_emq(args, n):
    a = addrs()
    r = emq_router(a)
    j = emq_jm(a)
    try:
        wait_slots(a["admin"], 2)
        out = os.path.join(tempfile.gettempdir(), "emq-bench-s1.txt")
        return run_json([os.path.join(args.eventmq_venv, "bin", "python"), os.path.join(ROOT, "bench", "eventmq_driver.py"),
                         "--addr", a["frontend"], "--n", str(n), "--out", out], env={"PYTHONPATH": JOBS})
    finally:
        stop(j)
        stop(r)


def s1_eventmq(args, n):
    a = addrs()
    v = os.path.join(args.eventmq_venv, "bin")
    wal = scratch_dir("emq-bench-wal-")
    r = start([os.path.join(v, "emq-router")], env={
        "EVENTMQ_FRONTEND_ADDR": a["frontend"], "EVENTMQ_BACKEND_ADDR": a["backend"],
        "EVENTMQ_ADMINISTRATIVE_ADDR": a["admin"], "EVENTMQ_WAL": os.path.join(wal, "wal.log")}, log_name="eventmq-router")
    j = start([os.path.join(v, "emq-jobmanager")], env={
        "EVENTMQ_WORKER_ADDR": a["backend"], "EVENTMQ_QUEUES": '[[10, "default"]]', "EVENTMQ_CONCURRENT_JOBS": "2",
        "PYTHONPATH": JOBS}, log_name="eventmq-jobmanager")
    try:
        wait_slots(a["admin"], 2)
        out = os.path.join(tempfile.gettempdir(), "emq-bench-s1-eventmq.txt")
        return run_json([os.path.join(v, "python"), os.path.join(ROOT, "bench", "eventmq_driver.py"),
                         "--addr", a["frontend"], "--n", str(n), "--out", out], env={"PYTHONPATH": JOBS})
    finally:
        stop(j)
        stop(r)


def s1_celery(args, n):
    out = os.path.join(tempfile.gettempdir(), "emq-bench-s1-celery.txt")
    return run_json([os.path.join(args.celery_venv, "bin", "python"), os.path.join(ROOT, "bench", "celery", "run_celery.py"),
                     "--n", str(n), "--out", out])


def with_router_and_jm(fn, jm_env=None, workers=2, router_env=None):
    a = addrs()
    r = emq_router(a, router_env)
    j = emq_jm(a, workers, jm_env)
    try:
        wait_slots(a["admin"], 1)
        time.sleep(1.0)  # all workers (and the spare) up
        return fn(a, r, j)
    finally:
        stop(j)
        stop(r)


def s2(args, jm_env=None):
    return with_router_and_jm(lambda a, r, j: run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                                                        "--n", str(args.s2_n), "--window", "1000"]), jm_env)


def router_status(admin):
    return run_json([os.path.join(REL, "emq-cli"), "--addr", admin, "--json", "--deadline", "5", "status"], timeout=15)


def s7(args, scenario, mode):
    """Scenario 1 (EventMQ's client) or 2 (Rust client with results) with
    the journal's `journal_sync` set to `mode`; adds fsyncs per second and
    jobs per fsync from the router's STATUS `journal` figures."""
    a = addrs()
    r = emq_router(a, env={"EMQ_JOURNAL_SYNC": mode})
    j = emq_jm(a)
    try:
        wait_slots(a["admin"], 2)
        if scenario == 1:
            out = os.path.join(tempfile.gettempdir(), "emq-bench-s7.txt")
            res = run_json([os.path.join(args.eventmq_venv, "bin", "python"), os.path.join(ROOT, "bench", "eventmq_driver.py"),
                            "--addr", a["frontend"], "--n", str(args.s1_n), "--out", out], env={"PYTHONPATH": JOBS})
        else:
            time.sleep(1.0)
            res = run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                            "--n", str(args.s2_n), "--window", "1000"])
        st = router_status(a["admin"])
        jr = st.get("journal") or {}
        syncs = jr.get("syncs", 0)
        res.update({"mode": mode, "syncs": syncs, "fsyncs_per_sec": syncs / res["secs"],
                    "jobs_per_fsync": st.get("accepted", 0) / syncs if syncs else 0.0,
                    "journal_bytes": jr.get("bytes", 0)})
        return res
    finally:
        stop(j)
        stop(r)


def s3(args):
    """One run of scenario 3: emq (router + job manager + 2 Python
    workers), the floor (bare forwarder + stub job manager) and our router
    + stub, all three up at once, taking turns in blocks of
    s3_n / s3_blocks round trips (the order turning each block), so that
    a change in the machine's state weighs on all three alike. Each
    figure is the median of its blocks' (max: the largest); `ratio` is
    emq's p50 over the floor's from the same blocks."""
    def turns(e, f, rt):
        n = max(1, args.s3_n // args.s3_blocks)
        stacks = [("emq", e), ("fwd", f), ("router", rt)]
        blocks = {k: [] for k, _ in stacks}
        for b in range(args.s3_blocks):
            for k, frontend in stacks[b % 3:] + stacks[:b % 3]:
                blocks[k].append(run_json([os.path.join(REL, "emq-bench"), "latency", "--frontend", frontend,
                                           "--n", str(n)]))
        out = {k: {"n": n * args.s3_blocks, "blocks": args.s3_blocks,
                   "p50_us": statistics.median(v["p50_us"] for v in bl),
                   "p99_us": statistics.median(v["p99_us"] for v in bl),
                   "max_us": max(v["max_us"] for v in bl)} for k, bl in blocks.items()}
        out["emq"]["ratio"] = out["emq"]["p50_us"] / out["fwd"]["p50_us"]
        out["emq"]["router_stub_ratio"] = out["router"]["p50_us"] / out["fwd"]["p50_us"]
        return out
    return with_router_and_jm(lambda a, r, j: with_stub(True, lambda fa: with_stub(False, lambda ra: turns(
        a["frontend"], fa["frontend"], ra["frontend"]))))


def with_stub(forwarder, fn):
    """Our router, or the bare forwarder, with the stub job manager."""
    a = addrs()
    if forwarder:
        r = start([os.path.join(REL, "emq-bench"), "forwarder", "--frontend", a["frontend"], "--backend", a["backend"]], log_name="fwd")
        time.sleep(0.3)
    else:
        r = emq_router(a)
    s = start([os.path.join(REL, "emq-bench"), "stub-jm", "--backend", a["backend"]], log_name="stub")
    try:
        time.sleep(0.5)
        return fn(a)
    finally:
        stop(s)
        stop(r)


def s4(args, forwarder):
    return with_stub(forwarder, lambda a: run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                                                    "--n", str(args.s4_n), "--window", "1000"]))


def s5(args, buffer_memory=None):
    """Router RSS growth per buffered 100-byte job. With `buffer_memory`
    set, jobs past it wait on disk (spill files): what is left per job in
    memory is its index (queue entry on disk, history record)."""
    a = addrs()
    env = {"EMQ_HWM": str(args.s5_n * 2)}
    if buffer_memory:
        env["EMQ_BUFFER_MEMORY"] = str(buffer_memory)
    r = emq_router(a, env=env)
    try:
        time.sleep(0.5)
        before = rss_kb(r.pid)
        fill = run_json([os.path.join(REL, "emq-bench"), "fill", "--frontend", a["frontend"], "--n", str(args.s5_n), "--size", "100"])
        time.sleep(0.5)
        after = rss_kb(r.pid)
    finally:
        stop(r)

    def jm_rest(a, r, j):
        time.sleep(2)
        kids = children(j.pid)
        return {"jm_kb": rss_kb(j.pid), "workers_kb": [rss_kb(k) for k in kids]}
    if buffer_memory:
        return {"n": args.s5_n, "buffer_memory": buffer_memory, "rss_before_kb": before, "rss_after_kb": after,
                "bytes_per_job": (after - before) * 1024 / args.s5_n}
    rest = with_router_and_jm(jm_rest)
    return {"n": args.s5_n, "payload_bytes": fill["payload_bytes"], "rss_before_kb": before, "rss_after_kb": after,
            "bytes_per_job": (after - before) * 1024 / args.s5_n, "jm_kb": rest["jm_kb"], "workers_kb": rest["workers_kb"],
            "jm_plus_workers_mb": (rest["jm_kb"] + sum(rest["workers_kb"])) / 1024}


def s6(args):
    pid_file = os.path.join(tempfile.gettempdir(), "emq-bench-worker.pid")
    return with_router_and_jm(lambda a, r, j: run_json([os.path.join(REL, "emq-bench"), "recovery", "--frontend", a["frontend"],
                                                        "--admin", a["admin"], "--jm-pid", str(j.pid), "--kills", str(args.s6_kills),
                                                        "--pid-file", pid_file]))



# ---- high availability (PostgreSQL journal) ---------------------------------

PG_BIN = "/usr/lib/postgresql/15/bin"


class PgCluster:
    """A private PostgreSQL 15 cluster (initdb + pg_ctl, free port, temp dir;
    as the postgres user when run as root), stopped by stop()."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="emq-bench-pg-")
        self.port = free_port()
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres:postgres", self.dir], check=True)
        self._run("initdb", "-A", "trust", "-U", "emq", "--no-sync", "-D", os.path.join(self.dir, "data"))
        self._run("pg_ctl", "-w", "-D", os.path.join(self.dir, "data"), "-l", os.path.join(self.dir, "log"), "-o",
                  "-p %d -k %s -c listen_addresses=127.0.0.1 -c max_connections=200" % (self.port, self.dir), "start")
        self.url = "postgresql://emq@127.0.0.1:%d/postgres" % self.port

    def _run(self, binary, *argv):
        cmd = [os.path.join(PG_BIN, binary)] + list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, check=True, capture_output=True)

    def stop(self):
        try:
            self._run("pg_ctl", "-w", "-D", os.path.join(self.dir, "data"), "-m", "immediate", "stop")
        except Exception:
            pass
        subprocess.run(["rm", "-rf", self.dir])


def http_health(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        s.settimeout(1)
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body or b"null")
    except Exception:
        return 0, None


def ha_router(a, url, http_port, env=None):
    data_dir = scratch_dir("emq-bench-data-")
    base = {"RUST_LOG": "error", "EMQ_HTTP_ADDR": "127.0.0.1:%d" % http_port, "EMQ_DATA_DIR": data_dir,
            "EMQ_JOURNAL_URL": url}
    return start([os.path.join(REL, "emq-router"), "--frontend-addr", a["frontend"], "--backend-addr", a["backend"],
                  "--administrative-addr", a["admin"]], env=dict(base, **(env or {})), log_name="router-ha-%d" % http_port)


def wait_role(port, role, limit=60):
    end = time.time() + limit
    while time.time() < end:
        code, h = http_health(port)
        if h and h.get("role") == role:
            return h
        time.sleep(0.02)
    raise RuntimeError("router at http %d never became %s" % (port, role))


def s8(args, journal):
    """Scenario 2 with the PostgreSQL journal (journal_url on a local
    cluster) or the file journal: jobs/s, and jobs per commit."""
    a = addrs()
    pg = PgCluster() if journal == "postgresql" else None
    r = ha_router(a, pg.url, free_port()) if pg else emq_router(a)
    j = emq_jm(a)
    try:
        wait_slots(a["admin"], 2)
        time.sleep(1.0)
        res = run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                        "--n", str(args.s2_n), "--window", "1000"])
        st = router_status(a["admin"])
        jr = st.get("journal") or {}
        commits = jr.get("syncs", 0)
        res.update({"journal": journal, "commits": commits,
                    "jobs_per_commit": st.get("accepted", 0) / commits if commits else 0.0,
                    "commit_ms": jr.get("sync_micros", 0) / commits / 1000 if commits else 0.0})
        return res
    finally:
        stop(j)
        stop(r)
        if pg:
            pg.stop()


def s9(args):
    """Failover: the leader SIGKILLed, then one job sent to both routers
    (emq-send --addr A,B --wait): kill → its result, over args.s9_kills
    kills at default settings (lease_ttl 4 s, heartbeats 3 s / 5 s). Also
    planned switchovers (SIGTERM → the standby leads)."""
    pg = PgCluster()
    a, b = addrs(), addrs()
    hp = [free_port(), free_port()]
    routers = [ha_router(a, pg.url, hp[0]), None]
    wait_role(hp[0], "leader")
    routers[1] = ha_router(b, pg.url, hp[1])
    wait_role(hp[1], "standby")
    j = start([os.path.join(REL, "emq-jobmanager"), "-B", "%s,%s" % (a["backend"], b["backend"]), "-J", "2",
               "--python-path", JOBS], env={"RUST_LOG": "error", "EMQ_ALLOWED_PATHS": "benchjobs"}, log_name="jobmanager-ha")
    both = "%s,%s" % (a["frontend"], b["frontend"])
    sets = [a, b]
    times, switch = [], []
    try:
        wait_slots(a["admin"], 2)
        leader = 0

        def probe():
            run_json([os.path.join(REL, "emq-send"), "--addr", both, "--wait", "--json", "--deadline", "120",
                      "benchjobs.add", "1", "2"], timeout=180)
        probe()
        for k in range(args.s9_kills + args.s9_switchovers):
            planned = k >= args.s9_kills
            time.sleep(1.0)
            t0 = time.time()
            if planned:
                routers[leader].send_signal(signal.SIGTERM)
            else:
                routers[leader].kill()
            if planned:
                wait_role(hp[1 - leader], "leader")
                switch.append(time.time() - t0)
                probe()
            else:
                probe()
                times.append(time.time() - t0)
            routers[leader].wait()
            procs.remove(routers[leader]) if routers[leader] in procs else None
            log("s9 %s %d: %.2f s" % ("switchover" if planned else "kill", k, (switch if planned else times)[-1]))
            routers[leader] = ha_router(sets[leader], pg.url, hp[leader])
            wait_role(hp[leader], "standby")
            leader = 1 - leader
        times.sort()
        switch.sort()
        pct = lambda xs, q: xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]
        return {"kills": len(times), "p50_s": pct(times, 0.5), "p99_s": pct(times, 0.99), "max_s": times[-1],
                "switchovers": len(switch), "switch_p50_s": pct(switch, 0.5) if switch else 0,
                "switch_max_s": switch[-1] if switch else 0}
    finally:
        stop(j)
        for r in routers:
            if r:
                stop(r)
        pg.stop()


def s10(args):
    """Takeover with args.s10_n buffered jobs: the leader SIGKILLed, then
    the time until the new leader has dispatched its first job (its STATUS
    shows a job in flight or processed), and until it leads."""
    pg = PgCluster()
    a, b = addrs(), addrs()
    hp = [free_port(), free_port()]
    env = {"EMQ_HWM": str(args.s10_n * 2)}
    r0 = ha_router(a, pg.url, hp[0], env)
    wait_role(hp[0], "leader")
    r1 = ha_router(b, pg.url, hp[1], env)
    wait_role(hp[1], "standby")
    j = None
    try:
        t = time.time()
        fill = run_json([os.path.join(REL, "emq-bench"), "fill", "--frontend", a["frontend"], "--n", str(args.s10_n),
                         "--size", "100"])
        fill_secs = time.time() - t
        rows = subprocess.run(["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-U", "emq", "-d", "postgres", "-p", str(pg.port),
                               "-c", "SELECT count(*), pg_size_pretty(pg_total_relation_size('emq_journal')) FROM emq_journal"],
                              capture_output=True, text=True).stdout.strip()
        j = start([os.path.join(REL, "emq-jobmanager"), "-B", "%s,%s" % (a["backend"], b["backend"]), "-J", "2",
                   "--python-path", JOBS], env={"RUST_LOG": "error", "EMQ_ALLOWED_PATHS": "benchjobs"}, log_name="jobmanager-ha")
        # Let the job manager attach to the leader first, then kill it.
        time.sleep(2)
        t0 = time.time()
        r0.kill()
        wait_role(hp[1], "leader", limit=600)
        leads = time.time() - t0
        end = time.time() + 600
        first = None
        while time.time() < end:
            try:
                st = router_status(b["admin"])
            except Exception:
                time.sleep(0.05)
                continue
            inflight = sum((st.get("inflight_messages_by_queue") or {}).values())
            processed = sum((st.get("processed_messages_by_queue") or {}).values())
            if inflight + processed > 0:
                first = time.time() - t0
                break
            time.sleep(0.05)
        return {"n": args.s10_n, "fill_secs": fill_secs, "fill_jobs_per_sec": args.s10_n / fill_secs,
                "journal_rows_and_size": rows, "leads_s": leads, "first_dispatch_s": first}
    finally:
        if j:
            stop(j)
        stop(r0)
        stop(r1)
        pg.stop()

# ---- running and reporting ---------------------------------------------------

def s11(args):
    """Workflows (issue 25): N chords of M no-op members against N×(M+1)
    plain no-op jobs on the same router and job manager, in the same run;
    the release gap (last member's end → callback dispatched, the router's
    own timestamps); and the router's memory per waiting node (chords sent
    with no job manager: members buffered, callbacks held)."""
    n, m = args.s11_n, args.s11_members
    jobs = n * (m + 1)

    def both(a, r, j):
        plain = run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                          "--n", str(jobs), "--window", "1000"])
        ch = run_json([os.path.join(REL, "emq-bench"), "chords", "--frontend", a["frontend"], "--admin", a["admin"],
                       "--n", str(n), "--members", str(m), "--window", "200"])
        return {"plain_jobs_per_sec": plain["jobs_per_sec"], "chord_jobs_per_sec": ch["jobs_per_sec"],
                "ratio_pct": 100 * ch["jobs_per_sec"] / plain["jobs_per_sec"],
                "release_p50_us": ch["release_p50_us"], "release_p99_us": ch["release_p99_us"],
                "chords_per_sec": ch["chords_per_sec"], "failed": ch["failed"]}
    out = with_router_and_jm(both)
    a = addrs()
    r = emq_router(a, env={"EMQ_HWM": str(jobs * 2)})
    try:
        time.sleep(0.5)
        before = rss_kb(r.pid)
        run_json([os.path.join(REL, "emq-bench"), "chords", "--frontend", a["frontend"], "--admin", a["admin"],
                  "--n", str(n), "--members", str(m), "--fill"])
        time.sleep(0.5)
        after = rss_kb(r.pid)
        st = router_status(a["admin"])
    finally:
        stop(r)
    out.update({"n": n, "members": m, "bytes_per_waiting_node": (after - before) * 1024 / jobs,
                "held": st.get("held"), "buffered_members": sum((st.get("waiting_messages_by_queue") or {}).values())})
    return out


def s12(args):
    """Limits (issue 26): scenario 2's no-op jobs, each under limit `p`
    (concurrency 1 per partition) over 10,000 partitions, against the same
    jobs with no limit, on the same router and job manager in the same run
    (the order alternates between runs)."""
    env = {"EMQ_LIMITS": "p=concurrency:1"}
    flip = len(getattr(s12, "runs", []))
    s12.runs = getattr(s12, "runs", []) + [1]

    def both(a, r, j):
        def run(limited):
            cmd = [os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                   "--n", str(args.s2_n), "--window", "1000"]
            if limited:
                cmd += ["--limit", "p", "--partitions", str(args.s12_partitions)]
            return run_json(cmd)
        first, second = (True, False) if flip % 2 else (False, True)
        x = run(first)
        y = run(second)
        lim, plain = (x, y) if first else (y, x)
        st = router_status(a["admin"])
        return {"plain_jobs_per_sec": plain["jobs_per_sec"], "limited_jobs_per_sec": lim["jobs_per_sec"],
                "ratio_pct": 100 * lim["jobs_per_sec"] / plain["jobs_per_sec"], "failed": lim["failed"],
                "limit_running_after": (st.get("limits") or {}).get("p", {}).get("running")}
    return with_router_and_jm(both, router_env=env)


def s13(args):
    """Progress (issue 26): scenario 2 while 10 other jobs (a second job
    manager, queue `progress`) each call progress() 100 times a second —
    1,000 updates/s — against scenario 2 beside the same 10 jobs sleeping
    the same steps without reporting. Same router, same run; the order
    alternates between runs."""
    flip = len(getattr(s13, "runs", []))
    s13.runs = getattr(s13, "runs", []) + [1]

    def both(a, r, j):
        j2 = emq_jm(a, 10, {"EMQ_QUEUES": "10:progress"})
        try:
            wait_slots(a["admin"], 12)
            time.sleep(1.0)

            def run(report):
                # Long enough to cover the measurement; each load job's
                # emq-send waits for its end, so the next run starts clean.
                secs = args.s13_load_secs
                load = [run_json_bg([os.path.join(REL, "emq-send"), "--addr", a["frontend"], "--queue", "progress",
                                     "--wait", "benchjobs.progress_loop", "--", str(secs), "100",
                                     "true" if report else "false"])
                        for _ in range(10)]
                time.sleep(1.5)
                st = router_status(a["admin"])
                out = run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                                "--n", str(args.s2_n), "--window", "1000"])
                st2 = router_status(a["admin"])
                for m in load:
                    m.wait()
                if out["secs"] + 1.5 > secs:
                    log("13: the load ended before the measurement (raise --s13-load-secs)")
                return out, st, st2
            order = (True, False) if flip % 2 else (False, True)
            got = {rep: run(rep) for rep in order}
        finally:
            stop(j2)
        (rep, st, st2), (quiet, _, _) = got[True], got[False]
        return {"with_progress_jobs_per_sec": rep["jobs_per_sec"], "without_jobs_per_sec": quiet["jobs_per_sec"],
                "ratio_pct": 100 * rep["jobs_per_sec"] / quiet["jobs_per_sec"],
                "running_with_progress": len(st2.get("running_progress") or {}),
                "load_running": (st2.get("inflight_messages_by_queue") or {}).get("progress", 0)}
    return with_router_and_jm(both)


def http_router(a, env=None):
    """Our router with its HTTP server on a free loopback port: (process,
    "host:port", path of its admin token file)."""
    data_dir = scratch_dir("emq-bench-data-")
    port = free_port()
    r = emq_router(a, dict({"EMQ_HTTP_ADDR": "127.0.0.1:%d" % port, "EMQ_DATA_DIR": data_dir}, **(env or {})))
    tok = os.path.join(data_dir, "admin.token")
    end = time.time() + 20
    while http_health(port)[0] != 200 or not os.path.exists(tok):
        if time.time() > end:
            raise RuntimeError("router's HTTP server did not start")
        time.sleep(0.1)
    return r, "127.0.0.1:%d" % port, tok


def http_get_json(addr, path, token):
    import http.client
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        c.request("GET", path, headers={"Authorization": "Bearer " + open(token).read().strip()})
        resp = c.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError("GET %s: %d %s" % (path, resp.status, body[:200]))
        return json.loads(body)
    finally:
        c.close()


def next_flip(fn):
    """0, 1, 0, 1, ... over the runs of scenario `fn`: which side goes first
    (the order alternates between runs)."""
    fn.runs = getattr(fn, "runs", 0) + 1
    return (fn.runs - 1) % 2


@contextlib.contextmanager
def http_router_and_jm():
    """A router with its HTTP server and one job manager, ready: yields the
    addresses, the HTTP address and the admin token file; stops both."""
    a = addrs()
    r, http, tok = http_router(a)
    j = emq_jm(a)
    try:
        wait_slots(a["admin"], 1)
        time.sleep(1.0)
        yield a, http, tok
    finally:
        stop(j)
        stop(r)


def s14(args):
    """HTTP submission (HTTP API v1): 8 keep-alive connections, each POST
    /v1/jobs then GET /v1/jobs/{id}/result?wait=30 until 200 (one job at a
    time per connection unless --s14-pipeline), against the Rust client of
    scenario 2 (window 1000) and the same client with 8 outstanding (the
    HTTP side's concurrency), on the same router and job manager in the
    same run; the order alternates between runs."""
    flip = next_flip(s14)
    with http_router_and_jm() as (a, http, tok):

        def run(kind):
            if kind == "http":
                return run_json([os.path.join(REL, "emq-bench"), "http-throughput", "--addr", http, "--token-file", tok,
                                 "--conns", str(args.s14_conns), "--n", str(args.s14_n), "--pipeline", str(args.s14_pipeline)])
            window = 1000 if kind == "rust" else args.s14_conns * args.s14_pipeline
            return run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                             "--n", str(args.s2_n if kind == "rust" else args.s14_n), "--window", str(window)])
        kinds = ["http", "rust", "rust8"]
        if flip % 2:
            kinds.reverse()
        got = {k: run(k) for k in kinds}
        h, z, z8 = got["http"], got["rust"], got["rust8"]
        return {"http_jobs_per_sec": h["jobs_per_sec"], "http_failed": h["failed"], "http_n": h["n"],
                "http_result_requests": h["result_requests"], "http_post_ms": h.get("post_ms_mean"),
                "http_result_ms": h.get("result_ms_mean"), "pipeline": args.s14_pipeline, "conns": args.s14_conns,
                "rust_jobs_per_sec": z["jobs_per_sec"], "rust_same_conc_jobs_per_sec": z8["jobs_per_sec"],
                "ratio_pct": 100 * h["jobs_per_sec"] / z["jobs_per_sec"],
                "ratio_same_conc_pct": 100 * h["jobs_per_sec"] / z8["jobs_per_sec"]}


def s15(args):
    """Scenario 2 with one SSE reader of every event (GET /v1/events,
    text/event-stream, admin token, from the offset at the start) against
    scenario 2 alone, on the same router and job manager in the same run
    (the order alternates between runs). The reader's lag per event: its
    wall clock at receipt minus the event's `at`."""
    flip = next_flip(s15)
    with http_router_and_jm() as (a, http, tok):

        def load():
            return run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                             "--n", str(args.s2_n), "--window", "1000"])

        def with_reader():
            after = http_get_json(http, "/v1/events?limit=1", tok)["next"]
            # Every job of the load (and its warm-up job) ends `succeeded`.
            rd = subprocess.Popen([os.path.join(REL, "emq-bench"), "sse-reader", "--addr", http, "--token-file", tok,
                                   "--after", str(after), "--stop-count", str(args.s2_n + 1)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(rd)
            try:
                time.sleep(0.5)
                out = load()
                so, se = rd.communicate(timeout=120)
            finally:
                stop(rd)
            if rd.returncode != 0:
                raise RuntimeError("sse-reader failed: %s" % se[-1000:])
            return out, json.loads(so.strip().splitlines()[-1]), after
        if flip % 2:
            plain = load()
            (rdr, ev, after) = with_reader()
        else:
            (rdr, ev, after) = with_reader()
            plain = load()
        return {"with_reader_jobs_per_sec": rdr["jobs_per_sec"], "without_jobs_per_sec": plain["jobs_per_sec"],
                "ratio_pct": 100 * rdr["jobs_per_sec"] / plain["jobs_per_sec"], "after": after,
                "events": ev["events"], "events_per_sec": ev["events_per_sec"], "reader_secs": ev["secs"],
                "load_secs": rdr["secs"], "lag_p50_ms": ev["lag_p50_ms"], "lag_p99_ms": ev["lag_p99_ms"],
                "lag_max_ms": ev["lag_max_ms"], "complete": ev["complete"], "gaps": ev["gaps"]}


def run_json_bg(cmd):
    """Starts ``cmd`` (its output discarded): a load beside a measurement."""
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def repeat(name, k, fn):
    vals = []
    for i in range(k):
        log("%s run %d/%d" % (name, i + 1, k))
        try:
            v = fn()
        except Exception as e:
            log("%s failed: %s" % (name, e))
            stop_all()
            continue
        v["scenario"] = name
        os.makedirs(os.path.dirname(RAW), exist_ok=True)
        with open(RAW, "a") as f:
            f.write(json.dumps(v) + "\n")
        log(name, json.dumps(v))
        vals.append(v)
    return vals


def summary(vals, key, fmt="{:,.0f}"):
    xs = [v[key] for v in vals if key in v]
    if not xs:
        return "n/a", None
    med = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(med), med
    return "%s (%s–%s)" % (fmt.format(med), fmt.format(min(xs)), fmt.format(max(xs))), med


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid, reaped=True):
    """CPU seconds of process ``pid`` (all its threads, user + system) and,
    with ``reaped``, what it has reaped of its children's; 0 once it is
    gone."""
    try:
        s = open("/proc/%d/stat" % pid).read()
        f = s[s.rindex(")") + 2:].split()
        return (int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if reaped else 0)) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def descendants(pid):
    out = []
    for c in children(pid):
        out += [c] + descendants(c)
    return out


def below_cpu(pid):
    """CPU seconds of everything ``pid`` started (living or reaped by one
    of them): a job manager's template and workers. A worker alive at
    both ends counts its time between them; one reaped meanwhile is in
    its reaper's children's time, its whole life, from which the first
    reading took what it had used by then."""
    return sum(proc_cpu(c) for c in descendants(pid))


def machine_cpu():
    """/proc/stat's first line: (busy, idle + iowait, steal) in seconds."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / CLK_TCK, (f[3] + f[4]) / CLK_TCK, f[7] / CLK_TCK


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CpuPerJob:
    """Where the machine's CPU went during a measured run, per job: each
    part's CPU between two readings ÷ jobs. ``parts`` maps a name to a
    function reading that part's CPU seconds; the client is this
    process's reaped children (the run's own subprocess)."""

    def __init__(self, parts):
        self.parts = dict(parts, client=children_cpu)
        self.before = {k: f() for k, f in self.parts.items()}
        self.machine = machine_cpu()

    def per_job(self, n):
        after = {k: f() for k, f in self.parts.items()}
        m = machine_cpu()
        out = {k: 1e6 * (after[k] - self.before[k]) / n for k in self.parts}
        busy, idle, steal = (1e6 * (b - a) / n for a, b in zip(self.machine, m))
        out["rest"] = busy - sum(out.values())
        out["idle"] = idle
        out["steal"] = steal
        out["total"] = busy + idle + steal
        return {k: round(v, 1) for k, v in out.items()}


def s16(args, system, ms):
    """Real work (issue 29): CPU-bound jobs of `ms` ms of CPU each
    (benchjobs.spin_append), as many workers as cores, sent fire-and-forget
    by EventMQ's own client (emq, EventMQ) or Celery's apply_async (Celery
    prefork, concurrency = cores); timed until the last job's line is on
    disk. Efficiency = jobs/s ÷ (cores ÷ job CPU seconds)."""
    cores = os.cpu_count() or 1
    n = max(200, int(args.s16_secs * cores * 1000.0 / ms))
    if system == "eventmq":
        n = min(n, args.s16_eventmq_n)  # it runs ~30-40 jobs/s whatever the job
    out = os.path.join(tempfile.gettempdir(), "emq-bench-s16-%s.txt" % system)
    if system == "bare":
        # The ceiling: the same jobs in a plain loop, one process per core,
        # no job system (bench/spin_baseline.py).
        cpu = CpuPerJob({})
        r = run_json([sys.executable, os.path.join(ROOT, "bench", "spin_baseline.py"), "--n", str(n), "--out", out,
                      "--spin-ms", str(ms)])
        r["cpu_us_per_job"] = cpu.per_job(n)
        # Its "client" is the loop processes: the jobs themselves.
        r["cpu_us_per_job"]["workers"] = r["cpu_us_per_job"].pop("client")
    elif system == "celery":
        r = run_json([os.path.join(args.celery_venv, "bin", "python"), os.path.join(ROOT, "bench", "celery", "run_celery.py"),
                      "--n", str(n), "--out", out, "--spin-ms", str(ms)])
    elif system == "eventmq":
        a = addrs()
        v = os.path.join(args.eventmq_venv, "bin")
        wal = scratch_dir("emq-bench-wal-")
        rt = start([os.path.join(v, "emq-router")], env={
            "EVENTMQ_FRONTEND_ADDR": a["frontend"], "EVENTMQ_BACKEND_ADDR": a["backend"],
            "EVENTMQ_ADMINISTRATIVE_ADDR": a["admin"], "EVENTMQ_WAL": os.path.join(wal, "wal.log")}, log_name="eventmq-router")
        jm = start([os.path.join(v, "emq-jobmanager")], env={
            "EVENTMQ_WORKER_ADDR": a["backend"], "EVENTMQ_QUEUES": '[[10, "default"]]',
            "EVENTMQ_CONCURRENT_JOBS": str(cores), "PYTHONPATH": JOBS}, log_name="eventmq-jobmanager")
        try:
            wait_slots(a["admin"], cores)
            r = run_json([os.path.join(v, "python"), os.path.join(ROOT, "bench", "eventmq_driver.py"), "--addr", a["frontend"],
                          "--n", str(n), "--out", out, "--spin-ms", str(ms)], env={"PYTHONPATH": JOBS})
        finally:
            stop(jm)
            stop(rt)
    else:
        a = addrs()
        rt = emq_router(a)
        jm = emq_jm(a, cores)
        try:
            wait_slots(a["admin"], cores)
            time.sleep(1.0)
            # Where the CPU goes, per job (the jobs included in "workers").
            cpu = CpuPerJob({"router": lambda: proc_cpu(rt.pid), "job_manager": lambda: proc_cpu(jm.pid, reaped=False),
                             "workers": lambda: below_cpu(jm.pid)})
            if system == "emq-rust":
                # emq's own Rust client: the same jobs with results, a
                # window of 1000, timed until the last result is back.
                r = run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"], "--n", str(n),
                              "--window", "1000", "--callable", "spin_append", "--args", json.dumps([out, "x", ms])])
            else:
                r = run_json([os.path.join(args.eventmq_venv, "bin", "python"), os.path.join(ROOT, "bench", "eventmq_driver.py"),
                              "--addr", a["frontend"], "--n", str(n), "--out", out, "--spin-ms", str(ms)],
                             env={"PYTHONPATH": JOBS})
            r["cpu_us_per_job"] = cpu.per_job(n)
        finally:
            stop(jm)
            stop(rt)
    r["efficiency_pct"] = 100.0 * r["jobs_per_sec"] * (ms / 1000.0) / cores
    r["ms"] = ms
    return r


def s17(args):
    """Many clients (issue 29): 1,000 connected clients (a DEALER each)
    each sending 100 jobs with results at once, against one client sending
    the same number of jobs (window 1000) on the same router and job
    manager in the same run (the order alternates). Also the router's RSS
    per idle connected client and each client's completion time."""
    return many_vs_one(args.s17_clients, args.s17_jobs, next_flip(s17))


def s17_sweep(args, clients):
    """The many-clients curve (issue 29): `clients` clients sharing the same
    total number of jobs (--s17-clients × --s17-jobs), all at once, on a
    fresh router and job manager; beside it one client with a window of
    1000 on the same router (the order alternates)."""
    total = args.s17_clients * args.s17_jobs
    return many_vs_one(clients, total // clients, next_flip(s17_sweep))


def many_vs_one(clients, jobs, flip):
    """`clients` clients × `jobs` jobs each, all at once (`emq-bench
    many-clients`), and one client sending as many with a window of 1000,
    on one fresh router and job manager; `flip` odd: the one client first."""
    def both(a, r, j):
        def one(extra=()):
            return run_json([os.path.join(REL, "emq-bench"), "throughput", "--frontend", a["frontend"],
                             "--n", str(clients * jobs), "--window", "1000"] + list(extra))

        def many(extra=()):
            return run_json([os.path.join(REL, "emq-bench"), "many-clients", "--frontend", a["frontend"],
                             "--router-pid", str(r.pid), "--clients", str(clients), "--jobs", str(jobs)] + list(extra))
        # As emq's client sends them (each client's jobs as REQUESTS, the
        # one client's window refills as REQUESTS), then both one REQUEST
        # per job (a client sending its jobs one by one).
        if flip % 2:
            single, m = one(), many()
            m_singles, singles = many(["--one-by-one"]), one(["--one-by-one"])
        else:
            m, single = many(), one()
            singles, m_singles = one(["--one-by-one"]), many(["--one-by-one"])
        m["one_client_jobs_per_sec"] = single["jobs_per_sec"]
        m["ratio_pct"] = 100.0 * m["jobs_per_sec"] / single["jobs_per_sec"]
        m["many_singles_jobs_per_sec"] = m_singles["jobs_per_sec"]
        m["one_client_singles_jobs_per_sec"] = singles["jobs_per_sec"]
        m["ratio_singles_pct"] = 100.0 * m_singles["jobs_per_sec"] / singles["jobs_per_sec"]
        m["singles_max_over_median"] = m_singles["max_over_median"]
        return m
    return with_router_and_jm(both)


def s18(args):
    """CURVE with EventMQ's own client (issue 29): scenario 1 (emq router +
    job manager, 2 workers; EventMQ 0.3.13's Sender + send_request,
    fire-and-forget append_line, N = --s1-n) in plaintext and with CURVE on
    the router's frontend and backend (keys from `emq keygen`; the client's
    pyzmq socket gets the CURVE options, see bench/eventmq_driver.py), each
    on a fresh router + job manager, in the same run (the order
    alternates). A refused key fails the run (handshake timeout), never
    hangs."""
    import shutil
    flip = next_flip(s18)
    keys = tempfile.mkdtemp(prefix="emq-bench-keys-")
    try:
        for name in ("router", "client", "jm"):
            subprocess.run([os.path.join(REL, "emq"), "keygen", "--out-dir", keys, "--name", name],
                           check=True, capture_output=True, timeout=30)
        for d, name in (("front", "client"), ("back", "jm")):
            os.mkdir(os.path.join(keys, d))
            shutil.copy(os.path.join(keys, name + ".pub"), os.path.join(keys, d))
        k = lambda f: os.path.join(keys, f)

        def run(mode):
            renv, jenv, flags = {}, {}, []
            if mode == "curve":
                renv = {"EMQ_CURVE_SECRET_KEY": k("router.key"), "EMQ_CURVE_FRONTEND_KEYS": k("front"),
                        "EMQ_CURVE_BACKEND_KEYS": k("back")}
                jenv = {"EMQ_CURVE_SERVER_KEY": k("router.pub"), "EMQ_CURVE_KEY": k("jm.key")}
                flags = ["--curve-server-key", k("router.pub"), "--curve-key", k("client.key")]
            a = addrs()
            r = emq_router(a, renv)
            j = emq_jm(a, env=jenv)
            try:
                wait_slots(a["admin"], 2)
                out = os.path.join(tempfile.gettempdir(), "emq-bench-s18-%s.txt" % mode)
                v = run_json([os.path.join(args.eventmq_venv, "bin", "python"), os.path.join(ROOT, "bench", "eventmq_driver.py"),
                              "--addr", a["frontend"], "--n", str(args.s1_n), "--out", out, "--handshake-timeout", "10",
                              "--stall-timeout", "60"] + flags, env={"PYTHONPATH": JOBS}, timeout=1800)
                if not v.get("complete"):
                    raise RuntimeError("%s: output incomplete: %s" % (mode, v))
                return v
            finally:
                stop(j)
                stop(r)
        modes = ["plain", "curve"]
        if flip % 2:
            modes.reverse()
        got = {m: run(m) for m in modes}
        p, c = got["plain"], got["curve"]
        return {"n": args.s1_n, "first": modes[0], "plain_jobs_per_sec": p["jobs_per_sec"], "curve_jobs_per_sec": c["jobs_per_sec"],
                "ratio_pct": 100.0 * c["jobs_per_sec"] / p["jobs_per_sec"],
                "plain_send_rate": p["n"] / p["send_secs"], "curve_send_rate": c["n"] / c["send_secs"]}
    finally:
        shutil.rmtree(keys, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eventmq-venv", default=os.path.join(ROOT, "target", "venv"),
                    help="EventMQ 0.3.13's venv (scenarios 1 and 7 only)")
    ap.add_argument("--celery-venv", default="NO_REDIS")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="1,2,3,4,5,6")
    ap.add_argument("--quick", action="store_true", help="smaller N everywhere (a smoke run)")
    ap.add_argument("--s1-n", type=int, default=20000)
    ap.add_argument("--eventmq-n", type=int, default=2000,
                    help="jobs for EventMQ in scenario 1 (it runs ~30-40 jobs/s: 20000 would take ~10 min per run)")
    ap.add_argument("--eventmq-runs", type=int, default=1)
    ap.add_argument("--s2-n", type=int, default=100000)
    ap.add_argument("--s3-n", type=int, default=5000)
    ap.add_argument("--s3-blocks", type=int, default=10, help="turns emq, the floor and router + stub take per scenario 3 run")
    ap.add_argument("--s4-n", type=int, default=200000)
    ap.add_argument("--s5-n", type=int, default=1000000)
    ap.add_argument("--s6-kills", type=int, default=50)
    ap.add_argument("--s9-kills", type=int, default=20)
    ap.add_argument("--s9-switchovers", type=int, default=5)
    ap.add_argument("--s10-n", type=int, default=1000000)
    ap.add_argument("--s11-n", type=int, default=10000)
    ap.add_argument("--s11-members", type=int, default=10)
    ap.add_argument("--s12-partitions", type=int, default=10000)
    ap.add_argument("--s13-load-secs", type=int, default=15)
    ap.add_argument("--s14-n", type=int, default=20000, help="jobs over HTTP in scenario 14")
    ap.add_argument("--s14-conns", type=int, default=8)
    ap.add_argument("--s14-pipeline", type=int, default=1,
                    help="jobs written at once per HTTP connection in scenario 14 (1: one job at a time)")
    ap.add_argument("--s17-clients", type=int, default=1000)
    ap.add_argument("--s17-jobs", type=int, default=100)
    ap.add_argument("--s17-sweep", default="",
                    help="scenario 17's curve: client counts (e.g. 1,10,100,1000) sharing --s17-clients × --s17-jobs jobs")
    ap.add_argument("--s16-systems", default="bare,emq,emq-rust,eventmq,celery",
                    help="scenario 16: systems to run (emq: EventMQ's client fire-and-forget; emq-rust: emq's Rust client with "
                         "results; bare: no job system, the ceiling)")
    ap.add_argument("--s16-secs", type=float, default=10.0,
                    help="scenario 16: each run sends jobs worth this many seconds of the machine's CPU")
    ap.add_argument("--s16-ms", default="1,10", help="scenario 16: job CPU times (ms)")
    ap.add_argument("--s16-eventmq-n", type=int, default=300, help="scenario 16: jobs per EventMQ run")
    args = ap.parse_args()
    # Scenarios run their drivers from other directories: a relative venv
    # path (`--celery-venv target/bench-venv`) would not be found there.
    if args.celery_venv != "NO_REDIS":
        args.celery_venv = os.path.abspath(args.celery_venv)
    if args.quick:
        args.s1_n, args.eventmq_n, args.s2_n, args.s3_n, args.s4_n, args.s5_n, args.s6_kills = 2000, 200, 20000, 1000, 50000, 100000, 10
    only = set(args.only.split(","))
    rows, notes = [], []
    res = {}
    try:
        if "1" in only:
            res["s1_emq"] = repeat("1 emq", args.runs, lambda: s1_emq(args, args.s1_n))
            res["s1_eventmq"] = repeat("1 eventmq", args.eventmq_runs, lambda: s1_eventmq(args, args.eventmq_n))
            if args.celery_venv != "NO_REDIS" and os.path.isdir(args.celery_venv):
                res["s1_celery"] = repeat("1 celery", args.runs, lambda: s1_celery(args, args.s1_n))
            else:
                notes.append("Celery + Redis column skipped: no redis-server on this machine (bench/celery/setup.sh printed NO_REDIS).")
        if "2" in only:
            res["s2"] = repeat("2 defaults", args.runs, lambda: s2(args))
            res["s2_tuned"] = repeat("2 tuned", args.runs, lambda: s2(args, {
                "EMQ_MAX_JOB_COUNT": "1000000", "EMQ_WORKER_PIPELINE": "4", "EMQ_PREFETCH": "512"}))
        if "3" in only:
            both = repeat("3", args.runs, lambda: s3(args))
            res["s3"], res["s3_fwd"], res["s3_router"] = ([v[k] for v in both] for k in ("emq", "fwd", "router"))
        if "4" in only:
            res["s4_router"] = repeat("4 router", args.runs, lambda: s4(args, False))
            res["s4_fwd"] = repeat("4 forwarder", args.runs, lambda: s4(args, True))
        if "5" in only:
            res["s5"] = repeat("5", max(1, args.runs // 2), lambda: s5(args))
            res["s5_spill"] = repeat("5 spilled", 1, lambda: s5(args, 64 << 20))
        if "6" in only:
            res["s6"] = repeat("6", max(1, args.runs // 2), lambda: s6(args))
        if "7" in only:
            # Interleaved, so the three modes see the same machine.
            for k in range(args.runs):
                for sc in (1, 2):
                    for mode in ("fsync", "write", "off"):
                        res.setdefault("s7_%d_%s" % (sc, mode), []).extend(
                            repeat("7 s%d %s" % (sc, mode), 1, lambda: s7(args, sc, mode)))
        if "8" in only:
            # Interleaved, so both journals see the same machine.
            for k in range(args.runs):
                for journal in ("file", "postgresql"):
                    res.setdefault("s8_" + journal, []).extend(repeat("8 " + journal, 1, lambda: s8(args, journal)))
        if "9" in only:
            res["s9"] = repeat("9", 1, lambda: s9(args))
        if "10" in only:
            res["s10"] = repeat("10", 1, lambda: s10(args))
        if "11" in only:
            res["s11"] = repeat("11", args.runs, lambda: s11(args))
        if "12" in only:
            res["s12"] = repeat("12", args.runs, lambda: s12(args))
        if "13" in only:
            res["s13"] = repeat("13", args.runs, lambda: s13(args))
        if "14" in only:
            res["s14"] = repeat("14", args.runs, lambda: s14(args))
        if "15" in only:
            res["s15"] = repeat("15", args.runs, lambda: s15(args))
        if "16" in only:
            systems = [x for x in args.s16_systems.split(",") if x in ("bare", "emq", "emq-rust", "eventmq")]
            if "celery" in args.s16_systems.split(",") and args.celery_venv != "NO_REDIS" and os.path.isdir(args.celery_venv):
                systems.append("celery")
            for k in range(args.runs):
                for ms in [float(x) for x in args.s16_ms.split(",")]:
                    for system in systems:
                        res.setdefault("s16_%s_%g" % (system, ms), []).extend(
                            repeat("16 %s %g ms" % (system, ms), 1, lambda: s16(args, system, ms)))
        if "17" in only:
            if args.s17_sweep:
                for k in range(args.runs):
                    for c in [int(x) for x in args.s17_sweep.split(",")]:
                        res.setdefault("s17_%d" % c, []).extend(repeat("17 %d clients" % c, 1, lambda: s17_sweep(args, c)))
            else:
                res["s17"] = repeat("17", args.runs, lambda: s17(args))
        if "18" in only:
            res["s18"] = repeat("18", args.runs, lambda: s18(args))
    finally:
        stop_all()

    def row(scn, what, vals, key, fmt="{:,.0f}", target=""):
        text, med = summary(vals or [], key, fmt)
        rows.append((scn, what, text, target))
        return med
    if "1" in only:
        e = row("1", "emq router + emq job manager, EventMQ client: jobs/s (N=%d)" % args.s1_n, res.get("s1_emq"), "jobs_per_sec")
        for v in res.get("s1_emq") or []:
            if v.get("send_secs"):
                v["send_rate"] = v["n"] / v["send_secs"]
        sr = row("1", "  the EventMQ client's own send rate in those runs (send_request loop alone): jobs/s", res.get("s1_emq"), "send_rate")
        if e and sr:
            rows.append(("1", "  emq / the client's send rate", "%.0f%%" % (100 * e / sr), "limited by the client"))
        m = row("1", "EventMQ 0.3.13 router + job manager + client: jobs/s (N=%d)" % args.eventmq_n, res.get("s1_eventmq"), "jobs_per_sec")
        c = row("1", "Celery 5 + Redis, prefork 2: jobs/s (N=%d)" % args.s1_n, res.get("s1_celery"), "jobs_per_sec") if "s1_celery" in res else None
        if e and m:
            rows.append(("1", "ratio emq / EventMQ", "%.0f×" % (e / m), "≥ 100×"))
        if e and c:
            rows.append(("1", "ratio emq / Celery", "%.1f×" % (e / c), "≥ 10×"))
    if "2" in only:
        s2med = row("2", "Rust client, window 1000, reply-requested, no-op: jobs/s (defaults)", res.get("s2"), "jobs_per_sec", target="≥ 30,000")
        fwd = summary(res.get("s4_fwd") or [], "jobs_per_sec")[1]
        if s2med and fwd:
            rows.append(("2", "  defaults / bare forwarder + stub (scenario 4, this run)", "%.0f%%" % (100 * s2med / fwd), "≥ 40%"))
        row("2", "same, max_job_count=1e6, worker_pipeline=4, prefetch=512", res.get("s2_tuned"), "jobs_per_sec", target="≥ 30,000")
    if "3" in only:
        p50 = row("3", "latency p50 µs (one job at a time)", res.get("s3"), "p50_us", target="≤ 1.3× floor")
        row("3", "latency p99 µs", res.get("s3"), "p99_us", target="≤ 1,000")
        row("3", "latency max µs", res.get("s3"), "max_us")
        floor = row("3", "floor: bare forwarder + stub job manager (no Python), p50 / p99 µs", res.get("s3_fwd"), "p50_us")
        row("3", "", res.get("s3_fwd"), "p99_us")
        row("3", "router + stub job manager (no Python), p50 / p99 µs", res.get("s3_router"), "p50_us")
        row("3", "", res.get("s3_router"), "p99_us")
        if p50 and floor:
            rows.append(("3", "p50 / floor p50 (medians of the runs)", "%.2f×" % (p50 / floor), "≤ 1.3×"))
        row("3", "p50 / floor p50 within each run (the same blocks' turns)", res.get("s3"), "ratio", fmt="{:.2f}×", target="≤ 1.3×")
        row("3", "router + stub / floor p50 within each run", res.get("s3"), "router_stub_ratio", fmt="{:.2f}×")
    if "4" in only:
        r = row("4", "router + stub job manager: msgs/s", res.get("s4_router"), "jobs_per_sec")
        f = row("4", "bare ZeroMQ ROUTER→ROUTER forwarder + stub: msgs/s", res.get("s4_fwd"), "jobs_per_sec")
        if r and f:
            rows.append(("4", "router / forwarder", "%.0f%%" % (100 * r / f), "≥ 60%"))
    if "5" in only:
        row("5", "router RSS per buffered 100-byte job, bytes (N=%d, all in memory)" % args.s5_n, res.get("s5"), "bytes_per_job", target="≤ 300")
        row("5", "  same with buffer_memory = 64 MiB (jobs past it on disk): bytes per job", res.get("s5_spill"), "bytes_per_job")
        row("5", "job manager + workers (2 + 1 spare) RSS at rest, MB", res.get("s5"), "jm_plus_workers_mb", fmt="{:.1f}")
    if "6" in only:
        row("6", "SIGKILLed busy worker → replacement READY at the router, p50 ms (%d kills)" % args.s6_kills, res.get("s6"), "p50_ms", fmt="{:.1f}")
        row("6", "  of which the kernel tearing the process down (kill → exit, pidfd), p50 ms", res.get("s6"), "kill_to_exit_p50_ms", fmt="{:.1f}")
        row("6", "  worker exited → replacement READY at the router, p50 ms", res.get("s6"), "exit_to_ready_p50_ms", fmt="{:.1f}", target="≤ 2")

    if "7" in only:
        for sc, what in ((1, "scenario 1 (EventMQ client, N=%d)" % args.s1_n), (2, "scenario 2 (Rust client with results, N=%d)" % args.s2_n)):
            base = None
            for mode in ("off", "write", "fsync"):
                v = res.get("s7_%d_%s" % (sc, mode))
                med = row("7", "%s, journal_sync=%s: jobs/s" % (what, mode), v, "jobs_per_sec")
                base = base or med
                if mode != "off":
                    row("7", "  fsyncs/s · jobs per fsync", v, "fsyncs_per_sec")
                    row("7", "", v, "jobs_per_fsync", fmt="{:.1f}")
                if med and base and mode == "fsync":
                    rows.append(("7", "  fsync cost vs off", "%.0f%%" % (100 * (1 - med / base)), "≤ 10%"))

    if "8" in only:
        f = row("8", "scenario 2 (N=%d), file journal (fsync): jobs/s" % args.s2_n, res.get("s8_file"), "jobs_per_sec")
        row("8", "  jobs per fsync", res.get("s8_file"), "jobs_per_commit", fmt="{:.1f}")
        p = row("8", "scenario 2, journal_url on a local PostgreSQL 15: jobs/s", res.get("s8_postgresql"), "jobs_per_sec")
        row("8", "  jobs per commit", res.get("s8_postgresql"), "jobs_per_commit", fmt="{:.1f}")
        row("8", "  ms per commit (group of batches, one row, fenced INSERT)", res.get("s8_postgresql"), "commit_ms", fmt="{:.2f}")
        if f and p:
            rows.append(("8", "  PostgreSQL / file", "%.0f%%" % (100 * p / f), "≥ 50%"))
    if "9" in only:
        row("9", "leader SIGKILL → first job's result from the new leader, p50 s (%d kills, defaults)" % args.s9_kills, res.get("s9"), "p50_s", fmt="{:.2f}")
        row("9", "  p99 s", res.get("s9"), "p99_s", fmt="{:.2f}", target="≤ 7")
        row("9", "  max s", res.get("s9"), "max_s", fmt="{:.2f}")
        row("9", "planned switchover (SIGTERM) → the standby leads, p50 s (%d)" % args.s9_switchovers, res.get("s9"), "switch_p50_s", fmt="{:.3f}", target="≤ 1")
        row("9", "  max s", res.get("s9"), "switch_max_s", fmt="{:.3f}")
    if "10" in only:
        row("10", "takeover with %d buffered jobs: leader SIGKILL → the standby leads, s" % args.s10_n, res.get("s10"), "leads_s", fmt="{:.2f}")
        row("10", "  → its first dispatch, s", res.get("s10"), "first_dispatch_s", fmt="{:.2f}")
        row("10", "  filling the leader (emq-bench fill, PostgreSQL journal): jobs/s", res.get("s10"), "fill_jobs_per_sec")

    if "11" in only:
        jobs = args.s11_n * (args.s11_members + 1)
        row("11", "%d chords of %d no-op members: jobs/s (members + callbacks)" % (args.s11_n, args.s11_members), res.get("s11"), "chord_jobs_per_sec")
        row("11", "  the same number of plain no-op jobs (%d), same router, same run: jobs/s" % jobs, res.get("s11"), "plain_jobs_per_sec")
        row("11", "  chords / plain", res.get("s11"), "ratio_pct", fmt="{:.0f}%", target="≥ 70%")
        row("11", "last member's end → callback dispatched (router timestamps), p50 µs", res.get("s11"), "release_p50_us")
        row("11", "  p99 µs", res.get("s11"), "release_p99_us")
        row("11", "router memory per waiting node (chords with no job manager: members buffered, callbacks held), bytes", res.get("s11"), "bytes_per_waiting_node")

    if "12" in only:
        row("12", "no-op jobs each under limit p (concurrency 1 per partition), %d partitions: jobs/s (N=%d)" % (args.s12_partitions, args.s2_n), res.get("s12"), "limited_jobs_per_sec")
        row("12", "  the same jobs without a limit, same router, same run: jobs/s", res.get("s12"), "plain_jobs_per_sec")
        row("12", "  limited / plain", res.get("s12"), "ratio_pct", fmt="{:.0f}%", target="≥ 80%")

    if "13" in only:
        row("13", "scenario 2 (N=%d) while 10 jobs report progress 100 times a second each (1,000 updates/s): jobs/s" % args.s2_n, res.get("s13"), "with_progress_jobs_per_sec")
        row("13", "  the same beside the same 10 jobs not reporting, same run: jobs/s", res.get("s13"), "without_jobs_per_sec")
        row("13", "  with / without", res.get("s13"), "ratio_pct", fmt="{:.0f}%", target="≥ 95%")
        row("13", "  load jobs running at the end of the measurement / those the router shows progress for", res.get("s13"), "load_running")
        row("13", "", res.get("s13"), "running_with_progress")

    if "14" in only:
        how = "one job at a time" if args.s14_pipeline == 1 else "%d jobs pipelined" % args.s14_pipeline
        row("14", "HTTP/1.1 keep-alive, %d connections, POST /v1/jobs + GET result?wait=30, %s per connection: jobs/s (N=%d)"
            % (args.s14_conns, how, args.s14_n), res.get("s14"), "http_jobs_per_sec")
        row("14", "  Rust client (scenario 2: window 1000, N=%d), same router, same run: jobs/s" % args.s2_n, res.get("s14"), "rust_jobs_per_sec")
        row("14", "  HTTP / Rust client", res.get("s14"), "ratio_pct", fmt="{:.0f}%")
        row("14", "  Rust client with %d outstanding (the HTTP side's concurrency), N=%d: jobs/s"
            % (args.s14_conns * args.s14_pipeline, args.s14_n), res.get("s14"), "rust_same_conc_jobs_per_sec")
        row("14", "  HTTP / Rust client at the same concurrency", res.get("s14"), "ratio_same_conc_pct", fmt="{:.0f}%")
        row("14", "  per connection: POST → 202 (receipt, after the journal), mean ms", res.get("s14"), "http_post_ms", fmt="{:.2f}")
        row("14", "  then GET result?wait=30 → 200, mean ms", res.get("s14"), "http_result_ms", fmt="{:.2f}")

    if "15" in only:
        row("15", "scenario 2 (N=%d) with one SSE reader of every event: jobs/s" % args.s2_n, res.get("s15"), "with_reader_jobs_per_sec")
        row("15", "  scenario 2 alone, same router, same run: jobs/s", res.get("s15"), "without_jobs_per_sec")
        row("15", "  with / without", res.get("s15"), "ratio_pct", fmt="{:.0f}%")
        row("15", "  events delivered to the reader: events/s (first to last event received)", res.get("s15"), "events_per_sec")
        row("15", "  events read per run", res.get("s15"), "events")
        row("15", "  lag (receipt minus the event's `at`), p50 ms", res.get("s15"), "lag_p50_ms", fmt="{:.1f}")
        row("15", "  p99 ms", res.get("s15"), "lag_p99_ms", fmt="{:.1f}")
        row("15", "  max ms", res.get("s15"), "lag_max_ms", fmt="{:.1f}")

    if "16" in only:
        for ms in [float(x) for x in args.s16_ms.split(",")]:
            for system in ("bare", "emq", "emq-rust", "eventmq", "celery"):
                key = "s16_%s_%g" % (system, ms)
                label = {"emq": "emq (EventMQ's client, fire-and-forget)",
                         "emq-rust": "emq (its Rust client, with results)",
                         "bare": "no job system (a plain loop per core: the machine's ceiling)"}.get(system, system)
                if res.get(key):
                    row("16", "%g ms CPU-bound jobs, %d workers, %s: jobs/s" % (ms, os.cpu_count() or 1, label), res[key], "jobs_per_sec")
                    row("16", "  efficiency (jobs/s ÷ (cores ÷ job CPU time))", res[key], "efficiency_pct", fmt="{:.1f}%",
                        target="≥ 90% for 1 ms (emq)" if system.startswith("emq") and ms == 1 else "")
                    runs = [v["cpu_us_per_job"] for v in res[key] if "cpu_us_per_job" in v]
                    if runs:
                        parts = [p for p in ("workers", "router", "job_manager", "client", "rest", "idle", "steal", "total")
                                 if p in runs[0]]
                        med = {p: statistics.median(r_[p] for r_ in runs) for p in parts}
                        rows.append(("16", "  CPU per job, µs (median of runs): " + " / ".join(p.replace("_", " ") for p in parts)
                                     + " (workers: the jobs included; rest: kernel threads, interrupts, other processes)",
                                     " / ".join("%.0f" % med[p] for p in parts), ""))

    if "17" in only and args.s17_sweep:
        for c in [int(x) for x in args.s17_sweep.split(",")]:
            key = "s17_%d" % c
            row("17", "%d clients × %d jobs with results, all at once: jobs/s" % (c, args.s17_clients * args.s17_jobs // c), res.get(key), "jobs_per_sec")
            row("17", "  one client (window 1000), same router: jobs/s", res.get(key), "one_client_jobs_per_sec")
            row("17", "  many / one", res.get(key), "ratio_pct", fmt="{:.0f}%")
            row("17", "  client completion time max / median", res.get(key), "max_over_median", fmt="{:.3f}")
    if "17" in only and not args.s17_sweep:
        row("17", "%d clients × %d jobs with results, all at once (each client's jobs as REQUESTS): jobs/s" % (args.s17_clients, args.s17_jobs), res.get("s17"), "jobs_per_sec")
        row("17", "  one client, the same jobs (window 1000, refills as REQUESTS), same router, same run: jobs/s", res.get("s17"), "one_client_jobs_per_sec")
        row("17", "  many / one", res.get("s17"), "ratio_pct", fmt="{:.0f}%", target="≥ 70%")
        row("17", "  many clients, one REQUEST per job: jobs/s", res.get("s17"), "many_singles_jobs_per_sec")
        row("17", "  one client, one REQUEST per job: jobs/s", res.get("s17"), "one_client_singles_jobs_per_sec")
        row("17", "  many / one (both one REQUEST per job)", res.get("s17"), "ratio_singles_pct", fmt="{:.0f}%")
        row("17", "  client completion time max / median, one REQUEST per job", res.get("s17"), "singles_max_over_median", fmt="{:.3f}")
        row("17", "  router RSS per idle connected client (bytes)", res.get("s17"), "router_bytes_per_idle_client")
        row("17", "  client completion time max / min", res.get("s17"), "max_over_min", fmt="{:.2f}")
        row("17", "  client completion time max / median (nobody starved)", res.get("s17"), "max_over_median", fmt="{:.3f}")
        row("17", "  slowest client done after (s)", res.get("s17"), "client_done_max_secs", fmt="{:.2f}")

    if "18" in only:
        row("18", "scenario 1 (EventMQ client, N=%d), plaintext: jobs/s" % args.s1_n, res.get("s18"), "plain_jobs_per_sec")
        row("18", "  the same with CURVE on the frontend and backend, same run: jobs/s", res.get("s18"), "curve_jobs_per_sec")
        row("18", "  CURVE / plaintext", res.get("s18"), "ratio_pct", fmt="{:.0f}%")
        row("18", "  the EventMQ client's send rate (send_request loop alone), plaintext: jobs/s", res.get("s18"), "plain_send_rate")
        row("18", "  the same, CURVE: jobs/s", res.get("s18"), "curve_send_rate")

    cpu = open("/proc/cpuinfo").read().count("processor\t:")
    head = ["# emq benchmark results", "",
            "Measured %s on this machine (%d cores), all systems in the same run: `bench/run.sh %s`." %
            (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), cpu, " ".join(sys.argv[5:])), "",
            "Median of the runs, (min–max) when more than one.", "",
            "| # | what | result | target |", "|---|---|---|---|"]
    lines = head + ["| %s | %s | %s | %s |" % r for r in rows]
    if notes:
        lines += [""] + ["- " + n for n in notes]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    # Only a run of every default scenario (1-6) replaces latest.md; partial runs keep
    # their own file.
    name = "latest.md" if only >= set("123456") and not args.quick else "partial-%s.md" % "".join(sorted(only))
    with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
        f.write(text)
    # The raw figures beside it, for bench/plot.py.
    with open(os.path.join(ROOT, "bench", "results", name[:-3] + ".json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": cpu,
                   "results": res}, f, indent=1)


if __name__ == "__main__":
    main()
