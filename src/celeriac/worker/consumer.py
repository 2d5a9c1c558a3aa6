"""The consumer: one event loop that fetches, runs, acks and keeps leases alive.

Four cooperating loops share the deliveries this process holds:

- fetch:   leases batches from the broker up to the prefetch budget
           (``prefetch_multiplier x slots``) and queues them for the slots;
- slots:   ``slots`` runners, each taking the next delivery and running it
           (sync tasks on the pool's threads, async tasks on this loop);
- flush:   carries out finished verdicts in batches: results stored first, then what
           follows them in workflows (celeriac.worker.workflow) and retries published,
           then acks and dead letters, so a crash in between re-runs a task rather than
           losing it;
- leases:  extends the leases of everything held, every third of the lease time, and
           notices leases that were lost (this process was paused, for example).

Beside them, with ``control`` set, a loop answers remote control
(``celeriac.control.listener``: ``inspect().active()``, ``add_consumer``...).

A watchdog in the lease loop ends the process loudly when no broker call has
succeeded for ``worker_watchdog_timeout`` seconds, rather than sitting idle forever.

One delivery's trouble stays with it: a slot that fails on a delivery dead-letters it
with the reason and goes on, and the flush sets aside (dead-letters) a verdict that
fails for a reason of its own instead of retrying its whole batch forever. A
redelivered task (which may be what killed a worker) starts only once the finished
verdicts are written, so that its death cannot take their acks with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from celeriac.app import App
from celeriac.brokers.base import Delivery
from celeriac.errors import describe
from celeriac.events.emitter import EventEmitter
from celeriac.events.emitter import acquire as acquire_emitter
from celeriac.events.emitter import release as release_emitter
from celeriac.events.tasks import TaskEvents
from celeriac.monitor.tally import TaskTally
from celeriac.uniqueness.send import release_finished
from celeriac.worker.broker_failures import log_failure, log_fetch_failure, quiet
from celeriac.worker.executor import Action, Executor, Prepared, SyncRunner, Verdict
from celeriac.worker.pools import ThreadRunner
from celeriac.worker.ratelimit import RateLimiter
from celeriac.worker.slots import SlotLoops
from celeriac.worker.status import PUBLISH_INTERVAL as STATUS_PUBLISH_INTERVAL
from celeriac.worker.status import StatusSlot
from celeriac.worker.verdicts import (
    publish_retries,
    set_aside,
    settle,
    store_outcomes,
    transient,
)
from celeriac.worker.workflow import follow_up

if TYPE_CHECKING:
    from celeriac.control.commands import ProcessInfo

logger = logging.getLogger("celeriac.worker")

FETCH_TIMEOUT = 1.0  # seconds a fetch may wait on the broker before checking for shutdown
FLUSH_MAX_BATCH = 500
FLUSH_LINGER = 0.002  # seconds a finished verdict may wait for its batch to fill
RETRY_BACKOFF_MAX = 5.0
# Finished verdicts waiting for the flush do not count against the prefetch budget (no
# other worker could run them), but only this many: a flush that keeps failing stops
# the fetching instead of piling up work.
UNFLUSHED_MAX = 2 * FLUSH_MAX_BATCH

# Quick tasks. A task whose recent runs all took under QUICK_TASK seconds runs in
# batches of up to RUN_BATCH_MAX calls per pool-thread hop, and while the tasks of this
# process are that quick, the prefetch budget grows to cover about PREFETCH_WINDOW
# seconds of work (at most PREFETCH_MAX deliveries), so that a fetch, a result write and
# an ack serve many tasks. Fairness is unchanged in substance: what waits behind a
# running task here is a few milliseconds of work at most.
QUICK_TASK = 0.001
QUICK_DECAY = 0.9  # a slow run is remembered until it decays below QUICK_TASK
RUN_BATCH_MAX = 64
PREFETCH_WINDOW = 0.01
PREFETCH_MAX = 256
STATUS_INTERVAL = STATUS_PUBLISH_INTERVAL


class StopReason(Enum):
    SHUTDOWN = "shutdown"  # asked to stop (signal)
    RECYCLE = "recycle"  # max tasks or max memory reached: replace this process
    BROKER_LOST = "broker_lost"  # the watchdog gave up on the broker


@dataclass(slots=True)
class Held:
    delivery: Delivery
    confirmed_at: float  # monotonic time the lease was last known to be ours
    started: bool = False
    finished: bool = False  # its verdict waits for the flush


@dataclass
class ConsumerStats:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    processed: int = 0
    lost_leases: int = 0
    deferred: int = 0  # over a rate limit: handed back until a token is due
    batched: int = 0  # quick tasks run in batches of more than one per thread hop
    total: Counter[str] = field(default_factory=Counter)  # finished, by task name


@dataclass
class _Pending:
    """Verdicts waiting for the flush loop."""

    items: list[tuple[Held, Verdict]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Consumer:
    def __init__(self, app: App, queues: Sequence[str], slots: int, run_sync: SyncRunner,
                 *, prefetch_multiplier: int | None = None, hostname: str = "celeriac",
                 max_tasks: int | None = None,
                 memory_check: Callable[[], bool] | None = None,
                 status: StatusSlot | None = None, node_name: str | None = None,
                 events: bool | None = None) -> None:
        self.app = app
        self.queues = list(queues)
        self.slots = slots
        self._multiplier = prefetch_multiplier or app.conf.worker_prefetch_multiplier
        self.budget = slots * self._multiplier
        self.executor = Executor(app, run_sync, hostname)
        self.executor.signal_sender = self  # task_received's sender, as in Celery
        self.rate_limits = RateLimiter(app)
        self.max_tasks = max_tasks
        self.memory_check = memory_check  # callable() -> bool: True when over the limit
        self.status = status  # this process's entry for its node (worker.status)
        # Task events (celeriac.events), under the node's name (not this process's).
        self.node_name = node_name or hostname
        self.send_events = app.conf.worker_send_task_events if events is None else events
        self._emitter: EventEmitter | None = None
        self.tally: TaskTally | None = None  # counts for /metrics (monitor.tally), if on
        self.stats = ConsumerStats()
        self.control: ProcessInfo | None = None  # set to answer remote control (run())
        self.stop_reason: StopReason | None = None
        self._held: dict[int, Held] = {}  # id(delivery) -> held
        self._ready: asyncio.Queue[Held] = asyncio.Queue()
        self._room = asyncio.Event()
        self._pending = _Pending()
        self._flush_lock = asyncio.Lock()  # held while a batch is being written
        self._stopping = asyncio.Event()
        self._busy: set[asyncio.Task[None]] = set()  # slots running a task right now
        self._slots = SlotLoops(self._slot_loop)  # run() starts them; resize() changes them
        self._idle = asyncio.Event()
        self._last_broker_ok = time.monotonic()
        self._cold = False
        self._stopped_at: float | None = None  # monotonic time stop() was first called
        self._draining = False  # retired: running tasks finish without a grace period
        self._unflushed = 0  # held deliveries whose verdict waits for the flush
        self._suspects = 0  # redelivered tasks running now: while any runs, no linger
        self._slowest: dict[str, float] = {}  # task name -> its recent slowest run (decaying)
        self._typical: float | None = None  # moving average of this process's run times

    @property
    def broker_lease(self) -> float:
        return self.app.broker.lease_seconds

    def stop_cold(self) -> None:
        """Stop now: running tasks are not waited for; everything held goes back."""
        self._cold = True
        self.stop()
        self._idle.set()

    def stop(self, reason: StopReason = StopReason.SHUTDOWN) -> None:
        """Stop fetching; what is queued goes back, what runs finishes (a warm stop)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._stopped_at is None or self._draining:
            # The grace period counts from now (a stop after ``retire`` bounds it again).
            self._stopped_at = time.monotonic()
            self._draining = False
            self._idle.set()
        self._stopping.set()
        self._room.set()

    def retire(self) -> None:
        """A warm stop whose running tasks finish however long they take: this process
        was shrunk away, nobody waits for it. A later ``stop`` (a shutdown) brings the
        grace period back, counted from then."""
        self.stop()
        self._draining = True

    async def run(self, grace: float | None = None) -> StopReason:
        """Consume until stopped; then finish running tasks within ``grace`` seconds."""
        await self.app.connect()
        await self.executor.guard.start()  # the revoked ids, before any task runs
        await self.rate_limits.start()  # the run-time rate limits, likewise
        grace = self.app.conf.worker_shutdown_timeout if grace is None else grace
        if self.send_events:
            self._emitter = acquire_emitter(self.app, self.node_name)
            self.executor.events = TaskEvents(self._emitter)
        loops = [asyncio.create_task(self._fetch_loop(), name="fetch"),
                 asyncio.create_task(self._flush_loop(), name="flush"),
                 asyncio.create_task(self._lease_loop(), name="leases"),
                 asyncio.create_task(self.executor.guard.watch(), name="revocations")]
        if self.status is not None:
            loops.append(asyncio.create_task(self._status_loop(), name="status"))
        if self.control is not None:
            from celeriac.control.listener import listen

            loops.append(asyncio.create_task(listen(self.control), name="control"))
        self._slots.start(self.slots)
        try:
            await self._stopping.wait()
            await self._hand_back_unstarted()
            slots = list(self._slots.tasks)
            for slot in slots:  # idle slots wait on the ready queue; running ones finish
                if slot not in self._busy:
                    slot.cancel()
            await self._wait_for_running(grace)
        finally:
            slots = list(self._slots.tasks)
            for task in slots + loops[:1]:
                task.cancel()
            await asyncio.gather(*slots, loops[0], return_exceptions=True)
            # Under the flush lock, so that a batch the flush loop is writing is finished,
            # not cut off between its results and its acks (which would run it again).
            async with self._flush_lock:
                await self._drain_pending()
                for task in loops[1:]:
                    task.cancel()
            await asyncio.gather(*loops[1:], return_exceptions=True)
            await self._hand_back_remaining()
            await self.rate_limits.close()
            self.publish_status(consuming=False)
            if self._emitter is not None:  # the last task events go out
                self.executor.events = None
                await release_emitter(self._emitter)
        return self.stop_reason or StopReason.SHUTDOWN

    def resize(self, delta: int) -> int:
        """Grow or shrink this process's slots by ``delta`` (``pool_grow``/``pool_shrink``,
        autoscaling of the threads and async pools); returns the new number of slots.

        New slots start at once, with pool threads and prefetch budget to match. A
        shrink ends idle slots first; a busy slot it needs finishes its task and then
        ends: a running task is never cancelled. Raises ``ValueError`` below one slot.
        """
        target = self.slots + delta
        if target < 1:
            raise ValueError(f"this worker has {self.slots} slot(s): it cannot shrink by "
                             f"{-delta} (one slot at least)")
        if self._stopping.is_set():
            raise ValueError("this worker is stopping: its pool no longer changes size")
        if delta > 0:
            self._slots.grow(delta)
        elif delta < 0:
            self._slots.shrink(-delta, self._busy)
        self.slots = target
        self.budget = target * self._multiplier
        runner = self.executor.guard.runner
        if isinstance(runner, ThreadRunner):
            runner.fit(target)
        self._room.set()  # the fetch loop sees the new budget
        self.publish_status(consuming=not self._stopping.is_set())
        return target

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def active(self) -> int:
        """Tasks running now."""
        return len(self._busy)

    @property
    def reserved(self) -> int:
        """Tasks fetched and waiting for a slot."""
        return self._ready.qsize()

    # -- remote control (celeriac.control.commands) -------------------------------------

    def reserved_deliveries(self) -> list[Delivery]:
        """The deliveries fetched and not started yet (``inspect().reserved()``)."""
        return [held.delivery for held in self._held.values() if not held.started]

    def add_queue(self, queue: str) -> None:
        """Consume ``queue`` too, from the next fetch on."""
        if queue not in self.queues:
            self.queues = [*self.queues, queue]

    async def cancel_queue(self, queue: str) -> None:
        """Stop consuming ``queue``: the next fetch leaves it out; what was fetched from
        it and not started yet goes back to the broker."""
        self.queues = [name for name in self.queues if name != queue]
        await self.app.broker.stop_consuming([queue])
        back = [held for held in self._held.values()
                if not held.started and held.delivery.queue == queue]
        if back:
            keep = [held for held in self._drain_ready() if held not in back]
            for held in keep:
                self._ready.put_nowait(held)
            await self._hand_back(back, f"prefetched {queue!r}")

    async def _only_consumed(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Hand back what a fetch begun before a ``cancel_consumer`` got from that queue."""
        back = [d for d in deliveries if d.queue not in self.queues]
        if back:
            try:
                await self.app.broker.requeue(back)
            except Exception:
                logger.exception("could not hand back %d task(s) of a cancelled queue; "
                                 "running them here", len(back))
                return deliveries
        return [d for d in deliveries if d.queue in self.queues]

    def _drain_ready(self) -> list[Held]:
        items: list[Held] = []
        while not self._ready.empty():
            items.append(self._ready.get_nowait())
        return items

    def publish_status(self, consuming: bool) -> None:
        """This process's numbers, for its node (heartbeats, stats, health, autoscaling)."""
        if self.status is not None:
            self.status.publish(pid=os.getpid(), slots=self.slots, active=len(self._busy),
                                reserved=self._ready.qsize(),
                                processed=self.stats.processed, consuming=consuming)

    async def _status_loop(self) -> None:
        while True:
            self.publish_status(consuming=not self._stopping.is_set())
            await asyncio.sleep(STATUS_INTERVAL)

    # -- fetching -------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        broker = self.app.broker
        failures = 0
        while not self._stopping.is_set():
            room = self._room_for_more()
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            queues = self.queues
            try:
                deliveries = await broker.fetch(queues, room, FETCH_TIMEOUT)
            except Exception as exc:
                failures += 1
                delay = min(RETRY_BACKOFF_MAX, 0.1 * 2 ** failures)
                log_fetch_failure(exc, failures, delay)  # one line for a known cause
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._last_broker_ok = time.monotonic()
            if queues is not self.queues:  # changed while it fetched (cancel_consumer)
                deliveries = await self._only_consumed(deliveries)
            suspect = self._last_chance(deliveries)
            if suspect is not None:
                deliveries = await self._isolate(deliveries, suspect)
            now = time.monotonic()
            for delivery in deliveries:
                held = Held(delivery, now)
                self._held[id(delivery)] = held
                self._ready.put_nowait(held)
            if suspect is not None:
                await self._wait_until_empty()
            elif deliveries:
                # Let the slots start on these before the next fetch is sent: sending it
                # is a tenth of a millisecond of work that would otherwise come first.
                await asyncio.sleep(0)

    def _room_for_more(self) -> int:
        """How many more deliveries to lease: the budget minus what waits or runs."""
        if self._unflushed >= UNFLUSHED_MAX:
            return 0
        return self._budget() - (len(self._held) - self._unflushed)

    def _budget(self) -> int:
        """``prefetch_multiplier x slots``, or more while the tasks take microseconds."""
        typical = self._typical
        if typical is None or typical >= QUICK_TASK:
            return self.budget
        covering = int(PREFETCH_WINDOW / max(typical, 1e-6)) * self.slots
        return max(self.budget, min(PREFETCH_MAX, covering))

    def _last_chance(self, deliveries: list[Delivery]) -> Delivery | None:
        """The first delivery on its last permitted delivery (``task_delivery_limit``).

        Every message a dying process holds counts a delivery, so messages held beside
        one that kills its process reach the limit with it. On its last chance a message
        therefore runs alone: if its process dies then, it alone is dead-lettered.
        """
        limit = self.app.conf.delivery_limit
        if limit <= 1:  # no redelivery at all: nothing to protect, no reason to slow down
            return None
        return next((d for d in deliveries if d.delivery_count == limit), None)

    async def _isolate(self, deliveries: list[Delivery], suspect: Delivery) -> list[Delivery]:
        """Hold a last-chance message alone; hand the rest of its batch back at once.

        The suspect is kept only if this process holds nothing else; the others go back
        (a requeue does not count as a delivery), and the caller fetches again only once
        it holds nothing.
        """
        keep = [] if self._held else [suspect]
        back = [d for d in deliveries if d not in keep]
        if back:
            try:
                await self.app.broker.requeue(back)
            except Exception:
                logger.exception("could not hand back %d task(s); running them here",
                                 len(back))
                return deliveries
        return keep

    async def _wait_until_empty(self) -> None:
        while self._held and not self._stopping.is_set():
            self._room.clear()
            await self._room.wait()

    # -- running --------------------------------------------------------------------------

    async def _slot_loop(self) -> None:
        slot = asyncio.current_task()
        assert slot is not None
        carried: tuple[Held, Prepared | Verdict] | None = None
        while True:
            if carried is None:
                if self._slots.retire_now(slot):  # the pool shrank while it ran a task
                    return
                held = await self._ready.get()
                if self._stopping.is_set():
                    self._ready.put_nowait(held)  # handed back by _hand_back_unstarted
                    return
                if self._lost_before_start(held):
                    continue
                item = (held, self.executor.prepare(held.delivery))
            else:
                item, carried = carried, None
                if self._stopping.is_set():
                    return  # still held: handed back with the rest when the consumer stops
            held = item[0]
            held.started = True
            self._busy.add(slot)
            suspect = held.delivery.delivery_count > 1
            try:
                if suspect:  # delivered before: it may be what killed a worker
                    self._suspects += 1
                    await self._flush_finished()
                if self._batchable(item[1]):
                    carried = await self._run_batch(item)
                else:
                    await self._process(*item)
            except Exception as exc:  # one delivery's trouble never stops this slot
                self._failed(held, exc)
            finally:
                if suspect:
                    self._suspects -= 1
                self._busy.discard(slot)
                self._idle.set()

    async def _process(self, held: Held, prepared: Prepared | Verdict) -> None:
        if not isinstance(prepared, Verdict) and self.rate_limits.applies(prepared.task):
            prepared = await self.rate_limits.admit(prepared)  # a DEFER verdict if over it
        if isinstance(prepared, Verdict):
            self._submit(held, prepared)
            if prepared.action is Action.DEFER:
                return  # not run: it counts towards no limit
        else:
            if not prepared.task.acks_late:
                await self._ack_early(held)
            # After an early ack the later ack is a harmless no-op.
            started = time.perf_counter()
            verdict = await self.executor.run(prepared)
            self._timed(prepared.task.name, time.perf_counter() - started)
            self._submit(held, verdict)
        self.stats.processed += 1
        self._check_recycle()

    def _batchable(self, prepared: Prepared | Verdict) -> bool:
        """A plain sync call of a task known to be quick: it may run in a batch."""
        return (isinstance(prepared, Prepared)
                and self._slowest.get(prepared.task.name, QUICK_TASK) < QUICK_TASK
                and not self.rate_limits.applies(prepared.task)
                and self.executor.batchable(prepared))

    async def _run_batch(self, first: tuple[Held, Prepared | Verdict],
                         ) -> tuple[Held, Prepared | Verdict] | None:
        """Run ``first`` with the quick calls queued behind it, in one pool-thread hop.

        Deliveries that turn out not to run (revoked, undecodable) are settled on the way;
        the first one that cannot join the batch is returned, to be run next by this slot.
        """
        batch: list[tuple[Held, Prepared]] = []
        carried: tuple[Held, Prepared | Verdict] | None = first
        limit = RUN_BATCH_MAX
        if self.max_tasks is not None:  # never run past max_tasks_per_child
            limit = max(1, min(limit, self.max_tasks - self.stats.processed))
        while carried is not None and len(batch) < limit:
            held, prepared = carried
            carried = None
            if isinstance(prepared, Verdict):  # decided without running
                held.started = True
                self._submit(held, prepared)
                self.stats.processed += 1
            elif batch and (not self._batchable(prepared)
                            or held.delivery.delivery_count > 1):
                carried = (held, prepared)  # (a redelivery starts on its own: see the slot)
                break
            else:
                held.started = True
                batch.append((held, prepared))
            if self._ready.empty() or self._stopping.is_set():
                break
            held = self._ready.get_nowait()
            if self._lost_before_start(held):
                break  # ends this batch early; the slot goes on with the next delivery
            carried = (held, self.executor.prepare(held.delivery))
        if batch:
            try:
                ran = await self.executor.run_batch([prepared for _, prepared in batch])
                for (held, prepared), (verdict, elapsed) in zip(batch, ran, strict=True):
                    self._timed(prepared.task.name, elapsed)
                    self._submit(held, verdict)
            except Exception as exc:  # each call of the batch is settled, whatever happened
                for held, _ in batch:
                    self._failed(held, exc)
            self.stats.processed += len(batch)
            if len(batch) > 1:
                self.stats.batched += len(batch)
        self._check_recycle()
        return carried

    def _timed(self, name: str, elapsed: float) -> None:
        """Remember how long a task took: its decaying slowest run, and the process's mean."""
        slowest = self._slowest.get(name)
        self._slowest[name] = elapsed if slowest is None else max(elapsed, slowest * QUICK_DECAY)
        typical = self._typical
        self._typical = elapsed if typical is None else typical + (elapsed - typical) * 0.1
        if self.tally is not None:
            self.tally.observe(name, elapsed)

    async def _ack_early(self, held: Held) -> None:
        """At-most-once: remove the message before the task runs (task_acks_late=False)."""
        await self.app.broker.ack([held.delivery])

    def _failed(self, held: Held, exc: Exception) -> None:
        """The worker itself failed on a delivery: set it aside with the reason, go on."""
        logger.error("could not handle message %s; dead-lettering it: %s", held.delivery.id,
                     describe(exc), exc_info=exc)
        if not held.finished:  # (a verdict already submitted stands)
            self._submit(held, Verdict(Action.DEAD_LETTER, reason=(
                f"the worker could not handle it: {describe(exc)}")))

    def _submit(self, held: Held, verdict: Verdict) -> None:
        self._count(verdict, held.delivery.id)
        if not held.finished:
            held.finished = True
            self._unflushed += 1
            self._room.set()
        self._pending.items.append((held, verdict))
        self._pending.event.set()

    def _count(self, verdict: Verdict, message_id: str) -> None:
        if verdict.message is not None and verdict.action is not Action.DEFER:
            self.stats.total[verdict.message.task] += 1
        if self.tally is not None:
            self.tally.count_verdict(verdict)
        if verdict.action is Action.DEAD_LETTER:
            self.stats.dead_lettered += 1
            if verdict.message is None:  # not decoded: the executor could not log it by name
                logger.error("Message %s dead-lettered: %s", message_id, verdict.reason)
        elif verdict.action is Action.DEFER:
            self.stats.deferred += 1
        elif verdict.action is Action.RETRY:
            self.stats.retried += 1
        elif verdict.outcome is not None and verdict.outcome.state == "FAILURE":
            self.stats.failed += 1
        else:
            self.stats.succeeded += 1

    def _check_recycle(self) -> None:
        if self.max_tasks is not None and self.stats.processed >= self.max_tasks:
            logger.info("processed %d tasks (max_tasks_per_child): recycling this process",
                        self.stats.processed)
            self.stop(StopReason.RECYCLE)
        elif self.memory_check is not None and self.memory_check():
            logger.warning("memory above worker_max_memory_per_child: recycling this process")
            self.stop(StopReason.RECYCLE)

    async def _wait_for_running(self, grace: float) -> None:
        while self._busy and not self._cold:
            left = None if self._draining else (
                (self._stopped_at or time.monotonic()) + grace - time.monotonic())
            if left is not None and left <= 0:
                break
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), left)
        if self._busy and self._cold:
            logger.warning("cold stop: %d running task(s) cut short; they will be "
                           "delivered again", len(self._busy))
        elif self._busy:
            logger.warning("%d task(s) still running after the %.0fs grace period; "
                           "they will be delivered again", len(self._busy), grace)

    # -- flushing -------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._pending.event.wait()
            await self._gather_verdicts()
            async with self._flush_lock:
                try:
                    await self._flush_once()
                except Exception:  # a bug must not stop every later result and ack
                    logger.exception("the flush failed unexpectedly; going on")
                    await asyncio.sleep(0.5)

    async def _gather_verdicts(self) -> None:
        """Let the verdicts of tasks running now join the batch, for a moment at most.

        One flush then stores the results and acks of a whole prefetched batch with one
        write each, instead of one write per task. It waits only while a slot is busy,
        so a lone task's result is written at once; while a long task runs, the results
        finished before it wait at most ``FLUSH_LINGER``.
        """
        deadline = time.monotonic() + FLUSH_LINGER
        try:
            while self._busy and not self._suspects \
                    and len(self._pending.items) < FLUSH_MAX_BATCH \
                    and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._pending.event.clear()
                try:
                    async with asyncio.timeout(remaining):  # no task per wait, unlike wait_for
                        await self._pending.event.wait()
                except TimeoutError:
                    return
        finally:
            if self._pending.items:
                self._pending.event.set()

    async def _drain_pending(self) -> None:
        while self._pending.items:
            await self._flush_once()

    async def _flush_once(self) -> None:
        batch = self._pending.items[:FLUSH_MAX_BATCH]
        del self._pending.items[:len(batch)]
        if not self._pending.items:
            self._pending.event.clear()
        if not batch:
            return
        try:
            await self._write(batch)
        except Exception as exc:
            if transient(exc) or len(batch) == 1:
                await self._write_failed(batch, exc)
                return
            # Not the servers: one verdict is probably at fault. Write them one by one,
            # so that it alone is set aside and the others are not held up by it.
            logger.warning("could not write %d results/acks (%s); writing them one by one",
                           len(batch), describe(exc))
            for index, pair in enumerate(batch):
                try:
                    await self._write([pair])
                except Exception as single:
                    if transient(single):
                        await self._write_failed(batch[index:], single)
                        return
                    await self._write_failed([pair], single)

    async def _write(self, batch: list[tuple[Held, Verdict]]) -> None:
        """Carry out a batch of verdicts in the order that keeps at-least-once."""
        batch = await self._still_ours(batch)
        stored = await store_outcomes(self.app, batch)
        await follow_up(self.app, batch)  # chains, callbacks, chords: before the acks
        await publish_retries(self.app, batch)
        await settle(self.app.broker, batch)
        await release_finished(self.app, batch)  # unique keys of the tasks now ended
        self._last_broker_ok = time.monotonic()
        if self.executor.events is not None:  # carried out: now a monitor may see them
            self.executor.events.settled(batch, stored)
        for held, _ in batch:
            self._release(held)

    async def _write_failed(self, batch: list[tuple[Held, Verdict]], exc: Exception) -> None:
        """A write failed: retry later if the servers failed, else set the verdict aside.

        A single verdict that fails for a reason of its own (no server error) is
        dead-lettered with that reason, so that it can never hold up the flush.
        """
        if not transient(exc) and len(batch) == 1:
            held, verdict = batch[0]
            failure = await set_aside(self.app.broker, held.delivery, verdict, exc)
            if failure is None:
                self.stats.dead_lettered += 1
                if self.executor.events is not None:
                    self.executor.events.set_aside(held, verdict, describe(exc))
                await release_finished(self.app, [(held, verdict)], dead_lettered=True)
                self._release(held)
                return
            exc = failure  # cannot even do that: the broker is in trouble after all
        logger.error("could not write %d results/acks; retrying: %s", len(batch),
                     describe(exc), exc_info=None if quiet(exc) else exc)
        self._pending.items[:0] = batch
        self._pending.event.set()
        await asyncio.sleep(0.5)

    async def _flush_finished(self) -> None:
        """Write the finished verdicts now, before a task that may kill this process starts.

        A redelivered task may be what killed a worker before (a poison); the acks of the
        tasks that finished before it must not die with it, or those would run again.
        """
        if self._pending.items or self._flush_lock.locked():
            async with self._flush_lock:
                if self._pending.items:
                    await self._flush_once()

    async def _still_ours(self, batch: list[tuple[Held, Verdict]]) -> list[tuple[Held, Verdict]]:
        """Drop the verdicts whose lease may have been taken over by another worker.

        Leases confirmed within half the lease time are certainly ours; older ones are
        asked of the broker. A lost one's result is not stored and its ack not sent.
        """
        horizon = time.monotonic() - self.broker_lease / 2
        doubtful = [pair for pair in batch if pair[0].confirmed_at < horizon]
        if not doubtful:
            return batch
        owned = await self.app.broker.extend([held.delivery for held, _ in doubtful])
        lost = {id(held) for (held, _), ok in zip(doubtful, owned, strict=True) if not ok}
        for held, verdict in doubtful:
            if id(held) in lost:
                self.stats.lost_leases += 1
                self._release(held)
                message = verdict.message
                logger.warning("lease on %s lost while it ran (this worker was too slow or "
                               "paused); another worker owns it, so its result is dropped",
                               message.id if message else held.delivery.id)
        return [pair for pair in batch if id(pair[0]) not in lost]

    def _lost_before_start(self, held: Held) -> bool:
        """Drop a prefetched delivery whose lease is known lost (its connection dropped):
        the broker has given it to another consumer, so starting it would run it twice."""
        if self.app.broker.holds(held.delivery):
            return False
        self.stats.lost_leases += 1
        self._release(held)
        logger.warning("prefetched task %s dropped before it started: its lease was lost "
                       "(connection to the broker lost); another worker will run it",
                       held.delivery.id)
        return True

    def _release(self, held: Held) -> None:
        if self._held.pop(id(held.delivery), None) is not None and held.finished:
            self._unflushed -= 1
        self._room.set()

    async def _hand_back_unstarted(self) -> None:
        """Warm stop: prefetched tasks go back to the broker at once, for other workers."""
        unstarted: list[Held] = []
        while not self._ready.empty():
            unstarted.append(self._ready.get_nowait())
        await self._hand_back(unstarted, "prefetched")

    async def _hand_back_remaining(self) -> None:
        """Last step of a stop: whatever is still held (cut short by the grace period)."""
        await self._hand_back(list(self._held.values()), "unfinished")

    async def _hand_back(self, items: list[Held], what: str) -> None:
        if not items:
            return
        try:
            await self.app.broker.requeue([held.delivery for held in items])
            logger.info("handed %d %s task(s) back to the broker", len(items), what)
        except Exception:
            logger.exception("could not hand back %d %s task(s); they return when their "
                             "leases end", len(items), what)
        for held in items:
            self._release(held)

    # -- leases ---------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        interval = max(0.05, self.broker_lease / 3)
        watchdog = self.app.conf.worker_watchdog_timeout
        while True:
            await asyncio.sleep(interval)
            held = list(self._held.values())
            if held:
                try:
                    owned = await self.app.broker.extend([h.delivery for h in held])
                    self._last_broker_ok = now = time.monotonic()
                    for item, ok in zip(held, owned, strict=True):
                        if ok:
                            item.confirmed_at = now
                except Exception:
                    log_failure(logger, "could not extend %d lease(s)", len(held))
            silent = time.monotonic() - self._last_broker_ok
            if silent > watchdog and not self._stopping.is_set():
                logger.critical("no broker call has succeeded for %.0fs: stopping this worker "
                                "so that it is restarted", silent)
                self.stop(StopReason.BROKER_LOST)

