"""The result backend contract (see ``celeriac.backends.base``), run on every implementation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pytest

from celeriac.backends import ResultBackend

# Slack for timers on a busy machine: an event due at t must have happened by t + SLACK.
SLACK = 0.25


@contextmanager
def storing_later(backend: ResultBackend, values: Sequence[bytes], task_id: str = "t",
                  delay: float = 0.05) -> Iterator[list[float]]:
    """Store ``values`` one after another from another thread, ``delay`` apart.

    Yields the list the thread appends each store's monotonic time to.
    """
    stored_at: list[float] = []

    def store() -> None:
        async def main() -> None:
            for value in values:
                await asyncio.sleep(delay)
                await backend.store(task_id, value, None)
                stored_at.append(time.monotonic())
        asyncio.run(main())

    thread = threading.Thread(target=store)
    thread.start()
    try:
        yield stored_at
    finally:
        thread.join()


async def test_store_and_load_round_trip(backend: ResultBackend) -> None:
    await backend.store_many({"a": b"\x00result a", "b": bytes(range(256))}, ttl=60)

    assert await backend.load("a") == b"\x00result a"
    assert await backend.load_many(["a", "b", "missing"]) == {
        "a": b"\x00result a", "b": bytes(range(256))}
    assert await backend.load("missing") is None
    assert await backend.load_many([]) == {}


async def test_store_replaces(backend: ResultBackend) -> None:
    await backend.store("a", b"STARTED", None)
    await backend.store("a", b"SUCCESS", 60)

    assert await backend.load("a") == b"SUCCESS"


async def test_ttl_expires_results(backend: ResultBackend) -> None:
    await backend.store("short", b"1", ttl=0.2)
    await backend.store("forever", b"2", ttl=None)
    assert await backend.load_many(["short", "forever"]) == {"short": b"1", "forever": b"2"}

    await asyncio.sleep(0.3)

    assert await backend.load("short") is None
    assert await backend.load_many(["short", "forever"]) == {"forever": b"2"}


async def test_delete_forgets(backend: ResultBackend) -> None:
    await backend.store_many({"a": b"1", "b": b"2", "c": b"3"}, None)

    await backend.delete_many(["a", "c", "missing"])

    assert await backend.load_many(["a", "b", "c"]) == {"b": b"2"}


async def test_cleanup_deletes_only_expired(backend: ResultBackend) -> None:
    await backend.store_many({"x1": b"1", "x2": b"2"}, ttl=0.1)
    await backend.store("long", b"3", ttl=60)
    await backend.store("forever", b"4", ttl=None)
    await asyncio.sleep(0.2)

    # A backend whose server expires keys by itself keeps the base's no-op cleanup
    # ("backends with native TTLs need not"), and has nothing left to count.
    native_ttl = type(backend).cleanup is ResultBackend.cleanup
    assert await backend.cleanup() == (0 if native_ttl else 2)

    assert await backend.cleanup() == 0
    assert await backend.load_many(["x1", "x2", "long", "forever"]) == {
        "long": b"3", "forever": b"4"}


async def test_wait_returns_a_stored_result_at_once(backend: ResultBackend) -> None:
    await backend.store("t", b"SUCCESS", None)

    started = time.monotonic()
    assert await backend.wait("t", timeout=5) == b"SUCCESS"
    assert time.monotonic() - started < SLACK


async def test_wait_returns_when_stored_from_another_thread(backend: ResultBackend) -> None:
    with storing_later(backend, [b"SUCCESS"]) as stored_at:
        got = await backend.wait("t", timeout=5)
        woke = time.monotonic()

    assert got == b"SUCCESS"
    assert woke - stored_at[0] < SLACK


async def test_wait_without_timeout_returns_when_stored(backend: ResultBackend) -> None:
    with storing_later(backend, [b"SUCCESS"]):
        got = await asyncio.wait_for(backend.wait("t", timeout=None), 5)

    assert got == b"SUCCESS"


async def test_wait_times_out_with_none_without_spinning(backend: ResultBackend) -> None:
    wall, cpu = time.monotonic(), time.process_time()

    got = await backend.wait("never", timeout=0.4)

    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert got is None
    assert 0.35 <= wall < 0.4 + SLACK
    assert cpu < 0.2 * wall, f"waiting used {cpu:.3f}s of CPU in {wall:.3f}s"


def success_only(seen: list[bytes]) -> Callable[[bytes], bool]:
    """An ``accept`` that takes only b"SUCCESS" and records every state it is shown."""
    def accept(data: bytes) -> bool:
        seen.append(data)
        return data == b"SUCCESS"

    return accept


async def test_wait_skips_what_accept_refuses(backend: ResultBackend) -> None:
    await backend.store("t", b"STARTED", None)
    seen: list[bytes] = []
    final = success_only(seen)

    with storing_later(backend, [b"RETRY", b"SUCCESS"]) as stored_at:
        got = await backend.wait("t", timeout=5, accept=final)
        woke = time.monotonic()

    assert got == b"SUCCESS"
    assert seen[0] == b"STARTED"
    assert seen[-1] == b"SUCCESS"
    assert woke - stored_at[-1] < SLACK


async def test_wait_with_accept_times_out_on_an_intermediate_value(
        backend: ResultBackend) -> None:
    await backend.store("t", b"STARTED", None)

    got = await backend.wait("t", timeout=0.2, accept=lambda data: data == b"SUCCESS")

    assert got is None


async def test_many_waiters_on_one_loop_all_wake(backend: ResultBackend) -> None:
    waiters = [asyncio.create_task(backend.wait(f"t{n}", timeout=5)) for n in range(50)]
    await asyncio.sleep(0.05)

    await backend.store_many({f"t{n}": str(n).encode() for n in range(50)}, None)
    got = await asyncio.wait_for(asyncio.gather(*waiters), 5)

    assert got == [str(n).encode() for n in range(50)]


# -- sync callers (backends with supports_blocking) ------------------------------------


def blocking(backend: ResultBackend) -> ResultBackend:
    if not backend.supports_blocking:
        pytest.skip(f"{backend.scheme}:// serves sync callers through the app's bridge")
    return backend


def test_blocking_load_and_wait_read_what_the_async_api_stored(
        backend: ResultBackend) -> None:
    backend = blocking(backend)
    asyncio.run(backend.store_many({"a": b"\x00result a", "b": bytes(range(256))}, 60))

    assert backend.load_many_blocking(["a", "b", "missing"]) == {
        "a": b"\x00result a", "b": bytes(range(256))}
    assert backend.load_many_blocking([]) == {}
    started = time.monotonic()
    assert backend.wait_blocking("a", timeout=5) == b"\x00result a"
    assert time.monotonic() - started < SLACK


def test_blocking_wait_returns_when_stored_from_another_thread(
        backend: ResultBackend) -> None:
    backend = blocking(backend)
    with storing_later(backend, [b"SUCCESS"], delay=0.2) as stored_at:
        got = backend.wait_blocking("t", timeout=5)
        woke = time.monotonic()

    assert got == b"SUCCESS"
    assert woke - stored_at[0] < SLACK


def test_blocking_wait_times_out_with_none_without_spinning(backend: ResultBackend) -> None:
    backend = blocking(backend)
    wall, cpu = time.monotonic(), time.process_time()

    got = backend.wait_blocking("never", timeout=0.4)

    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert got is None
    assert 0.35 <= wall < 0.4 + SLACK
    assert cpu < 0.2 * wall, f"waiting used {cpu:.3f}s of CPU in {wall:.3f}s"


def test_blocking_wait_skips_what_accept_refuses(backend: ResultBackend) -> None:
    backend = blocking(backend)
    asyncio.run(backend.store("t", b"STARTED", None))
    seen: list[bytes] = []
    final = success_only(seen)

    with storing_later(backend, [b"RETRY", b"SUCCESS"], delay=0.1) as stored_at:
        got = backend.wait_blocking("t", timeout=5, accept=final)
        woke = time.monotonic()

    assert got == b"SUCCESS"
    assert seen[0] == b"STARTED"
    assert seen[-1] == b"SUCCESS"
    assert woke - stored_at[-1] < SLACK


def test_every_sync_waiter_of_one_result_wakes_when_it_is_stored(
        backend: ResultBackend) -> None:
    # Several threads wait on the same id (get() of one result in many places): each
    # must wake when the result is stored, not one of them and the rest only later.
    backend = blocking(backend)
    results: dict[int, tuple[bytes | None, float]] = {}

    def wait(n: int) -> None:
        got = backend.wait_blocking("shared", timeout=5)
        results[n] = (got, time.monotonic())

    waiters = [threading.Thread(target=wait, args=(n,)) for n in range(5)]
    for thread in waiters:
        thread.start()
    with storing_later(backend, [b"SUCCESS"], task_id="shared", delay=0.3) as stored_at:
        for thread in waiters:
            thread.join(10)

    assert sorted(results) == list(range(5))
    assert {got for got, _ in results.values()} == {b"SUCCESS"}
    assert max(woke for _, woke in results.values()) - stored_at[0] < SLACK
    backend.close_blocking()  # pushes back what it popped, then closes; usable again
    assert backend.wait_blocking("shared", timeout=1) == b"SUCCESS"


def test_blocking_wait_from_nothing_stored_past_an_intermediate_state(
        backend: ResultBackend) -> None:
    # get() right after sending: nothing is stored, then STARTED, then the result
    backend = blocking(backend)
    seen: list[bytes] = []
    final = success_only(seen)

    with storing_later(backend, [b"STARTED", b"SUCCESS"], delay=0.2) as stored_at:
        got = backend.wait_blocking("t", timeout=5, accept=final)
        woke = time.monotonic()

    assert got == b"SUCCESS"
    assert seen == [b"STARTED", b"SUCCESS"]  # each state looked at once: no spinning
    assert woke - stored_at[-1] < SLACK


def test_sync_and_async_waiters_of_one_large_result_all_wake(backend: ResultBackend) -> None:
    backend = blocking(backend)
    large = bytes(range(256)) * 1024  # 256 KiB: more than travels in a wake-up token
    woke: dict[str, tuple[bytes | None, float]] = {}

    def wait_sync(name: str) -> None:
        got = backend.wait_blocking("big", timeout=5)
        woke[name] = (got, time.monotonic())

    def wait_async(name: str) -> None:
        async def main() -> bytes | None:
            return await backend.wait("big", timeout=5)
        got = asyncio.run(main())
        woke[name] = (got, time.monotonic())

    threads = [threading.Thread(target=wait_sync, args=(f"sync{n}",)) for n in range(3)]
    threads += [threading.Thread(target=wait_async, args=(f"async{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    with storing_later(backend, [large], task_id="big", delay=0.3) as stored_at:
        for thread in threads:
            thread.join(10)

    assert sorted(woke) == ["async0", "async1", "sync0", "sync1", "sync2"]
    assert all(got == large for got, _ in woke.values())
    assert max(at for _, at in woke.values()) - stored_at[0] < SLACK
