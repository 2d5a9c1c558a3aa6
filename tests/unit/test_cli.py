"""The client commands (call, result, queues, purge) on a SQLite file, and the demo.

The command line gets its app through ``-A cli_proj``, a module put in ``sys.modules``
whose App shares a SQLite file in ``tmp_path`` with the App the test inspects and the
worker thread runs. Separate App objects, as in real life: each command closes its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from celeriac import App, Reject
from celeriac.brokers.base import Outgoing, QueueStats
from celeriac.cli.common import safe_url
from celeriac.cli.main import cli
from celeriac.demo.workload import KINDS, apportion, plan
from celeriac.testing import ThreadedWorker

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def add(x: int, y: int) -> int:
    return x + y


def explode(message: str) -> None:
    raise ValueError(message)


def refuse() -> None:
    raise Reject("not wanted here")


def make_app(url: str) -> App:
    app = App("proj", broker=url)
    app.task(name="proj.add")(add)
    app.task(name="proj.explode")(explode)
    app.task(name="proj.refuse")(refuse)
    return app


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def app(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The test's own view of the store; the CLI loads another App on the same file."""
    module = types.ModuleType("cli_proj")
    module.app = make_app(url)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cli_proj", module)
    monkeypatch.delenv("CELERIAC_APP", raising=False)
    app = make_app(url)
    yield app
    app.close()


@pytest.fixture
def worker(url: str) -> Iterator[ThreadedWorker]:
    worker_app = make_app(url)
    with ThreadedWorker(worker_app, slots=2) as worker:
        yield worker
    worker_app.close()


def invoke(*args: str, input: str | None = None) -> Result:
    # Wide enough that rich tables do not wrap the text the tests look for.
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-A", "cli_proj", *args],
                                                    input=input, catch_exceptions=False)


def stats(app: App, queue: str = "celeriac") -> QueueStats:
    return app._run_sync(app.broker.queue_stats([queue]))[0]


# -- call --------------------------------------------------------------------------------


def test_call_sends_by_name_and_prints_the_task_id(app: App) -> None:
    result = invoke("call", "proj.add", "--args", "[2, 3]")

    assert result.exit_code == 0, result.output
    assert UUID.match(result.stdout.strip())
    assert stats(app) == QueueStats("celeriac", 1, 0, 0)


def test_call_applies_queue_countdown_and_priority(app: App) -> None:
    result = invoke("call", "proj.add", "-a", "[1]", "-k", '{"y": 2}', "--queue", "later",
                    "--countdown", "60", "--priority", "7")

    assert result.exit_code == 0, result.output
    assert stats(app, "later") == QueueStats("later", 0, 1, 0)


@pytest.mark.parametrize(("option", "value", "error"), [
    ("--args", "[1, 2", "is not valid JSON"),
    ("--args", '{"x": 1}', "is JSON, but not an array"),
    ("--kwargs", "[1]", "is JSON, but not an object"),
    ("--eta", "tomorrow", "is not an ISO 8601 date and time"),
    ("--priority", "256", "256 is not in the range 0<=x<=255"),
])
def test_call_rejects_bad_options_before_sending(app: App, option: str, value: str,
                                                 error: str) -> None:
    result = invoke("call", "proj.add", option, value)

    assert result.exit_code == 2
    assert error in result.output
    assert stats(app).ready == 0


def test_call_checks_arguments_of_a_known_task(app: App) -> None:
    result = invoke("call", "proj.add", "--args", "[1, 2, 3]")

    assert result.exit_code == 1
    assert "not sent: proj.add(x" in result.output
    assert "too many positional arguments" in result.output
    assert stats(app).ready == 0


# -- result ------------------------------------------------------------------------------


@pytest.mark.usefixtures("app", "worker")
def test_result_waits_and_shows_the_value() -> None:
    task_id = invoke("call", "proj.add", "--args", "[2, 3]").stdout.strip()

    result = invoke("result", task_id, "--timeout", "10")

    assert result.exit_code == 0, result.output
    assert re.search(r"state:\s+SUCCESS", result.output)
    assert re.search(r"result:\s+5$", result.output, re.MULTILINE)


