"""The demo's tasks: a small shop's background work, in miniature.

The App names no broker, so it follows ``CELERIAC_BROKER_URL``; ``celeriac demo`` points
that at a SQLite file in a temporary directory for both itself and its worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

from celeriac import App, Reject, Task

app = App("celeriac.demo")

# Retries in the demo wait a fraction of a second, so the whole run stays short.
RETRY_DELAY = 0.2


class GatewayTimeout(ConnectionError):
    """The (imaginary) payment gateway did not answer in time."""


@app.task
def ping() -> str:
    """Sent once before the workload, to know the worker is up."""
    return "pong"


@app.task
def make_thumbnail(image_id: int, size: int) -> str:
    """Quick and CPU-bound: hash a few kilobytes standing in for image pixels."""
    pixels = image_id.to_bytes(8, "little") * size
    return hashlib.blake2b(pixels, digest_size=8).hexdigest()


@app.task
async def fetch_price(sku: int, latency_ms: float) -> float:
    """I/O-bound and async: waits on an (imaginary) supplier API without blocking."""
    await asyncio.sleep(latency_ms / 1000)
    return round(9.99 + sku % 90, 2)


@app.task(priority=9)
def send_alert(user_id: int) -> str:
    """Urgent: priority 9 on the task itself, so alerts overtake the backlog."""
    return f"alerted user {user_id}"


@app.task
def send_reminder(user_id: int) -> float:
    """Sent with a countdown; returns when it started, to show it never ran early."""
    del user_id
    return time.time()


@app.task(bind=True, max_retries=3)
def charge_card(self: Task[..., Any], order_id: int, flaky_attempts: int) -> str:
    """Fails ``flaky_attempts`` times with a transient error, retrying, then succeeds."""
    if self.request.retries < flaky_attempts:
        raise self.retry(exc=GatewayTimeout(f"gateway timeout for order {order_id}"),
                         countdown=RETRY_DELAY)
    return f"order {order_id} charged"


@app.task(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=RETRY_DELAY,
          retry_jitter=False)
def sync_inventory(warehouse: int) -> None:
    """Always fails: retried twice by ``autoretry_for``, then FAILURE with the last error."""
    raise ConnectionError(f"warehouse {warehouse} is unreachable")


@app.task
def import_record(record: dict[str, Any]) -> int:
    """Rejects malformed records: they go to the dead letters with a reason."""
    if "email" not in record:
        raise Reject(f"record {record.get('id')} has no email address")
    return int(record["id"])
