//! Shared helpers for the end-to-end tests: free loopback ports, child
//! processes that are killed (by pid) when the guard drops — also when a
//! test fails — and plain ZeroMQ DEALER peers that speak raw frames.

#![allow(dead_code)]

pub mod pg;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The keys of EventMQ's STATUS answer (emq adds more after them).
#[allow(unused_imports)]
pub use emq_router::EVENTMQ_STATUS_KEYS;

/// A free TCP port on 127.0.0.1 for a server a test starts (bound and
/// released), picked at random below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port from that range (what binding
/// port 0 gives) can meanwhile become the source port of any outgoing
/// connection — or of a client reconnecting to it while its server is
/// down, which then connects to itself (TCP simultaneous open) and holds
/// it: a restarted router then could not bind it ("address already in
/// use") for as long as the holder lived (seen once in
/// `tests/power_loss.rs`). Falls back to port 0 when the range leaves no
/// room below it.
pub fn free_port() -> u16 {
    const FLOOR: u32 = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_535);
    if low > FLOOR + 1_000 {
        for _ in 0..1_000 {
            let p = FLOOR + (uuid::Uuid::new_v4().as_u128() % u128::from(low - FLOOR)) as u32;
            if TcpListener::bind(("127.0.0.1", p as u16)).is_ok() {
                return p as u16;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn tcp(port: u16) -> String {
    format!("tcp://127.0.0.1:{port}")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn spawn(name: &str, mut cmd: Command) -> ChildGuard {
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard { child, name: name.to_owned() }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits for exit up to `limit` (a hang guard, not a speed assertion).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Addresses of a router under test.
pub struct RouterAddrs {
    pub frontend: String,
    pub backend: String,
    pub admin: String,
    /// host:port of the HTTP endpoint (metrics, API, dashboard).
    pub http: String,
    /// The router's journal directory: its own for each test router, so
    /// no test sees another's jobs (or the user's).
    pub data_dir: PathBuf,
}

impl RouterAddrs {
    pub fn fresh() -> Self {
        let data_dir = std::env::temp_dir().join(format!("emq-test-data-{}", uuid::Uuid::new_v4()));
        RouterAddrs {
            frontend: tcp(free_port()),
            backend: tcp(free_port()),
            admin: tcp(free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            data_dir,
        }
    }
}

/// Starts our `emq-router` on fresh ports with extra environment, and waits
/// until it answers STATUS. A port picked as free can be taken by another
/// test before the router binds it: then the router exits at once and is
/// started again on other ports.
pub fn start_router(env: &[(&str, &str)]) -> (ChildGuard, RouterAddrs) {
    for _ in 0..5 {
        let addrs = RouterAddrs::fresh();
        if let Some(guard) = start_router_at(&addrs, env) {
            return (guard, addrs);
        }
    }
    panic!("emq-router did not start on five sets of ports");
}

/// Starts our `emq-router` on `addrs` (with its journal in
/// `addrs.data_dir`, unless `env` names another) and waits until it answers
/// STATUS; `None` when it exited at start (a port was taken).
pub fn start_router_at(addrs: &RouterAddrs, env: &[(&str, &str)]) -> Option<ChildGuard> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-router"));
    cmd.args(["--frontend-addr", &addrs.frontend, "--backend-addr", &addrs.backend])
        .args(["--administrative-addr", &addrs.admin])
        .current_dir(std::env::temp_dir()) // no stray ./settings.toml
        .env("EMQ_HTTP_ADDR", &addrs.http)
        .env("EMQ_DATA_DIR", &addrs.data_dir)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut guard = ChildGuard::spawn("emq-router", cmd);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(st)) = guard.child.try_wait() {
            eprintln!("emq-router exited at start ({st})");
            return None;
        }
        let d = Dealer::connect(&addrs.admin);
        d.send(&["", "eMQP/1.0", "STATUS", "admin:probe"]);
        // An answer counts only when this router holds the admin port: a
        // port picked as free may have gone to another test's router
        // meanwhile (this one then exits, "address in use"), and that one
        // answers — with a refusal if it is its frontend.
        if d.recv_timeout(300).is_some() && listens_on(guard.child.id(), &addrs.admin) {
            return Some(guard);
        }
        assert!(Instant::now() < end, "router at {} never answered STATUS", addrs.admin);
    }
}

/// Whether process `pid` itself listens on the TCP port of `addr`
/// (`tcp://host:port`): one of its file descriptors is the listening
/// socket `/proc/net/tcp{,6}` lists for that port. Other transports: true.
pub fn listens_on(pid: u32, addr: &str) -> bool {
    let Some(port) = addr.strip_prefix("tcp://").and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<u16>().ok())
    else {
        return true;
    };
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let link = std::fs::read_link(e.ok()?.path()).ok()?;
                let link = link.to_str()?;
                Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect()
        })
        .unwrap_or_default();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 9
                && f[3] == "0A" // LISTEN
                && f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                && inodes.contains(f[9])
        })
    })
}

