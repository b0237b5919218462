"""emq — send jobs to an emq (or EventMQ) router and get their results.

    import emq
    with emq.Client() as client:                      # EMQ_FRONTEND_ADDR or settings.toml
        job = client.send("myapp.tasks.add", 2, 3)    # returns once the router's receipt is in
        print(job.result(timeout=30))                 # 5

The protocol is implemented once, in Rust (``emq._native`` wraps the
``emq-client`` crate); this module is the Python API around it.

Inside a worker of ``emq-jobmanager`` this same module also carries the
running job: :func:`current_job` (and the module attributes ``msgid`` and
``attempt`` that the worker sets before each job).
"""
import functools
import json
import threading
import time

from . import _native

__all__ = [
    "Client", "Job", "JobStatus", "CurrentJob", "Task", "task", "current_job", "default_client",
    "Error", "ConnectError", "Refused", "JobFailed", "Timeout", "ResultsUnavailable",
]
__version__ = "0.1.0"

# Set by the emq worker before each job (the worker pool writes these module
# attributes; see current_job()). Outside a worker: None and 0.
msgid = None
attempt = 0


# ---------------------------------------------------------------- errors

class Error(Exception):
    """Base of every emq error."""


class ConnectError(Error, ConnectionError):
    """No router at the address within ``connect_timeout``, or the socket failed."""


class Timeout(Error, TimeoutError):
    """Waiting (for a receipt, a result or a status) took longer than asked."""


class ResultsUnavailable(Error):
    """The router does not send results or job status (EventMQ's router):
    the job was sent, but nothing more can be known about it from here."""


class Refused(Error):
    """The router (or the job manager) would not take the job."""

    def __init__(self, reason, msgid=None):
        super().__init__(reason)
        self.reason = reason
        self.msgid = msgid


class JobFailed(Error):
    """The job ran and did not return a value.

    ``kind`` is the remote exception's type name (``ValueError``) or one of
    emq's: ``timeout`` (it ran past its timeout and was killed), ``worker
    died``, ``job manager lost``, ``killed``. ``traceback`` is the remote
    traceback text (empty for emq's own kinds).
    """

    def __init__(self, kind, message, traceback="", msgid=None):
        super().__init__("%s: %s" % (kind, message))
        self.kind = kind
        self.message = message
        self.traceback = traceback
        self.msgid = msgid

    def __str__(self):
        s = "%s: %s" % (self.kind, self.message)
        if self.traceback:
            s += "\n\nRemote traceback:\n" + self.traceback.rstrip()
        return s


def _nonneg(name, v):
    if v is not None and v < 0:
        raise ValueError("%s must be >= 0, not %r" % (name, v))
    return v


# ---------------------------------------------------------------- outcome

class _Outcome:
    __slots__ = ("kind", "value", "error")

    def __init__(self, kind, payload):
        self.kind = kind
        if kind == "value":
            self.value, self.error = json.loads(payload), None
        else:
            self.value, self.error = None, json.loads(payload)

    def unwrap(self, msgid):
        if self.kind == "value":
            return self.value
        e = self.error
        if self.kind == "refused":
            raise Refused(e.get("message", "refused"), msgid)
        raise JobFailed(e.get("type", self.kind), e.get("message", ""), e.get("traceback", ""), msgid)


