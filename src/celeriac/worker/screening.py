"""The consumer's side of signed messages: each fetched batch checked beside the fetching.

With signing on (``security.screen``), what a fetch returns is held at once (it counts
against the prefetch budget) and checked in a task of its own: the signatures are CPU
work, the nonce claim a round trip to the server, and the fetch loop need not wait for
either before it asks for more. Measured on W2 (bench/signing_cost.py): with the check
awaited in the fetch loop the drain was about 40% slower; beside it, 13% on a quiet
machine (median of 7; the worker's own CPU +8%, the Redis server's +1.7 us a message).
What passes goes to the slots with its verified frame; what is
refused is submitted as a dead-letter verdict without ever reaching a slot. Apart from
the consumer because none of it runs without signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from celeriac import signals
from celeriac.brokers.base import Delivery
from celeriac.errors import describe
from celeriac.worker.broker_failures import quiet
from celeriac.worker.executor import Action, Verdict
from celeriac.worker.held import Held

if TYPE_CHECKING:
    from celeriac.worker.consumer import Consumer

logger = logging.getLogger("celeriac.worker")

RETRY_BACKOFF_MAX = 5.0  # seconds between attempts while nonces cannot be claimed
STOP_GRACE = 5.0  # seconds a stopping consumer waits for the batches being checked


def start_screening(consumer: Consumer, deliveries: list[Delivery], now: float) -> None:
    """Hold a fetched batch and check it in a task of its own."""
    if not deliveries:
        return
    batch = [Held(delivery, now) for delivery in deliveries]
    for held in batch:
        consumer._held[id(held.delivery)] = held
    screening = asyncio.create_task(screen_batch(consumer, batch), name="screen")
    consumer._screening.add(screening)
    screening.add_done_callback(consumer._screening.discard)


async def screen_batch(consumer: Consumer, batch: list[Held]) -> None:
    """Check a batch's signatures and nonces: what passes goes to the slots, what is
    refused to the dead letters. When the nonces cannot be claimed (the server's
    trouble) the batch goes back to the broker after a pause, to be fetched again."""
    screen = consumer.screen
    assert screen is not None
    screen.tally = consumer.tally  # (set by the worker process after construction)
    try:
        passed, refused = await screen.check([held.delivery for held in batch])
    except Exception as exc:
        consumer._screen_failures += 1
        failures = consumer._screen_failures
        delay = min(RETRY_BACKOFF_MAX, 0.1 * 2 ** failures)
        # One line for a server's failure (its words say why); a traceback for a bug.
        logger.error("could not claim the nonces of %d signed message(s) (attempt %d)%s; "
                     "handing them back in %.1fs", len(batch), failures,
                     f": {describe(exc)}" if quiet(exc) else "", delay,
                     exc_info=None if quiet(exc) else exc)
        await asyncio.sleep(delay)
        with contextlib.suppress(Exception):
            await consumer.app.broker.requeue([held.delivery for held in batch])
        for held in batch:
            consumer._release(held)
        return
    consumer._screen_failures = 0
    # (one handed back meanwhile, by cancel_consumer, is no longer held: left alone)
    held_of = {id(held.delivery): held for held in batch
               if consumer._held.get(id(held.delivery)) is held}
    for delivery, refusal in refused:
        refused_held = held_of.get(id(delivery))
        if refused_held is not None:
            refused_held.started = True
            if signals.task_rejected.receivers:  # as for any message it will not run
                signals.task_rejected.send(sender=consumer.executor.signal_sender,
                                           message=delivery, exc=str(refusal))
            consumer._submit(refused_held, Verdict(Action.DEAD_LETTER, reason=str(refusal),
                                                   logged=True))
    for delivery, opened in passed:
        passed_held = held_of.get(id(delivery))
        if passed_held is not None:
            passed_held.signed = opened
            consumer._ready.put_nowait(passed_held)


async def finish_screening(consumer: Consumer) -> None:
    """A stopping consumer (its fetch loop ended): let the checks under way finish, so
    that what they claimed is known (and released when it is handed back)."""
    if not consumer._screening:
        return
    await asyncio.wait(list(consumer._screening), timeout=STOP_GRACE)
    for screening in list(consumer._screening):
        screening.cancel()
    await asyncio.gather(*consumer._screening, return_exceptions=True)
