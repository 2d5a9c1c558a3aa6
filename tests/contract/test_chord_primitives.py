"""The sets and claims chords are counted with (``add_to_set``, ``set_members``, ``claim``),
run on every result backend that keeps them: memory, sqlite, redis.

What a chord needs from them (see ``celeriac.worker.workflow``): adding is idempotent
and atomic, so concurrent adds of distinct members each see a distinct size, and a
member added twice is counted once; of concurrent claims, exactly one wins and every
caller learns which.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from celeriac.backends import ResultBackend

T = TypeVar("T")
THREADS = 8


def in_threads(count: int, work: Callable[[int], Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``work(i)`` for i in range(count) at once, each on its own thread and loop."""
    start = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        async def main() -> T:
            start.wait()
            return await work(index)
        results[index] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


async def test_adding_to_a_set_counts_each_member_once(backend: ResultBackend) -> None:
    assert backend.supports_chords
    assert await backend.add_to_set("chord:a", "0:x", 60) == 1
    assert await backend.add_to_set("chord:a", "1:y", 60) == 2
    assert await backend.add_to_set("chord:a", "0:x", 60) == 2  # again: no change
    assert await backend.add_to_set("chord:b", "0:x", None) == 1  # sets are apart
    assert await backend.set_members("chord:a") == {"0:x", "1:y"}
    assert await backend.set_members("missing") == set()


async def test_a_claim_is_held_by_the_first_claimer(backend: ResultBackend) -> None:
    assert await backend.claim("fired:a", "done:x", 60) == "done:x"
    assert await backend.claim("fired:a", "fail:y", 60) == "done:x"
    assert await backend.claim("fired:a", "done:x", 60) == "done:x"  # the holder, again
    assert await backend.claim("fired:b", "fail:y", None) == "fail:y"


async def test_sets_and_claims_expire(backend: ResultBackend) -> None:
    await backend.add_to_set("chord:short", "0:x", 0.2)
    await backend.claim("fired:short", "first", 0.2)
    deadline = time.monotonic() + 5
    while await backend.claim("fired:short", "second", 0.2) != "second":
        assert time.monotonic() < deadline, "the claim never expired"
        await asyncio.sleep(0.02)
    assert await backend.set_members("chord:short") == set()
    assert await backend.add_to_set("chord:short", "1:y", 60) == 1  # a fresh set


def test_concurrent_adds_each_see_their_own_size(backend: ResultBackend) -> None:
    # Given THREADS callers adding distinct members at once, each twice
    async def add(index: int) -> tuple[int, int]:
        first = await backend.add_to_set("chord:race", f"{index}:m{index}", 60)
        again = await backend.add_to_set("chord:race", f"{index}:m{index}", 60)
        return first, again

    results = in_threads(THREADS, add)
    # Then the sizes they saw on their first add are exactly 1..THREADS: one saw it full
    assert sorted(first for first, _ in results) == list(range(1, THREADS + 1))
    assert all(again >= first for first, again in results)
    assert asyncio.run(backend.set_members("chord:race")) == {
        f"{i}:m{i}" for i in range(THREADS)}


def test_concurrent_claims_have_one_winner_that_all_agree_on(backend: ResultBackend) -> None:
    async def claim(index: int) -> str:
        return await backend.claim("fired:race", f"done:{index}", 60)

    holders = in_threads(THREADS, claim)
    assert len(set(holders)) == 1
    assert holders[0] in {f"done:{i}" for i in range(THREADS)}