/// Polls the admin socket until STATUS answers (hang guard: 20 s).
pub fn wait_for_status(admin: &str) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let d = Dealer::connect(admin);
        d.send(&["", "eMQP/1.0", "STATUS", "admin:probe"]);
        if let Some(f) = d.recv_timeout(500) {
            return serde_json::from_str(&f[4]).unwrap();
        }
        assert!(Instant::now() < end, "router at {admin} never answered STATUS");
    }
}

/// One admin command, answer JSON.
pub fn admin(admin: &str, command: &str) -> serde_json::Value {
    let d = Dealer::connect(admin);
    d.send(&["", "eMQP/1.0", command, &format!("admin:{}", uuid::Uuid::new_v4())]);
    let f = d.recv_timeout(10_000).expect("admin answer");
    serde_json::from_str(&f[4]).unwrap_or_else(|e| panic!("bad JSON {f:?}: {e}"))
}

/// A plain ZeroMQ DEALER that sends and receives raw text frames.
pub struct Dealer {
    pub socket: zmq::Socket,
    _ctx: zmq::Context,
    pub identity: String,
}

impl Dealer {
    pub fn connect(addr: &str) -> Dealer {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::DEALER).unwrap();
        let identity = uuid::Uuid::new_v4().to_string();
        socket.set_identity(identity.as_bytes()).unwrap();
        socket.set_linger(0).unwrap();
        socket.connect(addr).unwrap();
        Dealer { socket, _ctx: ctx, identity }
    }

    pub fn send(&self, frames: &[&str]) {
        self.socket.send_multipart(frames.iter().map(|f| f.as_bytes()), 0).unwrap();
    }

    pub fn send_bytes(&self, frames: &[&[u8]]) {
        self.socket.send_multipart(frames.iter().copied(), 0).unwrap();
    }

    pub fn recv_raw(&self, timeout_ms: i64) -> Option<Vec<Vec<u8>>> {
        if self.socket.poll(zmq::POLLIN, timeout_ms).unwrap() == 0 {
            return None;
        }
        Some(self.socket.recv_multipart(0).unwrap())
    }

    pub fn recv_timeout(&self, timeout_ms: i64) -> Option<Vec<String>> {
        self.recv_raw(timeout_ms).map(|f| f.into_iter().map(|b| String::from_utf8_lossy(&b).into_owned()).collect())
    }

    /// Next message whose command is not HEARTBEAT (hang guard: `timeout_ms`).
    pub fn recv_skip_heartbeats(&self, timeout_ms: i64) -> Option<Vec<String>> {
        let end = Instant::now() + Duration::from_millis(timeout_ms as u64);
        loop {
            let left = end.saturating_duration_since(Instant::now()).as_millis() as i64;
            let f = self.recv_timeout(left.max(1))?;
            if f.get(2).map(String::as_str) != Some("HEARTBEAT") {
                return Some(f);
            }
        }
    }
}

/// A fake job manager: INFORMs, waits for ACK, announces `slots` READYs.
pub fn fake_job_manager(backend: &str, queues: &str, slots: usize) -> Dealer {
    let jm = Dealer::connect(backend);
    jm.send(&["", "eMQP/1.0", "INFORM", "inform-1", queues, "worker"]);
    let ack = jm.recv_skip_heartbeats(10_000).expect("ACK");
    assert_eq!(ack[2], "ACK", "{ack:?}");
    assert_eq!(ack[4], "inform-1");
    for i in 0..slots {
        jm.send(&["", "eMQP/1.0", "READY", &format!("ready-{i}")]);
    }
    jm
}

