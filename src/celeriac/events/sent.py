"""``task-sent``: what a producer emits for each task it sends, with ``task_send_sent_event``.

Off by default, as in Celery: it costs the producer one more round trip per send (the
task's publish and then one event record for all the tasks of that send). The events
of one send go out as one record after the tasks are published, on a bus the app keeps
on its own loop thread (``Bridge``), for sync and async callers alike; the producer's
hostname is Celery's ``gen<pid>@host``. A bus that fails is logged and the send still
succeeds: the tasks are already on their way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from celeriac.bus.base import EVENTS, Bus
from celeriac.errors import describe
from celeriac.events.event import Compact, bounded_repr, encode, iso, producer_hostname, reserve

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.message import Message

logger = logging.getLogger("celeriac.events")


def sent_events(messages: Sequence[Message]) -> list[Compact]:
    now = time.time()
    return [("task-sent", now, m.id, m.task, m.queue,
             None if m.root_id == m.id else m.root_id, m.parent_id,
             bounded_repr(m.args), bounded_repr(m.kwargs), m.retries, iso(m.eta),
             iso(m.expires)) for m in messages]


class SentEvents:
    """The app's publisher of task-sent events (one bus, on the app's loop thread)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.hostname = producer_hostname()
        self._bus: Bus | None = None

    def send_blocking(self, messages: Sequence[Message]) -> None:
        """For a sync caller: publish through the app's loop thread."""
        self.app._run_sync(self._publish(sent_events(messages)))

    async def send(self, messages: Sequence[Message]) -> None:
        """For an async caller: the same bus, on the app's loop thread."""
        future = asyncio.run_coroutine_threadsafe(self._publish(sent_events(messages)),
                                                  self.app._bridge.loop)
        await asyncio.wrap_future(future)

    async def aclose(self) -> None:
        """Close the bus (on the app's loop thread: ``App.close`` calls it there)."""
        bus, self._bus = self._bus, None
        if bus is not None:
            await bus.close()

    async def _publish(self, events: list[Compact]) -> None:
        try:
            if self._bus is None:
                self._bus = await self.app.open_bus()
            record = encode(self.hostname, os.getpid(), reserve(self.hostname, len(events)),
                            events)
            await self._bus.publish(EVENTS, [record])
        except Exception as exc:
            logger.warning("could not emit task-sent for %d task(s) (they were sent): %s",
                           len(events), describe(exc))
            bus, self._bus = self._bus, None
            if bus is not None:
                try:
                    await bus.close()
                except Exception:
                    logger.debug("closing the event bus failed", exc_info=True)
