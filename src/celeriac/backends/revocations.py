"""Revoked task ids, kept on the result backend's server so every worker sees them.

``app.control.revoke(id)`` adds an entry here; every worker process reads the entries
added since its last read about once a second (``celeriac.worker.guard``), keeps them in
memory, and checks each message it takes against them. Because the entries live on the
server (for as long as results do: ``result_expires``), a worker that starts after the
revoke still honours it.

An entry is a task id and a mode:

- ``revoke``: do not run it; when its message comes out, store REVOKED and ack it;
- ``terminate``: the same, and stop it if it is running now;
- ``time_limit``: it was killed for running past its hard time limit (the supervisor
  stored its FAILURE outcome); if its message comes back, do not run it again.

Reads are incremental: ``read(cursor)`` returns the entries added after ``cursor`` and
the cursor to pass next time (``""`` the first time: every live entry). An id revoked
twice appears again, with its newest mode.

Where the entries live, per backend:

- memory: beside the backend object, in this process;
- sqlite: a ``revocations`` table in the backend's file (``seq`` is the cursor; never
  reused, since it is AUTOINCREMENT); expired rows are deleted when entries are added;
- redis: a stream ``<prefix>revoked`` (the entry id is the cursor), trimmed by age to
  ``result_expires`` on every add, the key itself expiring after that long;
- postgresql: a ``celeriac_revocations`` table beside the results (``seq`` is the
  cursor; adds take the table's lock, so seqs commit in order and no reader skips one;
  see ``celeriac.backends.postgresql``);
- rpc: nowhere. rpc:// results are not stored on a server, so there is no shared place
  to keep revocations; ``revocation_store`` returns None and revoking is an error
  that says to use a stored result backend (sqlite, redis).
"""

from __future__ import annotations

import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from celeriac.backends.base import ResultBackend

if TYPE_CHECKING:
    from celeriac.backends.redis import RedisBackend
    from celeriac.backends.sqlite import SQLiteBackend

REVOKE: Final = "revoke"
TERMINATE: Final = "terminate"
TIME_LIMIT: Final = "time_limit"
MODES: Final = frozenset({REVOKE, TERMINATE, TIME_LIMIT})

READ_BATCH = 10_000  # entries per read; a worker catching up reads again at once


@dataclass(frozen=True, slots=True)
class Revocation:
    task_id: str
    mode: str  # REVOKE, TERMINATE or TIME_LIMIT
    expires_at: float | None  # Unix time; None: kept for ever


class RevocationStore(ABC):
    """Where revoked task ids are kept for every worker to read."""

    @abstractmethod
    async def add(self, task_ids: Sequence[str], mode: str, ttl: float | None) -> None:
        """Revoke these ids with ``mode`` for ``ttl`` seconds (None: for ever)."""

    @abstractmethod
    async def read(self, cursor: str) -> tuple[list[Revocation], str]:
        """Live entries added after ``cursor`` (``""``: all of them), and the next cursor.

        Reads at most ``READ_BATCH`` entries (expired ones are read and left out); the
        caller reads again until the cursor comes back unchanged.
        """


_STORES: weakref.WeakKeyDictionary[ResultBackend, RevocationStore | None] = (
    weakref.WeakKeyDictionary())
_STORES_LOCK = threading.Lock()


def revocation_store(backend: ResultBackend) -> RevocationStore | None:
    """The revocation store on ``backend``'s server, or None if it has none (rpc)."""
    with _STORES_LOCK:
        if backend not in _STORES:
            _STORES[backend] = _make_store(backend)
        return _STORES[backend]


def _make_store(backend: ResultBackend) -> RevocationStore | None:
    if backend.scheme == "memory":
        return MemoryRevocations()
    if backend.scheme == "sqlite":
        from celeriac.backends.sqlite import SQLiteBackend

        assert isinstance(backend, SQLiteBackend)
        return SQLiteRevocations(backend)
    if backend.scheme in ("redis", "rediss", "sentinel"):
        from celeriac.backends.redis import RedisBackend

        assert isinstance(backend, RedisBackend)
        return RedisRevocations(backend)
    if backend.scheme == "postgresql":
        from celeriac.backends.postgresql import PostgreSQLBackend, PostgreSQLRevocations

        assert isinstance(backend, PostgreSQLBackend)
        return PostgreSQLRevocations(backend)
    return None


def _expiry(ttl: float | None) -> float | None:
    return None if ttl is None else time.time() + ttl


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown revocation mode {mode!r}")


# -- memory ------------------------------------------------------------------------------


