"""Structured logs: ``--log-format json`` (and ``worker_log_format = "json"``) gives one
JSON object per line with the task's fields; ``--logfile`` writes there instead of
stderr; the ``setup_logging`` signal is told the log file."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

from worker_harness import WorkerProcess, wait_until

from celeriac import App


class JsonAppWorker(WorkerProcess):
    app_module = "json_logging"


TASKS = """
    import logging
    from celeriac import App
    app = App("jl", broker="sqlite:///{db}"{settings})

    @app.task(name="jl.chatty")
    def chatty(n):
        logging.getLogger("jl.tasks").warning("hello %s from the task", n)
        return n

    @app.task(name="jl.broken")
    def broken():
        raise ValueError("no luck")
"""


def start(tmp_path: Path, args: list[str], settings: str = "") -> WorkerProcess:
    (tmp_path / "json_logging.py").write_text(textwrap.dedent(TASKS.format(
        db=tmp_path / "b.db", settings=settings)).lstrip())
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    return JsonAppWorker(["-c", "1", "-n", "jl@node", *args], env, tmp_path,
                         tmp_path / "worker.log")


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_tasks(tmp_path: Path) -> tuple[str, str]:
    producer = App("jl", broker=f"sqlite:///{tmp_path / 'b.db'}")
    try:
        good = producer.send_task("jl.chatty", args=(7,))
        bad = producer.send_task("jl.broken")
        assert good.get(timeout=20) == 7
        bad.get(timeout=20, propagate=False)
        return good.id, bad.id
    finally:
        producer.close()


def stop(worker: WorkerProcess) -> None:
    worker.signal(signal.SIGTERM)
    worker.wait(30)
    worker.kill_all()


def test_log_format_json_gives_one_object_per_line_with_the_task_fields(
        tmp_path: Path) -> None:
    worker = start(tmp_path, ["--log-format", "json"])
    try:
        wait_until(lambda: " ready: consuming " in worker.log(), 30, "a ready worker")
        good, bad = run_tasks(tmp_path)
        wait_until(lambda: f"jl.broken[{bad}] failed" in worker.log(), 10, "the failure line")
    finally:
        stop(worker)
    # Every line is a JSON object with the common fields (the banner too)
    records = lines_of(worker.log())
    for record in records:
        assert {"timestamp", "level", "logger", "process", "pid", "message"} <= record.keys()
        assert record["timestamp"].endswith("Z")
    # The worker's own line about the task carries its fields
    [done] = [r for r in records if r.get("task_id") == good and r["logger"] == "celeriac.worker"]
    assert done["message"].startswith(f"Task jl.chatty[{good}] succeeded in")
    assert (done["task_name"], done["queue"], done["state"], done["retries"]) == (
        "jl.chatty", "celeriac", "SUCCESS", 0)
    assert isinstance(done["runtime"], float)
    assert done["worker"] == "jl@node/0"
    # What the task's own code logged carries them too
    [said] = [r for r in records if r["logger"] == "jl.tasks"]
    assert said["message"] == "hello 7 from the task"
    assert (said["task_id"], said["task_name"], said["queue"], said["worker"]) == (
        good, "jl.chatty", "celeriac", "jl@node/0")
    assert said["level"] == "WARNING"
    # A failure: its state, and the traceback in one field of the one line
    [failed] = [r for r in records if r.get("task_id") == bad and r["level"] == "ERROR"]
    assert failed["state"] == "FAILURE"
    assert "ValueError: no luck" in failed["exc_info"]


def test_the_json_setting_and_logfile_write_json_to_the_file(tmp_path: Path) -> None:
    logfile = tmp_path / "logs" / "%n-%i.log"
    (tmp_path / "logs").mkdir()
    worker = start(tmp_path, ["--logfile", str(logfile)], settings=', worker_log_format="json"')
    try:
        # %n the host's name, %i the process index (0 in the supervisor and process 0)
        written = tmp_path / "logs" / f"{os.uname().nodename.split('.')[0]}-0.log"
        wait_until(lambda: written.exists() and " ready: consuming " in written.read_text(),
                   30, "the ready line in the log file")
        good, _ = run_tasks(tmp_path)
        wait_until(lambda: good in written.read_text(), 10, "the task's lines in the file")
    finally:
        stop(worker)
    assert worker.log().strip() == ""  # nothing on stderr
    records = lines_of(written.read_text())
    assert any(r.get("task_id") == good and r.get("state") == "SUCCESS" for r in records)
    assert {r["process"] for r in records} >= {"MainProcess", "worker-0"}


def test_text_overrides_the_json_setting(tmp_path: Path) -> None:
    worker = start(tmp_path, ["--log-format", "text"], settings=', worker_log_format="json"')
    try:
        wait_until(lambda: " ready: consuming " in worker.log(), 30, "a ready worker")
    finally:
        stop(worker)
    assert "INFO/worker-0] celeriac.worker: jl@node/0 ready: consuming" in worker.log()


def test_setup_logging_is_told_the_logfile(tmp_path: Path) -> None:
    seen = tmp_path / "seen.txt"
    settings = f"""

    from celeriac import signals

    @signals.setup_logging.connect
    def own(loglevel=None, logfile=None, format=None, **kwargs):
        with open({str(seen)!r}, "a") as out:
            out.write(f"{{logfile}} {{format}}\\n")
    """
    (tmp_path / "json_logging.py").write_text(
        textwrap.dedent(TASKS.format(db=tmp_path / "b.db", settings="")).lstrip()
        + textwrap.dedent(settings))
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("CELERIAC_", "CELERY_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
    worker = JsonAppWorker(["-c", "1", "--log-format", "json", "--logfile",
                            str(tmp_path / "w%I.log")], env, tmp_path, tmp_path / "worker.log")
    try:
        wait_until(lambda: seen.exists() and len(seen.read_text().splitlines()) == 2, 30,
                   "setup_logging in the supervisor and the process")
    finally:
        stop(worker)
    # The supervisor's file has no index, the process's has its own; the format says json
    assert sorted(seen.read_text().splitlines()) == [
        f"{tmp_path / 'w-0.log'} json", f"{tmp_path / 'w.log'} json"]
