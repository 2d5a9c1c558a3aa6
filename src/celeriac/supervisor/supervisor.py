"""The supervisor: starts the worker processes, replaces the dead, passes on shutdown.

Each child consumes from the broker itself; the supervisor carries no tasks. It only
watches its children's sentinels:

- a child that exits while the worker runs is replaced (recycled after
  ``max_tasks_per_child``/``max_memory_per_child``, or died: its leases run out and its
  tasks are delivered again);
- the first SIGTERM/SIGINT is a warm shutdown: children get SIGTERM, finish what runs
  within the grace period and hand the rest back; the supervisor exits 0 when all are
  gone;
- a second SIGTERM/SIGINT is a cold stop: children get SIGQUIT and hand everything
  back at once; any still alive after a few seconds are killed. Children take repeated
  SIGTERMs as one warm stop, so signalling the whole process group (systemd, supervisord)
  is a warm shutdown too;
- a child that cannot start for a reason no restart fixes (exit code ``EXIT_REFUSED``: a
  missing client library, a bad broker URL) stops the whole worker with that code,
  instead of being restarted into the same error.

The supervisor is also the node (``celeriac.node``): its processes publish their numbers
in a shared-memory board (``worker.status``) that it sums up for the node's services
(heartbeats, node-level control), which run on a thread beside the watch loop
(``node.agent``), and for ``/metrics`` and the health checks (``monitor.endpoint``), served
on a thread of their own. What those services ask of the node (resize the pool, shut
down) is queued to the watch loop, which alone starts and stops processes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from celeriac.monitor.endpoint import NodeMetrics
from celeriac.node.agent import NodeAgent
from celeriac.node.base import NodeSnapshot
from celeriac.node.services import node_services
from celeriac.supervisor.deadlines import Deadlines
from celeriac.worker.child import EXIT_OK, EXIT_REFUSED, RETIRE_SIGNAL, child_main
from celeriac.worker.options import WorkerOptions
from celeriac.worker.status import StatusBoard

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.supervisor")

POLL_INTERVAL = 0.2
COLD_STOP_KILL_AFTER = 5.0
RESTART_BACKOFF_MAX = 10.0
QUICK_DEATH = 2.0  # a child dying sooner than this after its start is crashing, not recycling
# Process indices a node can have (pool_grow, autoscaling): the shared-memory arrays are
# made this long at start. A few hundred bytes per index.
PROCESS_CAPACITY = 64


@dataclass
class Child:
    index: int
    process: BaseProcess
    started_at: float


class Supervisor:
    def __init__(self, options: WorkerOptions, app: App | None = None) -> None:
        self.options = options
        self.app = app  # the node's services need it; without it they do not run
        self.name = options.hostname
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, Child] = {}
        self._signals = 0
        self._stop_deadline: float | None = None
        self._quick_deaths = 0
        self.capacity = max(options.processes, PROCESS_CAPACITY,
                            options.autoscale[0] if options.autoscale else 0)
        self._deadlines = Deadlines(self._context, options, self.capacity)  # time limit backstop
        self._board = StatusBoard(self._context, self.capacity)
        self._size = options.processes  # processes the pool should have
        self._retiring: set[int] = set()  # indices shrunk away: not replaced when they exit
        self._retired_processed = 0  # what replaced processes had processed
        self._indices: tuple[int, ...] = ()  # live indices, for other threads to read
        self._requests: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.exit_code = 0

    def run(self) -> int:
        metrics = None
        if self.options.metrics_port is not None and self.app is not None:
            # Before the first process starts: they write their counts where it reads.
            metrics = NodeMetrics(self.app, self.options.metrics_host,
                                  self.options.metrics_port, list(self.options.queues))
            self.options = replace(self.options, metrics_dir=metrics.directory)
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        agent = None
        try:
            logger.info("starting %d worker process(es), pool %s, queues %s",
                        self.options.processes, self.options.pool,
                        ",".join(self.options.queues))
            for index in range(self.options.processes):
                self._start(index)
            if self.app is not None:
                agent = NodeAgent(SupervisedNode(self, self.app),
                                  node_services(self.app, self.options))
                agent.start()
                if metrics is not None:
                    metrics.start(SupervisedNode(self, self.app))
            self._watch()
        finally:
            if agent is not None:
                agent.stop()  # after the processes: its goodbye (worker-offline) is last
            if metrics is not None:
                metrics.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._deadlines.close()
        logger.info("all worker processes stopped")
        return self.exit_code

    # -- the node, as its services see it (node.base.NodeHandle; called from their thread)

    def snapshot(self) -> NodeSnapshot:
        with self._lock:
            indices, retired = self._indices, self._retired_processed
            retiring = frozenset(self._retiring)
        processes = tuple(replace(p, retiring=True) if p.index in retiring else p
                          for p in self._board.read(list(indices)))
        return NodeSnapshot(self.name, os.getpid(), self.options.pool, self.started_at,
                            processes, retired)

    def resize(self, delta: int) -> int:
        """Grow or shrink the prefork pool by ``delta`` processes (see NodeHandle)."""
        if self.options.pool != "prefork":
            raise ValueError(f"the {self.options.pool} pool runs its slots in one process; "
                             "its size changes there, not in the supervisor")
        with self._lock:
            target = self._size + delta
            if target < 1:
                raise ValueError(f"the pool has {self._size} process(es): it cannot shrink "
                                 f"by {-delta}")
            if target > self.capacity:
                raise ValueError(f"the pool cannot grow past {self.capacity} processes")
            self._size = target
        if delta:  # resize(0) only asks the size
            self._requests.put(self._apply_size)
        return target

    def shutdown(self) -> None:
        self._requests.put(lambda: self._begin_stop(signal.SIGTERM) if not self.stopping
                           else None)

    def _apply_size(self) -> None:
        """Start or warm-stop processes until the pool has ``_size`` (watch loop only)."""
        if self.stopping:
            return
        live = sorted(i for i in self._children if i not in self._retiring)
        for index in range(self.capacity):
            if len(live) >= self._size:
                break
            if index not in self._children:
                self._start(index)
                live.append(index)
        for index in self._to_stop(live, len(live) - self._size):
            # It hands back what it prefetched and finishes its task, however long that
            # takes (RETIRE_SIGNAL): a shrink never cuts a running task short.
            with self._lock:  # (snapshot() reads it from the services' thread)
                self._retiring.add(index)
            logger.info("stopping worker process %d: the pool shrinks to %d", index,
                        self._size)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._children[index].process.pid or 0, RETIRE_SIGNAL)

    def _to_stop(self, live: list[int], count: int) -> list[int]:
        """Which ``count`` processes a shrink stops: idle ones (running nothing, per the
        status board) before busy ones, so the pool gives back capacity at once and no
        task waits for a process to drain; the highest indices first among equals."""
        if count <= 0:
            return []
        busy = {p.index for p in self._board.read(live) if p.active}
        return sorted(live, key=lambda index: (index in busy, -index))[:count]

    @property
    def stopping(self) -> bool:
        return self._signals > 0

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children.values()
                if child.process.pid is not None]

    # -- children -------------------------------------------------------------------------

    def _start(self, index: int) -> None:
        self._deadlines.reset(index)
        status = self._board.slot(index)
        status.clear()
        process = self._context.Process(target=child_main,
                                        args=(self.options, index, self._deadlines.slot(index),
                                              status),
                                        name=f"worker-{index}", daemon=False)
        process.start()
        self._children[index] = Child(index, process, time.monotonic())
        self._publish_indices()
        logger.debug("started worker process %d (pid %s)", index, process.pid)

    def _watch(self) -> None:
        while self._children:
            sentinels = {child.process.sentinel: child for child in self._children.values()}
            for sentinel in wait(list(sentinels), timeout=POLL_INTERVAL):
                self._reap(sentinels[sentinel])  # type: ignore[index]
            while not self._requests.empty():
                self._requests.get_nowait()()
            self._deadlines.enforce({index: child.process.pid
                                     for index, child in self._children.items()})
            self._enforce_stop_deadline()

    def _reap(self, child: Child) -> None:
        child.process.join()
        code = child.process.exitcode
        del self._children[child.index]
        with self._lock:
            self._retired_processed += self._board.slot(child.index).read().processed
            self._board.slot(child.index).clear()
            shrunk = child.index in self._retiring
            self._retiring.discard(child.index)
        self._publish_indices()
        if shrunk:
            # (-RETIRE_SIGNAL: it was still starting, before its handler; it ran nothing)
            if code not in (EXIT_OK, None, -RETIRE_SIGNAL):
                logger.warning("worker process %d exited with code %s as the pool shrank",
                               child.index, code)
            return
        if self.stopping:
            if code not in (EXIT_OK, None):
                logger.warning("worker process %d exited with code %s during shutdown",
                               child.index, code)
            return
        if code == EXIT_REFUSED:
            # It cannot start for a reason no restart fixes (it logged why): every
            # process would meet the same error, so restarting them would only repeat it.
            logger.error("worker process %d cannot start (see the error above): "
                         "stopping the worker", child.index)
            self.exit_code = EXIT_REFUSED
            self._begin_stop(signal.SIGTERM)
            return
        lived = time.monotonic() - child.started_at
        if code == EXIT_OK:
            logger.info("worker process %d recycled after %.1fs; starting a new one",
                        child.index, lived)
            self._quick_deaths = 0
        else:
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            logger.error("worker process %d (pid %s) died with %s; its tasks will be "
                         "delivered again; starting a new one", child.index,
                         child.process.pid, how)
            self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH else 0
        if self._quick_deaths:
            # A child that dies at once (bad import, broker down) must not spin the CPU.
            time.sleep(min(RESTART_BACKOFF_MAX, 0.1 * 2 ** self._quick_deaths))
        if not self.stopping:
            self._start(child.index)

    def _publish_indices(self) -> None:
        with self._lock:
            self._indices = tuple(sorted(self._children))

    # -- shutdown -------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        if self._signals == 0:
            logger.info("warm shutdown (%s): letting running tasks finish within %.0fs",
                        name, self.options.shutdown_timeout)
        else:
            logger.warning("cold shutdown (a second %s): handing every task back now", name)
        self._begin_stop(signal.SIGTERM)

    def _begin_stop(self, first: signal.Signals) -> None:
        """Warm stop on the first request (children get ``first``), cold on the next.

        Children take any number of SIGTERMs as one warm stop (a signal sent to the
        whole process group reaches them twice), so a cold stop is always SIGQUIT.
        """
        self._signals += 1
        if self._signals == 1:
            self._signal_children(first)
            self._stop_deadline = time.monotonic() + self.options.shutdown_timeout + 10
        else:
            self._signal_children(signal.SIGQUIT)
            self._stop_deadline = time.monotonic() + COLD_STOP_KILL_AFTER

    def _signal_children(self, signum: signal.Signals) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):  # it exited in the meantime
                os.kill(pid, signum)

    def _enforce_stop_deadline(self) -> None:
        if self._stop_deadline is not None and time.monotonic() > self._stop_deadline:
            logger.error("killing %d worker process(es) that did not stop in time",
                         len(self._children))
            self._signal_children(signal.SIGKILL)
            self._stop_deadline = None
            self.exit_code = 1


class SupervisedNode:
    """The supervisor as its node's services see it (``node.base.NodeHandle``)."""

    def __init__(self, supervisor: Supervisor, app: App) -> None:
        self.supervisor = supervisor
        self.app = app
        self.name = supervisor.name
        self.options = supervisor.options

    def snapshot(self) -> NodeSnapshot:
        return self.supervisor.snapshot()

    def resize(self, delta: int) -> int:
        return self.supervisor.resize(delta)

    def shutdown(self) -> None:
        self.supervisor.shutdown()
