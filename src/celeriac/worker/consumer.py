"""The consumer: one event loop that fetches, runs, acks and keeps leases alive.

Four cooperating loops share the deliveries this process holds:

- fetch:   leases batches from the broker up to the prefetch budget
           (``prefetch_multiplier x slots``) and queues them for the slots;
- slots:   ``slots`` runners, each taking the next delivery and running it
           (sync tasks on the pool's threads, async tasks on this loop);
- flush:   carries out finished verdicts in batches (celeriac.worker.flush): results
           stored first, then what follows them in workflows and retries published,
           then acks and dead letters, so a crash in between re-runs a task rather than
           losing it;
- leases:  extends the leases of everything held, every third of the lease time, and
           notices leases that were lost (celeriac.worker.leases, with the watchdog).

Beside them, with ``control`` set, a loop answers remote control
(``celeriac.control.listener``: ``inspect().active()``, ``add_consumer``...), and with
``status`` set, one publishes this process's numbers for its node.

This module keeps what runs per task (fetch, slots, submitting verdicts) in one class,
so that the hot path has no extra indirection; what runs per batch, per lease period or
once per stop lives in its collaborators: celeriac.worker.flush (the flush),
celeriac.worker.leases (the lease loop), celeriac.worker.handback (giving deliveries
back to the broker), celeriac.worker.held (the data they share).

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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from celeriac.app import App
from celeriac.brokers.base import Delivery
from celeriac.errors import describe
from celeriac.events.emitter import EventEmitter
from celeriac.events.emitter import acquire as acquire_emitter
from celeriac.events.emitter import release as release_emitter
from celeriac.events.tasks import TaskEvents
from celeriac.monitor.tally import TaskTally
from celeriac.security.screen import Screen, screen_for
from celeriac.worker.broker_failures import log_fetch_failure
from celeriac.worker.executor import Action, Executor, Prepared, SyncRunner, Verdict
from celeriac.worker.flush import FLUSH_LINGER, FLUSH_MAX_BATCH, Flusher
from celeriac.worker.handback import (
    hand_back_queue,
    hand_back_remaining,
    hand_back_unstarted,
    isolate,
    only_consumed,
)
from celeriac.worker.held import ConsumerStats, Held, StopReason
from celeriac.worker.leases import keep_leases
from celeriac.worker.pools import ThreadRunner
from celeriac.worker.ratelimit import RateLimiter
from celeriac.worker.screening import finish_screening, start_screening
from celeriac.worker.slots import SlotLoops
from celeriac.worker.status import PUBLISH_INTERVAL as STATUS_PUBLISH_INTERVAL
from celeriac.worker.status import StatusSlot

if TYPE_CHECKING:
    from celeriac.control.commands import ProcessInfo

__all__ = ["FLUSH_LINGER", "FLUSH_MAX_BATCH", "PREFETCH_MAX", "Consumer", "ConsumerStats",
           "Held", "StopReason"]

logger = logging.getLogger("celeriac.worker")

FETCH_TIMEOUT = 1.0  # seconds a fetch may wait on the broker before checking for shutdown
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
        # Signing on: every fetched batch is checked before anything is decoded.
        self.screen: Screen | None = screen_for(app, self.executor.security)
        self._screening: set[asyncio.Task[None]] = set()  # batches being checked
        self._screen_failures = 0
        self.stats = ConsumerStats()
        self.control: ProcessInfo | None = None  # set to answer remote control (run())
        self.stop_reason: StopReason | None = None
        self._held: dict[int, Held] = {}  # id(delivery) -> held
        self._ready: asyncio.Queue[Held] = asyncio.Queue()
        self._room = asyncio.Event()
        self.flusher = Flusher(self)
        self._pending = self.flusher.pending  # (submitted to per task: no indirection)
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
                 asyncio.create_task(self.flusher.loop(), name="flush"),
                 asyncio.create_task(keep_leases(self), name="leases"),
                 asyncio.create_task(self.executor.guard.watch(), name="revocations")]
        if self.status is not None:
            loops.append(asyncio.create_task(self._status_loop(), name="status"))
        if self.control is not None:
            from celeriac.control.listener import listen

            loops.append(asyncio.create_task(listen(self.control), name="control"))
        self._slots.start(self.slots)
        try:
            await self._stopping.wait()
            await hand_back_unstarted(self)
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
            await finish_screening(self)  # (what they claimed is released when handed back)
            # Under the flush lock, so that a batch the flush loop is writing is finished,
            # not cut off between its results and its acks (which would run it again).
            async with self.flusher.lock:
                await self.flusher.drain()
                for task in loops[1:]:
                    task.cancel()
            await asyncio.gather(*loops[1:], return_exceptions=True)
            if self.screen is not None:
                await self.screen.drain()
            await hand_back_remaining(self)
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
        await hand_back_queue(self, queue)

    # -- status (celeriac.worker.status) -------------------------------------------------

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
                deliveries = await only_consumed(self, deliveries)
            suspect = self._last_chance(deliveries)
            if suspect is not None:
                deliveries = await isolate(self, deliveries, suspect)
            now = time.monotonic()
            if self.screen is not None:  # signing on: nothing goes on unchecked
                start_screening(self, deliveries, now)
            else:
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
                    self._ready.put_nowait(held)  # handed back by hand_back_unstarted
                    return
                if self._lost_before_start(held):
                    continue
                item = (held, self.executor.prepare(
                    held.delivery, None if held.signed is None else held.signed.frame))
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
                    await self.flusher.flush_finished()
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
            carried = (held, self.executor.prepare(
                held.delivery, None if held.signed is None else held.signed.frame))
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
            if verdict.message is None and not verdict.logged:  # (not decoded: not by name)
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

    # -- letting go (also called by the flush and the hand-back) ------------------------

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
