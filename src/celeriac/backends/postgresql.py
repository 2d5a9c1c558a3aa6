"""The PostgreSQL result backend: a results table with expiry, and waiting on NOTIFY.

``postgresql://user@host/db`` (also Celery's ``db+postgresql://``, so a Celery
``result_backend`` setting works as it is); ``?schema=name`` as for the broker. Tables
(component ``results``, version 1)::

    celeriac_results             task_id PRIMARY KEY, data, expires_at (server's Unix time)
    celeriac_result_sets         key PRIMARY KEY, size, expires_at    a chord's count
    celeriac_result_set_members  (key, member) PRIMARY KEY            its members
    celeriac_result_claims       key PRIMARY KEY, value, expires_at   who completed a chord

Expired rows are invisible to reads at once and deleted by ``cleanup``. Every store
sends ``NOTIFY`` with the stored ids (or ``*`` when they would not fit in one
notification), in the same statement, so ``wait`` sleeps on a ``LISTEN`` connection of
its event loop and reads again only when its id was stored. Chord sets and claims are
one transaction each, atomic across processes by the primary keys' row locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from celeriac.backends import revocations
from celeriac.backends.base import ResultBackend
from celeriac.backends.revocations import Revocation, RevocationStore, _check_mode
from celeriac.brokers.postgresql_connection import (
    Listener,
    LoopPools,
    PgSettings,
    create_schema,
    qualify,
)
from celeriac.errors import BackendError

if TYPE_CHECKING:
    from celeriac.bus.base import Bus

SCHEMA_VERSION = 1
NOW = "extract(epoch FROM clock_timestamp())"

CREATE = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_results (
        task_id text PRIMARY KEY,
        data bytea NOT NULL,
        expires_at double precision
    )""",
    """CREATE INDEX IF NOT EXISTS celeriac_results_expiry
        ON {s}.celeriac_results (expires_at) WHERE expires_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_result_sets (
        key text PRIMARY KEY,
        size integer NOT NULL,
        expires_at double precision
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_result_set_members (
        key text NOT NULL,
        member text NOT NULL,
        PRIMARY KEY (key, member)
    )""",
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_result_claims (
        key text PRIMARY KEY,
        value text NOT NULL,
        expires_at double precision
    )""",
)

# A notification's payload must stay under 8000 bytes: more ids than fit say "*".
NOTIFY_IDS = """
SELECT pg_notify(%s, CASE WHEN sum(octet_length(task_id) + 1) > 7000 THEN '*'
                          ELSE string_agg(task_id, ',') END) FROM stored
