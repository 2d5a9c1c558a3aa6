"""Runs the async broker and backend APIs for synchronous callers.

``delay()`` and ``get()`` are called from plain threads (web request handlers, scripts,
sync tasks). They hand their coroutine to one event loop that the app keeps on a daemon
thread, so the broker and backend expose one async API and sync callers pay only a
thread hop. A broker or backend that also offers blocking calls for such callers
(``Broker.supports_blocking_publish``, ``ResultBackend.supports_blocking``) spares
them even that hop: the app calls it in the caller's own thread instead.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Bridge:
    def __init__(self, name: str = "celeriac-bridge") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            with self._lock:
                if self._loop is None:
                    self._start()
                loop = self._loop
        assert loop is not None
        return loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the bridge loop and wait for its result in this thread."""
        if self._thread is threading.current_thread():
            coro.close()
            raise RuntimeError("Bridge.run() called from the bridge loop would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=serve, name=self._name, daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread
