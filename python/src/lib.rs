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
//! the client logic (`emq-client`). Job arguments come in as JSON text (the
//! Python side encodes them, a whole batch in one call) and go into the
//! payload frame as they are; results go out as Python objects built from
//! the parsed reply ([`to_py`]: no JSON text in between).
//!
//! Waiting is done in short slices (lock, read what arrived for up to
//! [`SLICE`], unlock), so threads sharing one client each get their own
//! results and sends are never held up for longer than a slice. Batches
//! ([`NativeClient::send_many`], [`NativeClient::take_many`] with a
//! [`Waiter`]) send many jobs and collect many results per call.

/// mimalloc for this extension's own (Rust) allocations — frames, the
/// client's maps, parsed replies — tens per round trip: less work each than
/// glibc's malloc. Python's objects keep Python's allocator; nothing
/// allocated here is freed by anyone else.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use emq_client::{
    job_for, outcome_from_status, Client, ClientError, CommandPayload, JobOutcome, Options, Receipt, RouterNotice,
};
use pyo3::exceptions::{
    PyConnectionError, PyLookupError, PyPermissionError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyList, PyString};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
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

/// An outcome's kind for Python: `value` (it returned), or `failed`,
/// `timeout`, `worker_died`, `refused` (an error object: `type`,
/// `message`, `traceback`, `by_router` when the router itself refused).
fn kind_of(o: &JobOutcome) -> Option<&'static str> {
    Some(match o {
        JobOutcome::Value(_) => "value",
        JobOutcome::Failed(_) => "failed",
        JobOutcome::Timeout(_) => "timeout",
        JobOutcome::WorkerDied(_) => "worker_died",
        JobOutcome::Refused(_) => "refused",
        JobOutcome::NoReply => return None,
    })
}

/// A JSON value as the Python object `json.loads` would give (without
/// the text in between).
fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let items = a.iter().map(|x| to_py(py, x)).collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

/// An outcome for Python: `(kind, object)` — for `value` the return value,
/// else the error as a dict (see [`kind_of`]); `None` for no reply.
fn outcome_py(py: Python<'_>, o: &JobOutcome) -> PyResult<Option<(&'static str, Py<PyAny>)>> {
    let Some(kind) = kind_of(o) else { return Ok(None) };
    let obj = match o {
        JobOutcome::Value(v) => to_py(py, v)?,
        JobOutcome::Failed(e) | JobOutcome::Timeout(e) | JobOutcome::WorkerDied(e) | JobOutcome::Refused(e) => {
            to_py(py, &serde_json::to_value(e).expect("error serialises"))?
        }
        JobOutcome::NoReply => return Ok(None),
    };
    Ok(Some((kind, obj.unbind())))
}

