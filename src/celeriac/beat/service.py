"""Beat inside a worker node (``celeriac worker -B``): a node service.

The scheduler is blocking code (short calls to the server, then a wait), so it runs on
a thread of its own beside the node's services loop: in the supervisor's process for a
supervised worker, in the worker's own process with ``-P solo``. It competes for the
lease like any ``celeriac beat`` process, so any number of ``-B`` workers and beat
processes may run together; one of them leads. When the node stops, beat gives the
lease up at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from celeriac.beat.scheduler import Scheduler
from celeriac.errors import ConfigurationError, describe
from celeriac.node.base import NodeContext

logger = logging.getLogger("celeriac.beat")

JOIN_TIMEOUT = 2.0  # seconds the node waits for beat to release its lease when stopping


async def beat_service(context: NodeContext) -> None:
    """Run beat until the node stops (the service is cancelled)."""
    try:
        scheduler = await asyncio.to_thread(Scheduler, context.app)
    except ConfigurationError as exc:
        # Nothing a restart could fix: say it once, and let the worker run its tasks.
        logger.error("beat (-B) cannot start: %s", describe(exc))
        return
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,), name="beat", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, JOIN_TIMEOUT)
