"""Time limits and revocation in a worker process: what may run, and for how long.

The executor asks the ``Guard`` two things about every message:

- ``refused(message)``: is its id revoked? An O(1) look-up in a dict kept in memory. The
  dict is filled from the backend's revocation store (``celeriac.backends.revocations``)
  once before the first task runs (``start``), then every ``REVOKE_POLL`` seconds in
  the background (``watch``): the store is never asked per task. A revoked message is
  acked and its outcome stored as REVOKED, without running it.
- ``run(task, message, call)``: run it, under its time limits if it has any, and
  interruptible by ``revoke(terminate=True)``. A task without limits costs one dict
  insert and delete here: no timer, no thread, no wrapper.

Limits (``celeriac.limits`` says where they come from):

- soft, sync task: ``SoftTimeLimitExceeded`` is raised inside the task's thread with
  ``PyThreadState_SetAsyncExc``. Python delivers it between bytecodes, so a thread
  blocked in one long C call (a ``time.sleep``, a socket read without timeout, a regex)
  sees it only when that call returns. The task may catch it, clean up, and return or
  raise.
- soft, async task: the task is cancelled; it sees ``CancelledError`` (and may clean up
  in ``finally``/``except``); if the cancellation propagates, the outcome is a FAILURE
  with ``SoftTimeLimitExceeded``.
- hard, async task: cancelled again; the outcome is a FAILURE with ``TimeLimitExceeded``
  and the process carries on.
- hard, sync task: a thread cannot be stopped from outside, so the slot stops waiting
  for it: the outcome is a FAILURE with ``TimeLimitExceeded``, stored and acked as usual,
  the stuck thread is abandoned (a fresh thread pool takes over), and a supervised
  process replaces itself (a warm stop; its supervisor starts a new one), which is the
  only way to get rid of the thread. In ``-P threads`` that replaces the process of all
  its slots; the other running tasks get the shutdown grace period to finish. Without a
  supervisor (``-P solo``, ``ThreadedWorker``) the abandoned thread runs on until its
  function returns.

``revoke(terminate=True)`` of a running task stops it the same way as a hard limit
(cancellation for async tasks; abandoning the thread and replacing the process for sync
ones), with a REVOKED outcome.

If the process cannot act on its own limits (its event loop is blocked), the supervisor
does: see ``celeriac.worker.deadlines`` and ``celeriac.supervisor.deadlines``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

from celeriac import states
from celeriac.backends.revocations import (
    TERMINATE,
    TIME_LIMIT,
    RevocationStore,
    revocation_store,
)
from celeriac.errors import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from celeriac.limits import TimeLimits, resolve
from celeriac.message import Message
from celeriac.outcome import Outcome
from celeriac.worker.broker_failures import log_failure
from celeriac.worker.pools import ThreadRunner

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.task import Task
    from celeriac.worker.deadlines import DeadlineSlot
    from celeriac.worker.executor import SyncRunner

logger = logging.getLogger("celeriac.worker")

T = TypeVar("T")

REVOKE_POLL = 1.0  # seconds between reads of the revocation store
PRUNE_INTERVAL = 60.0  # seconds between sweeps of expired revocations from memory
RETRY_BACKOFF_MAX = 10.0

SOFT: Final = "soft"
HARD: Final = "hard"
TERMINATED: Final = "terminated"


class Interrupted(Exception):
    """A run was cut short (time limit, terminating revoke); ``outcome`` says how."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.exc_message)
        self.outcome = outcome


