"""``/healthz`` and ``/readyz``: is the node alive, and should it be given work?

Kubernetes (and any load balancer or supervisor) asks two different questions:

- **live** (``/healthz``): restart me if not. A node is live while the event loop of
  every one of its processes keeps rewriting its status entry (``worker.status``, a few
  times a second): a loop stuck for ``STALL_LIMIT`` seconds cannot fetch, ack or extend
  a lease, and only a restart helps. A broker that is down is *not* a liveness failure:
  the processes wait for it (and the watchdog, ``worker_watchdog_timeout``, replaces a
  process that lost it for good); restarting pods would not bring the broker back.
- **ready** (``/readyz``): every live process reached its broker and consumes. A node
  starting, waiting for its broker, or in a warm shutdown is not ready.

Each answer is an HTTP status (200 or 503) and one line saying why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from celeriac.node.base import NodeSnapshot

STALL_LIMIT = 30.0  # seconds a process's loop may go without writing its status


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str

    @property
    def status(self) -> int:
        return 200 if self.ok else 503


def liveness(node: NodeSnapshot, now: float | None = None,
             limit: float = STALL_LIMIT) -> Health:
    now = time.monotonic() if now is None else now
    stalled = node.stalled(now, limit)
    if stalled:
        which = ", ".join(f"{p.index} (pid {p.pid}, {now - p.beat:.0f}s)" for p in stalled)
        return Health(False, f"stalled: the event loop of process {which} has not run "
                             f"for over {limit:.0f}s")
    return Health(True, f"live: {len(node.processes)} process(es)")


def readiness(node: NodeSnapshot) -> Health:
    if not node.processes:
        return Health(False, "not ready: no worker process is running")
    waiting = [p.index for p in node.processes if not p.consuming]
    if waiting:
        return Health(False, f"not ready: process(es) {', '.join(map(str, waiting))} not "
                             "consuming (starting, waiting for the broker, or stopping)")
    return Health(True, f"ready: {len(node.processes)} process(es) consuming")
