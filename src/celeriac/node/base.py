"""The worker node as its node-wide services see it.

A node is what one ``celeriac worker`` command runs: a supervisor and its worker
processes (prefork, threads, async), or a single process (``-P solo``). Some things are
answered once per node, not once per process: heartbeats (``worker-heartbeat`` with the
node's active and processed counts), the node-level remote-control commands
(``pool_grow``, ``pool_shrink``, ``shutdown``), ``/metrics``, ``/healthz`` and
``/readyz``. They run as *node services*: coroutines given a ``NodeContext``, which tells
them the node's name, settings and live numbers (``NodeSnapshot``, read from the
processes' shared-memory entries, ``worker.status``), lets them ask the node to resize
or stop, and holds a connected bus (``celeriac.bus``) to publish on.

Where they run is ``node.agent``'s business: on a thread of the supervisor, or on the
event loop of a solo worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from celeriac.worker.status import ProcessSnapshot

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.bus.base import Bus
    from celeriac.worker.options import WorkerOptions


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """The node's numbers right now: the sum over its live processes, plus what the
    processes that were replaced (recycled, died) had processed before they went."""

    name: str
    pid: int  # the supervisor's (the process itself with -P solo)
    pool: str
    started_at: float  # Unix time the node started
    processes: tuple[ProcessSnapshot, ...]
    retired_processed: int = 0

    @property
    def slots(self) -> int:
        return sum(p.slots for p in self.processes)

    @property
    def active(self) -> int:
        return sum(p.active for p in self.processes)

    @property
    def reserved(self) -> int:
        return sum(p.reserved for p in self.processes)

    @property
    def processed(self) -> int:
        return self.retired_processed + sum(p.processed for p in self.processes)

    @property
    def consuming(self) -> bool:
        """Every live process reached its broker and consumes (but those shrunk away,
        which stopped consuming and drain)."""
        serving = [p for p in self.processes if not p.retiring]
        return bool(serving) and all(p.consuming for p in serving)

    def stalled(self, now: float, limit: float) -> list[ProcessSnapshot]:
        """Processes whose event loop has not written its entry for ``limit`` seconds
        (``now`` is ``time.monotonic()``); a process that never wrote is starting."""
        return [p for p in self.processes if p.beat and now - p.beat > limit]


class NodeHandle(Protocol):
    """What a node offers its services; thread-safe (services run off the main thread)."""

    name: str
    app: App
    options: WorkerOptions

    def snapshot(self) -> NodeSnapshot: ...

    def resize(self, delta: int) -> int:
        """Grow (``delta`` > 0) or shrink the pool by ``delta`` processes (or slots, for
        the pools that run many in one process); returns the size it will have
        (``resize(0)`` only asks it: the autoscaler does, ``worker.autoscale``). Raises
        ``ValueError`` with the reason when it cannot (below 1, above the capacity, a
        pool that cannot change its size)."""
        ...

    def shutdown(self) -> None:
        """A warm shutdown of the whole node, as a first SIGTERM."""
        ...


@dataclass
class NodeContext:
    """What a node service is given: the node, and a bus connected on its loop."""

    node: NodeHandle
    bus: Bus
    started_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def app(self) -> App:
        return self.node.app


# A node service runs until cancelled (when the node stops); it may use ``finally`` to
# say goodbye (``worker-offline``), within ``node.agent.GOODBYE_TIMEOUT`` seconds.
NodeService = Callable[[NodeContext], Coroutine[Any, Any, None]]
