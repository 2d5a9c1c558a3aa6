"""A worker's check of what it fetches, when signing is on: ``Screen``.

Every fetched batch passes here before anything in it is decoded: each message's
signature and age are checked (``security.signing``), then the nonces of those that
verify are claimed in one round trip (``security.replay``). What passes goes on to the
slots with its verified frame; what does not goes straight to the dead letters with
its reason (``unsigned: ...``, ``bad_signature: ...``, ``replay: ...``), is counted
(``celeriac_messages_refused_total{reason}``) and logged at ERROR, one line per
message but at most ``LOG_BURST`` lines per ``LOG_WINDOW`` seconds: whoever floods a
queue with forgeries must not also flood the log. No task code, not even the decoding
of the task's arguments, runs for a refused message.

Before a flush requeues signed messages their claims are released (``release``), and
once it has settled the others their nonces are marked done where that is needed
(``mark_soon``; see ``security.replay``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celeriac.errors import describe
from celeriac.security.replay import DONE, SeenNonces
from celeriac.security.signing import ENVELOPE_MAX, REPLAY, Opened, Refused, Verifier

if TYPE_CHECKING:
    from celeriac.brokers.base import Delivery
    from celeriac.monitor.tally import TaskTally

logger = logging.getLogger("celeriac.worker")

LOG_BURST = 10  # refusals logged per window; the rest are counted and summed up
LOG_WINDOW = 10.0  # seconds


class RefusalLog:
    """ERROR lines for refused messages, at most ``burst`` per ``window`` seconds."""

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW) -> None:
        self.burst = burst
        self.window = window
        self._started = -window
        self._logged = 0
        self._suppressed = 0

    def refused(self, delivery_id: str, queue: str, refusal: Refused) -> None:
        now = time.monotonic()
        if now - self._started >= self.window:
            if self._suppressed:
                logger.error("%d more refused message(s) in the last %.0fs were not logged "
                             "one by one (celeriac_messages_refused_total counts them all)",
                             self._suppressed, now - self._started)
            self._started, self._logged, self._suppressed = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            logger.error("Message %r from queue %r refused, not run: %s", delivery_id,
                         queue, refusal)
        else:
            self._suppressed += 1


class Screen:
    """Checks fetched batches against a verifier and the shared seen nonces."""

    def __init__(self, verifier: Verifier, seen: SeenNonces,
                 max_size: int | None = None, mark_done: bool = True) -> None:
        self.verifier = verifier
        self.seen = seen
        # Whether run messages' nonces are marked done: where the broker's delivery
        # count could be forged by a publisher (see security.replay); the flush asks.
        self.mark_done = mark_done
        # A body past this is not even hashed: the executor refuses it as too large.
        self.max_body = None if max_size is None else max_size + ENVELOPE_MAX
        # This process's claims: unique per process ever started (pids come back).
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.log = RefusalLog()
        self.tally: TaskTally | None = None  # set by the consumer when metrics are on
        self._settling: set[asyncio.Task[None]] = set()  # marks being written

    async def check(self, deliveries: Sequence[Delivery]
                    ) -> tuple[list[tuple[Delivery, Opened | None]],
                               list[tuple[Delivery, Refused]]]:
        """Split a fetched batch into what may be decoded (with its verified frame) and
        what is refused. A delivery the broker could not read (``problem``), or too
        large to be a message, passes unopened: the executor dead-letters it with the
        broker's reason, or as too large."""
        now = time.time()
        passed: list[tuple[Delivery, Opened | None]] = []
        refused: list[tuple[Delivery, Refused]] = []
        verified: list[tuple[Delivery, Opened]] = []
        open_, max_body = self.verifier.open, self.max_body
        for delivery in deliveries:
            if delivery.problem is not None or (
                    max_body is not None and len(delivery.body) > max_body):
                passed.append((delivery, None))
                continue
            try:
                verified.append((delivery, open_(delivery.body, delivery.queue, now)))
            except Refused as bad:
                refused.append((delivery, bad))
        if verified:
            holders = await self.seen.claim([opened for _, opened in verified], self.token)
            for (delivery, opened), holder in zip(verified, holders, strict=True):
                if holder is None or (holder != DONE and delivery.delivery_count > 1):
                    passed.append((delivery, opened))  # new, or a redelivery taken over
                else:
                    refused.append((delivery, Refused(REPLAY, (
                        "a message with this signature has already run" if holder == DONE
                        else "a message with this signature is already being run") +
                        " (its nonce was seen within task_signing_max_age)")))
        for delivery, refusal in refused:
            self.log.refused(delivery.id, delivery.queue, refusal)
            if self.tally is not None:
                self.tally.refuse(refusal.kind)
        return passed, refused

    async def mark_run(self, signed: Sequence[Opened]) -> None:
        """Mark the nonces of messages that were run (or set aside) as done."""
        await self.seen.done(signed)

    def mark_soon(self, signed: Sequence[Opened]) -> None:
        """``mark_run`` in the background, so that the flush that settled them does not
        wait for it. A failure is logged, not raised: a nonce left claimed (not marked
        done) still refuses a replay that comes as a first delivery."""
        task = asyncio.get_running_loop().create_task(self._mark_logged(signed),
                                                      name="nonces")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _mark_logged(self, signed: Sequence[Opened]) -> None:
        try:
            await self.mark_run(signed)
        except Exception as exc:
            logger.warning("could not mark %d signed message(s) as run (replay "
                           "protection): %s", len(signed), describe(exc))

    async def drain(self) -> None:
        """Wait for the background marks (a stopping consumer)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def release(self, signed: Sequence[Opened]) -> None:
        """Forget the claims of messages handed back unstarted."""
        await self.seen.release(signed, self.token)


def screen_for(app: Any, security: Any) -> Screen | None:
    """The screen of a worker of ``app``, or None when it does not check signatures."""
    if security is None or security.verifier is None:
        return None
    from celeriac.security.replay import seen_nonces

    # SQLite, Redis and PostgreSQL keep delivery counts on the server: no done marks
    # needed there.
    mark_done = app.broker.scheme not in ("memory", "sqlite", "redis", "rediss",
                                          "postgresql")
    return Screen(security.verifier, seen_nonces(app), app.conf.task_message_max_size,
                  mark_done)


def check_worker_security(app: Any) -> None:
    """At worker start, before any process: the security settings make sense together,
    and a worker that checks signatures has a server to keep nonces on (else a
    ConfigurationError, which the CLI prints as one line)."""
    screen_for(app, app.security)