"""
STORE = f"""
WITH stored AS (
    INSERT INTO {{s}}.celeriac_results (task_id, data, expires_at)
    SELECT r.task_id, r.data, {NOW} + %s FROM unnest(%s::text[], %s::bytea[]) AS r(task_id, data)
    ON CONFLICT (task_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at
    RETURNING task_id)
{NOTIFY_IDS}"""
# Only where none is stored (an expired row is as good as none).
ADD = f"""
WITH stored AS (
    INSERT INTO {{s}}.celeriac_results AS old (task_id, data, expires_at)
    SELECT r.task_id, r.data, {NOW} + %s FROM unnest(%s::text[], %s::bytea[]) AS r(task_id, data)
    ON CONFLICT (task_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at
    WHERE old.expires_at <= {NOW}
    RETURNING task_id)
{NOTIFY_IDS}"""
LOAD = f"""
SELECT task_id, data FROM {{s}}.celeriac_results
 WHERE task_id = ANY(%s::text[]) AND (expires_at IS NULL OR expires_at > {NOW})
"""
DELETE = "DELETE FROM {s}.celeriac_results WHERE task_id = ANY(%s::text[])"
CLEANUP = (
    f"DELETE FROM {{s}}.celeriac_results WHERE expires_at <= {NOW}",
    f"""DELETE FROM {{s}}.celeriac_result_set_members WHERE key IN
        (SELECT key FROM {{s}}.celeriac_result_sets WHERE expires_at <= {NOW})""",
    f"DELETE FROM {{s}}.celeriac_result_sets WHERE expires_at <= {NOW}",
    f"DELETE FROM {{s}}.celeriac_result_claims WHERE expires_at <= {NOW}",
)
# A set that expired starts afresh: its members go first.
SET_EXPIRED = f"""
DELETE FROM {{s}}.celeriac_result_set_members WHERE key = %s AND EXISTS (
    SELECT 1 FROM {{s}}.celeriac_result_sets WHERE key = %s AND expires_at <= {NOW})
"""
SET_DROP = f"DELETE FROM {{s}}.celeriac_result_sets WHERE key = %s AND expires_at <= {NOW}"
SET_ADD = """
INSERT INTO {s}.celeriac_result_set_members (key, member) VALUES (%s, %s)
ON CONFLICT DO NOTHING
"""
SET_COUNT = f"""
INSERT INTO {{s}}.celeriac_result_sets AS old (key, size, expires_at) VALUES (%s, %s, {NOW} + %s)
ON CONFLICT (key) DO UPDATE SET size = old.size + excluded.size,
                                expires_at = excluded.expires_at
RETURNING size
"""
SET_MEMBERS = f"""
SELECT m.member FROM {{s}}.celeriac_result_set_members m JOIN {{s}}.celeriac_result_sets s
    ON s.key = m.key
 WHERE m.key = %s AND (s.expires_at IS NULL OR s.expires_at > {NOW})
"""
CLAIM_EXPIRED = f"DELETE FROM {{s}}.celeriac_result_claims WHERE key = %s AND expires_at <= {NOW}"
CLAIM = f"""
INSERT INTO {{s}}.celeriac_result_claims (key, value, expires_at) VALUES (%s, %s, {NOW} + %s)
ON CONFLICT DO NOTHING
"""
CLAIM_HOLDER = "SELECT value FROM {s}.celeriac_result_claims WHERE key = %s"

# The longest one wait on LISTEN lasts before reading again: a safety net for a
# notification lost with a dropped LISTEN connection.
MAX_SLEEP = 5.0
POLL_WITHOUT_LISTEN = 0.05


class PostgreSQLBackend(ResultBackend):
    """Results in a table of a PostgreSQL database (see the module docstring)."""

    scheme = "postgresql"
    supports_chords = True

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url, options)
        self.settings = PgSettings.from_url(url, self.options)
        self._pools = LoopPools(self.settings, BackendError)
        self.channel = f"celeriac_{self.settings.schema}_results"
        self._listener = Listener(self.settings, self.channel, self._notified)
        self._ready = False
        # Waiters by task id: (loop, event) pairs, woken from any loop's listener.
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def _q(self, statement: str) -> str:
        return qualify(statement, self.settings.schema)

    async def connect(self) -> None:
        await self._schema()

    def bus(self) -> Bus:
        from celeriac.bus.postgresql import PostgreSQLBus

        return PostgreSQLBus(self.settings)  # a table of its own in the same schema

    async def close(self) -> None:
        await self._listener.close()
        await self._pools.close()

    def close_blocking(self) -> None:
        self._pools.close_blocking()  # opened by stores on this schema (unique keys)

    async def _schema(self) -> None:
        if self._ready:
            return
        async with self._pools.connection() as conn:
            await create_schema(conn, self.settings, "results", SCHEMA_VERSION, CREATE,
                                BackendError)
        self._ready = True

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        await self._schema()
        async with self._pools.connection() as conn:
            try:
                yield conn
            except psycopg.Error as exc:
                raise self.settings.unavailable(exc, BackendError) from exc

    async def _execute(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cursor = await conn.execute(self._q(statement), params)
            return await cursor.fetchall() if cursor.description is not None else []

    # -- results --------------------------------------------------------------------------

    async def store_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        if results:
            await self._execute(STORE, (ttl, list(results), list(results.values()),
                                        self.channel))

    async def add_many(self, results: Mapping[str, bytes], ttl: float | None) -> None:
        if results:
            await self._execute(ADD, (ttl, list(results), list(results.values()),
                                      self.channel))

    async def load_many(self, task_ids: Sequence[str]) -> dict[str, bytes]:
        if not task_ids:
            return {}
        rows = await self._execute(LOAD, (list(task_ids),))
        return {task_id: bytes(data) for task_id, data in rows}

    async def delete_many(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            await self._execute(DELETE, (list(task_ids),))

    async def cleanup(self) -> int:
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(self._q(CLEANUP[0]))
            count = cursor.rowcount
            for statement in CLEANUP[1:]:
                await conn.execute(self._q(statement))
        return count

    # -- waiting --------------------------------------------------------------------------

    def _notified(self, payload: str) -> None:
        if payload == "*":
            woken = [w for waiters in self._waiters.values() for w in waiters]
        else:
            woken = [w for task_id in payload.split(",")
                     for w in self._waiters.get(task_id, ())]
        for loop, event in woken:
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
                loop.call_soon_threadsafe(event.set)

    async def wait(self, task_id: str, timeout: float | None,
                   accept: Callable[[bytes], bool] | None = None) -> bytes | None:
        """Wait for an accepted result, reading again only when its id was stored."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        self._waiters.setdefault(task_id, set()).add(waiter)
        listening = False
        try:
            while True:
                waiter[1].clear()  # before reading: a store during the read wakes us
                data = await self.load(task_id)
                if data is not None and (accept is None or accept(data)):
                    return data
                if not listening:
                    listening = await self._listener.ensure()
                    if listening:
                        continue  # read once more: it may have been stored before LISTEN
                sleep = MAX_SLEEP if listening else POLL_WITHOUT_LISTEN
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    sleep = min(sleep, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter[1].wait(), sleep)
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[task_id]

    # -- chords: sets and claims ------------------------------------------------------------

    async def add_to_set(self, key: str, member: str, ttl: float | None) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(self._q(SET_EXPIRED), (key, key))
            await conn.execute(self._q(SET_DROP), (key,))
            cursor = await conn.execute(self._q(SET_ADD), (key, member))
            added = cursor.rowcount
            cursor = await conn.execute(self._q(SET_COUNT), (key, added, ttl))
            row = await cursor.fetchone()
        assert row is not None
        size: int = row[0]
        return size

    async def set_members(self, key: str) -> set[str]:
        return {member for (member,) in await self._execute(SET_MEMBERS, (key,))}

    async def claim(self, key: str, value: str, ttl: float | None) -> str:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(self._q(CLAIM_EXPIRED), (key,))
            await conn.execute(self._q(CLAIM), (key, value, ttl))
            cursor = await conn.execute(self._q(CLAIM_HOLDER), (key,))
            row = await cursor.fetchone()
        assert row is not None
        holder: str = row[0]
        return holder


# -- revocations (celeriac.backends.revocations) -----------------------------------------

REVOCATIONS = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_revocations (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id text NOT NULL UNIQUE,
        mode text NOT NULL,
        expires_at double precision
    )""",
)
# EXCLUSIVE: one adder at a time (readers go on), so seqs commit in the order they were
# taken and a reader that saw seq n never misses a smaller one committed later.
REVOKE_LOCK = "LOCK TABLE {s}.celeriac_revocations IN EXCLUSIVE MODE"
REVOKE_PRUNE = "DELETE FROM {s}.celeriac_revocations WHERE expires_at <= %s"
# Deleted and inserted again: a revoked-again id gets a new seq, so readers see its mode.
REVOKE_DROP = "DELETE FROM {s}.celeriac_revocations WHERE task_id = ANY(%s::text[])"
REVOKE_ADD = """
INSERT INTO {s}.celeriac_revocations (task_id, mode, expires_at)
SELECT t, %s, %s FROM unnest(%s::text[]) AS t
"""
REVOKE_READ = """
SELECT seq, task_id, mode, expires_at FROM {s}.celeriac_revocations WHERE seq > %s
 ORDER BY seq LIMIT %s
"""


class PostgreSQLRevocations(RevocationStore):
    """A ``celeriac_revocations`` table beside the results, on the backend's pools."""

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self._backend = backend
        self._ready = False

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        backend = self._backend
        async with backend._connection() as conn:
            if not self._ready:
                await create_schema(conn, backend.settings, "revocations", SCHEMA_VERSION,
                                    REVOCATIONS, BackendError)
                self._ready = True
            yield conn

    async def add(self, task_ids: Sequence[str], mode: str, ttl: float | None) -> None:
        _check_mode(mode)
        if not task_ids:
            return
        now = time.time()
        until = None if ttl is None else now + ttl
        q = self._backend._q
        async with self._connection() as conn, conn.transaction():
            await conn.execute(q(REVOKE_LOCK))
            await conn.execute(q(REVOKE_PRUNE), (now,))
            await conn.execute(q(REVOKE_DROP), (list(task_ids),))
            await conn.execute(q(REVOKE_ADD), (mode, until, list(dict.fromkeys(task_ids))))

    async def read(self, cursor: str) -> tuple[list[Revocation], str]:
        after = int(cursor or 0)
        async with self._connection() as conn:
            result = await conn.execute(self._backend._q(REVOKE_READ),
                                        (after, revocations.READ_BATCH))
            rows = await result.fetchall()
        if not rows:
            return [], str(after)
        now = time.time()
        live = [Revocation(task_id, mode, until) for _, task_id, mode, until in rows
                if until is None or until > now]
        return live, str(rows[-1][0])
