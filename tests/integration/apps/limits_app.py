"""Tasks for the time-limit and revoke tests: the ledger tasks and a few that overstay.

A worker runs ``celeriac -A limits_app worker``; the tests register the same tasks on
their producer-side App with ``register``. Events go to the ledger file, as in
``ledger_app``: ``start``, ``done`` when the work finished, ``cleanup`` when a task
handled its soft time limit (or cancellation).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ledger_app import HANG_SECONDS, LedgerTasks, write
from ledger_app import register as register_ledger

from celeriac import App, SoftTimeLimitExceeded, Task


def spin(self: Task[..., Any], tag: str, seconds: float) -> str:
    """Works in short steps for ``seconds``; on its soft limit, cleans up and re-raises."""
    write("start", self, tag)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        write("cleanup", self, tag)
        raise
    write("done", self, tag)
    return tag


def stuck(self: Task[..., Any], tag: str) -> str:
    """Blocks in one long C call: no soft limit reaches it; only the hard limit ends it."""
    write("start", self, tag)
    time.sleep(HANG_SECONDS)
    write("done", self, tag)
    return tag


async def async_spin(self: Task[..., Any], tag: str, seconds: float) -> str:
    """Awaits for ``seconds``; on cancellation (its soft limit), cleans up and re-raises."""
    write("start", self, tag)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        write("cleanup", self, tag)
        raise
    write("done", self, tag)
    return tag


async def block_loop(self: Task[..., Any], tag: str) -> str:
    """An async task that blocks its worker's event loop: only the supervisor can end it."""
    write("start", self, tag)
    time.sleep(HANG_SECONDS)
    write("done", self, tag)
    return tag


@dataclass(frozen=True)
class LimitsTasks:
    ledger: LedgerTasks
    spin: Task[..., str]
    stuck: Task[..., str]
    async_spin: Task[..., str]
    block_loop: Task[..., str]


def register(target: App) -> LimitsTasks:
    """Register the ledger tasks and these ("limits.<name>") on ``target``."""

    def bound(fn: Any, **options: Any) -> Any:
        return target.task(bind=True, name=f"limits.{fn.__name__}", **options)(fn)

    return LimitsTasks(
        ledger=register_ledger(target), spin=bound(spin), stuck=bound(stuck),
        async_spin=bound(async_spin), block_loop=bound(block_loop),
    )


app = App("limits")
tasks = register(app)
