"""emq — send jobs to an emq (or EventMQ) router and get their results.

    import emq
    with emq.Client() as client:                      # EMQ_FRONTEND_ADDR or settings.toml
        job = client.send("myapp.tasks.add", 2, 3)    # returns at once (pipelined)
        print(job.result(timeout=30))                 # 5
        print(client.map("myapp.tasks.add", range(3), [10] * 3))  # [10, 11, 12]: in batches

        out = client.run(["/bin/echo", "hi"]).result(timeout=30)  # a program (allowed_commands)
        print(out["exit_code"], out["stdout"])        # 0 hi

        flow = client.submit(emq.chain(emq.sig("myapp.tasks.add", 2, 3),
                                       emq.sig("myapp.tasks.double")))
        print(flow.result(timeout=30))                # 10: double(add(2, 3))

        for ev in client.events(types=["succeeded"]):  # the router's event stream (HTTP)
            print(ev["offset"], ev["job"], ev.get("result"))

The protocol is implemented once, in Rust (``emq._native`` wraps the
``emq-client`` crate); this module is the Python API around it.

Inside a worker of ``emq-jobmanager`` this same module also carries the
running job: :func:`current_job` (and the module attributes ``msgid`` and
``attempt`` that the worker sets before each job), whose ``progress()``,
``extend()`` and ``checkpoint()`` tell the job manager about it.
"""
import functools
import http.client
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse

from . import _native

