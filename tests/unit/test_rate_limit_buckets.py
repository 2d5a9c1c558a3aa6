"""The token-bucket stores behind global rate limits, one suite run on each of them.

memory (one process), SQLite (a file shared by processes) and Redis (database 10 of the
local server, a key prefix per test; skipped when the server is absent, except under
CI). Reservations made from several threads, each with its own event loop and its own
connection, must never hand out the same token twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis_db10
from redis_db10 import isolated_prefix

from celeriac import App
from celeriac.backends.buckets import backend_token_buckets
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.brokers.buckets import MemoryBuckets, TokenBuckets
from celeriac.brokers.buckets_redis import RedisBuckets
from celeriac.brokers.buckets_sqlite import SQLiteBuckets
from celeriac.ratelimit import shared_buckets

KINDS = ["memory", "sqlite", "redis"]


@pytest.fixture(params=KINDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type[TokenBuckets]]:
    """A factory of stores that all see the same buckets (one per thread, as workers)."""
    kind = request.param
    shared = MemoryBuckets()
    with contextlib.ExitStack() as stack:
        prefix = stack.enter_context(isolated_prefix("buckets")) if kind == "redis" else ""

        def make() -> TokenBuckets:
            if kind == "memory":
                return shared
            if kind == "sqlite":
                return SQLiteBuckets(f"sqlite:///{tmp_path / 'buckets.db'}")
            return RedisBuckets(f"{redis_db10.URL}?key_prefix={prefix}")

        yield make  # type: ignore[misc]


def _run(store: TokenBuckets, coro_fn: object) -> object:
    async def go() -> object:
        try:
            return await coro_fn(store)  # type: ignore[operator]
        finally:
            await store.close()

    return asyncio.run(go())


def test_tokens_come_one_interval_apart(make_store: type[TokenBuckets]) -> None:
    async def three(store: TokenBuckets) -> list[float]:
        return [(await store.reserve("task.a", 0.5, 60.0)).delay for _ in range(3)]

    delays = _run(make_store(), three)
    assert isinstance(delays, list)
    assert delays[0] == 0.0
    assert delays[1] == pytest.approx(0.5, abs=0.05)
    assert delays[2] == pytest.approx(1.0, abs=0.05)


def test_each_key_has_a_bucket_of_its_own(make_store: type[TokenBuckets]) -> None:
    async def two_keys(store: TokenBuckets) -> list[float]:
        return [(await store.reserve(key, 10.0, 60.0)).delay for key in ("a", "b", "a")]

    delays = _run(make_store(), two_keys)
    assert isinstance(delays, list)
    assert delays[:2] == [0.0, 0.0]
    assert delays[2] == pytest.approx(10.0, abs=0.1)


def test_nothing_is_reserved_past_the_horizon(make_store: type[TokenBuckets]) -> None:
    async def past(store: TokenBuckets) -> list[tuple[bool, float]]:
        grants = [await store.reserve("k", 10.0, 15.0) for _ in range(4)]
        return [(g.granted, g.delay) for g in grants]

    grants = _run(make_store(), past)
    assert isinstance(grants, list)
    assert [granted for granted, _ in grants] == [True, True, False, False]
    # Refused twice alike: a refusal reserves nothing. Ask again when the reservations
    # reach only half the horizon: 20 s - 7.5 s from now.
    assert grants[2][1] == pytest.approx(12.5, abs=0.1)
    assert grants[3][1] == pytest.approx(12.5, abs=0.1)


def test_overrides_are_kept_and_reset_their_bucket(make_store: type[TokenBuckets]) -> None:
    async def overrides(store: TokenBuckets) -> tuple[object, ...]:
        assert await store.overrides() == {}
        await store.reserve("job", 100.0, 1000.0)
        await store.set_override("job", "5/s")
        await store.set_override("other", "0")
        after_set = await store.overrides()
        fresh = await store.reserve("job", 100.0, 1000.0)  # the bucket started afresh
        await store.set_override("job", None)
        return after_set, fresh.delay, await store.overrides()

    after_set, fresh_delay, after_remove = _run(make_store(), overrides)  # type: ignore[misc]
    assert after_set == {"job": "5/s", "other": "0"}
    assert fresh_delay == 0.0
    assert after_remove == {"other": "0"}


def test_concurrent_reservations_never_share_a_token(make_store: type[TokenBuckets]) -> None:
    # Given four threads, each with its own loop and store (as four worker processes)
    moments: list[float] = []  # when each reserved token is due, on this clock
    lock = threading.Lock()
    errors: list[BaseException] = []

    async def reserve_many(store: TokenBuckets) -> None:
        for _ in range(25):
            grant = await store.reserve("shared", 0.1, 60.0)
            due = time.time() + grant.delay
            with lock:
                moments.append(due)

    def worker() -> None:
        try:
            _run(make_store(), reserve_many)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    # When they all reserved a token of one every 100 ms
    # Then the 100 tokens are 100 distinct moments, 100 ms apart (give or take the time a
    # thread took to note its moment down): no two requests got the same token
    assert len(moments) == 100
    gaps = [b - a for a, b in itertools.pairwise(sorted(moments))]
    assert min(gaps) > 0.05, sorted(gaps)[:5]
    assert sorted(moments)[-1] - sorted(moments)[0] == pytest.approx(9.9, abs=0.1)


def test_the_store_is_the_brokers_else_the_backends(tmp_path: Path) -> None:
    memory = App("x", broker="memory://", backend="memory://")
    assert shared_buckets(memory) is memory.broker.token_buckets()
    assert memory.broker.supports_rate_limit
    amqp_sqlite = App("x", broker="amqp://guest:guest@127.0.0.1:5672/",
                      backend=f"sqlite:///{tmp_path / 'r.db'}")
    assert not amqp_sqlite.broker.supports_rate_limit
    assert isinstance(shared_buckets(amqp_sqlite), SQLiteBuckets)
    assert backend_token_buckets(MemoryBackend()) is None  # one process: not shared
    assert isinstance(backend_token_buckets(SQLiteBackend(f"sqlite:///{tmp_path / 'b.db'}")),
                      SQLiteBuckets)
    for app in (memory, amqp_sqlite):
        app.close()
