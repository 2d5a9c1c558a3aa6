"""Handing deliveries back to the broker, for other workers to run.

A consumer gives back what it leased but will not run: its prefetched tasks on a warm
stop, what a stop's grace period cut short, the prefetched tasks of a queue it stops
consuming (``cancel_consumer``), what a fetch got from such a queue, and the companions
of a last-chance delivery (which runs alone). A requeue does not count as a delivery.
Apart from the consumer because none of it is on the per-task path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from celeriac.brokers.base import Delivery
from celeriac.worker.held import Held

if TYPE_CHECKING:
    from celeriac.worker.consumer import Consumer

logger = logging.getLogger("celeriac.worker")


async def hand_back(consumer: Consumer, items: list[Held], what: str) -> None:
    """Requeue ``items`` and let go of them; if the broker refuses, their leases end."""
    if not items:
        return
    signed = [held.signed for held in items if held.signed is not None]
    if signed and consumer.screen is not None:  # new again when they come back
        try:
            await consumer.screen.release(signed)
        except Exception as exc:
            logger.warning("could not release the nonces of %d signed task(s) handed "
                           "back: %s", len(signed), exc)
    try:
        await consumer.app.broker.requeue([held.delivery for held in items])
        logger.info("handed %d %s task(s) back to the broker", len(items), what)
    except Exception:
        logger.exception("could not hand back %d %s task(s); they return when their "
                         "leases end", len(items), what)
    for held in items:
        consumer._release(held)


def drain_ready(consumer: Consumer) -> list[Held]:
    """Take everything off the consumer's ready queue (fetched, no slot yet)."""
    items: list[Held] = []
    ready = consumer._ready
    while not ready.empty():
        items.append(ready.get_nowait())
    return items


async def hand_back_unstarted(consumer: Consumer) -> None:
    """Warm stop: prefetched tasks go back to the broker at once, for other workers."""
    await hand_back(consumer, drain_ready(consumer), "prefetched")


async def hand_back_remaining(consumer: Consumer) -> None:
    """Last step of a stop: whatever is still held (cut short by the grace period)."""
    await hand_back(consumer, list(consumer._held.values()), "unfinished")


async def hand_back_queue(consumer: Consumer, queue: str) -> None:
    """What was fetched from ``queue`` and not started yet goes back (``cancel_consumer``)."""
    back = [held for held in consumer._held.values()
            if not held.started and held.delivery.queue == queue]
    if back:
        keep = [held for held in drain_ready(consumer) if held not in back]
        for held in keep:
            consumer._ready.put_nowait(held)
        await hand_back(consumer, back, f"prefetched {queue!r}")


async def only_consumed(consumer: Consumer, deliveries: list[Delivery]) -> list[Delivery]:
    """Hand back what a fetch begun before a ``cancel_consumer`` got from that queue."""
    back = [d for d in deliveries if d.queue not in consumer.queues]
    if back:
        try:
            await consumer.app.broker.requeue(back)
        except Exception:
            logger.exception("could not hand back %d task(s) of a cancelled queue; "
                             "running them here", len(back))
            return deliveries
    return [d for d in deliveries if d.queue in consumer.queues]


async def isolate(consumer: Consumer, deliveries: list[Delivery],
                  suspect: Delivery) -> list[Delivery]:
    """Hold a last-chance message alone; hand the rest of its batch back at once.

    The suspect is kept only if the consumer holds nothing else; the others go back
    (a requeue does not count as a delivery), and the caller fetches again only once
    it holds nothing.
    """
    keep = [] if consumer._held else [suspect]
    back = [d for d in deliveries if d not in keep]
    if back:
        try:
            await consumer.app.broker.requeue(back)
        except Exception:
            logger.exception("could not hand back %d task(s); running them here",
                             len(back))
            return deliveries
    return keep
