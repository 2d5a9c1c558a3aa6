"""The worker side of rate limits: run a limited task now, or hand it back until later.

A task over its limit does not wait in a worker slot. Its slot reserves the next free
token of the task's bucket (``celeriac.brokers.buckets``) and, unless that token is due
within ``SLOT_WAIT`` seconds (less than handing it back would cost), returns a DEFER
verdict: the flush loop publishes a copy of the message with that moment as its eta,
carrying the reservation in a header, then acks the original, as for a retry. The copy
goes out at the broker's top priority, so that it comes out ahead of the queue's backlog
when due (the message itself keeps its priority). When it comes out it runs on the
spot, unless it is more than ``LATE_TOLERANCE`` late (its moment has passed, say on a
congested worker: it asks again, so that late tasks cannot burst over the limit) or its
limit changed meanwhile. Tokens further ahead than ``HORIZON`` are not reserved: such a
task comes back, unreserved, when the reservations reach only half as far, and asks
again then.

Which limit applies is ``celeriac.ratelimit``'s business; the run-time overrides are
read from the store every ``OVERRIDES_REFRESH`` seconds, in the background, so that a
task without a limit costs a dictionary lookup and no I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import MAX_PRIORITY, Outgoing
from celeriac.brokers.buckets import Grant, MemoryBuckets, TokenBuckets
from celeriac.ratelimit import Rate, parse_rate, shared_buckets
from celeriac.worker.broker_failures import log_failure
from celeriac.worker.executor import Action, Prepared, Verdict, encode_for

if TYPE_CHECKING:
    from celeriac.app import App
    from celeriac.task import Task

logger = logging.getLogger("celeriac.worker")

HORIZON = 60.0  # seconds ahead a token may be reserved
SLOT_WAIT = 0.02  # a token due this soon is waited for in the slot
LATE_TOLERANCE = 1.0  # seconds a reserved start may be late and still use its token
OVERRIDES_REFRESH = 1.0  # seconds between reads of the run-time overrides
RESERVATION_HEADER = "celeriac_rate_token"  # {"at": Unix time, "rate": "20/s"}


class RateLimiter:
    """The worker side: decides whether a prepared task may run now, or defers it."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.enabled = not app.conf.worker_disable_rate_limits
        self._store: TokenBuckets | None = None
        self._local = MemoryBuckets(shared=False)  # the fallback: this process only
        self._overrides: dict[str, Rate | None] = {}
        self._watching: asyncio.Task[None] | None = None
        self._warned = False

    @property
    def store(self) -> TokenBuckets:
        if self._store is None:
            self._store = shared_buckets(self.app) or self._local
        return self._store

    async def start(self) -> None:
        """Read the run-time overrides now, then every ``OVERRIDES_REFRESH`` seconds."""
        if self.enabled:
            await self._refresh()
            self._watching = asyncio.get_running_loop().create_task(
                self._watch(), name="celeriac-rate-limits")

    async def close(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
            self._watching = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- which limit applies --------------------------------------------------------------

    def rate_for(self, task: Task[Any, Any]) -> Rate | None:
        """The limit of ``task`` now: override, else the task's, else the default."""
        if task.name in self._overrides:
            return self._overrides[task.name]
        own = task.options.rate_limit
        return parse_rate(own if own is not None else self.app.conf.task_default_rate_limit)

    def applies(self, task: Task[Any, Any]) -> bool:
        """Whether ``task`` is rate limited (cheap: no I/O; run for every task)."""
        return self.enabled and self.rate_for(task) is not None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(OVERRIDES_REFRESH)
            await self._refresh()

    async def override(self, task_name: str, rate: str) -> None:
        """Set a run-time limit for every worker (``"0"``: none) and apply it here now;
        the other processes read it within ``OVERRIDES_REFRESH`` seconds."""
        await self.store.set_override(task_name, rate)
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            found = await self.store.overrides()
        except Exception:
            log_failure(logger, "could not read the run-time rate limits; keeping the last ones")
            return
        overrides: dict[str, Rate | None] = {}
        for name, text in found.items():
            try:
                overrides[name] = parse_rate(text)
            except ValueError:
                logger.error("ignoring the malformed run-time rate limit %r of %s", text, name)
        self._overrides = overrides

    # -- admitting ------------------------------------------------------------------------

    async def admit(self, prepared: Prepared) -> Prepared | Verdict:
        """Let a rate-limited task run now, or a DEFER verdict handing it back for later."""
        rate = self.rate_for(prepared.task)
        message = prepared.message
        token = message.headers.get(RESERVATION_HEADER)
        if token is not None:  # a copy handed back before: its reservation ends here
            message = message.replace(headers={k: v for k, v in message.headers.items()
                                               if k != RESERVATION_HEADER})
            prepared = Prepared(prepared.delivery, message, prepared.task)
        if rate is None or (token is not None and _still_valid(token, rate)):
            return prepared
        grant = await self._reserve(prepared.task.name, rate)
        if grant.granted and grant.delay <= SLOT_WAIT:
            if grant.delay > 0:
                await asyncio.sleep(grant.delay)
            return prepared
        return self._defer(prepared, rate, grant)

    async def _reserve(self, key: str, rate: Rate) -> Grant:
        store = self.store
        if not store.shared and not self._warned:
            self._warned = True
            logger.warning("rate limits are enforced per worker process: neither the broker "
                           "nor the result backend can keep token buckets for all workers "
                           "(use a sqlite:// or redis:// broker or result backend)")
        try:
            return await store.reserve(key, rate.interval, HORIZON)
        except Exception:
            logger.exception("could not reach the rate-limit store; limiting %s in this "
                             "process only until it answers", key)
            return await self._local.reserve(key, rate.interval, HORIZON)

    def _defer(self, prepared: Prepared, rate: Rate, grant: Grant) -> Verdict:
        message, task = prepared.message, prepared.task
        now = time.time()
        if grant.granted:
            at = now + grant.delay
            headers = {**message.headers, RESERVATION_HEADER: {"at": at, "rate": rate.text}}
            # Out first when due, ahead of the queue's backlog, so that it meets its token.
            # (The broker's order only: the message keeps its own priority.)
            priority = MAX_PRIORITY
        else:  # nothing reserved: come back later (spread, so that waiters do not herd)
            at = now + grant.delay + random.uniform(0, HORIZON / 4)
            headers, priority = message.headers, message.priority
        later = message.replace(eta=at, headers=headers)
        logger.debug("Task %s[%s] over its rate limit (%s): back in %.3fs%s", message.task,
                     message.id, rate, at - now, "" if grant.granted else ", unreserved")
        return Verdict(Action.DEFER, message=message, retry=Outgoing(
            later.id, later.queue, encode_for(task, later), priority, at))


def _still_valid(token: Any, rate: Rate) -> bool:
    """Whether a reservation carried by a message may be used now for ``rate``."""
    try:
        at, made_for = float(token["at"]), token["rate"]
    except (TypeError, KeyError, ValueError):
        return False
    return made_for == rate.text and time.time() <= at + LATE_TOLERANCE