class JobStatus:
    """The router's record of a job (``Job.status()``).

    ``state``: queued, dispatched, retrying, done, failed, refused, lost,
    dead, or unknown (never seen, or older than the router's job history).
    ``attempts``: how many times it was handed to a job manager;
    ``jobmanager``: the one that has (or had) it; ``received`` /
    ``dispatched`` / ``finished``: Unix times (float) or None; ``errors``:
    the failed attempts (``attempt``, ``type``, ``message``, ``at``);
    ``raw``: the whole answer.
    """

    __slots__ = ("msgid", "state", "queue", "attempts", "jobmanager", "received", "dispatched", "finished",
                 "errors", "raw")

    def __init__(self, raw):
        self.raw = raw
        self.msgid = raw.get("msgid")
        self.state = raw.get("state", "unknown")
        self.queue = raw.get("queue")
        self.attempts = raw.get("attempts", 0)
        self.jobmanager = raw.get("worker")
        self.received = raw.get("received")
        self.dispatched = raw.get("dispatched")
        self.finished = raw.get("finished")
        self.errors = raw.get("attempt_errors", [])

    @property
    def done(self):
        return self.state in ("done", "failed", "refused", "lost", "dead")

    def __repr__(self):
        return "JobStatus(msgid=%r, state=%r, attempts=%r, jobmanager=%r)" % (
            self.msgid, self.state, self.attempts, self.jobmanager)


# ---------------------------------------------------------------- job

class Job:
    """A job sent with :meth:`Client.send`. ``await job`` works in asyncio."""

    def __init__(self, client, msgid, name, queue, receipted, wants_result, owner=None, foreign=False):
        self.client = client
        self.msgid = msgid
        self.name = name
        self.queue = queue
        #: False when the router sent no receipt (EventMQ's router buffers a
        #: job silently when no worker is free).
        self.receipted = receipted
        #: The secret the job was sent with: another process holding it gets
        #: the job's result and status with ``Client.job(msgid, owner=...)``
        #: (Celery's ``AsyncResult(id)``). Keep it as secret as the result.
        self.owner = owner
        self._wants_result = wants_result
        # Sent by another client: the result is read from the router's record.
        self._foreign = foreign
        self._outcome = None

    def __repr__(self):
        state = "pending" if self._outcome is None else self._outcome.kind
        return "<emq.Job %s %s %s>" % (self.name, self.msgid, state)

    def _check_results(self):
        if not self._wants_result:
            raise ResultsUnavailable("job %s was sent with result=False: no result will come" % self.msgid)
        self.client._require_results()

    def _wait(self, timeout):
        if self._outcome is None:
            self._check_results()
            try:
                got = self.client._native.wait_result(self.msgid, timeout,
                                                      self.owner if self._foreign else None)
            except PermissionError as e:
                raise Error(str(e)) from None
            except LookupError as e:
                raise Error(str(e)) from None
            if got is not None and self._outcome is None:
                self._outcome = _Outcome(*got)
        return self._outcome

    def result(self, timeout=None):
        """The job's return value, waiting up to ``timeout`` seconds (None:
        as long as it takes). Raises :class:`JobFailed` (remote kind and
        traceback), :class:`Refused`, :class:`Timeout`, or
        :class:`ResultsUnavailable` when the router does not send results."""
        o = self._wait(_nonneg("timeout", timeout))
        if o is None:
            raise Timeout("no result for job %s (%s) within %s s" % (self.msgid, self.name, timeout))
        return o.unwrap(self.msgid)

    get = result

    def wait(self, timeout=None):
        """Waits until the job is over (successful or not); True if it is,
        False when ``timeout`` seconds passed first. Never raises the job's
        own failure."""
        return self._wait(_nonneg("timeout", timeout)) is not None

    def done(self):
        """True once the job's outcome is in (does not block)."""
        return self._wait(0) is not None

    def succeeded(self):
        """True if the job is over and returned a value (does not block)."""
        return self.done() and self._outcome.kind == "value"

    def exception(self, timeout=None):
        """The job's failure as an exception object (not raised), None if it
        succeeded."""
        try:
            self.result(timeout)
        except (JobFailed, Refused) as e:
            return e
        return None

    def status(self, timeout=5.0):
        """The router's record of the job (:class:`JobStatus`)."""
        return self.client.status(self.msgid, timeout=timeout, owner=self.owner if self._foreign else None)

    def __await__(self):
        import asyncio
        if self._outcome is not None:
            async def ready():
                return self._outcome.unwrap(self.msgid)
            return ready().__await__()
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, self.result).__await__()


