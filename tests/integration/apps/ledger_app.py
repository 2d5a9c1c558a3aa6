"""Tasks for the integration tests, each writing what it does to a ledger file.

A worker started with ``celeriac -A ledger_app worker`` uses the module's ``app``, whose
broker, backend and limits come from ``CELERIAC_*`` environment variables. The tests
build their own producer-side App and call ``register`` on it, so both sides agree on
the task names.

The ledger is an append-only file named by ``LEDGER_PATH``: one JSON line per event,
written with a single ``write`` on an ``O_APPEND`` descriptor, so lines from many
processes and threads never interleave. ``start`` is written when a task begins (one
line per execution), ``done`` when a task that takes time has finished its work.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from celeriac import App, Task

LEDGER_ENV = "LEDGER_PATH"
TYPED_ENV = "LEDGER_TYPED"  # set: register ledger.typed too (ledger_typed, pydantic)
HANG_SECONDS = 60.0  # "forever" for a test; the test kills the process long before

_fds: dict[str, int] = {}
_fds_lock = threading.Lock()


def _ledger_fd() -> int:
    path = os.environ[LEDGER_ENV]
    with _fds_lock:
        if path not in _fds:
            _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return _fds[path]


def write(event: str, task: Task[..., Any], tag: Any = None) -> None:
    """Append one event about the running task to the ledger."""
    request = task.request
    line = json.dumps({
        "event": event, "id": request.id, "task": task.name, "tag": tag,
        "pid": os.getpid(), "t": time.time(), "eta": request.eta,
        "delivery": request.delivery_count, "priority": request.priority,
    })
    os.write(_ledger_fd(), line.encode() + b"\n")


def record(self: Task[..., Any], tag: str) -> str:
    write("start", self, tag)
    return tag


def add(self: Task[..., Any], x: int, y: int) -> int:
    write("start", self, [x, y])
    return x + y


async def async_add(self: Task[..., Any], x: int, y: int) -> int:
    write("start", self, [x, y])
    await asyncio.sleep(0.01)  # a real await: the task yields to the worker's loop
    return x + y


def sleepy(self: Task[..., Any], tag: str, seconds: float) -> str:
    write("start", self, tag)
    time.sleep(seconds)
    write("done", self, tag)
    return tag


def hang_once(self: Task[..., Any], tag: str) -> str:
    """Hangs the first time it runs (so a test can stop or kill it mid-task); quick after.

    "The first time" is read from the ledger, so it holds however the earlier run ended.
    """
    ran_before = _started_before(self.request.id)
    write("start", self, tag)
    if not ran_before:
        time.sleep(HANG_SECONDS)
    write("done", self, tag)
    return tag


def _started_before(task_id: str | None) -> bool:
    with open(os.environ[LEDGER_ENV], "rb") as ledger:
        return any(json.loads(line)["id"] == task_id and json.loads(line)["event"] == "start"
                   for line in ledger if line.endswith(b"\n"))


def flaky(self: Task[..., Any], tag: str, failures: int) -> str:
    """Fails with RuntimeError on its first ``failures`` attempts (autoretried)."""
    write("start", self, tag)
    if self.request.retries < failures:
        raise RuntimeError(f"attempt {self.request.retries + 1} of {tag} failed")
    return tag


def suicide(self: Task[..., Any], tag: str) -> None:
    """Kills the process running it, every time: a message that keeps killing workers."""
    write("start", self, tag)
    os.kill(os.getpid(), signal.SIGKILL)


def whoami(self: Task[..., Any], tag: str) -> int:
    write("start", self, tag)
    return os.getpid()


def nap_pid(self: Task[..., Any], tag: str, seconds: float) -> int:
    """Sleeps, then returns the pid that ran it: when two processes ran one task, the
    stored result says whose result won."""
    write("start", self, tag)
    time.sleep(seconds)
    write("done", self, tag)
    return os.getpid()


@dataclass(frozen=True)
class LedgerTasks:
    record: Task[..., str]
    add: Task[..., int]
    async_add: Task[..., int]
    sleepy: Task[..., str]
    hang_once: Task[..., str]
    hang_once_acks_early: Task[..., str]
    flaky: Task[..., str]
    suicide: Task[..., None]
    whoami: Task[..., int]
    nap_pid: Task[..., int]


def register(target: App) -> LedgerTasks:
    """Register the ledger tasks on ``target`` under fixed names ("ledger.<name>")."""

    def bound(fn: Any, name: str | None = None, **options: Any) -> Any:
        return target.task(bind=True, name=f"ledger.{name or fn.__name__}", **options)(fn)

    if os.environ.get(TYPED_ENV):
        from ledger_typed import register_typed

        register_typed(target)
    return LedgerTasks(
        record=bound(record), add=bound(add), async_add=bound(async_add),
        sleepy=bound(sleepy), hang_once=bound(hang_once),
        hang_once_acks_early=bound(hang_once, "hang_once_acks_early", acks_late=False),
        flaky=bound(flaky, autoretry_for=(RuntimeError,), max_retries=5,
                    default_retry_delay=0.2, retry_jitter=False),
        suicide=bound(suicide), whoami=bound(whoami), nap_pid=bound(nap_pid),
    )


app = App("ledger")
tasks = register(app)