class Guard:
    """Revocations and time limits for one worker process's executor."""

    def __init__(self, app: App, runner: SyncRunner) -> None:
        self.app = app
        self.runner = runner  # where sync tasks run; replaced when a thread is abandoned
        self.poll_interval = REVOKE_POLL
        self._revoked: dict[str, tuple[str, float | None]] = {}  # id -> (mode, until)
        self._running: dict[str, _Running] = {}
        self._store: RevocationStore | None = None
        self._cursor = ""
        self._on_stuck: Callable[[], None] | None = None
        self._deadlines: DeadlineSlot | None = None
        self._exit_within = 0.0
        self._hard: dict[_Running, float] = {}  # limited runs -> their hard deadline
        self._published: _Running | None = None
        self._exiting = False  # replacing this process: publish no more task deadlines
        self._own_runners: list[ThreadRunner] = []

    def supervise(self, on_stuck: Callable[[], None], deadlines: DeadlineSlot | None,
                  exit_within: float) -> None:
        """This process has a supervisor: ``on_stuck`` makes it replace the process.

        ``deadlines`` is this process's entry in the supervisor's deadline array;
        ``exit_within`` how long a process replacing itself may take before it is killed.
        """
        self._on_stuck = on_stuck
        self._deadlines = deadlines
        self._exit_within = exit_within

    # -- revocations ----------------------------------------------------------------------

    async def start(self) -> None:
        """Read the revocations before the first task runs (a failure is logged)."""
        self._store = revocation_store(self.app.backend)
        if self._store is None:
            logger.info("the result backend keeps no revocations: revoke() cannot reach "
                        "this worker")
            return
        try:
            await self.refresh()
        except Exception:
            log_failure(logger, "could not read the revoked task ids; retrying in the "
                             "background")

    async def watch(self) -> None:
        """Read new revocations every ``poll_interval`` seconds, until cancelled."""
        failures = 0
        pruned = time.monotonic()
        try:
            while self._store is not None:
                await asyncio.sleep(min(RETRY_BACKOFF_MAX, self.poll_interval * 2 ** failures))
                try:
                    await self.refresh()
                    failures = 0
                except Exception:
                    failures += 1
                    log_failure(logger, "could not read the revoked task ids (attempt %d)",
                                     failures)
                if time.monotonic() - pruned > PRUNE_INTERVAL:
                    self._prune()
                    pruned = time.monotonic()
            await asyncio.Event().wait()  # nothing to watch: idle until cancelled
        finally:
            for runner in self._own_runners:
                runner.shutdown()

    async def refresh(self) -> None:
        """Read the revocations added since the last read; terminate running ones."""
        if self._store is None:
            return
        while True:  # in batches, until the cursor stops moving
            entries, cursor = await self._store.read(self._cursor)
            if cursor == self._cursor:
                return
            self._cursor = cursor
            for entry in entries:
                self._revoked[entry.task_id] = (entry.mode, entry.expires_at)
                if entry.mode == TERMINATE:
                    running = self._running.get(entry.task_id)
                    if running is not None:
                        self._stop(running, TERMINATED)

    def _prune(self) -> None:
        now = time.time()
        expired = [task_id for task_id, (_, until) in self._revoked.items()
                   if until is not None and until <= now]
        for task_id in expired:
            del self._revoked[task_id]

    def is_revoked(self, task_id: str) -> bool:
        """Whether this process knows ``task_id`` to be revoked (as of its last read)."""
        entry = self._revoked.get(task_id)
        return entry is not None and (entry[1] is None or entry[1] > time.time())

    def revoked_ids(self) -> list[str]:
        """The revoked task ids this process knows of (``inspect().revoked()``)."""
        now = time.time()
        return [task_id for task_id, (_, until) in self._revoked.items()
                if until is None or until > now]

    def running(self) -> list[tuple[Message, float]]:
        """The tasks running now, with the Unix time each started (``inspect().active()``)."""
        return [(running.message, running.started_at) for running in self._running.values()]

    def refused(self, message: Message) -> Outcome | None:
        """The outcome to store instead of running ``message``, if its id is revoked."""
        entry = self._revoked.get(message.id)
        if entry is None:
            return None
        mode, until = entry
        if until is not None and until <= time.time():
            del self._revoked[message.id]
            return None
        name = f"{message.task}[{message.id}]"
        if mode == TIME_LIMIT:
            logger.warning("Task %s was killed for passing its hard time limit; not run "
                           "again", name)
            exc: Exception = TimeLimitExceeded(f"task {name} passed its hard time limit and "
                                               "its worker process was killed")
            return Outcome.failure(exc, states.FAILURE, message.task, message.retries,
                                   (message.args, message.kwargs))
        logger.info("Task %s revoked, not run", name)
        return Outcome.failure(TaskRevokedError(f"task {name} was revoked before it ran"),
                               states.REVOKED, message.task, message.retries)

    # -- running --------------------------------------------------------------------------

    def limits_for(self, task: Task[Any, Any], message: Message) -> TimeLimits | None:
        """The time limits of one run: per call, else per task, else from the settings."""
        options, conf = task.options, self.app.conf
        return resolve(message.soft_time_limit, message.time_limit, options.soft_time_limit,
                       options.time_limit, conf.task_soft_time_limit, conf.task_time_limit)

    async def run(self, task: Task[Any, Any], message: Message,
                  call: Callable[[SyncRunner], Awaitable[T]]) -> T:
        """``call(runner)`` under the task's limits; raises Interrupted when cut short."""
        slot = asyncio.current_task()
        assert slot is not None, "Guard.run runs in a task"
        limits = self.limits_for(task, message)
        running = _Running(message, slot, task.is_async, limits)
        self._running[message.id] = running
        try:
            if limits is None:
                return await call(self.runner)
            return await self._run_limited(running, call)
        except asyncio.CancelledError:
            if running.reason is None:  # not ours: the worker is stopping
                raise
            raise Interrupted(_outcome(running)) from None
        finally:
            if self._running.get(message.id) is running:
                del self._running[message.id]
            while running.cancels:  # undo ours, so the slot is not "being cancelled"
                running.cancels -= 1
                slot.uncancel()

    async def _run_limited(self, running: _Running,
                           call: Callable[[SyncRunner], Awaitable[T]]) -> T:
        limits = running.limits
        assert limits is not None
        loop = asyncio.get_running_loop()
        timers = []
        if limits.soft is not None:
            timers.append(loop.call_later(limits.soft, self._soft_limit, running))
        if limits.hard is not None:
            timers.append(loop.call_later(limits.hard, self._stop, running, HARD))
            self._add_deadline(running, time.monotonic() + limits.hard)
        try:
            if running.is_async:
                return await call(self.runner)
            thread = running.thread = _Thread()
            runner = self.runner

            async def in_thread(fn: Callable[[], Any]) -> Any:
                return await runner(thread.wrap(fn))

            return await call(in_thread)
        finally:
            for timer in timers:
                timer.cancel()
            if limits.hard is not None:
                self._remove_deadline(running)

    def _soft_limit(self, running: _Running) -> None:
        logger.warning("Task %s passed its soft time limit (%gs)", running.name,
                       running.limits.soft if running.limits else 0)
        if running.thread is not None:
            running.thread.raise_soft()
        else:
            self._cancel(running, SOFT)

    def _stop(self, running: _Running, reason: str) -> None:
        """Stop waiting for a run (hard limit, terminate); abandon a thread that runs it."""
        if self._running.get(running.message.id) is not running:
            return  # it has just finished
        if reason == HARD:
            logger.error("Task %s passed its hard time limit (%gs): stopping it",
                         running.name, running.limits.hard if running.limits else 0)
        else:
            logger.warning("Task %s revoked while running: terminating it", running.name)
        stuck = not running.is_async
        if running.thread is not None:
            state = running.thread.stop()
            if state is _DONE:
                return  # the function returned; its result is on its way to the slot
            stuck = state is _RUNNING
        self._cancel(running, reason)
        if stuck:
            self._abandon_thread(running)

    def _cancel(self, running: _Running, reason: str) -> None:
        running.reason = reason
        running.cancels += 1
        running.slot.cancel(f"{running.name}: {reason}")

    def _abandon_thread(self, running: _Running) -> None:
        """A pool thread is stuck in a task: give up on it, and on this process if we can."""
        old = self.runner
        if isinstance(old, ThreadRunner):
            self.runner = ThreadRunner(old.threads, old.cap)
            self._own_runners.append(self.runner)
        if self._on_stuck is None:
            logger.error("a thread is still running %s and cannot be stopped; it runs on "
                         "until the function returns (no supervisor to replace this "
                         "process)", running.name)
            return
        logger.error("a thread is still running %s and cannot be stopped: replacing this "
                     "worker process", running.name)
        if self._deadlines is not None:
            self._exiting = True
            self._hard.clear()
            self._published = None
            self._deadlines.publish_exit(time.monotonic() + self._exit_within)
        self._on_stuck()

    # -- the supervisor's view of hard deadlines -------------------------------------------

    def _add_deadline(self, running: _Running, deadline: float) -> None:
        if self._deadlines is None or self._exiting:
            return
        self._hard[running] = deadline
        current = self._published
        if current is None or deadline < self._hard.get(current, float("inf")):
            self._publish(running)

    def _remove_deadline(self, running: _Running) -> None:
        if self._deadlines is None or self._hard.pop(running, None) is None:
            return
        if self._published is running:
            soonest = min(self._hard, key=self._hard.__getitem__, default=None)
            self._publish(soonest)

    def _publish(self, running: _Running | None) -> None:
        assert self._deadlines is not None
        self._published = running
        if running is None:
            self._deadlines.clear()
        else:
            self._deadlines.publish(self._hard[running], running.message.id,
                                    running.message.task)


