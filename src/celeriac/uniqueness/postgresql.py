"""Unique keys in a PostgreSQL schema: the broker's (claim and publish in one transaction)
or, under a broker that keeps no state (RabbitMQ), the result backend's (claim first,
then publish).

Table (component ``unique``, version 1, in the owner's schema)::

    celeriac_unique_keys   key PRIMARY KEY, task_id, expires_at (the server's Unix time)

A claim is one ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE expires_at <= now``:
the primary key's row lock makes concurrent claims of one key take turns, and only a
hold that has run out (by the server's clock, whatever the producers' clocks say) is
replaced, so of many producers exactly one claims the key. A claim reads the holder
first: a send refused because the key is held writes nothing (no commit to wait for);
a claim that loses a race reads again, and so does one that finds the hold gone. On the broker's
schema the message is inserted in the claim's transaction (the broker's own PUBLISH
statement, whose NOTIFY goes out at commit): the key is held exactly when the message
is stored, and a producer that dies halfway leaves neither. Releasing is a delete on
(key, task id). Holds past their end are replaced by the next claim of their key, and
every ``PRUNE_EVERY``-th claim of a process deletes a batch of the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

import psycopg

from celeriac.brokers.base import Outgoing, check_outgoing
from celeriac.brokers.postgresql_connection import (
    create_schema,
    create_schema_blocking,
    qualify,
)
from celeriac.errors import BackendError, BrokerError, CeleriacError
from celeriac.uniqueness.store import Hold, UniqueKeys

SCHEMA_VERSION = 1
NOW = "extract(epoch FROM clock_timestamp())"
CREATE = (
    """CREATE TABLE IF NOT EXISTS {s}.celeriac_unique_keys (
        key text PRIMARY KEY,
        task_id text NOT NULL,
        expires_at double precision NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS celeriac_unique_keys_expiry "
    "ON {s}.celeriac_unique_keys (expires_at)",
)
# Returns a row when claimed; none while another task's hold runs.
CLAIM = f"""
INSERT INTO {{s}}.celeriac_unique_keys AS old (key, task_id, expires_at)
VALUES (%s, %s, {NOW} + %s)
ON CONFLICT (key) DO UPDATE SET task_id = excluded.task_id, expires_at = excluded.expires_at
 WHERE old.expires_at <= {NOW}
RETURNING 1
"""
HOLDER = f"SELECT task_id FROM {{s}}.celeriac_unique_keys WHERE key = %s AND expires_at > {NOW}"
RELEASE = """
DELETE FROM {s}.celeriac_unique_keys u USING unnest(%s::text[], %s::text[]) AS h(key, task_id)
 WHERE u.key = h.key AND u.task_id = h.task_id
"""
PRUNE = f"""
DELETE FROM {{s}}.celeriac_unique_keys WHERE key IN (
    SELECT key FROM {{s}}.celeriac_unique_keys WHERE expires_at <= {NOW}
     LIMIT 500 FOR UPDATE SKIP LOCKED)
"""
PRUNE_EVERY = 256
# Rounds of claim-then-read before giving up: each lost round means a hold ended between
# the two statements, which takes a key released (or run out) that many times in a row.
ROUNDS = 20


