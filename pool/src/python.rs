//! Running Python callables through pyo3: `path` + `callable`, or
//! `pkg.mod:Class` + method with `class_args` / `class_kwargs`. Arguments and
//! return values cross as JSON values ([`json_to_py`], [`py_to_json`]); a
//! return value JSON cannot hold is a `TypeError`, not a crash. Exceptions
//! become `{type, message, traceback}`; an import failure names the module
//! and the `sys.path` searched.

use crate::report::Reporter;
use emq_protocol::{JobReply, Progress, RunPayload, MAX_CHECKPOINT_BYTES, MAX_PROGRESS_MESSAGE};
use pyo3::exceptions::{PyImportError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// Deepest nesting converted; deeper (or self-referencing) values are a
/// `ValueError` instead of a stack overflow.
const MAX_DEPTH: usize = 200;

/// JSON → a new Python object.
pub fn json_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let d = PyDict::new(py);
            for (k, v) in map {
                d.set_item(k, json_to_py(py, v)?)?;
            }
            d.into_any()
        }
    })
}

/// A Python object → JSON, as `json.dumps(allow_nan=False)` would accept it:
/// `None`, `bool`, `int` (64-bit), `float` (finite), `str`, `list`, `tuple`,
/// `dict` with `str` / `int` / `float` / `bool` / `None` keys.
pub fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_json(obj, 0)
}

fn to_json(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err("value nested too deeply (or circular) for JSON"));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(obj.extract::<bool>()?));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(PyValueError::new_err("integer out of the 64-bit range JSON results support"));
    }
    if obj.is_instance_of::<PyFloat>() {
        let f = obj.extract::<f64>()?;
        return Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("Out of range float values are not JSON compliant: {f}")));
    }
    if obj.is_instance_of::<PyString>() {
        return Ok(Value::String(obj.extract::<String>()?));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut out = Vec::new();
        for item in obj.try_iter()? {
            out.push(to_json(&item?, depth + 1)?);
        }
        return Ok(Value::Array(out));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut out = Map::new();
        for (k, v) in d.iter() {
            let key = if k.is_instance_of::<PyString>() {
                k.extract::<String>()?
            } else if k.is_none() {
                "null".to_owned()
            } else if k.is_instance_of::<PyBool>() {
                if k.extract::<bool>()? { "true" } else { "false" }.to_owned()
            } else if k.is_instance_of::<PyInt>() || k.is_instance_of::<PyFloat>() {
                k.str()?.to_string()
            } else {
                return Err(PyTypeError::new_err(format!(
                    "keys must be str, int, float, bool or None, not {}",
                    k.get_type().name()?
                )));
            };
            out.insert(key, to_json(&v, depth + 1)?);
        }
        return Ok(Value::Object(out));
    }
    Err(PyTypeError::new_err(format!("Object of type {} is not JSON serializable", obj.get_type().name()?)))
}

/// A failed job, ready to become `{"value": message, "error": {...}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub kind: String,
    pub message: String,
    pub traceback: String,
}

impl JobFailure {
    fn from_pyerr(py: Python<'_>, err: &PyErr) -> Self {
        let kind = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "Exception".into());
        let message = err.value(py).str().map(|s| s.to_string()).unwrap_or_default();
        let traceback = format_traceback(py, err).unwrap_or_else(|| format!("{kind}: {message}\n"));
        JobFailure { kind, message, traceback }
    }

    pub fn into_reply(self) -> JobReply {
        JobReply::failed(self.kind, self.message, self.traceback)
    }
}

/// The full traceback, via the three-argument `traceback.format_exception`.
fn format_traceback(py: Python<'_>, err: &PyErr) -> Option<String> {
    let tb_mod = py.import("traceback").ok()?;
    let tb = err.traceback(py).map(|t| t.into_any()).unwrap_or_else(|| py.None().into_bound(py));
    let lines = tb_mod.call_method1("format_exception", (err.get_type(py), err.value(py), tb)).ok()?;
    let joined = PyString::new(py, "").call_method1("join", (lines,)).ok()?;
    joined.extract::<String>().ok()
}

