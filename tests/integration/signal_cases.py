"""Celery's signals on real worker processes, run on every broker (SQLite, Redis, RabbitMQ).

The worker runs ``celeriac -A signals_app worker -P prefork -c 2``, whose app connects a
receiver to every signal a worker sends; the test process connects the publish signals.
Every call is one JSON line (apps/signals_app.py). Tasks that succeed, fail, retry once
then succeed, are rejected (``Reject``), revoked before running, expire, are revoked
with ``terminate=True`` while running, and a message for a task nobody knows go through
the worker; then it stops warmly. Each signal must
have fired the right number of times, in the process Celery fires it in, with the
arguments Celery documents (docs/userguide/signals.rst), by name and by value.

Where celeriac differs from Celery on purpose, the assertion says so: the consumer lives
in each worker process (not the supervisor), so ``worker_ready``, ``task_received`` and
``task_revoked`` fire in the processes; a message for an unknown task fires
``task_rejected`` (Celery's ``task_unknown`` is not provided).
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from signals_app import (
    OWN_LOGGING_ENV,
    PUBLISH_SIGNALS,
    RECORD_ENV,
    SignalTasks,
    connect,
    disconnect,
    register,
)
from worker_harness import Deployment, WorkerProcess, unique_name, wait_until

TIMEOUT = 20.0

# The arguments Celery documents for each signal (besides sender and signal).
DOCUMENTED = {
    "before_task_publish": ["body", "declare", "exchange", "headers", "properties",
                            "retry_policy", "routing_key"],
    "after_task_publish": ["body", "exchange", "headers", "routing_key"],
    "task_received": ["request"],
    "task_prerun": ["args", "kwargs", "task", "task_id"],
    "task_postrun": ["args", "kwargs", "retval", "state", "task", "task_id"],
    "task_success": ["result", "runtime"],
    "task_failure": ["args", "einfo", "exception", "kwargs", "task_id", "traceback"],
    "task_retry": ["einfo", "reason", "request"],
    "task_revoked": ["expired", "request", "signum", "terminated"],
    "task_rejected": ["exc", "message"],
    "worker_init": [],
    "worker_ready": [],
    "worker_process_init": [],
    "worker_process_shutdown": ["exitcode", "pid"],
    "worker_shutdown": [],
    "after_setup_logger": ["colorize", "format", "logfile", "logger", "loglevel"],
    "setup_logging": ["colorize", "format", "logfile", "loglevel"],
}


class SignalsWorker(WorkerProcess):
    app_module = "signals_app"


def start_worker(world: Deployment, record: Path, *args: str,
                 own_logging: bool = False) -> WorkerProcess:
    env = world.env()
    env[RECORD_ENV] = str(record)
    if own_logging:
        env[OWN_LOGGING_ENV] = "1"
    worker = SignalsWorker(unique_name(["-P", "prefork", "-c", "2", "-l", "INFO", *args]),
                           env, world.root, world.root / f"worker-{len(world.workers)}.log")
    world.workers.append(worker)
    return worker


def read(record: Path) -> list[dict[str, Any]]:
    lines = record.read_bytes().split(b"\n")[:-1]  # a line being written has no newline
    return [json.loads(line) for line in lines]


def of(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["signal"] == name]


def one(lines: list[dict[str, Any]], name: str, **match: Any) -> dict[str, Any]:
    found = [line for line in of(lines, name)
             if all(line.get(key) == value for key, value in match.items())]
    assert len(found) == 1, f"{name} {match}: {found}"
    return found[0]


def every_signal_fires_with_celerys_arguments(world: Deployment) -> None:
    record = world.root / "signals.jsonl"
    record.touch()
    tasks: SignalTasks = register(world.app)
    past = datetime.now(UTC) - timedelta(seconds=1)
    # Given tasks sent by a producer that listens to the publish signals
    connect(str(record), PUBLISH_SIGNALS)
    try:
        added = tasks.add.delay(2, 3)
        failed = tasks.boom.delay("bad input")
        retried = tasks.flaky.delay()
        refused = tasks.refuse.delay()
        unknown = world.app.send_task("signals.missing", args=(1,))
        revoked = tasks.add.delay(5, 5)
        world.app.control.revoke(revoked.id)
        expired = tasks.add.apply_async((7, 7), expires=past)
        napping = tasks.nap.delay(30.0)
    finally:
        disconnect()
    sent = [added, failed, retried, refused, unknown, revoked, expired, napping]

    # When a prefork worker of two processes runs them, then stops warmly
    worker = start_worker(world, record)
    # (and a running task is revoked with terminate=True: what its process prefetched
    # behind it runs after)
    wait_until(lambda: any(line["task_id"] == napping.id
                           for line in of(read(record), "(task ran)")), TIMEOUT, "the nap")
    world.app.control.revoke(napping.id, terminate=True)
    assert added.get(timeout=TIMEOUT) == 5
    with pytest.raises(ValueError, match="bad input"):
        failed.get(timeout=TIMEOUT)
    assert retried.get(timeout=TIMEOUT) == "second attempt"

    def all_heard() -> bool:
        lines = read(record)
        return (len(of(lines, "task_postrun")) >= 5 and len(of(lines, "task_revoked")) >= 3
                and len(of(lines, "task_rejected")) >= 1)

    wait_until(all_heard, TIMEOUT, "every task's signals")
    worker.wait_ready(2)  # both processes consume (one may have had nothing to do)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    lines = read(record)
    check_counts_and_processes(lines, worker.pid)
    check_publish_signals(lines, sent)
    check_task_signals(lines, added.id, failed.id, retried.id, refused.id, napping.id)
    check_dead_letters_and_revocations(lines, unknown.id, revoked.id, expired.id, napping.id)
    check_worker_signals(lines, worker.pid)


def check_counts_and_processes(lines: list[dict[str, Any]], supervisor: int) -> None:
    """Each signal the right number of times, with every argument Celery documents (and
    only those), in the process Celery sends it in."""
    counts = Counter(line["signal"] for line in lines)
    assert counts == {
        "before_task_publish": 8, "after_task_publish": 8,  # the producer's eight sends
        # (a retry's message is published by the worker with its ack, without them)
        "task_received": 6, "task_prerun": 6, "(task ran)": 6,
        "task_postrun": 5,  # not for the terminated task: it never returned (as Celery)
        "task_success": 2, "task_failure": 1, "task_retry": 1,
        "task_revoked": 3, "task_rejected": 1,
        "worker_init": 1, "worker_shutdown": 1,
        "worker_process_init": 2, "worker_process_shutdown": 2,
        "worker_ready": 2,  # one consumer per worker process
        "after_setup_logger": 3,  # the supervisor and each process set logging up
    }, counts
    for line in lines:
        if line["signal"] in DOCUMENTED:
            assert line["arguments"] == DOCUMENTED[line["signal"]], line
    children = {line["process"] for line in of(lines, "worker_process_init")}
    assert len(children) == 2
    assert supervisor not in children
    producer = {line["process"] for line in lines if line["signal"] in PUBLISH_SIGNALS}
    assert len(producer) == 1
    assert not producer & (children | {supervisor})
    where = {name: {line["process"] for line in of(lines, name)} for name in counts}
    for name in ("worker_init", "worker_shutdown"):
        assert where[name] == {supervisor}, name
    for name in ("worker_process_shutdown", "worker_ready"):
        assert where[name] == children, name
    for name in ("task_received", "task_prerun", "task_postrun", "task_success",
                 "task_failure", "task_retry", "task_revoked", "task_rejected"):
        assert where[name] <= children, name
    assert where["after_setup_logger"] == children | {supervisor}


def check_publish_signals(lines: list[dict[str, Any]], sent: list[Any]) -> None:
    """Sender is the task's name; the body carries id, task, args (the docs' example
    reads ``body["id"]`` when the headers have no ``task``); routed to the queue."""
    for name in PUBLISH_SIGNALS:
        heard = of(lines, name)
        assert [line["body"]["id"] for line in heard] == [result.id for result in sent]
        for line in heard:
            assert line["sender"] == line["body"]["task"]
            assert line["routing_key"] == "celeriac"
            assert isinstance(line["headers"], dict)
            assert "task" not in line["headers"]
    before = of(lines, "before_task_publish")
    assert [line["sender"] for line in before] == [
        "signals.add", "signals.boom", "signals.flaky", "signals.refuse", "signals.missing",
        "signals.add", "signals.add", "signals.nap"]
    assert before[0]["body"]["args"] == [2, 3]
    assert before[0]["properties"]["correlation_id"] == sent[0].id
    assert before[0]["declare"] == []
    assert before[0]["retry_policy"] is None


def check_task_signals(lines: list[dict[str, Any]], added: str, failed: str, retried: str,
                       refused: str, terminated: str) -> None:
    """prerun/postrun around each run, in the task's own thread; success, failure and
    retry with the task as sender and Celery's arguments."""
    def runs(name: str) -> dict[str, list[dict[str, Any]]]:
        """Lines by task id, in the order written (two processes interleave theirs)."""
        by_id: dict[str, list[dict[str, Any]]] = {}
        for line in of(lines, name):
            by_id.setdefault(line["task_id"], []).append(line)
        return by_id

    ran = runs("(task ran)")
    for name in ("task_prerun", "task_postrun"):
        heard = runs(name)
        expected = ran.keys() - ({terminated} if name == "task_postrun" else set())
        assert heard.keys() == expected, name
        for task_id, calls in heard.items():
            assert [(c["process"], c["thread"]) for c in calls] == [
                (r["process"], r["thread"]) for r in ran[task_id]], name
            for line in calls:
                assert line["sender"] == line["task"] == {"task": line["sender"]["task"]}
    states = {(line["task_id"], line["state"]) for line in of(lines, "task_postrun")}
    assert states == {(added, "SUCCESS"), (failed, "FAILURE"), (retried, "RETRY"),
                      (retried, "SUCCESS"), (refused, "REJECTED")}
    prerun = one(lines, "task_prerun", task_id=added)
    assert (prerun["args"], prerun["kwargs"]) == ([2, 3], {})
    assert one(lines, "task_postrun", task_id=added)["retval"] == 5
    assert one(lines, "task_postrun", task_id=failed)["retval"] == {
        "exception": "ValueError", "message": "bad input"}

    success = {line["result"]: line for line in of(lines, "task_success")}
    assert set(success) == {5, "second attempt"}
    assert success[5]["sender"] == {"task": "signals.add"}
    assert all(isinstance(line["runtime"], float) and 0 <= line["runtime"] < 5
               for line in success.values())

    failure = one(lines, "task_failure")
    assert failure["sender"] == {"task": "signals.boom"}
    assert failure["task_id"] == failed
    assert failure["exception"] == {"exception": "ValueError", "message": "bad input"}
    assert (failure["args"], failure["kwargs"]) == (["bad input"], {})
    assert "traceback" in failure["traceback"]  # a traceback object
    einfo = failure["einfo"]  # billiard's ExceptionInfo, as Celery's receivers read it
    assert "ValueError: bad input" in einfo["einfo"]
    assert einfo["traceback"]
    assert einfo["tb"]
    assert einfo["type"] == "ValueError"
    assert einfo["exception"] == failure["exception"]

    retry = one(lines, "task_retry")
    assert retry["sender"] == {"task": "signals.flaky"}
    assert retry["request"]["request"] == retried
    assert retry["request"]["retries"] == 0
    assert retry["reason"] == {"exception": "KeyError", "message": "'first attempt'"}
    assert "KeyError" in retry["einfo"]["einfo"]
    assert retry["einfo"]["exception"] == retry["reason"]

    received = [line["request"] for line in of(lines, "task_received")]
    assert sorted((r["request"], r["retries"]) for r in received) == sorted(
        [(added, 0), (failed, 0), (retried, 0), (retried, 1), (refused, 0),
         (terminated, 0)])
    assert all(line["sender"] == {"type": "Consumer"} for line in of(lines, "task_received"))


