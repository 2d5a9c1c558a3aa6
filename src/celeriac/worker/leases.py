"""The consumer's lease loop: keeps the leases of what it holds alive, and the watchdog.

Every third of the lease time, the leases of everything the consumer holds are
extended, and the ones confirmed ours are marked so (the flush trusts a recent
confirmation instead of asking the broker again). A watchdog beside it ends the process
loudly when no broker call has succeeded for ``worker_watchdog_timeout`` seconds, so that
it is restarted rather than sitting idle forever. Apart from the consumer because it
runs once per lease period, never per task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from celeriac.worker.broker_failures import log_failure
from celeriac.worker.held import StopReason

if TYPE_CHECKING:
    from celeriac.worker.consumer import Consumer

logger = logging.getLogger("celeriac.worker")


async def keep_leases(consumer: Consumer) -> None:
    """Extend the leases of everything ``consumer`` holds until cancelled."""
    interval = max(0.05, consumer.broker_lease / 3)
    watchdog = consumer.app.conf.worker_watchdog_timeout
    while True:
        await asyncio.sleep(interval)
        held = list(consumer._held.values())
        if held:
            try:
                owned = await consumer.app.broker.extend([h.delivery for h in held])
                consumer._last_broker_ok = now = time.monotonic()
                for item, ok in zip(held, owned, strict=True):
                    if ok:
                        item.confirmed_at = now
            except Exception:
                log_failure(logger, "could not extend %d lease(s)", len(held))
        silent = time.monotonic() - consumer._last_broker_ok
        if silent > watchdog and not consumer.stopping:
            logger.critical("no broker call has succeeded for %.0fs: stopping this worker "
                            "so that it is restarted", silent)
            consumer.stop(StopReason.BROKER_LOST)
