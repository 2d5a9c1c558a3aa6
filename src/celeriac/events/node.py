"""A node's own events: ``worker-online``, ``worker-heartbeat`` every ``HEARTBEAT_INTERVAL``
seconds, and ``worker-offline`` when it stops (a node service, ``celeriac.node``).

They come from the node, not from each of its processes: the hostname is the node's
name, the pid the supervisor's (the process itself with ``-P solo``), and ``active``,
``processed`` and ``processes`` are the sums over its processes (``NodeSnapshot``).
``freq`` is the heartbeat interval, as in Celery: a monitor that hears nothing for a few
of them may think the node gone.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time

from celeriac import __version__
from celeriac.events.emitter import acquire, release
from celeriac.events.event import Compact
from celeriac.node.base import NodeContext, NodeSnapshot

HEARTBEAT_INTERVAL = 2.0


def worker_event(kind: str, snapshot: NodeSnapshot) -> Compact:
    try:
        load = tuple(round(value, 2) for value in os.getloadavg())
    except OSError:  # not on this platform
        load = ()
    return (kind, time.time(), HEARTBEAT_INTERVAL, snapshot.active, snapshot.processed,
            load, len(snapshot.processes), "celeriac", __version__, platform.system())


async def worker_events(context: NodeContext) -> None:
    """Online now, a heartbeat every ``HEARTBEAT_INTERVAL`` seconds, offline at the end."""
    emitter = acquire(context.app, context.name, context.bus)  # the node's connection
    try:
        emitter.emit(worker_event("worker-online", context.node.snapshot()))
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            emitter.emit(worker_event("worker-heartbeat", context.node.snapshot()))
    finally:
        emitter.emit(worker_event("worker-offline", context.node.snapshot()))
        await release(emitter)  # publishes what is left, the goodbye included