/// Polls `f` until it returns Some (hang guard: `limit`).
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "condition not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The EventMQ 0.3.13 venv (installed by scripts/setup-venv.sh). A failed
/// install fails the test, unless `EMQ_SKIP_INTEROP=1` says this machine
/// cannot reach PyPI (then `None`, and the caller says it skipped).
pub fn eventmq_venv() -> Option<PathBuf> {
    if std::env::var("EMQ_SKIP_INTEROP").is_ok_and(|v| v == "1") {
        return None;
    }
    let root = repo_root();
    let out = Command::new("bash").arg(root.join("scripts/setup-venv.sh")).output().expect("run bash");
    assert!(
        out.status.success(),
        "scripts/setup-venv.sh failed (set EMQ_SKIP_INTEROP=1 where PyPI is unreachable):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_owned();
    Some(PathBuf::from(last))
}

pub fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).map(|s| s.lines().map(str::to_owned).collect()).unwrap_or_default()
}

/// Starts our `emq-jobmanager` against `backend` with the test job modules
/// on its path.
pub fn start_jobmanager(backend: &str, queues: &str, jobs: usize, env: &[(&str, &str)]) -> ChildGuard {
    let root = repo_root();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-jobmanager"));
    cmd.args(["-B", backend, "-Q", queues, "-J", &jobs.to_string()])
        .arg("--python-path")
        .arg(root.join("tests/pyjobs"))
        .arg("--python-path")
        .arg(root.join("jobs"))
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", std::env::var("EMQTEST_LOG").unwrap_or_else(|_| "warn".into()))
        .env("EMQ_HEARTBEAT_INTERVAL", "0.5")
        // Closed by default: the test modules, nothing else.
        .env("EMQ_ALLOWED_PATHS", "testjobs,benchjobs,pyclient_jobs,pkg,no_such_module");
    for (k, v) in env {
        cmd.env(k, v);
    }
    ChildGuard::spawn("emq-jobmanager", cmd)
}

/// Free slots the router sees, summed over job managers.
pub fn router_free_slots(admin_addr: &str) -> u64 {
    let w = admin(admin_addr, "ROUTER_SHOW_WORKERS");
    w["connected_workers"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v["available_slots"].as_u64()).sum())
        .unwrap_or(0)
}

/// Router slots one of our workers announces: `worker_pipeline` (default 4:
/// one running job plus three queued behind it).
pub const SLOTS_PER_WORKER: u64 = 4;

/// Waits until the router sees at least the free slots of `workers` idle
/// workers of ours (prefetch, on by default, may add more).
pub fn wait_slots(admin_addr: &str, workers: u64) {
    let slots = workers * SLOTS_PER_WORKER;
    eventually(Duration::from_secs(60), || (router_free_slots(admin_addr) >= slots).then_some(()));
}

/// A client that sends `reply-requested` jobs as raw frames and collects
/// results (two-body-frame REPLYs) by msgid.
pub struct TestClient {
    pub dealer: Dealer,
    pub results: std::collections::HashMap<String, serde_json::Value>,
}

impl TestClient {
    pub fn connect(frontend: &str) -> TestClient {
        TestClient { dealer: Dealer::connect(frontend), results: Default::default() }
    }

    /// Sends a job; returns its msgid.
    pub fn send(&self, queue: &str, headers: &str, path: &str, callable: &str, args: serde_json::Value) -> String {
        self.send_payload(
            queue,
            headers,
            &serde_json::json!(["run", {"path": path, "callable": callable, "args": args}]),
        )
    }

    pub fn send_payload(&self, queue: &str, headers: &str, payload: &serde_json::Value) -> String {
        let msgid = uuid::Uuid::new_v4().to_string();
        self.dealer.send(&["", "eMQP/1.0", "REQUEST", &msgid, queue, headers, &payload.to_string()]);
        msgid
    }

    /// Waits for the result of `msgid` (hang guard: `secs`).
    pub fn wait(&mut self, msgid: &str, secs: u64) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = self.results.remove(msgid) {
                return v;
            }
            let left = end.saturating_duration_since(Instant::now()).as_millis() as i64;
            assert!(left > 0, "no result for {msgid} within {secs} s");
            if let Some(f) = self.dealer.recv_timeout(left.min(500)) {
                if f.len() == 6 && f[2] == "REPLY" {
                    let v = serde_json::from_str(&f[4]).unwrap_or_else(|e| panic!("bad reply JSON {f:?}: {e}"));
                    self.results.insert(f[5].clone(), v);
                }
            }
        }
    }

    /// Sends and waits.
    pub fn call(&mut self, queue: &str, path: &str, callable: &str, args: serde_json::Value) -> serde_json::Value {
        let id = self.send(queue, "reply-requested", path, callable, args);
        self.wait(&id, 60)
    }
}

