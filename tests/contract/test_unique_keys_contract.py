"""The unique-key stores, on every server that holds them: the memory, SQLite, Redis and
PostgreSQL brokers (where the claim and the publish are one step) and the SQLite, Redis
and PostgreSQL result backends (used under a RabbitMQ broker: claim, then publish).

PostgreSQL: the contract suites' database, a schema of each test's own."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeriac.backends import create_backend
from celeriac.brokers import Outgoing, create_broker
from celeriac.uniqueness.store import UniqueKeys, _make

# Redis: the unique-jobs tests' own database, with a key prefix of each test's own.
REDIS_URL = "redis://127.0.0.1:6379/15"
OWNERS = ["memory-broker", "sqlite-broker", "redis-broker", "postgresql-broker",
          "sqlite-backend", "redis-backend", "postgresql-backend"]


@pytest.fixture(params=OWNERS)
def owner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    kind, role = request.param.split("-")
    if kind == "postgresql":
        yield from _on_postgresql(role, request.getfixturevalue("pg_isolated"))
        return
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'u.db'}",
           "redis": REDIS_URL}[kind]
    prefix = f"test-unique:{uuid.uuid4().hex[:12]}:"
    options = {"key_prefix": prefix} if kind == "redis" else {}
    if kind == "redis":
        _require_redis()
    made: Any = (create_broker(url, options) if role == "broker"
                 else create_backend(url, options))
    try:
        asyncio.run(made.connect())
        yield made
    finally:
        made.close_blocking()
        asyncio.run(made.close())
        if kind == "redis":
            _delete_prefix(prefix)


def _on_postgresql(role: str, isolated: tuple[str, dict[str, Any]]) -> Iterator[Any]:
    url, options = isolated
    made: Any = (create_broker(url, options) if role == "broker"
                 else create_backend(url, options))
    try:
        asyncio.run(made.connect())
        yield made
    finally:
        made.close_blocking()
        asyncio.run(made.close())


def _require_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis is not running at {REDIS_URL}")
    finally:
        client.close()


def _delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def store(owner: Any) -> UniqueKeys:
    return _make(owner)


def outgoing(task_id: str, eta: float | None = None) -> Outgoing:
    return Outgoing(task_id, "unique-q", b"body", 0, eta)


async def test_a_key_is_held_by_one_task_until_released(store: UniqueKeys) -> None:
    assert await store.claim("k", "a", 30) is None
    assert await store.claim("k", "b", 30) == "a"
    assert store.claim_blocking("k", "c", 30) == "a"
    assert await store.holder("k") == "a"
    await store.release([("k", "b")])  # not its holder: nothing happens
    assert await store.holder("k") == "a"
    await store.release([("k", "a"), ("other", "a")])
    assert await store.holder("k") is None
    assert store.claim_blocking("k", "b", 30) is None
    store.release_blocking([("k", "b")])
    assert await store.holder("k") is None


async def test_a_hold_ends_at_its_deadline(store: UniqueKeys) -> None:
    assert await store.claim("k", "a", 0.2) is None
    await asyncio.sleep(0.3)  # the deadline itself is what is tested
    assert await store.holder("k") is None
    assert await store.claim("k", "b", 30) is None
    await store.release([("k", "a")])  # the late release of the old holder: no effect
    assert await store.holder("k") == "b"


def test_of_many_threads_one_claims(store: UniqueKeys) -> None:
    barrier = threading.Barrier(8)
    won: list[str] = []

    def claim(n: int) -> None:
        barrier.wait()
        for round_ in range(20):
            if store.claim_blocking(f"k{round_}", f"t{n}", 30) is None:
                won.append(f"k{round_}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == sorted(f"k{n}" for n in range(20))


async def test_send_publishes_only_for_the_claim(store: UniqueKeys, owner: Any) -> None:
    published: list[str] = []

    async def publish(messages: Any) -> None:
        published.extend(m.id for m in messages)

    def publish_blocking(messages: Any) -> None:
        published.extend(m.id for m in messages)

    assert await store.send("k", "a", 30, outgoing("a"), publish) is None
    assert await store.send("k", "b", 30, outgoing("b"), publish) == "a"
    assert store.send_blocking("k", "c", 30, outgoing("c"), publish_blocking) == "a"
    assert store.send_blocking("later", "d", 30, outgoing("d", time.time() + 60),
                               publish_blocking) is None
    if store.atomic and hasattr(owner, "queue_stats") and owner.scheme != "memory":
        # The broker stored the message itself, in the claim's step.
        assert published == []
        (stats,) = await owner.queue_stats(["unique-q"])
        assert (stats.ready, stats.scheduled) == (1, 1)
    else:
        assert published == ["a", "d"]


async def test_a_failed_publish_leaves_the_key_free(store: UniqueKeys) -> None:
    async def publish(messages: Any) -> None:
        raise OSError("down")

    # A message no broker takes (no queue): refused before anything is stored by the
    # stores that publish themselves, and by this publish for the others.
    with pytest.raises((OSError, TypeError)):
        await store.send("k", "a", 30, Outgoing("a", "", b"", 0, None), publish)
    assert await store.holder("k") is None
    assert await store.claim("k", "b", 30) is None
