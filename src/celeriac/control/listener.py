"""The workers' side of remote control: read requests, run commands, answer.

Every worker process runs ``listen`` beside its consumer's loops (``Consumer.run``), and
every node runs ``control_service`` among its node services (``node.services``). Each
subscribes to the ``control`` topic from the moment it starts, and for each request
addressed to its node (``destination`` is ``None`` or names it) runs the commands it
answers (``commands``) and publishes the reply, unless none was asked for.

A request for a command nobody knows gets an error reply (from the processes, so one
per node after the merge); a command that raises gets an error reply with the message,
and is logged; neither ever stops the listener. When neither the broker nor the result
backend carries topics (``App.bus`` raises ``NotImplementedError``) there is no remote
control: said once, then idle. A bus that fails is reopened after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from celeriac.bus.base import CONTROL, Bus
from celeriac.control import commands
from celeriac.control.mailbox import Reply, Request, answer, error
from celeriac.errors import describe

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.node.base import NodeContext

logger = logging.getLogger("celeriac.control")

READ_TIMEOUT = 1.0
RETRY_DELAY = 2.0  # seconds before reading again after a failure, doubling up to the max
RETRY_DELAY_MAX = 30.0


async def listen(info: commands.ProcessInfo) -> None:
    """Answer the process commands for one worker process, until cancelled."""
    app = info.consumer.app
    if not app.conf.worker_enable_remote_control:
        info.listening.set()
        return

    async def handle(request: Request) -> Any:
        if not commands.known(request.command):
            return error(f"unknown command {request.command!r}")
        if not commands.answered_by_process(request.command, info):
            return None
        return await commands.PROCESS_COMMANDS[request.command](info, **request.arguments)

    def expect(request: Request) -> tuple[int, ...] | None:
        del request  # a node service says it, where there is one
        return (info.index,) if info.own_node else None

    try:
        await _serve(app, info.node, info.index, handle, expect, None, info.listening.set)
    finally:
        info.listening.set()  # (it never will)


async def control_service(context: NodeContext) -> None:
    """The node service answering the node commands (``pool_grow``, ``shutdown``...)."""
    pool = context.node.options.pool

    async def handle(request: Request) -> Any:
        if not commands.answered_by_node(request.command, pool):
            return None
        return await commands.NODE_COMMANDS[request.command](context, **request.arguments)

    def expect(request: Request) -> tuple[int, ...] | None:
        """The processes that will answer too (the client stops waiting once they did)."""
        if not commands.answered_by_processes(request.command, pool):
            return ()
        return tuple(process.index for process in context.node.snapshot().processes)

    await _serve(context.app, context.name, None, handle, expect, context.bus, lambda: None)


Handler = Callable[[Request], Awaitable[Any]]
Expect = Callable[[Request], "tuple[int, ...] | None"]


async def _serve(app: App, node: str, index: int | None, handle: Handler, expect: Expect,
                 bus: Bus | None, on_listening: Callable[[], None]) -> None:
    """Read requests from ``bus`` (else one opened here), answer them, forever;
    ``on_listening`` is called once the first subscription is made."""
    own_bus = bus is None
    delay = RETRY_DELAY
    while True:
        try:
            if own_bus:
                bus = await app.open_bus()
            assert bus is not None
            subscription = await bus.subscribe(CONTROL)
            on_listening()
            delay = RETRY_DELAY
            try:
                while True:
                    for record in await subscription.read(READ_TIMEOUT):
                        await _one(bus, record.payload, node, index, handle, expect)
            finally:
                with contextlib.suppress(Exception):
                    await subscription.close()
        except NotImplementedError as exc:
            logger.info("remote control (inspect, control) cannot reach %s: %s", node, exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("remote control of %s interrupted (retrying in %.0fs): %s",
                           node, delay, describe(exc))
        finally:
            if own_bus and bus is not None:
                with contextlib.suppress(Exception):
                    await bus.close()
                bus = None
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_DELAY_MAX)


async def _one(bus: Bus, payload: bytes, node: str, index: int | None,
               handle: Handler, expect: Expect) -> None:
    try:
        request = Request.decode(payload)
    except ValueError as exc:
        logger.warning("ignoring a malformed control request: %s", exc)
        return
    if not request.addressed_to(node):
        return
    try:
        value = await handle(request)
    except ValueError as exc:  # a value it cannot take: the message says why
        logger.warning("control command %s refused: %s", request.command, exc)
        value = error(str(exc))
    except TypeError as exc:  # arguments it does not take
        logger.warning("control command %s refused: %s", request.command, describe(exc))
        value = error(f"{request.command}: {describe(exc)}")
    except Exception as exc:
        logger.error("control command %s failed: %s", request.command, describe(exc),
                     exc_info=True)
        value = error(describe(exc))
    if not request.reply:
        return
    expected = expect(request) if request.destination is not None else None
    if value is not None or expected is not None:
        await answer(bus, [Reply(request.id, node, index, value, expected)])
