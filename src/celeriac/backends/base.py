"""The result backend interface: a few storage primitives, with waiting written once.

Results are opaque bytes (a codec frame written by the worker) stored under the task
id with a time to live. A backend implements ``store_many``, ``load_many`` and
``delete_many``; the base class builds waiting on top by polling with a backoff that
never spins the CPU. A backend whose server can wait for a key (a blocking pop,
pub/sub) overrides ``wait`` so that ``get()`` sleeps on the server instead.

Like brokers, a backend object may be used from several event loops in different
threads.

Sync callers: a backend whose client library can wait without an event loop declares
``supports_blocking`` and implements ``load_many_blocking`` and ``wait_blocking``, with
the semantics and errors of ``load_many`` and ``wait``; ``AsyncResult.get()`` and
``.state`` then read it from the caller's own thread. Other backends are driven through
the app's bridge loop.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from celeriac.bus.base import Bus

# How ``wait`` polls when the backend cannot wait on its server: quickly at first,
# since most results arrive within milliseconds, then backing off to a gentle rate.
POLL_FIRST = 0.0005
POLL_MAX = 0.05
POLL_GROWTH = 1.5


class ResultBackend(ABC):
    """Stores task results as bytes under their task id."""

    scheme: str
    # Implements load_many_blocking and wait_blocking, for sync callers.
    supports_blocking: ClassVar[bool] = False
    # Reads the result_backend_transport_options setting (others refuse it if set).
    takes_transport_options: ClassVar[bool] = False

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})

    async def connect(self) -> None:
        """Open connections and create storage. Safe to call more than once."""

    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        """Store each result under its task id, replacing what was there; expire after ttl."""

    @abstractmethod
    async def load_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored results of those ids that have one and have not expired."""

    @abstractmethod
    async def delete_many(self, task_ids: Sequence[str]) -> None:
        """Forget the results of these ids."""

    async def cleanup(self) -> int:
        """Delete expired results now; return how many. Backends with native TTLs need not."""
        return 0

    async def add_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        """Store each result only where none is stored (atomically per id); expire after ttl.

        For markers such as SENT that must never replace what a worker stored. Optional:
        a backend that cannot add without a race stores nothing (the default).
        """

    def message_headers(self) -> dict[str, Any]:
        """Headers for every message sent, so that its result can be routed back.

        Called by the producer when it builds a message. Most backends store results
        under the task id and need none; the rpc backend names its reply queue here.
        """
        return {}

    async def store_replies(self, results: Mapping[str, bytes],
                            headers: Mapping[str, Mapping[str, Any]], ttl: float | None) -> None:
        """Store results as ``store_many`` does, given the headers of their messages.

        The worker stores results through this; a backend that routes results by a
        header of ``message_headers`` (rpc) overrides it.
        """
        await self.store_many(results, ttl)

    async def store(self, task_id: str, result: bytes, ttl: float | None) -> None:
        await self.store_many({task_id: result}, ttl)

    async def load(self, task_id: str) -> bytes | None:
        return (await self.load_many([task_id])).get(task_id)

    async def wait(self, task_id: str, timeout: float | None,
                   accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        """Wait until the result of ``task_id`` is stored and ``accept(bytes)`` is true.

        ``accept`` lets the caller skip intermediate states (STARTED, RETRY) and wait on
        for the final one. Returns None when the timeout passes first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = POLL_FIRST
        while True:
            data = await self.load(task_id)
            if data is not None and (accept is None or accept(data)):
                return data
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                delay = min(delay, remaining)
            await asyncio.sleep(delay)
            delay = min(delay * POLL_GROWTH, POLL_MAX)

    # -- for sync callers (supports_blocking) ---------------------------------------------

    def load_many_blocking(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        """``load_many`` for a sync caller, in its own thread."""
        raise NotImplementedError(f"{type(self).__name__} has no blocking load")

    def wait_blocking(self, task_id: str, timeout: float | None,
                      accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        """``wait`` for a sync caller, in its own thread."""
        raise NotImplementedError(f"{type(self).__name__} has no blocking wait")

    def close_blocking(self) -> None:
        """Release what the blocking calls opened in this process. Safe to call always."""

    def bus(self) -> Bus:
        """A new ``Bus`` on this backend's server, with connections of its own: where
        events and remote control travel when the broker carries no topics (SQS, Kafka).
        The caller connects it on its own event loop and closes it."""
        raise NotImplementedError(f"the {self.scheme}:// result backend carries no event "
                                  f"or control topics")

    # -- chords: sets and claims (see celeriac.worker.workflow) ---------------------------

    #: Whether this backend keeps the shared sets and claims that chords are counted with.
    supports_chords: bool = False

    async def add_to_set(self, key: str, member: str, ttl: float | None) -> int:
        """Add ``member`` to the set ``key`` and return the set's size after.

        Atomic across processes, and idempotent: adding a member that is there already
        changes nothing, so a chord member that runs twice is counted once. The set
        expires ``ttl`` seconds after its last add.
        """
        raise NotImplementedError(f"the {self.scheme}:// result backend keeps no sets")

    async def set_members(self, key: str) -> set[str]:
        """The members of the set ``key`` (empty if there is none)."""
        raise NotImplementedError(f"the {self.scheme}:// result backend keeps no sets")

    async def claim(self, key: str, value: str, ttl: float | None) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the value it holds.

        Atomic across processes: of many callers, exactly one gets its own value back
        (until the claim expires after ``ttl`` seconds).
        """
        raise NotImplementedError(f"the {self.scheme}:// result backend keeps no claims")
