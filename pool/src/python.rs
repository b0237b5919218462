//! Running Python callables through pyo3: `path` + `callable`, or
//! `pkg.mod:Class` + method with `class_args` / `class_kwargs`. Arguments and
//! return values cross as JSON values ([`json_to_py`], [`py_to_json`]); a
//! return value JSON cannot hold is a `TypeError`, not a crash. Exceptions
//! become `{type, message, traceback}`; an import failure names the module
//! and the `sys.path` searched.

use emq_protocol::{JobReply, RunPayload};
use pyo3::exceptions::{PyImportError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

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
    /// first run; more when a `retry-count` or `guarantee` job runs again).
    pub fn set_current_job(&self, py: Python<'_>, msgid: &str, attempt: u32) {
        if let Some(m) = &self.emq_module {
            let m = m.bind(py);
            let _ = m.setattr("msgid", msgid);
            let _ = m.setattr("attempt", attempt);
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

/// The bare `emq` module's `__getattr__` (PEP 562): a clear error for any
/// name of the client package.
const BARE_EMQ_GETATTR: &std::ffi::CStr = c"
def __getattr__(name):
    if name.startswith('__'):
        raise AttributeError(name)
    raise AttributeError(
        'emq.%s: the emq package is not importable in this worker (it has only the bare emq module '
        'with msgid and attempt). Install it (pip install ./python) into a virtualenv and point the '
        'job manager at it with python_venv (or VIRTUAL_ENV)' % name)
";

/// The importable `emq` module inside the worker. When the worker's Python
/// can import the emq client package (`pip install ./python`, which has
/// `current_job`), that package is the module: one `emq` for both, its
/// `current_job()` reading the attributes set here. Otherwise a bare module
/// holding just `msgid` and `attempt`.
fn install_emq_module(py: Python<'_>) -> PyResult<Py<PyModule>> {
    if let Ok(m) = py.import("emq") {
        if m.hasattr("current_job").unwrap_or(false) {
            m.setattr("msgid", py.None())?;
            m.setattr("attempt", 0)?;
            return Ok(m.unbind());
        }
    }
    let m = PyModule::new(py, "emq")?;
    m.setattr("__doc__", "Set by the emq worker before each job: msgid and attempt (1 = first run).")?;
    m.setattr("msgid", py.None())?;
    m.setattr("attempt", 0)?;
    // Anything else (`@emq.task`, `emq.Client`) means the job expected the
    // client package: say that it is not importable here, and how to fix it.
    py.run(BARE_EMQ_GETATTR, Some(&m.dict()), None)?;
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
