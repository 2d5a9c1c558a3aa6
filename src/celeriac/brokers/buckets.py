"""Token buckets on a server, for rate limits that hold across every worker together.

A ``TokenBuckets`` store keeps, per key (a task name), one number: the *theoretical
arrival time* (TAT) of the next free token, as in the generic cell rate algorithm. A
limit of ``n`` tasks per ``per`` seconds hands out one token every ``per / n`` seconds
(a bucket of capacity one, as Celery's rate limits, so starts are evenly spaced and
never burst). Asking for a token *reserves* the next free one:

- when it is free now, the caller may run the task at once (``Grant.delay == 0``);
- when it is free within ``horizon`` seconds, it is the caller's from then on
  (``Grant.delay`` seconds from now), and nobody else gets it: the worker hands the
  task back to the broker to come out again at that moment, so waiting costs no slot;
- otherwise nothing is reserved (``Grant.granted`` is False) and ``Grant.delay`` says
  when asking again has a chance: when the reserved tokens reach only half the horizon.

Reserving instead of merely refusing keeps a backlog from thrashing: each waiting task
is handed back once, to its own moment, rather than every task retrying at every token.

The store also keeps the run-time overrides of the limits (``app.control.rate_limit``):
a rate string per key, or ``"0"`` for "no limit". Changing an override resets the key's
bucket, so a new limit applies at once instead of after the tokens already reserved.

Implementations: ``MemoryBuckets`` (one process: the memory broker, and the per-worker
fallback), ``SQLiteBuckets`` (``buckets_sqlite``), ``RedisBuckets``
(``buckets_redis``) and ``PostgreSQLBuckets`` (``buckets_postgresql``). The arithmetic
is ``reserve``, below; Redis repeats it in Lua.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to a request for a token.

    ``granted``: a token is reserved for ``delay`` seconds from now (0: run now).
    Not ``granted``: nothing is reserved; ask again in ``delay`` seconds.
    """

    granted: bool
    delay: float


def reserve(tat: float | None, now: float, interval: float,
            horizon: float) -> tuple[float | None, Grant]:
    """One request against a bucket whose next token is free at ``tat``.

    Returns the bucket's new TAT (None when nothing was reserved) and the grant.
    """
    start = now if tat is None else max(now, tat)
    wait = start - now
    if wait > horizon:
        return None, Grant(False, wait - horizon / 2)
    return start + interval, Grant(True, wait)


class TokenBuckets(ABC):
    """Rate-limit state shared by the workers that use the same store."""

    #: Whether every worker process using this store shares it (False for the
    #: per-process fallback).
    shared: bool = True

    @abstractmethod
    async def reserve(self, key: str, interval: float, horizon: float) -> Grant:
        """Reserve the next token of ``key``'s bucket (one every ``interval`` seconds)."""

    @abstractmethod
    async def set_override(self, key: str, rate: str | None) -> None:
        """Set the run-time limit of ``key`` (``"0"``: no limit), or remove it (None).

        The key's bucket starts afresh, so the new limit applies at once.
        """

    @abstractmethod
    async def overrides(self) -> dict[str, str]:
        """Every run-time limit: key -> rate string."""

    async def close(self) -> None:
        """Release connections; the store may be used again later."""


class MemoryBuckets(TokenBuckets):
    """Buckets in this process, guarded by a lock (shared by its threads' event loops)."""

    def __init__(self, shared: bool = True) -> None:
        self.shared = shared
        self._lock = threading.Lock()
        self._tat: dict[str, float] = {}
        self._overrides: dict[str, str] = {}

    async def reserve(self, key: str, interval: float, horizon: float) -> Grant:
        with self._lock:
            tat, grant = reserve(self._tat.get(key), time.time(), interval, horizon)
            if tat is not None:
                self._tat[key] = tat
            return grant

    async def set_override(self, key: str, rate: str | None) -> None:
        with self._lock:
            if rate is None:
                self._overrides.pop(key, None)
            else:
                self._overrides[key] = rate
            self._tat.pop(key, None)

    async def overrides(self) -> dict[str, str]:
        with self._lock:
            return dict(self._overrides)
