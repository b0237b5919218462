//! # emq-python — `emq._native`, the Rust half of the `emq` Python package
//!
//! Owns: a thread-safe wrapper ([`NativeClient`]) around
//! [`emq_client::Client`] — one DEALER socket behind a mutex, the GIL
//! released whenever it blocks on the network — and the small helpers the
//! Python half needs from the Rust crates (default address, HTTP address
//! and admin token file from the settings, callable splitting, command job
//! checks).
//!
//! Does not own: the Python API (`emq/__init__.py`: `Client`, `Job`,
//! exceptions, `task`, `current_job`), the wire format (`emq-protocol`) or
//! the client logic (`emq-client`). Values cross the boundary as JSON text
//! (the Python side uses `json`), so no Python ⇄ JSON conversion lives here.
//!
//! Waiting is done in short slices (lock, read what arrived for up to
//! [`SLICE`], unlock), so threads sharing one client each get their own
//! results and sends are never held up for longer than a slice.

use emq_client::{
    job_for, outcome_from_status, Client, ClientError, CommandPayload, Job, JobOutcome, Options, Receipt, RouterNotice,
};
use pyo3::exceptions::{
    PyConnectionError, PyLookupError, PyPermissionError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a send keeps trying while none of the client's routers is up
/// (a failover takes a few seconds; a router that is simply down is said
/// after this).
const SEND_RETRY: Duration = Duration::from_secs(10);

/// Longest time one waiting thread holds the socket.
const SLICE: Duration = Duration::from_millis(5);
/// How often a waiter with nothing arriving asks the router's job record.
const STATUS_POLL: Duration = Duration::from_secs(2);

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

fn client_err(e: ClientError) -> PyErr {
    match e {
        ClientError::Socket(e) => PyConnectionError::new_err(e.to_string()),
        ClientError::Deadline => PyTimeoutError::new_err("no answer from the router before the deadline"),
        ClientError::BadCallable(c) => {
            PyValueError::new_err(format!("bad callable {c:?}: expected 'pkg.mod.func' or 'pkg.mod:Class.method'"))
        }
        ClientError::Refused(why) => PyRuntimeError::new_err(format!("refused by the router: {why}")),
        ClientError::BadWorkflow(why) => PyValueError::new_err(format!("bad workflow: {why}")),
        ClientError::BadJob(why) => PyValueError::new_err(why),
    }
}

fn closed() -> PyErr {
    PyRuntimeError::new_err("the emq client is closed")
}

fn deadline(timeout: Option<f64>) -> Option<Instant> {
    timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.clamp(0.0, 1e9)))
}

/// The wait for this slice, in milliseconds (at least 1), bounded by `end`.
fn slice_ms(end: Option<Instant>) -> i64 {
    let s = end.map_or(SLICE, |e| e.saturating_duration_since(Instant::now()).min(SLICE));
    (s.as_millis() as i64).max(1)
}

fn expired(end: Option<Instant>) -> bool {
    end.is_some_and(|e| Instant::now() >= e)
}

