"""Tasks for the dashboard's browser tests (tests/browser).

A worker started with ``celeriac -A browser_app worker`` uses ``app``, whose broker and
backend come from the ``CELERIAC_*`` environment variables; the tests register the same
tasks on their own App with ``register``. The tasks that behave differently the second
time (``fail_once``, ``refuse_once``) and the one that waits (``wait_for``) read marker
files in the directory ``WEB_TEST_MARKERS`` names, so the test decides, not a clock.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from celeriac import App
from celeriac.errors import Reject

MARKERS_ENV = "WEB_TEST_MARKERS"
WAIT_MAX = 60.0  # seconds wait_for gives up after: far beyond any test's timeout


def _marker(key: str) -> Path:
    return Path(os.environ[MARKERS_ENV]) / key


def add(x: int, y: int) -> int:
    return x + y


def total(values: list[int]) -> int:
    """A chord's body: the sum of its header's results."""
    return sum(values)


def fail_once(key: str) -> str:
    """Fails the first time (creating its marker); succeeds when sent again."""
    marker = _marker(key)
    if not marker.exists():
        marker.touch()
        raise ValueError(f"first run of {key} fails")
    return f"{key} ok"


def refuse_once(key: str) -> str:
    """Rejected into the dead letters the first time; succeeds when requeued."""
    marker = _marker(key)
    if not marker.exists():
        marker.touch()
        raise Reject(f"{key} refused the first time", requeue=False)
    return f"{key} ok"


async def wait_for(key: str) -> str:
    """Runs until its marker appears: a task to terminate. Async, so terminating it
    cancels it in place rather than replacing the worker process."""
    deadline = time.monotonic() + WAIT_MAX
    while not _marker(key).exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return f"{key} done"


def secret(token: str) -> str:
    """Declared with dashboard_hide_args: its token must never reach a page."""
    return f"used {token}"


def register(target: App) -> None:
    """The tasks under fixed names ("web.<name>")."""
    for fn in (add, total, fail_once, refuse_once, wait_for):
        target.task(name=f"web.{fn.__name__}")(fn)
    target.task(name="web.secret", dashboard_hide_args=True)(secret)


app = App("web")
register(app)