# ---------------------------------------------------------------- client

def _dumps(what, v):
    try:
        return json.dumps(v, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError("%s of an emq job must be JSON-serialisable: %s" % (what, e)) from None


def _callable_name(fn):
    """`pkg.mod.func` for a function (or a Task) the worker can import."""
    if isinstance(fn, str):
        return fn
    fn = getattr(fn, "__wrapped__", fn)
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qual or "<" in qual:
        raise ValueError("%r has no import path a worker could use (a lambda or a nested function?)" % (fn,))
    if module == "__main__":
        raise ValueError("%s is defined in __main__, which a worker cannot import: move it into a module" % qual)
    if "." in qual:  # a method: pkg.mod:Class.method
        cls, _, meth = qual.rpartition(".")
        return "%s:%s.%s" % (module, cls, meth)
    return "%s.%s" % (module, qual)


class Client:
    """A connection to a router frontend; safe to share between threads
    (one socket, the GIL released while waiting on it).

    ``addr``: ``tcp://host:port``; default ``EMQ_FRONTEND_ADDR`` /
    ``EVENTMQ_FRONTEND_ADDR``, else ``frontend_addr`` in ``config`` (or
    ``./settings.toml``), else ``tcp://127.0.0.1:47291`` — as the other emq
    tools. Raises :class:`ConnectError` when nothing accepts connections
    there within ``connect_timeout`` seconds. ``receipt_timeout``: how long
    :meth:`send` waits for the router's receipt.
    """

    def __init__(self, addr=None, *, connect_timeout=5.0, receipt_timeout=10.0, config=None):
        if addr is None:
            addr = _native.default_addr(config)
        self.receipt_timeout = receipt_timeout
        try:
            self._native = _native.NativeClient(addr, connect_timeout)
        except ConnectionError as e:
            raise ConnectError(str(e)) from None

    @property
    def addr(self):
        return self._native.addr

    def __repr__(self):
        return "<emq.Client %s%s>" % (self.addr, " closed" if self._native.closed else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._native.close()

    # How long the first result()/status() waits for the router to answer
    # JOB_STATUS before concluding it does not (EventMQ's router).
    probe_timeout = 3.0

    def supports_results(self):
        """Whether the router sends results and job status (emq's router
        does; EventMQ's does not). Asked once, then remembered."""
        return self._native.supports_results(self.probe_timeout)

    def _require_results(self):
        if not self.supports_results():
            raise ResultsUnavailable(
                "the router at %s does not send results or job status (it did not answer JOB_STATUS "
                "within %s s: EventMQ's router?); jobs are still sent and run" % (self.addr, self.probe_timeout))

    def send(self, fn, *args, queue="default", timeout=None, retries=None, guarantee=False, result=True,
             kwargs=None, class_args=None, class_kwargs=None, delay=None, eta=None, **job_kwargs):
        """Sends ``fn(*args, **job_kwargs)`` to run on a worker and returns
        its :class:`Job` once the router's receipt is in.

        ``fn``: ``"pkg.mod.func"``, ``"pkg.mod:Class.method"`` (with
        ``class_args`` / ``class_kwargs`` for the instance), or an
        importable function / :func:`task`. ``timeout``: seconds the job may
        run; ``retries``: re-runs allowed after a failure; ``guarantee``:
        requeue if its job manager is lost; ``result=False``: do not ask for
        the result. ``kwargs``: the job's keyword arguments when their names
        clash with these options (merged with ``job_kwargs``). ``delay``:
        seconds (or a ``timedelta``) to wait before it runs; ``eta``: a
        ``datetime`` (or unix seconds) it runs at the earliest — the router
        keeps the job and sends the receipt at once.

        Raises :class:`Refused` with the router's reason, ``ValueError`` for
        a malformed callable, ``TypeError`` for arguments that are not
        JSON-serialisable (both before sending), :class:`Timeout` when no
        receipt comes within ``receipt_timeout``.
        """
        name = _callable_name(fn)
        path, callable_ = _native.split_callable(name)
        kw = dict(kwargs or {})
        kw.update(job_kwargs)
        if retries is not None and (not isinstance(retries, int) or retries < 0):
            raise ValueError("retries must be an int >= 0, not %r" % (retries,))
        if timeout is not None:
            if timeout <= 0:
                raise ValueError("timeout must be > 0 seconds, not %r" % (timeout,))
            timeout = max(1, int(-(-timeout // 1)))  # whole seconds on the wire, rounded up
        if not isinstance(queue, str) or not queue:
            raise ValueError("queue must be a non-empty string")
        if delay is not None:
            delay = delay.total_seconds() if hasattr(delay, "total_seconds") else float(delay)
            if not delay >= 0:
                raise ValueError("delay must be >= 0 seconds, not %r" % (delay,))
        if eta is not None:
            eta = eta.timestamp() if hasattr(eta, "timestamp") else float(eta)
            if not eta >= 0:
                raise ValueError("eta must be a datetime or unix seconds >= 0, not %r" % (eta,))
        msgid = self._native.send(
            queue, path, callable_, _dumps("args", list(args)), _dumps("kwargs", kw),
            _dumps("class_args", list(class_args or [])), _dumps("class_kwargs", dict(class_kwargs or {})),
            bool(result), bool(guarantee), retries, timeout, delay, eta)
        receipted = self._receipt(msgid, name)
        return Job(self, msgid, name, queue, receipted, bool(result), owner=self._native.owner_token)

    def job(self, msgid, owner=None):
        """A :class:`Job` for ``msgid`` sent by any client, in any process
        (Celery's ``AsyncResult(id)``, RQ's ``Job.fetch(id)``): its
        ``result()`` and ``status()`` read the router's record. ``owner``:
        the sending job's :attr:`Job.owner` token; without it the router
        shows the job's state but never its result, and ``result()`` raises
        :class:`Error` saying so."""
        if not isinstance(msgid, str) or not msgid:
            raise ValueError("msgid must be a non-empty string")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValueError("owner must be the sending job's Job.owner token (a string)")
        return Job(self, msgid, "?", None, True, True, owner=owner, foreign=True)

    def _receipt(self, msgid, name):
        n = self._native
        if n.results_known is False:
            # EventMQ's router: a receipt comes only when a worker was free.
            n.drain_receipts()
            return False
        first = min(1.0, self.receipt_timeout)
        got = n.wait_receipt(msgid, first)
        if got is None and self.receipt_timeout > first:
            if not self.supports_results():
                n.drain_receipts()
                return False  # EventMQ's router buffered the job without a word
            got = n.wait_receipt(msgid, max(0.0, self.receipt_timeout - first - self.probe_timeout))
        if got is None:
            raise Timeout("no receipt from the router at %s for job %s (%s) within %s s"
                          % (self.addr, msgid, name, self.receipt_timeout))
        accepted, err = got
        if not accepted:
            e = json.loads(err)
            raise Refused("router refused %s: %s" % (name, e.get("message", "refused")), msgid)
        return True

    def status(self, msgid, timeout=5.0, owner=None):
        """The router's record of a job (:class:`JobStatus`) by msgid;
        ``owner``: the token of the client that sent it, when that was
        another one (else the result is hidden)."""
        if isinstance(msgid, Job):
            msgid, owner = msgid.msgid, (owner or (msgid.owner if msgid._foreign else None))
        self._require_results()
        raw = self._native.status(msgid, timeout, owner)
        if raw is None:
            raise Timeout("no JOB_STATUS answer for %s within %s s" % (msgid, timeout))
        return JobStatus(json.loads(raw))

    def as_completed(self, jobs, timeout=None):
        """Yields the given jobs as they finish (successful or not), in the
        order they finish. ``timeout``: for all of them; raises
        :class:`Timeout` when it passes with jobs still running."""
        pending = {}
        for j in jobs:
            if j._outcome is not None:
                yield j
            else:
                j._check_results()
                pending[j.msgid] = j
        end = None if timeout is None else time.monotonic() + timeout
        while pending:
            left = None if end is None else max(0.0, end - time.monotonic())
            got = self._native.wait_any(list(pending), left)
            if got is None:
                raise Timeout("%d of the jobs still running after %s s" % (len(pending), timeout))
            mid, kind, payload = got
            j = pending.pop(mid)
            if j._outcome is None:
                j._outcome = _Outcome(kind, payload)
            yield j

    def results(self, jobs, timeout=None):
        """Yields the jobs' results in the order the jobs finish; a failed
        job raises its :class:`JobFailed` when its turn comes."""
        for j in self.as_completed(jobs, timeout):
            yield j.result(0)

    def map(self, fn, iterable, *, queue="default", timeout=None, window=1000, **options):
        """Runs ``fn(item)`` remotely for each item, at most ``window`` in
        flight, and returns the results in input order."""
        jobs = []
        done = 0
        for item in iterable:
            if len(jobs) - done >= window:
                jobs[done].wait()
                done += 1
            jobs.append(self.send(fn, item, queue=queue, **options))
        return [j.result(timeout) for j in jobs]


_default = None
_default_lock = threading.Lock()


def default_client():
    """A process-wide :class:`Client` on the default address (used by
    :meth:`Task.send`), created on first use."""
    global _default
    with _default_lock:
        if _default is None or _default._native.closed:
            _default = Client()
        return _default


# ---------------------------------------------------------------- task

class Task:
    """A function that can also be sent: ``f(2, 3)`` runs it here,
    ``f.send(2, 3)`` sends it to a worker (by its import path) and returns
    a :class:`Job`."""

    def __init__(self, fn, queue="default", timeout=None, retries=None, guarantee=False, client=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.options = {"queue": queue, "timeout": timeout, "retries": retries, "guarantee": guarantee}
        self.client = client

    @property
    def path(self):
        return _callable_name(self.fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def send(self, *args, **kwargs):
        client = self.client or default_client()
        return client.send(self.path, *args, kwargs=kwargs, **self.options)

    def send_with(self, *args, client=None, **options):
        """``send`` with per-call options (``queue=``, ``timeout=``, ``kwargs=``...)."""
        merged = dict(self.options)
        merged.update(options)
        return (client or self.client or default_client()).send(self.path, *args, **merged)

    def __repr__(self):
        return "<emq.task %s>" % (self.path if getattr(self.fn, "__module__", None) else self.fn)


def task(fn=None, *, queue="default", timeout=None, retries=None, guarantee=False, client=None):
    """Decorator: ``@emq.task`` or ``@emq.task(queue="heavy", timeout=60,
    retries=2)``. The function must be importable by the worker under the
    same module path (not defined in ``__main__``)."""
    def wrap(f):
        return Task(f, queue=queue, timeout=timeout, retries=retries, guarantee=guarantee, client=client)
    return wrap(fn) if fn is not None else wrap


# ---------------------------------------------------------------- worker side

class CurrentJob(tuple):
    """``(msgid, attempt)`` of the job running in this worker; ``attempt``
    is 1 on the first run."""

    __slots__ = ()

    def __new__(cls, msgid, attempt):
        return tuple.__new__(cls, (msgid, attempt))

    msgid = property(lambda self: self[0])
    attempt = property(lambda self: self[1])

    def __repr__(self):
        return "CurrentJob(msgid=%r, attempt=%r)" % self


def current_job():
    """The job this worker is running (:class:`CurrentJob`), or None outside
    an emq worker. The worker sets the module attributes ``emq.msgid`` and
    ``emq.attempt`` before each job; this reads them."""
    g = globals()
    if g.get("msgid") is None:
        return None
    return CurrentJob(g["msgid"], g.get("attempt", 0))
