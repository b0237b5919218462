"""Client.run: command jobs (a program run by a job manager whose
allowed_commands allows it, no shell) against the real router and job
manager; malformed commands are refused before sending."""
import os
import pathlib
import tempfile

import pytest

import emq
from conftest import cli_json, eventually, free_slots, start_jobmanager, start_router

ALLOWED = "/bin/echo,/bin/cat,/usr/bin/env,/bin/pwd,/bin/false,/bin/sleep"
OUTPUT_BYTES = 1024


@pytest.fixture(scope="module")
def commands(procs):
    """A router and a job manager allowed to run ALLOWED (and nothing
    else), keeping OUTPUT_BYTES of each stream; the job manager has a
    variable of its own that no command may see."""
    s = start_router(procs)
    start_jobmanager(procs, s.backend, 2, {"EMQ_ALLOWED_COMMANDS": ALLOWED,
                                           "EMQ_COMMAND_OUTPUT_BYTES": str(OUTPUT_BYTES),
                                           "PYTEST_JOBMANAGER_SECRET": "s3cret"})
    eventually(60, lambda: free_slots(s.admin) >= 2, "job manager slots")
    return s


@pytest.fixture
def c(commands):
    with emq.Client(commands.frontend) as client:
        yield client


def env_of(result):
    return dict(line.split("=", 1) for line in result["stdout"].splitlines())


def test_echo_returns_its_output_and_exit_code(c):
    job = c.run(["/bin/echo", "hi"])
    assert job.receipted
    r = job.result(timeout=60)
    assert r["exit_code"] == 0
    assert r["stdout"] == "hi\n"
    assert r["stderr"] == ""
    assert (r["stdout_cut"], r["stderr_cut"]) == (0, 0)
    assert "signal" not in r
    assert job.succeeded()
    # Arguments go as they are: no shell, no globbing.
    r = c.run(("/bin/echo", "*", "$HOME", "a  b")).result(timeout=60)
    assert r["stdout"] == "* $HOME a  b\n"


def test_stdin_reaches_the_program(c):
    assert c.run(["/bin/cat"], stdin="line 1\nline 2\n").result(timeout=60)["stdout"] == "line 1\nline 2\n"
    assert c.run(["/bin/cat"], stdin="é ü\n".encode()).result(timeout=60)["stdout"] == "é ü\n"
    # Without stdin the program reads an empty stream (and does not hang).
    assert c.run(["/bin/cat"]).result(timeout=60)["stdout"] == ""


def test_env_is_the_jobs_over_a_safe_base(c):
    r = c.run(["/usr/bin/env"], env={"EMQ_CMD_VAR": "a value", "OTHER": ""}).result(timeout=60)
    env = env_of(r)
    assert env["EMQ_CMD_VAR"] == "a value"
    assert env["OTHER"] == ""
    # None of the job manager's own variables reach it.
    for var in ("PYTEST_JOBMANAGER_SECRET", "EMQ_ALLOWED_COMMANDS", "VIRTUAL_ENV", "RUST_LOG", "HOME"):
        assert var not in env, env
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert c.run(["/usr/bin/env"]).result(timeout=60)["stdout"] == "PATH=/usr/local/bin:/usr/bin:/bin\n"


def test_cwd(c):
    d = tempfile.mkdtemp(prefix="emq-pytest-cwd-")
    try:
        want = os.path.realpath(d) + "\n"
        assert c.run(["/bin/pwd"], cwd=d).result(timeout=60)["stdout"] == want
        assert c.run(["/bin/pwd"], cwd=pathlib.Path(d)).result(timeout=60)["stdout"] == want
    finally:
        os.rmdir(d)


def test_non_zero_exit_fails_with_the_result_readable(c):
    job = c.run(["/bin/false"])
    with pytest.raises(emq.JobFailed) as e:
        job.result(timeout=60)
    assert e.value.kind == "command failed"
    assert e.value.message.startswith("exit code 1")
    assert e.value.msgid == job.msgid
    assert e.value.value["exit_code"] == 1
    assert e.value.value["stdout"] == ""
    assert not job.succeeded()
    assert job.status().state in ("failed", "dead")

    # The last line of stderr is in the message, its tail the traceback.
    job = c.run(["/bin/cat", "/no/such/file"])
    with pytest.raises(emq.JobFailed) as e:
        job.result(timeout=60)
    assert e.value.kind == "command failed"
    assert e.value.message.startswith("exit code 1: ")
    assert "/no/such/file" in e.value.message
    assert "/no/such/file" in e.value.traceback
    assert e.value.value["exit_code"] == 1
    assert "/no/such/file" in e.value.value["stderr"]
    # exception() gives the same, not raised.
    assert job.exception().value["exit_code"] == 1