@pytest.mark.usefixtures("app", "worker")
def test_result_shows_the_exception_and_remote_traceback() -> None:
    task_id = invoke("call", "proj.explode", "--args", '["boom"]').stdout.strip()

    result = invoke("result", task_id, "--wait")

    assert result.exit_code == 1, result.output  # scripts can tell a failure apart
    assert re.search(r"state:\s+FAILURE", result.output)
    assert "error:   builtins.ValueError: boom" in result.output
    assert "Traceback (most recent call last)" in result.output
    assert 'raise ValueError(message)' in result.output


@pytest.mark.usefixtures("app")
def test_result_of_an_unknown_or_queued_task_is_pending() -> None:
    task_id = invoke("call", "proj.add", "--args", "[1, 1]").stdout.strip()  # no worker

    shown = invoke("result", task_id)
    waited = invoke("result", task_id, "--timeout", "0.2")

    assert shown.exit_code == 3  # nothing stored under that id (yet)
    assert re.search(r"state:\s+PENDING", shown.output)
    assert waited.exit_code == 1
    assert f"task {task_id} did not finish within 0.2 s" in waited.output


# -- queues ------------------------------------------------------------------------------


def test_queues_shows_ready_scheduled_and_dead_letters(app: App) -> None:
    # Given a worker that ran three tasks, rejected one and dead-lettered a corrupt
    # message, and a task scheduled on another queue
    for _ in range(3):
        invoke("call", "proj.add", "--args", "[1, 2]")
    invoke("call", "proj.add", "--args", "[1, 2]", "--queue", "io", "--countdown", "60")
    dead_id = invoke("call", "proj.refuse").stdout.strip()
    app._run_sync(app.publish([Outgoing("corrupt-1", "celeriac", b"not a message")]))
    drain = make_app(app.conf.effective_broker_url)
    with ThreadedWorker(drain):
        app.send_task("proj.add", (0, 0)).get(timeout=10)
    drain.close()

    # When the queues are listed
    result = invoke("queues")

    # Then every count is there
    assert result.exit_code == 0, result.output
    assert re.search(r"celeriac\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*2", result.output), result.output
    assert re.search(r"io\s*│\s*0\s*│\s*1\s*│\s*0\s*│\s*0", result.output), result.output
    dead = invoke("queues", "--dead")
    assert dead.exit_code == 0, dead.output
    assert "undecodable message" in dead.output
    assert "rejected by the task: not wanted here" in dead.output
    assert dead_id[:8] in dead.output


@pytest.mark.usefixtures("app")
def test_queues_shows_the_apps_queues_even_when_empty() -> None:
    result = invoke("queues")

    assert result.exit_code == 0
    assert re.search(r"celeriac\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0", result.output), \
        result.output


def test_queues_json_for_scripts(app: App) -> None:
    invoke("call", "proj.add", "--args", "[1, 2]")

    result = invoke("queues", "--json")

    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert 0 <= row.pop("oldest_age") < 60  # seconds the message has waited
    assert row == {"queue": "celeriac", "ready": 1, "scheduled": 0, "in_flight": 0,
                   "dead_letters": 0}


def dead_letter_three(app: App) -> list[str]:
    """Three dead letters: two of proj.refuse, one of proj.nope (unknown)."""
    ids = [app.send_task("proj.refuse").id for _ in range(2)]
    ids.append(app.send_task("proj.nope").id)
    drain = make_app(app.conf.effective_broker_url)
    with ThreadedWorker(drain):
        for _ in range(200):
            if len(app._run_sync(app.broker.dead_letters(10))) == 3:
                break
            time.sleep(0.05)
    drain.close()
    return ids


def test_dead_letters_of_one_task_are_requeued_to_their_queue(app: App) -> None:
    refused_1, refused_2, unknown = dead_letter_three(app)

    result = invoke("queues", "--dead", "--requeue", "--task", "proj.refuse", "-f")

    assert result.exit_code == 0, result.output
    assert "Requeued 2 dead letters to their queues." in result.output
    assert [d.id for d in app._run_sync(app.broker.dead_letters(10))] == [unknown]
    # Back in the queue with their ids, due a second later (dead_letters.REQUEUE_DELAY:
    # the old letters are removed before a copy can die again under the same id)
    assert stats(app).scheduled == 2
    got = app._run_sync(app.broker.fetch(["celeriac"], 10, 3.0))
    got += app._run_sync(app.broker.fetch(["celeriac"], 10, 0.5 if len(got) < 2 else 0))
    assert {d.id for d in got} == {refused_1, refused_2}