@dataclass(eq=False, slots=True)
class _Running:
    """A task this process is running now."""

    message: Message
    slot: asyncio.Task[Any]  # the consumer's task awaiting it
    is_async: bool
    limits: TimeLimits | None
    reason: str | None = None  # why the guard cancelled it: SOFT, HARD, TERMINATED
    cancels: int = 0  # cancellations the guard requested, to be undone after
    thread: _Thread | None = field(default=None)
    started_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return f"{self.message.task}[{self.message.id}]"


def _outcome(running: _Running) -> Outcome:
    message, limits = running.message, running.limits
    if running.reason == TERMINATED:
        exc: Exception = TaskRevokedError(f"task {running.name} was revoked and terminated "
                                          "while it ran")
        return Outcome.failure(exc, states.REVOKED, message.task, message.retries)
    if running.reason == SOFT:
        exc = SoftTimeLimitExceeded(f"task {running.name} passed its soft time limit of "
                                    f"{limits.soft if limits else 0:g}s")
    else:
        exc = TimeLimitExceeded(f"task {running.name} passed its time limit of "
                                f"{limits.hard if limits else 0:g}s")
    return Outcome.failure(exc, states.FAILURE, message.task, message.retries,
                           (message.args, message.kwargs))


# -- the thread of a sync task with limits --------------------------------------------------

