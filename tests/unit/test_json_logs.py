"""JSON log lines and --logfile paths, without a worker (the worker's are in
tests/integration/test_worker_json_logs.py)."""

from __future__ import annotations

import json
import logging
import socket

from celeriac import App
from celeriac.logs import JsonFormatter, TaskContext, task_fields
from celeriac.task import Request, current_request
from celeriac.worker.options import logfile_path


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.getLogger("t").makeRecord("t", logging.INFO, __file__, 1, message, (),
                                             None, extra=extra)
    TaskContext().filter(made)
    return made


def test_a_plain_line_has_the_common_fields_only() -> None:
    line = json.loads(JsonFormatter("w@h/0").format(record("hello")))
    assert set(line) == {"timestamp", "level", "logger", "process", "pid", "message"}
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "t", "hello")


def test_a_worker_line_about_a_task_carries_its_fields_and_the_worker() -> None:
    formatter = JsonFormatter("w@h/0")  # (task fields are gathered once one exists)
    extra = task_fields("id-1", "proj.add", "celeriac", "SUCCESS", 0.25, 2)
    assert extra is not None
    line = json.loads(formatter.format(record("done", **extra)))
    assert {key: line[key] for key in ("task_id", "task_name", "queue", "state", "runtime",
                                       "retries", "worker")} == {
        "task_id": "id-1", "task_name": "proj.add", "queue": "celeriac", "state": "SUCCESS",
        "runtime": 0.25, "retries": 2, "worker": "w@h/0"}


def test_what_task_code_logs_gets_the_fields_of_its_request() -> None:
    token = current_request.set(Request(id="id-2", task="proj.mul", queue="io", retries=1,
                                        hostname="w@h/3"))
    try:
        line = json.loads(JsonFormatter("w@h/0").format(record("working")))
    finally:
        current_request.reset(token)
    assert (line["task_id"], line["task_name"], line["queue"], line["retries"],
            line["worker"], line["state"]) == ("id-2", "proj.mul", "io", 1, "w@h/3", "STARTED")


def test_a_traceback_is_one_field_of_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "failed",
                                                 (), __import__("sys").exc_info())
    text = JsonFormatter().format(made)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exc_info"]


def test_logfile_expansions_as_celery() -> None:
    host = socket.gethostname()
    assert logfile_path(None, "w@h") is None
    assert logfile_path("/l/%p.log", "w@h") == "/l/w@h.log"
    assert logfile_path("/l/%n%I.log", "w@h") == f"/l/{host.partition('.')[0]}.log"
    assert logfile_path("/l/%n%I.log", "w@h", 2) == f"/l/{host.partition('.')[0]}-2.log"
    assert logfile_path("/l/w-%i.log", "w@h") == "/l/w-0.log"


def test_worker_log_format_accepts_json() -> None:
    assert App("t", broker="memory://", worker_log_format="json").conf.worker_log_format \
        == "json"
