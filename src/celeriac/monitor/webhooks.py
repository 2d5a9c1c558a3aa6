"""Alert webhooks: each alert change POSTed as JSON to every ``alert_webhooks`` URL.

Delivery never holds up the checks: ``WebhookSender.post`` only queues the payload.
Each URL has its own queue and delivery task, so one webhook that is down delays
nothing but its own later payloads (which keep their order: a "resolved" never
arrives before its "firing"). A failed POST (connection refused, timeout, a 5xx, 408
or 429 answer) is retried with exponential backoff; other 4xx answers are the
receiver refusing the payload and are not retried. After the last attempt the payload
is dropped with an ERROR naming the URL and why.

The POST uses the standard library's ``urllib`` in a worker thread
(``asyncio.to_thread``): celeriac has no async HTTP client among its dependencies, and
a handful of small POSTs per alert does not justify adding one (aiohttp or httpx and
their trees) to every install. A thread per POST in flight is cheap at this rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

logger = logging.getLogger("celeriac.monitor")

ATTEMPTS = 5          # tries per payload and URL: 0.5 + 1 + 2 + 4 s of waiting between
FIRST_DELAY = 0.5     # seconds before the first retry; doubled each time
MAX_DELAY = 30.0
TIMEOUT = 5.0         # seconds one POST may take (connecting and answering)
QUEUE_LIMIT = 1000    # payloads waiting per URL; beyond it the oldest are dropped
RETRIED_STATUSES = frozenset({408, 429})  # besides every 5xx


class WebhookSender:
    """Queues payloads per URL and POSTs them from one delivery task per URL."""

    def __init__(self, urls: Sequence[str], *, attempts: int = ATTEMPTS,
                 first_delay: float = FIRST_DELAY, max_delay: float = MAX_DELAY,
                 timeout: float = TIMEOUT) -> None:
        self.urls = tuple(urls)
        self.attempts = attempts
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.delivered = 0  # payloads some URL accepted (for tests and the dashboard)
        self.dropped = 0    # payloads given up on after every attempt, or crowded out
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def post(self, payload: Mapping[str, Any]) -> None:
        """Queue ``payload`` for every URL; returns at once (call on the running loop)."""
        body = orjson.dumps(payload)
        for url in self.urls:
            queue = self._queue(url)
            if queue.full():  # a webhook down for long: keep the newest changes
                queue.get_nowait()
                queue.task_done()
                self.dropped += 1
                logger.error("webhook %s: %d alert changes waiting; dropped the oldest",
                             shown(url), QUEUE_LIMIT)
            queue.put_nowait(body)

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued payload was delivered or given up on; False if the
        time ran out first."""
        try:
            async with asyncio.timeout(timeout):
                for queue in list(self._queues.values()):
                    await queue.join()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop the delivery tasks; what was not delivered yet is dropped."""
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queues.clear()

    def _queue(self, url: str) -> asyncio.Queue[bytes]:
        queue = self._queues.get(url)
        if queue is None:
            queue = self._queues[url] = asyncio.Queue(QUEUE_LIMIT)
        task = self._tasks.get(url)
        if task is None or task.done():
            self._tasks[url] = asyncio.get_running_loop().create_task(
                self._deliver(url, queue), name=f"webhook {shown(url)}")
        return queue

    async def _deliver(self, url: str, queue: asyncio.Queue[bytes]) -> None:
        while True:
            body = await queue.get()
            try:
                await self._send(url, body)
            finally:
                queue.task_done()

    async def _send(self, url: str, body: bytes) -> None:
        delay = self.first_delay
        for attempt in range(1, self.attempts + 1):
            problem, retry = await asyncio.to_thread(_post, url, body, self.timeout)
            if problem is None:
                self.delivered += 1
                return
            if not retry or attempt == self.attempts:
                self.dropped += 1
                logger.error("webhook %s: alert not delivered after %d attempt%s: %s",
                             shown(url), attempt, "" if attempt == 1 else "s", problem)
                return
            logger.warning("webhook %s: %s; retrying in %.1f s (attempt %d of %d)",
                           shown(url), problem, delay, attempt, self.attempts)
            await asyncio.sleep(delay)
            delay = min(self.max_delay, delay * 2)


def shown(url: str) -> str:
    """A webhook URL for logs: scheme, host and port only. Chat webhooks (Slack's
    ``/services/T.../B.../secret``) carry their secret in the path or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    rest = "/..." if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _post(url: str, body: bytes, timeout: float) -> tuple[str | None, bool]:
    """POST once: (None, _) when accepted, else (what went wrong, whether to retry)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "celeriac-monitor"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return (f"answered {exc.code} {exc.reason}",
                exc.code >= 500 or exc.code in RETRIED_STATUSES)
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"cannot POST: {reason}", True
    return None, True