/// Runs jobs in this process's interpreter, caching resolved callables
/// (modules stay imported between jobs: the point of a warm pool).
#[derive(Default)]
pub struct PythonRunner {
    /// The `emq` module jobs can import: `emq.msgid`, `emq.attempt`.
    emq_module: Option<Py<PyModule>>,
    functions: HashMap<(String, String), Py<PyAny>>,
    classes: HashMap<String, Py<PyAny>>,
    job_entry: Option<Py<PyAny>>,
    job_exit: Option<Py<PyAny>>,
}

impl PythonRunner {
    /// Prepares `sys.path` (`python_path` first, then a venv's
    /// site-packages), runs the setup function, resolves the entry/exit
    /// hooks. Failing hooks are logged and skipped, as EventMQ does.
    pub fn new(py: Python<'_>, cfg: &crate::WorkerConfig) -> PythonRunner {
        if let Err(e) = prepare_sys_path(py, cfg) {
            tracing::error!(error = %e, "could not prepare sys.path");
        }
        Self::after_warm(py, cfg)
    }

    /// The warm template's preparation, before any worker is forked from
    /// it: `sys.path`, and the modules workers will import (`preload`, the
    /// hooks' modules) — imported, nothing called. What a worker must do on
    /// its own (the setup function) comes after the fork, in
    /// [`Self::after_warm`].
    pub fn warm(py: Python<'_>, cfg: &crate::WorkerConfig) {
        if let Err(e) = prepare_sys_path(py, cfg) {
            tracing::error!(error = %e, "could not prepare sys.path");
        }
        let hooks = [&cfg.subprocess_setup_func, &cfg.job_entry_func, &cfg.job_exit_func];
        let hook_modules = hooks.into_iter().flatten().filter_map(|f| f.rsplit_once('.').map(|(m, _)| m.to_owned()));
        for module in cfg.preload.iter().cloned().chain(hook_modules) {
            let module = module.split(':').next().unwrap_or_default().to_owned();
            if module.is_empty() {
                continue;
            }
            if let Err(e) = py.import(module.as_str()) {
                tracing::debug!(%module, error = %e, "template: module not preloaded (workers import it themselves)");
            }
        }
        // The `emq` module jobs read (`emq.msgid`, `current_job()`, and
        // the `json` import its code makes) is made here once: a worker
        // forked from here finds it in `sys.modules` and only resets its
        // attributes, instead of searching `sys.path` for it and compiling
        // its code at every recycling (measured: most of the Python side of
        // a worker's start).
        if let Err(e) = install_emq_module(py) {
            tracing::debug!(error = %e, "template: emq module not made (each worker makes its own)");
        }
        // What exists now is shared with every worker forked from here:
        // out of the garbage collector's sight, so a worker's collections
        // do not write to (and copy) those pages (CPython's `gc.freeze`,
        // meant for pre-fork servers).
        if let Err(e) = py.import("gc").and_then(|gc| gc.call_method0("freeze")) {
            tracing::debug!(error = %e, "template: gc.freeze not available");
        }
    }

    /// A worker's own start after `sys.path` is set (in a worker forked
    /// from the warm template, or after [`Self::new`]'s own preparation).
    pub fn after_warm(py: Python<'_>, cfg: &crate::WorkerConfig) -> PythonRunner {
        let mut runner = PythonRunner::default();
        match install_emq_module(py) {
            Ok(m) => runner.emq_module = Some(m),
            Err(e) => tracing::error!(error = %e, "cannot install the emq module"),
        }
        if let Some(f) = &cfg.subprocess_setup_func {
            match resolve_dotted(py, f).and_then(|func| func.call0().map(|_| ())) {
                Ok(()) => tracing::info!(func = %f, "subprocess_setup_func ran"),
                Err(e) => {
                    let fail = JobFailure::from_pyerr(py, &e);
                    tracing::error!(func = %f, error = %fail.message, traceback = %fail.traceback, "subprocess_setup_func failed; worker keeps serving");
                }
            }
        }
        let hook = |name: &str, path: &Option<String>| -> Option<Py<PyAny>> {
            let path = path.as_ref()?;
            match resolve_dotted(py, path) {
                Ok(f) => Some(f.unbind()),
                Err(e) => {
                    tracing::error!(hook = name, func = %path, error = %JobFailure::from_pyerr(py, &e).message, "cannot resolve hook; it will not run");
                    None
                }
            }
        };
        runner.job_entry = hook("job_entry_func", &cfg.job_entry_func);
        runner.job_exit = hook("job_exit_func", &cfg.job_exit_func);
        runner
    }

