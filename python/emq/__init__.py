"""emq — send jobs to an emq (or EventMQ) router and get their results.

    import emq
    with emq.Client() as client:                      # EMQ_FRONTEND_ADDR or settings.toml
        job = client.send("myapp.tasks.add", 2, 3)    # returns once the router's receipt is in
        print(job.result(timeout=30))                 # 5

        flow = client.submit(emq.chain(emq.sig("myapp.tasks.add", 2, 3),
                                       emq.sig("myapp.tasks.double")))
        print(flow.result(timeout=30))                # 10: double(add(2, 3))

The protocol is implemented once, in Rust (``emq._native`` wraps the
``emq-client`` crate); this module is the Python API around it.

Inside a worker of ``emq-jobmanager`` this same module also carries the
running job: :func:`current_job` (and the module attributes ``msgid`` and
``attempt`` that the worker sets before each job), whose ``progress()``,
``extend()`` and ``checkpoint()`` tell the job manager about it.
"""
import functools
import json
import re
import threading
import time

from . import _native

__all__ = [
    "Client", "Job", "JobStatus", "CurrentJob", "Task", "task", "current_job", "default_client",
    "Error", "ConnectError", "Refused", "JobFailed", "Timeout", "ResultsUnavailable",
    "sig", "chain", "group", "chord", "Canvas", "Signature", "Chain", "Group", "Chord",
    "Workflow", "WorkflowStatus",
]
__version__ = "0.1.0"

