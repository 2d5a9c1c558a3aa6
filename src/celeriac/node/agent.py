"""Where a node's services run (``node.base``): an event loop of their own.

In a supervised worker the supervisor's main thread waits on its children's sentinels,
so the services get a thread with an asyncio loop beside it (``NodeAgent``). A solo
worker runs them on its own event loop with ``run_services``. Either way one failing
service is logged with its name and restarted after a pause; it never stops the node or
the other services, and a node whose broker is unreachable keeps running its tasks (the
services retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

from celeriac.bus.base import Bus
from celeriac.bus.memory import MemoryBus
from celeriac.errors import BrokerError, describe
from celeriac.node.base import NodeContext, NodeHandle, NodeService

logger = logging.getLogger("celeriac.node")

GOODBYE_TIMEOUT = 3.0  # seconds services get to finish when the node stops
RESTART_DELAY = 2.0  # seconds before a failed service runs again, doubling
RESTART_DELAY_MAX = 30.0


async def run_services(node: NodeHandle, services: Sequence[NodeService],
                       stop: asyncio.Event) -> None:
    """Run ``services`` until ``stop`` is set, then give them ``GOODBYE_TIMEOUT`` to end.

    They start at once, the bus unconnected: it connects on first use, so a broker that is
    down holds up only the services that need it (they fail and are retried), never the
    others (health checks must answer while the broker is down).
    """
    if not services:
        await stop.wait()
        return
    context = NodeContext(node, _bus_of(node))
    tasks = [asyncio.create_task(_keep_running(service, context, stop),
                                 name=getattr(service, "__name__", "service"))
             for service in services]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True),
                                   GOODBYE_TIMEOUT)
        with contextlib.suppress(Exception):
            await context.bus.close()


def _bus_of(node: NodeHandle) -> Bus:
    try:
        return node.app.bus()
    except NotImplementedError as exc:
        # The services that need no topics (autoscaling, metrics) still run.
        logger.warning("node %s: %s; events and remote control are off", node.name,
                       describe(exc))
        return MemoryBus()  # topics of this process alone


async def _keep_running(service: NodeService, context: NodeContext,
                        stop: asyncio.Event) -> None:
    """Run ``service``; one that fails is logged and run again after a pause that
    doubles (a broker that is down is retried without flooding the log)."""
    name = getattr(service, "__name__", repr(service))
    delay = RESTART_DELAY
    while not stop.is_set():
        started = time.monotonic()
        try:
            await service(context)
            return  # a service that ends on its own has nothing more to do
        except asyncio.CancelledError:
            raise
        except (BrokerError, OSError) as exc:  # a server's trouble: no traceback to read
            logger.error("node service %s cannot reach the broker (retrying in %.0fs): %s",
                         name, delay, describe(exc))
        except Exception as exc:
            logger.error("node service %s failed (restarting it in %.0fs): %s", name,
                         delay, describe(exc), exc_info=True)
        if time.monotonic() - started > RESTART_DELAY_MAX:
            delay = RESTART_DELAY  # it ran a good while: this is a new failure
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, RESTART_DELAY_MAX)


class NodeAgent:
    """A thread running a node's services on an event loop of its own."""

    def __init__(self, node: NodeHandle, services: Sequence[NodeService]) -> None:
        self._node = node
        self._services = list(services)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="node-agent", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        """Stop the services (they say goodbye) and wait for the thread."""
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(GOODBYE_TIMEOUT + 5.0)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await run_services(self._node, self._services, self._stop)

        try:
            asyncio.run(main())
        except Exception:
            logger.exception("the node's services stopped")
        finally:
            self._ready.set()