/// An outcome for Python: `(kind, json)`; kind `value` carries the return
/// value's JSON, the others (`failed`, `timeout`, `worker_died`, `refused`)
/// the error object's JSON (`type`, `message`, `traceback`).
fn encode(o: JobOutcome) -> Option<(&'static str, String)> {
    let err = |e: &emq_client::JobError| serde_json::to_string(e).expect("error serialises");
    Some(match o {
        JobOutcome::Value(v) => ("value", v.to_string()),
        JobOutcome::Failed(e) => ("failed", err(&e)),
        JobOutcome::Timeout(e) => ("timeout", err(&e)),
        JobOutcome::WorkerDied(e) => ("worker_died", err(&e)),
        JobOutcome::Refused(e) => ("refused", err(&e)),
        JobOutcome::NoReply => return None,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> PyResult<T> {
    serde_json::from_str(s).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

/// Waits until something answers at a `tcp://host:port` address, or
/// `timeout` passes. Other transports are not checked.
fn wait_reachable(addr: &str, timeout: Duration) -> Result<(), String> {
    // `A,B` (a router and its standbys): fine as soon as one answers.
    if addr.contains(',') {
        let addrs: Vec<&str> = addr.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
        let end = Instant::now() + timeout;
        loop {
            let mut last = String::new();
            for a in &addrs {
                match wait_reachable(a, Duration::ZERO) {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= end {
                return Err(if addrs.len() > 1 { format!("no router at any of {addr}: {last}") } else { last });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let Some(hostport) = addr.strip_prefix("tcp://") else { return Ok(()) };
    let end = Instant::now() + timeout;
    let mut last = String::from("not tried");
    loop {
        match hostport.to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    let left = end.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                    match TcpStream::connect_timeout(&a, left.min(Duration::from_secs(1))) {
                        Ok(_) => return Ok(()),
                        // A definite no: said at once, not after the whole timeout.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            return Err(format!("no router at {addr}: connection refused"))
                        }
                        Err(e) => last = e.to_string(),
                    }
                }
            }
            Err(e) => return Err(format!("cannot resolve {hostport:?}: {e}")),
        }
        if Instant::now() >= end {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The job options [`NativeClient::send`] and [`NativeClient::send_command`]
/// take, checked (ValueError) and made into [`Options`]. `delay` and `eta`
/// are seconds (`eta`: since the Unix epoch).
#[allow(clippy::too_many_arguments)]
fn options(
    reply_requested: bool,
    guarantee: bool,
    retries: Option<u32>,
    timeout: Option<u64>,
    delay: Option<f64>,
    eta: Option<f64>,
    unique: Option<String>,
    depends_on: Vec<String>,
    run_on_dependency_failure: bool,
    limit: Option<String>,
    requires: Vec<String>,
    on: Option<String>,
) -> PyResult<Options> {
    let secs = |what: &str, v: Option<f64>| -> PyResult<Option<Duration>> {
        v.map(|x| {
            Duration::try_from_secs_f64(x)
                .map_err(|_| PyValueError::new_err(format!("{what} must be a number of seconds >= 0, not {x}")))
        })
        .transpose()
    };
    let delay = secs("delay", delay)?;
    let at = secs("eta", eta)?.map(|d| std::time::UNIX_EPOCH + d);
    if unique.as_deref().is_some_and(|k| k.is_empty() || k.len() > 200 || k.contains(',')) {
        return Err(PyValueError::new_err("unique must be 1 to 200 characters without a comma"));
    }
    if let Some(d) = depends_on.iter().find(|d| d.is_empty() || d.contains([',', ';'])) {
        return Err(PyValueError::new_err(format!("depends_on: {d:?} is not a msgid")));
    }
    if let Some(l) = &limit {
        emq_client::check_limit(l).map_err(PyValueError::new_err)?;
    }
    Ok(Options {
        reply_requested,
        guarantee,
        retry_count: retries,
        timeout,
        delay,
        at,
        unique,
        depends_on,
        run_on_dependency_failure,
        limit,
        requires,
        on,
    })
}

/// A command job's payload, checked as the job manager will
/// ([`CommandPayload::validate`]; ValueError with its message).
fn command_payload(
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    stdin: Option<String>,
) -> PyResult<CommandPayload> {
    let command = CommandPayload { argv, env, cwd, stdin };
    command.validate().map_err(PyValueError::new_err)?;
    Ok(command)
}

/// One connection to a router frontend, shareable between threads.
#[pyclass(frozen, module = "emq._native")]
struct NativeClient {
    addr: String,
    identity: String,
    inner: Mutex<Option<Client>>,
    /// Whether the router answers JOB_STATUS (ours does, EventMQ's not).
    results: AtomicU8,
    probes: AtomicU64,
}

impl NativeClient {
    fn lock(&self) -> MutexGuard<'_, Option<Client>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> PyResult<T>) -> PyResult<T> {
        let mut g = self.lock();
        f(g.as_mut().ok_or_else(closed)?)
    }

    /// Reads what arrived (up to one slice), without blocking other
    /// threads for longer.
    fn pump_slice(c: &mut Client, end: Option<Instant>) -> PyResult<()> {
        c.pump(slice_ms(end)).map(|_| ()).map_err(client_err)
    }

    /// Says once, on the `emq` logger, that the router stopped answering a
    /// waiting client (and when it answers again). Taken under the lock,
    /// said after it is released: the GIL is never asked for while the
    /// socket is held.
    fn say_router_notices(&self) {
        let notices = match self.lock().as_mut() {
            Some(c) => c.take_router_notices(),
            None => return,
        };
        if notices.is_empty() {
            return;
        }
        Python::attach(|py| {
            let said: PyResult<()> = (|| {
                let log = py.import("logging")?.call_method1("getLogger", ("emq",))?;
                for n in notices {
                    let level = if n == RouterNotice::Back { "info" } else { "warning" };
                    log.call_method1(level, (format!("router at {}: {n}", self.addr),))?;
                }
                Ok(())
            })();
            if let Err(e) = said {
                e.print(py);
            }
        });
    }

    fn probe_blocking(&self, timeout: Duration) -> PyResult<bool> {
        match self.results.load(Ordering::Relaxed) {
            YES => return Ok(true),
            NO => return Ok(false),
            _ => {}
        }
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let probe = format!("probe:{}:{n}", self.identity);
        self.with(|c| c.ask_status(&probe).map_err(client_err))?;
        let end = Some(Instant::now() + timeout);
        loop {
            let answered = self.with(|c| {
                if c.take_status(&probe).is_some() {
                    return Ok(true);
                }
                Self::pump_slice(c, end)?;
                Ok(c.take_status(&probe).is_some())
            })?;
            if answered || self.results.load(Ordering::Relaxed) == YES {
                self.results.store(YES, Ordering::Relaxed);
                return Ok(true);
            }
            if expired(end) {
                self.results.store(NO, Ordering::Relaxed);
                return Ok(false);
            }
        }
    }
}

#[pymethods]
impl NativeClient {
    /// Connects to `addr`; for `tcp://` addresses first waits up to
    /// `connect_timeout` seconds for something to accept connections there.
    #[new]
    #[pyo3(signature = (addr, connect_timeout = 5.0))]
    fn new(py: Python<'_>, addr: String, connect_timeout: f64) -> PyResult<NativeClient> {
        let t = Duration::from_secs_f64(connect_timeout.clamp(0.0, 1e6));
        let client = py.detach(|| {
            wait_reachable(&addr, t).map_err(|e| {
                if e.starts_with("no router") {
                    PyConnectionError::new_err(e)
                } else {
                    PyConnectionError::new_err(format!("no router at {addr} within {connect_timeout} s ({e})"))
                }
            })?;
            Client::connect(&addr).map_err(|e| PyConnectionError::new_err(format!("cannot connect to {addr}: {e}")))
        })?;
        Ok(NativeClient {
            addr,
            identity: client.identity().to_owned(),
            inner: Mutex::new(Some(client)),
            results: AtomicU8::new(UNKNOWN),
            probes: AtomicU64::new(0),
        })
    }

    #[getter]
    fn addr(&self) -> &str {
        &self.addr
    }

    /// This client's identity at the router.
    #[getter]
    fn identity(&self) -> &str {
        &self.identity
    }

    /// The secret sent with this client's jobs: whoever holds it may read
    /// their results from any process (`Job.owner`, `Client.job`).
    #[getter]
    fn owner_token(&self) -> PyResult<String> {
        self.with(|c| Ok(c.owner_token().to_owned()))
    }

    /// Sends one REQUEST; returns its msgid at once (no waiting).
    #[pyo3(signature = (queue, path, callable, args_json, kwargs_json, class_args_json, class_kwargs_json,
                        reply_requested, guarantee, retries, timeout, delay=None, eta=None, unique=None,
                        depends_on=Vec::new(), run_on_dependency_failure=false, limit=None, requires=Vec::new(),
                        on=None))]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        py: Python<'_>,
        queue: &str,
        path: String,
        callable: String,
        args_json: &str,
        kwargs_json: &str,
        class_args_json: &str,
        class_kwargs_json: &str,
        reply_requested: bool,
        guarantee: bool,
        retries: Option<u32>,
        timeout: Option<u64>,
        delay: Option<f64>,
        eta: Option<f64>,
        unique: Option<String>,
        depends_on: Vec<String>,
        run_on_dependency_failure: bool,
        limit: Option<String>,
        requires: Vec<String>,
        on: Option<String>,
    ) -> PyResult<String> {
        let mut job = Job::new(path, callable, parse_json("args", args_json)?);
        job.kwargs = parse_json::<Map<String, Value>>("kwargs", kwargs_json)?;
        job.class_args = parse_json("class_args", class_args_json)?;
        job.class_kwargs = parse_json("class_kwargs", class_kwargs_json)?;
        let options = options(
            reply_requested,
            guarantee,
            retries,
            timeout,
            delay,
            eta,
            unique,
            depends_on,
            run_on_dependency_failure,
            limit,
            requires,
            on,
        )?;
        // Given a leader and standbys (`A,B`), no router may be up for a
        // few seconds of a failover: keep trying for up to SEND_RETRY.
        let until = Instant::now() + SEND_RETRY;
        py.detach(|| self.with(|c| c.send_request_until(queue, &job, &options, until).map_err(client_err)))
    }

    /// Sends one command job (`["command", {argv, env, cwd, stdin}]`: a
    /// program a job manager runs if its `allowed_commands` allows it);
    /// returns its msgid at once. The options are [`NativeClient::send`]'s;
    /// a command that cannot run (see `check_command`) raises ValueError
    /// before anything is sent.
    #[pyo3(signature = (queue, argv, env, cwd, stdin, reply_requested, guarantee, retries, timeout, delay=None,
                        eta=None, unique=None, depends_on=Vec::new(), run_on_dependency_failure=false, limit=None,
                        requires=Vec::new(), on=None))]
    #[allow(clippy::too_many_arguments)]
    fn send_command(
        &self,
        py: Python<'_>,
        queue: &str,
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
        stdin: Option<String>,
        reply_requested: bool,
        guarantee: bool,
        retries: Option<u32>,
        timeout: Option<u64>,
        delay: Option<f64>,
        eta: Option<f64>,
        unique: Option<String>,
        depends_on: Vec<String>,
        run_on_dependency_failure: bool,
        limit: Option<String>,
        requires: Vec<String>,
        on: Option<String>,
    ) -> PyResult<String> {
        let command = command_payload(argv, env, cwd, stdin)?;
        let options = options(
            reply_requested,
            guarantee,
            retries,
            timeout,
            delay,
            eta,
            unique,
            depends_on,
            run_on_dependency_failure,
            limit,
            requires,
            on,
        )?;
        let until = Instant::now() + SEND_RETRY;
        py.detach(|| self.with(|c| c.send_command_until(queue, &command, &options, until).map_err(client_err)))
    }

    /// Cancels a job or workflow this client sent: the router's answer as
    /// JSON text, `None` when none came within `timeout` seconds.
    fn cancel(&self, py: Python<'_>, msgid: &str, timeout: f64) -> PyResult<Option<String>> {
        let end = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
        py.detach(|| {
            self.with(|c| match c.cancel(msgid, end) {
                Ok(v) => Ok(Some(v.to_string())),
                Err(ClientError::Deadline) => Ok(None),
                Err(e) => Err(client_err(e)),
            })
        })
    }

    /// Submits a workflow given as a canvas (JSON text, see
    /// `emq_client::workflow::Canvas::from_json`); returns its id at once.
    fn submit_workflow(&self, py: Python<'_>, canvas_json: &str) -> PyResult<String> {
        let v: Value = parse_json("workflow", canvas_json)?;
        let canvas = emq_client::workflow::Canvas::from_json(&v).map_err(PyValueError::new_err)?;
        let until = Instant::now() + SEND_RETRY;
        py.detach(|| self.with(|c| c.submit_canvas_until(&canvas, until).map_err(client_err)))
    }

    /// The router's receipt for `msgid`: `(True, None)` accepted, `(False,
    /// error_json)` refused, `(True, "=" + other_msgid)` deduplicated (a
    /// `unique` key held by that job), `None` nothing before `timeout`.
    #[pyo3(signature = (msgid, timeout))]
    fn wait_receipt(
        &self,
        py: Python<'_>,
        msgid: &str,
        timeout: Option<f64>,
    ) -> PyResult<Option<(bool, Option<String>)>> {
        let end = deadline(timeout);
        py.detach(|| loop {
            let got = self.with(|c| {
                let slice_end = Instant::now() + Duration::from_millis(slice_ms(end) as u64);
                match c.wait_receipt(msgid, slice_end) {
                    Ok(Receipt::Accepted) => Ok(Some((true, None))),
                    Ok(Receipt::Deduplicated(holder)) => {
                        c.expect(&holder);
                        Ok(Some((true, Some(format!("={holder}")))))
                    }
                    Ok(Receipt::Refused(e)) => {
                        c.take_result(msgid); // the refusal is also kept as an outcome
                        Ok(Some((false, Some(serde_json::to_string(&e).expect("error serialises")))))
                    }
                    Err(ClientError::Deadline) => Ok(None),
                    Err(e) => Err(client_err(e)),
                }
            })?;
            if got.is_some() || expired(end) {
                return Ok(got);
            }
        })
    }

    /// Forgets receipts nobody will ask for (fire-and-forget sending to a
    /// router without results). Returns how many.
    fn drain_receipts(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| {
            self.with(|c| {
                let _ = c.pump(0);
                Ok(c.drain_receipts().len())
            })
        })
    }

    /// Waits for the outcome of `msgid`: `(kind, json)` (see `encode`), or
    /// `None` when `timeout` seconds pass (`None`: wait for ever).
    /// With `owner` (another client's token: a job sent elsewhere), the
    /// result is read from the router's record, asked with that token.
    #[pyo3(signature = (msgid, timeout, owner = None))]
    fn wait_result(
        &self,
        py: Python<'_>,
        msgid: &str,
        timeout: Option<f64>,
        owner: Option<&str>,
    ) -> PyResult<Option<(&'static str, String)>> {
        let end = deadline(timeout);
        py.detach(|| {
            // A job sent elsewhere: its result never comes here as a
            // REPLY, so its record is asked at once.
            let mut last_poll = match owner {
                Some(_) => Instant::now().checked_sub(STATUS_POLL).unwrap_or_else(Instant::now),
                None => Instant::now(),
            };
            let mut asked = false;
            loop {
                let got = self.with(|c| {
                    if let Some(o) = c.take_result(msgid) {
                        return Ok(Some(o));
                    }
                    if asked {
                        if let Some(st) = c.take_status(msgid) {
                            asked = false;
                            if let Some(o) = outcome_from_status(&st) {
                                return Ok(Some(o));
                            }
                            if let Some(why) = st.get("result_hidden").and_then(Value::as_str) {
                                return Err(PyPermissionError::new_err(format!(
                                    "the result of job {msgid} is not shown to this client ({why}): pass the \
                                     sending client's token (Job.owner there) as owner="
                                )));
                            }
                            if st.get("error").is_some() && st.get("state").is_none() {
                                // The router does not know the job.
                                let e = st["error"].as_str().unwrap_or("unknown job").to_owned();
                                return Err(PyLookupError::new_err(format!("job {msgid}: {e}")));
                            }
                        }
                    }
                    if self.results.load(Ordering::Relaxed) == YES && last_poll.elapsed() >= STATUS_POLL {
                        // A result that was lost on the way is still in the
                        // router's job record.
                        last_poll = Instant::now();
                        if !asked {
                            match owner {
                                Some(t) => c.ask_status_as(msgid, t),
                                None => c.ask_status(msgid),
                            }
                            .map_err(client_err)?;
                            asked = true;
                        }
                    }
                    if expired(end) {
                        return Ok(None);
                    }
                    Self::pump_slice(c, end)?;
                    Ok(c.take_result(msgid))
                })?;
                self.say_router_notices();
                if let Some(o) = got {
                    self.results.store(YES, Ordering::Relaxed);
                    return Ok(encode(o));
                }
                if expired(end) {
                    return Ok(None);
                }
            }
        })
    }

    /// The first of `msgids` to finish: `(msgid, kind, json)`, or `None`
    /// when `timeout` seconds pass.
    #[pyo3(signature = (msgids, timeout))]
    fn wait_any(
        &self,
        py: Python<'_>,
        msgids: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(String, &'static str, String)>> {
        let end = deadline(timeout);
        py.detach(|| loop {
            let got = self.with(|c| {
                let find = |c: &mut Client| msgids.iter().find_map(|m| c.take_result(m).map(|o| (m.clone(), o)));
                if let Some(x) = find(c) {
                    return Ok(Some(x));
                }
                if expired(end) {
                    return Ok(None);
                }
                Self::pump_slice(c, end)?;
                Ok(find(c))
            })?;
            if let Some((m, o)) = got {
                self.results.store(YES, Ordering::Relaxed);
                return Ok(encode(o).map(|(k, j)| (m, k, j)));
            }
            if expired(end) {
                return Ok(None);
            }
        })
    }

    /// The router's record of `msgid` as JSON text, or `None` when no
    /// answer came within `timeout` seconds.
    #[pyo3(signature = (msgid, timeout, owner = None))]
    fn status(&self, py: Python<'_>, msgid: &str, timeout: f64, owner: Option<&str>) -> PyResult<Option<String>> {
        let end = deadline(Some(timeout));
        py.detach(|| {
            self.with(|c| {
                match owner {
                    Some(t) => c.ask_status_as(msgid, t),
                    None => c.ask_status(msgid),
                }
                .map_err(client_err)
            })?;
            loop {
                let got = self.with(|c| {
                    if let Some(v) = c.take_status(msgid) {
                        return Ok(Some(v));
                    }
                    Self::pump_slice(c, end)?;
                    Ok(c.take_status(msgid))
                })?;
                if let Some(v) = got {
                    self.results.store(YES, Ordering::Relaxed);
                    return Ok(Some(v.to_string()));
                }
                if expired(end) {
                    return Ok(None);
                }
            }
        })
    }

    /// Whether the router sends results: asks JOB_STATUS once (emq's router
    /// answers, EventMQ's stays silent) and remembers the answer; waits up
    /// to `timeout` seconds the first time.
    fn supports_results(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let t = Duration::from_secs_f64(timeout.clamp(0.0, 1e6));
        py.detach(|| self.probe_blocking(t))
    }

    /// The cached answer of `supports_results`, `None` before the probe.
    #[getter]
    fn results_known(&self) -> Option<bool> {
        match self.results.load(Ordering::Relaxed) {
            YES => Some(true),
            NO => Some(false),
            _ => None,
        }
    }

    /// Closes the socket (waiting up to 1 s for unsent messages to leave).
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let c = self.lock().take();
            drop(c);
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.lock().is_none()
    }
}