/// A minimal HTTP GET (the endpoint is ours; no client crate needed).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_fmt(&mut s, format_args!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")).unwrap();
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// A minimal HTTP request with an optional bearer token and JSON body.
pub fn http_request(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// `emq-cli` against a test router, authenticated with its admin token:
/// (success, stdout and stderr).
pub fn emq_cli_as_admin(a: &RouterAddrs, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["-a", &a.admin, "--token-file"])
        .arg(a.data_dir.join("admin.token"))
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A job's record as an authenticated admin sees it (result, attempts,
/// schedule, duplicate runs).
pub fn admin_job(a: &RouterAddrs, msgid: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_emq-cli"))
        .args(["-a", &a.admin, "--token-file"])
        .arg(a.data_dir.join("admin.token"))
        .args(["--json", "job", msgid])
        .output()
        .unwrap();
    assert!(out.status.success(), "emq-cli job {msgid}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Starts an `emq-router` sharing the PostgreSQL journal at `url` (a
/// standby binds nothing: no waiting here; see [`wait_leader`]).
/// The URL goes in `--journal-url`, or in `EMQ_JOURNAL_URL` when `env`
/// names it (`("EMQ_JOURNAL_URL", "")` as a marker: replaced by `url`).
pub fn spawn_ha_router(addrs: &RouterAddrs, url: &str, env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_emq-router"));
    cmd.args(["--frontend-addr", &addrs.frontend, "--backend-addr", &addrs.backend])
        .args(["--administrative-addr", &addrs.admin]);
    if env.iter().any(|(k, _)| *k == "EMQ_JOURNAL_URL") {
        cmd.env("EMQ_JOURNAL_URL", url);
    } else {
        cmd.args(["--journal-url", url]);
    }
    cmd.current_dir(std::env::temp_dir())
        .env("EMQ_HTTP_ADDR", &addrs.http)
        .env("EMQ_DATA_DIR", &addrs.data_dir)
        .env("RUST_LOG", std::env::var("EMQTEST_LOG").unwrap_or_else(|_| "warn".into()));
    for (k, v) in env.iter().filter(|(k, _)| *k != "EMQ_JOURNAL_URL") {
        cmd.env(k, v);
    }
    ChildGuard::spawn("emq-router", cmd)
}

/// `GET /health` of a router: status code and JSON (code 0: no answer).
pub fn health(addrs: &RouterAddrs) -> (u16, serde_json::Value) {
    let (code, body) = http_get_quiet(&addrs.http, "/health");
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Which of `routers` leads (health 200), waiting for one (hang guard 60 s);
/// `not` excludes one (the leader that was just stopped).
pub fn wait_leader(routers: &[&RouterAddrs], not: Option<usize>) -> usize {
    eventually(Duration::from_secs(60), || {
        routers.iter().enumerate().filter(|(i, _)| Some(*i) != not).find_map(|(i, r)| {
            let (code, h) = health(r);
            (code == 200 && h["role"] == "leader").then_some(i)
        })
    })
}

/// An HTTP GET that answers (0, "") when nothing listens.
pub fn http_get_quiet(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(500)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// Lines `start TAG PID` / `end TAG PID` of `testjobs.run_log`: the tags
/// that started while a run of the same tag had not ended (a job running
/// twice at the same time), and how often each tag started.
pub fn overlapping_runs(lines: &[String]) -> (Vec<String>, std::collections::HashMap<String, usize>) {
    let mut running: std::collections::HashMap<String, usize> = Default::default();
    let mut starts: std::collections::HashMap<String, usize> = Default::default();
    let mut overlaps = Vec::new();
    for l in lines {
        let mut w = l.split_whitespace();
        let (Some(kind), Some(tag)) = (w.next(), w.next()) else { continue };
        match kind {
            "start" => {
                *starts.entry(tag.to_owned()).or_default() += 1;
                let n = running.entry(tag.to_owned()).or_default();
                if *n > 0 {
                    overlaps.push(tag.to_owned());
                }
                *n += 1;
            }
            "end" => {
                if let Some(n) = running.get_mut(tag) {
                    *n = n.saturating_sub(1);
                }
            }
            _ => {}
        }
    }
    (overlaps, starts)
}
