"""An in-process result backend for tests: a dict with expiry, and real waiting."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celeriac.backends.base import ResultBackend


class MemoryBackend(ResultBackend):
    scheme = "memory"

    def __init__(self, url: str = "memory://", options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self._lock = threading.Lock()
        self._results: dict[str, tuple[bytes, float | None]] = {}
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._sets: dict[str, tuple[set[str], float | None]] = {}  # chords: members
        self._claims: dict[str, tuple[str, float | None]] = {}  # chords: who fired

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        expires_at = None if ttl is None else time.time() + ttl
        with self._lock:
            for task_id, data in results.items():
                self._results[task_id] = (data, expires_at)
                for loop, event in self._waiters.pop(task_id, ()):
                    loop.call_soon_threadsafe(event.set)

    async def add_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        now = time.time()
        expires_at = None if ttl is None else now + ttl
        with self._lock:
            for task_id, data in results.items():
                entry = self._results.get(task_id)
                if entry is None or (entry[1] is not None and entry[1] <= now):
                    self._results[task_id] = (data, expires_at)

    async def load_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        with self._lock:
            found = {}
            for task_id in task_ids:
                entry = self._results.get(task_id)
                if entry is not None and (entry[1] is None or entry[1] > now):
                    found[task_id] = entry[0]
            return found

    async def delete_many(self, task_ids: Sequence[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._results.pop(task_id, None)

    async def cleanup(self) -> int:
        now = time.time()
        with self._lock:
            expired = [k for k, (_, at) in self._results.items() if at is not None and at <= now]
            for task_id in expired:
                del self._results[task_id]
            return len(expired)

    async def wait(self, task_id: str, timeout: float | None,
                   accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = asyncio.get_running_loop()
        while True:
            event = asyncio.Event()
            with self._lock:
                self._waiters.setdefault(task_id, []).append((loop, event))
            data = await self.load(task_id)
            if data is not None and (accept is None or accept(data)):
                self._drop_waiter(task_id, event)
                return data
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                self._drop_waiter(task_id, event)
                return None
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                self._drop_waiter(task_id, event)
                return None

    def _drop_waiter(self, task_id: str, event: asyncio.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(task_id, [])
            self._waiters[task_id] = [(lp, ev) for lp, ev in waiters if ev is not event]
            if not self._waiters[task_id]:
                del self._waiters[task_id]

    # -- chords: sets and claims, under the same lock -------------------------------------

    supports_chords = True

    async def add_to_set(self, key: str, member: str, ttl: float | None) -> int:
        now = time.time()
        with self._lock:
            members, expires_at = self._sets.get(key, (set(), None))
            if expires_at is not None and expires_at <= now:
                members = set()
            members.add(member)
            self._sets[key] = (members, None if ttl is None else now + ttl)
            return len(members)

    async def set_members(self, key: str) -> set[str]:
        with self._lock:
            members, expires_at = self._sets.get(key, (set(), None))
            if expires_at is not None and expires_at <= time.time():
                return set()
            return set(members)

    async def claim(self, key: str, value: str, ttl: float | None) -> str:
        now = time.time()
        with self._lock:
            held = self._claims.get(key)
            if held is None or (held[1] is not None and held[1] <= now):
                held = self._claims[key] = (value, None if ttl is None else now + ttl)
            return held[0]
