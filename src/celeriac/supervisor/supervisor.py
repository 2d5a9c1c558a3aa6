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
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from celeriac.supervisor.deadlines import Deadlines
from celeriac.worker.child import EXIT_OK, EXIT_REFUSED, child_main
from celeriac.worker.options import WorkerOptions

logger = logging.getLogger("celeriac.supervisor")

POLL_INTERVAL = 0.2
COLD_STOP_KILL_AFTER = 5.0
RESTART_BACKOFF_MAX = 10.0
QUICK_DEATH = 2.0  # a child dying sooner than this after its start is crashing, not recycling


@dataclass
class Child:
    index: int
    process: BaseProcess
    started_at: float


class Supervisor:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, Child] = {}
        self._signals = 0
        self._stop_deadline: float | None = None
        self._quick_deaths = 0
        self._deadlines = Deadlines(self._context, options)  # hard time limit backstop
        self.exit_code = 0

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            logger.info("starting %d worker process(es), pool %s, queues %s",
                        self.options.processes, self.options.pool,
                        ",".join(self.options.queues))
            for index in range(self.options.processes):
                self._start(index)
            self._watch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._deadlines.close()
        logger.info("all worker processes stopped")
        return self.exit_code

    @property
    def stopping(self) -> bool:
        return self._signals > 0

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children.values()
                if child.process.pid is not None]

    # -- children -------------------------------------------------------------------------

    def _start(self, index: int) -> None:
        self._deadlines.reset(index)
        process = self._context.Process(target=child_main,
                                        args=(self.options, index, self._deadlines.slot(index)),
                                        name=f"worker-{index}", daemon=False)
        process.start()
        self._children[index] = Child(index, process, time.monotonic())
        logger.debug("started worker process %d (pid %s)", index, process.pid)

    def _watch(self) -> None:
        while self._children:
            sentinels = {child.process.sentinel: child for child in self._children.values()}
            for sentinel in wait(list(sentinels), timeout=POLL_INTERVAL):
                self._reap(sentinels[sentinel])  # type: ignore[index]
            self._deadlines.enforce({index: child.process.pid
                                     for index, child in self._children.items()})
            self._enforce_stop_deadline()

    def _reap(self, child: Child) -> None:
        child.process.join()
        code = child.process.exitcode
        del self._children[child.index]
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
