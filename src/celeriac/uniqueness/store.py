"""Where unique keys are held: one store per server, and which server an app uses.

A ``UniqueKeys`` store maps a key to the id of the task that holds it and the moment
the hold ends (``unique_for`` after the claim), on a server every producer and worker
of the app reaches:

- memory broker: a dict beside the broker object (one process);
- SQLite broker: a ``unique_keys`` table in the broker's file; the claim and the
  publish are one transaction (``uniqueness.sqlite``);
- Redis broker: a string per key on the broker's server, claimed and published by one
  Lua script (``uniqueness.redis``);
- PostgreSQL broker: a ``celeriac_unique_keys`` table in the broker's schema; the claim
  and the publish are one transaction (``uniqueness.postgresql``);
- any other broker (RabbitMQ): the result backend's server (SQLite file, Redis,
  PostgreSQL, or memory), claimed first and published after, the claim released if the
  publish fails; an rpc:// backend stores nothing on a server, so unique sends are
  refused with a ``ConfigurationError`` that says what to use instead.

Which server: ``celeriac.state_home``, the rule every shared-state feature follows.

Claims are atomic on the server: of many producers sending the same key at once,
exactly one claims it and publishes; the others get its task id back. A release is a
compare-and-delete on (key, task id), so a task whose hold ran out can never free a
key another task has claimed since.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from celeriac.brokers.base import Outgoing
from celeriac.state_home import kind_of, state_home

if TYPE_CHECKING:
    from celeriac.app import App

# (key, task id): a hold to release.
Hold = tuple[str, str]


class UniqueKeys(ABC):
    """Unique keys on one server: claim (with a publish), release, look up."""

    #: Whether ``send`` claims and publishes in one step on the server (no crash window).
    atomic: bool = False

    @abstractmethod
    async def claim(self, key: str, task_id: str, ttl: float) -> str | None:
        """Hold ``key`` for ``task_id`` for ``ttl`` seconds unless a live hold exists.

        Returns None when claimed, else the id of the task holding it.
        """

    @abstractmethod
    def claim_blocking(self, key: str, task_id: str, ttl: float) -> str | None:
        """``claim`` for a sync caller, in its own thread."""

    @abstractmethod
    async def release(self, holds: Sequence[Hold]) -> None:
        """Free each key still held by its task id (others are left alone)."""

    @abstractmethod
    def release_blocking(self, holds: Sequence[Hold]) -> None:
        """``release`` for a sync caller."""

    @abstractmethod
    async def holder(self, key: str) -> str | None:
        """The id of the task holding ``key`` now, or None."""

    async def send(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                   publish: Callable[[Sequence[Outgoing]], Awaitable[None]]) -> str | None:
        """Claim ``key`` and publish ``outgoing``; None if sent, else the holder's id.

        Here: claim first, then publish; a publish that fails releases the claim. A
        process that dies between the two leaves the key held, with nothing queued,
        until ``ttl`` runs out (docs/unique-jobs.md). Stores that can do both in one
        step on the server override this.
        """
        holder = await self.claim(key, task_id, ttl)
        if holder is not None:
            return holder
        try:
            await publish([outgoing])
        except BaseException:
            await _release_quietly(self, [(key, task_id)])
            raise
        return None

    def send_blocking(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                      publish: Callable[[Sequence[Outgoing]], None]) -> str | None:
        """``send`` for a sync caller."""
        holder = self.claim_blocking(key, task_id, ttl)
        if holder is not None:
            return holder
        try:
            publish([outgoing])
        except BaseException:
            # The publish's error is the one to raise; a hold left behind expires.
            with contextlib.suppress(Exception):
                self.release_blocking([(key, task_id)])
            raise
        return None


async def _release_quietly(store: UniqueKeys, holds: Sequence[Hold]) -> None:
    with contextlib.suppress(Exception):  # the publish's error is the one to raise
        await store.release(holds)


class MemoryUniqueKeys(UniqueKeys):
    """Holds in a dict of this process (for the memory broker or backend)."""

    atomic = True  # a claim and its publish cannot be told apart within one process

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, float]] = {}  # key -> (task id, monotonic end)

    def claim_blocking(self, key: str, task_id: str, ttl: float) -> str | None:
        now = time.monotonic()
        with self._lock:
            held = self._held.get(key)
            if held is not None and held[1] > now:
                return held[0]
            self._held[key] = (task_id, now + ttl)
            if len(self._held) > 1024:  # drop expired holds now and then
                self._held = {k: v for k, v in self._held.items() if v[1] > now}
        return None

    async def claim(self, key: str, task_id: str, ttl: float) -> str | None:
        return self.claim_blocking(key, task_id, ttl)

    def release_blocking(self, holds: Sequence[Hold]) -> None:
        with self._lock:
            for key, task_id in holds:
                held = self._held.get(key)
                if held is not None and held[0] == task_id:
                    del self._held[key]

    async def release(self, holds: Sequence[Hold]) -> None:
        self.release_blocking(holds)

    async def holder(self, key: str) -> str | None:
        with self._lock:
            held = self._held.get(key)
        return held[0] if held is not None and held[1] > time.monotonic() else None


# -- which store an app uses -------------------------------------------------------------

# Per broker or backend object: its store (made once; it uses the object's connections).
_STORES: weakref.WeakKeyDictionary[Any, UniqueKeys] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def unique_keys(app: App) -> UniqueKeys:
    """The store of ``app``'s unique keys: on the broker's server, else the backend's
    (``celeriac.state_home``); ConfigurationError when neither keeps anything."""
    owner = state_home(app, "unique jobs (unique_for, unique_key) need a server to hold "
                            "their keys").owner
    with _STORES_LOCK:
        store = _STORES.get(owner)
        if store is None:
            store = _STORES[owner] = _make(owner)
        return store


def _make(owner: Any) -> UniqueKeys:
    if owner.scheme == "memory":
        return MemoryUniqueKeys()
    if owner.scheme == "sqlite":
        from celeriac.uniqueness.sqlite import SQLiteUniqueKeys

        return SQLiteUniqueKeys.on(owner)
    if kind_of(owner) == "postgresql":
        from celeriac.uniqueness.postgresql import PostgreSQLUniqueKeys

        return PostgreSQLUniqueKeys.on(owner)
    from celeriac.uniqueness.redis import RedisUniqueKeys

    return RedisUniqueKeys.on(owner)
