"""The revocation store contract, on every result backend that keeps one.

Workers read revocations incrementally (``read(cursor)``) about once a second, so the
contract is: every live entry the first time, then only what was added since, in
order; an id revoked again comes back with its new mode; expired entries never come
back; and another connection to the same server sees the same entries.
"""

from __future__ import annotations

import asyncio

import pytest

from celeriac.backends import ResultBackend, create_backend
from celeriac.backends import revocations as module
from celeriac.backends.revocations import (
    REVOKE,
    TERMINATE,
    TIME_LIMIT,
    Revocation,
    RevocationStore,
    revocation_store,
)


def _store(backend: ResultBackend) -> RevocationStore:
    store = revocation_store(backend)
    assert store is not None, f"{backend.scheme} keeps revocations"
    return store


def _pairs(entries: list[Revocation]) -> list[tuple[str, str]]:
    return [(entry.task_id, entry.mode) for entry in entries]


async def test_a_first_read_returns_every_entry_then_only_new_ones(
    backend: ResultBackend,
) -> None:
    store = _store(backend)
    await store.add(["a", "b"], REVOKE, 60)
    await store.add(["c"], TERMINATE, None)

    entries, cursor = await store.read("")
    assert _pairs(entries) == [("a", REVOKE), ("b", REVOKE), ("c", TERMINATE)]
    assert entries[2].expires_at is None
    assert entries[0].expires_at is not None

    assert await store.read(cursor) == ([], cursor)
    await store.add(["d"], TIME_LIMIT, 60)
    entries, later = await store.read(cursor)
    assert _pairs(entries) == [("d", TIME_LIMIT)]
    assert await store.read(later) == ([], later)


async def test_an_id_revoked_again_comes_back_with_its_new_mode(
    backend: ResultBackend,
) -> None:
    store = _store(backend)
    await store.add(["a"], REVOKE, 60)
    _, cursor = await store.read("")
    await store.add(["a"], TERMINATE, 60)
    entries, _ = await store.read(cursor)
    assert _pairs(entries) == [("a", TERMINATE)]


async def test_expired_entries_are_not_read(backend: ResultBackend) -> None:
    store = _store(backend)
    await store.add(["brief"], REVOKE, 0.05)
    await store.add(["lasting"], REVOKE, 60)
    await asyncio.sleep(0.1)  # the expiry is the behaviour under test
    entries, _ = await store.read("")
    assert _pairs(entries) == [("lasting", REVOKE)]


async def test_reads_come_in_batches(backend: ResultBackend,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "READ_BATCH", 3)
    store = _store(backend)
    ids = [f"id-{n}" for n in range(7)]
    await store.add(ids, REVOKE, 60)
    seen: list[str] = []
    cursor = ""
    for _ in range(4):
        entries, cursor = await store.read(cursor)
        assert len(entries) <= 3
        seen += [entry.task_id for entry in entries]
    assert seen == ids


async def test_another_connection_sees_the_same_entries(backend: ResultBackend) -> None:
    await _store(backend).add(["shared"], TERMINATE, 60)
    # The memory backend is shared by sharing the object; the others through the server.
    other = backend if backend.scheme == "memory" else create_backend(backend.url,
                                                                      backend.options)
    await other.connect()
    try:
        entries, _ = await _store(other).read("")
        assert _pairs(entries) == [("shared", TERMINATE)]
    finally:
        if other is not backend:
            await other.close()


async def test_an_unknown_mode_is_refused(backend: ResultBackend) -> None:
    with pytest.raises(ValueError, match="unknown revocation mode"):
        await _store(backend).add(["a"], "pause", 60)
