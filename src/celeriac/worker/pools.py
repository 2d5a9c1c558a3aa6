"""Where sync task functions run: threads beside the consumer's event loop.

Async tasks always run on the loop itself. Sync tasks never do, even in the solo pool:
a task blocking the loop would stop lease extension and let its lease expire under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MAX_SYNC_THREADS_FOR_ASYNC_POOL = 8


class ThreadRunner:
    """Runs sync callables on a fixed set of threads."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="celeriac-task")

    async def __call__(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def shutdown(self) -> None:
        # Tasks cut short by the grace period keep their threads; do not wait for them.
        self._executor.shutdown(wait=False, cancel_futures=True)


def runner_for(pool: str, slots: int) -> ThreadRunner:
    """The thread runner for a pool kind: one thread per slot, capped for -P async."""
    threads = min(slots, MAX_SYNC_THREADS_FOR_ASYNC_POOL) if pool == "async" else slots
    return ThreadRunner(max(1, threads))