/// The elements of a JSON array's text, as slices of it (not parsed):
/// `[1,[2,3],"a,b"]` → `1`, `[2,3]`, `"a,b"`. The text is checked to be
/// JSON first.
fn split_array(text: &str) -> Result<Vec<&str>, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| e.to_string())?;
    let t = text.trim();
    let inner = t.strip_prefix('[').and_then(|x| x.strip_suffix(']')).ok_or_else(|| "not a JSON array".to_owned())?;
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc, mut start) = (0usize, false, false, 0usize);
    for (i, b) in inner.bytes().enumerate() {
        if in_str {
            match b {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth -= 1,
            b',' if depth == 0 => {
                out.push(inner[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    let last = inner[start..].trim();
    if !last.is_empty() || !out.is_empty() {
        out.push(last);
    }
    Ok(out)
}

/// A `["run", {...}]` payload frame from JSON texts (as
/// `RunPayload::to_wire` writes it: empty arguments left out).
fn payload_wire(path: &str, callable: &str, args: &str, kwargs: &str, class_args: &str, class_kwargs: &str) -> String {
    let mut p = String::with_capacity(40 + path.len() + callable.len() + args.len() + kwargs.len());
    p.push_str("[\"run\",{\"path\":");
    p.push_str(&serde_json::to_string(path).expect("a string serialises"));
    p.push_str(",\"callable\":");
    p.push_str(&serde_json::to_string(callable).expect("a string serialises"));
    for (name, text, empty) in [
        ("args", args, "[]"),
        ("kwargs", kwargs, "{}"),
        ("class_args", class_args, "[]"),
        ("class_kwargs", class_kwargs, "{}"),
    ] {
        let text = text.trim();
        if text != empty {
            p.push_str(",\"");
            p.push_str(name);
            p.push_str("\":");
            p.push_str(text);
        }
    }
    p.push_str("}]");
    p
}

/// Checks the JSON texts of a job's arguments (an array, an object, an
/// array, an object): ValueError naming the one that is not.
fn check_job_texts(args: &str, kwargs: &str, class_args: &str, class_kwargs: &str) -> PyResult<()> {
    for (what, text, open) in [
        ("args", args, '['),
        ("kwargs", kwargs, '{'),
        ("class_args", class_args, '['),
        ("class_kwargs", class_kwargs, '{'),
    ] {
        let t = text.trim();
        if (t == "[]" && open == '[') || (t == "{}" && open == '{') {
            continue;
        }
        if !t.starts_with(open) {
            return Err(PyValueError::new_err(format!(
                "{what}: expected a JSON {}",
                if open == '[' { "array" } else { "object" }
            )));
        }
        serde_json::from_str::<serde::de::IgnoredAny>(t).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    }
    Ok(())
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

/// Jobs one batch wait collects (`Client.map`, `as_completed`, `gather`):
/// their msgids, each under the caller's key (an index).
#[pyclass(frozen, module = "emq._native")]
struct Waiter {
    state: Mutex<WaiterState>,
}

#[derive(Default)]
struct WaiterState {
    keys: HashMap<String, usize>,
    /// Where the next round of status questions starts.
    poll_at: usize,
}

impl Waiter {
    fn state(&self) -> MutexGuard<'_, WaiterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl Waiter {
    #[new]
    fn new() -> Self {
        Waiter { state: Mutex::new(WaiterState::default()) }
    }

    /// Adds `msgids` under the keys `first`, `first + 1`, ...
    #[pyo3(signature = (msgids, first = 0))]
    fn add(&self, msgids: Vec<String>, first: usize) {
        let mut st = self.state();
        for (i, m) in msgids.into_iter().enumerate() {
            st.keys.insert(m, first + i);
        }
    }

    /// Stops waiting on `msgid` (its outcome was taken another way).
    fn discard(&self, msgid: &str) {
        self.state().keys.remove(msgid);
    }

    /// How many jobs are still waited on.
    fn __len__(&self) -> usize {
        self.state().keys.len()
    }

    /// The msgids still waited on.
    fn pending(&self) -> Vec<String> {
        self.state().keys.keys().cloned().collect()
    }
}

/// Takes the outcomes already received for the waiter's jobs (at most
/// `max` in all in `got`).
fn take_waited(c: &mut Client, st: &mut WaiterState, got: &mut Vec<(usize, String, JobOutcome)>, max: usize) {
    if st.keys.is_empty() || got.len() >= max {
        return;
    }
    for (id, o) in c.take_results_where(|id| st.keys.contains_key(id), max - got.len()) {
        if let Some(k) = st.keys.remove(&id) {
            got.push((k, id, o));
        }
    }
}

/// Status questions per round of a batch wait (as `Client::wait_any`).
const STATUS_ROUND: usize = 256;

/// How often a batch wait looks for signals (KeyboardInterrupt).
const SIGNALS_EVERY: Duration = Duration::from_millis(200);

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

    /// [`NativeClient::send`] for the commonest job, `Client.send("pkg.mod.func",
    /// *args)`: positional arguments only (`args_json`, a JSON array), a
    /// result asked for, no other option. Five arguments to convert instead
    /// of nineteen: a round trip's CPU is mostly the sending process's.
    fn send_plain(
        &self,
        py: Python<'_>,
        queue: &str,
        path: &str,
        callable: &str,
        args_json: &str,
        guarantee: bool,
    ) -> PyResult<String> {
        check_job_texts(args_json, "{}", "[]", "{}")?;
        let payload = payload_wire(path, callable, args_json, "{}", "[]", "{}");
        let options = Options { reply_requested: true, guarantee, ..Options::default() };
        let until = Instant::now() + SEND_RETRY;
        py.detach(|| self.with(|c| c.send_payload_until(queue, &payload, &options, until).map_err(client_err)))
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
        check_job_texts(args_json, kwargs_json, class_args_json, class_kwargs_json)?;
        let payload = payload_wire(&path, &callable, args_json, kwargs_json, class_args_json, class_kwargs_json);
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
        py.detach(|| self.with(|c| c.send_payload_until(queue, &payload, &options, until).map_err(client_err)))
    }

    /// Sends one job per element of `items_json` (a JSON array): the
    /// element is the job's one argument, or with `star` its array of
    /// arguments. The callable, keyword arguments, class arguments and
    /// options are [`NativeClient::send`]'s, shared by all. Every element
    /// is checked before anything is sent (ValueError). Returns the msgids
    /// in order, at once (no waiting for receipts); with `waiter` they are
    /// also added to it under the keys `first_key`, `first_key + 1`, ...
    #[pyo3(signature = (queue, path, callable, items_json, star, kwargs_json, class_args_json, class_kwargs_json,
                        reply_requested, guarantee, retries, timeout, delay=None, eta=None, depends_on=Vec::new(),
                        run_on_dependency_failure=false, limit=None, requires=Vec::new(), on=None, waiter=None,
                        first_key=0))]
    #[allow(clippy::too_many_arguments)]
    fn send_many(
        &self,
        py: Python<'_>,
        queue: &str,
        path: String,
        callable: String,
        items_json: &str,
        star: bool,
        kwargs_json: &str,
        class_args_json: &str,
        class_kwargs_json: &str,
        reply_requested: bool,
        guarantee: bool,
        retries: Option<u32>,
        timeout: Option<u64>,
        delay: Option<f64>,
        eta: Option<f64>,
        depends_on: Vec<String>,
        run_on_dependency_failure: bool,
        limit: Option<String>,
        requires: Vec<String>,
        on: Option<String>,
        waiter: Option<Bound<'_, Waiter>>,
        first_key: usize,
    ) -> PyResult<Vec<String>> {
        check_job_texts("[]", kwargs_json, class_args_json, class_kwargs_json)?;
        let options = options(
            reply_requested,
            guarantee,
            retries,
            timeout,
            delay,
            eta,
            None,
            depends_on,
            run_on_dependency_failure,
            limit,
            requires,
            on,
        )?;
        let waiter = waiter.as_ref().map(|w| w.get());
        py.detach(|| {
            let items = split_array(items_json).map_err(|e| PyValueError::new_err(format!("items: {e}")))?;
            let mut payloads = Vec::with_capacity(items.len());
            let mut one = String::new();
            for (i, item) in items.iter().enumerate() {
                let args = if star {
                    if !item.starts_with('[') {
                        return Err(PyValueError::new_err(format!(
                            "item {i}: expected an array of arguments, not {item}"
                        )));
                    }
                    *item
                } else {
                    one.clear();
                    one.push('[');
                    one.push_str(item);
                    one.push(']');
                    one.as_str()
                };
                payloads.push(payload_wire(&path, &callable, args, kwargs_json, class_args_json, class_kwargs_json));
            }
            let mut ids = Vec::with_capacity(payloads.len());
            // A slice at a time: other threads sharing the client get the
            // socket in between.
            for chunk in payloads.chunks(256) {
                let until = Instant::now() + SEND_RETRY;
                let first = ids.len();
                // One REQUESTS per slice once the router takes them.
                let sent =
                    self.with(|c| c.send_payloads_until(queue, chunk, &options, until, &mut ids).map_err(client_err));
                if let Some(w) = waiter {
                    let mut st = w.state();
                    for (i, id) in ids[first..].iter().enumerate() {
                        st.keys.insert(id.clone(), first_key + first + i);
                    }
                }
                sent?;
            }
            Ok(ids)
        })
    }

    /// Waits until at least `min` of `waiter`'s jobs have an outcome (all of
    /// them when fewer are left) or `timeout` seconds pass (None: for
    /// ever), then takes every outcome that has arrived (at most `max`) —
    /// one call for a batch of results, the GIL released while waiting.
    /// With `out` (a list), each value is stored at `out[key]`; the other
    /// outcomes (all of them without `out`) are returned as `[(key, msgid,
    /// kind, object)]` (see [`outcome_py`]). Returns `(taken, those)`; `taken`
    /// is 0 when the time ran out first. While nothing arrives, the
    /// router's records of the jobs are asked now and then (a result sent
    /// to an earlier connection is not lost).
    #[pyo3(signature = (waiter, out=None, min=1, timeout=None, max=usize::MAX))]
    #[allow(clippy::type_complexity)]
    fn take_many(
        &self,
        py: Python<'_>,
        waiter: Bound<'_, Waiter>,
        out: Option<Bound<'_, PyList>>,
        min: usize,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<(usize, Vec<(usize, String, &'static str, Py<PyAny>)>)> {
        let w = waiter.get();
        let end = deadline(timeout);
        let max = max.max(1);
        let got = py.detach(|| -> PyResult<Vec<(usize, String, JobOutcome)>> {
            let need = min.max(1).min(w.state().keys.len()).min(max);
            let mut got = Vec::new();
            if need == 0 {
                return Ok(got);
            }
            let mut last_heard = Instant::now();
            let mut last_signals = Instant::now();
            loop {
                if last_signals.elapsed() >= SIGNALS_EVERY {
                    // A long batch stays interruptible (Ctrl-C).
                    last_signals = Instant::now();
                    Python::attach(|py| py.check_signals())?;
                }
                let done = self.with(|c| {
                    let mut st = w.state();
                    take_waited(c, &mut st, &mut got, max);
                    if got.len() >= need || expired(end) {
                        return Ok(true);
                    }
                    if self.results.load(Ordering::Relaxed) == YES && last_heard.elapsed() >= STATUS_POLL {
                        // Nothing for a while: ask the records of some of
                        // the jobs, taking turns.
                        last_heard = Instant::now();
                        let n = st.keys.len();
                        let from = st.poll_at % n.max(1);
                        let ask: Vec<String> = st.keys.keys().skip(from).take(STATUS_ROUND).cloned().collect();
                        st.poll_at = from + ask.len();
                        for id in &ask {
                            c.ask_status(id).map_err(client_err)?;
                        }
                    }
                    drop(st);
                    Self::pump_slice(c, end)?;
                    let before = got.len();
                    take_waited(c, &mut w.state(), &mut got, max);
                    if got.len() > before {
                        last_heard = Instant::now();
                    }
                    Ok(got.len() >= need || expired(end))
                })?;
                self.say_router_notices();
                if done {
                    return Ok(got);
                }
            }
        })?;
        if !got.is_empty() {
            self.results.store(YES, Ordering::Relaxed);
        }
        let taken = got.len();
        let mut rest = Vec::new();
        for (k, id, o) in got {
            match (&o, &out) {
                (JobOutcome::Value(v), Some(list)) => list.set_item(k, to_py(py, v)?)?,
                _ => {
                    if let Some((kind, obj)) = outcome_py(py, &o)? {
                        rest.push((k, id, kind, obj));
                    }
                }
            }
        }
        Ok((taken, rest))
    }

    /// Stops waiting on the waiter's jobs (a batch given up): whatever
    /// arrived or arrives for them is not kept.
    fn forget_waited(&self, py: Python<'_>, waiter: Bound<'_, Waiter>) -> PyResult<()> {
        let w = waiter.get();
        py.detach(|| {
            self.with(|c| {
                let mut st = w.state();
                for id in st.keys.keys() {
                    c.forget(id);
                }
                st.keys.clear();
                Ok(())
            })
        })
    }

    /// Stops waiting on `msgid` (a job sent with `reply_requested=False`,
    /// once its receipt is read): nothing about it is kept.
    fn forget(&self, msgid: &str) -> PyResult<()> {
        self.with(|c| {
            c.forget(msgid);
            Ok(())
        })
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

    /// Waits for the outcome of `msgid`: `(kind, object)` (see [`outcome_py`]), or
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
    ) -> PyResult<Option<(&'static str, Py<PyAny>)>> {
        let end = deadline(timeout);
        let got = py.detach(|| {
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
                    return Ok::<_, PyErr>(Some(o));
                }
                if expired(end) {
                    return Ok(None);
                }
            }
        })?;
        match got {
            Some(o) => outcome_py(py, &o),
            None => Ok(None),
        }
    }

    /// The first of `msgids` to finish: `(msgid, kind, object)`, or `None`
    /// when `timeout` seconds pass.
    #[pyo3(signature = (msgids, timeout))]
    fn wait_any(
        &self,
        py: Python<'_>,
        msgids: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(String, &'static str, Py<PyAny>)>> {
        let end = deadline(timeout);
        let got = py.detach(|| loop {
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
                return Ok::<_, PyErr>(Some((m, o)));
            }
            if expired(end) {
                return Ok(None);
            }
        })?;
        match got {
            Some((m, o)) => Ok(outcome_py(py, &o)?.map(|(k, v)| (m, k, v))),
            None => Ok(None),
        }
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
    m.add_class::<Waiter>()?;
    m.add_function(wrap_pyfunction!(default_addr, m)?)?;
    m.add_function(wrap_pyfunction!(split_callable, m)?)?;
    m.add_function(wrap_pyfunction!(http_settings, m)?)?;
    m.add_function(wrap_pyfunction!(check_command, m)?)?;
    Ok(())
}
