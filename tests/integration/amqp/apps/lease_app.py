"""The AMQP ledger tasks (``amqp_ledger_app``) and one more for the lease tests.

``nap_pid`` sleeps, then returns the pid of the process that ran it: when two processes
ran one task, the stored result says whose result won.
"""

from __future__ import annotations

import os
import time
from typing import Any

from amqp_ledger_app import app, refuse_task, tasks  # noqa: F401 (the -A module's app)
from ledger_app import write

from celeriac import App, Task


def nap_pid(self: Task[..., Any], tag: str, seconds: float) -> int:
    write("start", self, tag)
    time.sleep(seconds)
    write("done", self, tag)
    return os.getpid()


def register_nap(target: App) -> Task[..., int]:
    """Register ``ledger.nap_pid`` on ``target``."""
    task: Task[..., int] = target.task(bind=True, name="ledger.nap_pid")(nap_pid)
    return task


nap = register_nap(app)