__all__ = [
    "Client", "Job", "JobStatus", "CurrentJob", "Task", "task", "current_job", "default_client",
    "Error", "ConnectError", "Refused", "JobFailed", "Timeout", "ResultsUnavailable", "HttpError", "EventStream",
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
    (``message`` names it too); None for a plain job. ``value``: for a
    command job (:meth:`Client.run`) of kind ``command failed``, its result
    dict (``exit_code``, ``stdout``, ``stderr``...) as the router's job
    record keeps it; None otherwise (or when the record no longer has it).
    """

    def __init__(self, kind, message, traceback="", msgid=None, node=None, node_name=None, value=None):
        super().__init__("%s: %s" % (kind, message))
        self.kind = kind
        self.message = message
        self.traceback = traceback
        self.msgid = msgid
        self.node = node
        self.node_name = node_name
        self.value = value

    def __str__(self):
        s = "%s: %s" % (self.kind, self.message)
        if self.traceback:
            s += "\n\nRemote traceback:\n" + self.traceback.rstrip()
        return s


class HttpError(Error):
    """The router's HTTP API answered with an error that trying again would
    not mend (``400`` a bad parameter, ``401`` no token or one it does not
    know, ``403`` a client token on an admin-only path, ``404``...):
    ``status`` (the HTTP status) and ``message`` (the router's ``{"error":
    ...}``)."""

    def __init__(self, status, message):
        super().__init__("HTTP %d: %s" % (status, message))
        self.status = status
        self.message = message


def _nonneg(name, v):
    if v is not None and v < 0:
        raise ValueError("%s must be >= 0, not %r" % (name, v))
    return v


# ---------------------------------------------------------------- outcome

class _Outcome:
    # failed_value: a failed command job's result dict, read from the
    # router's record (the REPLY's value does not come through the native
    # client on failure); None until then, _UNREAD before it was asked.
    __slots__ = ("kind", "value", "error", "failed_value")

    def __init__(self, kind, obj):
        # ``obj``: the decoded return value (kind "value"), else the error
        # dict (``type``, ``message``, ``traceback``, ``by_router``...).
        self.kind = kind
        self.failed_value = _UNREAD
        if kind == "value":
            self.value, self.error = obj, None
        else:
            self.value, self.error = None, obj

    @property
    def command_failed(self):
        return self.error is not None and self.error.get("type") == _COMMAND_FAILED

    @property
    def refused_by_router(self):
        """The router itself refused the job: it was never accepted."""
        return self.kind == "refused" and bool(self.error.get("by_router"))

    def unwrap(self, msgid, workflow=False, name=None):
        if self.kind == "value":
            return self.value
        e = self.error
        if self.kind == "refused":
            reason = e.get("message", "refused")
            if e.get("by_router"):
                reason = "router refused %s: %s" % (name or "the job", reason)
            raise Refused(reason, msgid)
        message = e.get("message", "")
        node, node_name = e.get("node"), e.get("node_name")
        if workflow and node is None:
            # The router's "node <msgid> (<name>) failed: ..." (the error's
            # own node fields do not always survive the native client).
            m = _NODE_FAILED.match(message)
            if m:
                node, node_name = m.group(1), m.group(2)
        value = None if self.failed_value is _UNREAD else self.failed_value
        raise JobFailed(e.get("type", self.kind), message, e.get("traceback", ""), msgid,
                        node=node, node_name=node_name, value=value)

    def exception(self, msgid, name=None):
        """The failure as an exception object (None for a value)."""
        try:
            self.unwrap(msgid, False, name)
        except (JobFailed, Refused) as e:
            return e
        return None


_UNREAD = object()
_COMMAND_FAILED = "command failed"
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
    # What most jobs have, as class attributes: an instance sets its own
    # only when it differs (fewer stores per job sent).
    #: True when the job was sent with ``unique=KEY`` while another job
    #: held the key: this is that job (``msgid`` is its msgid), no new
    #: one was made. Its result is shown to the client that sent it
    #: (another client needs that one's token: ``Client.job(msgid,
    #: owner=...)``; ``result()`` raises :class:`Error` saying so).
    deduplicated = False
    # Sent by another client: the result is read from the router's record.
    _foreign = False
    # The outcome once known (an _Outcome).
    _outcome = None

    def __init__(self, client, msgid, name, queue, receipted, wants_result, owner=None, foreign=False,
                 deduplicated=False):
        self.client = client
        self.msgid = msgid
        self.name = name
        self.queue = queue
        # True / False once known (see ``receipted``); None: not read yet
        # (a pipelined send: the receipt is collected when asked for).
        self._receipted = receipted
        #: The secret the job was sent with: another process holding it gets
        #: the job's result and status with ``Client.job(msgid, owner=...)``
        #: (Celery's ``AsyncResult(id)``). Keep it as secret as the result.
        self.owner = owner
        self._wants_result = wants_result
        if deduplicated:
            self.deduplicated = True
        if foreign:
            self._foreign = True

    def __repr__(self):
        state = "pending" if self._outcome is None else self._outcome.kind
        return "<emq.Job %s %s %s>" % (self.name, self.msgid, state)

    @property
    def receipted(self):
        """True once the router accepted the job (its receipt is in); False
        only when EventMQ's router buffered it without a receipt. A job
        :meth:`Client.send` sent without waiting reads its receipt here
        (as :meth:`receipt`: raises :class:`Refused` when the router refused
        it, :class:`Timeout` when none comes within ``receipt_timeout``)."""
        if self._receipted is None:
            self.receipt()
        return self._receipted

    def receipt(self, timeout=None):
        """Waits for the router's receipt (``timeout`` seconds, default the
        client's ``receipt_timeout``): True when it accepted the job, False
        when EventMQ's router buffered it without a word. Raises
        :class:`Refused` (the router's reason) when it refused it, and
        :class:`Timeout`. A job whose outcome is in needs no wait."""
        if self._receipted is not None:
            return self._receipted
        o = self._outcome
        if o is not None:
            if o.refused_by_router:
                o.unwrap(self.msgid, name=self.name)
            self._receipted = True  # an outcome: it was accepted
            return True
        try:
            self._receipted = self.client._receipt(self.msgid, self.name, timeout)[0]
        except Refused as e:
            err = dict(getattr(e, "_error", None) or {"type": "refused", "message": e.reason})
            err["by_router"] = True
            self._outcome = _Outcome("refused", err)
            raise
        return self._receipted

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

    def _set_outcome(self, kind, obj):
        if self._outcome is None:
            self._outcome = _Outcome(kind, obj)
        return self._outcome

    def result(self, timeout=None):
        """The job's return value, waiting up to ``timeout`` seconds (None:
        as long as it takes). Raises :class:`JobFailed` (remote kind and
        traceback), :class:`Refused`, :class:`Timeout`, or
        :class:`ResultsUnavailable` when the router does not send results."""
        if self._outcome is None and self._wants_result and not self._foreign and (timeout is None or timeout >= 0):
            # The commonest case (a job of this client, on emq's router)
            # with the least Python: _wait's steps inline.
            n = self.client._native
            if n.results_known is True:
                try:
                    got = n.wait_result(self.msgid, timeout, None)
                except (PermissionError, LookupError) as e:
                    raise Error(str(e)) from None
                if got is None:
                    raise Timeout("no result for job %s (%s) within %s s" % (self.msgid, self.name, timeout))
                o = self._outcome
                if o is None:
                    o = self._outcome = _Outcome(*got)
                if o.kind == "value":
                    return o.value
                return self._unwrap(o)
        o = self._wait(_nonneg("timeout", timeout))
        if o is None:
            raise Timeout("no result for job %s (%s) within %s s" % (self.msgid, self.name, timeout))
        return self._unwrap(o)

    def _unwrap(self, o):
        if o.command_failed and o.failed_value is _UNREAD:
            # A failed command's result (exit_code, stdout, stderr) is the
            # REPLY's value, which the router's record keeps in full.
            o.failed_value = None
            try:
                v = (self.status().raw.get("result") or {}).get("value")
                o.failed_value = v if isinstance(v, dict) else None
            except Error:
                pass
        return o.unwrap(self.msgid, self._is_workflow, self.name)

    get = result

    def wait(self, timeout=None):
        """Waits until the job is over (successful or not); True if it is,
        False when ``timeout`` seconds passed first. Never raises the job's
        own failure; raises :class:`Refused` when the router refused the
        job (it never existed there: what ``send`` used to raise)."""
        o = self._wait(_nonneg("timeout", timeout))
        if o is not None and o.refused_by_router:
            o.unwrap(self.msgid, name=self.name)
        return o is not None

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
        o = self._outcome
        # (A failed command's value is read from the router: not in the loop.)
        if o is not None and not (o.command_failed and o.failed_value is _UNREAD):
            async def ready():
                return o.unwrap(self.msgid, self._is_workflow, self.name)
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

# One encoder for every job (json.dumps with options builds one per call).
_ENCODE = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def _dumps(what, v):
    try:
        return _ENCODE(v)
    except (TypeError, ValueError) as e:
        raise TypeError("%s of an emq job must be JSON-serialisable: %s" % (what, e)) from None


def _encode_items(items, star, offset):
    """The JSON array of a batch's items (each one job's argument, or with
    ``star`` its tuple of arguments); TypeError naming the first bad item
    (``offset``: the index of ``items[0]`` in the whole batch)."""
    if star:
        for i, x in enumerate(items):
            if not isinstance(x, (tuple, list)):
                raise TypeError("item %d is not a tuple of arguments: %r (starmap / send_many take an iterable "
                                "of argument tuples, e.g. [(1, 2), (3, 4)])" % (offset + i, x))
    try:
        return _ENCODE(items)
    except (TypeError, ValueError):
        for i, x in enumerate(items):
            try:
                _ENCODE(x)
            except (TypeError, ValueError) as e:
                raise TypeError("the arguments of item %d of an emq batch must be JSON-serialisable: %s"
                                % (offset + i, e)) from None
        raise


def _check_unique(unique):
    if unique is not None and (not isinstance(unique, str) or not 0 < len(unique) <= 200 or "," in unique):
        raise ValueError("unique must be a string of 1 to 200 characters without a comma, not %r" % (unique,))
    return unique


def _valid_label(s):
    return isinstance(s, str) and 0 < len(s) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-.:") for c in s)


def _check_labels(requires):
    """``requires=``: a list of labels (a single string is one label)."""
    if requires is None:
        return []
    if isinstance(requires, str):
        requires = [requires]
    requires = list(requires)
    if len(requires) > 32 or not all(_valid_label(r) for r in requires):
        raise ValueError("requires must be at most 32 labels of 1 to 64 of A-Z a-z 0-9 _ - . :, not %r" % (requires,))
    return requires


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


# Callable names already split (``pkg.mod.func`` → path, callable).
_SPLIT = {}


def _job_spec(fn, args, queue, timeout, retries, kwargs, class_args, class_kwargs, job_kwargs):
    """Checks what :meth:`Client.send` and :func:`sig` share: returns
    ``(name, path, callable, timeout)`` and the JSON texts ``(args, kwargs,
    class_args, class_kwargs)``; raises ValueError / TypeError."""
    name = _callable_name(fn)
    split = _SPLIT.get(name)
    if split is None:
        split = _native.split_callable(name)
        if len(_SPLIT) < 4096:
            _SPLIT[name] = split
    path, callable_ = split
    kw = dict(kwargs or {})
    kw.update(job_kwargs)
    timeout = _check_basics(queue, timeout, retries)
    texts = (_dumps("args", list(args)) if args else "[]", _dumps("kwargs", kw) if kw else "{}",
             _dumps("class_args", list(class_args)) if class_args else "[]",
             _dumps("class_kwargs", dict(class_kwargs)) if class_kwargs else "{}")
    return (name, path, callable_, timeout), texts


def _check_basics(queue, timeout, retries):
    """Checks ``queue``, ``timeout`` and ``retries`` (every kind of job has
    them); returns ``timeout`` in whole seconds as on the wire (rounded up)."""
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ValueError("retries must be an int >= 0, not %r" % (retries,))
    if timeout is not None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds, not %r" % (timeout,))
        timeout = max(1, int(-(-timeout // 1)))  # whole seconds on the wire, rounded up
    if not isinstance(queue, str) or not queue:
        raise ValueError("queue must be a non-empty string")
    return timeout


def _command_spec(argv, env, cwd, stdin):
    """Checks what :meth:`Client.run` runs; returns ``(argv, env, cwd,
    stdin)`` as the native client takes them (a list, a dict, str or
    None); raises TypeError / ValueError."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of strings, not a single string (%r): no shell splits it, "
                        "pass e.g. [\"/bin/echo\", \"hi\"]" % (argv,))
    if not isinstance(argv, (list, tuple)):
        raise TypeError("argv must be a list (or tuple) of strings, not %r" % (argv,))
    if not argv:
        raise ValueError("argv must name a program: it is empty")
    for i, a in enumerate(argv):
        if not isinstance(a, str):
            raise TypeError("argv[%d] must be a string, not %r" % (i, a))
    if env is None:
        env = {}
    if not isinstance(env, dict):
        raise TypeError("env must be a dict of str to str, not %r" % (env,))
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError("env must map str to str, not %r: %r" % (k, v))
    if cwd is not None:
        if not isinstance(cwd, (str, os.PathLike)):
            raise TypeError("cwd must be a str or os.PathLike, not %r" % (cwd,))
        cwd = os.fspath(cwd)
        if not isinstance(cwd, str):
            raise TypeError("cwd must be a str path, not %r" % (cwd,))
    if isinstance(stdin, (bytes, bytearray)):
        try:
            stdin = bytes(stdin).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError("stdin must be text: its bytes are not UTF-8 (%s)" % e) from None
    elif stdin is not None and not isinstance(stdin, str):
        raise TypeError("stdin must be str or bytes (UTF-8), not %r" % (stdin,))
    # What else the job manager would refuse (a NUL byte, "=" in a name, a
    # relative cwd...), said here: ValueError.
    _native.check_command(list(argv), env, cwd, stdin)
    return list(argv), env, cwd, stdin


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
    a receipt is waited for (:attr:`Job.receipted`, :meth:`Job.receipt`,
    ``send(..., unique=...)`` and ``send(..., result=False)``,
    :meth:`submit`).
    """

    def __init__(self, addr=None, *, connect_timeout=5.0, receipt_timeout=10.0, config=None):
        if addr is None:
            addr = _native.default_addr(config)
        self.receipt_timeout = receipt_timeout
        self._config = config
        try:
            self._native = _native.NativeClient(addr, connect_timeout)
        except ConnectionError as e:
            raise ConnectError(str(e)) from None
        self._owner = self._native.owner_token

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
        if self._native.results_known is True:  # known: no call that may wait
            return
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
             depends_on=None, on_dependency_failure="cancel", limit=None, requires=None, on=None, **job_kwargs):
        """Sends ``fn(*args, **job_kwargs)`` to run on a worker and returns
        its :class:`Job` at once, without waiting for the router's receipt
        (sends are pipelined: the receipt is collected later). A refusal
        by the router (a full queue, an unknown ``limit``, an unknown
        ``depends_on`` msgid...) is raised as :class:`Refused` by the job's
        ``result()``, ``wait()``, ``receipt()`` and ``receipted``, and by
        the batch calls (:meth:`gather`, :meth:`as_completed`...). Two kinds
        of send still wait for the receipt and raise :class:`Refused` at
        once: ``unique=`` (the receipt names the job holding the key) and
        ``result=False`` (the receipt is the only answer such a job gets).

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
        ``requires``: labels (``["gpu"]``) a job manager must all have (its
        ``labels`` setting, ``--labels``); ``on``: the name of the one job
        manager (``--name``) to run it. Only such a job manager receives the
        job; while none is connected it waits. These need emq's router
        (:class:`ResultsUnavailable` on EventMQ's).

        Raises ``ValueError`` for a malformed callable, ``TypeError`` for
        arguments that are not JSON-serialisable (both before sending);
        with ``unique=`` or ``result=False``: :class:`Refused` with the
        router's reason, :class:`Timeout` when no receipt comes within
        ``receipt_timeout``.
        """
        n = self._native
        if (type(fn) is str and result is True and timeout is None and retries is None and kwargs is None
                and not job_kwargs and class_args is None and class_kwargs is None and unique is None
                and depends_on is None and limit is None and requires is None and on is None and delay is None
                and eta is None and on_dependency_failure == "cancel" and type(queue) is str and queue
                and n.results_known is not False):
            # The commonest call, ``send("pkg.mod.func", *args)``, with the
            # least Python per job: a round trip's CPU is mostly this
            # process's, and every option _job_spec checks is a default.
            split = _SPLIT.get(fn)
            if split is None:
                split = _native.split_callable(fn)
                if len(_SPLIT) < 4096:
                    _SPLIT[fn] = split
            msgid = n.send_plain(queue, split[0], split[1], _dumps("args", list(args)) if args else "[]",
                                 bool(guarantee))
            return Job(self, msgid, fn, queue, None, True, self._owner)
        (name, path, callable_, timeout), texts = _job_spec(fn, args, queue, timeout, retries, kwargs, class_args,
                                                            class_kwargs, job_kwargs)
        if (result is True and unique is None and depends_on is None and limit is None and requires is None
                and on is None and delay is None and eta is None and on_dependency_failure == "cancel"
                and n.results_known is not False):
            # The common case, kept short: no option to check, and pipelined
            # (the receipt is read later: job.receipted, result()).
            msgid = n.send(queue, path, callable_, texts[0], texts[1], texts[2], texts[3], True, bool(guarantee),
                           retries, timeout)
            return Job(self, msgid, name, queue, None, True, owner=self._owner)
        options = self._job_options(result, guarantee, retries, timeout, delay, eta, unique, depends_on,
                                    on_dependency_failure, limit, requires, on)
        msgid = n.send(queue, path, callable_, *texts, **options)
        if unique is None and result and n.results_known is not False:
            return Job(self, msgid, name, queue, None, True, owner=self._owner)
        return self._sent(msgid, name, queue, result)

    def run(self, argv, env=None, cwd=None, stdin=None, timeout=None, *, queue="default", retries=None,
            guarantee=False, result=True, delay=None, eta=None, unique=None, depends_on=None,
            on_dependency_failure="cancel", limit=None, requires=None, on=None):
        """Runs a program on a job manager (a command job) and returns its
        :class:`Job` at once (pipelined, as :meth:`send`: a refusal is
        raised by the job's ``result()`` / ``wait()``).

        ``argv``: the program and its arguments, a list of strings
        (``["/bin/echo", "hi"]``), run as they are — no shell, no globbing
        (a single string raises ``TypeError``). Only a job manager whose
        ``allowed_commands`` setting allows the program runs it (absolute
        paths or globs: ``EMQ_ALLOWED_COMMANDS="/bin/echo,/usr/bin/*"``);
        one that does not refuses it (:class:`Refused`, its reason naming
        ``allowed_commands``). While no job manager that runs commands is
        connected, the job waits. ``env``: variables (str to str) set over
        the job manager's small safe base (``PATH``) — none of the job
        manager's own reach the program. ``cwd``: the absolute directory to
        run in (str or path). ``stdin``: text for its standard input (str,
        or bytes in UTF-8; else it reads an empty stream). ``timeout``:
        seconds it may run. The other options are :meth:`send`'s.

        ``job.result()`` is a dict: ``exit_code``, ``stdout``, ``stderr``
        (their tails, at most the job manager's ``command_output_bytes``),
        ``stdout_cut`` / ``stderr_cut`` (bytes left out before them) and
        ``signal`` when a signal ended it. A non-zero exit (or a signal)
        is a failure — retried as ``retries`` allows — raising
        :class:`JobFailed` of kind ``command failed`` (message ``exit code
        1: <last stderr line>``, ``traceback`` the stderr tail) whose
        ``value`` is that same dict.

        Needs emq's router (:class:`ResultsUnavailable` on EventMQ's,
        before sending). Raises ``TypeError`` / ``ValueError`` for a
        malformed command (an empty ``argv``, a relative ``cwd``, a NUL
        byte, ``=`` in a variable name...) before sending; with
        ``unique=`` or ``result=False`` (as :meth:`send`) :class:`Refused`
        with the router's reason, :class:`Timeout` when no receipt comes
        within ``receipt_timeout``.
        """
        argv, env, cwd, stdin = _command_spec(argv, env, cwd, stdin)
        timeout = _check_basics(queue, timeout, retries)
        options = self._job_options(result, guarantee, retries, timeout, delay, eta, unique, depends_on,
                                    on_dependency_failure, limit, requires, on)
        # EventMQ's router would hand it to a job manager that cannot run it.
        self._require_results("command jobs")
        msgid = self._native.send_command(queue, argv, env, cwd, stdin, **options)
        if unique is None and result:
            return Job(self, msgid, "command %s" % argv[0], queue, None, True, owner=self._owner)
        return self._sent(msgid, "command %s" % argv[0], queue, result)

    def _job_options(self, result, guarantee, retries, timeout, delay, eta, unique, depends_on,
                     on_dependency_failure, limit, requires, on):
        """Checks the options :meth:`send` and :meth:`run` share (``timeout``
        already checked, in whole seconds); returns them as the native
        sends take them (keyword arguments)."""
        unique = _check_unique(unique)
        deps = _msgids("depends_on", depends_on)
        _check_on_dependency_failure(on_dependency_failure)
        limit = _check_limit(limit)
        requires = _check_labels(requires)
        if on is not None and not _valid_label(on):
            raise ValueError("on must be a job manager name (1 to 64 of A-Z a-z 0-9 _ - . :), not %r" % (on,))
        if unique is not None or deps or limit is not None or requires or on is not None:
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
        return dict(reply_requested=bool(result), guarantee=bool(guarantee), retries=retries, timeout=timeout,
                    delay=delay, eta=eta, unique=unique, depends_on=deps,
                    run_on_dependency_failure=on_dependency_failure == "run", limit=limit, requires=requires,
                    on=on)

    def _sent(self, msgid, name, queue, result):
        """The :class:`Job` of a REQUEST just sent, once its receipt is in
        (``unique=``: the receipt says which job holds the key;
        ``result=False``: the receipt is the only answer, so a refusal is
        raised here)."""
        try:
            receipted, holder = self._receipt(msgid, name)
        finally:
            if not result:
                self._native.forget(msgid)  # nothing more will come for it
        return Job(self, holder or msgid, name, queue, receipted, bool(result), owner=self._owner,
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
        return Workflow(self, wid, canvas, owner=self._owner)

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
            refused = Refused("router refused %s: %s" % (name, e.get("message", "refused")), msgid)
            refused._error = e
            raise refused
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
        :class:`Timeout` when it passes with jobs still running. The
        results are collected in batches (one native wait for all that
        arrived)."""
        pending = {}
        for j in jobs:
            if j._outcome is not None:
                yield j
            else:
                j._check_results()
                pending.setdefault(j.msgid, []).append(j)
        if not pending:
            return
        end = None if timeout is None else time.monotonic() + timeout
        w = _native.Waiter()
        w.add(list(pending))
        while len(w):
            left = None if end is None else max(0.0, end - time.monotonic())
            got, outcomes = self._native.take_many(w, None, 1, 1.0 if left is None else min(left, 1.0))
            if not got:
                # Quiet for a second: an outcome taken another way (this
                # Job's result() called meanwhile) never comes here.
                for msgid, js in list(pending.items()):
                    if any(j._outcome is not None for j in js):
                        del pending[msgid]
                        w.discard(msgid)
                        for j in js:
                            if j._outcome is None:
                                j._outcome = next(x._outcome for x in js if x._outcome is not None)
                            yield j
                if left is not None and time.monotonic() >= end and len(w):
                    raise Timeout("%d of the jobs still running after %s s" % (len(w), timeout))
                continue
            for _key, msgid, kind, obj in outcomes:
                for j in pending.pop(msgid, ()):
                    j._set_outcome(kind, obj)
                    yield j

    def results(self, jobs, timeout=None):
        """Yields the jobs' results in the order the jobs finish; a failed
        job raises its :class:`JobFailed` when its turn comes."""
        for j in self.as_completed(jobs, timeout):
            yield j.result(0)

    def gather(self, jobs, timeout=None, return_exceptions=False):
        """The results of ``jobs`` (e.g. from :meth:`send_many`), in their
        order, waited for in batches. ``timeout``: for all of them
        (:class:`Timeout` when it passes first). A failed job raises its
        :class:`JobFailed` (a refused one :class:`Refused`) once all are
        over — the first in the jobs' order; with ``return_exceptions=True``
        the exception objects take their places in the list instead."""
        jobs = list(jobs)
        for _ in self.as_completed(jobs, timeout):
            pass
        out = []
        for j in jobs:
            if return_exceptions:
                e = j.exception(0)
                out.append(e if e is not None else j.result(0))
            else:
                out.append(j.result(0))
        return out

    def _batch_spec(self, fn, what, queue, timeout, retries, guarantee, result, kwargs, class_args, class_kwargs,
                    delay, eta, depends_on, on_dependency_failure, limit, requires, on, job_kwargs):
        """Checks a batch's callable and options once: ``(name, path,
        callable, texts, options)`` for ``NativeClient.send_many``."""
        if "unique" in job_kwargs:
            raise ValueError("%s: unique= makes one job of all the sends; send each with send(..., unique=KEY) "
                             "(a job argument named unique goes in kwargs={...})" % what)
        (name, path, callable_, timeout), texts = _job_spec(fn, (), queue, timeout, retries, kwargs, class_args,
                                                            class_kwargs, job_kwargs)
        options = self._job_options(result, guarantee, retries, timeout, delay, eta, None, depends_on,
                                    on_dependency_failure, limit, requires, on)
        del options["unique"]
        return name, path, callable_, texts[1:], options

    def send_many(self, fn, iterable, *, queue="default", timeout=None, retries=None, guarantee=False, result=True,
                  kwargs=None, class_args=None, class_kwargs=None, delay=None, eta=None, depends_on=None,
                  on_dependency_failure="cancel", limit=None, requires=None, on=None, **job_kwargs):
        """Sends one job ``fn(*args, **job_kwargs)`` per tuple ``args`` of
        ``iterable`` (``[(1, 2), (3, 4)]``: ``fn(1, 2)`` and ``fn(3, 4)``) and
        returns their :class:`Job` list, in order, at once: receipts are
        not waited for (a refused job raises :class:`Refused` at its
        ``result()`` / ``wait()``). Get the results with :meth:`gather`,
        :meth:`as_completed` or each ``job.result()``.

        The options are :meth:`send`'s, shared by every job (``timeout``
        is each job's run time), but for ``unique`` (``ValueError``). Every
        item is checked (a tuple or list of JSON-serialisable arguments:
        ``TypeError`` naming it) before anything is sent. With
        ``result=False`` the receipts, the only answer such jobs get, are
        waited for in one go before it returns: :class:`Refused` when the
        router refused any (``.jobs``: those jobs)."""
        name, path, callable_, texts, options = self._batch_spec(
            fn, "send_many", queue, timeout, retries, guarantee, result, kwargs, class_args, class_kwargs, delay,
            eta, depends_on, on_dependency_failure, limit, requires, on, job_kwargs)
        items = list(iterable)
        text = _encode_items(items, True, 0)
        ids = self._native.send_many(queue, path, callable_, text, True, *texts, **options)
        if result and self._native.results_known is not False:
            owner = self._owner
            return [Job(self, m, name, queue, None, True, owner=owner) for m in ids]
        jobs, refused = [], []
        for m in ids:
            try:
                jobs.append(self._sent(m, name, queue, result))
            except Refused as e:
                j = Job(self, m, name, queue, None, bool(result), owner=self._owner)
                j._outcome = _Outcome("refused", dict(getattr(e, "_error", None) or {"message": e.reason},
                                                      by_router=True))
                jobs.append(j)
                refused.append(j)
        if refused:
            e = Refused("router refused %d of %d jobs of %s: %s" % (
                len(refused), len(jobs), name, refused[0]._outcome.error.get("message", "refused")),
                refused[0].msgid)
            e.jobs = refused
            raise e
        return jobs

    def map(self, fn, *iterables, window=1000, timeout=None, return_exceptions=False, job_timeout=None,
            **options):
        """``fn(item)`` remotely for each item of ``iterable`` — as the
        builtin ``map``, ``fn(a, b)`` for each pair of ``map(fn, as_, bs)``
        — and returns the results in input order (a list). At most
        ``window`` jobs are in flight; they are sent and their results
        collected in batches (the GIL released while waiting).

        ``timeout``: seconds without any result arriving after which
        :class:`Timeout` is raised (None: no limit); ``job_timeout``: each
        job's run time (``send``'s ``timeout``). The other options are
        :meth:`send`'s (``queue``, ``retries``, ``kwargs``...), not
        ``unique`` or ``result=False``.

        A job that fails raises its :class:`JobFailed` (a refused one
        :class:`Refused`) as soon as its outcome arrives: nothing more is
        sent and the jobs in flight are left to finish unread. With
        ``return_exceptions=True`` the exception objects take their places
        in the list instead and every item runs. A malformed item raises
        ``TypeError`` (the jobs before it were sent)."""
        if not iterables:
            raise TypeError("map() needs an iterable of items")
        if len(iterables) == 1:
            return self._run_batch("map", fn, iterables[0], False, window, timeout, return_exceptions,
                                   job_timeout, options)
        return self._run_batch("map", fn, zip(*iterables), True, window, timeout, return_exceptions, job_timeout,
                               options, checked=True)

    def starmap(self, fn, iterable, *, window=1000, timeout=None, return_exceptions=False, job_timeout=None,
                **options):
        """:meth:`map` of argument tuples, as ``itertools.starmap``:
        ``fn(*args)`` for each ``args`` of ``iterable`` (``[(1, 2), (3,
        4)]``), the results in input order. Items that are not tuples or
        lists raise ``TypeError``. Options and failures as :meth:`map`."""
        return self._run_batch("starmap", fn, iterable, True, window, timeout, return_exceptions, job_timeout,
                               options)

    def _run_batch(self, what, fn, items, star, window, timeout, return_exceptions, job_timeout, options,
                   checked=False):
        if not isinstance(window, int) or window < 1:
            raise ValueError("window must be an int >= 1, not %r" % (window,))
        _nonneg("timeout", timeout)
        if options.pop("result", True) is not True:
            raise ValueError("%s needs the results: result=False is not allowed" % what)
        queue = options.pop("queue", "default")
        opts = {k: options.pop(k, d) for k, d in (
            ("retries", None), ("guarantee", False), ("kwargs", None), ("class_args", None),
            ("class_kwargs", None), ("delay", None), ("eta", None), ("depends_on", None),
            ("on_dependency_failure", "cancel"), ("limit", None), ("requires", None), ("on", None))}
        name, path, callable_, texts, native_options = self._batch_spec(
            fn, what, queue, job_timeout, opts["retries"], opts["guarantee"], True, opts["kwargs"],
            opts["class_args"], opts["class_kwargs"], opts["delay"], opts["eta"], opts["depends_on"],
            opts["on_dependency_failure"], opts["limit"], opts["requires"], opts["on"], options)
        self._require_results()
        n = self._native
        send_many, take_many = n.send_many, n.take_many
        w = _native.Waiter()
        out = []
        it = iter(items)
        sent = taken = 0
        more = True
        # Refill once this many slots are free (fewer, larger sends).
        refill = max(1, window // 16)
        try:
            while True:
                room = window - (sent - taken)
                if more and (room >= refill or sent == taken):
                    chunk = list(itertools.islice(it, room))
                    if len(chunk) < room:
                        more = False
                    if chunk:
                        text = _encode_items(chunk, star and not checked, sent)
                        out.extend(itertools.repeat(None, len(chunk)))
                        send_many(queue, path, callable_, text, star, *texts, waiter=w, first_key=sent,
                                  **native_options)
                        sent += len(chunk)
                if taken >= sent:
                    if not more:
                        return out
                    continue
                got, failed = take_many(w, out, 1, timeout)
                if not got:
                    raise Timeout("%s: no result for %s s (%d of %d jobs still running)"
                                  % (what, timeout, sent - taken, sent))
                taken += got
                for key, msgid, kind, obj in failed:
                    o = _Outcome(kind, obj)
                    if return_exceptions:
                        out[key] = o.exception(msgid, name)
                    else:
                        o.unwrap(msgid, name=name)
        finally:
            if len(w):
                n.forget_waited(w)  # given up: their outcomes are not kept

    def events(self, after=None, types=None, *, queue=None, job=None, token=None, http=None, timeout=None):
        """The router's events (``docs/http.md``, "Events"), read from its
        HTTP endpoint (``GET /v1/events``, server-sent events): an
        :class:`EventStream` — an iterator of dicts ``{"offset", "type",
        "job", "queue", "callable", "at", ...}`` in offset order::

            for ev in client.events(types=["succeeded", "failed"]):
                print(ev["offset"], ev["type"], ev["job"])

        ``after``: None for only what happens from now on; an offset to
        resume after it (``0``: everything the router still keeps).
        ``types``: event types (a list, or one string) to keep;
        ``queue`` / ``job`` (a msgid or a :class:`Job`): only that queue's,
        that job's. A ``gap`` event ``{"type": "gap", "from", "to"}`` says
        offsets ``from..=to`` are no longer kept (or never were, on a
        standby that took over); it is yielded too.

        The stream reconnects by itself when the connection fails, ends, or
        the router answers 5xx (after 0.1 s, doubling to 2 s), asking for
        what came after the last event it gave (``EventStream.last``): each
        event is seen once, in order, across router restarts. A connection
        silent for longer than the router's 15 s keepalive counts as lost.

        ``http``: ``HOST:PORT`` of the router's HTTP endpoint (several,
        comma-separated, are tried in turn); default ``EMQ_HTTP_ADDR``, else
        ``http_addr`` in the settings (an unspecified or loopback host
        there stands for the frontend's host), else the host of this
        client's frontend address with port 47294. ``token``: default
        ``EMQ_TOKEN``, else the admin token file ``data_dir/admin.token``
        (as ``emq-cli`` finds it; reread when the router refuses it).
        ``timeout``: seconds without an event after which the iteration
        ends (None: never).

        Raises :class:`HttpError` for an answer that retrying would not
        mend (400, 401, 403, 404...) — for ``after=None`` at once, else at
        the first ``next()`` — and ``ValueError`` for bad arguments (at once).
        """
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
            raise ValueError("after must be None or an offset (an int >= 0), not %r" % (after,))
        if isinstance(types, str):
            types = [types]
        types = None if types is None else list(types)
        for t in types or ():
            if not isinstance(t, str) or not t or "," in t:
                raise ValueError("types must be event type names (non-empty strings without a comma), not %r" % (t,))
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ValueError("queue must be a non-empty string")
        if isinstance(job, Job):
            job = job.msgid
        if job is not None and (not isinstance(job, str) or not job):
            raise ValueError("job must be a Job or a msgid string, not %r" % (job,))
        if timeout is not None and not timeout >= 0:
            raise ValueError("timeout must be None or >= 0 seconds, not %r" % (timeout,))
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ValueError("token must be a non-empty string")
        params = []
        if types:
            params.append(("type", ",".join(types)))
        if queue is not None:
            params.append(("queue", queue))
        if job is not None:
            params.append(("job", job))
        config = getattr(self, "_config", None)
        addrs = _http_addrs(http, self.addr, config)
        token_file = None
        if token is None:
            token = os.environ.get("EMQ_TOKEN", "").strip() or None
        if token is None:
            token_file = _admin_token_file(config)
        reader = _EventReader(addrs, params, after, token, token_file, timeout)
        reader.start()
        return EventStream(reader)


# ---------------------------------------------------------------- events

_log = logging.getLogger("emq")

#: The router's HTTP port when nothing says otherwise.
_HTTP_PORT = 47294
# The router sends ": keepalive" every 15 s: a connection silent for longer
# than this is dead (a router that vanished without closing it).
_KEEPALIVE_TIMEOUT = 20.0
_CONNECT_TIMEOUT = 5.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.1, 2.0


def _host_port(addr, default_port):
    """``(host, port)`` of ``HOST:PORT`` / ``[V6]:PORT`` / ``tcp://HOST:PORT``
    / ``http://HOST:PORT/`` (``default_port`` when it has none)."""
    a = addr.strip()
    for scheme in ("tcp://", "http://"):
        if a.startswith(scheme):
            a = a[len(scheme):]
    a = a.rstrip("/")
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, _, port = a.partition(":")
    else:
        host, port = a, ""
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("not a HOST:PORT address: %r" % (addr,))
    return host, int(port)


_UNSPECIFIED = ("", "*", "0.0.0.0", "::")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _frontend_hosts(frontend):
    """The hosts of a client's frontend address(es) (``tcp://a:1,tcp://b:2``);
    127.0.0.1 for a wildcard or a non-TCP endpoint."""
    hosts = []
    for a in frontend.split(","):
        a = a.strip()
        host = _host_port(a, 0)[0] if a.startswith("tcp://") else ""
        host = "127.0.0.1" if host in _UNSPECIFIED else host
        if host not in hosts:
            hosts.append(host)
    return hosts or ["127.0.0.1"]


def _http_addrs(http, frontend, config):
    """``[(host, port), ...]`` of the router's HTTP endpoint(s) (see
    :meth:`Client.events`)."""
    if http is not None:
        if not isinstance(http, str) or not http.strip():
            raise ValueError("http must be HOST:PORT of the router's HTTP endpoint, not %r" % (http,))
        spec, literal = http, True
    else:
        spec, literal = os.environ.get("EMQ_HTTP_ADDR", "").strip(), True
        if not spec:
            try:
                spec = _native.http_settings(config)[0] or ""
            except ValueError:
                spec = ""  # settings that do not load (e.g. a variable only this client reads)
            literal = False
    out = []
    for a in (spec.split(",") if spec else []):
        if not a.strip():
            continue
        host, port = _host_port(a, _HTTP_PORT)
        # A bind address (or a settings file shared with a router on
        # another machine): the frontend's host.
        hosts = _frontend_hosts(frontend) if host in _UNSPECIFIED or (not literal and host in _LOOPBACK) else [host]
        out += [(h, port) for h in hosts if (h, port) not in out]
    if not out:
        out = [(h, _HTTP_PORT) for h in _frontend_hosts(frontend)]
    return out


def _admin_token_file(config):
    """``data_dir/admin.token`` as emq-cli finds it (or None)."""
    try:
        return _native.http_settings(config)[1]
    except ValueError:
        pass
    # Settings that do not load: the environment alone, as the router would.
    d = os.environ.get("EMQ_DATA_DIR", "").strip() or os.environ.get("EVENTMQ_DATA_DIR", "").strip()
    if not d:
        base = os.environ.get("XDG_STATE_HOME") or ""
        if base:
            d = os.path.join(base, "emq")
        elif os.environ.get("HOME"):
            d = os.path.join(os.environ["HOME"], ".local", "state", "emq")
        else:
            return None
    return os.path.join(d, "admin.token")


def _read_token(path):
    if path is None:
        return None
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _content_type(resp):
    return (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()


class _Retry(Exception):
    """The stream is lost in a way a new connection may mend."""


class _Idle(Exception):
    """No event within the caller's ``timeout``."""


class EventStream:
    """The iterator :meth:`Client.events` returns: event dicts, in offset
    order, each once, reconnecting by itself. ``last``: the offset of the
    last event it gave (for a ``gap``: its ``to``; before the first, where
    it started: ``after``, or for ``after=None`` the router's newest
    offset when it was made, None if the router could not be asked then)
    — pass it as ``after=`` to a later ``events()`` to go on from there.
    ``close()`` ends it and its connection (so does leaving a ``with``
    block, or dropping it)."""

    def __init__(self, reader):
        self._reader = reader
        # The generator holds the reader, not this object: dropping the
        # stream closes the generator and so the connection at once.
        self._gen = reader.run()

    @property
    def last(self):
        return self._reader.last

    @property
    def http_addr(self):
        """``HOST:PORT`` it reads (or will next try)."""
        return self._reader.http_addr

    def __repr__(self):
        return "<emq.EventStream %s after %s>" % (self.http_addr, self.last)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._gen)

    def close(self):
        """Ends the iteration and closes the connection."""
        self._gen.close()
        self._reader.disconnect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _EventReader:
    """What an :class:`EventStream` does: the connection, the SSE parsing,
    the reconnecting."""

    def __init__(self, addrs, params, after, token, token_file, timeout):
        self.last = after
        self._addrs = addrs
        self._at = 0
        self._params = params
        self._token = token
        self._token_file = token_file
        if token is None:
            self._token = _read_token(token_file)
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._conn = self._resp = None
        # False once the router answered a page request with a stream.
        self._pages = True
        self._pending = None
        self._positioned = False

    @property
    def http_addr(self):
        host, port = self._addrs[self._at]
        return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)

    # -- time

    def _left(self):
        """Seconds left before the caller's ``timeout`` (None: no limit)."""
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _cap(self, seconds):
        """``(timeout, capped)``: ``seconds``, or less when the caller's
        ``timeout`` runs out first (``capped``)."""
        left = self._left()
        if left is None or left >= seconds:
            return seconds, False
        return max(0.001, left), True

    # -- one request

    def disconnect(self):
        # The response too: http.client hands the socket to it when the
        # answer ends with the connection.
        for c in (self._resp, self._conn):
            if c is not None:
                try:
                    c.close()
                except OSError:
                    pass
        self._conn = self._resp = None

    def _request(self, query, accept):
        """Sends ``GET /v1/events?query`` and returns ``(response, socket)``
        once a 200 is in; raises :class:`HttpError`, _Retry or OSError."""
        host, port = self._addrs[self._at]
        path = "/v1/events" + ("?" + urllib.parse.urlencode(query) if query else "")
        for attempt in (1, 2):
            self.disconnect()
            conn = http.client.HTTPConnection(host, port, timeout=self._cap(_CONNECT_TIMEOUT)[0])
            self._conn = conn
            conn.connect()
            sock = conn.sock
            headers = {"Accept": accept, "Cache-Control": "no-cache"}
            if self._token is not None:
                headers["Authorization"] = "Bearer " + self._token
            if self.last is not None and accept == "text/event-stream":
                headers["Last-Event-ID"] = str(self.last)
            conn.request("GET", path, headers=headers)
            # The answer's head comes at once (the stream's events may not).
            sock.settimeout(self._cap(_KEEPALIVE_TIMEOUT)[0])
            resp = self._resp = conn.getresponse()
            if resp.status == 200:
                return resp, sock
            try:
                body = resp.read(65536)
            except (OSError, http.client.HTTPException):
                body = b""
            self.disconnect()
            try:
                message = json.loads(body)["error"]
            except (ValueError, TypeError, KeyError):
                message = body.decode("utf-8", "replace").strip() or resp.reason
            if resp.status >= 500 or resp.status == 429:
                raise _Retry("HTTP %d: %s" % (resp.status, message))
            if resp.status == 401 and self._token_file is not None and attempt == 1:
                fresh = _read_token(self._token_file)
                if fresh is not None and fresh != self._token:
                    self._token = fresh  # the admin token was rotated
                    continue
            if resp.status == 401:
                if self._token is None:
                    message += (" (no token: pass token=, set EMQ_TOKEN, or make the router's admin token "
                                "file readable: %s)" % (self._token_file or "no data_dir"))
                elif self._token_file is not None:
                    message += " (the admin token from %s)" % self._token_file
            raise HttpError(resp.status, "GET /v1/events at %s: %s" % (self.http_addr, message))

    def _position(self):
        """For ``after=None``: asks where the stream is now (a JSON page,
        without waiting): ``(events, next)`` — the page's events (any that
        came in the meantime) and the offset they end at, to resume after
        once they are given, so that a connection lost before the first
        event still resumes at the right place. ``([], None)`` from a
        router that serves no pages."""
        resp, sock = self._request(self._params, "application/json")
        try:
            if _content_type(resp) != "application/json":
                self._pages = False  # no pages here: the stream from "now" it is
                return [], None
            page = json.loads(resp.read())
            events, nxt = page.get("events") or [], page.get("next")
        except (ValueError, AttributeError) as e:
            raise _Retry("an unreadable events page: %s" % e) from None
        finally:
            self.disconnect()
        if isinstance(nxt, bool) or not isinstance(nxt, int):
            nxt = None
        return events, nxt

    def start(self):
        """Takes the position at once for ``after=None`` ("from now on"
        means from the call, not from the first ``next()``). A router that
        cannot be reached now is tried again when iterating; an
        :class:`HttpError` is raised."""
        if self.last is None and self._pages:
            try:
                self._take_position()
            except (_Retry, OSError, http.client.HTTPException):
                pass

    def _take_position(self):
        """``last`` from :meth:`_position`; its events (if any) are given
        first by :meth:`run`."""
        events, nxt = self._position()
        events = [ev for ev in events if isinstance(ev, dict)]
        self._positioned = True
        first = self._offset(events[0], None, end=False) if events else None
        if first is not None and first > 0:
            self.last = first - 1  # then those events, then ``next``
            self._pending = (events, nxt)
        elif nxt is not None:
            self.last = nxt
            self._pending = (events, None)
        else:
            self._pending = (events, None)

    def _stream(self):
        """Reads server-sent events until the connection ends (returns) or
        fails (raises); yields the decoded ``data`` of each."""
        query = list(self._params)
        if self.last is not None:
            query.insert(0, ("after", str(self.last)))
        resp, sock = self._request(query, "text/event-stream")
        ctype = _content_type(resp)
        if ctype != "text/event-stream":
            self.disconnect()
            raise HttpError(resp.status, "GET /v1/events at %s: answered %s, not text/event-stream"
                            % (self.http_addr, ctype or "no Content-Type"))
        yield None, None  # connected
        data, event_id = [], None
        while True:
            wait, capped = self._cap(_KEEPALIVE_TIMEOUT)
            sock.settimeout(wait)
            try:
                line = resp.readline()
            except socket.timeout:
                if capped:
                    raise _Idle() from None
                raise _Retry("nothing (not even a keepalive) for %s s" % _KEEPALIVE_TIMEOUT) from None
            if not line.endswith(b"\n"):
                return  # the end (a line cut short by it is no event)
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield "\n".join(data), event_id
                data, event_id = [], None
                continue
            if line.startswith(b":"):
                continue  # a comment: the keepalive
            field, colon, value = line.partition(b":")
            if colon and value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                data.append(value.decode("utf-8", "replace"))
            elif field == b"id":
                event_id = value.decode("utf-8", "replace")
            # "event" repeats the JSON's type; "retry" is ours to choose.

    @staticmethod
    def _offset(ev, event_id, end=True):
        """An event's offset (a gap's ``to``, or with ``end=False`` its
        ``from``), else its SSE ``id``, else None."""
        off = ev.get(("to" if end else "from") if ev.get("type") == "gap" else "offset")
        if not isinstance(off, int) or isinstance(off, bool):
            try:
                off = int(event_id)
            except (TypeError, ValueError):
                return None
        return off

    def _fresh(self, ev, event_id):
        """The event's offset (a gap's ``to``) if it comes after ``last``,
        else None (already given); -1 for one without an offset."""
        off = self._offset(ev, event_id)
        if off is None:
            return -1  # no offset to go by: given as it is
        if self.last is not None and off <= self.last:
            return None
        return off

    def _give(self, ev, event_id=None):
        off = self._fresh(ev, event_id)
        if off is None:
            return False
        if off >= 0:
            self.last = off
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout
        return True

    def run(self):
        delay, lost = _BACKOFF_FIRST, None
        try:
            while True:
                try:
                    if self.last is None and self._pages and not self._positioned:
                        self._take_position()
                    if self._pending is not None:
                        events, nxt = self._pending
                        while events:
                            ev = events.pop(0)
                            if self._give(ev):
                                yield ev
                        if nxt is not None and (self.last is None or nxt > self.last):
                            self.last = nxt
                        self._pending = None
                    for text, event_id in self._stream():
                        if text is None:
                            if lost is not None:
                                _log.info("event stream from %s back after %.1f s (after offset %s)",
                                          self.http_addr, time.monotonic() - lost, self.last)
                                lost = None
                            continue
                        delay = _BACKOFF_FIRST
                        try:
                            ev = json.loads(text)
                        except ValueError:
                            ev = None
                        if not isinstance(ev, dict):
                            raise Error("an event from %s is not a JSON object: %.200s" % (self.http_addr, text))
                        if self._give(ev, event_id):
                            yield ev
                    why = "the router ended the stream"
                except _Idle:
                    return
                except _Retry as e:
                    why = str(e)
                except (OSError, http.client.HTTPException) as e:
                    why = "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__
                self.disconnect()
                if lost is None:
                    lost = time.monotonic()
                    _log.warning("event stream from %s lost (%s); reconnecting to go on after offset %s",
                                 self.http_addr, why, self.last)
                else:
                    _log.debug("event stream from %s: %s", self.http_addr, why)
                left = self._left()
                if left is not None and left <= delay:
                    time.sleep(max(0.0, left))
                    return
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                self._at = (self._at + 1) % len(self._addrs)
        finally:
            self.disconnect()


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