    /// Tells jobs which job they are: `emq.msgid`, `emq.attempt` (1 on the
    /// first run; more when a `retry-count` or `guarantee` job runs again),
    /// and the checkpoint an earlier attempt kept (JSON text, read by
    /// `emq.current_job().last_checkpoint`).
    pub fn set_current_job(&self, py: Python<'_>, msgid: &str, attempt: u32, checkpoint: Option<&str>) {
        if let Some(m) = &self.emq_module {
            let m = m.bind(py);
            // Interned names: a `&str` name would be made into a Python
            // string and interned again for every job.
            let _ = m.setattr(pyo3::intern!(py, "msgid"), msgid);
            let _ = m.setattr(pyo3::intern!(py, "attempt"), attempt);
            let checkpoint = checkpoint.filter(|c| {
                let ok = serde_json::from_str::<serde::de::IgnoredAny>(c).is_ok();
                if !ok {
                    tracing::warn!(%msgid, "the job's checkpoint header is not JSON: ignored");
                }
                ok
            });
            let _ = m.setattr(pyo3::intern!(py, LAST_CHECKPOINT_ATTR), checkpoint);
        }
    }

    /// Gives jobs `progress()`, `extend()` and `checkpoint()`: the `emq`
    /// module's `_job_control` (a [`JobControl`]) records into `reporter`.
    pub fn install_reporter(&self, py: Python<'_>, reporter: Arc<Reporter>) {
        let Some(m) = &self.emq_module else { return };
        match Py::new(py, JobControl { reporter }) {
            Ok(control) => {
                if let Err(e) = m.bind(py).setattr(JOB_CONTROL_ATTR, control) {
                    tracing::error!(error = %e, "cannot install emq._job_control");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot make emq._job_control"),
        }
    }

    /// Runs one job and returns its reply.
    pub fn run(&mut self, py: Python<'_>, payload: &RunPayload) -> JobReply {
        if let Some(f) = &self.job_entry {
            if let Err(e) = f.call0(py) {
                tracing::warn!(error = %JobFailure::from_pyerr(py, &e).message, "job_entry_func failed");
            }
        }
        let reply = match self.call(py, payload) {
            Ok(v) => JobReply::ok(v),
            Err(f) => f.into_reply(),
        };
        if let Some(f) = &self.job_exit {
            if let Err(e) = f.call0(py) {
                tracing::warn!(error = %JobFailure::from_pyerr(py, &e).message, "job_exit_func failed");
            }
        }
        reply
    }

    fn call(&mut self, py: Python<'_>, p: &RunPayload) -> Result<Value, JobFailure> {
        let fail = |e: PyErr| JobFailure::from_pyerr(py, &e);
        let target = match p.module_and_class() {
            (module, Some(class)) => {
                let cls = self.class(py, module, class)?;
                let args = PyTuple::new(
                    py,
                    p.class_args.iter().map(|a| json_to_py(py, a)).collect::<PyResult<Vec<_>>>().map_err(fail)?,
                )
                .map_err(fail)?;
                let kwargs = dict_from(py, &p.class_kwargs).map_err(fail)?;
                let instance = cls.bind(py).call(args, Some(&kwargs)).map_err(fail)?;
                instance.getattr(p.callable.as_str()).map_err(fail)?
            }
            (module, None) => self.function(py, module, &p.callable)?.into_bound(py),
        };
        let args =
            PyTuple::new(py, p.args.iter().map(|a| json_to_py(py, a)).collect::<PyResult<Vec<_>>>().map_err(fail)?)
                .map_err(fail)?;
        let kwargs = dict_from(py, &p.kwargs).map_err(fail)?;
        let result = target.call(args, Some(&kwargs)).map_err(fail)?;
        py_to_json(&result).map_err(|e| {
            let mut f = JobFailure::from_pyerr(py, &e);
            f.message = format!("return value of {}.{}: {}", p.path, p.callable, f.message);
            f
        })
    }

    fn function(&mut self, py: Python<'_>, module: &str, name: &str) -> Result<Py<PyAny>, JobFailure> {
        let key = (module.to_owned(), name.to_owned());
        if let Some(f) = self.functions.get(&key) {
            return Ok(f.clone_ref(py));
        }
        let m = import(py, module)?;
        let f = m.getattr(name).map_err(|e| JobFailure::from_pyerr(py, &e))?;
        if !f.is_callable() {
            return Err(JobFailure {
                kind: "TypeError".into(),
                message: format!("{module}.{name} is not callable"),
                traceback: String::new(),
            });
        }
        let f = f.unbind();
        self.functions.insert(key, f.clone_ref(py));
        Ok(f)
    }

    fn class(&mut self, py: Python<'_>, module: &str, class: &str) -> Result<Py<PyAny>, JobFailure> {
        let key = format!("{module}:{class}");
        if let Some(c) = self.classes.get(&key) {
            return Ok(c.clone_ref(py));
        }
        let m = import(py, module)?;
        let c = m.getattr(class).map_err(|e| JobFailure::from_pyerr(py, &e))?.unbind();
        self.classes.insert(key, c.clone_ref(py));
        Ok(c)
    }
}

/// The `emq` module attribute holding the worker's [`JobControl`].
const JOB_CONTROL_ATTR: &str = "_job_control";
/// The `emq` module attribute holding the running job's last checkpoint
/// (JSON text, or None).
const LAST_CHECKPOINT_ATTR: &str = "_last_checkpoint";

/// What a running job says about itself, through the `emq` module's
/// `_job_control` (which the methods of `emq.current_job()` call):
/// checked here, recorded in the worker's [`Reporter`], sent coalesced.
#[pyclass(frozen, module = "emq")]
pub struct JobControl {
    reporter: Arc<Reporter>,
}

fn not_running(e: crate::report::NotRunning) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// `v` when it is a finite number >= 0.
fn finite_non_negative(what: &str, v: f64) -> PyResult<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(PyValueError::new_err(format!("{what} must be a finite number >= 0, not {v}")))
    }
}