def check_dead_letters_and_revocations(lines: list[dict[str, Any]], unknown: str,
                                       revoked: str, expired: str, terminated: str) -> None:
    """An unknown task is rejected (the raw message and why); revoked, expired and
    terminated ones are revoked with the task as sender, ``terminated`` and ``expired``
    saying which (``signum`` None: TERM is to be assumed, Celery's docs say)."""
    rejected = one(lines, "task_rejected")
    assert rejected["sender"] == {"type": "Consumer"}
    assert rejected["message"]["queue"] == "celeriac"
    assert "unknown task" in rejected["exc"]
    assert "signals.missing" in rejected["exc"]
    for task_id, was_expired in ((revoked, False), (expired, True)):
        [line] = [line for line in of(lines, "task_revoked")
                  if line["request"]["request"] == task_id]
        assert line["sender"] == {"task": "signals.add"}
        assert (line["terminated"], line["signum"], line["expired"]) == (
            False, None, was_expired)
    [line] = [line for line in of(lines, "task_revoked")
              if line["request"]["request"] == terminated]
    assert line["sender"] == {"task": "signals.nap"}
    assert (line["terminated"], line["signum"], line["expired"]) == (True, None, False)
    ran_ids = {line["task_id"] for line in of(lines, "(task ran)")}
    assert not ran_ids & {unknown, revoked, expired}