class PostgreSQLUniqueKeys(UniqueKeys):
    """Holds in the ``celeriac_unique_keys`` table of a broker's or backend's schema, on
    the owner's connections (closed with it)."""

    def __init__(self, owner: Any, broker: Any = None) -> None:
        self._owner = owner
        self._pools = owner._pools
        self.settings = owner.settings
        self._broker = broker  # a PostgreSQLBroker on this schema, for atomic sends
        self.atomic = broker is not None
        self._error: type[CeleriacError] = BrokerError if broker is not None else BackendError
        self._sql = {name: qualify(statement, self.settings.schema) for name, statement in (
            ("CLAIM", CLAIM), ("HOLDER", HOLDER), ("RELEASE", RELEASE), ("PRUNE", PRUNE))}
        self._ready = False
        self._claims = 0

    @classmethod
    def on(cls, owner: Any) -> PostgreSQLUniqueKeys:
        """The store in a PostgreSQL broker's schema (atomic) or a PostgreSQL backend's."""
        from celeriac.brokers.postgresql import PostgreSQLBroker

        return cls(owner, owner if isinstance(owner, PostgreSQLBroker) else None)

    def _statements(self, key: str, task_id: str, ttl: float) -> list[tuple[str, Any]]:
        """The claim, preceded now and then by a prune of holds that ran out."""
        self._claims += 1
        prune = [(self._sql["PRUNE"], ())] if self._claims % PRUNE_EVERY == 0 else []
        return [*prune, (self._sql["CLAIM"], (key, task_id, ttl))]

    # -- async ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._pools.connection() as conn:
            try:
                if not self._ready:
                    await create_schema(conn, self.settings, "unique", SCHEMA_VERSION, CREATE,
                                        self._error)
                    self._ready = True
                yield conn
            except psycopg.OperationalError:
                raise  # the pool's own error: the server is unavailable
            except psycopg.Error as exc:
                raise self.settings.unavailable(exc, self._error) from exc

    async def _claim_once(self, key: str, task_id: str, ttl: float,
                          outgoing: Outgoing | None) -> tuple[bool, str | None]:
        """(claimed, holder): the live holder if there is one, else claim, publishing
        ``outgoing`` if claimed (holder None and not claimed: a hold came and went
        between the two; try again)."""
        if outgoing is not None:
            await self._broker._schema()
        async with self._connection() as conn:
            # A read first: a refused send (the key held) then writes nothing, so it costs
            # no commit (a locking claim would, even when it changes no row).
            cursor = await conn.execute(self._sql["HOLDER"], (key,))
            row = await cursor.fetchone()
            if row is not None:
                return False, str(row[0])
            async with conn.transaction():
                claimed = False
                for statement, params in self._statements(key, task_id, ttl):
                    cursor = await conn.execute(statement, params)
                    claimed = cursor.rowcount > 0
                if claimed and outgoing is not None:
                    await conn.execute(self._broker._sql["PUBLISH"],
                                       self._broker._publish_params([outgoing]))
        return claimed, None

    async def _claim(self, key: str, task_id: str, ttl: float,
                     outgoing: Outgoing | None) -> str | None:
        for _ in range(ROUNDS):
            claimed, holder = await self._claim_once(key, task_id, ttl, outgoing)
            if claimed or holder is not None:
                return holder
        raise self._error(f"unique key {key!r}: no claim settled in {ROUNDS} rounds")

    async def claim(self, key: str, task_id: str, ttl: float) -> str | None:
        return await self._claim(key, task_id, ttl, None)

    async def release(self, holds: Sequence[Hold]) -> None:
        if holds:
            async with self._connection() as conn:
                await conn.execute(self._sql["RELEASE"], _arrays(holds))

    async def holder(self, key: str) -> str | None:
        async with self._connection() as conn:
            cursor = await conn.execute(self._sql["HOLDER"], (key,))
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def send(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                   publish: Callable[[Sequence[Outgoing]], Awaitable[None]]) -> str | None:
        if self._broker is None:
            return await super().send(key, task_id, ttl, outgoing, publish)
        check_outgoing([outgoing])
        return await self._claim(key, task_id, ttl, outgoing)

    # -- blocking -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection_blocking(self) -> Iterator[psycopg.Connection[Any]]:
        with self._pools.blocking() as conn:
            try:
                if not self._ready:
                    create_schema_blocking(conn, self.settings, "unique", SCHEMA_VERSION,
                                           CREATE, self._error)
                    self._ready = True
                yield conn
            except psycopg.OperationalError:
                raise  # the pool's own error: the server is unavailable
            except psycopg.Error as exc:
                raise self.settings.unavailable(exc, self._error) from exc

    def _claim_once_blocking(self, key: str, task_id: str, ttl: float,
                             outgoing: Outgoing | None) -> tuple[bool, str | None]:
        with self._connection_blocking() as conn:
            if outgoing is not None and not self._broker._ready:
                from celeriac.brokers import postgresql_sql

                create_schema_blocking(conn, self.settings, "broker",
                                       postgresql_sql.SCHEMA_VERSION, postgresql_sql.CREATE,
                                       BrokerError)
                self._broker._ready = True
            row = conn.execute(self._sql["HOLDER"], (key,)).fetchone()
            if row is not None:
                return False, str(row[0])
            with conn.transaction():
                claimed = False
                for statement, params in self._statements(key, task_id, ttl):
                    claimed = conn.execute(statement, params).rowcount > 0
                if claimed and outgoing is not None:
                    conn.execute(self._broker._sql["PUBLISH"],
                                 self._broker._publish_params([outgoing]))
        return claimed, None

    def _claim_blocking(self, key: str, task_id: str, ttl: float,
                        outgoing: Outgoing | None) -> str | None:
        for _ in range(ROUNDS):
            claimed, holder = self._claim_once_blocking(key, task_id, ttl, outgoing)
            if claimed or holder is not None:
                return holder
        raise self._error(f"unique key {key!r}: no claim settled in {ROUNDS} rounds")

    def claim_blocking(self, key: str, task_id: str, ttl: float) -> str | None:
        return self._claim_blocking(key, task_id, ttl, None)

    def release_blocking(self, holds: Sequence[Hold]) -> None:
        if holds:
            with self._connection_blocking() as conn:
                conn.execute(self._sql["RELEASE"], _arrays(holds))

    def send_blocking(self, key: str, task_id: str, ttl: float, outgoing: Outgoing,
                      publish: Callable[[Sequence[Outgoing]], None]) -> str | None:
        if self._broker is None:
            return super().send_blocking(key, task_id, ttl, outgoing, publish)
        check_outgoing([outgoing])
        return self._claim_blocking(key, task_id, ttl, outgoing)


def _arrays(holds: Sequence[Hold]) -> tuple[list[str], list[str]]:
    return [key for key, _ in holds], [task_id for _, task_id in holds]
