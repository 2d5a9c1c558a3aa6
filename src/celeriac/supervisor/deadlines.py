"""The supervisor's backstop for hard time limits: kill a process stuck past a deadline.

A worker process enforces its own time limits on its event loop
(``celeriac.worker.guard``). When that loop is itself stuck (an async task blocking
it, a C call holding the GIL), nothing in the process can act, so each process
publishes the hard deadline of its running task in a shared-memory array
(``celeriac.worker.deadlines``) and the supervisor, which polls its children anyway,
SIGKILLs a process whose deadline passed more than ``KILL_MARGIN`` seconds ago.

The killed task's outcome is then stored by the supervisor: a FAILURE with
``TimeLimitExceeded``, under the task id the process published, and the id is added to
the revocations in mode ``time_limit``, so that when its message comes back (its lease
runs out, since the dead process never acked it) the worker that gets it acks it
without running it again. The supervisor loads the app (already imported by the
``worker`` command) to reach the result backend only when it first has to. With a
result backend that keeps no revocations (rpc://), the task is only killed: its message
is delivered again, and a task that keeps being killed is dead-lettered at the
delivery limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from multiprocessing.context import SpawnContext
from typing import TYPE_CHECKING

from celeriac import states
from celeriac.backends.revocations import TIME_LIMIT, revocation_store
from celeriac.errors import TimeLimitExceeded
from celeriac.outcome import Outcome
from celeriac.worker.deadlines import DeadlineSlot, Entry, Published
from celeriac.worker.options import WorkerOptions

if TYPE_CHECKING:
    from celeriac.app import App

logger = logging.getLogger("celeriac.supervisor")

# Seconds past a published deadline before the supervisor kills: the process's own
# enforcement, on time, makes the kill unnecessary in every case but a stuck loop.
KILL_MARGIN = 2.0


class Deadlines:
    """One published deadline per worker process index, and what to do when one passes."""

    def __init__(self, context: SpawnContext, options: WorkerOptions,
                 capacity: int | None = None) -> None:
        self.options = options
        self._entries = context.RawArray(Entry, max(1, capacity or options.processes))
        self._app: App | None = None

    def slot(self, index: int) -> DeadlineSlot:
        """The entry a worker process of ``index`` writes (passed to it at spawn)."""
        return DeadlineSlot(self._entries, index)

    def reset(self, index: int) -> None:
        """Forget what the previous process of ``index`` published."""
        self.slot(index).clear()

    def enforce(self, pids: Mapping[int, int | None]) -> None:
        """Kill each process (by index: pid) whose published deadline is well past."""
        now = time.monotonic()
        for index, pid in pids.items():
            slot = self.slot(index)
            published = slot.read()
            if pid is None or published is None or now < published.deadline + KILL_MARGIN:
                continue
            slot.clear()
            late = now - published.deadline
            if published.task_id is None:
                logger.error("worker process %d (pid %d) did not exit %.1fs after it began "
                             "to replace itself: killing it", index, pid, late)
            else:
                logger.error("worker process %d (pid %d) is stuck %.1fs past the hard time "
                             "limit of %s[%s]: killing it", index, pid, late, published.task,
                             published.task_id)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if published.task_id is not None:
                self._report(published)

    def _report(self, published: Published) -> None:
        """Store the killed task's FAILURE, and mark it not to run again."""
        try:
            if self._app is None:
                from celeriac.loader import load_app

                self._app = load_app(self.options.app_spec)
            app = self._app
            app._run_sync(_store_time_limit(app, published))
        except Exception:
            logger.exception("could not store the time limit failure of %s[%s]; its message "
                             "will be delivered again", published.task, published.task_id)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


async def _store_time_limit(app: App, published: Published) -> None:
    assert published.task_id is not None
    backend = await app._connected_backend()
    store = revocation_store(backend)
    if store is None:
        logger.warning("the %s:// result backend keeps no revocations: %s[%s] will be "
                       "delivered again", backend.scheme, published.task, published.task_id)
        return
    ttl = app.conf.result_expires
    await store.add([published.task_id], TIME_LIMIT, ttl)
    exc = TimeLimitExceeded(f"task {published.task}[{published.task_id}] passed its hard "
                            "time limit and its worker process was killed")
    outcome = Outcome.failure(exc, states.FAILURE, published.task)
    await backend.store_many({published.task_id: app.encode_outcome(outcome)}, ttl)
