"""Reading the event stream: ``app.events.iter()`` and ``async for ... in app.events.aiter()``.

Each yields Celery-shaped dicts (``event.expand``), one per event, in the order each
emitting process (``hostname``, ``pid``) sent them. ``since`` reads back what the bus
still keeps (``bus.RETENTION``: ten minutes, at most 64 MiB, on every broker) from that
moment: a Unix time, a ``datetime``, or a ``timedelta`` meaning "that long ago"; without
it, events published after the call starts. ``timeout`` ends the stream after that many
seconds without an event, ``limit`` after that many events; without either it runs until
the caller stops (``break``, closing the generator, Ctrl-C).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celeriac.bus.base import EVENTS, Record, Subscription
from celeriac.events.event import expand

if TYPE_CHECKING:
    from celeriac.app import App

POLL = 1.0  # seconds one read waits on the bus, at most

Since = float | int | datetime | timedelta | None


def since_time(since: Since) -> float | None:
    """``since`` as a Unix time (see the module)."""
    if since is None:
        return None
    if isinstance(since, timedelta):
        return time.time() - since.total_seconds()
    if isinstance(since, datetime):
        return since.timestamp()  # a naive datetime is local time, as datetime says
    if isinstance(since, bool) or not isinstance(since, int | float):
        raise TypeError(f"since must be a Unix time, a datetime or a timedelta, "
                        f"not {since!r}")
    return float(since)


class Events:
    """``app.events``: the event stream of the app's broker."""

    def __init__(self, app: App) -> None:
        self.app = app

    def iter(self, since: Since = None, timeout: float | None = None,
             limit: int | None = None) -> Generator[dict[str, Any], None, None]:
        """The events, for a sync caller (reads on the app's own loop thread).

        The reader's position is fixed when ``iter`` is called, not at the first
        ``next``: a monitor made before the tasks are sent sees all their events."""
        start = since_time(since)
        app = self.app

        async def subscribe() -> tuple[Any, Subscription]:
            bus = await app.open_bus()
            return bus, await bus.subscribe(EVENTS, start)

        bus, subscription = app._run_sync(subscribe())
        return _sync_stream(app, bus, subscription, timeout, limit)

    async def aiter(self, since: Since = None, timeout: float | None = None,
                    limit: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """The events, for ``async for`` on the caller's loop (the reader's position is
        fixed at the first iteration)."""
        start = since_time(since)
        bus = await self.app.open_bus()
        subscription = await bus.subscribe(EVENTS, start)
        reading = _Reading(timeout, limit)
        try:
            while (wait := reading.wait()) is not None:
                for event in reading.events(await subscription.read(wait)):
                    yield event
                if reading.done:
                    return
        finally:
            await _close(bus, subscription)


def _sync_stream(app: App, bus: Any, subscription: Subscription, timeout: float | None,
                 limit: int | None) -> Generator[dict[str, Any], None, None]:
    reading = _Reading(timeout, limit)
    try:
        while (wait := reading.wait()) is not None:
            yield from reading.events(app._run_sync(subscription.read(wait)))
            if reading.done:
                return
    finally:
        app._run_sync(_close(bus, subscription))


class _Reading:
    """Where one reader of the stream stands, sync or async alike: how long its next
    read may wait, and the events of what it read, until ``limit`` or ``timeout``."""

    def __init__(self, timeout: float | None, limit: int | None) -> None:
        self.timeout = timeout
        self.limit = limit
        self.count = 0
        self.quiet_since = time.monotonic()  # when an event last came
        self.done = False  # the limit was reached

    def wait(self) -> float | None:
        """How long the next read may wait; None once ``timeout`` passed without an
        event."""
        if self.timeout is None:
            return POLL
        left = self.quiet_since + self.timeout - time.monotonic()
        return None if left <= 0 else min(POLL, left)

    def events(self, records: list[Record]) -> Iterator[dict[str, Any]]:
        """The events of ``records``, in order, stopping at the limit."""
        if records:
            self.quiet_since = time.monotonic()
        for record in records:
            for event in expand(record.payload, time.time()):
                yield event
                self.count += 1
                if self.limit is not None and self.count >= self.limit:
                    self.done = True
                    return


async def _close(bus: Any, subscription: Subscription) -> None:
    try:
        await subscription.close()
    finally:
        await bus.close()