# Set by the emq worker before each job (the worker pool writes these module
# attributes; see current_job()). Outside a worker: None and 0.
msgid = None
attempt = 0
# Also set by the worker: the running job's last checkpoint (JSON text) and
# the native object behind CurrentJob.progress / extend / checkpoint.
_last_checkpoint = None
_job_control = None


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
    died``, ``job manager lost``, ``killed``, ``cancelled`` (cancelled, or
    a job it depended on failed). ``traceback`` is the remote traceback
    text (empty for emq's own kinds). For a workflow, ``node`` /
    ``node_name`` are the msgid and callable of the job that failed in it
    (``message`` names it too); None for a plain job.
    """

    def __init__(self, kind, message, traceback="", msgid=None, node=None, node_name=None):
        super().__init__("%s: %s" % (kind, message))
        self.kind = kind
        self.message = message
        self.traceback = traceback
        self.msgid = msgid
        self.node = node
        self.node_name = node_name

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

    def unwrap(self, msgid, workflow=False):
        if self.kind == "value":
            return self.value
        e = self.error
        if self.kind == "refused":
            raise Refused(e.get("message", "refused"), msgid)
        message = e.get("message", "")
        node, node_name = e.get("node"), e.get("node_name")
        if workflow and node is None:
            # The router's "node <msgid> (<name>) failed: ..." (the error's
            # own node fields do not always survive the native client).
            m = _NODE_FAILED.match(message)
            if m:
                node, node_name = m.group(1), m.group(2)
        raise JobFailed(e.get("type", self.kind), message, e.get("traceback", ""), msgid,
                        node=node, node_name=node_name)


_NODE_FAILED = re.compile(r"node (\S+) \((.*?)\) failed: ")


class JobStatus:
    """The router's record of a job (``Job.status()``).

    ``state``: held (waiting for the jobs it depends on), queued,
    dispatched, retrying, done, failed, cancelled, refused, lost, dead, or
    unknown (never seen, or older than the router's job history).
    ``attempts``: how many times it was handed to a job manager;
    ``jobmanager``: the one that has (or had) it; ``received`` /
    ``dispatched`` / ``finished``: Unix times (float) or None; ``errors``:
    the failed attempts (``attempt``, ``type``, ``message``, ``at``);
    ``workflow_id`` (a workflow's node: its workflow, else None),
    ``parents`` (the jobs it waits for) and ``children`` (the nodes that
    wait for it); ``progress``: what the job last said with
    ``current_job().progress()`` — a dict with ``done``, ``total`` (or
    None), ``message`` (or None) and ``at`` (Unix time), kept after it
    ends — or None; ``raw``: the whole answer.
    """

    __slots__ = ("msgid", "state", "queue", "attempts", "jobmanager", "received", "dispatched", "finished",
                 "errors", "workflow_id", "parents", "children", "progress", "raw")

    #: The states after which nothing more happens to a job.
    FINAL = frozenset(("done", "failed", "cancelled", "refused", "lost", "dead"))

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
        self.workflow_id = raw.get("workflow_id")
        self.parents = raw.get("parents", [])
        self.children = raw.get("children", [])
        p = raw.get("progress")
        self.progress = None if p is None else {"done": p.get("done"), "total": p.get("total"),
                                                "message": p.get("message"), "at": p.get("at")}

    @property
    def done(self):
        return self.state in self.FINAL

    def __repr__(self):
        return "JobStatus(msgid=%r, state=%r, attempts=%r, jobmanager=%r)" % (
            self.msgid, self.state, self.attempts, self.jobmanager)


class WorkflowStatus(JobStatus):
    """The router's record of a workflow (``Workflow.status()``): a
    :class:`JobStatus` (``state``: dispatched while it runs, then done,
    failed or cancelled) with its jobs.

    ``nodes``: one dict per job of the workflow, in the order the canvas
    gives them (error handlers last): ``msgid``, ``name`` (``pkg.mod.func``),
    ``state`` (held, queued, dispatched, retrying, done, failed, cancelled,
    dead, lost...), ``parents`` (the msgids it waits for) and
    ``on_error_of`` (for an ``on_error`` handler: the msgids it watches).
    """

    __slots__ = ("id", "nodes")

    def __init__(self, raw):
        super().__init__(raw)
        flow = raw.get("workflow") or {}
        self.id = flow.get("id", self.msgid)
        self.nodes = flow.get("nodes", [])

    def node(self, msgid):
        """The node dict of ``msgid`` (KeyError if it is not in the workflow)."""
        for n in self.nodes:
            if n.get("msgid") == msgid:
                return n
        raise KeyError(msgid)

    @property
    def all_final(self):
        """True once every node is in a final state."""
        return all(n.get("state") in self.FINAL for n in self.nodes)

    def __repr__(self):
        return "WorkflowStatus(id=%r, state=%r, nodes=[%s])" % (
            self.id, self.state, ", ".join("%s:%s" % (n.get("name"), n.get("state")) for n in self.nodes))


# ---------------------------------------------------------------- job

class Job:
    """A job sent with :meth:`Client.send`. ``await job`` works in asyncio."""

    _is_workflow = False

    def __init__(self, client, msgid, name, queue, receipted, wants_result, owner=None, foreign=False,
                 deduplicated=False):
        self.client = client
        self.msgid = msgid
        self.name = name
        self.queue = queue
        #: False when the router sent no receipt (EventMQ's router buffers a
        #: job silently when no worker is free).
        self.receipted = receipted
        #: True when the job was sent with ``unique=KEY`` while another job
        #: held the key: this is that job (``msgid`` is its msgid), no new
        #: one was made. Its result is shown to the client that sent it
        #: (another client needs that one's token: ``Client.job(msgid,
        #: owner=...)``; ``result()`` raises :class:`Error` saying so).
        self.deduplicated = deduplicated
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
        return o.unwrap(self.msgid, self._is_workflow)

    get = result

    def wait(self, timeout=None):
        """Waits until the job is over (successful or not); True if it is,
        False when ``timeout`` seconds passed first. Never raises the job's
        own failure."""
        return self._wait(_nonneg("timeout", timeout)) is not None

    def cancel(self, timeout=5.0):
        """Cancels the job — a workflow: every unfinished node (held ones end
        unrun, running ones are stopped); what depends on a cancelled job
        is cancelled too. Only the client that sent it may. Returns the
        router's answer (``{"cancelled": msgid, "was": ...}``, or
        ``{"cancelling": msgid}`` while a running job's worker is being
        stopped); the job's result then raises :class:`JobFailed` of kind
        ``cancelled``. Raises :class:`Error` with the router's reason (not
        this client's job, already over), :class:`Timeout`."""
        self.client._require_results()
        raw = self.client._native.cancel(self.msgid, _nonneg("timeout", timeout))
        if raw is None:
            raise Timeout("no answer to CANCEL %s within %s s" % (self.msgid, timeout))
        answer = json.loads(raw)
        answer.pop("cancel", None)
        if "error" in answer:
            raise Error("cannot cancel %s: %s" % (self.msgid, answer["error"]))
        return answer

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
                return self._outcome.unwrap(self.msgid, self._is_workflow)
            return ready().__await__()
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, self.result).__await__()


class Workflow(Job):
    """A workflow sent with :meth:`Client.submit`: a :class:`Job` whose
    msgid is the workflow's id. ``result()`` is the last step's result (a
    chain), the callback's (a chord) or the list of results (a group),
    once every job in it is final; when one failed for good it raises
    :class:`JobFailed` naming that job (``.node``: its msgid, ``.node_name``:
    its callable; kind ``cancelled`` for a cancelled workflow).
    ``wait()``, ``done()``, ``await flow`` and :meth:`Client.as_completed`
    work as for a job."""

    _is_workflow = True

    def __init__(self, client, wid, canvas=None, owner=None, foreign=False):
        super().__init__(client, wid, _describe(canvas) if canvas is not None else "workflow", None, True, True,
                         owner=owner, foreign=foreign)
        #: The canvas it was submitted as (None for :meth:`Client.workflow`).
        self.canvas = canvas

    @property
    def id(self):
        """The workflow's id (its msgid at the router)."""
        return self.msgid

    def __repr__(self):
        state = "pending" if self._outcome is None else self._outcome.kind
        return "<emq.Workflow %s %s %s>" % (self.name, self.msgid, state)

    def status(self, timeout=5.0):
        """The router's record of the workflow and of each of its jobs
        (:class:`WorkflowStatus`)."""
        st = super().status(timeout)
        return st if isinstance(st, WorkflowStatus) else WorkflowStatus(st.raw)


# ---------------------------------------------------------------- client

def _dumps(what, v):
    try:
        return json.dumps(v, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise TypeError("%s of an emq job must be JSON-serialisable: %s" % (what, e)) from None


def _check_unique(unique):
    if unique is not None and (not isinstance(unique, str) or not 0 < len(unique) <= 200 or "," in unique):
        raise ValueError("unique must be a string of 1 to 200 characters without a comma, not %r" % (unique,))
    return unique


def _check_limit(limit):
    """``NAME`` or ``NAME/PARTITION`` as the router reads it (or None)."""
    if limit is None:
        return None
    if not isinstance(limit, str):
        raise TypeError("limit must be a string NAME or NAME/PARTITION, not %r" % (limit,))
    name, _, partition = limit.partition("/")
    if not 0 < len(name.strip()) <= 128 or len(partition) > 256 or "," in limit:
        raise ValueError("limit must be NAME or NAME/PARTITION (a name of 1 to 128 characters, a partition of "
                         "at most 256, no comma), not %r" % (limit,))
    return limit


def _check_on_dependency_failure(v):
    if v not in ("cancel", "run"):
        raise ValueError('on_dependency_failure must be "cancel" or "run", not %r' % (v,))
    return v


def _job_spec(fn, args, queue, timeout, retries, kwargs, class_args, class_kwargs, job_kwargs):
    """Checks what :meth:`Client.send` and :func:`sig` share: returns
    ``(name, path, callable, timeout)`` and the JSON texts ``(args, kwargs,
    class_args, class_kwargs)``; raises ValueError / TypeError."""
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
    texts = (_dumps("args", list(args)), _dumps("kwargs", kw), _dumps("class_args", list(class_args or [])),
             _dumps("class_kwargs", dict(class_kwargs or {})))
    return (name, path, callable_, timeout), texts


def _msgids(what, jobs):
    """Msgids from jobs or msgid strings (one, or an iterable of them)."""
    if jobs is None:
        return []
    if isinstance(jobs, (str, Job)):
        jobs = [jobs]
    out = []
    for j in jobs:
        m = j.msgid if isinstance(j, Job) else j
        if not isinstance(m, str) or not m:
            raise TypeError("%s takes jobs or msgid strings, not %r" % (what, j))
        out.append(m)
    return out


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

    def _require_results(self, feature=None):
        if not self.supports_results():
            if feature:
                raise ResultsUnavailable(
                    "the router at %s does not support %s (it did not answer JOB_STATUS within %s s: "
                    "EventMQ's router?); nothing was sent" % (self.addr, feature, self.probe_timeout))
            raise ResultsUnavailable(
                "the router at %s does not send results or job status (it did not answer JOB_STATUS "
                "within %s s: EventMQ's router?); jobs are still sent and run" % (self.addr, self.probe_timeout))

    def send(self, fn, *args, queue="default", timeout=None, retries=None, guarantee=False, result=True,
             kwargs=None, class_args=None, class_kwargs=None, delay=None, eta=None, unique=None,
             depends_on=None, on_dependency_failure="cancel", limit=None, **job_kwargs):
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

        ``unique``: a key (1 to 200 characters, no comma): while a job sent
        with that key in that queue is not over, sending another returns
        that job (``job.deduplicated`` is True, ``job.msgid`` its msgid)
        instead of making a new one. ``depends_on``: jobs (or msgids) that
        must be done before this one runs; the router holds it until then
        (state ``held``). When one of them fails for good it is cancelled
        (its result raises :class:`JobFailed` kind ``cancelled``), unless
        ``on_dependency_failure="run"``. An unknown msgid is refused.
        ``limit``: ``"NAME"`` or ``"NAME/PARTITION"``: the router starts
        the job only within that limit (its ``limits`` setting: so many
        running at once, so many starts per period, per partition); a name
        it does not know is refused (:class:`Refused` with its reason).
        These three need emq's router (:class:`ResultsUnavailable` on
        EventMQ's).

        Raises :class:`Refused` with the router's reason, ``ValueError`` for
        a malformed callable, ``TypeError`` for arguments that are not
        JSON-serialisable (both before sending), :class:`Timeout` when no
        receipt comes within ``receipt_timeout``.
        """
        (name, path, callable_, timeout), texts = _job_spec(fn, args, queue, timeout, retries, kwargs, class_args,
                                                            class_kwargs, job_kwargs)
        unique = _check_unique(unique)
        deps = _msgids("depends_on", depends_on)
        _check_on_dependency_failure(on_dependency_failure)
        limit = _check_limit(limit)
        if unique is not None or deps or limit is not None:
            # EventMQ's router would ignore them and run the job at once.
            self._require_results("unique=, depends_on= and limit=")
        if delay is not None:
            delay = delay.total_seconds() if hasattr(delay, "total_seconds") else float(delay)
            if not delay >= 0:
                raise ValueError("delay must be >= 0 seconds, not %r" % (delay,))
        if eta is not None:
            eta = eta.timestamp() if hasattr(eta, "timestamp") else float(eta)
            if not eta >= 0:
                raise ValueError("eta must be a datetime or unix seconds >= 0, not %r" % (eta,))
        msgid = self._native.send(queue, path, callable_, *texts, bool(result), bool(guarantee), retries, timeout,
                                  delay, eta, unique=unique, depends_on=deps,
                                  run_on_dependency_failure=on_dependency_failure == "run", limit=limit)
        receipted, holder = self._receipt(msgid, name)
        return Job(self, holder or msgid, name, queue, receipted, bool(result), owner=self._native.owner_token,
                   deduplicated=holder is not None)

    def submit(self, workflow, timeout=None):
        """Sends a workflow (:func:`chain`, :func:`group`, :func:`chord`, or
        one :func:`sig`) in one message and returns its :class:`Workflow`
        once the router's receipt is in (``timeout``: seconds to wait for
        it, default ``receipt_timeout``). The router runs each job when the
        jobs it waits for are done and sends one result for the whole.

        Raises :class:`ResultsUnavailable` before sending when the router
        does not run workflows (EventMQ's), :class:`Refused` with the
        router's reason, :class:`Timeout` when no receipt comes in time,
        ``ValueError`` / ``TypeError`` for a malformed workflow.
        """
        canvas = _as_canvas(workflow)
        text = canvas.to_json()
        self._require_results("workflows")
        try:
            wid = self._native.submit_workflow(text)
        except RuntimeError as e:
            if "refused" in str(e):
                raise Refused(str(e)) from None
            raise
        self._receipt(wid, _describe(canvas), timeout)
        return Workflow(self, wid, canvas, owner=self._native.owner_token)

    def workflow(self, wid, owner=None):
        """A :class:`Workflow` submitted by any client (as :meth:`job`):
        ``status()`` lists its jobs, ``result()`` needs the submitting
        client's ``owner`` token."""
        if not isinstance(wid, str) or not wid:
            raise ValueError("wid must be a non-empty string")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ValueError("owner must be the submitting client's Workflow.owner token (a string)")
        return Workflow(self, wid, None, owner=owner, foreign=True)

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

    def _receipt(self, msgid, name, timeout=None):
        """Waits for the router's receipt: ``(receipted, holder)``, holder
        being the msgid of the job that holds the ``unique`` key when the
        router answered with it (else None)."""
        n = self._native
        wait = self.receipt_timeout if timeout is None else _nonneg("timeout", timeout)
        if n.results_known is False:
            # EventMQ's router: a receipt comes only when a worker was free.
            n.drain_receipts()
            return False, None
        first = min(1.0, wait)
        got = n.wait_receipt(msgid, first)
        if got is None and wait > first:
            t0 = time.monotonic()
            if not self.supports_results():
                n.drain_receipts()
                return False, None  # EventMQ's router buffered the job without a word
            got = n.wait_receipt(msgid, max(0.0, wait - first - (time.monotonic() - t0)))
        if got is None:
            raise Timeout("no receipt from the router at %s for job %s (%s) within %s s"
                          % (self.addr, msgid, name, wait))
        accepted, err = got
        if not accepted:
            e = json.loads(err)
            raise Refused("router refused %s: %s" % (name, e.get("message", "refused")), msgid)
        if err and err.startswith("="):
            return True, err[1:]
        return True, None

    def status(self, msgid, timeout=5.0, owner=None):
        """The router's record of a job (:class:`JobStatus`) by msgid — of a
        workflow (:class:`WorkflowStatus`) by its id; ``owner``: the token
        of the client that sent it, when that was another one (else the
        result is hidden)."""
        if isinstance(msgid, Job):
            msgid, owner = msgid.msgid, (owner or (msgid.owner if msgid._foreign else None))
        self._require_results()
        raw = self._native.status(msgid, timeout, owner)
        if raw is None:
            raise Timeout("no JOB_STATUS answer for %s within %s s" % (msgid, timeout))
        raw = json.loads(raw)
        return WorkflowStatus(raw) if "workflow" in raw else JobStatus(raw)

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

    def __init__(self, fn, queue="default", timeout=None, retries=None, guarantee=False, client=None, limit=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.options = {"queue": queue, "timeout": timeout, "retries": retries, "guarantee": guarantee}
        if limit is not None:
            self.options["limit"] = _check_limit(limit)
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

    def sig(self, *args, **options):
        """A :class:`Signature` of this task for a workflow (:func:`sig`
        with the task's options, overridden by ``options``)."""
        merged = dict(self.options)
        merged.update(options)
        return sig(self.path, *args, **merged)

    s = sig

    def __repr__(self):
        return "<emq.task %s>" % (self.path if getattr(self.fn, "__module__", None) else self.fn)


def task(fn=None, *, queue="default", timeout=None, retries=None, guarantee=False, client=None, limit=None):
    """Decorator: ``@emq.task`` or ``@emq.task(queue="heavy", timeout=60,
    retries=2, limit="api")``. The function must be importable by the
    worker under the same module path (not defined in ``__main__``)."""
    def wrap(f):
        return Task(f, queue=queue, timeout=timeout, retries=retries, guarantee=guarantee, client=client,
                    limit=limit)
    return wrap(fn) if fn is not None else wrap


# ---------------------------------------------------------------- workflows

class Canvas:
    """Jobs composed into a workflow, not sent yet (:func:`sig`,
    :func:`chain`, :func:`group`, :func:`chord`); :meth:`Client.submit`
    sends one. ``a | b`` is ``chain(a, b)``."""

    __slots__ = ()

    def to_dict(self):
        """The canvas as the JSON object ``Client.submit`` sends."""
        raise NotImplementedError

    def to_json(self):
        """The canvas as JSON text (``{"sig": ...}``, ``{"chain": [...]}``,
        ``{"group": [...]}``, ``{"chord": [...], "callback": ...}``)."""
        return _dumps("a workflow", self.to_dict())

    def __or__(self, other):
        other = _as_canvas(other)
        if isinstance(self, Chain) and self.on_error is None:
            return Chain(list(self.steps) + [other], None)
        return Chain([self, other], None)

    def __ror__(self, other):
        return _as_canvas(other) | self

    def __repr__(self):
        on_error = getattr(self, "on_error", None)
        parts = [repr(x) for x in self._parts()] + (["on_error=%r" % on_error] if on_error is not None else [])
        return "emq.%s(%s)" % (type(self).__name__.lower(), ", ".join(parts))


class Signature(Canvas):
    """One job of a workflow (:func:`sig`): what to run, with which
    arguments and options. Read-only once made."""

    __slots__ = ("name", "args", "kwargs", "class_args", "class_kwargs", "queue", "timeout", "retries",
                 "guarantee", "unique", "on_dependency_failure", "limit")

    def to_dict(self):
        d = {"fn": self.name, "args": self.args, "kwargs": self.kwargs, "queue": self.queue,
             "guarantee": self.guarantee}
        if self.class_args:
            d["class_args"] = self.class_args
        if self.class_kwargs:
            d["class_kwargs"] = self.class_kwargs
        if self.retries is not None:
            d["retries"] = self.retries
        if self.timeout is not None:
            d["timeout"] = self.timeout
        if self.unique is not None:
            d["unique"] = self.unique
        if self.limit is not None:
            d["limit"] = self.limit
        if self.on_dependency_failure == "run":
            d["on_parent_failure"] = "run"
        return {"sig": d}

    def __repr__(self):
        parts = [repr(self.name)] + [repr(a) for a in self.args]
        parts += ["%s=%r" % kv for kv in self.kwargs.items()]
        for opt, default in (("queue", "default"), ("timeout", None), ("retries", None), ("guarantee", False),
                             ("unique", None), ("on_dependency_failure", "cancel"), ("limit", None)):
            v = getattr(self, opt)
            if v != default:
                parts.append("%s=%r" % (opt, v))
        return "emq.sig(%s)" % ", ".join(parts)


class Chain(Canvas):
    """Steps run one after the other (:func:`chain`)."""

    __slots__ = ("steps", "on_error")

    def __init__(self, steps, on_error):
        self.steps, self.on_error = tuple(steps), on_error

    def to_dict(self):
        return _with_on_error({"chain": [s.to_dict() for s in self.steps]}, self.on_error)

    def _parts(self):
        return self.steps


class Group(Canvas):
    """Members run at once (:func:`group`)."""

    __slots__ = ("members", "on_error")

    def __init__(self, members, on_error):
        self.members, self.on_error = tuple(members), on_error

    def to_dict(self):
        return _with_on_error({"group": [m.to_dict() for m in self.members]}, self.on_error)

    def _parts(self):
        return self.members


class Chord(Canvas):
    """A header run at once, then a callback with its results (:func:`chord`)."""

    __slots__ = ("header", "callback", "on_error")

    def __init__(self, header, callback, on_error):
        self.header, self.callback, self.on_error = tuple(header), callback, on_error

    def to_dict(self):
        return _with_on_error({"chord": [m.to_dict() for m in self.header], "callback": self.callback.to_dict()},
                              self.on_error)

    def _parts(self):
        return [list(self.header), self.callback]


def _with_on_error(d, on_error):
    if on_error is not None:
        d["on_error"] = on_error.to_dict()
    return d


def sig(fn, *args, queue="default", timeout=None, retries=None, guarantee=False, kwargs=None, class_args=None,
        class_kwargs=None, unique=None, on_dependency_failure="cancel", limit=None, **job_kwargs):
    """A :class:`Signature`: ``fn(*args, **job_kwargs)`` as one job of a
    workflow, not sent yet. The options and checks are
    :meth:`Client.send`'s (``queue``, ``timeout``, ``retries``,
    ``guarantee``, ``kwargs``, ``class_args``, ``class_kwargs``,
    ``unique``, ``limit``; ``ValueError`` for a malformed callable, ``TypeError`` for
    arguments that are not JSON-serialisable). In a chain, a job gets the
    previous step's result as its FIRST argument, before ``args``.
    ``on_dependency_failure="run"``: it runs even when a job before it
    failed. ``delay``, ``eta``, ``result=False`` and ``depends_on`` have
    no meaning inside a workflow and raise ``ValueError``."""
    for opt in ("delay", "eta", "depends_on"):
        v = job_kwargs.pop(opt, None)
        if v is not None and v != []:
            raise ValueError("%s= is not allowed in a workflow's job (the workflow orders its jobs; pass it in "
                             "kwargs={...} if it is the job's own argument)" % opt)
    if job_kwargs.pop("result", True) is not True:
        raise ValueError("result=False is not allowed in a workflow's job: every result feeds the workflow")
    (name, _path, _callable, timeout), texts = _job_spec(fn, args, queue, timeout, retries, kwargs, class_args,
                                                         class_kwargs, job_kwargs)
    s = Signature()
    s.name, s.queue, s.timeout, s.retries, s.guarantee = name, queue, timeout, retries, bool(guarantee)
    # Copies taken now (as send serialises at once): later changes to the
    # caller's lists do not reach the job.
    s.args, s.kwargs, s.class_args, s.class_kwargs = (json.loads(t) for t in texts)
    s.unique = _check_unique(unique)
    s.on_dependency_failure = _check_on_dependency_failure(on_dependency_failure)
    s.limit = _check_limit(limit)
    return s


def _as_canvas(x):
    if isinstance(x, Canvas):
        return x
    if isinstance(x, Task):
        return x.sig()  # with the task's options
    if isinstance(x, str) or callable(x):
        return sig(x)
    raise TypeError("a workflow is made of emq.sig(...), chain, group and chord, not %r" % (x,))


def _as_handler(x):
    if x is None:
        return None
    h = _as_canvas(x)
    if not isinstance(h, Signature):
        raise TypeError("on_error must be one job (emq.sig(...)), not %r" % (x,))
    return h


def _items(what, items):
    """``f(a, b)`` or ``f([a, b])`` / ``f(generator)``."""
    if len(items) == 1 and not isinstance(items[0], (Canvas, str, Task)) and not callable(items[0]) \
            and hasattr(items[0], "__iter__"):
        items = tuple(items[0])
    if not items:
        raise ValueError("an empty %s" % what)
    return [_as_canvas(x) for x in items]


def chain(*steps, on_error=None):
    """Steps run one after the other: each step's result is the next
    step's first argument; a step after a group gets the list of the
    group's results (``chain(a, group(b, c), d)``: ``d`` is a chord's
    callback). The workflow's result is the last step's.

    ``on_error``: one job (:func:`sig`) run once, with the failure (a dict:
    ``type``, ``message``, ``traceback``, ``msgid`` of the failed job,
    ``state``) as its first argument, when a job inside fails for good —
    the steps after it are then cancelled. Accepts ``chain(a, b)`` and
    ``chain([a, b])``."""
    return Chain(_items("chain", steps), _as_handler(on_error))


def group(*members, on_error=None):
    """Members run at once; the result is the list of their results, in
    the members' order. ``group(a, b)`` or ``group([a, b])`` /
    ``group(sig(f, i) for i in ...)``; ``on_error`` as in :func:`chain`."""
    return Group(_items("group", members), _as_handler(on_error))


def chord(header, callback, on_error=None):
    """``header`` (a :func:`group` or a list of jobs) runs at once, then
    ``callback`` with the list of their results as its first argument;
    the workflow's result is the callback's. When a header job fails for
    good the callback is cancelled (and ``on_error``, as in :func:`chain`,
    runs once)."""
    if isinstance(header, Group) and header.on_error is None:
        members = list(header.members)
    elif isinstance(header, Canvas):
        members = [header]
    else:
        members = _items("chord header", (header,))
    if not members:
        raise ValueError("an empty chord header")
    return Chord(members, _as_canvas(callback), _as_handler(on_error))


def _describe(c, limit=3):
    """A short name for a canvas (``chain(m.a, group(m.b, m.c), m.d)``)."""
    if isinstance(c, Signature):
        return c.name

    def items(xs):
        shown = [_describe(x, limit) for x in (xs if limit is None else xs[:limit])]
        if limit is not None and len(xs) > limit:
            shown.append("... %d in all" % len(xs))
        return ", ".join(shown)

    if isinstance(c, Chain):
        return "chain(%s)" % items(c.steps)
    if isinstance(c, Group):
        return "group(%s)" % items(c.members)
    if isinstance(c, Chord):
        return "chord([%s], %s)" % (items(c.header), _describe(c.callback, limit))
    return repr(c)


# ---------------------------------------------------------------- worker side

class CurrentJob(tuple):
    """``(msgid, attempt)`` of the job running in this worker; ``attempt``
    is 1 on the first run. Also tells the job manager about the job:

    - ``progress(done, total=None, message=None)``: how far it is (shown
      by ``Job.status().progress``, ``emq-cli job`` and the dashboard; the
      last value wins, sent at most every 50 ms, so calling it in a tight
      loop costs little);
    - ``extend(seconds)``: its timeout starts again, ``seconds`` from now
      (never past the job manager's ``max_runtime``); a job that stops
      extending is killed when that runs out;
    - ``checkpoint(data)``: keeps ``data`` (JSON-serialisable, at most 64
      KiB as JSON) with the job; a retried attempt reads it as
      ``last_checkpoint`` (None when there is none).

    Bad values raise ``ValueError`` (NaN, a negative number, a checkpoint
    too large) or ``TypeError`` (not a number, not JSON-serialisable); a
    job that is over raises ``RuntimeError``.
    """

    def __new__(cls, msgid, attempt, last_checkpoint_json=None):
        self = tuple.__new__(cls, (msgid, attempt))
        self._checkpoint_json = last_checkpoint_json
        return self

    msgid = property(lambda self: self[0])
    attempt = property(lambda self: self[1])

    @property
    def last_checkpoint(self):
        """The checkpoint an earlier attempt kept (decoded JSON), or None."""
        j = self._checkpoint_json
        return None if j is None else json.loads(j)

    def progress(self, done, total=None, message=None):
        """How far the job is: ``done`` (of ``total``), with a ``message``."""
        _control().progress(self[0], done, total, message)

    def extend(self, seconds):
        """The job's timeout starts again: ``seconds`` (> 0) from now."""
        _control().extend(self[0], seconds)

    def checkpoint(self, data):
        """Keeps ``data`` with the job for a retried attempt (last one wins)."""
        _control().checkpoint(self[0], data)

    def __repr__(self):
        return "CurrentJob(msgid=%r, attempt=%r)" % tuple(self)


def _control():
    c = globals().get("_job_control")
    if c is None:
        raise RuntimeError("not in an emq worker: progress(), extend() and checkpoint() work inside a job")
    return c


def current_job():
    """The job this worker is running (:class:`CurrentJob`), or None outside
    an emq worker. The worker sets the module attributes ``emq.msgid`` and
    ``emq.attempt`` before each job; this reads them."""
    g = globals()
    if g.get("msgid") is None:
        return None
    return CurrentJob(g["msgid"], g.get("attempt", 0), g.get("_last_checkpoint"))