def test_chosen_dead_letters_are_purged_after_asking(app: App) -> None:
    refused_1, refused_2, unknown = dead_letter_three(app)

    refused = invoke("queues", "--dead", "--purge", "--id", unknown, input="n\n")
    assert refused.exit_code == 1
    assert len(app._run_sync(app.broker.dead_letters(10))) == 3

    result = invoke("queues", "--dead", "--purge", "--id", unknown, input="y\n")
    assert result.exit_code == 0, result.output
    assert "Deleted 1 dead letter." in result.output
    assert {d.id for d in app._run_sync(app.broker.dead_letters(10))} == {refused_1, refused_2}
    listed = json.loads(invoke("queues", "--dead", "--json").stdout)
    assert {letter["task"] for letter in listed} == {"proj.refuse"}


@pytest.mark.usefixtures("app")
@pytest.mark.parametrize(("args", "error"), [
    (["--requeue", "--all"], "add --dead"),
    (["--dead", "--requeue"], "one of --id, --task or --all"),
    (["--dead", "--requeue", "--purge", "--all"], "--requeue or --purge, not both"),
])
def test_dead_letter_actions_need_a_clear_choice(args: list[str], error: str) -> None:
    result = invoke("queues", *args)
    assert result.exit_code == 2
    assert error in result.output


