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

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        expires_at = None if ttl is None else time.time() + ttl
        with self._lock:
            for task_id, data in results.items():
                self._results[task_id] = (data, expires_at)
                for loop, event in self._waiters.pop(task_id, ()):
                    loop.call_soon_threadsafe(event.set)

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
