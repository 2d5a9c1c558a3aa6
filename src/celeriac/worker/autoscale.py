"""Autoscaling (``--autoscale=MAX,MIN``): grow the pool under a backlog, shrink it when idle.

Celery's meaning: the pool starts at MIN and grows up to MAX while work is queued and
every slot is busy; slots idle for ``worker_autoscale_keepalive`` seconds (Celery's
``AUTOSCALE_KEEPALIVE``, 30 s) are given back one per check, down to MIN. A shrink never
cuts a running task short: an idle process or slot goes first, a busy one finishes its
task before it ends (``Supervisor._apply_size``, ``Consumer.resize``).

Once a second the autoscaler reads the pool's numbers (``Load``) and how many messages
wait on the broker in the worker's queues, and ``Policy`` decides. Like Celery, it grows
by the backlog in one step (up to MAX), not one slot at a time, so that a burst is met
at once; it shrinks one slot per check.

What "the pool" is depends on where the slots are:

- prefork: processes of the supervisor. The autoscaler is a node service
  (``autoscale_node``) on the supervisor's agent thread, resizing through
  ``NodeHandle.resize``; the processes' numbers come from the status board.
- threads, async: slots of the one worker process. The autoscaler runs on that
  process's own event loop beside its consumer (``start_in_process``) and calls
  ``Consumer.resize``: the consumer is there, and its numbers are exact without a
  round trip through the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from celeriac.brokers import create_broker
from celeriac.errors import describe

if TYPE_CHECKING:
    from celeriac.brokers.base import Broker
    from celeriac.node.base import NodeContext, NodeHandle
    from celeriac.worker.consumer import Consumer
    from celeriac.worker.options import WorkerOptions

logger = logging.getLogger("celeriac.autoscale")

CHECK_INTERVAL = 1.0  # seconds between two looks at the pool and the queues
DEFAULT_KEEPALIVE = 30.0  # Celery's AUTOSCALE_KEEPALIVE


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MAX,MIN"`` (Celery's order) or ``"MAX"`` -> ``(max, min)``.

    Celery lets MIN be 0; a celeriac pool always keeps one slot to consume with, so a
    MIN of 0 means 1. Raises ``ValueError`` with the reason.
    """
    maximum, _, minimum = text.partition(",")
    try:
        bounds = (int(maximum), int(minimum) if minimum.strip() else 0)
    except ValueError:
        raise ValueError(f"expected MAX,MIN (two whole numbers, e.g. 10,3), not {text!r}"
                         ) from None
    return check_bounds(bounds)


def check_bounds(bounds: Sequence[int]) -> tuple[int, int]:
    """Validate ``(max, min)``; a MIN of 0 becomes 1. Raises ``ValueError``."""
    if len(bounds) != 2 or not all(isinstance(b, int) and not isinstance(b, bool)
                                   for b in bounds):
        raise ValueError(f"expected (max, min) as two whole numbers, not {bounds!r}")
    maximum, minimum = bounds
    minimum = max(1, minimum)
    if maximum < minimum:
        raise ValueError(f"MAX ({maximum}) must be at least MIN ({minimum}): Celery's "
                         "order is --autoscale=MAX,MIN")
    return maximum, minimum


@dataclass(frozen=True, slots=True)
class Load:
    """The pool right now, in slots (a prefork process is one slot)."""

    size: int  # slots the pool has or is starting (draining ones left out)
    consuming: int  # of those, slots that consume already (a new process takes a while)
    active: int  # tasks running
    reserved: int  # tasks fetched and waiting for a slot


@dataclass(frozen=True, slots=True)
class Change:
    delta: int
    reason: str


class Policy:
    """Decides from the pool's numbers and the broker's backlog; keeps the idle timer."""

    def __init__(self, maximum: int, minimum: int, keepalive: float) -> None:
        self.maximum = maximum
        self.minimum = minimum
        self.keepalive = keepalive
        self._idle_since: float | None = None

    def decide(self, load: Load, waiting: int, now: float) -> Change | None:
        """``waiting``: messages ready on the broker for this worker's queues."""
        backlog = waiting + load.reserved
        if load.consuming < load.size:  # slots still starting: judge them once they run
            self._idle_since = None
            return None
        if backlog and load.active >= load.size:
            self._idle_since = None
            if load.size >= self.maximum:
                return None
            delta = min(self.maximum - load.size, backlog)
            return Change(delta, f"queue backlog {backlog}, all {load.size} slot(s) busy")
        if backlog or load.active >= load.size:
            self._idle_since = None  # working at capacity, or about to
            return None
        if self._idle_since is None:
            self._idle_since = now
        idle_for = now - self._idle_since
        if load.size <= self.minimum or idle_for < self.keepalive:
            return None
        return Change(-1, f"{load.size - load.active} of {load.size} slot(s) idle for "
                          f"{idle_for:.1f}s, nothing queued")


