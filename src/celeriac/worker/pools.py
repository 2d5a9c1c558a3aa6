"""Where sync task functions run: threads beside the consumer's event loop.

Async tasks always run on the loop itself. Sync tasks never do, even in the solo pool:
a task blocking the loop would stop lease extension and let its lease expire under it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MAX_SYNC_THREADS_FOR_ASYNC_POOL = 8

# With a single task thread (prefork, solo) the loop has nothing else to run while a sync
# call runs, so it waits for the call in its own thread, off the GIL, for up to this long
# before it goes back to its other work (leases, acks, fetches) and awaits the call as
# usual. A call that ends within the wait wakes the loop directly: no self-pipe, no
# epoll, and no GIL tug-of-war between the two threads, which cost a CPU-bound 5 ms
# task about 10% of its time (W5). The loop is held up for at most this long per call,
# far below any lease or heartbeat interval.
SINGLE_THREAD_WAIT = 0.02


class ThreadRunner:
    """Runs sync callables on a set of threads, resized with the slots (``fit``)."""

    def __init__(self, threads: int, cap: int | None = None) -> None:
        self.threads = threads
        self.cap = cap  # at most this many threads, however many slots (-P async)
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="celeriac-task")
        self._wait = SINGLE_THREAD_WAIT if threads == 1 else 0.0

    def fit(self, slots: int) -> None:
        """Have as many threads as ``slots`` (up to the cap): the pool was resized.

        New calls go to a new set of threads; calls running on the old ones finish there
        (the old executor is shut down without waiting), so nothing running is cut short.
        """
        threads = max(1, min(slots, self.cap or slots))
        if threads == self.threads:
            return
        old = self._executor
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="celeriac-task")
        self.threads = threads
        self._wait = SINGLE_THREAD_WAIT if threads == 1 else 0.0
        old.shutdown(wait=False)

    async def __call__(self, fn: Callable[[], Any]) -> Any:
        if not self._wait:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        # One turn of the loop first, so that it never goes longer than one wait without
        # running (flushes, fetches, leases), however many calls a slot runs in a row.
        await asyncio.sleep(0)
        future = self._executor.submit(fn)
        try:
            return future.result(self._wait)
        except concurrent.futures.TimeoutError:
            return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        # Tasks cut short by the grace period keep their threads; do not wait for them.
        self._executor.shutdown(wait=False, cancel_futures=True)


def runner_for(pool: str, slots: int) -> ThreadRunner:
    """The thread runner for a pool kind: one thread per slot, capped for -P async."""
    cap = MAX_SYNC_THREADS_FOR_ASYNC_POOL if pool == "async" else None
    return ThreadRunner(max(1, min(slots, cap or slots)), cap)