/// The router frontend address the other emq tools would use:
/// `EMQ_FRONTEND_ADDR` / `EVENTMQ_FRONTEND_ADDR`, else `frontend_addr` in
/// `config` (or `./settings.toml`), else `tcp://127.0.0.1:47291`.
#[pyfunction]
#[pyo3(signature = (config = None))]
fn default_addr(config: Option<String>) -> PyResult<String> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct FrontendSetting {
        frontend_addr: Option<String>,
    }
    let s = emq_settings::load::<FrontendSetting>(config.as_deref().map(std::path::Path::new))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(s.frontend_addr.unwrap_or_else(|| "tcp://127.0.0.1:47291".into()))
}

/// What `Client.events` needs from the settings the router reads:
/// `(http_addr, admin token file)` — `http_addr` from `EMQ_HTTP_ADDR` /
/// `EVENTMQ_HTTP_ADDR`, else `config` (or `./settings.toml`), None when
/// unset or empty; the token file is `data_dir/admin.token` (`data_dir` as
/// the router resolves it: the setting, else `$XDG_STATE_HOME/emq`, else
/// `~/.local/state/emq`), as `emq-cli` finds it. Raises ValueError for
/// settings that do not load.
#[pyfunction]
#[pyo3(signature = (config = None))]
fn http_settings(config: Option<String>) -> PyResult<(Option<String>, Option<String>)> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct HttpSettings {
        http_addr: Option<String>,
        data_dir: Option<String>,
    }
    let s = emq_settings::load::<HttpSettings>(config.as_deref().map(std::path::Path::new))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let http = s.http_addr.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty());
    let dir = s
        .data_dir
        .filter(|d| !d.trim().is_empty())
        .map(std::path::PathBuf::from)
        .or_else(emq_settings::default_data_dir);
    let token_file = dir.map(|d| d.join(emq_settings::ADMIN_TOKEN_FILE).to_string_lossy().into_owned());
    Ok((http, token_file))
}

/// `pkg.mod.func` → `("pkg.mod", "func")`; `pkg.mod:Class.method` →
/// `("pkg.mod:Class", "method")`; anything else raises ValueError.
#[pyfunction]
fn split_callable(name: &str) -> PyResult<(String, String)> {
    let j = job_for(name).map_err(client_err)?;
    Ok((j.path, j.callable))
}

/// Checks a command job as the job manager will (`argv` names a program,
/// no NUL bytes, variable names without `=`, an absolute `cwd`...);
/// raises ValueError saying what is wrong. Nothing is sent.
#[pyfunction]
#[pyo3(signature = (argv, env, cwd = None, stdin = None))]
fn check_command(
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    stdin: Option<String>,
) -> PyResult<()> {
    command_payload(argv, env, cwd, stdin).map(|_| ())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_function(wrap_pyfunction!(default_addr, m)?)?;
    m.add_function(wrap_pyfunction!(split_callable, m)?)?;
    m.add_function(wrap_pyfunction!(http_settings, m)?)?;
    m.add_function(wrap_pyfunction!(check_command, m)?)?;
    Ok(())
}
