"""The cluster as the events tell it: which workers are up, what they run, task outcomes.

The exporter (``celeriac exporter``) has no worker of its own to ask; it follows the
event stream (``celeriac.events``) instead and keeps, for ``/metrics``:

- per worker node: when it was last heard from (``worker-online``/``worker-heartbeat``),
  its ``active`` and ``processed`` counts from the last heartbeat, and whether it said
  ``worker-offline``. A node is *up* while it was heard from within
  ``HEARTBEAT_MISSES`` heartbeat intervals (its own ``freq``), as Celery's monitors
  judge it, and did not go offline;
- task outcomes by name, counted from ``task-succeeded``, ``task-failed``,
  ``task-retried``, ``task-rejected`` and ``task-revoked`` since the exporter started
  (a counter: Prometheus's ``rate()`` does not care where it started); every task
  event carries the task's name.

``ClusterView`` is the state (fed event dicts, thread-safe); ``EventFollower`` is the
thread that reads the stream into it, retrying a broker that is down with a doubling
pause and one log line per failure.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeriac.bus.base import EVENTS
from celeriac.errors import describe
from celeriac.events.event import expand

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.monitor")

HEARTBEAT_MISSES = 3  # heartbeats a node may miss before it counts as down
OUTCOMES = {"task-succeeded": "succeeded", "task-failed": "failed",
            "task-retried": "retried", "task-rejected": "rejected",
            "task-revoked": "revoked"}
READ_WAIT = 0.5
RETRY_MAX = 30.0


@dataclass(frozen=True, slots=True)
class Worker:
    hostname: str
    heard_at: float  # Unix time of its last online/heartbeat event
    freq: float
    active: int
    processed: int
    offline: bool
    loadavg: tuple[float, ...] | None = None  # the host's 1, 5 and 15 minute load

    def up(self, now: float) -> bool:
        return not self.offline and now - self.heard_at <= HEARTBEAT_MISSES * self.freq


def _loadavg(value: Any) -> tuple[float, ...] | None:
    """A heartbeat's ``loadavg`` when it is a list of numbers (it comes off the wire)."""
    if isinstance(value, list | tuple) and all(
            isinstance(one, int | float) and not isinstance(one, bool) for one in value):
        return tuple(float(one) for one in value)
    return None


class ClusterView:
    """What the events said so far (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workers: dict[str, Worker] = {}
        self._outcomes: Counter[tuple[str, str]] = Counter()

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        with self._lock:
            if kind in ("worker-online", "worker-heartbeat", "worker-offline"):
                self._worker(event, offline=kind == "worker-offline")
            elif kind in OUTCOMES:
                self._outcomes[(str(event.get("name") or "unknown"), OUTCOMES[kind])] += 1

    def _worker(self, event: dict[str, Any], offline: bool) -> None:
        hostname = str(event.get("hostname"))
        known = self._workers.get(hostname)
        self._workers[hostname] = Worker(
            hostname, float(event.get("timestamp") or time.time()),
            float(event.get("freq") or (known.freq if known else 2.0)),
            int(event.get("active") or 0), int(event.get("processed") or 0), offline,
            _loadavg(event.get("loadavg")))

    def workers(self) -> list[Worker]:
        with self._lock:
            return sorted(self._workers.values(), key=lambda w: w.hostname)

    def outcomes(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._outcomes)


class EventFollower:
    """A thread reading the event stream until ``close``: the events of each read go to
    ``handle`` (by default into a ``ClusterView``). The dashboard's ingest
    (``celeriac.dashboard.ingest``) subclasses it to write its history as well."""

    who = "exporter"  # names the follower in its log lines
    logger = logger  # where they go

    def __init__(self, app: App, view: ClusterView) -> None:
        self.app = app
        self.view = view
        self._stop = threading.Event()
        self._following = threading.Event()  # set once the reader's position is fixed
        self._thread = threading.Thread(target=self._main, name="events", daemon=True)

    def start(self, wait: float = 10.0) -> None:
        """Start reading; returns once the stream is followed (or ``wait`` passed)."""
        self._thread.start()
        self._following.wait(wait)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(READ_WAIT + 5.0)

    @property
    def following(self) -> bool:
        """Whether the reader's position was fixed (it may have lost its server since)."""
        return self._following.is_set()

    async def handle(self, events: list[dict[str, Any]]) -> None:
        """The events of one read, in their order; an exception makes the follower
        reconnect and read them again (from the first record of the read)."""
        for event in events:
            self.view.apply(event)

    async def idle(self) -> None:
        """Called after every read, whether it brought events or not (about every
        ``READ_WAIT`` seconds at most): for periodic work in the reading thread."""

    async def start_at(self) -> float | None:
        """Where to start reading on the first connection: None for "from now", or a
        Unix time to read back what the bus still keeps from then."""
        return None

    def _main(self) -> None:
        asyncio.run(self._follow())

    async def _follow(self) -> None:
        delay = 1.0
        since: float | None = None  # from start_at; after a failure, from where it broke off
        started = False
        while not self._stop.is_set():
            bus = self.app.bus()
            try:
                if not started:
                    since = await self.start_at()
                    started = True
                subscription = await bus.subscribe(EVENTS, since)
                if since is None:  # from now: after a failure, from this moment on
                    since = time.time()
                self._following.set()
                delay = 1.0
                try:
                    while not self._stop.is_set():
                        records = await subscription.read(READ_WAIT)
                        if records:
                            received = time.time()
                            since = records[0].at  # this read again, should it fail
                            await self.handle([event for record in records
                                               for event in expand(record.payload,
                                                                   received)])
                            since = records[-1].at
                        await self.idle()
                finally:
                    await subscription.close()
            except Exception as exc:
                self.logger.error("%s: cannot follow the events (retrying in %.0fs): %s",
                             self.who, delay, describe(exc))
            finally:
                await bus.close()
            if not self._stop.is_set():
                await asyncio.to_thread(self._stop.wait, delay)
                delay = min(delay * 2, RETRY_MAX)