def test_a_failing_command_is_retried(c):
    job = c.run(["/bin/false"], retries=1)
    with pytest.raises(emq.JobFailed) as e:
        job.result(timeout=60)
    assert e.value.kind == "command failed"
    assert job.status().attempts == 2


def test_output_is_cut_to_the_job_managers_bound(c):
    text = "".join("%04d\n" % i for i in range(1000))  # 5000 bytes
    r = c.run(["/bin/cat"], stdin=text).result(timeout=60)
    assert r["exit_code"] == 0
    assert r["stdout"] == text[-OUTPUT_BYTES:]
    assert r["stdout_cut"] == len(text) - OUTPUT_BYTES


def test_timeout_kills_the_command(c):
    job = c.run(["/bin/sleep", "30"], timeout=1)
    with pytest.raises(emq.JobFailed) as e:
        job.result(timeout=60)
    assert e.value.kind == "timeout"


def test_a_command_outside_allowed_commands_is_refused(c):
    # The job manager refuses it (nothing runs): Refused, as for a module
    # outside allowed_paths.
    job = c.run(["/bin/true"])
    with pytest.raises(emq.Refused) as e:
        job.result(timeout=60)
    assert "allowed_commands" in e.value.reason
    assert "/bin/true" in e.value.reason
    assert e.value.msgid == job.msgid


def test_a_command_waits_for_a_job_manager_that_runs_commands(client):
    # The session's job manager has no allowed_commands: it is never sent one.
    job = client.run(["/bin/echo", "hi"])
    assert job.receipted
    with pytest.raises(emq.Timeout):
        job.result(timeout=2)
    assert job.status().state == "queued"
    job.cancel()
    with pytest.raises(emq.JobFailed) as e:
        job.result(timeout=30)
    assert e.value.kind == "cancelled"


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(argv="/bin/echo hi"), TypeError, "list"),
    (dict(argv=b"/bin/echo"), TypeError, "list"),
    (dict(argv=[]), ValueError, "empty"),
    (dict(argv=[""]), ValueError, "argv[0]"),
    (dict(argv=["/bin/echo", 3]), TypeError, "argv[1]"),
    (dict(argv=["/bin/echo", "a\0b"]), ValueError, "NUL"),
    (dict(argv=None), TypeError, "list"),
    (dict(argv=["/bin/echo"], env=["A=1"]), TypeError, "env"),
    (dict(argv=["/bin/echo"], env={"A": 1}), TypeError, "env"),
    (dict(argv=["/bin/echo"], env={"A=B": "1"}), ValueError, "A=B"),
    (dict(argv=["/bin/echo"], cwd="relative/dir"), ValueError, "cwd"),
    (dict(argv=["/bin/echo"], cwd=3), TypeError, "cwd"),
    (dict(argv=["/bin/cat"], stdin=b"\xff\xfe"), ValueError, "UTF-8"),
    (dict(argv=["/bin/cat"], stdin=3), TypeError, "stdin"),
    (dict(argv=["/bin/echo"], timeout=0), ValueError, "timeout"),
    (dict(argv=["/bin/echo"], retries=-1), ValueError, "retries"),
    (dict(argv=["/bin/echo"], queue=""), ValueError, "queue"),
    (dict(argv=["/bin/echo"], unique="a,b"), ValueError, "unique"),
])
def test_malformed_commands_are_refused_before_sending(client, stack, kwargs, error, words):
    before = sent_count(stack)
    with pytest.raises(error) as e:
        client.run(**kwargs)
    assert words in str(e.value)
    assert sent_count(stack) == before


def sent_count(stack):
    """Jobs the router accepted so far."""
    return cli_json(stack.admin, "status")["accepted"]