#[pymethods]
impl JobControl {
    /// Records the progress of job `msgid` (the running one).
    #[pyo3(signature = (msgid, done, total=None, message=None))]
    fn progress(&self, msgid: &str, done: f64, total: Option<f64>, message: Option<String>) -> PyResult<()> {
        let done = finite_non_negative("done", done)?;
        let total = total.map(|t| finite_non_negative("total", t)).transpose()?;
        let message = message.map(|mut m| {
            if m.len() > MAX_PROGRESS_MESSAGE {
                let mut end = MAX_PROGRESS_MESSAGE;
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                m.truncate(end);
            }
            m
        });
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.reporter.progress(msgid, Progress { done, total, message, at }, Instant::now()).map_err(not_running)
    }

    /// Keeps `value` (JSON-serialisable, at most 64 KiB as JSON text) as
    /// the checkpoint of job `msgid`.
    fn checkpoint(&self, msgid: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let json = py_to_json(value)?.to_string();
        if json.len() > MAX_CHECKPOINT_BYTES {
            return Err(PyValueError::new_err(format!(
                "a checkpoint is at most {MAX_CHECKPOINT_BYTES} bytes of JSON; this one is {}",
                json.len()
            )));
        }
        self.reporter.checkpoint(msgid, json, Instant::now()).map_err(not_running)
    }

