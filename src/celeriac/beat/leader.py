"""Which beat process sends: a lease with a fencing token on the server.

Any number of beat processes run; each tries to take the lease (``BeatStore.acquire``).
The one that has it leads and extends it every ``ttl / 3`` seconds; the others try
every ``ttl / 6`` seconds, so a follower takes over within about ``ttl`` plus a little
after a leader dies (``LEASE_TTL``: 3 s), and at once after a leader stops cleanly (it
releases the lease).

Each new leader gets a larger **fencing token**. Every run is recorded with the token
(``BeatStore.swap`` checks that the lease is still this holder's, with this token, in
the same atomic step), so a leader that lost its lease without knowing it (paused,
partitioned) can record nothing.

Beyond the server's check, a leader trusts its lease only while its own monotonic clock
says it extended it less than ``ttl - SAFETY`` ago (``valid``): a leader paused between
recording a run and sending it does not send it when it wakes up after its lease could
have passed to a successor (which sends that run itself, see ``beat.scheduler``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from celeriac.beat.store import BeatStore
from celeriac.errors import describe

logger = logging.getLogger("celeriac.beat")

LEASE_TTL = 3.0  # seconds a lease lasts unless extended
SAFETY = 0.5  # seconds of the lease a leader leaves unused (clock drift, a slow call)


def holder_name() -> str:
    """This process, as the lease names its holder: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leadership:
    """This process's side of the lease: take it, keep it, know when it is lost."""

    def __init__(self, store: BeatStore, holder: str | None = None, ttl: float = LEASE_TTL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.holder = holder or holder_name()
        self.ttl = ttl
        self._monotonic = monotonic
        self.token: int | None = None  # set while this process leads
        self._extended_at = float("-inf")  # monotonic time of the last successful acquire
        self._tried_at = float("-inf")

    @property
    def lease(self) -> tuple[str, int] | None:
        """(holder, token) for guarded writes, while this process leads."""
        return None if self.token is None else (self.holder, self.token)

    def valid(self) -> bool:
        """Whether this process may act as leader now, by its own clock."""
        return self.token is not None and \
            self._monotonic() - self._extended_at < self.ttl - SAFETY

    def next_check(self) -> float:
        """Monotonic time when ``keep`` should run again."""
        every = self.ttl / 3 if self.token is not None else self.ttl / 6
        return self._tried_at + every

    def keep(self) -> bool:
        """Take or extend the lease if it is time to; True while this process leads.

        A failure to reach the server is logged; the lease counts as held until
        ``valid`` says it may have run out.
        """
        now = self._monotonic()
        if now < self.next_check():
            return self.valid()
        self._tried_at = now
        try:
            token = self.store.acquire(self.holder, self.ttl)
        except Exception as exc:
            logger.warning("beat cannot reach %s to keep its lease: %s", self.store.where,
                           describe(exc))
            if not self.valid():
                self._lose("its lease may have run out while the server was unreachable")
            return self.valid()
        if token is None:
            if self.token is not None:
                self._lose("another beat holds the lease")
            return False
        if token != self.token:
            previous = self.token
            self.token = token
            if previous is not None:
                logger.warning("beat %s lost its lease and took it again (token %d)",
                               self.holder, token)
            else:
                logger.info("beat %s leads now (fencing token %d)", self.holder, token)
        self._extended_at = now
        return True

    def _lose(self, why: str) -> None:
        if self.token is not None:
            logger.warning("beat %s no longer leads: %s", self.holder, why)
        self.token = None

    def release(self) -> None:
        """Give the lease up (on a clean stop), so that a follower takes over at once."""
        if self.token is None:
            return
        token, self.token = self.token, None
        try:
            self.store.release(self.holder, token)
            logger.info("beat %s released its lease", self.holder)
        except Exception as exc:
            logger.warning("beat could not release its lease (it runs out in %gs): %s",
                           self.ttl, describe(exc))