class MemoryRevocations(RevocationStore):
    """Entries in a list in this process (for the memory backend)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Revocation] = []

    async def add(self, task_ids: Sequence[str], mode: str, ttl: float | None) -> None:
        _check_mode(mode)
        until = _expiry(ttl)
        with self._lock:
            self._entries.extend(Revocation(task_id, mode, until) for task_id in task_ids)

    async def read(self, cursor: str) -> tuple[list[Revocation], str]:
        start = int(cursor or 0)
        now = time.time()
        with self._lock:
            batch = self._entries[start:start + READ_BATCH]
        live = [e for e in batch if e.expires_at is None or e.expires_at > now]
        return live, str(start + len(batch))


# -- sqlite ------------------------------------------------------------------------------

SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS revocations (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL UNIQUE,
        mode TEXT NOT NULL,
        expires_at REAL
    )""",
    """CREATE INDEX IF NOT EXISTS revocations_expiry
        ON revocations (expires_at) WHERE expires_at IS NOT NULL""",
    "INSERT OR IGNORE INTO celeriac_schema VALUES ('revocations', 1)",
)


class SQLiteRevocations(RevocationStore):
    """A ``revocations`` table in the result backend's SQLite file."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self._db = backend._db  # the backend's connections: closed with it
        self._ready = False

    def _create(self) -> None:
        if self._ready:
            return
        with self._db.write() as conn:
            for statement in SQLITE_SCHEMA:
                conn.execute(statement)
        self._ready = True

    async def add(self, task_ids: Sequence[str], mode: str, ttl: float | None) -> None:
        _check_mode(mode)
        self._create()
        until, now = _expiry(ttl), time.time()
        with self._db.write() as conn:
            conn.execute("DELETE FROM revocations WHERE expires_at <= ?", (now,))
            # REPLACE gives a revoked-again id a new seq, so readers see its new mode.
            conn.executemany("INSERT OR REPLACE INTO revocations (task_id, mode, expires_at) "
                             "VALUES (?, ?, ?)", [(task_id, mode, until) for task_id in task_ids])

    async def read(self, cursor: str) -> tuple[list[Revocation], str]:
        self._create()
        after = int(cursor or 0)
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT seq, task_id, mode, expires_at FROM revocations WHERE seq > ? "
                "ORDER BY seq LIMIT ?", (after, READ_BATCH)).fetchall()
        if not rows:
            return [], str(after)
        now = time.time()
        live = [Revocation(task_id, mode, until) for _, task_id, mode, until in rows
                if until is None or until > now]
        return live, str(rows[-1][0])


# -- redis -------------------------------------------------------------------------------


class RedisRevocations(RevocationStore):
    """A stream ``<prefix>revoked``: one entry per revoke, trimmed to the TTL by age."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self.key = f"{backend.prefix}revoked"

    async def add(self, task_ids: Sequence[str], mode: str, ttl: float | None) -> None:
        from celeriac.brokers.redis_connection import command

        _check_mode(mode)
        if not task_ids:
            return
        backend = self._backend
        client = await backend._clients.get()
        pipe = client.pipeline(transaction=False)
        execute = command(pipe)
        until = _expiry(ttl)
        fields: list[Any] = ["mode", mode, "until", "" if until is None else repr(until)]
        trim: list[Any] = []
        if ttl is not None:  # entries older than the TTL are dropped on each add
            trim = ["MINID", "~", int((time.time() - ttl) * 1000)]
        for task_id in task_ids:
            execute("XADD", self.key, *trim, "*", "id", task_id, *fields)
        if ttl is not None:
            execute("PEXPIRE", self.key, max(1, round(ttl * 1000)))
        with backend._errors("revoke"):
            async with backend._deadline():
                await pipe.execute()

    async def read(self, cursor: str) -> tuple[list[Revocation], str]:
        from celeriac.brokers.redis_connection import command

        backend = self._backend
        client = await backend._clients.get()
        start = f"({cursor}" if cursor else "-"
        with backend._errors("read revocations"):
            async with backend._deadline():
                entries = await command(client)("XRANGE", self.key, start, "+",
                                                "COUNT", READ_BATCH)
        if not entries:
            return [], cursor
        now = time.time()
        live: list[Revocation] = []
        for _, raw in entries:
            values = _stream_fields(raw)
            until = float(values["until"]) if values.get("until") else None
            if until is None or until > now:
                live.append(Revocation(values["id"], values["mode"], until))
        last = entries[-1][0]
        return live, last.decode() if isinstance(last, bytes) else str(last)


def _stream_fields(raw: Any) -> dict[str, str]:
    """A stream entry's field list (or mapping) as text."""
    items = list(raw.items()) if isinstance(raw, dict) else list(zip(raw[::2], raw[1::2],
                                                                       strict=True))
    return {_text(key): _text(value) for key, value in items}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["MODES", "REVOKE", "TERMINATE", "TIME_LIMIT", "Revocation", "RevocationStore",
           "revocation_store"]