    /// Job `msgid`'s timeout starts again: `seconds` from now (never past
    /// the job manager's `max_runtime`).
    fn extend(&self, msgid: &str, seconds: f64) -> PyResult<()> {
        if !(seconds.is_finite() && seconds > 0.0) {
            return Err(PyValueError::new_err(format!("seconds must be a finite number > 0, not {seconds}")));
        }
        self.reporter.extend(msgid, seconds, Instant::now()).map_err(not_running)
    }
}

/// The bare `emq` module's code: the package's `current_job()` (with
/// `progress`, `extend`, `checkpoint`, `last_checkpoint`), and its
/// `__getattr__` (PEP 562): a clear error for any other name of the
/// client package.
const BARE_EMQ_CODE: &std::ffi::CStr = c"
import json as _json


class CurrentJob(tuple):
    '(msgid, attempt) of the running job, with progress(), extend(), checkpoint(), last_checkpoint.'

    def __new__(cls, msgid, attempt, last_checkpoint_json=None):
        self = tuple.__new__(cls, (msgid, attempt))
        self._checkpoint_json = last_checkpoint_json
        return self

    msgid = property(lambda self: self[0])
    attempt = property(lambda self: self[1])

    @property
    def last_checkpoint(self):
        'The checkpoint an earlier attempt kept (None when there is none).'
        j = self._checkpoint_json
        return None if j is None else _json.loads(j)

    def progress(self, done, total=None, message=None):
        'How far the job is: done (of total), with a message.'
        _job_control.progress(self[0], done, total, message)

    def extend(self, seconds):
        'The timeout starts again: seconds from now (at most max_runtime after the start).'
        _job_control.extend(self[0], seconds)

    def checkpoint(self, data):
        'Keeps data (JSON, at most 64 KiB) for a retried attempt (last_checkpoint).'
        _job_control.checkpoint(self[0], data)

    def __repr__(self):
        return 'CurrentJob(msgid=%r, attempt=%r)' % tuple(self)


def current_job():
    'The job this worker is running (CurrentJob), or None.'
    if msgid is None:
        return None
    return CurrentJob(msgid, attempt, _last_checkpoint)


def __getattr__(name):
    if name.startswith('__'):
        raise AttributeError(name)
    raise AttributeError(
        'emq.%s: the emq package is not importable in this worker (it has only the bare emq module '
        'with msgid, attempt and current_job()). Install it (pip install ./python) into a virtualenv and '
        'point the job manager at it with python_venv (or VIRTUAL_ENV)' % name)
";

/// The importable `emq` module inside the worker. When the worker's Python
/// can import the emq client package (`pip install ./python`, which has
/// `current_job`), that package is the module: one `emq` for both, its
/// `current_job()` reading the attributes set here. Otherwise a bare module
/// holding `msgid`, `attempt` and the same `current_job()`.
fn install_emq_module(py: Python<'_>) -> PyResult<Py<PyModule>> {
    if let Ok(m) = py.import("emq") {
        if m.hasattr("current_job").unwrap_or(false) {
            m.setattr("msgid", py.None())?;
            m.setattr("attempt", 0)?;
            m.setattr(LAST_CHECKPOINT_ATTR, py.None())?;
            return Ok(m.unbind());
        }
    }
    let m = PyModule::new(py, "emq")?;
    m.setattr("__doc__", "Set by the emq worker before each job: msgid, attempt (1 = first run), current_job().")?;
    m.setattr("msgid", py.None())?;
    m.setattr("attempt", 0)?;
    m.setattr(LAST_CHECKPOINT_ATTR, py.None())?;
    m.setattr(JOB_CONTROL_ATTR, py.None())?;
    // Anything else (`@emq.task`, `emq.Client`) means the job expected the
    // client package: say that it is not importable here, and how to fix it.
    py.run(BARE_EMQ_CODE, Some(&m.dict()), None)?;
    py.import("sys")?.getattr("modules")?.set_item("emq", &m)?;
    Ok(m.unbind())
}

