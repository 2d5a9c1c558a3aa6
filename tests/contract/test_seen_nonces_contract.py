"""Replay protection's nonce stores (``security.replay``) keep one contract on every
server that holds them: the memory, SQLite, Redis and PostgreSQL brokers, and the
PostgreSQL result backend (where they go under a RabbitMQ broker).

A nonce is claimed by one worker token at a time; a copy in the same batch or a later
batch finds its holder; a release by another token changes nothing, by its holder makes
it new again; ``done`` marks refuse every later claim; and a batch larger than any one
server call takes is handled whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from celeriac.backends import create_backend
from celeriac.brokers import create_broker
from celeriac.security.replay import DONE, SeenNonces, _make
from celeriac.security.signing import Opened, Signer, Verifier

OWNERS = ["memory-broker", "sqlite-broker", "redis-broker", "postgresql-broker",
          "postgresql-backend"]


@pytest.fixture(params=OWNERS)
def store(request: pytest.FixtureRequest,
          place: Callable[[str], tuple[str, dict[str, Any]]]) -> Iterator[SeenNonces]:
    kind, role = request.param.split("-")
    url, options = place(kind)
    owner: Any = create_broker(url, options) if role == "broker" \
        else create_backend(url, options)
    try:
        asyncio.run(owner.connect())
        yield _make(owner)
    finally:
        owner.close_blocking()
        asyncio.run(owner.close())


def _signed(count: int, due: float | None = None) -> list[Opened]:
    signer, verifier = Signer("k", secret=b"s" * 32), Verifier({"k": b"s" * 32}, {}, 600)
    now = time.time()
    return [verifier.open(signer.sign(b"frame", "q", due=due, now=now), "q", now)
            for _ in range(count)]


async def test_a_nonce_is_claimed_once_released_by_its_holder_and_refused_when_done(
        store: SeenNonces) -> None:
    first, later = _signed(1)[0], _signed(1, due=time.time() + 120)[0]
    assert await store.claim([first, later, first], "w1") == [None, None, "w1"]
    assert await store.claim([later, first], "w2") == ["w1", "w1"]  # held: copies
    await store.release([first], "w2")  # not its claim: kept
    assert await store.claim([first], "w2") == ["w1"]
    await store.release([first], "w1")  # handed back unstarted: new again
    assert await store.claim([first], "w2") == [None]
    await store.done([first])
    assert await store.claim([first], "w3") == [DONE]
    await store.release([first], "w2")  # a done mark is no claim: kept
    assert await store.claim([first], "w3") == [DONE]


async def test_a_large_batch_is_claimed_and_marked_whole(store: SeenNonces) -> None:
    big = _signed(4500)
    assert await store.claim(big, "w1") == [None] * 4500
    assert await store.claim(big[::-1], "w2") == ["w1"] * 4500
    await store.done(big)
    assert set(await store.claim(big, "w2")) == {DONE}


def test_of_many_workers_claiming_at_once_each_nonce_goes_to_one(store: SeenNonces) -> None:
    batch = _signed(200)

    async def claim(token: str) -> list[str | None]:
        return await store.claim(batch, token)

    async def race() -> list[list[str | None]]:
        return await asyncio.gather(*(claim(f"w{n}") for n in range(6)))

    results = asyncio.run(race())
    for index in range(len(batch)):
        found = [result[index] for result in results]
        winners = [f"w{n}" for n, holder in enumerate(found) if holder is None]
        assert len(winners) == 1, found
        assert all(holder in (None, winners[0]) for holder in found), found
