"""Tasks for the dashboard's API tests (tests/integration/dashboard).

A worker started with ``celeriac -A dash_app worker`` uses ``app``, whose broker and
backend come from the ``CELERIAC_*`` environment variables; the tests register the same
tasks on their own App with ``register``. ``fail_once`` fails while its marker file is
absent and creates it, so a retry of the same call succeeds.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from celeriac import App
from celeriac.errors import Reject

MARKERS_ENV = "DASH_TEST_MARKERS"


def add(x: int, y: int) -> int:
    return x + y


def fail_once(key: str, padding: str = "") -> str:
    del padding  # makes the arguments longer than the events' 256-character repr
    marker = Path(os.environ[MARKERS_ENV]) / key
    if not marker.exists():
        marker.touch()
        raise ValueError(f"first run of {key} fails")
    return f"{key} ok"


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


def refuse(key: str) -> None:
    raise Reject(f"{key} refused", requeue=False)


def refuse_once(key: str) -> str:
    """Dead-letters its first message (``Reject``); a requeued copy succeeds."""
    marker = Path(os.environ[MARKERS_ENV]) / f"refused-{key}"
    if not marker.exists():
        marker.touch()
        raise Reject(f"{key} refused", requeue=False)
    return f"{key} ran"


def secret(token: str) -> str:
    return f"used {token}"


def register(target: App) -> None:
    """The tasks under fixed names ("dash.<name>")."""
    for fn in (add, fail_once, nap, refuse, refuse_once):
        target.task(name=f"dash.{fn.__name__}")(fn)
    target.task(name="dash.secret", dashboard_hide_args=True)(secret)


app = App("dash")
register(app)
