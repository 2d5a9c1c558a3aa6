"""The ledger tasks (``ledger_app``) and the few more the AMQP tests need.

A worker started with ``celeriac -A amqp_ledger_app worker`` uses this module's ``app``;
broker, backend and limits come from ``CELERIAC_*`` environment variables.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from ledger_app import register, write

from celeriac import App, Task
from celeriac.errors import Reject


def refuse(self: Task[..., Any], tag: str) -> None:
    """Dead-letters its own message on purpose (``Reject``)."""
    write("start", self, tag)
    raise Reject(f"{tag} refused")


def kill_until_fixed(self: Task[..., Any], tag: str, fix: str) -> str:
    """Kills the process running it until the file ``fix`` exists (the bug is fixed)."""
    write("start", self, tag)
    if not Path(fix).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return tag


def register_more(target: App) -> Task[..., None]:
    """Register the extra tasks under fixed names; returns ``ledger.refuse``."""
    refused: Task[..., None] = target.task(bind=True, name="ledger.refuse")(refuse)
    target.task(bind=True, name="ledger.kill_until_fixed")(kill_until_fixed)
    return refused


app = App("ledger")
tasks = register(app)
refuse_task = register_more(app)