fn dict_from<'py>(py: Python<'py>, m: &Map<String, Value>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in m {
        d.set_item(k, json_to_py(py, v)?)?;
    }
    Ok(d)
}

/// Imports `module`; on failure the message names the module and `sys.path`.
fn import<'py>(py: Python<'py>, module: &str) -> Result<Bound<'py, PyModule>, JobFailure> {
    py.import(module).map_err(|e| {
        let mut f = JobFailure::from_pyerr(py, &e);
        if e.is_instance_of::<PyImportError>(py) {
            let path = py
                .import("sys")
                .and_then(|s| s.getattr("path"))
                .and_then(|p| p.str().map(|s| s.to_string()))
                .unwrap_or_default();
            f.message = format!("cannot import module {module:?}: {} (sys.path searched: {path})", f.message);
        }
        f
    })
}

/// `pkg.mod.func` → the function object.
fn resolve_dotted<'py>(py: Python<'py>, dotted: &str) -> PyResult<Bound<'py, PyAny>> {
    let (module, name) = dotted
        .rsplit_once('.')
        .ok_or_else(|| PyValueError::new_err(format!("{dotted:?} is not a dotted path like pkg.mod.func")))?;
    py.import(module)?.getattr(name)
}

fn prepare_sys_path(py: Python<'_>, cfg: &crate::WorkerConfig) -> PyResult<()> {
    let sys = py.import("sys")?;
    let path = sys.getattr("path")?;
    for (i, p) in cfg.python_path.iter().enumerate() {
        path.call_method1("insert", (i, p))?;
    }
    let venv = cfg.python_venv.clone().filter(|v| !v.is_empty()).or_else(|| std::env::var("VIRTUAL_ENV").ok());
    if let Some(venv) = venv {
        let version = py.version_info();
        let site = format!("{venv}/lib/python{}.{}/site-packages", version.major, version.minor);
        if std::path::Path::new(&site).is_dir() {
            py.import("site")?.call_method1("addsitedir", (site.as_str(),))?;
            tracing::debug!(%site, "virtualenv site-packages added");
        } else {
            tracing::warn!(%site, "virtualenv site-packages not found");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_json_round_trips_through_python() {
        Python::attach(|py| {
            let v = json!({"a": [1, 2.5, "x", null, true, {"b": [[]]}], "big": 18446744073709551615u64, "neg": -3});
            let obj = json_to_py(py, &v).unwrap();
            assert_eq!(py_to_json(&obj).unwrap(), v);
        });
    }

    #[test]
    fn python_values_json_cannot_hold() {
        Python::attach(|py| {
            let eval = |code: &str| py.eval(&std::ffi::CString::new(code).unwrap(), None, None).unwrap();
            assert_eq!(
                py_to_json(&eval("(1, 'a', {1: None, None: False})")).unwrap(),
                json!([1, "a", {"1": null, "null": false}])
            );
            let e = py_to_json(&eval("object()")).unwrap_err();
            assert!(e.is_instance_of::<PyTypeError>(py));
            assert!(py_to_json(&eval("float('nan')")).is_err());
            assert!(py_to_json(&eval("2**70")).is_err());
            assert!(py_to_json(&eval("{(1,2): 3}")).is_err());
            let circular = eval("(lambda l: (l.append(l), l)[1])([])");
            assert!(py_to_json(&circular).is_err());
        });
    }

    #[test]
    fn runs_functions_and_reports_exceptions() {
        Python::attach(|py| {
            let mut r = PythonRunner::new(py, &crate::WorkerConfig::default());
            let p = RunPayload::new("operator", "add", vec![json!(2), json!(3)]);
            assert_eq!(r.run(py, &p), JobReply::ok(json!(5)));
            let p = RunPayload::new("json", "loads", vec![json!("{")]);
            let e = r.run(py, &p).error.unwrap();
            assert_eq!(e.kind.as_str(), "JSONDecodeError");
            assert!(e.traceback.contains("Traceback"), "{}", e.traceback);
            let p = RunPayload::new("no_such_module_xyz", "f", vec![]);
            let e = r.run(py, &p).error.unwrap();
            assert_eq!(e.kind.as_str(), "ModuleNotFoundError");
            assert!(e.message.contains("no_such_module_xyz") && e.message.contains("sys.path"), "{}", e.message);
            let mut p = RunPayload::new("collections:Counter", "most_common", vec![json!(1)]);
            p.class_args = vec![json!("aab")];
            assert_eq!(r.run(py, &p), JobReply::ok(json!([["a", 2]])));
            let p = RunPayload::new("builtins", "object", vec![]);
            assert_eq!(r.run(py, &p).error.unwrap().kind.as_str(), "TypeError");
        });
    }
}

#[cfg(test)]
mod job_control_tests {
    use super::*;
    use crate::report::{Reporter, Sink};
    use crate::FromWorker;
    use std::sync::Mutex;

    const JOB_CODE: &std::ffi::CStr = c"
j = emq.current_job()
assert j == ('m1', 2) and j.msgid == 'm1' and j.attempt == 2, j
assert j.last_checkpoint == {'step': 3}, j.last_checkpoint
j.progress(1, 10, 'one')
j.checkpoint({'step': 4})
j.extend(5)
def refused(exc, f):
    try:
        f()
    except exc:
        return
    raise AssertionError('no %s' % exc.__name__)
refused(ValueError, lambda: j.progress(float('nan')))
refused(ValueError, lambda: j.progress(-1))
refused(ValueError, lambda: j.progress(1, float('inf')))
refused(TypeError, lambda: j.progress('x'))
refused(TypeError, lambda: j.progress(1, message=3))
refused(ValueError, lambda: j.extend(-1))
refused(ValueError, lambda: j.extend(float('nan')))
refused(ValueError, lambda: j.checkpoint(float('nan')))
refused(TypeError, lambda: j.checkpoint(object()))
refused(ValueError, lambda: j.checkpoint('x' * 70000))
";

    #[test]
    fn a_job_reports_through_current_job_and_bad_values_are_refused() {
        Python::attach(|py| {
            let r = PythonRunner::new(py, &crate::WorkerConfig::default());
            let sent = Arc::new(Mutex::new(Vec::new()));
            let s = sent.clone();
            let sink: Sink = Box::new(move |m| {
                s.lock().unwrap().push(m.clone());
                Ok(())
            });
            let reporter = Arc::new(Reporter::new(sink, crate::report::REPORT_EVERY));
            r.install_reporter(py, reporter.clone());
            reporter.job_started("m1");
            r.set_current_job(py, "m1", 2, Some(r#"{"step":3}"#));
            // This runner's own module (tests in parallel each make one and
            // put it in sys.modules).
            let globals = PyDict::new(py);
            globals.set_item("emq", r.emq_module.as_ref().unwrap().bind(py)).unwrap();
            py.run(JOB_CODE, Some(&globals), None).unwrap();
            reporter.job_ended(Instant::now()).unwrap();
            let sent = std::mem::take(&mut *sent.lock().unwrap());
            match sent.as_slice() {
                [FromWorker::Update { progress: Some(p), checkpoint: None, .. }, FromWorker::Update { progress: None, checkpoint: Some(c), .. }, FromWorker::Extend { msgid, seconds }] =>
                {
                    assert_eq!((p.done, p.total, p.message.as_deref()), (1.0, Some(10.0), Some("one")));
                    assert_eq!(c, r#"{"step":4}"#);
                    assert_eq!(msgid, "m1");
                    assert!(*seconds > 0.0 && *seconds <= 5.0, "{seconds}");
                }
                other => panic!("{other:?}"),
            }
            // The job ended: its CurrentJob is refused; the next job
            // without a checkpoint reads None.
            let after = py.run(c"emq.current_job().progress(2)", Some(&globals), None).unwrap_err();
            assert!(after.is_instance_of::<PyRuntimeError>(py), "{after}");
            r.set_current_job(py, "m2", 1, None);
            py.run(c"assert emq.current_job().last_checkpoint is None", Some(&globals), None).unwrap();
        });
    }
}