def check_worker_signals(lines: list[dict[str, Any]], supervisor: int) -> None:
    """worker_process_shutdown gets the process's own pid and its exit code (0: warm);
    after_setup_logger the root logger and the level as a number; worker_ready comes
    after worker_process_init, worker_shutdown last."""
    for line in of(lines, "worker_process_shutdown"):
        assert (line["pid"], line["exitcode"]) == (line["process"], 0)
    for line in of(lines, "after_setup_logger"):
        assert line["logger"] == {"logger": "root"}
        assert line["loglevel"] == 20
        assert line["logfile"] is None
        assert line["colorize"] is False
        assert isinstance(line["format"], str)
        assert "%(message)s" in line["format"]
    names = [line["signal"] for line in lines]
    assert names[-1] == "worker_shutdown"
    assert names.index("worker_init") < names.index("worker_process_init")
    for child in {line["process"] for line in of(lines, "worker_process_init")}:
        mine = [line["signal"] for line in lines if line["process"] == child]
        assert mine.index("worker_process_init") < mine.index("worker_ready")
        assert mine[-1] == "worker_process_shutdown"
    assert supervisor not in {line["process"] for line in of(lines, "worker_ready")}


def setup_logging_takes_logging_over(world: Deployment) -> None:
    """With a ``setup_logging`` receiver, the supervisor and each process call it with
    Celery's arguments (the level as a number) instead of setting logging up, so
    ``after_setup_logger`` does not fire; the worker logs through the app's handler."""
    record = world.root / "signals.jsonl"
    record.touch()
    worker = start_worker(world, record, own_logging=True)
    worker.wait_ready(2)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    lines = read(record)
    children = {line["process"] for line in of(lines, "worker_process_init")}
    heard = of(lines, "setup_logging")
    assert {line["process"] for line in heard} == children | {worker.pid}
    assert len(heard) == 3
    for line in heard:
        assert line["arguments"] == DOCUMENTED["setup_logging"]
        assert line["sender"] is None
        assert (line["loglevel"], line["logfile"], line["colorize"]) == (20, None, False)
        assert isinstance(line["format"], str)
    assert of(lines, "after_setup_logger") == []
    log = worker.log()
    assert "OWN worker-0" in log, log[-2000:]
    assert "OWN worker-1" in log, log[-2000:]