_QUEUED: Final = "queued"
_RUNNING: Final = "running"
_DONE: Final = "done"
_CANCELLED: Final = "cancelled"

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


class _Thread:
    """The pool thread of one limited sync task, and what the loop may do to it.

    ``lock`` makes "is the task's function running in that thread" and "raise in that
    thread" one step, so the soft-limit exception is never raised in a thread that has
    moved on to other work: when the function returns, a pending exception that has not
    been delivered yet is cleared under the same lock. ``with`` is used for the lock in
    the task thread because the interpreter delivers no asynchronous exception between
    a ``with`` statement's ``__enter__`` and its body.
    """

    __slots__ = ("ident", "injected", "lock", "soft_due", "state")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: str = _QUEUED
        self.ident = 0
        self.injected = False
        self.soft_due = False

    def wrap(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with self.lock:
                if self.state is _CANCELLED:  # stopped before a thread was free for it
                    return None
                self.state = _RUNNING
                self.ident = threading.get_ident()
                if self.soft_due:
                    raise SoftTimeLimitExceeded()
            try:
                return fn()
            finally:
                with self.lock:
                    self.state = _DONE
                    if self.injected:  # not delivered yet: it must not escape the task
                        _set_async_exc(ctypes.c_ulong(self.ident), None)

        return run

    def raise_soft(self) -> None:
        """Raise SoftTimeLimitExceeded in the task's thread (or as soon as it starts)."""
        with self.lock:
            if self.state is _RUNNING:
                _set_async_exc(ctypes.c_ulong(self.ident),
                               ctypes.py_object(SoftTimeLimitExceeded))
                self.injected = True
            elif self.state is _QUEUED:
                self.soft_due = True

    def stop(self) -> str:
        """Make a queued run never start; return the state it was in."""
        with self.lock:
            state = self.state
            if state is _QUEUED:
                self.state = _CANCELLED
            return state
