"""The consumer's flush: carries out finished verdicts in batches, in a safe order.

Slots submit verdicts to ``Flusher.pending``; the flush loop writes them in batches of
up to ``FLUSH_MAX_BATCH``: results stored first, then what follows them in workflows
(celeriac.worker.workflow) and retries published, then acks and dead letters, so that a
crash in between re-runs a task rather than losing it. A verdict whose lease may have
been taken over by another worker is dropped first. A verdict that fails for a reason of
its own is set aside (dead-lettered) rather than retrying its whole batch forever.

A collaborator of the consumer (celeriac.worker.consumer): it owns the pending verdicts
and the lock held while a batch is written, and reads the consumer's held deliveries and
busy slots. Its work is per batch; the per-task submit stays in the consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celeriac.errors import describe
from celeriac.uniqueness.send import release_finished
from celeriac.worker.broker_failures import quiet
from celeriac.worker.executor import Action, Verdict
from celeriac.worker.held import Held
from celeriac.worker.verdicts import (
    publish_retries,
    set_aside,
    settle,
    store_outcomes,
    transient,
)
from celeriac.worker.workflow import follow_up

if TYPE_CHECKING:
    from celeriac.security.screen import Screen
    from celeriac.worker.consumer import Consumer

logger = logging.getLogger("celeriac.worker")

FLUSH_MAX_BATCH = 500
FLUSH_LINGER = 0.002  # seconds a finished verdict may wait for its batch to fill


@dataclass
class Pending:
    """Verdicts waiting for the flush loop."""

    items: list[tuple[Held, Verdict]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)


class Flusher:
    """Writes the verdicts of one consumer; used on its event loop only."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.app = consumer.app
        self.pending = Pending()
        self.lock = asyncio.Lock()  # held while a batch is being written

    async def loop(self) -> None:
        pending = self.pending
        while True:
            await pending.event.wait()
            await self._gather_verdicts()
            async with self.lock:
                try:
                    await self.flush_once()
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
        consumer, pending = self.consumer, self.pending
        deadline = time.monotonic() + FLUSH_LINGER
        try:
            while consumer._busy and not consumer._suspects \
                    and len(pending.items) < FLUSH_MAX_BATCH \
                    and not consumer._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                pending.event.clear()
                try:
                    async with asyncio.timeout(remaining):  # no task per wait, unlike wait_for
                        await pending.event.wait()
                except TimeoutError:
                    return
        finally:
            if pending.items:
                pending.event.set()

    async def drain(self) -> None:
        """Write everything pending (the consumer is stopping; hold ``lock``)."""
        while self.pending.items:
            await self.flush_once()

    async def flush_once(self) -> None:
        pending = self.pending
        batch = pending.items[:FLUSH_MAX_BATCH]
        del pending.items[:len(batch)]
        if not pending.items:
            pending.event.clear()
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
        app, consumer = self.app, self.consumer
        batch = await self._still_ours(batch)
        stored = await store_outcomes(app, batch)
        await follow_up(app, batch)  # chains, callbacks, chords: before the acks
        await publish_retries(app, batch)
        screen = consumer.screen
        if screen is not None:  # before the requeues make them visible to other workers
            await release_requeued(screen, batch)
        await settle(app.broker, batch)
        await release_finished(app, batch)  # unique keys of the tasks now ended
        if screen is not None and screen.mark_done:
            mark_run(screen, batch)
        consumer._last_broker_ok = time.monotonic()
        events = consumer.executor.events
        if events is not None:  # carried out: now a monitor may see them
            events.settled(batch, stored)
        release = consumer._release
        for held, _ in batch:
            release(held)

    async def _write_failed(self, batch: list[tuple[Held, Verdict]], exc: Exception) -> None:
        """A write failed: retry later if the servers failed, else set the verdict aside.

        A single verdict that fails for a reason of its own (no server error) is
        dead-lettered with that reason, so that it can never hold up the flush.
        """
        consumer = self.consumer
        if not transient(exc) and len(batch) == 1:
            held, verdict = batch[0]
            failure = await set_aside(self.app.broker, held.delivery, verdict, exc)
            if failure is None:
                consumer.stats.dead_lettered += 1
                if consumer.executor.events is not None:
                    consumer.executor.events.set_aside(held, verdict, describe(exc))
                await release_finished(self.app, [(held, verdict)], dead_lettered=True)
                consumer._release(held)
                return
            exc = failure  # cannot even do that: the broker is in trouble after all
        logger.error("could not write %d results/acks; retrying: %s", len(batch),
                     describe(exc), exc_info=None if quiet(exc) else exc)
        self.pending.items[:0] = batch
        self.pending.event.set()
        await asyncio.sleep(0.5)

    async def flush_finished(self) -> None:
        """Write the finished verdicts now, before a task that may kill this process starts.

        A redelivered task may be what killed a worker before (a poison); the acks of the
        tasks that finished before it must not die with it, or those would run again.
        """
        if self.pending.items or self.lock.locked():
            async with self.lock:
                if self.pending.items:
                    await self.flush_once()

    async def _still_ours(self, batch: list[tuple[Held, Verdict]]) -> list[tuple[Held, Verdict]]:
        """Drop the verdicts whose lease may have been taken over by another worker.

        Leases confirmed within half the lease time are certainly ours; older ones are
        asked of the broker. A lost one's result is not stored and its ack not sent.
        """
        consumer = self.consumer
        horizon = time.monotonic() - consumer.broker_lease / 2
        doubtful = [pair for pair in batch if pair[0].confirmed_at < horizon]
        if not doubtful:
            return batch
        owned = await self.app.broker.extend([held.delivery for held, _ in doubtful])
        lost = {id(held) for (held, _), ok in zip(doubtful, owned, strict=True) if not ok}
        for held, verdict in doubtful:
            if id(held) in lost:
                consumer.stats.lost_leases += 1
                consumer._release(held)
                message = verdict.message
                logger.warning("lease on %s lost while it ran (this worker was too slow or "
                               "paused); another worker owns it, so its result is dropped",
                               message.id if message else held.delivery.id)
        return [pair for pair in batch if id(pair[0]) not in lost]


async def release_requeued(screen: Screen, batch: list[tuple[Held, Verdict]]) -> None:
    """Forget the nonces of signed messages about to be requeued (``Reject(requeue=
    True)``), so that whoever fetches them next does not take them for replays."""
    back = [held.signed for held, verdict in batch
            if verdict.action is Action.REQUEUE and held.signed is not None]
    if back:
        await screen.release(back)


def mark_run(screen: Screen, batch: list[tuple[Held, Verdict]]) -> None:
    """Have the nonces of the signed messages just settled marked done, where the
    broker's delivery count could be forged (``security.replay``), in the background."""
    done = [held.signed for held, verdict in batch
            if verdict.action is not Action.REQUEUE and held.signed is not None]
    if done:
        screen.mark_soon(done)