def test_client_commands_without_app_use_the_embedded_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("CELERIAC_APP", "CELERIAC_BROKER_URL", "CELERIAC_RESULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)

    sent = CliRunner().invoke(cli, ["call", "anything.at.all"])
    listed = CliRunner().invoke(cli, ["queues"])

    assert sent.exit_code == 0, sent.output
    assert "no -A given; using the broker at sqlite:///celeriac.db" in sent.stderr
    assert re.search(r"celeriac\s*│\s*1\s*│", listed.stdout), listed.output
    assert (tmp_path / "celeriac.db").exists()


# -- purge -------------------------------------------------------------------------------


def test_purge_asks_first_and_keeps_everything_when_refused(app: App) -> None:
    invoke("call", "proj.add", "--args", "[1, 2]")

    result = invoke("purge", input="n\n")

    assert result.exit_code == 1
    assert "Delete 1 waiting message from 1 queue (celeriac)" in result.output
    assert "Aborted" in result.output
    assert stats(app).ready == 1


def test_purge_deletes_waiting_messages_when_confirmed(app: App) -> None:
    for _ in range(3):
        invoke("call", "proj.add", "--args", "[1, 2]")
    invoke("call", "proj.add", "--args", "[1, 2]", "--queue", "io", "--countdown", "60")

    result = invoke("purge", input="y\n")

    assert result.exit_code == 0, result.output
    assert "Purged 4 messages from 2 queues (celeriac, io)." in result.output
    assert stats(app) == QueueStats("celeriac", 0, 0, 0)
    assert stats(app, "io") == QueueStats("io", 0, 0, 0)


def test_purge_force_and_named_queues(app: App) -> None:
    invoke("call", "proj.add", "--args", "[1, 2]")
    invoke("call", "proj.add", "--args", "[1, 2]", "--queue", "io")

    result = invoke("purge", "-f", "-Q", "io")

    assert result.exit_code == 0, result.output
    assert "Delete" not in result.output
    assert "Purged 1 message from 1 queue (io)." in result.output
    assert stats(app).ready == 1


@pytest.mark.usefixtures("app")
def test_purge_with_nothing_waiting() -> None:
    result = invoke("purge")

    assert result.exit_code == 0
    assert "Nothing to purge: there are no queues yet." in result.output


def test_printed_broker_urls_hide_passwords() -> None:
    assert safe_url("redis://:s3cret@db.example:6379/0") == "redis://:***@db.example:6379/0"
    assert safe_url("amqp://ann:s3cret@mq/vhost") == "amqp://ann:***@mq/vhost"
    assert safe_url("sqlite:///celeriac.db") == "sqlite:///celeriac.db"


# -- demo --------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 7, 300, 10_000])
def test_demo_workload_has_exactly_the_asked_number_of_calls(total: int) -> None:
    counts = apportion(total)

    assert sum(counts) == total
    assert len(plan(total)) == total
    if total >= 100:  # every kind of task is in it
        assert all(counts)
    assert len(counts) == len(KINDS)



def test_demo_runs_a_real_worker_and_accounts_for_every_task(tmp_path: Path) -> None:
    # A subprocess, as a user runs it: it starts its own supervised worker.
    done = subprocess.run([sys.executable, "-m", "celeriac", "demo", "--tasks", "300"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=90)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "All 300 tasks accounted for; none lost." in done.stdout
    assert "Worker stopped by SIGTERM (warm shutdown), exit code 0." in done.stdout
    assert re.search(r"total\s+300\s+294\s+3\s+18\s+3\s", done.stdout), done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the working directory


# -- mistakes ----------------------------------------------------------------------------


def celeriac(*args: str, cwd: Path, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """The real command, in a process of its own: what a user sees in a terminal."""
    return subprocess.run([sys.executable, "-m", "celeriac", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("args", "module", "error"), [
    (["-A", "no_such_module", "worker"], None, "cannot import app module 'no_such_module'"),
    (["-A", "bad_setting", "queues"], "from celeriac import App\n"
     "app = App('x', broker='sqlite:///x.db', task_serialiser='json')\n",
     'unknown setting "task_serialiser" (did you mean "task_serializer"?)'),
    (["-A", "bad_scheme", "queues"], "from celeriac import App\n"
     "app = App('x', broker='reddis://:s3cret@localhost/0')\n",
     "no broker for URL 'reddis://:***@localhost/0' (did you mean \"redis\"?)"),
])
def test_a_users_mistake_is_one_line_and_exit_status_2(
        tmp_path: Path, args: list[str], module: str | None, error: str) -> None:
    if module is not None:
        (tmp_path / f"{args[1]}.py").write_text(module)

    run = celeriac(*args, cwd=tmp_path)

    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"Error: {error}")
    assert "s3cret" not in run.stderr


def test_traceback_shows_the_traceback_of_a_mistake(tmp_path: Path) -> None:
    run = celeriac("--traceback", "-A", "no_such_module", "worker", cwd=tmp_path)

    assert run.returncode == 1
    assert "Traceback (most recent call last)" in run.stderr
    assert "ConfigurationError: cannot import app module 'no_such_module'" in run.stderr


def test_broker_option_wins_over_the_apps_own_broker(app: App, url: str,
                                                     tmp_path: Path) -> None:
    # Given an app module that names another (empty) store
    (tmp_path / "elsewhere.py").write_text(
        "from celeriac import App\n"
        f"app = App('x', broker='sqlite:///{tmp_path / 'other.db'}')\n")
    # When a task is sent with -b naming the test's store
    run = celeriac("-A", "elsewhere", "-b", url, "call", "proj.add", "--args", "[1, 2]",
                   cwd=tmp_path)
    # Then it went to the store -b named
    assert run.returncode == 0, run.stderr
    assert stats(app).ready == 1


@pytest.mark.usefixtures("app", "worker")
def test_an_unregistered_task_is_logged_and_result_says_it_was_dead_lettered(
        caplog: pytest.LogCaptureFixture, app: App) -> None:
    # Given a task sent under a name no worker knows
    task_id = invoke("call", "proj.nope").stdout.strip()

    # Then the worker says so at ERROR, in Celery's words, with the likely causes
    wait = app._run_sync
    for _ in range(100):
        if wait(app.broker.dead_letters(10)):
            break
        time.sleep(0.05)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("Received unregistered task of type 'proj.nope'" in e and "include" in e
               for e in errors), errors
    # And `celeriac result` says it never ran, and why, with a failing exit status
    result = invoke("result", task_id)
    assert result.exit_code == 1, result.output
    assert "DEAD-LETTERED" in result.output
    assert "unknown task" in result.output