class Pool(Protocol):
    unit: str  # "process(es)" or "slot(s)"

    @property
    def stopping(self) -> bool:
        """The pool is shutting down: the autoscaler's work is over."""
        ...

    def load(self) -> Load: ...

    def resize(self, delta: int) -> int: ...


async def autoscale(pool: Pool, broker: Broker, queues: Sequence[str], policy: Policy,
                    interval: float = CHECK_INTERVAL) -> None:
    """Check every ``interval`` seconds and resize ``pool``, until it stops or this is
    cancelled."""
    logger.info("autoscaling between %d and %d %s (idle keepalive %gs)", policy.minimum,
                policy.maximum, pool.unit, policy.keepalive)
    unreadable = False  # the queue lengths could not be read last time (logged once)
    while not pool.stopping:
        await asyncio.sleep(interval)
        try:
            waiting = sum(stats.ready for stats in await broker.queue_stats(list(queues)))
            unreadable = False
        except Exception as exc:
            if not unreadable:
                logger.warning("cannot read the queue lengths (deciding on the prefetched "
                               "tasks alone until they can be read): %s", describe(exc))
            unreadable = True
            waiting = 0
        if pool.stopping:
            return
        load = pool.load()
        change = policy.decide(load, waiting, time.monotonic())
        if change is None:
            continue
        try:
            size = pool.resize(change.delta)
        except ValueError as exc:  # e.g. pool_shrink left it below what we asked
            logger.warning("could not resize the pool by %+d: %s", change.delta, exc)
            continue
        logger.info("%s the pool from %d to %d %s: %s",
                    "growing" if change.delta > 0 else "shrinking", load.size, size,
                    pool.unit, change.reason)


# -- prefork: processes of the node -----------------------------------------------------


class NodePool:
    """The prefork processes of a node, as the autoscaler sees them."""

    unit = "process(es)"

    def __init__(self, node: NodeHandle) -> None:
        self.node = node

    @property
    def stopping(self) -> bool:
        return False  # the node cancels its services when it stops

    def load(self) -> Load:
        serving = [p for p in self.node.snapshot().processes if not p.retiring]
        size = self.node.resize(0)  # the size it has or is heading to
        return Load(size, sum(p.slots for p in serving if p.consuming),
                    sum(p.active for p in serving), sum(p.reserved for p in serving))

    def resize(self, delta: int) -> int:
        return self.node.resize(delta)


async def autoscale_node(context: NodeContext) -> None:
    """The node service of a prefork worker started with ``--autoscale``."""
    options = context.node.options
    assert options.autoscale is not None
    maximum, minimum = options.autoscale
    conf = context.app.conf
    # A connection of its own for the queue lengths, on this (the agent's) loop.
    broker = create_broker(conf.effective_broker_url, conf.broker_transport_options)
    await broker.connect()
    try:
        await autoscale(NodePool(context.node), broker, options.queues,
                        Policy(maximum, minimum, options.autoscale_keepalive))
    finally:
        with contextlib.suppress(Exception):
            await broker.close()


# -- threads and async: slots of one process --------------------------------------------


class ConsumerPool:
    """The slots of one worker process (``-P threads``/``async``)."""

    unit = "slot(s)"

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer

    @property
    def stopping(self) -> bool:
        return self.consumer.stopping

    def load(self) -> Load:
        consumer = self.consumer
        return Load(consumer.slots, consumer.slots, consumer.active, consumer.reserved)

    def resize(self, delta: int) -> int:
        return self.consumer.resize(delta)


def start_in_process(consumer: Consumer, options: WorkerOptions) -> asyncio.Task[None] | None:
    """Autoscale the slots of this process, if ``--autoscale`` applies here (a threads
    or async pool); the caller cancels the task when the consumer stops."""
    if options.autoscale is None or options.pool not in ("threads", "async"):
        return None
    maximum, minimum = options.autoscale
    return asyncio.create_task(
        autoscale(ConsumerPool(consumer), consumer.app.broker, options.queues,
                  Policy(maximum, minimum, options.autoscale_keepalive)),
        name="autoscale")
